import copy
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fleet_schedule as fs

UTC = dt.timezone.utc
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def at(tz, *args):
    return dt.datetime(*args, tzinfo=tz)


def state(schedule, campus, kiosk, instant):
    return fs.desired_state(schedule, campus, kiosk, instant)["state"]


# --------------------------------------------------------------- the example fleet

FLEET_YAML = """
campuses:
  riverside:                      # ground floor 07:00, upstairs 07:10, emergency 24/7
    timezone: Asia/Shanghai
    rules:
      - name: opening-hours
        weekly: {mon-fri: ["07:00-22:00"], sat: ["08:00-12:00"]}
    kiosks:
      kiosk-riverside-20:
        - {name: upstairs, weekly: {mon-fri: ["07:10-22:00"], sat: ["08:10-12:00"]}}
      kiosk-riverside-99:
        - {name: emergency, always: on}
  hillside:                       # everything at 06:45; Spring Festival closure
    rules:
      - name: opening-hours
        weekly: {daily: "06:45-22:00"}
      - name: spring-festival
        dates: [2027-02-05, 2027-02-12]
        always: off
    kiosks:
      kiosk-hillside-10:
        - {name: festival-duty, dates: [2027-02-05, 2027-02-12], weekly: {daily: ["08:00-16:00"]}}
      kiosk-hillside-11:
        - {name: festival-duty, dates: [2027-02-05, 2027-02-12], weekly: {daily: ["08:00-16:00"]}}
"""
HILLSIDE = [f"kiosk-hillside-{n:02d}" for n in range(1, 21)]


@pytest.fixture(scope="module")
def fleet():
    return fs.load(yaml.safe_load(FLEET_YAML))


def test_spring_festival_all_kiosks_off_except_10_and_11_on_08_to_16(fleet):
    """Spring Festival, 2027-02-05..2027-02-12: all kiosks of hillside off,
    except kiosks 10 and 11 on 08:00-16:00."""
    instant = at(SHANGHAI, 2027, 2, 5, 0, 0)
    while instant < at(SHANGHAI, 2027, 2, 13, 0, 0):
        on_duty = dt.time(8) <= instant.time() < dt.time(16)
        states = fs.desired_states(fleet, {"hillside": HILLSIDE}, instant)["hillside"]
        for kiosk in HILLSIDE:
            expected = "on" if kiosk in ("kiosk-hillside-10", "kiosk-hillside-11") and on_duty else "off"
            assert states[kiosk]["state"] == expected, (kiosk, instant)
            assert states[kiosk] == fs.desired_state(fleet, "hillside", kiosk, instant)
        instant += dt.timedelta(minutes=10)
    assert fs.desired_state(fleet, "hillside", "kiosk-hillside-03", at(SHANGHAI, 2027, 2, 6, 9)) == {
        "state": "off", "rule": "spring-festival", "priority": "campus"}
    assert fs.desired_state(fleet, "hillside", "kiosk-hillside-10", at(SHANGHAI, 2027, 2, 6, 9)) == {
        "state": "on", "rule": "festival-duty", "priority": "kiosk"}
    # before and after: ordinary hours for everyone, kiosks 10 and 11 included
    for kiosk in ("kiosk-hillside-03", "kiosk-hillside-10"):
        assert fs.desired_state(fleet, "hillside", kiosk, at(SHANGHAI, 2027, 2, 4, 21, 59)) == {
            "state": "on", "rule": "opening-hours", "priority": "campus"}
        assert state(fleet, "hillside", kiosk, at(SHANGHAI, 2027, 2, 13, 6, 45)) == "on"
        assert state(fleet, "hillside", kiosk, at(SHANGHAI, 2027, 2, 13, 6, 44)) == "off"


def test_spring_festival_transitions_of_a_duty_kiosk(fleet):
    got = fs.transitions(fleet, "hillside", "kiosk-hillside-11",
                         at(SHANGHAI, 2027, 2, 4, 12), at(SHANGHAI, 2027, 2, 6, 12))
    assert [(t.replace(tzinfo=None), s, r) for t, s, r in got] == [
        (dt.datetime(2027, 2, 4, 22, 0), "off", "opening-hours"),
        (dt.datetime(2027, 2, 5, 8, 0), "on", "festival-duty"),
        (dt.datetime(2027, 2, 5, 16, 0), "off", "festival-duty"),
        (dt.datetime(2027, 2, 6, 8, 0), "on", "festival-duty"),
    ]


def test_24_7_kiosk_is_always_on_even_through_a_campus_closure():
    # it says so in its rule: a standing kiosk rule otherwise yields to the campus's dated closure
    schedule = fs.load({"campuses": {"hillside": {
        "rules": [{"name": "hours", "weekly": {"daily": "06:45-22:00"}},
                  {"name": "spring-festival", "dates": ["2027-02-05", "2027-02-12"], "always": "off"}],
        "kiosks": {"kiosk-er": [{"name": "emergency", "always": "on", "through_closures": True}]}}}})
    start = at(SHANGHAI, 2027, 2, 1)
    for hours in range(0, 24 * 20, 5):
        assert fs.desired_state(schedule, "hillside", "kiosk-er", start + dt.timedelta(hours=hours)) == {
            "state": "on", "rule": "emergency", "priority": "kiosk"}
    assert fs.transitions(schedule, "hillside", "kiosk-er", start, start + dt.timedelta(days=60)) == []


def test_kiosk_rule_overrides_campus_rule_for_that_kiosk_only(fleet):
    monday_0705 = at(SHANGHAI, 2027, 3, 1, 7, 5)
    assert fs.desired_state(fleet, "riverside", "kiosk-riverside-01", monday_0705) == {
        "state": "on", "rule": "opening-hours", "priority": "campus"}
    assert fs.desired_state(fleet, "riverside", "kiosk-riverside-20", monday_0705) == {
        "state": "off", "rule": "upstairs", "priority": "kiosk"}
    assert state(fleet, "riverside", "kiosk-riverside-20", at(SHANGHAI, 2027, 3, 1, 7, 10)) == "on"
    # the kiosk's weekly rule replaces the campus's entirely: sunday off for both
    sunday = at(SHANGHAI, 2027, 3, 7, 12)
    assert state(fleet, "riverside", "kiosk-riverside-20", sunday) == "off"
    assert state(fleet, "riverside", "kiosk-riverside-01", sunday) == "off"
    assert state(fleet, "riverside", "kiosk-riverside-99", sunday) == "on"


def test_kiosk_without_own_rules_and_campus_06_45(fleet):
    assert [t.strftime("%H:%M") for t, s, r in fs.transitions(
        fleet, "hillside", "kiosk-hillside-07", at(SHANGHAI, 2027, 3, 1), at(SHANGHAI, 2027, 3, 2))] == ["06:45", "22:00"]


# --------------------------------------------------------------- date ranges

DATED = {"campuses": {"c": {"rules": [
    {"name": "all-day", "weekly": {"daily": "00:00-24:00"}},
    {"name": "closed", "dates": ["2027-02-05", "2027-02-12"], "always": "off"},
    {"name": "one-day", "dates": "2027-03-01", "always": "off"},
]}}}


@pytest.mark.parametrize("local, expected, rule", [
    ((2027, 2, 4, 23, 59, 59, 999999), "on", "all-day"),     # last instant before the first day
    ((2027, 2, 5, 0, 0), "off", "closed"),                   # first day, from 00:00
    ((2027, 2, 12, 23, 59, 59, 999999), "off", "closed"),    # last day, inclusive to 24:00
    ((2027, 2, 13, 0, 0), "on", "all-day"),                  # day after
    ((2027, 2, 28, 23, 59, 59), "on", "all-day"),
    ((2027, 3, 1, 0, 0), "off", "one-day"),                  # a single date
    ((2027, 3, 1, 23, 59), "off", "one-day"),
    ((2027, 3, 2, 0, 0), "on", "all-day"),
])
def test_date_range_edges_are_local_midnights_inclusive(local, expected, rule):
    decision = fs.desired_state(DATED, "c", "k", at(SHANGHAI, *local))
    assert (decision["state"], decision["rule"]) == (expected, rule)


def test_date_range_transitions_happen_at_local_midnight():
    got = fs.transitions(DATED, "c", "k", at(UTC, 2027, 2, 1), at(UTC, 2027, 3, 5))
    assert [(t.isoformat(), s, r) for t, s, r in got] == [
        ("2027-02-05T00:00:00+08:00", "off", "closed"),
        ("2027-02-13T00:00:00+08:00", "on", "all-day"),
        ("2027-03-01T00:00:00+08:00", "off", "one-day"),
        ("2027-03-02T00:00:00+08:00", "on", "all-day"),
    ]


def test_transitions_range_is_start_exclusive_end_inclusive():
    midnight = at(SHANGHAI, 2027, 2, 5)
    assert fs.transitions(DATED, "c", "k", midnight, midnight + dt.timedelta(hours=1)) == []
    got = fs.transitions(DATED, "c", "k", midnight - dt.timedelta(hours=1), midnight)
    assert got == [(midnight, "off", "closed")]


def test_open_ended_date_range_new_hours_from_a_date():
    schedule = {"campuses": {"c": {"rules": [
        {"name": "old", "weekly": {"daily": "07:00-22:00"}},
        {"name": "new", "dates": ["2027-04-01", None], "weekly": {"daily": "06:00-22:00"}}]}}}
    assert fs.desired_state(schedule, "c", "k", at(SHANGHAI, 2027, 3, 31, 6, 30))["state"] == "off"
    assert fs.desired_state(schedule, "c", "k", at(SHANGHAI, 2031, 1, 1, 6, 30)) == {
        "state": "on", "rule": "new", "priority": "campus"}


# --------------------------------------------------------------- crossing midnight

NIGHT = {"campuses": {"c": {"rules": [{"name": "night", "weekly": {"fri": "22:00-06:00", "sun": "23:30-00:30"}}]}}}


@pytest.mark.parametrize("local, expected", [
    ((2027, 3, 5, 21, 59), "off"),   # friday
    ((2027, 3, 5, 22, 0), "on"),
    ((2027, 3, 6, 0, 0), "on"),      # saturday
    ((2027, 3, 6, 5, 59), "on"),
    ((2027, 3, 6, 6, 0), "off"),
    ((2027, 3, 7, 23, 30), "on"),    # sunday into monday: wraps the week
    ((2027, 3, 8, 0, 29), "on"),
    ((2027, 3, 8, 0, 30), "off"),
    ((2027, 3, 4, 22, 30), "off"),   # thursday
])
def test_window_crossing_midnight(local, expected):
    assert state(NIGHT, "c", "k", at(SHANGHAI, *local)) == expected


def test_window_crossing_midnight_is_one_on_period_and_normalised_split():
    got = fs.transitions(NIGHT, "c", "k", at(SHANGHAI, 2027, 3, 5, 12), at(SHANGHAI, 2027, 3, 6, 12))
    assert [(t.strftime("%a %H:%M"), s) for t, s, _ in got] == [("Fri 22:00", "on"), ("Sat 06:00", "off")]
    weekly = fs.validate(NIGHT)["campuses"]["c"]["rules"][0]["weekly"]
    assert weekly["fri"] == ["22:00-24:00"] and weekly["sat"] == ["00:00-06:00"]
    assert weekly["mon"] == ["00:00-00:30"] and weekly["sun"] == ["23:30-24:00"]


# --------------------------------------------------------------- DST

def berlin(*windows):
    return fs.load({"campuses": {"b": {"timezone": "Europe/Berlin",
                                       "rules": [{"name": "w", "weekly": {"daily": list(windows)}}]}}})


def changes(schedule, day_start_utc, hours=30):
    got = fs.transitions(schedule, "b", "k", day_start_utc, day_start_utc + dt.timedelta(hours=hours))
    return [(t.astimezone(UTC).strftime("%m-%d %H:%M"), s) for t, s, _ in got]


def test_dst_ordinary_opening_hours_follow_the_local_clock():
    schedule = berlin("07:00-22:00")
    # 2027-03-28 (CET -> CEST) and 2027-10-31 (CEST -> CET): 07:00 local each day
    assert changes(schedule, at(UTC, 2027, 3, 27), 48) == [
        ("03-27 06:00", "on"), ("03-27 21:00", "off"), ("03-28 05:00", "on"), ("03-28 20:00", "off")]
    assert changes(schedule, at(UTC, 2027, 10, 30), 48) == [
        ("10-30 05:00", "on"), ("10-30 20:00", "off"), ("10-31 06:00", "on"), ("10-31 21:00", "off")]


def test_dst_spring_forward_boundary_in_the_gap_fires_at_the_gap_end():
    # 02:00-03:00 does not exist on 2027-03-28: the clock jumps 01:59:59 CET -> 03:00 CEST (01:00 UTC)
    assert changes(berlin("02:30-04:00"), at(UTC, 2027, 3, 27, 22), 6) == [("03-28 01:00", "on"), ("03-28 02:00", "off")]
    assert changes(berlin("01:00-02:30"), at(UTC, 2027, 3, 27, 22), 6) == [("03-28 00:00", "on"), ("03-28 01:00", "off")]
    # a window entirely inside the gap does not happen that day (and does the day before)
    assert changes(berlin("02:10-02:40"), at(UTC, 2027, 3, 27, 22), 6) == []
    assert changes(berlin("02:10-02:40"), at(UTC, 2027, 3, 26, 22), 6) == [("03-27 01:10", "on"), ("03-27 01:40", "off")]
    schedule = berlin("02:30-04:00")
    assert state(schedule, "b", "k", at(UTC, 2027, 3, 28, 0, 59, 59)) == "off"   # 01:59:59 CET
    assert state(schedule, "b", "k", at(UTC, 2027, 3, 28, 1, 0)) == "on"         # 03:00 CEST


def test_dst_fall_back_repeated_hour_fires_each_boundary_once():
    # 02:00-03:00 happens twice on 2027-10-31: 00:00-01:00 UTC (CEST) and 01:00-02:00 UTC (CET)
    assert changes(berlin("02:30-06:00"), at(UTC, 2027, 10, 30, 22), 8) == [("10-31 00:30", "on"), ("10-31 05:00", "off")]
    schedule = berlin("01:00-02:30")
    assert changes(schedule, at(UTC, 2027, 10, 30, 22), 8) == [("10-30 23:00", "on"), ("10-31 00:30", "off")]
    # second pass, clock reads 02:00-02:29 again: the state reached at the end of the first pass holds
    for minute in (0, 10, 29, 45, 59):
        assert state(schedule, "b", "k", at(UTC, 2027, 10, 31, 1, minute)) == "off"
    assert state(berlin("02:30-06:00"), "b", "k", at(UTC, 2027, 10, 31, 1, 15)) == "on"   # 02:15 CET
    assert state(berlin("02:00-02:45"), "b", "k", at(UTC, 2027, 10, 31, 1, 15)) == "off"  # ended at 02:45 CEST


def test_dst_dated_rule_starting_at_a_nonexistent_midnight():
    # America/Havana springs forward at midnight: 2027-03-14 00:00 -> 01:00 CDT (05:00 UTC)
    schedule = {"campuses": {"h": {"timezone": "America/Havana", "rules": [
        {"name": "open", "weekly": {"daily": "00:00-24:00"}},
        {"name": "closed", "dates": ["2027-03-14", "2027-03-15"], "always": "off"}]}}}
    got = fs.transitions(schedule, "h", "k", at(UTC, 2027, 3, 13), at(UTC, 2027, 3, 17))
    assert [(t.astimezone(UTC).isoformat(), s) for t, s, _ in got] == [
        ("2027-03-14T05:00:00+00:00", "off"), ("2027-03-16T04:00:00+00:00", "on")]


# --------------------------------------------------------------- unmanaged / default

def test_no_rule_means_unmanaged_so_sweeps_leave_the_kiosk_alone():
    schedule = {"campuses": {"c": {"rules": [{"name": "closed", "dates": ["2027-02-05", "2027-02-06"], "always": "off"}]},
                             "d": {"default": "off", "rules": []}}}
    unmanaged = {"state": "unmanaged", "rule": "default", "priority": "default"}
    assert fs.desired_state(schedule, "c", "k", at(SHANGHAI, 2027, 2, 4, 12)) == unmanaged
    assert fs.desired_state(schedule, "c", "k", at(SHANGHAI, 2027, 2, 5, 12))["state"] == "off"
    assert fs.desired_state(schedule, "nowhere", "k", at(SHANGHAI, 2027, 2, 5, 12)) == unmanaged
    assert fs.desired_state({}, "c", "k", at(UTC, 2027, 1, 1)) == unmanaged
    assert fs.desired_state(schedule, "d", "k", at(UTC, 2027, 1, 1)) == {"state": "off", "rule": "default", "priority": "default"}
    got = fs.transitions(schedule, "c", "k", at(SHANGHAI, 2027, 2, 1), at(SHANGHAI, 2027, 2, 10))
    assert [(t.day, s) for t, s, _ in got] == [(5, "off"), (7, "unmanaged")]
    many = fs.desired_states(schedule, {"nowhere": ["k1"], "c": ["k2"]}, at(SHANGHAI, 2027, 2, 4))
    assert many == {"nowhere": {"k1": unmanaged}, "c": {"k2": unmanaged}}


# --------------------------------------------------------------- validation

def campus(rules=None, kiosks=None, **extra):
    return {"campuses": {"east": dict(rules=rules or [], kiosks=kiosks or {}, **extra)}}


@pytest.mark.parametrize("data, field, words", [
    (campus([{"name": "a", "weekly": {"mon": "25:00-26:00"}}]), "campuses.east.rules[0].weekly.mon[0]", "'25:00' is not a time"),
    (campus([{"name": "a", "weekly": {"mon": "07:60-08:00"}}]), "campuses.east.rules[0].weekly.mon[0]", "'07:60'"),
    (campus([{"name": "a", "weekly": {"mon": "7am-8pm"}}]), "campuses.east.rules[0].weekly.mon[0]", "not a time HH:MM"),
    (campus([{"name": "a", "weekly": {"mon": "08:00-08:00"}}]), "campuses.east.rules[0].weekly.mon[0]", "empty"),
    (campus([{"name": "a", "weekly": {"mon": "24:00-08:00"}}]), "campuses.east.rules[0].weekly.mon[0]", "start '24:00'"),
    (campus([{"name": "a", "weekly": {"funday": "08:00-09:00"}}]), "campuses.east.rules[0].weekly.funday", "unknown weekday 'funday'"),
    (campus([{"name": "a", "weekly": {"mon-fryday": "08:00-09:00"}}]), "campuses.east.rules[0].weekly.mon-fryday", "unknown weekday 'fryday'"),
    (campus([{"name": "a", "weekly": {}}]), "campuses.east.rules[0].weekly", "expected a mapping"),
    (campus([{"name": "a", "dates": ["2027-02-12", "2027-02-05"], "always": "off"}]), "campuses.east.rules[0].dates", "end 2027-02-05 is before start 2027-02-12"),
    (campus([{"name": "a", "dates": ["2027-02-30"], "always": "off"}]), "campuses.east.rules[0].dates[0]", "not a date"),
    (campus([{"name": "a", "dates": [dt.datetime(2027, 2, 1, 8)], "always": "off"}]), "campuses.east.rules[0].dates[0]", "date and time"),
    (campus([{"name": "a", "always": "maybe"}]), "campuses.east.rules[0].always", "not one of on, off"),
    (campus([{"name": "a", "always": "on", "weekly": {"mon": "08:00-09:00"}}]), "campuses.east.rules[0]", "exactly one of weekly or always"),
    (campus([{"name": "a"}]), "campuses.east.rules[0]", "exactly one of weekly or always"),
    (campus([{"name": "a", "always": "on", "date": "2027-01-01"}]), "campuses.east.rules[0].date", "unknown key"),
    (campus([{"always": "on"}]), "campuses.east.rules[0].name", "not a valid name"),
    (campus([{"name": "a", "always": "on", "dates": "2027-01-01"}, {"name": "a", "always": "off", "dates": "2027-01-02"}]),
     "campuses.east.rules[1].name", "'a' is also the name of campuses.east.rules[0]"),
    (campus(timezone="Mars/Olympus_Mons"), "campuses.east.timezone", "not an IANA time zone"),
    (campus(timezone=8), "campuses.east.timezone", "not an IANA time zone"),
    (campus(default="sometimes"), "campuses.east.default", "not one of unmanaged, off, on"),
    (campus(colour="blue"), "campuses.east.colour", "unknown key"),
    (campus(rules="weekdays"), "campuses.east.rules", "expected a list"),
    (campus(kiosks={"k1": [{"name": "a", "weekly": {"mon": "25:00-26:00"}}]}), "campuses.east.kiosks.k1[0].weekly.mon[0]", "'25:00'"),
    ({"campuses": {"east": {"kiosks": {"k1": []}}, "west": {"kiosks": {"k1": []}}}}, "campuses.west.kiosks.k1", "also scheduled at campuses.east.kiosks.k1"),
    ({"campus": {}}, "campus", "unknown key"),
])
def test_validation_errors_name_their_field(data, field, words):
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate(data)
    matching = [e for e in exc.value.errors if e.startswith(field + ":")]
    assert matching, exc.value.errors
    assert any(words in e for e in matching), matching


def test_overlapping_same_priority_rules_are_an_error_naming_both():
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate(campus([
            {"name": "spring-festival", "dates": ["2027-02-05", "2027-02-12"], "always": "off"},
            {"name": "inspection", "dates": ["2027-02-12", "2027-02-14"], "always": "on"},
            {"name": "weekdays", "weekly": {"mon-fri": "07:00-22:00"}},
            {"name": "weekends", "weekly": {"sat-sun": "08:00-12:00"}},
        ], kiosks={"k1": [{"name": "x", "dates": ["2027-01-01", None], "always": "on"},
                          {"name": "y", "dates": "2027-06-01", "always": "off"}]}))
    errors = exc.value.errors
    assert any(e.startswith("campuses.east.rules[1].dates:") and "'spring-festival'" in e and "'inspection'" in e
               and "2027-02-12..2027-02-12" in e for e in errors), errors
    assert any(e.startswith("campuses.east.rules[3]:") and "'weekdays'" in e and "'weekends'" in e for e in errors), errors
    assert any(e.startswith("campuses.east.kiosks.k1[1].dates:") and "'x'" in e and "'y'" in e for e in errors), errors


def test_same_names_and_dates_at_different_priorities_are_fine():
    fs.validate(campus([{"name": "festival", "dates": ["2027-02-05", "2027-02-12"], "always": "off"},
                        {"name": "hours", "weekly": {"daily": "07:00-22:00"}}],
                       kiosks={"k1": [{"name": "festival", "dates": ["2027-02-05", "2027-02-12"], "always": "on"},
                                      {"name": "hours", "always": "on"}]}))


def test_every_problem_is_reported_at_once():
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate({"campuses": {"east": {"timezone": "Nowhere/City", "rules": [
            {"name": "a", "weekly": {"mon": "25:00-26:00", "xyz": "08:00-09:00"}},
            {"name": "b", "dates": ["2027-02-12", "2027-02-05"], "always": "off"}]}}})
    fields = [e.split(":")[0] for e in exc.value.errors]
    assert "campuses.east.timezone" in fields and "campuses.east.rules[0].weekly.mon[0]" in fields
    assert "campuses.east.rules[0].weekly.xyz" in fields and "campuses.east.rules[1].dates" in fields
    assert str(exc.value).count(";") == len(exc.value.errors) - 1


def test_unknown_kiosks_and_campuses_against_the_inventory():
    data = {"campuses": {"east": {"kiosks": {"kiosk-east-01": [], "kiosk-typo": [], "kiosk-west-01": []}},
                         "north": {}}}
    with pytest.raises(fs.ScheduleError) as exc:
        fs.validate(data, known_kiosks=["kiosk-east-01", "kiosk-west-01"])
    assert exc.value.errors == ["campuses.east.kiosks.kiosk-typo: unknown kiosk (not in the inventory)"]
    inventory = {"campuses": {"east": {"kiosks": {"kiosk-east-01": {}}}, "west": {"kiosks": {"kiosk-west-01": {}}}}}
    for known in (inventory, {"east": ["kiosk-east-01"], "west": ["kiosk-west-01"]}):
        with pytest.raises(fs.ScheduleError) as exc:
            fs.validate(data, known_kiosks=known)
        assert sorted(exc.value.errors) == [
            "campuses.east.kiosks.kiosk-typo: unknown kiosk (not in the inventory)",
            "campuses.east.kiosks.kiosk-west-01: kiosk belongs to campus west in the inventory, not east",
            "campuses.north: unknown campus (inventory has east, west)",
        ]
    with pytest.raises(fs.ScheduleError, match="known_kiosks"):
        fs.validate(data, known_kiosks=42)


def test_yaml_friendly_bare_on_off_dates_and_shapes():
    doc = yaml.safe_load("""
campuses:
  east:
    default: off
    rules:
      - {name: hours, weekly: {"Mon-Fri": "07:00-22:00", "sat,sun": [], "Saturday": ["08:00-12:00"]}}
      - {name: closed, dates: 2027-02-05, always: off}
    kiosks:
      k1: [{name: er, always: on, comment: emergency hall}]
""")
    assert doc["campuses"]["east"]["rules"][1]["always"] is False  # what YAML 1.1 does
    normal = fs.validate(doc)
    east = normal["campuses"]["east"]
    assert east["default"] == "off" and east["timezone"] == "Asia/Shanghai"
    assert east["rules"][0]["weekly"]["sat"] == ["08:00-12:00"] and east["rules"][0]["weekly"]["sun"] == []
    assert east["rules"][1] == {"name": "closed", "dates": ["2027-02-05", "2027-02-05"], "always": "off", "weekly": None}
    assert east["kiosks"]["k1"] == [{"name": "er", "dates": None, "always": "on", "weekly": None}]
    assert fs.validate(normal) == normal  # idempotent: the normalised form is valid input
    assert yaml.safe_load(yaml.safe_dump(normal)) == normal


@pytest.mark.parametrize("call", [
    lambda s, t: fs.desired_state(s, "c", "k", t),
    lambda s, t: fs.desired_states(s, {"c": ["k"]}, t),
    lambda s, t: fs.transitions(s, "c", "k", t, t),
    lambda s, t: fs.transitions(s, "c", "k", t.replace(tzinfo=UTC), t),
])
def test_naive_datetimes_are_refused(call):
    with pytest.raises(fs.ScheduleError, match="naive datetime"):
        call(fs.load(DATED), dt.datetime(2027, 2, 5, 8, 0))


def test_public_functions_check_their_arguments():
    schedule = fs.load({"campuses": {"c": {"kiosks": {"k1": [{"name": "a", "always": "on"}]}}}})
    t = at(UTC, 2027, 1, 1)
    with pytest.raises(fs.ScheduleError, match="instant: expected a timezone-aware datetime"):
        fs.desired_state(schedule, "c", "k", "2027-01-01T00:00Z")
    with pytest.raises(fs.ScheduleError, match="instant"):
        fs.desired_state(schedule, "c", "k", dt.date(2027, 1, 1))
    with pytest.raises(fs.ScheduleError, match="kiosk_id"):
        fs.desired_state(schedule, "c", None, t)
    with pytest.raises(fs.ScheduleError, match="schedule: expected"):
        fs.desired_state(["not", "a", "schedule"], "c", "k", t)
    with pytest.raises(fs.ScheduleError, match="campuses.c.rules"):
        fs.desired_state({"campuses": {"c": {"rules": 3}}}, "c", "k", t)
    with pytest.raises(fs.ScheduleError, match="end: .* is before start"):
        fs.transitions(schedule, "c", "k", t, t - dt.timedelta(seconds=1))
    with pytest.raises(fs.ScheduleError, match="at most 400 days"):
        fs.transitions(schedule, "c", "k", t, t + dt.timedelta(days=401))
    with pytest.raises(fs.ScheduleError, match="k1 is scheduled under campus c, not d"):
        fs.desired_state(schedule, "d", "k1", t)
    with pytest.raises(fs.ScheduleError, match="k1 is scheduled under campus c"):
        fs.desired_states(schedule, {"d": ["k1"]}, t)
    with pytest.raises(fs.ScheduleError, match="kiosks_by_campus"):
        fs.desired_states(schedule, ["k1"], t)
    with pytest.raises(fs.ScheduleError, match="kiosks_by_campus.c"):
        fs.desired_states(schedule, {"c": "k1"}, t)


def test_desired_states_matches_desired_state(fleet):
    selection = {"riverside": ["kiosk-riverside-01", "kiosk-riverside-20", "kiosk-riverside-99"],
                 "hillside": HILLSIDE, "elsewhere": ["kiosk-x"]}
    for instant in (at(SHANGHAI, 2027, 2, 6, 9), at(SHANGHAI, 2027, 3, 1, 7, 5), at(UTC, 2027, 3, 7, 3)):
        many = fs.desired_states(fleet, selection, instant)
        assert {c: sorted(v) for c, v in many.items()} == {c: sorted(v) for c, v in selection.items()}
        for campus_name, kiosks in selection.items():
            for kiosk in kiosks:
                assert many[campus_name][kiosk] == fs.desired_state(fleet, campus_name, kiosk, instant)
        many["hillside"]["kiosk-hillside-01"]["state"] = "tampered"  # results are independent dicts
        assert many["hillside"]["kiosk-hillside-02"]["state"] != "tampered"


# --------------------------------------------------------------- properties

TIMES = ["00:00", "01:30", "02:00", "02:15", "02:30", "03:00", "06:45", "07:00", "07:10", "12:00", "16:00",
         "22:00", "23:30", "24:00"]
DAY_SPECS = ["mon", "tue", "sat", "sun", "mon-fri", "fri-mon", "sat,sun", "daily"]
ZONES = ["Europe/Berlin", "Asia/Shanghai", "America/Havana"]
# dates near Berlin's 2027 DST changes (03-28, 10-31) and Havana's (03-14, 11-07)
ANCHORS = [dt.date(2027, 3, 12), dt.date(2027, 3, 26), dt.date(2027, 10, 29), dt.date(2027, 11, 5)]


@st.composite
def windows(draw):
    start, end = draw(st.sampled_from(TIMES[:-1])), draw(st.sampled_from(TIMES[1:]))
    if start == end:
        end = "24:00"
    return f"{start}-{end}"


@st.composite
def rule_lists(draw, prefix):
    """A valid list: at most one undated rule, dated rules on disjoint ranges."""
    anchor = draw(st.sampled_from(ANCHORS))
    cuts = sorted(draw(st.sets(st.integers(0, 8), max_size=6)))
    ranges = [(cuts[i], cuts[i + 1] - 1) for i in range(0, len(cuts) - 1, 2) if cuts[i + 1] > cuts[i]]
    dated = [(anchor + dt.timedelta(days=a), anchor + dt.timedelta(days=b)) for a, b in ranges]
    rules = []
    for index, span in enumerate([None] * draw(st.integers(0, 1)) + dated):
        rule = {"name": f"{prefix}{index}"}
        if draw(st.booleans()) and draw(st.booleans()):
            rule["always"] = draw(st.sampled_from(["on", "off", True, False]))
        else:
            rule["weekly"] = draw(st.dictionaries(st.sampled_from(DAY_SPECS), st.lists(windows(), max_size=2),
                                                  min_size=1, max_size=3))
        if span is not None:
            rule["dates"] = [span[0].isoformat(), span[1].isoformat()]
        rules.append(rule)
    return rules


@st.composite
def schedules(draw):
    return {"campuses": {"c": {
        "timezone": draw(st.sampled_from(ZONES)),
        "default": draw(st.sampled_from(["unmanaged", "off"])),
        "rules": draw(rule_lists("campus-")),
        "kiosks": {"k1": draw(rule_lists("kiosk-")), "k2": draw(rule_lists("other-"))},
    }}}


@st.composite
def instants(draw):
    anchor = draw(st.sampled_from(ANCHORS))
    start = dt.datetime.combine(anchor, dt.time(), UTC) - dt.timedelta(days=1)
    return start + dt.timedelta(seconds=draw(st.integers(0, 11 * 86400)))


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(schedules(), st.lists(instants(), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_priority_resolution_does_not_depend_on_rule_order(data, moments, rnd):
    shuffled = copy.deepcopy(data)
    spec = shuffled["campuses"]["c"]
    rnd.shuffle(spec["rules"])
    for kiosk in spec["kiosks"]:
        rnd.shuffle(spec["kiosks"][kiosk])
    spec["kiosks"] = dict(reversed(list(spec["kiosks"].items())))
    a, b = fs.load(data), fs.load(shuffled)
    for moment in moments:
        for kiosk in ("k1", "k2", "k3"):
            assert fs.desired_state(a, "c", kiosk, moment) == fs.desired_state(b, "c", kiosk, moment)
            assert fs.desired_state(a, "c", kiosk, moment) == fs.desired_state(a, "c", kiosk, moment)
        assert fs.desired_states(a, {"c": ["k1", "k2", "k3"]}, moment) == fs.desired_states(b, {"c": ["k3", "k2", "k1"]}, moment)
    end = moments[0] + dt.timedelta(days=2)
    assert fs.transitions(a, "c", "k1", moments[0], end) == fs.transitions(b, "c", "k1", moments[0], end)


@PROPERTY
@given(schedules(), instants(), st.integers(1, 4 * 86400), st.sampled_from(["k1", "k2", "k3"]))
@example(  # window ending at the spring-forward gap: a probe 1 us before 03:00 CEST must not be wall time 02:59:59
    data={"campuses": {"c": {"timezone": "Europe/Berlin", "default": "unmanaged", "rules": [], "kiosks": {
        "k1": [],
        "k2": [{"name": "other-0", "weekly": {"sun": ["00:00-02:00"]}},
               {"name": "other-1", "weekly": {"mon": []}, "dates": ["2027-03-12", "2027-03-12"]},
               {"name": "other-2", "weekly": {"mon": []}, "dates": ["2027-03-14", "2027-03-14"]},
               {"name": "other-3", "always": "on", "dates": ["2027-03-16", "2027-03-16"]}]}}}},
    start=dt.datetime(2027, 3, 25, tzinfo=UTC), span=262800, kiosk="k2",
)
def test_transitions_agree_with_desired_state_between_them(data, start, span, kiosk):
    schedule = fs.load(data)
    end = start + dt.timedelta(seconds=span)
    got = fs.transitions(schedule, "c", kiosk, start, end)
    # Compare and step on the UTC timeline: between two datetimes sharing a tzinfo,
    # Python's - + < are wall-clock, so "1 us before 03:00 CEST" would be the
    # nonexistent 02:59:59.999999, which zoneinfo places an hour later, past the edge.
    times = [t.astimezone(UTC) for t, _, _ in got]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(start < t <= end for t in times)
    current = fs.desired_state(schedule, "c", kiosk, start)["state"]
    edges = [start.astimezone(UTC)] + times + [end.astimezone(UTC)]
    for index, (lo, hi) in enumerate(zip(edges, edges[1:])):
        if index:
            _, new_state, rule = got[index - 1]
            assert new_state != current  # a transition changes the state
            decision = fs.desired_state(schedule, "c", kiosk, lo)
            assert (decision["state"], decision["rule"]) == (new_state, rule)
            current = new_state
        for probe in (lo + (hi - lo) / 3, lo + (hi - lo) / 2, hi - dt.timedelta(microseconds=1)):
            if lo < probe < hi or (probe == lo == start):
                assert fs.desired_state(schedule, "c", kiosk, probe)["state"] == current, (probe, got)


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.sampled_from(TIMES + DAY_SPECS + ["2027-02-05"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["campuses", "c", "rules", "kiosks", "name", "weekly", "always", "dates", "mon", "timezone"]),
        inner, max_size=4),
    max_leaves=20))
def test_validate_rejects_junk_with_schedule_error_only(junk):
    try:
        normal = fs.validate(junk)
    except fs.ScheduleError as exc:
        assert exc.errors and all(": " in e for e in exc.errors)
    else:
        assert fs.validate(normal) == normal
