"""
The Pis' probe decisions (``fleet_scan``): nmap's options, which addresses
a Pi may scan, how nmap's answer is read. Requests come from operators
(``salt 'pi-*' kiosk_scan.scan kiosks=... host_timeout_s=...``) and answers
from nmap: fuzzed, they return or raise ``ScanError`` naming the field.
"""

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fleet_inventory
import fleet_scan
from tests.support.topology import two_campus_inventory

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def inventory():
    return fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])


INVENTORY = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
KIOSK_IPS = {spec["ip"] for c in INVENTORY["campuses"].values() for spec in c["kiosks"].values()}


def test_nmap_arguments_are_a_tcp_connect_probe_without_dns():
    args = fleet_scan.nmap_arguments()
    assert args[:3] == ["-sT", "-Pn", "-n"] and "-sn" not in args
    assert args[3:] == ["--max-retries", "1", "--host-timeout", "10s"]
    with pytest.raises(fleet_scan.ScanError, match="^host_timeout_s"):
        fleet_scan.nmap_arguments(host_timeout_s=0)
    with pytest.raises(fleet_scan.ScanError, match="^max_retries"):
        fleet_scan.nmap_arguments(max_retries=9)


def test_scan_targets_only_the_campus_kiosks(inventory):
    assert fleet_scan.scan_targets(inventory, "east") == {3389: {"127.0.1.11": "kiosk-east-01",
                                                                  "127.0.2.12": "kiosk-east-02"}}
    assert fleet_scan.scan_targets(inventory, "east", "kiosk-east-02,kiosk-west-01") == {
        3389: {"127.0.2.12": "kiosk-east-02"}}
    with pytest.raises(fleet_scan.ScanError, match="^kiosks: 10.0.0.1 is not a kiosk"):
        fleet_scan.scan_targets(inventory, "east", ["10.0.0.1"])
    with pytest.raises(fleet_scan.ScanError, match="^campus"):
        fleet_scan.scan_targets(inventory, "north")


def test_port_states_from_python_nmap():
    result = {"scan": {"127.0.1.11": {"tcp": {3389: {"state": "open"}}},
                       "127.0.1.12": {"tcp": {3389: {"state": "closed"}}}}}
    assert fleet_scan.port_states(result, 3389, ["127.0.1.11", "127.0.1.12", "127.0.1.13"]) == {
        "127.0.1.11": "open", "127.0.1.12": "closed", "127.0.1.13": "filtered"}


@pytest.mark.parametrize("kwargs, field", [
    ({"host_timeout_s": float("inf")}, "host_timeout_s"), ({"host_timeout_s": True}, "host_timeout_s"),
    ({"host_timeout_s": 1.5}, "host_timeout_s"), ({"max_retries": "many"}, "max_retries"),
    ({"max_retries": float("nan")}, "max_retries"), ({"host_timeout_s": 301}, "host_timeout_s"),
])
def test_nmap_timing_refusals_name_the_field(kwargs, field):
    with pytest.raises(fleet_scan.ScanError) as info:
        fleet_scan.nmap_arguments(**kwargs)
    assert str(info.value).startswith(field + ":")


ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    | st.sampled_from(["kiosk-east-01", "kiosk-west-01", "127.0.1.11; rm -rf /", "east", "$(id)", "\\ud800"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4),
    max_leaves=15,
)


@FUZZ
@given(ANY, ANY)
def test_any_timing_is_an_option_list_or_a_scan_error(host_timeout_s, max_retries):
    try:
        args = fleet_scan.nmap_arguments(host_timeout_s, max_retries)
    except fleet_scan.ScanError as exc:
        assert str(exc).split(":")[0] in ("host_timeout_s", "max_retries")
        return
    assert args[:3] == ["-sT", "-Pn", "-n"] and len(args) == 7


@FUZZ
@given(ANY, ANY)
def test_only_inventory_addresses_ever_reach_nmap(campus, kiosks):
    try:
        targets = fleet_scan.scan_targets(INVENTORY, campus, kiosks)
    except fleet_scan.ScanError as exc:
        assert str(exc).split(":")[0] in ("campus", "kiosks")
        return
    for port, by_ip in targets.items():
        assert 1 <= port <= 65535
        assert set(by_ip) <= KIOSK_IPS and all(ipaddress.IPv4Address(ip) for ip in by_ip)


@FUZZ
@given(ANY)
def test_any_nmap_answer_reads_as_port_states(answer):
    out = fleet_scan.port_states(answer, 3389, ["127.0.1.11"])
    assert out == {"127.0.1.11": out["127.0.1.11"]} and out["127.0.1.11"] in fleet_scan.PORT_STATES
