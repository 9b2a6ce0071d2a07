"""Dated rules beat standing rules: kiosk dated > campus dated > kiosk undated > campus undated,
and a kiosk's undated rule that says ``through_closures: true`` beats the campus's dated rules."""

import copy
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fleet_schedule as fs

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = dt.timezone.utc

# The example, as an operator writes it: standing hours for the campus, an upstairs
# floor and an information desk with their own standing hours, a 24/7 emergency kiosk, and
# "Spring Festival: all kiosks off, except kiosks 10 and 11, on 08:00-16:00".
FESTIVAL_YAML = """
campuses:
  hillside:
    timezone: Asia/Shanghai
    rules:
      - {name: opening-hours, weekly: {daily: "06:45-22:00"}}
      - {name: spring-festival, dates: [2027-02-05, 2027-02-12], always: off}
    kiosks:
      kiosk-hillside-03: [{name: upstairs, weekly: {mon-fri: ["07:10-22:00"], sat: ["08:10-12:00"]}}]
      kiosk-hillside-04: [{name: info-desk, weekly: {daily: ["00:00-24:00"]}}]
      kiosk-hillside-10:
        - {name: festival-duty, dates: [2027-02-05, 2027-02-12], weekly: {daily: ["08:00-16:00"]}}
      kiosk-hillside-11:
        - {name: upstairs, weekly: {mon-fri: ["07:10-22:00"]}}
        - {name: festival-duty, dates: [2027-02-05, 2027-02-12], weekly: {daily: ["08:00-16:00"]}}
      kiosk-hillside-20: [{name: emergency, always: on, through_closures: true}]
"""
KIOSKS = [f"kiosk-hillside-{n:02d}" for n in range(1, 21)]
DUTY = ("kiosk-hillside-10", "kiosk-hillside-11")
EMERGENCY = "kiosk-hillside-20"


def at(*args):
    return dt.datetime(*args, tzinfo=SHANGHAI)


@pytest.fixture(scope="module")
def festival():
    return fs.load(yaml.safe_load(FESTIVAL_YAML))


def test_spring_festival_switches_off_every_kiosk_but_10_11_and_the_emergency_kiosk(festival):
    instant = at(2027, 2, 5, 0, 0)
    seen = set()
    while instant < at(2027, 2, 13, 0, 0):
        on_duty = dt.time(8) <= instant.time() < dt.time(16)
        states = fs.desired_states(festival, {"hillside": KIOSKS}, instant)["hillside"]
        for kiosk in KIOSKS:
            if kiosk == EMERGENCY:
                expected = "on"
            elif kiosk in DUTY:
                expected = "on" if on_duty else "off"
            else:  # kiosks with standing hours of their own (03, 04, 11 outside duty) included
                expected = "off"
            assert states[kiosk]["state"] == expected, (kiosk, instant)
            assert states[kiosk] == fs.desired_state(festival, "hillside", kiosk, instant)
            seen.add((kiosk, states[kiosk]["rule"]))
        instant += dt.timedelta(minutes=10)
    assert ("kiosk-hillside-03", "spring-festival") in seen and ("kiosk-hillside-03", "upstairs") not in seen
    assert ("kiosk-hillside-04", "info-desk") not in seen
    assert {r for k, r in seen if k == EMERGENCY} == {"emergency"}
    assert fs.desired_state(festival, "hillside", "kiosk-hillside-04", at(2027, 2, 8, 12)) == {
        "state": "off", "rule": "spring-festival", "priority": "campus"}
    assert fs.desired_state(festival, "hillside", "kiosk-hillside-11", at(2027, 2, 8, 7, 30)) == {
        "state": "off", "rule": "festival-duty", "priority": "kiosk"}


def test_before_and_after_the_festival_standing_hours_apply_again(festival):
    for day in (at(2027, 2, 4), at(2027, 2, 15)):  # a Thursday, a Monday
        assert fs.desired_state(festival, "hillside", "kiosk-hillside-03", day.replace(hour=7, minute=5))["state"] == "off"
        assert fs.desired_state(festival, "hillside", "kiosk-hillside-03", day.replace(hour=7, minute=10)) == {
            "state": "on", "rule": "upstairs", "priority": "kiosk"}
        assert fs.desired_state(festival, "hillside", "kiosk-hillside-01", day.replace(hour=6, minute=45)) == {
            "state": "on", "rule": "opening-hours", "priority": "campus"}
        assert fs.desired_state(festival, "hillside", "kiosk-hillside-04", day.replace(hour=3))["state"] == "on"


def test_a_standing_kiosk_rule_has_its_transitions_at_the_closure_edges(festival):
    got = fs.transitions(festival, "hillside", "kiosk-hillside-04", at(2027, 2, 3), at(2027, 2, 16))
    assert [(t.replace(tzinfo=None), s, r) for t, s, r in got] == [
        (dt.datetime(2027, 2, 5, 0, 0), "off", "spring-festival"),
        (dt.datetime(2027, 2, 13, 0, 0), "on", "info-desk"),
    ]
    assert fs.transitions(festival, "hillside", EMERGENCY, at(2027, 1, 1), at(2027, 12, 31)) == []


def test_without_through_closures_the_emergency_kiosk_closes_with_the_campus():
    data = yaml.safe_load(FESTIVAL_YAML)
    del data["campuses"]["hillside"]["kiosks"][EMERGENCY][0]["through_closures"]
    assert fs.desired_state(fs.load(data), "hillside", EMERGENCY, at(2027, 2, 6, 12)) == {
        "state": "off", "rule": "spring-festival", "priority": "campus"}


def test_the_kiosks_own_dated_rule_beats_its_through_closures_rule():
    schedule = fs.load({"campuses": {"c": {
        "rules": [{"name": "closed", "dates": ["2027-02-05", "2027-02-12"], "always": "off"}],
        "kiosks": {"k": [{"name": "er", "always": "on", "through_closures": True},
                         {"name": "service", "dates": "2027-02-07", "always": "off"}]}}}})
    assert fs.desired_state(schedule, "c", "k", at(2027, 2, 6, 12))["rule"] == "er"
    assert fs.desired_state(schedule, "c", "k", at(2027, 2, 7, 12)) == {"state": "off", "rule": "service", "priority": "kiosk"}
    assert fs.desired_state(schedule, "c", "k", at(2027, 2, 8, 0))["state"] == "on"


@pytest.mark.parametrize("rule, message", [
    ({"name": "er", "always": "on", "through_closures": "yes"}, "kiosks.k[0].through_closures: 'yes' is not true or false"),
    ({"name": "er", "always": "on", "through_closures": 1}, "kiosks.k[0].through_closures: 1 is not true or false"),
    ({"name": "er", "always": "on", "dates": "2027-02-05", "through_closures": True},
     "kiosks.k[0].through_closures: only an undated rule"),
])
def test_through_closures_is_checked_on_kiosk_rules(rule, message):
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate({"campuses": {"c": {"kiosks": {"k": [rule]}}}})
    assert any(e.startswith(f"campuses.c.{message}") for e in exc.value.errors), exc.value.errors


def test_through_closures_is_refused_on_a_campus_rule():
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate({"campuses": {"c": {"rules": [{"name": "hours", "always": "on", "through_closures": True}]}}})
    assert exc.value.errors == ["campuses.c.rules[0].through_closures: only a kiosk's own rule can stay on through "
                                "the campus's dated rules (put it under kiosks.<kiosk>)"]


def test_through_closures_is_normalised_only_when_true_and_round_trips():
    normal = fs.validate({"campuses": {"c": {"kiosks": {
        "a": [{"name": "er", "always": True, "through_closures": True}],
        "b": [{"name": "er", "always": True, "through_closures": False}]}}}})
    kiosks = normal["campuses"]["c"]["kiosks"]
    assert kiosks["a"] == [{"name": "er", "dates": None, "always": "on", "weekly": None, "through_closures": True}]
    assert kiosks["b"] == [{"name": "er", "dates": None, "always": "on", "weekly": None}]
    assert fs.validate(normal) == normal
    assert yaml.safe_load(yaml.safe_dump(normal)) == normal


def test_overlap_validation_is_kept():
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate({"campuses": {"c": {"kiosks": {"k": [
            {"name": "er", "always": "on", "through_closures": True},
            {"name": "hours", "weekly": {"daily": "07:00-22:00"}}]}}}})
    assert "undated kiosk rules 'er'" in exc.value.errors[0]


# ---------------------------------------------------------------- properties: the order, by brute force

ANCHOR = dt.date(2027, 3, 22)  # the week of Berlin's spring-forward change (2027-03-28)
WINDOWS = ["00:00-24:00", "02:30-03:00", "07:00-22:00", "22:00-06:00", "08:00-16:00"]


@st.composite
def rule(draw, name, dated, kiosk):
    out = {"name": name}
    if draw(st.booleans()):
        out["always"] = draw(st.sampled_from(["on", "off"]))
    else:
        out["weekly"] = {draw(st.sampled_from(["daily", "mon-fri", "sat,sun", "sun"])): draw(st.sampled_from(WINDOWS))}
    if dated:
        first = draw(st.integers(0, 8))
        out["dates"] = [(ANCHOR + dt.timedelta(days=first)).isoformat(),
                        (ANCHOR + dt.timedelta(days=first + draw(st.integers(0, 3)))).isoformat()]
    elif kiosk and draw(st.booleans()):
        out["through_closures"] = True
    return out


@st.composite
def schedules(draw):
    def rules(prefix, kiosk):
        out = []
        if draw(st.booleans()):
            out.append(draw(rule(f"{prefix}-standing", False, kiosk)))
        if draw(st.booleans()):
            out.append(draw(rule(f"{prefix}-dated", True, kiosk)))
        return out
    return {"campuses": {"c": {"timezone": draw(st.sampled_from(["Europe/Berlin", "Asia/Shanghai"])),
                               "default": draw(st.sampled_from(["unmanaged", "off"])),
                               "rules": rules("campus", False),
                               "kiosks": {"k1": rules("k1", True), "k2": rules("k2", True)}}}}


def expected_rule(data, kiosk, local_date):
    """The documented order, written out the slow way."""
    spec = data["campuses"]["c"]

    def covering(rules):
        for r in rules:
            if r.get("dates") and r["dates"][0] <= local_date.isoformat() <= r["dates"][1]:
                return r
        return None

    def standing(rules):
        return next((r for r in rules if not r.get("dates")), None)

    own = spec["kiosks"].get(kiosk, [])
    mine = standing(own)
    for candidate, priority in ((covering(own), "kiosk"),
                                (mine if mine and mine.get("through_closures") else None, "kiosk"),
                                (covering(spec["rules"]), "campus"), (mine, "kiosk"),
                                (standing(spec["rules"]), "campus")):
        if candidate is not None:
            return candidate["name"], priority
    return "default", "default"


PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(schedules(), st.integers(0, 12 * 24 * 4), st.sampled_from(["k1", "k2", "k3"]))
def test_the_deciding_rule_follows_the_documented_order(data, quarter, kiosk):
    schedule = fs.load(data)
    tz = ZoneInfo(data["campuses"]["c"]["timezone"])
    instant = dt.datetime.combine(ANCHOR, dt.time(12), UTC) - dt.timedelta(days=1) + dt.timedelta(minutes=15 * quarter)
    decision = fs.desired_state(schedule, "c", kiosk, instant)
    local = instant.astimezone(tz)
    if local.fold:  # the repeated hour holds the wall time of the first pass: same local date here
        local = local.replace(fold=0)
    assert (decision["rule"], decision["priority"]) == expected_rule(data, kiosk, local.date())
    assert fs.desired_states(schedule, {"c": ["k1", "k2", "k3"]}, instant)["c"][kiosk] == decision


@PROPERTY
@given(schedules(), st.integers(0, 10 * 24), st.integers(1, 3 * 86400), st.sampled_from(["k1", "k2"]))
def test_transitions_agree_with_desired_state_with_closures(data, hours, span, kiosk):
    schedule = fs.load(data)
    start = dt.datetime.combine(ANCHOR, dt.time(), UTC) - dt.timedelta(days=1) + dt.timedelta(hours=hours)
    end = start + dt.timedelta(seconds=span)
    got = fs.transitions(schedule, "c", kiosk, start, end)
    current = fs.desired_state(schedule, "c", kiosk, start)["state"]
    edges = [start] + [t.astimezone(UTC) for t, _, _ in got] + [end]
    for index, (lo, hi) in enumerate(zip(edges, edges[1:])):
        if index:
            _, new_state, name = got[index - 1]
            assert new_state != current
            decision = fs.desired_state(schedule, "c", kiosk, lo)
            assert (decision["state"], decision["rule"]) == (new_state, name)
            current = new_state
        for probe in (lo + (hi - lo) / 2, hi - dt.timedelta(microseconds=1)):
            if lo < probe < hi:
                assert fs.desired_state(schedule, "c", kiosk, probe)["state"] == current


@PROPERTY
@given(schedules())
def test_rule_order_in_the_lists_does_not_matter(data):
    reordered = copy.deepcopy(data)
    spec = reordered["campuses"]["c"]
    spec["rules"].reverse()
    for rules in spec["kiosks"].values():
        rules.reverse()
    a, b = fs.load(data), fs.load(reordered)
    for day in range(12):
        instant = dt.datetime.combine(ANCHOR, dt.time(9), UTC) + dt.timedelta(days=day - 1)
        assert fs.desired_states(a, {"c": ["k1", "k2", "k3"]}, instant) == fs.desired_states(b, {"c": ["k1", "k2", "k3"]}, instant)
