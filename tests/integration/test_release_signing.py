"""
Signed releases on the topology (top master -> Pi syndics -> kiosks), with
the session's real key pair: the top master signs with
``kiosk_release:signing_key``, every Pi and kiosk gets the public key as
pillar ``kiosk_release:verify_key``.

- a rollout leaves signed pins in the Pis' indexes that verify for their
  campus, and the kiosks' ``kiosk_release`` grain (the grains module reading
  ``installed.json``) reports the install;
- a forged pin sent to a Pi (another key, another campus, a raised serial)
  is refused there and the alert reaches the webhook with ``hop: master->pi``;
- a LAN spoofer takes the Pis' addresses (their nginx stopped, a plain HTTP
  server bound to the same address and port) and serves an unsigned index
  pinning serial 10**15 and an unsigned manifest whose install command would
  create a marker file: the kiosk installs nothing, keeps its version, and
  the webhook receives an alert with ``hop: pi->kiosk`` naming the kiosk.
"""

import hashlib
import http.server
import json
import sys
import threading
import time

import pytest

import fleet_release
import fleet_sign
from tests.integration.test_release import INSTALL, NAME, SMALL, fleet  # noqa: F401 - the module's fixture
from tests.support import topology as topo
from tests.support.nginx import nginx_binary

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
]

# above every version test_release.py publishes of the same release in this session (versions only go up)
VERSION = "100.0.0"


def kiosk_alert(fleet, hop, minion, since):
    return fleet.t.webhook.wait_for(
        lambda j: j.get("kind") == "kiosk_release" and j.get("hop") == hop and j.get("minion") == minion
        and j not in since, timeout=90)


@pytest.fixture(scope="module")
def rolled_out(fleet):
    build = fleet.build(VERSION, SMALL, seed=11)
    published = fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={VERSION}", f"source={build}",
                                 f"install={INSTALL}")
    assert published.returncode == 0, published
    result = fleet.t.salt_run("kiosk_release.rollout", NAME, VERSION, "campuses=east", timeout=400)
    assert result.returncode == 0, result
    return fleet


def test_pins_on_the_pis_are_signed_for_their_campus_and_the_grain_reports_the_install(rolled_out):
    fleet = rolled_out
    keys = fleet.t.verify_keys
    for pi in ("pi-east-1", "pi-east-2"):
        status = fleet.t.salt("kiosk_pkg.repo_status", NAME, tgt=pi)
        assert status.returncode == 0 and status.data["pin_verified"] is True, status
        pin = status.data["pin"]
        assert fleet_sign.verify_pin(pin, keys, NAME, "east") == pin and pin["version"] == VERSION
        index = json.loads((fleet.pi_repo(pi) / NAME / "index.json").read_text())
        assert index["pin"] == pin  # stored exactly as the master signed it
        # the same pin names campus east: a west Pi's key check (same keys) refuses it for west
        with pytest.raises(fleet_release.SignatureError, match=r"^pin\.campus: "):
            fleet_sign.verify_pin(pin, keys, NAME, "west")
    # the grain: the grains module reads installed.json; kiosk_pkg asked the minion to refresh after installing
    deadline = time.time() + 90
    seen = {}
    while time.time() < deadline:
        got = fleet.t.salt("-L", "grains.get", f"kiosk_release:{NAME}:version", tgt="kiosk-east-01,kiosk-east-02")
        seen = got.data if isinstance(got.data, dict) else {}
        if seen == {"kiosk-east-01": VERSION, "kiosk-east-02": VERSION}:
            break
        time.sleep(2)
    assert seen == {"kiosk-east-01": VERSION, "kiosk-east-02": VERSION}
    record = json.loads((fleet.kiosk_dir("kiosk-east-01") / NAME / "installed.json").read_text())
    assert record["version"] == VERSION and isinstance(record["serial"], int)


def test_a_forged_pin_sent_to_a_pi_is_refused_there(rolled_out, tmp_path):
    fleet = rolled_out
    index_path = fleet.pi_repo("pi-east-1") / NAME / "index.json"
    before = index_path.read_bytes()
    genuine = json.loads(before)["pin"]
    other_path, _ = topo.make_signing_key(tmp_path, name="not-the-master")
    forged = {
        "another key": fleet_sign.sign_pin(NAME, "east", None, genuine["serial"] + 1, other_path.read_bytes()),
        "raised serial": dict(genuine, serial=10**15),
        "unsigned": {"version": None, "serial": 10**15},
    }
    seen = list(fleet.t.webhook.posts)
    for what, pin in forged.items():
        result = fleet.t.salt("kiosk_pkg.pin", NAME, f"pin={json.dumps(pin)}", tgt="pi-east-1")
        assert result.returncode != 0 and result.data["result"] is False, (what, result)
        assert "pin.signature" in result.data["error"], (what, result.data)
    assert index_path.read_bytes() == before
    post = kiosk_alert(fleet, "master->pi", "pi-east-1", [p.get("json") for p in seen])
    assert post is not None, fleet.t.webhook.posts
    assert "pin.signature" in post["json"]["error"]


class Spoofer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # the Pi's nginx just left the address

    def __init__(self, listen, routes):
        host, port = listen.rsplit(":", 1)
        self.routes = routes
        self.asked = []
        super().__init__((host, int(port)), SpoofHandler)


class SpoofHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.asked.append((self.client_address[0], self.path))
        body = self.server.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


def test_a_lan_spoofer_in_place_of_the_pis_installs_nothing_and_alerts(rolled_out, tmp_path):
    fleet = rolled_out
    marker = tmp_path / "PWNED"
    prefix = f"{fleet_release.REPO_PREFIX}{NAME}/"
    evil = "6.6.6"
    body = b"not the app\n"
    manifest = fleet_release.build_manifest(
        NAME, evil, {"app.bin": {"size": len(body), "md5": hashlib.md5(body).hexdigest(),
                                 "sha256": hashlib.sha256(body).hexdigest()}},
        [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('code from the LAN ran')"])
    index = fleet_release.new_index(NAME)
    index["versions"] = {evil: {"size": len(body), "created_at": "x", "staged_at": "x", "rollback_of": None}}
    index["pin"] = {"version": evil, "serial": 10**15, "pinned_at": "x"}
    routes = {f"{prefix}index.json": json.dumps(index).encode(),
              f"{prefix}{evil}/manifest.json": json.dumps(manifest).encode(), f"{prefix}{evil}/app.bin": body}
    before = fleet.installed("east")
    assert before == {"kiosk-east-01": VERSION, "kiosk-east-02": VERSION}
    seen = [p.get("json") for p in fleet.t.webhook.posts]
    spoofers = []
    for pi in ("pi-east-1", "pi-east-2"):
        fleet.pis[pi].stop()
    try:
        for pi in ("pi-east-1", "pi-east-2"):
            for listen in fleet.pis[pi].listen:
                server = Spoofer(listen, routes)
                threading.Thread(target=server.serve_forever, daemon=True).start()
                spoofers.append(server)
        result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-east-01")
        assert result.returncode != 0 and result.data["result"] is False, result
        report = result.data["releases"][NAME]
        assert report["error"].startswith("index: refused from"), report
        assert "pin.signature: missing" in report["error"]
        assert set(report["refused"]) == {"pi-east-1", "pi-east-2"}
        assert any(path.endswith("/index.json") for s in spoofers for _, path in s.asked)  # it did ask them
        assert not any(path.endswith(("manifest.json", "app.bin")) for s in spoofers for _, path in s.asked)
        assert not marker.exists()
        assert fleet.installed("east") == before
        assert not (fleet.kiosk_dir("kiosk-east-01") / NAME / evil).exists()
        post = kiosk_alert(fleet, "pi->kiosk", "kiosk-east-01", seen)
        assert post is not None, fleet.t.webhook.posts
        assert "pin.signature: missing" in post["json"]["error"]
    finally:
        for server in spoofers:
            server.shutdown()
            server.server_close()
        for pi in ("pi-east-1", "pi-east-2"):
            fleet.pis[pi].start()
    # the real Pis back: nothing to do, the kiosk is on the campus pin
    again = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-east-01")
    assert again.returncode == 0 and again.data["releases"][NAME]["comment"] == f"already on {VERSION}", again
    assert not marker.exists()
