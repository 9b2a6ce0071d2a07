import inspect
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fleet_reg
from fleet_reg import RegError

# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    "key, expected",
    [
        ("HKLM\\Software\\Kiosk", ("HKEY_LOCAL_MACHINE", "Software\\Kiosk")),
        ("hkey_local_machine\\SOFTWARE", ("HKEY_LOCAL_MACHINE", "SOFTWARE")),
        ("HKCU\\Control Panel\\Desktop", ("HKEY_CURRENT_USER", "Control Panel\\Desktop")),
        ("HKU\\S-1-5-21-1-2-3-1001\\Software", ("HKEY_USERS", "S-1-5-21-1-2-3-1001\\Software")),
        ("HKLM\\Software\\a/b\\x..y", ("HKEY_LOCAL_MACHINE", "Software\\a/b\\x..y")),
    ],
)
def test_keys_parse_to_long_hive_and_subkey(key, expected):
    assert fleet_reg.parse_key(key) == expected


@pytest.mark.parametrize(
    "key, match",
    [
        ("HKXX\\Software", "key: unknown hive 'HKXX'"),
        ("HKCR\\x", "key: unknown hive"),
        ("HKLM", "key: 'HKLM' names a whole hive"),
        ("HKLM\\", "names a whole hive"),
        ("HKLM\\Software\\..\\System", "key: .* contains '..'"),
        ("HKLM\\Software\\.", "contains '.'"),
        ("HKLM\\Software\\\\Kiosk", "key: .* has an empty part \\(part 2"),
        ("HKLM\\Software\\Kiosk\\", "empty part"),
        ("", "expected a registry key"),
        (None, "expected a registry key"),
        ("HKLM\\Soft\0ware", "NUL"),
        ("HKLM\\" + "k" * 256, "at most 255"),
    ],
)
def test_bad_keys_are_refused_naming_the_field(key, match):
    with pytest.raises(RegError, match=match):
        fleet_reg.parse_key(key)


def test_field_name_is_the_callers():
    with pytest.raises(RegError, match=r"^changes\[1\]\.key: unknown hive"):
        fleet_reg.parse_key("HKZZ\\x", "changes[1].key")


def test_user_keys_go_below_the_users_sid():
    assert fleet_reg.user_key("HKEY_CURRENT_USER", "Software\\X", "S-1-5-21-1-2-3-1001") == (
        "HKEY_USERS", "S-1-5-21-1-2-3-1001\\Software\\X")
    with pytest.raises(RegError, match="HKCU keys only"):
        fleet_reg.user_key("HKEY_LOCAL_MACHINE", "Software", "S-1-5-21-1-2-3-1001")
    with pytest.raises(RegError, match="user: 'nope' is not a SID"):
        fleet_reg.user_key("HKEY_CURRENT_USER", "Software", "nope")


def test_sid_from_the_profile_list():
    profiles = {"S-1-5-18": "%systemroot%\\system32\\config\\systemprofile",
                "S-1-5-21-1-2-3-1001": "C:\\Users\\kiosk",
                "S-1-5-21-0-0-0-1000": "C:\\users\\root"}
    assert fleet_reg.sid_from_profiles("KIOSK", profiles) == "S-1-5-21-1-2-3-1001"
    assert fleet_reg.sid_from_profiles("root", profiles) == "S-1-5-21-0-0-0-1000"
    with pytest.raises(RegError, match="user: no profile for 'ghost'.*kiosk"):
        fleet_reg.sid_from_profiles("ghost", profiles)
    with pytest.raises(RegError, match="user: 'a\\\\\\\\b' is not a user name"):
        fleet_reg.sid_from_profiles("a\\b", profiles)


def test_default_value_names():
    for name in (None, "", "(Default)", "@"):
        assert fleet_reg.check_name(name) == ""
    assert fleet_reg.check_name("{645FF040-5081-101B-9F08-00AA002F954E}") == "{645FF040-5081-101B-9F08-00AA002F954E}"
    with pytest.raises(RegError, match="name: expected a value name"):
        fleet_reg.check_name(["x"])


# ------------------------------------------------------------------ types


@pytest.mark.parametrize(
    "vtype, data, expected",
    [
        ("REG_DWORD", "1", 1),
        ("REG_DWORD", 1, 1),
        ("reg_dword", "0x10", 16),
        ("REG_DWORD", 2**32 - 1, 2**32 - 1),
        ("REG_QWORD", str(2**64 - 1), 2**64 - 1),
        ("REG_BINARY", "0a,FF 00", b"\x0a\xff\x00"),
        ("REG_BINARY", "", b""),
        ("REG_BINARY", [1, 2], b"\x01\x02"),
        ("REG_BINARY", b"\x00", b"\x00"),
        ("REG_MULTI_SZ", ["a", "b c"], ["a", "b c"]),
        ("REG_MULTI_SZ", [], []),
        ("REG_SZ", 'a"b & c | d % e ^ f\n', 'a"b & c | d % e ^ f\n'),
        ("REG_SZ", 42, "42"),
        ("REG_EXPAND_SZ", "%SystemRoot%\\x", "%SystemRoot%\\x"),
    ],
)
def test_normalise(vtype, data, expected):
    assert fleet_reg.normalise(vtype, data) == expected


@pytest.mark.parametrize(
    "vtype, data, match",
    [
        ("REG_DWORD", 2**32, "data: 4294967296 does not fit REG_DWORD"),
        ("REG_DWORD", -1, "does not fit REG_DWORD"),
        ("REG_DWORD", "one", "not a number"),
        ("REG_DWORD", True, "boolean"),
        ("REG_DWORD", 1.5, "not a whole number"),
        ("REG_QWORD", 2**64, "does not fit REG_QWORD"),
        ("REG_BINARY", "abc", "data: 'abc' has an odd number of hex digits"),
        ("REG_BINARY", "zz", "not hex"),
        ("REG_BINARY", [256], "byte values"),
        ("REG_MULTI_SZ", "a", "needs a list of strings"),
        ("REG_MULTI_SZ", ["a", ""], r"data\[1\]: REG_MULTI_SZ cannot hold an empty string"),
        ("REG_SZ", 1.2, "quote it"),
        ("REG_SZ", "a\0b", "NUL"),
        ("REG_SZ", None, "no data given"),
        ("REG_FOO", "x", "vtype: 'REG_FOO' is not one of"),
    ],
)
def test_data_that_does_not_fit_is_refused(vtype, data, match):
    with pytest.raises(RegError, match=match):
        fleet_reg.normalise(vtype, data)


def test_typed_comparison():
    assert fleet_reg.equal("REG_DWORD", "1", "REG_DWORD", 1)
    assert fleet_reg.equal("REG_DWORD", "0x1", "reg_dword", "1")
    assert not fleet_reg.equal("REG_SZ", "1", "REG_DWORD", 1)
    assert fleet_reg.equal("REG_BINARY", b"\x0a\xff", "REG_BINARY", "0AFF")
    assert fleet_reg.equal("REG_MULTI_SZ", ["a", "b"], "REG_MULTI_SZ", ("a", "b"))
    assert not fleet_reg.equal("REG_MULTI_SZ", ["a", "b"], "REG_MULTI_SZ", ["b", "a"])
    assert not fleet_reg.equal(None, None, "REG_SZ", "")


# ------------------------------------------------------------------ reg.exe arguments


def test_reg_add_is_an_argument_list_with_f_and_data_verbatim():
    data = 'a"b & c | d % e ^ f\nline2'
    argv = fleet_reg.add_argv("HKEY_LOCAL_MACHINE", "Software\\K", "v", "REG_SZ", data, reg=["wine", "reg"])
    assert argv == ["wine", "reg", "add", "HKEY_LOCAL_MACHINE\\Software\\K", "/v", "v", "/t", "REG_SZ",
                    "/d", data, "/f"]


@pytest.mark.parametrize(
    "name, vtype, data, tail",
    [
        ("", "REG_SZ", "x", ["/ve", "/t", "REG_SZ", "/d", "x", "/f"]),
        ("d", "REG_DWORD", "0x10", ["/v", "d", "/t", "REG_DWORD", "/d", "16", "/f"]),
        ("q", "REG_QWORD", 2**64 - 1, ["/v", "q", "/t", "REG_QWORD", "/d", str(2**64 - 1), "/f"]),
        ("b", "REG_BINARY", "0aff", ["/v", "b", "/t", "REG_BINARY", "/d", "0AFF", "/f"]),
        ("m", "REG_MULTI_SZ", ["a", "b c"], ["/v", "m", "/t", "REG_MULTI_SZ", "/d", "a\\0b c", "/f"]),
        ("m", "REG_MULTI_SZ", [], ["/v", "m", "/t", "REG_MULTI_SZ", "/d", "", "/f"]),
        # an item holding the two characters \0: another separator via /s
        ("m", "REG_MULTI_SZ", ["C:\\0dir", "b"], ["/v", "m", "/t", "REG_MULTI_SZ", "/s", "|", "/d", "C:\\0dir|b", "/f"]),
        ("/v", "REG_SZ", "/f", ["/v", "/v", "/t", "REG_SZ", "/d", "/f", "/f"]),
    ],
)
def test_reg_add_per_type(name, vtype, data, tail):
    assert fleet_reg.add_argv("HKEY_CURRENT_USER", "S", name, vtype, data)[:3] == ["reg", "add", "HKEY_CURRENT_USER\\S"]
    assert fleet_reg.add_argv("HKEY_CURRENT_USER", "S", name, vtype, data)[3:] == tail


def test_what_reg_add_cannot_carry_goes_through_import():
    every = list(fleet_reg._MULTI_SZ_SEPARATORS) + ["\\0"]
    assert fleet_reg.add_argv("HKEY_LOCAL_MACHINE", "S", "m", "REG_MULTI_SZ", ["".join(every)]) is None
    assert fleet_reg.add_argv("HKEY_LOCAL_MACHINE", "S", "b", "REG_BINARY", b"\0" * 20000) is None


def test_other_argument_lists():
    assert fleet_reg.delete_value_argv("HKEY_LOCAL_MACHINE", "S", "") == ["reg", "delete", "HKEY_LOCAL_MACHINE\\S", "/ve", "/f"]
    assert fleet_reg.delete_value_argv("HKEY_LOCAL_MACHINE", "S", "x", reg=["wine", "reg"])[-3:] == ["/v", "x", "/f"]
    assert fleet_reg.delete_key_argv("HKEY_USERS", "S-1\\S") == ["reg", "delete", "HKEY_USERS\\S-1\\S", "/f"]
    assert fleet_reg.export_argv("HKEY_LOCAL_MACHINE", "S", "/tmp/a b.reg") == [
        "reg", "export", "HKEY_LOCAL_MACHINE\\S", "/tmp/a b.reg", "/y"]
    assert fleet_reg.import_argv("C:\\x.reg") == ["reg", "import", "C:\\x.reg"]
    assert fleet_reg.hive_load_argv("kiosk_reg_S-1-5-21-1", "C:\\Users\\kiosk\\NTUSER.DAT") == [
        "reg", "load", "HKU\\kiosk_reg_S-1-5-21-1", "C:\\Users\\kiosk\\NTUSER.DAT"]
    assert fleet_reg.hive_unload_argv("m") == ["reg", "unload", "HKU\\m"]
    with pytest.raises(RegError, match="mount"):
        fleet_reg.hive_load_argv("a\\b", "x")
    assert fleet_reg.ntuser_path("C:\\Users\\Default\\") == "C:\\Users\\Default\\NTUSER.DAT"


# ------------------------------------------------------------------ .reg files

WINE_EXPORT = (
    "Windows Registry Editor Version 5.00\r\n\r\n"
    "[HKEY_LOCAL_MACHINE\\Software\\KTest]\r\n"
    '@="emptyname"\r\n'
    '"bin"=hex:0a,ff,00\r\n'
    '"bs"="C:\\\\path\\\\with\\\\"\r\n'
    '"dw"=dword:ffffffff\r\n'
    '"ex"=hex(2):25,00,53,00,79,00,73,00,74,00,65,00,6d,00,52,00,6f,00,6f,00,74,00,\\\r\n'
    "  25,00,5c,00,78,00,00,00\r\n"
    '"ms"=hex(7):61,00,00,00,62,00,20,00,63,00,00,00,00,00\r\n'
    '"msempty"=hex(7):00,00\r\n'
    '"nl"="line1\\nline2\\\\end\\\\"\r\n'
    '"qw"=hex(b):ff,ff,ff,ff,ff,ff,ff,ff\r\n'
    '"sz"="a\\"b & c | d % e ^ f"\r\n'
    "\r\n"
    "[HKEY_LOCAL_MACHINE\\Software\\KTest\\sub]\r\n"
    "\r\n"
)


def test_parse_a_wine_export():
    keys = fleet_reg.parse_reg(WINE_EXPORT)
    assert list(keys) == ["HKEY_LOCAL_MACHINE\\Software\\KTest", "HKEY_LOCAL_MACHINE\\Software\\KTest\\sub"]
    values = keys["HKEY_LOCAL_MACHINE\\Software\\KTest"]
    assert values == {
        "": ("REG_SZ", "emptyname"),
        "bin": ("REG_BINARY", b"\x0a\xff\x00"),
        "bs": ("REG_SZ", "C:\\path\\with\\"),
        "dw": ("REG_DWORD", 2**32 - 1),
        "ex": ("REG_EXPAND_SZ", "%SystemRoot%\\x"),
        "ms": ("REG_MULTI_SZ", ["a", "b c"]),
        "msempty": ("REG_MULTI_SZ", []),
        "nl": ("REG_SZ", "line1\nline2\\end\\"),
        "qw": ("REG_QWORD", 2**64 - 1),
        "sz": ("REG_SZ", 'a"b & c | d % e ^ f'),
    }
    assert keys["HKEY_LOCAL_MACHINE\\Software\\KTest\\sub"] == {}


@pytest.mark.parametrize(
    "vtype, data",
    [
        ("REG_SZ", 'a"b\\ & c | d % e ^ f\nx\r'),
        ("REG_EXPAND_SZ", "%TEMP%\\é✓"),
        ("REG_MULTI_SZ", ["a", "b\\0c", "中文"]),
        ("REG_MULTI_SZ", []),
        ("REG_DWORD", 7),
        ("REG_QWORD", 2**64 - 1),
        ("REG_BINARY", bytes(range(256))),
        ("REG_BINARY", b""),
    ],
)
def test_import_text_round_trips_through_the_parser(vtype, data):
    text = fleet_reg.import_text([("HKEY_LOCAL_MACHINE\\S", None),
                                  ("HKEY_LOCAL_MACHINE\\S", {"v": (vtype, data), "": ("REG_SZ", "d")})])
    assert text.startswith("Windows Registry Editor Version 5.00\r\n\r\n[-HKEY_LOCAL_MACHINE\\S]\r\n")
    assert all(len(line) <= 80 for line in text.split("\r\n"))
    parsed = fleet_reg.parse_reg(fleet_reg.decode_reg(fleet_reg.encode_reg(text)))
    assert parsed["HKEY_LOCAL_MACHINE\\S"] == {"v": (vtype, data), "": ("REG_SZ", "d")}


def test_encode_reg_is_utf16_with_bom():
    raw = fleet_reg.encode_reg("Windows Registry Editor Version 5.00\r\n")
    assert raw[:2] == b"\xff\xfe" and fleet_reg.decode_reg(raw).startswith("Windows Registry")


def test_deleted_keys_and_values_in_reg_files():
    keys = fleet_reg.parse_reg('Windows Registry Editor Version 5.00\r\n\r\n[-HKEY_USERS\\S-1\\A]\r\n\r\n'
                               '[HKEY_USERS\\S-1\\A]\r\n"x"="1"\r\n"x"=-\r\n"y"=hex(0):01\r\n')
    assert list(keys) == ["HKEY_USERS\\S-1\\A"]
    assert keys["HKEY_USERS\\S-1\\A"] == {"y": ("REG_NONE", b"\x01")}
    assert fleet_reg.parse_reg("[-HKEY_USERS\\S-1\\A]\r\n") == {"HKEY_USERS\\S-1\\A": None}


# ------------------------------------------------------------------ reg query

# Wine 8.0 (Debian 12): "(null)" for REG_QWORD data, an empty (Default) on keys made by reg add
WINE_QUERY = (
    "\r\nHKEY_LOCAL_MACHINE\\Software\\KTest\r\n"
    "    (Default)    REG_SZ    \r\n"
    "    bin    REG_BINARY    0AFF00\r\n"
    "    binempty    REG_BINARY    \r\n"
    "    dw    REG_DWORD    0xffffffff\r\n"
    "    ms    REG_MULTI_SZ    a\\0b c\r\n"
    "    name    with    spaces    REG_SZ    x    REG_SZ    y\r\n"
    "    qw    REG_QWORD    (null)\r\n"
    "    sz    REG_SZ    a\"b & c | d % e ^ f\r\n"
    "\r\nHKEY_LOCAL_MACHINE\\Software\\KTest\\sub\r\n"
)
# Windows 10 reg.exe: "(value not set)" for an unset default, hex QWORD
WINDOWS_QUERY = (
    "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\KTest\r\n"
    "    (Default)    REG_SZ    (value not set)\r\n"
    "    qw    REG_QWORD    0xffffffffffffffff\r\n"
    "    dw    REG_DWORD    0x1\r\n"
    "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\KTest\\sub\r\n"
)


def test_parse_wine_query():
    parsed = fleet_reg.parse_query(WINE_QUERY)
    assert parsed["keys"] == ["HKEY_LOCAL_MACHINE\\Software\\KTest", "HKEY_LOCAL_MACHINE\\Software\\KTest\\sub"]
    values = parsed["values"]["HKEY_LOCAL_MACHINE\\Software\\KTest"]
    assert values[""] == ("REG_SZ", "")
    assert values["bin"] == ("REG_BINARY", b"\x0a\xff\x00")
    assert values["binempty"] == ("REG_BINARY", b"")
    assert values["dw"] == ("REG_DWORD", 2**32 - 1)
    assert values["ms"] == ("REG_MULTI_SZ", ["a", "b c"])
    assert values["qw"] == ("REG_QWORD", None)  # Wine prints (null)
    assert values["sz"] == ("REG_SZ", 'a"b & c | d % e ^ f')
    # the first "    REG_<TYPE>" ends the name: right here, ambiguous only for a name holding
    # "    REG_SZ    " itself (reads use reg export, which quotes names)
    assert values["name    with    spaces"] == ("REG_SZ", "x    REG_SZ    y")


def test_parse_windows_query():
    parsed = fleet_reg.parse_query(WINDOWS_QUERY)
    values = parsed["values"]["HKEY_LOCAL_MACHINE\\SOFTWARE\\KTest"]
    assert "" not in values
    assert values["qw"] == ("REG_QWORD", 2**64 - 1)
    assert fleet_reg.subkeys(WINDOWS_QUERY, "HKEY_LOCAL_MACHINE\\Software\\KTest") == [
        "HKEY_LOCAL_MACHINE\\SOFTWARE\\KTest\\sub"]


def test_not_found_messages_of_wine_and_windows():
    assert fleet_reg.is_not_found("reg: Unable to find the specified registry key")
    assert fleet_reg.is_not_found("ERROR: The system was unable to find the specified registry key or value.")
    assert not fleet_reg.is_not_found("reg: Unable to access or create the specified registry key")


# ------------------------------------------------------------------ Windows: Salt's reg module


@pytest.mark.parametrize(
    "op, kwargs, expected",
    [
        ("read", {"name": "v"}, ("reg.read_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": "v"})),
        ("read", {"name": "(Default)"}, ("reg.read_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": None})),
        ("set", {"name": "d", "vtype": "REG_DWORD", "data": "1"},
         ("reg.set_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": "d", "vdata": 1, "vtype": "REG_DWORD"})),
        ("set", {"name": "b", "vtype": "reg_binary", "data": "0aff"},
         ("reg.set_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": "b", "vdata": b"\n\xff",
                            "vtype": "REG_BINARY"})),
        ("set", {"name": "m", "vtype": "REG_MULTI_SZ", "data": ("a", "b")},
         ("reg.set_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": "m", "vdata": ["a", "b"],
                            "vtype": "REG_MULTI_SZ"})),
        ("set", {"name": "", "vtype": "REG_SZ", "data": 'a"b & c\n'},
         ("reg.set_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": None, "vdata": 'a"b & c\n',
                            "vtype": "REG_SZ"})),
        ("delete_value", {"name": "v"}, ("reg.delete_value", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K", "vname": "v"})),
        ("delete_key", {}, ("reg.delete_key_recursive", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K"})),
        ("list_values", {}, ("reg.list_values", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K"})),
        ("list_keys", {}, ("reg.list_keys", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K"})),
        ("key_exists", {}, ("reg.key_exists", {"hive": "HKEY_LOCAL_MACHINE", "key": "S\\K"})),
    ],
)
def test_windows_backend_argument_mapping(op, kwargs, expected):
    assert fleet_reg.windows_call(op, "HKEY_LOCAL_MACHINE", "S\\K", **kwargs) == expected


def test_windows_mapping_refuses_bad_data_before_calling_salt():
    with pytest.raises(RegError, match="data: 4294967296 does not fit REG_DWORD"):
        fleet_reg.windows_call("set", "HKEY_LOCAL_MACHINE", "S", name="d", vtype="REG_DWORD", data=2**32)
    with pytest.raises(RegError, match="op: 'rename'"):
        fleet_reg.windows_call("rename", "HKEY_LOCAL_MACHINE", "S")


def test_windows_answers_are_read_back_typed():
    ok = {"hive": "HKLM", "key": "S", "vname": "d", "vdata": 1, "vtype": "REG_DWORD", "success": True}
    assert fleet_reg.windows_value(ok, "d") == ("REG_DWORD", 1)
    unset = {"vname": "(Default)", "vdata": "(value not set)", "vtype": "REG_SZ", "success": True}
    assert fleet_reg.windows_value(unset, None) is None
    assert fleet_reg.windows_value({"success": False, "comment": "Cannot find key"}, "d") is None
    listed = [{"vname": "(Default)", "vtype": "REG_SZ", "vdata": "x"},
              {"vname": "b", "vtype": "REG_BINARY", "vdata": b"\x00"}]
    assert fleet_reg.windows_values(listed) == {"": ("REG_SZ", "x"), "b": ("REG_BINARY", b"\x00")}
    assert fleet_reg.windows_values((False, "Cannot find key: HKLM\\S")) is None


def test_first_section_tells_a_snapshot_from_a_plain_export():
    assert fleet_reg.first_section(fleet_reg.import_text([("HKEY_USERS\\S-1\\A", None)])) == (True, "HKEY_USERS\\S-1\\A")
    assert fleet_reg.first_section(WINE_EXPORT) == (False, "HKEY_LOCAL_MACHINE\\Software\\KTest")
    assert fleet_reg.first_section("Windows Registry Editor Version 5.00\r\n") == (None, None)


# ------------------------------------------------------------------ Windows glue with a fake Salt reg module


class FakeSaltReg:
    """Salt's Windows reg module in memory: strict about vdata types like the real one."""

    TYPES = {"REG_SZ": str, "REG_EXPAND_SZ": str, "REG_MULTI_SZ": list, "REG_DWORD": int, "REG_QWORD": int,
             "REG_BINARY": bytes}

    def __init__(self, fail_on=None):
        self.keys, self.calls, self.fail_on = {}, [], fail_on
        self.loaded = {"S-1-5-21-1-2-3-1001"}
        self.keys[("HKEY_LOCAL_MACHINE", "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\S-1-5-21-1-2-3-1001")] = {
            "ProfileImagePath": ("REG_EXPAND_SZ", "C:\\Users\\kiosk")}
        self.keys[("HKEY_LOCAL_MACHINE", "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\S-1-5-21-1-2-3-1002")] = {
            "ProfileImagePath": ("REG_EXPAND_SZ", "C:\\Users\\staff")}

    def funcs(self):
        return {"reg.list_values": self.list_values, "reg.set_value": self.set_value,
                "reg.delete_value": self.delete_value, "reg.delete_key_recursive": self.delete_key,
                "reg.list_keys": self.list_keys, "reg.key_exists": self.key_exists,
                "reg.import_file": lambda path: self.calls.append(("import", path)) or True,
                "cmd.run_all": self.run_all}

    def list_values(self, hive, key):
        if (hive, key) not in self.keys:
            return False, f"Cannot find key: {hive}\\{key}"
        return [{"vname": n or "(Default)", "vtype": t, "vdata": d, "success": True}
                for n, (t, d) in self.keys[(hive, key)].items()]

    def set_value(self, hive, key, vname, vdata, vtype):
        self.calls.append(("set", hive, key, vname, vdata, vtype))
        assert isinstance(vdata, self.TYPES[vtype]) and not isinstance(vdata, bool)
        if self.fail_on == vname:
            return False
        self.keys.setdefault((hive, key), {})[vname or ""] = (vtype, vdata)
        return True

    def delete_value(self, hive, key, vname):
        self.calls.append(("delete_value", hive, key, vname))
        return self.keys.get((hive, key), {}).pop(vname or "", None) is not None or None

    def delete_key(self, hive, key):
        self.calls.append(("delete_key", hive, key))
        gone = [k for k in self.keys if k[0] == hive and (k[1] == key or k[1].startswith(key + "\\"))]
        for k in gone:
            del self.keys[k]
        return {"Deleted": [f"{hive}\\{k[1]}" for k in gone], "Failed": []} if gone else False

    def list_keys(self, hive, key):
        prefix = key + "\\"
        return sorted({k[1][len(prefix):].split("\\")[0] for k in self.keys if k[0] == hive and k[1].startswith(prefix)})

    def key_exists(self, hive, key):
        return key in self.loaded if hive == "HKU" else (hive, key) in self.keys

    def run_all(self, argv, **kwargs):
        self.calls.append(("run", list(argv)))
        assert kwargs.get("python_shell") is False
        if argv[1] == "export":  # reg.exe export KEY FILE /y /reg:64: writes the key as .reg text
            hive, _, key = argv[2].partition("\\")
            if (hive, key) not in self.keys:
                return {"retcode": 1, "stdout": "",
                        "stderr": "ERROR: The system was unable to find the specified registry key or value."}
            with open(argv[3], "wb") as fh:
                fh.write(fleet_reg.encode_reg(fleet_reg.import_text([(argv[2], self.keys[(hive, key)])])))
        return {"retcode": 0, "stdout": "", "stderr": ""}


@pytest.fixture
def windows_kiosk_reg(monkeypatch, tmp_path):
    import importlib.util
    import pathlib

    import salt.utils.platform

    path = pathlib.Path(__file__).resolve().parents[2] / "_modules" / "kiosk_reg.py"
    spec = importlib.util.spec_from_file_location("kiosk_reg_windows_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(salt.utils.platform, "is_windows", lambda: True)
    fake = FakeSaltReg()
    mod.__salt__ = fake.funcs()
    mod.__context__ = {}
    mod.__opts__ = {"cachedir": str(tmp_path)}
    return mod, fake


def test_windows_glue_sets_typed_values_through_salts_reg_module_idempotently(windows_kiosk_reg):
    mod, fake = windows_kiosk_reg
    assert mod.__virtual__() == "kiosk_reg" and mod.backend()["backend"] == "windows"
    ret = mod.set_value("HKLM\\SOFTWARE\\Kiosk", "Slot", "3", vtype="REG_DWORD")
    assert ret["changed"] and fake.calls[-1] == ("set", "HKEY_LOCAL_MACHINE", "SOFTWARE\\Kiosk", "Slot", 3, "REG_DWORD")
    calls = len(fake.calls)
    assert mod.set_value("HKLM\\SOFTWARE\\Kiosk", "Slot", 3, vtype="REG_DWORD")["changed"] is False
    assert len(fake.calls) == calls  # nothing written
    mod.set_value("HKLM\\SOFTWARE\\Kiosk", "Blob", "0aff", vtype="REG_BINARY")
    assert fake.calls[-1][4] == b"\n\xff"
    assert mod.get_value("HKLM\\SOFTWARE\\Kiosk", "Blob")["data"] == "0aff"
    assert mod.delete_key("HKLM\\SOFTWARE\\Kiosk")["changed"] is True
    assert fake.calls[-1] == ("delete_key", "HKEY_LOCAL_MACHINE", "SOFTWARE\\Kiosk")


def test_windows_glue_user_hive_loaded_or_loaded_from_ntuser_dat(windows_kiosk_reg):
    mod, fake = windows_kiosk_reg
    mod.set_value("HKCU\\Software\\Kiosk", "v", "x", user="kiosk")  # logged on: HKU\<SID> directly
    assert fake.calls[-1][:3] == ("set", "HKEY_USERS", "S-1-5-21-1-2-3-1001\\Software\\Kiosk")
    mod.set_value("HKCU\\Software\\Kiosk", "v", "x", user="staff")  # not loaded: reg load / unload around it
    runs = [c[1] for c in fake.calls if c[0] == "run"]
    assert runs[0][1:] == ["load", "HKU\\kiosk_reg_S-1-5-21-1-2-3-1002", "C:\\Users\\staff\\NTUSER.DAT"]
    assert runs[-1][1:] == ["unload", "HKU\\kiosk_reg_S-1-5-21-1-2-3-1002"]
    assert ("set", "HKEY_USERS", "kiosk_reg_S-1-5-21-1-2-3-1002\\Software\\Kiosk", "v", "x", "REG_SZ") in fake.calls
    mod.set_value("HKCU\\Software\\Kiosk", "v", "x", user="Default")
    runs = [c[1] for c in fake.calls if c[0] == "run"]
    assert runs[-2][1:3] == ["load", "HKU\\kiosk_reg_Default"] and runs[-2][3].endswith("Users\\Default\\NTUSER.DAT")


def test_windows_glue_rolls_back_when_salt_refuses_a_write(windows_kiosk_reg):
    from salt.exceptions import CommandExecutionError

    mod, fake = windows_kiosk_reg
    mod.set_value("HKLM\\SOFTWARE\\Kiosk", "a", "old")
    fake.fail_on = "b"
    with pytest.raises(CommandExecutionError, match=r"^changes\[1\]: reg.set_value refused .*rolled back: changes\[0\]"):
        mod.set_values([{"key": "HKLM\\SOFTWARE\\Kiosk", "name": "a", "data": "new"},
                        {"key": "HKLM\\SOFTWARE\\Kiosk", "name": "b", "data": 1, "vtype": "REG_DWORD"}],
                       snapshot=False)
    assert fake.keys[("HKEY_LOCAL_MACHINE", "SOFTWARE\\Kiosk")] == {"a": ("REG_SZ", "old")}


# ------------------------------------------------------------------ nothing malformed reaches .reg text

# What could end a .reg line or section header if it got into one
BREAKERS = ["\r", "\n", "\0", "[", "]", "\r\n", "\x1a", "\x7f", "\x85", "\u2028", "\u2029", "\ud800", "\udfff"]
INJECTION_NAME = 'x"=-\r\n[HKEY_LOCAL_MACHINE\\Software\\Injected]\r\n"pwn'
INJECTION_KEY_PART = "Kiosk]\r\n[HKEY_LOCAL_MACHINE\\Software\\Injected"


@pytest.mark.parametrize("bad", BREAKERS)
def test_key_parts_refuse_line_breaks_brackets_and_controls(bad):
    for key in (f"HKLM\\Software\\a{bad}b", f"HKLM\\{bad}\\x", f"HKLM\\Software\\x{bad}"):
        with pytest.raises(RegError, match=r"^changes\[2\]\.key: key .* contains .* at position \d+; "):
            fleet_reg.parse_key(key, "changes[2].key")


@pytest.mark.parametrize("bad", BREAKERS)
def test_value_names_refuse_line_breaks_brackets_and_controls(bad):
    with pytest.raises(RegError, match=r"^changes\[0\]\.name: value name .* contains "):
        fleet_reg.check_name(f"a{bad}b", "changes[0].name")
    with pytest.raises(RegError, match=r"^name: "):
        fleet_reg.value_line(f"a{bad}b", "REG_SZ", "x")
    with pytest.raises(RegError, match=r"^name: "):
        fleet_reg.add_argv("HKEY_LOCAL_MACHINE", "S", f"{bad}", "REG_SZ", "x")


def test_the_refusal_names_the_character_not_the_raw_text():
    with pytest.raises(RegError) as info:
        fleet_reg.check_name(INJECTION_NAME)
    message = str(info.value)
    assert message.startswith("name: value name 'x\"=-\\r\\n[HKEY_LOCAL_MACHINE")  # shown escaped (repr), one line
    assert "contains a carriage return at position 4" in message
    assert "\r" not in message and "\n" not in message
    with pytest.raises(RegError, match=r"contains an unpaired surrogate \(U\+D800\)"):
        fleet_reg.check_name("a\ud800")
    with pytest.raises(RegError, match=r"contains a control character \(U\+0085\)"):
        fleet_reg.parse_key("HKLM\\a\x85")


def test_an_injection_never_reaches_import_text():
    with pytest.raises(RegError, match=r"^name: value name "):
        fleet_reg.import_text([("HKEY_LOCAL_MACHINE\\Software\\Kiosk", {INJECTION_NAME: ("REG_SZ", "x")})])
    with pytest.raises(RegError, match=r"^sections\[1\]\.key: key "):
        fleet_reg.import_text([("HKEY_LOCAL_MACHINE\\Software\\Ok", None),
                               ("HKEY_LOCAL_MACHINE\\Software\\" + INJECTION_KEY_PART, {"v": ("REG_SZ", "x")})])
    with pytest.raises(RegError, match=r"^sections\[0\]\.key: key "):
        fleet_reg.import_text([("HKEY_LOCAL_MACHINE\\Software\\" + INJECTION_KEY_PART, None)])
    with pytest.raises(RegError, match=r"^key: key "):
        fleet_reg.section_header("HKLM\\Software\\" + INJECTION_KEY_PART, deleted=True)
    assert fleet_reg.section_header("HKLM\\Software\\K", deleted=True) == "[-HKEY_LOCAL_MACHINE\\Software\\K]"


def test_text_data_keeps_line_breaks_but_not_unpaired_surrogates():
    # data travels as hex bytes in .reg text, so line breaks and brackets in data are harmless
    text = fleet_reg.import_text([("HKEY_LOCAL_MACHINE\\S", {"v": ("REG_SZ", INJECTION_NAME)})])
    assert [line for line in text.split("\r\n") if line.startswith("[")] == ["[HKEY_LOCAL_MACHINE\\S]"]
    assert fleet_reg.parse_reg(text) == {"HKEY_LOCAL_MACHINE\\S": {"v": ("REG_SZ", INJECTION_NAME)}}
    with pytest.raises(RegError, match=r"^data\[1\]: REG_MULTI_SZ text contains an unpaired surrogate"):
        fleet_reg.normalise("REG_MULTI_SZ", ["ok", "bad\udc00"])
    assert fleet_reg.normalise("REG_SZ", "emoji \U0001F600 is a surrogate pair in UTF-16") \
        == "emoji \U0001F600 is a surrogate pair in UTF-16"


def _with_breaker(draw_text, breaker, position):
    position = min(position, len(draw_text))
    return draw_text[:position] + breaker + draw_text[position:]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.sampled_from(BREAKERS), st.integers(0, 40), st.booleans())
def test_generated_names_with_a_breaker_are_always_refused(text, breaker, position, in_key):
    bad = _with_breaker(text, breaker, position)
    sections = ([("HKEY_LOCAL_MACHINE\\Software\\" + bad.replace("\\", "_"), {"v": ("REG_SZ", "x")})] if in_key
                else [("HKEY_LOCAL_MACHINE\\Software\\K", {bad: ("REG_SZ", "x")})])
    field = r"sections\[0\]\.key" if in_key else "name"
    with pytest.raises(RegError, match=rf"^{field}: "):
        fleet_reg.import_text(sections)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))
def test_any_generated_key_and_name_gives_exactly_the_sections_asked_for_or_a_refusal(part, name, data):
    key = "HKEY_LOCAL_MACHINE\\Software\\" + part
    try:
        text = fleet_reg.import_text([(key, None), (key, {name: ("REG_SZ", data)})])
    except RegError:
        return
    lines = text.split("\r\n")
    # one header line per section, nothing else looks like one, and every line is a known kind
    assert [line for line in lines if line.startswith("[")] == [f"[-{key}]", f"[{key}]"]
    assert all(line == "" or line.startswith(("[", '"', "@", "  ", fleet_reg.REG_HEADER)) for line in lines)
    assert not any(c in text for c in "\0\x85\u2028\u2029")
    assert text.count("\n") == text.count("\r\n") and text.count("\r") == text.count("\r\n")
    fleet_reg.encode_reg(text)  # UTF-16 can carry it
    parsed = fleet_reg.parse_reg(text)
    assert list(parsed) == [key]
    assert parsed[key] == {fleet_reg.check_name(name): ("REG_SZ", data)}


def test_a_snapshot_restores_only_its_own_key():
    key = "HKEY_LOCAL_MACHINE\\Software\\Kiosk"
    good = fleet_reg.import_text([(key, None), (key, {"v": ("REG_SZ", "x")}), (key + "\\sub", {})])
    assert fleet_reg.snapshot_key(good) == key
    for extra in ("HKEY_LOCAL_MACHINE\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
                  "HKEY_LOCAL_MACHINE\\Software\\KioskEvil"):  # a sibling sharing the prefix is outside too
        tampered = good + fleet_reg.import_text([(extra, {"pwn": ("REG_SZ", "x")})]).split("\r\n", 2)[2]
        with pytest.raises(RegError, match=r"^snapshot: section .* is outside"):
            fleet_reg.snapshot_key(tampered)
    with pytest.raises(RegError, match=r"^snapshot: does not start with a \[-KEY\] section"):
        fleet_reg.snapshot_key(fleet_reg.import_text([(key, {"v": ("REG_SZ", "x")})]))
    with pytest.raises(RegError, match=r"^reg file: cannot read value data"):
        fleet_reg.snapshot_key(good + '"v"=hex:zz\r\n')


# ------------------------------------------------------------------ fuzz: only RegError, naming the field

class _Huge:
    """Stands for 10**5000 in generated data: hypothesis cannot repr a number that long when it reports."""

    def __repr__(self):
        return "10**5000"


HUGE = _Huge()


def _real(value):
    """Generated data with :data:`HUGE` replaced by the number itself."""
    if value is HUGE:
        return 10**5000
    if isinstance(value, list):
        return [_real(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_real(v) for v in value)
    if isinstance(value, dict):
        return {k: _real(v) for k, v in value.items()}
    return value


ODD_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=20)  # surrogates included
SHELL = st.sampled_from(["; rm -rf /", "$(id)", "`id`", "a|b", "&&", "%PATH%", "^&", "\r\n", "\0", "]", "[",
                         "HKLM\\..\\x", "-", "/f", "@", "(Default)", "10**5000", "1e999", "nan", "0x" + "f" * 40])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**300), max_value=2**300), st.just(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), ODD_TEXT, SHELL, st.binary(max_size=10),
    st.dates(), st.datetimes(),  # what YAML on the salt CLI makes of 2026-01-01
    st.sampled_from(["HKLM\\Software\\K", "REG_SZ", "REG_DWORD", "REG_BINARY", "REG_MULTI_SZ", "S-1-5-21-1-2-3"]),
)
ANYTHING = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children)
    | st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.booleans()), children, max_size=4),
    max_leaves=8,
)
REG_TEXTS = st.sampled_from([
    "Windows Registry Editor Version 5.00\r\n\r\n[HKEY_LOCAL_MACHINE\\S]\r\n\"a\"=dword:zz\r\n",
    "[HKEY_LOCAL_MACHINE\\S]\r\n\"a\"=dword:1ffffffff\r\n",
    "[HKEY_LOCAL_MACHINE\\S]\r\n\"a\"=hex:0g\r\n",
    "[HKEY_LOCAL_MACHINE\\S]\r\n\"a\"=hex(b):01,0\r\n",
    "[HKEY_LOCAL_MACHINE\\S]\r\n\"a\"=hex(ffffffffff):01\r\n",
    "[HKEY_LOCAL_MACHINE\\S]\r\n\"unterminated=1\r\n",
    "\r\nHKEY_LOCAL_MACHINE\\S\r\n    v    REG_DWORD    0xzz\r\n",
    "\r\nHKEY_LOCAL_MACHINE\\S\r\n    b    REG_BINARY    0g\r\n",
])
# per parameter: garbage, or something close enough to valid to get past the first check
PARAMS = {
    "key": st.sampled_from(["HKLM\\Software\\K", "HKEY_CURRENT_USER\\x\\y"]),
    "hive": st.sampled_from(["HKEY_LOCAL_MACHINE", "HKEY_USERS", "HKEY_CURRENT_USER"]),
    "subkey": st.sampled_from(["Software\\K", "S-1-5-21-1\\Software"]),
    "vtype": st.sampled_from(["REG_SZ", "REG_DWORD", "REG_QWORD", "REG_BINARY", "REG_MULTI_SZ", "REG_EXPAND_SZ"]),
    "name": ODD_TEXT, "text": st.one_of(ODD_TEXT, REG_TEXTS), "raw": st.binary(max_size=30),
    "op": st.sampled_from(["read", "set", "delete_value", "delete_key", "list_values", "list_keys", "key_exists"]),
    "sections": st.lists(st.tuples(st.just("HKEY_LOCAL_MACHINE\\S"), st.one_of(st.none(), st.dictionaries(
        ODD_TEXT, st.tuples(st.sampled_from(["REG_SZ", "REG_DWORD", "REG_BINARY"]), ANYTHING), max_size=2))),
        max_size=2),
    "profiles": st.dictionaries(ODD_TEXT, ANYTHING, max_size=3),
}
# set by the code, not by input
CODE_PARAMS = ("field", "reg", "setarch", "machine", "limit")
FIELD_FIRST = re.compile(r"^(reg file|reg query|[A-Za-z_][\w.\[\]]*): \S")
PUBLIC = sorted(n for n, f in vars(fleet_reg).items()
                if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == fleet_reg.__name__)


def test_the_fuzz_covers_every_public_function():
    assert len(PUBLIC) >= 35 and {"parse_key", "check_name", "import_text", "parse_reg", "normalise"} <= set(PUBLIC)


@pytest.mark.parametrize("function", PUBLIC)
def test_public_functions_raise_only_regerror_naming_the_field(function):
    fn = getattr(fleet_reg, function)
    params = [p for p in inspect.signature(fn).parameters if p not in CODE_PARAMS]
    strategies = [st.one_of(ANYTHING, PARAMS[p]) if p in PARAMS else ANYTHING for p in params]

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.tuples(*strategies))
    def check(args):
        try:
            fn(*_real(args))
        except RegError as exc:
            message = str(exc)
            assert FIELD_FIRST.match(message), message
            message.encode("utf-8")  # loggable: no unpaired surrogate in the message itself

    check()


@pytest.fixture
def fuzzed_kiosk_reg(windows_kiosk_reg):
    return windows_kiosk_reg[0]


KIOSK_REG_CALLS = {
    "get_value": ("key", "name", "user"),
    "list_values": ("key", "user"),
    "set_value": ("key", "name", "data", "vtype", "user", "test"),
    "set_values": ("changes", "test", "snapshot"),
    "delete_value": ("key", "name", "user", "test"),
    "delete_key": ("key", "user", "test"),
    "snapshot": ("key", "user"),
    "restore": ("snapshot",),
}
KIOSK_PARAMS = {**PARAMS, "key": st.sampled_from(["HKLM\\Software\\K", "HKCU\\Software\\K", "HKLM\\Software\\K\\a"]),
                "user": st.one_of(st.none(), st.sampled_from(["kiosk", "staff", "ghost"])),
                "test": st.booleans(), "snapshot": st.booleans(),
                "changes": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["HKLM\\Software\\K"])},
                                                          optional={"name": ANYTHING, "data": ANYTHING,
                                                                    "vtype": ANYTHING, "user": ANYTHING,
                                                                    "absent": ANYTHING}), max_size=3)}


@pytest.mark.parametrize("function", sorted(KIOSK_REG_CALLS))
def test_kiosk_reg_public_functions_raise_only_salt_errors_naming_the_field(fuzzed_kiosk_reg, function):
    from salt.exceptions import CommandExecutionError, SaltInvocationError

    fn = getattr(fuzzed_kiosk_reg, function)
    strategies = [st.one_of(ANYTHING, KIOSK_PARAMS.get(p, ANYTHING)) for p in KIOSK_REG_CALLS[function]]

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.tuples(*strategies))
    def check(args):
        try:
            fn(*_real(args))
        except (SaltInvocationError, CommandExecutionError) as exc:
            message = str(exc)
            assert FIELD_FIRST.match(message), message
            message.encode("utf-8")

    check()
