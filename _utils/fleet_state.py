"""
The pack's JSON files on disk: one atomic writer (:func:`write_json_atomic`,
on :func:`write_atomic`), one reader (:func:`read_json`) and one state store
with its lock (:class:`Store`) for the runners' state files.

Why this way
    A runner can run twice at once on the master (reactor threads, the master
    schedule, an operator), and the master can lose power mid-write. So a
    state file is read, changed and written under one exclusive lock
    (:mod:`fleet_lock`), and every write goes to a temporary file in the same
    folder, fsynced, then ``os.replace``d over the old one: a reader sees
    the old file or the new one, never a torn one. The temporary file's name
    starts with a dot and ends in ``.tmp``, so neither nginx (dot files) nor
    node_exporter (``*.prom``) ever serves a half-written file.
"""

import contextlib
import copy
import json
import os
import tempfile

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_lock
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_lock


class StateError(fleet_fields.FleetError):
    """A state file that cannot be read, written or locked; the message names the file."""


def write_atomic(path, text, mode=0o644):
    """
    Write ``text`` to ``path`` so that no reader ever sees it half written:
    a temporary file in the same folder, fsync, ``chmod mode``, ``os.replace``.
    The temporary file is removed on any failure. Returns ``path``.
    """
    if not isinstance(path, str) or not path or "\0" in path:
        raise StateError(f"path: {fleet_fields.shown(path)} is not a file path", field="path")
    if not isinstance(text, str):
        raise StateError(f"text: expected a string, got {type(text).__name__}", field="text")
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path, doc, mode=0o644):
    """``doc`` as JSON (indent 1, sorted keys) through :func:`write_atomic`; returns ``path``."""
    try:
        text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a set, an object, inf/nan: refused before the file is touched
        raise StateError(f"{path}: not JSON data ({exc})", field="doc") from None
    return write_atomic(path, text, mode)


def read_json(path, error=StateError, default=None):
    """
    The JSON object in ``path``, or ``default`` when the file does not exist.
    A file that cannot be read, is not JSON or holds no object raises
    ``error`` (a :class:`fleet_fields.FleetError` class) naming the file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON: say which file, never a traceback
        raise error(f"{path}: unreadable state file ({exc}); fix or move it aside") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}; fix or move it aside")
    return data


class Store:
    """
    One runner's JSON state file ``directory/name`` and its lock file
    (``name`` without ``.json``, plus ``.lock``). ``defaults`` are the
    top-level keys every reader finds (copied, never shared); ``lock_wait``
    how long (s) a run waits for another before ``error`` is raised; ``error``
    the runner's :class:`fleet_fields.FleetError` class for every problem;
    ``mode`` the file's (private to the master's user by default).
    """

    def __init__(self, directory, name, defaults=None, lock_wait=60, error=StateError, mode=0o600):
        if not isinstance(directory, str) or not os.path.isabs(directory):
            raise StateError(f"directory: {fleet_fields.shown(directory)} is not an absolute path", field="directory")
        if not isinstance(name, str) or not fleet_fields.NAME.match(name) or not name.endswith(".json"):
            raise StateError(f"name: {fleet_fields.shown(name)} is not a file name ending in .json", field="name")
        if not isinstance(defaults, (dict, type(None))):
            raise StateError(f"defaults: expected a mapping, got {type(defaults).__name__}", field="defaults")
        if isinstance(lock_wait, bool) or not isinstance(lock_wait, (int, float)) or not 0 <= lock_wait <= 3600:
            raise StateError(f"lock_wait: {fleet_fields.shown(lock_wait)} is not 0-3600 seconds", field="lock_wait")
        if not (isinstance(error, type) and issubclass(error, fleet_fields.FleetError)):
            raise StateError(f"error: {fleet_fields.shown(error)} is not a FleetError class", field="error")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise StateError(f"mode: {fleet_fields.shown(mode)} is not a file mode", field="mode")
        self.directory = directory
        self.path = os.path.join(directory, name)
        self.lock_path = os.path.join(directory, name[: -len(".json")] + ".lock")
        self.defaults = dict(defaults or {})
        self.lock_wait = lock_wait
        self.error = error
        self.mode = mode

    def _load(self):
        state = read_json(self.path, self.error, {})
        for key, value in self.defaults.items():
            if key not in state:
                state[key] = copy.deepcopy(value)
        return state

    def read(self):
        """An unlocked snapshot (defaults filled): for reports that change nothing."""
        return self._load()

    @contextlib.contextmanager
    def locked(self):
        """
        ``with store.locked() as state:`` holds the lock, reads the state
        (defaults filled), yields it, and writes it back atomically only when
        the block changed it and left without an exception.
        """
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise self.error(f"{self.directory}: cannot create the state folder ({exc.strerror})") from None
        busy = self.error(f"state: {self.path} stayed locked by another run for {self.lock_wait} s")
        with fleet_lock.exclusive(self.lock_path, self.lock_wait, busy):
            state = self._load()
            before = json.dumps(state, sort_keys=True)
            yield state
            # written only when changed: a refused request leaves the file as it was
            if json.dumps(state, sort_keys=True) != before:
                try:
                    write_json_atomic(self.path, state, self.mode)
                except (OSError, StateError) as exc:
                    raise self.error(f"{self.path}: cannot write the state file ({exc})") from None


class Ledger:
    """
    An SQLite file of what a runner must count exactly while many runs write
    at once (the reactor's worker threads, ``salt-run`` in another process):
    instants per key (``sent``: the alerts accepted per sender) and counters
    (``counters``: metric, label, count), and the last instant each key of
    an accepted alert was seen (``seen``: what drops the copies of one alert
    that reach the top master once per Pi). :meth:`transaction` holds one write
    transaction (``BEGIN IMMEDIATE``), so a decision read there is still true
    when it is recorded; it rolls back if the block raises.
    """

    def __init__(self, path, wait_s=30):
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise StateError(f"path: {fleet_fields.shown(path)} is not an absolute path", field="path")
        self.path = path
        self.wait_s = wait_s

    @contextlib.contextmanager
    def transaction(self):
        """``with ledger.transaction() as book:``; :class:`sqlite3.Error` when the file is unusable."""
        import sqlite3  # pylint: disable=import-outside-toplevel

        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.wait_s, isolation_level=None)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS sent (minion TEXT NOT NULL, at REAL NOT NULL)")
            conn.execute("CREATE INDEX IF NOT EXISTS sent_minion ON sent (minion)")
            conn.execute("CREATE TABLE IF NOT EXISTS counters (metric TEXT NOT NULL, label TEXT NOT NULL,"
                         " count INTEGER NOT NULL, PRIMARY KEY (metric, label))")
            conn.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL)")
            conn.execute("BEGIN IMMEDIATE")  # one writer at a time, across threads and processes
            try:
                yield _Book(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()


class _Book:
    """The tables of a :class:`Ledger` inside one transaction."""

    def __init__(self, conn):
        self._conn = conn

    def times(self, key):
        """The instants recorded for ``key``."""
        return [row[0] for row in self._conn.execute("SELECT at FROM sent WHERE minion = ?", (key,))]

    def record(self, key, at):
        self._conn.execute("INSERT INTO sent (minion, at) VALUES (?, ?)", (key, at))

    def forget_before(self, at):
        """Drop every instant at or before ``at`` (of every key)."""
        self._conn.execute("DELETE FROM sent WHERE at <= ?", (at,))

    def seen_at(self, key):
        """The instant ``key`` was last :meth:`remember`-ed, or ``None``."""
        row = self._conn.execute("SELECT at FROM seen WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def remember(self, key, at):
        """Keep ``at`` as the instant of ``key`` (replacing an older one)."""
        self._conn.execute("INSERT INTO seen (key, at) VALUES (?, ?)"
                           " ON CONFLICT (key) DO UPDATE SET at = excluded.at", (key, at))

    def forget_seen(self, before, after=None):
        """Drop every key seen at or before ``before`` (and, given ``after``, after it: a clock set back)."""
        self._conn.execute("DELETE FROM seen WHERE at <= ?", (before,))
        if after is not None:
            self._conn.execute("DELETE FROM seen WHERE at > ?", (after,))

    def count(self, metric, label):
        """Add one to the counter ``metric{label}``."""
        self._conn.execute("INSERT INTO counters (metric, label, count) VALUES (?, ?, 1)"
                           " ON CONFLICT (metric, label) DO UPDATE SET count = count + 1", (metric, label))

    def counters(self):
        """``[(metric, label, count)]``, sorted."""
        return self._conn.execute("SELECT metric, label, count FROM counters ORDER BY metric, label").fetchall()
