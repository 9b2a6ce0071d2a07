import pytest

import fleet_inventory
import fleet_wol
from tests.support.topology import two_campus_inventory


@pytest.fixture
def inventory():
    raw = two_campus_inventory(wol_port=40009)["kiosk_fleet"]
    raw["campuses"]["east"]["pis"]["pi-east-2"] = {"vlans": {"stairs": {"source": "127.0.2.3", "interface": "eth0.20"}}}
    return fleet_inventory.validate(raw)


def test_a_pi_sends_to_each_vlan_broadcast_of_its_own_campus_only(inventory):
    plan = fleet_wol.wake_plan(inventory, "pi-east-2", ["kiosk-east-01", "kiosk-east-02", "kiosk-west-01"])
    assert plan == {
        "campus": "east",
        "destinations": [
            {"vlan": "hall", "broadcast": "127.0.1.255", "port": 40009, "source": None, "interface": None,
             "kiosks": {"kiosk-east-01": "52:54:00:e1:00:01"}},
            {"vlan": "stairs", "broadcast": "127.0.2.255", "port": 40009, "source": "127.0.2.3",
             "interface": "eth0.20", "kiosks": {"kiosk-east-02": "52:54:00:e1:00:02"}},
        ],
    }
    with pytest.raises(fleet_wol.WolError, match="pi-nowhere"):
        fleet_wol.wake_plan(inventory, "pi-nowhere", ["kiosk-east-01"])


def test_merge_any_pi_suffices_and_unreached_kiosks_are_named():
    selection = {"east": ["k1", "k2"]}
    campus_pis = {"east": ["pi-1", "pi-2", "pi-3", "pi-4"]}
    returns = {
        "pi-2": {"kiosks": {"k1": {"to": "10.0.0.255", "port": 9, "packets": 3, "source": None}}},
        "pi-3": "ERROR: kiosk_wol.wake_kiosks: socket setup failed",
    }
    report = fleet_wol.merge_wake_returns(selection, returns, campus_pis)
    assert report["result"] is False
    assert report["unreached"] == ["k2"]
    assert report["kiosks"]["k1"]["sent_by"] == {"pi-2": {"to": "10.0.0.255", "port": 9, "packets": 3, "source": None}}
    assert report["pis_answered"] == ["pi-2"]
    assert report["pis_silent"] == ["pi-1", "pi-3", "pi-4"]
    assert "pi-3" in report["pi_errors"]
    returns["pi-4"] = {"kiosks": {"k2": {"to": "10.0.0.255", "port": 9, "packets": 3}}}
    assert fleet_wol.merge_wake_returns(selection, returns, campus_pis)["result"] is True


def test_a_pi_that_sent_zero_packets_did_not_reach_the_kiosk():
    report = fleet_wol.merge_wake_returns(
        {"east": ["k1"]}, {"pi-1": {"kiosks": {"k1": {"to": "x", "port": 9, "packets": 0}}}}, {"east": ["pi-1"]}
    )
    assert report["unreached"] == ["k1"]
