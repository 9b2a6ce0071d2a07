"""
The campus outbox and the top master's collected store, without Salt.

:class:`Outbox` is a Pi's durable record of what its campus did (actions,
observations, verification results, alerts, clock and leader views), each
entry under an idempotency key (:func:`entry_key`). The top master collects
it with a cursor (entries after N; sending N again acknowledges everything up
to N) whenever the link is up; until then the entries wait on the Pi's disk.

:class:`Collected` is the top master's side: a cursor per Pi, every key seen
(the Pis of a campus write the same keys: every live Pi wakes, two leaders of
a split campus both verify), so :meth:`Collected.merge` returns each entry
once, and :meth:`Collected.day` is what ``kiosk_power.status`` shows.

Why SQLite this way
    Pis lose power. ``journal_mode=WAL`` with ``synchronous=FULL``: a commit
    is on disk when :meth:`Outbox.add` returns, and a process killed mid-write
    leaves the last commit intact (SQLite rolls the torn transaction back at
    the next open). The Pi master's reconciler writes while the Pi minion's
    ``kiosk_outbox.entries`` reads and prunes, in another process: each write
    is one ``BEGIN IMMEDIATE`` transaction, readers never block on WAL.

Why the cursor is checked
    A Pi whose outbox was recreated (disk replaced, file removed) starts its
    sequence again at 1, while the top master still holds the old cursor.
    Acknowledging that cursor would prune entries nobody collected. So each
    outbox has an id made at creation, and a cursor is only acknowledged when
    it names this outbox and is not beyond its last sequence number
    (:meth:`Outbox.knows`); otherwise the collector starts again from 0, which
    the dedup by key makes safe.

Everything raises :class:`OutboxError` (a ``ValueError``) naming the field.
"""

import contextlib
import datetime as _dt
import json
import os
import re
import sqlite3
import time
import uuid

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_alerts, fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_alerts
    import fleet_fields

KINDS = ("action", "observation", "verification", "alert", "clock", "leader")
# what the size cap drops first: the oldest of tier 0, then of tier 1; alerts last
CAP_TIERS = (("observation", "leader"), ("verification", "action", "clock"), ("alert",))
DEFAULT_CAP = 50000
MAX_CAP = 10_000_000
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
MAX_DATA = 16384  # bytes of JSON per entry: a power_mismatch payload is well under 1 KiB
# keys of acknowledged entries (all kinds but observations) kept after pruning, so a
# reconciler that asks has(key) for an action already collected still gets True
DONE_KEEP = 20000
WAIT_S = 30
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+/-]{2,299}\Z")
_CHECK = re.compile(r"^[a-z][a-z0-9+_-]{0,30}\Z")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_UTC = _dt.timezone.utc


class OutboxError(fleet_fields.FleetError):
    """A bad entry, cursor or file; the message names the field."""


# ---------------------------------------------------------------- values


def _name(value, field):
    if not isinstance(value, str) or not fleet_fields.NAME.match(value):
        raise OutboxError(f"{field}: {fleet_fields.shown(value)} is not a name")
    return value


def instant(value, field="at"):
    """An aware datetime or ISO 8601 string with offset -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, the stored form)."""
    if isinstance(value, _dt.datetime):
        parsed = value
    elif isinstance(value, str) and 10 <= len(value) <= 40:
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise OutboxError(f"{field}: {fleet_fields.shown(value)} is not an ISO 8601 instant") from None
    else:
        raise OutboxError(f"{field}: expected an ISO 8601 instant, got {fleet_fields.shown(value)}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise OutboxError(f"{field}: {fleet_fields.shown(value)} has no UTC offset")
    try:
        parsed = parsed.astimezone(_UTC)
    except OverflowError:  # 9999-12-31T23:00:00-05:00 is in year 10000 in UTC
        raise OutboxError(f"{field}: {fleet_fields.shown(value)} is out of range in UTC") from None
    return parsed.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _whole(value, field, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OutboxError(f"{field}: {fleet_fields.shown(value)} is not a whole number within {low}-{high}")
    return value


def check_cursor(value, field="cursor"):
    """A cursor: a whole number >= 0 (a numeric string from the CLI is taken)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return _whole(value, field, 0, 2**62)


def check_limit(value, field="limit"):
    """How many entries one page holds: 1-5000 (a numeric string from the CLI is taken)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return _whole(value, field, 1, MAX_LIMIT)


def check_kind(kind, field="kind"):
    if kind not in KINDS:
        raise OutboxError(f"{field}: {fleet_fields.shown(kind)} is not one of {', '.join(KINDS)}")
    return kind


def check_key(key, field="key"):
    if not isinstance(key, str) or not _KEY.match(key):
        raise OutboxError(f"{field}: {fleet_fields.shown(key)} is not an idempotency key (see entry_key)")
    return key


def _json(data, field="data"):
    if not isinstance(data, dict):
        raise OutboxError(f"{field}: expected a mapping, got {type(data).__name__}")
    try:
        text = json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise OutboxError(f"{field}: not JSON data ({exc})") from None
    if len(text) > MAX_DATA:  # ASCII: json.dumps escapes the rest
        raise OutboxError(f"{field}: {len(text)} characters of JSON, at most {MAX_DATA}")
    return text


def entry_key(campus, kiosk, check, date):
    """
    The idempotency key of an entry: ``campus/kiosk/check/date``. ``kiosk``
    is a kiosk or Pi id (clock and leader entries name the Pi), ``check`` a
    word such as ``wake``, ``shutdown``, ``check+5``, ``mismatch``,
    ``observed``, ``clock``, ``leader``; ``date`` a day (``YYYY-MM-DD`` or a
    ``date``) or an instant (aware datetime or ISO 8601 with offset), which
    is written in UTC: two Pis that name one transition in different offsets
    make one key.
    """
    _name(campus, "campus")
    _name(kiosk, "kiosk")
    if not isinstance(check, str) or not _CHECK.match(check):
        raise OutboxError(f"check: {fleet_fields.shown(check)} is not a check word (e.g. wake, check+5)")
    if isinstance(date, _dt.date) and not isinstance(date, _dt.datetime):
        date = date.isoformat()
    elif not (isinstance(date, str) and _DATE.match(date)):
        date = instant(date, "date")
    return check_key(f"{campus}/{kiosk}/{check}/{date}", "date")


def _absolute(path, field="path"):
    if not isinstance(path, str) or not os.path.isabs(path) or fleet_fields.bad_character(path):
        raise OutboxError(f"{field}: {fleet_fields.shown(path)} is not an absolute path")
    return path


def _create_private(path):
    """The database file, created 0600 in a 0700 folder before SQLite opens it (its -wal/-shm copy the mode)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))


@contextlib.contextmanager
def _connection(path, field, schema):
    """One connection: WAL, synchronous=FULL, the schema ensured; OutboxError naming ``field`` on any SQLite error."""
    try:
        _create_private(path)
        conn = sqlite3.connect(path, timeout=WAIT_S, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise OutboxError(f"{field}: cannot open {path} ({exc})") from None
    try:
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise OutboxError(f"{field}: {path} cannot use WAL (a file system without shared memory?)")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(schema)
        except sqlite3.Error as exc:
            raise OutboxError(f"{field}: {path} is not a usable database ({exc}); move it aside") from None
        yield conn
    except sqlite3.Error as exc:
        raise OutboxError(f"{field}: {path}: {exc}") from None
    finally:
        conn.close()


@contextlib.contextmanager
def _write(conn):
    conn.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes: decisions read here stay true
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------- the Pi's outbox

_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, key TEXT NOT NULL UNIQUE, at TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind, seq);
CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Outbox:
    """
    A Pi's outbox in the SQLite file ``path`` (created 0600, its folder 0700).
    ``cap``: at most this many entries are kept; over it the oldest
    observations (and leader views) go first, then verifications, actions and
    clock records, alerts last; each drop is counted (:meth:`stats`).
    """

    def __init__(self, path, cap=DEFAULT_CAP):
        self.path = _absolute(path)
        self.cap = _whole(cap, "cap", 1, MAX_CAP)

    @contextlib.contextmanager
    def _conn(self):
        with _connection(self.path, "outbox", _OUTBOX_SCHEMA) as conn:
            if not conn.execute("SELECT 1 FROM meta WHERE name = 'outbox'").fetchone():  # a new outbox: its id
                conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('outbox', ?)", (uuid.uuid4().hex,))
            yield conn

    @staticmethod
    def _meta(conn):
        return dict(conn.execute("SELECT name, value FROM meta").fetchall())

    @staticmethod
    def _last_seq(conn):
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        return int(row[0]) if row else 0

    def add(self, kind, key, data, at):
        """
        Record one entry; True when it is new, False when ``key`` is already
        recorded (still waiting, or acknowledged: the same key twice is one
        entry). Durable when this returns.
        """
        return self.add_many([(kind, key, data, at)])[0]

    def add_many(self, entries):
        """
        Record several entries in ONE transaction (one fsync: what a
        reconciler run writes); a list of booleans, True for each new one.
        Every entry is checked before anything is written.
        """
        if not isinstance(entries, (list, tuple)):
            raise OutboxError(f"entries: expected a list of (kind, key, data, at), got {type(entries).__name__}")
        rows = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, (list, tuple)) or len(entry) != 4:
                raise OutboxError(f"entries[{index}]: expected (kind, key, data, at)")
            kind, key, data, at = entry
            rows.append((check_kind(kind, f"entries[{index}].kind"), check_key(key, f"entries[{index}].key"),
                         instant(at, f"entries[{index}].at"), _json(data, f"entries[{index}].data")))
        added = []
        with self._conn() as conn, _write(conn):
            for kind, key, at, text in rows:
                if conn.execute("SELECT 1 FROM done WHERE key = ?", (key,)).fetchone():
                    added.append(False)
                    continue
                cur = conn.execute("INSERT OR IGNORE INTO entries (kind, key, at, data) VALUES (?, ?, ?, ?)",
                                   (kind, key, at, text))
                added.append(cur.rowcount == 1)
            if any(added):
                self._enforce_cap(conn)
        return added

    def _enforce_cap(self, conn):
        over = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] - self.cap
        for tier in CAP_TIERS:
            if over <= 0:
                return
            marks = ",".join("?" * len(tier))
            doomed = conn.execute(f"SELECT seq, kind FROM entries WHERE kind IN ({marks}) ORDER BY seq LIMIT ?",
                                  (*tier, over)).fetchall()
            for seq, kind in doomed:
                conn.execute("DELETE FROM entries WHERE seq = ?", (seq,))
                conn.execute("INSERT INTO meta (name, value) VALUES (?, '1') ON CONFLICT (name) DO UPDATE"
                             " SET value = CAST(value AS INTEGER) + 1", (f"dropped.{kind}",))
            over -= len(doomed)

    def has(self, key):
        """True when ``key`` is recorded: waiting for collection, or acknowledged (kept for DONE_KEEP keys)."""
        check_key(key)
        with self._conn() as conn:
            return bool(conn.execute("SELECT 1 FROM entries WHERE key = ? UNION ALL SELECT 1 FROM done WHERE key = ?",
                                     (key, key)).fetchone())

    def knows(self, cursor, outbox=None):
        """
        True when ``cursor`` can be acknowledged here: ``outbox`` (the id the
        collector got with it) is this outbox's id or None, and this outbox
        handed out a page up to it (:meth:`handed`). False means the outbox
        was recreated since, or the cursor never came from it (a return
        forged for this Pi while it was cut off): collect again from 0,
        which the dedup by key makes safe, rather than prune what nobody
        collected.
        """
        cursor = check_cursor(cursor)
        if outbox is not None and not isinstance(outbox, str):
            raise OutboxError(f"outbox: {fleet_fields.shown(outbox)} is not an outbox id")
        with self._conn() as conn:
            meta = self._meta(conn)
            if outbox is not None and outbox != meta["outbox"]:
                return False
            return cursor <= min(self._last_seq(conn), int(meta.get("handed", 0)))

    def handed(self, cursor):
        """Record that a page up to ``cursor`` went out to the collector (what :meth:`knows` accepts)."""
        cursor = check_cursor(cursor)
        with self._conn() as conn, _write(conn):
            if cursor > self._last_seq(conn):
                raise OutboxError(f"cursor: {cursor} is beyond this outbox's last entry")
            conn.execute("INSERT INTO meta (name, value) VALUES ('handed', ?) ON CONFLICT (name) DO UPDATE"
                         " SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))", (str(cursor),))

    def ack(self, cursor):
        """
        Prune every entry up to ``cursor`` (the collector has them); returns
        how many went. The keys of all but observations stay known to
        :meth:`has`. A cursor beyond the last entry is refused (see :meth:`knows`).
        """
        cursor = check_cursor(cursor)
        with self._conn() as conn, _write(conn):
            last = self._last_seq(conn)
            if cursor > last:
                raise OutboxError(f"cursor: {cursor} is beyond this outbox's last entry {last} (recreated outbox?)")
            conn.execute("INSERT OR IGNORE INTO done (key, kind) SELECT key, kind FROM entries"
                         " WHERE seq <= ? AND kind != 'observation' ORDER BY seq", (cursor,))
            pruned = conn.execute("DELETE FROM entries WHERE seq <= ?", (cursor,)).rowcount
            conn.execute("DELETE FROM done WHERE rowid <= (SELECT MAX(rowid) FROM done) - ?", (DONE_KEEP,))
        return pruned

    def after(self, cursor=0, limit=DEFAULT_LIMIT):
        """
        The entries after ``cursor``, oldest first, at most ``limit``:
        ``{"entries": [{"seq", "kind", "key", "at", "data"}], "cursor": the
        last seq returned (``cursor`` when none), "more": bool, "outbox": this
        outbox's id, "last_seq", "dropped": {kind: count}}``.
        """
        cursor = check_cursor(cursor)
        limit = check_limit(limit)
        with self._conn() as conn:
            conn.execute("BEGIN")  # one snapshot: the page, its "more" and the counters agree
            rows = conn.execute("SELECT seq, kind, key, at, data FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                                (cursor, limit + 1)).fetchall()
            meta = self._meta(conn)
            last = self._last_seq(conn)
            conn.execute("COMMIT")
        page = [{"seq": seq, "kind": kind, "key": key, "at": at, "data": json.loads(data)}
                for seq, kind, key, at, data in rows[:limit]]
        return {"entries": page, "cursor": page[-1]["seq"] if page else cursor, "more": len(rows) > limit,
                "outbox": meta["outbox"], "last_seq": last, "dropped": _dropped(meta)}

    def stats(self):
        """``{"outbox", "last_seq", "entries": {kind: count}, "dropped": {kind: count}}`` (for metrics)."""
        with self._conn() as conn:
            counts = dict(conn.execute("SELECT kind, COUNT(*) FROM entries GROUP BY kind").fetchall())
            meta = self._meta(conn)
            return {"outbox": meta["outbox"], "last_seq": self._last_seq(conn),
                    "entries": {k: counts.get(k, 0) for k in KINDS}, "dropped": _dropped(meta)}

    def integrity(self):
        """SQLite's ``PRAGMA integrity_check``: ``"ok"``, or its findings joined."""
        with self._conn() as conn:
            return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())


def _dropped(meta):
    return {k: int(meta.get(f"dropped.{k}", 0)) for k in KINDS}


# ---------------------------------------------------------------- the top master's collected store

_COLLECTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS pis (
    campus TEXT NOT NULL, pi TEXT NOT NULL, outbox TEXT, cursor INTEGER NOT NULL DEFAULT 0,
    collected_at TEXT, answered_at TEXT, serial INTEGER, leader TEXT, clock TEXT, dropped TEXT,
    PRIMARY KEY (campus, pi));
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, campus TEXT NOT NULL, pi TEXT NOT NULL, seen_by TEXT NOT NULL,
    kind TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL, collected_at REAL NOT NULL,
    posted INTEGER);
CREATE INDEX IF NOT EXISTS entries_day ON entries (campus, kind, at);
CREATE INDEX IF NOT EXISTS entries_unposted ON entries (posted) WHERE posted = 0;
CREATE TABLE IF NOT EXISTS counters (
    metric TEXT NOT NULL, labels TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (metric, labels));
"""
KEEP_OBSERVATIONS_S = 2 * 86400  # observations feed "the day" and the kiosk's last state
KEEP_ENTRIES_S = 40 * 86400  # other keys: longer than a Pi keeps them (dedup of a Pi cut for weeks)
DAY_LIST_MAX = 2000  # entries of each kind shown per campus (newest)


def check_entry(entry, campus, pi, field="entries"):
    """
    One entry as a Pi of ``campus`` returned it, checked: its kind, key (which
    must start with ``campus/``: a Pi never writes another campus's keys),
    instant, data (a mapping whose ``campus`` is this campus). Returns
    ``(kind, key, at, data, data as stored JSON)``.
    """
    if not isinstance(entry, dict):
        raise OutboxError(f"{field}: expected a mapping, got {type(entry).__name__}")
    kind = check_kind(entry.get("kind"), f"{field}.kind")
    key = check_key(entry.get("key"), f"{field}.key")
    if not key.startswith(campus + "/"):
        raise OutboxError(f"{field}.key: {fleet_fields.shown(key)} is not a key of campus {campus}")
    at = instant(entry.get("at"), f"{field}.at")
    data = entry.get("data")
    text = _json(data, f"{field}.data")
    if data.get("campus", campus) != campus:
        raise OutboxError(f"{field}.data.campus: {fleet_fields.shown(data.get('campus'))} is not {campus}")
    return kind, key, at, data, text


def _labels(**labels):
    return json.dumps(labels, sort_keys=True)


class Collected:
    """
    The top master's store of what the campuses' Pis reported
    (``<cachedir>/kiosk_outbox/collected.db``): a cursor per Pi, every entry
    by key (the first Pi to report it, and every Pi that did), alert
    delivery (posted or still to post), and counters for the metrics.
    """

    def __init__(self, path):
        self.path = _absolute(path)

    @contextlib.contextmanager
    def _conn(self):
        with _connection(self.path, "collected", _COLLECTED_SCHEMA) as conn:
            yield conn

    def cursors(self, pis):
        """``{pi: {"cursor", "outbox"}}`` for ``pis`` (``[(campus, pi)]``); 0/None for a Pi never collected."""
        found = {}
        with self._conn() as conn:
            for campus, pi in pis:
                row = conn.execute("SELECT cursor, outbox FROM pis WHERE campus = ? AND pi = ?",
                                   (_name(campus, "campus"), _name(pi, "pi"))).fetchone()
                found[pi] = {"cursor": row[0] if row else 0, "outbox": row[1] if row else None}
        return found

    def merge(self, campus, pi, entries, cursor=None, outbox=None, info=None, now=None, refused=None):
        """
        Store what ``pi`` of ``campus`` returned, in one transaction with its
        new ``cursor`` (and ``outbox`` id, and ``info``: ``serial``,
        ``leader``, ``clock``, ``dropped`` as the Pi reported them). Returns
        the entries never seen before, from any Pi of the campus, as
        ``{"kind", "key", "at", "pi", "data"}``. An invalid entry is
        skipped, counted, and its reason appended to ``refused`` (a list)
        when given: one bad entry must not stop the cursor forever.
        """
        _name(campus, "campus")
        _name(pi, "pi")
        if not isinstance(entries, (list, tuple)):
            raise OutboxError(f"entries: expected a list, got {type(entries).__name__}")
        if cursor is not None:
            cursor = check_cursor(cursor)
        if outbox is not None and not (isinstance(outbox, str) and re.match(r"^[0-9a-f]{8,64}\Z", outbox)):
            raise OutboxError(f"outbox: {fleet_fields.shown(outbox)} is not an outbox id")
        errors = []
        info = fleet_fields.mapping(info, "info", errors)
        if errors:
            raise OutboxError(errors[0])
        now = time.time() if now is None else now
        checked = []
        for index, entry in enumerate(entries):
            try:
                checked.append(check_entry(entry, campus, pi, f"entries[{index}]"))
            except OutboxError as exc:
                if refused is not None:
                    refused.append(str(exc))
                checked.append(None)
        new = []
        counts = {}  # one counter update per label set, not one per entry: a page after a cut holds thousands

        def count(metric, kind=None):
            counts[(metric, kind)] = counts.get((metric, kind), 0) + 1

        stamp = instant(_dt.datetime.fromtimestamp(now, _UTC))
        with self._conn() as conn, _write(conn):
            for item in checked:
                if item is None:
                    count("kiosk_campus_entries_refused_total")
                    continue
                kind, key, at, data, text = item
                cur = conn.execute(
                    "INSERT OR IGNORE INTO entries (key, campus, pi, seen_by, kind, at, data, collected_at, posted)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, campus, pi, pi, kind, at, text, now, 0 if postable(kind, data) else None))
                if cur.rowcount == 1:
                    new.append({"kind": kind, "key": key, "at": at, "pi": pi, "data": data})
                    count("kiosk_campus_entries_total", kind)
                else:
                    conn.execute("UPDATE entries SET seen_by = seen_by || ',' || ? WHERE key = ?"
                                 " AND instr(',' || seen_by || ',', ',' || ? || ',') = 0", (pi, key, pi))
                    count("kiosk_campus_entries_duplicate_total")
            for (metric, kind), by in sorted(counts.items(), key=lambda item: (item[0][0], item[0][1] or "")):
                labels = {"campus": campus, "pi": pi} if kind is None else {"campus": campus, "pi": pi, "kind": kind}
                self._count(conn, metric, by, **labels)
            columns = {"collected_at": stamp}
            if cursor is not None:
                columns["cursor"] = cursor
            if outbox is not None:
                columns["outbox"] = outbox
            if isinstance(info.get("serial"), int) and not isinstance(info["serial"], bool):
                columns["serial"] = info["serial"]
            # the Pi's newest view of its campus's leader, from its own leader entries on this page
            views = [(item[2], item[3].get("leader")) for item in checked
                     if item is not None and item[0] == "leader" and item[3].get("pi") == pi]
            if views and "leader" not in info:
                info = dict(info, leader=max(views, key=lambda view: view[0])[1])
            for name in ("leader", "clock", "dropped"):
                if name in info:
                    columns[name] = _json({"v": info[name]}, f"info.{name}")
            conn.execute("INSERT OR IGNORE INTO pis (campus, pi) VALUES (?, ?)", (campus, pi))
            conn.execute(f"UPDATE pis SET {', '.join(f'{c} = ?' for c in columns)} WHERE campus = ? AND pi = ?",
                         (*columns.values(), campus, pi))
        return new

    @staticmethod
    def _count(conn, metric, by=1, **labels):
        conn.execute("INSERT INTO counters (metric, labels, count) VALUES (?, ?, ?) ON CONFLICT (metric, labels)"
                     " DO UPDATE SET count = count + excluded.count", (metric, _labels(**labels), by))

    def count(self, metric, by=1, **labels):
        """Add ``by`` to the counter ``metric{labels}`` (a ``_total`` metric)."""
        if not isinstance(metric, str) or not re.match(r"^[a-z_]{1,80}_total\Z", metric):
            raise OutboxError(f"metric: {fleet_fields.shown(metric)} is not a counter name ending in _total")
        with self._conn() as conn, _write(conn):
            self._count(conn, metric, by, **{k: str(v) for k, v in labels.items()})

    def unposted(self, older_than_s=None, now=None):
        """The alerts collected but not posted yet (a webhook that failed), oldest first; ``older_than_s``: max age."""
        now = time.time() if now is None else now
        since = now - older_than_s if older_than_s is not None else 0
        with self._conn() as conn:
            rows = conn.execute("SELECT kind, key, at, pi, data FROM entries WHERE posted = 0 AND collected_at >= ?"
                                " ORDER BY collected_at, key", (since,)).fetchall()
        return [{"kind": kind, "key": key, "at": at, "pi": pi, "data": json.loads(data)}
                for kind, key, at, pi, data in rows]

    def mark_posted(self, key, posted=True):
        """Record that the alert ``key`` was posted (or, ``posted=False``, that it still has to be)."""
        check_key(key)
        with self._conn() as conn, _write(conn):
            conn.execute("UPDATE entries SET posted = ? WHERE key = ? AND posted IS NOT NULL",
                         (1 if posted else 0, key))

    def prune(self, now=None):
        """Forget observations older than 2 days and other entries older than 40 days (by collection time)."""
        now = time.time() if now is None else now
        with self._conn() as conn, _write(conn):
            gone = conn.execute("DELETE FROM entries WHERE kind = 'observation' AND collected_at < ?",
                                (now - KEEP_OBSERVATIONS_S,)).rowcount
            gone += conn.execute("DELETE FROM entries WHERE collected_at < ?", (now - KEEP_ENTRIES_S,)).rowcount
        return gone

    def day(self, campus=None, since=None, now=None):
        """
        What the campuses did since ``since`` (an instant; default 24 hours
        before ``now``), by the entries' own time::

            {campus: {"pis": {pi: {"cursor", "outbox", "collected_at",
                                   "serial", "leader", "clock", "dropped"}},
                      "actions": [...], "verifications": [...], "alerts": [...],
                      "clocks": [...],
                      "kiosks": {kiosk: {"at", "observed", "expected", "pi"}}}}

        Each list item is ``{"key", "at", "pi", "pis", "data"}`` (``pi``: the
        first Pi that reported it, ``pis``: every Pi that did; alerts also
        ``posted``), oldest first, the newest 2,000 of each kind. ``kiosks``:
        each kiosk's last observation.
        """
        if campus is not None:
            _name(campus, "campus")
        now = _dt.datetime.now(_UTC) if now is None else now
        since = instant(now - _dt.timedelta(days=1) if since is None else since, "since")
        lists = {"action": "actions", "verification": "verifications", "alert": "alerts", "clock": "clocks"}
        shown = {}
        with self._conn() as conn:
            conn.execute("BEGIN")
            for name, pis in self._pis(conn, campus).items():
                shown.setdefault(name, _empty_day())["pis"] = pis
            for kind, title in lists.items():
                rows = conn.execute(
                    "SELECT * FROM (SELECT campus, key, at, pi, seen_by, data, posted FROM entries"
                    " WHERE kind = ? AND at >= ? AND (? IS NULL OR campus = ?) ORDER BY at DESC, key DESC LIMIT ?)"
                    " ORDER BY at, key", (kind, since, campus, campus, DAY_LIST_MAX)).fetchall()
                for name, key, at, pi, seen_by, data, posted in rows:
                    item = {"key": key, "at": at, "pi": pi, "pis": sorted(seen_by.split(",")), "data": json.loads(data)}
                    if posted is not None:  # alerts, and clock records of an unsynchronised clock
                        item["posted"] = bool(posted)
                    shown.setdefault(name, _empty_day())[title].append(item)
            rows = conn.execute(
                "SELECT campus, at, pi, data FROM entries WHERE kind = 'observation' AND at >= ?"
                " AND (? IS NULL OR campus = ?) ORDER BY at, key", (since, campus, campus)).fetchall()
            conn.execute("COMMIT")
        for name, at, pi, data in rows:
            data = json.loads(data)
            kiosk = data.get("kiosk")
            if isinstance(kiosk, str):
                shown.setdefault(name, _empty_day())["kiosks"][kiosk] = {
                    "at": at, "observed": data.get("observed"), "expected": data.get("expected"), "pi": pi}
        return shown

    @staticmethod
    def _pis(conn, campus):
        found = {}
        rows = conn.execute("SELECT campus, pi, outbox, cursor, collected_at, serial, leader, clock, dropped"
                            " FROM pis WHERE ? IS NULL OR campus = ? ORDER BY campus, pi", (campus, campus))
        for name, pi, outbox, cursor, collected_at, serial, leader, clock, dropped in rows.fetchall():
            found.setdefault(name, {})[pi] = {
                "cursor": cursor, "outbox": outbox, "collected_at": collected_at, "serial": serial,
                "leader": _unwrap(leader), "clock": _unwrap(clock), "dropped": _unwrap(dropped)}
        return found

    def pis(self, campus=None):
        """
        ``{campus: {pi: {"cursor", "outbox", "collected_at", "serial",
        "leader", "clock", "dropped"}}}`` of the Pis collected at least once
        (what :meth:`day` shows under ``pis``), without reading any entry.
        """
        if campus is not None:
            _name(campus, "campus")
        with self._conn() as conn:
            return self._pis(conn, campus)

    def counters(self):
        """``[(metric, labels dict, count)]``, sorted: the ``_total`` counters for the metrics."""
        with self._conn() as conn:
            rows = conn.execute("SELECT metric, labels, count FROM counters ORDER BY metric, labels").fetchall()
        return [(metric, json.loads(labels), count) for metric, labels, count in rows]

    def integrity(self):
        """SQLite's ``PRAGMA integrity_check``: ``"ok"``, or its findings joined."""
        with self._conn() as conn:
            return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())


def _empty_day():
    return {"pis": {}, "actions": [], "verifications": [], "alerts": [], "clocks": [], "kiosks": {}}


def _unwrap(text):
    return json.loads(text)["v"] if text else None


# ---------------------------------------------------------------- the collector's decisions


def check_answer(answer, pi, campus):
    """
    A Pi's ``kiosk_outbox.entries`` answer, checked before anything of it is
    stored: it names this Pi and its campus (a return for another Pi is no
    answer of this one), and carries a list of entries, a cursor, an outbox
    id and ``more``. Returns ``(entries, cursor, outbox, more, info)``;
    :class:`OutboxError` naming the field otherwise.
    """
    if not isinstance(answer, dict):
        raise OutboxError(f"answer: expected a mapping, got {type(answer).__name__}")
    if answer.get("pi") != pi:
        raise OutboxError(f"answer.pi: {fleet_fields.shown(answer.get('pi'))} is not {pi}")
    if answer.get("campus") != campus:
        raise OutboxError(f"answer.campus: {fleet_fields.shown(answer.get('campus'))} is not {pi}'s campus {campus}")
    entries = answer.get("entries")
    if not isinstance(entries, list):
        raise OutboxError(f"answer.entries: expected a list, got {type(entries).__name__}")
    cursor = check_cursor(answer.get("cursor"), "answer.cursor")
    outbox = answer.get("outbox")
    if not (isinstance(outbox, str) and re.match(r"^[0-9a-f]{8,64}\Z", outbox)):
        raise OutboxError(f"answer.outbox: {fleet_fields.shown(outbox)} is not an outbox id")
    if not isinstance(answer.get("more"), bool):
        raise OutboxError(f"answer.more: {fleet_fields.shown(answer.get('more'))} is not true or false")
    info = {}
    serial = answer.get("serial")
    if isinstance(serial, int) and not isinstance(serial, bool) and serial >= 0:
        info["serial"] = serial
    if isinstance(answer.get("clock"), dict):
        clock = answer["clock"]
        info["clock"] = {k: clock[k] for k in ("synced", "source", "offset_s", "error") if k in clock}
    if isinstance(answer.get("dropped"), dict):
        info["dropped"] = {k: v for k, v in answer["dropped"].items()
                           if k in KINDS and isinstance(v, int) and not isinstance(v, bool) and v >= 0}
    return entries, cursor, outbox, answer["more"], info


def postable(kind, data):
    """
    True for the entries the collector posts to the webhook: every ``alert``,
    and a ``clock`` record of an unsynchronised clock (the reconciler writes
    one per Pi per day while its clock is not synchronised: the clock alert).
    """
    return kind == "alert" or (kind == "clock" and isinstance(data, dict) and data.get("synced") is False)


def alert_payload(entry, campus):
    """
    The webhook payload of a collected entry that :func:`postable` says is
    posted: an ``alert``'s data as the reconciler built it (e.g.
    ``fleet_alerts.power_mismatch``), or for an unsynchronised ``clock`` a
    ``pi_clock`` warning; with ``idempotency_key`` set to the entry's key
    (the receiver drops a copy it has seen) and the campus the entry came
    from; checked by ``fleet_alerts.check_payload``.
    """
    data = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(data, dict):
        raise OutboxError("entry.data: an alert entry without a payload mapping")
    if entry.get("kind") == "clock":
        pi = data.get("pi") if isinstance(data.get("pi"), str) else "?"
        summary = data.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            summary = f"Pi {pi} ({campus}): clock not synchronised; no shutdowns until it is"
        data = {"severity": "warning", "kind": "pi_clock", "summary": summary, "pi": pi,
                "synced": False, "offset_s": data.get("offset_s"), "confirmed_by": data.get("confirmed_by"),
                "source": data.get("source")}
    payload = dict(data, idempotency_key=entry["key"], campus=campus)
    try:
        return fleet_alerts.check_payload(payload)
    except fleet_alerts.AlertError as exc:
        raise OutboxError(f"entry.data: {exc}") from None


def _epoch(text):
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


COUNTER_HELP = {
    "kiosk_campus_entries_total": "Outbox entries collected for the first time (from this Pi), by kind.",
    "kiosk_campus_entries_duplicate_total": "Outbox entries this Pi reported that another Pi (or an earlier collect) already had.",
    "kiosk_campus_entries_refused_total": "Outbox entries refused (malformed, or naming another campus).",
    "kiosk_campus_alerts_posted_total": "Collected alerts posted to the webhook and accepted.",
    "kiosk_campus_alert_post_failures_total": "Collected alert posts the webhook did not accept (retried at the next collect).",
    "kiosk_campus_collect_silent_total": "Collects this Pi did not answer (a WAN cut, the Pi down).",
    "kiosk_campus_collect_failed_total": "Collects this Pi answered with an error or an invalid answer.",
}


def metrics(counters, day, unposted):
    """
    The metric families of ``kiosk_campus.prom`` (``fleet_metrics.render``):
    the store's ``_total`` counters (``Collected.counters``), and gauges from
    ``day`` (``Collected.day``): each Pi's last collection, clock, calendar
    serial and entries its cap dropped; each kiosk's last observed state, its
    expected state and whether they differ; alerts still to post.
    """
    families = []
    for name, help_text in COUNTER_HELP.items():
        families.append((name, "counter", help_text, [(labels, count) for metric, labels, count in counters
                                                      if metric == name]))
    collected, synced, serial, dropped, observed_on, mismatch, waiting = [], [], [], [], [], [], []
    expected_on = []
    for campus, view in sorted(day.items()):
        for pi, info in sorted(view["pis"].items()):
            labels = {"campus": campus, "pi": pi}
            collected.append((labels, _epoch(info.get("collected_at"))))
            clock = info.get("clock") if isinstance(info.get("clock"), dict) else {}
            synced.append((labels, clock.get("synced") if isinstance(clock.get("synced"), bool) else None))
            serial.append((labels, info.get("serial")))
            for kind, count in sorted((info.get("dropped") or {}).items()):
                dropped.append((dict(labels, kind=kind), count))
        for kiosk, seen in sorted(view["kiosks"].items()):
            labels = {"campus": campus, "kiosk": kiosk}
            state = seen.get("observed")
            observed_on.append((labels, 1 if state == "on" else 0 if state in ("off", "degraded") else None))
            # what the campus should look like now: a closed campus at night is never "dark"
            expected = seen.get("expected")
            expected_on.append((labels, 1 if expected == "on" else 0 if expected == "off" else None))
            if seen.get("expected") in ("on", "off") and state in ("on", "off", "degraded"):
                mismatch.append((labels, 0 if state == seen["expected"] else 1))
        waiting.append(({"campus": campus}, sum(1 for item in unposted if item["key"].startswith(campus + "/"))))
    families += [
        ("kiosk_campus_pi_last_collected_timestamp_seconds", "gauge",
         "When this Pi's outbox was last collected (unix time).", collected),
        ("kiosk_campus_pi_clock_synced", "gauge", "1 when the Pi said its clock is synchronised.", synced),
        ("kiosk_campus_pi_calendar_serial", "gauge", "The calendar serial the Pi holds.", serial),
        ("kiosk_campus_outbox_dropped_total", "counter",
         "Entries the Pi's outbox cap dropped before collection (the Pi's own count).", dropped),
        ("kiosk_campus_kiosk_observed_on", "gauge", "1 when the kiosk was last observed on, 0 off or degraded.",
         observed_on),
        ("kiosk_campus_kiosk_expected_on", "gauge", "1 when the kiosk should be on at its last observation, 0 off.",
         expected_on),
        ("kiosk_campus_kiosk_mismatch", "gauge", "1 when the kiosk's last observation differs from its expected state.",
         mismatch),
        ("kiosk_campus_alerts_unposted", "gauge", "Collected alerts not accepted by the webhook yet.", waiting),
    ]
    return families
