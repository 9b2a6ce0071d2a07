"""Release policy of the top master: confined sources, events as hints, pushes marked after success, rings."""

import copy
import os
import re

import pytest

import fleet_release
import fleet_sign
import fleet_rollout

SILENT = "silent"


def raises(fn, *args, match):
    with pytest.raises(ValueError) as info:
        fn(*args)
    assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- confined sources


@pytest.mark.parametrize("source, parts", [
    ("/srv/builds/job/out/app.msi", ["job", "out", "app.msi"]),
    ("/srv/builds//job/./out/", ["job", "out"]),
    ("job/out/app.msi", ["job", "out", "app.msi"]),
])
def test_source_parts_below_the_root(source, parts):
    assert fleet_rollout.source_parts(source, "/srv/builds") == parts


@pytest.mark.parametrize("source, match", [
    ("/etc/shadow", r"^source: /etc/shadow is not under the source root /srv/builds"),
    ("/srv/builds-other/app.msi", r"^source: .* is not under the source root"),
    ("/srv/builds/../../etc/shadow", r"^source: '\.\.' is not allowed"),
    ("job/../../etc/shadow", r"^source: '\.\.' is not allowed"),
    ("/srv/builds", r"^source: name a file or directory below the source root"),
    ("/srv/builds/a\nb", r"^source: holds control characters"),
    ("/srv/builds/a\ud800.msi", r"^source: holds control characters or unpaired surrogates"),
    ("", r"^source: give a file"),
    (None, r"^source: give a file"),
])
def test_source_parts_refuse_what_leaves_the_root(source, match):
    raises(fleet_rollout.source_parts, source, "/srv/builds", match=match)


def test_without_a_source_root_nothing_is_read():
    raises(fleet_rollout.source_parts, "/srv/builds/app.msi", None, match=r"^kiosk_release:source_root: not set")
    raises(fleet_rollout.source_parts, "app.msi", "relative/root", match=r"^kiosk_release:source_root:")


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "builds"
    (base / "job" / "out").mkdir(parents=True)
    (base / "job" / "out" / "app.msi").write_bytes(b"MSI")
    (base / "job" / "out" / "kiosk-install.json").write_text("[]")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "shadow").write_text("root:x")
    return base


def read_all(fds):
    try:
        return {name: os.read(fd, 100) for name, fd in fds.items()}
    finally:
        fleet_rollout.close_all(fds)


def test_open_confined_opens_a_file_and_a_flat_directory(root):
    kind, fds = fleet_rollout.open_confined(str(root / "job" / "out" / "app.msi"), str(root))
    assert kind == "file" and read_all(fds) == {"app.msi": b"MSI"}
    kind, fds = fleet_rollout.open_confined("job/out", str(root))
    assert kind == "dir" and read_all(fds) == {"app.msi": b"MSI", "kiosk-install.json": b"[]"}


def test_open_confined_refuses_a_symlinked_file(root):
    os.symlink(root.parent / "secret" / "shadow", root / "job" / "out" / "shadow.msi")
    raises(fleet_rollout.open_confined, str(root / "job" / "out" / "shadow.msi"), str(root),
           match=r"^source: shadow.msi is a symlink")
    # ... and inside a directory source
    raises(fleet_rollout.open_confined, str(root / "job" / "out"), str(root),
           match=r"^source.shadow.msi: shadow.msi is a symlink")


def test_open_confined_refuses_a_symlinked_directory_component(root):
    os.symlink(root.parent / "secret", root / "job" / "link")
    raises(fleet_rollout.open_confined, str(root / "job" / "link" / "shadow"), str(root),
           match=r"^source: link is a symlink")
    raises(fleet_rollout.open_confined, str(root / "job" / "link"), str(root), match=r"^source: link is a symlink")


def test_open_confined_refuses_a_hard_link(root):
    os.link(root / "job" / "out" / "app.msi", root / "job" / "other.msi")
    raises(fleet_rollout.open_confined, str(root / "job" / "other.msi"), str(root), match=r"has 2 hard links")


def test_open_confined_refuses_special_files_subdirectories_and_missing_paths(root):
    os.mkfifo(root / "job" / "fifo")
    raises(fleet_rollout.open_confined, str(root / "job" / "fifo"), str(root), match=r"not a plain file or directory")
    raises(fleet_rollout.open_confined, str(root / "job"), str(root), match=r"^source\.fifo: ")
    raises(fleet_rollout.open_confined, str(root / "nope"), str(root), match=r"^source: nope does not exist")
    (root / "empty").mkdir()
    raises(fleet_rollout.open_confined, str(root / "empty"), str(root), match=r"is an empty directory")


def test_open_confined_leaves_no_fd_open_on_refusal(root):
    os.symlink("/etc/hostname", root / "job" / "out" / "zz.msi")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(ValueError):
            fleet_rollout.open_confined(str(root / "job" / "out"), str(root))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("status, match", [(301, "redirect"), (302, "redirect"), (307, "redirect"), (404, "HTTP 404")])
def test_url_sources_must_answer_200_themselves(status, match):
    message = raises(fleet_rollout.check_source_response, status, "http://127.0.0.1/secret?token=T", "http://h:1",
                     match=rf"^source: http://h:1 answered .*{match}")
    assert "token" not in message and "secret" not in message
    fleet_rollout.check_source_response(200, None, "http://h:1")


# --------------------------------------------------------------------------- published events


def state_with(pins=None, to_stage=None, pushed=None, pushing=None):
    state = {"pins": {"kiosk-app": pins or {}}, "pushed": {"kiosk-app": pushed or {}}, "metrics": {}}
    if to_stage is not None:
        state["to_stage"] = {"kiosk-app": to_stage}
    if pushing is not None:
        state["pushing"] = {"kiosk-app": pushing}
    return state


PINS = {"east": {"version": "1.4.0", "serial": 1000}, "west": {"version": "1.4.0", "serial": 1001}}


def test_a_published_event_stages_what_publish_recorded_once():
    state = state_with(PINS, to_stage={"east": 1000, "west": 1001})
    assert fleet_rollout.claim_event_staging(state, "kiosk-app", "1.4.0", ["east"], True) == {"east": 1000}
    assert state["to_stage"] == {"kiosk-app": {"west": 1001}}
    # replayed: nothing left for east
    assert fleet_rollout.claim_event_staging(state, "kiosk-app", "1.4.0", ["east"], True) == {}
    assert fleet_rollout.claim_event_staging(state, "kiosk-app", "1.4.0", None, True) == {"west": 1001}
    assert "to_stage" not in state or state["to_stage"] == {}


@pytest.mark.parametrize("name, version, campuses, published", [
    ("kiosk-app", "1.3.0", ["east"], True),  # an old version: not what is waiting
    ("kiosk-app", "1.4.0", ["hillside"], True),  # a campus with nothing waiting
    ("other-app", "1.4.0", ["east"], True),  # another release
    ("kiosk-app", "1.4.0", ["east"], False),  # not in the store
])
def test_an_invented_published_event_claims_nothing_and_changes_nothing(name, version, campuses, published):
    state = state_with(PINS, to_stage={"east": 1000})
    before = copy.deepcopy(state)
    assert fleet_rollout.claim_event_staging(state, name, version, campuses, published) == {}
    assert state == before


def test_a_waiting_entry_whose_pin_moved_is_not_staged():
    state = state_with({"east": {"version": "1.5.0", "serial": 1002}}, to_stage={"east": 1000})
    assert fleet_rollout.claim_event_staging(state, "kiosk-app", "1.4.0", None, True) == {}
    state = state_with({"east": {"version": "1.4.0", "serial": 1003}}, to_stage={"east": 1000})
    assert fleet_rollout.claim_event_staging(state, "kiosk-app", "1.4.0", None, True) == {}


# --------------------------------------------------------------------------- staged events and pushes


def repo(version, serial, staged, result=True, verified=True):
    return {"result": result, "staged": staged, "pin": {"version": version, "serial": serial},
            "pin_verified": verified}


def test_the_pin_is_live_only_where_a_pi_holds_it_with_the_serial_and_the_files():
    returns = {
        "pi-1": repo("1.4.0", 1000, ["1.3.0", "1.4.0"]),
        "pi-2": repo("1.4.0", 999, ["1.4.0"]),  # older serial
        "pi-3": repo("1.4.0", 1000, ["1.3.0"]),  # pinned but not staged
        "pi-4": repo("1.4.0", 1000, ["1.4.0"], result=False),
        "pi-5": "Minion did not return",
        "pi-6": repo("1.4.0", 1000, ["1.4.0"], verified=False),  # a pin that does not verify
    }
    assert fleet_rollout.pin_live(returns, "1.4.0", 1000) == ["pi-1"]
    assert fleet_rollout.pin_live({}, "1.4.0", 1000) == []


def test_push_decision_skips_other_versions_pushed_serials_and_running_pushes():
    state = state_with(PINS)
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=50) == (1000, None)
    serial, why = fleet_rollout.push_decision(state, "kiosk-app", "east", "1.3.0", now=50)
    assert serial is None and "pinned to 1.4.0, not 1.3.0" in why
    serial, why = fleet_rollout.push_decision(state, "kiosk-app", "hillside", "1.4.0", now=50)
    assert serial is None and "pinned to None" in why
    state = state_with(PINS, pushed={"east": 1000})
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=50)[1].endswith("already pushed to east")
    state = state_with(PINS, pushing={"east": {"serial": 1000, "until": 100}})
    assert "being pushed" in fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=50)[1]
    # a claim that outlived its deadline (the run died) no longer blocks
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=150) == (1000, None)


def test_a_campus_is_marked_pushed_only_after_a_push_that_succeeded():
    state = state_with(PINS)
    fleet_rollout.claim_push(state, "kiosk-app", "east", 1000, until=100)
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=50)[0] is None
    fleet_rollout.end_push(state, "kiosk-app", "east", 1000, succeeded=False)
    assert state["pushed"]["kiosk-app"] == {} and "pushing" not in state
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=50) == (1000, None)  # retried
    fleet_rollout.claim_push(state, "kiosk-app", "east", 1000, until=100)
    fleet_rollout.end_push(state, "kiosk-app", "east", 1000, succeeded=True)
    assert state["pushed"]["kiosk-app"] == {"east": 1000}
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=50)[0] is None


def test_a_push_that_ends_after_the_pin_moved_does_not_mark_the_new_pin():
    state = state_with(PINS)
    fleet_rollout.claim_push(state, "kiosk-app", "east", 1000, until=100)
    state["pins"]["kiosk-app"]["east"] = {"version": "1.5.0", "serial": 1005}
    fleet_rollout.end_push(state, "kiosk-app", "east", 1000, succeeded=True)
    assert state["pushed"]["kiosk-app"] == {}


@pytest.mark.parametrize("kiosks, ok", [
    ({"k1": True, "k2": SILENT}, True),
    ({}, True),
    ({"k1": True, "k2": "install failed"}, False),
])
def test_push_succeeded(kiosks, ok):
    assert fleet_rollout.push_succeeded(kiosks, SILENT) is ok


def test_only_inventory_pis_name_a_campus_for_a_push():
    inventory = {"campuses": {"east": {"pis": {"pi-east-1": {}}, "kiosks": {"kiosk-east-01": {}}}}}
    assert fleet_rollout.campus_of_pi(inventory, "pi-east-1") == "east"
    raises(fleet_rollout.campus_of_pi, inventory, "kiosk-east-01", match=r"^pi: 'kiosk-east-01' is not a Pi")
    raises(fleet_rollout.campus_of_pi, inventory, "pi-mars-1", match=r"^pi: ")
    raises(fleet_rollout.campus_of_pi, inventory, ["pi-east-1"], match=r"^pi: expected a Pi id")


# --------------------------------------------------------------------------- rollout rings


def served(clients, name="kiosk-app", version="1.4.0", result=True):
    return {"result": result, "name": name, "version": version, "clients": clients}


def test_served_by_ip_merges_the_pis_logs_of_that_version_only():
    returns = {
        "pi-1": served({"10.0.0.11": [200], "10.0.0.12": [404]}),
        "pi-2": served({"10.0.0.12": [206]}),
        "pi-3": served({"10.0.0.13": [200]}, version="1.3.0"),
        "pi-4": served({"10.0.0.14": [200]}, result=False),
        "pi-5": "'kiosk_pkg.served' is not available.",
    }
    assert fleet_rollout.served_by_ip(returns, "kiosk-app", "1.4.0") == {"10.0.0.11": {200}, "10.0.0.12": {404, 206}}


def test_a_ring_kiosk_counts_only_when_its_return_and_a_pi_log_agree():
    results = {"k1": True, "k2": True, "k3": True, "k4": "install failed", "k5": SILENT}
    ips = {"k1": "10.0.0.11", "k2": "10.0.0.12", "k3": "10.0.0.13", "k4": "10.0.0.14", "k5": "10.0.0.15"}
    seen = {"10.0.0.11": {200}, "10.0.0.12": {206}, "10.0.0.13": {404}, "10.0.0.15": {200}}
    confirmed = fleet_rollout.confirm_ring(results, ips, seen, SILENT)
    assert confirmed["k1"] is True and confirmed["k2"] is True
    assert "no Pi of the campus served the files to 10.0.0.13" in confirmed["k3"]  # a forged return
    assert confirmed["k4"] == "install failed" and confirmed["k5"] == SILENT
    # a forged "installed" for a kiosk with no address in the inventory never counts
    assert confirmed != fleet_rollout.confirm_ring(results, {}, seen, SILENT)
    assert fleet_rollout.confirm_ring({"k1": True}, {}, seen, SILENT)["k1"] is not True


def log_line(addr, uri, status, method="GET"):
    import json

    return json.dumps({"time": "2026-12-02T02:00:00+00:00", "remote_addr": addr, "method": method, "uri": uri,
                       "status": status, "bytes": 10, "range": "", "content_range": ""})


def test_served_from_log_reads_the_pi_nginx_log_of_that_version_only():
    lines = [
        log_line("10.0.0.11", "/kiosk-releases/kiosk-app/1.4.0/app.bin", 200),
        log_line("10.0.0.11", "/kiosk-releases/kiosk-app/1.4.0/install.py", 200),
        log_line("10.0.0.12", "/kiosk-releases/kiosk-app/1.4.0/app.bin", 206),
        log_line("10.0.0.13", "/kiosk-releases/kiosk-app/1.4.0/manifest.json", 200),  # not the files
        log_line("10.0.0.14", "/kiosk-releases/kiosk-app/1.3.0/app.bin", 200),  # another version
        log_line("10.0.0.15", "/kiosk-releases/kiosk-app/1.4.0/app.bin", 200, method="HEAD"),
        log_line("10.0.0.16", "/kiosk-releases/kiosk-app/1.4.0/../1.3.0/app.bin", 200),
        log_line("10.0.0.17", "/kiosk-releases/kiosk-app/index.json", 200),
        log_line("10.0.0.18", "/kiosk-releases/kiosk-app/1.4.0/app.bin", 404),
        "not json", "", '["a list"]',
    ]
    assert fleet_rollout.served_from_log(lines, "kiosk-app", "1.4.0") == {
        "10.0.0.11": [200], "10.0.0.12": [206], "10.0.0.18": [404]}
    assert fleet_rollout.served_from_log(lines, "kiosk-app", "1.3.0") == {"10.0.0.14": [200]}
    raises(fleet_rollout.served_from_log, lines, "../x", "1.4.0", match=r"^name:")


# --------------------------------------------------------------------------- campus pins


KEY = fleet_sign.new_key_pair()


def test_set_pin_signs_grows_the_serial_with_the_clock_and_keeps_the_history():
    state = state_with({}, pushed={"east": 5})
    first = fleet_rollout.set_pin(state, "kiosk-app", "east", "1.3.0", KEY[0], now=1000.7)
    assert first["serial"] == 1000 and first["version"] == "1.3.0" and first["history"] == []
    assert first["at"] == "1970-01-01T00:16:40+00:00"
    fleet_sign.verify_pin(first["signed"], [KEY[1]], "kiosk-app", "east")
    assert first["signed"]["serial"] == 1000 and first["signed"]["signed_at"] == 1000
    assert state["pushed"]["kiosk-app"] == {}  # a new pin is due to be pushed again
    # the clock stood still (or went back): the serial still grows
    second = fleet_rollout.set_pin(state, "kiosk-app", "east", "1.4.0", KEY[0], now=900)
    assert second["serial"] == 1001 and second["history"] == ["1.3.0"]
    frozen = fleet_rollout.set_pin(state, "kiosk-app", "east", None, KEY[0], now=5000)
    assert frozen["serial"] == 5000 and frozen["version"] is None and frozen["history"] == ["1.3.0", "1.4.0"]
    again = fleet_rollout.set_pin(state, "kiosk-app", "east", "1.4.0", KEY[0], now=5000)
    assert again["history"] == ["1.3.0", "1.4.0"]  # a frozen pin adds nothing to go back to
    assert fleet_rollout.pin_of(state, "kiosk-app", "east") is again
    assert fleet_rollout.pin_of(state, "kiosk-app", "west") is None
    assert fleet_rollout.pin_of({}, "other", "east") is None


def test_the_pin_history_is_bounded():
    state = state_with({})
    for i in range(30):
        fleet_rollout.set_pin(state, "kiosk-app", "east", f"1.{i}", KEY[0], now=1000 + i)
    assert state["pins"]["kiosk-app"]["east"]["history"] == [f"1.{i}" for i in range(9, 29)]


def test_a_pin_is_not_moved_without_a_usable_key():
    state = state_with(copy.deepcopy(PINS))
    before = copy.deepcopy(state)
    with pytest.raises(ValueError, match=r"signing_key|private key"):
        fleet_rollout.set_pin(state, "kiosk-app", "east", "1.5.0", b"not a key", now=2000)
    assert state == before


def test_pin_doc_reuses_the_signed_pin_and_signs_an_old_entry_only_when_needed():
    state = state_with({})
    pin = fleet_rollout.set_pin(state, "kiosk-app", "east", "1.4.0", KEY[0], now=1000)

    def no_key():
        raise AssertionError("the key is not needed for a signed entry")

    assert fleet_rollout.pin_doc("kiosk-app", "east", pin, no_key) is pin["signed"]
    old = {"version": "1.4.0", "serial": 1000, "history": []}  # saved before pins were signed
    doc = fleet_rollout.pin_doc("kiosk-app", "east", old, lambda: KEY[0])
    assert doc["serial"] == 1000 and fleet_sign.verify_pin(doc, [KEY[1]], "kiosk-app", "east")
    moved = dict(pin, serial=1001)  # an entry whose signature is for another serial is signed again
    assert fleet_rollout.pin_doc("kiosk-app", "east", moved, KEY[0])["serial"] == 1001


def test_signed_pins_only_for_campuses_still_on_that_serial_and_version():
    state = state_with({})
    east = fleet_rollout.set_pin(state, "kiosk-app", "east", "1.4.0", KEY[0], now=1000)
    fleet_rollout.set_pin(state, "kiosk-app", "west", "1.3.0", KEY[0], now=1000)
    state["pins"]["kiosk-app"]["north"] = {"version": "1.4.0", "serial": 7}
    pins, errors = fleet_rollout.signed_pins(state, "kiosk-app", "1.4.0",
                                             {"east": east["serial"], "west": 1000, "south": 1, "north": 7},
                                             b"broken key")
    assert pins == {"east": east["signed"]} and list(errors) == ["north"]
    assert fleet_rollout.pinned_serials(state, "kiosk-app", "1.4.0", ["east", "west", "south"]) == {"east": 1000}


def test_pin_holds_its_push_and_publish_records_what_waits():
    state = state_with({})
    pin = fleet_rollout.set_pin(state, "kiosk-app", "east", "1.4.0", KEY[0], now=1000)
    fleet_rollout.hold_push(state, "kiosk-app", "east", pin["serial"])
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", now=1)[1].endswith("already pushed to east")
    fleet_rollout.wait_for_staging(state, "kiosk-app", "west", 1001)
    assert state["to_stage"] == {"kiosk-app": {"west": 1001}}


# --------------------------------------------------------------------------- rebuilding pins from the Pis


OTHER_KEY = fleet_sign.new_key_pair()


def signed(version, serial, campus="east", key=KEY, name="kiosk-app"):
    return fleet_sign.sign_pin(name, campus, version, serial, key[0], signed_at=serial)


def status_of(pin, staged=("1.3.0", "1.4.0"), verified=True):
    return {"result": True, "staged": list(staged), "pin": pin, "pin_verified": verified}


PIS = ["pi-east-1", "pi-east-2", "pi-east-3", "pi-east-4"]


def test_the_campus_pin_is_the_newest_valid_one_and_the_others_are_listed_behind():
    new, old = signed("1.4.0", 2000), signed("1.3.0", 1000)
    found = fleet_rollout.pis_pin("kiosk-app", "east", PIS, {
        "pi-east-1": status_of(old), "pi-east-2": status_of(new), "pi-east-3": status_of(None)}, [KEY[1]])
    assert found["pin"] == new and found["from"] == ["pi-east-2"] and found["conflict"] is None
    assert found["behind"] == {"pi-east-1": {"version": "1.3.0", "serial": 1000}, "pi-east-3": None}
    assert found["silent"] == ["pi-east-4"] and found["refused"] == {} and found["failed"] == {}
    assert found["staged"] == ["1.3.0", "1.4.0"]


@pytest.mark.parametrize("what, pin, match", [
    ("another key", signed("9.9.9", 10**6, key=OTHER_KEY), r"^pi-east-1\.pin\.signature: does not match"),
    ("unsigned", {"kind": "pin", "name": "kiosk-app", "campus": "east", "version": "9.9.9", "serial": 10**6,
                  "signed_at": 10**6}, r"^pi-east-1\.pin\.signature: missing"),
    ("raised serial", dict(signed("1.4.0", 2000), serial=10**6), r"^pi-east-1\.pin\.signature: does not match"),
    ("another campus", signed("9.9.9", 10**6, campus="west"), r"^pi-east-1\.pin\.campus: "),
    ("another release", signed("9.9.9", 10**6, name="other"), r"^pi-east-1\.pin\.name: "),
    ("garbage", "not json", r"^pi-east-1\.pin: not JSON"),
    ("not JSON-shaped", {1: "x", "kind": "pin", "signature": {"alg": "ed25519", "value": "AAAA"}},
     r"^pi-east-1\.pin: not a signed JSON document"),
])
def test_a_forged_or_foreign_pin_is_refused_and_never_outranks_a_valid_one(what, pin, match):
    good = signed("1.4.0", 2000)
    # the Pi's own pin_verified is its word: checked here again
    found = fleet_rollout.pis_pin("kiosk-app", "east", PIS[:2], {
        "pi-east-1": status_of(pin, verified=True), "pi-east-2": status_of(good)}, [KEY[1]])
    assert found["pin"] == good and found["from"] == ["pi-east-2"], what
    assert list(found["refused"]) == ["pi-east-1"] and re.search(match, found["refused"]["pi-east-1"]["error"]), found
    assert found["refused"]["pi-east-1"]["version"] in ("9.9.9", "1.4.0", None)
    assert "pi-east-1" not in found["behind"]


def test_failed_and_conflicting_answers_and_equal_serials_with_different_pins():
    found = fleet_rollout.pis_pin("kiosk-app", "east", PIS[:3], {
        "pi-east-1": {"result": False, "error": "kiosk_release:verify_key: missing"},
        "pi-east-2": "answered twice, differently (a forged return): not believed",
        "pi-east-3": status_of(signed("1.4.0", 2000), staged=["1.4.0", "../x", 7])}, [KEY[1]])
    assert found["failed"] == {"pi-east-1": "kiosk_release:verify_key: missing",
                               "pi-east-2": "answered twice, differently (a forged return): not believed"}
    assert found["staged"] == ["1.4.0"]  # what is no version is not believed either
    # two genuine pins, one serial, two versions (two masters signing at once): none is chosen
    found = fleet_rollout.pis_pin("kiosk-app", "east", PIS[:2], {
        "pi-east-1": status_of(signed("1.4.0", 2000)), "pi-east-2": status_of(signed("1.3.0", 2000))}, [KEY[1]])
    assert found["pin"] is None and found["from"] == [] and "serial 2000: 1.3.0, 1.4.0" in found["conflict"]
    state = state_with({})
    assert fleet_rollout.rebuild_pin(state, "kiosk-app", "east", found, 5000) == ("conflict", None)
    assert state == state_with({})


def test_an_empty_state_gets_the_pis_pin_signed_as_it_was_held_and_its_history_from_the_staged_versions():
    pin = signed("1.4.0", 2000)
    found = fleet_rollout.pis_pin("kiosk-app", "east", PIS[:2], {
        "pi-east-1": status_of(pin, staged=["1.2.0", "1.3.0", "1.4.0", "1.5.0"]), "pi-east-2": status_of(None)},
        [KEY[1]])
    state = {"pins": {}, "pushed": {}, "to_stage": {"kiosk-app": {"east": 5}},
             "pushing": {"kiosk-app": {"east": {"serial": 5, "until": 9}}}}
    action, entry = fleet_rollout.rebuild_pin(state, "kiosk-app", "east", found, 5000)
    assert action == "rebuilt" and entry is state["pins"]["kiosk-app"]["east"]
    assert entry == {"version": "1.4.0", "serial": 2000, "history": ["1.2.0", "1.3.0"],
                     "at": "1970-01-01T00:33:20+00:00", "signed": pin, "rebuilt_at": "1970-01-01T01:23:20+00:00"}
    # held, not due: a standby never starts installs nobody ordered; stale claims of the lost master go
    assert state["pushed"] == {"kiosk-app": {"east": 2000}} and "to_stage" not in state and "pushing" not in state
    assert fleet_rollout.push_decision(state, "kiosk-app", "east", "1.4.0", 0)[0] is None
    # what the runner sends the Pis next is that same signed pin, no key needed
    assert fleet_rollout.pin_doc("kiosk-app", "east", entry, None) is pin
    # the next pin set on the standby goes above it
    assert fleet_rollout.set_pin(state, "kiosk-app", "east", "1.5.0", KEY[0], now=100)["serial"] == 2001
    assert state["pins"]["kiosk-app"]["east"]["history"] == ["1.2.0", "1.3.0", "1.4.0"]


def test_an_older_state_is_updated_a_newer_or_equal_one_kept_and_a_different_equal_one_is_a_conflict():
    old = {"version": "1.3.0", "serial": 1000, "history": ["1.2.0"], "signed": signed("1.3.0", 1000)}
    found = {"pin": signed("1.4.0", 2000), "from": ["pi-east-1"], "behind": {}, "refused": {}, "failed": {},
             "silent": [], "staged": ["1.0.0"], "conflict": None}
    state = state_with({"east": copy.deepcopy(old)})
    action, entry = fleet_rollout.rebuild_pin(state, "kiosk-app", "east", found, 5000)
    assert action == "updated" and entry["history"] == ["1.2.0", "1.3.0"] and entry["serial"] == 2000
    again = copy.deepcopy(state)
    assert fleet_rollout.rebuild_pin(again, "kiosk-app", "east", found, 6000)[0] == "kept" and again == state
    newer = state_with({"east": {"version": "1.5.0", "serial": 3000, "history": []}})
    before = copy.deepcopy(newer)
    assert fleet_rollout.rebuild_pin(newer, "kiosk-app", "east", found, 5000)[0] == "kept" and newer == before
    other = state_with({"east": {"version": "1.5.0", "serial": 2000, "history": [], "signed": signed("1.5.0", 2000)}})
    before = copy.deepcopy(other)
    assert fleet_rollout.rebuild_pin(other, "kiosk-app", "east", found, 5000)[0] == "conflict" and other == before
    none = dict(found, pin=None, **{"from": []})
    assert fleet_rollout.rebuild_pin(state_with({}), "kiosk-app", "east", dict(none, behind={"pi-east-1": None}),
                                     1)[0] == "none"
    assert fleet_rollout.rebuild_pin(state_with({}), "kiosk-app", "east", none, 1) == ("unanswered", None)
    assert fleet_rollout.rebuild_pin(state_with({"east": old}), "kiosk-app", "east", none, 1)[0] == "kept"


def test_a_frozen_pin_is_rebuilt_frozen():
    found = fleet_rollout.pis_pin("kiosk-app", "east", PIS[:1], {"pi-east-1": status_of(signed(None, 3000))},
                                  [KEY[1]])
    state = state_with({})
    action, entry = fleet_rollout.rebuild_pin(state, "kiosk-app", "east", found, 5000)
    assert action == "rebuilt" and entry["version"] is None and entry["history"] == ["1.3.0", "1.4.0"]


def test_the_rebuild_report_fails_on_refused_pins_conflicts_silence_and_versions_missing_from_the_store():
    good = {"pin": signed("1.4.0", 2000), "from": ["pi-east-1"], "behind": {"pi-east-2": None},
            "refused": {"pi-east-3": {"error": "pi-east-3.pin.signature: does not match", "version": None}},
            "failed": {}, "silent": [], "staged": [], "conflict": None}
    quiet = {"pin": None, "from": [], "behind": {}, "refused": {}, "failed": {}, "silent": ["pi-west-1"],
             "staged": [], "conflict": None}
    state = state_with({})
    campuses, missing, problems = fleet_rollout.rebuild_report(state, "kiosk-app", {"east": good, "west": quiet},
                                                               ["1.3.0"], 5000)
    assert campuses["east"] == {"action": "rebuilt", "pin": "1.4.0", "serial": 2000, "signed_at": 2000,
                                "from": ["pi-east-1"], "behind": {"pi-east-2": None},
                                "refused": good["refused"], "failed": {}, "silent": []}
    assert campuses["west"]["action"] == "unanswered" and campuses["west"]["pin"] is None
    assert missing == {"1.4.0": ["east"]}
    assert problems == ["east: the pin on pi-east-3 is refused: pi-east-3.pin.signature: does not match",
                        "west: no Pi gave a usable answer",
                        "kiosk-app 1.4.0 (pinned on east) is not in this master's store: copy the store from the "
                        "old master or its backup"]
    assert fleet_rollout.rebuild_report(state_with({}), "kiosk-app", {"east": dict(good, refused={})},
                                        ["1.4.0"], 5000)[1:] == ({}, [])
    assert fleet_rollout.missing_from_store({"a": None, "b": "1.0", "c": "1.0"}, []) == {"1.0": ["b", "c"]}


# --------------------------------------------------------------------------- rollback


def manifest_of(content):
    return {"files": {"app.msi": {"size": len(content), "md5": content, "sha256": content}}, "rollback_of": None}


def test_rollback_goes_back_to_the_newest_earlier_content_as_the_next_version():
    manifests = {"1.2.0": manifest_of("a"), "1.3.0": manifest_of("b"), "1.3.1": manifest_of("b"),
                 "1.4.0": manifest_of("c")}
    pin = {"version": "1.4.0", "history": ["1.2.0", "1.3.0", "1.3.1"]}
    assert fleet_rollout.rollback_plan("kiosk-app", "east", pin, manifests, ["1.2.0", "1.4.0", "1.5.0"]) == (
        "1.3.1", "1.5.1")
    # 1.3.1 has the same content as 1.4.0: skipped; one gone from the store: skipped
    manifests["1.4.0"] = manifest_of("b")
    assert fleet_rollout.rollback_plan("kiosk-app", "east", pin, manifests, ["1.4.0"])[0] == "1.2.0"
    del manifests["1.2.0"]
    raises(fleet_rollout.rollback_plan, "kiosk-app", "east", pin, manifests, ["1.4.0"],
           match=r"^campus: no earlier kiosk-app content to go back to from 1\.4\.0")


def test_a_second_rollback_goes_further_back_never_to_the_release_it_left():
    manifests = {"1.2.0": manifest_of("a"), "1.3.0": manifest_of("b"), "1.4.0": manifest_of("c"),
                 "1.4.1": dict(manifest_of("b"), rollback_of="1.3.0")}
    pin = {"version": "1.4.1", "history": ["1.2.0", "1.3.0", "1.4.0"]}
    assert fleet_rollout.rollback_plan("kiosk-app", "east", pin, manifests, list(manifests)) == ("1.2.0", "1.4.2")


@pytest.mark.parametrize("pin, match", [
    (None, r"^campus: east is not pinned to a kiosk-app version"),
    ({"version": None, "serial": 5, "history": ["1.0"]}, r"^campus: east is not pinned"),
    ({"version": "9.9", "history": []}, r"^version: kiosk-app 9\.9, the pin of east, is not published"),
    ({"version": "1.0", "history": [None, 5, "x", ["1.0"]]}, r"^campus: no earlier"),
])
def test_rollback_refuses_naming_the_field(pin, match):
    raises(fleet_rollout.rollback_plan, "kiosk-app", "east", pin, {"1.0": manifest_of("a")}, ["1.0"], match=match)


# --------------------------------------------------------------------------- staging rounds


def run_rounds(pis_by_campus, answer):
    """Drive stage_rounds with ``answer(hop, pi) -> return``; ``(jobs, report)``."""
    rounds, jobs, returns = fleet_rollout.stage_rounds(pis_by_campus), [], None
    try:
        while True:
            hop, wave = rounds.send(returns)
            jobs.append((hop, wave))
            returns = {pi: answer(hop, pi) for pis in wave.values() for pi in pis if answer(hop, pi) is not None}
    except StopIteration as done:
        return jobs, done.value


def staged(fetched=100):
    return {"result": True, "fetched": fetched}


def test_one_wan_copy_per_campus_then_lan_copies():
    jobs, report = run_rounds({"east": ["pi-e1", "pi-e2", "pi-e3"], "west": ["pi-w1"]},
                              lambda hop, pi: staged(100 if hop == "master->pi" else 0))
    assert jobs == [("master->pi", {"east": ["pi-e1"], "west": ["pi-w1"]}), ("pi->pi", {"east": ["pi-e2", "pi-e3"]})]
    assert report["east"]["seed"] == "pi-e1" and report["east"]["wan_bytes"] == 100
    assert report["east"]["staged_on"] == ["pi-e1", "pi-e2", "pi-e3"] and report["east"]["complete"] is True
    assert report["east"]["pis"]["pi-e2"] == {"staged": True, "source": "pi->pi"}


def test_a_failed_seed_is_replaced_and_a_failed_lan_copy_falls_back_to_the_master():
    def answer(hop, pi):
        if pi == "pi-e1":
            return {"result": False, "error": "disk: full"}
        if pi == "pi-e2" and hop == "pi->pi":
            return "ERROR: cannot reach the seed"
        return staged(50 if hop == "master->pi" else 0)

    jobs, report = run_rounds({"east": ["pi-e1", "pi-e2", "pi-e3"]}, answer)
    assert jobs == [("master->pi", {"east": ["pi-e1"]}), ("master->pi", {"east": ["pi-e2"]}),
                    ("pi->pi", {"east": ["pi-e1", "pi-e3"]}), ("master->pi", {"east": ["pi-e1"]})]
    east = report["east"]
    assert east["seed"] == "pi-e2" and east["wan_bytes"] == 50 and east["complete"] is False
    assert east["pis"]["pi-e1"] == {"staged": False, "source": "master->pi", "error": "disk: full"}
    assert fleet_rollout.unstaged(report) == []


def test_a_campus_whose_pis_all_fail_or_stay_silent_has_no_seed():
    jobs, report = run_rounds({"east": ["pi-e1", "pi-e2"], "west": []}, lambda hop, pi: None)
    assert jobs == [("master->pi", {"east": ["pi-e1"]}), ("master->pi", {"east": ["pi-e2"]})]
    assert report["east"]["pis"]["pi-e1"]["error"] == "did not answer" and report["east"]["wan_bytes"] == 0
    assert fleet_rollout.unstaged(report) == ["east", "west"]
    assert run_rounds({}, lambda hop, pi: None) == ([], {})


@pytest.mark.parametrize("fetched", [-5, True, "100", None, 1.5])
def test_wan_bytes_count_only_byte_counts(fetched):
    _jobs, report = run_rounds({"east": ["pi-e1"]}, lambda hop, pi: staged(fetched))
    assert report["east"]["wan_bytes"] == 0 and report["east"]["seed"] == "pi-e1"


# --------------------------------------------------------------------------- push results


def update(version="1.4.0", result=True, name="kiosk-app"):
    return {"result": result, "releases": {name: {"result": result, "version": version}}}


def test_push_results_tell_on_version_failed_and_silent_kiosks():
    returns = {"k1": update(), "k2": update("1.3.0"), "k3": {"result": False, "error": "disk: full"},
               "k4": "ERROR: kiosk_pkg.check_update broke", "k6": update(name="other"),
               "k7": {"result": True, "releases": ["x"]}, "k8": {"result": True, "releases": {"kiosk-app": {
                   "result": True, "installed": "1.4.0"}}}}
    kiosks = {"east": ["k1", "k2", "k3"], "west": ["k4", "k5", "k6", "k7", "k8"], "north": []}
    result = fleet_rollout.push_results(kiosks, returns, "kiosk-app", "1.4.0")
    assert result["north"] == {} and result["east"]["k1"] is True and result["west"]["k8"] is True
    assert result["east"]["k2"] == "failed" and result["east"]["k3"] == "disk: full"
    assert result["west"]["k4"] == "ERROR: kiosk_pkg.check_update broke" and result["west"]["k5"] == SILENT
    assert result["west"]["k6"] == "failed" and result["west"]["k7"] == "failed"
    assert fleet_rollout.failed_kiosks(result["west"]) == {k: result["west"][k] for k in ("k4", "k6", "k7")}
    assert fleet_rollout.push_succeeded(result["north"]) and not fleet_rollout.push_succeeded(result["east"])


@pytest.mark.parametrize("ret, why", [
    (None, "did not answer"), ({"result": False, "comment": "no"}, "no"), ({"result": False}, "failed"),
    ("x" * 500, "x" * 300), ({"error": {"nested": 1}}, "{'nested': 1}"),
])
def test_answer_error(ret, why):
    assert fleet_rollout.answer_error(ret) == why and not fleet_rollout.answer_ok(ret)


# --------------------------------------------------------------------------- rings (moved from fleet_release)


CAMPUSES = ["east", "west", "north"]


def test_plan_rings():
    assert fleet_rollout.plan_rings(CAMPUSES) == [CAMPUSES]
    assert fleet_rollout.plan_rings(CAMPUSES, canary="west") == [["west"], ["east", "north"]]
    assert fleet_rollout.plan_rings(["east"], canary="east") == [["east"]]
    assert fleet_rollout.plan_rings(CAMPUSES, rings="west;east,north") == [["west"], ["east", "north"]]
    assert fleet_rollout.plan_rings(CAMPUSES, rings=" west ; east , north, ") == [["west"], ["east", "north"]]
    assert fleet_rollout.plan_rings(CAMPUSES, rings=[["north"], ["east"]]) == [["north"], ["east"]]
    assert fleet_rollout.plan_rings(iter(CAMPUSES), canary="north") == [["north"], ["east", "west"]]


@pytest.mark.parametrize("kwargs, match", [
    ({"rings": "east;south,west"}, r"^rings: unknown campus south$"),
    ({"rings": "east,west;east"}, r"^rings: campus east appears twice$"),
    ({"rings": "east;;west"}, r"^rings: expected campus lists"),
    ({"rings": ";"}, r"^rings: expected campus lists"),
    ({"rings": 5}, r"^rings: expected campus lists"),
    ({"rings": [["east"], "west"]}, r"^rings: expected campus lists"),
    ({"rings": "east", "canary": "east"}, r"^rings/canary: give one or the other"),
    ({"canary": "south"}, r"^canary: 'south' is not one of east, west, north"),
    ({"canary": ["east"]}, r"^canary: \['east'\] is not one of"),
])
def test_bad_rings_are_refused_as_release_errors(kwargs, match):
    with pytest.raises(fleet_release.ReleaseError, match=match):
        fleet_rollout.plan_rings(CAMPUSES, **kwargs)
    raises(fleet_rollout.plan_rings, [], match="^campuses: ")


@pytest.mark.parametrize("good, value", [(0, 0.0), (1, 1.0), ("0.25", 0.25), (0.1, 0.1)])
def test_check_share_accepts(good, value):
    assert fleet_rollout.check_share(good) == value


@pytest.mark.parametrize("bad", [-0.01, 1.01, "half", None, True, float("nan"), "inf", [0.1], 10**400])
def test_check_share_refuses_naming_the_field(bad):
    with pytest.raises(fleet_rollout.RolloutError) as info:
        fleet_rollout.check_share(bad)
    assert str(info.value).startswith("max_error_share: ") and info.value.field == "max_error_share"


@pytest.mark.parametrize("results, threshold, verdict", [
    ({}, 0.0, (True, 0.0)),
    ({"k1": True, "k2": True}, 0.0, (True, 0.0)),
    ({"k1": True, "k2": False}, 0.0, (False, 0.5)),
    ({"k1": False, "k2": True, "k3": True, "k4": True}, 0.25, (True, 0.25)),  # exactly at the threshold: go on
    ({"k1": False, "k2": False, "k3": True, "k4": True}, 0.25, (False, 0.5)),
    ({f"k{i}": i >= 3 for i in range(10)}, 0.3, (True, 0.3)),
    ({f"k{i}": i >= 4 for i in range(10)}, 0.3, (False, 0.4)),
    ({"k1": False, "k2": True, "k3": True}, 0.3333, (False, 0.3333)),
    ({"k1": False, "k2": False}, 1.0, (True, 1.0)),
])
def test_ring_verdict_boundaries(results, threshold, verdict):
    assert fleet_rollout.ring_verdict(results, threshold) == verdict


def test_a_ring_halts_on_failed_kiosks_and_on_a_campus_no_pi_staged_but_not_on_silent_ones():
    staging = {"east": {"seed": "pi-e1"}, "west": {"seed": None}}
    kiosks = {"east": {"k1": True, "k2": SILENT, "k3": True}}
    entry = fleet_rollout.ring_outcome(["east", "west"], "1.4.0", staging, kiosks,
                                       {"east": ["k1", "k2", "k3"], "west": ["w1"]}, 0.5)
    assert entry["kiosks"]["west"] == {"w1": "west: no Pi staged 1.4.0"}
    assert entry["error_share"] == 0.3333 and entry["go_on"] is True and "error" not in entry
    entry = fleet_rollout.ring_outcome(["east", "west"], "1.4.0", staging, kiosks,
                                       {"east": ["k1", "k2", "k3"], "west": ["w1"]}, 0.0)
    assert entry["go_on"] is False and entry["error"] == (
        "halted after ring east, west: 33% of its kiosks are not on 1.4.0 (limit 0%)")
    quiet = fleet_rollout.ring_outcome(["east"], "1.4.0", {"east": {"seed": "pi-e1"}}, {"east": {"k2": SILENT}},
                                       {"east": ["k2"]}, 0.0)
    assert quiet["go_on"] is True and quiet["error_share"] == 0.0


def test_drift():
    installed = {"k3": "1.4.0", "k1": "1.3.0", "k2": None, "k4": "1.4.0", "k5": "garbage"}
    assert fleet_rollout.drift("1.4.0", installed) == {"k1": "1.3.0", "k2": None, "k5": "garbage"}
    assert list(fleet_rollout.drift("1.5", installed)) == ["k1", "k2", "k3", "k4", "k5"]
    assert fleet_rollout.drift(None, installed) == {}  # frozen or never pinned: nothing drifts


# --------------------------------------------------------------------------- status and metrics


def test_campus_status_reports_drift_mixed_versions_pis_without_the_pin_and_silent_kiosks():
    pin = {"version": "1.4.0", "serial": 1000}
    pi_returns = {"pi-1": {"result": True, "staged": ["1.4.0"], "pin": {"version": "1.4.0"}},
                  "pi-2": {"result": True, "staged": "not a list", "pin": "not a pin"},
                  "pi-3": "ERROR: broken"}
    kiosk_returns = {"k1": {"version": "1.4.0", "previous": "1.3.0"}, "k2": {"version": "1.3.0"},
                     "k3": "ERROR: no record", "k5": {"version": {"x": 1}}, "k6": {"version": "9x"}}
    entry, problems, on_pin, silent = fleet_rollout.campus_status(
        "east", pin, ["pi-1", "pi-2", "pi-3", "pi-4"], pi_returns, ["k1", "k2", "k3", "k4", "k5", "k6"], kiosk_returns)
    assert entry["pin"] == "1.4.0" and entry["serial"] == 1000
    assert entry["pis"] == {"pi-1": {"staged": ["1.4.0"], "pin": "1.4.0"}, "pi-2": {"staged": [], "pin": None},
                            "pi-3": {"error": "ERROR: broken"}, "pi-4": {"error": "did not answer"}}
    assert entry["kiosks"]["k1"] == {"installed": "1.4.0", "previous": "1.3.0"} and entry["kiosks"]["k4"] == {
        "silent": True}
    assert entry["drift"] == {"k2": "1.3.0", "k3": None, "k5": None, "k6": "9x"}
    assert entry["versions_running"] == ["1.3.0", "1.4.0", "9x"]
    assert entry["pis_without_pin"] == ["pi-2", "pi-3", "pi-4"]
    assert problems == ["east: 4 kiosk(s) not on 1.4.0", "east: kiosks run 1.3.0, 1.4.0, 9x",
                        "east: pi-2, pi-3, pi-4 lack 1.4.0"]
    assert on_pin == {"k1": True, "k2": False, "k3": False, "k5": False, "k6": False} and silent == ["k4"]
    entry, problems, on_pin, silent = fleet_rollout.campus_status("east", None, [], {}, ["k1"], {"k1": {}})
    assert problems == [] and on_pin is None and entry["drift"] == {} and entry["serial"] is None


def test_kiosk_counts_and_metric_families():
    counts = fleet_rollout.kiosk_counts({"east": {"k1": True, "k2": SILENT, "k3": "failed", "k4": False}},
                                        {"east": ["k9"]})
    assert counts == {"east": {"on_pin": 1, "drift": 2, "silent": 2}}
    state = state_with({"east": {"version": None, "serial": 7}})
    state["metrics"] = {"kiosks": {"kiosk-app": counts}, "runs": {"rollout": False},
                        "published": {"kiosk-app": {"version": "1.4.0", "bytes": 10}},
                        "wan": {"kiosk-app": {"east": 10}}}
    families = {f[0]: f[3] for f in fleet_rollout.metric_families(state)}
    assert families["kiosk_release_pin_serial"] == [({"name": "kiosk-app", "campus": "east", "version": "frozen"}, 7)]
    assert ({"name": "kiosk-app", "campus": "east", "state": "silent"}, 2) in families["kiosk_release_kiosks"]
    assert families["kiosk_release_last_run_success"] == [({"action": "rollout"}, False)]
    assert families["kiosk_release_stage_wan_bytes"] == [({"name": "kiosk-app", "campus": "east"}, 10)]
    assert families["kiosk_release_published_bytes"] == [({"name": "kiosk-app", "version": "1.4.0"}, 10)]


def test_stage_jobs_give_one_job_per_signed_pin_and_one_for_the_rest():
    pins = {"east": {"campus": "east"}, "west": {"campus": "west"}}
    wave = {"west": ["pi-w1"], "east": ["pi-e1", "pi-e2"], "north": ["pi-n1"], "south": ["pi-s1"]}
    assert fleet_rollout.stage_jobs(wave, pins) == [(["pi-e1", "pi-e2"], pins["east"], None),
                                                    (["pi-n1", "pi-s1"], None, None), (["pi-w1"], pins["west"], None)]
    assert fleet_rollout.stage_jobs({}, pins) == []


def test_stage_jobs_split_by_rate_so_each_campus_gets_its_own_cap():
    pins = {"east": {"campus": "east"}}
    wave = {"east": ["pi-e1"], "north": ["pi-n1"], "south": ["pi-s1"], "west": ["pi-w1"]}
    rates = {"east": 250000, "north": 250000, "south": None, "west": 250000}
    assert fleet_rollout.stage_jobs(wave, pins, rates) == [(["pi-e1"], pins["east"], 250000),
                                                           (["pi-n1", "pi-w1"], None, 250000),
                                                           (["pi-s1"], None, None)]


def test_hop_rates_cap_the_wan_hop_per_campus_and_the_lan_hop_only_with_lan_rate():
    wan = {"east": 250000, "west": None}
    assert fleet_rollout.hop_rates("master->pi", wan, None) == wan
    assert fleet_rollout.hop_rates("pi->pi", wan, None) == {"east": None, "west": None}
    assert fleet_rollout.hop_rates("pi->pi", wan, 12_500_000) == {"east": 12_500_000, "west": 12_500_000}
    report = {"east": {"seed": "pi-e1"}, "west": {"seed": None}}
    assert fleet_rollout.stage_rates(report, wan, None) == {"east": {"seed": "pi-e1", "rate": {"wan": 250000,
                                                                                                 "lan": None}},
                                                            "west": {"seed": None, "rate": {"wan": None, "lan": None}}}


def test_check_prune():
    assert fleet_rollout.check_prune(None) is True
    assert fleet_rollout.check_prune(False) is False and fleet_rollout.check_prune(True) is True
    for bad in ("no", 0, 1, [], "false"):
        raises(fleet_rollout.check_prune, bad, match=r"^kiosk_release:prune: .* is not true or false")


def test_prune_results_report_each_pi_and_never_raise():
    returns = {"pi-1": {"result": True, "removed": ["1.0.0"], "kept": ["1.1.0", "1.2.0"]},
               "pi-2": {"result": False, "error": "lock: busy"}, "pi-4": "Traceback: boom",
               "pi-5": {"result": True, "removed": "1.0.0"}}
    assert fleet_rollout.prune_results(["pi-1", "pi-2", "pi-3", "pi-4", "pi-5"], returns) == {
        "pi-1": {"removed": ["1.0.0"], "kept": ["1.1.0", "1.2.0"]}, "pi-2": {"error": "lock: busy"},
        "pi-3": {"error": "did not answer"}, "pi-4": {"error": "Traceback: boom"}, "pi-5": {"error": "failed"}}


def test_set_pins_and_status_report_cover_every_campus_named():
    state = state_with({})
    pins = fleet_rollout.set_pins(state, "kiosk-app", ["east", "west"], "1.4.0", KEY[0], now=1000)
    assert sorted(pins) == ["east", "west"] and pins["west"]["serial"] == 1000
    fleet_rollout.set_pin(state, "kiosk-app", "west", None, KEY[0], now=1001)
    campuses, problems, on_pin, silent = fleet_rollout.status_report(
        "kiosk-app", state, {"east": [], "west": []}, {"east": ["k1", "k2"], "west": ["w1"]},
        {}, {"k1": {"version": "1.4.0"}, "w1": {"version": "1.3.0"}})
    assert campuses["east"]["pin"] == "1.4.0" and campuses["west"]["pin"] is None
    assert problems == [] and on_pin == {"east": {"k1": True}} and silent == {"east": ["k2"], "west": []}


def test_select_campuses_names_unknown_ones():
    inventory = {"campuses": {"east": {}, "west": {}}}
    assert fleet_rollout.select_campuses(inventory, None) == ["east", "west"]
    assert fleet_rollout.select_campuses(inventory, "west") == ["west"]
    assert fleet_rollout.select_campuses(inventory, ["west", "east"]) == ["west", "east"]
    raises(fleet_rollout.select_campuses, inventory, "east,mars", match=r"^campuses: unknown campus mars \(known: east, "
                                                                          r"west\)$")
    raises(fleet_rollout.select_campuses, inventory, "mars", "campus", match=r"^campus: unknown campus mars")
    raises(fleet_rollout.select_campuses, inventory, {"east": 1}, match=r"^campuses: ")
