"""
One exclusive lock on a file, held for a with-block, for every part of the
pack that can run twice at once: the master's runners (reactor threads, the
master schedule, an operator) and a Pi or kiosk staging the same release from
two jobs. The lock belongs to the open file, so a process that dies (a kiosk
losing power mid-download) never leaves it held: ``flock`` on Linux,
``msvcrt.locking`` on the Windows kiosks.
"""

import contextlib
import os
import time


def _try_lock(handle):
    if os.name == "nt":  # pragma: no cover - the Windows kiosks
        import msvcrt  # pylint: disable=import-outside-toplevel

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl  # pylint: disable=import-outside-toplevel

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(handle):
    if os.name == "nt":  # pragma: no cover
        import msvcrt  # pylint: disable=import-outside-toplevel

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl  # pylint: disable=import-outside-toplevel

    fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(path, wait_s, error):
    """
    Hold an exclusive lock on ``path`` (created if missing) for the
    with-block; wait up to ``wait_s`` seconds for another holder, then raise
    ``error`` (an exception instance).
    """
    with open(path, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + wait_s
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                raise error from None
            time.sleep(0.1)
        try:
            yield
        finally:
            _unlock(handle)
