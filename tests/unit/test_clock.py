"""
A Pi's clock state: the kernel's through the real ``adjtimex(2)`` (whatever
this machine answers, the state is well formed), the decision on the call's
answer (a stand-in function fills ``struct timex`` as the kernel would), the
clock file the tests and the lab's compressed day use, and peer confirmation.
"""

import datetime as dt
import json

import pytest

import fleet_clock
from fleet_clock import ClockError

UTC = dt.timezone.utc
NOW = dt.datetime(2027, 2, 5, 6, 45, tzinfo=UTC)


def test_the_real_kernel_call_answers_a_well_formed_state():
    state = fleet_clock.clock_state()
    assert state["source"] == "kernel" and isinstance(state["synced"], bool) and state["offset_s"] == 0.0
    assert "error" not in state, state  # modes=0 is a read: no privilege needed
    assert 0 <= state["state"] <= fleet_clock.TIME_ERROR
    assert state["synced"] == (state["state"] != fleet_clock.TIME_ERROR and not state["status"] & fleet_clock.STA_UNSYNC)
    assert state["maxerror_us"] >= 0 and state["esterror_us"] >= 0
    json.dumps(state)  # it goes into status documents and job returns


def stand_in(ret, status, offset=0):
    calls = []

    def adjtimex(timex):
        calls.append(timex.modes)
        timex.status, timex.offset, timex.esterror, timex.maxerror = status, offset, 1200, 40000
        return ret

    return adjtimex, calls


@pytest.mark.parametrize("ret, status, synced", [
    (0, 0x2001, True),  # TIME_OK, STA_PLL|STA_NANO: chrony disciplines the clock
    (0, fleet_clock.STA_UNSYNC, False),  # booted, nobody set the clock yet
    (fleet_clock.TIME_ERROR, 0, False),
    (fleet_clock.TIME_ERROR, fleet_clock.STA_UNSYNC, False),
    (1, 0, True),  # TIME_INS: a leap second pending, still synchronised
])
def test_the_kernel_answer_decides(ret, status, synced):
    adjtimex, calls = stand_in(ret, status, offset=2500)
    state = fleet_clock.kernel_state(adjtimex)
    assert calls == [0]  # read only
    assert state["synced"] is synced and state["state"] == ret and state["status"] == status
    assert state["esterror_us"] == 1200 and state["maxerror_us"] == 40000
    assert state["pll_offset_us"] == (2.5 if status & fleet_clock.STA_NANO else 2500.0)


def test_a_failed_call_is_unsynchronised_with_its_error():
    state = fleet_clock.kernel_state(lambda timex: -1)
    assert state["synced"] is False and state["error"].startswith("adjtimex failed")


def write(tmp_path, doc):
    path = tmp_path / "clock.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_the_clock_file_stands_in_for_the_kernel(tmp_path):
    path = write(tmp_path, {"synced": True, "offset_s": 3600.5})
    assert fleet_clock.clock_state(path) == {"synced": True, "source": "file", "offset_s": 3600.5, "file": path}
    path = write(tmp_path, {"synced": False})
    assert fleet_clock.clock_state(path) == {"synced": False, "source": "file", "offset_s": 0.0, "file": path}
    assert fleet_clock.clock_state("")["source"] == "kernel"


@pytest.mark.parametrize("content, field", [
    ("not json", "clock_file"),
    ("[1, 2]", "clock_file"),
    ({"synced": "yes", "offset_s": 0}, "clock_file.synced"),
    ({"synced": True, "offset_s": "NaN"}, "clock_file.offset_s"),
    ({"synced": True, "offset_s": float("inf")}, "clock_file.offset_s"),
    ({"synced": True, "offset_s": 1e12}, "clock_file.offset_s"),
    ({"synced": True, "offset_s": True}, "clock_file.offset_s"),
])
def test_a_bad_clock_file_means_unsynchronised_and_says_why(tmp_path, content, field):
    text = content if isinstance(content, str) else json.dumps(content, allow_nan=True)
    state = fleet_clock.clock_state(write(tmp_path, text))
    assert state["synced"] is False and state["offset_s"] == 0.0
    assert state["error"].startswith(field + ":"), state


def test_a_missing_clock_file_is_unsynchronised(tmp_path):
    state = fleet_clock.clock_state(str(tmp_path / "none.json"))
    assert state["synced"] is False and "unreadable" in state["error"]


@pytest.mark.parametrize("path", ["clock.json", 5, "/tmp/a\0b"])
def test_a_clock_file_that_is_no_absolute_path_is_refused(path):
    with pytest.raises(ClockError) as err:
        fleet_clock.clock_state(path)
    assert err.value.field == "clock_file"


def test_now_moves_by_the_offset():
    before = dt.datetime.now(UTC)
    moved = fleet_clock.now({"synced": True, "offset_s": -86400.0})
    after = dt.datetime.now(UTC)
    assert before - dt.timedelta(days=1) <= moved <= after - dt.timedelta(days=1)
    assert moved.tzinfo is not None
    assert before <= fleet_clock.now() <= dt.datetime.now(UTC)
    with pytest.raises(ClockError) as err:
        fleet_clock.now({"offset_s": "soon"})
    assert err.value.field == "state"


def peer(pi, seconds, synced=True):
    return {"pi": pi, "at": (NOW + dt.timedelta(seconds=seconds)).isoformat(), "synced": synced}


def test_a_synchronised_peer_close_enough_confirms():
    peers = [peer("pi-east-2", -30), peer("pi-east-3", 5, synced=False), peer("pi-east-4", 400),
             peer("pi-east-1", 59)]
    assert fleet_clock.confirmed(NOW, peers, 60) == ["pi-east-1", "pi-east-2"]
    assert fleet_clock.confirmed(NOW.isoformat(), peers, 10) == []
    assert fleet_clock.confirmed(NOW, [{"pi": "pi-east-2", "at": "2027-02-05T06:45:10Z", "synced": True}], 10) == \
        ["pi-east-2"]
    assert fleet_clock.confirmed(NOW, [], 60) == []


@pytest.mark.parametrize("args, field", [
    ((dt.datetime(2027, 2, 5), [], 60), "local_now"),
    ((NOW, "pi-east-2", 60), "peers"),
    ((NOW, [None], 60), "peers[0]"),
    ((NOW, [{"pi": "a b", "at": "2027-02-05T06:45:00Z", "synced": True}], 60), "peers[0].pi"),
    ((NOW, [{"pi": "p", "at": "2027-02-05T06:45:00", "synced": True}], 60), "peers[0].at"),
    ((NOW, [{"pi": "p", "at": "2027-02-05T06:45:00Z", "synced": 1}], 60), "peers[0].synced"),
    ((NOW, [], 0), "tolerance_s"),
    ((NOW, [], float("nan")), "tolerance_s"),
])
def test_confirmed_names_the_bad_field(args, field):
    with pytest.raises(ClockError) as err:
        fleet_clock.confirmed(*args)
    assert err.value.field == field
