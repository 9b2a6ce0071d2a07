"""
Environment status of the campus Pis, from the top master.

``kiosk_env.status`` asks every Pi for a reading (``kiosk_env.read``, through
the syndics), keeps the last good reading of each Pi in the master's cache
(``<cachedir>/kiosk_env/readings.json``), and answers from that cache, marked
stale, for a Pi that did not answer. Environment alerts are posted by
``kiosk_alert.event`` (reactor ``kiosk_env_alert.sls``), which re-reads the Pi
before posting.
"""

import logging
import math
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_env, fleet_fields, fleet_inventory, fleet_runner, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_env
    import fleet_fields
    import fleet_inventory
    import fleet_runner
    import fleet_state

import salt.client

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_env"

STATE_DIR = "kiosk_env"
READINGS_FILE = "readings.json"
DEFAULT_STALE_S = 600


def __virtual__():
    return __virtualname__


def _campus_pis(campus):
    inventory = fleet_inventory.master_inventory(__opts__)
    names = fleet_inventory.names(campus, "campus") or sorted(inventory["campuses"])
    return {name: fleet_inventory.pis_of(inventory, name) for name in names}


def _stale_s(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise fleet_runner.RunnerError(f"stale_s: {fleet_fields.shown(value)} is not a number of seconds")
    return seconds


def status(campus=None, stale_s=DEFAULT_STALE_S, timeout=30):
    """
    Latest temperature/humidity/smoke of every Pi, grouped by campus.

    Pis that do not answer are shown with their last cached reading,
    ``stale: true`` when it is older than ``stale_s`` seconds (default 600).
    Fails (exit code 1) when a Pi has no fresh reading or a sensor error;
    Pis with a value out of range are listed under ``alerting``.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_env.status
        salt-run kiosk_env.status campus=riverside stale_s=300 --out=json
    """
    try:
        stale_s = _stale_s(stale_s)
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        campus_pis = _campus_pis(campus)
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    pis = sorted({p for ids in campus_pis.values() for p in ids})
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        returns = fleet_runner.call(client, pis, "kiosk_env.read", timeout=timeout)
    store = fleet_state.Store(os.path.join(__opts__["cachedir"], STATE_DIR), READINGS_FILE,
                              {"readings": {}}, 30, fleet_env.EnvError)
    try:
        with store.locked() as state:
            state["readings"].update({p: r for p, r in returns.answered.items()
                                      if isinstance(r, dict) and isinstance(r.get("at"), (int, float))})
            cached = state["readings"]
        # a failed Pi's error text is shown; silent and conflicting ones have no reading
        report = fleet_env.status_report(campus_pis, returns.returns, cached, time.time(), stale_s)
    except fleet_env.EnvError as exc:
        return fleet_runner.fail(__context__, exc)
    bad = sorted(set(report["stale"]) | set(report["missing"]) | set(report["failing"]))
    report["result"] = not bad
    if bad:
        report["error"] = (
            f"no fresh reading from {', '.join(sorted(set(report['stale']) | set(report['missing']))) or 'none'};"
            f" sensor errors on {', '.join(report['failing']) or 'none'}"
        )
    return fleet_runner.finish(__context__, report)

