"""
Unexpected kiosk restarts, without Salt: what a kiosk says about its last
boot, whether that boot was one the pack caused, and the top master's
durable record of every boot.

A kiosk boots because the pack woke it (a magic packet from its campus's
Pis, recorded as an ``action`` entry of the Pis' outboxes and collected on
the top master, a top-master sweep, or an operator's ``kiosk_power.wake``
recorded in the store's ``wakes`` table), or for a reason the pack did not
cause: a power cut, a crash, someone at the power button, Windows restarting
itself. The second kind is an *unexpected restart*:

- a boot with no wake from the pack shortly before it, or
- a boot while the kiosk should have been on (its boot time jumped).

:func:`decide` says which, with a reason. On Windows the kiosk also reports
the reason the system logged for the last unclean shutdown (event 41 of
Microsoft-Windows-Kernel-Power, event 6008 of EventLog), read with
``wevtutil`` (:data:`WEVTUTIL_ARGV`, parsed by :func:`parse_wevtutil`).

:class:`Restarts` is the top master's store (SQLite, WAL, at
:func:`store_path`): one row per (kiosk, boot time), so the boot
announcement that reaches the top master once per Pi of the campus is
counted once, counters that never go back (``kiosk_boots_total``,
``kiosk_unexpected_restarts_total``), and the wakes the top master sent
itself (:meth:`Restarts.record_wakes`, kept :data:`KEEP_WAKES_S`).

Everything raises :class:`RestartsError` (a ``ValueError``) naming the field.
"""

import contextlib
import datetime as _dt
import json
import math
import os
import re
import sqlite3
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

# The newest event 41 or 6008 of the System log, as text (an argument list: never a shell string).
WEVTUTIL_ARGV = ("wevtutil", "qe", "System", "/q:*[System[(EventID=41 or EventID=6008)]]", "/c:1", "/rd:true",
                 "/f:text")
EVENT_REASONS = {
    41: "Kernel-Power 41: the system rebooted without cleanly shutting down (power lost, crash or hang)",
    6008: "EventLog 6008: the previous system shutdown was unexpected",
}
WAKE_WINDOW_S = 900  # a wake up to 15 min before the boot caused it (the Pis repeat packets; a PC boots slowly)
CLOCK_SKEW_S = 120  # the kiosk's clock may run ahead of the Pi's: a wake stamped this much after the boot still counts
BOOT_JITTER_S = 60  # one boot: its time read twice differs by clock corrections (btime follows a stepped clock)
REASON_SLACK_S = 900  # an event logged up to 15 min before the boot time (clock corrected later) is this boot's
KEEP_BOOTS_S = 90 * 86400  # boots kept for show(); the counters are kept apart and never go back
# wakes the top master sent, kept long enough for a boot decided late (a reactor backlog), small enough to stay tiny
KEEP_WAKES_S = 3 * 86400
STORE_DIR = "kiosk_restarts"  # under the master's cachedir: the one place the store lives (store_path)
STORE_FILE = "restarts.db"
MAX_SHOWN = 500
WAIT_S = 30  # SQLite busy timeout
VERDICTS = ("expected", "unexpected")
_EPOCH_MAX = 4102444800  # 2100-01-01: a boot time beyond is no boot time


class RestartsError(fleet_fields.FleetError):
    """A boot report, decision input or store request that cannot be used; the message names the field."""


def _name(value, field):
    if not isinstance(value, str) or not fleet_fields.NAME.match(value):
        raise RestartsError(f"{field}: {fleet_fields.shown(value)} is not a name")
    return value


def check_time(value, field):
    """``value`` as Unix seconds (a finite, non-negative number, not a boolean, before 2100)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RestartsError(f"{field}: {fleet_fields.shown(value)} is not a time in Unix seconds")
    if not (math.isfinite(value) and 0 <= value < _EPOCH_MAX):
        raise RestartsError(f"{field}: {fleet_fields.shown(value)} is not a time in Unix seconds")
    return value


def store_path(cachedir):
    """The top master's store, ``<cachedir>/kiosk_restarts/restarts.db`` (``kiosk_restarts``, ``kiosk_power``)."""
    if not isinstance(cachedir, str) or not os.path.isabs(cachedir) or fleet_fields.bad_character(cachedir):
        raise RestartsError(f"cachedir: {fleet_fields.shown(cachedir)} is not an absolute path")
    return os.path.join(cachedir, STORE_DIR, STORE_FILE)


def iso(epoch):
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- what the kiosk reads


def parse_btime(text):
    """The boot time (Unix seconds) of the ``btime`` line of Linux's ``/proc/stat``."""
    if not isinstance(text, str):
        raise RestartsError(f"stat: expected the text of /proc/stat, got {type(text).__name__}")
    match = re.search(r"^btime\s+(\d{1,12})\s*$", text, re.MULTILINE)
    if not match:
        raise RestartsError("stat: no btime line")
    return check_time(int(match.group(1)), "stat.btime")


def parse_boot_time_file(text):
    """The boot time (Unix seconds) a simulated kiosk's ``boot_time_file`` holds: one whole number."""
    if not isinstance(text, str) or not re.match(r"^\s*\d{1,12}\s*\Z", text):
        raise RestartsError(f"boot_time_file: {fleet_fields.shown(text)} is not a time in Unix seconds")
    return check_time(int(text), "boot_time_file")


_FIELD = re.compile(r"^\s{0,8}(Log Name|Source|Date|Event ID|Level|Computer):[ \t]*(.*?)\s*$")


def parse_wevtutil(text):
    """
    The first event of ``wevtutil qe ... /f:text`` output: ``{"event_id",
    "source", "date", "level", "description"}`` (``date`` as printed: ISO
    8601, with or without a zone), or None when the output holds no event
    (no unclean shutdown was ever logged).
    """
    if not isinstance(text, str):
        raise RestartsError(f"text: expected wevtutil's text output, got {type(text).__name__}")
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if re.match(r"^Event\[\d+\]:\s*$", line)), None)
    if start is None:
        if text.strip():
            raise RestartsError("text: not wevtutil text output (no Event[0]: line)")
        return None
    found, description = {}, []
    for line in lines[start + 1:]:
        if re.match(r"^Event\[\d+\]:\s*$", line):
            break  # one event only
        if "description" in found:
            description.append(line.strip())
            continue
        match = _FIELD.match(line)
        if match:
            found[match.group(1)] = match.group(2)
        elif re.match(r"^\s{0,8}Description:", line):
            found["description"] = True
            rest = line.split(":", 1)[1].strip()
            if rest:
                description.append(rest)
    event_id = found.get("Event ID", "")
    if not re.match(r"^\d{1,6}\Z", event_id):
        raise RestartsError(f"text.event_id: {fleet_fields.shown(event_id)} is not an event id")
    date = found.get("Date", "")
    if event_time(date) is None:
        raise RestartsError(f"text.date: {fleet_fields.shown(date)} is not an ISO 8601 time")
    return {"event_id": int(event_id), "source": found.get("Source", ""), "date": date,
            "level": found.get("Level", ""), "description": " ".join(p for p in description if p)[:500]}


def event_time(date, tz=None):
    """
    Unix seconds of an event's ``Date`` (ISO 8601; wevtutil prints UTC with
    ``Z`` or local time without a zone: a naive time is read in ``tz``, by
    default this machine's zone, so call it on the kiosk). None when not a time.
    """
    if not isinstance(date, str):
        return None
    text = date.strip().replace("Z", "+00:00")
    # wevtutil prints 7 fractional digits; fromisoformat takes at most 6
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz) if tz is not None else moment.astimezone()
    return moment.timestamp()


def shutdown_reason(event, boot_time, tz=None):
    """
    ``{"event_id", "source", "at", "reason"}`` when ``event`` (a
    :func:`parse_wevtutil` result or None) was logged for the boot at
    ``boot_time`` (not before it, give or take :data:`REASON_SLACK_S`: the
    system logs 41/6008 while it starts); None for an older event (the
    reason of an earlier boot) or no event.
    """
    boot_time = check_time(boot_time, "boot_time")
    if event is None:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event_id"), int):
        raise RestartsError("event: expected a parse_wevtutil() result")
    at = event_time(event.get("date"), tz)
    if at is None or at < boot_time - REASON_SLACK_S:
        return None
    reason = EVENT_REASONS.get(event["event_id"], f"event {event['event_id']}")
    return {"event_id": event["event_id"], "source": str(event.get("source", ""))[:100], "at": int(at),
            "reason": reason}


def check_answer(answer, field="answer"):
    """
    A kiosk's ``kiosk_power.last_boot`` answer, checked: ``{"boot_time": int,
    "shutdown": {"event_id", "source", "at", "reason"} or None}``. The top
    master asks the kiosk itself; nothing of the boot event is believed.
    """
    if not isinstance(answer, dict):
        raise RestartsError(f"{field}: expected a mapping, got {type(answer).__name__}")
    boot = int(check_time(answer.get("boot_time"), f"{field}.boot_time"))
    shutdown = answer.get("shutdown")
    if shutdown is not None:
        if not isinstance(shutdown, dict):
            raise RestartsError(f"{field}.shutdown: expected a mapping or null")
        event_id = shutdown.get("event_id")
        if isinstance(event_id, bool) or not isinstance(event_id, int) or not 0 < event_id < 1_000_000:
            raise RestartsError(f"{field}.shutdown.event_id: {fleet_fields.shown(event_id)} is not an event id")
        at = int(check_time(shutdown.get("at"), f"{field}.shutdown.at"))
        source = shutdown.get("source", "")
        if not isinstance(source, str) or fleet_fields.bad_character(source):
            raise RestartsError(f"{field}.shutdown.source: {fleet_fields.shown(source)} is not a source name")
        # the reason shown is ours, from the event id: a kiosk's free text never reaches an operator
        shutdown = {"event_id": event_id, "source": source[:100], "at": at,
                    "reason": EVENT_REASONS.get(event_id, f"event {event_id}")}
    return {"boot_time": boot, "shutdown": shutdown}


# ---------------------------------------------------------------- the wakes the pack sent


def wakes_from_day(day, campus, kiosk):
    """Unix times of the wakes of ``kiosk`` in ``fleet_outbox.Collected.day`` output (``action`` entries)."""
    _name(campus, "campus")
    _name(kiosk, "kiosk")
    if not isinstance(day, dict):
        raise RestartsError("day: expected Collected.day() output")
    out = []
    for item in (day.get(campus) or {}).get("actions", []):
        data = item.get("data") if isinstance(item, dict) else None
        if isinstance(data, dict) and data.get("kiosk") == kiosk and data.get("action") == "wake":
            at = event_time(data.get("at") or item.get("at") or "", _dt.timezone.utc)
            if at is not None:
                out.append(at)
    return sorted(out)


def wakes_from_sweeps(sweeps, kiosk):
    """Unix times of the top-master sweeps (``kiosk_power`` state ``sweeps`` records) that woke ``kiosk``."""
    _name(kiosk, "kiosk")
    if not isinstance(sweeps, list):
        raise RestartsError("sweeps: expected the sweep records (a list)")
    out = []
    for record in sweeps:
        woken = record.get("woken") if isinstance(record, dict) else None
        if isinstance(woken, dict) and any(isinstance(ids, list) and kiosk in ids for ids in woken.values()):
            at = event_time(record.get("ran_at") or record.get("at") or "", _dt.timezone.utc)
            if at is not None:
                out.append(at)
    return sorted(out)


def sent_kiosks(report):
    """
    The kiosks at least one Pi reports having sent a magic packet to, sorted:
    ``report`` is ``kiosk_power.wake``'s return (``fleet_wol.merge_wake_returns``:
    ``{"kiosks": {kiosk: {"campus", "sent_by": {pi: ...}}}}``). A kiosk no Pi
    reached was not woken, so its boot stays unexplained.
    """
    if not isinstance(report, dict) or not isinstance(report.get("kiosks"), dict):
        raise RestartsError("report: expected kiosk_power.wake's return ({kiosks: {...}})")
    out = []
    for kiosk, view in report["kiosks"].items():
        _name(kiosk, "report.kiosks")
        if isinstance(view, dict) and isinstance(view.get("sent_by"), dict) and view["sent_by"]:
            out.append(kiosk)
    return sorted(out)


def collected_since(pis, boot_time):
    """
    True when a Pi of the campus answered a collection at or after
    ``boot_time``: ``pis`` is ``fleet_outbox.Collected.pis(campus)[campus]``
    (``{pi: {"collected_at": ISO 8601, ...}}``). Every live Pi of a campus
    writes the wake it sends before the kiosk boots, so such a collection
    brought it in already: no need to collect again.
    """
    boot_time = check_time(boot_time, "boot_time")
    if not isinstance(pis, dict):
        raise RestartsError("pis: expected {pi: {collected_at, ...}}")
    times = [event_time(info.get("collected_at") or "", _dt.timezone.utc) for info in pis.values()
             if isinstance(info, dict)]
    return any(t is not None and t >= boot_time for t in times)


# ---------------------------------------------------------------- the decision


def decide(boot_time, previous_boot, wakes, expected, shutdown=None, window_s=WAKE_WINDOW_S):
    """
    ``{"verdict": "expected"|"unexpected", "reason": str}`` for a boot at
    ``boot_time`` (Unix seconds):

    - ``previous_boot``: the kiosk's last boot known before (None: none known);
    - ``wakes``: Unix times of the wakes the pack sent this kiosk;
    - ``expected``: the schedule's state at the boot (``on``, ``off`` or
      ``unmanaged``; holds included), None when unknown;
    - ``shutdown``: the reason the kiosk logged (:func:`check_answer`), or None.

    A wake within ``window_s`` before the boot (or :data:`CLOCK_SKEW_S`
    after) makes it expected: the pack woke it. Otherwise it is unexpected:
    a restart while the kiosk should have been on (it was running: its boot
    time jumped), or a boot no wake explains.
    """
    boot_time = check_time(boot_time, "boot_time")
    if previous_boot is not None:
        check_time(previous_boot, "previous_boot")
    if isinstance(wakes, (str, bytes)) or not isinstance(wakes, (list, tuple)):
        raise RestartsError(f"wakes: expected a list of Unix times, got {type(wakes).__name__}")
    for i, wake in enumerate(wakes):
        check_time(wake, f"wakes.{i}")
    if expected not in ("on", "off", "unmanaged", None):
        raise RestartsError(f"expected: {fleet_fields.shown(expected)} is not on, off, unmanaged or null")
    if shutdown is not None and not (isinstance(shutdown, dict) and isinstance(shutdown.get("reason"), str)):
        raise RestartsError("shutdown: expected check_answer()'s shutdown or null")
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not 0 < window_s <= 86400:
        raise RestartsError(f"window_s: {fleet_fields.shown(window_s)} is outside 1-86400 seconds")
    woken = [w for w in wakes if boot_time - window_s <= w <= boot_time + CLOCK_SKEW_S]
    if woken:
        return {"verdict": "expected", "reason": f"woken by the pack at {iso(max(woken))}"}
    why = f"; the kiosk logged {shutdown['reason']}" if shutdown else ""
    if expected == "on" and previous_boot is not None and previous_boot < boot_time - BOOT_JITTER_S:
        return {"verdict": "unexpected",
                "reason": f"restarted while it should have been on (previous boot {iso(previous_boot)}){why}"}
    state = {"on": "on", "off": "off", "unmanaged": "unmanaged", None: "unknown"}[expected]
    return {"verdict": "unexpected",
            "reason": f"booted with no wake from the pack in the {int(window_s) // 60} min before"
                      f" (schedule: {state}){why}"}


# ---------------------------------------------------------------- metrics


def metric_families(rows):
    """
    The families of ``kiosk_restarts.prom`` (``fleet_metrics.render``) from
    ``rows``, :meth:`Restarts.totals`: ``[{"campus", "kiosk", "boots",
    "unexpected", "last_boot"}]``.
    """
    if not isinstance(rows, (list, tuple)):
        raise RestartsError(f"rows: expected a list of totals, got {type(rows).__name__}")
    boots, unexpected, last = [], [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RestartsError(f"rows.{i}: expected a mapping")
        labels = {"campus": _name(row.get("campus"), f"rows.{i}.campus"),
                  "kiosk": _name(row.get("kiosk"), f"rows.{i}.kiosk")}
        for key in ("boots", "unexpected"):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RestartsError(f"rows.{i}.{key}: {fleet_fields.shown(value)} is not a count")
        boots.append((labels, row["boots"]))
        unexpected.append((labels, row["unexpected"]))
        last.append((labels, None if row.get("last_boot") is None else check_time(row["last_boot"],
                                                                                   f"rows.{i}.last_boot")))
    return [
        ("kiosk_boots_total", "counter", "Boots of the kiosk recorded by the top master (one per boot time).", boots),
        ("kiosk_unexpected_restarts_total", "counter",
         "Boots the pack did not cause: no wake before them, or while the kiosk should have been on.", unexpected),
        ("kiosk_last_boot_timestamp_seconds", "gauge", "The kiosk's last recorded boot (Unix time).", last),
    ]


# ---------------------------------------------------------------- the top master's store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS boots (
    kiosk TEXT NOT NULL, boot INTEGER NOT NULL, campus TEXT NOT NULL, verdict TEXT NOT NULL,
    reason TEXT NOT NULL, shutdown TEXT, recorded_at REAL NOT NULL, PRIMARY KEY (kiosk, boot));
CREATE TABLE IF NOT EXISTS totals (
    campus TEXT NOT NULL, kiosk TEXT NOT NULL, boots INTEGER NOT NULL, unexpected INTEGER NOT NULL,
    last_boot INTEGER NOT NULL, PRIMARY KEY (campus, kiosk));
CREATE TABLE IF NOT EXISTS wakes (
    kiosk TEXT NOT NULL, at INTEGER NOT NULL, source TEXT NOT NULL, PRIMARY KEY (kiosk, at, source));
"""


class Restarts:
    """
    The top master's record of kiosk boots (:func:`store_path`):
    ``boots`` (one row per kiosk and boot time, kept :data:`KEEP_BOOTS_S`),
    ``totals`` (the counters, never lowered) and ``wakes`` (the wakes the top
    master sent itself, kept :data:`KEEP_WAKES_S`). Each write is one ``BEGIN
    IMMEDIATE`` transaction, so two reactor threads handling the copies of one
    boot event (one per Pi) record it once.
    """

    def __init__(self, path):
        if not isinstance(path, str) or not os.path.isabs(path) or fleet_fields.bad_character(path):
            raise RestartsError(f"path: {fleet_fields.shown(path)} is not an absolute path")
        self.path = path

    @contextlib.contextmanager
    def _conn(self):
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # created 0600 before SQLite opens it
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                                 0o600))
            conn = sqlite3.connect(self.path, timeout=WAIT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise RestartsError(f"store: cannot open {self.path} ({exc})") from None
        try:
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                        raise RestartsError(f"store: {self.path} cannot use WAL")
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.executescript(_SCHEMA)
                    break
                except sqlite3.OperationalError as exc:
                    # a new store set up by two threads at once: switching to WAL answers "locked" at once,
                    # without SQLite's busy timeout; try again until WAIT_S
                    if "locked" in str(exc) and time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    raise RestartsError(f"store: {self.path} is not a usable database ({exc}); move it aside") \
                        from None
                except sqlite3.Error as exc:
                    raise RestartsError(f"store: {self.path} is not a usable database ({exc}); move it aside") \
                        from None
            yield conn
        except sqlite3.Error as exc:
            raise RestartsError(f"store: {self.path}: {exc}") from None
        finally:
            conn.close()

    @staticmethod
    def _same(conn, kiosk, boot):
        return conn.execute("SELECT boot, verdict, reason FROM boots WHERE kiosk = ? AND boot BETWEEN ? AND ?"
                            " ORDER BY ABS(boot - ?) LIMIT 1",
                            (kiosk, boot - BOOT_JITTER_S, boot + BOOT_JITTER_S, boot)).fetchone()

    def known(self, kiosk, boot):
        """``{"boot", "verdict", "reason"}`` of the recorded boot of ``kiosk`` at ``boot`` (give or take :data:`BOOT_JITTER_S`), or None."""
        _name(kiosk, "kiosk")
        boot = int(check_time(boot, "boot"))
        with self._conn() as conn:
            row = self._same(conn, kiosk, boot)
        return None if row is None else {"boot": row[0], "verdict": row[1], "reason": row[2]}

    def record(self, campus, kiosk, boot, wakes, expected, shutdown=None, now=None, after=None):
        """
        Decide (:func:`decide`, against the kiosk's last boot recorded before)
        and record the boot of ``kiosk`` at ``boot``, once: a boot already
        recorded (give or take :data:`BOOT_JITTER_S`) is answered as it was,
        with ``duplicate: True`` (``verdict`` None when its row was pruned and
        only the kiosk's ``last_boot`` in the totals knows it). ``after(totals)``, when given, runs inside
        the transaction with :meth:`totals` (the textfile is written there, so
        an older count never overwrites a newer file). Returns ``{"boot",
        "verdict", "reason", "previous_boot", "duplicate"}``.
        """
        _name(campus, "campus")
        _name(kiosk, "kiosk")
        boot = int(check_time(boot, "boot"))
        now = time.time() if now is None else check_time(now, "now")
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
            try:
                row = self._same(conn, kiosk, boot)
                if row is not None:
                    conn.execute("COMMIT")
                    return {"boot": row[0], "verdict": row[1], "reason": row[2], "previous_boot": None,
                            "duplicate": True}
                # its row pruned (a kiosk up longer than KEEP_BOOTS_S whose minion restarted): the totals still
                # hold the boot, so it is not counted again; its verdict went with the row
                last = conn.execute("SELECT last_boot FROM totals WHERE kiosk = ? AND last_boot BETWEEN ? AND ?",
                                    (kiosk, boot - BOOT_JITTER_S, boot + BOOT_JITTER_S)).fetchone()
                if last is not None:
                    conn.execute("COMMIT")
                    return {"boot": last[0], "verdict": None, "previous_boot": None, "duplicate": True,
                            "reason": f"recorded already; its record is older than {KEEP_BOOTS_S // 86400} days"}
                prev = conn.execute("SELECT MAX(boot) FROM boots WHERE kiosk = ? AND boot < ?",
                                    (kiosk, boot)).fetchone()[0]
                if prev is None:  # the boots table is pruned; the totals keep the last boot
                    last = conn.execute("SELECT last_boot FROM totals WHERE kiosk = ? AND last_boot < ?",
                                        (kiosk, boot)).fetchone()
                    prev = last[0] if last else None
                verdict = decide(boot, prev, wakes, expected, shutdown)
                conn.execute("INSERT INTO boots VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (kiosk, boot, campus, verdict["verdict"], verdict["reason"],
                              json.dumps(shutdown) if shutdown else None, now))
                unexpected = 1 if verdict["verdict"] == "unexpected" else 0
                conn.execute("INSERT INTO totals VALUES (?, ?, 1, ?, ?) ON CONFLICT (campus, kiosk) DO UPDATE SET"
                             " boots = boots + 1, unexpected = unexpected + excluded.unexpected,"
                             " last_boot = MAX(last_boot, excluded.last_boot)", (campus, kiosk, unexpected, boot))
                conn.execute("DELETE FROM boots WHERE recorded_at < ?", (now - KEEP_BOOTS_S,))
                if after is not None:
                    after(self._totals(conn, None, None))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return dict(verdict, boot=boot, previous_boot=prev, duplicate=False)

    @staticmethod
    def _totals(conn, campus, kiosk):
        rows = conn.execute("SELECT campus, kiosk, boots, unexpected, last_boot FROM totals"
                            " WHERE (? IS NULL OR campus = ?) AND (? IS NULL OR kiosk = ?) ORDER BY campus, kiosk",
                            (campus, campus, kiosk, kiosk)).fetchall()
        return [{"campus": c, "kiosk": k, "boots": b, "unexpected": u, "last_boot": last}
                for c, k, b, u, last in rows]

    def totals(self, campus=None, kiosk=None):
        """``[{"campus", "kiosk", "boots", "unexpected", "last_boot"}]`` (the counters), optionally of one campus/kiosk."""
        if campus is not None:
            _name(campus, "campus")
        if kiosk is not None:
            _name(kiosk, "kiosk")
        with self._conn() as conn:
            return self._totals(conn, campus, kiosk)

    def unexpected(self, campus=None, kiosk=None, limit=20):
        """The last ``limit`` unexpected restarts, newest first: ``[{"campus", "kiosk", "boot", "at", "reason", "shutdown"}]``."""
        if campus is not None:
            _name(campus, "campus")
        if kiosk is not None:
            _name(kiosk, "kiosk")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SHOWN:
            raise RestartsError(f"limit: {fleet_fields.shown(limit)} is outside 1-{MAX_SHOWN}")
        with self._conn() as conn:
            rows = conn.execute("SELECT campus, kiosk, boot, reason, shutdown FROM boots WHERE verdict = 'unexpected'"
                                " AND (? IS NULL OR campus = ?) AND (? IS NULL OR kiosk = ?)"
                                " ORDER BY boot DESC, kiosk LIMIT ?", (campus, campus, kiosk, kiosk, limit)).fetchall()
        return [{"campus": c, "kiosk": k, "boot": b, "at": iso(b), "reason": r,
                 "shutdown": json.loads(s) if s else None} for c, k, b, r, s in rows]

    def record_wakes(self, kiosks, at, source="kiosk_power.wake", now=None):
        """
        Record that the top master woke ``kiosks`` (a list of ids) at ``at``
        (Unix seconds), sent by ``source`` (a name, e.g. the runner), once per
        (kiosk, second, source), and prune the wakes older than
        :data:`KEEP_WAKES_S` before ``now``. Returns the number of new rows.
        """
        if isinstance(kiosks, (str, bytes)) or not isinstance(kiosks, (list, tuple)):
            raise RestartsError(f"kiosks: expected a list of kiosk ids, got {type(kiosks).__name__}")
        for i, kiosk in enumerate(kiosks):
            _name(kiosk, f"kiosks.{i}")
        at = int(check_time(at, "at"))
        _name(source, "source")
        now = time.time() if now is None else check_time(now, "now")
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                added = sum(conn.execute("INSERT OR IGNORE INTO wakes VALUES (?, ?, ?)",
                                         (kiosk, at, source)).rowcount for kiosk in sorted(set(kiosks)))
                conn.execute("DELETE FROM wakes WHERE at < ?", (now - KEEP_WAKES_S,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added

    def wakes(self, kiosk, since, until):
        """Unix times of the recorded wakes of ``kiosk`` from ``since`` to ``until`` (inclusive), oldest first."""
        _name(kiosk, "kiosk")
        since = check_time(since, "since")
        until = check_time(until, "until")
        if until < since:
            raise RestartsError(f"until: {fleet_fields.shown(until)} is before since")
        with self._conn() as conn:
            rows = conn.execute("SELECT DISTINCT at FROM wakes WHERE kiosk = ? AND at BETWEEN ? AND ? ORDER BY at",
                                (kiosk, since, until)).fetchall()
        return [row[0] for row in rows]
