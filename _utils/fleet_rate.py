"""
Bandwidth caps for release transfers: the rate syntax, which rate applies to
which campus and hop, and the token bucket that paces a download.

Rates (``parse_rate``), case-insensitive, an optional ``/s`` at the end:

* a bare number (``125000``, YAML int or string): bytes per second;
* bits per second, as ``tc`` writes them, decimal: ``bit``, ``kbit``
  (1,000 bit/s), ``mbit`` (10**6), ``gbit`` (10**9); ``2mbit`` = 250,000 B/s;
* bytes per second, decimal: ``b``, ``kb`` (1,000 B/s), ``mb``, ``gb``;
* bytes per second, binary: ``kib`` (1,024 B/s), ``mib``, ``gib``.

A fraction is allowed (``1.5mbit``); the result is rounded down to whole
bytes per second and must lie within :data:`MIN_RATE`..:data:`MAX_RATE`
(below 1,000 B/s a 50 MB release takes more than half a day: a typo, not a
cap). Zero, negatives, ``nan``/``inf``, booleans and unknown units are
refused, naming the field.

Which cap (top master config ``kiosk_release``):

* ``wan_rate``: the master -> seed Pi staging of every campus (the WAN hop);
* ``campus_rates: {campus: rate}``: a campus's own WAN cap instead of
  ``wan_rate`` (``null`` or ``unlimited``: no cap for that campus);
* ``lan_rate``: the Pi -> Pi copies (``source=campus``); a kiosk reads the
  same key from its own minion config or pillar for its downloads.

No key: no cap on that hop. Only HTTP transfers are paced: a Pi staging
from ``salt://`` (no ``kiosk_release:master_url``) uses Salt's
``cp.get_file``, which cannot be.
"""

import math
import re
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_release
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_release

MIN_RATE = 1000  # bytes/s
MAX_RATE = 10**11  # bytes/s (800 Gbit/s): anything above is no cap at all
MAX_BURST = 64 * 1024  # bytes a paced download may send at once after a pause
UNLIMITED = "unlimited"

# unit -> bytes per second for 1 of it
UNITS = {
    "": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "bit": 1 / 8, "kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8,
}
_RATE = re.compile(r"^\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*([a-z]{0,4})(?:/s)?\s*\Z")


class RateError(fleet_release.ReleaseError):
    """A rate or rate setting that cannot be used (the message names the field)."""


def parse_rate(value, field="wan_rate"):
    """
    Bytes per second of a rate (module docstring: units), an int within
    :data:`MIN_RATE`..:data:`MAX_RATE`; :class:`RateError` naming ``field``
    otherwise.
    """
    if isinstance(value, bool):
        raise RateError(f"{field}: {value!r} is not a rate (bytes/s, or a number with a unit like 2mbit)")
    if isinstance(value, int):
        number, unit = value, ""
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RateError(f"{field}: {fleet_fields.shown(value)} is not a rate")
        number, unit = value, ""
    elif isinstance(value, str):
        match = _RATE.match(value.lower())
        if not match or match.group(2) not in UNITS:
            raise RateError(f"{field}: {fleet_fields.shown(value)} is not a rate (bytes/s, or a number with one "
                            f"of the units {', '.join(u for u in UNITS if u)}, e.g. 2mbit)")
        number, unit = float(match.group(1)), match.group(2)
    else:
        raise RateError(f"{field}: {fleet_fields.shown(value)} is not a rate (bytes/s, or a string like 2mbit)")
    if number <= 0:
        raise RateError(f"{field}: {fleet_fields.shown(value)} is not above 0 (leave the key out for no cap)")
    rate = number * UNITS[unit]
    rate = int(rate) if rate < 2 * MAX_RATE else 2 * MAX_RATE  # a huge int is shown, not converted
    if not MIN_RATE <= rate <= MAX_RATE:
        raise RateError(f"{field}: {fleet_fields.shown(value)} is {rate} bytes/s, outside {MIN_RATE}-{MAX_RATE}")
    return rate


def optional_rate(value, field):
    """:func:`parse_rate`, with ``None`` (the key not set) meaning no cap (``None``)."""
    return None if value is None else parse_rate(value, field)


def campus_rates(config, campuses):
    """
    ``{campus: WAN bytes/s or None}`` for ``campuses`` from the master config
    ``kiosk_release`` (``config``, a dict): ``campus_rates[campus]`` when the
    campus is listed there (``null``/``unlimited``: no cap), else
    ``wan_rate``, else no cap. Every entry of ``campus_rates`` is checked,
    and one naming a campus not in ``campuses`` is refused (a typo would
    silently leave a campus uncapped).
    """
    if not isinstance(config, dict):
        raise RateError(f"kiosk_release: {fleet_fields.shown(config)} is not a mapping")
    default = optional_rate(config.get("wan_rate"), "kiosk_release:wan_rate")
    overrides = config.get("campus_rates")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise RateError(f"kiosk_release:campus_rates: {fleet_fields.shown(overrides)} is not a mapping "
                        "{campus: rate}")
    known = set(campuses)
    rates = {}
    for campus, value in overrides.items():
        field = f"kiosk_release:campus_rates.{campus}"
        if campus not in known:
            raise RateError(f"{field}: unknown campus {fleet_fields.shown(campus)}")
        rates[campus] = None if value is None or value == UNLIMITED else parse_rate(value, field)
    return {campus: rates.get(campus, default) for campus in campuses}


def lan_rate(config):
    """The LAN cap (Pi -> Pi, kiosks) of a ``kiosk_release`` config mapping: bytes/s, or None (no cap)."""
    if not isinstance(config, dict):
        raise RateError(f"kiosk_release: {fleet_fields.shown(config)} is not a mapping")
    return optional_rate(config.get("lan_rate"), "kiosk_release:lan_rate")


class Pacer:
    """
    A token bucket for one download: ``pacer(nbytes)`` after each network
    read sleeps as long as the bytes so far need at ``rate`` bytes/s. The
    bucket holds at most ``burst`` bytes (default ``min(rate, 64 KiB)``), so
    ``N`` bytes take at least ``(N - burst) / rate`` seconds of ``clock``
    time whatever the read sizes. ``clock`` (monotonic) and ``sleep`` are
    injectable for the tests; ``slept`` adds up the pauses.
    """

    def __init__(self, rate, burst=None, clock=time.monotonic, sleep=time.sleep, field="rate"):
        self.rate = parse_rate(rate, field)
        if burst is None:
            burst = min(self.rate, MAX_BURST)
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
            raise RateError(f"burst: {fleet_fields.shown(burst)} is not a whole number of bytes within 1-{MAX_BURST}")
        if not callable(clock) or not callable(sleep):
            raise RateError("clock: clock and sleep must be callables")
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self.slept = 0.0

    def __call__(self, nbytes):
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise RateError(f"pace: {fleet_fields.shown(nbytes)} is not a byte count")
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        self._tokens -= nbytes
        if self._tokens < 0:
            # the debt is paid by waiting; the next call's refill counts the wait (clock time)
            wait = -self._tokens / self.rate
            self._sleep(wait)
            self.slept += wait


def pacer(rate, field="rate"):
    """A :class:`Pacer` for ``rate`` (bytes/s or a rate string), or ``None`` for no cap (``rate`` None)."""
    return None if rate is None else Pacer(rate, field=field)
