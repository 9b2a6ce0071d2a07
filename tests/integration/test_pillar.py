"""
Need-to-know pillar on the topology: each Pi master renders the pillar of its
campus's minions from its campus's part of the fleet data; the top master's
runners read the whole file, which no minion receives.
"""

import json

import pytest

pytestmark = pytest.mark.topology


def pillar_of(topology, minion_id):
    result = topology.salt("pillar.items", tgt=minion_id)
    assert result.returncode == 0, result
    assert isinstance(result.data, dict) and "_errors" not in result.data, result
    return result.data  # one minion targeted: saltfactories gives its return itself


def every_kiosk(topology):
    return {k: (c, spec) for c, cs in topology.inventory["kiosk_fleet"]["campuses"].items()
            for k, spec in cs["kiosks"].items()}


def test_a_kiosk_holds_its_own_entry_and_no_other_kiosk(topology):
    for kiosk_id, (campus, _) in every_kiosk(topology).items():
        pillar = pillar_of(topology, kiosk_id)
        campuses = pillar["kiosk_fleet"]["campuses"]
        assert list(campuses) == [campus], kiosk_id
        assert list(campuses[campus]["kiosks"]) == [kiosk_id]
        assert sorted(campuses[campus]["pis"]) == sorted(topology.inventory["kiosk_fleet"]["campuses"][campus]["pis"])
        assert pillar["kiosk_release"]["verify_key"] == topology.verify_keys
        assert "kiosk_fleet_schedules" not in pillar
        text = json.dumps(pillar)
        for other_id, (_, other) in every_kiosk(topology).items():
            if other_id == kiosk_id:
                continue
            # no other kiosk's id, MAC (as written), IP or location
            for value in (other_id, other["mac"], f'"{other["ip"]}"', other["location"]):
                assert value not in text, f"{kiosk_id} holds {value} of {other_id}"
        for other_campus in set(topology.inventory["kiosk_fleet"]["campuses"]) - {campus}:
            assert other_campus not in text, f"{kiosk_id} holds campus {other_campus}"


def test_a_pi_holds_its_campus_only(topology):
    campuses = topology.inventory["kiosk_fleet"]["campuses"]
    for campus, spec in campuses.items():
        for pi_id in spec["pis"]:
            pillar = pillar_of(topology, pi_id)
            assert list(pillar["kiosk_fleet"]["campuses"]) == [campus]
            assert sorted(pillar["kiosk_fleet"]["campuses"][campus]["kiosks"]) == sorted(spec["kiosks"])
            assert pillar["kiosk_release"]["verify_key"] == topology.verify_keys
            text = json.dumps(pillar)
            for other, other_spec in campuses.items():
                if other != campus:
                    assert other not in text
                    assert not any(k in text for k in other_spec["kiosks"])


def test_minions_validate_their_slice_and_know_their_place(topology):
    result = topology.salt("kiosk_fleet.whoami", tgt="*")
    assert result.returncode == 0, result
    assert sorted(result.data) == topology.minion_ids
    for minion_id, me in result.data.items():
        expected = next(c for c, s in topology.inventory["kiosk_fleet"]["campuses"].items()
                        if minion_id in s["kiosks"] or minion_id in s["pis"])
        assert me["campus"] == expected, (minion_id, me)


def test_the_runners_still_see_the_whole_fleet(topology):
    result = topology.salt_run("kiosk_fleet.inventory")
    assert result.returncode == 0, result
    inv = result.data["inventory"]
    assert sorted(inv["campuses"]) == sorted(topology.inventory["kiosk_fleet"]["campuses"])
    assert sorted(k for c in inv["campuses"].values() for k in c["kiosks"]) == sorted(every_kiosk(topology))
    assert result.data["counts"] == {"east": {"pis": 2, "kiosks": 2}, "west": {"pis": 2, "kiosks": 2}}


def test_the_master_id_star_compiles_no_fleet_pillar(topology):
    # what the runners used to read: pillar compiled on the top master for id "*" holds nothing now
    result = topology.salt_run("pillar.show_pillar")
    assert result.returncode == 0, result
    assert "kiosk_fleet" not in result.data and "kiosk_fleet_changes" not in result.data


def test_campus_data_writes_what_a_campus_pi_master_renders_from(topology, tmp_path):
    import fleet_inventory

    dest = tmp_path / "east.yaml"
    result = topology.salt_run("kiosk_fleet.campus_data", "campus=east", f"dest={dest}")
    assert result.returncode == 0, result
    assert (dest.stat().st_mode & 0o777) == 0o640
    written = fleet_inventory.load_data(str(dest))
    # the same part the topology's east Pi masters render pillar from
    assert written == fleet_inventory.load_data(topology.salt_tree["campus_data"]["east"])
    assert list(written["kiosk_fleet"]["campuses"]) == ["east"]
    bad = topology.salt_run("kiosk_fleet.campus_data", "campus=north")
    assert bad.returncode == 1 and bad.data["error"].startswith("campus: unknown campus north"), bad
