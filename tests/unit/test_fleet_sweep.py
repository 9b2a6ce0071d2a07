import datetime as dt

import pytest

import fleet_inventory
import fleet_schedule
import fleet_sweep
from fleet_sweep import SweepError
from tests.support.topology import two_campus_inventory

UTC = dt.timezone.utc
T0 = dt.datetime(2027, 3, 1, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))  # a Monday, 07:00 Shanghai


@pytest.fixture(scope="module")
def inventory():
    return fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])


def schedule():
    return fleet_schedule.load({
        "campuses": {
            "east": {"default": "off", "rules": [{"name": "hours", "weekly": {"daily": ["07:00-22:00"]}}],
                     "kiosks": {"kiosk-east-02": [{"name": "late", "weekly": {"daily": ["09:00-22:00"]}}]}},
        }
    })


def desired(at=T0, inventory_=None):
    sel = {"east": ["kiosk-east-01", "kiosk-east-02"], "west": ["kiosk-west-01"]}
    return fleet_schedule.desired_states(schedule(), sel, at)


def seen(**states):
    return {k.replace("_", "-"): {"state": s, "seen_by": {}} for k, s in states.items()}


def hold(kiosk, state, until, reason="ticket 1"):
    return {"kiosk": kiosk, "state": state, "until": until, "reason": reason, "set_at": "2027-03-01T00:00:00Z"}


# ---------------------------------------------------------------- actions


def test_wake_due_on_that_are_off_and_shut_down_due_off_that_are_on():
    obs = seen(kiosk_east_01="off", kiosk_east_02="on", kiosk_west_01="off")
    actions = fleet_sweep.plan_actions(desired(), obs, {}, T0)
    assert actions["wake"] == {"east": ["kiosk-east-01"]}
    assert actions["shutdown"] == {"east": ["kiosk-east-02"]}
    assert actions["nothing"] == {"kiosk-west-01": "unmanaged"}  # west has no schedule


def test_nothing_when_already_right_or_unobserved():
    obs = seen(kiosk_east_01="on", kiosk_east_02="unknown", kiosk_west_01="on")
    actions = fleet_sweep.plan_actions(desired(), obs, {}, T0)
    assert actions["wake"] == {} and actions["shutdown"] == {}
    assert actions["nothing"]["kiosk-east-01"] == "already on"
    assert actions["nothing"]["kiosk-east-02"].startswith("not observed")
    # a kiosk missing from the observations is unknown too
    assert fleet_sweep.plan_actions(desired(), {}, {}, T0)["wake"] == {}


def test_a_hold_wins_over_the_schedule_until_it_expires():
    holds = {"kiosk-east-01": hold("kiosk-east-01", "off", "2027-03-01T00:30:00Z")}  # 08:30 local
    obs = seen(kiosk_east_01="on", kiosk_east_02="off", kiosk_west_01="on")
    actions = fleet_sweep.plan_actions(desired(), obs, holds, T0)
    assert actions["shutdown"] == {"east": ["kiosk-east-01"]}
    assert actions["expected"]["kiosk-east-01"]["why"].startswith("hold until 2027-03-01T00:30:00Z")
    # at the hold's end (until is exclusive) the schedule decides again
    later = T0 + dt.timedelta(minutes=90)
    actions = fleet_sweep.plan_actions(desired(later), obs, holds, later)
    assert actions["shutdown"] == {} and actions["nothing"]["kiosk-east-01"] == "already on"


def test_a_hold_can_keep_an_unmanaged_kiosk_on():
    holds = {"kiosk-west-01": hold("kiosk-west-01", "on", "2027-03-02T00:00:00Z")}
    actions = fleet_sweep.plan_actions(desired(), seen(kiosk_west_01="off"), holds, T0)
    assert actions["wake"] == {"west": ["kiosk-west-01"]}


def test_prune_holds_splits_active_and_expired():
    holds = {"a": hold("a", "on", "2027-03-01T00:00:00Z"), "b": hold("b", "on", "2027-03-01T00:00:01Z")}
    active, expired = fleet_sweep.prune_holds(holds, dt.datetime(2027, 3, 1, 0, 0, tzinfo=UTC))
    assert list(active) == ["b"] and list(expired) == ["a"]


def test_a_kiosk_being_verified_is_not_woken_again():
    pending = fleet_sweep.schedule_checks({}, {"east": ["kiosk-east-01"]},
                                          {"kiosk-east-01": {"state": "on"}}, T0)
    obs = seen(kiosk_east_01="off", kiosk_east_02="off", kiosk_west_01="off")
    later = T0 + dt.timedelta(minutes=1)
    actions = fleet_sweep.plan_actions(desired(later), obs, {}, later, pending)
    assert actions["wake"] == {}
    assert "verification pending" in actions["nothing"]["kiosk-east-01"]
    # ... but a hold to the other state acts at once
    holds = {"kiosk-east-01": hold("kiosk-east-01", "off", "2027-03-02T00:00:00Z")}
    obs["kiosk-east-01"]["state"] = "on"
    assert fleet_sweep.plan_actions(desired(later), obs, holds, later, pending)["shutdown"] == {"east": ["kiosk-east-01"]}


# ---------------------------------------------------------------- observed


def test_on_if_any_pi_saw_the_port_open():
    sel = {"east": ["k1", "k2", "k3"]}
    pis = {"east": ["p1", "p2"]}
    returns = {
        "p1": {"campus": "east", "kiosks": {"k1": {"state": "closed"}, "k2": {"state": "filtered"}}},
        "p2": {"campus": "east", "kiosks": {"k1": {"state": "open"}, "k2": {"state": "closed"}}},
        "p3": {"campus": "east", "kiosks": {"k3": {"state": "open"}}},  # not a Pi of the campus
    }
    out = fleet_sweep.observed_states(sel, returns, pis)
    assert out["k1"] == {"state": "on", "seen_by": {"p1": "closed", "p2": "open"}, "minion": False}
    assert out["k2"]["state"] == "off"
    assert out["k3"] == {"state": "unknown", "seen_by": {}, "minion": False}
    # an error string from a Pi counts as silence
    assert fleet_sweep.observed_states({"east": ["k1"]}, {"p1": "ERROR: boom"}, pis)["k1"]["state"] == "unknown"


def test_minion_presence_tells_degraded_from_off_but_never_makes_a_kiosk_on():
    sel = {"east": ["k1", "k2", "k3", "k4"]}
    pis = {"east": ["p1"]}
    returns = {"p1": {"campus": "east", "kiosks": {"k1": {"state": "closed"}, "k2": {"state": "closed"},
                                                    "k3": {"state": "open"}}}}
    out = fleet_sweep.observed_states(sel, returns, pis, presence={"k1": True, "k3": True, "k4": True})
    assert out["k1"] == {"state": "degraded", "seen_by": {"p1": "closed"}, "minion": True}  # app down
    assert out["k2"]["state"] == "off"  # port closed, minion silent
    assert out["k3"]["state"] == "on"
    # no Pi probed it: presence alone is not evidence that the kiosk is on
    assert out["k4"] == {"state": "unknown", "seen_by": {}, "minion": True}
    # no Pi answered at all, every minion "answers": nothing counts as on
    silent = fleet_sweep.observed_states(sel, {}, pis, presence=dict.fromkeys(sel["east"], True))
    assert {k: v["state"] for k, v in silent.items()} == dict.fromkeys(sel["east"], "unknown")


def test_presence_is_any_pi_of_the_kiosks_campus_reporting_its_minion_connected():
    sel = {"east": ["k1", "k2", "k3", "k4"], "west": ["w1"]}
    pis = {"east": ["p1", "p2"], "west": ["q1"]}
    returns = {
        "p1": {"campus": "east", "kiosks": {"k1": {"state": "closed", "minion": False},
                                            "k2": {"state": "closed", "minion": "yes"},  # not True: no presence
                                            "k3": {"state": "closed"}}},  # a Pi without the flag (older pack)
        "p2": {"campus": "east", "kiosks": {"k1": {"state": "closed", "minion": True}, "k4": "garbage"}},
        "q1": {"campus": "east", "kiosks": {"w1": {"state": "open", "minion": True}}},  # answered for another campus
        "p9": {"campus": "east", "kiosks": {"k3": {"state": "closed", "minion": True}}},  # not a Pi of the campus
    }
    presence = fleet_sweep.scan_presence(sel, returns, pis)
    assert presence == {"k1": True}
    # a silent or failed Pi gives nothing; a list where the kiosks belong is no answer
    assert fleet_sweep.scan_presence(sel, {"p1": "ERROR: boom", "p2": {"campus": "east", "kiosks": []}}, pis) == {}
    out = fleet_sweep.observed_states(sel, returns, pis, presence)
    assert out["k1"] == {"state": "degraded", "seen_by": {"p1": "closed", "p2": "closed"}, "minion": True}
    assert {k: out[k]["state"] for k in ("k2", "k3", "k4", "w1")} == {"k2": "off", "k3": "off", "k4": "unknown",
                                                                      "w1": "unknown"}


def test_a_degraded_kiosk_due_on_is_woken_and_one_due_off_is_shut_down():
    # "degraded" (app down, or a half-open connection after a power cut) must not stop a wake
    obs = seen(kiosk_east_01="degraded", kiosk_east_02="degraded", kiosk_west_01="off")
    actions = fleet_sweep.plan_actions(desired(), obs, {}, T0)
    assert actions["wake"] == {"east": ["kiosk-east-01"]}
    assert actions["shutdown"] == {"east": ["kiosk-east-02"]}


def test_a_degraded_kiosk_still_degraded_at_its_last_check_is_a_mismatch():
    pending = fleet_sweep.schedule_checks({}, {"east": ["kiosk-east-01"]},
                                          {"kiosk-east-01": {"state": "on"}}, T0)
    last = T0 + dt.timedelta(minutes=15)
    _, verified, waiting, mismatches = fleet_sweep.apply_checks(
        pending, {"kiosk-east-01": {"state": "degraded"}}, last)
    assert verified == [] and waiting == []
    assert mismatches == [fleet_sweep.mismatch("kiosk-east-01", "east", "on", "degraded", fleet_sweep.iso(T0))]


# ---------------------------------------------------------------- verification


def pending_after_sweep():
    return fleet_sweep.schedule_checks(
        {}, {"east": ["kiosk-east-01", "kiosk-east-02"]},
        {"kiosk-east-01": {"state": "on"}, "kiosk-east-02": {"state": "off"}}, T0)


def test_checks_at_plus_5_10_15_minutes():
    pending = pending_after_sweep()
    assert pending["kiosk-east-01"]["checks"] == ["2027-02-28T23:05:00Z", "2027-02-28T23:10:00Z", "2027-02-28T23:15:00Z"]
    assert pending["kiosk-east-01"]["since"] == "2027-02-28T23:00:00Z"
    assert fleet_sweep.due(pending, T0 + dt.timedelta(minutes=4, seconds=59)) == []
    assert fleet_sweep.due(pending, T0 + dt.timedelta(minutes=5)) == ["kiosk-east-01", "kiosk-east-02"]


def test_mismatch_only_after_the_last_check():
    pending = pending_after_sweep()
    obs = seen(kiosk_east_01="off", kiosk_east_02="off")
    for minutes in (5, 10):
        at = T0 + dt.timedelta(minutes=minutes)
        pending, verified, waiting, mismatches = fleet_sweep.apply_checks(pending, obs, at)
        assert mismatches == [] and waiting == ["kiosk-east-01"]
        assert fleet_sweep.due(pending, at) == []  # each check runs once
        if minutes == 5:
            assert verified == ["kiosk-east-02"]
    assert len(pending["kiosk-east-01"]["done"]) == 2
    pending, verified, waiting, mismatches = fleet_sweep.apply_checks(pending, obs, T0 + dt.timedelta(minutes=15))
    assert mismatches == [{"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "off",
                           "since": "2027-02-28T23:00:00Z"}]
    assert pending == {} and waiting == []


def test_a_late_verify_runs_the_overdue_checks_at_once():
    pending = pending_after_sweep()
    obs = seen(kiosk_east_01="unknown", kiosk_east_02="off")
    pending, verified, _, mismatches = fleet_sweep.apply_checks(pending, obs, T0 + dt.timedelta(hours=1))
    assert [m["kiosk"] for m in mismatches] == ["kiosk-east-01"] and mismatches[0]["observed"] == "unknown"
    assert verified == ["kiosk-east-02"] and pending == {}


def test_a_kiosk_that_comes_up_at_the_second_check_is_verified():
    pending = pending_after_sweep()
    pending, *_ = fleet_sweep.apply_checks(pending, seen(kiosk_east_01="off", kiosk_east_02="off"),
                                           T0 + dt.timedelta(minutes=5))
    pending, verified, _, mismatches = fleet_sweep.apply_checks(pending, seen(kiosk_east_01="on"),
                                                                T0 + dt.timedelta(minutes=10))
    assert verified == ["kiosk-east-01"] and mismatches == [] and pending == {}


# ---------------------------------------------------------------- validation


def test_make_hold_validates_every_field(inventory):
    ok = fleet_sweep.make_hold(inventory, "kiosk-east-01", True, "2027-03-01T18:00:00+08:00", " ward move ", T0)
    assert ok == {"kiosk": "kiosk-east-01", "campus": "east", "state": "on", "until": "2027-03-01T10:00:00Z",
                  "reason": "ward move", "set_at": "2027-02-28T23:00:00Z"}
    bad = [
        (("kiosk-east-99", "on", "2027-03-01T18:00:00Z", "r"), "kiosk"),
        (("kiosk-east-01", "maybe", "2027-03-01T18:00:00Z", "r"), "state"),
        (("kiosk-east-01", "on", "2027-03-01T18:00:00", "r"), "until"),  # no offset
        (("kiosk-east-01", "on", "tomorrow", "r"), "until"),
        (("kiosk-east-01", "on", "2027-02-28T18:00:00Z", "r"), "until"),  # past
        (("kiosk-east-01", "on", "2029-03-01T18:00:00Z", "r"), "until"),  # > 1 year
        (("kiosk-east-01", "on", "2027-03-01T18:00:00Z", " "), "reason"),
    ]
    for args, field in bad:
        with pytest.raises(SweepError) as info:
            fleet_sweep.make_hold(inventory, *args, T0)
        assert str(info.value).startswith(field + ":"), (args, info.value)


def test_parse_instant():
    assert fleet_sweep.parse_instant("2027-03-01T07:00:00Z") == dt.datetime(2027, 3, 1, 7, tzinfo=UTC)
    with pytest.raises(SweepError, match="^at: "):
        fleet_sweep.parse_instant(None)


def test_changes_by_campus():
    old = {"campuses": {"a": {"x": 1}, "b": {"x": 1}}}
    new = {"campuses": {"b": {"x": 2}, "c": {}}}
    assert fleet_sweep.changes(old, new) == {"added": ["c"], "removed": ["a"], "changed": ["b"]}
    assert fleet_sweep.changes(None, new)["added"] == ["b", "c"]
