"""
Kiosk power requests: validation and how each platform is asked, and the
kiosk's record of the shutdown keys it already pressed. Pure.

Why keys
    Shutdowns of a campus come from its leader Pi. A split campus LAN can
    have two leaders at once, and a new leader after a failover redoes what
    the old one may have done: each sends ``kiosk_power.shutdown`` with the
    same idempotency key (campus/kiosk/shutdown/<transition instant>). The
    kiosk keeps the keys it pressed (:func:`remember`) and presses once per
    key (:func:`pressed_at`), so one transition shuts it down once.
"""

import importlib.util
import math

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

MAX_DELAY_S = 24 * 3600
MAX_MESSAGE = 512  # Windows' shutdown dialog truncates long messages
ACTIONS = ("shutdown", "reboot", "abort")
MAX_KEY = 200
KEEP_KEYS = 1000  # pressed keys a kiosk remembers (a few per day; far more than a failover can replay)
DEFAULT_COMMANDS = {
    "shutdown": ["/sbin/shutdown", "-h", "+{delay_min}", "{message}"],
    "reboot": ["/sbin/shutdown", "-r", "+{delay_min}", "{message}"],
    "abort": ["/sbin/shutdown", "-c"],
}


class PowerError(fleet_fields.FleetError):
    """A power request that cannot be made; the message names the field."""


def check_request(delay_s, message):
    """Return ``(delay_s as int, message as str)`` or raise :class:`PowerError` naming the field."""
    if isinstance(delay_s, bool):  # YAML's on/off/yes/no: a mistake, not 1 or 0 seconds
        raise PowerError(f"delay_s: {delay_s!r} is not a number of seconds")
    try:
        delay = int(delay_s)
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf
        raise PowerError(f"delay_s: {delay_s!r} is not a number of seconds") from None
    if isinstance(delay_s, float) and delay_s != delay:
        raise PowerError(f"delay_s: {delay_s!r} is not a whole number of seconds")
    if not 0 <= delay <= MAX_DELAY_S:
        raise PowerError(f"delay_s: {delay} is outside 0-{MAX_DELAY_S}")
    if message is None:
        message = ""
    if not isinstance(message, str):
        raise PowerError(f"message: expected text, got {type(message).__name__}")
    bad = next((c for c in message if c == "\0" or "\ud800" <= c <= "\udfff"), None)
    if bad is not None:  # neither survives the trip to the kiosk (UTF-8 on the wire, C strings in Windows)
        kind = "a NUL character" if bad == "\0" else f"an unpaired surrogate (U+{ord(bad):04X})"
        raise PowerError(f"message: contains {kind}")
    if len(message) > MAX_MESSAGE:
        raise PowerError(f"message: {len(message)} characters, at most {MAX_MESSAGE}")
    return delay, message


def windows_call(action, delay_s, message):
    """
    ``(function, kwargs)`` for Salt's win_system module. Reboot goes through
    ``system.shutdown(reboot=True)`` too: ``system.reboot`` cannot show a message.
    """
    if action == "abort":
        return "system.shutdown_abort", {}
    if action not in ACTIONS:
        raise PowerError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    return "system.shutdown", {
        "message": message,
        "timeout": delay_s,
        "in_seconds": True,  # without it win_system reads the timeout in minutes
        "force_close": True,  # the kiosk app must not veto the shutdown
        "reboot": action == "reboot",
    }


def command(config, action, delay_s, message, minion_id):
    """The argument list for ``action`` from the minion's ``kiosk_power`` config."""
    if action not in ACTIONS:
        raise PowerError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    template = (config or {}).get(f"{action}_command", DEFAULT_COMMANDS[action])
    if not isinstance(template, list) or not template or not all(isinstance(a, str) for a in template):
        raise PowerError(f"kiosk_power:{action}_command: expected a list of strings, got {template!r}")
    values = {
        "delay": str(delay_s),
        "delay_min": str(math.ceil(delay_s / 60)),
        "message": message,
        "id": minion_id,
    }
    # str.format on each argument alone: a message can never split into more arguments
    try:
        return [arg.format(**values) for arg in template]
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise PowerError(f"kiosk_power:{action}_command: bad placeholder {exc} in {template!r}") from exc


def shutdown_report(answered, failed, silent):
    """
    What ``kiosk_power.shutdown`` (runner) reports from its job's answers
    (``fleet_runner.call``): ``{"result", "accepted", "failed": {kiosk: why},
    "silent"}``, plus ``error`` naming every kiosk not shut down. A kiosk
    accepted only when its minion answered ``{"action": "shutdown", ...}``.
    """
    accepted = sorted(k for k, r in answered.items() if isinstance(r, dict) and r.get("action") == "shutdown")
    failed = dict(failed)
    failed.update({k: f"unexpected answer: {str(r)[:200]}" for k, r in answered.items() if k not in accepted})
    report = {"result": not failed and not silent, "accepted": accepted, "failed": failed, "silent": sorted(silent)}
    if not report["result"]:
        report["error"] = f"not shut down: {', '.join(sorted(set(failed) | set(silent)))}"
    return report


def check_key(key, field="key"):
    """An idempotency key (printable ASCII, no white space, at most 200 characters), None for none."""
    if key is None or key == "":
        return None
    if not isinstance(key, str) or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise PowerError(f"{field}: {fleet_fields.shown(key)} is not an idempotency key (printable ASCII, no spaces)")
    if len(key) > MAX_KEY:
        raise PowerError(f"{field}: {len(key)} characters, at most {MAX_KEY}")
    return key


def check_record(record, field="pressed"):
    """The stored ``{"keys": {key: ISO instant}}`` record, checked (a missing file is an empty record)."""
    if record is None:
        return {"keys": {}}
    keys = record.get("keys") if isinstance(record, dict) else None
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        raise PowerError(f"{field}.keys: expected {{key: instant}}, got {fleet_fields.shown(keys)}")
    return {"keys": dict(keys)}


def pressed_at(record, key):
    """When this kiosk pressed for ``key`` (an ISO instant), None when it never did (or no key)."""
    if key is None:
        return None
    return check_record(record)["keys"].get(key)


def remember(record, key, at, keep=KEEP_KEYS):
    """A new record with ``key`` pressed at ``at`` (ISO text), keeping the ``keep`` newest keys."""
    key = check_key(key)
    if key is None:
        return check_record(record)
    if not isinstance(at, str) or not at:
        raise PowerError(f"at: expected an ISO instant, got {fleet_fields.shown(at)}")
    keys = dict(check_record(record)["keys"], **{key: at})
    if len(keys) > keep:
        keys = dict(sorted(keys.items(), key=lambda item: (item[1], item[0]))[-keep:])
    return {"keys": keys}
