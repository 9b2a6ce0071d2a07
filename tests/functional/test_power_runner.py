"""
``kiosk_power`` (runner) loaded by Salt's runner loader with the minions
stood in: a fake LocalClient answers each job as the test says (Pis that
scan, Pis that fail, Pis that stay silent, a forged second answer), and
``__salt__`` (alert post, event) is a recorder. The glue is what is tested
here: one fleet data load per run, one job per step, failed told from
silent, state and metrics written; the decisions themselves are
tests/unit/test_sweep_engine.py's.
"""

import copy
import datetime as dt
import inspect
import json
import pathlib
import threading

import pytest
import salt.client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import salt.config
import salt.loader
import yaml

import fleet_inventory
import fleet_scan
import fleet_sweep
import fleet_wol
from tests.support.topology import SWEEP_SCHEDULES, two_campus_inventory
from tests.support.local_client import LocalClientStandIn

REPO = pathlib.Path(__file__).resolve().parents[2]
AT = "2027-03-01T08:00:00+08:00"  # kiosk-east-01 due on, kiosk-east-02 due off (SWEEP_SCHEDULES)
PLUS_15 = "2027-03-01T08:15:00+08:00"


class Minions(LocalClientStandIn):
    """A stand-in LocalClient: ``answer[fun](minion, kwarg)`` gives the returns of each minion (a list: duplicates)."""

    def __init__(self):
        self.jobs = []
        self.answer = {}

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs.append((fun, list(targets), kwarg))
        for minion in targets:
            for ret in self.answer.get(fun, lambda m, k: [])(minion, kwarg):
                yield {minion: {"ret": ret, "retcode": 0}}


def scan(states, campus="east", minion=None):
    """
    A Pi's kiosk_scan.scan answer: ``states`` {kiosk: open|closed}; ``minion``
    {kiosk: connected to this Pi's master}, by default the kiosks whose port is open.
    """
    minion = {k: s == "open" for k, s in states.items()} if minion is None else minion
    return {"campus": campus, "kiosks": {k: {"state": s, "minion": minion.get(k, False)} for k, s in states.items()}}


def never(fun):
    """A job the runners must not send (the kiosks that are off would cost its whole timeout)."""
    def answer(minion, kwarg):
        raise AssertionError(f"{fun} sent to {minion}")
    return answer


@pytest.fixture
def minions(monkeypatch):
    fake = Minions()
    monkeypatch.setattr(salt.client, "get_local_client", fake)
    return fake


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """(loaded runners, globals of the kiosk_power module, calls recorder, cachedir)."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({**two_campus_inventory(wol_port=9), **SWEEP_SCHEDULES}))
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "file_roots": {"base": [str(tmp_path / "files")]},
                 "kiosk_power": {"textfile_dir": str(tmp_path / "prom")}, "__role": "master"})
    (tmp_path / "prom").mkdir()
    loaded = salt.loader.runner(opts, utils=salt.loader.utils(opts))
    module = loaded["kiosk_power.sweep"].func.__globals__
    calls = {"loads": 0, "posted": [], "events": []}
    real = module["fleet_inventory"].master_data

    def counted(opts_):
        calls["loads"] += 1
        return real(opts_)

    monkeypatch.setattr(module["fleet_inventory"], "master_data", counted)

    def post(payload):
        calls["posted"].append(payload)
        return {"result": True}

    def publish(campus=None):  # kiosk_calendar.publish: tests/functional/test_calendar_runner.py
        calls["published"].append(campus)
        return {"result": True, "campuses": {c: {"serial": 7, "changed": True, "current": ["pi"]}
                                             for c in campus.split(",")}}

    calls["published"] = []
    monkeypatch.setitem(module, "__salt__", {"kiosk_alert.post": post, "kiosk_calendar.publish": publish,
                                             "event.send": lambda tag, data: calls["events"].append((tag, data))})
    return loaded, calls, pathlib.Path(opts["cachedir"]), tmp_path / "prom"


def east_day(minions, pi2="scan"):
    """
    kiosk-east-01 off (port closed, minion silent), kiosk-east-02 on; pi-east-2
    as ``pi2`` says. Returns the ports ({kiosk: open|closed}) to change later.
    """
    states = {"kiosk-east-01": "closed", "kiosk-east-02": "open"}
    pi_answers = {"scan": lambda: [scan(states)], "error": lambda: ["ERROR: nmap failed: no such binary"],
                  "silent": lambda: [],
                  "forged": lambda: [scan(states), scan({"kiosk-east-01": "open", "kiosk-east-02": "open"})]}
    minions.answer = {
        "kiosk_scan.scan": lambda m, k: [scan(states)] if m == "pi-east-1" else pi_answers[pi2](),
        "test.ping": never("test.ping"),
        "kiosk_wol.wake_kiosks": lambda m, k: [{"kiosks": {x: {"packets": 3, "to": "127.0.1.255"}
                                                           for x in k["kiosks"]}}],
        "kiosk_power.shutdown": lambda m, k: [{"action": "shutdown", "delay_s": k["delay_s"]}],
    }
    return states


def reconcile(pi, kwarg, leader=False, woke=(), shut_down=()):
    """A Pi's ``kiosk_campus.reconcile`` answer (the shape agreed with the campus runtime)."""
    return {"result": True, "campus": pi.split("-")[1], "pi": pi, "leader": leader, "woke": list(woke),
            "shut_down": list(shut_down), "observed": {}, "clock": {"synced": True}, "at": kwarg.get("at")}


@pytest.mark.parametrize("pi2", ["answer", "error", "silent", "forged"])
def test_a_sweep_asks_the_campus_pis_to_reconcile_and_takes_no_decision_itself(runner, minions, pi2):
    """Supervision: one job, the campus's Pis; their answers reported; no scan, wake or shutdown from here."""
    loaded, calls, cachedir, _ = runner
    second = {
        "answer": lambda k: [reconcile("pi-east-2", k, woke=["kiosk-east-01"])],
        "error": lambda k: [{"result": False, "pi": "pi-east-2", "error": "no calendar yet"}],
        "silent": lambda k: [],
        "forged": lambda k: [reconcile("pi-east-2", k), reconcile("pi-east-2", k, leader=True)],
    }[pi2]
    minions.answer = {"kiosk_campus.reconcile": lambda m, k: (
        [reconcile(m, k, leader=True, woke=["kiosk-east-01"], shut_down=["kiosk-east-02"])] if m == "pi-east-1"
        else second(k))}
    ret = loaded["kiosk_power.sweep"](campus="east", at=AT, timeout=5)
    assert calls["loads"] == 1
    assert minions.jobs == [("kiosk_campus.reconcile", ["pi-east-1", "pi-east-2"], {"at": "2027-03-01T00:00:00Z"})]
    east = ret["campuses"]["east"]
    assert list(ret["campuses"]) == ["east"] and ret["at"] == "2027-03-01T00:00:00Z"
    assert east["leaders"] == ["pi-east-1"] and east["woke"] == ["kiosk-east-01"]
    assert east["shut_down"] == ["kiosk-east-02"]
    if pi2 == "answer":
        assert ret["result"] is True and ret["retcode"] == 0 and sorted(east["pis"]) == ["pi-east-1", "pi-east-2"]
    elif pi2 == "error":  # a Pi whose run failed is named with its reason
        assert ret["retcode"] == 1 and east["failed"] == {"pi-east-2": "no calendar yet"}
        assert ret["error"] == "east: pi-east-2: no calendar yet"
    else:  # silent, or two different answers (one forged): neither believed, the leader's answer is
        assert ret["result"] is True and east["silent"] == ["pi-east-2"] and list(east["pis"]) == ["pi-east-1"]
    # the top master keeps no per-kiosk record of the campus's actions
    assert not (cachedir / "kiosk_power" / "state.json").exists()


def test_a_sweep_of_every_campus_is_one_job_and_a_silent_campus_fails_it(runner, minions):
    loaded, _, _, _ = runner
    minions.answer = {"kiosk_campus.reconcile": lambda m, k: [reconcile(m, k, leader=m.endswith("-1"))]
                      if m.startswith("pi-east") else []}
    ret = loaded["kiosk_power.sweep"](timeout=5)
    assert minions.jobs == [("kiosk_campus.reconcile", ["pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2"], {})]
    assert ret["retcode"] == 1 and "at" not in ret
    assert ret["campuses"]["east"]["leaders"] == ["pi-east-1"] and "error" not in ret["campuses"]["east"]
    assert ret["error"].startswith("west: no Pi of west answered (Pis silent: pi-west-1, pi-west-2)")
    for kwargs, field in [({"campus": "north"}, "campus"), ({"at": "tomorrow"}, "at"), ({"timeout": 0}, "timeout")]:
        minions.jobs.clear()
        bad = loaded["kiosk_power.sweep"](**kwargs)
        assert bad["retcode"] == 1 and bad["error"].startswith(f"{field}:") and minions.jobs == [], bad


def test_verify_at_plus_15_posts_the_alert_fires_the_event_and_loads_once(runner, minions):
    loaded, calls, cachedir, prom = runner
    ports = east_day(minions)
    # checks recorded for a change made at AT (kiosk-east-01 woken, kiosk-east-02 shut down)
    pending = fleet_sweep.schedule_checks({}, {"east": ["kiosk-east-01", "kiosk-east-02"]},
                                          {"kiosk-east-01": {"state": "on"}, "kiosk-east-02": {"state": "off"}}, AT)
    (cachedir / "kiosk_power").mkdir(parents=True)
    (cachedir / "kiosk_power" / "state.json").write_text(json.dumps({"pending": pending}))
    ports["kiosk-east-02"] = "closed"  # it shut down; kiosk-east-01 never came up
    calls["loads"], minions.jobs[:] = 0, []
    ret = loaded["kiosk_power.verify"](at=PLUS_15, timeout=5)
    assert calls["loads"] == 1 and ret["retcode"] == 1 and ret["mode"] == "due"
    expected = {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "off",
                "since": "2027-03-01T00:00:00Z"}
    assert ret["mismatches"] == [expected]
    assert ret["alerts"] == {"posted": ["kiosk-east-01"], "errors": []}
    assert calls["posted"][0]["kind"] == "power_mismatch" and calls["posted"][0]["kiosk"] == "kiosk-east-01"
    assert calls["events"] == [("kiosk/power/mismatch", expected)]
    assert ret["error"] == "not in the expected state: kiosk-east-01 (expected on, observed off)"
    assert ret["verified"] == ["kiosk-east-02"] and ret["checked"] == ["kiosk-east-01", "kiosk-east-02"]
    assert [fun for fun, _, _ in minions.jobs] == ["kiosk_scan.scan"]  # presence came with the scans
    assert 'kiosk_power_verify_mismatches{campus="east"} 1' in (prom / "kiosk_power.prom").read_text()
    status = loaded["kiosk_power.status"](at=PLUS_15)
    assert status["mismatches"][-1] == expected and status["pending"] == {}


def test_presence_comes_from_any_pi_of_the_campus_and_no_kiosk_is_asked(runner, minions):
    loaded, _, _, _ = runner
    states = east_day(minions)
    states["kiosk-east-02"] = "closed"
    # kiosk-east-01's minion is connected to pi-east-2's master only; kiosk-east-02's to none
    connected = {"pi-east-1": {}, "pi-east-2": {"kiosk-east-01": True}}
    minions.answer["kiosk_scan.scan"] = lambda m, k: [scan(states, minion=connected[m])]
    ret = loaded["kiosk_power.verify"](at=AT, explicit=True, timeout=5)
    assert ret["retcode"] == 1, ret
    assert {m["kiosk"]: m["observed"] for m in ret["mismatches"]} == {"kiosk-east-01": "degraded"}
    assert ret["verified"] == ["kiosk-east-02"]  # due off, port closed, no minion: off as expected
    assert minions.jobs == [("kiosk_scan.scan", ["pi-east-1", "pi-east-2"],
                             {"kiosks": ["kiosk-east-01", "kiosk-east-02"]})]
    # a flag for the wrong campus, or no flag at all (a Pi not yet updated), is no presence
    minions.answer["kiosk_scan.scan"] = lambda m, k: [
        dict(scan(states, minion={"kiosk-east-01": True}), campus="west") if m == "pi-east-2"
        else {"campus": "east", "kiosks": {x: {"state": "closed"} for x in states}}]
    plan = loaded["kiosk_power.plan"](at=AT, hours=1, timeout=5)
    assert plan["observed"]["kiosk-east-01"] == {"state": "off", "seen_by": {"pi-east-1": "closed"},
                                                 "minion": False}, plan
    assert plan["sweep_would"]["wake"] == {"east": ["kiosk-east-01"]}
    assert "test.ping" not in [fun for fun, _, _ in minions.jobs]


def test_plan_without_scan_calls_no_minion_and_explicit_verify_checks_now(runner, minions):
    loaded, calls, _, _ = runner
    ret = loaded["kiosk_power.plan"](at=AT, scan=False, hours=2)
    assert ret["retcode"] == 0 and minions.jobs == [] and calls["loads"] == 1
    assert ret["kiosks"]["kiosk-east-02"]["transitions"][0]["local"] == "2027-03-01T09:00:00+08:00"
    east_day(minions)
    ret = loaded["kiosk_power.verify"](at=AT, kiosks="kiosk-east-01,kiosk-west-01", timeout=5)
    assert ret["mode"] == "explicit" and ret["checked"] == ["kiosk-east-01"]  # west-01: unmanaged
    assert ret["mismatches"][0]["since"] == "2027-03-01T00:00:00Z" and ret["retcode"] == 1
    assert "note" not in ret
    # every managed kiosk of the fleet, as Jenkins asks after a sweep
    every = loaded["kiosk_power.verify"](at=AT, explicit="True", timeout=5)
    assert every["mode"] == "explicit" and every["checked"] == ["kiosk-east-01", "kiosk-east-02"]
    # nothing recorded on this master: the answer says where the campuses' checks are
    due = loaded["kiosk_power.verify"](at=AT, timeout=5)
    assert due["mode"] == "due" and due["checked"] == [] and due["note"].startswith("the campuses verify")
    assert loaded["kiosk_power.verify"](explicit="maybe")["error"].startswith("explicit:")


@pytest.mark.parametrize("content, field", [
    ("{not json", "unreadable state file"),
    ('{"pending": {"kiosk-east-01": {"campus": "east"}}}', "pending.kiosk-east-01.expected"),
    ('{"holds": []}', "holds: expected a JSON object"),
])
def test_a_damaged_state_file_fails_every_runner_naming_file_and_record(runner, minions, content, field):
    loaded, _, cachedir, _ = runner
    (cachedir / "kiosk_power").mkdir(parents=True, exist_ok=True)
    (cachedir / "kiosk_power" / "state.json").write_text(content)
    for fun, kwargs in [("verify", {"at": AT}), ("status", {}), ("plan", {"scan": False}),
                        ("hold", {"kiosk": "kiosk-east-01", "state": "on", "reason": "x",
                                  "until": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()})]:
        ret = loaded[f"kiosk_power.{fun}"](**kwargs)
        assert ret["retcode"] == 1 and field in ret["error"] and "state.json" in ret["error"], (fun, ret)
    assert minions.jobs == []


def test_hold_unhold_and_runner_numbers(runner, minions):
    loaded, calls, _, _ = runner
    ret = loaded["kiosk_power.hold"](kiosk="kiosk-east-01", state="on", until="2099-01-01T00:00:00Z", reason="x")
    assert ret["retcode"] == 1 and ret["error"].startswith("until: ")  # more than a year ahead
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    held = loaded["kiosk_power.hold"](kiosk="kiosk-east-01", state=True, until=until, reason="ticket 1")
    assert held["retcode"] == 0 and held["hold"]["state"] == "on" and held["replaced"] is None
    # the campus's calendar goes out at once, with the hold in it
    assert calls["published"] == ["east"]
    assert held["calendar"] == {"result": True, "campuses": {"east": {"serial": 7, "changed": True,
                                                                       "current": ["pi"]}}}
    assert loaded["kiosk_power.status"]()["holds"]["kiosk-east-01"]["reason"] == "ticket 1"
    assert loaded["kiosk_power.unhold"](kiosk="kiosk-east-01")["removed"]["reason"] == "ticket 1"
    assert calls["published"] == ["east", "east"]
    for fun, kwargs, field in [("sweep", {"timeout": float("inf")}, "timeout"), ("plan", {"hours": 169}, "hours"),
                               ("wake", {"campus": "east", "repeat": True}, "repeat"),
                               ("shutdown", {"campus": "east", "delay_s": -1}, "delay_s"),
                               ("verify", {"at": "tomorrow"}, "at"), ("wake", {"campus": "north"}, "campus")]:
        ret = loaded[f"kiosk_power.{fun}"](**kwargs)
        assert ret["retcode"] == 1 and ret["error"].startswith(field + ":"), (fun, ret)
    assert minions.jobs == []
    assert loaded["kiosk_power.unhold"](kiosk="kiosk-east-01")["error"] == "kiosk: kiosk-east-01 has no hold"


def test_wake_and_shutdown_runners_report_per_kiosk(runner, minions):
    loaded, calls, _, _ = runner
    east_day(minions)
    sent = minions.answer["kiosk_wol.wake_kiosks"]
    minions.answer["kiosk_wol.wake_kiosks"] = lambda m, k: sent(m, k) if m == "pi-east-1" else []
    ret = loaded["kiosk_power.wake"](campus="east", timeout=5)
    assert ret["retcode"] == 0 and ret["pis_answered"] == ["pi-east-1"] and ret["pis_silent"] == ["pi-east-2"]
    assert minions.jobs[-1] == ("kiosk_wol.wake_kiosks", ["pi-east-1", "pi-east-2"],
                                {"kiosks": ["kiosk-east-01", "kiosk-east-02"], "repeat": 3})
    minions.answer["kiosk_power.shutdown"] = lambda m, k: (
        [{"action": "shutdown"}] if m == "kiosk-east-01" else ["ERROR: Access is denied"])
    ret = loaded["kiosk_power.shutdown"](kiosks="kiosk-east-01,kiosk-east-02,kiosk-west-01", delay_s=0, timeout=5)
    assert ret["retcode"] == 1 and ret["accepted"] == ["kiosk-east-01"]
    assert ret["failed"] == {"kiosk-east-02": "ERROR: Access is denied", "kiosk-west-01": "ERROR: Access is denied"}
    assert ret["silent"] == [] and ret["delay_s"] == 0 and calls["loads"] == 2  # one per run


def both_campuses(tmp_path):
    """The fleet data with west managed like east (west-01 due on, west-02 due off at AT); returns it."""
    data = {**two_campus_inventory(wol_port=9), **copy.deepcopy(SWEEP_SCHEDULES)}
    east = data["kiosk_fleet_schedules"]["campuses"]["east"]
    data["kiosk_fleet_schedules"]["campuses"]["west"] = dict(copy.deepcopy(east), kiosks={
        "kiosk-west-01": east["kiosks"]["kiosk-east-01"], "kiosk-west-02": east["kiosks"]["kiosk-east-02"]})
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(data))
    return data


def real_pis(data, ports):
    """
    Pi answers as a real Pi gives them: its pillar is its campus's slice
    (``fleet_inventory.slice_for``), so an id of another campus is refused
    the way Salt reports the module's SaltInvocationError.
    """
    def pillar(pi):
        inventory = fleet_inventory.from_pillar(fleet_inventory.slice_for(data, pi))
        return inventory, fleet_inventory.campus_of(inventory, pi)

    def scan_(pi, kwarg):
        inventory, campus = pillar(pi)
        try:
            targets = fleet_scan.scan_targets(inventory, campus, kwarg["kiosks"])
        except fleet_scan.ScanError as exc:
            return [f"ERROR executing 'kiosk_scan.scan': {exc}"]
        kiosks = [k for by_ip in targets.values() for k in by_ip.values()]
        return [scan({k: ports[k] for k in kiosks}, campus)]

    def wake_(pi, kwarg):
        inventory, _ = pillar(pi)
        try:
            selection = fleet_inventory.select_kiosks(inventory, kiosks=kwarg["kiosks"])
        except fleet_inventory.InventoryError as exc:
            return [f"ERROR executing 'kiosk_wol.wake_kiosks': {exc}"]
        plan = fleet_wol.wake_plan(inventory, pi, [k for ids in selection.values() for k in ids])
        return [{"pi": pi, "campus": plan["campus"], "kiosks": {
            k: {"to": d["broadcast"], "port": d["port"], "source": d["source"], "packets": kwarg["repeat"]}
            for d in plan["destinations"] for k in d["kiosks"]}}]

    return {"kiosk_scan.scan": scan_, "kiosk_wol.wake_kiosks": wake_,
            "test.ping": never("test.ping"),
            "kiosk_power.shutdown": lambda m, k: [{"action": "shutdown", "delay_s": k["delay_s"]}]}


def campus_of_each(jobs, fun):
    """For every ``fun`` job: (campuses of its targets, campuses of its kiosks)."""
    inventory = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
    return sorted((sorted({fleet_inventory.campus_of(inventory, m) for m in targets}),
                   sorted({fleet_inventory.campus_of(inventory, k) for k in kwarg["kiosks"]}))
                  for f, targets, kwarg in jobs if f == fun)


def test_wake_of_two_campuses_reaches_both_with_all_jobs_in_flight_at_once(runner, minions, tmp_path):
    loaded, _, _, _ = runner
    answers = real_pis(both_campuses(tmp_path), {})
    both_sent = threading.Barrier(2, timeout=10)  # breaks unless the two campus jobs run together

    def wake_(pi, kwarg):
        if pi in ("pi-east-1", "pi-west-1"):  # first target of each campus's job
            both_sent.wait()
        return answers["kiosk_wol.wake_kiosks"](pi, kwarg)

    minions.answer["kiosk_wol.wake_kiosks"] = wake_
    ret = loaded["kiosk_power.wake"](campus="east,west", timeout=5)
    assert ret["retcode"] == 0 and ret["unreached"] == [], ret
    assert ret["pis_answered"] == ["pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2"] and ret["pi_errors"] == {}
    assert ret["kiosks"]["kiosk-west-02"] == {"campus": "west", "sent_by": {
        p: {"to": "127.0.3.255", "port": 9, "packets": 3, "source": s}
        for p, s in (("pi-west-1", "127.0.3.2"), ("pi-west-2", "127.0.3.3"))}}
    assert sorted(minions.jobs) == [
        ("kiosk_wol.wake_kiosks", ["pi-east-1", "pi-east-2"], {"kiosks": ["kiosk-east-01", "kiosk-east-02"], "repeat": 3}),
        ("kiosk_wol.wake_kiosks", ["pi-west-1", "pi-west-2"], {"kiosks": ["kiosk-west-01", "kiosk-west-02"], "repeat": 3}),
    ]


TYPED = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.sampled_from(["on", "off", "~", ".inf", "2027-03-01", "2027-03-01T08:00:00", "2027-03-01T08:00:00+08:00",
                     "kiosk-east-01,kiosk-west-01", "east,north", "$(id)", "\ud800", "x" * 5000, "0001-01-01T00:00:00Z",
                     "9999-12-31T23:59:59-23:00"]),
    st.lists(st.sampled_from(["kiosk-east-01", "east", 1, None]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "on"]), st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["plan", "sweep", "verify", "status", "hold", "unhold", "wake", "shutdown"]),
       st.dictionaries(st.sampled_from(["at", "hours", "timeout", "kiosks", "campus", "kiosk", "state", "until",
                                        "reason", "delay_s", "message", "repeat", "scan"]), TYPED, max_size=4))
def test_any_operator_input_gets_an_answer_never_a_traceback(runner, minions, fun, kwargs):
    loaded = runner[0]
    east_day(minions)
    allowed = inspect.signature(loaded[f"kiosk_power.{fun}"].func).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in allowed}
    ret = loaded[f"kiosk_power.{fun}"](**kwargs)
    assert ret["retcode"] in (0, 1) and (ret["retcode"] == 0 or ret["error"].split(":")[0]), ret


def test_a_kiosk_power_master_config_that_is_no_mapping_is_named_not_read_as_unset(runner, minions):
    loaded, _, _, _ = runner
    opts = loaded["kiosk_power.sync_schedules"].func.__globals__["__opts__"]
    opts["kiosk_power"] = "http://platform.example/schedules"  # a URL where the mapping belongs
    ret = loaded["kiosk_power.sync_schedules"]()
    assert ret["retcode"] == 1 and ret["error"].startswith("kiosk_power: expected a mapping in the master config"), ret
    assert minions.jobs == []


def test_status_shows_the_campuses_day_as_the_collection_brought_it_in(runner, minions):
    import fleet_outbox

    loaded, _, cachedir, _ = runner
    assert loaded["kiosk_power.status"]()["campuses"] is None  # no collection yet
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    at = now.isoformat()
    entry = {"kind": "action", "key": f"east/kiosk-east-01/wake/{at}", "at": at,
             "data": {"kiosk": "kiosk-east-01", "campus": "east", "pi": "pi-east-1", "action": "wake", "at": at,
                      "transition": at, "result": True}}
    (cachedir / "kiosk_outbox").mkdir(parents=True, exist_ok=True)
    collected = fleet_outbox.Collected(str(cachedir / "kiosk_outbox" / "collected.db"))
    for pi in ("pi-east-1", "pi-east-2"):  # both Pis woke it: one action in the day
        collected.merge("east", pi, [dict(entry, data=dict(entry["data"], pi=pi))], cursor=1,
                        info={"serial": 42, "leader": "pi-east-1"})
    status = loaded["kiosk_power.status"](campus="east")
    assert status["retcode"] == 0 and list(status["campuses"]) == ["east"]
    day = status["campuses"]["east"]
    assert [a["key"] for a in day["actions"]] == [entry["key"]] and day["actions"][0]["pis"] == ["pi-east-1", "pi-east-2"]
    assert day["pis"]["pi-east-2"]["serial"] == 42
    assert loaded["kiosk_power.status"](campus="north")["error"].startswith("campus: unknown campus")
    assert minions.jobs == []
