"""
Power on the real topology, the campuses deciding (schedule:
tests/support/topology.py SWEEP_SCHEDULES, managed on 2027-03-01 only): the
top master publishes campus east's signed calendar (``kiosk_calendar``) and
``kiosk_power.sweep campus=east`` asks east's Pis to reconcile now
(``kiosk_campus.reconcile``, the session topology runs no Pi-master schedule,
so on demand is all that happens); ``plan`` and explicit ``verify`` still look
from the top master. TCP listeners on the kiosks' loopback addresses stand in
for their service port (a kiosk that is on), UDP listeners on the VLAN
broadcasts for their network cards, and the kiosks' power command records
its argv in ``topology.power_dir``. Minion presence comes from the Pis'
kernel tables (``kiosk_scan.scan``'s ``minion``): the topology's kiosk
minions connect from their inventory addresses (``source_address``), as on
a LAN.
"""

import json
import pathlib
import socket
import time

import pytest

import fleet_scan

from tests.integration.test_power import SILENT, Lan, counts, lan  # noqa: F401 - the lan fixture

pytestmark = pytest.mark.topology

AT = "2027-03-01T08:00:00+08:00"  # kiosk-east-01 due on (07:00-22:00), kiosk-east-02 due off (09:00-22:00)
SINCE = "2027-03-01T00:00:00Z"
PLUS_5 = "2027-03-01T08:05:00+08:00"
EAST_PIS = ["pi-east-1", "pi-east-2"]
# what a reconciler keeps between runs (a kiosk woken is not woken again while its checks are pending)
PI_STATE = ("reconciler.json", "peers.json", "outbox.db", "outbox.db-wal", "outbox.db-shm")


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


@pytest.fixture
def east_calendar(topology, clean_state):
    """East's Pis without reconciler memory, holding a freshly published calendar (no holds)."""
    def forget():
        for pi_id in EAST_PIS:
            state_dir = topology.campus_paths(pi_id)[0]
            for name in PI_STATE:
                (state_dir / name).unlink(missing_ok=True)

    forget()
    published = topology.salt_run("kiosk_calendar.publish", "campus=east", "force=True")
    assert published.returncode == 0, published
    assert published.data["campuses"]["east"]["current"] == EAST_PIS, published.data
    # no Pi-master schedule in the session topology: each Pi probes its peers once here, on demand
    # (a Pi that never probed knows no leader and shuts nothing down)
    for pi_id in EAST_PIS:
        probed = topology.pis[pi_id].master.salt_run_cli(timeout=60).run("kiosk_campus.probe")
        assert isinstance(probed.data, dict) and probed.data.get("pi") in (pi_id, None), probed
    yield published.data["campuses"]["east"]["serial"]
    forget()


def record_of(topology, kiosk, timeout=30):
    """The kiosk's power command argv, once its minion ran it (the leader's job may still be on its way)."""
    path = topology.power_dir / f"{kiosk}.json"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return json.loads(path.read_text()) if path.exists() else None


def test_the_sweep_asks_the_campus_which_wakes_due_on_and_shuts_down_due_off(  # noqa: F811
        topology, lan, services, clean_state, east_calendar, power_off):
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

    result = topology.salt_run("kiosk_power.sweep", "campus=east", f"at={AT}", SILENT)
    assert result.returncode == 0, result
    assert list(result.data["campuses"]) == ["east"] and result.data["at"] == SINCE
    east = result.data["campuses"]["east"]
    assert sorted(east["pis"]) == EAST_PIS and east["silent"] == [] and east["failed"] == {}, east
    assert east["woke"] == ["kiosk-east-01"], east
    for pi_id in EAST_PIS:  # each Pi ran on the calendar the top master published
        assert east["pis"][pi_id]["serial"] == east_calendar
    # every live Pi of the campus sent the magic packets, each from its own address on the VLAN
    got = lan.received()
    assert {src for src, mac in counts(got["127.0.1.255"])} == {"127.0.1.2", "127.0.1.3"}
    assert {mac for src, mac in counts(got["127.0.1.255"])} == {"52:54:00:e1:00:01"}
    assert "127.0.2.255" not in got and "127.0.3.255" not in got  # kiosk-east-02 and west: no packet
    if east["leaders"]:  # the campus's leader shut the due-off kiosk down
        assert east["shut_down"] == ["kiosk-east-02"], east
        assert (record_of(topology, "kiosk-east-02") or [None])[0] == "shutdown"
    else:  # no peer status over HTTP in this topology: no leader, so no Pi shuts anything down
        assert east["shut_down"] == [] and not any(p["leader"] for p in east["pis"].values()), east
    # the top master took no decision of its own: no sweep record, no pending check
    assert not (clean_state / "state.json").exists()


def test_a_hold_reaches_the_campus_at_once_and_beats_the_schedule(topology, lan, services,  # noqa: F811
                                                                  east_calendar, power_off):
    power_off("kiosk-east-02")  # off, and due off at AT (its hours start at 09:00)
    bad = topology.salt_run("kiosk_power.hold", "kiosk=kiosk-east-02", "state=on", "until=2027-03-01T12:00:00",
                            "reason=x")
    assert bad.returncode == 1 and bad.data["error"].startswith("until:")
    held = topology.salt_run("kiosk_power.hold", "kiosk=kiosk-east-02", "state=on",
                             "until=2027-03-01T12:00:00+08:00", "reason=ward move, ticket 42")
    assert held.returncode == 0, held
    calendar = held.data["calendar"]
    assert calendar["result"] is True and calendar["campuses"]["east"]["current"] == EAST_PIS, calendar
    serial = calendar["campuses"]["east"]["serial"]
    assert serial > east_calendar
    asked = topology.salt("-L", "kiosk_campus.calendar", tgt=",".join(EAST_PIS))
    assert {pi_id: asked.data[pi_id]["serial"] for pi_id in EAST_PIS} == dict.fromkeys(EAST_PIS, serial)

    # the campus follows the hold, not the schedule: kiosk-east-02 is woken by every Pi
    result = topology.salt_run("kiosk_power.sweep", "campus=east", f"at={AT}", SILENT)
    assert result.returncode == 0, result
    east = result.data["campuses"]["east"]
    assert "kiosk-east-02" in east["woke"], east
    got = lan.received()
    assert counts(got["127.0.2.255"]) and {src for src, mac in counts(got["127.0.2.255"])} == {
        "127.0.2.2", "127.0.2.3"}
    assert {mac for src, mac in counts(got["127.0.2.255"])} == {"52:54:00:e1:00:02"}

    # explicit check now, from the top master: the hold expects on, the kiosk is off -> mismatch
    check = topology.salt_run("kiosk_power.verify", "kiosks=kiosk-east-02", f"at={PLUS_5}", SILENT)
    assert check.returncode == 1 and check.data["mode"] == "explicit"
    assert check.data["mismatches"][0]["expected"] == "on" and check.data["mismatches"][0]["observed"] == "off"
    services.up("kiosk-east-02")  # it booted (its service answers)
    check = topology.salt_run("kiosk_power.verify", "kiosks=kiosk-east-02", f"at={PLUS_5}", SILENT)
    assert check.returncode == 0 and check.data["verified"] == ["kiosk-east-02"], check

    gone = topology.salt_run("kiosk_power.unhold", "kiosk=kiosk-east-02")
    assert gone.returncode == 0 and gone.data["removed"]["reason"] == "ward move, ticket 42"
    assert gone.data["calendar"]["campuses"]["east"]["serial"] > serial  # the campus hears of it at once too
    assert topology.salt_run("kiosk_power.unhold", "kiosk=kiosk-east-02").returncode == 1


def test_a_kiosk_due_on_whose_service_does_not_answer_is_woken_by_every_pi(topology, lan, services,  # noqa: F811
                                                                          east_calendar):
    # kiosk-east-01 due on at AT, its minion connected, its service port closed: the reconcilers
    # wake it (a magic packet to a running PC is harmless)
    result = topology.salt_run("kiosk_power.sweep", "campus=east", f"at={AT}", SILENT)
    assert result.returncode == 0, result
    east = result.data["campuses"]["east"]
    assert "kiosk-east-01" in east["woke"], east
    assert {east["pis"][pi_id]["observed"]["kiosk-east-01"] for pi_id in EAST_PIS} <= {"off", "degraded"}
    assert {src for src, mac in counts(lan.received()["127.0.1.255"])} == {"127.0.1.2", "127.0.1.3"}


def test_plan_and_verify_take_presence_from_the_pis_kernel_tables(topology, clean_state):
    # kiosk-east-01 is due on at AT, its service port closed (no listener), its minion running and
    # connected to the east Pi masters from its inventory address (source_address, as on its VLAN)
    east_masters = {(pi.master.config["interface"], port) for pi_id, pi in topology.pis.items() if pi_id in EAST_PIS
                    for port in (pi.master.config["publish_port"], pi.master.config["ret_port"])}
    deadline = time.monotonic() + 60
    while not any((row[0], row[1]) in east_masters and row[2:] == ("127.0.1.11", fleet_scan.TCP_ESTABLISHED)
                  for row in fleet_scan.read_tcp_tables()):
        assert time.monotonic() < deadline, "kiosk-east-01 holds no connection to an east Pi master"
        time.sleep(0.2)
    plan = topology.salt_run("kiosk_power.plan", f"at={AT}", "hours=0", SILENT)
    check = topology.salt_run("kiosk_power.verify", "kiosks=kiosk-east-01", f"at={AT}", SILENT)
    # the Pis saw it in their own kernel tables (no kiosk job): machine on, service down
    assert plan.returncode == 0, plan
    assert plan.data["observed"]["kiosk-east-01"] == {"state": "degraded", "minion": True,
                                                      "seen_by": dict.fromkeys(EAST_PIS, "closed")}, plan.data
    assert check.returncode == 1 and check.data["observed"] == {"kiosk-east-01": "degraded"}, check
    assert [(m["kiosk"], m["expected"], m["observed"]) for m in check.data["mismatches"]] == [
        ("kiosk-east-01", "on", "degraded")]


def test_a_bad_instant_or_campus_fails_naming_the_field(topology, clean_state):
    for args, field in [(("at=tomorrow",), "at:"), (("campus=north",), "campus:")]:
        result = topology.salt_run("kiosk_power.sweep", *args, SILENT)
        assert result.returncode == 1 and result.data["error"].startswith(field), result
