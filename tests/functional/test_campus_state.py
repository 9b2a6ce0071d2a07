"""
``states/kiosk_fleet/campus.sls`` through ``salt-call --local`` (the repo's
states, a pillar file, scratch folders, no daemon): the Pi master's
master.d snippet holds the campus settings the runner accepts and its
``schedule:`` (probe, tick, maxrunning 1); a Pi the pillar does not
place, or without verify keys, is refused with nothing written.
"""

import json
import pathlib

import yaml

import fleet_campus
import fleet_inventory
import fleet_sign
from tests.support.salt_local import salt_call
from tests.support.topology import two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
_, VERIFY = fleet_sign.new_key_pair()


def local_pi(root, pi, pillar):
    root = pathlib.Path(root)
    (root / "pillar").mkdir(parents=True)
    (root / "pillar" / "top.sls").write_text("base:\n  '*':\n    - fleet\n")
    (root / "pillar" / "fleet.sls").write_text(yaml.safe_dump(pillar))
    (root / "minion").write_text(yaml.safe_dump({
        "id": pi, "file_client": "local", "enable_fqdns_grains": False, "root_dir": str(root / "r"),
        "user": "root", "module_dirs": [str(REPO)], "states_dirs": [str(REPO / "_states")],
        "file_roots": {"base": [str(REPO / "states")]}, "pillar_roots": {"base": [str(root / "pillar")]},
        "kiosk_fleet": {"master_config_dir": str(root / "master.d"), "restart": False},
    }))
    return root


def pillar_for(pi, tmp_path, **campus):
    fleet = two_campus_inventory(wol_port=40009)
    return {**fleet_inventory.slice_for(fleet, pi), "kiosk_release": {"verify_key": [VERIFY]},
            "kiosk_campus": {"dir": str(tmp_path / "campus"), "repo_dir": str(tmp_path / "repo"), **campus}}


def changed(states):
    return sorted(s["__id__"] for s in states.values() if s["changes"])


def test_campus_sls_writes_the_pi_master_schedule_and_settings(tmp_path):
    root = local_pi(tmp_path / "pi", "pi-west-2",
                    pillar_for("pi-west-2", tmp_path, probe_seconds=5, tick_s=2, stale_s=12))
    code, states, err = salt_call(root, "state.apply", "kiosk_fleet.campus")
    assert code == 0, (states, err[-2000:])
    assert changed(states) == ["kiosk_campus_dir", "kiosk_campus_master_config", "kiosk_campus_served"]
    snippet = yaml.safe_load((root / "master.d" / "kiosk_campus.conf").read_text())
    assert snippet["schedule"] == {
        "kiosk_campus_probe": {"function": "kiosk_campus.probe", "seconds": 5, "maxrunning": 1, "run_on_start": True},
        "kiosk_campus_tick": {"function": "kiosk_campus.tick", "seconds": 2, "maxrunning": 1, "run_on_start": True}}
    conf = fleet_campus.settings(snippet["kiosk_campus"])  # what the runner will read
    assert (conf["campus"], conf["pi"], conf["stale_s"], conf["verify_key"]) == ("west", "pi-west-2", 12, [VERIFY])
    assert conf["tick_s"] == 2  # the runner sleeps for a transition at most one tick ahead
    assert conf["probe_s"] == 5  # a peer status is up to one probe interval old when fetched
    assert (tmp_path / "campus").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "repo" / "campus").is_dir()
    code, again, err = salt_call(root, "state.apply", "kiosk_fleet.campus", "test=True")
    assert code == 0 and changed(again) == [], (again, err[-2000:])


def test_campus_sls_refuses_a_pi_without_campus_or_keys(tmp_path):
    pillar = pillar_for("pi-east-1", tmp_path)
    pillar["kiosk_release"] = {}
    root = local_pi(tmp_path / "pi", "pi-east-1", pillar)
    code, states, _ = salt_call(root, "state.apply", "kiosk_fleet.campus")
    assert code != 0 and "no verify_key" in json.dumps(states)
    stranger = local_pi(tmp_path / "stranger", "pi-north-9", pillar_for("pi-east-1", tmp_path))
    code, states, _ = salt_call(stranger, "state.apply", "kiosk_fleet.campus")
    assert code != 0 and "no campus for pi-north-9" in json.dumps(states)
    assert not (tmp_path / "pi" / "master.d").exists() and not (tmp_path / "stranger" / "master.d").exists()


def test_campus_sls_refuses_a_probe_interval_that_breaks_the_failover_bound(tmp_path):
    root = local_pi(tmp_path / "pi", "pi-east-1", pillar_for("pi-east-1", tmp_path, probe_seconds=600))
    code, states, _ = salt_call(root, "state.apply", "kiosk_fleet.campus")
    assert code != 0 and "probe_seconds" in json.dumps(states)
    assert not (root / "master.d").exists()


def rendered_settings(root):
    code, states, err = salt_call(root, "state.show_sls", "kiosk_fleet.campus")
    assert code == 0, (states, err[-2000:])
    dataset = next(arg["dataset"] for arg in states["kiosk_campus_master_config"]["file"] if isinstance(arg, dict)
                   and "dataset" in arg)
    return fleet_campus.settings(dataset["kiosk_campus"])


def test_campus_sls_serves_the_status_from_the_folder_nginx_serves(tmp_path):
    # the release repository's pillar decides where nginx serves /kiosk-releases/ from
    pillar = pillar_for("pi-east-1", tmp_path)
    del pillar["kiosk_campus"]["repo_dir"]
    pillar["kiosk_release_repo"] = {"repo_dir": str(tmp_path / "served")}
    assert rendered_settings(local_pi(tmp_path / "a", "pi-east-1", pillar))["repo_dir"] == str(tmp_path / "served")
    # nothing set: the release repository's default, which is also the runner's
    del pillar["kiosk_release_repo"]
    conf = rendered_settings(local_pi(tmp_path / "b", "pi-east-1", pillar))
    assert conf["repo_dir"] == "/srv/kiosk-releases" == fleet_campus.SETTINGS["repo_dir"][0]
    assert "/srv/kiosk-releases" in (REPO / "states" / "kiosk_fleet" / "release_repo.sls").read_text()


def test_campus_sls_refuses_a_staleness_that_breaks_the_failover_bound(tmp_path):
    # a dead leader is seen stale_s after its last status, which is up to one probe interval old
    root = local_pi(tmp_path / "pi", "pi-east-1", pillar_for("pi-east-1", tmp_path, probe_seconds=20, stale_s=45))
    code, states, _ = salt_call(root, "state.apply", "kiosk_fleet.campus")
    assert code != 0 and "stale_s + probe_seconds" in json.dumps(states)
    assert not (root / "master.d").exists()
    # the defaults keep a margin under 60 s
    assert fleet_campus.SETTINGS["stale_s"][0] + 20 <= 50
