"""
A real LAN for Wake-on-LAN: network namespaces made by this test (a bridge
in its own namespace, a Pi and two kiosks attached by veth pairs on
10.77.0.0/24). The Pi namespace runs ``kiosk_wol.wake`` through Salt's loader
and broadcasts to 10.77.0.255; every kiosk namespace receives the packets, as
every NIC on a VLAN does. Nothing touches the host's own interfaces.

Skipped where network namespaces cannot be made (not root, no iproute2).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TAG = f"kf{os.getpid() % 100000}"
LAN, PI = f"{TAG}lan", f"{TAG}pi"
KIOSKS = {f"{TAG}k1": ("10.77.0.11", "52:54:00:77:00:11"), f"{TAG}k2": ("10.77.0.12", "52:54:00:77:00:12")}
PI_ADDRESS = "10.77.0.2"

RECEIVER = textwrap.dedent(
    """
    import json, socket, sys, time
    sys.path.insert(0, sys.argv[1])
    import fleet_wol
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("", 9))  # the WoL port, inside this namespace only
    sock.settimeout(0.2)
    open(sys.argv[2], "w").write("ready")
    got, deadline = [], time.time() + float(sys.argv[3])
    while time.time() < deadline and len(got) < int(sys.argv[4]):
        try:
            data, sender = sock.recvfrom(2048)
        except socket.timeout:
            continue
        got.append([sender[0], fleet_wol.parse_magic_packet(data)[0]])
    print(json.dumps(got))
    """
)

SENDER = textwrap.dedent(
    """
    import json, sys, tempfile
    import salt.config, salt.loader
    root = tempfile.mkdtemp()
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": root, "cachedir": root,
                 "module_dirs": [sys.argv[1]], "id": "pi-netns-1"})
    opts["grains"] = {}
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_wol"])
    print(json.dumps(mods["kiosk_wol.wake"](json.loads(sys.argv[2]), broadcast="10.77.0.255", port=9,
                                            repeat=2, spacing_ms=20, source=sys.argv[3])))
    """
)


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def can_make_namespaces():
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = f"{TAG}probe"
    ok = ip("netns", "add", probe, check=False).returncode == 0
    if ok:
        ip("netns", "del", probe, check=False)
    return ok


pytestmark = pytest.mark.skipif(not can_make_namespaces(), reason="cannot create network namespaces here")


@pytest.fixture
def namespace_lan():
    made = []
    try:
        for ns in [LAN, PI, *KIOSKS]:
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", LAN, "link", "add", "br0", "type", "bridge")
        ip("-n", LAN, "link", "set", "br0", "up")
        for index, (ns, address) in enumerate([(PI, PI_ADDRESS)] + [(k, v[0]) for k, v in KIOSKS.items()]):
            # a veth pair created straight into the two namespaces: never on the host
            here, there = f"{TAG}a{index}", f"{TAG}b{index}"
            ip("link", "add", here, "netns", LAN, "type", "veth", "peer", "name", there, "netns", ns)
            ip("-n", LAN, "link", "set", here, "master", "br0")
            ip("-n", LAN, "link", "set", here, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", there)
            ip("-n", ns, "link", "set", there, "up")
        yield
    finally:
        for ns in made:
            ip("netns", "del", ns, check=False)


def test_a_pi_broadcast_reaches_every_kiosk_nic_on_the_vlan(namespace_lan, tmp_path):
    receivers = {}
    for ns in KIOSKS:
        ready = tmp_path / f"{ns}.ready"
        receivers[ns] = (
            subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER, str(REPO / "_utils"), str(ready), "30", "4"],
                stdout=subprocess.PIPE, text=True,
            ),
            ready,
        )
    deadline = time.time() + 10
    while time.time() < deadline and not all(r.exists() for _, r in receivers.values()):
        time.sleep(0.1)
    macs = [mac for _, mac in KIOSKS.values()]
    sent = subprocess.run(
        ["ip", "netns", "exec", PI, sys.executable, "-c", SENDER, str(REPO), json.dumps(macs), PI_ADDRESS],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    report = json.loads(sent.stdout.strip().splitlines()[-1])
    assert [(r["mac"], r["packets"], r["to"]) for r in report] == [(m, 2, "10.77.0.255") for m in macs]
    for ns, (proc, _) in receivers.items():
        out, _ = proc.communicate(timeout=30)
        got = sorted(tuple(x) for x in json.loads(out))
        # a broadcast reaches every NIC: each kiosk sees both MACs, twice, from the Pi
        assert got == sorted([(PI_ADDRESS, m) for m in macs] * 2), (ns, got)
