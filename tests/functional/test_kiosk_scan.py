"""
``kiosk_scan`` loaded by Salt's own loader (as on a Pi, with the pillar a Pi
gets: its campus's slice, ``fleet_inventory.slice_for``), probing real TCP
listeners on the test VLANs' loopback addresses with the real nmap binary,
and reading real minion-like connections to stand-in Pi masters (listeners
on the Pis' loopback addresses, connected from the kiosks' addresses) from
this host's kernel TCP table.
"""

import pathlib
import shutil
import socket
import time

import pytest
import salt.config
import salt.loader
from salt.exceptions import SaltInvocationError

import fleet_inventory
from tests.support.topology import free_tcp_port, two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("nmap") is None, reason="needs the nmap binary")


@pytest.fixture(scope="module")
def service_port():
    return free_tcp_port("127.0.1.11")


@pytest.fixture(scope="module")
def inventory(service_port):
    inv = two_campus_inventory()
    for campus in inv["kiosk_fleet"]["campuses"].values():
        campus["service_port"] = service_port
    return inv


@pytest.fixture(scope="module")
def master_port():
    """One port free on both east Pis' addresses: their stand-in masters share it, as a campus's Pis do."""
    return free_tcp_port("127.0.1.2", "127.0.1.3")


def load(tmp_path_factory, minion_id, fleet, **config):
    """The module as ``minion_id`` runs it: its pillar is its own slice of ``fleet``."""
    pillar = fleet_inventory.slice_for(fleet, minion_id)
    root = tmp_path_factory.mktemp("scanmod")
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(root), "cachedir": str(root),
                 "module_dirs": [str(REPO)], "id": minion_id, "grains": {}, "pillar": pillar, **config})
    return salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_scan"])


@pytest.fixture(scope="module")
def pi_east(tmp_path_factory, inventory, master_port):
    return load(tmp_path_factory, "pi-east-1", inventory, kiosk_scan={"master_ports": [master_port]})


class Masters:
    """Stand-in Pi masters on the east Pis' addresses, and kiosk minions' connections to them."""

    def __init__(self, port):
        self.port = port
        self.sockets = []
        self.links = {}
        self.listeners = {}
        for address in ("127.0.1.2", "127.0.1.3"):  # pi-east-1's, pi-east-2's
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(8)
            self.listeners[address] = sock

    def connect(self, kiosk_ip, master):
        client = socket.create_connection((master, self.port), timeout=5, source_address=(kiosk_ip, 0))
        accepted, _ = self.listeners[master].accept()
        self.links[kiosk_ip] = (client, accepted)

    def drop(self, kiosk_ip):
        for sock in self.links.pop(kiosk_ip):
            sock.close()

    def close(self):
        for kiosk_ip in list(self.links):
            self.drop(kiosk_ip)
        for sock in self.listeners.values():
            sock.close()


@pytest.fixture
def masters(master_port):
    stand_in = Masters(master_port)
    yield stand_in
    stand_in.close()


@pytest.fixture
def listening(service_port):
    """Open the service port on kiosk-east-01's address only (kiosk-east-02 stays closed)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.1.11", service_port))
    sock.listen(8)
    yield sock
    sock.close()


def test_open_port_is_open_and_closed_port_is_closed(pi_east, listening, service_port):
    ret = pi_east["kiosk_scan.scan"]()
    assert ret["pi"] == "pi-east-1" and ret["campus"] == "east"
    kiosks = ret["kiosks"]
    assert set(kiosks) == {"kiosk-east-01", "kiosk-east-02"}  # never the other campus's kiosks
    assert kiosks["kiosk-east-01"]["state"] == "open"
    assert kiosks["kiosk-east-01"]["ip"] == "127.0.1.11" and kiosks["kiosk-east-01"]["port"] == service_port
    assert kiosks["kiosk-east-02"]["state"] == "closed"
    assert kiosks["kiosk-east-01"]["scanned_at"].endswith("Z")


def test_closing_the_listener_turns_the_kiosk_off(pi_east, service_port):
    ret = pi_east["kiosk_scan.scan"](kiosks="kiosk-east-01")
    assert ret["kiosks"] == {"kiosk-east-01": {"ip": "127.0.1.11", "port": service_port, "state": "closed",
                                               "scanned_at": ret["kiosks"]["kiosk-east-01"]["scanned_at"],
                                               "minion": False}}


def test_the_scan_says_which_kiosk_minions_are_connected_to_this_pis_master(pi_east, listening, masters):
    masters.connect("127.0.1.11", "127.0.1.2")  # kiosk-east-01 to pi-east-1's master
    masters.connect("127.0.2.12", "127.0.1.3")  # kiosk-east-02 to pi-east-2's only (same host, same port)
    ret = pi_east["kiosk_scan.scan"]()
    assert {k: (v["state"], v["minion"]) for k, v in ret["kiosks"].items()} == {
        "kiosk-east-01": ("open", True), "kiosk-east-02": ("closed", False)}
    assert pi_east["kiosk_scan.presence"]() == {"pi": "pi-east-1", "campus": "east",
                                                "kiosks": {"kiosk-east-01": True, "kiosk-east-02": False}}
    assert pi_east["kiosk_scan.presence"](kiosks="kiosk-east-02") == {"pi": "pi-east-1", "campus": "east",
                                                                      "kiosks": {"kiosk-east-02": False}}
    masters.connect("127.0.2.12", "127.0.1.2")
    assert pi_east["kiosk_scan.presence"](kiosks=["kiosk-east-02"])["kiosks"] == {"kiosk-east-02": True}
    # the kiosk goes away: once the kernel no longer holds the connection ESTABLISHED, no presence
    masters.drop("127.0.1.11")
    deadline = time.monotonic() + 10
    while pi_east["kiosk_scan.presence"]()["kiosks"]["kiosk-east-01"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pi_east["kiosk_scan.presence"]()["kiosks"] == {"kiosk-east-01": False, "kiosk-east-02": True}


@pytest.mark.parametrize("kiosks, message", [
    ("kiosk-east-01,kiosk-west-01", "kiosks: kiosk-west-01 is not a kiosk of campus east"),
    ({"kiosk-east-01": True}, "kiosks: expected ids"),
    ("127.0.0.1; rm -rf /", "kiosks: '127.0.0.1; rm -rf /' is not a kiosk of campus east"),
])
def test_presence_answers_for_its_own_campus_only(pi_east, kiosks, message):
    with pytest.raises(SaltInvocationError) as info:
        pi_east["kiosk_scan.presence"](kiosks=kiosks)
    assert str(info.value).startswith(message)


def test_master_ports_that_are_not_ports_are_refused_naming_the_setting(pi_east, monkeypatch):
    opts = pi_east["kiosk_scan.presence"].func.__globals__["__opts__"]
    monkeypatch.setitem(opts, "kiosk_scan", {"master_ports": "4505"})
    for fun in ("kiosk_scan.presence", "kiosk_scan.scan"):
        with pytest.raises(SaltInvocationError, match="^kiosk_scan:master_ports: "):
            pi_east[fun]()


def test_a_kiosk_of_another_campus_is_unknown_to_the_pi(pi_east, inventory, listening):
    # the Pi's pillar holds its campus only: the runner sends each campus's Pis their own kiosks
    assert "west" not in str(fleet_inventory.slice_for(inventory, "pi-east-1"))
    with pytest.raises(SaltInvocationError, match="^kiosks: kiosk-west-01 is not a kiosk of the inventory$"):
        pi_east["kiosk_scan.scan"](kiosks="kiosk-east-01,kiosk-west-01")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kiosks": "kiosk-east-99"}, "kiosks"),
        ({"kiosks": "127.0.0.1; rm -rf /"}, "kiosks"),
        ({"host_timeout_s": 0}, "host_timeout_s"),
        ({"max_retries": "many"}, "max_retries"),
        ({"host_timeout_s": float("inf")}, "host_timeout_s"),
    ],
)
def test_bad_request_names_the_field(pi_east, kwargs, field):
    with pytest.raises(SaltInvocationError) as info:
        pi_east["kiosk_scan.scan"](**kwargs)
    assert str(info.value).startswith(field)


def test_nmap_command_line(pi_east, listening, monkeypatch):
    import nmap

    seen = []
    original = nmap.PortScanner.scan

    def spy(self, hosts, ports=None, arguments="", **kw):
        seen.append((hosts, ports, arguments))
        return original(self, hosts=hosts, ports=ports, arguments=arguments, **kw)

    monkeypatch.setattr(nmap.PortScanner, "scan", spy)
    pi_east["kiosk_scan.scan"]()
    (hosts, ports, arguments), = seen
    assert hosts == "127.0.1.11 127.0.2.12"
    assert arguments.split()[:3] == ["-sT", "-Pn", "-n"]
    assert "-sn" not in arguments and "--max-retries 1" in arguments and "--host-timeout 10s" in arguments


def test_the_shared_nmap_run_is_what_the_module_and_the_pi_master_use(listening, service_port, inventory):
    import fleet_scan

    validated = fleet_inventory.validate(inventory["kiosk_fleet"])
    targets = fleet_scan.scan_targets(validated, "east")
    result, elapsed = fleet_scan.run(targets, host_timeout_s=5, max_retries=1)
    assert {k: (v["ip"], v["port"], v["state"]) for k, v in result.items()} == {
        "kiosk-east-01": ("127.0.1.11", service_port, "open"),
        "kiosk-east-02": ("127.0.2.12", service_port, "closed")}
    assert elapsed >= 0 and all(v["scanned_at"].endswith("Z") for v in result.values())
    with pytest.raises(fleet_scan.ScanError, match="^targets: "):
        fleet_scan.run(["127.0.1.11"])
    with pytest.raises(fleet_scan.ScanError, match="^host_timeout_s: "):
        fleet_scan.run(targets, host_timeout_s=0)


def test_a_kiosk_cannot_scan(tmp_path_factory, inventory):
    # last in the file: Salt's loader shares the module object, the kiosk id would leak
    mods = load(tmp_path_factory, "kiosk-east-01", inventory)
    with pytest.raises(SaltInvocationError, match="^id: kiosk-east-01 is a kiosk"):
        mods["kiosk_scan.scan"]()
    with pytest.raises(SaltInvocationError, match="^id: kiosk-east-01 is a kiosk"):
        mods["kiosk_scan.presence"]()


def test_without_master_ports_the_ports_come_from_the_pi_master_config(inventory, masters, tmp_path):
    # the file kiosk_campus.reconcile reads (kiosk_campus:master_config): the ports are set in one place
    master_config = tmp_path / "master"
    master_config.write_text(f"publish_port: {masters.port}\nret_port: {masters.port - 1}\n")
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(tmp_path), "cachedir": str(tmp_path), "module_dirs": [str(REPO)],
                 "id": "pi-east-1", "grains": {}, "pillar": fleet_inventory.slice_for(inventory, "pi-east-1"),
                 "kiosk_campus": {"master_config": str(master_config)}})
    # a loader of its own: the module-wide one keeps its kiosk_scan:master_ports
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_scan"],
                                   loaded_base_name=f"kf_scan_ports_{id(opts)}")
    masters.connect("127.0.1.11", "127.0.1.2")
    assert mods["kiosk_scan.presence"]()["kiosks"] == {"kiosk-east-01": True, "kiosk-east-02": False}
    master_config.write_text("publish_port: 4505\nret_port: 4506\n")  # another master's ports: not connected
    assert mods["kiosk_scan.presence"]()["kiosks"] == {"kiosk-east-01": False, "kiosk-east-02": False}
    # a master config Salt cannot parse (Salt exits on it): the module's error names the setting,
    # the job is not killed
    master_config.write_text("publish_port: [\n")
    with pytest.raises(SaltInvocationError, match="^kiosk_campus:master_config: .* is not a readable master config"):
        mods["kiosk_scan.presence"]()
