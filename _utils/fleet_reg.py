"""
Registry edits on the kiosks: validation, typed values, ``reg.exe`` argument
lists, ``reg query`` / ``reg export`` parsing and the mapping onto Salt's own
Windows ``reg`` module. Pure: no registry, no subprocess.

Keys are written ``HIVE\\sub\\key`` with the hive short or long
(``HKLM``/``HKEY_LOCAL_MACHINE``, ``HKCU``/``HKEY_CURRENT_USER``,
``HKU``/``HKEY_USERS``). Values are typed::

    REG_SZ, REG_EXPAND_SZ   str
    REG_MULTI_SZ            list of str (no empty strings: the list ends at the first one)
    REG_DWORD               int 0..2**32-1 (also "1", "0x10")
    REG_QWORD               int 0..2**64-1
    REG_BINARY              bytes (also hex text "0aff", "0a,ff", "0a ff", or a list of ints)

Key parts and value names refuse control characters (CR, LF, NUL, ... and
U+0080-U+009F), the line and paragraph separators U+2028/U+2029, ``[``, ``]``
and unpaired surrogates: in ``.reg`` text a key is a ``[...]`` section header
and a value name is one quoted line, so any of these could end the line or the
header and start a section of the caller's choosing. Text data may hold line
breaks (``.reg`` lines carry data as hex bytes) but no NUL and no unpaired
surrogate (UTF-16 cannot carry one).

Every check raises :class:`RegError` (a ValueError) whose message starts with
the name of the bad field.
"""

import importlib.util
import math
import re

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

HIVES = {
    "HKLM": "HKEY_LOCAL_MACHINE",
    "HKEY_LOCAL_MACHINE": "HKEY_LOCAL_MACHINE",
    "HKCU": "HKEY_CURRENT_USER",
    "HKEY_CURRENT_USER": "HKEY_CURRENT_USER",
    "HKU": "HKEY_USERS",
    "HKEY_USERS": "HKEY_USERS",
}
SHORT = {"HKEY_LOCAL_MACHINE": "HKLM", "HKEY_CURRENT_USER": "HKCU", "HKEY_USERS": "HKU"}
TYPES = ("REG_SZ", "REG_EXPAND_SZ", "REG_MULTI_SZ", "REG_DWORD", "REG_QWORD", "REG_BINARY")
# .reg files: hex(N) type numbers (winnt.h)
TYPE_NUMBERS = {"REG_NONE": 0, "REG_SZ": 1, "REG_EXPAND_SZ": 2, "REG_BINARY": 3, "REG_DWORD": 4,
                "REG_MULTI_SZ": 7, "REG_QWORD": 11}
NUMBER_TYPES = {n: t for t, n in TYPE_NUMBERS.items()}
MAX_KEY_PART = 255  # Windows: a key name is at most 255 characters
# Windows' CreateProcess command line is at most 32767 characters; longer
# writes go through ``reg import`` of a generated .reg file instead
MAX_COMMAND_LINE = 30000
DEFAULT_NAMES = (None, "", "(Default)", "@")
# The only user of a Wine prefix (Wine's fixed SID for the unix user)
WINE_USER_SID = "S-1-5-21-0-0-0-1000"
REG_HEADER = "Windows Registry Editor Version 5.00"
_SID = re.compile(r"^S-1-\d+(-\d+)+$", re.IGNORECASE)
_MULTI_SZ_SEPARATORS = "|;,#~!^*+=$@`"
# What may not appear in a key part or a value name (see the module docstring)
_UNSAFE_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\[\\]\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHAR_NAMES = {"\0": "a NUL character", "\r": "a carriage return", "\n": "a line feed", "[": "'['", "]": "']'"}


class RegError(fleet_fields.FleetError):
    """Bad registry input; the message starts with the field's name."""


def _describe(char):
    if char in _CHAR_NAMES:
        return _CHAR_NAMES[char]
    kind = "an unpaired surrogate" if _SURROGATE.match(char) else "a control character"
    return f"{kind} (U+{ord(char):04X})"


def _safe_name(text, field, what):
    """Refuse what could end a ``.reg`` line or section header (see the module docstring)."""
    bad = _UNSAFE_IN_NAMES.search(text)
    if bad:
        raise RegError(f"{field}: {what} {shown(text)} contains {_describe(bad.group())} at position "
                       f"{bad.start()}; registry key parts and value names may not hold control characters, "
                       "line breaks, '[' or ']'")
    return text


# one rule for showing any value in a message, shared by every utility
shown = fleet_fields.shown


# ---------------------------------------------------------------- paths


def parse_key(key, field="key"):
    """
    ``(long hive, subkey)`` from ``HIVE\\sub\\key``; refuses an unknown hive, a
    bare hive, empty parts (``a\\\\b``, leading/trailing ``\\``), ``.``/``..``
    parts, parts longer than 255 characters, and control characters, line
    breaks, ``[``, ``]`` or unpaired surrogates anywhere.
    """
    if not isinstance(key, str) or not key.strip():
        raise RegError(f"{field}: expected a registry key like HKLM\\Software\\Vendor, got {shown(key)}")
    _safe_name(key, field, "key")
    hive, _, rest = key.partition("\\")
    long_hive = HIVES.get(hive.upper())
    if long_hive is None:
        raise RegError(f"{field}: unknown hive {shown(hive)} in {shown(key)} (use one of HKLM, HKCU, HKU, "
                       "HKEY_LOCAL_MACHINE, HKEY_CURRENT_USER, HKEY_USERS)")
    if not rest:
        raise RegError(f"{field}: {shown(key)} names a whole hive; give a key below it")
    parts = rest.split("\\")
    for index, part in enumerate(parts):
        if part == "":
            raise RegError(f"{field}: {shown(key)} has an empty part (part {index + 1} below the hive)")
        if part.strip() in (".", ".."):
            raise RegError(f"{field}: {shown(key)} contains {shown(part.strip())}; relative parts are not allowed")
        if len(part) > MAX_KEY_PART:
            raise RegError(f"{field}: part {index + 1} of {shown(key)} is {len(part)} characters, at most {MAX_KEY_PART}")
    return long_hive, rest


def join_key(hive, subkey):
    if not isinstance(hive, str) or not isinstance(subkey, (str, type(None))):
        raise RegError(f"key: expected a hive and a subkey as text, got {type(hive).__name__} "
                       f"and {type(subkey).__name__}")
    return f"{hive}\\{subkey}" if subkey else hive


def _checked_key(hive, subkey, field="key"):
    """``HIVE\\subkey`` checked like :func:`parse_key` (long hive name)."""
    return join_key(*parse_key(join_key(hive, subkey), field))


def check_sid(sid, field="sid"):
    if not isinstance(sid, str) or not _SID.match(sid):
        raise RegError(f"{field}: {shown(sid)} is not a SID (S-1-5-21-...)")
    return sid


def user_key(hive, subkey, sid, field="key"):
    """
    Where ``HKCU\\<subkey>`` of a given user lives: ``(HKEY_USERS, <sid>\\<subkey>)``.
    Only HKCU keys can be redirected to a user.
    """
    if hive != "HKEY_CURRENT_USER":
        shown = SHORT.get(hive, hive) if isinstance(hive, str) else type(hive).__name__
        raise RegError(f"{field}: user= applies to HKCU keys only, got a {shown} key")
    _checked_key(hive, subkey, field)
    check_sid(sid, "user")
    return "HKEY_USERS", f"{sid}\\{subkey}"


def check_user(user, field="user"):
    if user is None:
        return None
    if not isinstance(user, str) or not user.strip() or any(c in user for c in '\\/:*?"<>|') \
            or _UNSAFE_IN_NAMES.search(user):
        raise RegError(f"{field}: {shown(user)} is not a user name")
    return user.strip()


def sid_from_profiles(user, profiles, field="user"):
    """
    The SID whose profile folder is ``user`` (case-insensitive), from
    ``{sid: ProfileImagePath}`` as found under
    ``HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList``.
    """
    user = check_user(user, field)
    if user is None:
        raise RegError(f"{field}: expected a user name, got None")
    if not isinstance(profiles, dict):
        raise RegError(f"profiles: expected a mapping of SID to profile folder, got {type(profiles).__name__}")
    profiles = {sid: path for sid, path in profiles.items() if isinstance(sid, str) and isinstance(path, str)}
    found = [sid for sid, path in sorted(profiles.items())
             if isinstance(path, str) and re.split(r"[\\/]", path.rstrip("\\/"))[-1].lower() == user.lower()]
    if not found:
        known = ", ".join(sorted({shown(re.split(r"[\\/]", p.rstrip("\\/"))[-1], 40) for p in profiles.values()})) or "none"
        raise RegError(f"{field}: no profile for {shown(user)} on this machine (profiles: {known})")
    if len(found) > 1:
        raise RegError(f"{field}: {shown(user)} matches several profiles: {', '.join(found)}")
    return found[0]


def check_name(name, field="name"):
    """
    The value name; ``None``, ``""``, ``(Default)`` and ``@`` mean the key's
    default value (``""``). Refuses control characters, line breaks, ``[``,
    ``]`` and unpaired surrogates (see the module docstring).
    """
    if isinstance(name, str) and name in DEFAULT_NAMES:
        return ""
    if name is None:
        return ""
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise RegError(f"{field}: expected a value name, got {type(name).__name__}")
    if isinstance(name, int) and abs(name) >= 10**MAX_KEY_PART:
        raise RegError(f"{field}: a number of over {MAX_KEY_PART} digits is not a value name")
    name = str(name)
    return _safe_name(name, field, "value name")


def display_name(name):
    return name if name else "(Default)"


# ---------------------------------------------------------------- types


def check_type(vtype, field="vtype"):
    if not isinstance(vtype, str) or vtype.upper() not in TYPES:
        raise RegError(f"{field}: {shown(vtype)} is not one of {', '.join(TYPES)}")
    return vtype.upper()


def _integer(data, bits, vtype, field):
    if isinstance(data, bool):
        raise RegError(f"{field}: {shown(data)} is a boolean; give {vtype} data as a number (1 or 0)")
    if isinstance(data, float):
        if not math.isfinite(data) or data != int(data):
            raise RegError(f"{field}: {shown(data)} is not a whole number for {vtype}")
        data = int(data)
    if isinstance(data, str):
        text = data.strip()
        try:
            data = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise RegError(f"{field}: {shown(text)} is not a number for {vtype} (decimal or 0x hex)") from None
    if not isinstance(data, int):
        raise RegError(f"{field}: expected a number for {vtype}, got {type(data).__name__}")
    limit = 2**bits - 1
    if not 0 <= data <= limit:
        raise RegError(f"{field}: {shown(data)} does not fit {vtype} (0..{limit})")
    return data


def _text(data, vtype, field):
    if isinstance(data, (bool, float)):
        raise RegError(f"{field}: {shown(data)} is not text; quote it for {vtype} (e.g. data='\"{data}\"')")
    if isinstance(data, int):
        if abs(data) >= 10**MAX_KEY_PART:  # a number this long is a mistake (and str() of a huge int raises)
            raise RegError(f"{field}: a number of over {MAX_KEY_PART} digits is not {vtype} text; quote it")
        return str(data)
    if not isinstance(data, str):
        raise RegError(f"{field}: expected text for {vtype}, got {type(data).__name__}")
    if "\0" in data:
        raise RegError(f"{field}: {vtype} text cannot contain a NUL character")
    bad = _SURROGATE.search(data)
    if bad:
        raise RegError(f"{field}: {vtype} text contains an unpaired surrogate (U+{ord(bad.group()):04X}) "
                       f"at position {bad.start()}; the registry stores UTF-16")
    return data


def _binary(data, field):
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, list):
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in data):
            raise RegError(f"{field}: a REG_BINARY list must hold byte values 0..255")
        return bytes(data)
    if not isinstance(data, str):
        raise RegError(f"{field}: expected hex text or bytes for REG_BINARY, got {type(data).__name__}")
    text = re.sub(r"[\s,:-]", "", data)
    if text[:2].lower() == "0x":
        text = text[2:]
    if not re.fullmatch(r"[0-9A-Fa-f]*", text):
        raise RegError(f"{field}: {shown(data)} is not hex for REG_BINARY")
    if len(text) % 2:
        raise RegError(f"{field}: {shown(data)} has an odd number of hex digits ({len(text)}) for REG_BINARY")
    return bytes.fromhex(text)


def normalise(vtype, data, field="data"):
    """``data`` as its canonical Python type for ``vtype``, or RegError naming ``field``."""
    vtype = check_type(vtype)
    if data is None:
        raise RegError(f"{field}: no data given for {vtype}")
    if vtype in ("REG_SZ", "REG_EXPAND_SZ"):
        return _text(data, vtype, field)
    if vtype == "REG_DWORD":
        return _integer(data, 32, vtype, field)
    if vtype == "REG_QWORD":
        return _integer(data, 64, vtype, field)
    if vtype == "REG_BINARY":
        return _binary(data, field)
    # REG_MULTI_SZ
    if isinstance(data, str) or not isinstance(data, (list, tuple)):
        raise RegError(f"{field}: REG_MULTI_SZ needs a list of strings, got {type(data).__name__} {shown(data)}")
    items = []
    for index, item in enumerate(data):
        item = _text(item, vtype, f"{field}[{index}]")
        if item == "":
            raise RegError(f"{field}[{index}]: REG_MULTI_SZ cannot hold an empty string (it ends the list)")
        items.append(item)
    return items


def equal(vtype_a, data_a, vtype_b, data_b):
    """Typed comparison: same type and same normalised data (DWORD ``"1"`` == ``1``)."""
    if vtype_a is None or vtype_b is None:
        return False
    try:
        vtype_a, vtype_b = check_type(vtype_a), check_type(vtype_b)
        return vtype_a == vtype_b and normalise(vtype_a, data_a) == normalise(vtype_b, data_b)
    except RegError:
        return False


def to_output(vtype, data):
    """JSON/YAML-friendly form: REG_BINARY as lower-case hex text, the rest unchanged."""
    if vtype == "REG_BINARY" and isinstance(data, (bytes, bytearray)):
        return bytes(data).hex()
    return data


# ---------------------------------------------------------------- reg.exe


def _multi_sz_data(items):
    """``(separator or None, /d text)``: ``\\0`` unless an item contains the two characters ``\\0``."""
    if not any("\\0" in item for item in items):
        return None, "\\0".join(items)
    for sep in _MULTI_SZ_SEPARATORS:
        if not any(sep in item for item in items):
            return sep, sep.join(items)
    return False, None  # not representable on a command line


def add_argv(hive, subkey, name, vtype, data, reg="reg"):
    """
    ``reg add`` argument list (``reg`` may be a list such as ``["wine", "reg"]``),
    or ``None`` when the value cannot be written by ``reg add`` (a REG_MULTI_SZ
    whose items use every separator, or a command line over the limit): use
    :func:`import_text` then.
    """
    vtype = check_type(vtype)
    data = normalise(vtype, data)
    name = check_name(name)
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    argv += ["add", _checked_key(hive, subkey)]
    argv += ["/v", name] if name else ["/ve"]
    argv += ["/t", vtype]
    if vtype in ("REG_SZ", "REG_EXPAND_SZ"):
        text = data
    elif vtype in ("REG_DWORD", "REG_QWORD"):
        text = str(data)
    elif vtype == "REG_BINARY":
        text = data.hex().upper()
    else:
        sep, text = _multi_sz_data(data)
        if sep is False:
            return None
        if sep:
            argv += ["/s", sep]
    argv += ["/d", text, "/f"]
    if sum(len(a) + 3 for a in argv) > MAX_COMMAND_LINE:
        return None
    return argv


def delete_value_argv(hive, subkey, name, reg="reg"):
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    name = check_name(name)
    return argv + ["delete", _checked_key(hive, subkey)] + (["/v", name] if name else ["/ve"]) + ["/f"]


def delete_key_argv(hive, subkey, reg="reg"):
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    return argv + ["delete", _checked_key(hive, subkey), "/f"]


def export_argv(hive, subkey, path, reg="reg"):
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    return argv + ["export", _checked_key(hive, subkey), check_path(path), "/y"]


def check_path(path, field="path"):
    if not isinstance(path, str) or not path or "\0" in path or _SURROGATE.search(path):
        raise RegError(f"{field}: {shown(path)} is not a file path")
    return path


def import_argv(path, reg="reg"):
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    return argv + ["import", check_path(path)]


# Wine: reg.exe started directly (``wine reg`` would start it through start.exe:
# two Wine processes per call instead of one, and a failure of the second one
# reported only as start.exe's "ShellExecuteEx failed")
WINE_REG_EXE = "C:\\windows\\system32\\reg.exe"


def wine_argv(wine, args, setarch="setarch", machine="x86_64"):
    """
    ``[setarch, machine, "-R", wine, *args]``: a Wine program started with the
    kernel's address-space randomisation off for it and every Wine process it
    starts (the personality is inherited).

    Why: Debian's ``wine64`` loader (Wine 8, built without Wine's preloader) is
    a fixed-address executable at 0x7d000000, and the kernel puts the start of
    its brk heap at a random page up to 1 GiB above it. When that page lands
    within about 1 MiB below 0x7ffe0000, Wine cannot reserve and map the shared
    user data page (KUSER_SHARED_DATA) at its fixed address 0x7ffe0000 and the
    process dies while starting (``err:virtual:virtual_alloc_first_teb wine:
    failed to map the shared user data: c0000018``, hidden by
    ``WINEDEBUG=-all``): about one Wine process start in a thousand. With
    randomisation off the heap always starts right after the loader
    (0x7d005000), far below that page.
    """
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        raise RegError("args: expected a list of strings")
    return [setarch, machine, "-R", wine, *args]


def query_argv(hive, subkey, reg="reg"):
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    return argv + ["query", _checked_key(hive, subkey)]


# ---------------------------------------------------------------- .reg files


def _hex_lines(prefix, payload):
    """``prefix`` + comma-separated hex, wrapped like regedit (``\\`` + CRLF + two spaces)."""
    parts = [f"{b:02x}" for b in payload]
    lines, line = [], prefix
    for index, part in enumerate(parts):
        piece = part + ("," if index < len(parts) - 1 else "")
        if len(line) + len(piece) > 78:
            lines.append(line + "\\")
            line = "  "
        line += piece
    lines.append(line)
    return "\r\n".join(lines)


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def value_bytes(vtype, data):
    """The raw bytes the registry stores for ``data`` of ``vtype``."""
    vtype = check_type(vtype)
    data = normalise(vtype, data)
    if vtype in ("REG_SZ", "REG_EXPAND_SZ"):
        return (data + "\0").encode("utf-16-le")
    if vtype == "REG_MULTI_SZ":
        return "".join(item + "\0" for item in data).encode("utf-16-le") + b"\0\0"
    if vtype == "REG_DWORD":
        return data.to_bytes(4, "little")
    if vtype == "REG_QWORD":
        return data.to_bytes(8, "little")
    return data


def value_line(name, vtype, data):
    """One ``.reg`` line; every type as ``hex(N):`` bytes (exact on Windows and Wine)."""
    name = check_name(name)
    left = _quote(name) if name else "@"
    vtype = check_type(vtype)
    if vtype == "REG_DWORD":
        return f"{left}=dword:{normalise(vtype, data):08x}"
    prefix = f"{left}=hex:" if vtype == "REG_BINARY" else f"{left}=hex({TYPE_NUMBERS[vtype]:x}):"
    return _hex_lines(prefix, value_bytes(vtype, data))


def import_text(sections):
    """
    ``.reg`` text for ``reg import``: ``sections`` is a list of
    ``(full key, {name: (vtype, data)} or None)``; ``None`` deletes the key
    (``[-KEY]``). Write it UTF-16-LE with a BOM (:func:`encode_reg`): Wine reads a
    BOM-less file as ANSI (REGEDIT4) and mangles ``hex(2)``/``hex(7)``.
    """
    if not isinstance(sections, (list, tuple)):
        raise RegError(f"sections: expected a list of (key, values), got {type(sections).__name__}")
    out = [REG_HEADER, ""]
    for index, section in enumerate(sections):
        if not isinstance(section, (list, tuple)) or len(section) != 2:
            raise RegError(f"sections[{index}]: expected (key, values)")
        key, values = section
        out.append(section_header(key, deleted=values is None, field=f"sections[{index}].key"))
        if values is None:
            out.append("")
            continue
        if not isinstance(values, dict):
            raise RegError(f"sections[{index}].values: expected a mapping of name: (vtype, data) or None")
        for name, value in values.items():
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise RegError(f"sections[{index}].values: expected (vtype, data) for {shown(str(name))}")
            out.append(value_line(name, *value))
        out.append("")
    return "\r\n".join(out) + "\r\n"


def section_header(key, deleted=False, field="key"):
    """
    ``[KEY]`` (or ``[-KEY]``) for a full key, checked with :func:`parse_key`
    first: the only way key text reaches a ``.reg`` file.
    """
    hive, subkey = parse_key(key, field)
    return f"[{'-' if deleted else ''}{join_key(hive, subkey)}]"


def encode_reg(text):
    if not isinstance(text, str):
        raise RegError(f"reg file: expected text, got {type(text).__name__}")
    try:
        return b"\xff\xfe" + text.encode("utf-16-le")
    except UnicodeEncodeError as exc:
        raise RegError(f"reg file: UTF-16 cannot carry {_describe(text[exc.start])} at position {exc.start}") from None


def decode_reg(raw):
    """Text of a .reg file: UTF-16 with BOM (reg export), else UTF-8."""
    if not isinstance(raw, (bytes, bytearray)):
        raise RegError(f"reg file: expected bytes, got {type(raw).__name__}")
    try:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return bytes(raw).decode("utf-16")
        return bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RegError(f"reg file: not UTF-16 with a BOM nor UTF-8 (byte {exc.start}: {exc.reason})") from None


def _unquote(text, pos):
    """Parse a ``"..."`` string starting at ``text[pos] == '"'``; ``(string, next pos)``."""
    out, i = [], pos + 1
    escapes = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "0": "\0", "t": "\t"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(escapes.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise RegError(f"reg file: unterminated string in {shown(text)}")


def _from_bytes(vtype, raw):
    if vtype in ("REG_SZ", "REG_EXPAND_SZ"):
        text = raw.decode("utf-16-le", errors="replace")
        return text.split("\0", 1)[0]
    if vtype == "REG_MULTI_SZ":
        text = raw.decode("utf-16-le", errors="replace")
        items = text.split("\0")
        out = []
        for item in items:
            if item == "":
                break
            out.append(item)
        return out
    if vtype == "REG_DWORD":
        return int.from_bytes(raw[:4].ljust(4, b"\0"), "little")
    if vtype == "REG_QWORD":
        return int.from_bytes(raw[:8].ljust(8, b"\0"), "little")
    return bytes(raw)


def parse_reg(text):
    """
    Parse ``.reg`` text (``reg export`` of Windows or Wine) into
    ``{full key: {name: (vtype, data)}}`` in file order; ``""`` is the default
    value. Deleted keys (``[-KEY]``) map to ``None``. Unknown types come back as
    ``("REG_NONE"/"hex(N)", bytes)``.
    """
    if not isinstance(text, str):
        raise RegError(f"reg file: expected text, got {type(text).__name__}")
    # join continuation lines: a trailing backslash after hex data
    lines, buf = [], ""
    for raw_line in text.replace("\r\n", "\n").split("\n"):
        if buf:
            buf += raw_line.lstrip()
        else:
            buf = raw_line
        if buf.rstrip().endswith("\\") and re.search(r"=(hex(\([0-9a-fA-F]+\))?:)", buf):
            buf = buf.rstrip()[:-1]
            continue
        lines.append(buf)
        buf = ""
    if buf:
        lines.append(buf)
    keys, current = {}, None
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith(";") or stripped.startswith("Windows Registry Editor") \
                or stripped == "REGEDIT4":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            name = stripped[1:-1]
            if name.startswith("-"):
                keys[name[1:]] = None
                current = None
            else:
                current = keys.setdefault(name, {})
                if current is None:
                    current = keys[name] = {}
            continue
        if current is None:
            continue
        if stripped.startswith("@="):
            vname, rest = "", stripped[2:]
        elif stripped.startswith('"'):
            vname, end = _unquote(stripped, 0)
            if stripped[end:end + 1] != "=":
                raise RegError(f"reg file: no '=' after value name in {shown(stripped)}")
            rest = stripped[end + 1:]
        else:
            raise RegError(f"reg file: cannot read line {shown(stripped)}")
        if rest == "-":
            current.pop(vname, None)
            continue
        if rest.startswith('"'):
            current[vname] = ("REG_SZ", _unquote(rest, 0)[0])
        elif rest.lower().startswith("dword:"):
            if not re.fullmatch(r"[0-9a-fA-F]{1,8}", rest[6:]):
                raise RegError(f"reg file: {shown(rest)} is not dword:<up to 8 hex digits>")
            current[vname] = ("REG_DWORD", int(rest[6:], 16))
        else:
            match = re.match(r"hex(?:\(([0-9a-fA-F]{1,8})\))?:([0-9a-fA-F,\s]*)$", rest, re.IGNORECASE)
            if not match:
                raise RegError(f"reg file: cannot read value data {shown(rest)}")
            number = int(match.group(1), 16) if match.group(1) else 3
            try:
                payload = bytes.fromhex(re.sub(r"[\s,]", "", match.group(2)))
            except ValueError:
                raise RegError(f"reg file: {shown(rest)} is not a list of hex bytes") from None
            vtype = NUMBER_TYPES.get(number, f"hex({number:x})")
            current[vname] = (vtype, _from_bytes(vtype, payload) if vtype in TYPES else payload)
    return keys


def first_section(text):
    """``(deleted, key)`` of the first ``[KEY]`` / ``[-KEY]`` line of .reg text, or ``(None, None)``."""
    if not isinstance(text, str):
        raise RegError(f"reg file: expected text, got {type(text).__name__}")
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            return (True, line[2:-1]) if line.startswith("[-") else (False, line[1:-1])
    return None, None


def snapshot_key(text):
    """
    The key a snapshot (``.reg`` text from ``kiosk_reg.snapshot``) puts back:
    it must read as a ``.reg`` file, start with ``[-KEY]`` for a valid key, and
    hold no section outside ``KEY`` (so restoring it touches that key only).
    """
    sections = parse_reg(text)
    deleted, key = first_section(text)
    if not deleted:
        raise RegError("snapshot: does not start with a [-KEY] section")
    hive, subkey = parse_key(key, "snapshot")
    full = join_key(hive, subkey)
    for name in sections:
        try:
            inside = join_key(*parse_key(name, "snapshot"))
        except RegError:
            raise RegError(f"snapshot: section {shown(name)} is not a registry key") from None
        if inside.lower() != full.lower() and not inside.lower().startswith(full.lower() + "\\"):
            raise RegError(f"snapshot: section {shown(name)} is outside {shown(key)}")
    return key


# ---------------------------------------------------------------- reg query


_QUERY_LINE = re.compile(r"^ {4}(.*?) {4}(REG_[A-Z_]+) {4}(.*)$")
_QUERY_LINE_EMPTY = re.compile(r"^ {4}(.*?) {4}(REG_[A-Z_]+)(?: {4})?$")


def _query_data(vtype, raw):
    raw = raw.rstrip("\r")
    if vtype in ("REG_DWORD", "REG_QWORD"):
        if re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", raw):
            return int(raw, 16)
        if raw.lower().startswith("0x"):
            raise RegError(f"reg query: {shown(raw)} is not {vtype} data")
        return None  # Wine 8 prints REG_QWORD data as "(null)"
    if vtype == "REG_BINARY":
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", raw):
            raise RegError(f"reg query: {shown(raw)} is not REG_BINARY data")
        return bytes.fromhex(raw)
    if vtype == "REG_MULTI_SZ":
        return raw.split("\\0") if raw else []
    return raw


def parse_query(text):
    """
    Parse ``reg query KEY`` output (Windows' or Wine's; both indent values by 4
    spaces and separate name, type and data by 4 spaces) into
    ``{"keys": [full key, ...], "values": {full key: {name: (vtype, data)}}}``.
    Lossy by design (a newline inside data, ``\\0`` inside a REG_MULTI_SZ item,
    non-ASCII through the console code page): read values with ``reg export``.
    ``(Default)`` maps to ``""``; Windows' ``(value not set)`` is left out.
    """
    if not isinstance(text, str):
        raise RegError(f"reg query: expected text, got {type(text).__name__}")
    keys, values, current = [], {}, None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        if line.startswith("HKEY_"):
            current = line.strip()
            keys.append(current)
            values.setdefault(current, {})
            continue
        if line.startswith("End of search:"):  # Windows, with /f
            continue
        match = _QUERY_LINE.match(line) or _QUERY_LINE_EMPTY.match(line)
        if match and current is not None:
            name, vtype = match.group(1), match.group(2)
            raw = match.group(3) if match.re is _QUERY_LINE else ""
            if name == "(Default)":
                if raw == "(value not set)":
                    continue
                name = ""
            values[current][name] = (vtype, _query_data(vtype, raw))
    return {"keys": keys, "values": values}


def subkeys(text, parent):
    """Direct subkeys of ``parent`` in ``reg query parent`` output."""
    if not isinstance(parent, str):
        raise RegError(f"parent: expected a key, got {type(parent).__name__}")
    prefix = parent.rstrip("\\").lower() + "\\"
    return [k for k in parse_query(text)["keys"] if k.lower().startswith(prefix) and "\\" not in k[len(prefix):]]


# Wine's and Windows' reg.exe messages (for diagnostics; the exit code decides)
NOT_FOUND_MESSAGES = (
    "unable to find the specified registry",  # Wine: "reg: Unable to find the specified registry key/value"
    "the system was unable to find the specified registry key or value",  # Windows
)


def is_not_found(message):
    message = message.lower() if isinstance(message, str) else ""
    return any(m in message for m in NOT_FOUND_MESSAGES)


# ---------------------------------------------------------------- Windows: Salt's reg module


def windows_call(op, hive, subkey, name=None, vtype=None, data=None):
    """
    ``(function, kwargs)`` for Salt's Windows ``reg`` module (salt/modules/reg.py).
    Salt is strict about ``vdata`` types: REG_DWORD/QWORD int, REG_BINARY bytes,
    REG_MULTI_SZ list of str, text types str. ``vname=None`` is the default value.
    """
    _checked_key(hive, subkey)
    base = {"hive": hive, "key": subkey}
    if op == "read":
        return "reg.read_value", {**base, "vname": check_name(name) or None}
    if op == "set":
        vtype = check_type(vtype)
        return "reg.set_value", {**base, "vname": check_name(name) or None,
                                 "vdata": normalise(vtype, data), "vtype": vtype}
    if op == "delete_value":
        return "reg.delete_value", {**base, "vname": check_name(name) or None}
    if op == "delete_key":
        return "reg.delete_key_recursive", base
    if op == "list_values":
        return "reg.list_values", base
    if op == "list_keys":
        return "reg.list_keys", base
    if op == "key_exists":
        return "reg.key_exists", base
    raise RegError(f"op: {shown(op)} is not a registry operation")


def windows_value(ret, name=None):
    """
    ``(vtype, data)`` or ``None`` from ``reg.read_value``'s answer. The default
    value when unset reads as REG_SZ ``"(value not set)"``: that is "absent".
    """
    if not isinstance(ret, dict) or not ret.get("success") or ret.get("vtype") is None:
        return None
    if not check_name(name) and ret.get("vdata") == "(value not set)":
        return None
    vtype, data = ret["vtype"], ret["vdata"]
    if vtype == "REG_BINARY" and isinstance(data, str):
        data = data.encode("latin-1")
    return vtype, data


def windows_values(ret):
    """``{name: (vtype, data)}`` from ``reg.list_values`` (``None`` when the key is missing)."""
    if isinstance(ret, tuple) or ret is False:
        return None
    if not isinstance(ret, (list, type(None))) or not all(isinstance(item, dict) for item in ret or []):
        raise RegError(f"ret: expected reg.list_values' list of values, got {shown(ret)}")
    out = {}
    for item in ret or []:
        name = "" if item.get("vname") == "(Default)" else item.get("vname")
        out[name] = (item.get("vtype"), item.get("vdata"))
    return out


def hive_load_argv(mount, ntuser_dat, reg="reg"):
    """``reg load HKU\\<mount> <NTUSER.DAT>`` for a user whose hive is not loaded (Windows)."""
    if not isinstance(mount, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", mount):
        raise RegError(f"mount: {shown(mount)} is not a plain key name")
    check_path(ntuser_dat, "ntuser_dat")
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    return argv + ["load", f"HKU\\{mount}", ntuser_dat]


def hive_unload_argv(mount, reg="reg"):
    if not isinstance(mount, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", mount):
        raise RegError(f"mount: {shown(mount)} is not a plain key name")
    argv = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    return argv + ["unload", f"HKU\\{mount}"]


def ntuser_path(profile_dir):
    """``<profile>\\NTUSER.DAT`` (profile paths may hold %SystemDrive%)."""
    if not isinstance(profile_dir, str) or not profile_dir:
        raise RegError(f"profile: {shown(profile_dir)} is not a profile folder")
    return profile_dir.rstrip("\\") + "\\NTUSER.DAT"
