import pytest

import fleet_alerts
import fleet_inventory
from fleet_alerts import AlertError
from tests.support.topology import two_campus_inventory

INVENTORY = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
BEACON = "salt/beacon/pi-west-1/kiosk_env/alert"


def claim(tag, data):
    return fleet_alerts.sender(tag, data)


def reading(**values):
    base = {"pi": "pi-west-1", "campus": "west", "at": 1.0, "temperature": 22.0, "humidity": 40.0,
            "smoke": False, "warming_up": False, "alerts": [], "errors": {}}
    base.update(values)
    return base


# ---------------------------------------------------------------- power


def test_power_mismatch_payloads_include_degraded():
    item = {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "degraded",
            "since": "2027-03-01T00:00:00Z"}
    payload = fleet_alerts.power_mismatch(item)
    assert payload["severity"] == "warning" and payload["kind"] == "power_mismatch"
    assert {k: payload[k] for k in item} == item
    assert payload["summary"].startswith("kiosk kiosk-east-01 (east) should be on, observed degraded since")
    assert "app down" in payload["summary"]
    off = fleet_alerts.power_mismatch(dict(item, observed="off"))
    assert off["summary"] == "kiosk kiosk-east-01 (east) should be on, observed off since 2027-03-01T00:00:00Z"


@pytest.mark.parametrize("field,value", [
    ("kiosk", "kiosk east"), ("campus", None), ("expected", "degraded"), ("observed", "melted"),
    ("since", "yesterday"),
])
def test_power_mismatch_refuses_bad_fields_naming_them(field, value):
    item = {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "off",
            "since": "2027-03-01T00:00:00Z", field: value}
    with pytest.raises(AlertError, match=rf"^mismatch\.{field}: "):
        fleet_alerts.power_mismatch(item)


# ---------------------------------------------------------------- senders


def test_env_sender_must_match_the_tag_and_be_a_pi_of_the_inventory():
    good = claim(BEACON, {"id": "pi-west-1", "metric": "smoke", "value": True})
    assert good["kind"] == "env" and good["env_kind"] == "alert" and good["minion"] == "pi-west-1"
    assert fleet_alerts.campus_of_sender(INVENTORY, good) == "west"
    with pytest.raises(AlertError, match="does not match the tag"):
        claim(BEACON, {"id": "pi-east-1", "metric": "smoke"})
    with pytest.raises(AlertError, match="^data.id: kiosk-west-01 is a kiosk"):
        fleet_alerts.campus_of_sender(INVENTORY, claim("salt/beacon/kiosk-west-01/kiosk_env/alert",
                                                       {"id": "kiosk-west-01", "metric": "smoke"}))
    with pytest.raises(AlertError, match="^data.id: pi-north-1 is not a minion of the inventory"):
        fleet_alerts.campus_of_sender(INVENTORY, claim("salt/beacon/pi-north-1/kiosk_env/alert",
                                                       {"id": "pi-north-1", "metric": "smoke"}))


@pytest.mark.parametrize("tag,data,field", [
    (None, {}, "tag"),
    ("kiosk/power/mismatch", {"id": "kiosk-east-01"}, "tag"),
    ("salt/beacon/pi-west-1/kiosk_env/reading", {"id": "pi-west-1"}, "tag"),
    ("syndic/pi-west-1/salt/beacon/pi-west-1/kiosk_env/alert", {"id": "pi-west-1"}, "tag"),
    (BEACON, ["not", "a", "mapping"], "data"),
    (BEACON, {"id": "../etc"}, "data.id"),
    ("kiosk/release/alert", {"id": "kiosk-east-01", "data": "text"}, "data.data"),
])
def test_senders_refuse_bad_events_naming_the_field(tag, data, field):
    with pytest.raises(AlertError, match=rf"^{field}: "):
        fleet_alerts.sender(tag, data)


# ---------------------------------------------------------------- environment


def test_env_alert_payload_takes_the_campus_from_the_inventory_not_the_event():
    event = {"id": "pi-west-1", "metric": "temperature", "value": 41.5, "bound": "max", "limit": 32,
             "range": [5, 32], "unit": "C", "campus": "east", "severity": "info"}
    payload = fleet_alerts.env_alert(claim(BEACON, event), "west", reading(temperature=41.5, alerts=["temperature"]))
    assert payload["campus"] == "west" and payload["severity"] == "warning"
    assert payload["summary"] == "[warning] pi-west-1 (west): temperature alert 41.5C"
    assert payload["reread"]["temperature"] == 41.5
    smoke = fleet_alerts.env_alert(claim(BEACON, {"id": "pi-west-1", "metric": "smoke", "value": True}), "west")
    assert smoke["severity"] == "critical"
    clear = fleet_alerts.env_alert(claim("salt/beacon/pi-west-1/kiosk_env/clear",
                                         {"id": "pi-west-1", "metric": "smoke", "value": False}), "west")
    assert clear["severity"] == "info" and clear["kind"] == "clear"


@pytest.mark.parametrize("extra,field", [
    ({"metric": "radiation"}, "data.metric"),
    ({"metric": "temperature", "value": "hot"}, "data.value"),
    ({"metric": "temperature", "bound": "side"}, "data.bound"),
    ({"metric": "temperature", "range": [1, 2, 3]}, "data.range"),
    ({"metric": "temperature", "unit": "<script>"}, "data.unit"),
])
def test_env_alert_refuses_bad_values(extra, field):
    with pytest.raises(AlertError, match=rf"^{field}: "):
        fleet_alerts.env_alert(claim(BEACON, {"id": "pi-west-1", **extra}), "west")


def test_a_reread_must_confirm_alerts_and_all_clears():
    smoke = claim(BEACON, {"id": "pi-west-1", "metric": "smoke", "value": True})
    assert fleet_alerts.reread_agrees(smoke, reading(smoke=True)) == (True, "")
    assert fleet_alerts.reread_agrees(smoke, reading(smoke=False))[0] is False
    assert fleet_alerts.reread_agrees(smoke, reading(smoke=None, warming_up=True))[0] is False
    assert fleet_alerts.reread_agrees(smoke, reading(smoke=True, pi="pi-west-2"))[0] is False
    assert fleet_alerts.reread_agrees(smoke, "ERROR: no such function")[0] is False

    cancel = claim("salt/beacon/pi-west-1/kiosk_env/clear", {"id": "pi-west-1", "metric": "smoke", "value": False})
    assert fleet_alerts.reread_agrees(cancel, reading(smoke=True))[0] is False  # a forged all-clear
    assert fleet_alerts.reread_agrees(cancel, reading(smoke=None))[0] is False
    assert fleet_alerts.reread_agrees(cancel, reading(smoke=False)) == (True, "")

    hot = claim(BEACON, {"id": "pi-west-1", "metric": "temperature", "value": 41.5})
    assert fleet_alerts.reread_agrees(hot, reading(temperature=41.5, alerts=["temperature"])) == (True, "")
    assert fleet_alerts.reread_agrees(hot, reading())[0] is False
    cool = claim("salt/beacon/pi-west-1/kiosk_env/clear", {"id": "pi-west-1", "metric": "temperature"})
    assert fleet_alerts.reread_agrees(cool, reading())[0] is True
    assert fleet_alerts.reread_agrees(cool, reading(temperature=None, errors={"dht11": "EIO"}))[0] is False

    failing = claim("salt/beacon/pi-west-1/kiosk_env/sensor_error", {"id": "pi-west-1", "sensor": "dht11"})
    assert fleet_alerts.reread_agrees(failing, reading(errors={"dht11": "EIO"}))[0] is True
    assert fleet_alerts.reread_agrees(failing, reading())[0] is False


# ---------------------------------------------------------------- releases


def test_release_alert_payload():
    data = {"id": "kiosk-east-01", "tag": "kiosk/release/alert", "cmd": "_minion_event",
            "data": {"hop": "pi->kiosk", "name": "kiosk-app", "version": "1.2.3", "campus": "west",
                     "error": "sha256 mismatch\nsecond line", "source": "http://u:pw@127.0.1.2:8080/r/x?token=T"}}
    payload = fleet_alerts.release_alert(fleet_alerts.sender("kiosk/release/alert", data), "east")
    assert payload["campus"] == "east" and payload["minion"] == "kiosk-east-01"
    assert payload["source"] == "http://127.0.1.2:8080"
    assert payload["error"] == "sha256 mismatch second line"
    assert payload["summary"] == "release kiosk-app 1.2.3 refused on kiosk-east-01 (pi->kiosk): sha256 mismatch second line"
    assert "pw" not in str(payload) and "token" not in str(payload)
    long = dict(data, data=dict(data["data"], error="x" * 5000))
    assert len(fleet_alerts.release_alert(fleet_alerts.sender("kiosk/release/alert", long), "east")["error"]) == 500
    for key, value in (("hop", "rm -rf"), ("name", "a b"), ("version", "1.x")):
        bad = dict(data, data=dict(data["data"], **{key: value}))
        with pytest.raises(AlertError, match=rf"^data\.data\.{key}: "):
            fleet_alerts.release_alert(fleet_alerts.sender("kiosk/release/alert", bad), "east")


def test_check_payload():
    assert fleet_alerts.check_payload({"severity": "info", "summary": "x"})
    for payload, field in [([], "payload"), ({"severity": "fatal", "summary": "x"}, "payload.severity"),
                           ({"severity": "info"}, "payload.summary"),
                           ({"severity": "info", "summary": "x" * 901}, "payload.summary")]:
        with pytest.raises(AlertError, match=rf"^{field}: "):
            fleet_alerts.check_payload(payload)


# ---------------------------------------------------------------- rate limit, returns


def test_rate_decision_allows_at_most_the_limit_in_any_window():
    times, accepted = [], []
    for i in range(100):  # one alert every 2 s for 200 s, limit 10 per 60 s
        now = 1000.0 + 2 * i
        allowed, times = fleet_alerts.rate_decision(times, now, 10, 60)
        if allowed:
            accepted.append(now)
    for start in accepted:
        assert sum(1 for t in accepted if start <= t < start + 60) <= 10
    assert len(accepted) == 40  # 10 at the start of each full window
    assert len(times) <= 10


def test_rate_decision_forgets_old_and_future_instants_and_checks_its_arguments():
    allowed, kept = fleet_alerts.rate_decision([1.0, 2.0, 500.0], 100.0, 1, 60)  # 500: the clock went back
    assert allowed is True and kept == [100.0]
    assert fleet_alerts.rate_decision([100.0], 100.5, 1, 60) == (False, [100.0])
    assert fleet_alerts.rate_decision([100.5], 100.0, 1, 60) == (False, [100.5])  # another reader's clock
    for limit, window, field in [(0, 60, "rate_limit"), (True, 60, "rate_limit"), (1, 0, "rate_window_s")]:
        with pytest.raises(AlertError, match=f"^{field}: "):
            fleet_alerts.rate_decision([], 1.0, limit, window)



# ---------------------------------------------------------------- copies of one alert


RELEASE = {"id": "kiosk-east-01", "tag": "kiosk/release/alert", "cmd": "_minion_event",
           "data": {"hop": "pi->kiosk", "name": "kiosk-app", "version": "1.2.3", "error": "md5 mismatch"}}


def release_key(data, minion="kiosk-east-01", campus="east", tag="kiosk/release/alert"):
    payload = fleet_alerts.release_alert(fleet_alerts.sender("kiosk/release/alert", data), campus)
    return fleet_alerts.alert_key(minion, tag, payload)


def test_the_copies_of_one_event_have_one_key_and_other_alerts_another():
    key = release_key(RELEASE)
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    # the copy through the other Pi: that Pi master's own _stamp, key order differs
    copy = {"_stamp": "2026-12-02T09:00:00.123456", "data": dict(reversed(list(RELEASE["data"].items()))),
            "cmd": "_minion_event", "tag": "kiosk/release/alert", "id": "kiosk-east-01"}
    assert release_key(copy) == key
    assert release_key(dict(RELEASE, data=dict(RELEASE["data"], error="size mismatch"))) != key
    assert release_key(dict(RELEASE, data=dict(RELEASE["data"], version="1.2.4"))) != key
    assert release_key(RELEASE, minion="kiosk-east-02") != key
    assert release_key(RELEASE, tag="kiosk/release/alert/other") != key
    # power mismatches of two kiosks (what verify posts itself) never share a key
    item = {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "off",
            "since": "2027-03-01T00:00:00Z"}
    first = fleet_alerts.alert_key("top", "kiosk/power/mismatch", fleet_alerts.power_mismatch(item))
    second = fleet_alerts.alert_key("top", "kiosk/power/mismatch",
                                    fleet_alerts.power_mismatch(dict(item, kiosk="kiosk-east-02")))
    assert first != second


def test_alert_key_refuses_bad_fields_naming_them():
    payload = {"severity": "info", "summary": "x"}
    for args, field in [(("a b", "t", payload), "minion"), (("k1", "", payload), "tag"),
                        (("k1", "t", {"severity": "fatal", "summary": "x"}), "payload.severity"),
                        (("k1", "t", dict(payload, value=float("nan"))), "payload"),
                        (("k1", "t", dict(payload, value={1, 2})), "payload")]:
        with pytest.raises(AlertError, match=rf"^{field}: "):
            fleet_alerts.alert_key(*args)


@pytest.mark.parametrize("accepted_at, now, window, duplicate", [
    (None, 1000.0, 120, False),      # never seen
    (1000.0, 1000.0, 120, True),     # the second copy at once
    (900.5, 1020.0, 120, True),      # 119.5 s later: inside
    (900.0, 1020.0, 120, False),     # exactly the window later: posted again
    (1000.0, 4600.0, 120, False),    # an hour later: pages again
    (1000.5, 1000.0, 120, True),     # another process read the clock a little later
    (1120.0, 1000.0, 120, True),     # exactly a window ahead: still counts
    (1121.0, 1000.0, 120, False),    # more than a window ahead (clock set back): forgotten
    (1000.0, 1000.0, 0, False),      # window 0: off
    (1000.0, 1000.5, 1, True),
])
def test_is_duplicate_window_edges(accepted_at, now, window, duplicate):
    assert fleet_alerts.is_duplicate(accepted_at, now, window) is duplicate


def test_is_duplicate_checks_its_arguments():
    for window in (-1, True, "120", float("nan"), float("inf"), None):
        with pytest.raises(AlertError, match="^dedup_window_s: "):
            fleet_alerts.is_duplicate(1.0, 2.0, window)
    with pytest.raises(AlertError, match="^now: "):
        fleet_alerts.is_duplicate(1.0, "now", 120)
    with pytest.raises(AlertError, match="^accepted_at: "):
        fleet_alerts.is_duplicate("then", 2.0, 120)
