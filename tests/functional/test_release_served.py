"""
``kiosk_pkg.served`` on a Pi and ``kiosk_release:bind_source`` on kiosks,
against a real nginx running the shipped repository templates (loopback).

A kiosk loaded by Salt's loader downloads a signed release from the Pi's
nginx; with ``bind_source: True`` its connections come from its inventory
IP (127.0.1.11), so the Pi's access log, which nginx writes and no kiosk
can, tells it apart from other kiosks. ``served`` on the Pi reads that log:
the top master's rollout checks a kiosk's "installed" return against it.
"""

import json
import pathlib
import tempfile
import time

import pytest

import fleet_inventory
from tests.support import topology as topo
from tests.support.nginx import NginxRepo, free_port, nginx_binary
from tests.support.release_minion import NAME, Bus, Releases, minion

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)")

PI_ADDRESS = "127.0.1.2"  # pi-east-1 on VLAN hall
KIOSK_IP = "127.0.1.11"  # kiosk-east-01 in the inventory


@pytest.fixture(scope="module")
def setup(signing_key, tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    repo = base / "repo"
    (repo / NAME).mkdir(parents=True)
    other_path, _ = topo.make_signing_key(base / "other", name="other")
    releases = Releases(base, signing_key[0].read_bytes(), other_path.read_bytes())
    serial = int(time.time())
    for rel, body in releases.package("1.0.0").items():
        (repo / NAME / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / NAME / rel).write_bytes(body)
    (repo / NAME / "index.json").write_bytes(releases.index(["1.0.0"], releases.pin("1.0.0", serial)))
    nginx = NginxRepo([f"{PI_ADDRESS}:{free_port(PI_ADDRESS)}"], repo, base / "nginx").start()
    inventory = topo.two_campus_inventory(wol_port=9, repo_port=8080)
    pis = inventory["kiosk_fleet"]["campuses"]["east"]["pis"]
    pis["pi-east-1"]["repo_url"] = nginx.url("")
    pis["pi-east-2"]["repo_url"] = f"http://127.0.1.3:{free_port('127.0.1.3')}/kiosk-releases/"  # down
    fleet = {**inventory, "kiosk_release": {"verify_key": [signing_key[1]]}}
    yield {"nginx": nginx, "fleet": fleet, "base": base}
    nginx.stop()


def node(setup, minion_id, config):
    root = pathlib.Path(tempfile.mkdtemp(prefix="kfsv", dir="/tmp"))
    pillar = fleet_inventory.slice_for(setup["fleet"], minion_id)
    opts, mods = minion(root, minion_id, pillar, {"kiosk_release": config(root)})
    return opts, mods, Bus(opts)


def test_kiosks_download_from_their_inventory_ip_and_the_pi_log_names_them(setup):
    nginx = setup["nginx"]
    assert nginx.url("").startswith(f"http://{PI_ADDRESS}:")
    before = len(nginx.log_entries())
    _, bound, bus1 = node(setup, "kiosk-east-01", lambda root: {"dir": str(root / "rel"), "bind_source": True})
    _, plain, bus2 = node(setup, "kiosk-east-02", lambda root: {"dir": str(root / "rel")})
    _, pi, bus3 = node(setup, "pi-east-1", lambda root: {"repo_dir": str(root / "repo"),
                                                         "access_log": str(nginx.access_log)})
    try:
        for mods in (bound, plain):
            report = mods["kiosk_pkg.check_update"](NAME)["releases"][NAME]
            assert report["result"] is True and report["version"] == "1.0.0", report
        entries = nginx.wait_for_log(before + 2 * 4)[before:]  # per kiosk: index.json, manifest, app.bin, install.py
        files = [e for e in entries if e["path"].startswith(f"/kiosk-releases/{NAME}/1.0.0/")]
        assert {e["remote_addr"] for e in files} == {KIOSK_IP, "127.0.0.1"}
        served = pi["kiosk_pkg.served"](NAME, "1.0.0")
        # the files (app.bin, install.py): 200 each, per client; the manifest and index.json do not count
        assert served == {"result": True, "name": NAME, "version": "1.0.0", "pi": "pi-east-1",
                          "clients": {KIOSK_IP: [200], "127.0.0.1": [200]}}
        assert pi["kiosk_pkg.served"](NAME, "9.9.9")["clients"] == {}
    finally:
        for bus in (bus1, bus2, bus3):
            bus.close()


def test_served_needs_the_access_log_setting(setup):
    _, pi, bus = node(setup, "pi-east-2", lambda root: {"repo_dir": str(root / "repo")})
    try:
        ret = pi["kiosk_pkg.served"](NAME, "1.0.0")
        assert ret["result"] is False and ret["error"].startswith("kiosk_release:access_log: None is not")
        assert pi["kiosk_pkg.served"](NAME, "1.0.0") == ret
    finally:
        bus.close()


def test_served_reads_only_the_shipped_log_format(setup, tmp_path):
    log = tmp_path / "access.log"
    lines = [
        {"method": "GET", "uri": f"/kiosk-releases/{NAME}/1.0.0/app.bin", "remote_addr": "127.0.1.12", "status": 206},
        {"method": "GET", "uri": f"/kiosk-releases/{NAME}/1.0.0/manifest.json", "remote_addr": "127.0.1.13",
         "status": 200},
        {"method": "HEAD", "uri": f"/kiosk-releases/{NAME}/1.0.0/app.bin", "remote_addr": "127.0.1.14", "status": 200},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    _, pi, bus = node(setup, "pi-east-2", lambda root: {"repo_dir": str(root / "repo"), "access_log": str(log)})
    try:
        assert pi["kiosk_pkg.served"](NAME, "1.0.0")["clients"] == {"127.0.1.12": [206]}
        log.unlink()  # rotated away: nothing served since
        assert pi["kiosk_pkg.served"](NAME, "1.0.0")["clients"] == {}
    finally:
        bus.close()
