"""
Power control of a kiosk, run by its own minion: shutdown, reboot, abort,
status.

On Windows it uses Salt's ``system`` module (``system.shutdown`` with
``in_seconds=True``: without it the timeout is read in minutes) and shows the
message on screen. Elsewhere it runs a configurable command from the minion
config, as an argument list (never a shell string)::

    kiosk_power:
      shutdown_command: ["/sbin/shutdown", "-h", "+{delay_min}", "{message}"]
      reboot_command: ["/sbin/shutdown", "-r", "+{delay_min}", "{message}"]
      abort_command: ["/sbin/shutdown", "-c"]
      cwd: /

Placeholders: ``{delay}`` (seconds), ``{delay_min}`` (minutes, rounded up),
``{message}``, ``{id}``. The lab points ``shutdown_command`` at the kiosk
simulator's power button.

``shutdown(key=...)`` presses once per idempotency key: the keys pressed are
kept in ``<cachedir>/kiosk_power/pressed.json`` (locked, written atomically,
after the press succeeded), so two leaders of a split campus, or a new leader
after a failover, never shut this kiosk down twice for one transition.
"""

import datetime as _dt
import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_power, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_power
    import fleet_state

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_power"

PRESSED_DIR = "kiosk_power"
PRESSED_FILE = "pressed.json"
PRESSED_LOCK_S = 60  # a press waits this long for another press of this kiosk


def __virtual__():
    return __virtualname__


def _is_windows():
    return __grains__.get("kernel") == "Windows"


def _run(action, delay_s, message):
    try:
        delay_s, message = fleet_power.check_request(delay_s, message)
    except ValueError as exc:
        raise SaltInvocationError(str(exc)) from exc
    if _is_windows():
        fun, kwargs = fleet_power.windows_call(action, delay_s, message)
        ok = __salt__[fun](**kwargs)
        if not ok:
            raise CommandExecutionError(f"{fun} refused: {kwargs}")
        return {"action": action, "delay_s": delay_s, "via": fun}
    config = __opts__.get("kiosk_power", {}) or {}
    try:
        argv = fleet_power.command(config, action, delay_s, message, __opts__["id"])
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from exc
    ret = __salt__["cmd.run_all"](argv, python_shell=False, cwd=config.get("cwd"), ignore_retcode=True)
    if ret["retcode"] != 0:
        raise CommandExecutionError(f"{action} command {argv} failed ({ret['retcode']}): {ret['stderr'] or ret['stdout']}")
    return {"action": action, "delay_s": delay_s, "via": argv}


def _pressed_store():
    return fleet_state.Store(os.path.join(__opts__["cachedir"], PRESSED_DIR), PRESSED_FILE, None, PRESSED_LOCK_S,
                             fleet_power.PowerError)


def shutdown(delay_s=60, message="This kiosk is shutting down for the night.", key=None):
    """
    Shut this kiosk down after ``delay_s`` seconds, showing ``message``.

    key
        An idempotency key (e.g. ``riverside/kiosk-riverside-01/shutdown/2027-02-05T14:00:00Z``,
        what the campus leader sends): the kiosk presses once per key. A
        second call with a key already pressed presses nothing and answers
        ``duplicate: True`` with ``pressed_at`` (still ``action: shutdown``:
        the kiosk did accept that shutdown). Without a key every call presses.
        ``{id}`` in the key is this kiosk's id, so one job to many kiosks
        gives each its own key (``riverside/{id}/shutdown/2027-...``).

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_power.shutdown delay_s=120 message='Closing at 22:00'
        salt kiosk-riverside-01 kiosk_power.shutdown key=riverside/kiosk-riverside-01/shutdown/2027-02-05T14:00:00Z
    """
    try:
        key = fleet_power.check_key(key)
        if key is not None:
            key = fleet_power.check_key(key.replace("{id}", __opts__["id"]))
        delay, _ = fleet_power.check_request(delay_s, message)
    except ValueError as exc:
        raise SaltInvocationError(str(exc)) from exc
    if key is None:
        return _run("shutdown", delay_s, message)
    try:
        # held across the press: a second job with the same key waits, then finds it pressed
        with _pressed_store().locked() as stored:
            record = fleet_power.check_record(stored or None, "pressed")
            before = fleet_power.pressed_at(record, key)
            if before is not None:
                return {"action": "shutdown", "delay_s": delay, "key": key, "duplicate": True,
                        "pressed_at": before}
            ret = _run("shutdown", delay_s, message)  # raises when the press failed: the key stays unpressed
            now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
            stored.clear()
            stored.update(fleet_power.remember(record, key, now))
    except fleet_power.PowerError as exc:
        raise CommandExecutionError(str(exc)) from exc
    return dict(ret, key=key, duplicate=False, pressed_at=now)


def reboot(delay_s=60, message="This kiosk restarts for maintenance."):
    """
    Reboot this kiosk after ``delay_s`` seconds, showing ``message``.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_power.reboot delay_s=30
    """
    return _run("reboot", delay_s, message)


def abort():
    """
    Cancel a pending shutdown or reboot.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_power.abort
    """
    return _run("abort", 0, "")


def status():
    """
    Boot time and uptime of this kiosk.

    CLI Example:

    .. code-block:: bash

        salt 'kiosk-*' kiosk_power.status --out=json
    """
    import psutil  # pylint: disable=import-outside-toplevel  (a Salt dependency)

    booted = psutil.boot_time()
    return {
        "id": __opts__["id"],
        "boot_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(booted)),
        "uptime_s": int(time.time() - booted),
    }
