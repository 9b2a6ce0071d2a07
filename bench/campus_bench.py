"""
Campus autonomy figures, on loopback only, with the pack's real parts loaded
through Salt's loaders (no Salt daemon is started):

1. from a due instant to magic packets on the wire: a Pi master's
   ``kiosk_campus.reconcile`` (the runner) at the opening instant of a
   campus whose kiosks are 30 % off, and end to end through
   ``kiosk_campus.tick`` (what the Pi master's schedule runs every few
   seconds) started 3 s before the opening by the Pi's clock; UDP listeners
   on the VLAN broadcasts stamp the first and last packet of the campus's
   kiosks (the leader's shutdown jobs, if any, go to a stand-in client);
2. that run's duration (30 % of the kiosks off: presence comes from the Pi
   master's own connection table, the nmap probe answers at once for a
   closed port; nothing waits out a ping timeout), and a steady-state run;
3. reconciler CPU per run for 35 and 300 kiosks: the pure part
   (``fleet_sweep.expect`` + ``fleet_campus.decide`` + ``fleet_campus.entries``,
   repeated) and the whole run (the runner's own CPU, nmap's CPU as a child
   process, and the wall time);
4. leader failover: Pis probing each other (``kiosk_campus.probe``) on
   simulated clocks (the clock files' ``offset_s`` and the runner's
   boot-time clock function: every probe round moves both on by the probe
   interval), the leader's repository stops
   answering (the Pi died) at several phases of the probe interval; the
   simulated seconds until every live Pi names the new leader;
5. from reconnect to the top master showing a full day of a 35-kiosk
   campus: four Pi outboxes holding a day (realistic: what the reconciler
   writes; worst case: an observation per kiosk per minute, up to the cap),
   collected by ``kiosk_outbox.collect`` (the runner, the Pis' real
   ``kiosk_outbox`` module, a webhook on loopback), then ``kiosk_outbox.day``.
   A real job through the syndics adds one round trip per paging round.

Needs the ``nmap`` binary (1-3). Prints figures; asserts nothing. About a
minute:

    .venv/bin/python bench/campus_bench.py [--kiosks 35,300] [--pis 2] [--skip reconcile,failover,collect]
"""

import argparse
import datetime as dt
import http.server
import json
import math
import pathlib
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "_utils"))

import salt.client  # noqa: E402
import salt.config  # noqa: E402
import salt.loader  # noqa: E402
import yaml  # noqa: E402

import fleet_calendar  # noqa: E402
import fleet_campus  # noqa: E402
import fleet_inventory  # noqa: E402
import fleet_keys  # noqa: E402
import fleet_outbox  # noqa: E402
import fleet_schedule  # noqa: E402
import fleet_sign  # noqa: E402
import fleet_sweep  # noqa: E402
import fleet_wol  # noqa: E402

CAMPUS = "bench"
OPENING = "2027-03-01T07:00:00Z"  # a Monday; the schedule: every kiosk on 07:00-19:00 UTC
STEADY = "2027-03-01T07:01:00Z"
SCHEDULE = {"campuses": {CAMPUS: {"timezone": "UTC", "default": "off",
                                  "rules": [{"name": "hours", "weekly": {"daily": ["07:00-19:00"]}}]}}}
PER_VLAN = 200
RELEASE_KEY, RELEASE_PUB = fleet_sign.new_key_pair()
CAMPUS_PEM, CAMPUS_PUB = fleet_keys.new_master_key_pair()


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A loopback HTTP server in a thread: ``handle(request)`` answers each request."""

    def __init__(self, handle, address="127.0.0.1"):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.handle(self)

            def do_POST(self):  # noqa: N802 - http.server's name
                outer.handle(self)

            def log_message(self, *args):
                pass

        self.handle = handle
        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.origin = f"http://{address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reply(request, status, body=b""):
    request.send_response(status)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


class Repo:
    """A Pi's nginx: ``root`` at ``/kiosk-releases/``; ``down`` (the Pi died): every request fails."""

    def __init__(self, root):
        self.root = root
        self.down = False
        self.server = Server(self.answer)

    def answer(self, request):
        path = request.path.split("?")[0]
        target = self.root / path[len("/kiosk-releases/"):] if path.startswith("/kiosk-releases/") else None
        if self.down or target is None or ".." in path or not target.is_file():
            reply(request, 404)
            return
        reply(request, 200, target.read_bytes())


class Listener:
    """A UDP socket on a VLAN's broadcast address and the wake port: stamps each magic packet."""

    def __init__(self, address, port, macs):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.macs = macs
        self.stamps = []
        self.strays = 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                data, _ = self.sock.recvfrom(2048)
            except OSError:
                continue
            stamp = time.monotonic()
            try:
                mac = fleet_wol.parse_magic_packet(data)[0]
            except fleet_wol.WolError:
                mac = None
            if mac in self.macs:  # only this campus's kiosks' packets count
                self.stamps.append(stamp)
            else:
                self.strays += 1

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def inventory(kiosks, pis, wol_port, service_port, repos):
    vlans = math.ceil(kiosks / PER_VLAN)
    raw = {"campuses": {CAMPUS: {
        "timezone": "UTC", "wol_port": wol_port, "service_port": service_port,
        "vlans": {f"v{v}": {"network": f"127.0.{40 + v}.0/24"} for v in range(vlans)},
        "pis": {f"pi-{CAMPUS}-{p}": {"vlans": {f"v{v}": {"source": f"127.0.{40 + v}.{2 + p}"} for v in range(vlans)},
                                     "repo_url": repos[f"pi-{CAMPUS}-{p}"].server.origin + "/kiosk-releases/"}
                for p in range(1, pis + 1)},
        "kiosks": {f"kiosk-{CAMPUS}-{n:03}": {"mac": f"52:54:00:bb:{n // 256:02x}:{n % 256:02x}",
                                              "ip": f"127.0.{40 + n // PER_VLAN}.{20 + n % PER_VLAN}",
                                              "vlan": f"v{n // PER_VLAN}"}
                   for n in range(kiosks)},
    }}}
    return fleet_inventory.validate(raw)


class Campus:
    """``pis`` Pi masters of one campus of ``kiosks`` kiosks, each with its own folders, clock file and runners."""

    def __init__(self, root, kiosks, pis, off_share=0.3):
        self.root = root
        self.wol_port, self.service_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        names = [f"pi-{CAMPUS}-{p}" for p in range(1, pis + 1)]
        self.repos = {}
        for pi in names:
            (root / pi / "repo").mkdir(parents=True)
            self.repos[pi] = Repo(root / pi / "repo")
        self.inventory = inventory(kiosks, pis, self.wol_port, self.service_port, self.repos)
        spec = self.inventory["campuses"][CAMPUS]
        self.kiosk_ids = sorted(spec["kiosks"])
        # off_share of the kiosks off, spread over the campus (exactly floor(kiosks * off_share))
        off = {k for i, k in enumerate(self.kiosk_ids) if int((i + 1) * off_share) > int(i * off_share)}
        self.off = sorted(off)
        self.on_sockets = []
        for kiosk in self.kiosk_ids:
            if kiosk not in off:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((spec["kiosks"][kiosk]["ip"], self.service_port))
                sock.listen(4)
                self.on_sockets.append(sock)
        macs = {fleet_wol.kiosk_mac(k["mac"]) for k in spec["kiosks"].values()}
        self.listeners = [Listener(f"127.0.{40 + v}.255", self.wol_port, macs) for v in range(len(spec["vlans"]))]
        self.offsets = dict.fromkeys(names, 0.0)
        self.mono_start = time.monotonic()
        self.serial = 1_800_000_000
        self.pis = {pi: self.load(pi) for pi in names}

    def load(self, pi):
        base = self.root / pi
        pki = base / "pki"
        fleet_keys.write_master_key_pair(str(pki), CAMPUS_PEM, CAMPUS_PUB)
        settings = {"dir": str(base / "campus"), "campus": CAMPUS, "pi": pi, "verify_key": [RELEASE_PUB],
                    "repo_dir": str(base / "repo"), "clock_file": str(base / "clock.json"),
                    "probe_timeout_s": 1, "shutdown_delay_s": 0, "scan_host_timeout_s": 2}
        config = {"root_dir": str(base), "cachedir": str(base / "cache"), "pki_dir": str(pki),
                  "sock_dir": str(base / "sock"), "module_dirs": [str(REPO)], "id": f"{pi}_master",
                  "publish_port": free_port(socket.SOCK_STREAM), "ret_port": free_port(socket.SOCK_STREAM),
                  "kiosk_campus": settings, "log_file": str(base / "master.log")}
        (base / "master").write_text(yaml.safe_dump(config))
        self.set_clock(pi, 0.0)
        opts = salt.config.master_config(str(base / "master"))
        opts["__role"] = "master"
        doc = fleet_calendar.sign(fleet_calendar.build(self.inventory, SCHEDULE, {}, CAMPUS, self.serial, self.serial),
                                  RELEASE_KEY)
        fleet_calendar.store(settings["dir"], doc, [RELEASE_PUB], CAMPUS)
        return salt.loader.runner(opts, utils=salt.loader.utils(opts),
                                  loaded_base_name=f"kf_bench_{pi.replace('-', '_')}_{id(self)}")

    def set_clock(self, pi, offset):
        self.offsets[pi] = offset
        (self.root / pi / "clock.json").write_text(json.dumps({"synced": True, "offset_s": offset}))

    def simulate(self, pi, elapsed):
        """
        The Pi's clocks ``elapsed`` simulated seconds on: its wall clock (the
        clock file) and its boot-time clock (the runner's ``_mono``, which a
        peer status's age is counted on, stood in by a function).
        """
        self.set_clock(pi, elapsed)
        names = self.pis[pi]["kiosk_campus.probe"].func.__globals__
        if "_mono" in names:
            start = self.mono_start
            names["_mono"] = lambda: start + elapsed

    def run(self, pi, fun, **kwargs):
        return self.pis[pi][f"kiosk_campus.{fun}"](**kwargs)

    def close(self):
        for item in self.listeners:
            item.close()
        for sock in self.on_sockets:
            sock.close()
        for repo in self.repos.values():
            repo.server.close()


class KioskMinions:
    """The Pi master's LocalClient stand-in for the leader's shutdown jobs: every kiosk accepts (no daemon here)."""

    def __init__(self):
        self.jobs = []

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs.append((fun, list(targets)))
        for kiosk in targets:
            yield {kiosk: {"ret": {"action": "shutdown", "delay_s": (kwarg or {}).get("delay_s")}, "retcode": 0}}


def cpu():
    """(own CPU s, children CPU s): nmap runs as a child process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def timed_run(campus, pi, at):
    for item in campus.listeners:
        item.stamps.clear()
    cpu0, wall0 = cpu(), time.monotonic()
    ret = campus.run(pi, "reconcile", at=at)
    wall1, cpu1 = time.monotonic(), cpu()
    time.sleep(0.3)  # the listeners drain what is still in flight
    stamps = sorted(s for item in campus.listeners for s in item.stamps)
    return ret, {
        "wall_s": wall1 - wall0, "cpu_s": cpu1[0] - cpu0[0], "nmap_cpu_s": cpu1[1] - cpu0[1],
        "first_packet_s": stamps[0] - wall0 if stamps else None,
        "last_packet_s": stamps[-1] - wall0 if stamps else None, "packets": len(stamps),
    }


def pure_cpu(campus, repeat):
    """CPU seconds per run of the reconciler's decisions alone (no I/O), on the campus's own calendar."""
    doc = fleet_calendar.load(str(campus.root / next(iter(campus.pis)) / "campus"), [RELEASE_PUB], CAMPUS)
    inventory, holds = fleet_calendar.inventory_of(doc), fleet_calendar.holds_of(doc)
    schedule = fleet_calendar.schedule_of(doc) or fleet_schedule.load({"campuses": {}})
    now = fleet_campus.instant(OPENING)
    observed = {k: {"state": "off" if k in campus.off else "on"} for k in campus.kiosk_ids}
    clock = {"synced": True, "offset_s": 0.0, "source": "file"}
    allowed = fleet_campus.gate(clock, [], True, "pi-1")
    state = fleet_sweep.load_state({})
    started = time.process_time()
    for _ in range(repeat):
        view = fleet_sweep.expect(inventory, schedule, holds, now)
        decision = fleet_campus.decide(view, observed, state["pending"], allowed)
        woken = [k for ids in decision["wake"].values() for k in ids]
        transitions = {k: fleet_campus.transition(schedule, view, k, now, "UTC") for k in woken}
        expected = {k: view["expected"][k]["state"] for k in observed}
        fleet_campus.entries(CAMPUS, "pi-1", now, {"woken": woken, "shut_down": [], "results": {}}, None, {},
                             transitions, observed, {}, expected, allowed, clock, [], "pi-1", {"pi-1": {}}, None)
    return (time.process_time() - started) / repeat


def bench_due(root, kiosks, pis, lead_s=3.0):
    """
    The due instant to the first magic packet, end to end, when the Pi
    master's schedule runs ``kiosk_campus.tick`` (every few seconds; a tick
    that finds a transition before the next one sleeps until it): the Pi's
    clock (its clock file's offset) is set ``lead_s`` before the opening,
    one reconcile has run two minutes before it. None when the runner has
    no ``tick``.
    """
    campus = Campus(root / f"due-{kiosks}", kiosks, pis)
    try:
        pi = next(iter(campus.pis))
        if "kiosk_campus.tick" not in campus.pis[pi]:
            return None
        opening = fleet_campus.instant(OPENING).timestamp()
        for name in campus.pis:
            campus.set_clock(name, opening - 120 - time.time())
            campus.run(name, "probe")
        campus.run(pi, "reconcile")  # the state a running Pi has: expected off, reconciled two minutes ago
        for name in campus.pis:
            campus.set_clock(name, opening - lead_s - time.time())
        for item in campus.listeners:
            item.stamps.clear()
        due = time.monotonic() + (opening - (time.time() + campus.offsets[pi]))  # when the Pi's clock says 07:00
        ret = campus.run(pi, "tick")
        done = time.monotonic()
        time.sleep(0.3)
        stamps = sorted(s for item in campus.listeners for s in item.stamps)
        return {"reconciled": ret.get("reconciled"), "why": ret.get("why"), "woke": len(ret.get("woke", [])),
                "first_packet_s": stamps[0] - due if stamps else None,
                "last_packet_s": stamps[-1] - due if stamps else None, "run_s": done - due}
    finally:
        campus.close()


def bench_reconcile(root, kiosks, pis):
    campus = Campus(root / f"reconcile-{kiosks}", kiosks, pis)
    try:
        pi = next(iter(campus.pis))
        for name in campus.pis:  # statuses out and in: the Pis see each other, one leads
            campus.run(name, "probe")
        for name in campus.pis:
            campus.run(name, "probe")
        ret, opening = timed_run(campus, pi, OPENING)
        if ret.get("result") is not True:
            print(f"  reconcile failed: {ret.get('error')}")
        woke = len(ret.get("woke", []))
        _, steady = timed_run(campus, pi, STEADY)
        steadies = [steady] + [timed_run(campus, pi, STEADY)[1] for _ in range(2)]
        pure = pure_cpu(campus, 20 if kiosks <= 100 else 5)
        return {"kiosks": kiosks, "off": len(campus.off), "woke": woke, "opening": opening,
                "steady_wall_s": statistics.median(s["wall_s"] for s in steadies),
                "steady_cpu_s": statistics.median(s["cpu_s"] for s in steadies),
                "steady_nmap_cpu_s": statistics.median(s["nmap_cpu_s"] for s in steadies), "pure_cpu_s": pure}
    finally:
        campus.close()


def bench_failover(root, pis, phases, probe_every=20.0):
    """Simulated seconds from the leader's death until every live Pi names another leader, per death phase."""
    results = {}
    for phase in phases:
        campus = Campus(root / f"failover-{phase}", 4, pis, off_share=0)
        try:
            names = sorted(campus.pis)
            t = 0.0
            for _ in range(2):
                for pi in names:
                    campus.simulate(pi, t)
                    campus.run(pi, "probe")
                t += probe_every
            leader = campus.run(names[-1], "probe")["leader_pi"]
            died = t - probe_every + phase  # the leader dies ``phase`` s after the last probe round
            campus.repos[leader].down = True
            live = [p for p in names if p != leader]
            moved = None
            while moved is None and t - died < 600:
                leaders = set()
                for pi in live:
                    campus.simulate(pi, t)
                    leaders.add(campus.run(pi, "probe")["leader_pi"])
                if leader not in leaders and len(leaders) == 1:
                    moved = t - died
                t += probe_every
            results[phase] = moved
        finally:
            campus.close()
    return results


def day_of_outbox(pi, pi_index, kiosks, leader, per_minute):
    """The entries a Pi's reconciler writes over one day of a campus of ``kiosks`` kiosks (07:00-19:00)."""
    day = dt.datetime(2027, 3, 1, tzinfo=dt.timezone.utc)
    out = []
    opening, closing = day.replace(hour=7), day.replace(hour=19)
    for n in range(kiosks):
        kiosk = f"kiosk-{CAMPUS}-{n:03}"
        base = {"kiosk": kiosk, "campus": CAMPUS, "pi": pi}
        out.append(("action", fleet_outbox.entry_key(CAMPUS, kiosk, "wake", opening),
                    dict(base, action="wake", at=fleet_campus.iso(opening), transition=fleet_campus.iso(opening),
                         result="sent"), opening))
        if leader:
            out.append(("action", fleet_outbox.entry_key(CAMPUS, kiosk, "shutdown", closing),
                        dict(base, action="shutdown", at=fleet_campus.iso(closing),
                             transition=fleet_campus.iso(closing), result="pressed"), closing))
            for when, expected in ((opening, "on"), (closing, "off")):
                for check in (5, 10, 15):
                    at = when + dt.timedelta(minutes=check)
                    ok = not (n == 7 and expected == "on")  # one kiosk the simulator keeps off
                    out.append(("verification", fleet_outbox.entry_key(CAMPUS, kiosk, f"check+{check}", when),
                                dict(base, expected=expected, observed=expected if ok else "off", ok=ok,
                                     transition=fleet_campus.iso(when)), at))
        if leader and n == 7:
            key = fleet_outbox.entry_key(CAMPUS, kiosk, "mismatch", opening)
            since = fleet_campus.iso(opening)
            out.append(("alert", key, {"severity": "warning", "kind": "power_mismatch", "kiosk": kiosk,
                                       "campus": CAMPUS, "expected": "on", "observed": "off", "since": since,
                                       "summary": f"kiosk {kiosk} ({CAMPUS}) should be on, observed off since {since}",
                                       "idempotency_key": key, "pi": pi}, opening + dt.timedelta(minutes=15)))
        minutes = range(0, 1440) if per_minute else (7 * 60 + 1, 19 * 60 + 1)
        for minute in minutes:
            at = day + dt.timedelta(minutes=minute)
            state = "on" if 7 * 60 <= minute < 19 * 60 and n != 7 else "off"
            out.append(("observation", fleet_outbox.entry_key(CAMPUS, kiosk, "observed", at),
                        dict(base, observed=state, expected="on" if 7 * 60 <= minute < 19 * 60 else "off"), at))
    out.append(("leader", fleet_outbox.entry_key(CAMPUS, pi, "leader", opening),
                {"campus": CAMPUS, "pi": pi, "leader": f"pi-{CAMPUS}-1", "reachable": []}, opening))
    return out


class PiMinions:
    """The top master's LocalClient stand-in: each job goes to the Pis' real kiosk_outbox modules."""

    def __init__(self, root, pis, fleet):
        self.mods, self.jobs = {}, 0
        for pi in pis:
            opts = salt.config.minion_config(None)
            opts.update({"file_client": "local", "root_dir": str(root / pi), "cachedir": str(root / pi / "cache"),
                         "module_dirs": [str(REPO)], "id": pi, "grains": {},
                         "pillar": fleet_inventory.slice_for(fleet, pi),
                         "kiosk_campus": {"dir": str(root / pi / "campus"), "outbox_cap": 50000}})
            self.mods[pi] = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts),
                                                    whitelist=["kiosk_outbox", "config"],
                                                    loaded_base_name=f"kf_bench_pi_{pi.replace('-', '_')}_{id(self)}")

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs += 1
        for pi in targets:
            yield {pi: {"ret": self.mods[pi][fun](**(kwarg or {})), "retcode": 0}}


def bench_collect(root, kiosks, pis, per_minute, limit):
    root.mkdir(parents=True)
    posts = []

    def hook(request):
        posts.append(request.rfile.read(int(request.headers.get("Content-Length", 0))))
        reply(request, 204)

    webhook = Server(hook)
    names = [f"pi-{CAMPUS}-{p}" for p in range(1, pis + 1)]
    raw = {"campuses": {CAMPUS: {
        "timezone": "UTC", "vlans": {"v0": {"network": "127.0.40.0/24"}},
        "pis": {pi: {"vlans": {"v0": {"source": f"127.0.40.{2 + i}"}}} for i, pi in enumerate(names)},
        "kiosks": {f"kiosk-{CAMPUS}-{n:03}": {"mac": f"52:54:00:bc:00:{n:02x}", "ip": f"127.0.40.{20 + n}",
                                              "vlan": "v0"} for n in range(kiosks)}}}}
    fleet = {"kiosk_fleet": raw}
    written = 0
    for index, pi in enumerate(names):
        box = fleet_outbox.Outbox(str(root / pi / "campus" / "outbox.db"))
        entries = day_of_outbox(pi, index, kiosks, index == 0, per_minute)
        for start in range(0, len(entries), 1000):
            box.add_many(entries[start:start + 1000])
        written += sum(box.stats()["entries"].values())  # what the cap (50,000 per outbox) kept
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(root), "cachedir": str(root / "top-cache"), "pki_dir": str(root / "pki"),
                 "sock_dir": str(root / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(root / "fleet.yaml")}, "__role": "master",
                 "kiosk_fleet_alerts": {"webhook_url": webhook.origin + "/hook", "timeout": 3}})
    runners = salt.loader.runner(opts, utils=salt.loader.utils(opts))
    minions = PiMinions(root, names, fleet)
    real = salt.client.get_local_client
    salt.client.get_local_client = minions
    try:
        started, cpu0 = time.monotonic(), cpu()[0]
        rounds, collects = 0, 0
        while True:  # one collect after the reconnect; a second only if the budget ran out
            ret = runners["kiosk_outbox.collect"](timeout=30, limit=limit)
            rounds += ret.get("rounds", 0)
            collects += 1
            if not ret.get("more") or collects > 20:
                break
        collected, collect_cpu = time.monotonic() - started, cpu()[0] - cpu0
        shown = runners["kiosk_outbox.day"](campus=CAMPUS, since="2027-03-01T00:00:00Z")["campuses"].get(CAMPUS, {})
        day_s = time.monotonic() - started - collected
    finally:
        salt.client.get_local_client = real
        webhook.close()
    return {"entries_written": written, "collect_s": collected, "collect_cpu_s": collect_cpu, "day_s": day_s,
            "rounds": rounds,
            "collects": collects, "jobs": minions.jobs, "result": ret.get("result"), "error": ret.get("error"),
            "actions": len(shown.get("actions", [])), "verifications": len(shown.get("verifications", [])),
            "alerts": len(shown.get("alerts", [])), "kiosks": len(shown.get("kiosks", {})), "posts": len(posts)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiosks", default="35,300", help="campus sizes for the reconciler figures")
    parser.add_argument("--pis", type=int, default=2, help="Pis of the reconciler and failover campuses")
    parser.add_argument("--skip", default="", help="comma list of: reconcile, failover, collect")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    root = pathlib.Path(tempfile.mkdtemp(prefix="kf-campus-bench-"))
    real_client = salt.client.get_local_client
    salt.client.get_local_client = KioskMinions()
    try:
        if "reconcile" not in skip:
            if shutil.which("nmap") is None:
                print("reconcile: skipped (no nmap binary)")
            else:
                print("Reconciler on a Pi master (kiosk_campus.reconcile, loaded by Salt's runner loader; "
                      "nmap probe of the service ports; magic packets to the VLAN broadcasts on loopback)")
                print(f"{'kiosks':>6} {'off':>4} {'woke':>4} {'1st pkt s':>9} {'last pkt s':>10} {'run s':>6} "
                      f"{'run CPU s':>9} {'nmap CPU s':>10} | {'steady s':>8} {'CPU s':>6} {'nmap':>6} | "
                      f"{'pure CPU ms':>11}")
                for kiosks in (int(k) for k in args.kiosks.split(",")):
                    r = bench_reconcile(root, kiosks, args.pis)
                    o = r["opening"]
                    first = f"{o['first_packet_s']:.3f}" if o["first_packet_s"] is not None else "-"
                    last = f"{o['last_packet_s']:.3f}" if o["last_packet_s"] is not None else "-"
                    print(f"{r['kiosks']:>6} {r['off']:>4} {r['woke']:>4} {first:>9} {last:>10} {o['wall_s']:>6.2f} "
                          f"{o['cpu_s']:>9.2f} {o['nmap_cpu_s']:>10.2f} | {r['steady_wall_s']:>8.2f} "
                          f"{r['steady_cpu_s']:>6.2f} {r['steady_nmap_cpu_s']:>6.2f} | {r['pure_cpu_s'] * 1000:>11.1f}")
                print("  1st/last pkt: seconds from the start of a reconcile run at the due instant (at=) to the first/"
                      "last magic packet received; steady: a run with nothing to do; pure: the decisions alone.")
                for kiosks in (int(k) for k in args.kiosks.split(",")):
                    due = bench_due(root, kiosks, args.pis)
                    if due is None:
                        print("  due instant -> packets end to end: the runner has no kiosk_campus.tick; the schedule's"
                              " interval adds its wait to the figures above")
                        break
                    first = f"{due['first_packet_s']:.3f} s" if due["first_packet_s"] is not None else "none"
                    last = f"{due['last_packet_s']:.3f} s" if due["last_packet_s"] is not None else "none"
                    print(f"  {kiosks} kiosks, kiosk_campus.tick 3 s before the due instant (it sleeps until it): first "
                          f"packet {first}, last {last} after the due instant; the run ended {due['run_s']:.2f} s after"
                          f" it ({due['woke']} woken; {due['why']})")
        if "failover" not in skip:
            print("\nLeader failover (kiosk_campus.probe every 20 s on simulated clocks, stale_s 40 default)")
            found = bench_failover(root, max(args.pis, 3), (0.0, 10.0, 19.0))
            for phase, moved in found.items():
                shown = f"{moved:.0f} s" if moved is not None else "never (within 600 s)"
                print(f"  leader died {phase:>4.0f} s after a probe round: every live Pi names the new leader "
                      f"after {shown}")
        if "collect" not in skip:
            print("\nReconnect -> the top master shows a full day of a 35-kiosk campus (4 Pis; kiosk_outbox.collect "
                  "+ kiosk_outbox.day)")
            for label, per_minute, limit in (("realistic (observations on change)", False, None),
                                             ("worst case (an observation per kiosk per minute, to the cap)", True, None),
                                             ("worst case, limit=1000 per round", True, 1000)):
                r = bench_collect(root / f"collect-{int(per_minute)}-{limit}", 35, 4, per_minute, limit)
                print(f"  {label}: {r['entries_written']} entries in 4 outboxes; collect {r['collect_s']:.2f} s "
                      f"(CPU {r['collect_cpu_s']:.2f} s, Pi modules and runner together) "
                      f"({r['rounds']} rounds, {r['collects']} collect run(s)), day {r['day_s']:.2f} s; shown: "
                      f"{r['actions']} actions, {r['verifications']} verifications, {r['alerts']} alert(s) "
                      f"({r['posts']} POST), {r['kiosks']} kiosks; result {r['result']}"
                      + (f" ({r['error']})" if r["error"] else ""))
            print("  each round is one job; through the syndics each adds one job round trip to these figures, and the"
                  " first collect after a reconnect starts within a minute (the master schedule).")
    finally:
        salt.client.get_local_client = real_client
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
