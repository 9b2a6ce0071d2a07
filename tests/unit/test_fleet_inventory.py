import copy
import pathlib

import pytest

import fleet_inventory
from tests.support.topology import two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def raw():
    return copy.deepcopy(two_campus_inventory(wol_port=40009)["kiosk_fleet"])


def errors_of(data):
    with pytest.raises(fleet_inventory.InventoryError) as info:
        fleet_inventory.validate(data)
    return info.value.errors


def test_valid_inventory_is_normalised(raw):
    inv = fleet_inventory.validate(raw)
    east = inv["campuses"]["east"]
    assert east["kiosks"]["kiosk-east-02"]["mac"] == "52:54:00:e1:00:02"
    assert east["vlans"]["stairs"]["broadcast"] == "127.0.2.255"
    assert east["kiosks"]["kiosk-east-01"]["service_port"] == 3389
    assert inv["campuses"]["west"]["wol_port"] == 40009


def test_shipped_sample_fleet_data_is_valid():
    sample = fleet_inventory.load_data(str(REPO / "pillar" / "fleet.yaml"))
    inv = fleet_inventory.validate(sample["kiosk_fleet"])
    assert len(inv["campuses"]) == 2
    assert sum(len(c["kiosks"]) for c in inv["campuses"].values()) >= 6
    assert all(len(c["pis"]) == 2 for c in inv["campuses"].values())


def test_duplicate_mac_names_both_kiosks(raw):
    raw["campuses"]["west"]["kiosks"]["kiosk-west-02"]["mac"] = "52:54:00:E1:00:01"
    [error] = errors_of(raw)
    assert error.startswith("campuses.west.kiosks.kiosk-west-02.mac")
    assert "campuses.east.kiosks.kiosk-east-01" in error


def test_every_problem_is_reported_at_once(raw):
    kiosk = raw["campuses"]["east"]["kiosks"]["kiosk-east-01"]
    kiosk["mac"] = "52:54:00:zz:00:01"
    kiosk["vlan"] = "roof"
    raw["campuses"]["west"]["kiosks"]["kiosk-west-01"]["ip"] = "127.0.9.1"
    raw["campuses"]["west"]["timezone"] = "Mars/Olympus"
    errors = errors_of(raw)
    assert any(e.startswith("campuses.east.kiosks.kiosk-east-01.mac:") for e in errors)
    assert any(e.startswith("campuses.east.kiosks.kiosk-east-01.vlan: 'roof'") for e in errors)
    assert any(e.startswith("campuses.west.kiosks.kiosk-west-01.ip: 127.0.9.1 is outside") for e in errors)
    assert any(e.startswith("campuses.west.timezone:") for e in errors)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r["campuses"]["east"]["vlans"].update(bad={"network": "300.1.1.0/24"}), "campuses.east.vlans.bad.network"),
        (lambda r: r["campuses"]["east"].update(wol_port=70000), "campuses.east.wol_port"),
        (lambda r: r["campuses"]["east"].update(pis={}), "campuses.east.pis"),
        (lambda r: r["campuses"]["east"]["pis"].update({"pi-east-1": {"vlans": {"roof": {}}}}), "campuses.east.pis.pi-east-1.vlans.roof"),
        (lambda r: r["campuses"]["west"]["kiosks"].update({"pi-east-1": r["campuses"]["west"]["kiosks"].pop("kiosk-west-01")}), "campuses.west.kiosks.pi-east-1"),
        (lambda r: r["campuses"]["east"]["kiosks"]["kiosk-east-01"].update(service_port="rdp"), "campuses.east.kiosks.kiosk-east-01.service_port"),
        (lambda r: r["campuses"]["east"]["vlans"]["hall"].update(broadcast="127.0.5.255"), "campuses.east.vlans.hall.broadcast"),
        (lambda r: r["campuses"].update({"bad campus!": {}}), "campuses.bad campus!"),
    ],
)
def test_bad_field_is_named(raw, mutate, field):
    mutate(raw)
    assert any(e.startswith(field) for e in errors_of(raw)), errors_of(raw)


def test_empty_or_wrong_type_inventory():
    assert errors_of(None) == ["campuses: the inventory holds no campus"]
    assert errors_of({"campuses": []})[0].startswith("campuses: expected a mapping")


def test_select_kiosks(raw):
    inv = fleet_inventory.validate(raw)
    assert fleet_inventory.select_kiosks(inv, campus="west") == {"west": ["kiosk-west-01", "kiosk-west-02"]}
    assert fleet_inventory.select_kiosks(inv, kiosks="kiosk-west-02,kiosk-east-01, kiosk-west-02") == {
        "west": ["kiosk-west-02"],
        "east": ["kiosk-east-01"],
    }
    with pytest.raises(fleet_inventory.InventoryError, match="unknown kiosk kiosk-x, pi-east-1"):
        fleet_inventory.select_kiosks(inv, kiosks=["kiosk-x", "pi-east-1"])
    with pytest.raises(fleet_inventory.InventoryError, match="unknown campus north"):
        fleet_inventory.select_kiosks(inv, campus="north")
    with pytest.raises(fleet_inventory.InventoryError, match="belongs to campus west"):
        fleet_inventory.select_kiosks(inv, kiosks="kiosk-west-01", campus="east")
    with pytest.raises(fleet_inventory.InventoryError, match="name kiosks"):
        fleet_inventory.select_kiosks(inv)
    assert fleet_inventory.pis_of(inv, "east") == ["pi-east-1", "pi-east-2"]
    assert fleet_inventory.campus_of(inv, "pi-west-2") == "west"


def test_from_pillar_reads_the_kiosk_fleet_key(raw):
    assert fleet_inventory.from_pillar({"kiosk_fleet": raw, "other": 1})["campuses"]["east"]["wol_port"] == 40009
    with pytest.raises(fleet_inventory.InventoryError, match="pillar: expected a mapping"):
        fleet_inventory.from_pillar(None)
    with pytest.raises(fleet_inventory.InventoryError, match="holds no campus"):
        fleet_inventory.from_pillar({})


def test_home_pi_spreads_kiosks_over_the_campus_pis(raw):
    east = raw["campuses"]["east"]
    assert [fleet_inventory.home_pi(east, k) for k in sorted(east["kiosks"])] == ["pi-east-1", "pi-east-2"]
    assert fleet_inventory.names(" a, b ,", "campus") == ["a", "b"] and fleet_inventory.names(None, "campus") == []


def test_pi_master_and_campus_master_port(raw):
    east = raw["campuses"]["east"]
    east["master_port"] = 14506
    east["pis"]["pi-east-1"]["master"] = "pi-east-1.campus.lan"
    east["pis"]["pi-east-2"]["master"] = "127.0.9.3:4600"
    inv = fleet_inventory.validate(raw)
    assert inv["campuses"]["east"]["master_port"] == 14506
    assert inv["campuses"]["west"]["master_port"] == fleet_inventory.DEFAULT_MASTER_PORT == 4506
    assert inv["campuses"]["east"]["pis"]["pi-east-1"]["master"] == "pi-east-1.campus.lan:14506"
    assert inv["campuses"]["east"]["pis"]["pi-east-2"]["master"] == "127.0.9.3:4600"
    assert "master" not in inv["campuses"]["west"]["pis"]["pi-west-1"]


@pytest.mark.parametrize("value", ["", "host:", "host:0", "host:70000", "-bad-.lan", "a b", "[::1]:4506", 4506,
                                   ["127.0.0.1"], "host:45x6", "127.0.0.1:4506:1"])
def test_bad_pi_master_is_named(raw, value):
    raw["campuses"]["west"]["pis"]["pi-west-2"]["master"] = value
    assert any(e.startswith("campuses.west.pis.pi-west-2.master:") for e in errors_of(raw)), errors_of(raw)


@pytest.mark.parametrize("value", [0, "4506", True, 65536])
def test_bad_master_port_is_named(raw, value):
    raw["campuses"]["west"]["master_port"] = value
    assert any(e.startswith("campuses.west.master_port:") for e in errors_of(raw)), errors_of(raw)


def test_kiosk_and_pi_slices_carry_the_campus_pis_with_master(raw):
    raw["campuses"]["east"]["master_port"] = 14506
    raw["campuses"]["east"]["pis"]["pi-east-2"]["master"] = "127.0.9.3"
    fleet = {"kiosk_fleet": raw}
    for minion_id in ("kiosk-east-02", "pi-east-1"):
        inv = fleet_inventory.from_pillar(fleet_inventory.slice_for(fleet, minion_id))
        east = inv["campuses"]["east"]
        assert list(inv["campuses"]) == ["east"]
        assert sorted(east["pis"]) == ["pi-east-1", "pi-east-2"]
        assert east["pis"]["pi-east-2"]["master"] == "127.0.9.3:14506"
        assert east["master_port"] == 14506


def _select_by_search(inv, kiosk_ids, campus_names):
    """select_kiosks's kiosks= branch as it was (a campus walk and a list search per id): the oracle."""
    selection, unknown = {}, []
    for kiosk_id in kiosk_ids:
        try:
            where = fleet_inventory.campus_of(inv, kiosk_id)
        except fleet_inventory.InventoryError:
            unknown.append(kiosk_id)
            continue
        if kiosk_id not in inv["campuses"][where]["kiosks"]:
            unknown.append(kiosk_id)
            continue
        if campus_names and where not in campus_names:
            raise fleet_inventory.InventoryError(
                f"kiosks: {kiosk_id} belongs to campus {where}, not {', '.join(campus_names)}")
        selection.setdefault(where, [])
        if kiosk_id not in selection[where]:
            selection[where].append(kiosk_id)
    if unknown:
        raise fleet_inventory.InventoryError(f"kiosks: unknown kiosk {', '.join(unknown)}")
    return selection


def _outcome(call):
    try:
        return call()
    except fleet_inventory.InventoryError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("kiosks,campus", [
    (["kiosk-east-01", "kiosk-west-02", "kiosk-east-01", "kiosk-west-01", "kiosk-west-02"], None),
    (["kiosk-west-02", "kiosk-west-01", "kiosk-west-02"], "west"),
    (["kiosk-west-02", "kiosk-x", "pi-west-1", "kiosk-x", "kiosk-east-01"], None),
    (["kiosk-west-01", "kiosk-east-01"], "west"),
    (["kiosk-x", "kiosk-east-01"], "west,east"),
    ("kiosk-east-01,kiosk-east-01", "east"),
])
def test_select_kiosks_by_map_matches_the_list_search(raw, kiosks, campus):
    # the map-and-set selection keeps the order of first mention, drops repeats,
    # and raises the same texts as the per-id campus walk it replaced
    inv = fleet_inventory.validate(raw)
    expected = _outcome(lambda: _select_by_search(inv, fleet_inventory.names(kiosks, "kiosks"),
                                                  fleet_inventory.names(campus, "campus")))
    assert _outcome(lambda: fleet_inventory.select_kiosks(inv, kiosks=kiosks, campus=campus)) == expected


def test_select_kiosks_keeps_first_mention_order_and_exact_errors(raw):
    inv = fleet_inventory.validate(raw)
    assert fleet_inventory.select_kiosks(inv, kiosks=["kiosk-west-02", "kiosk-east-01", "kiosk-west-01",
                                                      "kiosk-west-02", "kiosk-east-01"]) == {
        "west": ["kiosk-west-02", "kiosk-west-01"], "east": ["kiosk-east-01"]}
    with pytest.raises(fleet_inventory.InventoryError) as exc:
        fleet_inventory.select_kiosks(inv, kiosks=["pi-west-1", "kiosk-x", "kiosk-x", "kiosk-west-01"])
    assert str(exc.value) == "kiosks: unknown kiosk pi-west-1, kiosk-x, kiosk-x"
    with pytest.raises(fleet_inventory.InventoryError) as exc:
        fleet_inventory.select_kiosks(inv, kiosks=["kiosk-x", "kiosk-east-01"], campus="west")
    assert str(exc.value) == "kiosks: kiosk-east-01 belongs to campus east, not west"
