"""
A kiosk presses once per shutdown key: the pure record (``fleet_power``) and
``kiosk_power.shutdown key=...`` loaded by Salt's loader, its power button a
small script that counts presses in a file.
"""

import concurrent.futures
import json
import pathlib
import sys

import pytest
import salt.config
import salt.loader
from salt.exceptions import CommandExecutionError, SaltInvocationError

import fleet_power

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY = "east/kiosk-east-01/shutdown/2027-03-01T14:00:00Z"
# the power button: appends the kiosk id to a file; fails when told to
BUTTON = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); sys.exit(3) if (p.parent / 'jammed').exists() else None; p.open('a').write(sys.argv[2] + '\\n')"


# ---------------------------------------------------------------- pure


def test_a_key_is_pressed_once_and_remembered():
    record = fleet_power.check_record(None)
    assert fleet_power.pressed_at(record, KEY) is None
    record = fleet_power.remember(record, KEY, "2027-03-01T14:00:05Z")
    assert fleet_power.pressed_at(record, KEY) == "2027-03-01T14:00:05Z"
    assert fleet_power.pressed_at(record, KEY.replace("14:00", "15:00")) is None
    assert fleet_power.pressed_at(record, None) is None


def test_the_record_keeps_the_newest_keys_only():
    record = None
    for n in range(12):
        record = fleet_power.remember(record, f"k/{n:02d}", f"2027-03-01T14:{n:02d}:00Z", keep=5)
    assert sorted(record["keys"]) == [f"k/{n:02d}" for n in range(7, 12)]


@pytest.mark.parametrize("key", ["has space", "tab\there", "\u00e9t\u00e9", "x" * 201, 42, ["k"], "nul\0"])
def test_a_bad_key_is_refused_naming_the_field(key):
    with pytest.raises(fleet_power.PowerError, match="^key: "):
        fleet_power.check_key(key)


@pytest.mark.parametrize("record", [{"keys": []}, {"keys": {"k": 1}}, [], {"nokeys": {}}])
def test_a_damaged_record_is_refused_naming_it(record):
    with pytest.raises(fleet_power.PowerError, match=r"^pressed\.keys: "):
        fleet_power.check_record(record)


# ---------------------------------------------------------------- loader


@pytest.fixture
def kiosk(tmp_path):
    presses = tmp_path / "presses.txt"
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"),
                 "module_dirs": [str(REPO)], "id": "kiosk-east-01", "grains": {"kernel": "Linux"},
                 "kiosk_power": {"shutdown_command": [sys.executable, "-c", BUTTON, str(presses), "{id}"]}})
    utils = salt.loader.utils(opts)
    mods = salt.loader.minion_mods(opts, utils=utils)
    return mods, presses, tmp_path


def pressed(presses):
    return presses.read_text().splitlines() if presses.exists() else []


def test_the_same_key_twice_presses_once(kiosk):
    mods, presses, tmp = kiosk
    first = mods["kiosk_power.shutdown"](delay_s=0, message="bye", key=KEY)
    second = mods["kiosk_power.shutdown"](delay_s=0, message="bye", key=KEY)
    assert pressed(presses) == ["kiosk-east-01"]
    assert first["action"] == second["action"] == "shutdown"  # both count as accepted by the runner
    assert first["duplicate"] is False and second["duplicate"] is True
    assert second["pressed_at"] == first["pressed_at"]
    stored = json.loads((tmp / "cache" / "kiosk_power" / "pressed.json").read_text())
    assert list(stored["keys"]) == [KEY]
    mods["kiosk_power.shutdown"](delay_s=0, message="bye", key=KEY.replace("03-01", "03-02"))
    assert pressed(presses) == ["kiosk-east-01"] * 2


def test_two_leaders_at_once_press_once(kiosk):
    mods, presses, _ = kiosk
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: mods["kiosk_power.shutdown"](delay_s=0, message="", key=KEY), range(4)))
    assert pressed(presses) == ["kiosk-east-01"]
    assert sorted(a["duplicate"] for a in answers) == [False, True, True, True]


def test_without_a_key_every_call_presses(kiosk):
    mods, presses, _ = kiosk
    mods["kiosk_power.shutdown"](delay_s=0, message="")
    mods["kiosk_power.shutdown"](delay_s=0, message="")
    assert pressed(presses) == ["kiosk-east-01"] * 2


def test_a_failed_press_leaves_the_key_unpressed_for_the_next_try(kiosk):
    mods, presses, tmp = kiosk
    (tmp / "jammed").write_text("")
    with pytest.raises(CommandExecutionError, match="shutdown command"):
        mods["kiosk_power.shutdown"](delay_s=0, message="", key=KEY)
    (tmp / "jammed").unlink()
    again = mods["kiosk_power.shutdown"](delay_s=0, message="", key=KEY)
    assert again["duplicate"] is False and pressed(presses) == ["kiosk-east-01"]


def test_a_bad_key_presses_nothing(kiosk):
    mods, presses, _ = kiosk
    with pytest.raises(SaltInvocationError, match="^key: "):
        mods["kiosk_power.shutdown"](delay_s=0, message="", key="two words")
    assert pressed(presses) == []


def test_id_in_the_key_is_the_kiosk_own_id(kiosk):
    mods, presses, tmp = kiosk
    ret = mods["kiosk_power.shutdown"](delay_s=0, message="", key="east/{id}/shutdown/2027-03-01T14:00:00Z")
    assert ret["key"] == KEY
    assert mods["kiosk_power.shutdown"](delay_s=0, message="", key=KEY)["duplicate"] is True
    assert pressed(presses) == ["kiosk-east-01"]
