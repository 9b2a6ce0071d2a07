"""
Power sweeps: desired state + observed state + holds -> actions,
and the +5/+10/+15 minute verification bookkeeping. Pure: no Salt, no I/O.

Vocabulary
    *desired*   ``fleet_schedule.desired_states`` decisions (on/off/unmanaged);
    *observed*  what the campus Pis saw with ``kiosk_scan.scan`` (nmap TCP
                connect probe of the kiosk's service port), combined with
                minion presence (the kiosk's minion answered ``test.ping``):
                ``on`` when any Pi of its campus saw the port open;
                ``degraded`` when a Pi saw the port closed and the minion
                answers (powered on, the kiosk app is down: a sweep wakes it
                like an off kiosk when it is due on, verification alerts);
                ``off`` when at least one Pi answered, none saw the port open
                and the minion is silent; ``unknown`` when no Pi of its
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
    twice differently (``fleet_alerts.single_returns``), which catches a
    forgery racing the real answer, not one sent while the Pi is down.

Instants are timezone-aware datetimes in memory and ISO 8601 strings in the
records (so the state file is plain JSON).
"""

import datetime as _dt
import ipaddress

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

ON, OFF, UNMANAGED, UNKNOWN = "on", "off", "unmanaged", "unknown"
DEGRADED = "degraded"  # powered on (the minion answers) but the service port is closed
CHECK_OFFSETS = (5, 10, 15)  # minutes after the sweep that changed the kiosk
MAX_HOLD = _dt.timedelta(days=366)
MAX_REASON = 500
PORT_STATES = ("open", "closed", "filtered")
# nmap timing for one TCP connect probe per kiosk
DEFAULT_HOST_TIMEOUT_S = 10
DEFAULT_MAX_RETRIES = 1
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


# ---------------------------------------------------------------- nmap


def nmap_arguments(host_timeout_s=DEFAULT_HOST_TIMEOUT_S, max_retries=DEFAULT_MAX_RETRIES):
    """
    nmap's options besides ``-p <port>`` and the targets, as a list: TCP
    connect probe (``-sT``), no host discovery (``-Pn``: ``-sn`` would call
    every loopback address up), never reverse DNS (``-n``), bounded time.
    """
    try:
        host_timeout_s = int(host_timeout_s)
        max_retries = int(max_retries)
    except (TypeError, ValueError):
        raise SweepError(f"host_timeout_s/max_retries: not integers ({host_timeout_s!r}, {max_retries!r})") from None
    if not 1 <= host_timeout_s <= 300:
        raise SweepError(f"host_timeout_s: {host_timeout_s} is outside 1-300")
    if not 0 <= max_retries <= 5:
        raise SweepError(f"max_retries: {max_retries} is outside 0-5")
    return ["-sT", "-Pn", "-n", "--max-retries", str(max_retries), "--host-timeout", f"{host_timeout_s}s"]


def scan_targets(inventory, campus, kiosks=None):
    """
    ``{port: {ip: kiosk}}`` for the kiosks of ``campus`` to probe (all of them,
    or those of ``kiosks`` that belong to it: kiosks of other campuses are
    skipped, their own Pis probe them). Addresses and ports are re-checked
    here: only the inventory's kiosk IPs ever reach nmap's command line.
    """
    if campus not in inventory["campuses"]:
        raise SweepError(f"campus: {campus!r} is not a campus of the inventory")
    own = inventory["campuses"][campus]["kiosks"]
    if kiosks is None:
        wanted = sorted(own)
    else:
        if isinstance(kiosks, str):
            kiosks = [k.strip() for k in kiosks.split(",") if k.strip()]
        if not isinstance(kiosks, (list, tuple, set)):
            raise SweepError(f"kiosks: expected ids, got {kiosks!r}")
        for kiosk in kiosks:
            check_kiosk(kiosk, inventory, "kiosks")
        wanted = sorted(k for k in set(kiosks) if k in own)
    targets = {}
    for kiosk in wanted:
        spec = own[kiosk]
        ip = str(ipaddress.IPv4Address(spec["ip"]))
        port = spec["service_port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SweepError(f"campuses.{campus}.kiosks.{kiosk}.service_port: {port!r} is not a port")
        targets.setdefault(port, {})[ip] = kiosk
    return targets


def port_states(nmap_result, port, ips):
    """
    ``{ip: "open"|"closed"|"filtered"}`` from python-nmap's ``scan()`` dict for
    one port. A host nmap gave up on (host timeout) is ``filtered``.
    """
    scanned = (nmap_result or {}).get("scan") or {}
    out = {}
    for ip in ips:
        state = ((scanned.get(ip) or {}).get("tcp") or {}).get(port, {}).get("state")
        out[ip] = state if state in ("open", "closed") else "filtered"
    return out


# ---------------------------------------------------------------- observed state


def observed_states(selection, scan_returns, campus_pis, presence=None):
    """
    Merge the Pis' ``kiosk_scan.scan`` answers with minion presence:
    ``{kiosk: {"state": on|degraded|off|unknown, "seen_by": {pi: port state},
    "minion": bool}}`` for every kiosk of ``selection`` (``{campus: [ids]}``).
    ``presence`` is ``{kiosk: True}`` for the kiosks whose minion answered.
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
            else:  # no probe: the minion's own answer is not evidence (it can be forged)
                state = UNKNOWN
            out[kiosk] = {"state": state, "seen_by": seen, "minion": minion}
    return out


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
    pending = pending or {}
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
    return {"wake": wake, "shutdown": shutdown, "nothing": nothing, "expected": expected}


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
                "checks": [iso(now + _dt.timedelta(minutes=m)) for m in CHECK_OFFSETS],
                "done": [],
            }
    return out


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


def changes(old, new):
    """What a schedule sync changed: campuses added/removed/changed (normalised dicts)."""
    old_c = (old or {}).get("campuses", {})
    new_c = (new or {}).get("campuses", {})
    return {
        "added": sorted(set(new_c) - set(old_c)),
        "removed": sorted(set(old_c) - set(new_c)),
        "changed": sorted(c for c in set(old_c) & set(new_c) if old_c[c] != new_c[c]),
    }
