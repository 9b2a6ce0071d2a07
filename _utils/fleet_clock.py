"""
Is this Pi's clock to be trusted? Pis have no battery-backed clock: after a
power cut one boots at 1970 or at the last time it saved, until NTP (or a
peer) sets it. The reconciler shuts nothing down on an unsynchronised clock
and wakes on the calendar only when the clock is synchronised or a peer Pi
confirms it (:func:`confirmed`).

Where the state comes from
    - the kernel (production): ``adjtimex(2)`` read-only (``modes = 0``, no
      privilege needed), the call ``timedatectl`` and ``ntpstat`` read too.
      The kernel says unsynchronised when the call returns ``TIME_ERROR``
      (5) or the ``STA_UNSYNC`` status bit is set: chrony, ntpd and
      systemd-timesyncd clear it once they discipline the clock.
    - a JSON file ``{"synced": bool, "offset_s": float}`` (tests, and the
      lab's compressed day: ``offset_s`` moves the reconciler's "now"
      without touching the host's clock). A file that cannot be read or is
      malformed gives an unsynchronised state with its ``error``: a Pi that
      cannot tell its time must not act as if it could.

Pure apart from that one read; :class:`ClockError` names the bad field.
"""

import ctypes
import ctypes.util
import datetime as _dt
import json
import math
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
STA_UNSYNC = 0x0040
STA_NANO = 0x2000  # offset in ns instead of us
MAX_OFFSET_S = 400 * 86400 * 10  # a lab offset of a few days is normal; beyond ~11 years is a typo
MAX_FILE = 4096
_UTC = _dt.timezone.utc


class ClockError(fleet_fields.FleetError):
    """A bad clock file path, instant, peer or tolerance; the message names the field."""


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux, the native ``long`` layout)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        # the kernel's reserved tail, plus room to spare: the kernel never writes past the struct
        ("_reserved", ctypes.c_int * 32),
    ]


def _libc_adjtimex(timex):
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    call = libc.adjtimex
    call.argtypes = [ctypes.POINTER(_Timex)]
    call.restype = ctypes.c_int
    return call(ctypes.byref(timex))


def kernel_state(adjtimex=None):
    """
    The kernel's clock state through ``adjtimex(2)`` with ``modes = 0``:
    ``{"synced", "source": "kernel", "offset_s": 0.0, "state": return
    value, "status": flags, "esterror_us", "maxerror_us"}``. ``adjtimex``
    stands in for libc's call in tests: called with the ``struct timex``
    (a ctypes structure) to fill, returns the call's int. A call that fails
    gives ``synced: False`` and its ``error``.
    """
    if adjtimex is None:
        adjtimex = _libc_adjtimex
    timex = _Timex()
    timex.modes = 0  # read only: needs no CAP_SYS_TIME
    state = adjtimex(timex)
    if state < 0:
        err = ctypes.get_errno()
        return {"synced": False, "source": "kernel", "offset_s": 0.0, "state": state,
                "error": f"adjtimex failed: {os.strerror(err) if err else 'error'}"}
    unit = 1000.0 if timex.status & STA_NANO else 1.0
    return {
        "synced": state != TIME_ERROR and not timex.status & STA_UNSYNC,
        "source": "kernel",
        "offset_s": 0.0,  # the kernel's clock is the clock; its PLL offset is not an error of "now"
        "state": int(state),
        "status": int(timex.status),
        "pll_offset_us": timex.offset / unit,
        "esterror_us": int(timex.esterror),
        "maxerror_us": int(timex.maxerror),
    }


def _finite(value):
    # a whole number is always finite (math.isfinite overflows on a huge one)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))


def file_state(clock_file):
    """The state a clock file stands in for: ``{"synced", "source": "file", "offset_s", "file"}`` (``error`` when unusable)."""
    if not isinstance(clock_file, str) or not os.path.isabs(clock_file) or fleet_fields.bad_character(clock_file):
        raise ClockError(f"clock_file: {fleet_fields.shown(clock_file)} is not an absolute path")
    state = {"synced": False, "source": "file", "offset_s": 0.0, "file": clock_file}
    try:
        with open(clock_file, encoding="utf-8") as handle:
            doc = json.loads(handle.read(MAX_FILE + 1))
    except (OSError, ValueError) as exc:
        return dict(state, error=f"clock_file: {clock_file} unreadable ({type(exc).__name__}: {exc})")
    if not isinstance(doc, dict):
        return dict(state, error=f"clock_file: expected a JSON object, got {type(doc).__name__}")
    synced, offset = doc.get("synced"), doc.get("offset_s", 0.0)
    if not isinstance(synced, bool):
        return dict(state, error=f"clock_file.synced: {fleet_fields.shown(synced)} is not true or false")
    if not _finite(offset) or abs(offset) > MAX_OFFSET_S:
        return dict(state, error=f"clock_file.offset_s: {fleet_fields.shown(offset)} is not a number of seconds "
                                 f"within +-{MAX_OFFSET_S}")
    return dict(state, synced=synced, offset_s=float(offset))


def clock_state(clock_file=None):
    """
    This Pi's clock state: the kernel's (:func:`kernel_state`), or, when
    ``clock_file`` is given, the file's (:func:`file_state`). Always has
    ``synced`` (bool), ``source`` (``kernel``/``file``) and ``offset_s``.
    """
    if clock_file is None or clock_file == "":
        return kernel_state()
    return file_state(clock_file)


def now(state=None):
    """UTC now (aware) moved by the state's ``offset_s``: the reconciler's "now"."""
    offset = 0.0
    if state is not None:
        offset = state.get("offset_s", 0.0) if isinstance(state, dict) else None
        if not _finite(offset) or abs(offset) > MAX_OFFSET_S:
            raise ClockError(f"state: {fleet_fields.shown(state)} is not a clock state (offset_s within "
                             f"+-{MAX_OFFSET_S} s)")
        offset = float(offset)
    return _dt.datetime.now(_UTC) + _dt.timedelta(seconds=offset)


def _instant(value, field):
    if isinstance(value, str) and 10 <= len(value) <= 40:
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ClockError(f"{field}: {fleet_fields.shown(value)} is not an ISO 8601 instant") from None
    if not isinstance(value, _dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ClockError(f"{field}: {fleet_fields.shown(value)} is not an instant with a UTC offset")
    return value


def confirmed(local_now, peers, tolerance_s):
    """
    The peer Pis that confirm ``local_now`` (sorted ids; empty: not
    confirmed). ``peers``: ``[{"pi", "at", "synced"}]`` from the peers'
    status documents, ``at`` the instant a peer wrote its status (by its
    clock). A peer confirms when its own clock is synchronised and its
    ``at`` is within ``tolerance_s`` seconds of ``local_now``: the
    tolerance must cover how old a status can be when it is read (the probe
    interval plus the fetch).
    """
    local_now = _instant(local_now, "local_now")
    if not _finite(tolerance_s) or not 0 < tolerance_s <= 86400:
        raise ClockError(f"tolerance_s: {fleet_fields.shown(tolerance_s)} is not 0-86400 seconds")
    if not isinstance(peers, (list, tuple)):
        raise ClockError(f"peers: expected a list, got {type(peers).__name__}")
    found = set()
    for index, peer in enumerate(peers):
        field = f"peers[{index}]"
        if not isinstance(peer, dict):
            raise ClockError(f"{field}: expected a mapping, got {type(peer).__name__}")
        pi = peer.get("pi")
        if not isinstance(pi, str) or not fleet_fields.NAME.match(pi):
            raise ClockError(f"{field}.pi: {fleet_fields.shown(pi)} is not a Pi id")
        if not isinstance(peer.get("synced"), bool):
            raise ClockError(f"{field}.synced: {fleet_fields.shown(peer.get('synced'))} is not true or false")
        at = _instant(peer.get("at"), f"{field}.at")
        if peer["synced"] and abs((at - local_now).total_seconds()) <= tolerance_s:
            found.add(pi)
    return sorted(found)
