"""
Validation helpers shared by the pack's pure modules: the base of every
input error of the pack (:class:`FleetError`, a ``ValueError`` naming its
field), one error type that carries every problem found (each message names
its field, e.g. ``campuses.east.kiosks.k1.mac: ...``), the rule for fleet names (Salt minion
ids, campus names), and the "optional mapping" check.
"""

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Salt minion ids, campus names, labels: letters, digits, dot, dash, underscore
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


# IANA zone names: "UTC", "Asia/Shanghai", "America/Argentina/Buenos_Aires", "Etc/GMT+8"
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]{0,30}(?:/[A-Za-z0-9][A-Za-z0-9_+-]{0,30}){0,2}\Z")

# "campuses.east.kiosks.k1.mac: ..." -> the field is the part before ": "
_FIELD_PREFIX = re.compile(r"^([^\s:]{1,200}): ")


class FleetError(ValueError):
    """
    The base of every error the pack raises on bad input: a ``ValueError``
    whose message names the field (``kiosks.k1.mac: ...``). ``field`` holds
    that name (given, or read from the message's ``field: `` prefix), so a
    caller can catch one class and still say which input was wrong.
    """

    def __init__(self, *args, field=None):
        super().__init__(*args)
        if field is None and args and isinstance(args[0], str):
            match = _FIELD_PREFIX.match(args[0])
            field = match.group(1) if match else None
        self.field = field


class FieldErrors(FleetError):
    """Every problem of one request or document; ``errors`` lists them, each naming its field."""

    def __init__(self, errors, field=None):
        if isinstance(errors, str):
            errors = [errors]
        self.errors = [str(e) for e in errors]
        super().__init__("; ".join(self.errors), field=field)


def shown(value, limit=80):
    """
    ``repr`` of ``value`` for a message: escaped (no line break, no unpaired
    surrogate), at most ``limit`` characters, and never raising (``repr`` of a
    number of over 4,300 digits does).
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"<a {value.bit_length()}-bit number>"
    try:
        text = repr(value)
    except ValueError:  # a huge number inside a list or mapping
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 4] + "..." + text[-1]


def mapping(value, field, errors):
    """``value`` if it is a dict, ``{}`` for None; anything else is recorded in ``errors``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{field}: expected a mapping, got {type(value).__name__}")
        return {}
    return value


def time_zone(value):
    """
    The ``ZoneInfo`` of an IANA zone name, or None when ``value`` is none.

    Checked by shape first: tzdata is a folder tree, so a name like
    ``Europe`` (a folder), a path or a 5,000-character string would reach
    the file system and fail there with OSError, not ZoneInfoNotFoundError.
    """
    if not isinstance(value, str) or not _ZONE_NAME.match(value):
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def bad_character(text):
    """
    What makes ``text`` unfit to leave Python, or None: a NUL (C strings,
    paths) or an unpaired surrogate (no UTF-8 or UTF-16 can carry one).
    """
    for char in text:
        if char == "\0":
            return "a NUL character"
        if "\ud800" <= char <= "\udfff":
            return f"an unpaired surrogate (U+{ord(char):04X})"
    return None
