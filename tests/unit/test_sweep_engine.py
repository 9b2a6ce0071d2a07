"""
The pure sweep engine (``fleet_sweep``): expect -> (observe) -> sweep ->
(act) -> settle, and the verification steps, on plain data. Every rule of a
run is decided here, so every rule has its test here; the runner only loads,
calls minions and stores. Also the engine on one campus's slice of the
inventory (as a campus Pi would run it) and a compressed day.
"""

import copy
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fleet_inventory
import fleet_power
import fleet_schedule
import fleet_sweep
from fleet_sweep import SweepError
from tests.support.topology import two_campus_inventory

SH = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2027, 3, 1, 8, 0, tzinfo=SH)  # a Monday, 08:00 Shanghai
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RAW = two_campus_inventory(wol_port=9)
INVENTORY = fleet_inventory.validate(RAW["kiosk_fleet"])
SCHEDULE = fleet_schedule.load({"campuses": {
    "east": {"default": "off",
             "rules": [{"name": "hours", "weekly": {"daily": ["07:00-22:00"]}},
                       {"name": "festival", "dates": ["2027-03-03", "2027-03-04"], "always": "off"}],
             "kiosks": {"kiosk-east-02": [{"name": "late", "weekly": {"daily": ["09:00-22:00"]}}]}},
    "west": {"kiosks": {"kiosk-west-01": [{"name": "emergency", "always": "on"}]}},  # 24/7; west-02 unmanaged
}}, INVENTORY)


def state(**parts):
    return fleet_sweep.load_state(parts)


def seen(**states):
    return {k.replace("_", "-"): {"state": s, "seen_by": {}, "minion": False} for k, s in states.items()}


def hold(kiosk, value, until, campus="east"):
    return {"kiosk": kiosk, "campus": campus, "state": value, "until": until, "reason": "ticket 7",
            "set_at": "2027-03-01T00:00:00Z"}


PIS_OK = {"answered": ["pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2"], "silent": []}


def run_sweep(st_, observed, at=T0, pis=PIS_OK, reached=None, inventory=INVENTORY):
    """One sweep: the engine's three steps, every change reached unless ``reached`` says otherwise."""
    view = fleet_sweep.expect(inventory, SCHEDULE, st_["holds"], at)
    decision = fleet_sweep.sweep(view, observed, st_["pending"])
    reached = set(decision["checks"]) if reached is None else set(reached)
    woken = [k for ids in decision["wake"].values() for k in ids if k in reached]
    down = [k for ids in decision["shutdown"].values() for k in ids if k in reached]
    new, record = fleet_sweep.settle(st_, view, decision, woken, down, [], pis, {"source": "test"})
    return view, decision, new, record


# ---------------------------------------------------------------- expect


def test_expect_marks_unmanaged_and_lets_a_hold_win():
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, {}, T0)
    assert {k: v["state"] for k, v in view["expected"].items()} == {
        "kiosk-east-01": "on", "kiosk-east-02": "off", "kiosk-west-01": "on", "kiosk-west-02": "unmanaged"}
    assert view["managed"] == {"east": ["kiosk-east-01", "kiosk-east-02"], "west": ["kiosk-west-01"]}
    holds = {"kiosk-west-02": hold("kiosk-west-02", "off", "2027-03-01T01:00:00Z", "west"),
             "kiosk-east-01": hold("kiosk-east-01", "off", "2027-03-01T00:00:00Z")}  # ends at T0: expired
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, holds, T0)
    assert view["expected"]["kiosk-west-02"]["state"] == "off" and "west" in view["managed"]
    assert view["expected"]["kiosk-west-02"]["why"].startswith("hold until 2027-03-01T01:00:00Z")
    assert list(view["expired_holds"]) == ["kiosk-east-01"] and view["expected"]["kiosk-east-01"]["state"] == "on"


def test_expect_follows_dated_rules_and_the_24_7_kiosk():
    festival = dt.datetime(2027, 3, 3, 12, 0, tzinfo=SH)
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, {}, festival)
    assert view["expected"]["kiosk-east-01"]["state"] == "off"  # the campus's dated closure
    assert view["expected"]["kiosk-east-01"]["why"] == "campus rule festival"
    # a dated campus rule beats a kiosk's standing hours (docs/schedules.md)...
    assert view["expected"]["kiosk-east-02"]["state"] == "off"
    assert view["expected"]["kiosk-east-02"]["why"] == "campus rule festival"
    # ...unless the kiosk's rule says it stays on through closures
    raw = copy.deepcopy(SCHEDULE.data)
    raw["campuses"]["east"]["kiosks"]["kiosk-east-02"][0]["through_closures"] = True
    kept_on = fleet_sweep.expect(INVENTORY, fleet_schedule.load(raw, INVENTORY), {}, festival)
    assert kept_on["expected"]["kiosk-east-02"]["state"] == "on"
    night = dt.datetime(2027, 3, 1, 3, 0, tzinfo=SH)
    assert fleet_sweep.expect(INVENTORY, SCHEDULE, {}, night)["expected"]["kiosk-west-01"]["state"] == "on"


def test_the_engine_on_one_campus_slice_decides_as_on_the_whole_fleet():
    # what a campus Pi holds: its campus only (fleet_inventory.campus_slice), no top master
    part = fleet_inventory.validate(fleet_inventory.campus_slice(RAW, "east")["kiosk_fleet"])
    obs = seen(kiosk_east_01="off", kiosk_east_02="on", kiosk_west_01="off")
    foreign = {"kiosk-west-01": {"kiosk": "kiosk-west-01", "campus": "west", "expected": "on",
                                 "since": "2027-02-28T23:50:00Z", "checks": fleet_sweep.check_times(
                                     dt.datetime(2027, 2, 28, 23, 50, tzinfo=dt.timezone.utc)), "done": []}}
    whole = run_sweep(state(), obs)
    alone = run_sweep(state(pending=copy.deepcopy(foreign)), obs, inventory=part)
    assert whole[1]["wake"] == {"east": ["kiosk-east-01"], "west": ["kiosk-west-01"]}
    assert alone[1]["wake"] == {"east": ["kiosk-east-01"]}
    assert alone[1]["shutdown"] == whole[1]["shutdown"] == {"east": ["kiosk-east-02"]}
    assert "kiosk-west-01" not in alone[1]["nothing"]  # not this campus's kiosk
    assert alone[2]["pending"]["kiosk-west-01"] == foreign["kiosk-west-01"]  # another campus's check is kept
    # and its due checks are not this campus's to run
    later = T0 + dt.timedelta(minutes=5)
    assert fleet_sweep.due_selection(alone[2], later, part) == {"east": ["kiosk-east-01", "kiosk-east-02"]}
    assert "west" in fleet_sweep.due_selection(alone[2], later)


# ---------------------------------------------------------------- sweep


@pytest.mark.parametrize("observed, action", [
    ("off", "wake"), ("degraded", "wake"), ("on", None), ("unknown", None)])
def test_a_kiosk_due_on(observed, action):
    _, decision, _, _ = run_sweep(state(), seen(kiosk_east_01=observed, kiosk_east_02="off"))
    assert decision["wake"] == ({"east": ["kiosk-east-01"]} if action else {})
    assert ("kiosk-east-01" in decision["checks"]) == bool(action)


@pytest.mark.parametrize("observed, action", [
    ("on", "shutdown"), ("degraded", "shutdown"), ("off", None), ("unknown", None)])
def test_a_kiosk_due_off(observed, action):
    _, decision, _, _ = run_sweep(state(), seen(kiosk_east_01="on", kiosk_east_02=observed))
    assert decision["shutdown"] == ({"east": ["kiosk-east-02"]} if action else {})
    if not action:
        assert decision["nothing"]["kiosk-east-02"] in ("already off", "not observed (no Pi of the campus answered)")


def test_unmanaged_kiosks_are_never_touched_whatever_is_seen():
    for observed in ("on", "off", "degraded", "unknown"):
        _, decision, _, _ = run_sweep(state(), seen(kiosk_west_02=observed))
        assert decision["nothing"]["kiosk-west-02"] == "unmanaged"
        assert "kiosk-west-02" not in decision["checks"]


def test_checks_at_plus_5_10_15_for_each_change_made_and_only_those():
    _, decision, new, record = run_sweep(state(), seen(kiosk_east_01="off", kiosk_east_02="on", kiosk_west_01="off"),
                                         reached={"kiosk-east-01", "kiosk-east-02"})
    plus = ["2027-03-01T00:05:00Z", "2027-03-01T00:10:00Z", "2027-03-01T00:15:00Z"]
    assert decision["checks"] == {"kiosk-east-01": plus, "kiosk-east-02": plus, "kiosk-west-01": plus}
    # kiosk-west-01: no Pi sent a packet -> no check; the next sweep tries again
    assert sorted(new["pending"]) == ["kiosk-east-01", "kiosk-east-02"]
    assert new["pending"]["kiosk-east-01"] == {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on",
                                               "since": "2027-03-01T00:00:00Z", "checks": plus, "done": []}
    assert record["woken"] == {"east": ["kiosk-east-01"], "west": []}
    assert record["shut_down"] == {"east": ["kiosk-east-02"]}
    again = run_sweep(new, seen(kiosk_east_01="off", kiosk_east_02="on", kiosk_west_01="off"),
                      at=T0 + dt.timedelta(minutes=1))[1]
    assert again["wake"] == {"west": ["kiosk-west-01"]} and again["shutdown"] == {}
    assert "verification pending" in again["nothing"]["kiosk-east-01"]


def test_a_kiosk_being_verified_is_acted_on_at_once_when_its_expected_state_changes():
    _, _, new, _ = run_sweep(state(), seen(kiosk_east_01="off"))
    holds = {"kiosk-east-01": hold("kiosk-east-01", "off", "2027-03-02T00:00:00Z")}
    new["holds"] = holds
    decision = run_sweep(new, seen(kiosk_east_01="on"), at=T0 + dt.timedelta(minutes=1))[1]
    assert decision["shutdown"] == {"east": ["kiosk-east-01"]}


def test_settle_reports_no_pi_answered_only_when_something_was_managed():
    obs = seen(kiosk_east_01="unknown", kiosk_east_02="unknown", kiosk_west_01="unknown")
    silent = {"answered": [], "silent": ["pi-east-1", "pi-east-2"]}
    _, decision, _, record = run_sweep(state(), obs, pis=silent)
    assert decision["wake"] == decision["shutdown"] == {}
    assert record["errors"] == ["scan: no Pi answered (pi-east-1, pi-east-2)"]
    empty = fleet_schedule.load({"campuses": {}})
    view = fleet_sweep.expect(INVENTORY, empty, {}, T0)
    assert view["managed"] == {}
    _, record = fleet_sweep.settle(state(), view, fleet_sweep.sweep(view, {}, {}), [], [], [], silent)
    assert record["errors"] == []


def test_settle_drops_expired_holds_keeps_the_rest_and_the_last_records():
    holds = {"kiosk-east-01": hold("kiosk-east-01", "on", "2027-03-01T00:00:00Z"),
             "kiosk-west-02": hold("kiosk-west-02", "on", "2027-03-09T00:00:00Z", "west")}
    old = state(holds=holds, sweeps=[{"at": str(n)} for n in range(fleet_sweep.KEEP_RECORDS)])
    view, _, new, record = run_sweep(old, {})
    assert list(new["holds"]) == ["kiosk-west-02"] and list(view["expired_holds"]) == ["kiosk-east-01"]
    assert len(new["sweeps"]) == fleet_sweep.KEEP_RECORDS and new["sweeps"][-1] == record
    assert new["sweeps"][0] == {"at": "1"}
    assert old["holds"] == holds  # the engine never changes what it is given


# ---------------------------------------------------------------- verification


def after_sweep():
    return run_sweep(state(), seen(kiosk_east_01="off", kiosk_east_02="on", kiosk_west_01="on"))[2]


@pytest.mark.parametrize("minutes, due", [(4, False), (5, True)])
def test_checks_fall_due_at_plus_5(minutes, due):
    at = T0 + dt.timedelta(minutes=minutes, seconds=59 if minutes == 4 else 0)
    assert bool(fleet_sweep.due_selection(after_sweep(), at)) == due


def test_a_kiosk_still_wrong_waits_at_plus_5_and_10_and_is_a_mismatch_at_15():
    st_ = after_sweep()
    wrong = seen(kiosk_east_01="off", kiosk_east_02="off")
    for minutes in (5, 10):
        at = T0 + dt.timedelta(minutes=minutes)
        sel = fleet_sweep.due_selection(st_, at)
        found = fleet_sweep.verify_due(st_, sel, wrong, at)
        assert found["mismatches"] == [] and found["waiting"] == ["kiosk-east-01"]
        st_ = found["state"]
        assert fleet_sweep.due_selection(st_, at) == {}  # each check runs once
    at = T0 + dt.timedelta(minutes=15)
    found = fleet_sweep.verify_due(st_, fleet_sweep.due_selection(st_, at), wrong, at)
    since = "2027-03-01T00:00:00Z"
    assert found["mismatches"] == [{"kiosk": "kiosk-east-01", "campus": "east", "expected": "on",
                                    "observed": "off", "since": since}]
    assert found["state"]["pending"] == {} and found["state"]["mismatches"] == found["mismatches"]
    assert fleet_sweep.verify_verdict(found["checked"], found["mismatches"], PIS_OK) == (
        False, "not in the expected state: kiosk-east-01 (expected on, observed off)")


def test_a_kiosk_right_at_plus_10_is_verified_and_unobserved_counts_as_failed():
    st_ = after_sweep()
    at5, at10 = T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(minutes=10)
    st_ = fleet_sweep.verify_due(st_, fleet_sweep.due_selection(st_, at5), {}, at5)["state"]  # nothing seen
    assert sorted(st_["pending"]) == ["kiosk-east-01", "kiosk-east-02"]
    found = fleet_sweep.verify_due(st_, fleet_sweep.due_selection(st_, at10),
                                   seen(kiosk_east_01="on", kiosk_east_02="off"), at10)
    assert found["verified"] == ["kiosk-east-01", "kiosk-east-02"] and found["state"]["pending"] == {}


def test_a_degraded_kiosk_at_its_last_check_is_a_mismatch_and_a_late_verify_runs_all_checks():
    st_ = after_sweep()
    late = T0 + dt.timedelta(hours=3)
    found = fleet_sweep.verify_due(st_, fleet_sweep.due_selection(st_, late),
                                   seen(kiosk_east_01="degraded", kiosk_east_02="unknown"), late)
    assert [(m["kiosk"], m["observed"]) for m in found["mismatches"]] == [
        ("kiosk-east-01", "degraded"), ("kiosk-east-02", "unknown")]


def test_verify_now_checks_the_managed_kiosks_against_now():
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, {}, T0, {"west": ["kiosk-west-01", "kiosk-west-02"]})
    found = fleet_sweep.verify_now(state(), view, seen(kiosk_west_01="off", kiosk_west_02="off"))
    assert found["checked"] == ["kiosk-west-01"]  # unmanaged: nothing to check
    assert found["mismatches"] == [{"kiosk": "kiosk-west-01", "campus": "west", "expected": "on",
                                    "observed": "off", "since": "2027-03-01T00:00:00Z"}]
    ok = fleet_sweep.verify_now(state(), view, seen(kiosk_west_01="on"))
    assert ok["verified"] == ["kiosk-west-01"] and ok["mismatches"] == [] and ok["waiting"] == []


def test_verify_verdict():
    assert fleet_sweep.verify_verdict([], [], {"answered": [], "silent": ["p"]}) == (True, None)
    assert fleet_sweep.verify_verdict(["k"], [], {"answered": [], "silent": ["p1", "p2"]}) == (
        False, "scan: no Pi answered (p1, p2)")
    mismatch = fleet_sweep.mismatch("k", "c", "on", "off", "x")
    result, error = fleet_sweep.verify_verdict(["k"], [mismatch], PIS_OK, ["k: HTTP 500"])
    assert not result and error.endswith("; alerts not posted: k: HTTP 500")


def test_mismatches_are_kept_to_the_last_hundred_and_status_shows_twenty():
    old = state(mismatches=[{"kiosk": str(n)} for n in range(150)])
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, {}, T0, {"east": ["kiosk-east-01"]})
    new = fleet_sweep.verify_now(old, view, {})["state"]
    assert len(new["mismatches"]) == 100 and new["mismatches"][-1]["kiosk"] == "kiosk-east-01"
    shown = fleet_sweep.status(new, T0)
    assert len(shown["mismatches"]) == 20 and shown["last_sweep"] is None


# ---------------------------------------------------------------- a compressed day


def test_a_day_each_transition_acted_on_once_and_verified():
    """Sweeps and verifies every 5 minutes over a day; the kiosks follow their orders after one step."""
    power = {"kiosk-east-01": "off", "kiosk-east-02": "on", "kiosk-west-01": "off", "kiosk-west-02": "on"}
    st_ = state()
    acted = []
    start = dt.datetime(2027, 3, 1, 0, 0, tzinfo=SH)
    for step in range(24 * 12):
        at = start + dt.timedelta(minutes=5 * step)
        observed = {k: {"state": v} for k, v in power.items()}
        sel = fleet_sweep.due_selection(st_, at)
        found = fleet_sweep.verify_due(st_, sel, observed, at)
        assert found["mismatches"] == [], at
        _, decision, st_, _ = run_sweep(found["state"], observed, at=at)
        for part, value in (("wake", "on"), ("shutdown", "off")):
            for ids in decision[part].values():
                for kiosk in ids:
                    acted.append((at.strftime("%H:%M"), kiosk, value))
                    power[kiosk] = value
    assert sorted(acted) == [("00:00", "kiosk-east-02", "off"), ("00:00", "kiosk-west-01", "on"),
                     ("07:00", "kiosk-east-01", "on"), ("09:00", "kiosk-east-02", "on"),
                     ("22:00", "kiosk-east-01", "off"), ("22:00", "kiosk-east-02", "off")]
    assert power["kiosk-west-02"] == "on"  # unmanaged: left as it was


# ---------------------------------------------------------------- plan, status, metrics, reports


def test_plan_kiosks_lists_transitions_within_hours():
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, {}, T0)
    kiosks = fleet_sweep.plan_kiosks(view, SCHEDULE, 2)
    assert kiosks["kiosk-east-02"]["transitions"] == [
        {"at": "2027-03-01T01:00:00Z", "local": "2027-03-01T09:00:00+08:00", "state": "on", "rule": "late"}]
    assert kiosks["kiosk-east-02"]["schedule"] == "off" and kiosks["kiosk-west-02"]["transitions"] == []
    assert fleet_sweep.plan_kiosks(view, SCHEDULE, 0)["kiosk-east-02"]["transitions"] == []
    for bad in (-1, 169, True, 1.5, "2"):
        with pytest.raises(SweepError, match="^hours: "):
            fleet_sweep.plan_kiosks(view, SCHEDULE, bad)


def test_status_splits_holds():
    holds = {"a": hold("a", "on", "2027-03-01T00:00:00Z"), "b": hold("b", "off", "2027-03-01T00:00:01Z")}
    shown = fleet_sweep.status(state(holds=holds, sweeps=[{"at": "1"}, {"at": "2"}]), T0)
    assert list(shown["holds"]) == ["b"] and list(shown["expired_holds"]) == ["a"]
    assert shown["last_sweep"] == {"at": "2"}


def test_metrics_keep_the_last_sweep_actions_across_a_verify():
    sweep_ret = {"result": True, "wake": {"east": ["kiosk-east-01"]}, "shutdown": {},
                 "observed": {"kiosk-east-01": "off", "kiosk-east-02": "degraded", "nobody": "on", "kiosk-west-01": "x"}}
    last, families = fleet_sweep.metrics({}, "sweep", sweep_ret, INVENTORY, 100.0)
    by_name = {name: samples for name, _, _, samples in families}
    assert ({"campus": "east", "action": "wake"}, 1) in by_name["kiosk_power_sweep_actions"]
    assert ({"campus": "east", "state": "degraded"}, 1) in by_name["kiosk_power_kiosks_observed"]
    last, families = fleet_sweep.metrics(last, "verify", {"result": False, "mismatches": [
        {"campus": "west"}]}, INVENTORY, 200.0)
    by_name = {name: samples for name, _, _, samples in families}
    assert ({"campus": "east", "action": "wake"}, 1) in by_name["kiosk_power_sweep_actions"]
    assert ({"campus": "west"}, 1) in by_name["kiosk_power_verify_mismatches"]
    assert by_name["kiosk_power_last_run_success"] == [({"action": "sweep"}, True), ({"action": "verify"}, False)]


def test_pis_report_tells_failed_from_silent_and_conflicting():
    report = fleet_sweep.pis_report(["p1", "p2", "p3", "p4"], {"p1": {"kiosks": {}}, "p4": "odd"},
                                    {"p2": "ERROR: nmap failed"}, ["p3"])
    assert report == {"answered": ["p1"], "silent": ["p2", "p3", "p4"],
                      "errors": {"p2": "ERROR: nmap failed", "p4": "not a scan: odd"}, "conflicting": ["p3"]}
    assert fleet_sweep.pis_report(["p1"], {}, {}) == {"answered": [], "silent": ["p1"]}


def test_shutdown_report():
    report = fleet_power.shutdown_report({"k1": {"action": "shutdown"}, "k2": {"action": "abort"}},
                                         {"k3": "ERROR: access denied"}, ["k4"])
    assert report["accepted"] == ["k1"] and report["silent"] == ["k4"] and not report["result"]
    assert set(report["failed"]) == {"k2", "k3"} and report["error"] == "not shut down: k2, k3, k4"
    assert fleet_power.shutdown_report({"k1": {"action": "shutdown"}}, {}, []) == {
        "result": True, "accepted": ["k1"], "failed": {}, "silent": []}


# ---------------------------------------------------------------- the stored state, fuzzed


@pytest.mark.parametrize("data, field", [
    ([], "state"), ({"holds": []}, "holds"), ({"pending": {"k": 1}}, "pending.k"),
    ({"pending": {"k": {"campus": "c", "expected": "maybe"}}}, "pending.k.expected"),
    ({"pending": {"k": {"campus": "c", "expected": "on", "since": "2027-03-01T00:00:00Z", "checks": []}}},
     "pending.k.checks"),
    ({"pending": {"k": {"campus": "c", "expected": "on", "since": "2027-03-01T00:00:00Z",
                        "checks": ["2027-03-01T00:05:00"], "done": []}}}, "pending.k.checks[0]"),
    ({"holds": {"k": {"state": "on", "until": None}}}, "holds.k.until"),
    ({"holds": {"k": {"state": "on", "until": "2027-03-01T00:00:00Z", "reason": 5, "campus": "c"}}},
     "holds.k.reason"),
    ({"sweeps": {}}, "sweeps"),
])
def test_a_damaged_state_is_refused_naming_the_record(data, field):
    with pytest.raises(SweepError) as info:
        fleet_sweep.load_state(data)
    assert str(info.value).startswith(field + ":"), info.value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.sampled_from(["on", "off", "2027-03-01T00:05:00Z", "kiosk-east-01", "east"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
RECORD_KEYS = st.sampled_from(["kiosk", "campus", "expected", "since", "checks", "done", "state", "until", "reason"])


@FUZZ
@given(st.dictionaries(st.sampled_from(["holds", "pending", "sweeps", "mismatches", "x"]),
                       st.dictionaries(st.sampled_from(["kiosk-east-01", "k"]),
                                       st.dictionaries(RECORD_KEYS, JSON, max_size=9) | JSON, max_size=2) | JSON,
                       max_size=5))
def test_any_state_file_loads_or_is_refused_and_a_loaded_one_runs(data):
    try:
        loaded = fleet_sweep.load_state(data)
    except SweepError:
        return
    at = T0 + dt.timedelta(minutes=15)
    try:
        view, decision, new, _ = run_sweep(loaded, {}, at=at)
    except SweepError as exc:  # a hold for a kiosk of no campus, for one
        assert str(exc).split(":")[0], exc
        return
    found = fleet_sweep.verify_due(new, fleet_sweep.due_selection(new, at), {}, at)
    fleet_sweep.status(found["state"], at)


@FUZZ
@given(st.dictionaries(st.text(max_size=12), JSON, max_size=4), st.dictionaries(st.text(max_size=12), JSON, max_size=4))
def test_any_scan_answer_from_a_pi_is_merged_without_crashing(answers, presence):
    # a Pi's return is platform data: a tampered Pi can send anything
    returns = {"pi-east-1": answers, "pi-east-2": {"campus": "east", "kiosks": answers}}
    out = fleet_sweep.observed_states({"east": ["kiosk-east-01", "kiosk-east-02"]}, returns,
                                      {"east": ["pi-east-1", "pi-east-2"]}, presence)
    assert {v["state"] for v in out.values()} <= set(fleet_sweep.POWER_STATES)


@FUZZ
@given(JSON)
def test_any_stored_metrics_figures_are_replaced_not_a_crash(last):
    fleet_sweep.metrics(last, "verify", {"result": True}, INVENTORY, 1.0)


@FUZZ
@given(JSON, JSON, JSON, JSON)
def test_any_hold_request_is_a_hold_or_a_sweep_error(kiosk, value, until, reason):
    try:
        record = fleet_sweep.make_hold(INVENTORY, kiosk, value, until, reason, T0)
    except SweepError:
        return
    assert record["state"] in ("on", "off")


# ---------------------------------------------------------------- acting and answering


def test_acted_counts_a_kiosk_changed_only_when_reached():
    decision = {"wake": {"east": ["k1", "k2"]}, "shutdown": {"east": ["k3", "k4"]}}
    woken, down, errors = fleet_sweep.acted(decision, {"unreached": ["k2"], "error": "no Pi sent to k2"},
                                            {"accepted": ["k3", "k9"], "error": "not shut down: k4"})
    assert (woken, down) == (["k1"], ["k3"])
    assert errors == ["wake: no Pi sent to k2", "shutdown: not shut down: k4"]
    assert fleet_sweep.acted(decision, None, None) == ([], [], [])


def test_sweep_and_verify_answers():
    view, decision, new, record = run_sweep(state(), seen(kiosk_east_01="off", kiosk_east_02="off",
                                                          kiosk_west_01="on"), reached=set())
    answer = fleet_sweep.sweep_answer(view, decision, record, seen(kiosk_east_01="off"), PIS_OK, new)
    assert answer["result"] is True and answer["verifications"] == {} and answer["wake"] == {"east": ["kiosk-east-01"]}
    assert answer["observed"] == {"kiosk-east-01": "off"} and answer["schedule"] == {"source": "test"}
    found = {"checked": ["k"], "verified": [], "waiting": [], "mismatches": [fleet_sweep.mismatch("k", "c", "on", "off", "s")]}
    answer = fleet_sweep.verify_answer(found, {}, PIS_OK, T0, True, [], ["k: down"], ["k"], "kiosk/power/mismatch")
    assert answer["mode"] == "explicit" and answer["result"] is False and answer["events"]["kiosks"] == ["k"]
    assert answer["error"].endswith("alerts not posted: k: down")


# ---------------------------------------------------------------- where the schedule comes from, platform sync


def test_schedule_in_force_first_found_wins():
    raw = {"kiosk_fleet_schedules": {"campuses": {"east": {"default": "on"}}}}
    synced = {"synced_at": "2027-01-01T00:00:00Z", "url": "https://p", "schedule": {"campuses": {"west": {"default": "off"}}}}
    schedule, source = fleet_sweep.schedule_in_force(synced, raw, INVENTORY)
    assert source == {"source": "synced", "synced_at": "2027-01-01T00:00:00Z", "url": "https://p"}
    assert fleet_schedule.desired_state(schedule, "west", "kiosk-west-01", T0)["state"] == "off"
    schedule, source = fleet_sweep.schedule_in_force(None, raw, INVENTORY)
    assert source == {"source": "pillar", "key": "kiosk_fleet_schedules"}
    assert fleet_sweep.schedule_in_force(None, {}, INVENTORY)[1] == {"source": "none"}
    stale = dict(synced, schedule={"campuses": {"north": {}}})
    with pytest.raises(fleet_schedule.ScheduleError, match=r"^synced schedule \(x.json\) no longer matches"):
        fleet_sweep.schedule_in_force(stale, raw, INVENTORY, "x.json")


def test_platform_url_and_token():
    assert fleet_sweep.platform("http://127.0.0.1:8/x", {"platform_token": "t"}) == ("http://127.0.0.1:8/x", {})
    assert fleet_sweep.platform(None, {"platform_url": "https://p/s", "platform_token": "t"}) == (
        "https://p/s", {"Authorization": "Bearer t"})
    for url, conf, field in [(None, None, "url"), (None, {"platform_url": "https://p", "platform_token": "a\nb"},
                                                   "kiosk_power.platform_token"),
                             (None, {"platform_url": "ftp://p"}, "kiosk_power.platform_url"), ("x y", {}, "url")]:
        with pytest.raises(ValueError) as info:
            fleet_sweep.platform(url, conf)
        assert str(info.value).startswith(field + ":"), info.value


@pytest.mark.parametrize("value", [0, -1, 121, float("inf"), float("nan"), "x", None, True, [1]])
def test_http_timeout_refuses(value):
    with pytest.raises(SweepError, match="^timeout: "):
        fleet_sweep.http_timeout(value)


def test_synced_record_and_answer():
    now = dt.datetime(2027, 2, 1, 2, 0, tzinfo=dt.timezone.utc)
    fetched = {"kiosk_fleet_schedules": {"campuses": {"east": {"default": "off"}}}}
    record, answer = fleet_sweep.synced(fetched, INVENTORY, "https://p", None,
                                        {"campuses": {"west": {"default": "on"}}}, now)
    assert record["synced_at"] == answer["synced_at"] == "2027-02-01T02:00:00Z" and record["url"] == "https://p"
    assert answer["changes"] == {"added": ["east"], "removed": ["west"], "changed": []} and answer["changed"]
    assert answer["replaced"] == {"source": "pillar"}
    again = fleet_sweep.synced(fetched, INVENTORY, "https://p", record, None, now)[1]
    assert again["changed"] is False and again["replaced"]["source"] == "synced"
    with pytest.raises(SweepError, match=r"^schedule from https://p is invalid: .*last good copy kept$"):
        fleet_sweep.synced({"campuses": {"north": {}}}, INVENTORY, "https://p", record, None, now)


def test_a_run_told_not_to_shut_down_still_wakes():
    view = fleet_sweep.expect(INVENTORY, SCHEDULE, {}, T0)
    obs = seen(kiosk_east_01="off", kiosk_east_02="on")
    decision = fleet_sweep.sweep(view, obs, {}, no_shutdown="clock not synchronised")
    assert decision["shutdown"] == {} and decision["wake"] == {"east": ["kiosk-east-01"]}
    assert decision["nothing"]["kiosk-east-02"] == "clock not synchronised"
    assert sorted(decision["checks"]) == ["kiosk-east-01"]
    with pytest.raises(SweepError, match="^no_shutdown: "):
        fleet_sweep.sweep(view, obs, {}, no_shutdown=" ")


def test_verify_mismatches_are_counted_per_campus_with_zeros_and_strays_ignored():
    # counted in one pass (a Counter): every campus of the inventory, 0 where none, a campus
    # not in the inventory or not a name (missing, a number, a list) counted nowhere, no crash
    mismatches = [{"campus": "west"}, {"campus": "east"}, {"campus": "west"}, {"campus": "north"},
                  {}, {"campus": None}, {"campus": 1}, {"campus": ["west"]}, {"campus": "west"}]
    last, families = fleet_sweep.metrics({}, "verify", {"result": False, "mismatches": mismatches}, INVENTORY, 5.0)
    expected = {c: sum(1 for m in mismatches if m.get("campus") == c) for c in sorted(INVENTORY["campuses"])}
    assert last["mismatches"] == expected == {"east": 1, "west": 3}
    by_name = {name: samples for name, _, _, samples in families}
    assert by_name["kiosk_power_verify_mismatches"] == [({"campus": "east"}, 1), ({"campus": "west"}, 3)]
    last, _ = fleet_sweep.metrics(last, "verify", {"result": True}, INVENTORY, 6.0)
    assert last["mismatches"] == {"east": 0, "west": 0}
