"""
A Pi's death, seen from its kiosks, on real Salt daemons (loopback only).

One top master (``order_masters: True``); a campus of ``--pis`` Pis, each a
salt-master (one shared campus key pair), a salt-syndic and a salt-minion;
``--kiosks`` kiosk minions hot-connected to every Pi with the pack's settings
(``fleet_keys.KIOSK_MINION_SETTINGS``), and one more kiosk with the same
settings but a single master (pi-1), for the cost comparison.

1. cost of hot multi-master: RSS (VmRSS, summed over the minion's process
   tree) and open TCP connections of one kiosk minion with every Pi against
   the single-master kiosk, idle after a few jobs;
2. a burst of ``--burst`` ``test.echo`` jobs, one every ``--pace`` s, counted
   on the top master's event bus as in ``two_tops.py`` (the one-top control
   for its missing returns);
3. ``--kills`` times: a Pi's master, syndic and minion SIGKILLed (their process
   groups, by pid); from the kill, ``LocalClient.cmd(kiosks, "test.ping")`` on
   the top master, as the pack's runners call it, until one call has every
   kiosk's answer: whether the first call after the kill already had them, and
   the seconds from the kill to the end of the first complete call; then the
   Pi is started again, and the seconds until every kiosk has its connection to
   that Pi's publisher again;
4. warm standby: the top master killed and a second master started on its
   address with the same key pair (own, empty directories; it accepts the Pi
   syndics' keys with ``auto_accept``, where production gives it the accepted
   keys): seconds from the kill until every Pi and kiosk answers it.

Prints a table; asserts nothing. Run under the shared lock (~4 minutes):

    flock /tmp/kf-integration.lock .venv/bin/python bench/failover.py [--kiosks 4] [--pis 4] [--kills 3]

A killed process closes its sockets, so the kiosks see the Pi's connections
reset at once; a Pi that loses power sends nothing, and its connections stay
half-open until TCP keepalive (``tcp_keepalive_idle`` 60 s) gives up. Jobs do
not wait for that: they reach the kiosks through the other Pis' publishers.
"""

import argparse
import pathlib
import statistics
import sys
import time

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import two_tops  # noqa: E402 - the bench's topology helpers

sys.path.insert(0, str(two_tops.REPO / "_utils"))
import fleet_keys  # noqa: E402

TOP = ("top", "127.0.120.1")
STANDBY = "standby"
PI_NET = "127.0.121."
PUBLISH_PORT = 4505
CALL_TIMEOUT = 15


def pi_address(n):
    return f"{PI_NET}{n}"


def build(args):
    topo = two_tops.Topology(args.dir)
    for name in (TOP[0], STANDBY):  # the standby: same key pair and address, its own (empty) directories
        topo.add_master(name, TOP[1], "top", order_masters=True, syndic_wait=2, gather_job_timeout=5)
    pis = [f"pi-{n}" for n in range(1, args.pis + 1)]
    for n, pi in enumerate(pis, 1):
        topo.add_master(pi, pi_address(n), "campus", syndic_master=TOP[1])
        topo.add_minion(pi, pi_address(n), log_level_logfile="info")  # the syndic's log level too
    settings = dict(fleet_keys.KIOSK_MINION_SETTINGS)
    kiosks = [f"kiosk-{n:02d}" for n in range(1, args.kiosks + 1)]
    for kiosk in kiosks:
        topo.add_minion(kiosk, [pi_address(n) for n in range(1, args.pis + 1)], **settings)
    topo.add_minion("kiosk-solo", pi_address(1), **settings)
    return topo, pis, kiosks


def tree(pid):
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def cost(pid):
    """``(RSS MiB, established TCP connections, distinct remote addresses)`` of a minion's process tree."""
    rss, conns = 0, set()
    for proc in tree(pid):
        try:
            rss += proc.memory_info().rss  # VmRSS of /proc/<pid>/status
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_ESTABLISHED and conn.raddr:
                    conns.add((conn.laddr, conn.raddr))
        except psutil.NoSuchProcess:
            continue
    return rss / (1 << 20), len(conns), len({r.ip for _, r in conns})


def publisher_connected(pid, address):
    """True when the minion ``pid`` has an established connection to ``address``'s publisher."""
    for proc in tree(pid):
        try:
            if any(c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.ip == address
                   and c.raddr.port == PUBLISH_PORT for c in proc.net_connections(kind="tcp")):
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def call(client, kiosks):
    """One ``test.ping`` to ``kiosks`` as a runner sends it: ``(all answered, seconds)``."""
    began = time.time()
    try:
        ret = client.cmd(kiosks, "test.ping", tgt_type="list", timeout=CALL_TIMEOUT)
    except Exception:  # noqa: BLE001 - a failed call is a figure
        ret = {}
    return all(ret.get(k) is True for k in kiosks), time.time() - began


def ready(client, minions, timeout):
    began = time.time()
    while time.time() - began < timeout:
        ok, _ = call(client, minions)
        if ok:
            return time.time() - began
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/kf-bench-failover")
    parser.add_argument("--pis", type=int, default=4)
    parser.add_argument("--kiosks", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--burst", type=int, default=100, help="test.echo jobs published one every --pace s")
    parser.add_argument("--pace", type=float, default=0.15)
    parser.add_argument("--standby-wait", type=float, default=120, help="seconds to wait for the standby's answers")
    args = parser.parse_args(argv)
    topo, pis, kiosks = build(args)
    print(f"salt {two_tops.salt.version.__version__}; 1 top master, {len(pis)} Pis (master + syndic + minion), "
          f"{len(kiosks)} kiosks on every Pi + kiosk-solo on pi-1; kiosk settings: fleet_keys.KIOSK_MINION_SETTINGS",
          flush=True)
    rows = []
    try:
        topo.start(TOP[0], "master")
        for pi in pis:
            topo.start(pi, "master")
        for pi in pis:
            topo.start(pi, "syndic")
            topo.start(pi, "minion")
        for kiosk in [*kiosks, "kiosk-solo"]:
            topo.start(kiosk, "minion")
        client = two_tops.salt.client.LocalClient(mopts=topo.master_opts(TOP[0]))
        took = ready(client, [*pis, *kiosks, "kiosk-solo"], 240)
        print(f"up: every minion answered the top master after {took:.0f} s" if took is not None
              else "up: NOT every minion answered within 240 s", flush=True)
        baseline = [call(client, kiosks)[1] for _ in range(3)]
        samples = {}
        for name in (kiosks[0], "kiosk-solo"):
            pid = topo.procs[f"{name} minion"].pid
            samples[name] = [cost(pid) for _ in range(3)]
            time.sleep(0.5)  # spacing of the samples
        for name, got in samples.items():
            masters = len(pis) if name != "kiosk-solo" else 1
            rows.append((f"{name} ({masters} master{'s' if masters > 1 else ''})",
                         f"RSS {statistics.median(g[0] for g in got):.0f} MiB, "
                         f"{statistics.median(g[1] for g in got):.0f} TCP connections to "
                         f"{statistics.median(g[2] for g in got):.0f} addresses"))
        rows.append(("test.ping to the kiosks, all Pis up", f"{statistics.median(baseline):.1f} s (median of 3 calls)"))
        # the same burst as two_tops.py's, through one syndic_master: the control for its missing returns
        bench = two_tops.Bench(topo, kiosks)
        bench.attach(TOP[0])
        jobs = two_tops.publish_rounds(bench, [TOP[0]], args.burst, args.pace)
        rows.append((f"burst: {args.burst} jobs, one every {args.pace} s", two_tops.fmt_returns(two_tops.tally(bench, jobs, kiosks))))
        bench.detach(TOP[0])
        for k in range(args.kills):
            victim = pis[k % len(pis)]
            killed = topo.kill(victim)
            first_ok, first_s = call(client, kiosks)
            done, calls = (time.time() - killed if first_ok else None), 1
            while done is None and time.time() - killed < 120:
                ok, _ = call(client, kiosks)
                calls += 1
                done = time.time() - killed if ok else None
            for daemon in ("master", "syndic", "minion"):
                topo.start(victim, daemon)
            back = time.time()
            reconnect = None
            while reconnect is None and time.time() - back < 90:
                if all(publisher_connected(topo.procs[f"{kiosk} minion"].pid, pi_address(pis.index(victim) + 1))
                       for kiosk in kiosks):
                    reconnect = time.time() - back
                time.sleep(0.2)  # polling interval
            ready(client, [victim], 60)  # its syndic carries jobs again before the next kill
            rows.append((f"kill {k + 1}: {victim} (master, syndic, minion)",
                         f"first call after the kill {'complete' if first_ok else 'INCOMPLETE'} in {first_s:.1f} s; "
                         f"first complete call ends {'never' if done is None else f'{done:.1f} s'} after the kill "
                         f"({calls} call{'s' if calls > 1 else ''}); kiosks back on its publisher "
                         f"{'never' if reconnect is None else f'{reconnect:.0f} s'} after its restart"))
        # warm standby: the top master killed, the standby started on its address with its key pair
        killed = topo.kill(TOP[0])
        topo.start(STANDBY, "master")
        standby = two_tops.salt.client.LocalClient(mopts=topo.master_opts(STANDBY))
        took = ready(standby, [*pis, *kiosks], args.standby_wait)
        rows.append(("top master killed, standby started",
                     f"every Pi and kiosk answers the standby {'never' if took is None else f'{time.time() - killed:.1f} s'}"
                     " after the kill"))
    finally:
        topo.down()
    for label, text in rows:
        print(f"   {label:<40} {text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
