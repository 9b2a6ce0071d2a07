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


# ---------------------------------------------------------------- presence: the kernel's TCP table

# /proc/net/tcp as an x86 Pi prints it (addresses little-endian, ports big-endian hex):
# pi-east-1's master (127.0.1.2) and pi-east-2's (127.0.2.3) share the host, ports 4505/4506
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0201007F:1199 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1
   1: 0302007F:119A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1
   2: 0201007F:1199 0B01007F:C350 01 00000000:00000000 02:000AFC7E 00000000     0        0 1003 2
   3: 0302007F:119A 0C02007F:C351 01 00000000:00000000 02:000AFC7E 00000000     0        0 1004 2
   4: 0201007F:119A 0C03007F:C352 06 00000000:00000000 03:00001770 00000000     0        0 0 3
   5: 0201007F:0016 0C02007F:C353 01 00000000:00000000 02:000AFC7E 00000000     0        0 1005 2
   6: 0B01007F:C350 0201007F:1199 01 00000000:00000000 02:000AFC7E 00000000     0        0 1006 2
   7: 0201007F:11
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when
   0: 0000000000000000FFFF00000202007F:119A 0000000000000000FFFF00000B03007F:D000 01 00000000:00000000 00:00000000
   1: 00000000000000000000000001000000:119A 00000000000000000000000001000000:D001 01 00000000:00000000 00:00000000
"""


def test_tcp_table_rows_are_local_address_port_remote_address_state():
    assert fleet_scan.parse_tcp_table(TCP, "little") == [
        ("127.0.1.2", 4505, "0.0.0.0", 10),
        ("127.0.2.3", 4506, "0.0.0.0", 10),
        ("127.0.1.2", 4505, "127.0.1.11", 1),
        ("127.0.2.3", 4506, "127.0.2.12", 1),
        ("127.0.1.2", 4506, "127.0.3.12", 6),
        ("127.0.1.2", 22, "127.0.2.12", 1),
        ("127.0.1.11", 50000, "127.0.1.2", 1),
    ]  # the header and the line cut short are skipped
    # IPv6: four host-order words; an IPv4-mapped address reads as IPv4
    assert fleet_scan.parse_tcp_table(TCP6, "little") == [("127.0.2.2", 4506, "127.0.3.11", 1),
                                                          ("::1", 4506, "::1", 1)]
    # a big-endian Pi prints the same address in network order
    assert fleet_scan.parse_tcp_table("0: 7F00010B:1199 7F000102:D000 01", "big") == [
        ("127.0.1.11", 4505, "127.0.1.2", 1)]
    with pytest.raises(fleet_scan.ScanError, match="^tcp_table: "):
        fleet_scan.parse_tcp_table(b"0: 0201007F:1199", "little")
    with pytest.raises(fleet_scan.ScanError, match="^byteorder: "):
        fleet_scan.parse_tcp_table(TCP, "middle")


def test_presence_counts_established_connections_to_this_pis_master_only(inventory):
    rows = fleet_scan.parse_tcp_table(TCP, "little") + fleet_scan.parse_tcp_table(TCP6, "little")
    ports = [4505, 4506]
    east_1 = fleet_scan.pi_addresses(inventory, "east", "pi-east-1")
    east_2 = fleet_scan.pi_addresses(inventory, "east", "pi-east-2")
    assert east_1 == {"127.0.1.2", "127.0.2.2"} and east_2 == {"127.0.1.3", "127.0.2.3"}
    # kiosk-east-02 is connected to pi-east-2's master (same host, same ports): not pi-east-1's
    assert fleet_scan.presence(inventory, "east", ["kiosk-east-01", "kiosk-east-02"], rows, ports, east_1) == {
        "kiosk-east-01": True, "kiosk-east-02": False}
    assert fleet_scan.presence(inventory, "east", None, rows, ports, east_2) == {
        "kiosk-east-01": False, "kiosk-east-02": True}
    # without the Pi's addresses every local address counts
    assert fleet_scan.presence(inventory, "east", None, rows, ports) == {"kiosk-east-01": True, "kiosk-east-02": True}
    # only the master's ports: kiosk-east-02's ssh session (port 22) is no minion
    assert fleet_scan.presence(inventory, "east", ["kiosk-east-02"], rows, [4505], east_1) == {"kiosk-east-02": False}
    # ESTABLISHED only (west-02's row is TIME_WAIT); west-01's mapped IPv6 row is on 127.0.2.2, an east Pi's address
    assert fleet_scan.presence(inventory, "west", None, rows, ports,
                               fleet_scan.pi_addresses(inventory, "west", "pi-west-1")) == {
        "kiosk-west-01": False, "kiosk-west-02": False}
    assert fleet_scan.presence(inventory, "west", None, rows, ports) == {"kiosk-west-01": True,
                                                                        "kiosk-west-02": False}


def test_presence_refuses_ids_of_other_campuses_and_bad_ports(inventory):
    with pytest.raises(fleet_scan.ScanError, match="^kiosks: kiosk-west-01 is not a kiosk of campus east$"):
        fleet_scan.presence(inventory, "east", ["kiosk-east-01", "kiosk-west-01"], [], [4505])
    with pytest.raises(fleet_scan.ScanError, match="^kiosks: expected ids"):
        fleet_scan.presence(inventory, "east", {"kiosk-east-01": 1}, [], [4505])
    with pytest.raises(fleet_scan.ScanError, match="^campus: "):
        fleet_scan.presence(inventory, "north", [], [], [4505])
    with pytest.raises(fleet_scan.ScanError, match="^ports: "):
        fleet_scan.presence(inventory, "east", [], [], [0])
    assert fleet_scan.own_kiosks(inventory, "east", "kiosk-east-02, kiosk-east-01,kiosk-east-02") == [
        "kiosk-east-01", "kiosk-east-02"]


@pytest.mark.parametrize("value, expected", [
    (None, (4505, 4506)), ([4506, 4505, 4505], (4505, 4506)), ((4600,), (4600,)),
    ("4505", None), ([], None), ([0], None), ([True], None), ([4505.5], None), ({"a": 1}, None), ([70000], None),
])
def test_master_ports_are_named_ports(value, expected):
    if expected is None:
        with pytest.raises(fleet_scan.ScanError, match="^kiosk_scan:master_ports: "):
            fleet_scan.master_ports(value)
    else:
        assert fleet_scan.master_ports(value) == expected


def test_pi_addresses_come_from_the_inventory_and_a_dns_name_means_any():
    raw = two_campus_inventory(wol_port=9)["kiosk_fleet"]
    raw["campuses"]["east"]["pis"]["pi-east-1"]["master"] = "127.0.9.2:4506"
    raw["campuses"]["east"]["pis"]["pi-east-2"]["master"] = "pi-east-2.lan"
    inv = fleet_inventory.validate(raw)
    assert fleet_scan.pi_addresses(inv, "east", "pi-east-1") == {"127.0.9.2", "127.0.1.2", "127.0.2.2"}
    assert fleet_scan.pi_addresses(inv, "east", "pi-east-2") is None
    with pytest.raises(fleet_scan.ScanError, match="^pi: pi-west-1 is not a Pi of campus east"):
        fleet_scan.pi_addresses(inv, "east", "pi-west-1")


def test_read_tcp_tables_skips_a_missing_table(tmp_path):
    (tmp_path / "tcp").write_text(TCP)
    rows = fleet_scan.read_tcp_tables([str(tmp_path / "tcp"), str(tmp_path / "tcp6")])
    assert len(rows) == 7 if fleet_scan.sys.byteorder == "little" else rows
    with pytest.raises(fleet_scan.ScanError, match="^tcp_table: .* is not readable"):
        fleet_scan.read_tcp_tables([str(tmp_path)])


@FUZZ
@given(st.text(alphabet="0123456789ABCDEFabcdef: \n.-x", max_size=400), st.sampled_from(["little", "big"]))
def test_any_table_text_reads_as_rows(text, byteorder):
    for local, port, remote, state in fleet_scan.parse_tcp_table(text, byteorder):
        assert ipaddress.ip_address(local) and ipaddress.ip_address(remote)
        assert 0 <= port <= 0xFFFF and isinstance(state, int)
