"""
The power engine: desired state + observed state + holds -> actions, and
the +5/+10/+15 minute verification bookkeeping. Pure: no Salt, no I/O. The
top master's ``kiosk_power`` runners use it, and each campus Pi master's
``kiosk_campus`` reconciler runs the same steps on its calendar's slice of
the inventory (``fleet_campus`` adds the leader and clock gate around it;
nothing here assumes the whole fleet or a top master):

    view = expect(inventory, schedule, state["holds"], now)    # who should be what
    observed = observed_states(...)                            # the Pis' scan + presence (the caller's I/O)
    decision = sweep(view, observed, state["pending"])         # wake / shutdown / nothing, checks
    ... act (the caller's I/O) ...
    state, record = settle(state, view, decision, *acted(decision, wake_report, shutdown_report), pis)
    found = verify_due(state, due_selection(state, now), observed, now)   # checks due, mismatches

``state`` is the stored document (:func:`load_state` checks it); every step
returns a new one and never changes what it is given.

Vocabulary
    *desired*   ``fleet_schedule.desired_states`` decisions (on/off/unmanaged);
    *observed*  what the campus Pis saw with ``kiosk_scan.scan`` (nmap TCP
                connect probe of the kiosk's service port), combined with
                minion presence (the kiosk's minion holds a connection to a
                Pi master of its campus, read from that Pi's kernel TCP
                table: ``fleet_scan.presence``; no job to the kiosks):
                ``on`` when any Pi of its campus saw the port open;
                ``degraded`` when a Pi saw the port closed and the minion
                is connected (powered on, the kiosk app is down: a sweep wakes it
                like an off kiosk when it is due on, verification alerts);
                ``off`` when at least one Pi answered, none saw the port open
                and the minion is not connected; ``unknown`` when no Pi of its
                campus answered, whatever the minion says;
    *hold*      an operator override ``{kiosk, state, until, reason, set_at}``:
                the sweep keeps the kiosk in ``state`` until ``until`` (then the
                hold is ignored, and dropped by :func:`prune_holds`);
    *expected*  the hold's state when a hold is active, else the desired state.

Verification
    Each sweep records, for every kiosk it woke or shut down, checks at +5,
    +10 and +15 minutes (:data:`CHECK_OFFSETS`). A check that finds the kiosk
    in the expected state closes the verification; a kiosk still not in the
    expected state when its *last* check is due is a mismatch
    ``{kiosk, campus, expected, observed, since}`` (``since``: the sweep
    that changed it). Earlier failed checks only wait.

Why the Pis' probe decides
    A kiosk's minion answer is never enough to count a kiosk as on: a
    minion behind a syndic can forge the job return of another minion
    (a ``salt/job/<jid>/ret/<id>`` event, forwarded by the syndic as a
    return), so a tampered kiosk could make a powered-off kiosk answer
    ``test.ping``. Minion presence only tells ``degraded`` from ``off``
    among kiosks a Pi saw with the port closed, and a sweep wakes a
    ``degraded`` kiosk that is due on like an ``off`` one (a magic packet to
    a running PC does nothing), so a forged answer can neither stop a wake
    nor stand in for the probe. Verification also rests on the probe. The
    probe itself is a Pi's job return; the runners drop a Pi that answered
    twice differently (``fleet_runner.call``: ``conflicting``), which catches a
    forgery racing the real answer, not one sent while the Pi is down.

Instants are timezone-aware datetimes in memory and ISO 8601 strings in the
records (so the state file is plain JSON).
"""

import datetime as _dt
from collections import Counter
import hashlib
import json

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_http, fleet_scan, fleet_schedule
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_http
    import fleet_scan
    import fleet_schedule

ON, OFF, UNMANAGED, UNKNOWN = "on", "off", "unmanaged", "unknown"
DEGRADED = "degraded"  # powered on (the minion answers) but the service port is closed
CHECK_OFFSETS = (5, 10, 15)  # minutes after the sweep that changed the kiosk
MAX_HOLD = _dt.timedelta(days=366)
MAX_REASON = 500
PORT_STATES = fleet_scan.PORT_STATES
_NAME = fleet_fields.NAME
_UTC = _dt.timezone.utc


class SweepError(fleet_fields.FleetError):
    """A bad request or record; the message names the field."""


# ---------------------------------------------------------------- input checks


def parse_instant(value, field="at"):
    """An aware datetime from an aware datetime or an ISO 8601 string with offset (``Z`` ok)."""
    if isinstance(value, _dt.datetime):
        instant = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            instant = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise SweepError(f"{field}: {value!r} is not an ISO 8601 instant (e.g. 2027-02-05T07:00:00+08:00)") from None
    else:
        raise SweepError(f"{field}: expected an ISO 8601 instant, got {value!r}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise SweepError(f"{field}: {value!r} has no UTC offset (write e.g. 2027-02-05T07:00:00+08:00 or ...Z)")
    return instant


def iso(instant):
    """ISO 8601, UTC, seconds: the form stored in records."""
    return instant.astimezone(_UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_kiosk(kiosk, inventory, field="kiosk"):
    """The campus of ``kiosk`` (a kiosk of the validated inventory) or SweepError."""
    if not isinstance(kiosk, str) or not _NAME.match(kiosk):
        raise SweepError(f"{field}: {kiosk!r} is not a kiosk id")
    for campus, spec in inventory["campuses"].items():
        if kiosk in spec["kiosks"]:
            return campus
    raise SweepError(f"{field}: {kiosk} is not a kiosk of the inventory")


def check_state(state, field="state"):
    if state is True or state == ON:  # YAML 1.1 reads a bare on as True
        return ON
    if state is False or state == OFF:
        return OFF
    raise SweepError(f"{field}: {state!r} is not on or off")


# ---------------------------------------------------------------- holds


def make_hold(inventory, kiosk, state, until, reason, now):
    """
    A validated hold record. ``until`` must be after ``now`` and at most a
    year ahead; ``reason`` is required (who asked, why), at most 500 characters.
    """
    campus = check_kiosk(kiosk, inventory)
    state = check_state(state)
    until_dt = parse_instant(until, "until")
    now = parse_instant(now, "now")
    if until_dt <= now:
        raise SweepError(f"until: {iso(until_dt)} is not in the future (now {iso(now)})")
    if until_dt - now > MAX_HOLD:
        raise SweepError(f"until: {iso(until_dt)} is more than {MAX_HOLD.days} days ahead")
    if not isinstance(reason, str) or not reason.strip():
        raise SweepError("reason: required (who asked for the hold, and why)")
    if len(reason) > MAX_REASON:
        raise SweepError(f"reason: {len(reason)} characters, at most {MAX_REASON}")
    return {"kiosk": kiosk, "campus": campus, "state": state, "until": iso(until_dt),
            "reason": reason.strip(), "set_at": iso(now)}


def active_holds(holds, now):
    """``{kiosk: hold}`` of the holds still in force at ``now`` (``until`` excluded)."""
    now = parse_instant(now, "now")
    if not isinstance(holds, dict):
        raise SweepError(f"holds: expected {{kiosk: hold}}, got {type(holds).__name__}")
    return {k: h for k, h in holds.items() if parse_instant(h.get("until"), f"holds.{k}.until") > now}


def prune_holds(holds, now):
    """(holds in force, expired holds): what a sweep keeps and what it reports as dropped."""
    active = active_holds(holds, now)
    return active, {k: h for k, h in holds.items() if k not in active}


# ---------------------------------------------------------------- observed state


def observed_states(selection, scan_returns, campus_pis, presence=None):
    """
    Merge the Pis' ``kiosk_scan.scan`` answers with minion presence:
    ``{kiosk: {"state": on|degraded|off|unknown, "seen_by": {pi: port state},
    "minion": bool}}`` for every kiosk of ``selection`` (``{campus: [ids]}``).
    ``presence`` is ``{kiosk: True}`` for the kiosks whose minion is
    connected to a Pi master of their campus (:func:`scan_presence` from
    the scans' ``minion`` flags, or a Pi master's own kernel table).
    Non-dict answers (errors, no return) count as silent.
    """
    presence = presence or {}
    out = {}
    for campus, kiosk_ids in selection.items():
        for kiosk in kiosk_ids:
            seen = {}
            for pi in campus_pis.get(campus, []):
                answer = scan_returns.get(pi)
                if not isinstance(answer, dict) or answer.get("campus") != campus:
                    continue
                entry = (answer.get("kiosks") or {}).get(kiosk)
                if isinstance(entry, dict) and entry.get("state") in PORT_STATES:
                    seen[pi] = entry["state"]
            minion = presence.get(kiosk) is True
            if any(s == "open" for s in seen.values()):
                state = ON
            elif seen:
                state = DEGRADED if minion else OFF
            else:  # no probe: a connected minion alone says nothing of the kiosk app
                state = UNKNOWN
            out[kiosk] = {"state": state, "seen_by": seen, "minion": minion}
    return out


def scan_presence(selection, scan_returns, campus_pis):
    """
    ``{kiosk: True}`` for the kiosks of ``selection`` (``{campus: [ids]}``)
    that any Pi of their campus reports connected to its master
    (``"minion": true`` in its ``kiosk_scan.scan`` answer, read from that
    Pi's kernel TCP table). Only a Pi of the kiosk's own campus, answering
    for that campus, counts; anything else in an answer is no presence.
    """
    out = {}
    for campus, kiosk_ids in selection.items():
        answers = [scan_returns.get(pi) for pi in campus_pis.get(campus, [])]
        entries = [a["kiosks"] for a in answers
                   if isinstance(a, dict) and a.get("campus") == campus and isinstance(a.get("kiosks"), dict)]
        for kiosk in kiosk_ids:
            if any(isinstance(e.get(kiosk), dict) and e[kiosk].get("minion") is True for e in entries):
                out[kiosk] = True
    return out


def pis_report(pis, answered, failed, conflicting=()):
    """
    ``{"answered", "silent"[, "errors"][, "conflicting"]}`` of a scan job to
    ``pis``: a Pi answered when it sent a scan (a mapping); ``silent`` lists
    every other Pi, ``errors`` (``{pi: why}``) those that answered with an
    error, ``conflicting`` those whose two different answers (one forged)
    were both dropped.
    """
    errors = {p: str(why) for p, why in failed.items() if p in pis}
    errors.update({p: f"not a scan: {str(r)[:200]}" for p, r in answered.items() if p in pis and not isinstance(r, dict)})
    done = sorted(p for p in pis if isinstance(answered.get(p), dict))
    report = {"answered": done, "silent": sorted(set(pis) - set(done))}
    if errors:
        report["errors"] = errors
    if conflicting:
        report["conflicting"] = sorted(conflicting)
    return report


# ---------------------------------------------------------------- actions


def expected_states(desired, holds, now):
    """
    ``{kiosk: {"campus", "state", "why"}}`` from ``{campus: {kiosk: decision}}``
    and the holds: an active hold wins over the schedule.
    """
    active = active_holds(holds, now)
    out = {}
    for campus, decisions in desired.items():
        for kiosk, decision in decisions.items():
            hold = active.get(kiosk)
            if hold is not None:
                out[kiosk] = {"campus": campus, "state": hold["state"],
                              "why": f"hold until {hold['until']}: {hold['reason']}"}
            else:
                out[kiosk] = {"campus": campus, "state": decision["state"],
                              "why": f"{decision['priority']} rule {decision['rule']}"}
    return out


def plan_actions(desired, observed, holds, now, pending=None):
    """
    What a sweep does: ``{"wake": {campus: [ids]}, "shutdown": {campus: [ids]},
    "nothing": {kiosk: reason}, "expected": {kiosk: {...}}}``.

    Wake a kiosk expected on and observed off or ``degraded`` (the minion's
    answer that makes it degraded may be forged, and a magic packet to a
    running PC is harmless); shut down one expected off and observed on or
    ``degraded``; leave alone unmanaged kiosks, kiosks already right, kiosks
    no Pi could observe (``unknown``: nothing to act on safely) and kiosks
    whose earlier change to the same expected state is still being verified
    (``pending``: a kiosk takes minutes to boot; a sweep every minute must not
    wake it again and restart its +5/+10/+15 checks).
    """
    expected = expected_states(desired, holds, now)
    return dict(_actions(expected, observed, pending or {}), expected=expected)


def _actions(expected, observed, pending):
    wake, shutdown, nothing = {}, {}, {}
    for kiosk in sorted(expected):
        want = expected[kiosk]
        campus = want["campus"]
        seen = (observed.get(kiosk) or {}).get("state", UNKNOWN)
        waiting = pending.get(kiosk)
        if want["state"] == UNMANAGED:
            nothing[kiosk] = "unmanaged"
        elif waiting is not None and waiting.get("expected") == want["state"] and seen != want["state"]:
            nothing[kiosk] = f"turned {want['state']} at {waiting['since']}, verification pending"
        elif seen == UNKNOWN:
            nothing[kiosk] = "not observed (no Pi of the campus answered)"
        elif want["state"] == seen:
            nothing[kiosk] = f"already {seen}"
        elif want["state"] == ON:
            wake.setdefault(campus, []).append(kiosk)
        else:
            shutdown.setdefault(campus, []).append(kiosk)
    return {"wake": wake, "shutdown": shutdown, "nothing": nothing}


# ---------------------------------------------------------------- verification


def schedule_checks(pending, changed, expected, now):
    """
    A new ``pending`` (``{kiosk: record}``) with a verification for every
    kiosk in ``changed`` (``{campus: [ids]}``), checks at now +5/+10/+15 min.
    A kiosk changed again replaces its earlier verification.
    """
    now = parse_instant(now, "now")
    out = dict(pending)
    for campus, kiosk_ids in changed.items():
        for kiosk in kiosk_ids:
            out[kiosk] = {
                "kiosk": kiosk,
                "campus": campus,
                "expected": expected[kiosk]["state"],
                "since": iso(now),
                "checks": check_times(now),
                "done": [],
            }
    return out


def check_times(now):
    """The instants of the checks of a change made at ``now``: +5, +10 and +15 minutes."""
    now = parse_instant(now, "now")
    return [iso(now + _dt.timedelta(minutes=m)) for m in CHECK_OFFSETS]


def due(pending, now):
    """Sorted kiosk ids with a check due at ``now`` not yet run."""
    now = parse_instant(now, "now")
    out = []
    for kiosk, record in pending.items():
        checks = [parse_instant(c, f"pending.{kiosk}.checks") for c in record["checks"]]
        if any(c <= now for c in checks[len(record["done"]):]):
            out.append(kiosk)
    return sorted(out)


def apply_checks(pending, observed, now):
    """
    Run the due checks against ``observed`` (``{kiosk: {"state": ...}}``).
    Returns ``(pending, verified, waiting, mismatches)``: kiosks found in the
    expected state leave ``pending`` (verified); a kiosk not in it keeps
    waiting until its last check, then becomes a mismatch and leaves
    ``pending``. Due checks whose kiosk was not observed count as failed.
    """
    now = parse_instant(now, "now")
    out = dict(pending)
    verified, waiting, mismatches = [], [], []
    for kiosk in due(pending, now):
        record = dict(pending[kiosk])
        checks = record["checks"]
        passed = [c for c in checks if parse_instant(c, "check") <= now]
        seen = (observed.get(kiosk) or {}).get("state", UNKNOWN)
        record["done"] = passed
        record["observed"] = seen
        if seen == record["expected"]:
            del out[kiosk]
            verified.append(kiosk)
        elif len(passed) == len(checks):
            del out[kiosk]
            mismatches.append(mismatch(kiosk, record["campus"], record["expected"], seen, record["since"]))
        else:
            out[kiosk] = record
            waiting.append(kiosk)
    return out, verified, waiting, mismatches


def mismatch(kiosk, campus, expected, observed, since):
    """The payload of a ``kiosk/power/mismatch`` event."""
    return {"kiosk": kiosk, "campus": campus, "expected": expected, "observed": observed, "since": since}


# ---------------------------------------------------------------- the engine: one run
#
# A run of the top master's runners (or, later, of a campus Pi's reconciler) is
# load -> expect -> observe -> decide -> act -> settle. Everything but
# observing and acting is here, on plain data: the inventory (the whole fleet
# or one campus's slice), the compiled schedule, the stored state and what the
# Pis saw. Kiosks outside the inventory given are never touched, and their
# pending checks and holds are kept as they are.

KEEP_RECORDS = 100  # sweeps and mismatches kept in the state
SHOWN_MISMATCHES = 20  # mismatches ``status`` shows
MAX_PLAN_HOURS = 168
STATE_KEYS = (("holds", dict), ("pending", dict), ("sweeps", list), ("mismatches", list))
POWER_STATES = (ON, OFF, DEGRADED, UNKNOWN)


def _shown_key(key):
    return key if isinstance(key, str) and _NAME.match(key) else fleet_fields.shown(key)


def _instant_text(value, field):
    if not isinstance(value, str):
        raise SweepError(f"{field}: expected an ISO 8601 instant, got {fleet_fields.shown(value)}")
    parse_instant(value, field)
    return value


def _check_hold(kiosk, hold, field):
    if not isinstance(hold, dict):
        raise SweepError(f"{field}: expected a hold record, got {fleet_fields.shown(hold)}")
    _instant_text(hold.get("until"), f"{field}.until")
    check_state(hold.get("state"), f"{field}.state")
    for key in ("reason", "campus"):
        if not isinstance(hold.get(key), str):
            raise SweepError(f"{field}.{key}: expected text, got {fleet_fields.shown(hold.get(key))}")


def _check_pending(kiosk, record, field):
    if not isinstance(record, dict):
        raise SweepError(f"{field}: expected a verification record, got {fleet_fields.shown(record)}")
    if not isinstance(record.get("campus"), str):
        raise SweepError(f"{field}.campus: expected a campus name, got {fleet_fields.shown(record.get('campus'))}")
    if record.get("expected") not in (ON, OFF):
        raise SweepError(f"{field}.expected: {fleet_fields.shown(record.get('expected'))} is not on or off")
    _instant_text(record.get("since"), f"{field}.since")
    checks, done = record.get("checks"), record.get("done")
    if not isinstance(checks, list) or not checks:
        raise SweepError(f"{field}.checks: expected a list of instants, got {fleet_fields.shown(checks)}")
    for n, check in enumerate(checks):
        _instant_text(check, f"{field}.checks[{n}]")
    if not isinstance(done, list) or len(done) > len(checks):
        raise SweepError(f"{field}.done: expected at most {len(checks)} checks done, got {fleet_fields.shown(done)}")


def load_state(data):
    """
    The stored state, checked: ``{"holds": {kiosk: hold}, "pending": {kiosk:
    verification}, "sweeps": [record], "mismatches": [mismatch]}`` (missing
    keys are empty). A record of the wrong shape raises :class:`SweepError`
    naming it (``pending.kiosk-east-01.checks[1]: ...``), never a KeyError in
    the middle of a sweep.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SweepError(f"state: expected a JSON object, got {type(data).__name__}")
    out = dict(data)
    for key, kind in STATE_KEYS:
        value = out.setdefault(key, kind())
        if not isinstance(value, kind):
            raise SweepError(f"{key}: expected a JSON {'object' if kind is dict else 'list'}, got {type(value).__name__}")
    for kiosk, hold in out["holds"].items():
        _check_hold(kiosk, hold, f"holds.{_shown_key(kiosk)}")
    for kiosk, record in out["pending"].items():
        _check_pending(kiosk, record, f"pending.{_shown_key(kiosk)}")
    return out


def campus_kiosks(inventory):
    """``{campus: [kiosk ids]}`` of every kiosk of ``inventory`` (the fleet or one campus's slice)."""
    if not isinstance(inventory, dict) or not isinstance(inventory.get("campuses"), dict):
        raise SweepError("inventory: expected a validated inventory ({campuses: ...})")
    return {c: sorted(spec["kiosks"]) for c, spec in inventory["campuses"].items()}


def expect(inventory, schedule, holds, now, selection=None):
    """
    Step 1 of every run: what each kiosk of ``selection`` (default: every
    kiosk of ``inventory``) should be at ``now``. Returns the *view*
    ``{"at", "selection", "desired", "expected", "holds", "expired_holds",
    "managed"}``: ``holds`` those in force (a hold wins over the schedule),
    ``expired_holds`` those to drop, ``managed`` ``{campus: [ids]}`` of the
    kiosks that are not ``unmanaged`` (the only ones a run observes or acts on).
    """
    now = parse_instant(now, "now")
    selection = campus_kiosks(inventory) if selection is None else selection
    desired = fleet_schedule.desired_states(schedule, selection, now)
    active, expired = prune_holds(holds, now)
    expected = expected_states(desired, active, now)
    managed = {}
    for campus, ids in selection.items():
        keep = [k for k in ids if expected[k]["state"] != UNMANAGED]
        if keep:
            managed[campus] = keep
    return {"at": now, "selection": selection, "desired": desired, "expected": expected,
            "holds": active, "expired_holds": expired, "managed": managed}


def sweep(view, observed, pending, no_shutdown=None):
    """
    Step 2 of a sweep: ``{"wake", "shutdown", "nothing", "checks"}`` from the
    view and the observations (see :func:`plan_actions` for the rules);
    ``checks`` are the +5/+10/+15 minute checks each change will get once made.
    ``no_shutdown``: a reason to shut nothing down in this run (e.g. a clock
    not known to be right); the kiosks due off are left alone with it.
    """
    acts = _actions(view["expected"], observed or {}, pending or {})
    if no_shutdown is not None:
        if not isinstance(no_shutdown, str) or not no_shutdown.strip():
            raise SweepError(f"no_shutdown: expected a reason, got {fleet_fields.shown(no_shutdown)}")
        acts["nothing"].update({k: no_shutdown for ids in acts["shutdown"].values() for k in ids})
        acts["shutdown"] = {}
    checks = check_times(view["at"])
    acts["checks"] = {k: list(checks) for part in ("wake", "shutdown") for ids in acts[part].values() for k in ids}
    return acts


def settle(state, view, decision, woken, shut_down, errors, pis, source=None, ran_at=None):
    """
    Step 3 of a sweep, after acting: ``(new state, record)``. ``woken`` are
    the kiosks a Pi sent a magic packet to, ``shut_down`` those whose minion
    accepted: only they get checks (a kiosk no one reached is tried again at
    the next sweep). ``errors`` are the acting errors; a sweep of managed
    kiosks that no Pi answered is an error too. The new state keeps the holds
    in force (expired ones are dropped) and the last :data:`KEEP_RECORDS` sweeps.
    """
    woken, shut_down = set(woken), set(shut_down)
    changed_on = {c: [k for k in ids if k in woken] for c, ids in decision["wake"].items()}
    changed_off = {c: [k for k in ids if k in shut_down] for c, ids in decision["shutdown"].items()}
    errors = list(errors)
    if view["managed"] and not (pis or {}).get("answered"):
        errors.append(f"scan: no Pi answered ({', '.join((pis or {}).get('silent', []))})")
    changed = {}
    for part in (changed_on, changed_off):
        for campus, ids in part.items():
            if ids:
                changed.setdefault(campus, []).extend(ids)
    now = view["at"]
    record = {"at": iso(now), "ran_at": iso(ran_at or now), "schedule": source,
              "woken": changed_on, "shut_down": changed_off, "errors": errors}
    new = dict(state)
    new["pending"] = schedule_checks(state["pending"], changed, view["expected"], now)
    new["holds"] = dict(view["holds"])
    new["sweeps"] = (list(state["sweeps"]) + [record])[-KEEP_RECORDS:]
    return new, record


def acted(decision, wake_report, shutdown_report):
    """
    ``(woken, shut_down, errors)`` from what acting on ``decision`` reported
    (``kiosk_power.wake``/``shutdown`` answers, None when not called): a kiosk
    is woken when a Pi sent it a packet, shut down when its minion accepted.
    """
    woken, shut_down, errors = [], [], []
    if wake_report is not None:
        unreached = set(wake_report.get("unreached", []))
        woken = [k for ids in decision["wake"].values() for k in ids if k not in unreached]
        errors += [f"wake: {wake_report['error']}"] if wake_report.get("error") else []
    if shutdown_report is not None:
        accepted = set(shutdown_report.get("accepted", []))
        shut_down = [k for ids in decision["shutdown"].values() for k in ids if k in accepted]
        errors += [f"shutdown: {shutdown_report['error']}"] if shutdown_report.get("error") else []
    return woken, shut_down, errors


def sweep_answer(view, decision, record, observed, pis, state):
    """What ``kiosk_power.sweep`` answers (besides the wake/shutdown reports), from the settled run."""
    changed = {k for part in (record["woken"], record["shut_down"]) for ids in part.values() for k in ids}
    answer = {
        "result": not record["errors"],
        "at": record["at"],
        "schedule": record["schedule"],
        "wake": decision["wake"],
        "shutdown": decision["shutdown"],
        "nothing": decision["nothing"],
        "observed": {k: v["state"] for k, v in observed.items()},
        "pis": pis,
        "verifications": {k: state["pending"][k]["checks"] for k in sorted(changed)},
        "holds": sorted(view["holds"]),
        "expired_holds": sorted(view["expired_holds"]),
    }
    if record["errors"]:
        answer["error"] = "; ".join(record["errors"])
    return answer


def due_selection(state, now, inventory=None):
    """``{campus: [ids]}`` of the kiosks with a check due at ``now`` (of ``inventory`` only, when given)."""
    mine = None if inventory is None else {k for ids in campus_kiosks(inventory).values() for k in ids}
    selection = {}
    for kiosk in due(state["pending"], now):
        if mine is None or kiosk in mine:
            selection.setdefault(state["pending"][kiosk]["campus"], []).append(kiosk)
    return selection


def verify_due(state, selection, observed, now):
    """
    The due checks of the kiosks in ``selection`` (from :func:`due_selection`)
    against ``observed``: ``{"state", "checked", "verified", "waiting",
    "mismatches"}`` (rules: :func:`apply_checks`). Mismatches join the state's
    last :data:`KEEP_RECORDS`.
    """
    wanted = {k for ids in selection.values() for k in ids}
    mine = {k: r for k, r in state["pending"].items() if k in wanted}
    kept, verified, waiting, mismatches = apply_checks(mine, observed, now)
    new = dict(state)
    new["pending"] = {k: r for k, r in state["pending"].items() if k not in wanted}
    new["pending"].update(kept)
    new["mismatches"] = (list(state["mismatches"]) + mismatches)[-KEEP_RECORDS:]
    return {"state": new, "checked": sorted(wanted), "verified": sorted(verified), "waiting": sorted(waiting),
            "mismatches": mismatches}


def verify_now(state, view, observed):
    """
    An explicit check of the managed kiosks of ``view``: each kiosk not in
    its expected state is a mismatch, ``since`` the check itself. Same
    answer as :func:`verify_due` (``waiting`` is always empty).
    """
    since = iso(view["at"])
    mismatches, verified = [], []
    for campus, ids in view["managed"].items():
        for kiosk in ids:
            want = view["expected"][kiosk]["state"]
            seen = (observed.get(kiosk) or {}).get("state", UNKNOWN)
            if seen == want:
                verified.append(kiosk)
            else:
                mismatches.append(mismatch(kiosk, campus, want, seen, since))
    new = dict(state)
    new["mismatches"] = (list(state["mismatches"]) + mismatches)[-KEEP_RECORDS:]
    return {"state": new, "checked": sorted(k for ids in view["managed"].values() for k in ids),
            "verified": sorted(verified), "waiting": [], "mismatches": mismatches}


def verify_verdict(checked, mismatches, pis, alert_errors=()):
    """``(result, error or None)`` of a verify: mismatches fail it, and so does no Pi answering a scan."""
    if mismatches:
        error = "not in the expected state: " + ", ".join(
            f"{m['kiosk']} (expected {m['expected']}, observed {m['observed']})" for m in mismatches)
        if alert_errors:
            error += "; alerts not posted: " + "; ".join(alert_errors)
        return False, error
    if checked and not (pis or {}).get("answered"):
        return False, f"scan: no Pi answered ({', '.join((pis or {}).get('silent', []))})"
    return True, None


def verify_answer(found, observed, pis, now, explicit, posted, alert_errors, fired, tag):
    """What ``kiosk_power.verify`` answers, from the engine's ``found`` and the alerts posted and events fired."""
    result, error = verify_verdict(found["checked"], found["mismatches"], pis, alert_errors)
    answer = {
        "result": result,
        "at": iso(now),
        "mode": "explicit" if explicit else "due",
        "events": {"tag": tag, "kiosks": fired},
        "alerts": {"posted": posted, "errors": alert_errors},
        "observed": {k: v["state"] for k, v in observed.items()},
        "pis": pis,
        **{k: found[k] for k in ("checked", "verified", "waiting", "mismatches")},
    }
    if error:
        answer["error"] = error
    return answer


def plan_kiosks(view, schedule, hours):
    """
    What ``plan`` shows per kiosk: its expected state, the schedule's own
    state, and the schedule's transitions in the next ``hours`` (0-168).
    """
    if isinstance(hours, bool) or not isinstance(hours, int) or not 0 <= hours <= MAX_PLAN_HOURS:
        raise SweepError(f"hours: {fleet_fields.shown(hours)} is outside 0-{MAX_PLAN_HOURS}")
    now = view["at"]
    end = now + _dt.timedelta(hours=hours)
    kiosks = {}
    for campus, ids in view["selection"].items():
        for kiosk in ids:
            kiosks[kiosk] = dict(view["expected"][kiosk], schedule=view["desired"][campus][kiosk]["state"], transitions=[
                {"at": iso(i), "local": i.isoformat(), "state": st, "rule": r}
                for i, st, r in fleet_schedule.transitions(schedule, campus, kiosk, now, end)
            ])
    return kiosks


def status(state, now):
    """What ``status`` shows of the state at ``now``: holds in force and expired, pending checks, the last sweep, recent mismatches."""
    active, expired = prune_holds(state["holds"], now)
    return {"holds": active, "expired_holds": expired, "pending": state["pending"],
            "last_sweep": state["sweeps"][-1] if state["sweeps"] else None,
            "mismatches": state["mismatches"][-SHOWN_MISMATCHES:]}


def metrics(last, action, ret, inventory, at):
    """
    ``(last, families)`` for ``kiosk_power.prom`` after a sweep or verify
    (``action``) that answered ``ret`` at Unix time ``at``: ``last`` is the
    previous run's figures (kept beside the textfile, so a verify does not
    erase the last sweep's actions), ``families`` what ``fleet_metrics.render`` takes.
    """
    last = dict(last) if isinstance(last, dict) else {}
    campuses = sorted(inventory["campuses"])
    campus_of = {k: c for c, spec in inventory["campuses"].items() for k in spec["kiosks"]}
    seen = {c: dict.fromkeys(POWER_STATES, 0) for c in campuses}
    for kiosk, observed in (ret.get("observed") or {}).items():
        if kiosk in campus_of and observed in POWER_STATES:
            seen[campus_of[kiosk]][observed] += 1
    runs = last.get("runs") if isinstance(last.get("runs"), dict) else {}
    # a figure of the wrong shape (the file edited by hand) is dropped, never a crash
    runs = {a: r for a, r in runs.items() if a in ("sweep", "verify") and isinstance(r, dict)
            and isinstance(r.get("at"), (int, float)) and not isinstance(r.get("at"), bool)}
    runs[action] = {"ok": bool(ret.get("result")), "at": at}
    last["runs"], last["observed"] = runs, seen
    def counts(value):
        return isinstance(value, int) and not isinstance(value, bool)

    if not (isinstance(last.get("actions"), dict) and all(
            isinstance(per, dict) and all(counts(n) for n in per.values()) for per in last["actions"].values())):
        last.pop("actions", None)
    if not (isinstance(last.get("mismatches"), dict) and all(counts(n) for n in last["mismatches"].values())):
        last.pop("mismatches", None)
    if action == "sweep":
        last["actions"] = {c: {"wake": len(ret.get("wake", {}).get(c, [])),
                               "shutdown": len(ret.get("shutdown", {}).get(c, []))} for c in campuses}
    if action == "verify":
        # one pass over the mismatches, not one per campus; campus names are strings (an
        # unhashable campus matched none before and must not crash the count now)
        per_campus = Counter(c for c in (m.get("campus") for m in ret.get("mismatches", [])) if isinstance(c, str))
        last["mismatches"] = {c: per_campus[c] for c in campuses}
    families = [
        ("kiosk_power_last_run_success", "gauge", "1 when the last sweep/verify succeeded.",
         [({"action": a}, r["ok"]) for a, r in sorted(runs.items())]),
        ("kiosk_power_last_run_timestamp_seconds", "gauge", "When the last sweep/verify ran (Unix time).",
         [({"action": a}, r["at"]) for a, r in sorted(runs.items())]),
        ("kiosk_power_kiosks_observed", "gauge", "Managed kiosks per observed state in the last sweep/verify.",
         [({"campus": c, "state": st}, n) for c, per in sorted(seen.items()) for st, n in per.items()]),
        ("kiosk_power_sweep_actions", "gauge", "Kiosks the last sweep woke or shut down.",
         [({"campus": c, "action": a}, n) for c, per in sorted(last.get("actions", {}).items())
          for a, n in sorted(per.items())]),
        ("kiosk_power_verify_mismatches", "gauge", "Kiosks not in the state they should be at the last verify.",
         [({"campus": c}, n) for c, n in sorted(last.get("mismatches", {}).items())]),
    ]
    return last, families


# ---------------------------------------------------------------- schedule sync from the platform


def platform(url, conf):
    """
    ``(url, headers)`` for the schedule platform: ``url=`` when given (no
    token is sent to it), else ``platform_url`` of ``conf`` (the master
    config's ``kiosk_power``), with ``platform_token`` (optional) sent as
    ``Authorization: Bearer``.
    """
    if url is not None and url != "":
        return fleet_http.check_url(url, "url"), {}
    conf = conf if isinstance(conf, dict) else {}
    configured = conf.get("platform_url")
    if configured is None:
        raise SweepError("url: not given, and kiosk_power:platform_url is not set in the master config")
    fleet_http.check_url(configured, "kiosk_power.platform_url")
    token = conf.get("platform_token")
    if token is None:
        return configured, {}
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0"):
        raise SweepError("kiosk_power.platform_token: expected one line of text")
    return configured, {"Authorization": f"Bearer {token}"}


def schedule_in_force(synced, data, inventory, synced_path="schedules.json"):
    """
    ``(compiled schedule, its source)``, first found wins: the last good
    synced copy ``synced`` (None: none), else the fleet data's
    ``kiosk_fleet_schedules`` (``data``), else none (every kiosk unmanaged).
    """
    if synced is not None:
        source = {"source": "synced", "synced_at": synced.get("synced_at"), "url": synced.get("url")}
        try:
            return fleet_schedule.load(synced.get("schedule"), inventory), source
        except fleet_schedule.ScheduleError as exc:
            raise fleet_schedule.ScheduleError(
                f"synced schedule ({synced_path}) no longer matches the inventory: {exc}") from exc
    raw = data.get(fleet_schedule.PILLAR_KEY) if isinstance(data, dict) else None
    if raw is None:
        return fleet_schedule.load({"campuses": {}}), {"source": "none"}
    return fleet_schedule.load(raw, inventory), {"source": "pillar", "key": fleet_schedule.PILLAR_KEY}


def http_timeout(value, high=120):
    """Seconds to wait for the platform: a number in (0, ``high``]."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SweepError(f"timeout: {fleet_fields.shown(value)} is not a number of seconds") from None
    if isinstance(value, bool) or not 0 < seconds <= high:  # nan fails the comparison too
        raise SweepError(f"timeout: {fleet_fields.shown(value)} is outside 0-{high} seconds")
    return seconds


def in_force(previous):
    """What a failed sync leaves in force: the stored copy ``previous`` (or None: the fleet data)."""
    if previous:
        return {"source": "synced", "synced_at": previous.get("synced_at"), "url": previous.get("url")}
    return {"source": "pillar"}


def synced(fetched, inventory, shown, previous, fallback, now):
    """
    ``(record to store, runner answer)`` from the platform's JSON ``fetched``
    (the schedule, or ``{"kiosk_fleet_schedules": ...}``), validated against
    ``inventory``. ``previous`` is the stored copy (None: none yet, then the
    fleet data's schedule ``fallback`` is what changed). An invalid schedule
    raises :class:`SweepError` ending "last good copy kept".
    """
    if isinstance(fetched, dict) and fleet_schedule.PILLAR_KEY in fetched:
        fetched = fetched[fleet_schedule.PILLAR_KEY]
    try:
        normalised = fleet_schedule.validate(fetched, inventory)
    except fleet_schedule.ScheduleError as exc:
        raise SweepError(f"schedule from {shown} is invalid: {exc}; last good copy kept") from exc
    if previous is not None:
        old = previous.get("schedule")
    else:
        try:
            old = fleet_schedule.validate(fallback, inventory) if fallback is not None else None
        except fleet_schedule.ScheduleError:
            old = None
    digest = hashlib.sha256(json.dumps(normalised, sort_keys=True).encode()).hexdigest()
    record = {"synced_at": iso(now), "url": shown, "sha256": digest, "schedule": normalised}
    return record, {
        "result": True,
        "changed": bool(previous is None or previous.get("sha256") != digest),
        "changes": changes(old, normalised),
        "campuses": sorted(normalised["campuses"]),
        "sha256": digest,
        "synced_at": record["synced_at"],
        "url": shown,
        "replaced": in_force(previous),
    }


def changes(old, new):
    """What a schedule sync changed: campuses added/removed/changed (normalised dicts)."""
    old_c = (old or {}).get("campuses", {})
    new_c = (new or {}).get("campuses", {})
    return {
        "added": sorted(set(new_c) - set(old_c)),
        "removed": sorted(set(old_c) - set(new_c)),
        "changed": sorted(c for c in set(old_c) & set(new_c) if old_c[c] != new_c[c]),
    }
