"""
Power control of a kiosk, run by its own minion: shutdown, reboot, abort,
status, last_boot.

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

``last_boot`` says when this kiosk booted and why the last shutdown was not
clean, if the system logged it: on Windows the newest event 41
(Kernel-Power) or 6008 (EventLog) of the System log (``wevtutil``); on other
systems (the tests' and the lab's kiosks) the boot time of ``/proc/stat`` and
the same wevtutil text from a file named in the minion config, when set::

    kiosk_power:
      last_shutdown_file: /var/lib/kiosk-sim/last_shutdown.txt   # optional
      boot_time_file: /var/lib/kiosk-sim/boot_time   # optional: Unix seconds, instead of /proc/stat

``boot_time_file`` is for simulated kiosks (the lab runs many kiosk minions on
one host, which has one boot time); Windows ignores both.
"""

import datetime as _dt
import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_power, fleet_restarts, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_power
    import fleet_restarts
    import fleet_state

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_power"

PRESSED_DIR = "kiosk_power"
PRESSED_FILE = "pressed.json"
PRESSED_LOCK_S = 60  # a press waits this long for another press of this kiosk
PROC_STAT = "/proc/stat"
MAX_SHUTDOWN_FILE = 65536


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
    try:  # the boot time last_boot reports (boot_time_file on a simulated kiosk), so both agree
        booted = _boot_time()
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"boot_time: cannot read it ({exc})") from None
    return {
        "id": __opts__["id"],
        "boot_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(booted)),
        "uptime_s": int(time.time() - booted),
    }


def _boot_time():
    if _is_windows():
        import psutil  # pylint: disable=import-outside-toplevel  (a Salt dependency)

        return int(psutil.boot_time())
    path = (__opts__.get("kiosk_power") or {}).get("boot_time_file")
    if path is None:
        with open(PROC_STAT, encoding="ascii", errors="replace") as stat:
            return fleet_restarts.parse_btime(stat.read())
    # a simulated kiosk (the lab runs many kiosk minions on one host, which has one btime)
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"kiosk_power:boot_time_file: {path!r} is not an absolute path")
    with open(path, encoding="ascii", errors="replace") as handle:
        return fleet_restarts.parse_boot_time_file(handle.read(64))


def _shutdown_text():
    """The wevtutil text of the newest event 41/6008 (Windows), or of ``kiosk_power:last_shutdown_file``; None when none."""
    if _is_windows():
        ret = __salt__["cmd.run_all"](list(fleet_restarts.WEVTUTIL_ARGV), python_shell=False, ignore_retcode=True)
        if ret["retcode"] != 0:
            raise CommandExecutionError(f"wevtutil failed ({ret['retcode']}): {ret['stderr'] or ret['stdout']}")
        return ret["stdout"]
    path = (__opts__.get("kiosk_power") or {}).get("last_shutdown_file")
    if path is None:
        return None
    if not isinstance(path, str) or not os.path.isabs(path):
        raise CommandExecutionError(f"kiosk_power:last_shutdown_file: {path!r} is not an absolute path")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(MAX_SHUTDOWN_FILE)
    except FileNotFoundError:
        return None  # no unclean shutdown to tell of
    except OSError as exc:
        raise CommandExecutionError(f"kiosk_power:last_shutdown_file: cannot read {path} ({exc.strerror})") from None


def last_boot(reason=True):
    """
    When this kiosk booted (``boot_time``, Unix seconds, and ``boot_time_iso``)
    and, with ``reason`` (default True), why the shutdown before it was not
    clean: ``shutdown`` is ``{"event_id": 41|6008, "source", "at", "reason"}``
    when the system logged event 41 (Kernel-Power) or 6008 (EventLog) for this
    boot, else None. A reason that cannot be read is told in
    ``shutdown_error`` and never fails the call: the boot announcement
    (``kiosk_fleet.boot``) must go out whatever the event log says.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_power.last_boot --out=json
        salt kiosk-riverside-01 kiosk_power.last_boot reason=False
    """
    if not isinstance(reason, bool):
        raise SaltInvocationError(f"reason: {reason!r} is not True or False")
    try:
        booted = _boot_time()
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"boot_time: cannot read it ({exc})") from None
    answer = {"id": __opts__["id"], "boot_time": booted, "boot_time_iso": fleet_restarts.iso(booted),
              "shutdown": None}
    if reason:
        try:
            text = _shutdown_text()
            event = fleet_restarts.parse_wevtutil(text) if text else None
            answer["shutdown"] = fleet_restarts.shutdown_reason(event, booted)
        except (CommandExecutionError, ValueError) as exc:
            answer["shutdown_error"] = str(exc)[:300]
    return answer
