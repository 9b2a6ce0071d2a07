"""
The campus outbox (a Pi's SQLite file) and the top master's collected store:
idempotency keys, cursor and acknowledgement, the size cap's order, a
recreated outbox, and a writer killed with SIGKILL mid-write.
"""

import datetime as dt
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import fleet_outbox
from fleet_outbox import Collected, Outbox, OutboxError, entry_key

UTILS = pathlib.Path(__file__).resolve().parents[2] / "_utils"
AT = "2027-02-05T06:45:00Z"


def action(kiosk, at=AT, pi="pi-east-1", campus="east"):
    return ("action", entry_key(campus, kiosk, "wake", at),
            {"kiosk": kiosk, "campus": campus, "pi": pi, "action": "wake", "at": at, "transition": at, "result": True},
            at)


@pytest.fixture
def outbox(tmp_path):
    return Outbox(str(tmp_path / "campus" / "outbox.db"), cap=100)


# ---------------------------------------------------------------- keys


def test_entry_key_writes_instants_in_utc_so_two_pis_make_one_key():
    local = entry_key("east", "kiosk-east-01", "wake", "2027-02-05T14:45:00+08:00")
    utc = entry_key("east", "kiosk-east-01", "wake", dt.datetime(2027, 2, 5, 6, 45, tzinfo=dt.timezone.utc))
    assert local == utc == "east/kiosk-east-01/wake/2027-02-05T06:45:00Z"
    assert entry_key("east", "pi-east-1", "clock", "2027-02-05") == "east/pi-east-1/clock/2027-02-05"
    assert entry_key("east", "kiosk-east-01", "check+5", dt.date(2027, 2, 5)).endswith("/check+5/2027-02-05")


@pytest.mark.parametrize("args, field", [
    (("east/x", "k", "wake", AT), "campus"),
    (("east", "", "wake", AT), "kiosk"),
    (("east", "k", "Wake Up", AT), "check"),
    (("east", "k", "wake", "2027-02-05T06:45:00"), "date"),  # no offset: ambiguous
    (("east", "k", "wake", "tomorrow"), "date"),
    (("east", "k", "wake", 1234), "date"),
])
def test_entry_key_names_the_bad_field(args, field):
    with pytest.raises(OutboxError) as err:
        entry_key(*args)
    assert err.value.field == field


# ---------------------------------------------------------------- one outbox


def test_the_same_key_twice_is_one_entry(outbox):
    assert outbox.add(*action("kiosk-east-01")) is True
    assert outbox.add(*action("kiosk-east-01", pi="pi-east-2")) is False
    page = outbox.after()
    assert [e["key"] for e in page["entries"]] == ["east/kiosk-east-01/wake/2027-02-05T06:45:00Z"]
    assert page["entries"][0]["data"]["pi"] == "pi-east-1"  # the first one stays
    assert outbox.has(page["entries"][0]["key"]) and not outbox.has("east/kiosk-east-02/wake/2027-02-05")


def test_add_many_checks_everything_before_writing_anything(outbox):
    with pytest.raises(OutboxError) as err:
        outbox.add_many([action("kiosk-east-01"), ("action", "east/k/wake/x", {"a": float("nan")}, AT)])
    assert err.value.field == "entries[1].data"
    assert outbox.after()["entries"] == []
    assert outbox.add_many([action("kiosk-east-01"), action("kiosk-east-02"), action("kiosk-east-01")]) == \
        [True, True, False]


@pytest.mark.parametrize("entry, field", [
    (("sweep", "east/k/wake/2027", {}, AT), "entries[0].kind"),
    (("action", "east k", {}, AT), "entries[0].key"),
    (("action", "east/k/wake/2027", [], AT), "entries[0].data"),
    (("action", "east/k/wake/2027", {"x": "y" * 20000}, AT), "entries[0].data"),
    (("action", "east/k/wake/2027", {}, "2027-02-05 06:45"), "entries[0].at"),
])
def test_add_refuses_a_bad_entry_naming_the_field(outbox, entry, field):
    with pytest.raises(OutboxError) as err:
        outbox.add(*entry)
    assert err.value.field == field


def test_cursor_pages_and_ack_prunes_only_what_was_acknowledged(outbox):
    outbox.add_many([action(f"kiosk-east-{n:02}") for n in range(1, 8)])
    first = outbox.after(0, limit=3)
    assert [e["seq"] for e in first["entries"]] == [1, 2, 3] and first["cursor"] == 3 and first["more"] is True
    second = outbox.after(first["cursor"], limit=3)
    assert [e["seq"] for e in second["entries"]] == [4, 5, 6] and second["more"] is True
    assert outbox.ack(first["cursor"]) == 3  # only the first page is acknowledged
    assert [e["seq"] for e in outbox.after(0, limit=10)["entries"]] == [4, 5, 6, 7]
    last = outbox.after(6, limit=10)
    assert [e["seq"] for e in last["entries"]] == [7] and last["more"] is False
    assert outbox.after(7)["cursor"] == 7  # nothing new: the cursor stays
    # an acknowledged action is still known: the reconciler must not redo it, nor record it again
    assert outbox.has(action("kiosk-east-01")[1])
    assert outbox.add(*action("kiosk-east-01")) is False
    assert outbox.stats()["entries"]["action"] == 4


def test_acknowledged_observations_are_forgotten(outbox):
    key = entry_key("east", "kiosk-east-01", "observed", AT)
    outbox.add("observation", key, {"kiosk": "kiosk-east-01", "campus": "east", "pi": "pi-east-1"}, AT)
    outbox.ack(1)
    assert not outbox.has(key)


def test_a_cursor_beyond_the_last_entry_is_not_acknowledged(outbox):
    outbox.add(*action("kiosk-east-01"))
    outbox.handed(1)
    assert outbox.knows(1) and not outbox.knows(2)
    with pytest.raises(OutboxError) as err:
        outbox.ack(2)
    assert err.value.field == "cursor"
    with pytest.raises(OutboxError) as err:
        outbox.handed(2)
    assert err.value.field == "cursor"
    assert len(outbox.after()["entries"]) == 1


def test_only_a_cursor_this_outbox_handed_out_is_known(outbox):
    # a return forged for a cut-off Pi can name a cursor the Pi never handed out: acknowledging it
    # would prune entries nobody collected
    outbox.add_many([action(f"kiosk-east-{n:02}") for n in range(1, 6)])
    assert not outbox.knows(3)
    outbox.handed(outbox.after(0, limit=3)["cursor"])
    assert outbox.knows(3) and not outbox.knows(4)
    outbox.handed(1)  # an older page again (a lost answer): the mark never goes back
    assert outbox.knows(3)


def test_a_recreated_outbox_is_told_by_its_id(tmp_path):
    path = str(tmp_path / "outbox.db")
    old = Outbox(path)
    old.add_many([action(f"kiosk-east-{n:02}") for n in range(1, 6)])
    old_id = old.after()["outbox"]
    old.handed(5)
    assert old.knows(5, old_id)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    new = Outbox(path)
    new.add_many([action(f"kiosk-east-{n:02}", pi="pi-east-2") for n in range(1, 8)])
    new.handed(7)
    # the old cursor 5 is not beyond the new last seq 7: only the id tells the files apart
    assert new.knows(5) is True and new.knows(5, old_id) is False
    assert new.after()["outbox"] != old_id


def test_the_cap_drops_the_oldest_observations_first_and_alerts_last(tmp_path):
    box = Outbox(str(tmp_path / "o.db"), cap=5)

    def entry(kind, n):
        return (kind, f"east/kiosk-east-{n:02}/{kind}/{AT}", {"campus": "east", "n": n}, AT)

    box.add_many([entry("alert", 1), entry("observation", 2), entry("action", 3), entry("observation", 4),
                  entry("verification", 5)])
    box.add(*entry("alert", 6))  # one over: the oldest observation goes
    assert [e["data"]["n"] for e in box.after()["entries"]] == [1, 3, 4, 5, 6]
    box.add_many([entry("alert", 7), entry("alert", 8)])  # the other observation, then the oldest action
    assert [e["data"]["n"] for e in box.after()["entries"]] == [1, 5, 6, 7, 8]
    box.add_many([entry("alert", 9), entry("alert", 10)])  # the verification, then the oldest alert
    assert [e["data"]["n"] for e in box.after()["entries"]] == [6, 7, 8, 9, 10]
    dropped = box.stats()["dropped"]
    assert dropped == {"action": 1, "observation": 2, "verification": 1, "alert": 1, "clock": 0, "leader": 0}
    assert box.after()["dropped"] == dropped


def test_the_file_is_private_and_in_wal_mode(outbox):
    outbox.add(*action("kiosk-east-01"))
    assert os.stat(outbox.path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(outbox.path)).st_mode & 0o777 == 0o700
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox.integrity() == "ok"


def test_a_file_that_is_no_database_is_named(tmp_path):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(OutboxError) as err:
        Outbox(str(path)).after()
    assert err.value.field == "outbox" and str(path) in str(err.value)


@pytest.mark.parametrize("make, field", [
    (lambda p: Outbox("relative/outbox.db"), "path"),
    (lambda p: Outbox(p, cap=0), "cap"),
    (lambda p: Outbox(p, cap=True), "cap"),
    (lambda p: Outbox(p).after(cursor=-1), "cursor"),
    (lambda p: Outbox(p).after(limit=0), "limit"),
    (lambda p: Outbox(p).after(limit=10**6), "limit"),
    (lambda p: Outbox(p).knows(1, outbox=5), "outbox"),
    (lambda p: Outbox(p).has(None), "key"),
])
def test_bad_arguments_name_their_field(tmp_path, make, field):
    with pytest.raises(OutboxError) as err:
        make(str(tmp_path / "o.db"))
    assert err.value.field == field


# ---------------------------------------------------------------- killed mid-write

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import fleet_outbox
    box = fleet_outbox.Outbox(sys.argv[2], cap=1000000)
    start = int(sys.argv[3])
    n = start
    while True:
        key = f"east/kiosk-{n % 300:03}/check+5/2027-02-05T{(n // 300) % 24:02}:{n % 60:02}:00Z-{n}"
        # a batch, as a reconciler run writes: all of it or none of it survives the kill
        added = box.add_many([("verification", key, {"campus": "east", "n": n, "pad": "x" * 200}, "2027-02-05T06:45:00Z"),
                              ("observation", key + "-o", {"campus": "east", "n": n}, "2027-02-05T06:45:00Z")])
        assert added == [True, True], added
        print(n, flush=True)  # written only after the commit returned
        n += 1
""")


def _run_writer(tmp_path, path, start, lines):
    """Start a writer, wait until it acknowledged ``lines`` batches, SIGKILL it mid-stream; its acknowledged ns."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(UTILS), path, str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-write: the writer never stops between batches
        proc.wait(timeout=30)
        acked += [int(line) for line in proc.stdout.read().split()]  # printed before the kill landed
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= lines, "the writer did not get going"
    return acked


def test_a_writer_killed_mid_write_loses_nothing_it_acknowledged_and_duplicates_nothing(tmp_path):
    path = str(tmp_path / "outbox.db")
    acked = _run_writer(tmp_path, path, 0, 150)
    box = Outbox(path, cap=1000000)
    assert box.integrity() == "ok"
    # the collector reads and acknowledges half while a second writer runs and is killed too
    page = box.after(0, limit=100)
    box.ack(page["cursor"])
    acked += _run_writer(tmp_path, path, acked[-1] + 1, 150)
    assert box.integrity() == "ok"
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT kind, data FROM entries").fetchall()
    stored = {}
    for kind, data in rows:
        n = fleet_outbox.json.loads(data)["n"]
        stored.setdefault(n, []).append(kind)
    collected = {e["data"]["n"] for e in page["entries"]}
    for n in acked:
        if n in collected:
            continue  # acknowledged by the collector, pruned
        # each batch whole: both entries, once each
        assert sorted(stored.get(n, [])) == ["observation", "verification"], n
    # no duplicate and nothing half written: every batch in the file is whole, and the only batches
    # beyond what the writers printed are the last one of each (committed, killed before its print)
    assert all(sorted(kinds) == ["observation", "verification"] for kinds in stored.values())
    assert len(set(stored) - set(acked)) <= 2
    assert len(rows) == 2 * len(stored)


# ---------------------------------------------------------------- the top master's store


def test_merge_returns_each_key_once_across_the_pis_of_a_campus(tmp_path):
    store = Collected(str(tmp_path / "top" / "collected.db"))
    pi1, pi2 = Outbox(str(tmp_path / "pi1.db")), Outbox(str(tmp_path / "pi2.db"))
    pi1.add_many([action("kiosk-east-01"), action("kiosk-east-02")])
    pi2.add_many([action("kiosk-east-01", pi="pi-east-2"), action("kiosk-east-03", pi="pi-east-2")])
    page1, page2 = pi1.after(), pi2.after()
    new1 = store.merge("east", "pi-east-1", page1["entries"], cursor=page1["cursor"], outbox=page1["outbox"])
    new2 = store.merge("east", "pi-east-2", page2["entries"], cursor=page2["cursor"], outbox=page2["outbox"])
    assert [e["data"]["kiosk"] for e in new1] == ["kiosk-east-01", "kiosk-east-02"]
    assert [e["data"]["kiosk"] for e in new2] == ["kiosk-east-03"]
    assert store.merge("east", "pi-east-1", page1["entries"]) == []  # the same page again (a lost ack): nothing new
    assert store.cursors([("east", "pi-east-1"), ("east", "pi-east-2"), ("east", "pi-east-3")]) == {
        "pi-east-1": {"cursor": 2, "outbox": page1["outbox"]}, "pi-east-2": {"cursor": 2, "outbox": page2["outbox"]},
        "pi-east-3": {"cursor": 0, "outbox": None}}
    day = store.day("east", now=dt.datetime(2027, 2, 5, 12, tzinfo=dt.timezone.utc))["east"]
    first = day["actions"][0]
    assert first["key"] == "east/kiosk-east-01/wake/2027-02-05T06:45:00Z"
    assert first["pi"] == "pi-east-1" and first["pis"] == ["pi-east-1", "pi-east-2"]
    counters = {(m, tuple(sorted(labels.items()))): c for m, labels, c in store.counters()}
    assert counters[("kiosk_campus_entries_duplicate_total", (("campus", "east"), ("pi", "pi-east-1")))] == 2
    assert counters[("kiosk_campus_entries_duplicate_total", (("campus", "east"), ("pi", "pi-east-2")))] == 1


def test_merge_refuses_entries_of_another_campus_and_keeps_going(tmp_path):
    store = Collected(str(tmp_path / "collected.db"))
    good = {"seq": 2, "kind": "action", "key": "east/k1/wake/2027-02-05T06:45:00Z", "at": AT, "data": {"campus": "east"}}
    entries = [{"seq": 1, "kind": "alert", "key": "west/k9/mismatch/2027", "at": AT, "data": {"campus": "west"}},
               {"seq": 3, "kind": "action", "key": "east/k2/wake/2027", "at": AT, "data": {"campus": "west"}},
               "nonsense", good]
    refused = []
    new = store.merge("east", "pi-east-1", entries, cursor=3, refused=refused)
    assert [e["key"] for e in new] == [good["key"]]
    assert len(refused) == 3 and "not a key of campus east" in refused[0] and "data.campus" in refused[1]
    assert store.cursors([("east", "pi-east-1")])["pi-east-1"]["cursor"] == 3  # the bad ones do not block the cursor


def test_alerts_wait_until_posted(tmp_path):
    store = Collected(str(tmp_path / "collected.db"))
    key = "east/kiosk-east-01/mismatch/2027-02-05T06:45:00Z"
    alert = {"kind": "alert", "key": key, "at": AT,
             "data": {"campus": "east", "severity": "warning", "summary": "s", "idempotency_key": key}}
    assert [e["key"] for e in store.merge("east", "pi-east-1", [alert])] == [key]
    assert [e["key"] for e in store.unposted()] == [key]
    store.mark_posted(key)
    assert store.unposted() == []
    assert store.merge("east", "pi-east-2", [alert]) == []  # another Pi's copy: never posted again
    day = store.day(now=dt.datetime(2027, 2, 5, 12, tzinfo=dt.timezone.utc))
    assert day["east"]["alerts"][0]["posted"] is True


def test_day_shows_the_pis_the_lists_and_each_kiosks_last_observation(tmp_path):
    store = Collected(str(tmp_path / "collected.db"))

    def obs(minute, observed):
        at = f"2027-02-05T06:{minute:02}:00Z"
        return {"kind": "observation", "key": entry_key("east", "kiosk-east-01", "observed", at), "at": at,
                "data": {"kiosk": "kiosk-east-01", "campus": "east", "pi": "pi-east-1", "observed": observed,
                         "expected": "on"}}

    old = {"kind": "verification", "key": "east/kiosk-east-01/check+5/2027-02-01T06:45:00Z",
           "at": "2027-02-01T06:50:00Z", "data": {"campus": "east", "ok": True}}
    store.merge("east", "pi-east-1", [obs(44, "off"), obs(46, "on"), old], cursor=3, outbox="ab" * 16,
                info={"serial": 7, "leader": "pi-east-1", "clock": {"synced": True, "offset_s": 0.0}})
    store.merge("west", "pi-west-1", [], cursor=0)
    day = store.day(now=dt.datetime(2027, 2, 5, 12, tzinfo=dt.timezone.utc))
    assert sorted(day) == ["east", "west"]
    east = day["east"]
    assert east["kiosks"] == {"kiosk-east-01": {"at": "2027-02-05T06:46:00Z", "observed": "on", "expected": "on",
                                                "pi": "pi-east-1"}}
    assert east["verifications"] == []  # four days old: not today's
    pi = east["pis"]["pi-east-1"]
    assert (pi["cursor"], pi["outbox"], pi["serial"], pi["leader"]) == (3, "ab" * 16, 7, "pi-east-1")
    assert pi["clock"] == {"synced": True, "offset_s": 0.0} and pi["collected_at"].endswith("Z")
    assert sorted(store.day("west")) == ["west"]
    assert store.pis() == {"east": east["pis"], "west": day["west"]["pis"]}
    assert list(store.pis("west")) == ["west"] and store.pis("north") == {}
    assert len(store.day("east", since="2027-01-01T00:00:00Z")["east"]["verifications"]) == 1
    with pytest.raises(OutboxError) as err:
        store.day("east", since="yesterday")
    assert err.value.field == "since"


def test_prune_forgets_old_observations_before_other_keys(tmp_path):
    store = Collected(str(tmp_path / "collected.db"))
    now = time.time()
    store.merge("east", "pi-east-1", [
        {"kind": "observation", "key": "east/k/observed/2027-02-05T06:44:00Z", "at": AT, "data": {}},
        {"kind": "action", "key": "east/k/wake/2027-02-05T06:45:00Z", "at": AT, "data": {}}], now=now - 3 * 86400)
    assert store.prune(now=now) == 1
    assert store.merge("east", "pi-east-2", [
        {"kind": "action", "key": "east/k/wake/2027-02-05T06:45:00Z", "at": AT, "data": {}}]) == []
    assert store.integrity() == "ok"


# ---------------------------------------------------------------- the collector's decisions

ANSWER = {"result": True, "pi": "pi-east-1", "campus": "east", "entries": [], "cursor": 4, "outbox": "ab" * 16,
          "more": False, "serial": 12, "clock": {"synced": False, "source": "kernel", "offset_s": 0.0, "status": 64},
          "dropped": {"observation": 3, "bogus": 1, "alert": -1}}


def test_check_answer_takes_what_the_collector_stores():
    entries, cursor, outbox, more, info = fleet_outbox.check_answer(ANSWER, "pi-east-1", "east")
    assert (entries, cursor, outbox, more) == ([], 4, "ab" * 16, False)
    assert info == {"serial": 12, "clock": {"synced": False, "source": "kernel", "offset_s": 0.0},
                    "dropped": {"observation": 3}}


@pytest.mark.parametrize("change, field", [
    ({"pi": "pi-east-2"}, "answer.pi"), ({"campus": "west"}, "answer.campus"), ({"entries": {}}, "answer.entries"),
    ({"cursor": -1}, "answer.cursor"), ({"outbox": "../x"}, "answer.outbox"), ({"more": "no"}, "answer.more"),
])
def test_check_answer_names_what_is_wrong(change, field):
    with pytest.raises(OutboxError) as err:
        fleet_outbox.check_answer(dict(ANSWER, **change), "pi-east-1", "east")
    assert err.value.field == field
    with pytest.raises(OutboxError) as err:
        fleet_outbox.check_answer("ERROR", "pi-east-1", "east")
    assert err.value.field == "answer"


def test_alert_payload_carries_the_key_and_the_campus_it_came_from():
    entry = {"key": "east/kiosk-east-01/mismatch/2027-02-05T06:45:00Z",
             "data": {"severity": "warning", "summary": "kiosk-east-01 should be on", "campus": "west"}}
    payload = fleet_outbox.alert_payload(entry, "east")
    assert payload == {"severity": "warning", "summary": "kiosk-east-01 should be on", "campus": "east",
                       "idempotency_key": entry["key"]}
    for data in ({"severity": "loud", "summary": "x"}, {"severity": "warning"}, None):
        with pytest.raises(OutboxError) as err:
            fleet_outbox.alert_payload(dict(entry, data=data), "east")
        assert err.value.field.startswith("entry.data")


def test_metrics_families_from_counters_and_the_day():
    day = {"east": {"pis": {"pi-east-1": {"collected_at": "2027-02-05T06:50:00Z", "serial": 12,
                                          "clock": {"synced": True}, "dropped": {"observation": 3}},
                            "pi-east-2": {"collected_at": None, "serial": None, "clock": None, "dropped": None}},
                    "kiosks": {"kiosk-east-01": {"observed": "degraded", "expected": "on"},
                               "kiosk-east-02": {"observed": "unknown", "expected": "off"}}}}
    counters = [("kiosk_campus_entries_total", {"campus": "east", "pi": "pi-east-1", "kind": "alert"}, 2)]
    unposted = [{"key": "east/k/mismatch/2027"}, {"key": "west/k/mismatch/2027"}]
    families = {name: (kind, samples) for name, kind, _, samples in fleet_outbox.metrics(counters, day, unposted)}
    assert all(kind == "counter" for name, (kind, _) in families.items() if name.endswith("_total"))
    assert families["kiosk_campus_entries_total"][1] == [({"campus": "east", "pi": "pi-east-1", "kind": "alert"}, 2)]
    collected = {labels["pi"]: v for labels, v in families["kiosk_campus_pi_last_collected_timestamp_seconds"][1]}
    assert collected == {"pi-east-1": dt.datetime(2027, 2, 5, 6, 50, tzinfo=dt.timezone.utc).timestamp(),
                         "pi-east-2": None}
    assert families["kiosk_campus_kiosk_observed_on"][1] == [({"campus": "east", "kiosk": "kiosk-east-01"}, 0),
                                                             ({"campus": "east", "kiosk": "kiosk-east-02"}, None)]
    assert families["kiosk_campus_kiosk_mismatch"][1] == [({"campus": "east", "kiosk": "kiosk-east-01"}, 1)]
    assert families["kiosk_campus_outbox_dropped_total"][1] == [
        ({"campus": "east", "pi": "pi-east-1", "kind": "observation"}, 3)]
    assert families["kiosk_campus_alerts_unposted"][1] == [({"campus": "east"}, 1)]


def test_an_unsynchronised_clock_record_is_posted_as_a_clock_warning():
    data = {"campus": "east", "pi": "pi-east-2", "synced": False, "offset_s": 0.0, "confirmed_by": [],
            "source": "kernel", "summary": "Pi pi-east-2 (east): clock not synchronised; no shutdowns, no wakes until it is"}
    entry = {"kind": "clock", "key": "east/pi-east-2/clock/1970-01-01", "data": data}
    assert fleet_outbox.postable("clock", data) and fleet_outbox.postable("alert", {})
    assert not fleet_outbox.postable("clock", dict(data, synced=True)) and not fleet_outbox.postable("action", data)
    payload = fleet_outbox.alert_payload(entry, "east")
    assert payload["severity"] == "warning" and payload["kind"] == "pi_clock" and payload["pi"] == "pi-east-2"
    assert payload["summary"] == data["summary"] and payload["idempotency_key"] == entry["key"]
    bare = fleet_outbox.alert_payload(dict(entry, data={"pi": "pi-east-2", "synced": False}), "east")
    assert bare["summary"] == "Pi pi-east-2 (east): clock not synchronised; no shutdowns until it is"


def test_the_pis_leader_view_comes_from_its_newest_leader_entry(tmp_path):
    store = Collected(str(tmp_path / "collected.db"))

    def leader(minute, who, pi="pi-east-2"):
        at = f"2027-02-05T06:{minute:02}:00Z"
        return {"kind": "leader", "key": entry_key("east", pi, "leader", at), "at": at,
                "data": {"campus": "east", "pi": pi, "leader": who, "reachable": []}}

    store.merge("east", "pi-east-2", [leader(50, "pi-east-2"), leader(40, "pi-east-1"),
                                      leader(55, "pi-east-9", pi="pi-east-1")])
    now = dt.datetime(2027, 2, 5, 12, tzinfo=dt.timezone.utc)
    assert store.day("east", now=now)["east"]["pis"]["pi-east-2"]["leader"] == "pi-east-2"
    store.merge("east", "pi-east-2", [])  # a page without leader entries keeps the last view
    assert store.day("east", now=now)["east"]["pis"]["pi-east-2"]["leader"] == "pi-east-2"
