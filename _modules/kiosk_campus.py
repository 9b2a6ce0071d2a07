"""
The campus runtime seen from a Pi's MINION (the top master reaches a Pi
through its minion): ``calendar`` (keep a signed calendar the top master
sends, or show the serial held) and ``reconcile`` (run this Pi master's
reconciler now, in this process, and return what it did). Contract:
docs/campus.md.

Settings (minion config, then pillar; ``config.get``)::

    kiosk_campus:
      dir: /var/lib/kiosk_fleet/campus     # the same folder as the Pi master's kiosk_campus:dir
      master_config: /etc/salt/master      # the Pi master's config (reconcile loads it)
      campus: riverside                    # default: this Pi's campus in its kiosk_fleet pillar
      verify_key: [<Ed25519 PEM>]          # default: pillar kiosk_release:verify_key
"""

import json
import logging
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_calendar, fleet_campus, fleet_fields, fleet_inventory
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_calendar
    import fleet_campus
    import fleet_fields
    import fleet_inventory

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_campus"

DEFAULT_DIR = "/var/lib/kiosk_fleet/campus"
DEFAULT_MASTER_CONFIG = "/etc/salt/master"


def __virtual__():
    return __virtualname__


def _conf(name, default=None):
    return __salt__["config.get"](f"{fleet_campus.CONFIG_KEY}:{name}", default)


def _where():
    """``(dir, campus, verify keys)`` of this Pi, from its config, else its pillar."""
    directory = _conf("dir", DEFAULT_DIR)
    if not isinstance(directory, str) or not os.path.isabs(directory):
        raise CommandExecutionError(f"kiosk_campus:dir: {fleet_fields.shown(directory)} is not an absolute path")
    campus = _conf("campus")
    try:
        if not campus:
            campus = fleet_inventory.campus_of(fleet_inventory.from_pillar(__pillar__), __opts__["id"])
    except fleet_inventory.InventoryError as exc:
        raise CommandExecutionError(f"kiosk_campus:campus: not set, and the pillar does not place this Pi: {exc}") from exc
    keys = _conf("verify_key") or __salt__["pillar.get"]("kiosk_release:verify_key")
    if not keys:
        raise CommandExecutionError("kiosk_campus:verify_key: not set, and no kiosk_release:verify_key in the pillar")
    return directory, campus, keys


def _failed(ret):
    __context__["retcode"] = 1
    return ret


def calendar(calendar=None):  # pylint: disable=redefined-outer-name
    """
    Keep the signed campus calendar ``calendar`` (a JSON object, or its
    text) if it verifies (release verify keys, this Pi's campus, a sane
    serial) and is newer than the one held: the last good copy stays
    otherwise. Without ``calendar``: the serial held. Returns ``{"result",
    "serial", "stored"}`` (plus ``kept``: the serial before; ``error`` when
    refused, with exit code 1).

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_campus.calendar
        salt pi-riverside-1 kiosk_campus.calendar calendar="$(cat calendar.json)"
    """
    directory, campus, keys = _where()
    if calendar is None or calendar == "":
        try:
            doc = fleet_calendar.load(directory, keys, campus)
        except fleet_calendar.CalendarError as exc:
            return _failed({"result": False, "serial": None, "stored": False, "error": str(exc)})
        if doc is None:
            return _failed({"result": False, "serial": None, "stored": False,
                            "error": f"calendar: none stored in {directory} yet"})
        return {"result": True, "serial": doc["serial"], "stored": False}
    if isinstance(calendar, str):
        try:
            calendar = json.loads(calendar)
        except ValueError:
            raise SaltInvocationError("calendar: not a JSON object") from None
    try:
        stored = fleet_calendar.store(directory, calendar, keys, campus)
    except fleet_calendar.CalendarError as exc:
        try:
            held = fleet_calendar.load(directory, keys, campus)
        except fleet_calendar.CalendarError:
            held = None
        return _failed({"result": False, "stored": False, "serial": None if held is None else held["serial"],
                        "error": f"{exc}; the last good calendar is kept"})
    return {"result": True, "serial": stored["serial"], "stored": stored["stored"], "kept": stored["kept"]}


def _runner():
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.loader  # pylint: disable=import-outside-toplevel

    path = _conf("master_config", DEFAULT_MASTER_CONFIG)
    if not isinstance(path, str) or not os.path.isabs(path) or not os.path.isfile(path):
        raise CommandExecutionError(f"kiosk_campus:master_config: {fleet_fields.shown(path)} is not this Pi "
                                    "master's config file")
    opts = salt.config.master_config(path)
    return salt.loader.runner(opts, utils=salt.loader.utils(opts), context={}, whitelist=["kiosk_campus"])


def reconcile(at=None):
    """
    Run this Pi master's reconciler now (``kiosk_campus.reconcile`` runner,
    in this process, with the Pi master's config read from
    ``kiosk_campus:master_config``) and return what it did: ``result``,
    ``leader``, ``woke``, ``shut_down``, ``observed``, ``clock``, ... (see
    the runner). ``at``: an ISO 8601 instant standing in for now, refused
    unless the Pi master's ``kiosk_campus:clock_file`` is set (tests, the
    lab's compressed day). Exit code 1 when the run failed.

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_campus.reconcile
        salt pi-riverside-1 kiosk_campus.reconcile at=2027-03-01T07:20:00+08:00
    """
    runners = _runner()
    if "kiosk_campus.reconcile" not in runners:
        raise CommandExecutionError("kiosk_campus: the Pi master has no kiosk_campus runner (sync or install the pack)")
    ret = runners["kiosk_campus.reconcile"](at=at)
    if not isinstance(ret, dict) or not ret.get("result"):
        __context__["retcode"] = 1
    return ret
