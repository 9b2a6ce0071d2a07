"""
``kiosk_release`` loaded by Salt's runner loader with the LocalClient stood
in by a simulated fleet (two campuses, two Pis and two kiosks each, as the
topology): the glue between the store, the rollout rules and the minions,
without daemons. Real store, real state file, real Ed25519 keys.
"""

import json
import os
import pathlib
import re
import shutil

import pytest
import salt.client
import salt.config
import salt.loader
import yaml

import fleet_repo
import fleet_sign
from tests.support.topology import two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
NAME = "kiosk-app"
SILENT = "Minion did not return. [No response]\nThe minions may not have all finished running"


class Fleet:
    """The Pis and kiosks of the inventory, answering kiosk_pkg jobs the way the real module does, in short."""

    def __init__(self, inventory):
        self.campus = {}
        self.ip = {}
        for campus, spec in inventory["kiosk_fleet"]["campuses"].items():
            for pi in spec["pis"]:
                self.campus[pi] = campus
            for kiosk, entry in spec["kiosks"].items():
                self.campus[kiosk] = campus
                self.ip[kiosk] = entry["ip"]
        self.staged = {}  # pi -> set of versions
        self.pins = {}  # pi -> signed pin
        self.installed = {}  # kiosk -> version
        self.jobs = []
        self.timeouts = []
        self.silent = set()
        self.broken = set()  # kiosks whose install fails
        self.forged = {}  # minion -> a second, different return
        self.no_log = set()  # kiosks whose download no Pi logged (a return alone)
        self.prune_fails = {}  # pi -> the error its prune answers

    def pis(self, campus):
        return sorted(p for p, c in self.campus.items() if c == campus and p.startswith("pi-"))

    def answer(self, minion, fun, arg, kwarg):
        if fun == "kiosk_pkg.stage":
            name, version = arg
            self.staged.setdefault(minion, set()).add(version)
            if kwarg.get("pin"):
                assert kwarg["pin"]["campus"] == self.campus[minion]
                self.pins[minion] = kwarg["pin"]
            return {"result": True, "fetched": 1000 if kwarg["hop"] == "master->pi" else 0}
        if fun == "kiosk_pkg.pin":
            self.pins[minion] = kwarg["pin"]
            return {"result": True}
        if fun == "kiosk_pkg.repo_status":
            return {"result": True, "staged": sorted(self.staged.get(minion, ())), "pin": self.pins.get(minion),
                    "pin_verified": True}
        if fun == "kiosk_pkg.check_update":
            pins = [self.pins[p] for p in self.pis(self.campus[minion]) if p in self.pins]
            pin = max(pins, key=lambda p: p["serial"]) if pins else None
            if minion in self.broken:
                return {"result": False, "releases": {arg[0]: {"result": False, "error": "install failed (1603)"}}}
            if pin and pin["version"]:
                self.installed[minion] = pin["version"]
            return {"result": True, "releases": {arg[0]: {"result": True, "version": self.installed.get(minion)}}}
        if fun == "kiosk_pkg.served":
            campus = self.campus[minion]
            clients = {self.ip[k]: [200] for k, v in self.installed.items()
                       if v == arg[1] and self.campus[k] == campus and k not in self.no_log}
            return {"result": True, "name": arg[0], "version": arg[1], "clients": clients}
        if fun == "kiosk_pkg.installed":
            return {"version": self.installed.get(minion)}
        if fun == "kiosk_scan.presence":  # a silent kiosk is off: no minion connection on its Pis
            return {"pi": minion, "campus": self.campus[minion],
                    "kiosks": {k: k not in self.silent for k in kwarg["kiosks"]}}
        if fun == "kiosk_pkg.prune":
            if minion in self.prune_fails:
                return {"result": False, "error": self.prune_fails[minion]}
            index = {"versions": dict.fromkeys(self.staged.get(minion, ())), "pin": self.pins.get(minion)}
            removed, kept = fleet_repo.prune_plan(index, also=kwarg.get("also", ()))  # the Pi's own policy
            self.staged[minion] = set(kept)
            return {"result": True, "name": arg[0], "pi": minion, "removed": removed, "kept": kept}
        raise AssertionError(f"unexpected job {fun}")

    def cmd_iter(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", ret="", kwarg=None, **kwargs):
        assert tgt_type == "list" and isinstance(timeout, int)
        self.jobs.append((fun, sorted(tgt), dict(kwarg or {})))
        self.timeouts.append((fun, timeout))
        for minion in tgt:
            if minion in self.silent:
                yield {minion: {"ret": SILENT, "retcode": 1}}
                continue
            yield {minion: {"ret": self.answer(minion, fun, list(arg), kwarg or {}), "retcode": 0}}
            if minion in self.forged:
                yield {minion: {"ret": self.forged[minion], "retcode": 0}}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def funs(self):
        return [job[0] for job in self.jobs]


class Master:
    def __init__(self, tmp_path, monkeypatch, **conf):
        inventory = two_campus_inventory(wol_port=9)
        self.fleet = Fleet(inventory)
        monkeypatch.setattr(salt.client, "get_local_client", lambda *args, **kwargs: self.fleet)
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp_path = tmp_path
        (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(inventory))
        self.root = tmp_path / "builds"
        self.root.mkdir()
        self.store = tmp_path / "store"
        self.metrics = tmp_path / "metrics"
        self.metrics.mkdir()
        self.conf = {"store": str(self.store), "source_root": str(self.root),
                     "signing_key": str(tmp_path / "keys" / "k.pem"), "textfile_dir": str(self.metrics), **conf}
        opts = salt.config.master_config(None)
        opts.update({"kiosk_fleet": {"data": str(tmp_path / "fleet.yaml")}, "root_dir": str(tmp_path),
                     "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                     "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                     "file_roots": {"base": [str(tmp_path / "files")]}, "__role": "master",
                     "kiosk_release": self.conf})
        self.runners = salt.loader.runner(opts, utils=salt.loader.utils(opts))
        self.events = []  # event.send stood in: no master bus here
        self.runners["event.send"] = lambda tag, data: self.events.append((tag, data)) or True
        self.state_file = tmp_path / "cache" / "kiosk_release" / "state.json"
        self.public = self.run("keygen")["public_key"]

    def run(self, fun, *args, **kwargs):
        return self.runners[f"kiosk_release.{fun}"](*args, **kwargs)

    def publish(self, version, data, **kwargs):
        pkg = self.root / "job" / "app.msi"
        pkg.parent.mkdir(exist_ok=True)
        pkg.write_bytes(data)
        ret = self.run("publish", name=NAME, version=version, source=str(pkg), install=["app.msi"], **kwargs)
        assert ret["result"] is True, ret
        return ret

    def state(self):
        return json.loads(self.state_file.read_text())

    def trust(self, *public_keys):
        """Put the release verify keys into the fleet data, as pillar gives them to the Pis."""
        data = yaml.safe_load((self.tmp_path / "fleet.yaml").read_text())
        data["kiosk_release"] = {"verify_key": list(public_keys or [self.public])}
        (self.tmp_path / "fleet.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture
def master(tmp_path, monkeypatch):
    return Master(tmp_path, monkeypatch)


def test_a_canary_rollout_stages_once_per_campus_pins_signed_and_pushes_confirmed_kiosks(master):
    master.publish("1.0.0", b"build one")
    ret = master.run("rollout", NAME, "1.0.0", canary="east")
    assert ret["result"] is True and ret["retcode"] == 0, ret
    assert [r["campuses"] for r in ret["rings"]] == [["east"], ["west"]]
    east = ret["rings"][0]
    assert east["kiosks"] == {"east": {"kiosk-east-01": True, "kiosk-east-02": True}} and east["error_share"] == 0.0
    assert east["staging"]["east"]["seed"] == "pi-east-1" and east["staging"]["east"]["wan_bytes"] == 1000
    # one WAN copy per campus, the signed pin with it; the other Pi copies over the LAN
    stages = [(tgt, kw["hop"]) for fun, tgt, kw in master.fleet.jobs if fun == "kiosk_pkg.stage"]
    assert stages == [(["pi-east-1"], "master->pi"), (["pi-east-2"], "pi->pi"),
                      (["pi-west-1"], "master->pi"), (["pi-west-2"], "pi->pi")]
    for pi, pin in master.fleet.pins.items():
        fleet_sign.verify_pin(pin, [master.public], NAME, master.fleet.campus[pi])
    state = master.state()
    assert state["pushed"][NAME] == {c: state["pins"][NAME][c]["serial"] for c in ("east", "west")}
    assert "pushing" not in state
    prom = (master.metrics / "kiosk_release.prom").read_text()
    assert 'kiosk_release_last_run_success{action="rollout"} 1' in prom
    assert 'kiosk_release_kiosks{name="kiosk-app",campus="east",state="on_pin"} 2' in prom
    # the staged reactor afterwards: already pushed, no job, no state write
    before, jobs = master.state_file.read_bytes(), len(master.fleet.jobs)
    ret = master.run("push", NAME, "1.0.0", pi="pi-east-2")
    assert ret == {"result": True, "pushed": False, "comment": "kiosk-app 1.0.0 already pushed to east", "retcode": 0}
    assert len(master.fleet.jobs) == jobs and master.state_file.read_bytes() == before


def test_a_failed_kiosk_halts_the_ring_and_its_push_stays_due_until_status_retries_it(master):
    master.publish("1.0.0", b"build one")
    master.fleet.broken.add("kiosk-east-02")
    ret = master.run("rollout", NAME, "1.0.0", rings="east;west")
    assert ret["result"] is False and ret["retcode"] == 1 and ret["halted"] is True and ret["not_started"] == ["west"]
    assert ret["rings"][0]["kiosks"]["east"]["kiosk-east-02"] == "install failed (1603)"
    assert ret["error"].startswith("halted after ring east: 50% of its kiosks are not on 1.0.0")
    state = master.state()
    assert "west" not in state["pins"][NAME] and state["pushed"][NAME] == {} and "pushing" not in state
    assert 'kiosk_release_last_run_success{action="rollout"} 0' in (master.metrics / "kiosk_release.prom").read_text()
    # fixed: status finds the drift, pushes the due pin again and reports it
    master.fleet.broken.clear()
    ret = master.run("status", NAME, campuses="east")
    assert ret["result"] is False and "east: 1 kiosk(s) not on 1.0.0" in ret["error"]
    assert ret["campuses"]["east"]["push_retried"] == {"kiosk-east-01": True, "kiosk-east-02": True}
    assert master.state()["pushed"][NAME]["east"] == master.state()["pins"][NAME]["east"]["serial"]
    ret = master.run("status", NAME)
    assert ret["result"] is True and ret["campuses"]["east"]["drift"] == {}, ret
    assert ret["campuses"]["west"]["pin"] is None and "push_retried" not in ret["campuses"]["west"]


def test_silent_kiosks_do_not_count_but_forged_or_unlogged_returns_do(master):
    master.publish("1.0.0", b"build one")
    master.fleet.silent.add("kiosk-east-01")
    ret = master.run("rollout", NAME, "1.0.0", campuses="east")
    assert ret["result"] is True and ret["rings"][0]["kiosks"]["east"]["kiosk-east-01"] == "silent", ret
    # two different returns for one kiosk (one forged behind a syndic): a failure, never "silent"
    master.publish("1.1.0", b"build two")
    master.fleet.silent.clear()
    master.fleet.forged["kiosk-east-01"] = {"result": True, "releases": {NAME: {"result": True, "version": "1.1.0"}}}
    master.fleet.broken.add("kiosk-east-01")
    ret = master.run("rollout", NAME, "1.1.0", campuses="east")
    assert ret["result"] is False and "forged" in ret["rings"][0]["kiosks"]["east"]["kiosk-east-01"], ret
    # a return that says installed while no Pi served the files to that kiosk's address: a failure
    master.fleet.forged.clear()
    master.fleet.broken.clear()
    master.fleet.no_log.add("kiosk-east-02")
    master.publish("1.2.0", b"build three")
    ret = master.run("rollout", NAME, "1.2.0", campuses="east", max_error_share=0.5)
    kiosks = ret["rings"][0]["kiosks"]["east"]
    assert kiosks["kiosk-east-01"] is True and "no Pi of the campus served the files to 127.0.2.12" in kiosks[
        "kiosk-east-02"]
    assert ret["result"] is True and ret["rings"][0]["error_share"] == 0.5


def test_without_confirm_downloads_the_return_is_taken(tmp_path, monkeypatch):
    master = Master(tmp_path, monkeypatch, confirm_downloads=False)
    master.publish("1.0.0", b"build one")
    master.fleet.no_log.update({"kiosk-east-01", "kiosk-east-02"})
    ret = master.run("rollout", NAME, "1.0.0", campuses="east")
    assert ret["result"] is True and "kiosk_pkg.served" not in master.fleet.funs()


def test_publish_to_a_campus_stages_it_once_and_the_staged_event_pushes_once(master):
    master.publish("1.0.0", b"build one", campuses="west")
    assert master.fleet.jobs == []  # publish only records; the reactors act
    assert master.events == [("kiosk/release/published", {"name": NAME, "version": "1.0.0", "campuses": ["west"]})]
    ret = master.run("on_published", NAME, "1.0.0", campuses=["west"])
    assert ret["result"] is True and ret["staged"] is True and list(ret["campuses"]) == ["west"], ret
    assert master.run("on_published", NAME, "1.0.0", campuses=["west"])["staged"] is False  # once
    ret = master.run("push", NAME, "1.0.0", pi="pi-west-2")
    assert ret["result"] is True and ret["pushed"] is True and ret["campus"] == "west", ret
    assert master.fleet.installed == {"kiosk-west-01": "1.0.0", "kiosk-west-02": "1.0.0"}
    assert master.run("push", NAME, "1.0.0", pi="pi-west-1")["pushed"] is False
    assert master.fleet.funs().count("kiosk_pkg.check_update") == 1
    # the Pis are asked for at most a minute (a stopped Pi costs the whole wait), less with a short timeout
    assert [t for f, t in master.fleet.timeouts if f == "kiosk_pkg.repo_status"] == [60]
    master.publish("1.1.0", b"build two", campuses="west")
    master.run("on_published", NAME, "1.1.0", campuses=["west"])
    assert master.run("push", NAME, "1.1.0", campus="west", timeout=10)["pushed"] is True
    assert master.fleet.timeouts[-3:] == [("kiosk_pkg.repo_status", 10), ("kiosk_pkg.check_update", 10),
                                          ("kiosk_pkg.prune", 10)]


def test_prune_keeps_what_a_rollback_would_republish_even_below_a_newer_staged_version(master):
    master.publish("1.0.0", b"build one")
    assert master.run("rollout", NAME, "1.0.0", rings="east")["result"] is True
    master.publish("1.5.0", b"build one and a half")
    assert master.run("stage", NAME, "1.5.0", campuses="east")["result"] is True  # staged, never pinned
    master.publish("2.0.0", b"build two")
    ret = master.run("rollout", NAME, "2.0.0", rings="east")
    assert ret["result"] is True, ret
    prunes = [kw for fun, _, kw in master.fleet.jobs if fun == "kiosk_pkg.prune"]
    assert prunes[-1] == {"also": ["1.0.0"]}  # the pin's history, not the newest version below the pin
    assert ret["rings"][0]["pruned"]["east"]["pi-east-1"] == {"removed": [], "kept": ["1.0.0", "1.5.0", "2.0.0"]}
    assert master.run("rollback", NAME, campus="east")["rolled_back"]["content_of"] == "1.0.0"


def test_status_asks_only_the_kiosks_the_pis_hold_a_connection_from(master):
    master.publish("1.0.0", b"build one")
    assert master.run("rollout", NAME, "1.0.0")["result"] is True
    master.fleet.silent.add("kiosk-east-02")  # powered off
    jobs = len(master.fleet.jobs)
    ret = master.run("status", NAME)
    sent = {fun: tgt for fun, tgt, _ in master.fleet.jobs[jobs:]}
    assert sent["kiosk_scan.presence"] in (["pi-east-1", "pi-east-2"], ["pi-west-1", "pi-west-2"])
    assert sent["kiosk_pkg.installed"] == ["kiosk-east-01", "kiosk-west-01", "kiosk-west-02"]
    assert ret["absent"] == ["kiosk-east-02"]
    assert ret["campuses"]["east"]["kiosks"]["kiosk-east-02"] == {"silent": True}
    assert ret["result"] is True, ret  # an off kiosk is listed, not failed
    # told not to use presence: every kiosk is asked, the off one stays silent
    jobs = len(master.fleet.jobs)
    ret = master.run("status", NAME, presence=False)
    assert [fun for fun, _, _ in master.fleet.jobs[jobs:]] == ["kiosk_pkg.repo_status", "kiosk_pkg.installed"]
    assert master.fleet.jobs[-1][1] == ["kiosk-east-01", "kiosk-east-02", "kiosk-west-01", "kiosk-west-02"]
    assert ret["absent"] == [] and ret["campuses"]["east"]["kiosks"]["kiosk-east-02"] == {"silent": True}


def stage_jobs(master):
    return [(tgt, kw["hop"], kw.get("rate")) for fun, tgt, kw in master.fleet.jobs if fun == "kiosk_pkg.stage"]


def test_the_wan_cap_goes_to_the_seed_pis_staging_per_campus_and_the_lan_stays_uncapped(tmp_path, monkeypatch):
    master = Master(tmp_path, monkeypatch, wan_rate="2mbit", campus_rates={"west": "512KiB"},
                    master_url="http://127.0.0.1:9/kiosk-releases/")
    master.publish("1.0.0", b"build one")
    ret = master.run("rollout", NAME, "1.0.0", rings="east;west")
    assert ret["result"] is True, ret
    assert stage_jobs(master) == [(["pi-east-1"], "master->pi", 250000), (["pi-east-2"], "pi->pi", None),
                                  (["pi-west-1"], "master->pi", 524288), (["pi-west-2"], "pi->pi", None)]
    assert ret["rings"][0]["staging"]["east"]["rate"] == {"wan": 250000, "lan": None}
    assert ret["rings"][1]["staging"]["west"]["rate"] == {"wan": 524288, "lan": None}
    # the stage runner names the rates too; with lan_rate the Pi->Pi copies get it as well
    master = Master(tmp_path / "lan", monkeypatch, lan_rate="100mbit", campus_rates={"east": None},
                    wan_rate="1mbit", master_url="http://127.0.0.1:9/kiosk-releases/")
    master.publish("1.0.0", b"build one")
    ret = master.run("stage", NAME, "1.0.0")
    assert ret["result"] is True and ret["campuses"]["east"]["rate"] == {"wan": None, "lan": 12_500_000}, ret
    assert ret["campuses"]["west"]["rate"] == {"wan": 125000, "lan": 12_500_000}
    assert stage_jobs(master) == [(["pi-east-1"], "master->pi", None), (["pi-west-1"], "master->pi", 125000),
                                  (["pi-east-2", "pi-west-2"], "pi->pi", 12_500_000)]
    # staging through salt:// (no master_url) cannot be paced: no cap is claimed or sent on the WAN hop
    master = Master(tmp_path / "salt", monkeypatch, wan_rate="1mbit")
    master.publish("1.0.0", b"build one")
    ret = master.run("stage", NAME, "1.0.0", campuses="east")
    assert ret["result"] is True and ret["campuses"]["east"]["rate"] == {"wan": None, "lan": None}, ret
    assert stage_jobs(master) == [(["pi-east-1"], "master->pi", None), (["pi-east-2"], "pi->pi", None)]


def test_a_bad_rate_or_prune_setting_is_named_before_any_job(tmp_path, monkeypatch):
    for i, (conf, field) in enumerate([({"wan_rate": "fast"}, "kiosk_release:wan_rate: "),
                                       ({"campus_rates": {"mars": "1mbit"}}, "kiosk_release:campus_rates.mars: "),
                                       ({"lan_rate": 0}, "kiosk_release:lan_rate: "),
                                       ({"prune": "yes"}, "kiosk_release:prune: ")]):
        master = Master(tmp_path / str(i), monkeypatch, **conf)
        master.publish("1.0.0", b"build one", campuses="east")
        calls = [("rollout", {})] + ([] if "prune" in conf else [("stage", {}), ("pin", {"campus": "east"}),
                                                                  ("on_published", {})])
        for fun, kwargs in calls:
            before = {k: v for k, v in master.state().items() if k != "metrics"}
            ret = master.run(fun, NAME, "1.0.0", **kwargs)
            assert ret["result"] is False and ret["error"].startswith(field), (fun, ret)
            # no pin moved, no claim taken (a failed run records only its metrics)
            assert {k: v for k, v in master.state().items() if k != "metrics"} == before
        assert master.fleet.jobs == []
    ret = master.run("push", NAME, "1.0.0", campus="east")  # the last one: prune: "yes"
    assert ret["result"] is False and ret["error"].startswith("kiosk_release:prune: ") and master.fleet.jobs == []


def test_a_successful_ring_prunes_its_campus_pis_and_a_rollback_keeps_what_it_came_from(master):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        master.publish(version, f"build {version}".encode())
        ret = master.run("rollout", NAME, version, campuses="east")
        assert ret["result"] is True, ret
    # pinned 1.2.0: 1.1.0 is its previous, 1.0.0 goes
    assert ret["rings"][0]["pruned"] == {"east": {p: {"removed": ["1.0.0"], "kept": ["1.1.0", "1.2.0"]}
                                                  for p in ("pi-east-1", "pi-east-2")}}
    prunes = [tgt for fun, tgt, _ in master.fleet.jobs if fun == "kiosk_pkg.prune"]
    assert prunes == [["pi-east-1", "pi-east-2"]] * 3  # the campus's Pis only, once per successful ring
    ret = master.run("rollback", NAME, campus="east")
    assert ret["result"] is True and ret["rolled_back"]["as"] == "1.2.1", ret
    # the rollback is 1.2.1 (1.1.0's content): its previous, 1.2.0, stays; 1.1.0 is below it and goes
    assert ret["rings"][0]["pruned"]["east"]["pi-east-1"] == {"removed": ["1.1.0"], "kept": ["1.2.0", "1.2.1"]}


def test_a_failed_push_prunes_nothing_and_a_failed_prune_never_fails_the_push(tmp_path, monkeypatch):
    master = Master(tmp_path, monkeypatch)
    master.publish("1.0.0", b"build one")
    master.fleet.broken.add("kiosk-east-01")
    ret = master.run("rollout", NAME, "1.0.0", campuses="east")
    assert ret["result"] is False and ret["rings"][0]["pruned"] == {}, ret
    assert "kiosk_pkg.prune" not in master.fleet.funs()
    # the staged reactor's push retries it: success now; one Pi's prune fails, the other is off
    master.fleet.broken.clear()
    master.fleet.prune_fails["pi-east-1"] = "lock: another job kept kiosk-app.index busy for 60 s"
    master.fleet.silent.add("pi-east-2")
    ret = master.run("push", NAME, "1.0.0", pi="pi-east-1")
    assert ret["result"] is True and ret["retcode"] == 0 and ret["pushed"] is True, ret
    assert ret["pruned"] == {"pi-east-1": {"error": "lock: another job kept kiosk-app.index busy for 60 s"},
                             "pi-east-2": {"error": "did not answer"}}
    assert master.state()["pushed"][NAME]["east"] == master.state()["pins"][NAME]["east"]["serial"]
    # kiosk_release:prune: false: no prune job at all
    master = Master(tmp_path / "off", monkeypatch, prune=False)
    master.publish("1.0.0", b"build one")
    ret = master.run("rollout", NAME, "1.0.0")
    assert ret["result"] is True and "pruned" not in ret["rings"][0] and "kiosk_pkg.prune" not in master.fleet.funs()


def test_push_refuses_a_kiosk_id_and_does_nothing_while_no_pi_has_the_pin_live(master):
    master.publish("1.0.0", b"build one", campuses="east")
    ret = master.run("push", NAME, "1.0.0", pi="kiosk-east-01")
    assert ret["result"] is False and ret["error"].startswith("pi: 'kiosk-east-01' is not a Pi"), ret
    before = master.state_file.read_bytes()
    ret = master.run("push", NAME, "1.0.0", pi="pi-east-1")  # not staged yet: the Pis do not hold the pin
    assert ret["pushed"] is False and "no Pi has the pin" in ret["comment"], ret
    assert master.fleet.funs() == ["kiosk_pkg.repo_status"] and master.state_file.read_bytes() == before
    assert master.run("push", NAME, "1.0.0", campus="east,west")["error"].startswith("campus: name one campus")


def test_pin_stages_without_pushing_and_unpin_freezes(master):
    master.publish("1.0.0", b"build one")
    ret = master.run("pin", NAME, "1.0.0", campus="east")
    assert ret["result"] is True and ret["pins"]["east"]["version"] == "1.0.0" and "history" not in ret["pins"]["east"]
    assert "kiosk_pkg.check_update" not in master.fleet.funs()
    assert master.run("push", NAME, "1.0.0", campus="east")["pushed"] is False  # held: pin does not push
    ret = master.run("unpin", NAME, campus="east")
    assert ret["result"] is True and ret["frozen"] == ["east"] and ret["pis"]["east"] == {
        "pi-east-1": True, "pi-east-2": True}
    assert master.fleet.pins["pi-east-1"]["version"] is None
    fleet_sign.verify_pin(master.fleet.pins["pi-east-1"], [master.public], NAME, "east")


def test_rollback_republishes_the_earlier_content_hard_linked_and_rolls_it_out(master):
    master.publish("1.0.0", b"good build")
    assert master.run("rollout", NAME, "1.0.0", campuses="east")["result"] is True
    master.publish("1.1.0", b"bad build")
    assert master.run("rollout", NAME, "1.1.0", campuses="east")["result"] is True
    ret = master.run("rollback", NAME, campus="east")
    assert ret["result"] is True, ret
    assert ret["rolled_back"] == {"campus": "east", "from": "1.1.0", "content_of": "1.0.0", "as": "1.1.1"}
    manifest = json.loads((master.store / NAME / "1.1.1" / "manifest.json").read_text())
    assert manifest["rollback_of"] == "1.0.0"
    fleet_sign.verify_signature(manifest, master.public)
    assert os.path.samefile(master.store / NAME / "1.0.0" / "app.msi", master.store / NAME / "1.1.1" / "app.msi")
    assert master.fleet.installed["kiosk-east-01"] == "1.1.1"
    assert master.run("published", NAME)["releases"] == {NAME: ["1.0.0", "1.1.0", "1.1.1"]}
    assert master.events[-1] == ("kiosk/release/published", {  # stages nothing: the rollout did
        "name": NAME, "version": "1.1.1", "campuses": [], "rollback_of": "1.0.0"})
    # west never ran anything: nothing to go back to, nothing stored
    ret = master.run("rollback", NAME, campus="west")
    assert ret["result"] is False and ret["error"].startswith("campus: west is not pinned"), ret
    assert master.run("rollback", NAME, campus="east,west")["error"].startswith("campus: name one campus")


def test_bad_requests_name_their_field_and_start_no_job(master):
    master.publish("1.0.0", b"build one")
    for fun, kwargs, field in [
        ("rollout", {"name": NAME, "version": "9.9"}, "version:"),
        ("rollout", {"name": NAME, "version": "1.0.0", "campuses": "mars"}, "campuses: unknown campus mars"),
        ("rollout", {"name": NAME, "version": "1.0.0", "max_error_share": "lots"}, "max_error_share:"),
        ("rollout", {"name": NAME, "version": "1.0.0", "rings": "east;east"}, "rings:"),
        ("rollout", {"name": NAME, "version": "1.0.0", "timeout": float("inf")}, "timeout:"),
        ("stage", {"name": "../x", "version": "1.0.0"}, "name:"),
        ("pin", {"name": NAME, "version": "1.0.0"}, "campus:"),
        ("status", {"name": NAME, "timeout": 0}, "timeout:"),
        ("on_published", {"name": NAME, "version": [1]}, "version:"),
    ]:
        ret = master.run(fun, **kwargs)
        assert ret["result"] is False and ret["retcode"] == 1 and ret["error"].startswith(field), (fun, ret)
    assert master.fleet.jobs == []


def test_a_missing_key_stops_a_rollout_before_any_ring_and_a_bad_master_url_before_any_job(tmp_path, monkeypatch):
    master = Master(tmp_path / "a", monkeypatch)
    master.publish("1.0.0", b"build one")
    os.unlink(master.conf["signing_key"])
    ret = master.run("rollout", NAME, "1.0.0")
    assert ret["result"] is False and ret["error"].startswith("kiosk_release.signing_key: cannot read"), ret
    assert master.fleet.jobs == [] and master.state()["pins"] == {}
    master = Master(tmp_path / "b", monkeypatch, master_url="ftp://nope/")
    master.publish("1.0.0", b"build one", campuses="east")
    for fun, kwargs in [("stage", {}), ("rollout", {}), ("pin", {"campus": "east"}), ("on_published", {})]:
        ret = master.run(fun, NAME, "1.0.0", **kwargs)
        assert ret["result"] is False and ret["error"].startswith("kiosk_release.master_url: 'ftp://nope/'"), ret
    assert master.fleet.jobs == []


ODD = [None, "", [1], {"a": 1}, float("nan"), float("inf"), 10**400, True, "x" * 5000, "\ud800", "; rm -rf /",
       "../etc", ["east", ["west"]], -1, "1.10", 1.1]
CALLS = {
    "publish": {"name": NAME, "version": "2.0.0", "source": "job/app.msi", "install": ["app.msi"]},
    "rollout": {"name": NAME, "version": "1.0.0"},
    "stage": {"name": NAME, "version": "1.0.0"},
    "pin": {"name": NAME, "version": "1.0.0", "campus": "east"},
    "unpin": {"name": NAME, "campus": "east"},
    "rollback": {"name": NAME, "campus": "east"},
    "push": {"name": NAME, "version": "1.0.0", "campus": "east"},
    "status": {"name": NAME},
    "on_published": {"name": NAME, "version": "1.0.0"},
    "published": {"name": NAME},
    "keygen": {"path": "/nonexistent-dir-for-keys/k.pem"},
    "public_key": {"path": "/nonexistent/k.pem"},
    "rebuild": {"name": NAME},
}
EXTRA = {"rollout": ["campuses", "canary", "rings", "max_error_share", "timeout"], "stage": ["campuses", "timeout"],
         "publish": ["campuses", "md5", "success_codes"], "status": ["campuses", "timeout", "presence"], "push": ["pi", "timeout"],
         "on_published": ["campuses", "timeout"], "pin": ["timeout"], "rollback": ["timeout"], "keygen": ["force"],
         "rebuild": ["campuses", "dry_run", "timeout"]}


def test_every_runner_answers_odd_input_with_a_named_field_never_a_traceback(master):
    master.publish("1.0.0", b"build one")
    master.fleet.silent.update(master.fleet.campus)  # whatever gets through finds every minion off
    for fun, base in CALLS.items():
        for arg in [*base, *EXTRA.get(fun, [])]:
            for value in ODD:
                ret = master.run(fun, **{**base, arg: value})
                assert isinstance(ret, dict) and ret["retcode"] == (0 if ret["result"] else 1), (fun, arg, value, ret)
                if not ret["result"]:  # a refused input names its field; the rest is what the (silent) fleet did
                    assert re.match(r"^([\w.:/\[\]-]+: |halted after ring |no Pi of |the pin could not be cleared )",
                                    ret["error"]), (fun, arg, value, ret["error"])


# --------------------------------------------------------------------------- a standby top master


def test_a_standby_with_an_empty_state_rebuilds_the_pins_from_the_pis_signed_indexes(master):
    master.trust()
    posts = []
    master.runners["kiosk_alert.post"] = lambda payload: posts.append(payload) or {"result": True}
    master.publish("1.0.0", b"build one")
    master.publish("1.1.0", b"build two")
    assert master.run("rollout", NAME, "1.0.0")["result"] is True
    assert master.run("rollout", NAME, "1.1.0", campuses="east")["result"] is True
    assert master.run("pin", NAME, "1.0.0", campus="west")["result"] is True  # held: not to be pushed
    original = master.state()
    master.state_file.unlink()  # the standby: same keys and config, no state
    jobs = len(master.fleet.jobs)
    ret = master.run("rebuild", NAME, dry_run=True)
    assert ret["result"] is True and ret["dry_run"] is True, ret
    assert {c: e["action"] for c, e in ret["campuses"].items()} == {"east": "rebuilt", "west": "rebuilt"}
    assert not master.state_file.exists()  # a dry run writes nothing, metrics included
    assert master.fleet.funs()[jobs:] == ["kiosk_pkg.repo_status"]  # one job, to the Pis only
    assert sorted(master.fleet.jobs[-1][1]) == ["pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2"]
    ret = master.run("rebuild", NAME)
    assert ret["result"] is True and ret["retcode"] == 0 and ret["missing_from_store"] == {}, ret
    east = ret["campuses"]["east"]
    assert east["action"] == "rebuilt" and east["pin"] == "1.1.0" and east["from"] == ["pi-east-1", "pi-east-2"]
    rebuilt = master.state()
    for campus in ("east", "west"):
        was, now = original["pins"][NAME][campus], rebuilt["pins"][NAME][campus]
        assert (now["version"], now["serial"], now["signed"]) == (was["version"], was["serial"], was["signed"])
    assert rebuilt["pins"][NAME]["east"]["history"] == ["1.0.0"]
    assert rebuilt["pushed"][NAME] == original["pushed"][NAME]  # pushed (east) and held (west) alike
    assert posts == [] and master.fleet.funs()[-1] == "kiosk_pkg.repo_status"  # no push, no stage
    assert 'kiosk_release_last_run_success{action="rebuild"} 1' in (master.metrics / "kiosk_release.prom").read_text()
    # a second run finds nothing newer: the state file stays as it was but for the run's metrics
    again = master.run("rebuild", NAME)
    assert {c: e["action"] for c, e in again["campuses"].items()} == {"east": "kept", "west": "kept"}
    assert master.state()["pins"] == rebuilt["pins"]
    # the standby's next pin goes above what the Pis hold
    assert master.run("pin", NAME, "1.1.0", campus="west")["pins"]["west"]["serial"] > original["pins"][NAME]["west"][
        "serial"]


def test_a_forged_index_is_refused_and_alerted_and_a_pi_behind_is_reported(tmp_path, monkeypatch):
    master = Master(tmp_path, monkeypatch)
    master.trust()
    posts = []
    master.runners["kiosk_alert.post"] = lambda payload: posts.append(payload) or {"result": True}
    master.publish("1.0.0", b"build one")
    assert master.run("rollout", NAME, "1.0.0", campuses="east")["result"] is True
    genuine = master.fleet.pins["pi-east-2"]
    key = fleet_sign.new_key_pair()[0]  # another key: not in the fleet's verify keys
    master.fleet.pins["pi-east-1"] = fleet_sign.sign_pin(NAME, "east", "6.6.6", genuine["serial"] + 10, key)
    master.fleet.pins["pi-west-1"] = dict(genuine, campus="west")  # east's genuine pin, replayed for west
    master.state_file.unlink()
    ret = master.run("rebuild", NAME, timeout=5)
    assert ret["result"] is False and ret["retcode"] == 1, ret
    east, west = ret["campuses"]["east"], ret["campuses"]["west"]
    assert east["action"] == "rebuilt" and east["pin"] == "1.0.0" and east["from"] == ["pi-east-2"]
    assert east["refused"]["pi-east-1"]["error"].startswith("pi-east-1.pin.signature: does not match")
    assert west["refused"]["pi-west-1"]["error"].startswith("pi-west-1.pin.signature: does not match")
    assert west["action"] == "none" and west["behind"] == {"pi-west-2": None}
    assert master.state()["pins"][NAME] == {"east": master.state()["pins"][NAME]["east"]}
    assert master.state()["pins"][NAME]["east"]["signed"] == genuine
    assert [(p["minion"], p["campus"], p["hop"], p["version"]) for p in posts] == [
        ("pi-east-1", "east", "pi->master", "6.6.6"), ("pi-west-1", "west", "pi->master", "1.0.0")]
    assert "refused" in ret["error"] and "pi-east-1" in ret["error"]
    assert ret["alerts"] == {"posted": ["pi-east-1", "pi-west-1"], "errors": []}
    # a Pi that missed the last pin change is listed behind, not failed
    master.fleet.pins["pi-east-1"] = fleet_sign.sign_pin(NAME, "east", "1.0.0", genuine["serial"] - 5,
                                                         pathlib.Path(master.conf["signing_key"]).read_bytes())
    master.fleet.pins["pi-west-1"] = None
    ret = master.run("rebuild", NAME, campuses="east")
    assert ret["result"] is True and ret["campuses"]["east"]["action"] == "kept", ret
    assert ret["campuses"]["east"]["behind"] == {"pi-east-1": {"version": "1.0.0", "serial": genuine["serial"] - 5}}


def test_a_rebuild_reports_pins_the_store_lacks_and_refuses_to_run_without_verify_keys(master):
    master.publish("1.0.0", b"build one")
    assert master.run("rollout", NAME, "1.0.0", campuses="east")["result"] is True
    ret = master.run("rebuild", NAME)
    assert ret["result"] is False and ret["error"].startswith("kiosk_release:verify_key: missing"), ret
    jobs = len(master.fleet.jobs)
    master.trust()
    shutil.rmtree(master.store)  # the standby's store was never copied
    master.state_file.unlink()
    ret = master.run("rebuild", NAME)
    assert ret["result"] is False and ret["missing_from_store"] == {"1.0.0": ["east"]}, ret
    assert "kiosk-app 1.0.0 (pinned on east) is not in this master's store" in ret["error"]
    assert master.state()["pins"][NAME]["east"]["version"] == "1.0.0"  # rebuilt all the same
    # every Pi silent: nothing to rebuild from, nothing written
    master.state_file.unlink()
    master.fleet.silent.update(master.fleet.campus)
    ret = master.run("rebuild", NAME, campuses="west", timeout=5)
    assert ret["result"] is False and ret["error"] == "west: no Pi gave a usable answer", ret
    assert master.state()["pins"] == {} and len(master.fleet.jobs) == jobs + 2
