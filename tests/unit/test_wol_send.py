"""
``fleet_wol.send`` and ``fleet_wol.wake_kiosks``: the one UDP sender the Pi
minion's ``kiosk_wol`` and the Pi master's ``kiosk_campus`` runner share,
sending to listeners on loopback.
"""

import socket

import pytest

import fleet_inventory
import fleet_wol
from tests.support.topology import free_udp_port, two_campus_inventory


@pytest.fixture
def vlans():
    port = free_udp_port()
    socks = {}
    for vlan, address in (("hall", "127.0.1.255"), ("stairs", "127.0.2.255")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        sock.settimeout(0.3)
        socks[vlan] = sock
    yield port, socks
    for sock in socks.values():
        sock.close()


def drain(sock):
    got = []
    while True:
        try:
            data, (source, _) = sock.recvfrom(2048)
        except TimeoutError:
            return got
        got.append((source, fleet_wol.parse_magic_packet(data)[0]))


def test_wake_kiosks_sends_each_kiosk_on_its_vlan_from_the_pi_address_there(vlans):
    port, socks = vlans
    inventory = fleet_inventory.validate(two_campus_inventory(wol_port=port)["kiosk_fleet"])
    ret = fleet_wol.wake_kiosks(inventory, "pi-east-2", ["kiosk-east-01", "kiosk-east-02", "kiosk-west-01"], 2, 0)
    assert ret["pi"] == "pi-east-2" and ret["campus"] == "east"
    assert sorted(ret["kiosks"]) == ["kiosk-east-01", "kiosk-east-02"]  # another campus's kiosk: its own Pis wake it
    assert ret["kiosks"]["kiosk-east-01"] == {"mac": "52:54:00:e1:00:01", "to": "127.0.1.255", "port": port,
                                              "source": "127.0.1.3", "packets": 2}
    assert drain(socks["hall"]) == [("127.0.1.3", "52:54:00:e1:00:01")] * 2
    assert drain(socks["stairs"]) == [("127.0.2.3", "52:54:00:e1:00:02")] * 2
    # what the runners merge: every kiosk reached
    merged = fleet_wol.merge_wake_returns({"east": ["kiosk-east-01", "kiosk-east-02"]}, {"pi-east-2": ret},
                                          {"east": ["pi-east-2"]})
    assert merged["result"] is True and merged["unreached"] == []


def test_a_stand_in_sender_gets_the_packets_and_its_counts_are_reported():
    inventory = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
    seen = []

    def sender(destinations, repeat, spacing_ms):
        seen.append((destinations, repeat, spacing_ms))
        return {}  # nothing went out

    ret = fleet_wol.wake_kiosks(inventory, "pi-west-1", ["kiosk-west-01"], 3, 100, sender=sender)
    (destinations, repeat, spacing), = seen
    assert (repeat, spacing) == (3, 100)
    assert destinations[0]["packets"] == {"52:54:00:a1:00:01": fleet_wol.magic_packet("52:54:00:a1:00:01")}
    assert ret["kiosks"]["kiosk-west-01"]["packets"] == 0
    merged = fleet_wol.merge_wake_returns({"west": ["kiosk-west-01"]}, {"pi-west-1": ret}, {"west": ["pi-west-1"]})
    assert merged["unreached"] == ["kiosk-west-01"]


def test_a_socket_that_cannot_be_set_up_is_a_wol_error_naming_it():
    dest = {"broadcast": "127.0.1.255", "port": 9, "source": "192.0.2.1", "interface": None,
            "packets": {"52:54:00:00:00:01": fleet_wol.magic_packet("52:54:00:00:00:01")}}
    with pytest.raises(fleet_wol.WolError, match="^socket: "):
        fleet_wol.send([dest], 1, 0)  # 192.0.2.1 (TEST-NET) is no address of this host: bind fails, nothing sent


def test_a_pi_of_no_campus_is_refused_before_anything_is_sent():
    inventory = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
    with pytest.raises(fleet_wol.WolError, match="^pi: "):
        fleet_wol.wake_kiosks(inventory, "pi-north-1", ["kiosk-east-01"], 1, 0,
                              sender=lambda *a: pytest.fail("sent"))
