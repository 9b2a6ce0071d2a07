"""
The change templates as a kiosk runs them: ``salt-call --local state.apply``
of the multi-step ``lockdown`` template (hosts entries + the kiosk user's
desktop icons in Wine's real registry), with ``test=True`` first.
"""

import json
import pathlib
import shutil

import pytest
import yaml

from tests.support import wine
from tests.support.salt_local import salt_call

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Explorer\HideDesktopIcons\NewStartPanel"
RECYCLE_BIN = "{645FF040-5081-101B-9F08-00AA002F954E}"
# on the salt CLI a bare {GUID} is read as a YAML mapping: quote it inside
RECYCLE_BIN_ARG = f'"{RECYCLE_BIN}"'

pytestmark = pytest.mark.skipif(
    not (shutil.which("wine") and shutil.which("wineserver") and shutil.which("setarch")),
    reason="wine is not installed (apt-get install wine64 wine)",
)


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory):
    root = tmp_path_factory.mktemp("kiosk")
    pillar = root / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - changes\n")
    # the shape of a kiosk's pillar slice: its one campus, and that campus's hosts entries
    (pillar / "changes.sls").write_text(yaml.safe_dump({
        "kiosk_fleet": {"campuses": {"riverside": {}}},
        "kiosk_fleet_changes": {"hosts": {"riverside": {"his.riverside.hospital.local": "127.0.50.15"},
                                          "hillside": {"his.hillside.hospital.local": "127.0.50.16"}}},
    }))
    (root / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "minion").write_text(yaml.safe_dump({
        "id": "kiosk-riverside-01",
        "file_client": "local",
        "enable_fqdns_grains": False,  # no reverse-DNS lookups (network rule)
        "root_dir": str(root / "r"),
        "user": "root",
        "module_dirs": [str(REPO)],
        # module_dirs would pick the repo's states/ (SLS files) before _states/
        "states_dirs": [str(REPO / "_states")],
        "file_roots": {"base": [str(REPO / "states")]},
        "pillar_roots": {"base": [str(pillar)]},
        "grains": {"campus": "hillside"},  # what a tampered kiosk says of itself: ignored (pillar decides)
        "hosts.file": str(root / "hosts"),
        "kiosk_reg": {"wineprefix": str(root / "wineprefix")},
    }))
    server = wine.WineServer(root / "wineprefix").start()  # kiosk_reg's salt-calls find it running
    yield root
    server.stop()


def test_lockdown_previews_with_test_true_then_applies_both_steps(kiosk):
    code, states, err = salt_call(kiosk, "state.apply", "kiosk_fleet.changes.lockdown", "test=True")
    assert code == 0, err[-2000:]
    assert all(s["result"] is None for s in states.values()), states  # 1 host + 4 icons would change
    assert len(states) == 5
    assert "his.riverside" not in (kiosk / "hosts").read_text()
    code, value, _ = salt_call(kiosk, "kiosk_reg.get_value", KEY, RECYCLE_BIN_ARG)
    assert not (isinstance(value, dict) and value.get("data") == 1), value

    code, states, err = salt_call(kiosk, "state.apply", "kiosk_fleet.changes.lockdown")
    assert code == 0, err[-2000:]
    assert all(s["result"] is True and s["changes"] for s in states.values()), states
    assert "his.riverside.hospital.local" in (kiosk / "hosts").read_text()
    assert "hillside" not in (kiosk / "hosts").read_text()
    code, value, err = salt_call(kiosk, "kiosk_reg.get_value", KEY, RECYCLE_BIN_ARG)
    assert code == 0 and value["data"] == 1 and value["vtype"] == "REG_DWORD", (value, err[-1000:])

    code, states, err = salt_call(kiosk, "state.apply", "kiosk_fleet.changes.lockdown")
    assert code == 0 and not any(s["changes"] for s in states.values()), states  # idempotent


WINLOGON = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon"


def test_autologon_template_sets_user_and_shell_and_refuses_without_a_user(kiosk):
    params = json.dumps({"kiosk_change": {"user": "kiosk", "shell": r"C:\Kiosk\app.exe --fullscreen"}})
    code, states, err = salt_call(kiosk, "state.apply", "kiosk_fleet.changes.autologon", f"pillar={params}")
    assert code == 0, err[-2000:]
    assert len(states) == 4 and all(s["result"] is True for s in states.values()), states
    for name, data in (("AutoAdminLogon", "1"), ("DefaultUserName", "kiosk"), ("Shell", r"C:\Kiosk\app.exe --fullscreen")):
        code, value, err = salt_call(kiosk, "kiosk_reg.get_value", WINLOGON, name)
        assert code == 0 and value["data"] == data and value["vtype"] == "REG_SZ", (name, value, err[-500:])
    code, states, _ = salt_call(kiosk, "state.apply", "kiosk_fleet.changes.autologon")
    assert code != 0 and "params.user" in json.dumps(states)
