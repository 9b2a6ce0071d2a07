"""
The kiosk_env beacon on a Pi of the real topology, reading a fake IIO sysfs
tree (this machine has no DHT11): a temperature past the threshold becomes an
alert event on the top master's bus and, once a re-read of the Pi confirms
it, a POST to the alert webhook (a real HTTP server on loopback); the
textfile is valid Prometheus exposition format.
"""

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.topology import ENV_PI, cool_env_pi, write_fake_dht11

pytestmark = pytest.mark.topology


def test_overheating_pi_alerts_the_top_master_and_the_webhook(topology, event_listener):
    start = time.time()
    write_fake_dht11(topology.env_dir / "sys", temp_milli_c=41500)
    tag = f"salt/beacon/{ENV_PI}/kiosk_env/alert"
    matched = event_listener.wait_for_events([(topology.top.id, tag)], after_time=start, timeout=90)
    assert matched.found_all_events, f"no {tag} on the top master"
    alert = next(iter(matched.matches)).data
    assert alert["metric"] == "temperature" and alert["value"] == 41.5
    post = topology.webhook.wait_for(
        lambda body: body.get("pi") == ENV_PI and body.get("metric") == "temperature" and body.get("value") == 41.5,
        timeout=90,
    )
    assert post is not None, topology.webhook.posts
    assert post["json"]["campus"] == "east"  # from the inventory
    # posted only after kiosk_alert.event read the Pi again and the reading agreed
    assert post["json"]["reread"]["temperature"] == 41.5 and post["json"]["reread"]["alerts"] == ["temperature"]
    # the same alert arrives as syndic/<pi>/...: the reactor matched one form only
    time.sleep(5)
    hot = [p for p in topology.webhook.posts if p.get("json", {}).get("value") == 41.5]
    assert len(hot) == 1, hot
    # cooled down: the beacon's all-clear is posted too (and not left to arrive during a later test)
    clear = cool_env_pi(topology, start)
    if clear is not None:
        assert clear["json"]["severity"] == "info" and clear["json"]["reread"]["alerts"] == []


def test_textfile_is_valid_prometheus_exposition(topology):
    write_fake_dht11(topology.env_dir / "sys", temp_milli_c=23250, humidity_milli_pct=51000)
    prom = topology.env_dir / "prom" / "kiosk_env.prom"
    deadline = time.time() + 60
    samples = {}
    while time.time() < deadline:
        if prom.exists():
            families = list(text_string_to_metric_families(prom.read_text()))
            samples = {s.name: s for f in families for s in f.samples}
            if samples.get("kiosk_env_temperature_celsius") and samples["kiosk_env_temperature_celsius"].value == 23.25:
                break
        time.sleep(1)
    temperature = samples["kiosk_env_temperature_celsius"]
    assert temperature.value == 23.25
    assert temperature.labels == {"campus": "east", "pi": ENV_PI}
    assert temperature.timestamp is None  # the textfile collector forbids client timestamps
    assert samples["kiosk_env_humidity_percent"].value == 51.0
