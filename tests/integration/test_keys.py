"""
Key acceptance on the session topology, with real daemons: no master
accepts every key (no ``auto_accept``); the top master autosigns the
inventory's Pis, each Pi master the ids of its own campus, and the two Pi
masters of a campus share the campus master key pair, which
``salt-run kiosk_fleet.campus_keys`` sends sealed to each Pi's key.
"""

import json
import pathlib
import time

import fleet_inventory
import fleet_keys
import pytest

pytestmark = pytest.mark.topology

# how long a minion that is not let in may take to present its key to both Pi masters
PRESENT_TIMEOUT = 30


def campus_fingerprint(topology, campus):
    return fleet_keys.fingerprint((pathlib.Path(topology.keys["campus_keys_dir"]) / f"{campus}.pub").read_bytes())


def inventory(topology):
    return fleet_inventory.validate(topology.inventory["kiosk_fleet"])


def test_no_master_accepts_every_key(topology):
    masters = [topology.top] + [pi.master for pi in topology.pis.values()]
    assert [m.id for m in masters if m.config["auto_accept"] or m.config["open_mode"]] == []
    assert topology.salt_key()["minions"] == fleet_keys.top_autosign_ids(inventory(topology))


def test_the_top_master_holds_each_pi_minion_key_for_its_syndic(topology):
    # the campus key is sealed to the key the top master accepted for the Pi's syndic, and
    # opened on the Pi with its minion's private key: one key pair for both
    for pi_id, pi in sorted(topology.pis.items()):
        accepted = (pathlib.Path(topology.top.config["pki_dir"]) / "minions" / pi_id).read_bytes()
        minion_pub = (pathlib.Path(pi.minion.config["pki_dir"]) / "minion.pub").read_bytes()
        assert fleet_keys.same_public_key(accepted, minion_pub), pi_id


def test_each_pi_master_accepts_its_campus_only_under_one_key_per_kiosk(topology):
    inv = inventory(topology)
    for campus, spec in sorted(inv["campuses"].items()):
        for pi_id in sorted(spec["pis"]):
            listed = topology.salt_key(pi_id)
            # its own minion and every kiosk of the campus; nothing pending, nothing of another campus
            assert listed["minions"] == sorted([pi_id, *spec["kiosks"]]), pi_id
            assert set(listed["minions"]) <= set(fleet_keys.autosign_ids(inv, campus))
            assert listed["minions_pre"] == listed["minions_rejected"] == listed["minions_denied"] == [], pi_id
            pki = pathlib.Path(topology.pis[pi_id].master.config["pki_dir"])
            assert fleet_keys.fingerprint((pki / "master.pub").read_bytes()) == campus_fingerprint(topology, campus)
            for kiosk_id in spec["kiosks"]:
                kiosk_pub = pathlib.Path(topology.kiosks[kiosk_id].config["pki_dir"]) / "minion.pub"
                assert fleet_keys.same_public_key((pki / "minions" / kiosk_id).read_bytes(), kiosk_pub.read_bytes())


def test_keys_runner_finds_every_kiosk_on_all_its_pis_under_one_key(topology):
    result = topology.salt_run("kiosk_fleet.keys", timeout=120)
    assert result.returncode == 0, result
    inv = inventory(topology)
    assert result.data["result"] is True, result.data
    for campus, spec in inv["campuses"].items():
        report = result.data["campuses"][campus]
        assert report["fingerprint"] == campus_fingerprint(topology, campus)
        assert report["pis"] == {pi: {"master": report["fingerprint"], "matches": True} for pi in spec["pis"]}
        assert report["kiosks"] == {"everywhere": sorted(spec["kiosks"]), "missing": {}, "differing": {}}
        assert (report["unexpected"], report["silent"], report["failed"], report["problems"]) == ({}, [], {}, [])


def test_campus_keys_reach_both_east_pis_and_change_no_key(topology):
    east = sorted(inventory(topology)["campuses"]["east"]["pis"])
    pkis = [pathlib.Path(topology.pis[pi].master.config["pki_dir"]) for pi in east]
    before = {str(p / name): (p / name).read_bytes() for p in pkis for name in ("master.pem", "master.pub")}
    # the first run also writes each Pi master's config snippet (kiosk_fleet.conf): changed or not
    first = topology.salt_run("kiosk_fleet.campus_keys", "campus=east", "timeout=60", timeout=120)
    assert first.returncode == 0, first
    assert sorted(first.data["pis"]) == east and first.data["result"] is True, first.data
    assert all(r["status"] in ("changed", "unchanged") for r in first.data["pis"].values()), first.data
    again = topology.salt_run("kiosk_fleet.campus_keys", "campus=east", "timeout=60", timeout=120)
    assert again.returncode == 0, again
    assert again.data["unchanged"] == east and again.data["changed"] == [], again.data
    assert again.data["campuses"] == {"east": {"fingerprint": campus_fingerprint(topology, "east")}}
    # the pair the Pis started with is the one sent: no key rewritten, nothing kept as previous
    assert {path: pathlib.Path(path).read_bytes() for path in before} == before
    assert [p for p in pkis if list(p.glob("*.previous"))] == []
    # neither the private key nor its envelope shows in a return
    for run in (first, again):
        text = json.dumps(run.data)
        assert fleet_keys.SEAL_PREFIX not in text and "PRIVATE KEY" not in text


def present_key(topology, minion_id, campus):
    """
    Start a minion ``minion_id`` with the multi-master settings of a kiosk of
    ``campus`` (every Pi master of the campus), not waiting for its start
    event (it is meant not to be let in): return the factory, running.
    """
    inv = inventory(topology)
    some_kiosk = sorted(inv["campuses"][campus]["kiosks"])[0]
    minion = topology.top.factories_manager.salt_minion_daemon(
        minion_id,
        overrides={**fleet_keys.kiosk_minion_config(inv, some_kiosk), "enable_fqdns_grains": False},
        max_start_attempts=1,
        start_timeout=30,
    )
    minion.start()
    return minion


def wait_not_accepted(topology, minion_id, pis):
    """
    Poll each Pi master's ``salt-key -L`` until ``minion_id`` shows there as
    pending or rejected on every one of ``pis``; fail at once if one accepted
    it. Returns ``{pi: state}``.
    """
    deadline = time.monotonic() + PRESENT_TIMEOUT
    seen = {}
    while True:
        for pi_id in pis:
            listed = topology.salt_key(pi_id)
            assert minion_id not in listed["minions"], f"{pi_id} accepted {minion_id}"
            state = next((s for s in ("minions_pre", "minions_rejected", "minions_denied") if minion_id in listed[s]), None)
            if state:
                seen[pi_id] = state
        if set(seen) == set(pis):
            return seen
        assert time.monotonic() < deadline, f"{minion_id} did not show up on {sorted(set(pis) - set(seen))}"
        time.sleep(1)


def forget_key(topology, minion_id, pis):
    for pi_id in pis:
        topology.pis[pi_id].master.salt_key_cli(timeout=60).run("-y", "-d", minion_id)


@pytest.mark.parametrize("minion_id", ["kiosk-east-99", "kiosk-west-01"],
                         ids=["not-in-the-inventory", "a-west-kiosk"])
def test_east_pis_do_not_accept_ids_their_campus_does_not_list(topology, minion_id):
    east = topology.campus_pis("kiosk-east-01")
    minion = present_key(topology, minion_id, "east")
    try:
        states = wait_not_accepted(topology, minion_id, east)
    finally:
        minion.terminate()
        forget_key(topology, minion_id, east)
    assert set(states.values()) <= {"minions_pre", "minions_rejected", "minions_denied"}
    if minion_id in topology.kiosks:
        # the real kiosk is still accepted on its own campus's Pis, under its own key
        for pi_id in topology.campus_pis(minion_id):
            assert minion_id in topology.salt_key(pi_id)["minions"]
