"""
``kiosk_pkg`` loaded by Salt's own loader on a kiosk and on a Pi, with
``event.send`` stood in by a recorder: the glue's decisions that the
utilities cannot show alone.

- A bad copy (hashes, signature) is an alert naming its source; a Pi that is
  down or lacks the files is skipped without one (told apart by the error's
  class, never by its message).
- The kiosk fails over to the next Pi of its campus; the Pi stages from the
  next source of the campus.

Two HTTP servers on 127.0.1.2 and 127.0.1.3 answer for campus east's Pis
(the inventory's ``repo_url``), loopback only; keys are real Ed25519 keys.
"""

import http.server
import pathlib
import tempfile
import threading
import time

import pytest
import salt.loader
from salt.exceptions import SaltInvocationError

import fleet_inventory
import fleet_release
from tests.support import topology as topo
from tests.support.release_minion import NAME, Releases, minion

KIOSK = "kiosk-east-01"
PI = "pi-east-1"
PI_HOSTS = {"pi-east-1": "127.0.1.2", "pi-east-2": "127.0.1.3"}


class Repo(http.server.ThreadingHTTPServer):
    """Answers GETs from ``routes`` (URL path -> bytes, or an int: that HTTP status), 404 otherwise."""

    daemon_threads = True

    def __init__(self, host):
        super().__init__((host, 0), Handler)
        self.routes = {}

    @property
    def base(self):
        return f"http://{self.server_address[0]}:{self.server_address[1]}{fleet_release.REPO_PREFIX}"

    def put(self, files, index=None):
        self.routes = {f"{fleet_release.REPO_PREFIX}{NAME}/{path}": body for path, body in files.items()}
        if index is not None:
            self.routes[f"{fleet_release.REPO_PREFIX}{NAME}/{fleet_release.INDEX}"] = index


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.server.routes.get(self.path, 404)
        status, body = (body, b"") if isinstance(body, int) else (200, body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def servers():
    started = {}
    for pi, host in PI_HOSTS.items():
        started[pi] = Repo(host)
        threading.Thread(target=started[pi].serve_forever, daemon=True).start()
    yield started
    for server in started.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def releases(signing_key, tmp_path_factory):
    other_path, _ = topo.make_signing_key(tmp_path_factory.mktemp("other-key"), name="other")
    return Releases(tmp_path_factory.mktemp("releases"), signing_key[0].read_bytes(), other_path.read_bytes())


def node(minion_id, servers, signing_key, config, settings=None):
    inventory = topo.two_campus_inventory(wol_port=9, repo_port=8080)
    for pi, server in servers.items():
        inventory["kiosk_fleet"]["campuses"]["east"]["pis"][pi]["repo_url"] = server.base
    pillar = fleet_inventory.slice_for({**inventory, "kiosk_release": {"verify_key": [signing_key[1]]}}, minion_id)
    root = pathlib.Path(tempfile.mkdtemp(prefix="kfglue", dir="/tmp"))
    conf = {**{k: str(root / v) for k, v in config.items()}, **(settings or {})}
    opts, mods = minion(root, minion_id, pillar, {"kiosk_release": conf})
    events = []
    mods["event.send"] = lambda tag, data: events.append((tag, data)) or True
    return root, mods, events


def alerts(events):
    return [data for tag, data in events if tag == "kiosk/release/alert"]


@pytest.fixture
def kiosk(servers, signing_key):
    return node(KIOSK, servers, signing_key, {"dir": "releases"})


@pytest.fixture
def pi(servers, signing_key):
    return node(PI, servers, signing_key, {"repo_dir": "repo"})


def corrupt(files, version):
    bad = dict(files)
    body = bytearray(bad[f"{version}/app.bin"])
    body[0] ^= 0xFF  # same size, other bytes: an md5 mismatch
    bad[f"{version}/app.bin"] = bytes(body)
    return bad


def publish(servers, releases, version, home_files):
    """Both Pis pin ``version`` (the same signed pin); the home Pi serves ``home_files``, the other a good copy."""
    files = releases.package(version)
    index = releases.index([version], releases.pin(version, int(time.time())))
    servers["pi-east-1"].put(home_files(files), index)
    servers["pi-east-2"].put(files, index)


def test_a_bad_copy_on_the_home_pi_is_an_alert_and_the_next_pi_delivers(kiosk, servers, releases):
    root, mods, events = kiosk
    publish(servers, releases, "1.0.0", lambda files: corrupt(files, "1.0.0"))
    report = mods["kiosk_pkg.check_update"](NAME)["releases"][NAME]
    assert report["result"] is True and report["version"] == "1.0.0" and report["source"] == "pi-east-2", report
    [alert] = alerts(events)
    assert alert["hop"] == "pi->kiosk" and alert["source"] == servers["pi-east-1"].base
    assert "app.bin: md5 mismatch" in alert["error"]
    assert (root / "releases" / NAME / "1.0.0" / "INSTALLED").read_text() == "1.0.0"


def test_a_home_pi_without_the_files_is_skipped_without_an_alert(kiosk, servers, releases):
    root, mods, events = kiosk
    publish(servers, releases, "1.1.0", lambda files: {})  # its index pins 1.1.0, its files are gone (404)
    report = mods["kiosk_pkg.check_update"](NAME)["releases"][NAME]
    assert report["result"] is True and report["source"] == "pi-east-2", report
    assert alerts(events) == []
    assert [tag for tag, _ in events] == ["kiosk/release/installed"]


def test_a_home_pi_that_answers_errors_is_down_and_the_next_pi_serves(kiosk, servers, releases):
    root, mods, events = kiosk
    publish(servers, releases, "1.2.0", lambda files: {})
    servers["pi-east-1"].routes = {f"{fleet_release.REPO_PREFIX}{NAME}/{fleet_release.INDEX}": 503}
    report = mods["kiosk_pkg.check_update"](NAME)["releases"][NAME]
    assert report["result"] is True and report["source"] == "pi-east-2", report
    assert set(report["repos_down"]) == {"pi-east-1"} and "HTTP 503" in report["repos_down"]["pi-east-1"]
    assert alerts(events) == []


def test_bad_copies_everywhere_fail_with_one_alert_per_source_and_install_nothing(kiosk, servers, releases):
    root, mods, events = kiosk
    files = corrupt(releases.package("1.3.0"), "1.3.0")
    index = releases.index(["1.3.0"], releases.pin("1.3.0", int(time.time())))
    for server in servers.values():
        server.put(files, index)
    report = mods["kiosk_pkg.check_update"](NAME)["releases"][NAME]
    assert report["result"] is False and "no source delivered an intact copy" in report["error"], report
    assert sorted(a["source"] for a in alerts(events)) == sorted(s.base for s in servers.values())
    assert mods["kiosk_pkg.installed"](NAME) is None
    assert not (root / "releases" / NAME / "1.3.0").exists()


def test_the_pi_stages_from_the_next_campus_pi_and_alerts_only_for_the_bad_copy(pi, servers, releases):
    root, mods, events = pi
    files = releases.package("2.0.0")
    servers["pi-east-2"].put(corrupt(files, "2.0.0"))
    ret = mods["kiosk_pkg.stage"](NAME, "2.0.0", source="campus", hop="pi->pi")
    assert ret["result"] is False and "md5 mismatch" in ret["error"], ret
    assert [(a["hop"], a["source"]) for a in alerts(events)] == [("pi->pi", servers["pi-east-2"].base)]
    assert mods["kiosk_pkg.repo_status"](NAME)["staged"] == []
    servers["pi-east-2"].put(files)
    events.clear()
    ret = mods["kiosk_pkg.stage"](NAME, "2.0.0", source="campus", hop="pi->pi")
    assert ret["result"] is True and ret["source"] == "pi-east-2" and ret["staged"] == ["2.0.0"], ret
    assert [tag for tag, _ in events] == ["kiosk/release/staged"]


def test_a_master_that_is_down_fails_the_stage_without_an_alert(pi, servers):
    root, mods, events = pi
    down = f"http://127.0.1.2:{servers['pi-east-1'].server_address[1]}/nothing-here/"
    ret = mods["kiosk_pkg.stage"](NAME, "3.0.0", source=down)
    assert ret["result"] is False and "HTTP 404" in ret["error"], ret
    assert alerts(events) == []


def test_the_staged_state_refuses_a_version_yaml_made_a_float_and_stages_a_string(pi, servers, releases):
    root, mods, events = pi
    # states_dirs: the repository's "states" folder holds SLS files, the state modules are in _states
    opts = {**mods.opts, "test": False, "states_dirs": [str(pathlib.Path(__file__).parents[2] / "_states")]}
    states = salt.loader.states(opts, mods, salt.loader.utils(opts), {}, whitelist=["kiosk_pkg"])
    ret = states["kiosk_pkg.staged"](NAME, 1.1, source=servers["pi-east-2"].base)
    assert ret["result"] is False and "arrived as a number" in ret["comment"], ret
    assert mods["kiosk_pkg.repo_status"](NAME)["staged"] == []
    servers["pi-east-2"].put(releases.package("1.10.0"))
    ret = states["kiosk_pkg.staged"](NAME, "1.10.0", source=servers["pi-east-2"].base)
    assert ret["result"] is True and ret["changes"] == {"staged": {"old": None, "new": "1.10.0"}}, ret


def test_the_releases_setting_may_be_one_name_and_a_bad_install_timeout_is_refused(servers, signing_key, releases):
    publish(servers, releases, "1.4.0", lambda files: files)
    # one name, not a list: never read letter by letter
    root, mods, events = node(KIOSK, servers, signing_key, {"dir": "releases"}, {"releases": NAME})
    result = mods["kiosk_pkg.check_update"]()
    assert list(result["releases"]) == [NAME] and result["releases"][NAME]["version"] == "1.4.0", result
    root, mods, events = node(KIOSK, servers, signing_key, {"dir": "releases"},
                              {"releases": [NAME], "install_timeout": "soon"})
    with pytest.raises(SaltInvocationError, match=r"^kiosk_release:install_timeout: 'soon' is not a whole number"):
        mods["kiosk_pkg.check_update"](force=True)


def test_stage_takes_a_rate_and_refuses_a_bad_one_before_any_download(pi, servers, releases):
    root, mods, events = pi
    servers["pi-east-2"].put(releases.package("5.0.0"))
    with pytest.raises(SaltInvocationError, match=r"^rate: 'fast' is not a rate"):
        mods["kiosk_pkg.stage"](NAME, "5.0.0", source=servers["pi-east-2"].base, rate="fast")
    with pytest.raises(SaltInvocationError, match=r"^rate: 0 is not above 0"):
        mods["kiosk_pkg.stage"](NAME, "5.0.0", source=servers["pi-east-2"].base, rate=0)
    assert mods["kiosk_pkg.repo_status"](NAME)["staged"] == [] and events == []
    ret = mods["kiosk_pkg.stage"](NAME, "5.0.0", source=servers["pi-east-2"].base, rate="2mbit")
    assert ret["result"] is True and ret["rate"] == 250000 and ret["fetched"] > 0, ret
    ret = mods["kiosk_pkg.stage"](NAME, "5.0.0", source=servers["pi-east-2"].base)
    assert ret["result"] is True and ret["rate"] is None and ret["changed"] is False, ret
    # salt:// goes through cp.get_file, which cannot be paced: no cap is claimed
    ret = mods["kiosk_pkg.stage"](NAME, "5.0.0", source="salt://kiosk_releases/", rate="2mbit")
    assert ret["result"] is True and ret["rate"] is None, ret


def test_prune_keeps_the_pin_its_previous_and_what_is_above(pi, servers, releases):
    root, mods, events = pi
    serial = int(time.time())
    for i, version in enumerate(("6.0.0", "6.1.0", "6.2.0", "6.3.0")):
        servers["pi-east-2"].put(releases.package(version))
        pin = releases.pin(version, serial + i) if version != "6.3.0" else None  # 6.3.0 pre-staged, not pinned
        ret = mods["kiosk_pkg.stage"](NAME, version, source=servers["pi-east-2"].base, pin=pin)
        assert ret["result"] is True, ret
    with pytest.raises(SaltInvocationError, match=r"^keep: 1 is below 2"):
        mods["kiosk_pkg.prune"](NAME, keep=1)
    with pytest.raises(SaltInvocationError, match=r"^also: expected a list of versions"):
        mods["kiosk_pkg.prune"](NAME, also="6.0.0")
    with pytest.raises(SaltInvocationError, match=r"^also\[1\]: "):
        mods["kiosk_pkg.prune"](NAME, also=["6.0.0", "six"])
    assert mods["kiosk_pkg.repo_status"](NAME)["staged"] == ["6.0.0", "6.1.0", "6.2.0", "6.3.0"]  # nothing removed
    ret = mods["kiosk_pkg.prune"](NAME)
    assert ret == {"result": True, "name": NAME, "pi": PI, "removed": ["6.0.0"], "kept": ["6.1.0", "6.2.0", "6.3.0"]}
    assert mods["kiosk_pkg.repo_status"](NAME)["staged"] == ["6.1.0", "6.2.0", "6.3.0"]
    assert not (root / "repo" / NAME / "6.0.0").exists()


def test_the_kiosk_reads_its_lan_rate_from_its_config(servers, signing_key, releases):
    publish(servers, releases, "1.5.0", lambda files: files)
    root, mods, events = node(KIOSK, servers, signing_key, {"dir": "releases"}, {"lan_rate": "1kbit"})
    with pytest.raises(SaltInvocationError, match=r"^kiosk_release:lan_rate: '1kbit' is 125 bytes/s, outside"):
        mods["kiosk_pkg.check_update"](NAME)
    assert mods["kiosk_pkg.installed"](NAME) is None
    root, mods, events = node(KIOSK, servers, signing_key, {"dir": "releases"}, {"lan_rate": "100mbit"})
    report = mods["kiosk_pkg.check_update"](NAME)["releases"][NAME]
    assert report["result"] is True and report["version"] == "1.5.0" and report["fetched"] > 0, report
