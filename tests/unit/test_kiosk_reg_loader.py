"""
The kiosk_reg execution module and states through Salt's loader, without
Wine: the module with a stand-in backend (what ``_opened`` mounts and
unmounts for a user's HKCU), the states with ``__salt__`` stood in (the
comments and changes of every outcome). The real registry runs in
tests/functional/test_kiosk_reg_wine.py.
"""

import contextlib
import pathlib

import pytest
import salt.config
import salt.loader
from salt.exceptions import CommandExecutionError, SaltInvocationError

import fleet_reg

REPO = pathlib.Path(__file__).resolve().parents[2]
KIOSK_SID = "S-1-5-21-1-2-3-1001"


class Backend:
    """An in-memory registry: ``{(hive, subkey): {name: (vtype, data)}}``; logs mounts."""

    def __init__(self, keys):
        self.keys = keys
        self.log = []

    def read_key(self, hive, subkey):
        return self.keys.get((hive, subkey))

    def delete_key(self, hive, subkey):
        self.log.append(("delete", hive, subkey))
        self.keys.pop((hive, subkey), None)

    @contextlib.contextmanager
    def user_root(self, user):
        if user != "kiosk":
            raise fleet_reg.RegError(f"user: no profile named {user!r}")
        self.log.append(("mount", user))
        try:
            yield KIOSK_SID
        finally:
            self.log.append(("unmount", user))


def minion(tmp_path, backend):
    opts = salt.config.minion_config(None)
    # __virtual__ only looks for the Wine programs on PATH; the backend is the stand-in
    opts.update({"cachedir": str(tmp_path / "cache"), "module_dirs": [str(REPO)],
                 "extension_modules": str(tmp_path / "ext"), "file_client": "local",
                 "kiosk_reg": {"wine": "true", "wineserver": "true", "setarch": "true"}})
    context = {"kiosk_reg.backend": backend}
    utils = salt.loader.utils(opts)
    return salt.loader.minion_mods(opts, context=context, utils=utils, whitelist=["kiosk_reg"])


def test_a_users_hkcu_is_mounted_for_the_read_and_unmounted_after(tmp_path):
    backend = Backend({("HKEY_USERS", f"{KIOSK_SID}\\Control Panel\\Desktop"): {"Wallpaper": ("REG_SZ", "a.bmp")}})
    mods = minion(tmp_path, backend)
    got = mods["kiosk_reg.get_value"]("HKCU\\Control Panel\\Desktop", "Wallpaper", user="kiosk")
    assert got == {"key": "HKCU\\Control Panel\\Desktop (user kiosk)", "name": "Wallpaper", "exists": True,
                   "vtype": "REG_SZ", "data": "a.bmp"}
    assert backend.log == [("mount", "kiosk"), ("unmount", "kiosk")]
    assert mods["kiosk_reg.list_values"]("HKCU\\Control Panel\\Desktop", user="kiosk") == {
        "Wallpaper": {"vtype": "REG_SZ", "data": "a.bmp"}}


def test_the_hive_is_unmounted_when_the_call_fails_and_an_unknown_user_is_refused(tmp_path):
    backend = Backend({})
    mods = minion(tmp_path, backend)
    with pytest.raises(CommandExecutionError, match="does not exist"):
        mods["kiosk_reg.list_values"]("HKCU\\Software\\Kiosk", user="kiosk")
    assert backend.log == [("mount", "kiosk"), ("unmount", "kiosk")]
    with pytest.raises(SaltInvocationError, match="^user: no profile named 'nobody'"):
        mods["kiosk_reg.get_value"]("HKCU\\Software\\Kiosk", "Mode", user="nobody")


def test_delete_key_of_a_user_touches_hku_only(tmp_path):
    backend = Backend({("HKEY_USERS", f"{KIOSK_SID}\\Software\\Old"): {"A": ("REG_SZ", "1")}})
    mods = minion(tmp_path, backend)
    assert mods["kiosk_reg.delete_key"]("HKCU\\Software\\Old", user="kiosk", test=True)["changed"] is True
    assert ("delete", "HKEY_USERS", f"{KIOSK_SID}\\Software\\Old") not in backend.log
    ret = mods["kiosk_reg.delete_key"]("HKCU\\Software\\Old", user="kiosk")
    assert ret == {"key": "HKCU\\Software\\Old (user kiosk)", "changed": True,
                   "old": {"A": {"vtype": "REG_SZ", "data": "1"}}, "test": False}
    assert ("delete", "HKEY_USERS", f"{KIOSK_SID}\\Software\\Old") in backend.log


# ---------------------------------------------------------------- states


def states(answers, test=False):
    """The kiosk_reg states with ``__salt__`` stood in; ``answers[fun](*args, **kwargs)``."""
    opts = salt.config.minion_config(None)
    opts["test"] = test
    opts["states_dirs"] = [str(REPO / "_states")]
    calls = []

    def stand_in(fun):
        def call(*args, **kwargs):
            calls.append((fun, args, kwargs))
            return answers[fun](*args, **kwargs)
        return call

    functions = {f"kiosk_reg.{f}": stand_in(f) for f in ("set_value", "delete_value", "delete_key")}
    loaded = salt.loader.states(opts, functions, {}, {}, whitelist=["kiosk_reg"])
    return loaded, calls


OLD = {"vtype": "REG_DWORD", "data": 0}
NEW = {"vtype": "REG_DWORD", "data": 1}
KEY = "HKLM\\SOFTWARE\\Kiosk"


@pytest.mark.parametrize(("test", "changed", "result", "comment", "changes"), [
    (False, False, True, f"{KEY} Mode is already REG_DWORD 1", {}),
    (True, True, None, f"{KEY} Mode would change: REG_DWORD 0 -> REG_DWORD 1", {"old": OLD, "new": NEW}),
    (False, True, True, f"{KEY} Mode set: REG_DWORD 0 -> REG_DWORD 1", {"old": OLD, "new": NEW}),
])
def test_present(test, changed, result, comment, changes):
    answer = {"key": KEY, "name": "Mode", "changed": changed, "old": OLD if changed else NEW, "new": NEW}
    loaded, calls = states({"set_value": lambda *a, **k: answer}, test=test)
    ret = loaded["kiosk_reg.present"](KEY, vname="Mode", data=1, vtype="REG_DWORD", user=None)
    assert ret == {"name": KEY, "result": result, "comment": comment, "changes": changes}
    assert calls == [("set_value", (KEY, "Mode", 1), {"vtype": "REG_DWORD", "user": None, "test": test})]


@pytest.mark.parametrize(("test", "changed", "result", "comment"), [
    (False, False, True, f"{KEY} LegacyMode is already absent"),
    (True, True, None, f"{KEY} LegacyMode would be deleted: REG_DWORD 0 -> (absent)"),
    (False, True, True, f"{KEY} LegacyMode deleted (was REG_DWORD 0)"),
])
def test_absent(test, changed, result, comment):
    answer = {"key": KEY, "name": "LegacyMode", "changed": changed, "old": OLD if changed else None, "new": None}
    loaded, calls = states({"delete_value": lambda *a, **k: answer}, test=test)
    ret = loaded["kiosk_reg.absent"](KEY, vname="LegacyMode")
    assert ret == {"name": KEY, "result": result, "comment": comment,
                   "changes": {"old": OLD, "new": None} if changed else {}}
    assert calls == [("delete_value", (KEY, "LegacyMode"), {"user": None, "test": test})]


@pytest.mark.parametrize(("test", "changed", "result", "comment"), [
    (False, False, True, f"{KEY} is already absent"),
    (True, True, None, f"{KEY} would be deleted with 2 value(s)"),
    (False, True, True, f"{KEY} deleted"),
])
def test_key_absent(test, changed, result, comment):
    old = {"A": NEW, "B": OLD} if changed else None
    loaded, calls = states({"delete_key": lambda *a, **k: {"key": KEY, "changed": changed, "old": old}}, test=test)
    ret = loaded["kiosk_reg.key_absent"](KEY, user="kiosk")
    assert ret == {"name": KEY, "result": result, "comment": comment,
                   "changes": {"old": old, "new": None} if changed else {}}
    assert calls == [("delete_key", (KEY,), {"user": "kiosk", "test": test})]


def test_a_module_error_fails_the_state_naming_the_state_argument():
    def refuse(*args, **kwargs):
        raise SaltInvocationError("name: 'x' is not a value name")

    loaded, _ = states({"set_value": refuse})
    ret = loaded["kiosk_reg.present"](KEY, vname="x", data=1)
    assert ret == {"name": KEY, "result": False, "changes": {}, "comment": "vname: 'x' is not a value name"}
