"""
Beacon ``kiosk_env``: temperature/humidity (DHT11) and smoke (MQ-2) of a
campus Pi, with thresholds, hysteresis and Prometheus textfile metrics.

.. code-block:: yaml

    beacons:
      kiosk_env:
        - interval: 30                  # seconds, handled by Salt
        - temperature: [5, 32]          # C
        - humidity: [20, 80]            # %RH
        - smoke: true                   # needs gpio and the gpiod package
        - gpio: {chip_label: pinctrl-bcm2711, line: 17, active_low: true}
        - hysteresis: {temperature: 1.0, humidity: 3.0}
        - warmup_s: 120                 # MQ-2 heater warm-up after boot
        - retries: 2                    # extra DHT11 reads per interval
        - error_after: 3                # failed intervals before sensor_error
        - report_every: 10              # a reading event every N intervals
        - textfile_dir: /var/lib/prometheus/node-exporter
        - campus: riverside             # default: the Pi's campus in its pillar (inventory slice)

Events: ``salt/beacon/<pi>/kiosk_env/alert|clear|sensor_error|reading``.

Why the beacon calls ``__salt__["kiosk_env.*"]`` instead of importing
``fleet_env``: Salt's beacon loader (``salt.loader.beacons``) is built without
``extra_module_dirs``, so the pack's ``_utils`` folder is not on ``sys.path``
while a beacon loads, and a classic (synced) install has no package to
import from. The ``kiosk_env`` execution module is loaded with the utils on
its path (classic) or imports them from ``saltext_kiosk_fleet.utils``
(pip), and the beacon loader hands every beacon the minion's ``__salt__``.
So the logic has one home and one import rule, the beacon stays glue, and
the execution functions double as CLI tools (``kiosk_env.check``,
``kiosk_env.read``). Only the standard library is imported here.
"""

import json
import logging
import os
import time

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_env"

STATE_KEY = "kiosk_env.state"
READER_KEY = "kiosk_env.gpio_reader"  # a GPIO reader object (tests put a fake one here)
CHECK_KEY = "kiosk_env.check"
CHECK_TTL_S = 30  # validate() runs every loop_interval: look the devices up at most this often
STATE_FILE = "kiosk_env_beacon_state.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def __virtual__():
    if "kiosk_env.poll" not in __salt__:
        return False, "kiosk_env beacon: the kiosk_env execution module is not loaded (run saltutil.sync_all)"
    return __virtualname__


def validate(config):
    """
    Validate the beacon configuration (Salt's list of dicts) and check that
    the devices exist. Returns ``(False, message)`` naming the bad key or the
    missing device (the beacon then does not run; the minion carries on).

    CLI Example (the beacon runs from the minion's config; this checks it):

    .. code-block:: bash

        salt 'pi-*' beacons.list
        salt 'pi-*' kiosk_env.check
    """
    if not isinstance(config, list):
        return False, "kiosk_env: the beacon configuration must be a list (- temperature: [5, 32] ...)"
    try:
        key = json.dumps(config, sort_keys=True, default=str)
    except (TypeError, ValueError):  # keys of mixed types (YAML's on: is True) do not sort
        key = repr(config)
    cached = __context__.get(CHECK_KEY)
    now = time.monotonic()
    if cached and cached[0] == key and now - cached[1] < CHECK_TTL_S:
        return cached[2]
    try:
        ret = __salt__["kiosk_env.check"](config=config, gpio_reader=__context__.get(READER_KEY))
    except Exception as exc:  # pylint: disable=broad-except
        return False, f"kiosk_env: {exc}"
    result = (bool(ret["result"]), ret["comment"])
    __context__[CHECK_KEY] = (key, now, result)
    return result


def _state_path():
    return os.path.join(__opts__["cachedir"], STATE_FILE)


def _boot_id():
    try:
        with open(BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _restore_state():
    """
    The state saved by ``close()`` when Salt replaced this beacon (module or
    pillar refresh), if it is from this boot: an alert that is still on is
    then not announced again after every ``saltutil.sync_all``.
    """
    try:
        with open(_state_path(), encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return None
    boot_id = _boot_id()
    if not isinstance(saved, dict) or boot_id is None or saved.get("boot_id") != boot_id:
        return None
    state = saved.get("state")
    return state if isinstance(state, dict) and "intervals" in state else None


def beacon(config):
    """
    One interval: returns a list of events (``tag``: alert, clear,
    sensor_error, reading). Bounded work: a few sysfs reads and GPIO ioctls,
    no sleeping.

    CLI Example (the beacon runs from the minion's config; this checks it):

    .. code-block:: bash

        salt 'pi-*' beacons.list
        salt 'pi-*' kiosk_env.check
    """
    if STATE_KEY not in __context__:
        __context__[STATE_KEY] = _restore_state()
    ret = __salt__["kiosk_env.poll"](
        config=[item for item in config if "_beacon_name" not in item],
        state=__context__[STATE_KEY],
        gpio_reader=__context__.get(READER_KEY),
    )
    __context__[STATE_KEY] = ret["state"]
    return ret["events"]


def close(config):  # pylint: disable=unused-argument
    """
    Salt is replacing the beacon: keep the state for the next instance (same boot only).

    CLI Example (a refresh replaces the beacon and calls this):

    .. code-block:: bash

        salt 'pi-*' saltutil.refresh_beacons
    """
    state = __context__.get(STATE_KEY)
    if not state:
        return
    path = _state_path()
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"boot_id": _boot_id(), "saved": time.time(), "state": state}, handle)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("kiosk_env: cannot save the beacon state to %s: %s", path, exc)
