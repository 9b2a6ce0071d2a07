"""
Campus autonomy on real daemons (docs/campus.md): campus west runs its own
day on its Pis with the central (top) master stopped.

What is counted is what happened, never what a runner says: magic packets
on the VLAN's loopback broadcast address with the Pi address they came from
(tests/support/campus.py ``Lan``), the kiosk's power button presses
(``<power_dir>/<kiosk>.presses``, one line each), each Pi's outbox read from
its SQLite file, the posts the webhook received.

Time is the Pis', simulated: each Pi's clock stand-in
(``kiosk_campus:clock_file``) gets the offset that makes it read a given
campus time, and the day steps forward by rewriting the offsets. The Pi
masters run the campus schedule (probe every 3 s, reconcile every 5 s:
tests/support/campus.py) only in this file, turned on by a master.d snippet
and a restart of west's Pis; the module's teardown takes it off again and
brings every daemon back.

The day (topology.CAMPUS_DAY, Asia/Shanghai; both kiosks due on 07:00-19:00):
kiosk-west-01 is off all day (its minion stopped, its service port closed),
kiosk-west-02 on until its shutdown at 19:00. The tests run in file order
and build on each other.
"""

import datetime
import json
import pathlib
import time

import pytest

import fleet_outbox
from tests.integration.test_release import fleet  # noqa: F401 - fleet (each Pi's nginx) is a fixture
from tests.support import campus as cs
from tests.support.nginx import nginx_binary
from tests.support.topology import CAMPUS_DAY

REPO = pathlib.Path(__file__).resolve().parents[2]
# the campus runtime these tests drive (helpers write it alongside): skipped until all of it is there
RUNTIME = ("_runners/kiosk_campus.py", "_modules/kiosk_campus.py", "_runners/kiosk_calendar.py",
           "_runners/kiosk_outbox.py", "_modules/kiosk_outbox.py", "_utils/fleet_calendar.py")

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
    pytest.mark.skipif(not all((REPO / p).exists() for p in RUNTIME),
                       reason="the campus runtime is not all there: " + ", ".join(RUNTIME)),
]

CAMPUS = "west"
TZ = "Asia/Shanghai"
PIS = ("pi-west-1", "pi-west-2")  # the leader is the lowest id reachable: pi-west-1 while it lives
KEPT_OFF, CLOSING = "kiosk-west-01", "kiosk-west-02"
OPENING = cs.local(CAMPUS_DAY, "07:00:00", TZ)
CLOSES = cs.local(CAMPUS_DAY, "19:00:00", TZ)
# a reconcile runs every RECONCILE_S; an instant is acted on within a few runs of it
SEEN_S = 4 * cs.RECONCILE_S + 10
# Simulated time jumps to LEAD_S before an instant, and the instant itself passes in real time:
# right after a jump every peer status looks old (its signed `at` is on the old time) until the
# next probe, and a Pi that finds no fresh peer leads too; by the instant the probes caught up
LEAD_S = 3 * cs.PROBE_S + 3


def utc_iso(instant):
    return instant.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def wait_for(what, check, timeout=SEEN_S, every=0.5):
    """Poll ``check()`` until it returns something true; fail naming ``what`` with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s (last: {got!r})"
        time.sleep(every)


class Campus:
    """Campus west's Pis, kiosks and clocks, and what the test reads of them."""

    def __init__(self, topology, fleet):  # noqa: F811
        self.t, self.fleet = topology, fleet
        self.spec = topology.inventory["kiosk_fleet"]["campuses"][CAMPUS]
        self.lan = cs.Lan(topology.inventory, campuses=[CAMPUS])
        self.services = cs.Services(topology.inventory)
        self.stopped_kiosks, self.stopped_pis, self.masters_only = [], [], []
        self.top_stopped = False

    # time
    def set_clock(self, instant, pis=PIS, synced=True):
        """Put the Pis' clocks at ``instant`` (campus time) now."""
        offset = cs.offset_to(instant)
        for pi_id in pis:
            cs.write_clock(self.t.campus_paths(pi_id)[1], synced=synced, offset_s=offset)

    def step_before(self, instant, pis=PIS):
        """Jump the Pis' clocks to LEAD_S before ``instant``: the instant passes in real time (LEAD_S)."""
        self.set_clock(instant - datetime.timedelta(seconds=LEAD_S), pis=pis)

    # kiosks
    def kiosk_off(self, kiosk):
        self.services.down(kiosk)
        if kiosk not in self.stopped_kiosks:
            self.t.kiosks[kiosk].terminate()
            self.stopped_kiosks.append(kiosk)

    def kiosk_on(self, kiosk):
        self.services.up(kiosk)
        if kiosk in self.stopped_kiosks:
            self.t.kiosks[kiosk].start()
            self.stopped_kiosks.remove(kiosk)

    def mac(self, kiosk):
        import fleet_wol

        return fleet_wol.normalize_mac(self.spec["kiosks"][kiosk]["mac"])

    def source(self, pi_id, kiosk):
        return self.spec["pis"][pi_id]["vlans"][self.spec["kiosks"][kiosk]["vlan"]]["source"]

    def presses(self, kiosk):
        path = pathlib.Path(self.t.power_dir) / f"{kiosk}.presses"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    # Pis
    def outbox(self, pi_id):
        """Every entry of a Pi's outbox not yet acknowledged (read only: nothing is acknowledged here)."""
        path = self.t.campus_paths(pi_id)[0] / "outbox.db"
        if not path.exists():
            return []
        return fleet_outbox.Outbox(str(path)).after(0, limit=5000)["entries"]

    def entries(self, kind, key_part="", pis=PIS):
        return [(pi_id, e) for pi_id in pis for e in self.outbox(pi_id) if e["kind"] == kind and key_part in e["key"]]

    def calendar_serial(self, pi_id):
        path = self.t.campus_paths(pi_id)[0] / "calendar.json"
        return json.loads(path.read_text())["serial"] if path.exists() else None

    def pi_run(self, pi_id, *args, timeout=60):
        """``salt-run <args>`` on a Pi's own master (its campus runtime's runners)."""
        return self.t.pis[pi_id].master.salt_run_cli(timeout=timeout).run(*args)

    def restart_pi(self, pi_id):
        """A whole Pi: its nginx, master, minion (started afresh) and syndic (needs the top master)."""
        self.t.stop_pi(pi_id)
        self.fleet.pis[pi_id].stop()
        self.fleet.pis[pi_id].start()
        self.t.start_pi(pi_id)

    def kill_pi(self, pi_id):
        self.t.stop_pi(pi_id)
        self.fleet.pis[pi_id].stop()
        self.stopped_pis.append(pi_id)
        if pi_id in self.masters_only:
            self.masters_only.remove(pi_id)

    def boot_pi_without_top(self, pi_id):
        """A Pi that boots while the central master is down: its nginx, master and minion (its syndic
        would wait for the top master: started by :meth:`top_back`)."""
        self.fleet.pis[pi_id].start()
        self.t.pis[pi_id].master.start()
        self.t.pis[pi_id].minion.start()
        self.stopped_pis.remove(pi_id)
        self.masters_only.append(pi_id)

    def top_down(self):
        self.t.top.terminate()
        self.top_stopped = True

    def top_back(self):
        self.t.top.start()
        self.top_stopped = False
        for pi_id in self.masters_only:
            self.t.pis[pi_id].start()  # the syndic (its master and minion run already)
        self.masters_only = []
        self.t.wait_answering(list(PIS), timeout=120)

    def close(self):
        self.lan.close()
        self.services.close()


@pytest.fixture(scope="module")
def campus(topology, fleet):  # noqa: F811
    """
    Campus west with its calendar published and its Pis running the campus
    schedule; afterwards: schedule off, clocks back to the host's, calendars
    and outboxes gone, every daemon back and answering.
    """
    west = Campus(topology, fleet)
    published = topology.salt_run("kiosk_calendar.publish", f"campus={CAMPUS}")
    assert published.returncode == 0, published
    for pi_id in PIS:
        cs.write_schedule(topology.master_config(pi_id))
        west.restart_pi(pi_id)
    try:
        yield west
    finally:
        west.close()
        for pi_id in PIS:
            cs.remove_schedule(topology.master_config(pi_id))
            cs.write_clock(topology.campus_paths(pi_id)[1])
        if west.top_stopped:
            topology.top.start()
        for pi_id in west.masters_only:
            topology.pis[pi_id].start()  # its syndic
        for pi_id in list(west.stopped_pis):
            west.fleet.pis[pi_id].start()
            topology.start_pi(pi_id)
        for pi_id in PIS:  # the schedule is read at start: restart without it, and no campus state left
            topology.stop_pi(pi_id)
            fleet.pis[pi_id].stop()
            state_dir = topology.campus_paths(pi_id)[0]
            for name in ("calendar.json", "outbox.db", "outbox.db-wal", "outbox.db-shm"):
                (state_dir / name).unlink(missing_ok=True)
            topology.start_pi(pi_id)
        for kiosk in list(west.stopped_kiosks):
            topology.kiosks[kiosk].start()
        topology.wait_answering(topology.minion_ids, timeout=120)


# --------------------------------------------------------------------------- the calendar


def test_every_pi_holds_the_published_calendar(campus):
    serials = {pi_id: campus.calendar_serial(pi_id) for pi_id in PIS}
    assert None not in serials.values() and len(set(serials.values())) == 1, serials
    asked = campus.t.salt("-L", "kiosk_campus.calendar", tgt=",".join(PIS))
    assert asked.returncode == 0, asked
    assert {pi_id: asked.data[pi_id]["serial"] for pi_id in PIS} == serials


def test_a_bad_signature_is_refused_and_the_last_good_calendar_kept(campus):
    path = campus.t.campus_paths("pi-west-2")[0] / "calendar.json"
    good = path.read_bytes()
    forged = json.loads(good)
    forged["serial"] += 1  # newer, so only the signature can refuse it
    forged["schedule"] = None  # every kiosk unmanaged: what an attacker would like the campus to run
    result = campus.t.salt("kiosk_campus.calendar", f"calendar={json.dumps(forged)}", tgt="pi-west-2")
    assert isinstance(result.data, dict), result
    assert result.data["result"] is False and result.data["stored"] is False, result.data
    assert "signature" in result.data["error"], result.data
    assert path.read_bytes() == good  # the last good copy, untouched


def test_a_pi_holding_an_older_calendar_takes_the_newest_from_a_peer(campus, signing_key):
    import fleet_calendar
    import fleet_state

    newest = campus.calendar_serial("pi-west-1")
    path = campus.t.campus_paths("pi-west-2")[0] / "calendar.json"
    older = json.loads(path.read_text())
    older.pop("signature", None)
    older["serial"] = newest - 1
    older = fleet_calendar.sign(older, pathlib.Path(signing_key[0]).read_text())
    # as if pi-west-2 had missed the last publish: its copy on disk, properly signed, one serial older
    fleet_state.write_json_atomic(str(path), older)
    assert campus.calendar_serial("pi-west-2") == newest - 1
    wait_for("pi-west-2 takes the newer calendar from pi-west-1's status",
             lambda: campus.calendar_serial("pi-west-2") == newest, timeout=6 * cs.PROBE_S + 10)


# --------------------------------------------------------------------------- the day, the top master down


def test_at_opening_every_live_pi_wakes_the_due_kiosk_with_the_central_master_down(campus):
    # both off before the day (a kiosk on before its opening would be shut down: due off)
    campus.kiosk_off(KEPT_OFF)
    campus.kiosk_off(CLOSING)
    campus.set_clock(OPENING - datetime.timedelta(seconds=40))
    time.sleep(2 * cs.RECONCILE_S)  # before opening: the reconcilers see nothing due
    before = campus.lan.drain()
    assert [p for p in before if p[3] == campus.mac(KEPT_OFF)] == [], "woken before its opening"
    campus.top_down()
    began = time.monotonic()
    campus.step_before(OPENING)
    expected = [campus.source(pi_id, KEPT_OFF) for pi_id in PIS]
    senders = campus.lan.wait_senders(campus.mac(KEPT_OFF), expected, since=began, timeout=LEAD_S + SEEN_S)
    assert sorted(senders) == sorted(expected), senders
    closing = campus.lan.wait_senders(campus.mac(CLOSING), expected, since=began, timeout=SEEN_S)
    assert sorted(closing) == sorted(expected), closing
    campus.kiosk_on(CLOSING)  # it did come on; kiosk-west-01 stays off all day
    # each Pi recorded its wake (at the end of its run, a moment after its packets)
    woke = wait_for("a wake action in each Pi's outbox", lambda: (
        lambda got: got if {pi_id for pi_id, _ in got} == set(PIS) else None)(
        campus.entries("action", f"{CAMPUS}/{KEPT_OFF}/wake/{utc_iso(OPENING)}")), timeout=2 * cs.RECONCILE_S)
    assert all(e["data"]["transition"] == utc_iso(OPENING) for _, e in woke), woke


def test_verification_at_plus_5_10_15_and_one_alert_for_the_kiosk_kept_off(campus):
    for minutes in (5, 10, 15):
        campus.step_before(OPENING + datetime.timedelta(minutes=minutes))
        key = f"{CAMPUS}/{KEPT_OFF}/check+{minutes}/"
        wait_for(f"the +{minutes} verification of {KEPT_OFF}", lambda key=key: campus.entries(
            "verification", key), timeout=LEAD_S + SEEN_S)
        time.sleep(cs.RECONCILE_S)  # a second copy, if any, lands now
        found = campus.entries("verification", key)
        assert {pi_id for pi_id, _ in found} == {"pi-west-1"}, found  # the leader verifies, alone
        assert [e["data"]["ok"] for _, e in found] == [False], found
    alerts = wait_for("the mismatch alert", lambda: campus.entries("alert", f"{CAMPUS}/{KEPT_OFF}/mismatch/"))
    time.sleep(2 * cs.RECONCILE_S)  # later runs add no second alert
    alerts = campus.entries("alert", f"{CAMPUS}/{KEPT_OFF}/mismatch/")
    assert len(alerts) == 1 and alerts[0][0] == "pi-west-1", alerts
    assert alerts[0][1]["data"]["kiosk"] == KEPT_OFF and alerts[0][1]["data"]["expected"] == "on"


def test_the_leader_killed_mid_day_the_other_pi_takes_over_within_60_s(campus):
    campus.set_clock(cs.local(CAMPUS_DAY, "12:00:00", TZ))
    time.sleep(LEAD_S)  # the probes catch up with the jump: pi-west-2 sees pi-west-1 alive and leading
    campus.kill_pi("pi-west-1")
    began = time.monotonic()

    def leads():
        ret = campus.pi_run("pi-west-2", "kiosk_campus.status")
        return ret.returncode == 0 and isinstance(ret.data, dict) and ret.data.get("leader_pi") == "pi-west-2"

    wait_for("pi-west-2 leads", leads, timeout=75)
    took = time.monotonic() - began
    print(f"\nleader pi-west-1 killed: pi-west-2 led after {took:.1f} s")
    assert took < 60, took


def test_at_closing_the_new_leader_shuts_the_kiosk_down_once(campus):
    before = len(campus.presses(CLOSING))
    campus.step_before(CLOSES)
    try:
        wait_for(f"{CLOSING} pressed", lambda: len(campus.presses(CLOSING)) > before, timeout=LEAD_S + SEEN_S)
    except AssertionError as exc:  # what the leader's reconciler says it did, for the report
        ran = campus.pi_run("pi-west-2", "kiosk_campus.reconcile")
        raise AssertionError(f"{exc}; pi-west-2 reconcile now: {ran.data}; presses: {campus.presses(CLOSING)}") from None
    # pi-west-1 boots again (the top master still down; its clock file still reads the campus's
    # time) and leads again: the same transition is pressed no second time (the kiosk's record of
    # keys), though the kiosk is still on
    campus.boot_pi_without_top("pi-west-1")

    def pi1_leads():
        ret = campus.pi_run("pi-west-1", "kiosk_campus.status")
        return ret.returncode == 0 and isinstance(ret.data, dict) and ret.data.get("leader_pi") == "pi-west-1"

    wait_for("pi-west-1 leads again", pi1_leads, timeout=75)
    time.sleep(3 * cs.RECONCILE_S)
    new = campus.presses(CLOSING)[before:]
    assert [p[0] for p in new] == ["shutdown"], new
    shutdowns = campus.entries("action", f"{CAMPUS}/{CLOSING}/shutdown/{utc_iso(CLOSES)}")
    assert shutdowns and all(pi_id in PIS for pi_id, _ in shutdowns), shutdowns
    campus.kiosk_off(CLOSING)  # it did shut down


def test_a_pi_restarted_with_a_wrong_unsynchronised_clock_shuts_nothing_down(campus):
    campus.kill_pi("pi-west-2")
    campus.kill_pi("pi-west-1")
    campus.set_clock(cs.local(CAMPUS_DAY, "20:00:00", TZ), pis=["pi-west-1"], synced=False)
    campus.boot_pi_without_top("pi-west-1")  # alone: no peer confirms its clock
    # kiosk-west-01 on at 20:00: due off, a synchronised leader would shut it down. On only now:
    # on while the synchronised pi-west-1 still led (19:0x), it was shut down for the 19:00 closing
    # before kiosk_on returned, and the later shutdown's key (the same closing) was a duplicate.
    # Its minion signs in to the rebooted pi-west-1 as it starts (its start event comes through it).
    campus.kiosk_on(KEPT_OFF)
    before = len(campus.presses(KEPT_OFF))
    alert = wait_for("a clock record of pi-west-1 unsynchronised",
                     lambda: [e for _, e in campus.entries("clock", f"{CAMPUS}/pi-west-1/clock/", pis=["pi-west-1"])
                              if e["data"]["synced"] is False], timeout=SEEN_S)
    assert alert[0]["data"]["pi"] == "pi-west-1", alert
    time.sleep(3 * cs.RECONCILE_S)
    assert campus.presses(KEPT_OFF)[before:] == []
    # the same Pi, its clock synchronised: now it does shut the kiosk down (so the check above could fail)
    campus.set_clock(cs.local(CAMPUS_DAY, "20:00:00", TZ), pis=["pi-west-1"], synced=True)
    wait_for(f"{KEPT_OFF} pressed once the clock is synchronised", lambda: campus.presses(KEPT_OFF)[before:],
             timeout=60)
    campus.kiosk_off(KEPT_OFF)


# --------------------------------------------------------------------------- the top master back


def test_master_back_status_shows_the_campus_day_and_the_alert_is_posted_once(campus):
    for pi_id in list(campus.stopped_pis):
        campus.boot_pi_without_top(pi_id)
    since = len(campus.t.webhook.posts)
    campus.top_back()
    for _ in range(2):  # a second collection finds everything collected: nothing posted twice
        collected = campus.t.salt_run("kiosk_outbox.collect")
        assert collected.returncode == 0, collected
    status = campus.t.salt_run("kiosk_power.status", f"campus={CAMPUS}")
    assert status.returncode == 0, status
    day = json.dumps(status.data)
    for needle in (f"{CAMPUS}/{KEPT_OFF}/wake/{utc_iso(OPENING)}", f"{CAMPUS}/{CLOSING}/shutdown/{utc_iso(CLOSES)}",
                   f"{CAMPUS}/{KEPT_OFF}/mismatch/{utc_iso(OPENING)}"):
        assert needle in day, (needle, status.data)
    # the opening's mismatch: raised on the campus while the top master was down, posted once
    key = f"{CAMPUS}/{KEPT_OFF}/mismatch/{utc_iso(OPENING)}"
    posts = [p["json"] for p in campus.t.webhook.posts[since:] if p.get("json", {}).get("idempotency_key") == key]
    assert len(posts) == 1, [p.get("json") for p in campus.t.webhook.posts[since:]]
    assert posts[0]["kind"] == "power_mismatch" and posts[0]["kiosk"] == KEPT_OFF, posts
