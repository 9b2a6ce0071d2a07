"""bench/scale_sim.py's builders at small N: the synthetic fleet is valid and the reports see it whole. No timing."""

import datetime as dt
import importlib.util
import pathlib

import fleet_inventory
import fleet_schedule
import fleet_sweep
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
KIOSKS, CAMPUSES = 20, 2


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("scale_sim", BENCH / "scale_sim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(sim):
    return sim.build_fleet(KIOSKS, campuses=CAMPUSES)


@pytest.fixture(scope="module")
def power(sim, data):
    return sim.power_context(data)


def _all_kiosks(inventory):
    return sorted(k for spec in inventory["campuses"].values() for k in spec["kiosks"])


def _off_kiosks(sim, inventory):
    return [k for k in _all_kiosks(inventory) if sim.index_of(k) == sim.OFF_KIOSK]


def test_the_shape_is_30_campuses_of_4_pis_at_1000_kiosks_and_grows_with_n(sim):
    assert sim.shape(1000) == (30, 4)
    assert sim.shape(4000) == (120, 4)
    assert sim.shape(250) == (8, 4)  # 7.5 rounds to even
    assert sim.shape(10) == (1, 4)


def test_the_synthetic_fleet_passes_the_inventory_and_schedule_validators(sim, data):
    inventory = fleet_inventory.validate(data[fleet_inventory.PILLAR_KEY])  # raises, naming the field, if not
    assert len(_all_kiosks(inventory)) == KIOSKS
    assert sorted(inventory["campuses"]) == ["c000", "c001"]
    for campus, spec in inventory["campuses"].items():
        assert len(spec["pis"]) == 4
        assert len(spec["kiosks"]) == KIOSKS // CAMPUSES
        assert fleet_inventory.pis_of(inventory, campus) == [f"pi-{campus}-{p}" for p in range(1, 5)]
    macs = [spec["mac"] for c in inventory["campuses"].values() for spec in c["kiosks"].values()]
    assert len(set(macs)) == KIOSKS
    normalised = fleet_schedule.validate(data[fleet_schedule.PILLAR_KEY], inventory)
    rules = normalised["campuses"]["c000"]
    assert [r["name"] for r in rules["rules"]] == ["opening-hours", "spring-festival", "national-day", "inspection"]
    assert rules["kiosks"]["k-c000-0001"][0]["through_closures"] is True  # the 24/7 kiosk
    assert [r["name"] for r in rules["kiosks"]["k-c000-0004"]] == ["festival-duty"]  # an exception to the closure


def test_a_bigger_fleet_and_one_campus_of_many_kiosks_are_valid_too(sim):
    for data in (sim.build_fleet(250), sim.build_fleet(300, campuses=1)):
        inventory = fleet_inventory.validate(data[fleet_inventory.PILLAR_KEY])
        fleet_schedule.validate(data[fleet_schedule.PILLAR_KEY], inventory)
    assert len(inventory["campuses"]["c000"]["kiosks"]) == 300


def test_a_shape_the_builder_cannot_address_is_refused(sim):
    with pytest.raises(ValueError, match="shape"):
        sim.build_fleet(5, campuses=6)
    with pytest.raises(ValueError, match="shape"):
        sim.build_fleet(1000, campuses=251)


def test_the_closure_and_its_exceptions_decide_as_the_schedule_says(sim, power):
    festival = dt.datetime(2027, 2, 8, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    states = fleet_schedule.desired_states(power["schedule"], {"c000": ["k-c000-0000", "k-c000-0001",
                                                                        "k-c000-0004"]}, festival)["c000"]
    assert states["k-c000-0000"]["state"] == "off"  # closed
    assert states["k-c000-0001"]["state"] == "on"  # 24/7 through closures
    assert (states["k-c000-0004"]["state"], states["k-c000-0004"]["rule"]) == ("on", "festival-duty")


def test_every_kiosk_is_observed_and_a_known_off_kiosk_is_a_mismatch(sim, power):
    view, observed = power["view"], power["observed"]
    managed = sorted(k for ids in view["managed"].values() for k in ids)
    assert managed == _all_kiosks(power["inventory"])  # the schedule owns every kiosk
    assert sorted(observed) == managed
    found = fleet_sweep.verify_now(power["state"], view, observed)
    mismatched = {m["kiosk"]: m for m in found["mismatches"]}
    off = _off_kiosks(sim, power["inventory"])
    assert off == ["k-c000-0003", "k-c001-0003"]
    for kiosk in off:
        assert (mismatched[kiosk]["expected"], mismatched[kiosk]["observed"]) == ("on", "off")
    assert sorted(found["checked"]) == managed
    assert set(found["verified"]) | set(mismatched) == set(managed)
    decision = sim.run_sweep(power)
    assert all(kiosk in decision["wake"][kiosk[2:6]] for kiosk in off)


def test_the_hold_decides_the_held_kiosk(sim, power):
    expected = power["view"]["expected"]["k-c000-0005"]
    assert expected["state"] == "on" and expected["why"].startswith("hold until")


def test_the_due_checks_are_all_due_now(sim, power):
    due = fleet_sweep.due_selection(power["state"], power["now"], power["inventory"])
    assert sorted(k for ids in due.values() for k in ids) == sorted(power["state"]["pending"])
    assert sorted(power["state"]["pending"]) == ["k-c000-0000", "k-c001-0000"]


def test_the_release_status_reports_every_kiosk_and_the_off_one_as_silent(sim, data, power):
    ctx = sim.release_context(data)
    campuses, problems, on_pin, silent = sim.run_release_status(ctx)
    reported = sorted(k for entry in campuses.values() for k in entry["kiosks"])
    assert reported == _all_kiosks(power["inventory"])
    off = _off_kiosks(sim, power["inventory"])
    assert sorted(k for ids in silent.values() for k in ids) == off
    assert campuses["c000"]["kiosks"]["k-c000-0003"] == {"silent": True}
    assert campuses["c000"]["drift"] == {"k-c000-0009": sim.OLD}  # the kiosk left on the old version
    assert any("not on 1.4.0" in p for p in problems)
    assert on_pin["c000"]["k-c000-0000"] is True


def test_the_campus_reconcile_wakes_the_off_kiosk_and_records_it(sim, data):
    campuses = sim.campus_context(data)
    assert sorted(campuses) == ["c000", "c001"]
    state, ret, entries = sim.reconcile(campuses["c000"]["doc"], campuses["c000"]["stored"], sim.NOW)
    assert "k-c000-0003" in ret["wake"] and "k-c000-0003" in ret["woke"]
    assert sorted(state["observed"]) == sorted(k for k in data["kiosk_fleet"]["campuses"]["c000"]["kiosks"])
    kinds = {kind for kind, *_ in entries}
    assert {"action", "verification"} <= kinds  # the observations change at the next minute, once woken
    assert all(key.startswith("c000/") for _, key, _, _ in entries)


def test_the_outbox_collection_keeps_each_key_once_across_the_four_pis(sim, data, tmp_path):
    campuses = sim.campus_context(data)
    answers = sim.outbox_answers(campuses)
    assert len(answers) == CAMPUSES * 4
    new, payloads = sim.run_collect(answers, str(tmp_path))
    keys = [e["key"] for e in new]
    assert len(keys) == len(set(keys))
    per_campus = {}
    for campus, answer in answers.values():
        per_campus.setdefault(campus, set()).update(e["key"] for e in answer["entries"])
    assert sorted(keys) == sorted(k for ks in per_campus.values() for k in ks)
    assert all(p["idempotency_key"] in keys for p in payloads)


def test_the_alert_builders_take_the_mismatches_and_release_events(sim, power):
    mismatches = fleet_sweep.verify_now(power["state"], power["view"], power["observed"])["mismatches"]
    keys = sim.run_power_alerts(mismatches)
    assert len(keys) == len(mismatches) and len(set(keys)) == len(keys)
    events = sim.release_events(power["inventory"], share=5)
    assert len(sim.run_release_alerts(power["inventory"], events)) == len(events) == 4


def test_a_day_at_one_minute_resolution_follows_the_opening_hours(sim, power):
    day = dt.datetime(2027, 3, 3, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    ids = ["k-c000-0000", "k-c000-0001"]
    minutes = sim.run_schedule_day(power["schedule"], "c000", ids, day)
    assert len(minutes) == 1440
    regular = [m["c000"]["k-c000-0000"]["state"] for m in minutes]
    assert regular[7 * 60 - 1] == "off" and regular[7 * 60] == "on" and regular[22 * 60] == "off"
    assert {m["c000"]["k-c000-0001"]["state"] for m in minutes} == {"on"}


def test_the_fit_and_the_verdict(sim):
    assert sim.exponent([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert sim.exponent([1, 2, 4], [1, 4, 16]) == pytest.approx(2.0)
    assert sim.exponent([1, 2], [0, 0]) is None
    ns = (250, 500, 1000)
    results = {("linear", n): (n / 100, n / 100, n) for n in ns}
    results.update({("quadratic", n): (1.0, (n / 100) ** 2, n) for n in ns})
    # a wall time stretched by a busy machine is not the verdict: the CPU time is
    results.update({("waited", n): ((n / 100) ** 2, n / 100, n) for n in ns})
    table, flagged = sim.report(results, ns)
    assert flagged == ["quadratic"]
    assert "SUPERLINEAR" in table and "linear or better" in table


def test_the_cases_cover_every_runner_of_the_brief(sim, tmp_path):
    names = [name for name, _ in sim.cases(40, str(tmp_path))]
    for part in ("load", "expect", "observed_states", "sweep", "verify explicit", "verify due", "reconcile",
                 "tick", "status_report", "outbox", "alerts", "schedule day"):
        assert any(part in name for name in names), part
