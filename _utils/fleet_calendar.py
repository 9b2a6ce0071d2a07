"""
The campus calendar: everything a campus's Pis need to run their day without
the top master, in one signed document. Pure, except :func:`store` and
:func:`load` (one JSON file, written atomically).

::

    {"kind": "calendar", "campus": "riverside",
     "serial": 1801234567,             # newest wins; follows the clock (next_serial)
     "signed_at": 1801234567,          # epoch seconds, the top master's clock
     "inventory": {"campuses": {"riverside": {...}}},   # fleet_inventory.validate() of that campus only
     "schedule": {"campuses": {"riverside": {...}}},    # fleet_schedule.validate() of that campus, or None
     "holds": {"kiosk-riverside-10": {...}},            # fleet_sweep hold records of that campus
     "signature": {"alg": "ed25519", "value": "..."}}

Signed like the release pins (``fleet_sign.sign`` with the top master's
``kiosk_release:signing_key``), verified with the keys the Pis already hold
(``kiosk_release:verify_key``). A serial may run at most
``fleet_sign.MAX_SERIAL_AHEAD`` seconds ahead of its own signing time, as a
pin's: a forged or runaway serial would otherwise outrank every later
calendar. :func:`content_digest` ignores serial, signing time and signature,
so the top master publishes only when the content changed.

Every refusal raises :class:`CalendarError` naming the field
(``calendar.serial: ...``); key material never appears in a message.
"""

import copy
import datetime as _dt
import hashlib
import json
import math
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_fields,
        fleet_inventory,
        fleet_lock,
        fleet_release,
        fleet_schedule,
        fleet_sign,
        fleet_state,
        fleet_sweep,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_inventory
    import fleet_lock
    import fleet_release
    import fleet_schedule
    import fleet_sign
    import fleet_state
    import fleet_sweep

KIND = "calendar"
FILE = "calendar.json"
LOCK = "calendar.lock"
KEYS = ("kind", "campus", "serial", "signed_at", "inventory", "schedule", "holds")
UNSIGNED_KEYS = ("serial", "signed_at", "signature")  # what content_digest leaves out
LOCK_WAIT_S = 30
_UTC = _dt.timezone.utc


class CalendarError(fleet_fields.FieldErrors):
    """A calendar that is not signed by our keys, not this campus's, or not well formed; a bad argument."""


def _campus(value, field="campus"):
    if not isinstance(value, str) or not fleet_fields.NAME.match(value):
        raise CalendarError(f"{field}: {fleet_fields.shown(value)} is not a campus name", field=field)
    return value


def _whole(value, field):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CalendarError(f"{field}: {fleet_fields.shown(value)} is not a whole number >= 0", field=field)
    return value


def next_serial(previous, now):
    """The serial of a new calendar: ``max(previous + 1, now)`` (follows the clock, always grows)."""
    previous = 0 if previous is None else _whole(previous, "previous")
    # math.isfinite on a huge int overflows: only floats can be inf/nan
    if (isinstance(now, bool) or not isinstance(now, (int, float))
            or (isinstance(now, float) and not math.isfinite(now)) or now < 0):
        raise CalendarError(f"now: {fleet_fields.shown(now)} is not epoch seconds", field="now")
    return max(previous + 1, int(now))


# ---------------------------------------------------------------- content


def _inventory(inventory, campus, field):
    """The one-campus inventory ``{"campuses": {campus: ...}}``, validated."""
    if not isinstance(inventory, dict) or not isinstance(inventory.get("campuses"), dict):
        raise CalendarError(f"{field}: expected an inventory {{campuses: ...}}", field=field)
    if campus not in inventory["campuses"]:
        raise CalendarError(f"{field}: campus {campus} is not in the inventory", field=field)
    try:
        return fleet_inventory.validate({"campuses": {campus: inventory["campuses"][campus]}})
    except fleet_inventory.InventoryError as exc:
        raise CalendarError([f"{field}.{e}" for e in exc.errors], field=field) from None


def _schedule(schedule, campus, inventory, field):
    """That campus's part of the normalised schedule, or None when the schedule does not name it."""
    if schedule is None:
        return None
    if isinstance(schedule, fleet_schedule.Schedule):
        schedule = schedule.data
    if not isinstance(schedule, dict):
        raise CalendarError(f"{field}: expected a schedule or None, got {type(schedule).__name__}", field=field)
    campuses = schedule.get("campuses")
    if not isinstance(campuses, dict) or campus not in campuses:
        if campuses is not None and not isinstance(campuses, dict):
            raise CalendarError(f"{field}.campuses: expected a mapping", field=field)
        return None
    try:
        return fleet_schedule.validate({"campuses": {campus: campuses[campus]}}, known_kiosks=inventory)
    except fleet_schedule.ScheduleError as exc:
        raise CalendarError([f"{field}.{e}" for e in exc.errors], field=field) from None


def _holds(holds, campus, inventory, field, now=None):
    """The campus's hold records (``now``: drop those expired by then), checked."""
    if holds is None:
        holds = {}
    if not isinstance(holds, dict):
        raise CalendarError(f"{field}: expected {{kiosk: hold}}, got {type(holds).__name__}", field=field)
    try:
        checked = fleet_sweep.load_state({"holds": holds})["holds"]
    except fleet_sweep.SweepError as exc:
        raise CalendarError(f"{field}: {exc}", field=field) from None
    kiosks = inventory["campuses"][campus]["kiosks"]
    out = {}
    for kiosk, hold in checked.items():
        if hold["campus"] != campus:
            if now is not None:  # building: the state holds every campus's holds
                continue
            raise CalendarError(f"{field}.{kiosk}.campus: {hold['campus']!r} is not {campus}", field=field)
        if kiosk not in kiosks:
            if now is not None:  # a kiosk since removed from the inventory: its hold is moot
                continue
            raise CalendarError(f"{field}.{kiosk}: not a kiosk of campus {campus}", field=field)
        if now is not None and fleet_sweep.parse_instant(hold["until"], f"{field}.{kiosk}.until") <= now:
            continue
        out[kiosk] = copy.deepcopy(hold)
    return out


def build(inventory, schedule, holds, campus, serial, signed_at):
    """
    The unsigned calendar of ``campus`` (see the module docstring) from the
    top master's validated ``inventory`` (the fleet's or one campus's), the
    schedule in force (a ``fleet_schedule.Schedule``, its normalised dict or
    None), the holds ``{kiosk: hold}`` of every campus (others' and those
    expired at ``signed_at`` are left out), a ``serial`` and ``signed_at``
    (epoch seconds).
    """
    campus = _campus(campus)
    serial = _whole(serial, "serial")
    signed_at = _whole(signed_at, "signed_at")
    if serial > signed_at + fleet_sign.MAX_SERIAL_AHEAD:
        raise CalendarError(f"serial: {serial} is more than {fleet_sign.MAX_SERIAL_AHEAD} s ahead of "
                            f"signed_at {signed_at}", field="serial")
    inventory = _inventory(inventory, campus, "inventory")
    now = _dt.datetime.fromtimestamp(signed_at, _UTC)
    return {
        "kind": KIND,
        "campus": campus,
        "serial": serial,
        "signed_at": signed_at,
        "inventory": inventory,
        "schedule": _schedule(schedule, campus, inventory, "schedule"),
        "holds": _holds(holds, campus, inventory, "holds", now=now),
    }


def content_digest(doc):
    """SHA-256 (hex) of what the calendar says, without serial, signing time and signature."""
    if not isinstance(doc, dict):
        raise CalendarError(f"calendar: expected a calendar object, got {type(doc).__name__}", field="calendar")
    body = {k: v for k, v in doc.items() if k not in UNSIGNED_KEYS}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CalendarError(f"calendar: not JSON data ({exc})", field="calendar") from None
    return hashlib.sha256(text.encode()).hexdigest()


def sign(doc, key_pem):
    """``doc`` (from :func:`build`) signed with the Ed25519 private key ``key_pem`` (never shown)."""
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise CalendarError("calendar: expected a calendar from fleet_calendar.build", field="calendar")
    try:
        return fleet_sign.sign(doc, key_pem)
    except fleet_release.ReleaseError as exc:
        raise CalendarError(str(exc), field=fleet_sign.SIGNING_KEY_FIELD) from None


def verify(doc, keys, campus, field="calendar"):
    """
    A calendar a Pi of ``campus`` may act on: signed by one of ``keys``
    (PEMs, as ``kiosk_release:verify_key``), kind ``calendar``, for this
    campus, a serial at most ``fleet_sign.MAX_SERIAL_AHEAD`` s ahead of its
    signing time, and well formed (inventory of that campus only, schedule,
    holds). The signature is checked first: nothing of an unsigned document
    is looked at. Returns ``doc``; raises :class:`CalendarError`.
    """
    campus = _campus(campus)
    if isinstance(doc, str):  # from the CLI
        try:
            doc = json.loads(doc)
        except ValueError:
            raise CalendarError(f"{field}: not JSON", field=field) from None
    if not isinstance(doc, dict):
        raise CalendarError(f"{field}: expected a signed calendar object, got {type(doc).__name__}", field=field)
    try:
        fleet_sign.verify(doc, keys, field)
    except fleet_release.ReleaseError as exc:
        raise CalendarError(str(exc), field=f"{field}.signature") from None
    except (TypeError, ValueError, RecursionError):  # keys of mixed types, bytes: not a JSON document
        raise CalendarError(f"{field}: not a JSON document", field=field) from None
    if doc.get("kind") != KIND:
        raise CalendarError(f"{field}.kind: {fleet_fields.shown(doc.get('kind'))} is not a calendar", field=field)
    if doc.get("campus") != campus:
        raise CalendarError(f"{field}.campus: {fleet_fields.shown(doc.get('campus'))} is not this Pi's campus "
                            f"{campus!r}", field=f"{field}.campus")
    extra = sorted(str(k) for k in doc if k not in KEYS and k != "signature")
    if extra:
        raise CalendarError(f"{field}: unknown key {', '.join(extra)}", field=field)
    serial = _whole(doc.get("serial"), f"{field}.serial")
    signed_at = _whole(doc.get("signed_at"), f"{field}.signed_at")
    if serial > signed_at + fleet_sign.MAX_SERIAL_AHEAD:
        raise CalendarError(f"{field}.serial: {serial} is more than {fleet_sign.MAX_SERIAL_AHEAD} s ahead of its "
                            f"signing time {signed_at}", field=f"{field}.serial")
    inventory = _inventory(doc.get("inventory"), campus, f"{field}.inventory")
    if len(doc["inventory"]["campuses"]) != 1:
        raise CalendarError(f"{field}.inventory: holds other campuses than {campus}", field=f"{field}.inventory")
    schedule = doc.get("schedule")
    if schedule is not None:
        if not isinstance(schedule, dict) or set(schedule.get("campuses") or {}) != {campus}:
            raise CalendarError(f"{field}.schedule: expected the schedule of {campus} only, or null",
                                field=f"{field}.schedule")
        _schedule(schedule, campus, inventory, f"{field}.schedule")
    if not isinstance(doc.get("holds"), dict):
        raise CalendarError(f"{field}.holds: expected {{kiosk: hold}}", field=f"{field}.holds")
    _holds(doc["holds"], campus, inventory, f"{field}.holds")
    return doc


# ---------------------------------------------------------------- what the Pi runs on


def inventory_of(doc):
    """The calendar's one-campus inventory, validated: what ``fleet_sweep.expect`` takes."""
    campus = _campus(doc.get("campus") if isinstance(doc, dict) else None, "calendar.campus")
    return _inventory(doc.get("inventory"), campus, "calendar.inventory")


def schedule_of(doc):
    """The calendar's schedule compiled (``fleet_schedule.Schedule``), or None: every kiosk unmanaged."""
    inventory = inventory_of(doc)
    schedule = _schedule(doc.get("schedule"), doc["campus"], inventory, "calendar.schedule")
    return None if schedule is None else fleet_schedule.load(schedule)


def holds_of(doc):
    """The calendar's holds ``{kiosk: hold}`` (a copy; ``fleet_sweep`` drops the expired ones)."""
    inventory = inventory_of(doc)
    return _holds(doc.get("holds"), doc["campus"], inventory, "calendar.holds")


def summary(doc):
    """
    What a report shows of a calendar (one this master signed):
    ``{campus, serial, signed_at, kiosks, holds, scheduled, digest}``; None for no calendar.
    """
    if not isinstance(doc, dict):
        return None

    def part(value, key):
        return value.get(key) if isinstance(value, dict) else None

    spec = part(part(doc.get("inventory"), "campuses"), doc.get("campus") if isinstance(doc.get("campus"), str) else "")
    kiosks = part(spec, "kiosks")
    holds = doc.get("holds")
    return {"campus": doc.get("campus"), "serial": doc.get("serial"), "signed_at": doc.get("signed_at"),
            "kiosks": len(kiosks) if isinstance(kiosks, dict) else 0,
            "holds": sorted(str(k) for k in holds) if isinstance(holds, dict) else [],
            "scheduled": doc.get("schedule") is not None, "digest": content_digest(doc)}


# ---------------------------------------------------------------- the top master's side

POWER_DIR = "kiosk_power"  # kiosk_power's folder in the top master's cachedir: synced schedules, holds
SCHEDULES_FILE = "schedules.json"
POWER_STATE_FILE = "state.json"


def schedule_in_force(cachedir, data, inventory):
    """
    ``(schedule, source)`` on the top master: the last good synced copy
    (``<cachedir>/kiosk_power/schedules.json``), else the fleet data's
    ``kiosk_fleet_schedules``, else none (``fleet_sweep.schedule_in_force``).
    What ``kiosk_power`` evaluates and what the calendars carry: one place.
    """
    path = os.path.join(_directory(cachedir), POWER_DIR, SCHEDULES_FILE)
    synced = fleet_state.read_json(path, fleet_sweep.SweepError, None)
    return fleet_sweep.schedule_in_force(synced, data, inventory, path)


def holds_in_force(cachedir):
    """The operators' holds ``{kiosk: hold}`` kept by ``kiosk_power`` (``<cachedir>/kiosk_power/state.json``)."""
    path = os.path.join(_directory(cachedir), POWER_DIR, POWER_STATE_FILE)
    try:
        return fleet_sweep.load_state(fleet_state.read_json(path, fleet_sweep.SweepError, None))["holds"]
    except fleet_sweep.SweepError as exc:
        raise fleet_sweep.SweepError(f"{path}: {exc}; fix or move it aside") from None


def _pis(value, field):
    """A list of Pi ids, checked."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set)):
        raise CalendarError(f"{field}: expected a list of Pi ids, got {type(value).__name__}", field=field)
    for pi in value:
        if not isinstance(pi, str) or not fleet_fields.NAME.match(pi):
            raise CalendarError(f"{field}: {fleet_fields.shown(pi)} is not a Pi id", field=field)
    return sorted(set(value))


def _by_pi(value, field):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CalendarError(f"{field}: expected {{pi: ...}}, got {type(value).__name__}", field=field)
    return value


def _when(value):
    try:
        return fleet_sweep.parse_instant(value)
    except fleet_sweep.SweepError:
        return None


def highest_serial(record, reported, pis):
    """
    The highest serial known for a campus: the last one published
    (``record["serial"]``), any a Pi answered (``record["pis"]``) or reported
    to the outbox collection (``reported``, for ``pis`` only). A new serial
    goes above it, so a top master whose state was lost, or whose clock went
    back, still publishes calendars its Pis take. None when none is known.
    """
    if not isinstance(record, dict):
        raise CalendarError(f"record: expected a mapping, got {type(record).__name__}", field="record")
    pis = _pis(pis, "pis")
    found = [record.get("serial")]
    found += [info.get("serial") for info in _by_pi(record.get("pis"), "record.pis").values() if isinstance(info, dict)]
    found += [info.get("serial") for pi, info in _by_pi(reported, "reported").items()
              if pi in pis and isinstance(info, dict)]
    found = [v for v in found if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
    return max(found) if found else None


def lagging(pis, serial, known, reported=None):
    """
    The Pis of ``pis`` to send the calendar ``serial`` to again: those whose
    newest known serial is older (or unknown). ``known``: ``{pi: {"serial",
    "at"}}`` from this runner's own sends; ``reported``: the same from the
    outbox collection (a Pi reports its serial with its entries). Of the two,
    the later report wins (a Pi reinstalled since it answered has an older
    serial again).
    """
    _whole(serial, "serial")
    pis = _pis(pis, "pis")
    known, reported = _by_pi(known, "known"), _by_pi(reported, "reported")
    out = []
    for pi in pis:
        seen = []
        for report in (known.get(pi), reported.get(pi)):
            held = report.get("serial") if isinstance(report, dict) else False
            if held is None and _when(report.get("at")) is not None:
                seen.append((report, -1))  # a dated report of no calendar at all (its folder was wiped)
            elif isinstance(held, int) and not isinstance(held, bool):
                seen.append((report, held))
        if not seen:
            out.append(pi)
            continue
        epoch = _dt.datetime.min.replace(tzinfo=_UTC)
        _, latest = max(seen, key=lambda pair: _when(pair[0].get("at")) or epoch)
        if latest < serial:
            out.append(pi)
    return sorted(out)


def _kiosks(answers, key):
    """The kiosk ids the Pis' answers list under ``key``, merged (a Pi's odd answer adds nothing)."""
    found = set()
    for ret in answers.values():
        value = ret.get(key) if isinstance(ret, dict) else None
        if isinstance(value, (list, tuple)):
            found.update(k for k in value if isinstance(k, str))
    return sorted(found)


def supervision(campus_pis, answered, failed, silent):
    """
    What ``kiosk_power.sweep`` reports of the campuses' own reconcile runs
    (``kiosk_campus.reconcile`` on each Pi): per campus ``{"pis": {pi:
    answer}, "leaders": [...], "woke": [...], "shut_down": [...], "silent":
    [...], "failed": {pi: reason}}``, plus ``error`` when no Pi of the campus
    answered or a Pi's run failed. Two leaders (a split campus LAN) are
    reported, not an error: the campus's actions are idempotent.
    """
    if not isinstance(campus_pis, dict):
        raise CalendarError(f"campus_pis: expected {{campus: [pi ids]}}, got {type(campus_pis).__name__}",
                            field="campus_pis")
    answered, failed = _by_pi(answered, "answered"), _by_pi(failed, "failed")
    silent = set(_pis(silent or [], "silent"))  # a set: one lookup per Pi, not a list search
    out = {}
    for campus in sorted(campus_pis, key=str):
        _campus(campus, "campus_pis")
        pis = _pis(campus_pis[campus], f"campus_pis.{campus}")
        got = {pi: answered[pi] for pi in pis if pi in answered}
        reasons = {pi: failed[pi] for pi in pis if pi in failed}
        report = {
            "pis": got,
            "leaders": sorted(pi for pi, ret in got.items() if isinstance(ret, dict) and ret.get("leader") is True),
            "woke": _kiosks(got, "woke"),
            "shut_down": _kiosks(got, "shut_down"),
            "silent": sorted(pi for pi in pis if pi in silent),
            "failed": reasons,
        }
        if reasons:
            report["error"] = "; ".join(f"{pi}: {why}" for pi, why in sorted(reasons.items()))
        elif not got:
            report["error"] = (f"no Pi of {campus} answered (Pis silent: {', '.join(report['silent']) or 'none'}); "
                               f"the campus runs on its own calendar meanwhile")
        out[campus] = report
    return out


# ---------------------------------------------------------------- on disk


def _directory(directory):
    if not isinstance(directory, str) or not os.path.isabs(directory) or "\0" in directory:
        raise CalendarError(f"directory: {fleet_fields.shown(directory)} is not an absolute path", field="directory")
    return directory


def _read(directory, keys, campus):
    path = os.path.join(directory, FILE)
    try:
        doc = fleet_state.read_json(path, CalendarError)
    except CalendarError as exc:
        raise CalendarError(f"{exc}", field="calendar") from None
    if doc is None:
        return None
    try:
        return verify(doc, keys, campus, field=path)
    except CalendarError as exc:
        raise CalendarError(f"{exc}; fix or move it aside", field=exc.field) from None


def load(directory, keys, campus):
    """
    The calendar stored in ``directory`` (:data:`FILE`), verified, or None
    when there is none yet. A stored copy that no longer verifies (tampered,
    or its key rotated out of ``keys``) raises :class:`CalendarError` naming
    the file.
    """
    return _read(_directory(directory), keys, _campus(campus))


def store(directory, doc, keys, campus):
    """
    Keep ``doc`` in ``directory`` if it verifies (:func:`verify`) and is
    newer than the stored copy: ``{"stored": bool, "serial": serial now on
    disk, "kept": serial before (None: there was none)}``. An older or equal
    serial is not an error (``stored`` False); a bad calendar raises
    :class:`CalendarError` and the stored copy stays as it was. Written
    atomically (temporary file, fsync, rename), mode 0600, under a lock so a
    calendar from the top master and one from a peer never race.
    """
    directory = _directory(directory)
    campus = _campus(campus)
    doc = verify(doc, keys, campus)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CalendarError(f"directory: cannot create {directory} ({exc.strerror})", field="directory") from None
    busy = CalendarError(f"directory: {os.path.join(directory, LOCK)} stayed locked for {LOCK_WAIT_S} s",
                         field="directory")
    with fleet_lock.exclusive(os.path.join(directory, LOCK), LOCK_WAIT_S, busy):
        try:
            old = _read(directory, keys, campus)
        except CalendarError:
            old = None  # a stored copy that no longer verifies is no reason to refuse a good one
        kept = None if old is None else old["serial"]
        if kept is not None and doc["serial"] <= kept:
            return {"stored": False, "serial": kept, "kept": kept}
        try:
            fleet_state.write_json_atomic(os.path.join(directory, FILE), doc, mode=0o600)
        except (OSError, fleet_state.StateError) as exc:
            raise CalendarError(f"directory: cannot write {FILE} ({exc})", field="directory") from None
    return {"stored": True, "serial": doc["serial"], "kept": kept}
