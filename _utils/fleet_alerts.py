"""
Alerts to the operators' webhook: every payload the pack posts is built here
(power mismatches, release refusals, environment alerts), with the rules
that decide whether an event from the edge is believed. Pure: data in,
payload (or :class:`AlertError` naming the bad field) out; no Salt, no I/O.

Why events are only hints
    At the top master, the data of an event that came through a syndic is
    whatever the sending minion wrote: ``event.fire_master`` with
    ``preload={"events": [...]}`` puts any tag with any data, ``id``
    included, on its Pi master's bus, and the syndic forwards it unchanged.
    So a sender id read from an event is a *claim*. It is accepted only when
    it names a minion of the inventory of the right kind (a Pi for
    environment alerts, a Pi or kiosk for release alerts), it is the key of
    the per-minion rate limit, and an environment alert is believed only
    when a fresh reading from that Pi (a job, :func:`reread_agrees`) says
    the same. Power mismatches never come from an event: the runner that
    found them builds them (:func:`power_mismatch`).
"""

import hashlib
import json
import math
import re

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_http
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_http

SEVERITIES = ("info", "warning", "critical")
ENV_KINDS = ("alert", "clear", "sensor_error")
ENV_METRICS = ("temperature", "humidity", "smoke")
ENV_SENSORS = ("dht11", "mq2")
POWER_EXPECTED = ("on", "off")
POWER_OBSERVED = ("on", "off", "degraded", "unknown")
RELEASE_TAG = "kiosk/release/alert"
MAX_SUMMARY = 900
DEDUP_WINDOW_S = 120
MAX_TEXT = 500
_HOP = re.compile(r"^[a-z]{1,12}(->[a-z]{1,12})?\Z")
_VERSION = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}\Z")
_INSTANT = re.compile(r"^[0-9T:+Z.-]{10,40}\Z")
_UNIT = re.compile(r"^[A-Za-z%]{1,4}\Z")
_NAME = fleet_fields.NAME


class AlertError(fleet_fields.FleetError):
    """An alert that cannot be built or is not believed; the message names the field."""


def _name(value, field):
    if not isinstance(value, str) or not _NAME.match(value):
        raise AlertError(f"{field}: {_short(value)} is not a name")
    return value


def _short(value, limit=80):
    """repr of a value from the edge, cut short: error messages and logs stay bounded."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value, field, limit=MAX_TEXT):
    """One line of text from the edge: control characters become spaces, cut to ``limit``."""
    if value is None:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise AlertError(f"{field}: expected text, got {type(value).__name__}")
    text = "".join(c if c.isprintable() else " " for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AlertError(f"{field}: {_short(value)} is not a number")
    return value


def check_payload(payload):
    """
    A payload fit to post: a mapping with ``severity`` (info, warning,
    critical) and a one-line ``summary``; returned unchanged. The operator's
    ``kiosk_alert.post`` and every builder below go through it.
    """
    if not isinstance(payload, dict):
        raise AlertError(f"payload: expected a mapping, got {type(payload).__name__}")
    if payload.get("severity") not in SEVERITIES:
        raise AlertError(f"payload.severity: {_short(payload.get('severity'))} is not one of {', '.join(SEVERITIES)}")
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise AlertError("payload.summary: missing")
    if len(summary) > MAX_SUMMARY:
        raise AlertError(f"payload.summary: {len(summary)} characters, at most {MAX_SUMMARY}")
    return payload


# ---------------------------------------------------------------- power


def power_mismatch(item):
    """
    The payload for a kiosk that is not in the power state it should be in
    (``{kiosk, campus, expected, observed, since}``, as built by
    ``fleet_sweep.mismatch``). ``degraded`` (powered on, the kiosk app down)
    is posted like the others, saying so.
    """
    if not isinstance(item, dict):
        raise AlertError(f"mismatch: expected a mapping, got {type(item).__name__}")
    kiosk = _name(item.get("kiosk"), "mismatch.kiosk")
    campus = _name(item.get("campus"), "mismatch.campus")
    expected, observed, since = item.get("expected"), item.get("observed"), item.get("since")
    if expected not in POWER_EXPECTED:
        raise AlertError(f"mismatch.expected: {_short(expected)} is not one of {', '.join(POWER_EXPECTED)}")
    if observed not in POWER_OBSERVED:
        raise AlertError(f"mismatch.observed: {_short(observed)} is not one of {', '.join(POWER_OBSERVED)}")
    if not isinstance(since, str) or not _INSTANT.match(since):
        raise AlertError(f"mismatch.since: {_short(since)} is not an ISO 8601 instant")
    summary = f"kiosk {kiosk} ({campus}) should be {expected}, observed {observed} since {since}"
    if observed == "degraded":
        summary += ": powered on, its service port is closed (kiosk app down)"
    return check_payload({
        "severity": "warning",
        "kind": "power_mismatch",
        "summary": summary,
        "kiosk": kiosk,
        "campus": campus,
        "expected": expected,
        "observed": observed,
        "since": since,
    })


# ---------------------------------------------------------------- who sent it


def sender(tag, data):
    """
    What an alert event claims: ``{"kind": "env"|"release", "minion", "body",
    "env_kind"}``. ``data`` is the event data as the top master's reactor
    sees it. Environment events (``salt/beacon/<pi>/kiosk_env/<kind>``)
    carry the Pi id in ``data["id"]``, which must equal the id in the tag;
    ``kiosk/release/alert`` carries it in ``data["id"]`` (the load of a
    plain ``event.send``) and the alert in ``data["data"]``. Both ids are
    claims (see the module docstring); :func:`campus_of_sender` checks them
    against the inventory.
    """
    if not isinstance(tag, str) or not tag or len(tag) > 200:
        raise AlertError(f"tag: {_short(tag)} is not an alert tag")
    if not isinstance(data, dict):
        raise AlertError(f"data: expected the event data mapping, got {type(data).__name__}")
    minion = _name(data.get("id"), "data.id")
    if tag == RELEASE_TAG:
        body = data.get("data")
        if not isinstance(body, dict):
            raise AlertError(f"data.data: expected the alert mapping, got {type(body).__name__}")
        return {"kind": "release", "minion": minion, "body": body, "env_kind": None}
    parts = tag.split("/")
    if len(parts) != 5 or parts[:2] != ["salt", "beacon"] or parts[3] != "kiosk_env" or parts[4] not in ENV_KINDS:
        raise AlertError(f"tag: {_short(tag)} is neither {RELEASE_TAG} nor salt/beacon/<pi>/kiosk_env/"
                         f"{'|'.join(ENV_KINDS)}")
    if parts[2] != minion:
        raise AlertError(f"data.id: {minion} does not match the tag {_short(tag)}")
    return {"kind": "env", "minion": minion, "body": data, "env_kind": parts[4]}


def campus_of_sender(inventory, claim):
    """
    The campus of the claimed sender, from the inventory (never from the
    event): environment alerts only from a Pi, release alerts from a Pi or
    a kiosk. :class:`AlertError` otherwise.
    """
    minion = claim["minion"]
    for campus, spec in inventory["campuses"].items():
        if minion in spec["pis"]:
            return campus
        if minion in spec["kiosks"]:
            if claim["kind"] == "env":
                raise AlertError(f"data.id: {minion} is a kiosk; environment alerts come from Pis only")
            return campus
    raise AlertError(f"data.id: {minion} is not a minion of the inventory")


# ---------------------------------------------------------------- environment


def env_subject(claim):
    """``(kind, metric)`` of an environment event; the metric is a sensor name for sensor errors."""
    body = claim["body"]
    kind = claim["env_kind"]
    metric = body.get("sensor") if kind == "sensor_error" else body.get("metric")
    allowed = ENV_SENSORS if kind == "sensor_error" else ENV_METRICS + ENV_SENSORS
    if kind == "alert":
        allowed = ENV_METRICS
    if metric not in allowed:
        field = "data.sensor" if kind == "sensor_error" else "data.metric"
        raise AlertError(f"{field}: {_short(metric)} is not one of {', '.join(allowed)}")
    return kind, metric


def reread_agrees(claim, reading):
    """
    ``(True, "")`` when a fresh ``kiosk_env.read`` of the Pi says the same as
    the event, else ``(False, why)``. ``reading`` is the read's return
    (``{"pi", "temperature", "humidity", "smoke", "alerts", "errors", ...}``).
    The read checks the plain range (no hysteresis): an alert needs the
    metric out of range (smoke: detected) now, an all-clear needs it in range
    (smoke: not detected, the heater warmed up), a sensor error needs the
    sensor failing, a sensor's "reads again" needs it reading.
    """
    kind, metric = env_subject(claim)
    if not isinstance(reading, dict):
        return False, f"the Pi gave no reading ({_short(reading)})"
    if reading.get("pi") != claim["minion"]:
        return False, f"the reading is from {_short(reading.get('pi'))}, not {claim['minion']}"
    alerts = reading.get("alerts") if isinstance(reading.get("alerts"), list) else []
    errors = reading.get("errors") if isinstance(reading.get("errors"), dict) else {}
    if kind == "sensor_error":
        return (True, "") if errors.get(metric) else (False, f"{metric} reads fine now")
    if metric in ENV_SENSORS:  # a failed sensor reads again
        return (True, "") if metric not in errors else (False, f"{metric} still fails")
    value = reading.get(metric)
    if kind == "alert":
        if metric == "smoke":
            return (True, "") if value is True else (False, f"no smoke now (read {_short(value)})")
        return (True, "") if metric in alerts else (False, f"{metric} is in range now (read {_short(value)})")
    # all-clear
    if value is None:
        return False, f"{metric} could not be read now"
    if metric == "smoke":
        return (True, "") if value is False else (False, f"smoke is still detected (read {_short(value)})")
    return (True, "") if metric not in alerts else (False, f"{metric} is still out of range (read {_short(value)})")


def env_alert(claim, campus, reading=None):
    """
    The payload for an environment event (alert, clear, sensor_error) of a
    Pi: the Pi and campus from the inventory check, the values from the
    event, checked; ``reading`` (the confirming re-read) is added as
    ``reread``. Smoke is ``critical``, an all-clear ``info``, the rest
    ``warning``.
    """
    kind, metric = env_subject(claim)
    body = claim["body"]
    pi = claim["minion"]
    _name(campus, "campus")
    payload = {"kind": kind, "pi": pi, "campus": campus, "metric": metric,
               "tag": f"salt/beacon/{pi}/kiosk_env/{kind}"}
    if kind == "clear":
        payload["severity"] = "info"
    elif metric == "smoke":
        payload["severity"] = "critical"
    else:
        payload["severity"] = "warning"
    value = body.get("value")
    if value is not None:
        payload["value"] = value if metric == "smoke" and isinstance(value, bool) else _number(value, "data.value")
    if body.get("bound") is not None:
        if body["bound"] not in ("min", "max"):
            raise AlertError(f"data.bound: {_short(body['bound'])} is not min or max")
        payload["bound"] = body["bound"]
    if body.get("limit") is not None:
        payload["limit"] = _number(body["limit"], "data.limit")
    if body.get("range") is not None:
        span = body["range"]
        if not isinstance(span, list) or len(span) != 2:
            raise AlertError(f"data.range: {_short(span)} is not [low, high]")
        payload["range"] = [_number(v, f"data.range[{i}]") for i, v in enumerate(span)]
    if body.get("unit") is not None:
        if not isinstance(body["unit"], str) or not _UNIT.match(body["unit"]):
            raise AlertError(f"data.unit: {_short(body['unit'])} is not a unit")
        payload["unit"] = body["unit"]
    for key in ("error", "reason"):
        if body.get(key) is not None:
            payload[key] = _text(body[key], f"data.{key}")
    if reading is not None:
        payload["reread"] = {k: reading.get(k) for k in ("at", "temperature", "humidity", "smoke", "alerts")}
    shown = f" {payload['value']}{payload.get('unit', '')}" if "value" in payload else ""
    payload["summary"] = f"[{payload['severity']}] {pi} ({campus}): {metric} {kind}{shown}"
    return check_payload(payload)


# ---------------------------------------------------------------- releases


def release_alert(claim, campus):
    """
    The payload for a ``kiosk/release/alert`` (a Pi or kiosk refused a copy
    of a release, or an install failed). The minion and campus come from the
    inventory check; ``source`` is shown as ``scheme://host[:port]`` only.
    """
    body = claim["body"]
    minion = claim["minion"]
    _name(campus, "campus")
    name = _name(body.get("name"), "data.data.name")
    version = body.get("version")
    if version is not None:
        version = str(version)
        if not _VERSION.match(version):
            raise AlertError(f"data.data.version: {_short(version)} is not a version")
    hop = body.get("hop")
    if not isinstance(hop, str) or not _HOP.match(hop):
        raise AlertError(f"data.data.hop: {_short(hop)} is not a hop (e.g. master->pi, install)")
    error = _text(body.get("error"), "data.data.error") or "no reason given"
    source = body.get("source")
    shown_source = fleet_http.host_of(source) if isinstance(source, str) and source else None
    summary = f"release {name} {version} refused on {minion} ({hop}): {error}"
    payload = {
        "severity": "warning",
        "kind": "kiosk_release",
        "summary": summary[:MAX_SUMMARY],
        "minion": minion,
        "campus": campus,
        "name": name,
        "version": version,
        "hop": hop,
        "source": shown_source,
        "error": error,
    }
    return check_payload(payload)


# ---------------------------------------------------------------- rate limit


def rate_decision(times, now, limit, window_s):
    """
    The per-sender rate limit: ``times`` are the instants (seconds) of the
    alerts this sender already had accepted. Returns ``(allowed, kept)``:
    ``kept`` the instants still inside the window ending at ``now``, plus
    ``now`` when allowed (at most ``limit`` in any ``window_s`` seconds).
    An instant a little ahead of ``now`` (another process's clock read)
    counts; one more than a window ahead (the clock was set back) is
    forgotten, so a clock change cannot block a sender for long.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise AlertError(f"rate_limit: {_short(limit)} is not a positive whole number")
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not window_s > 0:
        raise AlertError(f"rate_window_s: {_short(window_s)} is not a positive number of seconds")
    _number(now, "now")
    kept = sorted(t for t in times if now - window_s < t <= now + window_s)
    if len(kept) >= limit:
        return False, kept
    return True, kept + [now]



# ---------------------------------------------------------------- copies of one alert


def alert_key(minion, tag, payload):
    """
    What makes two alert events copies of one: the sending minion id, the
    tag and the payload as built here, as a SHA-256 hex digest of their
    canonical JSON (sorted keys). A multi-master kiosk sends each event
    through every Pi of its campus, so the top master gets one copy per Pi;
    the event's own ``_stamp`` is set by each Pi master and is not part of
    the payload, so the copies have one key. The digest keeps the edge's
    text (an error message) out of the state file.
    """
    _name(minion, "minion")
    if not isinstance(tag, str) or not tag or len(tag) > 200:
        raise AlertError(f"tag: {_short(tag)} is not an alert tag")
    check_payload(payload)
    try:
        text = json.dumps([minion, tag, payload], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:  # a set, an object, inf/nan: no stable key
        raise AlertError(f"payload: not JSON data ({type(exc).__name__})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_duplicate(accepted_at, now, window_s):
    """
    ``True`` when an alert whose key was last accepted at ``accepted_at``
    (seconds, ``None``: never) is a copy to drop at ``now``: accepted less
    than ``window_s`` seconds ago (exactly ``window_s`` ago is not). An
    instant a little ahead of ``now`` (another process's clock read)
    counts; one more than a window ahead (the clock was set back) is
    forgotten. ``window_s`` 0 turns the check off.
    """
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not 0 <= window_s < math.inf:
        raise AlertError(f"dedup_window_s: {_short(window_s)} is not a number of seconds (0 or more)")
    _number(now, "now")
    if accepted_at is None or window_s == 0:
        return False
    _number(accepted_at, "accepted_at")
    return now - window_s < accepted_at <= now + window_s
