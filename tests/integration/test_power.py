"""
Wake-on-LAN from every Pi of a campus, and shutdown through the kiosk's
minion, on the real topology. UDP listeners on the VLANs' loopback broadcast
addresses stand in for the kiosks' network cards.
"""

import contextlib
import ipaddress
import json
import socket
import time

import pytest

import fleet_wol
from tests.support.topology import SILENT_TIMEOUT

pytestmark = pytest.mark.topology
# the runner's timeout where a stopped minion never answers (tests/support/topology.py)
SILENT = f"timeout={SILENT_TIMEOUT}"


@pytest.fixture
def lan(topology):
    """One UDP listener per VLAN broadcast address of the test inventory."""
    sockets = {}
    for campus in topology.inventory["kiosk_fleet"]["campuses"].values():
        for vlan in campus["vlans"].values():
            broadcast = str(ipaddress.IPv4Network(vlan["network"]).broadcast_address)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((broadcast, campus["wol_port"]))
            sock.setblocking(False)
            sockets[broadcast] = sock
    yield Lan(sockets)
    for sock in sockets.values():
        sock.close()


class Lan:
    def __init__(self, sockets):
        self.sockets = sockets

    def received(self, settle=1.0):
        """{broadcast: [(sender ip, mac)]} of every magic packet received so far."""
        time.sleep(settle)
        got = {}
        for broadcast, sock in self.sockets.items():
            while True:
                try:
                    data, sender = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                mac, _ = fleet_wol.parse_magic_packet(data)  # raises on anything but a magic packet
                got.setdefault(broadcast, []).append((sender[0], mac))
        return got


@contextlib.contextmanager
def pi_minions_down(topology, *pi_ids):
    """Stop the salt-minion of some Pis (the WoL senders); restart them after."""
    for pi_id in pi_ids:
        topology.pis[pi_id].minion.terminate()
    try:
        yield
    finally:
        for pi_id in pi_ids:
            topology.pis[pi_id].minion.start()
        topology.wait_answering(pi_ids)


def counts(packets):
    out = {}
    for sender, mac in packets:
        out[(sender, mac)] = out.get((sender, mac), 0) + 1
    return out


def test_wake_campus_sends_from_every_pi_to_each_vlan(topology, lan):
    result = topology.salt_run("kiosk_power.wake", "campus=east", "timeout=15")
    assert result.returncode == 0, result
    report = result.data
    assert report["result"] is True and report["unreached"] == []
    assert report["pis_answered"] == ["pi-east-1", "pi-east-2"]
    assert set(report["kiosks"]["kiosk-east-02"]["sent_by"]) == {"pi-east-1", "pi-east-2"}
    got = lan.received()
    # once per Pi per repeat (3), from each Pi's own address on that VLAN
    assert counts(got["127.0.1.255"]) == {("127.0.1.2", "52:54:00:e1:00:01"): 3, ("127.0.1.3", "52:54:00:e1:00:01"): 3}
    assert counts(got["127.0.2.255"]) == {("127.0.2.2", "52:54:00:e1:00:02"): 3, ("127.0.2.3", "52:54:00:e1:00:02"): 3}
    assert "127.0.3.255" not in got  # west was not asked


def test_wake_by_kiosk_id_reaches_only_that_kiosk(topology, lan):
    result = topology.salt_run("kiosk_power.wake", "kiosks=kiosk-west-02", "repeat=2", "timeout=15")
    assert result.returncode == 0, result
    assert counts(lan.received()["127.0.3.255"]) == {
        ("127.0.3.2", "52:54:00:a1:00:02"): 2,
        ("127.0.3.3", "52:54:00:a1:00:02"): 2,
    }


def test_one_pi_alive_suffices_and_none_alive_fails_naming_the_kiosks(topology, lan):
    with pi_minions_down(topology, "pi-west-1"):
        result = topology.salt_run("kiosk_power.wake", "campus=west", SILENT)
        assert result.returncode == 0, result
        assert result.data["pis_answered"] == ["pi-west-2"]
        assert result.data["pis_silent"] == ["pi-west-1"]
        senders = {sender for sender, _ in lan.received()["127.0.3.255"]}
        assert senders == {"127.0.3.3"}
        with pi_minions_down(topology, "pi-west-2"):
            result = topology.salt_run("kiosk_power.wake", "campus=west", SILENT)
            assert result.returncode == 1
            assert result.data["unreached"] == ["kiosk-west-01", "kiosk-west-02"]
            assert "kiosk-west-01, kiosk-west-02" in result.data["error"]
            assert lan.received(settle=0.5) == {}


def test_bad_mac_is_refused_and_nothing_is_sent(topology, lan):
    result = topology.salt("kiosk_wol.wake", "52:54:00:e1:00:01,52:54:00:zz:00:02", "broadcast=127.0.1.255",
                           f"port={topology.inventory['kiosk_fleet']['campuses']['east']['wol_port']}",
                           tgt="pi-east-1")
    # (saltfactories unwraps the answer of a single-minion target)
    assert "'52:54:00:zz:00:02'" in str(result.data) and "macs[1]" in str(result.data)
    assert lan.received() == {}


def test_wake_on_the_pi_by_mac_any_notation(topology, lan):
    port = topology.inventory["kiosk_fleet"]["campuses"]["east"]["wol_port"]
    result = topology.salt("kiosk_wol.wake", "5254.00e1.0002", "broadcast=127.0.2.255", f"port={port}",
                           "repeat=1", "source=127.0.2.2", tgt="pi-east-1")
    assert result.data == [
        {"mac": "52:54:00:e1:00:02", "to": "127.0.2.255", "port": port, "source": "127.0.2.2", "packets": 1}
    ]
    assert lan.received() == {"127.0.2.255": [("127.0.2.2", "52:54:00:e1:00:02")]}


def test_shutdown_runs_the_kiosks_power_command_with_the_message_intact(topology):
    record = topology.power_dir / "kiosk-west-01.json"
    record.unlink(missing_ok=True)
    message = 'Closing "tonight" & see you at 07:00 | 100% ^'
    result = topology.salt_run("kiosk_power.shutdown", "kiosks=kiosk-west-01", "delay_s=90", f"message={message}")
    assert result.returncode == 0, result
    assert result.data["accepted"] == ["kiosk-west-01"]
    assert json.loads(record.read_text()) == ["shutdown", "90", message]


def test_shutdown_of_an_unknown_kiosk_fails(topology):
    result = topology.salt_run("kiosk_power.shutdown", "kiosks=kiosk-west-01,kiosk-west-99")
    assert result.returncode == 1
    assert "kiosk-west-99" in result.data["error"]


def test_status_reports_boot_time_and_uptime(topology):
    result = topology.salt("kiosk_power.status", tgt="kiosk-east-01")
    status = result.data
    assert status["id"] == "kiosk-east-01" and status["uptime_s"] > 0
    assert status["boot_time"].endswith("Z")
