"""
Two top masters over the campus syndics, on real Salt daemons (loopback only).

top-a and top-b (``order_masters: True``, one shared master key pair); two Pis,
each a salt-master and a salt-syndic with ``syndic_master: [top-a, top-b]``
and its own ``master_id``; ``--kiosks`` kiosk minions hot-connected to both
Pis (``master: [pi-1, pi-2]``, one shared Pi key pair). For each variant
(``syndic_mode`` x top ``master_id`` x ``syndic_failover``) it counts, on each
top master's event bus:

- returns: ``--jobs`` ``test.echo`` jobs published by each top master; a job
  is complete when every kiosk's return reached the master that published it;
  missing, duplicated, and misrouted (reached the other top master) returns;
- events: ``--events`` jobs ``event.fire_master`` on every kiosk; how many
  copies of each kiosk event (plain tag, what reactors match) reach each top;
- top-a stopped (its process group SIGKILLed): jobs and events from top-b
  every second, and the time from the kill until jobs are complete again;
- top-a restarted: both again, and the time until both get complete jobs.

Prints a table per variant; asserts nothing. Run under the shared lock:

    flock /tmp/kf-integration.lock .venv/bin/python bench/two_tops.py [--kiosks 3] [--jobs 50]
        [--variants sync:address:random,sync:name:random,cluster:address:random]

Daemons run under ``--dir`` (default /tmp/kf-bench-tops), each its own process
group, recorded in ``pids.json`` and stopped by pid at the end (also on
Ctrl-C) with the lab's ``down``. ``auto_accept: True`` on every master: a
bench, not a shipped config.
"""

import argparse
import collections
import contextlib
import getpass
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import salt.client  # noqa: E402
import salt.config  # noqa: E402
import salt.crypt  # noqa: E402
import salt.utils.event  # noqa: E402
import salt.version  # noqa: E402

from lab import kiosk_lab as lab  # noqa: E402

TOPS = {"top-a": "127.0.110.1", "top-b": "127.0.110.2"}
PI_NET = "127.0.111."  # pi-<n> masters on 127.0.111.<n>
RET_TAG = re.compile(r"^salt/job/(\d+)/ret/(.+)$")
EVENT_TAG = "bench/kiosk-event"
MASTER_START_S = 120
JOB_WAIT_S = 15  # a return later than this counts as missing


def pi_address(n):
    return f"{PI_NET}{n}"


class Topology:
    """Salt daemons under one run directory, started with the lab's ``start`` (own process
    group, pid in pids.json) and stopped by pid."""

    def __init__(self, run):
        self.run = pathlib.Path(run)
        if self.run.exists():
            shutil.rmtree(self.run)
        self.run.mkdir(parents=True)
        self.keys = {}
        self.procs = {}  # "<node> <daemon>" -> Popen: ours to reap, or they linger as zombies

    def key_pair(self, layer):
        """One master key pair per layer (the tops share one, the Pis of a campus another)."""
        if layer not in self.keys:
            keydir = self.run / "keys" / layer
            keydir.mkdir(parents=True)
            salt.crypt.gen_keys(str(keydir), "master", 2048)
            self.keys[layer] = keydir
        return self.keys[layer]

    def _base(self, name):
        return {"root_dir": str(self.run / name), "log_file": str(self.run / name / "log"),
                "user": getpass.getuser(), "enable_fqdns_grains": False}

    def add_master(self, name, address, layer, **extra):
        pki = self.run / name / "etc" / "salt" / "pki" / "master"
        pki.mkdir(parents=True)
        for fname, mode in (("master.pem", 0o400), ("master.pub", 0o644)):
            shutil.copy(self.key_pair(layer) / fname, pki / fname)
            (pki / fname).chmod(mode)
        lab.write_yaml(self.run / name / "master", {
            **self._base(name), "id": name, "interface": address, "auto_accept": True,
            "syndic_log_file": str(self.run / name / "syndic.log"),
            "syndic_pidfile": str(self.run / name / "syndic.pid"), **extra})

    def add_minion(self, name, masters, **extra):
        lab.write_yaml(self.run / name / "minion", {
            **self._base(name), "id": name, "master": masters, **extra})

    def start(self, name, daemon):
        argv = [f"salt-{daemon}", "-c", str(self.run / name)]
        proc = lab.start(self.run, f"{name} {daemon}", argv)
        self.procs[f"{name} {daemon}"] = proc
        pid = proc.pid
        if daemon == "master" and not lab.wait_master_sockets(self.run / name, pid, MASTER_START_S):
            raise RuntimeError(f"{name} master did not open its sockets; logs under {self.run / name}")
        return pid

    def _stop(self, labels, sig, wait):
        for label in labels:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[label].pid, sig)  # its own session: the daemon and the children it forked
        deadline = time.time() + wait
        for label in labels:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.procs[label].wait(max(0.1, deadline - time.time()))
        return [label for label in labels if self.procs[label].poll() is None]

    def kill(self, name):
        """SIGKILL every daemon of node ``name`` (by the pids we started); returns the time of the kill."""
        labels = [label for label in self.procs if label.split(" ")[0] == name and self.procs[label].poll() is None]
        killed = time.time()
        self._stop(labels, signal.SIGKILL, 30)
        for label in labels:
            with contextlib.suppress(ProcessLookupError):  # children that left the group die with it
                os.killpg(self.procs[label].pid, signal.SIGKILL)
        # stale IPC sockets would make a restart look ready at once
        sock_dir = self.run / name / "var" / "run" / "salt" / "master"
        for sock in lab.MASTER_SOCKETS:
            with contextlib.suppress(FileNotFoundError):
                (sock_dir / sock).unlink()
        return killed

    def down(self):
        """SIGTERM every daemon we started, SIGKILL what is left after 30 s."""
        running = [label for label, proc in self.procs.items() if proc.poll() is None]
        for label in self._stop(running, signal.SIGTERM, 30):
            print(f"{label} (pid {self.procs[label].pid}) ignored SIGTERM: SIGKILL", file=sys.stderr)
            self._stop([label], signal.SIGKILL, 10)
        for proc in self.procs.values():  # forked children of a group leader that already exited
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def master_opts(self, name):
        return salt.config.client_config(str(self.run / name / "master"))


class Bus(threading.Thread):
    """A master's event bus, read in a thread: ``(time, tag, data)`` appended to ``items``."""

    def __init__(self, opts):
        super().__init__(daemon=True)
        self.event = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
        self.items = []
        self.running = True
        self.start()

    def run(self):
        while self.running:
            with contextlib.suppress(Exception):  # a master killed under us: the thread just ends
                got = self.event.get_event(wait=0.3, full=True)
                if got:
                    self.items.append((time.time(), got["tag"], got.get("data") or {}))

    def stop(self):
        self.running = False
        self.join(2)
        with contextlib.suppress(Exception):
            self.event.destroy()


class Bench:
    """Publishes jobs on the tops and reads what reaches each top's bus."""

    def __init__(self, topo, kiosks):
        self.topo, self.kiosks = topo, kiosks
        self.clients, self.buses = {}, {}
        self.past = []  # (top, items) of buses detached before their master was killed

    def attach(self, top):
        self.clients[top] = salt.client.LocalClient(mopts=self.topo.master_opts(top))
        self.buses[top] = Bus(self.topo.master_opts(top))

    def detach(self, top):
        bus = self.buses.pop(top, None)
        if bus:
            bus.stop()
        client = self.clients.pop(top, None)
        if client:
            with contextlib.suppress(Exception):
                client.destroy()

    def publish(self, top, fun, arg):
        """Publish to the kiosks; returns ``(jid, time)`` (jid None when the publish failed)."""
        at = time.time()
        try:
            jid = self.clients[top].cmd_async(self.kiosks, fun, arg, tgt_type="list")
        except Exception:  # noqa: BLE001 - a failed publish is a figure, not a crash
            jid = None
        return (jid or None), at

    def returns(self, jids):
        """``{(top, jid, kiosk): [times]}`` for the given jids, over every attached and past bus."""
        seen = collections.defaultdict(list)
        for top, items in self.all_items():
            for at, tag, _ in items:
                m = RET_TAG.match(tag)
                if m and m.group(1) in jids:
                    seen[(top, m.group(1), m.group(2))].append(at)
        return seen

    def events(self, marks):
        """``{(top, mark, kiosk): count}`` of kiosk events (plain tag) carrying one of ``marks``."""
        seen = collections.Counter()
        for top, items in self.all_items():
            for _, tag, data in items:
                inner = data.get("data") if isinstance(data.get("data"), dict) else {}
                if tag == EVENT_TAG and inner.get("mark") in marks:
                    seen[(top, inner["mark"], data.get("id"))] += 1
        return seen

    def all_items(self):
        for top, bus in self.buses.items():
            yield top, list(bus.items)
        for top, items in self.past:
            yield top, items

    def retire(self, top):
        """Keep what ``top``'s bus saw, then detach it (before its master is killed)."""
        self.past.append((top, list(self.buses[top].items)))
        self.detach(top)

    def wait_complete(self, jobs, deadline):
        """Poll until every published job has every kiosk's return on its publisher, or ``deadline``."""
        want = {(top, jid, k) for top, jid, _ in jobs if jid for k in self.kiosks}
        while time.time() < deadline:
            if want <= set(self.returns({jid for _, jid, _ in jobs})):
                return True
            time.sleep(0.2)
        return False

    def ready(self, tops, timeout):
        """Until a test.ping from each of ``tops`` gets every kiosk's return; seconds taken, or None."""
        began = time.time()
        while time.time() - began < timeout:
            jobs = [(top, *self.publish(top, "test.ping", [])) for top in tops]
            if self.wait_complete(jobs, time.time() + 10):
                return time.time() - began
        return None


def tally(bench, jobs, kiosks):
    """Per publishing top: jobs, complete, missing/duplicated/misrouted returns, latency (s)."""
    seen = bench.returns({jid for _, jid, _ in jobs if jid})
    rows = {}
    for top in sorted({t for t, _, _ in jobs}):
        mine = [(jid, at) for t, jid, at in jobs if t == top]
        row = rows[top] = {"jobs": len(mine), "failed_publish": sum(1 for j, _ in mine if not j), "complete": 0,
                           "missing": 0, "late": 0, "dup": 0, "misrouted": 0, "lat": []}
        for jid, at in mine:
            if not jid:
                continue
            times = []
            for kiosk in kiosks:
                got = [t for t in seen.get((top, jid, kiosk), []) if t - at <= JOB_WAIT_S]
                row["dup"] += max(0, len(seen.get((top, jid, kiosk), [])) - 1)
                row["misrouted"] += sum(len(seen.get((other, jid, kiosk), [])) for other in TOPS if other != top)
                if got:
                    times.append(min(got) - at)
                else:
                    row["missing"] += 1
                    row["late"] += bool(seen.get((top, jid, kiosk)))  # arrived, but after JOB_WAIT_S
            if len(times) == len(kiosks):
                row["complete"] += 1
                row["lat"].append(max(times))
    return rows


def event_tally(bench, marks, kiosks, tops):
    """Per receiving top: copies of each kiosk event, as a distribution ``{copies: count}``."""
    seen = bench.events(set(marks))
    return {top: collections.Counter(seen.get((top, m, k), 0) for m in marks for k in kiosks) for top in tops}


def fire_events(bench, top, count, label):
    marks, jobs = [], []
    for i in range(count):
        mark = f"{label}-{i}"
        marks.append(mark)
        jobs.append((top, *bench.publish(top, "event.fire_master", [{"mark": mark}, EVENT_TAG])))
        time.sleep(0.2)  # pacing of the publishes, not a wait for a result
    bench.wait_complete(jobs, time.time() + JOB_WAIT_S)
    return marks


def publish_rounds(bench, tops, count, pace):
    jobs = []
    for i in range(count):
        for top in tops:
            jobs.append((top, *bench.publish(top, "test.echo", [f"{top}-{i}"])))
        time.sleep(pace)  # pacing of the publishes, not a wait for a result
    bench.wait_complete(jobs, time.time() + JOB_WAIT_S)
    return jobs


def recovery(bench, tops, since, window, kiosks):
    """Publish from ``tops`` once a second for ``window`` s; seconds from ``since`` to the publish of the first
    job after which every job of every top was complete (None: never), and the jobs."""
    jobs = []
    end = time.time() + window
    while time.time() < end:
        for top in tops:
            jobs.append((top, *bench.publish(top, "test.echo", ["recovery"])))
        time.sleep(1)  # one round a second: the resolution of the figure
    bench.wait_complete(jobs, time.time() + JOB_WAIT_S)
    seen = bench.returns({jid for _, jid, _ in jobs if jid})
    ok = [bool(jid) and all(any(t - at <= JOB_WAIT_S for t in seen.get((top, jid, k), [])) for k in kiosks)
          for top, jid, at in jobs]
    first = None
    for i in range(len(jobs)):
        if all(ok[i:]):
            first = jobs[i][2] - since
            break
    return first, jobs


def build(args, mode, master_id, failover, retry=None):
    topo = Topology(args.dir)
    masters = sorted(TOPS)
    for top in masters:
        topo.add_master(top, TOPS[top], "tops", order_masters=True, syndic_wait=2,
                        master_id=TOPS[top] if master_id == "address" else top)
    pis = [f"pi-{n}" for n in range(1, 3)]
    for n, pi in enumerate(pis, 1):
        topo.add_master(pi, pi_address(n), "campus", syndic_master=[TOPS[t] for t in masters],
                        syndic_mode=mode, syndic_failover=failover, master_id=pi)
        # the syndic's id, key and log level come from the minion file (no Pi minion runs here)
        # retry "<s>x<n>": the syndic's wait per send to a top master and its tries (Salt: 5-10 s x 3)
        timer, tries = (int(x) for x in retry.split("x")) if retry else (None, None)
        sends = {"return_retry_timer": timer, "return_retry_timer_max": timer, "return_retry_tries": tries} if retry else {}
        topo.add_minion(pi, pi_address(n), log_level_logfile=args.syndic_log, **sends)
    kiosks = [f"kiosk-{n:02d}" for n in range(1, args.kiosks + 1)]
    for kiosk in kiosks:
        topo.add_minion(kiosk, [pi_address(n) for n in range(1, len(pis) + 1)])
    return topo, masters, pis, kiosks


def fmt_returns(rows):
    out = []
    for top, r in rows.items():
        lat = f"{statistics.median(r['lat']):.1f}/{max(r['lat']):.1f}" if r["lat"] else "-"
        out.append(f"{top}: {r['complete']}/{r['jobs']} complete, missing {r['missing']} (late {r['late']}), dup {r['dup']}, "
                   f"misrouted {r['misrouted']}, failed publish {r['failed_publish']}, latency med/max {lat} s")
    return "; ".join(out)


def fmt_events(dist, expected):
    return "; ".join(f"{top}: " + ", ".join(f"{n}x{c}" for c, n in sorted(d.items(), reverse=True))
                     + f" (want {expected}x)" for top, d in dist.items())


def variant(args, spec):
    mode, master_id, failover, *retry = spec.split(":")
    retry = retry[0] if retry else None
    print(f"\n== syndic_mode {mode}, top master_id = {master_id}, syndic_failover {failover}"
          + (f", syndic sends {retry.replace('x', ' s x ')} tries" if retry else ""), flush=True)
    topo, tops, pis, kiosks = build(args, mode, master_id, failover, retry)
    bench = Bench(topo, kiosks)
    try:
        for top in tops:
            topo.start(top, "master")
        for pi in pis:
            topo.start(pi, "master")
        for pi in pis:
            topo.start(pi, "syndic")
        for kiosk in kiosks:
            topo.start(kiosk, "minion")
        for top in tops:
            bench.attach(top)
        took = bench.ready(tops, 180)
        print(f"   up: every kiosk answered both tops after {took:.0f} s" if took is not None
              else "   up: NOT every kiosk answered both tops within 180 s", flush=True)
        lines = []
        jobs = publish_rounds(bench, tops, args.jobs, args.pace)
        lines.append(("both up, returns", fmt_returns(tally(bench, jobs, kiosks))))
        marks = fire_events(bench, "top-a", args.events, "up")
        lines.append(("both up, events", fmt_events(event_tally(bench, marks, kiosks, tops), len(pis))))

        bench.retire("top-a")
        killed = topo.kill("top-a")
        first, jobs = recovery(bench, ["top-b"], killed, args.window, kiosks)
        lines.append(("top-a down, top-b jobs", fmt_returns(tally(bench, jobs, kiosks))))
        lines.append(("top-a down, complete again", "never" if first is None else f"{max(first, 0):.1f} s after kill"))
        marks = fire_events(bench, "top-b", args.events, "down")
        lines.append(("top-a down, events", fmt_events(event_tally(bench, marks, kiosks, ["top-b"]), len(pis))))

        topo.start("top-a", "master")
        back = time.time()
        bench.attach("top-a")
        first, jobs = recovery(bench, tops, back, args.window, kiosks)
        lines.append(("top-a back, both complete", "never" if first is None else f"{max(first, 0):.1f} s after restart"))
        lines.append(("top-a back, recovery jobs", fmt_returns(tally(bench, jobs, kiosks))))
        jobs = publish_rounds(bench, tops, args.jobs, args.pace)
        lines.append(("top-a back, returns", fmt_returns(tally(bench, jobs, kiosks))))
        marks = fire_events(bench, "top-a", args.events, "back")
        lines.append(("top-a back, events", fmt_events(event_tally(bench, marks, kiosks, tops), len(pis))))
        for label, text in lines:
            print(f"   {label:<28} {text}", flush=True)
    finally:
        for top in list(bench.buses):
            bench.detach(top)
        topo.down()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/kf-bench-tops")
    parser.add_argument("--kiosks", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=50, help="test.echo jobs per top master and phase")
    parser.add_argument("--events", type=int, default=10, help="event.fire_master jobs per phase")
    parser.add_argument("--pace", type=float, default=0.3, help="seconds between publish rounds")
    parser.add_argument("--window", type=float, default=40, help="seconds of one-a-second jobs after a kill/restart")
    parser.add_argument("--syndic-log", default="info", help="log_level_logfile of the syndics (<dir>/pi-<n>/syndic.log)")
    parser.add_argument("--variants", default="sync:address:random,sync:name:random,cluster:address:random",
                        help="comma-separated syndic_mode:master_id(address|name):syndic_failover[:<retry s>x<tries>]")
    args = parser.parse_args(argv)
    print(f"salt {salt.version.__version__}; {args.kiosks} kiosks on 2 Pis; each Pi syndic on top-a "
          f"{TOPS['top-a']} and top-b {TOPS['top-b']}; a return counts if it arrives within {JOB_WAIT_S} s")
    for spec in args.variants.split(","):
        variant(args, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
