"""
The campus runtime's pure decisions (``fleet_campus``): settings, signed peer
statuses (real RSA campus keys), freshness, the leader (and a split campus,
and failover within 60 s), clock safety, the engine under the gate,
transition keys and the outbox entries of a run.
"""

import copy
import datetime as dt

import pytest

import fleet_campus
import fleet_clock
import fleet_inventory
import fleet_keys
import fleet_outbox
import fleet_schedule
import fleet_sweep
from fleet_campus import CampusError
from tests.support.topology import two_campus_inventory

SH = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2027, 3, 1, 8, 30, tzinfo=SH)  # a Monday, 08:30 Shanghai
EAST = {"campuses": {"east": fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
                     ["campuses"]["east"]}}
SCHEDULE = fleet_schedule.load({"campuses": {"east": {
    "default": "off", "rules": [{"name": "hours", "weekly": {"daily": ["08:00-20:00"]}}],
    "kiosks": {"kiosk-east-02": [{"name": "late", "weekly": {"daily": ["09:00-20:00"]}}]}}}}, EAST)
PRIVATE, PUBLIC = fleet_keys.new_master_key_pair()
OTHER_PRIVATE, OTHER_PUBLIC = fleet_keys.new_master_key_pair()
SYNCED = {"synced": True, "offset_s": 0.0, "source": "file"}
UNSYNCED = {"synced": False, "offset_s": 0.0, "source": "file"}


def status(pi, at, synced=True, sees=None, serial=7, campus="east", key=PRIVATE):
    doc = fleet_campus.build_status(campus, pi, at, serial, {"synced": synced}, sees or {}, None)
    return fleet_campus.sign_status(doc, key)


def peers(*docs, fetched_at=None):
    return {d["pi"]: fleet_campus.peer_record(fetched_at or d["at"], status=d) for d in docs}


# ---------------------------------------------------------------- settings


def test_settings_fill_defaults_and_need_campus_pi_and_keys():
    conf = fleet_campus.settings({"campus": "east", "pi": "pi-east-1", "verify_key": "PEM"})
    assert conf["stale_s"] == 30 and conf["probe_timeout_s"] == 2 and conf["verify_key"] == ["PEM"]
    assert conf["clock_file"] is None and conf["dir"].startswith("/")
    # a failover within 60 s needs stale_s + the probe interval (20 s) <= 60
    assert conf["stale_s"] + 20 <= 60


@pytest.mark.parametrize("conf, field", [
    ({"pi": "pi-east-1", "verify_key": "k"}, "kiosk_campus:campus"),
    ({"campus": "east", "pi": "a b", "verify_key": "k"}, "kiosk_campus:pi"),
    ({"campus": "east", "pi": "p", "verify_key": []}, "kiosk_campus:verify_key"),
    ({"campus": "east", "pi": "p", "verify_key": "k", "dir": "relative/dir"}, "kiosk_campus:dir"),
    ({"campus": "east", "pi": "p", "verify_key": "k", "stale_s": 0}, "kiosk_campus:stale_s"),
    ({"campus": "east", "pi": "p", "verify_key": "k", "stale_s": True}, "kiosk_campus:stale_s"),
    ({"campus": "east", "pi": "p", "verify_key": "k", "wake_repeat": 2.5}, "kiosk_campus:wake_repeat"),
    ({"campus": "east", "pi": "p", "verify_key": "k", "probe_timeout_s": float("nan")}, "kiosk_campus:probe_timeout_s"),
])
def test_bad_settings_are_named(conf, field):
    with pytest.raises(CampusError) as info:
        fleet_campus.settings(conf)
    assert str(info.value).startswith(field + ": ")


# ---------------------------------------------------------------- statuses: signed with the campus master key


def test_a_signed_status_verifies_and_round_trips():
    doc = status("pi-east-2", T0, sees={"pi-east-1": {"at": "2027-03-01T00:29:55Z", "synced": True}})
    assert fleet_campus.verify_status(doc, PUBLIC, "east", "pi-east-2") is doc
    assert doc["signature"]["alg"] == "rsa-pss-sha256" and doc["at"] == "2027-03-01T00:30:00Z"


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("signature"), "status.signature"),
    (lambda d: d.update(serial=99), "status.signature"),  # tampered after signing
    (lambda d: d["clock"].update(synced=False), "status.signature"),
    (lambda d: d.update(signature={"alg": "rsa-pss-sha256", "value": "!!"}), "status.signature"),
])
def test_a_tampered_or_unsigned_status_is_refused(change, field):
    doc = copy.deepcopy(status("pi-east-2", T0))
    change(doc)
    with pytest.raises(CampusError) as info:
        fleet_campus.verify_status(doc, PUBLIC, "east", "pi-east-2")
    assert str(info.value).startswith(field)


def test_a_status_signed_by_another_key_campus_or_pi_is_refused():
    with pytest.raises(CampusError, match="^status.signature"):
        fleet_campus.verify_status(status("pi-east-2", T0, key=OTHER_PRIVATE), PUBLIC, "east")
    with pytest.raises(CampusError, match="^status.campus"):
        fleet_campus.verify_status(status("pi-west-1", T0, campus="west"), PUBLIC, "east")
    with pytest.raises(CampusError, match="^status.pi"):  # pi-east-1's address answering with pi-east-2's status
        fleet_campus.verify_status(status("pi-east-2", T0), PUBLIC, "east", "pi-east-1")
    with pytest.raises(CampusError, match="^master.pub"):
        fleet_campus.verify_status(status("pi-east-2", T0), PRIVATE, "east")


def test_no_key_material_in_errors():
    with pytest.raises(CampusError) as info:
        fleet_campus.sign_status(fleet_campus.build_status("east", "pi-east-1", T0, 1, SYNCED, {}, None),
                                 PRIVATE[:200])
    assert b"PRIVATE" not in str(info.value).encode() and PRIVATE[40:80].decode() not in str(info.value)


def test_freshness_by_the_status_own_at():
    assert fleet_campus.fresh("2027-03-01T00:30:00Z", T0 + dt.timedelta(seconds=40), 40)
    assert not fleet_campus.fresh("2027-03-01T00:30:00Z", T0 + dt.timedelta(seconds=41), 40)
    assert not fleet_campus.fresh("2027-03-01T00:30:00Z", T0 - dt.timedelta(seconds=41), 40)  # from the future
    assert not fleet_campus.fresh("yesterday", T0, 40)


# ---------------------------------------------------------------- leader


def test_the_lowest_live_pi_leads_and_synced_clocks_first():
    p2, p3 = status("pi-east-2", T0), status("pi-east-3", T0)
    view = fleet_campus.live("pi-east-3", SYNCED, peers(p2), T0, 40)
    assert fleet_campus.leader(view) == "pi-east-2"
    view = fleet_campus.live("pi-east-2", SYNCED, peers(p3), T0, 40)
    assert sorted(view) == ["pi-east-2", "pi-east-3"] and fleet_campus.leader(view) == "pi-east-2"
    # pi-east-1 is up but its clock is not synchronised: it could not shut anything down
    p1 = status("pi-east-1", T0, synced=False)
    view = fleet_campus.live("pi-east-3", SYNCED, peers(p1, p2), T0, 40)
    assert fleet_campus.leader(view) == "pi-east-2"
    # nobody synchronised: the lowest id still leads (verification, alerts; no shutdowns: the gate)
    view = fleet_campus.live("pi-east-3", UNSYNCED, peers(status("pi-east-1", T0, synced=False)), T0, 40)
    assert fleet_campus.leader(view) == "pi-east-1"


def test_a_pi_not_of_the_calendar_never_leads():
    view = fleet_campus.live("pi-east-2", SYNCED, peers(status("pi-east-0", T0)), T0, 40)
    assert fleet_campus.leader(view, ["pi-east-1", "pi-east-2"]) == "pi-east-2"


def test_leadership_moves_within_60_s_of_the_leader_death():
    # pi-east-1 probes every 20 s; it dies right after its status of T0
    last = status("pi-east-1", T0)
    probe_interval = 20
    moved = None
    for second in range(0, 120, probe_interval):  # pi-east-2's probes after the death
        now = T0 + dt.timedelta(seconds=second)
        view = fleet_campus.live("pi-east-2", SYNCED, peers(last, fetched_at=T0), now,
                                 fleet_campus.SETTINGS["stale_s"][0])
        if fleet_campus.leader(view) == "pi-east-2":
            moved = second
            break
    # with the default stale_s, seen at the first probe after it is stale: within 50 s
    assert moved is not None and moved <= 50


def test_a_step_of_this_pi_clock_neither_revives_nor_kills_a_peer():
    fetched = T0 - dt.timedelta(seconds=3)
    record = fleet_campus.peer_record(fetched, status=status("pi-east-1", T0 - dt.timedelta(seconds=8)), mono=1000.0)
    # 10 s later on the boot-time clock, whatever the wall clock says now
    for now in (T0 + dt.timedelta(seconds=7), T0 + dt.timedelta(hours=3), T0 - dt.timedelta(days=30)):
        assert fleet_campus.status_age(record, record["status"], now, 1010.0) == 15.0
        view = fleet_campus.live("pi-east-2", SYNCED, {"pi-east-1": record}, now, 40, mono_now=1010.0)
        assert fleet_campus.leader(view) == "pi-east-1"
    # 40 s later: 45 s old, stale, even if the wall clock stepped back
    stale = fleet_campus.live("pi-east-2", SYNCED, {"pi-east-1": record}, T0 - dt.timedelta(hours=1), 40, 1040.0)
    assert list(stale) == ["pi-east-2"]
    # the host rebooted since the fetch (the boot-time clock restarted): unknown, so not live
    assert fleet_campus.status_age(record, record["status"], T0, 12.0) is None
    # a lost fetch keeps the last good status and its fetch times
    kept = fleet_campus.failed_record(record, T0, "connection refused")
    assert kept["status"] == record["status"] and kept["fetched_mono"] == 1000.0 and kept["error"]
    assert "status" not in fleet_campus.failed_record(None, T0, "refused")


def test_one_hop_a_pi_the_others_reach_still_leads():
    # pi-east-3 cannot reach pi-east-1, but pi-east-2 can and says so in its signed status
    p2 = status("pi-east-2", T0, sees={"pi-east-1": {"at": "2027-03-01T00:29:50Z", "synced": True}})
    view = fleet_campus.live("pi-east-3", SYNCED, peers(p2), T0, 40)
    assert view["pi-east-1"]["via"] == "pi-east-2" and fleet_campus.leader(view) == "pi-east-1"
    # what pi-east-2 saw of pi-east-1 goes stale too: no dead leader kept alive second-hand
    later = T0 + dt.timedelta(seconds=45)
    p2_later = status("pi-east-2", later, sees={"pi-east-1": {"at": "2027-03-01T00:29:50Z", "synced": True}})
    view = fleet_campus.live("pi-east-3", SYNCED, peers(p2_later), later, 40)
    assert "pi-east-1" not in view and fleet_campus.leader(view) == "pi-east-2"


def test_a_split_campus_has_one_leader_per_side():
    p1, p2, p3, p4 = (status(f"pi-east-{n}", T0) for n in range(1, 5))
    side_a = {me: fleet_campus.leader(fleet_campus.live(me, SYNCED, peers(*[p for p in (p1, p2) if p["pi"] != me]),
                                                        T0, 40)) for me in ("pi-east-1", "pi-east-2")}
    side_b = {me: fleet_campus.leader(fleet_campus.live(me, SYNCED, peers(*[p for p in (p3, p4) if p["pi"] != me]),
                                                        T0, 40)) for me in ("pi-east-3", "pi-east-4")}
    assert set(side_a.values()) == {"pi-east-1"} and set(side_b.values()) == {"pi-east-3"}
    # both leaders shut a kiosk down under ONE key: the kiosk presses once (kiosk_power), the alert posts once
    key_a = fleet_campus.shutdown_jobs("east", {"kiosk-east-01": "2027-03-01T12:00:00Z"})
    key_b = fleet_campus.shutdown_jobs("east", {"kiosk-east-01": "2027-03-01T12:00:00Z"})
    assert key_a == key_b == {"east/{id}/shutdown/2027-03-01T12:00:00Z": ["kiosk-east-01"]}


# ---------------------------------------------------------------- clock safety


def test_peer_clocks_confirm_an_unsynchronised_clock():
    fetched = T0 - dt.timedelta(seconds=10)
    p2 = status("pi-east-2", fetched)  # its clock agreed with ours when we fetched it
    readings = fleet_campus.peer_clocks(peers(p2, fetched_at=fetched), T0, 40)
    assert readings == [{"pi": "pi-east-2", "at": "2027-03-01T00:30:00Z", "synced": True}]
    assert fleet_clock.confirmed(T0, readings, 5) == ["pi-east-2"]
    # our clock is an hour off: the peer's reading does not confirm it
    wrong = T0 + dt.timedelta(hours=1)
    assert fleet_clock.confirmed(wrong, fleet_campus.peer_clocks(peers(p2, fetched_at=wrong - dt.timedelta(seconds=10)),
                                                                 wrong, 40), 5) == []
    # an unsynchronised peer confirms nothing
    p3 = status("pi-east-3", fetched, synced=False)
    assert fleet_clock.confirmed(T0, fleet_campus.peer_clocks(peers(p3, fetched_at=fetched), T0, 40), 5) == []


def test_a_status_fetched_a_probe_interval_after_it_was_written_still_confirms():
    # the peer wrote its status at T0; this Pi, its clock right, fetched it 15 s later (probes are
    # 20 s apart with independent phases) and reconciles 1 s after the fetch
    written = status("pi-east-2", T0)
    record = {"pi-east-2": fleet_campus.peer_record(T0 + dt.timedelta(seconds=15), status=written, mono=1000.0)}
    now = T0 + dt.timedelta(seconds=16)
    readings = fleet_campus.peer_clocks(record, now, 40, mono_now=1001.0, max_age_s=22)
    assert fleet_clock.confirmed(now, readings, 5) == ["pi-east-2"]
    # a status older than a probe interval (+ tolerance) when fetched, or "written" after this Pi's
    # clock read the fetch, says this clock is off: no confirmation
    for fetched in (T0 + dt.timedelta(seconds=30), T0 - dt.timedelta(seconds=8), T0 + dt.timedelta(hours=1)):
        record = {"pi-east-2": fleet_campus.peer_record(fetched, status=written, mono=1000.0)}
        later = fetched + dt.timedelta(seconds=1)
        assert fleet_clock.confirmed(later, fleet_campus.peer_clocks(record, later, 40, mono_now=1001.0,
                                                                     max_age_s=22), 5) == [], fetched


def test_the_gate_never_shuts_down_on_an_unsynchronised_clock():
    assert fleet_campus.gate(SYNCED, [], True, "pi-east-1") == {
        "wake": True, "shutdown": True, "verify": True, "report": True, "no_wake": None, "no_shutdown": None}
    follower = fleet_campus.gate(SYNCED, [], False, "pi-east-1")
    assert follower["wake"] and not follower["shutdown"] and not follower["report"]
    assert "pi-east-1 leads" in follower["no_shutdown"]
    confirmed = fleet_campus.gate(UNSYNCED, ["pi-east-2"], True, "pi-east-1")
    assert confirmed["wake"] and not confirmed["shutdown"] and "clock not synchronised" in confirmed["no_shutdown"]
    alone = fleet_campus.gate(UNSYNCED, [], True, "pi-east-1")
    assert not alone["wake"] and not alone["shutdown"] and not alone["verify"]


# ---------------------------------------------------------------- a run: the engine under the gate


def observed(**states):
    return {k: {"state": s, "seen_by": {"pi-east-1": "open" if s == "on" else "closed"}, "minion": s != "off"}
            for k, s in states.items()}


def test_every_live_pi_wakes_and_only_the_leader_shuts_down():
    now = T0 + dt.timedelta(hours=12)  # 20:30: both due off
    view = fleet_sweep.expect(EAST, SCHEDULE, {}, T0)  # 08:30: east-01 due on, east-02 due off (09:00)
    seen = observed(**{"kiosk-east-01": "off", "kiosk-east-02": "on"})
    leader_run = fleet_campus.decide(view, seen, {}, fleet_campus.gate(SYNCED, [], True, "pi-east-1"))
    follower = fleet_campus.decide(view, seen, {}, fleet_campus.gate(SYNCED, [], False, "pi-east-1"))
    assert leader_run["wake"] == follower["wake"] == {"east": ["kiosk-east-01"]}
    assert leader_run["shutdown"] == {"east": ["kiosk-east-02"]} and follower["shutdown"] == {}
    assert follower["withheld"] == {"wake": [], "shutdown": ["kiosk-east-02"]}
    assert sorted(follower["checks"]) == ["kiosk-east-01"]
    # at 20:30 with an unsynchronised, unconfirmed clock: nothing from the calendar at all
    late = fleet_sweep.expect(EAST, SCHEDULE, {}, now)
    lost = fleet_campus.decide(late, observed(**{"kiosk-east-01": "on", "kiosk-east-02": "on"}), {},
                               fleet_campus.gate(UNSYNCED, [], True, "pi-east-1"))
    assert lost["shutdown"] == {} and lost["wake"] == {} and lost["withheld"]["shutdown"] == ["kiosk-east-01", "kiosk-east-02"]
    assert "clock not synchronised" in lost["nothing"]["kiosk-east-01"]


def test_a_pi_booting_at_07_20_brings_the_campus_to_now():
    # a power cut from 06:00 to 09:40: the opening instants passed while the Pi was down
    boot = dt.datetime(2027, 3, 1, 9, 40, tzinfo=SH)
    view = fleet_sweep.expect(EAST, SCHEDULE, {}, boot)
    run = fleet_campus.decide(view, observed(**{"kiosk-east-01": "off", "kiosk-east-02": "off"}), {},
                              fleet_campus.gate(SYNCED, [], True, "pi-east-1"))
    assert run["wake"] == {"east": ["kiosk-east-01", "kiosk-east-02"]}
    keys = {k: fleet_campus.transition(SCHEDULE, view, k, boot, "Asia/Shanghai") for k in run["checks"]}
    assert keys == {"kiosk-east-01": "2027-03-01T00:00:00Z", "kiosk-east-02": "2027-03-01T01:00:00Z"}


def test_transition_keys_are_the_same_on_every_pi_and_every_minute():
    a = fleet_sweep.expect(EAST, SCHEDULE, {}, T0)
    b = fleet_sweep.expect(EAST, SCHEDULE, {}, T0 + dt.timedelta(minutes=7))
    assert (fleet_campus.transition(SCHEDULE, a, "kiosk-east-01", T0, "Asia/Shanghai")
            == fleet_campus.transition(SCHEDULE, b, "kiosk-east-01", T0 + dt.timedelta(minutes=7), "Asia/Shanghai")
            == "2027-03-01T00:00:00Z")
    hold = fleet_sweep.make_hold(EAST, "kiosk-east-02", "on", T0 + dt.timedelta(hours=2), "ward move",
                                 T0 - dt.timedelta(minutes=3))
    held = fleet_sweep.expect(EAST, SCHEDULE, {"kiosk-east-02": hold}, T0)
    assert fleet_campus.transition(SCHEDULE, held, "kiosk-east-02", T0, "Asia/Shanghai") == hold["set_at"]
    # a standing state (24/7: no transition in 8 days) is keyed by the campus day
    always = fleet_schedule.load({"campuses": {"east": {"rules": [{"name": "always", "always": "on"}]}}}, EAST)
    view = fleet_sweep.expect(EAST, always, {}, T0)
    assert fleet_campus.transition(always, view, "kiosk-east-01", T0, "Asia/Shanghai") == "2027-03-01"


# ---------------------------------------------------------------- outbox entries


def run_entries(leads, clock=SYNCED, confirmed_by=(), previous_leader="pi-east-1", found=None, pending=None,
                previous_observed=None):
    allowed = fleet_campus.gate(clock, confirmed_by, leads, "pi-east-1")
    seen = observed(**{"kiosk-east-01": "on", "kiosk-east-02": "off"})
    return fleet_campus.entries(
        "east", "pi-east-1" if leads else "pi-east-2", T0,
        {"woken": ["kiosk-east-01"], "shut_down": [], "results": {"kiosk-east-01": "sent"}},
        found, pending or {}, {"kiosk-east-01": "2027-03-01T00:00:00Z"}, seen, {"kiosk-east-01": "off"} if previous_observed is None else previous_observed,
        {"kiosk-east-01": "on", "kiosk-east-02": "off"}, allowed, clock, list(confirmed_by), "pi-east-1",
        {"pi-east-1": {}, "pi-east-2": {}}, previous_leader)


def test_two_pis_write_the_same_action_key():
    a = [e for e in run_entries(True) if e[0] == "action"]
    b = [e for e in run_entries(False) if e[0] == "action"]
    assert [e[1] for e in a] == [e[1] for e in b] == ["east/kiosk-east-01/wake/2027-03-01T00:00:00Z"]
    assert a[0][2]["pi"] == "pi-east-1" and b[0][2]["pi"] == "pi-east-2"


def test_observations_only_on_change_and_leader_view_on_change():
    kinds = [(e[0], e[1]) for e in run_entries(True)]
    assert ("observation", "east/kiosk-east-02/observed/2027-03-01T00:30:00Z") in kinds  # first sight
    assert ("observation", "east/kiosk-east-01/observed/2027-03-01T00:30:00Z") in kinds  # off -> on
    same = run_entries(True, previous_observed={"kiosk-east-01": "on", "kiosk-east-02": "off"})
    assert not [e for e in same if e[0] == "observation"]
    assert not any(k == "leader" for k, _ in kinds)
    assert ("leader", "east/pi-east-1/leader/2027-03-01T00:30:00Z") in [
        (e[0], e[1]) for e in run_entries(True, previous_leader="pi-east-0")]


def test_verification_and_alerts_come_from_the_leader_only():
    since = "2027-03-01T00:00:00Z"
    pending = {"kiosk-east-02": {"kiosk": "kiosk-east-02", "campus": "east", "expected": "on", "since": since,
                                 "checks": fleet_sweep.check_times(since), "done": [],
                                 "transition": "2027-02-28T23:59:00Z"}}
    found = fleet_sweep.verify_due(fleet_sweep.load_state({"pending": pending}), {"east": ["kiosk-east-02"]},
                                   observed(**{"kiosk-east-02": "off"}), T0)
    assert found["mismatches"] and found["mismatches"][0]["kiosk"] == "kiosk-east-02"
    lead = run_entries(True, found=found, pending=pending)
    kinds = {e[0]: e for e in lead}
    assert kinds["verification"][1] == "east/kiosk-east-02/check+15/2027-02-28T23:59:00Z"
    assert kinds["alert"][1] == kinds["alert"][2]["idempotency_key"] == "east/kiosk-east-02/mismatch/2027-02-28T23:59:00Z"
    assert kinds["alert"][2]["kind"] == "power_mismatch" and kinds["alert"][2]["severity"] == "warning"
    follow = run_entries(False, found=found, pending=pending)
    assert not [e for e in follow if e[0] in ("verification", "alert")]
    for kind, key, data, _at in lead:  # every entry is what the outbox takes
        assert fleet_outbox.check_kind(kind) == kind and fleet_outbox.check_key(key) == key
        assert data["campus"] == "east" and data["pi"] == "pi-east-1"


def test_an_unsynchronised_clock_leaves_one_clock_entry_a_day():
    entries = run_entries(True, clock=UNSYNCED)
    clock = [e for e in entries if e[0] == "clock"]
    assert [e[1] for e in clock] == ["east/pi-east-1/clock/2027-03-01"]
    assert clock[0][2]["synced"] is False and "no shutdowns" in clock[0][2]["summary"]
    assert not [e for e in entries if e[0] in ("verification", "alert")]
    assert not [e for e in run_entries(True) if e[0] == "clock"]


def test_metrics_say_leader_and_clock():
    families = fleet_campus.metrics("east", "pi-east-1", {"result": True, "leader": True, "live": ["a", "b"],
                                                          "clock": {"synced": False, "confirmed_by": []},
                                                          "withheld": {"wake": [], "shutdown": ["k"]},
                                                          "observed": {"k": "on"}, "woke": [], "shut_down": []}, 1.0)
    byname = {f[0]: f[3] for f in families}
    assert byname["kiosk_campus_leader"][0][1] is True and byname["kiosk_campus_clock_synced"][0][1] is False
    assert ({"campus": "east", "pi": "pi-east-1", "action": "shutdown"}, 1) in byname["kiosk_campus_withheld"]


# ---------------------------------------------------------------- on time: the tick


def test_a_transition_before_the_next_tick_is_slept_until_then_reconciled():
    before = dt.datetime(2027, 3, 1, 7, 59, 57, tzinfo=SH)
    nxt = fleet_campus.next_minute(before)
    assert nxt == dt.datetime(2027, 3, 1, 8, 0, tzinfo=SH)
    now_map = fleet_campus.expected_map(fleet_sweep.expect(EAST, SCHEDULE, {}, before))
    next_map = fleet_campus.expected_map(fleet_sweep.expect(EAST, SCHEDULE, {}, nxt))
    assert now_map["kiosk-east-01"] == "off" and next_map["kiosk-east-01"] == "on"
    plan = fleet_campus.tick_plan(now_map, next_map, now_map, "2027-02-28T23:59:30Z", before, nxt, 5, 60)
    assert plan == {"sleep": 3.0, "run": True, "why": "a transition at 2027-03-01T00:00:00Z"}
    # the same transition 20 s ahead: not this tick's (the next ones will sleep for it)
    early = before - dt.timedelta(seconds=17)
    plan = fleet_campus.tick_plan(now_map, next_map, now_map, "2027-02-28T23:59:30Z", early, nxt, 5, 60)
    assert plan["run"] is False and plan["sleep"] == 0


def test_the_tick_reconciles_on_change_on_age_and_at_first():
    at = T0
    same = {"kiosk-east-01": "on", "kiosk-east-02": "off"}
    nxt = fleet_campus.next_minute(at)
    recent = fleet_campus.iso(at - dt.timedelta(seconds=20))
    assert fleet_campus.tick_plan(same, same, same, recent, at, nxt, 5, 60)["run"] is False
    assert fleet_campus.tick_plan(same, same, None, None, at, nxt, 5, 60)["why"] == "no reconcile yet"
    held = dict(same, **{"kiosk-east-02": "on"})  # a hold arrived with a new calendar
    assert fleet_campus.tick_plan(held, held, same, recent, at, nxt, 5, 60)["why"] == "the expected states changed"
    old = fleet_campus.iso(at - dt.timedelta(seconds=61))
    assert fleet_campus.tick_plan(same, same, same, old, at, nxt, 5, 60)["why"] == "the last reconcile is 61 s old"


def test_the_tick_reconciles_at_once_when_the_leader_changed():
    # the leader died 20 s after the last reconcile: the new leader acts at its next tick,
    # not up to a minute later (a closing instant in between would wait that long)
    same = {"kiosk-east-01": "off", "kiosk-east-02": "off"}
    nxt = fleet_campus.next_minute(T0)
    recent = fleet_campus.iso(T0 - dt.timedelta(seconds=20))
    plan = fleet_campus.tick_plan(same, same, same, recent, T0, nxt, 5, 60,
                                  leader_now="pi-east-2", leader_before="pi-east-1")
    assert plan == {"sleep": 0, "run": True, "why": "the leader changed (pi-east-1 -> pi-east-2)"}
    assert fleet_campus.tick_plan(same, same, same, recent, T0, nxt, 5, 60,
                                  leader_now="pi-east-1", leader_before="pi-east-1")["run"] is False


def test_kiosks_newly_due_on_are_woken_before_the_scan():
    assert fleet_campus.newly_due_on({"a": "on", "b": "off", "c": "on"}, {"a": "off", "b": "off", "c": "on"}) == ["a"]
    assert fleet_campus.newly_due_on({"a": "on", "b": "unmanaged"}, None) == ["a"]  # a Pi back from a power cut


# ---------------------------------------------------------------- hostile peers


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                       lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                       max_leaves=20)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["kind", "campus", "pi", "at", "serial", "clock", "sees", "leader",
                                        "signature", "x"]), JSONISH, max_size=9))
def test_whatever_a_peer_serves_is_a_valid_status_or_a_named_refusal(doc):
    try:
        fleet_campus.verify_status(doc, PUBLIC, "east")
    except CampusError as exc:
        assert str(exc).split(":")[0] in ("status", "status.signature", "master.pub")
    else:  # pragma: no cover - a random document never carries a valid signature
        pytest.fail("an unsigned document verified")
    # and a damaged peers.json holding it never crashes the view: what is no status counts as no peer
    record = {"fetched_at": "2027-03-01T00:30:00Z", "status": doc}
    view = fleet_campus.live("pi-east-1", SYNCED, {"pi-east-2": record}, T0, 40)
    assert "pi-east-1" in view and fleet_campus.leader(view) is not None
    assert isinstance(fleet_campus.peer_clocks({"pi-east-2": record}, T0, 40), list)
    fleet_campus.newest_calendar({"pi-east-2": record}, 1, T0, 40)


def test_a_pi_that_has_not_probed_its_peers_yet_is_no_leader():
    pis = ["pi-east-1", "pi-east-2"]
    assert not fleet_campus.view_ready({}, "pi-east-1", pis, 100.0, 40)  # just started: no probe yet
    assert fleet_campus.view_ready({"probed_mono": 90.0}, "pi-east-1", pis, 100.0, 40)
    assert not fleet_campus.view_ready({"probed_mono": 50.0}, "pi-east-1", pis, 100.0, 40)  # probes stopped
    assert not fleet_campus.view_ready({"probed_mono": 500.0}, "pi-east-1", pis, 100.0, 40)  # before a reboot
    assert fleet_campus.view_ready({}, "pi-east-1", ["pi-east-1"], None, 40)  # alone in its campus: nobody to wait for
    unknown = fleet_campus.gate(SYNCED, [], False, None)
    assert unknown["wake"] and not unknown["shutdown"] and "no view of the peer Pis" in unknown["no_shutdown"]


# ---------------------------------------------------------------- keys after holds and new calendars

WEEKDAYS = fleet_schedule.load({"campuses": {"east": {
    "default": "off", "rules": [{"name": "hours", "weekly": {"mon-fri": ["08:00-20:00"]}}]}}}, EAST)


def day_of_runs(steps, kiosk="kiosk-east-01"):
    """
    The keys one Pi names for ``kiosk`` over reconciler runs ``[(at, schedule,
    holds, serial, signed_at)]``, carrying the reconciler's memory between runs.
    """
    memory, keys = None, []
    for at, schedule, holds, serial, signed_at in steps:
        view = fleet_sweep.expect(EAST, schedule, holds, at)
        memory = fleet_campus.remember(schedule, view, at, memory,
                                       {"serial": serial, "signed_at": int(signed_at.timestamp()), "holds": holds})
        keys.append((view["expected"][kiosk]["state"],
                     fleet_campus.transition(schedule, view, kiosk, at, "Asia/Shanghai", memory)))
    return keys


def test_the_state_after_a_hold_ends_gets_a_key_of_its_own():
    # Friday 20:00 the leader shuts the kiosk down; Saturday 10:00-22:00 an operator holds it on;
    # after 22:00 it is due off again: a new key, not Friday's the kiosk already pressed
    fri = dt.datetime(2027, 3, 5, 20, 1, tzinfo=SH)
    sat = dt.datetime(2027, 3, 6, 10, 0, tzinfo=SH)
    hold = fleet_sweep.make_hold(EAST, "kiosk-east-01", "on", dt.datetime(2027, 3, 6, 22, 0, tzinfo=SH), "event", sat)
    steps = [(fri, WEEKDAYS, {}, 1, fri),
             (sat + dt.timedelta(minutes=1), WEEKDAYS, {"kiosk-east-01": hold}, 2, sat),
             (dt.datetime(2027, 3, 6, 21, 59, tzinfo=SH), WEEKDAYS, {"kiosk-east-01": hold}, 2, sat),
             # the top master's next calendar leaves the ended hold out
             (dt.datetime(2027, 3, 6, 22, 1, tzinfo=SH), WEEKDAYS, {}, 3, dt.datetime(2027, 3, 6, 22, 0, 30, tzinfo=SH))]
    keys = day_of_runs(steps)
    assert keys[0] == ("off", "2027-03-05T12:00:00Z")
    assert keys[1] == ("on", hold["set_at"])
    assert keys[3] == ("off", "2027-03-06T14:00:00Z")  # the hold's end
    # a Pi that saw the same calendars names the same key, minute after minute
    later = steps + [(dt.datetime(2027, 3, 6, 23, 30, tzinfo=SH), WEEKDAYS, {}, 3, steps[-1][4])]
    assert day_of_runs(later)[3:] == [keys[3], ("off", "2027-03-06T14:00:00Z")]


def test_a_hold_withdrawn_early_ends_with_the_calendar_that_withdrew_it():
    fri = dt.datetime(2027, 3, 5, 20, 1, tzinfo=SH)
    sat = dt.datetime(2027, 3, 6, 10, 0, tzinfo=SH)
    hold = fleet_sweep.make_hold(EAST, "kiosk-east-01", "on", dt.datetime(2027, 3, 6, 22, 0, tzinfo=SH), "event", sat)
    unhold = dt.datetime(2027, 3, 6, 15, 0, tzinfo=SH)
    keys = day_of_runs([(fri, WEEKDAYS, {}, 1, fri),
                        (sat + dt.timedelta(minutes=1), WEEKDAYS, {"kiosk-east-01": hold}, 2, sat),
                        (unhold + dt.timedelta(seconds=40), WEEKDAYS, {}, 3, unhold),
                        # the hold's own end passes later: nothing changes then
                        (dt.datetime(2027, 3, 6, 22, 5, tzinfo=SH), WEEKDAYS, {}, 3, unhold)])
    assert keys[2] == ("off", "2027-03-06T07:00:00Z") == keys[3]


def test_a_closure_published_mid_day_gets_the_calendar_key_not_yesterday_s():
    closed = fleet_schedule.load({"campuses": {"east": {"default": "off", "rules": [
        {"name": "hours", "weekly": {"daily": ["08:00-20:00"]}},
        {"name": "closure", "dates": ["2027-03-08", "2027-03-08"], "always": "off"}]}}}, EAST)
    sun = dt.datetime(2027, 3, 7, 20, 1, tzinfo=SH)
    published = dt.datetime(2027, 3, 8, 11, 0, tzinfo=SH)
    steps = [(sun, SCHEDULE, {}, 1, sun),
             (dt.datetime(2027, 3, 8, 8, 1, tzinfo=SH), SCHEDULE, {}, 1, sun),
             (published + dt.timedelta(seconds=20), closed, {}, 2, published),
             (published + dt.timedelta(minutes=9), closed, {}, 2, published)]
    keys = day_of_runs(steps)
    assert keys[0] == ("off", "2027-03-07T12:00:00Z")
    assert keys[1] == ("on", "2027-03-08T00:00:00Z")
    # due off since the new calendar: its signed_at, the same minute after minute
    assert keys[2] == keys[3] == ("off", "2027-03-08T03:00:00Z")
    # a schedule change that keeps the state (a closure on a day already off) moves no key
    quiet = day_of_runs([(sun, SCHEDULE, {}, 1, sun), (sun + dt.timedelta(hours=1), closed, {}, 2, sun)])
    assert quiet[1] == ("off", "2027-03-07T12:00:00Z")


@pytest.mark.parametrize("clock,confirmed,leads", [
    (SYNCED, [], True), (SYNCED, [], False), (UNSYNCED, ["pi-east-2"], True), (UNSYNCED, [], True)])
def test_decide_keeps_the_checks_of_exactly_the_kiosks_it_acts_on(clock, confirmed, leads):
    # the checks filter (a set of the acting kiosks) keeps what the per-kiosk list search kept, in order
    view = fleet_sweep.expect(EAST, SCHEDULE, {}, T0)  # east-01 due on, east-02 due off
    seen = observed(**{"kiosk-east-01": "off", "kiosk-east-02": "on"})
    allowed = fleet_campus.gate(clock, confirmed, leads, "pi-east-1")
    run = fleet_campus.decide(view, seen, {}, allowed)
    engine = fleet_sweep.sweep(view, seen, {})
    acting = [k for part in ("wake", "shutdown") for ids in run[part].values() for k in ids]
    assert list(run["checks"]) == [k for k in engine["checks"] if k in acting]
    assert all(run["checks"][k] == engine["checks"][k] for k in run["checks"])
    assert sorted(run["checks"]) == sorted(acting)
    withheld = run["withheld"]["wake"] + run["withheld"]["shutdown"]
    assert not set(withheld) & set(run["checks"])


def test_decide_drops_the_checks_of_withheld_shutdowns_only():
    view = fleet_sweep.expect(EAST, SCHEDULE, {}, T0)
    seen = observed(**{"kiosk-east-01": "off", "kiosk-east-02": "on"})
    assert sorted(fleet_campus.decide(view, seen, {}, fleet_campus.gate(SYNCED, [], True, "pi-east-1"))["checks"]) \
        == ["kiosk-east-01", "kiosk-east-02"]
    assert list(fleet_campus.decide(view, seen, {}, fleet_campus.gate(UNSYNCED, [], True, "pi-east-1"))["checks"]) \
        == []
