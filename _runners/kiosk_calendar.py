"""
Campus calendars from the top master (``salt-run kiosk_calendar.*``;
contract: docs/power.md, "Campus calendars").

Each campus's Pis run their day from one signed document, the calendar
(``_utils/fleet_calendar.py``): the campus's inventory slice, its schedule
and its holds. ``publish`` compiles it per campus from this master's fleet
data, the schedule in force and the operators' holds (what ``kiosk_power``
keeps), signs it with the release signing key (``kiosk_release:signing_key``)
only when its content changed, and sends it to the campus's Pi minions
(``kiosk_campus.calendar``), one job per campus, all campuses at once; a Pi
that reports an older serial gets it again. The master schedule runs it every
minute; ``kiosk_power.hold``/``unhold``/``sync_schedules`` run it at once.

State: ``<cachedir>/kiosk_calendar/state.json`` (digest, serial and what each
Pi answered, per campus) and ``<cachedir>/kiosk_calendar/<campus>.json`` (the
signed calendar last published), both 0600, written atomically.
"""

import concurrent.futures
import contextvars
import datetime as _dt
import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_calendar,
        fleet_fields,
        fleet_inventory,
        fleet_outbox,
        fleet_runner,
        fleet_sign,
        fleet_state,
        fleet_store,
        fleet_sweep,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_calendar
    import fleet_fields
    import fleet_inventory
    import fleet_outbox
    import fleet_runner
    import fleet_sign
    import fleet_state
    import fleet_store
    import fleet_sweep

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_calendar"

STATE_DIR = "kiosk_calendar"
STATE_FILE = "state.json"
STATE_DEFAULTS = {"campuses": {}}
LOCK_WAIT_S = 120
DEFAULT_TIMEOUT = 30
RELEASE_CONFIG = "kiosk_release"  # the signing key: kiosk_release:signing_key, as the release pins
PI_FUNCTION = "kiosk_campus.calendar"
COLLECTED = ("kiosk_outbox", "collected.db")  # what the outbox collection heard from each Pi
MAX_PARALLEL_JOBS = 32
ERRORS = (fleet_fields.FleetError,)


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- load, store


def _dir():
    return os.path.join(__opts__["cachedir"], STATE_DIR)


def _store():
    return fleet_state.Store(_dir(), STATE_FILE, STATE_DEFAULTS, LOCK_WAIT_S, fleet_calendar.CalendarError)


def _doc_path(campus):
    return os.path.join(_dir(), f"{campus}.json")


def _stored_doc(campus):
    """The signed calendar last published for ``campus``, or None (missing or unreadable: sign anew)."""
    try:
        return fleet_state.read_json(_doc_path(campus), fleet_calendar.CalendarError, None)
    except fleet_calendar.CalendarError as exc:
        log.warning("kiosk_calendar: %s; a new calendar is signed", exc)
        return None


def _campuses(inventory, campus):
    known = sorted(inventory["campuses"])
    if campus is None or campus == "":
        return known
    asked = fleet_inventory.names(campus, "campus")
    unknown = [c for c in asked if c not in known]
    if unknown:
        raise fleet_runner.RunnerError(f"campus: unknown campus {', '.join(unknown)} (inventory has "
                                       f"{', '.join(known)})", field="campus")
    return sorted(set(asked))


def _flag(value, field):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", "none", ""):
        return False
    raise fleet_runner.RunnerError(f"{field}: {fleet_fields.shown(value)} is not True or False", field=field)


def _reported():
    """``{pi: {"serial", "at"}}`` the outbox collection last heard (none when it never ran)."""
    path = os.path.join(__opts__["cachedir"], *COLLECTED)
    if not os.path.exists(path):
        return {}
    try:
        # since now: only the Pis' rows, not the day's entries
        day = fleet_outbox.Collected(path).day(since=_dt.datetime.now(_dt.timezone.utc))
    except (ValueError, OSError) as exc:  # a damaged collection must not stop calendars
        log.warning("kiosk_calendar: %s not read (%s)", path, exc)
        return {}
    return {pi: {"serial": info.get("serial"), "at": info.get("collected_at")}
            for campus in day.values() for pi, info in (campus.get("pis") or {}).items()}


class _Signer:
    """The signing key, read at its first use in a run (never shown), and the fleet's verify keys."""

    def __init__(self, data):
        self._data = data
        self._key = None

    def key(self):
        if self._key is None:
            path = fleet_runner.config(__opts__, RELEASE_CONFIG).get("signing_key")
            self._key = fleet_store.read_signing_key(path)
        return self._key

    def verify_keys(self):
        release = self._data.get(fleet_inventory.RELEASE_KEY)
        return fleet_sign.verify_keys(release.get("verify_key") if isinstance(release, dict) else None)


# ---------------------------------------------------------------- compile, send


def _compile(data, inventory, schedule, holds, campuses, force, now, reported):
    """
    Under the state lock: per campus the calendar to send, signed anew (new
    serial) only when its content changed, ``force``, or the last one is
    gone. Returns ``{campus: (doc, changed)}``; signing failures per campus
    in ``{campus: error}``.
    """
    signer = _Signer(data)
    out, errors = {}, {}
    with _store().locked() as state:
        for campus in campuses:
            record = state["campuses"].get(campus) or {}
            try:
                unsigned = fleet_calendar.build(inventory, schedule, holds, campus, 0, int(now))
                digest = fleet_calendar.content_digest(unsigned)
                doc = _stored_doc(campus)
                if (not force and doc is not None and record.get("digest") == digest
                        and doc.get("serial") == record.get("serial")):
                    out[campus] = (doc, False)
                    continue
                # above every serial a Pi of the campus was seen holding: a Pi keeps only newer ones
                floor = fleet_calendar.highest_serial(record, reported, fleet_inventory.pis_of(inventory, campus))
                serial = fleet_calendar.next_serial(floor, now)
                doc = fleet_calendar.sign(dict(unsigned, serial=serial), signer.key())
                # a key the Pis cannot verify with would be refused by every Pi: say so here
                fleet_calendar.verify(doc, signer.verify_keys(), campus)
                fleet_state.write_json_atomic(_doc_path(campus), doc, mode=0o600)
            except ERRORS as exc:
                errors[campus] = str(exc)
                continue
            except OSError as exc:
                errors[campus] = f"{_doc_path(campus)}: cannot write ({exc.strerror})"
                continue
            state["campuses"][campus] = dict(record, digest=digest, serial=serial, signed_at=int(now),
                                             pis=record.get("pis") or {})
            out[campus] = (doc, True)
    return out, errors


def _call(targets, fun, timeout, kwarg):
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        got = fleet_runner.call(client, targets, fun, kwarg=kwarg, timeout=timeout)
    if got.conflicting:
        log.warning("kiosk_calendar: %s: conflicting returns from %s (one was forged); counted as silent",
                    fun, ", ".join(got.conflicting))
    return got


def _send(jobs, timeout):
    """``{campus: (pis, kwarg)}`` -> ``{campus: Returns}``: one job per campus, all in flight at once."""
    if not jobs:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), MAX_PARALLEL_JOBS)) as pool:
        # each thread runs in a copy of this context: Salt's loader dunders (__opts__) live in contextvars
        futures = {c: pool.submit(contextvars.copy_context().run, _call, pis, PI_FUNCTION, timeout, kwarg)
                   for c, (pis, kwarg) in sorted(jobs.items())}
        return {c: future.result() for c, future in futures.items()}


def _pi_answer(ret):
    """A Pi's ``kiosk_campus.calendar`` answer -> ``(serial or None, stored, error or None)``."""
    if not isinstance(ret, dict):
        return None, False, f"unexpected answer {fleet_fields.shown(ret)}"
    serial = ret.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int):
        serial = None
    if ret.get("result") is False:
        return serial, False, str(ret.get("error") or ret.get("comment") or "result: False")
    return serial, bool(ret.get("stored")), None


def _record(campuses, sent, now):
    """Store what each Pi answered: its serial (never lowered by an older answer of the same run), errors."""
    stamp = fleet_sweep.iso(_dt.datetime.fromtimestamp(now, _dt.timezone.utc))
    with _store().locked() as state:
        for campus, got in sent.items():
            record = state["campuses"].setdefault(campus, {})
            pis = record.setdefault("pis", {})
            for pi, ret in got.returns.items():
                serial, _, error = _pi_answer(ret)
                entry = {"serial": serial, "at": stamp}
                if error:
                    entry["error"] = error
                pis[pi] = entry
        return {c: dict(state["campuses"].get(c) or {}) for c in campuses}


def _report(campus, doc, changed, targets, got, record):
    serial = doc["serial"]
    pis = {}
    for pi, info in sorted((record.get("pis") or {}).items()):
        pis[pi] = dict(info, current=info.get("serial") == serial)
    answered = {}
    for pi, ret in (got.returns.items() if got else ()):
        stored_serial, stored, error = _pi_answer(ret)
        answered[pi] = {"serial": stored_serial, "stored": stored, **({"error": error} if error else {})}
    refused = sorted(pi for pi, a in answered.items() if "error" in a)
    current = sorted(pi for pi, info in pis.items() if info["current"])
    ret = {"serial": serial, "signed_at": doc.get("signed_at"), "changed": changed, "digest":
           fleet_calendar.content_digest(doc), "sent_to": targets, "answered": answered,
           "silent": list(got.silent) if got else [], "refused": refused, "current": current, "pis": pis}
    if refused:
        ret["error"] = "; ".join(f"{pi}: {answered[pi]['error']}" for pi in refused)
    if not current:  # a cut link is normal: the campus runs on its last good copy, and we retry each minute
        ret["waiting"] = (f"no Pi of {campus} holds calendar {serial} yet (Pis silent: "
                          f"{', '.join(ret['silent']) or 'none'}); sent again next run")
    return ret


# ---------------------------------------------------------------- runners


def publish(campus=None, force=False, timeout=DEFAULT_TIMEOUT):
    """
    Compile, sign (only on a change of content: a new serial) and send each
    campus's calendar to that campus's Pi minions (``kiosk_campus.calendar``),
    one job per campus, all at once. Unchanged calendars go only to Pis that
    have not confirmed the current serial (silent last time, refused it, or
    reporting an older one to the outbox collection). ``force=True`` signs
    and sends every selected campus's calendar anew.

    Per campus: ``serial``, ``changed``, ``sent_to``, ``answered`` (``{pi:
    {serial, stored}}``), ``silent``, ``refused``, ``current`` (Pis known to
    hold the current serial), ``pis``, and ``waiting`` when no Pi of the
    campus holds its current calendar yet (its link is down: the Pis keep
    running on their last good copy, and it is sent again next run; not a
    failure, as a cut is normal). Exit code 1 when a Pi refused a calendar
    or a calendar could not be signed (no signing key, a key the fleet's
    ``kiosk_release:verify_key`` does not hold).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_calendar.publish
        salt-run kiosk_calendar.publish campus=riverside --out=json
        salt-run kiosk_calendar.publish campus=riverside,hillside force=True timeout=60
    """
    try:
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        force = _flag(force, "force")
        data = fleet_inventory.master_data(__opts__)
        inventory = fleet_inventory.validate(data.get(fleet_inventory.PILLAR_KEY))
        campuses = _campuses(inventory, campus)
        schedule, source = fleet_calendar.schedule_in_force(__opts__["cachedir"], data, inventory)
        holds = fleet_calendar.holds_in_force(__opts__["cachedir"])
        now = time.time()
        reported = _reported()
        docs, errors = _compile(data, inventory, schedule, holds, campuses, force, now, reported)
        state = _store().read()
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    jobs, targets = {}, {}
    for name, (doc, changed) in docs.items():
        pis = fleet_inventory.pis_of(inventory, name)
        record = state["campuses"].get(name) or {}
        known = {pi: info for pi, info in (record.get("pis") or {}).items() if "error" not in info}
        targets[name] = pis if changed else fleet_calendar.lagging(pis, doc["serial"], known, reported)
        if targets[name]:
            jobs[name] = (targets[name], {"calendar": doc})
    try:
        sent = _send(jobs, timeout)
        records = _record(campuses, sent, time.time())
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    report = {name: _report(name, doc, changed, targets[name], sent.get(name), records.get(name) or {})
              for name, (doc, changed) in docs.items()}
    for name, error in errors.items():
        report[name] = {"error": error, "changed": None, "sent_to": []}
    failing = sorted(c for c, r in report.items() if "error" in r)
    ret = {"result": not failing, "schedule": source, "campuses": report}
    if failing:
        ret["error"] = "; ".join(f"{c}: {report[c]['error']}" for c in failing)
    return fleet_runner.finish(__context__, ret)


def show(campus=None, full=False):
    """
    The calendar last published for ``campus`` (its serial, signing time,
    kiosk count, holds, digest) and what each of its Pis last answered;
    ``full=True`` adds the signed document itself. Reads state only.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_calendar.show campus=riverside
        salt-run kiosk_calendar.show campus=riverside full=True --out=json
    """
    try:
        full = _flag(full, "full")
        inventory = fleet_inventory.master_inventory(__opts__)
        if not campus or len(fleet_inventory.names(campus, "campus")) != 1:
            raise fleet_runner.RunnerError("campus: name one campus (campus=riverside)", field="campus")
        name = _campuses(inventory, campus)[0]
        record = _store().read()["campuses"].get(name) or {}
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    doc = _stored_doc(name)
    if doc is None:
        return fleet_runner.fail(__context__, f"campus: no calendar published for {name} yet "
                                              f"(salt-run kiosk_calendar.publish campus={name})")
    pis = {pi: dict(info, current=info.get("serial") == doc.get("serial"))
           for pi, info in sorted((record.get("pis") or {}).items())}
    ret = {"result": True, "campus": name, "calendar": fleet_calendar.summary(doc), "pis": pis,
           "missing": sorted(set(fleet_inventory.pis_of(inventory, name)) - set(pis))}
    if full:
        ret["doc"] = doc
    return fleet_runner.finish(__context__, ret)
