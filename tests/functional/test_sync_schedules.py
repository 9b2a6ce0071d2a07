"""
``kiosk_power.sync_schedules`` loaded by Salt's runner loader (as on the top
master, pillar compiled from a real pillar_roots), fetching from a real HTTP
server on 127.0.0.1: good JSON, then HTTP 500, invalid JSON, an invalid
schedule and a dead server. The last good copy stays in force and every
failure exits non-zero.
"""

import http.server
import json
import pathlib
import threading

import pytest
import salt.config
import salt.loader
import yaml

from tests.support.topology import SWEEP_SCHEDULES, two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]

GOOD = {"campuses": {"east": {"rules": [{"name": "hours", "weekly": {"mon-fri": ["07:00-22:00"]}}]}}}
CHANGED = {"kiosk_fleet_schedules": {"campuses": {
    "east": {"rules": [{"name": "hours", "weekly": {"mon-fri": ["06:45-22:00"]}}]},
    "west": {"kiosks": {"kiosk-west-01": [{"name": "emergency", "always": "on"}]}},
}}}


class Platform:
    """The schedule platform: answers GET with whatever the test set."""

    def __init__(self):
        self.status, self.body = 200, b"{}"
        platform = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(platform.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(platform.body)))
                self.end_headers()
                self.wfile.write(platform.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/schedules?token=s3cret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, status, body):
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def platform():
    server = Platform()
    yield server
    server.close()


@pytest.fixture
def runners(tmp_path):
    pillar = tmp_path / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - kiosk_fleet\n    - kiosk_fleet_schedules\n")
    (pillar / "kiosk_fleet.sls").write_text(yaml.safe_dump(two_campus_inventory(wol_port=9)))
    (pillar / "kiosk_fleet_schedules.sls").write_text(yaml.safe_dump(SWEEP_SCHEDULES))
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "pillar_roots": {"base": [str(pillar)]}, "file_roots": {"base": [str(tmp_path / "files")]},
                 "__role": "master"})
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
    assert ret["url"] == platform.url.split("?")[0]  # the token never reaches the output
    good = json.loads(copy.read_text())
    assert good["schedule"]["campuses"]["east"]["rules"][0]["weekly"]["mon"] == ["07:00-22:00"]
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
        assert "s3cret" not in ret["error"]
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
    for kwargs, field in [({"url": "ftp://127.0.0.1/x"}, "url:"), ({"url": None}, "url:"),
                          ({"url": "http://127.0.0.1/", "timeout": 0}, "timeout:")]:
        ret, rc = call(runners, "kiosk_power.sync_schedules", **kwargs)
        assert rc == 1 and ret["error"].startswith(field), ret
    ret, rc = call(runners, "kiosk_power.hold", kiosk="kiosk-east-09", state="on",
                   until="2099-01-01T00:00:00Z", reason="x")
    assert rc == 1 and ret["error"].startswith("kiosk:")
