"""The pack's JSON state files: one atomic writer, one reader, one locked store."""

import json
import multiprocessing
import os

import pytest

import fleet_fields
import fleet_state


class PackError(fleet_fields.FleetError):
    pass


def test_write_json_atomic_writes_sorted_json_and_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "state.json")
    assert fleet_state.write_json_atomic(path, {"b": 1, "a": [1, 2]}) == path
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": [1, 2], "b": 1}
    assert os.listdir(tmp_path) == ["state.json"]
    assert (os.stat(path).st_mode & 0o777) == 0o644
    fleet_state.write_json_atomic(path, {}, mode=0o600)
    assert (os.stat(path).st_mode & 0o777) == 0o600


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    fleet_state.write_json_atomic(path, {"old": True})

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        fleet_state.write_json_atomic(path, {"new": True})
    assert json.loads((tmp_path / "state.json").read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["state.json"]


def test_data_that_is_no_json_is_refused_before_the_file_is_touched(tmp_path):
    path = str(tmp_path / "state.json")
    for bad in ({"x": {1, 2}}, {"x": float("nan")}, {"x": object()}):
        with pytest.raises(fleet_state.StateError, match="not JSON data"):
            fleet_state.write_json_atomic(path, bad)
    assert os.listdir(tmp_path) == []


def test_write_atomic_refuses_bad_arguments(tmp_path):
    with pytest.raises(fleet_state.StateError, match="^path: "):
        fleet_state.write_atomic(None, "x")
    with pytest.raises(fleet_state.StateError, match="^text: "):
        fleet_state.write_atomic(str(tmp_path / "a"), b"x")


def test_read_json_missing_bad_and_not_an_object(tmp_path):
    path = tmp_path / "state.json"
    assert fleet_state.read_json(str(path)) is None
    assert fleet_state.read_json(str(path), default={}) == {}
    for text, match in (("{torn", "unreadable state file"), ("[1, 2]", "expected a JSON object, got list"),
                        ("null", "got NoneType")):
        path.write_text(text)
        with pytest.raises(PackError) as info:
            fleet_state.read_json(str(path), PackError)
        assert str(info.value).startswith(str(path)) and match in str(info.value)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(fleet_state.StateError, match="unreadable"):
        fleet_state.read_json(str(path))
    with pytest.raises(fleet_state.StateError, match="unreadable"):
        fleet_state.read_json(str(tmp_path))  # a folder


def _in_processes(count, target, *args):
    """Run ``target(*args)`` in ``count`` fresh processes at once; all must succeed."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=target, args=args) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * count


def _store(tmp_path, **kwargs):
    return fleet_state.Store(str(tmp_path / "kiosk_x"), "state.json", {"holds": {}, "runs": []},
                             error=PackError, **kwargs)


def test_store_fills_defaults_and_writes_only_when_changed(tmp_path):
    store = _store(tmp_path)
    assert store.read() == {"holds": {}, "runs": []}
    with store.locked() as state:
        assert state == {"holds": {}, "runs": []}
    assert not os.path.exists(store.path)  # nothing changed: nothing written
    with store.locked() as state:
        state["runs"].append(1)
    assert fleet_state.read_json(store.path) == {"holds": {}, "runs": [1]}
    assert (os.stat(store.path).st_mode & 0o777) == 0o600  # private runner state
    mtime = os.stat(store.path).st_mtime_ns
    with store.locked() as state:
        state["runs"] = [1]
    assert os.stat(store.path).st_mtime_ns == mtime
    assert _store(tmp_path).read()["runs"] == [1]
    assert store.lock_path.endswith("kiosk_x/state.lock")


def test_store_defaults_are_never_shared(tmp_path):
    store = _store(tmp_path)
    store.read()["holds"]["k1"] = True
    assert store.read() == {"holds": {}, "runs": []}


def test_store_does_not_write_when_the_block_raises(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(RuntimeError), store.locked() as state:
        state["holds"]["k1"] = True
        raise RuntimeError("refused")
    assert not os.path.exists(store.path)


def test_store_names_a_bad_file_with_the_runners_error(tmp_path):
    store = _store(tmp_path)
    os.makedirs(store.directory)
    with open(store.path, "w") as handle:
        handle.write('"text"')
    with pytest.raises(PackError, match="expected a JSON object, got str"):
        store.read()
    with pytest.raises(PackError, match="expected a JSON object"), store.locked():
        pass


def _hold_lock(directory, held, release):
    store = fleet_state.Store(directory, "state.json", error=PackError)
    with store.locked() as state:
        state["holder"] = os.getpid()
        held.set()
        release.wait(10)


def test_store_lock_holds_across_processes(tmp_path):
    directory = str(tmp_path / "kiosk_x")
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_lock, args=(directory, held, release))
    other.start()
    try:
        assert held.wait(20)
        store = fleet_state.Store(directory, "state.json", lock_wait=0.3, error=PackError)
        with pytest.raises(PackError, match=r"^state: .*kiosk_x/state.json stayed locked by another run for 0.3 s"), store.locked():
            pass
    finally:
        release.set()
        other.join(20)
    assert other.exitcode == 0
    with fleet_state.Store(directory, "state.json", lock_wait=5, error=PackError).locked() as state:
        assert state["holder"] == other.pid  # the other process's write is what this one reads


def _add_ones(directory, count):
    store = fleet_state.Store(directory, "state.json", {"n": 0}, lock_wait=60, error=PackError)
    for _ in range(count):
        with store.locked() as state:
            state["n"] += 1


def test_store_updates_from_concurrent_processes_are_never_lost(tmp_path):
    directory = str(tmp_path / "kiosk_x")
    _in_processes(3, _add_ones, directory, 25)
    assert fleet_state.Store(directory, "state.json", {"n": 0}).read()["n"] == 75


def test_store_write_failure_raises_the_runners_error(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(13, "Permission denied")))
    with pytest.raises(PackError, match="cannot write the state file"), store.locked() as state:
        state["runs"].append(1)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"directory": "relative"}, "directory"),
    ({"name": "state.yaml"}, "name"),
    ({"name": "../state.json"}, "name"),
    ({"defaults": []}, "defaults"),
    ({"lock_wait": float("inf")}, "lock_wait"),
    ({"lock_wait": True}, "lock_wait"),
    ({"error": ValueError}, "error"),
    ({"mode": 0o1777}, "mode"),
    ({"mode": "0644"}, "mode"),
])
def test_store_refuses_bad_arguments(tmp_path, kwargs, field):
    args = {"directory": str(tmp_path), "name": "state.json", **kwargs}
    with pytest.raises(fleet_state.StateError) as info:
        fleet_state.Store(**args)
    assert info.value.field == field


# ---------------------------------------------------------------- the SQLite ledger


def _count_up(path, count):
    ledger = fleet_state.Ledger(path)
    for i in range(count):
        with ledger.transaction() as book:
            book.count("hits_total", "k1")
            book.record("k1", float(i))


def test_ledger_counts_exactly_across_processes(tmp_path):
    path = str(tmp_path / "kiosk_alerts" / "rate.sqlite")
    _in_processes(3, _count_up, path, 20)
    with fleet_state.Ledger(path).transaction() as book:
        assert book.counters() == [("hits_total", "k1", 60)]
        assert len(book.times("k1")) == 60 and book.times("k2") == []
        book.forget_before(9.0)
        assert sorted(set(book.times("k1"))) == [float(i) for i in range(10, 20)]
    assert (os.stat(tmp_path / "kiosk_alerts").st_mode & 0o777) == 0o700


def test_ledger_rolls_back_when_the_block_raises(tmp_path):
    ledger = fleet_state.Ledger(str(tmp_path / "rate.sqlite"))
    with pytest.raises(RuntimeError), ledger.transaction() as book:
        book.count("hits_total", "k1")
        raise RuntimeError("refused")
    with ledger.transaction() as book:
        assert book.counters() == []


def test_ledger_refuses_a_relative_path_and_reports_a_bad_file(tmp_path):
    import sqlite3

    with pytest.raises(fleet_state.StateError, match="^path: "):
        fleet_state.Ledger("rate.sqlite")
    (tmp_path / "rate.sqlite").write_text("not a database, " * 100)
    with pytest.raises(sqlite3.DatabaseError), fleet_state.Ledger(str(tmp_path / "rate.sqlite")).transaction():
        pass


def test_ledger_keeps_the_last_instant_of_each_seen_key_and_forgets_old_ones(tmp_path):
    ledger = fleet_state.Ledger(str(tmp_path / "rate.sqlite"))
    with ledger.transaction() as book:
        assert book.seen_at("a") is None
        book.remember("a", 10.0)
        book.remember("a", 20.0)  # replaced, not added
        book.remember("b", 5.0)
        book.remember("c", 900.0)  # written before the clock was set back
    with ledger.transaction() as book:
        assert (book.seen_at("a"), book.seen_at("b"), book.seen_at("c")) == (20.0, 5.0, 900.0)
        book.forget_seen(5.0)
        assert book.seen_at("b") is None and book.seen_at("a") == 20.0 and book.seen_at("c") == 900.0
        book.forget_seen(5.0, after=100.0)
        assert book.seen_at("c") is None and book.seen_at("a") == 20.0
    with pytest.raises(RuntimeError), ledger.transaction() as book:
        book.remember("d", 1.0)
        raise RuntimeError("refused")
    with ledger.transaction() as book:
        assert book.seen_at("d") is None
