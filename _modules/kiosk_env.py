"""
Environment sensors of a campus Pi: DHT11 temperature/humidity (IIO sysfs)
and MQ-2 smoke (GPIO, libgpiod v2).

``kiosk_env.read`` takes an on-demand reading; ``kiosk_env.check`` checks the
beacon configuration and the devices; ``kiosk_env.poll`` is one interval of
the ``kiosk_env`` beacon (the beacon calls it through ``__salt__``: Salt's
beacon loader cannot import the pack's ``_utils``, this module can).

Settings come from the minion's beacon configuration (``beacons: kiosk_env:``
in the minion config, ``beacons.conf`` or pillar), overridden by keyword
arguments. Logic: ``_utils/fleet_env.py``.
"""

import logging
import math
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_env, fleet_inventory
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_env
    import fleet_inventory

from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_env"

BEACON = "kiosk_env"
# A GPIO reader object (``read() -> bool``) placed here is used instead of
# opening the chip with gpiod: the beacon passes its own; tests put a fake one.
READER_KEY = "kiosk_env.gpio_reader"


def __virtual__():
    # The DHT11 part needs nothing but sysfs; gpiod is checked when smoke is configured.
    return __virtualname__


def _beacon_config():
    for source in (__opts__.get("beacons"), __pillar__.get("beacons")):
        if isinstance(source, dict) and source.get(BEACON) is not None:
            return fleet_env.config_dict(source[BEACON])
    return {}


def _config(config=None, kwargs=None):
    """Normalised settings: ``config`` (or the minion's beacon config) updated with ``kwargs``."""
    merged = fleet_env.config_dict(config) if config is not None else _beacon_config()
    merged.update({k: v for k, v in (kwargs or {}).items() if not k.startswith("__")})
    return fleet_env.check_config(merged)


def _campus(cfg):
    """The beacon config's campus, else the campus of this Pi in its pillar slice (never a grain: the minion writes those)."""
    if cfg.get("campus"):
        return cfg["campus"]
    try:
        inventory = fleet_inventory.from_pillar(__pillar__)
        return fleet_inventory.campus_of(inventory, __opts__["id"])
    except fleet_inventory.InventoryError:
        return "unknown"


def _reader(cfg, reader=None):
    """The GPIO reader: one supplied, one in ``__context__``, or gpiod on the configured chip."""
    reader = reader if reader is not None else __context__.get(READER_KEY)
    if reader is not None:
        return reader
    gpio = cfg["gpio"]
    return fleet_env.GpiodReader(gpio["chip_label"], gpio["line"], gpio["active_low"], gpio["dev_dir"])


def _read_sensors(cfg, reader, smoke_wanted):
    """Read what is configured; never raises for a sensor problem (it lands in ``errors``)."""
    values = {"temperature": None, "humidity": None, "smoke": None, "device": None}
    errors, failed = {}, {}
    try:
        device = fleet_env.find_dht11(cfg["sysfs_root"])
        values["device"] = device
        dht = fleet_env.read_dht11(device, cfg["retries"])
        values["temperature"], values["humidity"] = dht["temperature"], dht["humidity"]
        failed["dht11"] = dht["failed_attempts"]
    except fleet_env.SensorReadError as exc:
        errors["dht11"], failed["dht11"] = str(exc), exc.attempts
    except fleet_env.EnvError as exc:
        errors["dht11"], failed["dht11"] = str(exc), 1
    if smoke_wanted:
        try:
            values["smoke"], failed["mq2"] = fleet_env.read_smoke(_reader(cfg, reader), cfg["retries"])
        except fleet_env.SensorReadError as exc:
            errors["mq2"], failed["mq2"] = str(exc), exc.attempts
        except fleet_env.EnvError as exc:
            errors["mq2"], failed["mq2"] = str(exc), 1
    return values, errors, failed


def check(config=None, gpio_reader=None, **kwargs):
    """
    Check the ``kiosk_env`` beacon settings and that the devices are there:
    the IIO device named ``dht11`` and, when ``smoke: true``, the gpiod
    package and the GPIO chip with the configured label. The beacon's
    ``validate()`` calls this.

    Returns ``{"result": bool, "comment": "...", "devices": {...}}``; the
    comment names the bad key or the missing device.

    CLI Example:

    .. code-block:: bash

        salt 'pi-*' kiosk_env.check
        salt pi-riverside-1 kiosk_env.check temperature='[10, 32]' smoke=False
    """
    try:
        cfg = _config(config, kwargs)
    except fleet_env.EnvError as exc:
        return {"result": False, "comment": f"kiosk_env: {exc}", "devices": {}}
    problems, devices = [], {}
    try:
        devices["dht11"] = fleet_env.find_dht11(cfg["sysfs_root"])
    except fleet_env.EnvError as exc:
        problems.append(str(exc))
    if cfg["smoke"]:
        if gpio_reader is not None or __context__.get(READER_KEY) is not None:
            devices["gpio_chip"] = "(reader supplied)"
        else:
            try:
                devices["gpio_chip"] = fleet_env.find_chip(cfg["gpio"]["chip_label"], cfg["gpio"]["dev_dir"])
            except fleet_env.EnvError as exc:
                problems.append(str(exc))
    if problems:
        return {"result": False, "comment": f"kiosk_env: {'; '.join(problems)}", "devices": devices}
    found = ", ".join(f"{k} at {v}" for k, v in devices.items())
    return {"result": True, "comment": f"kiosk_env: valid ({found})", "devices": devices}


def read(**kwargs):
    """
    Take one reading now: temperature (C), humidity (%RH) and, when
    ``smoke: true`` and the MQ-2 heater has warmed up (``warmup_s`` after
    boot), smoke. Settings come from the minion's ``kiosk_env`` beacon config;
    any key of it can be given as a keyword argument.

    Returns ``{"pi", "campus", "at" (epoch s), "temperature", "humidity",
    "smoke", "warming_up", "alerts" (metrics out of range), "errors"}``.
    Exit code 1 when a sensor could not be read.

    CLI Example:

    .. code-block:: bash

        salt 'pi-*' kiosk_env.read
        salt pi-riverside-1 kiosk_env.read smoke=False sysfs_root=/sys
    """
    try:
        cfg = _config(None, kwargs)
    except fleet_env.EnvError as exc:
        raise SaltInvocationError(str(exc)) from exc
    uptime = fleet_env.read_uptime()
    warming = bool(cfg["smoke"]) and uptime is not None and uptime < cfg["warmup_s"]
    values, errors, _ = _read_sensors(cfg, None, cfg["smoke"] and not warming)
    ret = {
        "pi": __opts__["id"],
        "campus": _campus(cfg),
        "at": round(time.time(), 3),
        "temperature": values["temperature"],
        "humidity": values["humidity"],
        "smoke": values["smoke"],
        "warming_up": warming,
        "device": values["device"],
        "alerts": fleet_env.check_ranges(cfg, values),
        "errors": errors,
    }
    if errors:
        __context__["retcode"] = 1
    return ret


def poll(config=None, state=None, gpio_reader=None, now=None):
    """
    One interval of the ``kiosk_env`` beacon: read the sensors, evaluate the
    thresholds against ``state`` (hysteresis, warm-up, sustained failures),
    write the node_exporter textfile when ``textfile_dir`` is set.

    Returns ``{"events": [...], "state": {...}}``; pass ``state`` back in on
    the next call. Bounded: at most ``retries + 1`` reads per sensor, no sleep.

    CLI Example:

    .. code-block:: bash

        salt-call kiosk_env.poll
    """
    try:
        cfg = _config(config)
    except fleet_env.EnvError as exc:
        raise SaltInvocationError(str(exc)) from exc
    now = time.monotonic() if now is None else now
    try:
        if isinstance(now, bool) or not math.isfinite(float(now)):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise SaltInvocationError(f"now: {now!r} is not a time in seconds") from None
    now = float(now)
    if state is None:
        state = fleet_env.new_state(now, fleet_env.read_uptime())
    values, errors, failed = _read_sensors(cfg, gpio_reader, cfg["smoke"])
    cfg["campus"] = _campus(cfg)
    reading = fleet_env.sample(values["temperature"], values["humidity"], values["smoke"], errors, failed)
    try:
        events, state = fleet_env.evaluate(cfg, state, reading, now)
    except fleet_env.EnvError as exc:  # a state that is not the one poll returned last time
        raise SaltInvocationError(str(exc)) from exc
    if cfg["textfile_dir"]:
        _write_metrics(cfg, state, errors, now)
    return {"events": events, "state": state}


def _write_metrics(cfg, state, errors, now):
    last = state["last"]
    dht_ok = "dht11" not in state["sensor_errors"]
    metrics = {
        "temperature": last.get("temperature") if dht_ok else None,
        "humidity": last.get("humidity") if dht_ok else None,
        "smoke": None,
    }
    sensors_up = {"dht11": "dht11" not in errors}
    read_errors = {"dht11": state["read_errors"].get("dht11", 0)}
    if cfg["smoke"]:
        sensors_up["mq2"] = "mq2" not in errors
        read_errors["mq2"] = state["read_errors"].get("mq2", 0)
        if not fleet_env.warming_up(cfg, state, now) and "mq2" not in state["sensor_errors"]:
            metrics["smoke"] = last.get("smoke")
    # the configured ranges too, so an alert rule can tell too hot from too cold
    text = fleet_env.render_textfile(cfg["campus"], __opts__["id"], metrics, read_errors, sensors_up,
                                     sorted(state["alerts"]),
                                     ranges={m: cfg.get(m) for m in ("temperature", "humidity")})
    try:
        fleet_env.write_textfile(cfg["textfile_dir"], text)
    except (OSError, fleet_env.EnvError) as exc:  # metrics must never stop the alerts
        log.warning("kiosk_env: cannot write the textfile in %s: %s", cfg["textfile_dir"], exc)
