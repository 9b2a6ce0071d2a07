"""
The shipped need-to-know pillar (pillar/top.sls + the #!py pillar/kiosk_fleet.sls)
compiled by Salt itself: ``salt-call --local`` renders pillar the way a master
does, with the minion's id in ``__opts__["id"]``. The kiosk's campus grain
lies (it says west): the slice, and the hosts template, follow the id.
"""

import json
import pathlib

import pytest
import yaml

from tests.support.salt_local import salt_call
from tests.support.topology import CHANGES_PILLAR, two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
PUBLIC = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAzPZ9\n-----END PUBLIC KEY-----\n"


def minion(root, minion_id, data_path, grains):
    root.mkdir(parents=True, exist_ok=True)
    (root / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "minion").write_text(yaml.safe_dump({
        "id": minion_id,
        "file_client": "local",
        "enable_fqdns_grains": False,  # no reverse-DNS lookups (network rule)
        "root_dir": str(root / "r"),
        "user": "root",
        "module_dirs": [str(REPO)],
        "states_dirs": [str(REPO / "_states")],  # module_dirs would pick the repo's states/ first
        "file_roots": {"base": [str(REPO / "states")]},
        "pillar_roots": {"base": [str(REPO / "pillar")]},  # the shipped top.sls and slicer
        "kiosk_fleet": {"data": str(data_path)},
        "grains": grains,
        "hosts.file": str(root / "hosts"),
    }))
    return root


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    path.write_text(yaml.safe_dump({**two_campus_inventory(wol_port=9), **CHANGES_PILLAR,
                                    "kiosk_release": {"verify_key": [PUBLIC]}}))
    return path


def test_kiosk_with_a_lying_campus_grain_gets_its_own_slice_and_hosts(tmp_path, data_path):
    root = minion(tmp_path / "k", "kiosk-east-01", data_path, {"campus": "west", "kiosk_fleet_role": "pi"})
    code, pillar, err = salt_call(root, "pillar.items")
    assert code == 0, err[-2000:]
    assert list(pillar["kiosk_fleet"]["campuses"]) == ["east"]
    assert list(pillar["kiosk_fleet"]["campuses"]["east"]["kiosks"]) == ["kiosk-east-01"]
    assert pillar["kiosk_release"] == {"verify_key": [PUBLIC]}
    text = json.dumps(pillar)
    assert "west" not in text and "kiosk-east-02" not in text and "schedules" not in text
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.changes.hosts", "test=True")
    assert code == 0, err[-2000:]
    names = sorted(s["name"] for s in states.values())
    assert names == ["his.east.hospital.local", "pay.east.hospital.local"], states


def test_unknown_minion_gets_no_fleet_and_no_hosts(tmp_path, data_path):
    root = minion(tmp_path / "u", "laptop-01", data_path, {"campus": "east"})
    code, pillar, err = salt_call(root, "pillar.items")
    assert code == 0, err[-2000:]
    assert pillar == {}
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.changes.hosts", "test=True")
    assert code == 0, err[-2000:]
    [state] = states.values()
    assert state["name"] == 'no hosts entries in pillar for campus ""' and state["changes"] == {}


def test_missing_data_file_is_a_pillar_error_not_a_fallback(tmp_path):
    root = minion(tmp_path / "m", "kiosk-east-01", tmp_path / "missing.yaml", {"campus": "east"})
    code, pillar, err = salt_call(root, "pillar.items")
    # no inventory, no keys (a kiosk then refuses releases); the minion is told only that rendering failed
    assert pillar == {"_errors": ["Rendering SLS 'kiosk_fleet' failed. Please see master log for details."]}, pillar
    assert "kiosk_fleet:data: cannot read" in err  # the master's log names the setting
