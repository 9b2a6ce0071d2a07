"""Release policy of the top master: confined sources, events as hints, pushes marked after success, rings."""

import copy
import os
import re
import stat

import pytest

import fleet_release
import fleet_rollout

SILENT = "silent"


def raises(fn, *args, match):
    with pytest.raises(ValueError) as info:
        fn(*args)
    assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- keys


def test_key_pair_signs_and_verifies_and_the_public_key_is_derived_from_the_private_one():
    private, public = fleet_rollout.new_key_pair()
    assert b"PRIVATE KEY" in private and "PUBLIC KEY" in public and "PRIVATE" not in public
    assert fleet_rollout.public_key_of(private) == public
    doc = fleet_release.sign_manifest({"name": "kiosk-app", "version": "1.0.0"}, private)
    fleet_release.verify_signature(doc, public)
    other = fleet_rollout.new_key_pair()[1]
    with pytest.raises(ValueError):
        fleet_release.verify_signature(doc, other)


def test_a_key_that_is_not_ed25519_or_not_a_key_is_refused_naming_the_field():
    raises(fleet_rollout.public_key_of, b"not a key", match=r"^signing_key: not an unencrypted PEM")
    raises(fleet_rollout.public_key_of, fleet_rollout.new_key_pair()[1].encode(), match=r"^signing_key:")


@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o644, False)])
def test_a_private_key_readable_by_others_is_refused(mode, ok):
    if ok:
        fleet_rollout.check_key_mode(stat.S_IFREG | mode)
    else:
        raises(fleet_rollout.check_key_mode, stat.S_IFREG | mode, match=r"^signing_key: mode 0\d+ lets others read")


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
