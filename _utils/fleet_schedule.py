"""
Kiosk power schedules: which kiosks should be on, and when. Pure.

The schedule lives in pillar under the key ``kiosk_fleet_schedules`` (and may
later be synced from an HTTP platform); it is plain data, YAML/JSON-friendly::

    kiosk_fleet_schedules:
      campuses:
        riverside:
          timezone: Asia/Shanghai        # IANA name, default Asia/Shanghai
          default: unmanaged             # where no rule applies: unmanaged (default) | off | on
          rules:                         # campus rules: every kiosk of the campus
            - name: opening-hours        # required, unique in its list
              weekly:
                mon-fri: ["07:00-22:00"]
                sat: "08:00-12:00"       # one window or a list
                # days not listed (sun) are off while this rule applies
            - name: spring-festival
              dates: ["2027-02-05", "2027-02-12"]   # inclusive, local dates
              always: off
          kiosks:                        # kiosk rules: override campus rules for that kiosk
            kiosk-riverside-02:
              - {name: upstairs, weekly: {mon-fri: ["07:10-22:00"], sat: ["08:10-12:00"]}}
            kiosk-riverside-10:
              - {name: festival-duty, dates: ["2027-02-05", "2027-02-12"],
                 weekly: {daily: ["08:00-16:00"]}}
            kiosk-riverside-11:
              - {name: emergency, always: on, through_closures: true}

A rule
    ``name`` plus exactly one of ``weekly`` or ``always``, and optionally
    ``dates``, ``through_closures`` (kiosk rules only) and a free-text
    ``comment`` (ignored). Unknown keys are errors.

``weekly``
    day spec -> on-windows. Day specs: ``mon`` .. ``sun`` (full names too,
    any case), ranges ``mon-fri`` (``fri-mon`` wraps over the weekend), lists
    ``mon,wed,fri``, ``daily``. Windows are ``HH:MM-HH:MM`` in the campus's
    local time, start inclusive, end exclusive; ``24:00`` is the end of the
    day; a window whose end is before its start crosses midnight
    (``22:00-06:00`` on ``fri`` = Friday 22:00 to Saturday 06:00). Day specs
    that name the same day add their windows up. A weekly rule decides at
    every instant it applies to: on inside a window, off outside.

``always``
    ``on`` or ``off`` (YAML 1.1 reads bare on/off as booleans: accepted).

``dates``
    ``"2027-02-05"`` (one day), ``[start, end]`` (inclusive local dates) or
    ``[start, null]`` / ``[null, end]`` (open-ended: "new hours from March").
    A dated rule applies from local 00:00 of its first day to local 24:00 of
    its last day; an undated rule applies always.

``through_closures``
    ``true`` on a kiosk's undated rule: that rule also beats the campus's
    dated rules (the 24/7 emergency kiosk stays on through a campus closure;
    an information kiosk keeps its own hours through it). Only on an undated
    kiosk rule: on a campus rule or a dated rule it is a validation error
    (a campus rule beating the campus's own closures would make them
    pointless; a dated kiosk rule already beats them). Normalised rules
    carry the key only when it is true.

Which rule decides, for one kiosk at one instant (dated beats standing)
    1. the kiosk's dated rule that covers the local date;
    2. the kiosk's undated rule, if it says ``through_closures: true``;
    3. the campus's dated rule that covers the local date (a closure: it
       switches off every kiosk of the campus, kiosks with their own standing
       hours included, except those of 1 and 2);
    4. the kiosk's undated rule;
    5. the campus's undated rule;
    6. nothing applies: the campus ``default`` (``unmanaged`` unless set).
    ``priority`` in a decision says whose rule it was (``kiosk``, ``campus``
    or ``default``). Two rules of one list that can both apply at some
    instant are a validation error naming both (at most one undated rule per
    list; dated rules in one list must not overlap), never a silent pick, so
    the answer does not depend on the order of the lists.
    A window crossing midnight belongs to the weekly pattern; which rule
    applies is decided per local date, so on the day after a dated rule
    ends, the undated rule's Friday 22:00-06:00 window is on from 00:00.

``unmanaged``
    A kiosk no rule applies to (no rule at all, a campus absent from the
    schedule, a gap between dated rules) is ``unmanaged``: sweeps must leave
    it alone, neither wake nor shut it down. Set ``default: off`` on a
    campus to have the schedule own every kiosk there.

Time zones and DST (wall-clock semantics, deterministic)
    Windows and dates are local wall time of the campus. A boundary
    (window start/end, 00:00 of a dated rule) takes effect at the first
    instant the local clock reads that time or later:

    * nonexistent local times (spring forward, Europe/Berlin 02:00-03:00 on
      the last Sunday of March): a boundary inside the gap takes effect at
      the end of the gap (03:00 CEST); a window entirely inside the gap does
      not happen that day;
    * repeated local times (fall back, 02:00-03:00 twice on the last Sunday
      of October): boundaries take effect on the first pass only; during the
      second pass the state reached at the end of the first pass holds (no
      flapping, each boundary fires once).

    :func:`desired_state` and :func:`transitions` implement the same rule
    and agree (property-tested).

API
    :func:`validate` returns the normalised data (plain dicts/lists/strings:
    days expanded to ``mon`` .. ``sun``, windows merged and split at
    midnight (``fri: 22:00-06:00`` -> ``fri: 22:00-24:00``, ``sat: 00:00-06:00``), ``always`` as
    ``"on"``/``"off"``, dates ISO strings) or raises :class:`ScheduleError`
    listing every problem, each naming its field
    (``campuses.riverside.rules[1].weekly.mon-fri[0]: ...``).
    :func:`load` validates and compiles into a :class:`Schedule`; the
    evaluation functions take a :class:`Schedule` (fast) or the raw or
    normalised dict (validated and compiled on every call).
    :func:`desired_state`, :func:`desired_states` and :func:`transitions`
    return ``{"state": "on"|"off"|"unmanaged", "rule": name, "priority":
    "kiosk"|"campus"|"default"}`` decisions (``rule`` is ``"default"`` for
    the default). Instants must be timezone-aware datetimes.
"""

import bisect
import datetime as _dt
import math
import re
from zoneinfo import ZoneInfo

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

PILLAR_KEY = "kiosk_fleet_schedules"
DEFAULT_TIMEZONE = "Asia/Shanghai"
ON, OFF, UNMANAGED = "on", "off", "unmanaged"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_SPAN = _dt.timedelta(days=400)  # transitions(): longest range asked at once
_NAME = fleet_fields.NAME
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RULE_KEYS = ("name", "weekly", "always", "dates", "through_closures", "comment")
THROUGH_CLOSURES = "through_closures"
_CAMPUS_KEYS = ("timezone", "default", "rules", "kiosks")
_UTC = _dt.timezone.utc
_DAY = 1440
_NEVER_LO, _NEVER_HI = 0, 10**9  # date ordinals standing for open ends


class ScheduleError(fleet_fields.FieldErrors):
    """The schedule is invalid, or a call's arguments are."""


# ---------------------------------------------------------------- parsing


_mapping = fleet_fields.mapping


def _list(value, field, errors):
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        errors.append(f"{field}: expected a list, got {type(value).__name__}")
        return []
    return list(value)


def _name(value, field, errors):
    if not isinstance(value, str) or not _NAME.match(value):
        errors.append(f"{field}: {value!r} is not a valid name (letters, digits, . _ -)")
        return False
    return True


def _word(value, field, errors, allowed):
    """on/off/unmanaged; YAML 1.1 turns bare on/off into booleans."""
    if value is True:
        value = ON
    elif value is False:
        value = OFF
    if isinstance(value, str) and value.strip().lower() in allowed:
        return value.strip().lower()
    errors.append(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return None


def _minute(text, which, value, field, errors, is_end):
    match = _TIME.match(text.strip())
    if not match:
        errors.append(f"{field}: {value!r}: {which} {text.strip()!r} is not a time HH:MM")
        return None
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not is_end)):
        limit = "00:00-24:00" if is_end else "00:00-23:59"
        errors.append(f"{field}: {value!r}: {which} {text.strip()!r} is not a time of day ({limit})")
        return None
    return hours * 60 + minutes


def _window(value, field, errors):
    """'HH:MM-HH:MM' -> (start, end) minutes, end in (start, start + 1440]."""
    if not isinstance(value, str) or value.count("-") != 1:
        errors.append(f"{field}: {value!r} is not a window HH:MM-HH:MM")
        return None
    start_text, end_text = value.split("-")
    start = _minute(start_text, "start", value, field, errors, is_end=False)
    end = _minute(end_text, "end", value, field, errors, is_end=True)
    if start is None or end is None:
        return None
    if end == start:
        errors.append(f"{field}: {value!r} is empty (start = end); use 00:00-24:00 for the whole day")
        return None
    if end < start:  # crosses midnight
        end += _DAY
    return start, end


def _days(spec, field, errors):
    if not isinstance(spec, str):
        errors.append(f"{field}: day spec {spec!r} is not text (mon..sun, mon-fri, mon,wed, daily)")
        return []

    def one(word):
        word = word.strip().lower()
        if word in DAYS:
            return DAYS.index(word)
        if word in _FULL_DAYS:
            return _FULL_DAYS.index(word)
        errors.append(f"{field}: unknown weekday {word!r} (mon, tue, wed, thu, fri, sat, sun)")
        return None

    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part in ("daily", "everyday", "all"):
            out.extend(range(7))
        elif "-" in part:
            first, _, last = part.partition("-")
            a, b = one(first), one(last)
            if a is not None and b is not None:
                out.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
        else:
            day = one(part)
            if day is not None:
                out.append(day)
    return out


def _merge(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(iv) for iv in merged]


def _weekly(raw, field, errors):
    """-> 7 merged lists of (start, end) minutes within the day; windows
    crossing midnight are split, the part after midnight going to the next day."""
    per_day = [[] for _ in DAYS]
    if not isinstance(raw, dict) or not raw:
        errors.append(f"{field}: expected a mapping of day specs to windows, e.g. {{mon-fri: ['07:00-22:00']}}")
        return per_day
    for spec, windows in raw.items():
        where = f"{field}.{spec}"
        days = _days(spec, where, errors)
        if windows is None or windows is False:
            windows = []
        elif isinstance(windows, str):
            windows = [windows]
        elif not isinstance(windows, (list, tuple)):
            errors.append(f"{where}: expected a window or a list of windows, got {windows!r}")
            continue
        for index, text in enumerate(windows):
            window = _window(text, f"{where}[{index}]", errors)
            if window:
                start, end = window
                for day in days:
                    per_day[day].append((start, min(end, _DAY)))
                    if end > _DAY:
                        per_day[(day + 1) % 7].append((0, end - _DAY))
    return [_merge(day) for day in per_day]


def _date(value, field, errors):
    if isinstance(value, _dt.datetime):
        errors.append(f"{field}: {value!r} is a date and time; a date YYYY-MM-DD is expected")
        return None
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str) and _DATE.match(value.strip()):
        try:
            return _dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    errors.append(f"{field}: {value!r} is not a date YYYY-MM-DD")
    return None


def _dates(raw, field, errors):
    """-> (start | None, end | None), or None when invalid."""
    if isinstance(raw, (str, _dt.date)):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= 2:
        errors.append(f"{field}: expected a date or [start, end], got {raw!r}")
        return None
    if len(raw) == 1:
        raw = [raw[0], raw[0]]
    bad = len(errors)
    start = None if raw[0] is None else _date(raw[0], f"{field}[0]", errors)
    end = None if raw[1] is None else _date(raw[1], f"{field}[1]", errors)
    if len(errors) > bad:
        return None
    if start is None and end is None:
        errors.append(f"{field}: [null, null] covers every day; leave dates out instead")
        return None
    if start is not None and end is not None and end < start:
        errors.append(f"{field}: end {end} is before start {start}")
        return None
    return start, end


def _fmt(minute):
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _copy_rule(rule):
    out = {
        "name": rule["name"],
        "dates": None if rule["dates"] is None else list(rule["dates"]),
        "always": rule["always"],
        "weekly": None if rule["weekly"] is None else {day: list(w) for day, w in rule["weekly"].items()},
    }
    if rule.get(THROUGH_CLOSURES):
        out[THROUGH_CLOSURES] = True
    return out


def _rule(raw, field, errors, cache=None):
    """Validate one rule -> normalised dict, or None. ``cache``: repr -> rule
    for rules already validated cleanly in this call (kiosk rules repeat)."""
    key = None
    if cache is not None and isinstance(raw, dict):
        try:
            key = repr(sorted(raw.items(), key=lambda kv: str(kv[0])))
        except Exception:  # noqa: BLE001 - unorderable junk: validate it the slow way
            key = None
        if key in cache:
            return _copy_rule(cache[key])
    rule = _rule_uncached(raw, field, errors)
    if key is not None and rule is not None:
        cache[key] = rule
    return rule


def _rule_uncached(raw, field, errors):
    if not isinstance(raw, dict):
        errors.append(f"{field}: expected a rule mapping (name, weekly|always, dates), got {type(raw).__name__}")
        return None
    bad = len(errors)
    for key in raw:
        if key not in _RULE_KEYS:
            errors.append(f"{field}.{key}: unknown key (a rule has {', '.join(_RULE_KEYS)})")
    _name(raw.get("name"), f"{field}.name", errors)
    has_weekly, has_always = raw.get("weekly") is not None, raw.get("always") is not None
    if has_weekly == has_always:
        errors.append(f"{field}: a rule needs exactly one of weekly or always")
    weekly = always = dates = None
    if has_weekly:
        weekly = _weekly(raw["weekly"], f"{field}.weekly", errors)
    if has_always:
        always = _word(raw["always"], f"{field}.always", errors, (ON, OFF))
    if raw.get("dates") is not None:
        dates = _dates(raw["dates"], f"{field}.dates", errors)
    through = raw.get(THROUGH_CLOSURES, False)
    if through is None:
        through = False
    if not isinstance(through, bool):  # "no" or "false" as text would read as true
        errors.append(f"{field}.{THROUGH_CLOSURES}: {through!r} is not true or false")
    elif through and dates is not None:
        errors.append(f"{field}.{THROUGH_CLOSURES}: only an undated rule can say it; a dated kiosk rule "
                      f"already beats the campus's dated rules")
    if len(errors) > bad:
        return None
    rule = {
        "name": raw["name"],
        "dates": None if dates is None else [None if d is None else d.isoformat() for d in dates],
        "always": always,
        "weekly": None
        if weekly is None
        else {
            DAYS[i]: [f"{_fmt(s)}-{'24:00' if e == _DAY else _fmt(e)}" for s, e in day]
            for i, day in enumerate(weekly)
        },
    }
    if through:  # only when set, so schedules without it keep their normalised shape
        rule[THROUGH_CLOSURES] = True
    return rule


def _span(rule):
    if rule["dates"] is None:
        return None
    lo, hi = rule["dates"]
    return (
        _NEVER_LO if lo is None else _dt.date.fromisoformat(lo).toordinal(),
        _NEVER_HI if hi is None else _dt.date.fromisoformat(hi).toordinal(),
    )


def _rules(raw, field, level, errors, cache=None):
    """Validate one list of rules (one priority level) -> normalised list."""
    out, where = [], []
    names = {}
    for index, item in enumerate(_list(raw, field, errors)):
        here = f"{field}[{index}]"
        rule = _rule(item, here, errors, cache)
        if rule is None:
            continue
        if rule["name"] in names:
            errors.append(f"{here}.name: {rule['name']!r} is also the name of {names[rule['name']]}")
            continue
        names[rule["name"]] = here
        if rule.get(THROUGH_CLOSURES) and level != "kiosk":
            # a campus rule that beat the campus's own closures would make the closure pointless
            errors.append(f"{here}.{THROUGH_CLOSURES}: only a kiosk's own rule can stay on through the "
                          f"campus's dated rules (put it under kiosks.<kiosk>)")
            continue
        out.append(rule)
        where.append(here)
    # same priority, same specificity, overlapping: an error naming both rules
    undated = [i for i, r in enumerate(out) if r["dates"] is None]
    for i in undated[1:]:
        errors.append(
            f"{where[i]}: undated {level} rules {out[undated[0]]['name']!r} ({where[undated[0]]}) and "
            f"{out[i]['name']!r} both apply at every instant; keep one undated rule per list "
            f"(put all weekdays in one weekly rule)"
        )
    dated = [i for i, r in enumerate(out) if r["dates"] is not None]
    for n, i in enumerate(dated):
        lo_i, hi_i = _span(out[i])
        for j in dated[n + 1 :]:
            lo_j, hi_j = _span(out[j])
            lo, hi = max(lo_i, lo_j), min(hi_i, hi_j)
            if lo <= hi:
                first = "..." if lo == _NEVER_LO else _dt.date.fromordinal(lo).isoformat()
                last = "..." if hi == _NEVER_HI else _dt.date.fromordinal(hi).isoformat()
                errors.append(
                    f"{where[j]}.dates: dated {level} rules {out[i]['name']!r} ({where[i]}) and "
                    f"{out[j]['name']!r} both cover {first}..{last}; dated rules of one list must not overlap"
                )
    return out


def _ids(kiosks, field):
    """A set of kiosk ids; anything else (a string, a number, nested lists) is refused."""
    if isinstance(kiosks, (str, bytes)) or not isinstance(kiosks, (list, tuple, set, frozenset, dict)):
        raise ScheduleError(f"{field}: expected kiosk ids, got {kiosks!r}")
    bad = [k for k in kiosks if not isinstance(k, str)]
    if bad:
        raise ScheduleError(f"{field}: {bad[0]!r} is not a kiosk id")
    return set(kiosks)


def _known(known_kiosks):
    """-> (flat set | None, {campus: set} | None)."""
    if known_kiosks is None:
        return None, None
    if isinstance(known_kiosks, dict):
        campuses = known_kiosks.get("campuses") if isinstance(known_kiosks.get("campuses"), dict) else known_kiosks
        by_campus = {}
        for campus, kiosks in campuses.items():
            if not isinstance(campus, str):
                raise ScheduleError(f"known_kiosks: {campus!r} is not a campus name")
            if isinstance(kiosks, dict) and isinstance(kiosks.get("kiosks"), dict):
                kiosks = kiosks["kiosks"]  # a fleet_inventory campus
            by_campus[campus] = _ids(kiosks, f"known_kiosks.{campus}")
        return set().union(*by_campus.values()) if by_campus else set(), by_campus
    if isinstance(known_kiosks, (str, bytes)) or not hasattr(known_kiosks, "__iter__"):
        raise ScheduleError(f"known_kiosks: expected kiosk ids or {{campus: kiosk ids}}, got {known_kiosks!r}")
    return _ids(list(known_kiosks), "known_kiosks"), None


def validate(data, known_kiosks=None):
    """
    Validate a schedule (the value of the ``kiosk_fleet_schedules`` pillar
    key) and return its normalised form (see the module docstring).

    ``known_kiosks``: kiosk ids (any iterable), ``{campus: kiosk ids}`` or a
    validated ``fleet_inventory`` inventory; with it, kiosks (and, by campus,
    campuses) the inventory does not hold are errors.

    Raises :class:`ScheduleError` listing every problem, each naming its field.
    """
    errors = []
    flat, by_campus = _known(known_kiosks)
    data = _mapping(data, PILLAR_KEY, errors)
    for key in data:
        if key != "campuses":
            errors.append(f"{key}: unknown key (a schedule has campuses)")
    campuses = {}
    owner = {}  # kiosk id -> field, a kiosk is scheduled under one campus only
    cache = {}
    for campus, spec in _mapping(data.get("campuses"), "campuses", errors).items():
        field = f"campuses.{campus}"
        if not _name(campus, field, errors):
            continue
        if by_campus is not None and campus not in by_campus:
            errors.append(f"{field}: unknown campus (inventory has {', '.join(sorted(map(str, by_campus)))})")
        spec = _mapping(spec, field, errors)
        for key in spec:
            if key not in _CAMPUS_KEYS:
                errors.append(f"{field}.{key}: unknown key (a campus has {', '.join(_CAMPUS_KEYS)})")
        timezone = spec.get("timezone", DEFAULT_TIMEZONE)
        if fleet_fields.time_zone(timezone) is None:
            errors.append(f"{field}.timezone: {timezone!r} is not an IANA time zone")
        default = _word(spec.get("default", UNMANAGED), f"{field}.default", errors, (UNMANAGED, OFF, ON))
        rules = _rules(spec.get("rules"), f"{field}.rules", "campus", errors, cache)
        kiosks = {}
        for kiosk, kiosk_rules in _mapping(spec.get("kiosks"), f"{field}.kiosks", errors).items():
            where = f"{field}.kiosks.{kiosk}"
            if not _name(kiosk, where, errors):
                continue
            if kiosk in owner:
                errors.append(f"{where}: kiosk is also scheduled at {owner[kiosk]}")
            owner[kiosk] = where
            if flat is not None and kiosk not in flat:
                errors.append(f"{where}: unknown kiosk (not in the inventory)")
            elif by_campus is not None and campus in by_campus and kiosk not in by_campus[campus]:
                elsewhere = [c for c, ids in by_campus.items() if kiosk in ids]
                errors.append(f"{where}: kiosk belongs to campus {elsewhere[0]} in the inventory, not {campus}")
            kiosks[kiosk] = _rules(kiosk_rules, where, "kiosk", errors, cache)
        campuses[campus] = {"timezone": timezone, "default": default, "rules": rules, "kiosks": kiosks}
    if errors:
        raise ScheduleError(errors)
    return {"campuses": campuses}


# ---------------------------------------------------------------- compiled form


class _Rule:
    __slots__ = ("name", "lo", "hi", "always", "days", "marks", "bounds", "through")

    def __init__(self, rule):
        self.name = rule["name"]
        self.through = bool(rule.get(THROUGH_CLOSURES))
        span = _span(rule)
        self.lo, self.hi = span if span else (_NEVER_LO, _NEVER_HI)
        self.always = rule["always"]
        days = [[] for _ in DAYS]
        if rule["weekly"] is not None:
            for index, day in enumerate(DAYS):
                for text in rule["weekly"][day]:  # normalised: within the day
                    days[index].append(_window(text, day, []))
        self.days = tuple(tuple(day) for day in days)
        # minutes of each weekday at which this rule's state may change
        self.marks = tuple(frozenset(m for iv in day for m in iv if m < _DAY) for day in self.days)
        # sorted boundaries per weekday: on iff an odd number of them are <= minute
        if self.always is not None:
            self.bounds = ((0,) if self.always == ON else (),) * 7
        else:
            self.bounds = tuple(tuple(m for iv in day for m in iv) for day in self.days)

    def state(self, weekday, minute):
        return ON if bisect.bisect_right(self.bounds[weekday], minute) & 1 else OFF


class _RuleSet:
    """One list of rules (one priority level), checked for overlaps by validate()."""

    __slots__ = ("dated", "undated", "marks")

    def __init__(self, rules):
        compiled = [_Rule(r) for r in rules]
        self.dated = tuple(sorted((r for r, raw in zip(compiled, rules) if raw["dates"]), key=lambda r: r.lo))
        undated = [r for r, raw in zip(compiled, rules) if not raw["dates"]]
        self.undated = undated[0] if undated else None
        self.marks = tuple(frozenset({0}).union(*(r.marks[d] for r in compiled)) for d in range(7))

    def dated_on(self, ordinal):
        for rule in self.dated:
            if rule.lo <= ordinal <= rule.hi:
                return rule
        return None


class _Campus:
    __slots__ = ("name", "tz", "default", "rules", "kiosks", "shared")

    def __init__(self, name, spec, interned):
        self.name = name
        self.tz = ZoneInfo(spec["timezone"])
        self.default = {"state": spec["default"], "rule": "default", "priority": "default"}
        self.rules = _RuleSet(spec["rules"])
        self.kiosks = {}
        for kiosk, rules in spec["kiosks"].items():
            if not rules:
                continue
            key = repr(rules)  # identical rule lists share one compiled set
            if key not in interned:
                interned[key] = _RuleSet(rules)
            self.kiosks[kiosk] = interned[key]
        # memoise per call only where kiosks share rule lists (else it costs more than it saves)
        self.shared = 2 * len({id(rs) for rs in self.kiosks.values()}) <= len(self.kiosks)

    def campus_rule(self, ordinal):
        """(campus dated rule of the date or None, campus undated rule or None)."""
        return self.rules.dated_on(ordinal), self.rules.undated

    def campus_decision(self, ordinal, weekday, minute):
        dated, undated = self.campus_rule(ordinal)
        rule = dated or undated
        if rule is None:
            return self.default
        return {"state": rule.state(weekday, minute), "rule": rule.name, "priority": "campus"}


def _pick(kiosk_rules, campus_dated, ordinal):
    """
    The kiosk rule that decides on local date ``ordinal``, or None when the
    campus's rules do: the kiosk's dated rule, else (no campus dated rule
    that day, or the kiosk's undated rule stays on through closures) its
    undated rule. The one place of the precedence order.
    """
    rule = kiosk_rules.dated_on(ordinal)
    if rule is not None:
        return rule
    rule = kiosk_rules.undated
    if rule is not None and (campus_dated is None or rule.through):
        return rule
    return None


class Schedule:
    """A validated, compiled schedule. ``data`` holds the normalised dict."""

    def __init__(self, normalised):
        self.data = normalised
        interned = {}
        self._campuses = {name: _Campus(name, spec, interned) for name, spec in normalised["campuses"].items()}
        self._kiosk_campus = {k: c for c, spec in normalised["campuses"].items() for k in spec["kiosks"]}

    def __repr__(self):
        return f"<Schedule campuses={sorted(self._campuses)}>"


def load(data, known_kiosks=None):
    """Validate (see :func:`validate`) and compile: the fast form for evaluation."""
    if isinstance(data, Schedule):
        return data
    return Schedule(validate(data, known_kiosks))


def _schedule(schedule):
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, dict) or schedule is None:
        return load(schedule)
    raise ScheduleError(f"schedule: expected a Schedule (fleet_schedule.load) or a dict, got {type(schedule).__name__}")


# ---------------------------------------------------------------- time


_FIRST_INSTANT = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc) + _dt.timedelta(days=7)
_LAST_INSTANT = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc) - _dt.timedelta(days=7)


def _aware(value, field):
    if not isinstance(value, _dt.datetime):
        raise ScheduleError(f"{field}: expected a timezone-aware datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{field}: {value.isoformat()} is a naive datetime; pass an aware one "
            f"(e.g. datetime.now(timezone.utc)), the schedule is in each campus's local time"
        )
    try:
        utc = value.astimezone(_UTC)
    except (OverflowError, ValueError):
        utc = None
    # local dates one day either side are computed: a week of margin keeps them in the calendar
    if utc is None or not _FIRST_INSTANT <= utc <= _LAST_INSTANT:
        raise ScheduleError(
            f"{field}: {value.isoformat()} is too close to the ends of the calendar "
            f"(instants from {_FIRST_INSTANT.date()} to {_LAST_INSTANT.date()} UTC)"
        )
    return value


def _fold_start(tz, utc, shift):
    """First instant (UTC) of the repeated period that ``utc`` lies in."""
    lo = math.floor((utc - shift).timestamp())  # first pass: fold 0
    hi = math.floor(utc.timestamp())  # second pass: fold 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _dt.datetime.fromtimestamp(mid, tz).fold:
            hi = mid
        else:
            lo = mid
    return _dt.datetime.fromtimestamp(hi, _UTC)


def _wall(tz, instant):
    """
    Effective local wall time of ``instant``: (date ordinal, weekday, minute).

    During the second pass of a repeated period (fall back) the wall time is
    held at the end of the first pass, so nothing fires twice.
    """
    local = instant.astimezone(tz)
    if local.fold:
        shift = local.replace(fold=0).utcoffset() - local.utcoffset()
        if shift > _dt.timedelta(0):
            start = _fold_start(tz, instant.astimezone(_UTC), shift)
            local = (start - _dt.timedelta(microseconds=1)).astimezone(tz)
    return local.toordinal(), local.weekday(), local.hour * 60 + local.minute


def _resolve(tz, ordinal, minute):
    """First instant (UTC) at which the local clock reads (date, minute) or later."""
    naive = _dt.datetime.fromordinal(ordinal) + _dt.timedelta(minutes=minute)
    first = naive.replace(tzinfo=tz).astimezone(_UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists; fold=0 is the first pass of a repeated time
    other = naive.replace(tzinfo=tz, fold=1).astimezone(_UTC)
    lo = math.floor(min(first, other).timestamp())  # clock before naive
    hi = math.ceil(max(first, other).timestamp())  # clock after naive
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _dt.datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return _dt.datetime.fromtimestamp(hi, _UTC)


# ---------------------------------------------------------------- evaluation


def _text(value, field):
    if not isinstance(value, str) or not value:
        raise ScheduleError(f"{field}: expected a name, got {value!r}")
    return value


def _decide(sched, campus, kiosk, wall_cache):
    """Decision for one kiosk; wall_cache maps campus -> effective wall."""
    home = sched._kiosk_campus.get(kiosk, campus)
    if home != campus:
        raise ScheduleError(f"kiosk_id: {kiosk} is scheduled under campus {home}, not {campus}")
    spec = sched._campuses.get(campus)
    if spec is None:
        return {"state": UNMANAGED, "rule": "default", "priority": "default"}, None
    ordinal, weekday, minute = wall_cache(spec)
    rules = spec.kiosks.get(kiosk)
    if rules is not None:
        rule = _pick(rules, spec.rules.dated_on(ordinal), ordinal)
        if rule is not None:
            return {"state": rule.state(weekday, minute), "rule": rule.name, "priority": "kiosk"}, spec
    return dict(spec.campus_decision(ordinal, weekday, minute)), spec


def desired_state(schedule, campus, kiosk_id, instant):
    """
    ``{"state": "on"|"off"|"unmanaged", "rule": name, "priority":
    "kiosk"|"campus"|"default"}`` for one kiosk at an aware ``instant``.
    A campus absent from the schedule is unmanaged.
    """
    sched = _schedule(schedule)
    _text(campus, "campus")
    _text(kiosk_id, "kiosk_id")
    _aware(instant, "instant")
    decision, _ = _decide(sched, campus, kiosk_id, lambda spec: _wall(spec.tz, instant))
    return decision


def desired_states(schedule, kiosks_by_campus, instant):
    """
    Decisions for many kiosks at one instant: ``{campus: [kiosk ids]}`` (as
    ``fleet_inventory.select_kiosks`` returns) -> ``{campus: {kiosk id:
    decision}}``. Local time and campus rules are evaluated once per campus,
    identical kiosk rule lists once per call.
    """
    sched = _schedule(schedule)
    _aware(instant, "instant")
    if not isinstance(kiosks_by_campus, dict):
        raise ScheduleError(f"kiosks_by_campus: expected {{campus: [kiosk ids]}}, got {type(kiosks_by_campus).__name__}")
    owner = sched._kiosk_campus
    bisect_right = bisect.bisect_right
    out = {}
    for campus, kiosks in kiosks_by_campus.items():
        _text(campus, "kiosks_by_campus")
        if isinstance(kiosks, str) or not hasattr(kiosks, "__iter__"):
            raise ScheduleError(f"kiosks_by_campus.{campus}: expected a list of kiosk ids, got {kiosks!r}")
        spec = sched._campuses.get(campus)
        result = out[campus] = {}
        if spec is None:
            for kiosk in kiosks:
                if not isinstance(kiosk, str):
                    raise ScheduleError(f"kiosks_by_campus.{campus}: {kiosk!r} is not a kiosk id")
                if owner.get(kiosk, campus) != campus:
                    raise ScheduleError(f"kiosks_by_campus.{campus}: {kiosk} is scheduled under campus {owner[kiosk]}")
                result[kiosk] = {"state": UNMANAGED, "rule": "default", "priority": "default"}
            continue
        ordinal, weekday, minute = _wall(spec.tz, instant)
        campus_dated = spec.rules.dated_on(ordinal)
        base = spec.campus_decision(ordinal, weekday, minute)
        base_state, base_rule, base_priority = base["state"], base["rule"], base["priority"]
        own, shared = spec.kiosks, spec.shared
        memo = {}
        for kiosk in kiosks:
            rules = own.get(kiosk)
            if rules is None:
                if not isinstance(kiosk, str):
                    raise ScheduleError(f"kiosks_by_campus.{campus}: {kiosk!r} is not a kiosk id")
                if owner.get(kiosk, campus) != campus:
                    raise ScheduleError(f"kiosks_by_campus.{campus}: {kiosk} is scheduled under campus {owner[kiosk]}")
                result[kiosk] = {"state": base_state, "rule": base_rule, "priority": base_priority}
                continue
            found = memo.get(rules) if shared else None
            if found is None:
                rule = _pick(rules, campus_dated, ordinal)
                if rule is None:
                    found = (base_state, base_rule, base_priority)
                else:
                    on = bisect_right(rule.bounds[weekday], minute) & 1
                    found = (ON if on else OFF, rule.name, "kiosk")
                if shared:
                    memo[rules] = found
            result[kiosk] = {"state": found[0], "rule": found[1], "priority": found[2]}
    return out


def transitions(schedule, campus, kiosk_id, start, end):
    """
    Ordered ``[(instant, new_state, rule)]``: every change of the kiosk's
    desired state at instants ``start < instant <= end`` (the state at
    ``start`` itself is :func:`desired_state` there). Instants are aware, in
    the campus's time zone. A change of deciding rule that keeps the state
    is not a transition. At most 400 days at once.
    """
    sched = _schedule(schedule)
    _text(campus, "campus")
    _text(kiosk_id, "kiosk_id")
    _aware(start, "start")
    _aware(end, "end")
    if end < start:
        raise ScheduleError(f"end: {end.isoformat()} is before start {start.isoformat()}")
    if end - start > MAX_SPAN:
        raise ScheduleError(f"end: {end - start} after start, at most {MAX_SPAN.days} days at once")
    current, spec = _decide(sched, campus, kiosk_id, lambda s: _wall(s.tz, start))
    if spec is None:
        return []
    tz = spec.tz
    sets = [spec.rules] + ([spec.kiosks[kiosk_id]] if kiosk_id in spec.kiosks else [])
    first = _wall(tz, start)[0] - 1
    last = end.astimezone(tz).toordinal() + 1
    candidates = set()
    for ordinal in range(first, last + 1):
        weekday = _dt.date.fromordinal(ordinal).weekday()
        for minute in set().union(*(s.marks[weekday] for s in sets)):
            instant = _resolve(tz, ordinal, minute)
            if start < instant <= end:
                candidates.add(instant)
    out = []
    for instant in sorted(candidates):
        decision, _ = _decide(sched, campus, kiosk_id, lambda s, i=instant: _wall(s.tz, i))
        if decision["state"] != current["state"]:
            out.append((instant.astimezone(tz), decision["state"], decision["rule"]))
        current = decision
    return out
