"""
A LAN spoofer against the signed release path, with the pack loaded by
Salt's own loader (as on a kiosk and on a Pi) and a real minion event bus.

Stand-ins, loopback only: two HTTP servers on 127.0.1.2 and 127.0.1.3 answer
for campus east's Pis (the inventory's ``repo_url``), as a host that ARP-spoofs
the Pis' addresses would; a third on 127.0.1.9 answers for the master's
export. They serve whatever a test puts in them: unsigned manifests whose
install command would create a marker file, manifests and pins signed by
another key, a correctly signed old manifest under a forged pin with serial
10**15. Keys are real Ed25519 keys: the session's release signing key
(``signing_key`` fixture, the one the topology's master signs with) and a
second one made here. The minion's event bus is Salt's own IPC publisher
(``salt.transport.ipc_publish_server("minion")``, as a salt-minion runs it);
the test subscribes to it like any listener does.

What must hold: the kiosk installs nothing, the marker never appears, it
keeps its version and its files, nothing new goes live, and a
``kiosk/release/alert`` names the hop (``pi->kiosk``; ``master->pi`` on the
Pi); a properly signed release still installs.
"""

import copy
import hashlib
import http.server
import json
import os
import pathlib
import sys
import tempfile
import threading
import time

import pytest
import salt.loader

import fleet_inventory
import fleet_release
import fleet_sign
import fleet_state
from tests.support import topology as topo
from tests.support.release_minion import NAME, Bus, Releases, minion

KIOSK = "kiosk-east-01"
PI = "pi-east-1"
PI_HOSTS = {"pi-east-1": "127.0.1.2", "pi-east-2": "127.0.1.3"}
MASTER_HOST = "127.0.1.9"


# --------------------------------------------------------------------------- the spoofer


class Spoofer(http.server.ThreadingHTTPServer):
    """Answers GETs from ``routes`` (URL path -> bytes), 404 otherwise; records every path asked."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, host):
        super().__init__((host, 0), Handler)
        self.routes = {}
        self.asked = []

    @property
    def base(self):
        return f"http://{self.server_address[0]}:{self.server_address[1]}{fleet_release.REPO_PREFIX}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.asked.append(self.path)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(host):
    server = Spoofer(host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def servers():
    started = {pi: serve(host) for pi, host in PI_HOSTS.items()}
    started["master"] = serve(MASTER_HOST)
    yield started
    for server in started.values():
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- releases as the master makes them


def put(server, files, index=None):
    """Serve ``files`` (and ``index``) for NAME on ``server``, replacing what it served."""
    server.routes = {f"{fleet_release.REPO_PREFIX}{NAME}/{path}": body for path, body in files.items()}
    if index is not None:
        server.routes[f"{fleet_release.REPO_PREFIX}{NAME}/{fleet_release.INDEX}"] = index
    server.asked.clear()


@pytest.fixture(scope="module")
def releases(signing_key, tmp_path_factory):
    path, _public = signing_key
    other_path, other_public = topo.make_signing_key(tmp_path_factory.mktemp("other-key"), name="other")
    return Releases(tmp_path_factory.mktemp("releases"), path.read_bytes(), other_path.read_bytes())


# --------------------------------------------------------------------------- the minion: loader + event bus


def fleet(servers):
    inventory = topo.two_campus_inventory(wol_port=9, repo_port=8080)
    for pi, server in servers.items():
        if pi in PI_HOSTS:
            inventory["kiosk_fleet"]["campuses"]["east"]["pis"][pi]["repo_url"] = server.base
    return inventory


class Kiosk:
    def __init__(self, root, servers, verify_keys):
        self.dir = pathlib.Path(root) / "releases"
        pillar = fleet_inventory.slice_for({**fleet(servers), "kiosk_release": {"verify_key": verify_keys}}, KIOSK)
        self.opts, self.mods = minion(root, KIOSK, pillar, {"kiosk_release": {"dir": str(self.dir)}})
        self.bus = Bus(self.opts)

    def check(self, **kwargs):
        return self.mods["kiosk_pkg.check_update"](NAME, **kwargs)["releases"][NAME]

    def installed(self):
        path = self.dir / NAME / "installed.json"
        return json.loads(path.read_text()) if path.exists() else None

    def install_log(self):
        path = self.dir / NAME / "install.log"
        return path.read_text().split() if path.exists() else []

    def tree(self):
        """Every file under the kiosk's release dir with its content hash: 'nothing went live' is 'nothing changed'."""
        out = {}
        for path in sorted(self.dir.rglob("*")):
            if path.is_file() and not path.name.endswith(".lock"):
                out[str(path.relative_to(self.dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out


@pytest.fixture(scope="module")
def kiosk(servers, signing_key):
    root = tempfile.mkdtemp(prefix="kfsp", dir="/tmp")  # unix socket paths stay short
    node = Kiosk(root, servers, [signing_key[1]])
    yield node
    node.bus.close()


@pytest.fixture(scope="module")
def baseline(kiosk, servers, releases):
    """The kiosk runs a genuine 1.0.0 (pin serial = now), installed through both honest Pis."""
    serial = int(time.time())
    files = releases.package("1.0.0")
    for pi in PI_HOSTS:
        put(servers[pi], files, releases.index(["1.0.0"], releases.pin("1.0.0", serial)))
    report = kiosk.check()
    assert report["result"] is True and report["version"] == "1.0.0", report
    assert kiosk.install_log() == ["1.0.0"]
    assert kiosk.bus.drain("kiosk/release/alert", first=0) == []
    return {"serial": serial}


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    return path, [sys.executable, "-c", f"open({str(path)!r}, 'w').write('code from the LAN ran')"]


def spoof_all(servers, files, index):
    """The spoofer answers for every Pi of the campus (it ARP-spoofs both addresses)."""
    for pi in PI_HOSTS:
        put(servers[pi], files, index)


def assert_refused(kiosk, before, report, marker_path, alerts, why):
    assert report["result"] is False, report
    assert why in report["error"], report["error"]
    assert not marker_path.exists()
    assert kiosk.installed()["version"] == "1.0.0"
    assert kiosk.install_log() == ["1.0.0"]
    assert kiosk.tree() == before  # no new version directory, no .part file, no changed record
    assert alerts and all(a["hop"] == "pi->kiosk" and a["campus"] == "east" for a in alerts), alerts


# --------------------------------------------------------------------------- the kiosk


def test_a_an_unsigned_manifest_under_an_unsigned_pin_is_refused(kiosk, baseline, servers, releases, marker):
    """The attack of the old pack: an index pinning a new version with serial 10**15 and an unsigned manifest."""
    path, argv = marker
    before = kiosk.tree()
    files = releases.package("6.6.6", install=argv, sign=False)
    spoof_all(servers, files, releases.index(["6.6.6"], {"version": "6.6.6", "serial": 10**15}))
    report = kiosk.check()
    alerts = kiosk.bus.drain("kiosk/release/alert")
    assert_refused(kiosk, before, report, path, alerts, "pin.signature: missing")
    assert {a["source"] for a in alerts} == {servers[pi].base for pi in PI_HOSTS}  # each spoofed Pi named
    assert set(report["refused"]) == set(PI_HOSTS)
    # the kiosk never even asked for the manifest: nothing of the release is fetched under a bad pin
    assert not any(p.endswith("manifest.json") for s in servers.values() for p in s.asked)


def test_a_an_unsigned_manifest_under_a_genuine_pin_is_refused(kiosk, baseline, servers, releases, marker):
    """A replayed, genuinely signed pin to 2.0.0, but the manifest served for 2.0.0 is unsigned and runs the marker."""
    path, argv = marker
    before = kiosk.tree()
    files = releases.package("2.0.0", install=argv, sign=False)
    spoof_all(servers, files, releases.index(["2.0.0"], releases.pin("2.0.0", baseline["serial"] + 1)))
    report = kiosk.check()
    alerts = kiosk.bus.drain("kiosk/release/alert")
    assert_refused(kiosk, before, report, path, alerts, "manifest.signature: missing")
    assert {a["version"] for a in alerts} == {"2.0.0"}
    # refused on the manifest: no file of the release was downloaded
    assert not any(p.endswith(("app.bin", "install.py")) for s in servers.values() for p in s.asked)


def test_b_a_manifest_signed_by_another_key_is_refused(kiosk, baseline, servers, releases, marker):
    path, argv = marker
    before = kiosk.tree()
    files = releases.package("2.0.0", install=argv, key="other")
    spoof_all(servers, files, releases.index(["2.0.0"], releases.pin("2.0.0", baseline["serial"] + 1)))
    report = kiosk.check()
    alerts = kiosk.bus.drain("kiosk/release/alert")
    assert_refused(kiosk, before, report, path, alerts, "manifest.signature: does not match")


def test_b_a_pin_signed_by_another_key_is_refused(kiosk, baseline, servers, releases, marker):
    path, argv = marker
    before = kiosk.tree()
    files = releases.package("2.0.0", install=argv, key="other")
    far = 10**15
    spoof_all(servers, files, releases.index(["2.0.0"], releases.pin("2.0.0", far, key="other", signed_at=far)))
    report = kiosk.check()
    alerts = kiosk.bus.drain("kiosk/release/alert")
    assert_refused(kiosk, before, report, path, alerts, "pin.signature: does not match")


@pytest.mark.parametrize("forgery", ["serial raised after signing", "unsigned", "signed, serial far ahead"])
def test_c_a_signed_old_manifest_under_a_forged_pin_is_refused(kiosk, baseline, servers, releases, marker, forgery):
    """A genuinely signed old build (0.9.0) pinned with serial 10**15: followed, it froze kiosks on the old build."""
    path, _argv = marker
    before = kiosk.tree()
    files = releases.package("0.9.0")  # correctly signed by the master, long ago
    genuine = releases.pin("0.9.0", baseline["serial"] - 3600)
    if forgery == "serial raised after signing":
        pin, why = dict(genuine, serial=10**15), "pin.signature: does not match"
    elif forgery == "unsigned":
        pin, why = {"version": "0.9.0", "serial": 10**15}, "pin.signature: missing"
    else:  # a master bug or a stolen key used carelessly: still never more than a day ahead
        pin, why = releases.pin("0.9.0", 10**15, signed_at=int(time.time())), "pin.serial: 1000000000000000 is more than"
    spoof_all(servers, files, releases.index(["0.9.0"], pin))
    report = kiosk.check()
    alerts = kiosk.bus.drain("kiosk/release/alert")
    assert_refused(kiosk, before, report, path, alerts, why)
    assert "0.9.0" not in os.listdir(kiosk.dir / NAME)


def test_an_index_that_is_no_index_is_refused_and_named(kiosk, baseline, servers, releases):
    before = kiosk.tree()
    bogus = json.dumps({"format": 1, "name": NAME, "versions": {"../../x": {}}, "pin": None}).encode()
    spoof_all(servers, {}, bogus)
    report = kiosk.check()
    alerts = kiosk.bus.drain("kiosk/release/alert")
    assert report["result"] is False and "index.versions: '../../x' is not a version" in report["error"], report
    assert kiosk.tree() == before and {a["hop"] for a in alerts} == {"pi->kiosk"}


def test_c_a_replayed_older_signed_pin_is_not_followed(kiosk, baseline, servers, releases):
    """A genuine pin of an older serial (an old index replayed): signed, so no alarm, but never followed back."""
    before = kiosk.tree()
    spoof_all(servers, releases.package("0.9.0"), releases.index(["0.9.0"], releases.pin("0.9.0", baseline["serial"] - 1)))
    report = kiosk.check(force=True)  # not even force goes below the installed serial
    assert report["result"] is True and report["changed"] is False, report
    assert "keeping 1.0.0" in report["comment"]
    assert kiosk.installed()["version"] == "1.0.0" and kiosk.tree() == before
    assert kiosk.bus.drain("kiosk/release/alert", first=0) == []


def test_a_kiosk_without_a_verify_key_in_pillar_refuses_to_work(servers, releases, baseline, tmp_path_factory):
    """No key in pillar (a key in the minion's own config does not count): nothing is fetched, an alert says why."""
    root = tempfile.mkdtemp(prefix="kfnk", dir="/tmp")
    files = releases.package("1.0.0")
    spoof_all(servers, files, releases.index(["1.0.0"], releases.pin("1.0.0", baseline["serial"])))
    node = Kiosk(root, servers, [])
    try:
        node.opts["kiosk_release"]["verify_key"] = "in the minion config: ignored"
        result = node.mods["kiosk_pkg.check_update"](NAME)
        report = result["releases"][NAME]
        assert result["result"] is False and report["result"] is False
        assert report["error"].startswith("kiosk_release:verify_key: missing from pillar")
        assert "refusing to work unsigned" in report["error"]
        assert not any(s.asked for s in servers.values())
        assert node.installed() is None
        alerts = node.bus.drain("kiosk/release/alert")
        assert [a["hop"] for a in alerts] == ["pi->kiosk"]
    finally:
        node.bus.close()


def test_a_kiosk_frozen_by_the_old_forgery_follows_the_next_signed_pin(servers, releases, signing_key, baseline):
    """Frozen before this fix: installed.json holds serial 10**15 from a forged unsigned index. A record
    serial more than a day ahead of the clock is not honoured, so the next valid signed pin is followed."""
    root = tempfile.mkdtemp(prefix="kffz", dir="/tmp")
    node = Kiosk(root, servers, [signing_key[1]])
    try:
        (node.dir / NAME / "0.9.0").mkdir(parents=True)
        fleet_state.write_json_atomic(str(node.dir / NAME / "installed.json"), {
            "version": "0.9.0", "previous": None, "serial": 10**15, "installed_at": "2026-11-30T00:00:00+00:00"})
        spoof_all(servers, releases.package("1.0.0"), releases.index(["1.0.0"], releases.pin("1.0.0", baseline["serial"])))
        report = node.check()
        assert report["result"] is True and report["version"] == "1.0.0", report
        assert node.installed()["serial"] == baseline["serial"] and node.installed()["previous"] == "0.9.0"
        # a record serial within a day of the clock still holds: an older signed pin is not followed
        spoof_all(servers, releases.package("0.9.0"), releases.index(["0.9.0"], releases.pin("0.9.0", baseline["serial"] - 5)))
        again = node.check()
        assert again["changed"] is False and "keeping 1.0.0" in again["comment"], again
    finally:
        node.bus.close()


def test_a_properly_signed_release_still_installs_and_a_spoofed_pi_is_named(kiosk, baseline, servers, releases, marker):
    """pi-east-1 (the home Pi) is spoofed; pi-east-2 is honest and carries the real pin to 2.0.0."""
    path, argv = marker
    serial = baseline["serial"] + 10
    put(servers["pi-east-1"], releases.package("2.0.0", install=argv, key="other"),
        releases.index(["2.0.0"], releases.pin("2.0.0", 10**15, key="other", signed_at=10**15)))
    put(servers["pi-east-2"], releases.package("2.0.0"), releases.index(["2.0.0"], releases.pin("2.0.0", serial)))
    report = kiosk.check()
    assert report["result"] is True and report["version"] == "2.0.0" and report["source"] == "pi-east-2", report
    assert set(report["refused"]) == {"pi-east-1"}
    assert not path.exists()
    assert kiosk.installed()["version"] == "2.0.0" and kiosk.installed()["serial"] == serial
    assert kiosk.installed()["previous"] == "1.0.0"
    assert kiosk.install_log() == ["1.0.0", "2.0.0"]
    assert (kiosk.dir / NAME / "2.0.0" / "INSTALLED").read_text() == "2.0.0"
    seen = []
    alert = kiosk.bus.wait_for("kiosk/release/alert", lambda a: a["source"] == servers["pi-east-1"].base, seen)
    assert alert["hop"] == "pi->kiosk" and "pin.signature: does not match" in alert["error"]
    installed = kiosk.bus.wait_for("kiosk/release/installed", lambda a: a["version"] == "2.0.0", [])
    assert installed["name"] == NAME
    # the grains module reports the same record, read from installed.json (kiosk_pkg has no grains.setval
    # here: the loader above was given no grains execution module, so a call to it would have failed)
    grains = salt.loader.grain_funcs(kiosk.opts)
    assert grains["kiosk_release.kiosk_release"]()["kiosk_release"][NAME] == kiosk.installed()


# --------------------------------------------------------------------------- the Pi (master->pi hop)


@pytest.fixture(scope="module")
def pi(servers, signing_key):
    root = tempfile.mkdtemp(prefix="kfpi", dir="/tmp")
    repo = pathlib.Path(root) / "repo"
    pillar = fleet_inventory.slice_for({**fleet(servers), "kiosk_release": {"verify_key": [signing_key[1]]}}, PI)
    opts, mods = minion(root, PI, pillar, {"kiosk_release": {"repo_dir": str(repo)}})
    node = type("Pi", (), {})()
    node.opts, node.mods, node.repo, node.bus = opts, mods, repo, Bus(opts)
    yield node
    node.bus.close()


def repo_tree(repo):
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_the_pi_refuses_a_spoofed_master_and_forged_pins(pi, servers, releases, marker):
    path, argv = marker
    master = servers["master"]
    serial = int(time.time())
    # a manifest signed by another key at the master's address: nothing goes live, alert master->pi
    put(master, releases.package("3.0.0", install=argv, key="other"))
    ret = pi.mods["kiosk_pkg.stage"](NAME, "3.0.0", source=master.base, pin=releases.pin("3.0.0", serial))
    assert ret["result"] is False and "manifest.signature: does not match" in ret["error"], ret
    assert not (pi.repo / NAME / "3.0.0").exists() and not (pi.repo / NAME / "index.json").exists()
    alerts = pi.bus.drain("kiosk/release/alert")
    assert alerts and {a["hop"] for a in alerts} == {"master->pi"}
    # a forged pin is refused before anything is fetched
    put(master, releases.package("3.0.0"))
    for forged, why in ((dict(releases.pin("3.0.0", serial), serial=10**15), "pin.signature: does not match"),
                        (releases.pin("3.0.0", serial, campus="west"), "pin.campus: 'west' is not this minion's campus"),
                        (releases.pin("3.0.0", serial, key="other"), "pin.signature: does not match"),
                        (releases.pin("2.0.0", serial), "pin.version: '2.0.0' is not the version being staged")):
        ret = pi.mods["kiosk_pkg.stage"](NAME, "3.0.0", source=master.base, pin=forged)
        assert ret["result"] is False and why in ret["error"], ret
        assert pi.bus.drain("kiosk/release/alert")[0]["hop"] == "master->pi"
    assert master.asked == []
    # the genuine release with its signed pin: staged, and the index holds the pin as signed
    good = releases.pin("3.0.0", serial)
    ret = pi.mods["kiosk_pkg.stage"](NAME, "3.0.0", source=master.base, pin=good)
    assert ret["result"] is True and ret["changed"] is True and ret.get("pinned") is True, ret
    index = json.loads((pi.repo / NAME / "index.json").read_text())
    assert index["pin"] == good
    status = pi.mods["kiosk_pkg.repo_status"](NAME)
    assert status["pin_verified"] is True and status["staged"] == ["3.0.0"]
    # kiosk_pkg.pin: an older serial, a forged one, a bare serial: the index keeps the good pin
    before = (pi.repo / NAME / "index.json").read_bytes()
    for bad, why in ((releases.pin(None, serial - 1), "serial: "), (copy.deepcopy(dict(good, version=None)),
                                                                    "pin.signature: does not match"),
                     ({"version": None, "serial": 10**15}, "pin.signature: missing")):
        ret = pi.mods["kiosk_pkg.pin"](NAME, bad)
        assert ret["result"] is False and why in ret["error"], (bad, ret)
    assert (pi.repo / NAME / "index.json").read_bytes() == before
    frozen = releases.pin(None, serial + 1)
    ret = pi.mods["kiosk_pkg.pin"](NAME, json.dumps(frozen))  # as the CLI passes it
    assert ret["result"] is True and ret["pin"] == frozen
    assert not path.exists()
    assert repo_tree(pi.repo) == ["kiosk-app/3.0.0/app.bin", "kiosk-app/3.0.0/install.py",
                                  "kiosk-app/3.0.0/manifest.json", "kiosk-app/index.json"]


def test_the_pi_refuses_to_work_without_a_verify_key(servers, releases, tmp_path):
    root = tempfile.mkdtemp(prefix="kfpn", dir="/tmp")
    repo = pathlib.Path(root) / "repo"
    pillar = fleet_inventory.slice_for(fleet(servers), PI)
    opts, mods = minion(root, PI, pillar, {"kiosk_release": {"repo_dir": str(repo)}})
    bus = Bus(opts)
    try:
        put(servers["master"], releases.package("3.0.0"))
        ret = mods["kiosk_pkg.stage"](NAME, "3.0.0", source=servers["master"].base)
        assert ret["result"] is False and ret["error"].startswith("kiosk_release:verify_key: missing from pillar")
        ret = mods["kiosk_pkg.pin"](NAME, releases.pin("3.0.0", int(time.time())))
        assert ret["result"] is False and "refusing to work unsigned" in ret["error"]
        assert servers["master"].asked == [] and not (repo / NAME / "3.0.0").exists()
        assert [a["hop"] for a in bus.drain("kiosk/release/alert")] == ["master->pi", "master->pi"]
    finally:
        bus.close()


def test_a_copy_staged_before_signing_is_fetched_again_signed(pi, servers, releases, signing_key):
    """An unsigned 4.0.0 left in the repository (staged by the old pack) is not kept as "already staged"."""
    old = releases.package("4.0.0", sign=False)
    for rel, body in old.items():
        (pi.repo / NAME / rel).parent.mkdir(parents=True, exist_ok=True)
        (pi.repo / NAME / rel).write_bytes(body)
    index = json.loads((pi.repo / NAME / "index.json").read_text())
    index["versions"]["4.0.0"] = {"size": 1, "created_at": "x", "staged_at": "x", "rollback_of": None}
    (pi.repo / NAME / "index.json").write_text(json.dumps(index))
    put(servers["master"], releases.package("4.0.0"))
    ret = pi.mods["kiosk_pkg.stage"](NAME, "4.0.0", source=servers["master"].base)
    assert ret["result"] is True and ret["changed"] is True, ret
    manifest = json.loads((pi.repo / NAME / "4.0.0" / "manifest.json").read_text())
    assert fleet_sign.verify(manifest, [signing_key[1]], "manifest") == manifest
    # staged again: now a no-op
    again = pi.mods["kiosk_pkg.stage"](NAME, "4.0.0", source=servers["master"].base)
    assert again["result"] is True and again["changed"] is False, again

