"""fleet_calendar: the signed campus calendar (real Ed25519 keys, real files)."""

import datetime as dt
import json
import os
import pathlib
import stat

import pytest

import fleet_calendar as fc
import fleet_inventory
import fleet_schedule
import fleet_sign
import fleet_sweep
from tests.support.topology import two_campus_inventory

SH = dt.timezone(dt.timedelta(hours=8))
NOW = int(dt.datetime(2027, 2, 1, 9, 0, tzinfo=SH).timestamp())
RAW = two_campus_inventory(wol_port=9)
INVENTORY = fleet_inventory.validate(RAW["kiosk_fleet"])
SCHEDULE = {"campuses": {
    "east": {"default": "off",
             "rules": [{"name": "hours", "weekly": {"daily": ["07:00-22:00"]}},
                       {"name": "festival", "dates": ["2027-02-05", "2027-02-12"], "always": "off"}],
             "kiosks": {"kiosk-east-02": [{"name": "er", "always": "on", "through_closures": True}]}},
    "west": {"rules": [{"name": "hours", "weekly": {"daily": ["08:00-20:00"]}}]},
}}


def hold(kiosk, until, state="on"):
    return fleet_sweep.make_hold(INVENTORY, kiosk, state, until, "ward move, ticket 4711",
                                 dt.datetime.fromtimestamp(NOW, dt.timezone.utc))


HOLDS = {"kiosk-east-01": hold("kiosk-east-01", "2027-02-08T18:00:00+08:00"),
         "kiosk-west-01": hold("kiosk-west-01", "2027-02-08T18:00:00+08:00", "off")}


@pytest.fixture(scope="module")
def keys():
    private, public = fleet_sign.new_key_pair()
    other_private, other_public = fleet_sign.new_key_pair()
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}


def signed(keys, serial=NOW, campus="east", holds=HOLDS, schedule=SCHEDULE, signed_at=NOW, key="private"):
    return fc.sign(fc.build(INVENTORY, schedule, holds, campus, serial, signed_at), keys[key])


def test_build_holds_that_campus_only(keys):
    doc = fc.build(INVENTORY, fleet_schedule.load(SCHEDULE), HOLDS, "east", NOW, NOW)
    assert doc["kind"] == "calendar" and doc["campus"] == "east" and doc["serial"] == NOW
    assert list(doc["inventory"]["campuses"]) == ["east"]
    assert doc["inventory"]["campuses"]["east"] == INVENTORY["campuses"]["east"]
    assert list(doc["schedule"]["campuses"]) == ["east"]
    assert doc["schedule"]["campuses"]["east"]["kiosks"]["kiosk-east-02"][0]["through_closures"] is True
    assert list(doc["holds"]) == ["kiosk-east-01"]
    json.dumps(doc, allow_nan=False)  # plain JSON data
    west = fc.build(INVENTORY, SCHEDULE, HOLDS, "west", NOW, NOW)
    assert list(west["holds"]) == ["kiosk-west-01"] and list(west["inventory"]["campuses"]) == ["west"]


def test_build_leaves_out_expired_holds_and_a_campus_without_schedule():
    later = int(dt.datetime(2027, 2, 9, tzinfo=SH).timestamp())
    doc = fc.build(INVENTORY, {"campuses": {"west": SCHEDULE["campuses"]["west"]}}, HOLDS, "east", later, later)
    assert doc["holds"] == {} and doc["schedule"] is None
    assert fc.build(INVENTORY, None, None, "east", 1, NOW)["schedule"] is None


@pytest.mark.parametrize("args, field", [
    ((INVENTORY, SCHEDULE, HOLDS, "north", NOW, NOW), "inventory"),
    ((INVENTORY, SCHEDULE, HOLDS, "../east", NOW, NOW), "campus"),
    ((INVENTORY, SCHEDULE, HOLDS, "east", -1, NOW), "serial"),
    ((INVENTORY, SCHEDULE, HOLDS, "east", True, NOW), "serial"),
    ((INVENTORY, SCHEDULE, HOLDS, "east", NOW + 86401, NOW), "serial"),
    ((INVENTORY, SCHEDULE, HOLDS, "east", NOW, "now"), "signed_at"),
    ((INVENTORY, "hours", HOLDS, "east", NOW, NOW), "schedule"),
    ((INVENTORY, {"campuses": {"east": {"rules": [{"name": "x"}]}}}, HOLDS, "east", NOW, NOW), "schedule"),
    ((INVENTORY, {"campuses": {"east": {"kiosks": {"kiosk-west-01": []}}}}, HOLDS, "east", NOW, NOW), "schedule"),
    ((INVENTORY, SCHEDULE, {"kiosk-east-01": {"state": "on"}}, "east", NOW, NOW), "holds"),
    ((["not", "an", "inventory"], SCHEDULE, HOLDS, "east", NOW, NOW), "inventory"),
])
def test_build_refuses_bad_input_naming_the_field(args, field):
    with pytest.raises(fc.CalendarError) as exc:
        fc.build(*args)
    assert str(exc.value).startswith(field), str(exc.value)


def test_content_digest_ignores_serial_signing_time_and_signature(keys):
    a = signed(keys, serial=NOW, signed_at=NOW)
    b = signed(keys, serial=NOW + 60, signed_at=NOW + 60)
    assert a["signature"] != b["signature"]
    assert fc.content_digest(a) == fc.content_digest(b) == fc.content_digest(fc.build(INVENTORY, SCHEDULE, HOLDS, "east", 7, NOW))
    changed = signed(keys, holds={})
    assert fc.content_digest(changed) != fc.content_digest(a)
    hours = json.loads(json.dumps(SCHEDULE))
    hours["campuses"]["east"]["rules"][0]["weekly"]["daily"] = ["07:30-22:00"]
    assert fc.content_digest(signed(keys, schedule=hours)) != fc.content_digest(a)
    # another campus's change does not change this campus's calendar
    other = json.loads(json.dumps(SCHEDULE))
    other["campuses"]["west"]["rules"][0]["weekly"]["daily"] = ["09:00-20:00"]
    assert fc.content_digest(signed(keys, schedule=other)) == fc.content_digest(a)


def test_verify_accepts_a_good_calendar_and_gives_the_engine_its_inputs(keys):
    doc = signed(keys)
    assert fc.verify(doc, [keys["other_public"], keys["public"]], "east") is doc  # rotation: any key of the list
    assert fc.verify(json.dumps(doc), keys["public"], "east") == doc
    inventory = fc.inventory_of(doc)
    schedule = fc.schedule_of(doc)
    holds = fc.holds_of(doc)
    assert isinstance(schedule, fleet_schedule.Schedule) and list(inventory["campuses"]) == ["east"]
    festival = dt.datetime(2027, 2, 6, 12, tzinfo=SH)
    view = fleet_sweep.expect(inventory, schedule, holds, festival)
    # the engine on the calendar decides as on the top master's whole fleet, for that campus
    whole = fleet_sweep.expect(INVENTORY, fleet_schedule.load(SCHEDULE), HOLDS, festival,
                               selection={"east": ["kiosk-east-01", "kiosk-east-02"]})
    assert view["expected"] == whole["expected"]
    assert view["expected"]["kiosk-east-01"]["state"] == "on"  # the hold beats the closure
    assert view["expected"]["kiosk-east-02"]["state"] == "on"  # through_closures
    assert fc.schedule_of(signed(keys, schedule=None)) is None


def tamper(doc, **changes):
    out = json.loads(json.dumps(doc))
    out.update(changes)
    return out


@pytest.mark.parametrize("make, field", [
    (lambda k, d: tamper(d, holds={}), "calendar.signature"),
    (lambda k, d: tamper(d, serial=d["serial"] + 1), "calendar.signature"),
    (lambda k, d: {k2: v for k2, v in d.items() if k2 != "signature"}, "calendar.signature"),
    (lambda k, d: signed(k, key="other_private"), "calendar.signature"),
    (lambda k, d: signed(k, campus="west"), "calendar.campus"),
    (lambda k, d: fc.sign(tamper(d, serial=NOW + 86401), k["private"]), "calendar.serial"),
    (lambda k, d: fc.sign(tamper(d, serial="7"), k["private"]), "calendar.serial"),
    (lambda k, d: fc.sign(tamper(d, extra=1), k["private"]), "calendar"),
    (lambda k, d: fc.sign(tamper(d, inventory=fc.build(INVENTORY, None, None, "west", 1, NOW)["inventory"]),
                          k["private"]), "calendar.inventory"),
    (lambda k, d: fc.sign(tamper(d, inventory={"campuses": {**d["inventory"]["campuses"],
                                                            **INVENTORY["campuses"]}}), k["private"]),
     "calendar.inventory"),
    (lambda k, d: fc.sign(tamper(d, schedule={"campuses": SCHEDULE["campuses"]}), k["private"]), "calendar.schedule"),
    (lambda k, d: fc.sign(tamper(d, holds={"kiosk-west-01": HOLDS["kiosk-west-01"]}), k["private"]), "calendar.holds"),
    (lambda k, d: "{not json", "calendar"),
    (lambda k, d: [d], "calendar"),
])
def test_verify_refuses_naming_the_field(keys, make, field):
    with pytest.raises(fc.CalendarError) as exc:
        fc.verify(make(keys, signed(keys)), keys["public"], "east")
    named = str(exc.value).split(":")[0]
    assert named == field or named.startswith(field + "."), str(exc.value)


def test_a_pin_signed_by_our_key_is_not_a_calendar(keys):
    pin = fleet_sign.sign_pin("kiosk-app", "east", "1.2.0", NOW, keys["private"], signed_at=NOW)
    with pytest.raises(fc.CalendarError, match=r"^calendar\.kind: 'pin'"):
        fc.verify(pin, keys["public"], "east")


def test_no_verify_key_is_a_refusal(keys):
    with pytest.raises(fc.CalendarError, match="kiosk_release:verify_key: missing"):
        fc.verify(signed(keys), [], "east")
    with pytest.raises(fc.CalendarError) as exc:
        fc.verify(signed(keys), ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"], "east")
    assert "PRIVATE" not in str(exc.value)


def test_signing_errors_never_show_the_key():
    doc = fc.build(INVENTORY, SCHEDULE, HOLDS, "east", NOW, NOW)
    secret = "-----BEGIN PRIVATE KEY-----\nTHISISNOTAKEYBUTSECRETTEXT\n-----END PRIVATE KEY-----\n"
    with pytest.raises(fc.CalendarError) as exc:
        fc.sign(doc, secret)
    assert "SECRETTEXT" not in str(exc.value) and exc.value.field == fleet_sign.SIGNING_KEY_FIELD
    with pytest.raises(fc.CalendarError, match="^calendar: expected a calendar"):
        fc.sign({"kind": "pin"}, secret)


def test_store_keeps_the_newest_and_the_last_good_copy(keys, tmp_path):
    directory = str(tmp_path / "campus")
    assert fc.load(directory, keys["public"], "east") is None
    first = signed(keys, serial=NOW)
    assert fc.store(directory, first, keys["public"], "east") == {"stored": True, "serial": NOW, "kept": None}
    path = os.path.join(directory, fc.FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    newer = signed(keys, serial=NOW + 60, signed_at=NOW + 60, holds={})
    assert fc.store(directory, newer, keys["public"], "east") == {"stored": True, "serial": NOW + 60, "kept": NOW}
    # older or equal: not an error, not stored
    assert fc.store(directory, first, keys["public"], "east") == {"stored": False, "serial": NOW + 60, "kept": NOW + 60}
    assert fc.store(directory, newer, keys["public"], "east")["stored"] is False
    # a bad signature raises and the last good copy stays, byte for byte
    before = pathlib.Path(path).read_bytes()
    forged = tamper(signed(keys, serial=NOW + 120, signed_at=NOW + 120), holds={})
    with pytest.raises(fc.CalendarError, match=r"^calendar\.signature"):
        fc.store(directory, forged, keys["public"], "east")
    with pytest.raises(fc.CalendarError, match=r"^calendar\.serial"):
        fc.store(directory, fc.sign(tamper(newer, serial=NOW + 10**9), keys["other_private"]),
                 [keys["public"], keys["other_public"]], "east")
    assert pathlib.Path(path).read_bytes() == before
    assert fc.load(directory, keys["public"], "east") == newer
    assert sorted(os.listdir(directory)) == [fc.FILE, fc.LOCK]  # no temporary file left behind


def test_a_runaway_serial_cannot_outrank_later_calendars(keys, tmp_path):
    """Signed by our key, but a serial a day and more ahead of its signing time: refused, so it never
    blocks the calendars signed after it (as fleet_sign.verify_pin bounds a pin's serial)."""
    directory = str(tmp_path)
    runaway = fc.sign(tamper(fc.build(INVENTORY, SCHEDULE, HOLDS, "east", NOW, NOW), serial=NOW + 86401),
                      keys["private"])
    with pytest.raises(fc.CalendarError, match=r"^calendar\.serial: \d+ is more than 86400 s ahead"):
        fc.store(directory, runaway, keys["public"], "east")
    assert fc.store(directory, signed(keys, serial=NOW + 5), keys["public"], "east")["stored"] is True


def test_a_tampered_file_on_disk_is_refused_by_load_and_replaced_by_a_good_calendar(keys, tmp_path):
    directory = str(tmp_path)
    fc.store(directory, signed(keys, serial=NOW), keys["public"], "east")
    path = os.path.join(directory, fc.FILE)
    doc = json.loads(pathlib.Path(path).read_text())
    doc["holds"] = {}
    pathlib.Path(path).write_text(json.dumps(doc))
    with pytest.raises(fc.CalendarError) as exc:
        fc.load(directory, keys["public"], "east")
    assert path in str(exc.value) and "signature" in str(exc.value)
    # the next good calendar replaces it, even with an older serial: the file on disk is not good
    assert fc.store(directory, signed(keys, serial=NOW - 10), keys["public"], "east")["stored"] is True
    pathlib.Path(path).write_text("{half")
    with pytest.raises(fc.CalendarError, match="unreadable state file"):
        fc.load(directory, keys["public"], "east")


def test_store_and_load_check_their_arguments(keys, tmp_path):
    with pytest.raises(fc.CalendarError, match="^directory: 'relative'"):
        fc.store("relative", signed(keys), keys["public"], "east")
    with pytest.raises(fc.CalendarError, match="^campus:"):
        fc.load(str(tmp_path), keys["public"], None)
    with pytest.raises(fc.CalendarError, match=r"^calendar\.campus"):
        fc.store(str(tmp_path), signed(keys), keys["public"], "west")
    assert os.listdir(tmp_path) == []


def test_next_serial_follows_the_clock_and_always_grows():
    assert fc.next_serial(None, NOW + 0.9) == NOW
    assert fc.next_serial(NOW, NOW) == NOW + 1
    assert fc.next_serial(NOW + 500, NOW) == NOW + 501  # a clock that went back
    with pytest.raises(fc.CalendarError, match="^previous"):
        fc.next_serial(-1, NOW)
    with pytest.raises(fc.CalendarError, match="^now"):
        fc.next_serial(1, "now")


def test_summary_names_what_a_report_shows(keys):
    doc = signed(keys)
    assert fc.summary(doc) == {"campus": "east", "serial": NOW, "signed_at": NOW, "kiosks": 2,
                               "holds": ["kiosk-east-01"], "scheduled": True, "digest": fc.content_digest(doc)}
    assert fc.summary(None) is None


def test_lagging_takes_the_later_report_of_each_pi():
    pis = ["pi-1", "pi-2", "pi-3", "pi-4"]
    known = {"pi-1": {"serial": 9, "at": "2027-02-01T01:00:00Z"}, "pi-2": {"serial": 9, "at": "2027-02-01T01:00:00Z"},
             "pi-3": {"serial": 8, "at": "2027-02-01T01:00:00Z"}}
    reported = {"pi-2": {"serial": 4, "at": "2027-02-01T02:00:00Z"},  # reinstalled after our send
                "pi-3": {"serial": 9, "at": "2027-02-01T02:00:00Z"},  # took it from a peer
                "pi-1": {"serial": 4, "at": "2027-01-31T02:00:00Z"}}  # an old report
    assert fc.lagging(pis, 9, known, reported) == ["pi-2", "pi-4"]
    assert fc.lagging(pis, 9, {}, None) == pis
    assert fc.lagging(["pi-1"], 9, {"pi-1": {"serial": True}}) == ["pi-1"]
    # a later report of no calendar at all (the Pi's folder wiped) beats our record of a send
    assert fc.lagging(["pi-1"], 9, known, {"pi-1": {"serial": None, "at": "2027-02-01T03:00:00Z"}}) == ["pi-1"]
    assert fc.lagging(["pi-1"], 9, known, {"pi-1": {"serial": None}}) == []  # undated: no evidence
    with pytest.raises(fc.CalendarError, match="^serial"):
        fc.lagging(pis, "9", known)


def test_the_top_masters_inputs_come_from_kiosk_power_files(tmp_path):
    cachedir = str(tmp_path)
    data = {"kiosk_fleet_schedules": SCHEDULE}
    schedule, source = fc.schedule_in_force(cachedir, data, INVENTORY)
    assert source["source"] == "pillar" and fc.holds_in_force(cachedir) == {}
    power = tmp_path / fc.POWER_DIR
    power.mkdir()
    (power / fc.POWER_STATE_FILE).write_text(json.dumps({"holds": HOLDS}))
    assert fc.holds_in_force(cachedir) == HOLDS
    (power / fc.POWER_STATE_FILE).write_text(json.dumps({"holds": {"kiosk-east-01": {"state": "maybe"}}}))
    with pytest.raises(fleet_sweep.SweepError, match=r"state\.json: holds\.kiosk-east-01"):
        fc.holds_in_force(cachedir)
    with pytest.raises(fc.CalendarError, match="^directory"):
        fc.schedule_in_force("cache", data, INVENTORY)


def test_supervision_reports_what_each_campus_did():
    campus_pis = {"east": ["pi-east-1", "pi-east-2"], "west": ["pi-west-1", "pi-west-2"], "north": ["pi-north-1"]}
    answered = {
        "pi-east-1": {"result": True, "pi": "pi-east-1", "leader": True, "woke": ["k2", "k1"], "shut_down": ["k3"]},
        "pi-east-2": {"result": True, "pi": "pi-east-2", "leader": False, "woke": ["k1"], "shut_down": []},
        "pi-west-1": {"result": True, "pi": "pi-west-1", "leader": True, "woke": [], "shut_down": []},
        "pi-west-2": {"result": True, "pi": "pi-west-2", "leader": True, "woke": [], "shut_down": ["k9"]},
    }
    got = fc.supervision(campus_pis, answered, {"pi-north-1": "no calendar yet"}, ["pi-east-3"])
    assert got["east"]["leaders"] == ["pi-east-1"] and got["east"]["woke"] == ["k1", "k2"]
    assert got["east"]["shut_down"] == ["k3"] and "error" not in got["east"]
    assert got["west"]["leaders"] == ["pi-west-1", "pi-west-2"] and "error" not in got["west"]  # a split LAN
    assert got["north"]["error"] == "pi-north-1: no calendar yet"
    silent = fc.supervision({"east": ["pi-east-1"]}, {}, {}, ["pi-east-1"])["east"]
    assert silent["error"].startswith("no Pi of east answered (Pis silent: pi-east-1)")
    with pytest.raises(fc.CalendarError, match="^campus_pis"):
        fc.supervision([], {}, {}, [])


def test_a_new_serial_goes_above_every_serial_a_pi_of_the_campus_holds():
    record = {"serial": 100, "pis": {"pi-east-1": {"serial": 100}, "pi-east-2": {"serial": 5000, "at": "x"}}}
    reported = {"pi-east-1": {"serial": 7000}, "pi-west-1": {"serial": 9000}}  # another campus's Pi: not counted
    assert fc.highest_serial(record, reported, ["pi-east-1", "pi-east-2"]) == 7000
    assert fc.next_serial(fc.highest_serial(record, reported, ["pi-east-1", "pi-east-2"]), 6000) == 7001
    assert fc.highest_serial({}, None, []) is None
    assert fc.highest_serial({"serial": True, "pis": {"p": {"serial": -3}}}, {}, ["p"]) is None
    with pytest.raises(fc.CalendarError, match="^record"):
        fc.highest_serial(None, {}, [])
    with pytest.raises(fc.CalendarError, match=r"^record\.pis"):
        fc.highest_serial({"pis": []}, {}, [])


def test_next_serial_takes_a_huge_whole_clock_without_overflowing():
    # math.isfinite(10**300) raises OverflowError; the fuzzer found it through build's signed_at
    assert fc.next_serial(None, 10**300) == 10**300
    with pytest.raises(fc.CalendarError, match="^now: "):
        fc.next_serial(None, float("nan"))


@pytest.mark.parametrize("silent", [
    ["pi-east-3", "pi-west-9", "pi-east-1", "pi-east-3"], ("pi-east-1", "pi-east-3", "pi-west-9"),
    {"pi-west-9", "pi-east-3", "pi-east-1"}])
def test_supervision_lists_each_campus_s_silent_pis_sorted_whatever_the_silent_container(silent):
    # silent is looked up as a set: repeats, order and container type change nothing,
    # another campus's silent Pi is not listed, and the texts stay the same
    campus_pis = {"east": ["pi-east-3", "pi-east-1", "pi-east-2"], "west": ["pi-west-1"]}
    answered = {"pi-east-2": {"result": True, "pi": "pi-east-2", "leader": True, "woke": [], "shut_down": []}}
    got = fc.supervision(campus_pis, answered, {}, silent)
    assert got["east"]["silent"] == ["pi-east-1", "pi-east-3"] and "error" not in got["east"]
    assert got["west"]["silent"] == []
    assert got["west"]["error"] == "no Pi of west answered (Pis silent: none); the campus runs on its own calendar meanwhile"
    alone = fc.supervision({"east": ["pi-east-3", "pi-east-1"]}, {}, {}, silent)["east"]
    assert alone["error"] == ("no Pi of east answered (Pis silent: pi-east-1, pi-east-3); "
                              "the campus runs on its own calendar meanwhile")
    with pytest.raises(fc.CalendarError, match=r"^silent: .* is not a Pi id"):
        fc.supervision(campus_pis, answered, {}, [*silent, 7])
