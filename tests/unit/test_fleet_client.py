"""
The kiosk's release client (fleet_client) and the release-level downloads it
shares with the Pi (fleet_fetch), without Salt: a stand-in HTTP session that
serves a dict of URLs, real Ed25519 keys, real files under tmp_path.
"""

import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import fleet_client
import fleet_fetch
import fleet_inventory
import fleet_release
import fleet_sign
from tests.support import topology as topo

NAME = "kiosk-app"
NOW = 1_800_000_000
HOME, OTHER = "http://10.0.0.1/kiosk-releases/", "http://10.0.0.2/kiosk-releases/"
REPOS = [("pi-1", HOME), ("pi-2", OTHER)]


class Response:
    def __init__(self, status, body=b""):
        self.status_code, self.content, self.headers = status, body, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def iter_content(self, size):
        for i in range(0, len(self.content), size):
            yield self.content[i:i + size]


class Session:
    """``routes``: URL -> bytes (200), an int (that status) or an exception (raised); 404 otherwise."""

    def __init__(self, routes):
        self.routes, self.asked = routes, []

    def get(self, url, headers=None, stream=False, timeout=None):
        self.asked.append(url)
        got = self.routes.get(url, 404)
        if isinstance(got, Exception):
            raise got
        return Response(got) if isinstance(got, int) else Response(200, got)


@pytest.fixture(scope="module")
def key():
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, fleet_sign.verify_keys([public])


def release(key, version, body=None):
    """``{path under a repo base: bytes}`` of a signed release with one file."""
    body = body if body is not None else f"app {version}\n".encode() * 100
    entry = {"size": len(body), "md5": hashlib.md5(body).hexdigest(), "sha256": hashlib.sha256(body).hexdigest()}
    doc = fleet_sign.sign(fleet_release.build_manifest(NAME, version, {"app.bin": entry}, ["run", "{dir}"]), key[0])
    return {f"{NAME}/{version}/app.bin": body, f"{NAME}/{version}/manifest.json": json.dumps(doc).encode()}


def index(key, versions, version, serial=NOW, campus="east"):
    doc = fleet_release.new_index(NAME)
    doc["versions"] = {v: {"size": 1, "created_at": "x", "staged_at": "x", "rollback_of": None} for v in versions}
    doc["pin"] = fleet_sign.sign_pin(NAME, campus, version, serial, key[0], signed_at=NOW)
    return json.dumps(doc).encode()


def served(base, files):
    return {base + path: body for path, body in files.items()}


def corrupt(files, version):
    body = bytearray(files[f"{NAME}/{version}/app.bin"])
    body[0] ^= 0xFF
    return {**files, f"{NAME}/{version}/app.bin": bytes(body)}


# --------------------------------------------------------------------------- reading the Pis' indexes


def test_read_indexes_tells_down_not_staged_and_refused_apart(key):
    other = (ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), None)
    repos = REPOS + [("pi-3", "http://10.0.0.3/kiosk-releases/"), ("pi-4", "http://10.0.0.4/kiosk-releases/"),
                     ("pi-5", "http://10.0.0.5/kiosk-releases/")]
    session = Session({
        HOME + f"{NAME}/index.json": index(key, ["1.0.0"], "1.0.0"),
        # pi-2: no such release (404)
        "http://10.0.0.3/kiosk-releases/kiosk-app/index.json": 503,
        "http://10.0.0.4/kiosk-releases/kiosk-app/index.json": index(other, ["1.0.0"], "1.0.0"),
        "http://10.0.0.5/kiosk-releases/kiosk-app/index.json": b"<html>",
    })
    seen = fleet_client.read_indexes(session, repos, NAME, key[1], "east")
    assert seen["not_staged"] == ["pi-2"]
    assert set(seen["down"]) == {"pi-3", "pi-5"} and "HTTP 503" in seen["down"]["pi-3"]
    assert "not JSON" in seen["down"]["pi-5"]
    assert set(seen["refused"]) == {"pi-4"} and "signature" in seen["refused"]["pi-4"]
    assert isinstance(seen["errors"]["http://10.0.0.4/kiosk-releases/"], fleet_release.SignatureError)
    assert seen["indexes"][HOME]["pin"]["version"] == "1.0.0"
    assert [seen["indexes"][b] for b in seen["indexes"] if b != HOME] == [None] * 4


def test_read_indexes_refuses_another_campus_pin(key):
    session = Session({HOME + f"{NAME}/index.json": index(key, ["1.0.0"], "1.0.0", campus="west")})
    seen = fleet_client.read_indexes(session, REPOS[:1], NAME, key[1], "east")
    assert "campus" in seen["refused"]["pi-1"] and seen["indexes"][HOME] is None


def test_my_repos_home_pi_first_and_the_kiosk_ip():
    inventory = fleet_inventory.from_pillar(topo.two_campus_inventory(wol_port=9, repo_port=8080))
    campus, repos, ip = fleet_client.my_repos(inventory, "kiosk-east-01")
    assert campus == "east" and ip == "127.0.1.11"
    assert [pi for pi, _ in repos][0] == fleet_inventory.home_pi(inventory["campuses"]["east"], "kiosk-east-01")
    with pytest.raises(fleet_inventory.InventoryError):
        fleet_client.my_repos(inventory, "kiosk-nowhere")


# --------------------------------------------------------------------------- deciding


def seen(refused=None, down=None):
    return {"indexes": {}, "down": down or {}, "not_staged": [], "refused": refused or {}, "errors": {}}


PIN = {"version": "2.0.0", "serial": NOW, "repo": HOME, "signed_at": NOW}


@pytest.mark.parametrize("pin, record, what, force, expected", [
    (None, {}, seen(), False, ("skip", "no campus pin for this release yet: nothing to do")),
    (None, {}, seen(refused={"pi-1": "bad"}), False, ("fail", "index: refused from pi-1: bad")),
    (None, {}, seen(down={"pi-1": "x", "pi-2": "y"}), False, ("fail", "repos: no campus Pi answered (pi-1: x; pi-2: y)")),
    (None, {}, seen(down={"pi-1": "x"}), False, ("skip", "no campus pin for this release yet: nothing to do")),
    ({**PIN, "version": None}, {}, seen(), False, ("skip", "campus frozen (unpinned): nothing to do")),
    (PIN, {"version": "2.0.0"}, seen(), False, ("skip", "already on 2.0.0")),
    (PIN, {"version": "2.0.0"}, seen(), True, ("install", "2.0.0")),
    (PIN, {"version": "1.0.0", "serial": NOW - 1}, seen(), False, ("install", "2.0.0")),
    (PIN, {}, seen(), False, ("install", "2.0.0")),
])
def test_decide(pin, record, what, force, expected):
    assert fleet_client.decide(pin, record, what, 2, force, now=NOW) == expected


def test_decide_never_goes_below_the_installed_serial_even_with_force():
    action, comment = fleet_client.decide(PIN, {"version": "3.0.0", "serial": NOW + 5}, seen(), 2, True, now=NOW)
    assert action == "skip" and f"serial {NOW} < {NOW + 5}" in comment


def test_installed_serial_ignores_a_serial_far_ahead_of_the_clock():
    assert fleet_client.installed_serial({"serial": NOW}, now=NOW) == NOW
    assert fleet_client.installed_serial({"serial": 10**15}, now=NOW) is None
    assert fleet_client.installed_serial({"serial": True}, now=NOW) is None
    assert fleet_client.installed_serial({}, now=NOW) is None


def test_candidates_start_with_the_pi_that_set_the_pin_and_skip_those_without_the_version():
    indexes = {HOME: {"versions": {"2.0.0": {}}}, OTHER: {"versions": {"2.0.0": {}}}, "http://x/": None}
    pin = {**PIN, "repo": OTHER}
    assert fleet_client.candidates(REPOS + [("pi-3", "http://x/")], indexes, pin, "2.0.0") == REPOS[::-1]
    assert fleet_client.candidates(REPOS, {HOME: {"versions": {}}, OTHER: indexes[OTHER]}, PIN, "2.0.0") == REPOS[1:]


# --------------------------------------------------------------------------- the record of what runs


def test_record_names_the_previous_version_and_read_installed_finds_it(tmp_path):
    root = str(tmp_path)
    os.makedirs(tmp_path / NAME)
    first = fleet_client.record(root, NAME, "1.0.0", PIN)
    assert first["version"] == "1.0.0" and first["previous"] is None and first["serial"] == NOW
    second = fleet_client.record(root, NAME, "2.0.0", PIN)
    assert second["previous"] == "1.0.0"
    assert fleet_client.record(root, NAME, "2.0.0", PIN)["previous"] == "1.0.0"  # a reinstall keeps it
    assert fleet_client.current(root, NAME) == fleet_client.read_installed(root)[NAME]


def test_a_torn_record_reads_as_none_and_is_left_out(tmp_path):
    os.makedirs(tmp_path / NAME)
    (tmp_path / NAME / "installed.json").write_text("{torn")
    (tmp_path / ".staging").mkdir()
    assert fleet_client.current(str(tmp_path), NAME) == {}
    assert fleet_client.read_installed(str(tmp_path)) == {}
    assert fleet_client.read_installed(str(tmp_path / "absent")) == {}


def test_keep_two_deletes_every_other_version(tmp_path):
    for version in ("1.0.0", "1.1.0", "2.0.0", "3.0.0"):
        os.makedirs(tmp_path / NAME / version)
    (tmp_path / NAME / "installed.json").write_text("{}")
    assert fleet_client.keep_two(str(tmp_path), NAME, "3.0.0", "1.1.0") == ["1.0.0", "2.0.0"]
    assert sorted(os.listdir(tmp_path / NAME)) == ["1.1.0", "3.0.0", "installed.json"]


# --------------------------------------------------------------------------- fetching with failover


def test_fetch_release_skips_a_down_source_without_reporting_it(key, tmp_path):
    files = release(key, "2.0.0")
    session = Session(served(OTHER, files))  # HOME answers 404 for everything
    bad = []
    got = fleet_fetch.fetch_release(session, REPOS, NAME, "2.0.0", str(tmp_path), key[1],
                                    bad_copy=lambda exc, base: bad.append((type(exc), base)))
    assert got["source"] == "pi-2" and got["fetched"] == len(files[f"{NAME}/2.0.0/app.bin"]) and bad == []
    path = fleet_fetch.materialise(str(tmp_path), got["doc"], got["raw"], got["work"])
    assert path == str(tmp_path / NAME / "2.0.0")
    assert sorted(os.listdir(path)) == ["app.bin", "manifest.json"]
    assert fleet_fetch.verify_tree(path, key[1], NAME, "2.0.0", "local copy")["version"] == "2.0.0"


def test_fetch_release_reports_a_bad_copy_by_class_and_takes_the_next(key, tmp_path):
    files = release(key, "2.0.0")
    session = Session({**served(HOME, corrupt(files, "2.0.0")), **served(OTHER, files)})
    bad = []
    got = fleet_fetch.fetch_release(session, REPOS, NAME, "2.0.0", str(tmp_path), key[1],
                                    bad_copy=lambda exc, base: bad.append((type(exc), base)))
    assert got["source"] == "pi-2" and bad == [(fleet_release.IntegrityError, HOME)]


def test_fetch_release_reports_an_unsigned_manifest_and_fails_when_no_source_delivers(key, tmp_path):
    other_key = (ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), None)
    session = Session({**served(HOME, release(other_key, "2.0.0")), OTHER + f"{NAME}/2.0.0/manifest.json": 500})
    bad = []
    with pytest.raises(fleet_release.ReleaseError, match="no source delivered an intact copy") as info:
        fleet_fetch.fetch_release(session, REPOS, NAME, "2.0.0", str(tmp_path), key[1],
                                  bad_copy=lambda exc, base: bad.append((type(exc), base)))
    assert "pi-2: source: " in str(info.value) and "HTTP 500" in str(info.value)
    assert bad == [(fleet_release.SignatureError, HOME)]
    assert not (tmp_path / NAME / "2.0.0").exists()


def test_get_bytes_says_why_a_source_is_down(key):
    import requests

    session = Session({HOME: 503, OTHER: requests.ConnectionError("refused")})
    with pytest.raises(fleet_release.SourceError, match="HTTP 503"):
        fleet_fetch.get_bytes(session, HOME, "index")
    with pytest.raises(fleet_release.SourceError, match=r"^index: "):
        fleet_fetch.get_bytes(session, OTHER, "index")
    assert fleet_fetch.get_bytes(session, "http://x/missing", "index", missing_ok=True) is None
    with pytest.raises(fleet_release.SourceError, match="HTTP 404"):
        fleet_fetch.get_bytes(session, "http://x/missing", "index")


def test_salt_sources_go_through_the_file_client_and_are_hashed(key, tmp_path):
    files = release(key, "2.0.0")
    base = "salt://kiosk_releases/"

    def get_file(url, path):
        body = files.get(url[len(base):])
        if body is None:
            return False
        with open(path, "wb") as handle:
            handle.write(body)
        return True

    got = fleet_fetch.fetch_release(None, [("master", base)], NAME, "2.0.0", str(tmp_path), key[1], get_file=get_file)
    assert got["source"] == "master" and got["fetched"] == len(files[f"{NAME}/2.0.0/app.bin"])
    bad = []
    files.update(corrupt(files, "2.0.0"))
    fleet_fetch.materialise(str(tmp_path), got["doc"], got["raw"], got["work"])
    with pytest.raises(fleet_release.ReleaseError, match="no source delivered"):
        fleet_fetch.fetch_release(None, [("master", base)], NAME, "2.0.0", str(tmp_path / "b"), key[1],
                                  get_file=get_file, bad_copy=lambda exc, b: bad.append(type(exc)))
    assert bad == [fleet_release.IntegrityError]


def test_a_kept_copy_changed_on_disk_is_deleted_and_reported(key, tmp_path):
    files = release(key, "2.0.0")
    package = tmp_path / NAME / "2.0.0"
    package.mkdir(parents=True)
    for path, body in files.items():
        (package / path.rsplit("/", 1)[1]).write_bytes(body)
    assert fleet_client.kept_copy(str(tmp_path), NAME, "2.0.0", key[1])["version"] == "2.0.0"
    (package / "app.bin").write_bytes(b"changed")
    bad = []
    assert fleet_client.kept_copy(str(tmp_path), NAME, "2.0.0", key[1], lambda exc, s: bad.append((type(exc), s))) is None
    assert bad == [(fleet_release.IntegrityError, "local")] and not package.exists()
    assert fleet_client.kept_copy(str(tmp_path), NAME, "2.0.0", key[1]) is None


# --------------------------------------------------------------------------- one update, end to end


def test_update_installs_from_the_next_pi_records_and_alerts_the_bad_copy(key, tmp_path):
    files = release(key, "2.0.0")
    idx = index(key, ["2.0.0"], "2.0.0", serial=NOW)
    session = Session({**served(HOME, corrupt(files, "2.0.0")), **served(OTHER, files),
                       HOME + f"{NAME}/index.json": idx, OTHER + f"{NAME}/index.json": idx})
    ran, alerts = [], []
    report = fleet_client.update(session, REPOS, NAME, str(tmp_path), key[1], "east",
                                 lambda argv, cwd: ran.append(argv) or {"retcode": 0, "stderr": ""},
                                 lambda hop, version, error, source: alerts.append((hop, type(error), source)))
    assert report["result"] is True and report["changed"] and report["source"] == "pi-2", report
    assert ran == [["run", str(tmp_path / NAME / "2.0.0")]]
    assert alerts == [("pi->kiosk", fleet_release.IntegrityError, HOME)]
    assert fleet_client.current(str(tmp_path), NAME)["version"] == "2.0.0"
    again = fleet_client.update(session, REPOS, NAME, str(tmp_path), key[1], "east", None, None)
    assert again == {**again, "result": True, "changed": False, "comment": "already on 2.0.0"}


def test_update_fails_on_a_failed_install_and_records_nothing(key, tmp_path):
    files = release(key, "2.0.0")
    session = Session({**served(HOME, files), HOME + f"{NAME}/index.json": index(key, ["2.0.0"], "2.0.0")})
    alerts = []
    report = fleet_client.update(session, REPOS[:1], NAME, str(tmp_path), key[1], "east",
                                 lambda argv, cwd: {"retcode": 2, "stderr": "no"},
                                 lambda hop, version, error, source: alerts.append(hop))
    assert report["result"] is False and report["error"] == "install command exited 2: no"
    assert alerts == ["install"] and fleet_client.current(str(tmp_path), NAME) == {}
    test = fleet_client.update(session, REPOS[:1], NAME, str(tmp_path), key[1], "east", None, None, test=True)
    assert test["result"] is None and test["comment"] == "would install 2.0.0 (installed: None)"


# --------------------------------------------------------------------------- local reuse and the cap


def test_kept_bases_are_the_other_kept_packages_newest_first(tmp_path):
    assert fleet_client.kept_bases(str(tmp_path), NAME, "2.0.0") == []  # nothing installed yet
    for version in ("1.0.0", "1.10.0", "1.9.0", "2.0.0"):
        os.makedirs(tmp_path / NAME / version)
        (tmp_path / NAME / version / "manifest.json").write_text("{}")
    os.makedirs(tmp_path / NAME / "3.0.0")  # a package without its manifest is no base
    (tmp_path / NAME / "installed.json").write_text("{}")
    assert fleet_client.kept_bases(str(tmp_path), NAME, "2.0.0") == [
        str(tmp_path / NAME / v) for v in ("1.10.0", "1.9.0", "1.0.0")]


def test_a_rollback_to_kept_content_downloads_no_package_bytes_and_every_network_byte_is_paced(key, tmp_path):
    good, bad = b"good build\n" * 5000, b"bad build\n" * 5000

    def run(argv, cwd):  # a stand-in install
        return {"retcode": 0, "stderr": ""}

    routes = {**served(HOME, release(key, "1.0.0", good)), **served(HOME, release(key, "1.1.0", bad)),
              **served(HOME, release(key, "1.1.1", good))}
    paced = []
    for version, serial, body in (("1.0.0", NOW, good), ("1.1.0", NOW + 1, bad)):
        routes[HOME + f"{NAME}/index.json"] = index(key, [version], version, serial=serial)
        report = fleet_client.update(Session(routes), REPOS[:1], NAME, str(tmp_path), key[1], "east", run, None,
                                     pace=paced.append)
        assert report["result"] is True and report["fetched"] == len(body), report
    assert sum(paced) == len(good) + len(bad)  # the cap saw every byte of both downloads
    # the rollback: 1.0.0's content republished as 1.1.1; 1.0.0 is the kept previous package
    routes[HOME + f"{NAME}/index.json"] = index(key, ["1.1.1"], "1.1.1", serial=NOW + 2)
    session, paced = Session(routes), []
    report = fleet_client.update(session, REPOS[:1], NAME, str(tmp_path), key[1], "east", run, None,
                                 pace=paced.append)
    assert report["result"] is True and report["version"] == "1.1.1", report
    assert report["fetched"] == 0 and report["reused"] == len(good) and sum(paced) == 0
    assert HOME + f"{NAME}/1.1.1/app.bin" not in session.asked  # only the index and the signed manifest
    assert (tmp_path / NAME / "1.1.1" / "app.bin").read_bytes() == good
