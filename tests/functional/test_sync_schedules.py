"""
``kiosk_power.sync_schedules`` loaded by Salt's runner loader (as on the top
master, the fleet data from a master-only file), fetching from a real HTTP
server on 127.0.0.1: good JSON, then HTTP 500, invalid JSON, an invalid
schedule and a dead server. The last good copy stays in force and every
failure exits non-zero. The platform's URL carries a token in its path and
its query, and the master config a bearer token: none of them appears in a
return or the stored copy.
"""

import json
import pathlib

import pytest
import salt.config
import salt.loader
import yaml

from tests.support.loopback import SchedulePlatform
from tests.support.topology import SWEEP_SCHEDULES, two_campus_inventory
from tests.support.local_client import LocalClientStandIn

REPO = pathlib.Path(__file__).resolve().parents[2]

GOOD = {"campuses": {"east": {"rules": [{"name": "hours", "weekly": {"mon-fri": ["07:00-22:00"]}}]}}}
CHANGED = {"kiosk_fleet_schedules": {"campuses": {
    "east": {"rules": [{"name": "hours", "weekly": {"mon-fri": ["06:45-22:00"]}}]},
    "west": {"kiosks": {"kiosk-west-01": [{"name": "emergency", "always": "on"}]}},
}}}


PATH_TOKEN = "p4thT0ken"
QUERY_TOKEN = "s3cret"
BEARER = "b3arerT0ken"


@pytest.fixture
def platform():
    server = SchedulePlatform(tokens=(PATH_TOKEN, QUERY_TOKEN, BEARER))
    yield server
    server.close()


def secrets_in(value):
    text = json.dumps(value, default=str)
    return [s for s in (PATH_TOKEN, QUERY_TOKEN, BEARER) if s in text]


@pytest.fixture
def runners(tmp_path):
    return load_runners(tmp_path)


def load_runners(tmp_path, **config):
    fleet = tmp_path / "fleet.yaml"  # the master-only fleet data the runners read
    fleet.write_text(yaml.safe_dump({**two_campus_inventory(wol_port=9), **SWEEP_SCHEDULES}))
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "file_roots": {"base": [str(tmp_path / "files")]},
                 "__role": "master", **config})
    return salt.loader.runner(opts, utils=salt.loader.utils(opts)), pathlib.Path(opts["cachedir"])


def call(runners, fun, **kwargs):
    """(return, exit code): salt-run exits with the returned retcode (fleet_runner.finish sets it)."""
    loaded, _ = runners
    ret = loaded[fun](**kwargs)
    return ret, ret["retcode"]


def test_good_then_500_then_invalid_json_keeps_the_last_good_copy(runners, platform):
    loaded, cachedir = runners
    copy = cachedir / "kiosk_power" / "schedules.json"
    status, _ = call(runners, "kiosk_power.status")
    assert status["schedule"] == {"source": "pillar", "key": "kiosk_fleet_schedules"}

    platform.serve(200, GOOD)
    ret, rc = call(runners, "kiosk_power.sync_schedules", url=platform.url)
    assert rc == 0 and ret["result"] is True and ret["retcode"] == 0, ret
    assert ret["changed"] is True and ret["changes"] == {"added": [], "removed": [], "changed": ["east"]}
    assert ret["url"] == platform.origin  # scheme, host and port only: path and query may hold tokens
    assert platform.requests[-1] == {"path": f"/api/{PATH_TOKEN}/schedules?token={QUERY_TOKEN}",
                                     "authorization": None}  # no configured token to a url= given by hand
    good = json.loads(copy.read_text())
    assert secrets_in(good) == [] and secrets_in(ret) == []
    assert good["schedule"]["campuses"]["east"]["rules"][0]["weekly"]["mon"] == ["07:00-22:00"]
    # the changed campus's calendar is published at once; without a signing key that fails visibly,
    # the sync itself stands (the master schedule publishes again every minute)
    assert ret["calendar"]["result"] is False
    assert ret["calendar"]["campuses"]["east"]["error"].startswith("kiosk_release.signing_key: not set")
    status, _ = call(runners, "kiosk_power.status")
    assert status["schedule"]["source"] == "synced"

    for answer, error in [
        ((500, b"internal error"), "answered HTTP 500"),
        ((200, b"{not json"), "invalid JSON"),
        ((200, {"campuses": {"east": {"rules": [{"name": "x", "always": "maybe"}]}}}), "campuses.east.rules[0]"),
        ((200, {"campuses": {"north": {}}}), "campuses.north: unknown campus"),
    ]:
        platform.serve(*answer)
        ret, rc = call(runners, "kiosk_power.sync_schedules", url=platform.url)
        assert rc == 1 and ret["result"] is False and ret["retcode"] == 1, ret
        assert error in ret["error"] and "last good copy kept" in ret["error"]
        assert secrets_in(ret) == []
        assert ret["in_force"]["source"] == "synced"
        assert json.loads(copy.read_text()) == good  # untouched

    platform.serve(200, CHANGED)
    ret, rc = call(runners, "kiosk_power.sync_schedules", url=platform.url)
    assert rc == 0 and ret["changes"] == {"added": ["west"], "removed": [], "changed": ["east"]}, ret
    ret, rc = call(runners, "kiosk_power.sync_schedules", url=platform.url)
    assert rc == 0 and ret["changed"] is False


def test_platform_down_and_bad_arguments_fail_visibly(runners, platform):
    url = platform.url
    platform.close()
    ret, rc = call(runners, "kiosk_power.sync_schedules", url=url, timeout=2)
    assert rc == 1 and "failed" in ret["error"] and ret["in_force"] == {"source": "pillar"}
    # the class and the host, never requests' text (it repeats the path and the query)
    assert ret["error"] == f"url: GET failed: ConnectionError contacting {platform.origin}; last good copy kept"
    assert secrets_in(ret) == []
    for kwargs, field in [({"url": "ftp://127.0.0.1/x"}, "url:"), ({"url": None}, "url:"),
                          ({"url": "http://127.0.0.1:1/a b"}, "url:"),
                          ({"url": "http://127.0.0.1/", "timeout": 0}, "timeout:")]:
        ret, rc = call(runners, "kiosk_power.sync_schedules", **kwargs)
        assert rc == 1 and ret["error"].startswith(field), ret
    ret, rc = call(runners, "kiosk_power.hold", kiosk="kiosk-east-09", state="on",
                   until="2099-01-01T00:00:00Z", reason="x")
    assert rc == 1 and ret["error"].startswith("kiosk:")


def test_without_url_the_platform_and_its_token_come_from_the_master_config(tmp_path, platform):
    loaded, _ = load_runners(tmp_path, kiosk_power={"platform_url": platform.url, "platform_token": BEARER})
    platform.serve(200, GOOD)
    ret = loaded["kiosk_power.sync_schedules"]()
    assert ret["result"] is True and ret["retcode"] == 0, ret
    assert platform.requests == [{"path": f"/api/{PATH_TOKEN}/schedules?token={QUERY_TOKEN}",
                                  "authorization": f"Bearer {BEARER}"}]
    assert ret["url"] == platform.origin and secrets_in(ret) == []
    platform.serve(302, b"")  # a redirect is an answer, not a hop to follow
    ret = loaded["kiosk_power.sync_schedules"]()
    assert ret["retcode"] == 1 and "answered HTTP 302" in ret["error"] and len(platform.requests) == 2
    assert secrets_in(ret) == []
    status = loaded["kiosk_power.status"]()
    assert status["schedule"]["url"] == platform.origin


def test_a_missing_or_bad_platform_config_is_named(tmp_path):
    ret = load_runners(tmp_path)[0]["kiosk_power.sync_schedules"]()
    assert ret["retcode"] == 1 and ret["error"].startswith("url: not given, and kiosk_power:platform_url is not set")
    bad = load_runners(tmp_path, kiosk_power={"platform_url": "ftp://x/y?token=abc"})[0]["kiosk_power.sync_schedules"]()
    assert bad["retcode"] == 1 and bad["error"].startswith("kiosk_power.platform_url: ") and "abc" not in bad["error"]
    token = load_runners(tmp_path, kiosk_power={"platform_url": "http://127.0.0.1:1/", "platform_token": "a\nb"})[0]
    ret = token["kiosk_power.sync_schedules"]()
    assert ret["retcode"] == 1 and ret["error"].startswith("kiosk_power.platform_token: ")


def test_a_sync_publishes_the_calendars_of_the_campuses_it_changed(tmp_path, platform, monkeypatch):
    import salt.client

    import fleet_calendar
    import fleet_sign

    private, public = fleet_sign.new_key_pair()
    key = tmp_path / "signing.pem"
    key.write_bytes(private)
    key.chmod(0o600)
    jobs = []

    class Pis(LocalClientStandIn):  # the Pi minions: each keeps what it gets with the real store
        def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
            jobs.append((fun, sorted(targets)))
            for pi in targets:
                got = fleet_calendar.store(str(tmp_path / "pis" / pi), kwarg["calendar"], public, pi.split("-")[1])
                yield {pi: {"ret": {"result": True, "serial": got["serial"], "stored": got["stored"]}, "retcode": 0}}

    monkeypatch.setattr(salt.client, "get_local_client", Pis())
    runners = load_runners(tmp_path, kiosk_release={"signing_key": str(key)})
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({**yaml.safe_load(fleet.read_text()), "kiosk_release": {"verify_key": [public]}}))
    platform.serve(200, CHANGED)
    ret, rc = call(runners, "kiosk_power.sync_schedules", url=platform.url)
    assert rc == 0 and ret["calendar"]["result"] is True, ret
    assert sorted(ret["calendar"]["campuses"]) == ["east", "west"]
    assert sorted(jobs) == [("kiosk_campus.calendar", ["pi-east-1", "pi-east-2"]),
                            ("kiosk_campus.calendar", ["pi-west-1", "pi-west-2"])]
    west = fleet_calendar.load(str(tmp_path / "pis" / "pi-west-1"), public, "west")
    assert west["schedule"]["campuses"]["west"]["kiosks"]["kiosk-west-01"][0]["name"] == "emergency"
    assert west["serial"] == ret["calendar"]["campuses"]["west"]["serial"]
    jobs.clear()
    ret, rc = call(runners, "kiosk_power.sync_schedules", url=platform.url)
    assert rc == 0 and ret["calendar"] is None and jobs == []  # nothing changed: nothing sent
