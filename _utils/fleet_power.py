"""
Kiosk power requests: validation and how each platform is asked. Pure.
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
