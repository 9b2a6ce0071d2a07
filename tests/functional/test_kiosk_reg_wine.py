"""
``kiosk_reg`` (module and state) loaded by Salt's own loader, against Wine's
real registry: one prefix under a temp dir, initialised once per session by
the module itself, one persistent wineserver that the session starts and
stops by its pid (tests/support/wine.py).
"""

import copy
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import time

import pytest
import salt.config
import salt.loader
from salt.exceptions import CommandExecutionError, SaltInvocationError

import fleet_reg
from tests.support import wine

REPO = pathlib.Path(__file__).resolve().parents[2]
WINE = shutil.which("wine") and shutil.which("wineserver") and shutil.which("setarch")
pytestmark = pytest.mark.skipif(not WINE, reason="wine is not installed (apt-get install wine64 wine)")
BASE = "HKLM\\Software\\KioskRegTest"
INJECTION = 'a"b & c | d % e ^ f'


def _opts(root, **extra):
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(root), "cachedir": str(root),
                 "module_dirs": [str(REPO)], "id": "kiosk-test-1", "grains": {},
                 # module_dirs would find the repo's states/ (SLS files) before _states/
                 "states_dirs": [str(REPO / "_states")],
                 "kiosk_reg": {"wineprefix": str(root / "wineprefix")}})
    opts.update(extra)
    return opts


@pytest.fixture(scope="session")
def wine_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kreg")
    server = wine.WineServer(root / "wineprefix").start()
    yield root
    server.stop()


@pytest.fixture(scope="session")
def salt_env(wine_root):
    opts = _opts(wine_root)
    utils = salt.loader.utils(opts)
    mods = salt.loader.minion_mods(opts, utils=utils, whitelist=["kiosk_reg"])
    started = time.monotonic()
    info = mods["kiosk_reg.backend"]()  # creates the prefix (wineboot --init) and the persistent wineserver
    init_s = time.monotonic() - started
    print(f"\nkiosk_reg: Wine prefix initialised in {init_s:.1f} s ({info['wine_version']})")
    test_opts = copy.deepcopy(opts)
    test_opts["test"] = True
    states = salt.loader.states(opts, mods, utils, {}, whitelist=["kiosk_reg"])
    test_states = salt.loader.states(test_opts, mods, utils, {}, whitelist=["kiosk_reg"])
    return {"mods": mods, "states": states, "test_states": test_states, "opts": opts, "info": info}


@pytest.fixture
def reg(salt_env):
    mods = salt_env["mods"]
    return lambda fun, *args, **kwargs: mods[f"kiosk_reg.{fun}"](*args, **kwargs)


@pytest.fixture
def key(reg, request):
    """A fresh key per test, deleted afterwards."""
    name = f"{BASE}\\{re.sub(r'[^A-Za-z0-9_-]+', '_', request.node.name)[:80]}"
    reg("delete_key", name)
    yield name
    reg("delete_key", name)


def _wine_reg(salt_env, *args):
    """reg.exe run directly (not through kiosk_reg): ``(exit code, stdout)``."""
    with open(os.devnull, "rb") as devnull:
        out = subprocess.run(wine.reg_argv(*args), stdin=devnull, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=wine.env(salt_env["info"]["wineprefix"]),
                             timeout=60, check=False)
    return out.returncode, out.stdout.decode("utf-8", "replace")


def _wine_query(salt_env, key):
    return _wine_reg(salt_env, "query", key)[1]


def test_backend_is_wine_with_the_configured_prefix(salt_env, wine_root):
    info = salt_env["info"]
    assert info["backend"] == "wine"
    assert info["wineprefix"] == str(wine_root / "wineprefix")
    assert info["wine_version"].startswith("wine-")


ADDR_NO_RANDOMIZE = 0x0040000  # linux/personality.h
KUSER_SHARED_DATA = 0x7FFE0000


def test_wine_processes_start_without_address_randomisation(salt_env, reg, key):
    """
    The cause of the old start-up failures: a randomised brk heap over
    0x7ffe0000 (see fleet_reg.wine_argv). Every Wine process of the prefix
    (reg.exe's helpers here: services.exe, winedevice.exe, ...) must run with
    randomisation off and its heap well below that page.
    """
    reg("set_value", key, "v", "x")
    prefix = salt_env["info"]["wineprefix"]
    seen = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not os.readlink(f"/proc/{pid}/cwd").startswith(prefix + "/"):
                continue
            personality = int(pathlib.Path(f"/proc/{pid}/personality").read_text(), 16)
            heap = [line for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines() if "[heap]" in line]
        except OSError:  # exited meanwhile
            continue
        seen += 1
        assert personality & ADDR_NO_RANDOMIZE, (pid, hex(personality))
        if heap:
            assert int(heap[0].split("-")[0], 16) < KUSER_SHARED_DATA - 0x1000000, (pid, heap[0])
    assert seen >= 2  # at least services.exe and one winedevice.exe run for the prefix


def test_virtual_names_the_missing_wine(wine_root):
    opts = _opts(wine_root, kiosk_reg={"wine": "/nonexistent/wine"})
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_reg"])
    assert mods.get("kiosk_reg.set_value") is None
    assert "Wine is not installed" in str(mods.missing_modules.get("kiosk_reg"))


ROUND_TRIPS = [
    ("REG_SZ", "plain text", "plain text"),
    ("REG_SZ", "", ""),
    ("REG_SZ", "héllo ✓ 中文", "héllo ✓ 中文"),
    ("REG_EXPAND_SZ", "%SystemRoot%\\System32", "%SystemRoot%\\System32"),
    ("REG_MULTI_SZ", ["one", "two words", "C:\\0dir"], ["one", "two words", "C:\\0dir"]),
    ("REG_MULTI_SZ", [], []),
    ("REG_DWORD", 2**32 - 1, 2**32 - 1),
    ("REG_DWORD", "0x10", 16),
    ("REG_QWORD", 2**64 - 1, 2**64 - 1),
    ("REG_BINARY", "00 0a FF", "000aff"),
    ("REG_BINARY", "", ""),
    ("REG_BINARY", bytes(range(256)) * 80, (bytes(range(256)) * 80).hex()),  # 40 KiB of hex: via reg import
]


@pytest.mark.parametrize("vtype, data, expected", ROUND_TRIPS)
def test_every_type_round_trips(reg, key, vtype, data, expected):
    ret = reg("set_value", key, "v", data, vtype=vtype)
    assert ret["changed"] is True and ret["old"] is None
    got = reg("get_value", key, "v")
    assert got == {"key": key, "name": "v", "exists": True, "vtype": vtype, "data": expected}
    assert reg("set_value", key, "v", data, vtype=vtype)["changed"] is False


def test_default_value_and_list_values(reg, key):
    reg("set_value", key, "", "the default")
    reg("set_value", key, "n", 5, vtype="REG_DWORD")
    assert reg("list_values", key) == {"(Default)": {"vtype": "REG_SZ", "data": "the default"},
                                       "n": {"vtype": "REG_DWORD", "data": 5}}
    assert reg("get_value", key, "(Default)")["data"] == "the default"


@pytest.mark.parametrize(
    "vtype, first, again",
    [
        ("REG_DWORD", "1", 1),
        ("REG_DWORD", 16, "0x10"),
        ("REG_QWORD", "18446744073709551615", 2**64 - 1),
        ("REG_BINARY", "0A FF", "0aff"),
        ("REG_BINARY", "0aff", [10, 255]),
        ("REG_MULTI_SZ", ["a", "b"], ("a", "b")),
        ("REG_SZ", 42, "42"),
    ],
)
def test_typed_comparison_makes_the_second_set_a_no_change(reg, key, vtype, first, again):
    assert reg("set_value", key, "v", first, vtype=vtype)["changed"] is True
    second = reg("set_value", key, "v", again, vtype=vtype)
    assert second["changed"] is False and second["old"] == second["new"]


def test_a_type_change_or_order_change_is_a_change(reg, key):
    reg("set_value", key, "v", "1", vtype="REG_SZ")
    ret = reg("set_value", key, "v", 1, vtype="REG_DWORD")
    assert ret["changed"] is True
    assert ret["old"] == {"vtype": "REG_SZ", "data": "1"} and ret["new"] == {"vtype": "REG_DWORD", "data": 1}
    reg("set_value", key, "m", ["a", "b"], vtype="REG_MULTI_SZ")
    assert reg("set_value", key, "m", ["b", "a"], vtype="REG_MULTI_SZ")["changed"] is True


@pytest.mark.parametrize(
    "data",
    [INJECTION, INJECTION + "\nsecond line", "trailing backslash\\", '"quoted"', "\\\\server\\share \"x\"",
     "%PATH% ^& ^| > nul", "/f", "-x", "line\r\nwindows"],
)
def test_injection_shaped_values_are_stored_verbatim(salt_env, reg, key, data):
    reg("set_value", key, "inj", data)
    assert reg("get_value", key, "inj")["data"] == data
    reg("set_value", key, INJECTION, data, vtype="REG_EXPAND_SZ")  # as a value name too
    assert reg("get_value", key, INJECTION) == {"key": key, "name": INJECTION, "exists": True,
                                               "vtype": "REG_EXPAND_SZ", "data": data}
    reg("set_value", key, "multi", [data, "x"], vtype="REG_MULTI_SZ")
    assert reg("get_value", key, "multi")["data"] == [data, "x"]
    if "\n" not in data and "\r" not in data:  # reg query prints one line per value
        assert f"    inj    REG_SZ    {data}\r\n" in _wine_query(salt_env, key)


def test_snapshot_and_restore_put_the_key_back_exactly(reg, key):
    reg("set_value", key, "keep", "old")
    reg("set_value", key, "n", 1, vtype="REG_DWORD")
    reg("set_value", f"{key}\\sub", "deep", ["x", "y"], vtype="REG_MULTI_SZ")
    before = reg("list_values", key), reg("list_values", f"{key}\\sub")
    snap = reg("snapshot", key)
    assert snap["existed"] is True and snap["file"].endswith(".reg") and os.path.isfile(snap["file"])
    reg("set_value", key, "keep", "new")
    reg("set_value", key, "added", "later")
    reg("delete_value", key, "n")
    reg("delete_key", f"{key}\\sub")
    ret = reg("restore", snap["file"])
    assert ret["restored"] is True and ret["key"].lower() == fleet_reg.join_key(*fleet_reg.parse_key(key)).lower()
    assert (reg("list_values", key), reg("list_values", f"{key}\\sub")) == before
    assert reg("restore", snap) == ret  # the dict from snapshot works too, and again


def test_restoring_a_snapshot_of_a_missing_key_deletes_it(reg, key):
    snap = reg("snapshot", key)
    assert snap["existed"] is False
    reg("set_value", key, "v", "created after the snapshot")
    reg("restore", snap["file"])
    assert reg("get_value", key, "v")["exists"] is False
    with pytest.raises(CommandExecutionError, match="does not exist"):
        reg("list_values", key)


def test_restore_refuses_a_snapshot_that_reaches_outside_its_key(reg, key):
    snap = reg("snapshot", key)
    with open(snap["file"], "ab") as fh:  # a section for another key appended to a real snapshot
        fh.write(fleet_reg.encode_reg(f"[{INJECTED}]\r\n\"pwn\"=dword:00000001\r\n")[2:])
    with pytest.raises(SaltInvocationError, match=r"^snapshot: .* cannot be restored: section .* is outside"):
        reg("restore", snap["file"])
    assert reg("get_value", INJECTED, "pwn")["exists"] is False


def test_restore_refuses_files_outside_the_snapshot_folder(reg, tmp_path):
    stray = tmp_path / "evil.reg"
    stray.write_bytes(fleet_reg.encode_reg(fleet_reg.import_text([("HKEY_LOCAL_MACHINE\\Software\\X", None)])))
    with pytest.raises(SaltInvocationError, match="snapshot: .* is not in the snapshot folder"):
        reg("restore", str(stray))
    with pytest.raises(SaltInvocationError, match="snapshot: expected a .reg file"):
        reg("restore", 42)


INJECTED = "HKEY_LOCAL_MACHINE\\Software\\KioskRegTest\\Injected"
# a value name that, pasted into .reg text as it is, ends its line and opens a section of its own
EVIL_NAME = f'x"=hex:00\r\n[{INJECTED}]\r\n"pwn'
BIG = bytes(range(256)) * 80  # too long for a command line: written through a generated .reg file


def test_a_reg_text_injection_is_refused_and_nothing_is_written(salt_env, reg, key, tmp_path):
    target = fleet_reg.join_key(*fleet_reg.parse_key(key))
    # the name does escape when .reg text is built without the checks: Wine's reg.exe imports it
    naive = f'{fleet_reg.REG_HEADER}\r\n\r\n[{target}]\r\n"{EVIL_NAME}"=hex:01\r\n'
    (tmp_path / "naive.reg").write_bytes(fleet_reg.encode_reg(naive))
    assert _wine_reg(salt_env, "import", str(tmp_path / "naive.reg"))[0] == 0
    code, out = _wine_reg(salt_env, "query", INJECTED)
    assert code == 0 and "pwn" in out
    reg("delete_key", INJECTED)
    reg("delete_key", key)
    assert _wine_reg(salt_env, "query", INJECTED)[0] != 0

    with pytest.raises(SaltInvocationError, match=r"^changes\[1\]\.name: value name .* contains a carriage return"):
        reg("set_values", [{"key": key, "name": "ok", "data": "x"},
                           {"key": key, "name": EVIL_NAME, "data": BIG, "vtype": "REG_BINARY"}])
    with pytest.raises(SaltInvocationError, match=r"^name: value name .* contains a carriage return"):
        reg("set_value", key, EVIL_NAME, BIG, vtype="REG_BINARY")
    evil_key = f"{key}\\a]\r\n[{INJECTED}"
    with pytest.raises(SaltInvocationError, match=r"^key: key .* contains '\]'"):
        reg("set_value", evil_key, "v", BIG, vtype="REG_BINARY")
    with pytest.raises(SaltInvocationError, match=r"^key: key .* contains '\['"):
        reg("snapshot", f"{key}\\[x")
    ret = salt_env["states"]["kiosk_reg.present"](key, vname=EVIL_NAME, data=BIG.hex(), vtype="REG_BINARY")
    assert ret["result"] is False and ret["comment"].startswith("vname: value name"), ret
    ret = salt_env["states"]["kiosk_reg.key_absent"](evil_key)
    assert ret["result"] is False and ret["comment"].startswith("name: key"), ret
    # nothing reached the registry: neither the injected key nor the target
    assert _wine_reg(salt_env, "query", INJECTED)[0] != 0
    assert _wine_reg(salt_env, "query", target)[0] != 0


def test_quotes_and_backslashes_in_a_name_survive_a_generated_reg_file(reg, key):
    name = 'q"uo\\te\\"'
    assert reg("set_value", key, name, BIG, vtype="REG_BINARY")["changed"] is True
    assert reg("list_values", key) == {name: {"vtype": "REG_BINARY", "data": BIG.hex()}}


def test_a_bad_second_change_is_refused_before_anything_is_written(reg, key):
    reg("set_value", key, "first", "before")
    changes = [{"key": key, "name": "first", "data": "after"},
               {"key": key, "name": "second", "data": "x", "vtype": "REG_NOPE"}]
    with pytest.raises(SaltInvocationError, match=r"^changes\[1\]\.vtype: 'REG_NOPE' is not one of"):
        reg("set_values", changes)
    assert reg("get_value", key, "first")["data"] == "before"
    assert reg("get_value", key, "second")["exists"] is False


def test_a_change_failing_half_way_rolls_back_what_it_changed(reg, key):
    reg("set_value", key, "first", "before")
    new_key = f"{key}\\created"
    changes = [
        {"key": key, "name": "first", "data": "after"},                         # changed, then put back
        {"key": key, "name": "added", "data": 7, "vtype": "REG_DWORD"},         # created, then removed
        {"key": new_key, "name": "x", "data": "y"},                              # new key, then removed
        # passes validation, refused by the registry: value names are at most 16,383 characters
        {"key": key, "name": "n" * 17000, "data": "z"},
        {"key": key, "name": "never", "data": "reached"},
    ]
    with pytest.raises(CommandExecutionError) as info:
        reg("set_values", changes)
    message = str(info.value)
    assert message.startswith("changes[3]: reg add")
    assert "rolled back: changes[0], changes[1], changes[2]" in message
    assert "ROLLBACK INCOMPLETE" not in message
    assert reg("list_values", key) == {"first": {"vtype": "REG_SZ", "data": "before"}}
    assert reg("get_value", new_key, "x")["exists"] is False
    with pytest.raises(CommandExecutionError, match="does not exist"):
        reg("list_values", new_key)


def test_a_multi_value_change_reports_each_value_and_snapshots_first(reg, key):
    reg("set_value", key, "same", 1, vtype="REG_DWORD")
    changes = [{"key": key, "name": "same", "data": "1", "vtype": "REG_DWORD"},
               {"key": key, "name": "new", "data": ["a"], "vtype": "REG_MULTI_SZ"},
               {"key": key, "name": "gone", "absent": True}]
    ret = reg("set_values", changes)
    assert [c["changed"] for c in ret["changes"]] == [False, True, False]
    assert len(ret["snapshots"]) == 1
    reg("restore", ret["snapshots"][0])
    assert reg("list_values", key) == {"same": {"vtype": "REG_DWORD", "data": 1}}


@pytest.mark.parametrize(
    "call, field",
    [
        (("set_value", "HKXX\\Software\\KioskRegTest\\bad", "v", "x"), "key: unknown hive 'HKXX'"),
        (("set_value", BASE + "\\bad", "v", "x", "REG_NOPE"), "vtype: 'REG_NOPE' is not one of"),
        (("set_value", BASE + "\\bad", "v", 2**32, "REG_DWORD"), "data: 4294967296 does not fit REG_DWORD"),
        (("set_value", BASE + "\\bad", "v", 2**64, "REG_QWORD"), "data: 18446744073709551616 does not fit REG_QWORD"),
        (("set_value", BASE + "\\bad", "v", "abc", "REG_BINARY"), "data: 'abc' has an odd number of hex digits"),
        (("set_value", BASE + "\\bad", "v", "a", "REG_MULTI_SZ"), "data: REG_MULTI_SZ needs a list"),
        (("set_value", BASE + "\\bad\\..\\escape", "v", "x"), "key: .* contains '..'"),
        (("set_value", BASE + "\\\\bad", "v", "x"), "key: .* has an empty part"),
        (("set_value", "HKLM", "v", "x"), "key: 'HKLM' names a whole hive"),
        (("set_value", "HKLM\\Software\\bad", "v", "x", "REG_SZ", "kiosk"), "user: user= applies to HKCU keys only"),
        (("delete_key", "HKLM\\Software"), "key: refusing to delete"),
        (("set_values", []), "changes: expected a non-empty list"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(salt_env, reg, call, field):
    before = _wine_query(salt_env, BASE)
    with pytest.raises(SaltInvocationError) as info:
        reg(*call)
    assert str(info.value).startswith(field.split(" ")[0])
    assert re.search(field, str(info.value))
    assert _wine_query(salt_env, BASE) == before
    assert "bad" not in _wine_query(salt_env, "HKLM\\Software")
    assert "escape" not in _wine_query(salt_env, BASE)


def test_delete_value_and_delete_key_are_idempotent(reg, key):
    reg("set_value", f"{key}\\sub", "v", "x")
    assert reg("delete_value", f"{key}\\sub", "v")["changed"] is True
    assert reg("delete_value", f"{key}\\sub", "v")["changed"] is False
    assert reg("delete_key", key)["changed"] is True
    assert reg("delete_key", key)["changed"] is False
    assert reg("get_value", key, "v")["exists"] is False


def test_per_user_hive_on_wine_is_the_single_wine_user(reg):
    wine_user = pwd.getpwuid(os.getuid()).pw_name  # Wine's only user: the unix user running it
    key = "HKCU\\Software\\KioskRegTest\\user"
    try:
        ret = reg("set_value", key, "v", INJECTION, user=wine_user)
        assert ret["changed"] is True and ret["key"] == f"{key} (user {wine_user})"
        # HKU\S-1-5-21-0-0-0-1000 is that user's loaded hive, which is what HKCU is under Wine
        assert reg("get_value", key, "v")["data"] == INJECTION
        sid_key = f"HKU\\{fleet_reg.WINE_USER_SID}\\Software\\KioskRegTest\\user"
        assert reg("get_value", sid_key, "v")["data"] == INJECTION
        assert reg("set_value", key, "v", INJECTION, user=wine_user.upper())["changed"] is False
    finally:
        reg("delete_key", key)
    with pytest.raises(SaltInvocationError, match=r"^user: no profile for 'ghost'"):
        reg("set_value", key, "v", "x", user="ghost")
    with pytest.raises(CommandExecutionError, match="^user: the default profile .* does not exist on the Wine backend"):
        reg("set_value", key, "v", "x", user="Default")
    assert reg("get_value", key, "v")["exists"] is False


def test_state_test_mode_previews_old_to_new_and_writes_nothing(salt_env, reg, key):
    test_present = salt_env["test_states"]["kiosk_reg.present"]
    reg("set_value", key, "v", 0, vtype="REG_DWORD")
    reg("set_value", key, "gone", "x")
    ret = test_present(key, vname="v", data="1", vtype="REG_DWORD")
    assert ret["result"] is None
    assert ret["changes"] == {"old": {"vtype": "REG_DWORD", "data": 0}, "new": {"vtype": "REG_DWORD", "data": 1}}
    assert "REG_DWORD 0 -> REG_DWORD 1" in ret["comment"]
    ret = salt_env["test_states"]["kiosk_reg.absent"](key, vname="gone")
    assert ret["result"] is None and ret["changes"] == {"old": {"vtype": "REG_SZ", "data": "x"}, "new": None}
    ret = salt_env["test_states"]["kiosk_reg.key_absent"](key)
    assert ret["result"] is None and set(ret["changes"]["old"]) == {"v", "gone"}
    ret = test_present(f"{key}\\new", vname="n", data=["a"], vtype="REG_MULTI_SZ")
    assert ret["result"] is None and ret["changes"]["old"] is None
    # nothing was written
    assert reg("list_values", key) == {"v": {"vtype": "REG_DWORD", "data": 0}, "gone": {"vtype": "REG_SZ", "data": "x"}}
    with pytest.raises(CommandExecutionError, match="does not exist"):
        reg("list_values", f"{key}\\new")


def test_states_apply_and_are_idempotent(salt_env, reg, key):
    states = salt_env["states"]
    ret = states["kiosk_reg.present"](key, vname="v", data="1", vtype="REG_DWORD")
    assert ret["result"] is True and ret["changes"]["new"] == {"vtype": "REG_DWORD", "data": 1}
    ret = states["kiosk_reg.present"](key, vname="v", data=1, vtype="REG_DWORD")
    assert ret["result"] is True and ret["changes"] == {} and "already" in ret["comment"]
    ret = states["kiosk_reg.absent"](key, vname="v")
    assert ret["result"] is True and ret["changes"]["old"] == {"vtype": "REG_DWORD", "data": 1}
    assert states["kiosk_reg.absent"](key, vname="v")["changes"] == {}
    assert states["kiosk_reg.key_absent"](key)["result"] is True
    assert states["kiosk_reg.key_absent"](key)["changes"] == {}
    ret = states["kiosk_reg.present"](key, vname="v", data=2**32, vtype="REG_DWORD")
    assert ret["result"] is False and ret["comment"].startswith("data: 4294967296 does not fit")


def test_a_warm_call_is_fast(reg, key):
    reg("set_value", key, "v", "x")
    started = time.monotonic()
    for i in range(5):
        reg("set_value", key, "v", f"x{i}")
    per_set = (time.monotonic() - started) / 5
    print(f"\nkiosk_reg: set_value (read + write) {per_set * 1000:.0f} ms on a warm wineserver")
    assert per_set < 3.0
