"""The pack's one file lock: waits, then raises the caller's error; freed when the holder leaves."""

import threading

import pytest

import fleet_lock


def test_exclusive_lock_waits_then_raises_the_given_error(tmp_path):
    path = tmp_path / "state.lock"
    held, release = threading.Event(), threading.Event()

    def holder():
        with fleet_lock.exclusive(path, 1, ValueError("unused")):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with pytest.raises(ValueError, match="state: busy"), fleet_lock.exclusive(path, 0.3, ValueError("state: busy")):
        pass
    release.set()
    thread.join()
    with fleet_lock.exclusive(path, 0.3, ValueError("state: busy")):
        entered = True
    assert entered
