"""
The production shape on loopback: top master -> Pi syndics -> kiosks.
"""

import pathlib
import time

import pytest

pytestmark = pytest.mark.topology

REPO = pathlib.Path(__file__).resolve().parents[2]


def pack_names(folder):
    return sorted(p.stem for p in (REPO / folder).glob("*.py") if not p.name.startswith("_"))


def test_every_kiosk_answers_through_its_pi(topology):
    result = topology.salt("test.ping", tgt="*")
    assert result.returncode == 0, result
    assert result.data == dict.fromkeys(topology.minion_ids, True)


def test_grain_targeting_reaches_one_campus_behind_the_syndics(topology):
    result = topology.salt("-G", "test.ping", tgt="campus:east")
    assert result.returncode == 0, result
    east = topology.inventory["kiosk_fleet"]["campuses"]["east"]
    assert sorted(result.data) == sorted(list(east["pis"]) + list(east["kiosks"]))


def test_pack_is_synced_to_every_minion(topology):
    # what saltutil.sync_all reported per minion when the topology came up
    assert sorted(topology.synced) == topology.minion_ids
    for minion_id, synced in topology.synced.items():
        for folder, kind in (("_modules", "modules"), ("_utils", "utils"), ("_beacons", "beacons"), ("_states", "states"),
                             ("_grains", "grains")):
            missing = {f"{kind}.{name}" for name in pack_names(folder)} - set(synced.get(kind, []))
            assert not missing, f"{minion_id} was not synced {missing}"


def test_platform_independent_modules_load_everywhere(topology):
    # kiosk_reg needs Windows or Wine, kiosk_scan needs nmap: their __virtual__
    # may decline; these must load on every minion
    result = topology.salt("sys.list_modules", tgt="*")
    assert result.returncode == 0, result
    for minion_id, modules in result.data.items():
        missing = {"kiosk_fleet", "kiosk_power", "kiosk_wol", "kiosk_env"} - set(modules)
        assert not missing, f"{minion_id} did not load {missing}"


def test_kiosk_knows_its_place_in_the_fleet(topology):
    result = topology.salt("kiosk_fleet.whoami", tgt="kiosk-west-02")
    assert result.returncode == 0, result
    me = result.data
    assert me["role"] == "kiosk" and me["campus"] == "west"
    # the inventory wrote this MAC in bare hex: the pillar copy is normalised
    assert me["kiosk"]["mac"] == "52:54:00:a1:00:02"


def test_kiosk_event_reaches_the_top_master_reactor_once_per_pi(topology, event_listener):
    kiosk_id = "kiosk-east-02"
    start = time.time()
    sent = topology.kiosks[kiosk_id].salt_call_cli(timeout=60).run("event.send", "kiosk/boot")
    assert sent.returncode == 0, sent
    # the reactor answers kiosk/boot by syncing the pack to that kiosk
    matched = event_listener.wait_for_events(
        [(topology.top.id, "salt/job/*/new")], after_time=start, timeout=60
    )
    jobs = [e for e in matched.matches if e.data.get("fun") == "saltutil.sync_all"]
    assert jobs, f"no saltutil.sync_all job on the top master after kiosk/boot: {matched.matches}"
    assert jobs[0].data["tgt"] == kiosk_id and jobs[0].data["tgt_type"] == "list"
    # a multi-master kiosk sends the event to each of its Pis: one plain copy per Pi, and each
    # again as syndic/<pi>/kiosk/boot; the reactor matches the plain copies only: one sync per Pi
    time.sleep(5)
    jobs = [
        e
        for e in event_listener.get_events([(topology.top.id, "salt/job/*/new")], after_time=start)
        if e.data.get("fun") == "saltutil.sync_all" and e.data.get("tgt") == kiosk_id
    ]
    assert len(jobs) == len(topology.campus_pis(kiosk_id)), jobs
    # and records the boot once (kiosk_restarts.boot asks the kiosk itself for its boot time): no wake
    # was sent, so it is an unexpected restart, counted once for the copies from both Pis
    deadline = time.monotonic() + 90
    while True:
        shown = topology.salt_run("kiosk_restarts.show", f"kiosk={kiosk_id}")
        assert shown.returncode == 0, shown
        if kiosk_id in shown.data["kiosks"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert shown.data["kiosks"][kiosk_id]["boots"] == 1 and shown.data["kiosks"][kiosk_id]["unexpected"] == 1, shown
    [restart] = shown.data["unexpected"]
    assert restart["kiosk"] == kiosk_id and "no wake" in restart["reason"], restart
    metrics = (pathlib.Path(topology.release_dir["textfile_dir"]) / "kiosk_restarts.prom").read_text()
    assert f'kiosk_unexpected_restarts_total{{campus="east",kiosk="{kiosk_id}"}} 1' in metrics, metrics


def test_ping_runner_names_the_kiosks_that_answer(topology):
    result = topology.salt_run("kiosk_fleet.ping", "campus=west")
    assert result.returncode == 0, result
    assert result.data["campuses"]["west"] == {"up": ["kiosk-west-01", "kiosk-west-02"], "down": []}


def test_runner_fails_with_non_zero_exit_on_unknown_kiosk(topology):
    result = topology.salt_run("kiosk_fleet.ping", "kiosks=kiosk-nowhere-9")
    assert result.returncode == 1
    assert result.data["result"] is False and result.data["retcode"] == 1
    assert "kiosk-nowhere-9" in result.data["error"]
