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
import sqlite3
import threading

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


# ---------------------------------------------------------------- copies of one alert (multi-master kiosks)


def copy_of(event):
    """The same event as the top master gets it through the kiosk's other Pi: that master's own _stamp."""
    return dict(event, _stamp="2026-12-02T09:00:00.654321", data=dict(reversed(list(event["data"].items()))))


def test_the_copies_of_one_alert_are_posted_once_and_counted(tmp_path, webhook):
    runners = load(tmp_path, webhook, rate_limit=2, rate_window_s=600)
    event = release_event("kiosk-east-01", error="md5 mismatch")
    first = runners["kiosk_alert.event"](tag="kiosk/release/alert", data=event)
    second = runners["kiosk_alert.event"](tag="kiosk/release/alert", data=copy_of(event))
    assert first["result"] is True and len(webhook.posts) == 1
    assert second == {"result": True, "posted": False, "duplicate": True, "retcode": 0}
    # the copy used up no allowance (2): another alert of the kiosk still goes out
    other = runners["kiosk_alert.event"](tag="kiosk/release/alert", data=release_event("kiosk-east-01", error="x"))
    assert other["result"] is True and len(webhook.posts) == 2
    # the same text from another kiosk is another alert
    assert runners["kiosk_alert.event"](tag="kiosk/release/alert",
                                        data=release_event("kiosk-east-02", error="md5 mismatch"))["result"] is True
    assert len(webhook.posts) == 3
    seen = counters(tmp_path)
    assert seen[("kiosk_alerts_duplicates_total", (("minion", "kiosk-east-01"),))] == 1
    assert seen[("kiosk_alerts_posted_total", (("kind", "kiosk_release"),))] == 3
    assert ("kiosk_alerts_dropped_total", (("minion", "kiosk-east-01"),)) not in seen


def test_copies_handled_by_racing_threads_and_loaders_are_posted_once(tmp_path, webhook):
    runners = [load(tmp_path, webhook), load(tmp_path, webhook)]  # two loaders: another process's view
    for round_ in range(5):
        event = release_event("kiosk-west-01", error=f"md5 mismatch {round_}")
        start = threading.Barrier(4)

        def handle(i, event=event, start=start):
            start.wait(timeout=30)
            return runners[i % 2]["kiosk_alert.event"](tag="kiosk/release/alert", data=copy_of(event) if i else event)

        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(handle, range(4)))
        assert sum(1 for r in results if r.get("posted", True) and r["result"]) == 1, results
        assert sum(1 for r in results if r.get("duplicate")) == 3, results
    assert len(webhook.posts) == 5
    assert counters(tmp_path)[("kiosk_alerts_duplicates_total", (("minion", "kiosk-west-01"),))] == 15


def test_the_same_alert_after_the_window_pages_again_and_window_0_turns_the_check_off(tmp_path, webhook):
    runners = load(tmp_path, webhook)
    event = release_event("pi-east-1", hop="master->pi")
    assert runners["kiosk_alert.event"](tag="kiosk/release/alert", data=event)["result"] is True
    assert runners["kiosk_alert.event"](tag="kiosk/release/alert", data=event)["duplicate"] is True
    # the window (default 120 s) passes: the accepted instant moves 121 s back
    with sqlite3.connect(tmp_path / "cache" / "kiosk_alerts" / "rate.sqlite") as conn:
        assert conn.execute("UPDATE seen SET at = at - 121").rowcount == 1
    again = runners["kiosk_alert.event"](tag="kiosk/release/alert", data=event)
    assert again["result"] is True and again["retcode"] == 0 and "duplicate" not in again
    assert len(webhook.posts) == 2 and webhook.posts[0]["json"] == webhook.posts[1]["json"]

    off = load(tmp_path, webhook, dedup_window_s=0)
    for _ in range(3):
        assert off["kiosk_alert.event"](tag="kiosk/release/alert", data=event)["result"] is True
    assert len(webhook.posts) == 5
    bad = load(tmp_path, webhook, dedup_window_s=-1)["kiosk_alert.event"](tag="kiosk/release/alert", data=event)
    assert bad["retcode"] == 1 and bad["error"].startswith("kiosk_fleet_alerts.dedup_window_s: ")
    assert counters(tmp_path)[("kiosk_alerts_duplicates_total", (("minion", "pi-east-1"),))] == 1


def test_post_is_not_deduplicated(tmp_path, webhook):
    runners = load(tmp_path, webhook)
    payload = {"severity": "warning", "summary": "kiosk kiosk-east-01 (east) should be on, observed off"}
    assert all(runners["kiosk_alert.post"](payload=dict(payload))["result"] for _ in range(2))
    assert len(webhook.posts) == 2
