"""
Power sweeps on the real topology (schedule: tests/support/topology.py
SWEEP_SCHEDULES, managed on 2027-03-01 only). TCP listeners on the kiosks'
loopback addresses stand in for their service port (a kiosk that is on),
UDP listeners on the VLAN broadcasts for their network cards, and the
kiosks' power command records its argv in ``topology.power_dir``.
"""

import json
import pathlib
import socket
import time

import pytest

from tests.integration.test_power import SILENT, Lan, counts, lan  # noqa: F401 - the lan fixture

pytestmark = pytest.mark.topology

AT = "2027-03-01T08:00:00+08:00"  # kiosk-east-01 due on (07:00-22:00), kiosk-east-02 due off (09:00-22:00)
SINCE = "2027-03-01T00:00:00Z"
PLUS_5 = "2027-03-01T08:05:00+08:00"
PLUS_15 = "2027-03-01T08:15:00+08:00"


class Services:
    """The kiosks' service ports: listening = the kiosk is on."""

    def __init__(self, inventory):
        self.by_kiosk = {
            kiosk: (spec["ip"], spec.get("service_port", campus.get("service_port")))
            for campus in inventory["kiosk_fleet"]["campuses"].values()
            for kiosk, spec in campus["kiosks"].items()
        }
        self.open_sockets = {}

    def up(self, kiosk):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.by_kiosk[kiosk])
        sock.listen(8)
        self.open_sockets[kiosk] = sock

    def down(self, kiosk):
        sock = self.open_sockets.pop(kiosk, None)
        if sock is not None:
            sock.close()

    def close(self):
        for kiosk in list(self.open_sockets):
            self.down(kiosk)


@pytest.fixture
def services(topology):
    svc = Services(topology.inventory)
    yield svc
    svc.close()


@pytest.fixture
def power_off(topology):
    """Stop a kiosk's minion, as a powered-off kiosk has none; restarted after the test."""
    stopped = []

    def stop(kiosk):
        topology.kiosks[kiosk].terminate()
        stopped.append(kiosk)

    yield stop
    for kiosk in stopped:
        topology.kiosks[kiosk].start()
    if stopped:
        topology.wait_answering(stopped)


@pytest.fixture
def clean_state(topology):
    state_dir = pathlib.Path(topology.top.config["cachedir"]) / "kiosk_power"
    for name in ("state.json", "schedules.json"):
        (state_dir / name).unlink(missing_ok=True)
    yield state_dir
    for name in ("state.json", "schedules.json"):
        (state_dir / name).unlink(missing_ok=True)


def test_sweep_wakes_due_on_shuts_down_due_off_and_verify_alerts(topology, lan, services, clean_state,  # noqa: F811
                                                               event_listener, power_off):
    began = time.time()  # the webhook is the session's: earlier tests posted there too
    record = topology.power_dir / "kiosk-east-02.json"
    record.unlink(missing_ok=True)
    services.up("kiosk-east-02")  # on (port open, minion up), due off
    power_off("kiosk-east-01")  # off (port closed, minion gone), due on

    plan = topology.salt_run("kiosk_power.plan", f"at={AT}", "hours=2", SILENT)
    assert plan.returncode == 0, plan
    assert plan.data["schedule"]["source"] == "pillar"
    assert plan.data["sweep_would"]["wake"] == {"east": ["kiosk-east-01"]}
    assert plan.data["sweep_would"]["shutdown"] == {"east": ["kiosk-east-02"]}
    assert plan.data["kiosks"]["kiosk-east-02"]["transitions"][0]["local"] == "2027-03-01T09:00:00+08:00"
    assert lan.received(settle=0.2) == {}  # a plan sends nothing

    result = topology.salt_run("kiosk_power.sweep", f"at={AT}", "delay_s=0", "message=Closing now", SILENT)
    assert result.returncode == 0, result
    sweep = result.data
    assert sweep["wake"] == {"east": ["kiosk-east-01"]}
    assert sweep["shutdown"] == {"east": ["kiosk-east-02"]}
    assert sweep["nothing"] == {"kiosk-west-01": "unmanaged", "kiosk-west-02": "unmanaged"}
    assert sweep["observed"] == {"kiosk-east-01": "off", "kiosk-east-02": "on"}
    assert sweep["pis"]["answered"] == ["pi-east-1", "pi-east-2"]  # only the east Pis were asked
    assert sweep["verifications"]["kiosk-east-01"] == [
        "2027-03-01T00:05:00Z", "2027-03-01T00:10:00Z", "2027-03-01T00:15:00Z"]
    got = lan.received()
    assert counts(got["127.0.1.255"]) == {("127.0.1.2", "52:54:00:e1:00:01"): 3, ("127.0.1.3", "52:54:00:e1:00:01"): 3}
    assert "127.0.2.255" not in got and "127.0.3.255" not in got  # kiosk-east-02 and west: no packet
    assert json.loads(record.read_text()) == ["shutdown", "0", "Closing now"]
    metrics = (topology.release_dir["textfile_dir"] / "kiosk_power.prom").read_text()
    assert 'kiosk_power_sweep_actions{campus="east",action="wake"} 1' in metrics
    assert 'kiosk_power_sweep_actions{campus="east",action="shutdown"} 1' in metrics
    assert 'kiosk_power_kiosks_observed{campus="east",state="off"} 1' in metrics
    assert 'kiosk_power_last_run_success{action="sweep"} 1' in metrics

    # a second sweep a minute later does not wake kiosk-east-01 again: its verification is pending
    services.down("kiosk-east-02")  # it did shut down
    power_off("kiosk-east-02")
    again = topology.salt_run("kiosk_power.sweep", "at=2027-03-01T08:01:00+08:00", "delay_s=0", SILENT)
    assert again.returncode == 0, again
    assert again.data["wake"] == {} and again.data["shutdown"] == {}
    assert "verification pending" in again.data["nothing"]["kiosk-east-01"]
    assert lan.received(settle=0.5) == {}

    # +5 min: kiosk-east-02 is off as expected; kiosk-east-01 (kept off) waits for its last check
    check = topology.salt_run("kiosk_power.verify", f"at={PLUS_5}", SILENT)
    assert check.returncode == 0, check
    assert check.data["verified"] == ["kiosk-east-02"] and check.data["waiting"] == ["kiosk-east-01"]
    assert check.data["mismatches"] == [] and topology.webhook.wait_for(
        lambda body: body.get("kiosk") == "kiosk-east-01", timeout=1, after=began) is None

    # +15 min: still off after the last check -> the verify runner posts the alert; the event is for listeners
    start = time.time()
    check = topology.salt_run("kiosk_power.verify", f"at={PLUS_15}", SILENT)
    assert check.returncode == 1, check
    expected = {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "off", "since": SINCE}
    assert check.data["mismatches"] == [expected]
    metrics = (topology.release_dir["textfile_dir"] / "kiosk_power.prom").read_text()
    assert 'kiosk_power_verify_mismatches{campus="east"} 1' in metrics
    assert 'kiosk_power_last_run_success{action="verify"} 0' in metrics
    assert "kiosk-east-01 (expected on, observed off)" in check.data["error"]
    matched = event_listener.wait_for_events([(topology.top.id, "kiosk/power/mismatch")], after_time=start, timeout=60)
    assert matched.found_all_events, "no kiosk/power/mismatch on the top master"
    event = next(iter(matched.matches)).data
    assert {k: event[k] for k in expected} == expected
    post = topology.webhook.wait_for(
        lambda body: body.get("kind") == "power_mismatch" and body.get("kiosk") == "kiosk-east-01", timeout=60,
        after=began)
    assert post is not None, topology.webhook.posts
    assert {k: post["json"][k] for k in expected} == expected
    assert post["json"]["severity"] == "warning" and "should be on, observed off" in post["json"]["summary"]

    status = topology.salt_run("kiosk_power.status", f"at={PLUS_15}")
    assert status.returncode == 0 and status.data["pending"] == {}
    assert status.data["mismatches"][-1] == expected
    assert status.data["last_sweep"]["at"] == "2027-03-01T00:01:00Z"


def test_hold_overrides_the_schedule_and_explicit_verify(topology, lan, services, clean_state,  # noqa: F811
                                                        power_off):
    record = topology.power_dir / "kiosk-east-01.json"
    record.unlink(missing_ok=True)
    services.up("kiosk-east-01")  # on, and due on at AT
    bad = topology.salt_run("kiosk_power.hold", "kiosk=kiosk-east-01", "state=off", "until=2027-03-01T12:00:00",
                            "reason=x")
    assert bad.returncode == 1 and bad.data["error"].startswith("until:")
    held = topology.salt_run("kiosk_power.hold", "kiosk=kiosk-east-01", "state=off",
                             "until=2027-03-01T12:00:00+08:00", "reason=floor cleaning, ticket 42")
    assert held.returncode == 0, held
    result = topology.salt_run("kiosk_power.sweep", f"at={AT}", "delay_s=0", SILENT)
    assert result.returncode == 0, result
    # kiosk-east-01 held off; kiosk-east-02 is due off and powered (its minion answers): both go down
    assert result.data["shutdown"] == {"east": ["kiosk-east-01", "kiosk-east-02"]} and result.data["wake"] == {}
    assert json.loads(record.read_text())[0] == "shutdown"
    assert "127.0.1.255" not in lan.received(settle=0.5)

    # explicit check now: the hold expects off, the port is open -> mismatch
    check = topology.salt_run("kiosk_power.verify", "kiosks=kiosk-east-01", f"at={PLUS_5}", SILENT)
    assert check.returncode == 1 and check.data["mode"] == "explicit"
    assert check.data["mismatches"][0]["expected"] == "off" and check.data["mismatches"][0]["observed"] == "on"
    services.down("kiosk-east-01")
    power_off("kiosk-east-01")
    check = topology.salt_run("kiosk_power.verify", "kiosks=kiosk-east-01", f"at={PLUS_5}", SILENT)
    assert check.returncode == 0 and check.data["verified"] == ["kiosk-east-01"], check

    gone = topology.salt_run("kiosk_power.unhold", "kiosk=kiosk-east-01")
    assert gone.returncode == 0 and gone.data["removed"]["reason"] == "floor cleaning, ticket 42"
    assert topology.salt_run("kiosk_power.unhold", "kiosk=kiosk-east-01").returncode == 1


def test_a_kiosk_whose_app_is_down_is_degraded_woken_anyway_and_alerted(topology, lan, services,  # noqa: F811
                                                                      clean_state):
    # kiosk-east-01 due on at AT, its minion answers, its service port is closed. Its
    # answer alone could be forged (a syndic forwards returns forged for other
    # minions), so the sweep wakes it like an off kiosk; a magic packet to a running PC is harmless
    result = topology.salt_run("kiosk_power.sweep", f"at={AT}", "delay_s=0", SILENT)
    assert result.returncode == 0, result
    assert result.data["observed"]["kiosk-east-01"] == "degraded"
    assert result.data["wake"] == {"east": ["kiosk-east-01"]}
    assert counts(lan.received()["127.0.1.255"]) == {("127.0.1.2", "52:54:00:e1:00:01"): 3,
                                                      ("127.0.1.3", "52:54:00:e1:00:01"): 3}
    # still degraded at its last check: the verify runner posts the mismatch itself
    start = len(topology.webhook.posts)
    check = topology.salt_run("kiosk_power.verify", f"at={PLUS_15}", SILENT)
    assert check.returncode == 1, check
    # (kiosk-east-02, due off, was shut down by its minion's power command, a recorder: still powered)
    assert {"kiosk": "kiosk-east-01", "campus": "east", "expected": "on", "observed": "degraded",
            "since": SINCE} in check.data["mismatches"]
    assert "kiosk-east-01" in check.data["alerts"]["posted"]
    posted = [p["json"] for p in topology.webhook.posts[start:]
              if p.get("json", {}).get("kind") == "power_mismatch" and p["json"]["kiosk"] == "kiosk-east-01"]
    assert len(posted) == 1 and posted[0]["observed"] == "degraded" and "app down" in posted[0]["summary"]


def test_a_bad_instant_fails_naming_the_field(topology, clean_state):
    result = topology.salt_run("kiosk_power.sweep", "at=tomorrow", SILENT)
    assert result.returncode == 1 and result.data["error"].startswith("at:")
