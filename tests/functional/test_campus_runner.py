"""
The campus runtime's glue, loaded by Salt's own loaders with real parts: two
Pi masters of campus east (``kiosk_campus`` runner each, its own folders and
clock file, the campus master key pair in its pki_dir), a calendar signed
with a real release key, each Pi's release repository served over HTTP on
loopback (peers fetch statuses and calendars from it), nmap probing kiosk
service ports on 127.0.x addresses, magic packets caught by UDP listeners on
the VLAN broadcasts, the leader's shutdowns delivered to the kiosks' real
``kiosk_power`` modules (their power button a script that counts presses),
and each Pi's SQLite outbox. Only the Pi master's LocalClient is stood in
(it hands each job to the kiosk modules), as tests/functional/test_power_runner.py does.
"""

import copy
import json
import os
import pathlib
import shutil
import socket
import sys
import time

import pytest
import salt.client
import salt.config
import salt.loader
import yaml

import fleet_calendar
import fleet_campus
import fleet_inventory
import fleet_keys
import fleet_lock
import fleet_outbox
import fleet_sign
import fleet_wol
from tests.support.loopback import Loopback, reply
from tests.support.topology import free_tcp_port, free_udp_port, two_campus_inventory
from tests.support.local_client import LocalClientStandIn

pytestmark = pytest.mark.skipif(shutil.which("nmap") is None, reason="needs the nmap binary")

REPO = pathlib.Path(__file__).resolve().parents[2]
RELEASE_KEY, RELEASE_PUB = fleet_sign.new_key_pair()
FORGER_KEY, _ = fleet_sign.new_key_pair()
CAMPUS_PEM, CAMPUS_PUB = fleet_keys.new_master_key_pair()
OTHER_PEM, OTHER_PUB = fleet_keys.new_master_key_pair()
OPEN = "2027-03-01T08:00:30+08:00"  # a Monday: both kiosks due on from 08:00
CLOSE = "2027-03-01T20:00:30+08:00"  # due off from 20:00
OPENING = "2027-03-01T00:00:00Z"  # the transitions, in UTC: the keys
CLOSING = "2027-03-01T12:00:00Z"
SCHEDULE = {"campuses": {"east": {"timezone": "Asia/Shanghai", "default": "off",
                                  "rules": [{"name": "hours", "weekly": {"daily": ["08:00-20:00"]}}]}}}
BUTTON = ("import sys, pathlib; p = pathlib.Path(sys.argv[1]); "
          "p.open('a').write(sys.argv[2] + '\\n')")


class Repo(Loopback):
    """A Pi's nginx: serves files under ``root`` at ``/kiosk-releases/``, GET only; ``down`` answers nothing useful."""

    def __init__(self, root):
        super().__init__()
        self.root = root
        self.down = False

    def answer(self, request):
        path = request.path.split("?")[0]
        target = self.root / path[len("/kiosk-releases/"):] if path.startswith("/kiosk-releases/") else None
        if self.down or target is None or ".." in path or not target.is_file():
            reply(request, 404)
            return
        reply(request, 200, target.read_bytes(), [("Content-Type", "application/json")])


class Kiosks(LocalClientStandIn):
    """The LocalClient stand-in: each job goes to the kiosks' real kiosk_power modules (their minion loaders)."""

    def __init__(self, root):
        self.root = root
        self.mods = {}
        self.jobs = []

    def add(self, kiosk):
        opts = salt.config.minion_config(None)
        cache = self.root / kiosk
        opts.update({"file_client": "local", "root_dir": str(cache), "cachedir": str(cache / "cache"),
                     "module_dirs": [str(REPO)], "id": kiosk, "grains": {"kernel": "Linux"},
                     "kiosk_power": {"shutdown_command": [sys.executable, "-c", BUTTON,
                                                          str(self.root / "presses.txt"), "{id}"]}})
        self.mods[kiosk] = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts),
                                                   loaded_base_name=f"kf_kiosk_{kiosk.replace('-', '_')}_{id(self)}")

    def presses(self):
        path = self.root / "presses.txt"
        return path.read_text().splitlines() if path.exists() else []

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs.append((fun, list(targets), dict(kwarg or {})))
        for kiosk in targets:
            mod = self.mods.get(kiosk)
            if mod is not None:
                yield {kiosk: {"ret": mod[fun](**(kwarg or {})), "retcode": 0}}


def listen_tcp(address, port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(8)
    return sock


class Campus:
    def __init__(self, root, monkeypatch):
        self.root = root
        # free where they are bound: the VLANs' broadcast addresses, the kiosks' addresses
        self.wol_port = free_udp_port("127.0.1.255", "127.0.2.255")
        self.service_port = free_tcp_port("127.0.1.11", "127.0.2.12")
        raw = two_campus_inventory(wol_port=self.wol_port, service_port=self.service_port)["kiosk_fleet"]
        raw["campuses"] = {"east": raw["campuses"]["east"]}
        self.repos = {}
        for pi in ("pi-east-1", "pi-east-2"):
            (root / pi / "repo").mkdir(parents=True)
            self.repos[pi] = Repo(root / pi / "repo")
            raw["campuses"]["east"]["pis"][pi]["repo_url"] = self.repos[pi].origin + "/kiosk-releases/"
        self.inventory = fleet_inventory.validate(raw)
        self.serial = 1_800_000_000
        self.kiosks = Kiosks(root / "kiosks")
        for kiosk in self.inventory["campuses"]["east"]["kiosks"]:
            self.kiosks.add(kiosk)
        monkeypatch.setattr(salt.client, "get_local_client", self.kiosks)
        self.wol = {}
        for vlan, address in (("hall", "127.0.1.255"), ("stairs", "127.0.2.255")):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, self.wol_port))
            sock.settimeout(0.3)
            self.wol[vlan] = sock
        self.on_sockets = {}
        self.publish_port = free_tcp_port()
        self.pis = {pi: self.pi(pi) for pi in ("pi-east-1", "pi-east-2")}

    def calendar(self, serial, key=RELEASE_KEY, schedule=None):
        doc = fleet_calendar.build(self.inventory, schedule or SCHEDULE, {}, "east", serial, serial)
        return fleet_calendar.sign(doc, key)

    def pi(self, pi, campus_pem=CAMPUS_PEM, campus_pub=CAMPUS_PUB, **more):
        base = self.root / pi
        pki = base / "pki"
        fleet_keys.write_master_key_pair(str(pki), campus_pem, campus_pub)
        (base / "clock.json").write_text(json.dumps({"synced": True, "offset_s": 0}))
        settings = {"dir": str(base / "campus"), "campus": "east", "pi": pi, "verify_key": [RELEASE_PUB],
                    "repo_dir": str(base / "repo"), "clock_file": str(base / "clock.json"),
                    "probe_timeout_s": 1, "shutdown_delay_s": 0, "scan_host_timeout_s": 2,
                    "textfile_dir": str(base / "prom"), **more}
        (base / "prom").mkdir(exist_ok=True)
        config = {"root_dir": str(base), "cachedir": str(base / "cache"), "pki_dir": str(pki),
                  "sock_dir": str(base / "sock"), "module_dirs": [str(REPO)], "id": f"{pi}_master",
                  "kiosk_campus": settings, "log_file": str(base / "master.log"),
                  "publish_port": self.publish_port, "ret_port": free_tcp_port()}
        (base / "master").write_text(yaml.safe_dump(config))
        opts = salt.config.master_config(str(base / "master"))
        opts["__role"] = "master"
        fleet_calendar.store(settings["dir"], self.calendar(self.serial), [RELEASE_PUB], "east")
        # a loaded_base_name per Pi: two loaders of one module in one process must not share its globals
        runners = salt.loader.runner(opts, utils=salt.loader.utils(opts),
                                     loaded_base_name=f"kf_campus_{pi.replace('-', '_')}_{id(self)}")
        return {"runners": runners, "base": base,
                "settings": settings, "config": base / "master"}

    def run(self, pi, fun, **kwargs):
        return self.pis[pi]["runners"][f"kiosk_campus.{fun}"](**kwargs)

    def clock(self, pi, synced=True, offset_s=0):
        (self.pis[pi]["base"] / "clock.json").write_text(json.dumps({"synced": synced, "offset_s": offset_s}))

    def kiosk_on(self, kiosk):
        ip = self.inventory["campuses"]["east"]["kiosks"][kiosk]["ip"]
        self.on_sockets[kiosk] = listen_tcp(ip, self.service_port)

    def kiosk_off(self, kiosk):
        self.on_sockets.pop(kiosk).close()

    def packets(self):
        got = []
        for vlan, sock in self.wol.items():
            while True:
                try:
                    data, (source, _) = sock.recvfrom(2048)
                except TimeoutError:
                    break
                got.append((vlan, source, fleet_wol.parse_magic_packet(data)[0]))
        return got

    def outbox(self, pi):
        return fleet_outbox.Outbox(str(self.pis[pi]["base"] / "campus" / "outbox.db")).after(0, 5000)["entries"]

    def close(self):
        for repo in self.repos.values():
            repo.close()
        for sock in list(self.wol.values()) + list(self.on_sockets.values()):
            sock.close()


@pytest.fixture
def campus(tmp_path, monkeypatch):
    east = Campus(tmp_path, monkeypatch)
    yield east
    east.close()


def probe_all(campus):
    for _ in range(2):  # the second round sees the statuses the first wrote
        for pi in campus.pis:
            assert campus.run(pi, "probe")["result"] is True


def keys_of(entries, kind):
    return sorted(e["key"] for e in entries if e["kind"] == kind)


# ---------------------------------------------------------------- probe: signed statuses over HTTP, leader


def test_probe_serves_a_signed_status_and_both_pis_agree_on_the_leader(campus):
    probe_all(campus)
    served = json.loads((campus.pis["pi-east-2"]["base"] / "repo" / "campus" / "status.json").read_text())
    assert fleet_campus.verify_status(served, CAMPUS_PUB, "east", "pi-east-2")["serial"] == campus.serial
    assert served["sees"]["pi-east-1"]["synced"] is True
    for pi in campus.pis:
        ret = campus.run(pi, "probe")
        assert ret["reachable"] == ["pi-east-1", "pi-east-2"] and ret["leader_pi"] == "pi-east-1"
        assert ret["peers"] == {p: "ok" for p in campus.pis if p != pi}
    shown = campus.run("pi-east-2", "status")
    assert shown["result"] is True and shown["calendar"]["serial"] == campus.serial
    assert shown["leader_pi"] is None  # no reconcile yet
    assert "verify_key" not in shown["settings"] and "BEGIN" not in json.dumps(shown)


def test_a_pi_signing_with_another_key_is_unreachable_to_its_peers(campus):
    campus.pis["pi-east-1"] = campus.pi("pi-east-1", OTHER_PEM, OTHER_PUB)  # not the campus key pair
    probe_all(campus)
    two = campus.run("pi-east-2", "probe")
    assert two["reachable"] == ["pi-east-2"] and two["leader_pi"] == "pi-east-2"
    assert "signature" in two["peers"]["pi-east-1"]
    one = campus.run("pi-east-1", "probe")
    assert one["reachable"] == ["pi-east-1"]  # it cannot verify pi-east-2 either: fail closed both ways


def test_an_older_calendar_takes_the_peer_newer_one_and_a_forged_one_is_refused(campus):
    newer = campus.calendar(campus.serial + 100)
    fleet_calendar.store(campus.pis["pi-east-1"]["settings"]["dir"], newer, [RELEASE_PUB], "east")
    campus.run("pi-east-1", "probe")  # serves its calendar and announces its serial
    ret = campus.run("pi-east-2", "probe")
    assert ret["calendar"] == {"stored": True, "serial": campus.serial + 100, "kept": campus.serial,
                               "source": "pi-east-1"}
    assert campus.run("pi-east-2", "probe")["serial"] == campus.serial + 100
    # pi-east-1's repository now serves a calendar with a higher serial and a bad signature
    forged = campus.calendar(campus.serial + 200, key=FORGER_KEY)
    repo = campus.pis["pi-east-1"]["base"] / "repo" / "campus"
    (repo / "calendar.json").write_text(json.dumps(forged))
    status = fleet_campus.build_status("east", "pi-east-1", fleet_campus.iso(campus_now()), campus.serial + 200,
                                       {"synced": True}, {}, None)
    (repo / "status.json").write_text(json.dumps(fleet_campus.sign_status(status, CAMPUS_PEM)))
    ret = campus.run("pi-east-2", "probe")
    assert ret["calendar"]["stored"] is False and "signature" in ret["calendar"]["error"]
    kept = fleet_calendar.load(campus.pis["pi-east-2"]["settings"]["dir"], [RELEASE_PUB], "east")
    assert kept["serial"] == campus.serial + 100


def campus_now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


# ---------------------------------------------------------------- reconcile: wake, shutdown, verify, clock


def test_at_opening_every_live_pi_wakes_and_writes_one_action_key(campus):
    probe_all(campus)
    rets = {pi: campus.run(pi, "reconcile", at=OPEN) for pi in campus.pis}
    for ret in rets.values():
        assert ret["result"] is True, ret
        assert ret["woke"] == ["kiosk-east-01", "kiosk-east-02"] and ret["shut_down"] == []
        assert ret["observed"] == {"kiosk-east-01": "off", "kiosk-east-02": "off"}
        assert ret["transitions"] == {"kiosk-east-01": OPENING, "kiosk-east-02": OPENING}
    assert rets["pi-east-1"]["leader"] is True and rets["pi-east-2"]["leader"] is False
    got = campus.packets()
    macs = {k: s["mac"] for k, s in campus.inventory["campuses"]["east"]["kiosks"].items()}
    # each Pi sent each kiosk's packets on that kiosk's VLAN, from its own address there
    assert {(v, s, m) for v, s, m in got} == {
        ("hall", "127.0.1.2", macs["kiosk-east-01"]), ("hall", "127.0.1.3", macs["kiosk-east-01"]),
        ("stairs", "127.0.2.2", macs["kiosk-east-02"]), ("stairs", "127.0.2.3", macs["kiosk-east-02"])}
    wanted = [f"east/kiosk-east-01/wake/{OPENING}", f"east/kiosk-east-02/wake/{OPENING}"]
    assert keys_of(campus.outbox("pi-east-1"), "action") == keys_of(campus.outbox("pi-east-2"), "action") == wanted
    # the next minute: the checks are pending, nobody wakes again
    again = campus.run("pi-east-1", "reconcile", at="2027-03-01T08:01:30+08:00")
    assert again["woke"] == [] and "verification pending" in again["nothing"]["kiosk-east-01"]
    prom = (campus.pis["pi-east-1"]["base"] / "prom" / "kiosk_campus.prom").read_text()
    assert 'kiosk_campus_leader{campus="east",pi="pi-east-1"} 1' in prom


def test_a_kiosk_kept_off_gives_one_alert_from_the_leader_only(campus):
    probe_all(campus)
    for at in (OPEN, "2027-03-01T08:05:30+08:00", "2027-03-01T08:10:30+08:00", "2027-03-01T08:15:30+08:00"):
        for pi in campus.pis:
            last = campus.run(pi, "reconcile", at=at)
    leader = campus.outbox("pi-east-1")
    assert keys_of(leader, "alert") == [f"east/kiosk-east-01/mismatch/{OPENING}",
                                        f"east/kiosk-east-02/mismatch/{OPENING}"]
    assert keys_of(leader, "verification") == sorted(
        f"east/{k}/check+{n}/{OPENING}" for k in ("kiosk-east-01", "kiosk-east-02") for n in (5, 10, 15))
    alert = next(e for e in leader if e["kind"] == "alert")
    assert alert["data"]["idempotency_key"] == alert["key"] and alert["data"]["kind"] == "power_mismatch"
    assert keys_of(campus.outbox("pi-east-2"), "alert") == []  # the follower verifies for itself, reports nothing
    assert last["pi"] == "pi-east-2" and last["mismatches"]  # ...but keeps its own checks in step


def test_at_closing_only_the_leader_shuts_down_and_a_new_leader_never_presses_twice(campus):
    campus.kiosk_on("kiosk-east-01")
    campus.kiosk_on("kiosk-east-02")
    probe_all(campus)
    follower = campus.run("pi-east-2", "reconcile", at=CLOSE)
    assert follower["shut_down"] == [] and follower["withheld"]["shutdown"] == ["kiosk-east-01", "kiosk-east-02"]
    assert campus.kiosks.presses() == []
    leader = campus.run("pi-east-1", "reconcile", at=CLOSE)
    assert leader["result"] is True, leader
    assert leader["shut_down"] == ["kiosk-east-01", "kiosk-east-02"]
    assert sorted(campus.kiosks.presses()) == ["kiosk-east-01", "kiosk-east-02"]
    (fun, targets, kwarg), = campus.kiosks.jobs  # one job for the transition, the kiosk fills in its id
    assert kwarg["key"] == f"east/{{id}}/shutdown/{CLOSING}" and targets == ["kiosk-east-01", "kiosk-east-02"]
    # pi-east-1 dies (its repository answers nothing); the kiosks have not gone down yet
    campus.repos["pi-east-1"].down = True
    campus.pis["pi-east-2"] = campus.pi("pi-east-2", stale_s=5)  # a short bound, not to wait 40 s here
    campus.run("pi-east-2", "probe")
    assert campus.run("pi-east-2", "probe")["leader_pi"] == "pi-east-1"  # one lost fetch moves nothing...
    time.sleep(5.5)  # ...the last status pi-east-1 wrote going stale does
    campus.run("pi-east-2", "probe")
    took_over = campus.run("pi-east-2", "reconcile", at="2027-03-01T20:01:30+08:00")
    assert took_over["leader"] is True and took_over["live"] == ["pi-east-2"]
    assert took_over["shut_down"] == ["kiosk-east-01", "kiosk-east-02"]  # accepted: the same key again...
    assert sorted(campus.kiosks.presses()) == ["kiosk-east-01", "kiosk-east-02"]  # ...pressed once each
    assert keys_of(campus.outbox("pi-east-2"), "action") == [f"east/kiosk-east-01/shutdown/{CLOSING}",
                                                             f"east/kiosk-east-02/shutdown/{CLOSING}"]
    assert keys_of(campus.outbox("pi-east-2"), "leader")


def test_an_unsynchronised_clock_shuts_nothing_down_and_leaves_a_clock_entry(campus):
    campus.kiosk_on("kiosk-east-01")
    campus.clock("pi-east-1", synced=False)
    probe_all(campus)
    ret = campus.run("pi-east-1", "reconcile", at=CLOSE)
    # pi-east-2's synchronised clock leads now; pi-east-1 is confirmed by it, so it may wake, never shut down
    assert ret["leader"] is False and ret["leader_pi"] == "pi-east-2"
    assert ret["clock"]["synced"] is False and ret["clock"]["confirmed_by"] == ["pi-east-2"]
    assert ret["shut_down"] == [] and "kiosk-east-01" in ret["withheld"]["shutdown"]
    clock = [e for e in campus.outbox("pi-east-1") if e["kind"] == "clock"]
    assert len(clock) == 1 and clock[0]["data"]["synced"] is False and clock[0]["key"].startswith("east/pi-east-1/clock/")
    # alone (pi-east-2 gone) nothing confirms it: it neither wakes nor shuts down, and still says so
    campus.repos["pi-east-2"].down = True
    campus.pis["pi-east-1"] = campus.pi("pi-east-1", stale_s=5)
    campus.clock("pi-east-1", synced=False)
    time.sleep(5.5)
    campus.run("pi-east-1", "probe")
    alone = campus.run("pi-east-1", "reconcile", at=OPEN)
    assert alone["leader"] is True and alone["clock"]["confirmed_by"] == []
    assert alone["woke"] == [] and alone["withheld"]["wake"] == ["kiosk-east-02"]
    assert campus.kiosks.presses() == [] and campus.packets() == []


def test_one_reconcile_at_a_time_and_no_calendar_is_a_clear_failure(campus):
    probe_all(campus)
    runner = campus.pis["pi-east-1"]["runners"]["kiosk_campus.reconcile"]
    module = runner.func.__globals__
    lock = os.path.join(campus.pis["pi-east-1"]["settings"]["dir"], "reconcile.lock")
    old = module["RECONCILE_WAIT_S"]
    module["RECONCILE_WAIT_S"] = 0.2
    try:
        with fleet_lock.exclusive(lock, 1, RuntimeError("held")):
            busy = runner(at=OPEN)
    finally:
        module["RECONCILE_WAIT_S"] = old
    assert busy["result"] is False and busy["error"].startswith("reconcile: another reconcile")
    os.unlink(os.path.join(campus.pis["pi-east-2"]["settings"]["dir"], "calendar.json"))
    none = campus.run("pi-east-2", "reconcile", at=OPEN)
    assert none["result"] is False and none["error"].startswith("calendar: none stored")


def test_an_unusable_folder_is_a_failure_naming_the_setting_not_a_traceback(campus):
    base = campus.pis["pi-east-1"]["base"]
    shutil.rmtree(base / "repo")
    (base / "repo").write_text("a file where the served folder should be")
    ret = campus.run("pi-east-1", "probe")
    assert ret["result"] is False and ret["error"].startswith("kiosk_campus:repo_dir: "), ret
    shutil.rmtree(base / "campus")
    (base / "campus").write_text("a file where the campus folder should be")
    for fun in ("probe", "tick", "status"):
        ret = campus.run("pi-east-1", fun)
        assert ret["result"] is False and ret["error"].startswith("kiosk_campus:dir: "), (fun, ret)
    ret = campus.run("pi-east-1", "reconcile", at=OPEN)
    assert ret["result"] is False and ret["error"].startswith("kiosk_campus:dir: "), ret


def test_a_reconcile_at_another_instant_is_refused_on_the_real_clock(campus):
    # without a clock stand-in (production), at= would act for real and leave checks due at that instant
    campus.pis["pi-east-1"] = campus.pi("pi-east-1", clock_file=None)
    probe_all(campus)
    ret = campus.run("pi-east-1", "reconcile", at=OPEN)
    assert ret["result"] is False and ret["error"].startswith("at: ") and "kiosk_campus:clock_file" in ret["error"]
    folder = pathlib.Path(campus.pis["pi-east-1"]["settings"]["dir"])
    assert not (folder / "reconciler.json").exists() and campus.outbox("pi-east-1") == []
    assert campus.packets() == [] and campus.kiosks.jobs == []


# ---------------------------------------------------------------- the Pi minion's module


@pytest.fixture
def pi_minion(campus):
    base = campus.pis["pi-east-2"]["base"]
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(base / "minion"), "cachedir": str(base / "minion"),
                 "module_dirs": [str(REPO)], "id": "pi-east-2", "grains": {},
                 "pillar": {"kiosk_fleet": copy.deepcopy(campus.inventory),
                            "kiosk_release": {"verify_key": [RELEASE_PUB]}},
                 "kiosk_campus": {"dir": campus.pis["pi-east-2"]["settings"]["dir"],
                                  "master_config": str(campus.pis["pi-east-2"]["config"])}})
    utils = salt.loader.utils(opts)
    mods = salt.loader.minion_mods(opts, utils=utils, whitelist=["kiosk_campus", "config", "pillar"])
    return mods


def test_the_module_stores_a_newer_calendar_and_refuses_a_forged_one(campus, pi_minion):
    assert pi_minion["kiosk_campus.calendar"]() == {"result": True, "serial": campus.serial, "stored": False}
    ret = pi_minion["kiosk_campus.calendar"](calendar=campus.calendar(campus.serial + 5))
    assert ret == {"result": True, "serial": campus.serial + 5, "stored": True, "kept": campus.serial}
    older = pi_minion["kiosk_campus.calendar"](calendar=json.dumps(campus.calendar(campus.serial + 1)))
    assert older == {"result": True, "serial": campus.serial + 5, "stored": False, "kept": campus.serial + 5}
    forged = pi_minion["kiosk_campus.calendar"](calendar=campus.calendar(campus.serial + 9, key=FORGER_KEY))
    assert forged["result"] is False and forged["serial"] == campus.serial + 5 and "signature" in forged["error"]


def test_the_module_runs_the_pi_master_reconcile_in_process(campus, pi_minion):
    probe_all(campus)
    ret = pi_minion["kiosk_campus.reconcile"](at=OPEN)
    assert ret["result"] is True and ret["pi"] == "pi-east-2" and ret["leader"] is False
    assert ret["woke"] == ["kiosk-east-01", "kiosk-east-02"] and ret["clock"]["synced"] is True
    assert keys_of(campus.outbox("pi-east-2"), "action") == [f"east/kiosk-east-01/wake/{OPENING}",
                                                             f"east/kiosk-east-02/wake/{OPENING}"]
    assert (campus.pis["pi-east-2"]["base"] / "campus" / "reconciler.json").exists()


def test_the_tick_reconciles_once_then_waits_for_a_change(campus):
    probe_all(campus)
    first = campus.run("pi-east-1", "tick")
    assert first["result"] is True and first["reconciled"] is True and first["why"] == "no reconcile yet"
    second = campus.run("pi-east-1", "tick")
    assert second["reconciled"] is False and second["why"].startswith("nothing due")
    # a calendar with a hold against the schedule: the expected states change, the next tick reconciles at once
    before = json.loads((campus.pis["pi-east-1"]["base"] / "campus" / "reconciler.json").read_text())["expected"]
    now = campus_now()
    hold = {"kiosk": "kiosk-east-01", "campus": "east", "state": "on" if before["kiosk-east-01"] == "off" else "off",
            "until": fleet_campus.iso(now.replace(year=now.year + 1)), "reason": "test", "set_at": fleet_campus.iso(now)}
    calendar = fleet_calendar.build(campus.inventory, SCHEDULE, {"kiosk-east-01": hold}, "east", campus.serial + 1,
                                    campus.serial + 1)
    fleet_calendar.store(campus.pis["pi-east-1"]["settings"]["dir"], fleet_calendar.sign(calendar, RELEASE_KEY),
                         [RELEASE_PUB], "east")
    third = campus.run("pi-east-1", "tick")
    assert third["reconciled"] is True and third["why"] == "the expected states changed", third
    assert third["serial"] == campus.serial + 1


def test_a_kiosk_due_on_gets_its_packets_before_the_scan(campus, monkeypatch):
    probe_all(campus)
    runner = campus.pis["pi-east-1"]["runners"]["kiosk_campus.reconcile"]
    module = runner.func.__globals__
    order = []
    real_wake, real_observe = module["_wake"], module["_observe"]
    monkeypatch.setitem(module, "_wake", lambda *a: order.append("wake") or real_wake(*a))
    monkeypatch.setitem(module, "_observe", lambda *a: order.append("scan") or real_observe(*a))
    ret = runner(at=OPEN)
    assert ret["woke_early"] == ["kiosk-east-01", "kiosk-east-02"] and ret["woke"] == ["kiosk-east-01", "kiosk-east-02"]
    assert order == ["wake", "scan"]  # and not woken a second time: the engine's wakes were sent already
    assert len(campus.packets()) == 2 * 3  # 2 kiosks, 3 packets each (wake_repeat), from this one Pi, once


def test_a_kiosk_connected_to_the_pi_master_with_its_port_closed_is_degraded(campus):
    # each Pi master's publish port on its own address (pi-east-1 127.0.1.2, pi-east-2 127.0.1.3: one
    # host, one port, as in the tests' topology); kiosk-east-01's minion connected to pi-east-1's from
    # the kiosk's own address, kiosk-east-02's to pi-east-2's only
    sockets = []
    for kiosk_ip, master_ip in (("127.0.1.11", "127.0.1.2"), ("127.0.2.12", "127.0.1.3")):
        master = listen_tcp(master_ip, campus.publish_port)
        minion = socket.create_connection((master_ip, campus.publish_port), timeout=5, source_address=(kiosk_ip, 0))
        sockets += [master, minion, master.accept()[0]]
    try:
        probe_all(campus)
        ret = campus.run("pi-east-1", "reconcile", at=CLOSE)
        other = campus.run("pi-east-2", "reconcile", at=CLOSE)
    finally:
        for sock in sockets:
            sock.close()
    # powered (its minion is there) but its service port closed: the kiosk app is down; due off, so shut down.
    # A connection to the other Pi's master on the same host is not one to this Pi's.
    assert ret["observed"] == {"kiosk-east-01": "degraded", "kiosk-east-02": "off"}
    assert other["observed"] == {"kiosk-east-01": "off", "kiosk-east-02": "degraded"}, other
    assert ret["shut_down"] == ["kiosk-east-01"] and campus.kiosks.presses() == ["kiosk-east-01"]


def test_the_module_names_what_is_missing(campus, tmp_path):
    from salt.exceptions import CommandExecutionError

    def module(pillar):
        opts = salt.config.minion_config(None)
        opts.update({"file_client": "local", "root_dir": str(tmp_path / "m"), "cachedir": str(tmp_path / "m"),
                     "module_dirs": [str(REPO)], "id": "pi-east-1", "grains": {},
                     "pillar": {"kiosk_fleet": copy.deepcopy(campus.inventory), **pillar},
                     "kiosk_campus": {"dir": str(tmp_path / "campus"), "master_config": str(tmp_path / "no-master")}})
        return salt.loader.minion_mods(opts, utils=salt.loader.utils(opts),
                                       whitelist=["kiosk_campus", "config", "pillar"],
                                       loaded_base_name=f"kf_campus_mod_missing_{len(pillar)}_{id(opts)}")

    with pytest.raises(CommandExecutionError, match="^kiosk_campus:verify_key: "):
        module({})["kiosk_campus.calendar"]()
    mods = module({"kiosk_release": {"verify_key": [RELEASE_PUB]}})
    assert mods["kiosk_campus.calendar"]()["error"].startswith("calendar: none stored")
    with pytest.raises(CommandExecutionError, match="^kiosk_campus:master_config: "):
        mods["kiosk_campus.reconcile"]()


def test_a_pi_that_just_started_wakes_but_does_not_shut_down_before_its_first_probe(campus):
    campus.kiosk_on("kiosk-east-01")
    first = campus.run("pi-east-2", "reconcile", at=CLOSE)  # no probe yet: it does not know pi-east-1 is up
    assert first["leader_pi"] is None and first["shut_down"] == []
    assert "no view of the peer Pis" in first["nothing"]["kiosk-east-01"]
    probe_all(campus)
    assert campus.run("pi-east-1", "reconcile", at=CLOSE)["shut_down"] == ["kiosk-east-01"]
