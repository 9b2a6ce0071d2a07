"""
``kiosk_alert`` loaded by Salt's runner loader as on the top master, posting
to a real HTTP server on 127.0.0.1 whose URL carries a token in its path and
its query; the rate limit's state is a real SQLite file shared by threads
(the reactor's workers) and by a second loader (another process's view).
Environment events that pass the checks need a Pi to re-read: that part runs
on the topology (tests/integration/test_forged_alerts.py).
"""

import concurrent.futures
import json
import pathlib

import pytest
import salt.config
import salt.loader
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.topology import two_campus_inventory
from tests.support.webhook import Webhook

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def load(tmp_path, webhook, **alerts):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(two_campus_inventory(wol_port=9)))
    (tmp_path / "prom").mkdir(exist_ok=True)
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "__role": "master",
                 "kiosk_fleet_alerts": {"webhook_url": webhook.url, "timeout": 3,
                                        "textfile_dir": str(tmp_path / "prom"), **alerts}})
    return salt.loader.runner(opts, utils=salt.loader.utils(opts))


def release_event(minion, error="sha256 mismatch", hop="pi->kiosk"):
    return {"id": minion, "tag": "kiosk/release/alert", "cmd": "_minion_event",
            "data": {"hop": hop, "name": "kiosk-app", "version": "1.2.3", "error": error,
                     "source": "http://127.0.1.2:8080/kiosk-releases/", "campus": "west"}}


def counters(tmp_path):
    text = (tmp_path / "prom" / "kiosk_alerts.prom").read_text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_release_alerts_are_rate_limited_per_minion_across_threads_and_loaders(tmp_path, webhook):
    runners = load(tmp_path, webhook, rate_limit=5, rate_window_s=600)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: runners["kiosk_alert.event"](
            tag="kiosk/release/alert", data=release_event("kiosk-east-01", error=f"try {i}")), range(40)))
    posted = [r for r in results if r["result"]]
    assert len(posted) == 5 and len(webhook.posts) == 5
    dropped = [r for r in results if not r["result"]]
    assert all(r["retcode"] == 1 and r["error"].startswith("rate limit: kiosk-east-01") for r in dropped)
    body = webhook.posts[0]["json"]
    assert body["campus"] == "east"  # from the inventory, not the event's "west"
    assert body["kind"] == "kiosk_release" and body["source"] == "http://127.0.1.2:8080"
    # another minion has its own allowance; another loader (process) sees the same state
    other = load(tmp_path, webhook, rate_limit=5, rate_window_s=600)
    assert other["kiosk_alert.event"](tag="kiosk/release/alert", data=release_event("pi-west-2"))["result"] is True
    assert other["kiosk_alert.event"](tag="kiosk/release/alert", data=release_event("kiosk-east-01"))["result"] is False
    seen = counters(tmp_path)
    assert seen[("kiosk_alerts_dropped_total", (("minion", "kiosk-east-01"),))] == 36
    assert seen[("kiosk_alerts_posted_total", (("kind", "kiosk_release"),))] == 6


def test_forged_senders_post_nothing_and_are_counted(tmp_path, webhook):
    runners = load(tmp_path, webhook)
    cases = [
        ("kiosk/release/alert", release_event("kiosk-north-09")),  # not in the inventory
        ("kiosk/release/alert", release_event("kiosk-east-01", hop="$(reboot)")),
        ("kiosk/power/mismatch", {"id": "kiosk-east-01", "kiosk": "kiosk-west-01", "campus": "west",
                                  "expected": "on", "observed": "off", "since": "2027-03-01T00:00:00Z"}),
        ("salt/beacon/pi-west-1/kiosk_env/alert", {"id": "pi-east-1", "metric": "smoke", "value": True}),
        ("salt/beacon/kiosk-west-01/kiosk_env/alert", {"id": "kiosk-west-01", "metric": "smoke", "value": True}),
        ("salt/beacon/pi-west-1/kiosk_env/alert", {"id": "pi-west-1", "metric": "radiation"}),
    ]
    for tag, data in cases:
        ret = runners["kiosk_alert.event"](tag=tag, data=data)
        assert ret["result"] is False and ret["retcode"] == 1 and ret["posted"] is False, (tag, ret)
    assert webhook.posts == []
    assert counters(tmp_path)[("kiosk_alerts_refused_total", (("reason", "invalid"),))] == len(cases)
    bad = runners["kiosk_alert.event"](tag="kiosk/release/alert", data=release_event("kiosk-east-01"), timeout="soon")
    assert bad["retcode"] == 1 and bad["error"].startswith("timeout: ") and webhook.posts == []


def test_post_checks_the_payload_and_never_shows_the_webhook_token(tmp_path, webhook):
    runners = load(tmp_path, webhook)
    ret = runners["kiosk_alert.post"](payload={"severity": "warning", "summary": "test from the top master"})
    assert ret["result"] is True and ret["status"] == 204
    assert webhook.posts[-1]["path"] == webhook.path  # the token reached the webhook, in path and query
    bad = runners["kiosk_alert.post"](payload={"severity": "fatal", "summary": "x"})
    assert bad["retcode"] == 1 and bad["error"].startswith("payload.severity: ")
    webhook.close()  # a dead webhook: the class and the host only
    dead = runners["kiosk_alert.post"](payload={"severity": "info", "summary": "x"})
    assert dead["retcode"] == 1
    assert dead["error"] == f"kiosk_fleet_alerts.webhook_url: POST failed: ConnectionError contacting {webhook.origin}"
    assert not webhook.secrets_in(json.dumps(dead))
    assert not webhook.secrets_in(json.dumps(ret))
