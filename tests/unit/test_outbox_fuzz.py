"""
Inputs that never crash the outbox, the collected store, the collector's
checks and the clock: hostile data (random nested values, the shapes a
forged or broken job return can have) is either taken or refused with the
module's own error naming a field, never anything else; what a Pi's answer
carries into the collected store never breaks a later ``day``.
"""

import datetime as dt

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fleet_clock
import fleet_outbox
from tests.unit.test_fuzz_inputs import hostile, refused_or_returned

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NOW = dt.datetime(2027, 2, 5, 6, 45, tzinfo=dt.timezone.utc)
entryish = st.fixed_dictionaries({}, optional={
    "seq": hostile, "kind": st.one_of(st.sampled_from(fleet_outbox.KINDS), hostile),
    "key": st.one_of(st.just("east/kiosk-east-01/wake/2027-02-05T06:45:00Z"), st.text(max_size=40), hostile),
    "at": st.one_of(st.just("2027-02-05T06:45:00Z"), st.text(max_size=30), hostile),
    "data": st.one_of(st.fixed_dictionaries({"campus": st.sampled_from(["east", "west"])}, optional={"x": hostile}),
                      hostile)})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fleet_outbox.Collected(str(tmp_path_factory.mktemp("collected") / "collected.db"))


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    return fleet_outbox.Outbox(str(tmp_path_factory.mktemp("outbox") / "outbox.db"), cap=200)


@FUZZ
@given(kind=hostile, key=hostile, data=hostile, at=hostile)
def test_add_takes_or_refuses_naming_a_field(box, kind, key, data, at):
    refused_or_returned(fleet_outbox.OutboxError, box.add, kind, key, data, at)
    assert box.integrity() == "ok"


@FUZZ
@given(cursor=hostile, limit=hostile, outbox=hostile)
def test_paging_arguments_are_taken_or_refused(box, cursor, limit, outbox):
    refused_or_returned(fleet_outbox.OutboxError, box.after, cursor, limit)
    refused_or_returned(fleet_outbox.OutboxError, box.knows, cursor, outbox)


@FUZZ
@given(campus=hostile, kiosk=hostile, check=hostile, date=hostile)
@example(campus="east", kiosk="k", check="wake", date="9999-12-31T23:59:59-01:00")  # year 10000 in UTC
@example(campus="east", kiosk="k", check="wake", date="0001-01-01T00:00:00+01:00")
def test_entry_key_takes_or_refuses(campus, kiosk, check, date):
    key = refused_or_returned(fleet_outbox.OutboxError, fleet_outbox.entry_key, campus, kiosk, check, date)
    if isinstance(key, str):
        assert fleet_outbox.check_key(key) == key and key.startswith(f"{campus}/{kiosk}/{check}/")


@FUZZ
@given(answer=st.one_of(hostile, st.fixed_dictionaries(
    {"pi": st.just("pi-east-1"), "campus": st.just("east"), "entries": st.lists(entryish, max_size=6),
     "cursor": st.one_of(st.integers(min_value=0, max_value=10**6), hostile),
     "outbox": st.one_of(st.just("ab" * 16), hostile), "more": st.one_of(st.booleans(), hostile)},
    optional={"serial": hostile, "clock": hostile, "dropped": hostile})))
def test_a_pi_answer_is_stored_or_refused_and_the_day_still_reads(store, answer):
    checked = refused_or_returned(fleet_outbox.OutboxError, fleet_outbox.check_answer, answer, "pi-east-1", "east")
    if isinstance(checked, tuple):
        entries, cursor, outbox, _, info = checked
        refused = []
        new = store.merge("east", "pi-east-1", entries, cursor=cursor, outbox=outbox, info=info, refused=refused)
        assert len(new) + len(refused) <= len(entries)
        for entry in new:
            assert entry["key"].startswith("east/") and entry["data"].get("campus", "east") == "east"
            if fleet_outbox.postable(entry["kind"], entry["data"]):
                refused_or_returned(fleet_outbox.OutboxError, fleet_outbox.alert_payload, entry, "east")
    day = store.day(since="1970-01-01T00:00:00Z", now=NOW)
    assert set(day) <= {"east"}
    fleet_outbox.metrics(store.counters(), day, store.unposted())


@FUZZ
@given(local_now=st.one_of(st.just(NOW), hostile), peers=st.one_of(
    st.lists(st.fixed_dictionaries({"pi": st.sampled_from(["pi-east-2", "x y"]),
                                    "at": st.one_of(st.just("2027-02-05T06:45:10Z"), hostile),
                                    "synced": st.one_of(st.booleans(), hostile)}), max_size=3), hostile),
    tolerance=hostile)
@example(local_now=dt.datetime(2027, 2, 5, 6, 45, tzinfo=dt.timezone.utc), peers=[],
         tolerance=10 ** 400)  # found by the fuzzer: math.isfinite overflowed on a huge int
def test_clock_confirmation_takes_or_refuses(local_now, peers, tolerance):
    found = refused_or_returned(fleet_clock.ClockError, fleet_clock.confirmed, local_now, peers, tolerance)
    if isinstance(found, list):
        assert found == sorted(set(found))


@FUZZ
@given(state=hostile)
@example(state={"offset_s": 1e18})
@example(state={"offset_s": 1e308})
def test_now_takes_a_clock_state_or_refuses(state):
    refused_or_returned(fleet_clock.ClockError, fleet_clock.now, state)


def test_instants_out_of_range_in_utc_are_refused(store):
    for value in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(fleet_outbox.OutboxError) as err:
            store.day(since=value)
        assert err.value.field == "since"
