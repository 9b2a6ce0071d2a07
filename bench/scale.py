"""
Cost growth of the pack's runners with the number of kiosks, on real Salt daemons (loopback only).

For each N of ``--kiosks`` (kiosks in all, spread evenly over ``--campuses``
campuses of ``--pis`` Pis each) it brings up the lab's topology
(``lab/kiosk_lab.py``'s ``write_configs``: one top master with
``order_masters``, per Pi a salt-master on its own 127.x address, a
salt-syndic and a salt-minion; every kiosk a salt-minion on every Pi of its
campus with the pack's multi-master settings, ``fleet_keys.kiosk_minion_config``)
with slim kiosks (no beacons, no start-up states, no grains refresh, no mine,
no fqdns grains, 30 s keepalive idle; keys made ahead and placed in each Pi
master's ``minions/`` folder: accepted before the kiosk starts). The fleet
data gives every campus the schedule ``default: on`` (every kiosk managed,
expected on); the bench listens on each running kiosk's service port
(its inventory address, 3389), which the Pis' ``kiosk_scan`` probes, and
closes it when it stops the kiosk. Once every minion answers and the pack is synced
(``saltutil.sync_all``) and the calendars published, it measures, with
``salt-run`` on the top master (the runners' default timeouts):

- all kiosks up: ``kiosk_fleet.ping``, ``kiosk_release.status kiosk-app``
  (nothing published: the two jobs and the report, no package);
- 30 % of the kiosks stopped (their minions SIGKILLed by pid, a power cut):
  ``kiosk_fleet.ping``, ``kiosk_power.plan``, ``kiosk_power.sweep``,
  ``kiosk_power.verify explicit=True``, ``kiosk_release.status kiosk-app``;

each one's wall time, the CPU time of the top master's process tree (utime +
stime of every live process of the tree, their reaped children included, from
/proc through psutil) and of the ``salt-run`` process itself (where the
runner's own work runs), and its exit code; the RSS of each kiosk minion (its
process tree). Then the growth exponent over N of each figure (least squares
on log-log) and the extrapolation of the wall times to ``--project`` kiosks.

    .venv/bin/python bench/scale.py --kiosks 25,50 --campuses 2 --pis 2
    .venv/bin/python bench/scale.py --kiosks 25,50,100 --plan   # what it would start; starts nothing

It takes the shared lock (``--lock``, default /tmp/kf/integration.lock)
around the daemon part itself. Daemons run under ``--dir``, each its own
process group, stopped by pid at the end of each N (also on Ctrl-C or an
error). Asserts nothing; run by hand, not in CI.
"""

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import pathlib
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import psutil
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import two_tops  # noqa: E402 - the bench's daemon helpers (start in a process group, stop by pid)

REPO = two_tops.REPO
sys.path.insert(0, str(REPO / "_utils"))
import fleet_inventory  # noqa: E402
import fleet_keys  # noqa: E402

from lab import kiosk_lab as lab  # noqa: E402

TOP_ID = "top"  # lab.write_configs' top master, moved off the lab's address (a lab may be up)
TOP_ADDRESS = "127.0.130.1"
NET_BASE = 140  # campus n's VLAN: 127.0.<NET_BASE + n>.0/24
PI_HOST = 2  # Pi p of a campus on .<PI_HOST + p - 1>
KIOSK_HOST = 21  # kiosk k of a campus on .<KIOSK_HOST + k - 1>
MAX_CAMPUSES = 100
MAX_PIS = 9
MAX_KIOSKS_PER_CAMPUS = 230  # .21 ... .250
RET_PORT = 4506  # every Pi master on its own address: Salt's ports
PUBLISH_PORT = 4505
WOL_PORT = 40009  # unprivileged; loopback only
SERVICE_PORT = 3389  # what the Pis' kiosk_scan probes: the bench listens there for each running kiosk
TIMEZONE = "Asia/Shanghai"
OFF_SHARE = 0.3
RELEASE = "kiosk-app"
ROLLOUT_VERSION = "1.0.0"
ROLLOUT_MIB = 1  # the release the rollout carries (random bytes, its install script the lab's)
START_WAIT_S = 900
RUN_TIMEOUT_S = 900
IDLE_S = 20
# (label, salt-run arguments, with the kiosks stopped)
RUNS = (
    ("kiosk_fleet.ping", ["kiosk_fleet.ping"], False),
    # every campus at once, one ring: pin, stage on the Pis (from the top's nginx), install on every kiosk
    # (from its Pis' nginx), confirm by the Pis' access logs; then status reports a real release
    ("kiosk_release.rollout", ["kiosk_release.rollout", RELEASE, "{version}", "campuses={campuses}"], False),
    ("kiosk_release.status", ["kiosk_release.status", RELEASE], False),
    ("kiosk_change.apply test=True", ["kiosk_change.apply", "template=hosts", "campus={campuses}", "test=True"], False),
    ("kiosk_fleet.ping", ["kiosk_fleet.ping"], True),
    ("kiosk_power.plan", ["kiosk_power.plan"], True),
    ("kiosk_power.sweep", ["kiosk_power.sweep"], True),
    ("kiosk_power.verify", ["kiosk_power.verify", "explicit=True"], True),
    ("kiosk_release.status", ["kiosk_release.status", RELEASE], True),
    ("kiosk_change.apply test=True", ["kiosk_change.apply", "template=hosts", "campus={campuses}", "test=True"], True),
)
# top master settings --master-opt may change (the ones that decide how long a call waits)
MASTER_OPTS = ("syndic_wait", "gather_job_timeout", "worker_threads", "zmq_filtering", "timeout", "keep_jobs_seconds")
FIGURES = (("wall", "wall s"), ("top_cpu", "top CPU s"), ("run_cpu", "salt-run CPU s"))


class ScaleError(ValueError):
    """A bad bench input; ``field`` names it."""

    def __init__(self, message, field):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- pure: plan, fit, table


def _count(value, field, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScaleError(f"{field}: {value!r} is not a whole number from {low} to {high}", field)
    return value


def parse_counts(text, field="kiosks"):
    """``"25,50,100"`` -> ``[25, 50, 100]`` (distinct, ascending)."""
    try:
        counts = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise ScaleError(f"{field}: {text!r} is not a comma-separated list of whole numbers", field) from None
    if not counts or counts[0] < 1:
        raise ScaleError(f"{field}: {text!r}: give one or more counts of at least 1", field)
    return counts


def plan(campuses, pis, kiosks):
    """
    The topology of ``kiosks`` kiosks in all over ``campuses`` campuses of
    ``pis`` Pis each: ``{"top": {...}, "campuses": {name: {"network", "pis":
    {pi_id: {"address", "master"}}, "kiosks": {kiosk_id: {"ip", "mac"}}}}}``.
    Kiosks are dealt out in turn, so campus sizes differ by one at most.
    Every address is in 127.0.0.0/8; each Pi master on its own address, Salt's
    ports.
    """
    campuses = _count(campuses, "campuses", 1, MAX_CAMPUSES)
    pis = _count(pis, "pis", 1, MAX_PIS)
    kiosks = _count(kiosks, "kiosks", campuses, campuses * MAX_KIOSKS_PER_CAMPUS)
    out = {"top": {"id": TOP_ID, "address": TOP_ADDRESS, "ports": [PUBLISH_PORT, RET_PORT]}, "campuses": {}}
    for c in range(1, campuses + 1):
        name = f"c{c:03d}"
        net = f"127.0.{NET_BASE + c}"
        per = kiosks // campuses + (1 if c <= kiosks % campuses else 0)
        out["campuses"][name] = {
            "network": f"{net}.0/24",
            "pis": {f"pi-{name}-{p}": {"address": f"{net}.{PI_HOST + p - 1}",
                                       "master": f"{net}.{PI_HOST + p - 1}:{RET_PORT}"}
                    for p in range(1, pis + 1)},
            "kiosks": {f"kiosk-{name}-{k:03d}": {"ip": f"{net}.{KIOSK_HOST + k - 1}",
                                                 "mac": f"52:54:00:{c // 256:02x}:{c % 256:02x}:{k:02x}"}
                       for k in range(1, per + 1)},
        }
    return out


def fleet_data(topology):
    """The fleet data file of a :func:`plan`: its inventory, and ``default: on`` as every campus's schedule."""
    campuses = {}
    for name, spec in topology["campuses"].items():
        campuses[name] = {
            "timezone": TIMEZONE, "wol_port": WOL_PORT, "publish_port": PUBLISH_PORT, "service_port": SERVICE_PORT,
            "vlans": {"hall": {"network": spec["network"]}},
            "pis": {pi: {"master": p["master"], "vlans": {"hall": {"source": p["address"]}}}
                    for pi, p in spec["pis"].items()},
            "kiosks": {k: {"mac": v["mac"], "ip": v["ip"], "vlan": "hall", "location": f"bench {k}"}
                       for k, v in spec["kiosks"].items()},
        }
    return {fleet_inventory.PILLAR_KEY: {"campuses": campuses},
            "kiosk_fleet_schedules": {"campuses": {name: {"timezone": TIMEZONE, "default": "on"}
                                                   for name in topology["campuses"]}}}


def kiosk_ids(topology):
    return sorted(k for spec in topology["campuses"].values() for k in spec["kiosks"])


def pi_ids(topology):
    return sorted(p for spec in topology["campuses"].values() for p in spec["pis"])


def stopped(kiosks, share=OFF_SHARE):
    """``round(share * len)`` of the sorted ``kiosks``, evenly spaced (so every campus loses its share)."""
    if not 0 <= share <= 1:
        raise ScaleError(f"share: {share!r} is not from 0 to 1", "share")
    ids = sorted(kiosks)
    count = round(share * len(ids))
    return [ids[i * len(ids) // count] for i in range(count)] if count else []


def fit_exponent(ns, values):
    """
    The slope of ``log(value)`` over ``log(N)`` by least squares: the growth
    exponent (1: linear). None with fewer than two distinct N; a value of 0
    or less has no logarithm and is refused.
    """
    if len(ns) != len(values):
        raise ScaleError(f"values: {len(values)} values for {len(ns)} counts", "values")
    for n, v in zip(ns, values):
        if not (isinstance(n, (int, float)) and n > 0):
            raise ScaleError(f"ns: {n!r} is not a positive number", "ns")
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ScaleError(f"values: {v!r} is not a positive number", "values")
    if len(set(ns)) < 2:
        return None
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def project(ns, values, target):
    """``values`` extrapolated to ``target`` kiosks from the largest N along the fitted exponent (None: no fit)."""
    exponent = fit_exponent(ns, values)
    if exponent is None:
        return None
    last = max(range(len(ns)), key=lambda i: ns[i])
    return values[last] * (target / ns[last]) ** exponent


def _key(label, off):
    return f"{label}{' (30% off)' if off else ''}"


def format_table(results, target=None):
    """
    The bench's table from ``results``: ``[{"kiosks": N, "runs": {key:
    {"wall", "top_cpu", "run_cpu", "rc"}}, "rss_mib": [per kiosk minion]}]``.
    One line per runner and N, then per runner the growth exponent of each
    figure (and the wall time at ``target`` kiosks when given), then memory.
    """
    results = sorted(results, key=lambda r: r["kiosks"])
    keys = []
    for r in results:
        keys += [k for k in r["runs"] if k not in keys]
    lines = [f"{'runner':<34} {'N':>5} {'wall s':>8} {'top CPU s':>10} {'salt-run CPU s':>15} {'rc':>3} "
             f"{'machine CPU s':>14} {'busy':>5}"]
    for key in keys:
        for r in results:
            got = r["runs"].get(key)
            if got:
                machine = got.get("machine_cpu")
                busy = machine / (got["wall"] * r.get("cores", 2)) if machine is not None and got["wall"] > 0 else None
                lines.append(f"{key:<34} {r['kiosks']:>5} {got['wall']:>8.1f} {got['top_cpu']:>10.2f} "
                             f"{got['run_cpu']:>15.2f} {got['rc']:>3} "
                             f"{'-' if machine is None else f'{machine:.1f}':>14} "
                             f"{'-' if busy is None else f'{busy:.0%}':>5}")
    ns_all = [r["kiosks"] for r in results]
    head = f"growth exponent over N = {', '.join(map(str, ns_all))} (log-log least squares)"
    lines += ["", f"{head:<34} {'wall':>8} {'top CPU':>10} {'salt-run CPU':>15}"
              + (f" {f'wall at N={target} s':>18}" if target else "")]
    for key in keys:
        pts = [(r["kiosks"], r["runs"][key]) for r in results if key in r["runs"]]
        ns = [n for n, _ in pts]
        cells = []
        for figure, _ in FIGURES:
            vals = [g[figure] for _, g in pts]
            exp = fit_exponent(ns, vals) if all(v > 0 for v in vals) else None
            cells.append("-" if exp is None else f"{exp:.2f}")
        line = f"{key:<34} {cells[0]:>8} {cells[1]:>10} {cells[2]:>15}"
        if target:
            at = project(ns, [g["wall"] for _, g in pts], target) if all(g["wall"] > 0 for _, g in pts) else None
            line += f" {'-' if at is None else f'{at:.0f}':>18}"
        lines.append(line)
    lines.append("")
    for r in results:
        rss = r.get("rss_mib") or []
        if rss:
            lines.append(f"N={r['kiosks']}: RSS per kiosk minion median {statistics.median(rss):.0f} MiB "
                         f"(min {min(rss):.0f}, max {max(rss):.0f}), all kiosk minions {sum(rss) / 1024:.1f} GiB"
                         + "".join(f"; {label} {value}" for label, value in r.get("notes", [])))
    return "\n".join(lines)


def describe(topology):
    """What :func:`plan` would start, as lines (``--plan``)."""
    lines = [f"top master {topology['top']['id']} on {topology['top']['address']} "
             f"(ports {'/'.join(map(str, topology['top']['ports']))})"]
    for name, spec in topology["campuses"].items():
        ks = sorted(spec["kiosks"])
        lines.append(f"campus {name} ({spec['network']}): "
                     + ", ".join(f"{pi} on {p['master']}" for pi, p in spec["pis"].items())
                     + f"; {len(ks)} kiosks {ks[0]} ({spec['kiosks'][ks[0]]['ip']}) .. "
                     f"{ks[-1]} ({spec['kiosks'][ks[-1]]['ip']}), each a minion of every Pi of the campus")
    daemons = 1 + 3 * len(pi_ids(topology)) + len(kiosk_ids(topology))
    lines.append(f"{daemons} daemons; {len(stopped(kiosk_ids(topology)))} kiosks stopped for the 30 % runs")
    return lines


# ---------------------------------------------------------------- daemons


def tree(pid):
    """``pid`` and its live descendants (psutil processes), ``[]`` when ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid):
    """CPU seconds of ``pid``'s process tree: user + system of each live process and of its reaped children."""
    total = 0.0
    for proc in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def machine_busy():
    """Busy CPU seconds of the whole machine so far (every core, all but idle and iowait). Over a run (every
    daemon: kiosks, Pis, top, salt-run), divided by wall x cores, it says how much of the wall time this
    machine's CPU set (the kiosks all run on its 2 cores here)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def tree_rss_mib(pid):
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / (1 << 20)


class Services(threading.Thread):
    """
    The kiosks' service port as the Pis' ``kiosk_scan`` (nmap) probes it: one
    listening socket per running kiosk on its inventory address, accepted
    and closed in this thread; :meth:`stop` closes a stopped kiosk's (a
    power cut: the probe finds it off, as its minion is gone).
    """

    def __init__(self, topology):
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.socks = {}
        self.lock = threading.Lock()
        self.running = True
        for spec in topology["campuses"].values():
            for kiosk, k in spec["kiosks"].items():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((k["ip"], SERVICE_PORT))
                sock.listen(64)
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ)
                self.socks[kiosk] = sock
        self.start()

    def run(self):
        while self.running:
            with self.lock:
                ready = self.selector.select(timeout=0.2) if self.socks else []
                for key, _ in ready:
                    with contextlib.suppress(OSError):
                        conn, _ = key.fileobj.accept()
                        conn.close()
            time.sleep(0.01)  # lets stop() take the lock

    def stop(self, kiosks):
        with self.lock:
            for kiosk in kiosks:
                sock = self.socks.pop(kiosk, None)
                if sock:
                    self.selector.unregister(sock)
                    sock.close()

    def close(self):
        self.stop(list(self.socks))
        self.running = False
        self.join(2)


def selected_runs(spec, field="runs"):
    """The :data:`RUNS` whose label contains one of the comma-separated ``spec`` words (all without one)."""
    if not spec:
        return RUNS
    words = [w.strip() for w in str(spec).split(",") if w.strip()]
    runs = tuple(r for r in RUNS if any(w in r[0] for w in words))
    if not runs:
        raise ScaleError(f"{spec!r} matches no run ({', '.join(sorted({r[0] for r in RUNS}))})", field)
    return runs


def parse_master_opts(items, field="master-opt"):
    """``["key=value", ...]`` -> ``{key: YAML value}`` for the keys of :data:`MASTER_OPTS` only."""
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or key not in MASTER_OPTS:
            raise ScaleError(f"{item!r} is not KEY=VALUE with KEY one of {', '.join(MASTER_OPTS)}", field)
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ScaleError(f"{item!r}: the value is not YAML", field) from None
        if not isinstance(out[key], (bool, int, float)) or (key != "zmq_filtering" and isinstance(out[key], bool)):
            raise ScaleError(f"{item!r}: {key} takes a number" + (" or true/false" if key == "zmq_filtering" else ""),
                             field)
    return out


def kiosk_dir(run, kiosk):
    return run / "kiosks" / kiosk


def slim(run, topology, master_opts=None, pi_opts=None, source_address=True):
    """Rewrite the lab's configs for the bench: slim kiosks with keys placed ahead, no Pi beacons, no webhook."""
    top_file = run / TOP_ID / "master"
    top = yaml.safe_load(top_file.read_text())
    top.pop("kiosk_fleet_alerts", None)  # verify's alerts fail at once (no webhook), never reach a port
    top["interface"] = topology["top"]["address"]
    top.update(master_opts or {})
    lab.write_yaml(top_file, top)
    for spec in topology["campuses"].values():
        for pi in spec["pis"]:
            path = run / pi / "master"
            conf = yaml.safe_load(path.read_text())
            conf["syndic_master"] = topology["top"]["address"]
            conf.update(pi_opts or {})
            lab.write_yaml(path, conf)
            path = run / pi / "minion"
            conf = yaml.safe_load(path.read_text())
            conf.pop("beacons", None)  # no DHT11 here
            lab.write_yaml(path, conf)
        for kiosk in spec["kiosks"]:
            path = kiosk_dir(run, kiosk) / "minion"
            conf = yaml.safe_load(path.read_text())
            for key in ("startup_states", "sls_list"):
                conf.pop(key, None)
            if not source_address:  # connect from 127.0.0.1: the Pis' presence sees no kiosk
                conf.pop("source_address", None)
            pki = kiosk_dir(run, kiosk) / "pki"
            conf.update({
                "pki_dir": str(pki), "beacons": {}, "grains_refresh_every": 0, "mine_enabled": False,
                "enable_fqdns_grains": False, "tcp_keepalive_idle": 30,
                # no power button: the bench stops minions itself
                "kiosk_power": {"shutdown_command": [sys.executable, "-c", "pass"]},
            })
            lab.write_yaml(path, conf)
            private, public = fleet_keys.new_master_key_pair()
            pki.mkdir(parents=True, exist_ok=True)
            (pki / "minion.pem").write_bytes(private)
            (pki / "minion.pem").chmod(0o400)
            (pki / "minion.pub").write_bytes(public)
            for pi in spec["pis"]:  # accepted on every Pi master of its campus before it starts
                accepted = lab.pi_dirs(run, pi)[1] / "minions"
                accepted.mkdir(parents=True, exist_ok=True)
                (accepted / kiosk).write_bytes(public)


def batches(items, size):
    """``items`` in consecutive lists of ``size`` (the last one shorter); :class:`ScaleError` for a size below 1."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ScaleError(f"start-batch: {size!r} is not a whole number of 1 or more", "start-batch")
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def wait_up(run, minions, timeout):
    """The ``minions`` (sorted) that did not answer ``test.ping`` through the top master within ``timeout`` s
    (``lab.wait_for_minions``: each round asks only the ones still silent)."""
    answered = lab.wait_for_minions(run, sorted(minions), timeout, master=TOP_ID)
    return sorted(m for m in minions if answered.get(m) is not True)


def sync_all(topo, minions, tries=3):
    """``saltutil.sync_all`` on ``minions`` from the top master (in process): ``{minion: return}`` of those that
    answered; the minions still missing are asked again, up to ``tries`` jobs."""
    synced = {}
    client = two_tops.salt.client.LocalClient(mopts=topo.master_opts(TOP_ID))
    try:
        for _ in range(tries):
            missing = sorted(set(minions) - set(synced))
            if not missing:
                break
            with contextlib.suppress(Exception):  # a failed job: the missing ones are asked again
                synced.update(client.cmd(missing, "saltutil.sync_all", tgt_type="list", timeout=300) or {})
    finally:
        client.destroy()
    return synced


def salt_run(run, args, profile=None, log=None):
    """``salt-run`` on the top master: ``(returncode, seconds, its own CPU seconds, parsed answer)``; with
    ``profile`` (a file path) under cProfile, its stats written there (the CPU figure then includes the
    profiler's overhead)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    argv = [str(lab.BIN / "salt-run"), "-c", str(run / TOP_ID), "--out=json", *args]
    if log:  # salt-run's own debug log (LocalClient: which minions it expects, each return it sees)
        argv[3:3] = [f"--log-file={log}", "--log-file-level=debug"]
    if profile:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), *argv]
    try:
        proc = subprocess.run(argv,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired:
        rc, out = "T", ""
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        answer = json.loads(out or "{}")
    except json.JSONDecodeError:
        answer = {"_raw": out[-500:]}
    return rc, wall, cpu, answer


def one_size(args, n):
    topology = plan(args.campuses, args.pis, n)
    run = pathlib.Path(args.dir)
    topo = two_tops.Topology(run)  # empties run
    raw = fleet_data(topology)
    inv = fleet_inventory.validate(raw[fleet_inventory.PILLAR_KEY])
    daemons = lab.write_configs(run, raw, inv)
    master_opts = parse_master_opts(args.master_opt)
    pi_opts = parse_master_opts(args.pi_opt, "pi-opt")
    slim(run, topology, master_opts, pi_opts, not args.no_source_address)
    kiosks, pis = kiosk_ids(topology), pi_ids(topology)
    result = {"kiosks": n, "runs": {}, "notes": [], "cores": os.cpu_count()}
    top = yaml.safe_load((run / TOP_ID / "master").read_text())
    result["notes"].append(("top master", ", ".join(f"{k}: {top.get(k, 'default')}" for k in MASTER_OPTS)))
    if pi_opts:
        result["notes"].append(("Pi masters", ", ".join(f"{k}: {v}" for k, v in sorted(pi_opts.items()))))
    services, release_pids = None, {}
    try:
        services = Services(topology)
        began = time.monotonic()
        topo.start(TOP_ID, "master")
        for pi in pis:
            topo.start(pi, "master")
        for pi in pis:
            topo.start(pi, "syndic")
            topo.start(pi, "minion")
        silent = wait_up(run, pis, START_WAIT_S)
        # the kiosks in batches, each answering before the next starts: 100 multi-master minions starting at
        # once overload the Pi masters on 2 cores (their returns time out and start-up never ends)
        deadline = time.monotonic() + START_WAIT_S
        for batch in batches(kiosks, args.start_batch):
            for kiosk in batch:
                topo.start(f"kiosks/{kiosk}", "minion")
            silent += wait_up(run, batch, max(1, deadline - time.monotonic()))
        if silent:
            raise RuntimeError(f"N={n}: no answer from {len(silent)} minions ({', '.join(silent[:5])} ...); "
                               f"logs under {run}")
        up_s = time.monotonic() - began
        synced = sync_all(topo, pis + kiosks)
        if set(pis + kiosks) - set(synced):
            raise RuntimeError(f"N={n}: saltutil.sync_all reached {len(synced)} of {len(pis + kiosks)} minions")
        rc, _, _, answer = salt_run(run, ["kiosk_calendar.publish"])  # the Pis' reconcilers need a calendar
        print(f"N={n}: {len(daemons) + len(kiosks)} daemons up, "
              f"every minion answered after {up_s:.0f} s; pack synced; calendars published (rc {rc})", flush=True)
        result["notes"].append(("start-up", f"{up_s:.0f} s"))
        result["rss_mib"] = [tree_rss_mib(topo.procs[f"kiosks/{k} minion"].pid) for k in kiosks]
        result["notes"].append(("top master tree", f"{tree_rss_mib(topo.procs[f'{TOP_ID} master'].pid):.0f} MiB"))
        result["notes"].append(("Pi master+syndic+minion", f"{sum(tree_rss_mib(topo.procs[f'{pis[0]} {d}'].pid) for d in ('master', 'syndic', 'minion')):.0f} MiB"))
        top_pid = topo.procs[f"{TOP_ID} master"].pid
        cpu0 = tree_cpu(top_pid)
        time.sleep(IDLE_S)  # the top master's own background work, to read the runs' figures against
        result["notes"].append(("top master idle", f"{(tree_cpu(top_pid) - cpu0) / IDLE_S:.3f} CPU s/s"))
        off_done = False
        if any("rollout" in label for label, _, _ in selected_runs(args.runs)):
            release_pids = prepare_rollout(run, inv)
            result["notes"].append(("rollout", f"{RELEASE} {ROLLOUT_VERSION}, {ROLLOUT_MIB} MiB, published to the "
                                               f"top master's store; nginx for the top and every Pi"))
        for label, argv, off in selected_runs(args.runs):
            if off and not off_done:
                for kiosk in stopped(kiosks):
                    topo.kill(f"kiosks/{kiosk}")
                services.stop(stopped(kiosks))
                off_done = True
            cpu0 = tree_cpu(top_pid)
            argv = [a.format(campuses=",".join(sorted(topology["campuses"])), version=ROLLOUT_VERSION) for a in argv]
            key = _key(label, off)
            profile = artifact(args.profile, n, key, ".prof")
            log = artifact(args.debug_dir, n, key, ".log")
            if log:  # the arguments first: a run that hangs still leaves them
                (log.with_suffix(".json")).write_text(json.dumps({"argv": argv}))
            busy0 = machine_busy()
            rc, wall, run_cpu, answer = salt_run(run, argv, profile, log)
            if log:
                (log.with_suffix(".json")).write_text(json.dumps({"argv": argv, "answer": answer}, indent=1))
            machine_cpu = machine_busy() - busy0
            top_cpu = tree_cpu(top_pid) - cpu0
            result["runs"][key] = {"wall": wall, "top_cpu": top_cpu, "run_cpu": run_cpu, "rc": rc,
                                   "machine_cpu": machine_cpu}
            error = answer.get("error") if isinstance(answer, dict) else None
            print(f"N={n}: {key}: {wall:.1f} s, top CPU {top_cpu:.2f} s, salt-run CPU {run_cpu:.2f} s, "
                  f"machine CPU {machine_cpu:.1f} s, rc {rc}"
                  + (f" ({str(error)[:160]})" if error else ""), flush=True)
    finally:
        topo.down()
        stop_children(release_pids)  # the nginx servers, by pid
        if services:
            services.close()
    return result


def artifact(folder, n, key, suffix):
    """``folder/N<n>-<run label as a file name><suffix>`` (the folder made), or None without ``folder``."""
    if not folder:
        return None
    pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    return pathlib.Path(folder) / f"N{n}-{re.sub(r'[^A-Za-z0-9]+', '_', key)}{suffix}"


def stop_children(pids, grace=10):
    """SIGTERM the process group of each of this process's children ``{name: pid}``, reap them (a child
    that exited stays a zombie until reaped, and would look alive), SIGKILL what is left after ``grace`` s."""
    left = {}
    for name, pid in pids.items():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            left[name] = pid
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        for name, pid in list(left.items()):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            left.pop(name)
        time.sleep(0.1)
    for name, pid in left.items():
        print(f"{name} (pid {pid}) still there after SIGTERM: SIGKILL", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def prepare_rollout(run, inv):
    """Start nginx for the top master's export and every Pi (the lab's, by pid), publish :data:`RELEASE`
    :data:`ROLLOUT_VERSION` (no campus: nothing moves until the rollout run). Returns ``{name: pid}``."""
    before = set(lab.read_pids(run))
    error = lab.start_release_servers(run, inv)
    pids = {name: pid for name, pid in lab.read_pids(run).items() if name not in before}
    if error:
        stop_children(pids)
        raise RuntimeError(f"release servers: {error}")
    build = lab.build_root(run) / f"{RELEASE}-{ROLLOUT_VERSION}"
    build.mkdir(parents=True, exist_ok=True)
    (build / "app.bin").write_bytes(os.urandom(ROLLOUT_MIB << 20))
    (build / "install.py").write_text(lab.RELEASE_INSTALL_SCRIPT)
    install = json.dumps([sys.executable, "{dir}/install.py", "{dir}", "{version}"])
    rc, _, _, answer = salt_run(run, ["kiosk_release.publish", f"name={RELEASE}", f"version={ROLLOUT_VERSION}",
                                      f"source={build}", f"install={install}"])
    if rc != 0 or not (isinstance(answer, dict) and answer.get("result")):
        stop_children(pids)
        raise RuntimeError(f"publish {RELEASE} {ROLLOUT_VERSION}: rc {rc}, "
                           f"{(answer or {}).get('error') if isinstance(answer, dict) else answer}")
    return pids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiosks", default="25,50", help="comma-separated kiosk counts (in all, over the campuses)")
    parser.add_argument("--campuses", type=int, default=2)
    parser.add_argument("--pis", type=int, default=2, help="Pis per campus")
    parser.add_argument("--dir", default="/tmp/kf-bench-scale")
    parser.add_argument("--lock", default="/tmp/kf/integration.lock")
    parser.add_argument("--project", type=int, default=1000, help="kiosks to extrapolate the wall times to")
    parser.add_argument("--plan", "--dry", dest="dry", action="store_true", help="print what it would start, start nothing")
    parser.add_argument("--results", default="/tmp/kf-bench-scale.json",
                        help="each N's figures are written here as they come; --table prints the table from it")
    parser.add_argument("--table", action="store_true", help="print the table of --results, start nothing")
    parser.add_argument("--master-opt", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a top master setting for the run (repeatable; one of {', '.join(MASTER_OPTS)})")
    parser.add_argument("--pi-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of every Pi master (repeatable; same keys as --master-opt)")
    parser.add_argument("--no-source-address", action="store_true",
                        help="kiosk minions connect from 127.0.0.1, not their inventory address (no presence)")
    parser.add_argument("--runs", default=None,
                        help="comma-separated substrings: only the runs whose label contains one (e.g. verify,status)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="run each salt-run under cProfile and write its stats to DIR/N<n>-<run>.prof")
    parser.add_argument("--start-batch", type=int, default=25,
                        help="kiosk minions started at once; each batch answers before the next starts")
    parser.add_argument("--debug-dir", metavar="DIR", default=None,
                        help="keep each salt-run's debug log and its JSON answer in DIR")
    args = parser.parse_args(argv)
    if args.table:
        print(format_table(json.loads(pathlib.Path(args.results).read_text()), target=args.project))
        return 0
    try:
        parse_master_opts(args.master_opt)
        parse_master_opts(args.pi_opt, "pi-opt")
        selected_runs(args.runs)
        counts = parse_counts(args.kiosks)
        batches([], args.start_batch)
        topologies = {n: plan(args.campuses, args.pis, n) for n in counts}
    except ScaleError as exc:
        parser.error(f"--{exc.field}: {exc}")
    print(f"salt {two_tops.salt.version.__version__}; {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{os.cpu_count()} cores; {args.campuses} campuses x {args.pis} Pis; N = {', '.join(map(str, counts))}",
          flush=True)
    if args.dry:
        for n, topology in topologies.items():
            print(f"\nN={n}:")
            print("\n".join(f"   {line}" for line in describe(topology)))
        return 0
    results = []
    pathlib.Path(args.lock).parent.mkdir(parents=True, exist_ok=True)
    with open(args.lock, "a") as lock:  # noqa: PTH123 - held open for the flock
        print(f"waiting for {args.lock} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for n in counts:
                try:
                    results.append(one_size(args, n))
                    pathlib.Path(args.results).write_text(json.dumps(results, indent=1))
                except RuntimeError as exc:
                    print(f"N={n}: {exc}", file=sys.stderr, flush=True)
                    break
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if results:
        print()
        print(format_table(results, target=args.project))
    return 0 if len(results) == len(counts) else 1


if __name__ == "__main__":
    sys.exit(main())
