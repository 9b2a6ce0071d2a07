"""
Environment sensing on the campus Pis: a DHT11 (temperature, humidity) read
through the kernel's IIO driver and an MQ-2 smoke sensor's digital output read
through the GPIO character device (libgpiod v2).

Pure logic, plus a few small read helpers that take their paths/objects as
arguments (tests build a fake sysfs tree and pass a fake GPIO reader):

* :func:`check_config` normalises the ``kiosk_env`` beacon configuration and
  raises :class:`EnvError` naming every bad key.
* :func:`find_dht11` / :func:`read_dht11` find the IIO device whose ``name``
  is ``dht11`` (never assuming ``iio:device0``) and read it with bounded
  retries (the DHT11 fails routinely with EIO/ETIMEDOUT).
* :func:`evaluate` turns one interval's sample into beacon events, with
  hysteresis, MQ-2 warm-up and "N consecutive failed intervals" sensor
  errors. Its state is a plain JSON-able dict passed in and returned.
* :func:`render_textfile` / :func:`write_textfile` produce the node_exporter
  textfile collector file.
"""

import glob
import math
import os
import re
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_metrics
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_metrics

DEFAULT_SYSFS_ROOT = "/sys"
DEFAULT_WARMUP_S = 120
DEFAULT_RETRIES = 2
DEFAULT_ERROR_AFTER = 3
DEFAULT_REPORT_EVERY = 10
DEFAULT_HYSTERESIS = {"temperature": 1.0, "humidity": 3.0}
MAX_RETRY_DELAY_S = 0.05  # a beacon must not block the minion's loop
TEXTFILE_NAME = "kiosk_env.prom"
DHT11_NAME = "dht11"
# what the kernel's dht11 driver can report at all; anything else is garbage
LIMITS = {"temperature": (-40.0, 80.0), "humidity": (0.0, 100.0)}
SYSFS_FILES = {"temperature": "in_temp_input", "humidity": "in_humidityrelative_input"}
UNITS = {"temperature": "C", "humidity": "%RH"}
# keys Salt itself puts into (or reads from) a beacon's config list
SALT_BEACON_KEYS = {"interval", "enabled", "_beacon_name", "beacon_module", "run_once",
                    "disable_during_state_run"}
CONFIG_KEYS = {"sysfs_root", "gpio", "temperature", "humidity", "smoke", "hysteresis", "warmup_s",
               "retries", "error_after", "report_every", "textfile_dir", "campus"}
GPIO_KEYS = {"chip_label", "line", "active_low", "dev_dir"}
_LABEL = fleet_fields.NAME


class EnvError(fleet_fields.FieldErrors):
    """Bad configuration or a bad reading; the message names the key or file."""


class SensorMissing(EnvError):
    """The device (IIO dht11, GPIO chip, gpiod library) is not there."""


class SensorReadError(EnvError):
    """A sensor read failed every attempt; ``attempts`` says how many were made."""

    def __init__(self, errors, attempts=1):
        super().__init__(errors)
        self.attempts = attempts


# --------------------------------------------------------------------------- config


def _number(value, field, errors, low=None, high=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        errors.append(f"{field}: {value!r} is not a number")
        return None
    if integer and int(value) != value:
        errors.append(f"{field}: {value!r} is not a whole number")
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        errors.append(f"{field}: {value!r} is outside {low}-{high}")
        return None
    return int(value) if integer else float(value)


def _absolute_path(value, field, errors):
    """True for an absolute path the OS can take; else the problem is recorded."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096:
        errors.append(f"{field}: {value!r} is not an absolute path")
        return False
    bad = fleet_fields.bad_character(value)
    if bad:
        errors.append(f"{field}: the path contains {bad}")
        return False
    return True


def _range(value, field, errors):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        errors.append(f"{field}: expected [min, max], got {value!r}")
        return None
    low, high = LIMITS[field]
    first = _number(value[0], f"{field}[0] (min)", errors, low, high)
    second = _number(value[1], f"{field}[1] (max)", errors, low, high)
    if first is None or second is None:
        return None
    if first >= second:
        errors.append(f"{field}: min {first} must be below max {second}")
        return None
    return [first, second]


def _gpio(value, smoke, errors):
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.append(f"gpio: expected a mapping {{chip_label, line, active_low}}, got {value!r}")
        return None
    unknown, hint = _unknown_keys(value, GPIO_KEYS)
    if unknown:
        errors.append(f"gpio: unknown key {unknown} (known: {', '.join(sorted(GPIO_KEYS))}){hint}")
    label = value.get("chip_label")
    line = value.get("line")
    if smoke or value:
        if not isinstance(label, str) or not label.strip() or len(label) > 64 or fleet_fields.bad_character(label):
            errors.append(f"gpio.chip_label: {label!r} is not a chip label (e.g. pinctrl-bcm2711; see gpiodetect)")
        if isinstance(line, bool) or not (
            (isinstance(line, int) and 0 <= line <= 1023)
            or (isinstance(line, str) and line.strip() and len(line) <= 64 and not fleet_fields.bad_character(line))
        ):
            errors.append(f"gpio.line: {line!r} is not a line offset (0-1023) or line name (e.g. GPIO17)")
    active_low = value.get("active_low", True)  # MQ-2 boards pull DO low on smoke
    if not isinstance(active_low, bool):
        errors.append(f"gpio.active_low: {active_low!r} is not true/false")
    dev_dir = value.get("dev_dir", "/dev")
    if not _absolute_path(dev_dir, "gpio.dev_dir", errors):
        dev_dir = "/dev"
    return {"chip_label": label, "line": line, "active_low": active_low, "dev_dir": dev_dir}


def _hysteresis(value, errors):
    if value is None:
        return dict(DEFAULT_HYSTERESIS)
    if isinstance(value, dict):
        unknown, hint = _unknown_keys(value, set(DEFAULT_HYSTERESIS))
        if unknown:
            errors.append(f"hysteresis: unknown key {unknown} (known: temperature, humidity){hint}")
        ret = {}
        for key, default in DEFAULT_HYSTERESIS.items():
            ret[key] = _number(value.get(key, default), f"hysteresis.{key}", errors, 0, 50)
        return ret
    number = _number(value, "hysteresis", errors, 0, 50)
    return {"temperature": number, "humidity": number}


def _unknown_keys(mapping, known):
    """
    ``(names, hint)``: the keys of ``mapping`` not in ``known``, as text,
    and a hint for the boolean case. YAML 1.1 reads a
    bare ``on:``/``off:``/``yes:`` key as a boolean and ``1.10:`` as 1.1, so
    keys may be of any type: shown with repr.
    """
    unknown = sorted((k for k in mapping if not (isinstance(k, str) and k in known)), key=repr)
    return ", ".join(k if isinstance(k, str) else repr(k) for k in unknown), (
        "; YAML reads a bare on/off/yes/no key as true/false: quote it" if any(isinstance(k, bool) for k in unknown)
        else ""
    )


def config_dict(config):
    """
    Salt hands a beacon its config as a list of one-key dicts (the YAML list
    under ``beacons: kiosk_env:``); accept that, or a plain dict.
    """
    if isinstance(config, dict):
        return dict(config)
    if not isinstance(config, (list, tuple)):
        raise EnvError(f"kiosk_env: the beacon configuration must be a list of mappings, got {type(config).__name__}")
    merged = {}
    for index, item in enumerate(config):
        if not isinstance(item, dict):
            raise EnvError(f"kiosk_env[{index}]: expected a mapping like '- temperature: [10, 30]', got {item!r}")
        merged.update(item)
    return merged


def check_config(config):
    """
    Validate a ``kiosk_env`` beacon configuration (list of dicts, or a dict)
    and return it normalised with defaults filled in. Raises :class:`EnvError`
    listing every problem, each naming its key.
    """
    raw = config_dict(config)
    errors = []
    unknown, hint = _unknown_keys(raw, CONFIG_KEYS | SALT_BEACON_KEYS)
    if unknown:
        errors.append(f"{unknown}: unknown key (known: {', '.join(sorted(CONFIG_KEYS))}){hint}")
    sysfs_root = raw.get("sysfs_root", DEFAULT_SYSFS_ROOT)
    if not _absolute_path(sysfs_root, "sysfs_root", errors):
        sysfs_root = DEFAULT_SYSFS_ROOT
    smoke = raw.get("smoke", False)
    if not isinstance(smoke, bool):
        errors.append(f"smoke: {smoke!r} is not true/false")
        smoke = False
    textfile_dir = raw.get("textfile_dir")
    if textfile_dir is not None and not _absolute_path(textfile_dir, "textfile_dir", errors):
        textfile_dir = None
    campus = raw.get("campus")
    if campus is not None and (not isinstance(campus, str) or not _LABEL.match(campus)):
        errors.append(f"campus: {campus!r} is not a valid name (letters, digits, . _ -)")
    ret = {
        "sysfs_root": sysfs_root,
        "temperature": _range(raw.get("temperature"), "temperature", errors),
        "humidity": _range(raw.get("humidity"), "humidity", errors),
        "smoke": smoke,
        "gpio": _gpio(raw.get("gpio"), smoke, errors),
        "hysteresis": _hysteresis(raw.get("hysteresis"), errors),
        "warmup_s": _number(raw.get("warmup_s", DEFAULT_WARMUP_S), "warmup_s", errors, 0, 3600),
        "retries": _number(raw.get("retries", DEFAULT_RETRIES), "retries", errors, 0, 5, integer=True),
        "error_after": _number(raw.get("error_after", DEFAULT_ERROR_AFTER), "error_after", errors, 1, 1000,
                               integer=True),
        "report_every": _number(raw.get("report_every", DEFAULT_REPORT_EVERY), "report_every", errors, 0,
                                100000, integer=True),
        "textfile_dir": textfile_dir,
        "campus": campus,
    }
    for metric in ("temperature", "humidity"):
        span, margin = ret[metric], (ret["hysteresis"] or {}).get(metric)
        if span and margin is not None and span[1] - span[0] <= 2 * margin:
            errors.append(
                f"hysteresis.{metric}: {margin} is too wide for {metric} {span}: a value could never clear"
                f" (needs max - min > 2 x hysteresis)"
            )
    if errors:
        raise EnvError(errors)
    return ret


# --------------------------------------------------------------------------- DHT11 via sysfs


def _device_sort_key(path):
    match = re.search(r"(\d+)$", path)
    return (int(match.group(1)) if match else -1, path)


def find_dht11(sysfs_root=DEFAULT_SYSFS_ROOT):
    """
    Return the IIO device directory whose ``name`` file reads ``dht11``.
    :class:`SensorMissing` names what was searched and what was found.
    """
    if not isinstance(sysfs_root, str) or not sysfs_root:
        raise EnvError(f"sysfs_root: {sysfs_root!r} is not a path")
    base = os.path.join(sysfs_root, "bus", "iio", "devices")
    if not os.path.isdir(base):
        raise SensorMissing(
            f"dht11: {base} does not exist (no IIO bus; on a Pi add dtoverlay=dht11,gpiopin=N to config.txt)"
        )
    found = []
    for device in sorted(glob.glob(os.path.join(base, "iio:device*")), key=_device_sort_key):
        try:
            with open(os.path.join(device, "name"), encoding="ascii", errors="replace") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        if name == DHT11_NAME:
            return device
        found.append(f"{os.path.basename(device)}={name}")
    raise SensorMissing(
        f"dht11: no IIO device named dht11 under {base} (found: {', '.join(found) or 'none'};"
        f" is the dht11 overlay loaded?)"
    )


def parse_milli(text, path, metric):
    """
    Parse a sysfs value in thousandths (``in_temp_input`` is milli-degrees C,
    ``in_humidityrelative_input`` milli-percent) and return the scaled float.
    Garbage, empty or impossible values raise :class:`EnvError` naming ``path``.
    """
    if not isinstance(metric, str) or metric not in LIMITS:
        raise EnvError(f"metric: {metric!r} is not one of {', '.join(sorted(LIMITS))}")
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str) or not text.strip():
        raise EnvError(f"{path}: empty value")
    try:
        milli = int(text.strip())
        value = milli / 1000.0
    except (ValueError, OverflowError):  # OverflowError: hundreds of digits
        raise EnvError(f"{path}: not an integer: {text.strip()[:40]!r}") from None
    low, high = LIMITS[metric]
    if not low <= value <= high:
        raise EnvError(f"{path}: {metric} {value} {UNITS[metric]} is outside {low}-{high}")
    return value


def _read_once(device):
    values = {}
    for metric, filename in SYSFS_FILES.items():
        path = os.path.join(device, filename)
        with open(path, encoding="ascii", errors="replace") as handle:
            values[metric] = parse_milli(handle.read(), path, metric)
    return values


def read_dht11(device, retries=DEFAULT_RETRIES, delay_s=0.0, sleep=time.sleep):
    """
    Read temperature and humidity from the IIO ``device`` directory, trying
    ``retries`` more times on an I/O error (EIO/ETIMEDOUT are routine for a
    DHT11) or a garbage value; ``delay_s`` (at most 0.05 s) between attempts.

    Returns ``{"temperature": C, "humidity": %RH, "failed_attempts": n}``.
    Raises :class:`SensorMissing` when the device is gone and
    :class:`SensorReadError` (naming the file, with ``attempts``) when every
    attempt failed.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 5:
        raise EnvError(f"retries: {retries!r} is outside 0-5")
    if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not 0 <= delay_s <= MAX_RETRY_DELAY_S:
        raise EnvError(f"delay_s: {delay_s!r} is outside 0-{MAX_RETRY_DELAY_S}")
    last = None
    for attempt in range(retries + 1):
        if attempt and delay_s:
            sleep(delay_s)
        try:
            values = _read_once(device)
        except FileNotFoundError as exc:
            raise SensorMissing(f"dht11: {exc.filename} is gone (device removed?)") from exc
        except OSError as exc:
            last = f"{exc.filename or device}: {exc.strerror or exc}"
        except EnvError as exc:
            last = str(exc)
        else:
            values["failed_attempts"] = attempt
            return values
    raise SensorReadError(f"{last} ({retries + 1} attempts)", attempts=retries + 1)


def read_uptime(path="/proc/uptime"):
    """Seconds since boot from ``/proc/uptime``; ``None`` when unreadable."""
    try:
        with open(path, encoding="ascii") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- MQ-2 via libgpiod v2


def load_gpiod():
    """Import the ``gpiod`` (libgpiod v2) bindings; :class:`SensorMissing` when absent or v1."""
    try:
        import gpiod  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise SensorMissing(
            "gpio: the gpiod Python package (libgpiod v2 bindings) is not installed;"
            " pip install 'gpiod>=2.2,<3' into Salt's Python, or set smoke: false"
        ) from None
    if not hasattr(gpiod, "request_lines") or not hasattr(gpiod, "LineSettings"):
        raise SensorMissing("gpio: the installed gpiod package is libgpiod v1; kiosk_env needs gpiod>=2.2")
    return gpiod


def find_chip(chip_label, dev_dir="/dev", gpiod=None):
    """Return the ``/dev/gpiochipN`` path whose label is ``chip_label``; :class:`SensorMissing` names the labels seen."""
    if not isinstance(chip_label, str) or not chip_label:
        raise EnvError(f"gpio.chip_label: {chip_label!r} is not a chip label")
    gpiod = gpiod or load_gpiod()
    seen = []
    for path in sorted(glob.glob(os.path.join(dev_dir, "gpiochip*")), key=_device_sort_key):
        try:
            if not gpiod.is_gpiochip_device(path):
                continue
            with gpiod.Chip(path) as chip:
                label = chip.get_info().label
        except OSError as exc:
            seen.append(f"{os.path.basename(path)}=<{exc.strerror or exc}>")
            continue
        if label == chip_label:
            return path
        seen.append(f"{os.path.basename(path)}={label}")
    raise SensorMissing(
        f"gpio.chip_label: no GPIO chip labelled {chip_label!r} under {dev_dir} (found: {', '.join(seen) or 'none'})"
    )


class GpiodReader:
    """
    The MQ-2's digital output through the GPIO character device (libgpiod v2).

    The reader interface the beacon and module use is just ``read() -> bool``
    (True = smoke) and ``close()``; tests pass any object with those. The line
    is requested, read and released on every ``read()`` (a few syscalls): no
    file descriptor lives across beacon intervals or forked job processes,
    and an on-demand ``kiosk_env.read`` never finds the line held by the beacon.
    """

    def __init__(self, chip_label, line, active_low=True, dev_dir="/dev", gpiod=None):
        self.gpiod = gpiod or load_gpiod()
        self.chip_label = chip_label
        self.line = line
        self.active_low = bool(active_low)
        self.path = find_chip(chip_label, dev_dir, self.gpiod)

    def read(self):
        """True when the MQ-2 reports smoke (its line is active)."""
        from gpiod.line import Direction, Value  # pylint: disable=import-outside-toplevel

        settings = self.gpiod.LineSettings(direction=Direction.INPUT, active_low=self.active_low)
        with self.gpiod.request_lines(self.path, consumer="kiosk_env", config={self.line: settings}) as request:
            return request.get_value(self.line) == Value.ACTIVE

    def close(self):
        """Nothing is held between reads."""


def read_smoke(reader, retries=DEFAULT_RETRIES):
    """
    Read the smoke line through ``reader`` (``read() -> bool``), retrying on
    OSError. Returns ``(smoke, failed_attempts)``; :class:`SensorReadError`
    when every attempt failed.
    """
    if reader is None or not callable(getattr(reader, "read", None)):
        raise EnvError(f"gpio: {reader!r} is not a GPIO reader (needs read() -> bool)")
    last = None
    for attempt in range(retries + 1):
        try:
            value = reader.read()
        except OSError as exc:
            last = f"gpio: {exc.strerror or exc}"
            continue
        if not isinstance(value, bool):
            raise EnvError(f"gpio: reader returned {value!r}, not true/false")
        return value, attempt
    raise SensorReadError(f"{last} ({retries + 1} attempts)", attempts=retries + 1)


# --------------------------------------------------------------------------- evaluation


def new_state(now, uptime_s=None):
    """
    A fresh beacon state. The MQ-2 heater is powered since boot, so its
    warm-up counts from boot when ``uptime_s`` is known, else from now (the
    first read).
    """
    heater_since = now - uptime_s if isinstance(uptime_s, (int, float)) and uptime_s >= 0 else now
    return {
        "intervals": 0,
        "heater_since": heater_since,
        "alerts": {},          # metric -> "min" | "max" | True (smoke)
        "failures": {},        # sensor -> consecutive failed intervals
        "sensor_errors": {},   # sensor -> message, once reported
        "read_errors": {"dht11": 0, "mq2": 0},  # failed read attempts, for the counter
        "last": {},            # last good values
    }


def sample(temperature=None, humidity=None, smoke=None, errors=None, failed_attempts=None):
    """Build one interval's sample for :func:`evaluate`."""
    return {
        "temperature": temperature,
        "humidity": humidity,
        "smoke": smoke,
        "errors": dict(errors or {}),
        "failed_attempts": dict(failed_attempts or {}),
    }


def _range_alert(metric, value, span, margin, active):
    """Return (event kind or None, new active bound or None) for one metric."""
    low, high = span
    if value > high:
        bound = "max"
    elif value < low:
        bound = "min"
    else:
        bound = None
    if not active:
        return ("alert", bound) if bound else (None, None)
    if bound and bound != active:  # jumped straight across the whole range
        return "alert", bound
    if low + margin <= value <= high - margin:
        return "clear", None
    return None, active  # still out, or inside but within the margin: no flapping


def evaluate(config, state, reading, now):
    """
    One beacon interval: compare ``reading`` (see :func:`sample`) with the
    normalised ``config`` and ``state`` (see :func:`new_state`), and return
    ``(events, state)``. Events are dicts whose ``tag`` is the suffix Salt
    appends to ``salt/beacon/<id>/kiosk_env/``:

    ``alert``
        a value crossed out of its range (``metric``, ``value``, ``bound``,
        ``limit``, ``range``, ``severity``: smoke is ``critical``);
    ``clear``
        back inside by the hysteresis margin (or a failed sensor reads again);
    ``sensor_error``
        ``error_after`` consecutive intervals without a reading;
    ``reading``
        every ``report_every`` intervals (the first one included), for trends.
    """
    if not isinstance(config, dict) or "error_after" not in config:
        raise EnvError("config: expected the output of check_config()")
    _check_state(state)
    if not isinstance(reading, dict) or "errors" not in reading:
        raise EnvError("reading: expected the output of sample()")
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise EnvError(f"now: {now!r} is not a time in seconds")
    state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}
    state["intervals"] += 1
    events = []
    campus = config.get("campus")

    def event(tag, **data):
        data = {"tag": tag, **data}
        if campus:
            data["campus"] = campus
        events.append(data)

    for sensor, count in reading["failed_attempts"].items():
        state["read_errors"][sensor] = state["read_errors"].get(sensor, 0) + int(count)

    # sensors that failed this interval, or read again
    sensors = ["dht11"] + (["mq2"] if config["smoke"] else [])
    for sensor in sensors:
        error = reading["errors"].get(sensor)
        if error:
            state["failures"][sensor] = state["failures"].get(sensor, 0) + 1
            if state["failures"][sensor] == config["error_after"]:
                state["sensor_errors"][sensor] = error
                event("sensor_error", sensor=sensor, error=error, intervals=state["failures"][sensor],
                      severity="warning")
        else:
            state["failures"].pop(sensor, None)
            if state["sensor_errors"].pop(sensor, None) is not None:
                event("clear", metric=sensor, reason=f"{sensor} reads again")

    for metric in ("temperature", "humidity"):
        value = reading.get(metric)
        if value is None:
            continue  # no reading: keep the alert state as it is
        state["last"][metric] = value
        span = config[metric]
        if not span:
            continue
        kind, bound = _range_alert(metric, value, span, config["hysteresis"][metric], state["alerts"].get(metric))
        if bound:
            state["alerts"][metric] = bound
        else:
            state["alerts"].pop(metric, None)
        if kind == "alert":
            event("alert", metric=metric, value=value, bound=bound, limit=span[1] if bound == "max" else span[0],
                  range=list(span), unit=UNITS[metric], severity="warning")
        elif kind == "clear":
            event("clear", metric=metric, value=value, range=list(span), unit=UNITS[metric])

    warming = warming_up(config, state, now)
    smoke = reading.get("smoke")
    if config["smoke"] and smoke is not None and not warming:
        state["last"]["smoke"] = smoke
        if smoke and not state["alerts"].get("smoke"):
            state["alerts"]["smoke"] = True
            event("alert", metric="smoke", value=True, severity="critical")
        elif not smoke and state["alerts"].pop("smoke", None):
            event("clear", metric="smoke", value=False)

    every = config["report_every"]
    if every and (state["intervals"] - 1) % every == 0:
        event(
            "reading",
            temperature=reading.get("temperature"),
            humidity=reading.get("humidity"),
            smoke=None if warming or not config["smoke"] else smoke,
            warming_up=bool(config["smoke"] and warming),
            alerts=sorted(state["alerts"]),
            errors={s: e for s, e in reading["errors"].items() if e},
        )
    return events, state


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_state(state):
    """The state handed back in must be one :func:`new_state`/:func:`evaluate` made (the CLI can pass any)."""
    problem = None
    if not isinstance(state, dict) or not all(key in state for key in _STATE_SHAPE):
        problem = "expected the output of new_state()"
    else:
        for key, kind in _STATE_SHAPE.items():
            value = state[key]
            if kind == "count" and not _count(value):
                problem = f"{key} is {value!r}, not a count"
            elif kind == "time" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                     or not math.isfinite(value)):
                problem = f"{key} is {value!r}, not a time in seconds"
            elif kind == "counts" and not (isinstance(value, dict) and all(_count(v) for v in value.values())):
                problem = f"{key} is {value!r}, not counts per sensor"
            elif kind == "mapping" and not isinstance(value, dict):
                problem = f"{key} is {value!r}, not a mapping"
            if problem:
                break
    if problem:
        raise EnvError(f"state: {problem}")


_STATE_SHAPE = {"intervals": "count", "heater_since": "time", "alerts": "mapping", "failures": "counts",
                "sensor_errors": "mapping", "read_errors": "counts", "last": "mapping"}


def warming_up(config, state, now):
    """True while the MQ-2 heater is within ``warmup_s`` of ``state["heater_since"]``."""
    return now - state["heater_since"] < config["warmup_s"]


def check_ranges(config, values):
    """Plain range check of an on-demand reading (no hysteresis): the metrics out of range."""
    out = []
    for metric in ("temperature", "humidity"):
        span, value = config.get(metric), values.get(metric)
        if span and value is not None and not span[0] <= value <= span[1]:
            out.append(metric)
    if config.get("smoke") and values.get("smoke"):
        out.append("smoke")
    return out


# --------------------------------------------------------------------------- Prometheus textfile

METRICS = (
    ("kiosk_env_temperature_celsius", "gauge", "DHT11 temperature in degrees Celsius."),
    ("kiosk_env_humidity_percent", "gauge", "DHT11 relative humidity in percent."),
    ("kiosk_env_smoke_detected", "gauge", "MQ-2 digital output: 1 smoke, 0 none (absent while the heater warms up)."),
    ("kiosk_env_alert_active", "gauge", "1 while a kiosk_env alert is raised for the metric."),
    ("kiosk_env_sensor_up", "gauge", "1 when the sensor gave a reading in the last interval."),
    ("kiosk_env_read_errors_total", "counter", "Failed sensor read attempts since the beacon started."),
    ("kiosk_env_range_limit", "gauge", "The configured range of the metric (bound min or max), in its own unit."),
)


def render_textfile(campus, pi, values, read_errors, sensors_up, alerts=(), ranges=None):
    """
    The node_exporter textfile for one Pi: gauges ``kiosk_env_temperature_celsius``,
    ``kiosk_env_humidity_percent``, ``kiosk_env_smoke_detected``,
    ``kiosk_env_alert_active{metric}``, ``kiosk_env_sensor_up{sensor}`` and the
    counter ``kiosk_env_read_errors_total{sensor}``, all labelled ``campus`` and
    ``pi``, no timestamps. A ``None`` value is left out (no stale figure).
    ``ranges`` (optional; the beacon config's ``{"temperature": [min, max],
    "humidity": [min, max]}``) adds ``kiosk_env_range_limit{metric,bound}``,
    so an alert can tell too hot from too cold.
    """
    for field, name in (("campus", campus), ("pi", pi)):
        if not isinstance(name, str) or not name:
            raise EnvError(f"{field}: {name!r} is not a label value")
    if not isinstance(values, dict) or not isinstance(read_errors, dict) or not isinstance(sensors_up, dict):
        raise EnvError("values/read_errors/sensors_up: expected mappings")
    limits = []
    if ranges is not None:
        if not isinstance(ranges, dict):
            raise EnvError("ranges: expected a mapping of metric to [min, max]")
        for metric in ("temperature", "humidity"):
            span = ranges.get(metric)
            if span is None:
                continue
            if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in span)):
                raise EnvError(f"ranges.{metric}: {span!r} is not [min, max]")
            limits += [({"metric": metric, "bound": "min"}, span[0]), ({"metric": metric, "bound": "max"}, span[1])]
    base = {"campus": campus, "pi": pi}
    samples = {
        "kiosk_env_temperature_celsius": [(base, values.get("temperature"))],
        "kiosk_env_humidity_percent": [(base, values.get("humidity"))],
        "kiosk_env_smoke_detected": [(base, values.get("smoke"))],
        "kiosk_env_alert_active": [
            ({**base, "metric": m}, m in alerts) for m in ("temperature", "humidity", "smoke")
        ],
        "kiosk_env_sensor_up": [({**base, "sensor": s}, bool(up)) for s, up in sorted(sensors_up.items())],
        "kiosk_env_read_errors_total": [({**base, "sensor": s}, int(n)) for s, n in sorted(read_errors.items())],
        "kiosk_env_range_limit": [({**base, **labels}, v) for labels, v in limits],
    }
    try:
        return fleet_metrics.render([(name, kind, help_text, samples[name]) for name, kind, help_text in METRICS])
    except ValueError as exc:
        raise EnvError(str(exc)) from None


def write_textfile(directory, text, name=TEXTFILE_NAME):
    """Write ``text`` to ``directory/name`` atomically (see :func:`fleet_metrics.write_textfile`)."""
    try:
        return fleet_metrics.write_textfile(directory, name, text)
    except ValueError as exc:
        raise EnvError(str(exc)) from None


# --------------------------------------------------------------------------- fleet status and alerts


def _epoch(value):
    """True for a time stamp a reading can carry (finite seconds; not a boolean)."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def status_report(campus_pis, returns, cached, now, stale_s):
    """
    Merge live ``kiosk_env.read`` returns with the readings cached from
    earlier runs. ``campus_pis`` is ``{campus: [pi ids]}``, ``returns``
    ``{pi: reading}``, ``cached`` ``{pi: reading}`` (each with ``at``, epoch
    seconds). Returns ``{campus: {pi: {...reading, source, age_s, stale}}}``
    and the lists of Pis that are stale/missing/in error/alerting.
    """
    if isinstance(stale_s, bool) or not isinstance(stale_s, (int, float)) or stale_s <= 0:
        raise EnvError(f"stale_s: {stale_s!r} is not a positive number of seconds")
    if not isinstance(campus_pis, dict):
        raise EnvError(f"campus_pis: expected {{campus: [pi ids]}}, got {type(campus_pis).__name__}")
    # what the Pis answered and the cache hold is data from elsewhere: a shape that is not a reading is none
    returns = returns if isinstance(returns, dict) else {}
    cached = cached if isinstance(cached, dict) else {}
    report, stale, missing, failing, alerting = {}, [], [], [], []
    for campus, pis in sorted(campus_pis.items(), key=lambda item: str(item[0])):
        report[campus] = {}
        for pi in sorted(p for p in (pis if isinstance(pis, (list, tuple, set)) else []) if isinstance(p, str)):
            live, old = returns.get(pi), cached.get(pi)
            if isinstance(live, dict) and _epoch(live.get("at")):
                entry, source = dict(live), "live"
            elif isinstance(old, dict) and _epoch(old.get("at")):
                entry, source = dict(old), "cache"
            else:
                report[campus][pi] = {"source": None, "stale": True,
                                      "error": str(live) if live is not None else "no reading"}
                missing.append(pi)
                continue
            entry["source"] = source
            entry["age_s"] = round(max(0.0, now - entry["at"]), 1)
            entry["stale"] = entry["age_s"] > stale_s
            if entry["stale"]:
                stale.append(pi)
            if entry.get("errors"):
                failing.append(pi)
            if entry.get("alerts"):
                alerting.append(pi)
            report[campus][pi] = entry
    return {"campuses": report, "stale": stale, "missing": missing, "failing": failing, "alerting": alerting}
