#!/usr/bin/env bash
# syndic-check: does this Salt build carry returns from a minion behind a
# syndic back to the top master? One top master, one Pi (master + syndic),
# one kiosk minion, all on 127.0.0.1; prints what the top master got back.
# Usage: lab/syndic-check.sh VENV TAG [EXTRA_TOP_MASTER_CFG] [EXTRA_SYNDIC_MINION_CFG] [EXTRA_PI_MASTER_CFG]
#   VENV: a venv holding the salt to check; TAG: <= 6 chars, run dir /tmp/s8/TAG
#   EXTRA_*: config lines (literal \n between them) appended to that file
# e.g. lab/syndic-check.sh /opt/salt3008 s8 "" "publish_port: 44505"
# Topology (all 127.0.0.1):
#   top master  : publish 44505 / ret 44506, order_masters: True
enable_fqdns_grains: false
#   Pi master   : publish 45505 / ret 45506
#   Pi syndic   : syndic_master 127.0.0.1:44506, id "pi"
#   minion      : kiosk-1 -> Pi master 45506
set -u
VENV=$1; TAG=$2
EXTRA_TOP=${3:-}; EXTRA_SYN=${4:-}; EXTRA_PI=${5:-}
BIN=$VENV/bin
R=/tmp/s8/$TAG
rm -rf "$R"; mkdir -p "$R"/{top,pi,kiosk}/{etc,root}
PIDS=()

cat > $R/top/etc/master <<EOF
root_dir: $R/top/root
user: root
interface: 127.0.0.1
publish_port: 44505
ret_port: 44506
auto_accept: True
order_masters: True
log_level_logfile: ${LOGLEVEL:-debug}
$(printf '%b' "$EXTRA_TOP")
EOF

# Pi: master config (read by salt-master and by salt-syndic)
cat > $R/pi/etc/master <<EOF
root_dir: $R/pi/root
user: root
interface: 127.0.0.1
publish_port: 45505
ret_port: 45506
auto_accept: True
syndic_master: 127.0.0.1
enable_fqdns_grains: false
syndic_master_port: 44506
log_level_logfile: ${LOGLEVEL:-debug}
$(printf '%b' "$EXTRA_PI")
EOF
# Pi: minion config (salt-syndic also reads DIR/minion; gives id / pki_dir)
cat > $R/pi/etc/minion <<EOF
id: pi
enable_fqdns_grains: false
root_dir: $R/pi/root
user: root
master: 127.0.0.1
master_port: 44506
log_level_logfile: ${LOGLEVEL:-debug}
$(printf '%b' "$EXTRA_SYN")
EOF

cat > $R/kiosk/etc/minion <<EOF
id: kiosk-1
enable_fqdns_grains: false
root_dir: $R/kiosk/root
user: root
master: 127.0.0.1
master_port: 45506
publish_port: 45505
log_level_logfile: ${LOGLEVEL:-debug}
EOF

echo "=== salt version: $($BIN/salt --version)  root=$R"
echo "=== extra top: [$EXTRA_TOP] extra syndic-minion: [$EXTRA_SYN] extra pi-master: [$EXTRA_PI]"

$BIN/salt-master -c $R/top/etc -d
$BIN/salt-master -c $R/pi/etc -d
sleep 5
$BIN/salt-syndic -c $R/pi/etc -d
$BIN/salt-minion -c $R/kiosk/etc -d

# wait for key acceptance: kiosk-1 on Pi master, pi on top master
for i in $(seq 1 60); do
  a=$($BIN/salt-key -c $R/top/etc -l acc 2>/dev/null | grep -cx pi)
  b=$($BIN/salt-key -c $R/pi/etc -l acc 2>/dev/null | grep -cx kiosk-1)
  [ "$a" = 1 ] && [ "$b" = 1 ] && break
  sleep 1
done
echo "=== keys top:"; $BIN/salt-key -c $R/top/etc -L
echo "=== keys pi:";  $BIN/salt-key -c $R/pi/etc -L
sleep ${PRE_PING:-10}   # let minion/syndic finish connecting after acceptance

echo "=== (sanity) on Pi master: salt 'kiosk-1' test.ping"
timeout 60 $BIN/salt -c $R/pi/etc 'kiosk-1' test.ping -t 15 2>&1
echo "=== on top: salt 'kiosk-1' test.ping --out=json -t 30"
timeout 90 $BIN/salt -c $R/top/etc 'kiosk-1' test.ping --out=json -t 30 2>&1; echo "rc=$?"
echo "=== on top: salt '*' test.ping"
timeout 90 $BIN/salt -c $R/top/etc '*' test.ping 2>&1; echo "rc=$?"

echo "=== syndic log (warnings/errors + return/forward lines)"
grep -Ei 'error|warn|traceback|exception|publish port|Returning information|syndic_return|forward|jid|decrypt' $R/pi/root/var/log/salt/syndic | grep -v 'Loaded\|LazyLoad\|init system\|minion_event_.*pull.ipc\|Unable to connect pusher\|_TCPPubServerPublisher' | cut -c1-400 | tail -n 40
echo "=== top master log (errors + syndic lines)"
grep -Ei 'error|traceback|exception|syndic' $R/top/root/var/log/salt/master | grep -v 'Override\|git.cmd\|LazyLoad' | cut -c1-400 | tail -n 15

[ -n "${HOLD:-}" ] && sleep "$HOLD"
# kill by pid (pidfiles under each root_dir)
for pf in $(find $R -name 'salt-*.pid'); do
  p=$(cat $pf); echo "kill $(basename $pf) pid $p"
  kill $p 2>/dev/null
done
sleep 5
for pf in $(find $R -name 'salt-*.pid'); do p=$(cat $pf); kill -0 $p 2>/dev/null && kill -9 $p; done
# children of daemons (process managers spawn workers); kill any left using root path in cmdline
for p in $(pgrep -f -- "-c $R/"); do kill -9 $p 2>/dev/null; done
sleep 1
echo "=== leftover procs for $R: $(pgrep -f -- "-c $R/" | wc -l)"
