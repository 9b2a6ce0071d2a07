"""
A tampered kiosk on the real topology. From a kiosk minion, ``salt-call
event.fire_master`` in the plain form and in the ``preload`` form (which puts
any tag with any data, ``id`` included, on its Pi master's bus; the syndic
forwards it to the top master unchanged) fakes and cancels a smoke alarm of a
Pi of another campus, fakes power mismatches and floods release alerts. The
webhook (a real HTTP server on loopback, tests/support/webhook.py) must get
nothing forged, at most the rate limit from the flood, and a Pi's real alert
(the env Pi's fake DHT11 sysfs tree) exactly once. Tokens in the URLs of the
webhook and of the schedule platform never reach a runner's return or the
top master's log file, and ``degraded`` reaches the webhook.

Sync points, not sleeps: the tests wait for the runner returns of the
forged events themselves (a POST would come before the return), or, for
events no runner must handle, for a *marker* event fired after them that
the alert reactor refuses (an unknown Pi): the reactor renders events in
order and its workers start jobs in order, so once the marker's job has
returned, every job for an earlier event has started (``salt/run/<jid>/new``).
"""

import json
import pathlib
import time
import uuid

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_sweep import AT, clean_state  # noqa: F401 - the clean_state fixture
from tests.support.loopback import SchedulePlatform
from tests.support.topology import ENV_PI, SWEEP_SCHEDULES, cool_env_pi, write_fake_dht11

pytestmark = pytest.mark.topology

FORGER = "kiosk-east-01"  # campus east
VICTIM_PI = "pi-west-1"  # campus west
RATE_LIMIT = 10  # kiosk_fleet_alerts defaults: 10 per 60 s
WINDOW_S = 60


def fire(topology, kiosk, tag, data, preload=None):
    """``salt-call event.fire_master <data> <tag> [preload=...]`` on the kiosk itself."""
    args = ["event.fire_master", json.dumps(data), tag]
    if preload is not None:
        args.append(f"preload={json.dumps(preload)}")
    result = topology.kiosks[kiosk].salt_call_cli(timeout=120).run(*args)
    assert result.returncode == 0 and result.data is True, result
    return result


def marker():
    pi = f"pi-marker-{uuid.uuid4().hex[:10]}"
    return pi, {"tag": f"salt/beacon/{pi}/kiosk_env/alert", "data": {"id": pi, "metric": "smoke", "value": True}}


def alert_returns(topology, event_listener, after, needle=None, stage="ret"):
    """``salt/run/<jid>/<stage>`` events of kiosk_alert.event runs (reactor) after ``after`` whose arguments hold ``needle``."""
    out = []
    for event in event_listener.get_events([(topology.top.id, f"salt/run/*/{stage}")], after_time=after):
        data = event.data or {}
        if data.get("fun") != "runner.kiosk_alert.event":
            continue
        if needle is None or needle in json.dumps(data.get("fun_args"), default=str):
            out.append(data)
    return out


def wait_for_returns(topology, event_listener, after, needle, count, timeout=180, errors=()):
    """At least ``count`` returns mentioning ``needle``, and among them an error holding each of ``errors``."""
    deadline = time.time() + timeout
    found = []
    while time.time() < deadline:
        found = alert_returns(topology, event_listener, after, needle)
        said = " | ".join(str((r.get("return") or {}).get("error", "")) for r in found)
        if len(found) >= count and all(error in said for error in errors):
            return found
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} kiosk_alert.event returns mention {needle}, or none says "
                         f"{list(errors)}: {found}")


def wait_for_marker(topology, event_listener, after, pi, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = alert_returns(topology, event_listener, after, pi)
        if found:
            ret = found[0]["return"]
            assert ret["result"] is False and "not a minion of the inventory" in ret["error"], ret
            return
        time.sleep(0.5)
    raise AssertionError(f"the alert reactor never handled the marker event of {pi}")


def test_forged_smoke_alarm_and_all_clear_of_another_campus_post_nothing(topology, event_listener):
    start = time.time()
    posts_before = len(topology.webhook.posts)
    smoke = {"id": VICTIM_PI, "metric": "smoke", "value": True, "severity": "critical", "campus": "west"}
    clear = {"id": VICTIM_PI, "metric": "smoke", "value": False, "campus": "west"}
    env_alert = f"salt/beacon/{VICTIM_PI}/kiosk_env/alert"
    env_clear = f"salt/beacon/{VICTIM_PI}/kiosk_env/clear"
    # plain form: the Pi master's load says id=kiosk-east-01 (not the tag's Pi)
    fire(topology, FORGER, env_alert, smoke)
    # preload form: any data, id included; the env Pi too (no smoke sensor configured there)
    pi, mark = marker()
    fire(topology, FORGER, "x", {}, preload={"events": [
        {"tag": env_alert, "data": smoke},
        {"tag": env_clear, "data": clear},
        {"tag": f"salt/beacon/{ENV_PI}/kiosk_env/alert", "data": {"id": ENV_PI, "metric": "smoke", "value": True}},
        mark,
    ]})
    # the plain alert, the preload alert and (when the clear reactor is configured) the preload
    # all-clear of pi-west-1; the env Pi's alert
    clear_reacts = any("salt/beacon/*/kiosk_env/clear" in entry for entry in topology.top.config["reactor"])
    # each event reaches the top master once per Pi of the forger's campus, in no fixed order: wait
    # for the refusals themselves, not for the first N returns
    reasons = ["re-read of pi-west-1 does not confirm the alert"]
    if clear_reacts:
        reasons.append("re-read of pi-west-1 does not confirm the clear")
    refused = wait_for_returns(topology, event_listener, start, VICTIM_PI, 3 if clear_reacts else 2,
                               errors=reasons)
    refused += wait_for_returns(topology, event_listener, start, f"salt/beacon/{ENV_PI}/kiosk_env/alert", 1)
    seen = event_listener.get_events([(topology.top.id, env_alert)], after_time=start)
    assert any((e.data or {}).get("id") == VICTIM_PI for e in seen), "the forged preload event never arrived"
    assert all(r["return"]["result"] is False for r in refused), refused
    errors = " | ".join(r["return"]["error"] for r in refused)
    assert "re-read of pi-west-1 does not confirm the alert" in errors  # the preload smoke: the Pi says otherwise
    if clear_reacts:
        assert "re-read of pi-west-1 does not confirm the clear" in errors
    assert topology.webhook.posts[posts_before:] == []


def test_forged_power_mismatches_post_nothing(topology, event_listener):
    start = time.time()
    posts_before = len(topology.webhook.posts)
    mismatch = {"kiosk": "kiosk-west-01", "campus": "west", "expected": "on", "observed": "off",
                "since": "2027-03-01T00:00:00Z"}
    fire(topology, FORGER, "kiosk/power/mismatch", mismatch)
    pi, mark = marker()
    fire(topology, FORGER, "x", {}, preload={"events": [
        {"tag": "kiosk/power/mismatch", "data": mismatch},
        {"tag": "kiosk/power/mismatch", "data": dict(mismatch, kiosk="kiosk-west-02", observed="degraded")},
        mark,
    ]})
    wait_for_marker(topology, event_listener, start, pi)
    arrived = event_listener.get_events([(topology.top.id, "kiosk/power/mismatch")], after_time=start)
    assert len(arrived) >= 3, "the forged mismatch events never reached the top master"
    assert alert_returns(topology, event_listener, start, "kiosk/power/mismatch") == []  # no runner ran for them
    assert topology.webhook.posts[posts_before:] == []


def alert_counters(topology):
    path = pathlib.Path(topology.release_dir["textfile_dir"]) / "kiosk_alerts.prom"
    if not path.exists():
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text()) for s in family.samples}


def test_a_flood_of_forged_alerts_from_one_kiosk_is_cut_to_the_rate_limit(topology, event_listener):
    flooder = "kiosk-west-02"
    start = time.time()

    def from_flooder(post):
        return "json" in post and post["json"].get("minion") == flooder

    before = [p for p in topology.webhook.posts if from_flooder(p)]
    dropped_key = ("kiosk_alerts_dropped_total", (("minion", flooder),))
    duplicates_key = ("kiosk_alerts_duplicates_total", (("minion", flooder),))
    counters_before = alert_counters(topology)
    dropped_before = counters_before.get(dropped_key, 0)
    duplicates_before = counters_before.get(duplicates_key, 0)
    # ten times the rate limit: enough to show the cut; each copy costs a runner job on the top master,
    # and 2,000 of them did not all finish within 10 minutes on 2 loaded cores
    total = 10 * RATE_LIMIT
    # the kiosk is a minion of every Pi of its campus: each event reaches the top master once per Pi
    copies = total * len(topology.campus_pis(flooder))
    events = [{"tag": "kiosk/release/alert",
               "data": {"id": flooder, "data": {"hop": "install", "name": "kiosk-app", "version": "1.0.0",
                                                "error": f"forged {i}"}}}
              for i in range(total)]
    fire(topology, flooder, "x", {}, preload={"events": events})
    deadline = time.time() + 600
    while time.time() < deadline:
        posted = [p for p in topology.webhook.posts if from_flooder(p)][len(before):]
        counters = alert_counters(topology)
        dropped = counters.get(dropped_key, 0) - dropped_before
        duplicates = counters.get(duplicates_key, 0) - duplicates_before
        if len(posted) + dropped + duplicates >= copies:
            break
        time.sleep(2)
    elapsed = time.time() - start
    assert len(posted) + dropped + duplicates == copies, (len(posted), dropped, duplicates)
    # no alert was posted twice: a copy of a posted alert is a duplicate (a copy of a rate-limited one is
    # judged again and may be posted once its window reopens)
    assert duplicates >= 1 and len({p["json"].get("error") for p in posted}) == len(posted), (len(posted), duplicates)
    # at most RATE_LIMIT in any window (receive times; 2 s of slack for the POST's own delay)
    times = sorted(p["at"] for p in posted)
    for first in times:
        assert sum(1 for t in times if first <= t < first + WINDOW_S - 2) <= RATE_LIMIT, times
    assert 1 <= len(posted) <= RATE_LIMIT * (1 + int(elapsed // WINDOW_S)), (len(posted), elapsed)
    body = posted[0]["json"]
    assert body["kind"] == "kiosk_release" and body["campus"] == "west" and body["hop"] == "install"


def test_a_real_alert_of_the_env_pi_reaches_the_webhook_exactly_once(topology, event_listener):
    start = time.time()
    write_fake_dht11(topology.env_dir / "sys", temp_milli_c=43250)
    alerted = False
    try:
        post = topology.webhook.wait_for(
            lambda body: body.get("pi") == ENV_PI and body.get("value") == 43.25 and body.get("kind") == "alert",
            timeout=120)
        assert post is not None, topology.webhook.posts[-5:]
        alerted = True
        body = post["json"]
        assert body["severity"] == "warning" and body["campus"] == "east" and body["metric"] == "temperature"
        assert body["reread"]["temperature"] == 43.25 and body["reread"]["alerts"] == ["temperature"]
        # sync point: a marker fired after the alert's syndic copy was handled
        matched = event_listener.wait_for_events(
            [(topology.top.id, f"syndic/*/salt/beacon/{ENV_PI}/kiosk_env/alert")], after_time=start, timeout=60)
        assert matched.found_all_events
        pi, mark = marker()
        fire(topology, FORGER, "x", {}, preload={"events": [mark]})
        wait_for_marker(topology, event_listener, start, pi)
        runs = alert_returns(topology, event_listener, start, "43.25", stage="new")
        assert len(runs) == 1, runs  # the syndic copy started no second job
        done = wait_for_returns(topology, event_listener, start, "43.25", 1)
        assert done[0]["return"]["result"] is True
        hot = topology.webhook.matching(lambda b: b.get("pi") == ENV_PI and b.get("value") == 43.25)
        assert len(hot) == 1, hot
    finally:
        if alerted:  # back to 22 C, and its all-clear posted before the next test looks at the webhook
            cool_env_pi(topology, start)
        else:
            write_fake_dht11(topology.env_dir / "sys")


@pytest.fixture
def platform(topology, clean_state):  # noqa: F811
    server = SchedulePlatform(SWEEP_SCHEDULES)
    # salt-run reads master.d at each call: the platform settings for the runner, as an operator sets them
    conf_dir = pathlib.Path(topology.top.config_file).parent / "master.d"
    conf_dir.mkdir(exist_ok=True)
    snippet = conf_dir / "zz-platform.conf"
    power = dict(topology.top.config.get("kiosk_power") or {})
    power.update({"platform_url": server.url, "platform_token": server.tokens[2]})
    snippet.write_text(yaml.safe_dump({"kiosk_power": power}))
    yield server
    snippet.unlink()
    server.close()


def test_tokens_never_reach_returns_or_the_master_log_and_degraded_is_posted(topology, platform, clean_state):  # noqa: F811
    webhook = topology.webhook
    secrets = list(platform.tokens) + [webhook.path_token, webhook.query_token]
    outputs = []

    synced = topology.salt_run("kiosk_power.sync_schedules", "timeout=10")
    outputs.append(synced.stdout + synced.stderr)
    assert synced.returncode == 0, synced
    assert synced.data["url"] == platform.origin
    assert [r["authorization"] for r in platform.requests] == [f"Bearer {platform.tokens[2]}"]
    platform.serve(500, b"internal error")
    failed = topology.salt_run("kiosk_power.sync_schedules", "timeout=10")
    outputs.append(failed.stdout + failed.stderr)
    assert failed.returncode == 1 and f"{platform.origin} answered HTTP 500" in failed.data["error"]
    platform.close()
    dead = topology.salt_run("kiosk_power.sync_schedules", "timeout=5")
    outputs.append(dead.stdout + dead.stderr)
    assert dead.returncode == 1 and f"ConnectionError contacting {platform.origin}" in dead.data["error"]

    # degraded (kiosk-east-01: minion up, service port closed, due on at AT) reaches the webhook
    start = len(webhook.posts)
    check = topology.salt_run("kiosk_power.verify", "kiosks=kiosk-east-01", f"at={AT}", "timeout=10")
    outputs.append(check.stdout + check.stderr)
    assert check.returncode == 1, check
    assert check.data["alerts"] == {"posted": ["kiosk-east-01"], "errors": []}
    posts = [p["json"] for p in webhook.posts[start:] if p.get("json", {}).get("kind") == "power_mismatch"]
    assert posts == [{
        "severity": "warning", "kind": "power_mismatch", "kiosk": "kiosk-east-01", "campus": "east",
        "expected": "on", "observed": "degraded", "since": "2027-03-01T00:00:00Z",
        "summary": "kiosk kiosk-east-01 (east) should be on, observed degraded since 2027-03-01T00:00:00Z:"
                   " powered on, its service port is closed (kiosk app down)",
    }]
    assert webhook.posts[start]["path"] == webhook.path  # the tokens did reach the webhook itself

    for text in outputs:
        assert not [s for s in secrets if s in text], text
    log_text = pathlib.Path(topology.top.config["log_file"]).read_text(errors="replace")
    assert "kiosk_power" in log_text  # the runs above did log there
    assert [s for s in secrets if s in log_text] == []
