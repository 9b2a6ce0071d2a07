"""
Need-to-know pillar: the master-only fleet data file and the per-minion
slices rendered from it (fleet_inventory.data_path / load_data / slice_for),
and the shipped #!py pillar SLS rendered by Salt's own py renderer.
"""

import copy
import os
import pathlib

import pytest
import yaml

import fleet_inventory
from tests.support.topology import CHANGES_PILLAR, SWEEP_SCHEDULES, two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
PUBLIC = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAzPZ9\n-----END PUBLIC KEY-----\n"


@pytest.fixture
def fleet():
    return copy.deepcopy({
        **two_campus_inventory(wol_port=40009),
        **SWEEP_SCHEDULES,
        **CHANGES_PILLAR,
        "kiosk_release": {"verify_key": [PUBLIC]},
    })


def ids_in(slice_):
    """Every kiosk and Pi id, MAC and kiosk IP anywhere in a slice (as text)."""
    return yaml.safe_dump(slice_)


def test_kiosk_gets_its_own_entry_its_campus_and_the_keys(fleet):
    got = fleet_inventory.slice_for(fleet, "kiosk-east-01")
    assert sorted(got) == ["kiosk_fleet", "kiosk_fleet_changes", "kiosk_release"]
    [(campus, spec)] = got["kiosk_fleet"]["campuses"].items()
    assert campus == "east"
    assert list(spec["kiosks"]) == ["kiosk-east-01"]
    assert sorted(spec["pis"]) == ["pi-east-1", "pi-east-2"]
    assert sorted(spec["vlans"]) == ["hall", "stairs"]
    assert spec["timezone"] == "Asia/Shanghai" and spec["wol_port"] == 40009
    assert got["kiosk_fleet_changes"] == {"hosts": {"east": CHANGES_PILLAR["kiosk_fleet_changes"]["hosts"]["east"]}}
    assert got["kiosk_release"] == {"verify_key": [PUBLIC]}
    text = ids_in(got)
    for other in ("kiosk-east-02", "52-54-00-E1-00-02", "127.0.2.12", "First floor stairs",  # same campus
                  "west", "kiosk-west-01", "pi-west-1", "5254.00a1.0001", "127.0.3", "his.west"):
        assert other not in text, other
    # no minion needs the power schedules
    assert "kiosk_fleet_schedules" not in got and "sweep-test" not in text


def test_kiosk_slice_validates_as_an_inventory_and_whoami_works_on_it(fleet):
    got = fleet_inventory.slice_for(fleet, "kiosk-west-02")
    inv = fleet_inventory.from_pillar(got)
    assert fleet_inventory.campus_of(inv, "kiosk-west-02") == "west"
    assert inv["campuses"]["west"]["kiosks"]["kiosk-west-02"]["mac"] == "52:54:00:a1:00:02"
    assert fleet_inventory.pis_of(inv, "west") == ["pi-west-1", "pi-west-2"]


def test_pi_gets_its_whole_campus_and_nothing_else(fleet):
    got = fleet_inventory.slice_for(fleet, "pi-west-1")
    inv = fleet_inventory.from_pillar(got)
    assert list(inv["campuses"]) == ["west"]
    assert sorted(inv["campuses"]["west"]["kiosks"]) == ["kiosk-west-01", "kiosk-west-02"]
    assert got["kiosk_release"] == {"verify_key": [PUBLIC]}
    text = ids_in(got)
    for other in ("east", "kiosk-east-01", "pi-east-1", "52:54:00:e1:00:01", "127.0.1", "his.east"):
        assert other not in text, other


@pytest.mark.parametrize("minion_id", ["top", "kiosk-north-01", "pi-east-9", "laptop"])
def test_unknown_ids_get_nothing(fleet, minion_id):
    assert fleet_inventory.slice_for(fleet, minion_id) == {}


def test_an_id_named_twice_gets_nothing(fleet):
    # the full check (kiosk_fleet.inventory) names the clash; a slice must not pick one campus silently
    fleet["kiosk_fleet"]["campuses"]["west"]["kiosks"]["kiosk-east-01"] = {
        "mac": "52:54:00:a1:00:09", "ip": "127.0.3.19", "vlan": "hall"}
    assert fleet_inventory.slice_for(fleet, "kiosk-east-01") == {}
    assert "kiosk-east-01" in str(pytest.raises(fleet_inventory.InventoryError, fleet_inventory.validate,
                                                fleet["kiosk_fleet"]).value)


@pytest.mark.parametrize("minion_id", [None, "", 7, b"kiosk-east-01"])
def test_bad_minion_id_is_refused(fleet, minion_id):
    with pytest.raises(fleet_inventory.InventoryError, match="^minion_id: "):
        fleet_inventory.slice_for(fleet, minion_id)


@pytest.mark.parametrize("minion_id", ["*", "kiosk east", "../x", "kiosk-east-01\n"])
def test_ids_no_fleet_name_can_have_get_nothing(fleet, minion_id):
    # pillar.show_pillar on the master compiles for id "*": nothing, and no render error
    assert fleet_inventory.slice_for(fleet, minion_id) == {}


def test_a_bad_other_campus_does_not_stop_this_campus(fleet):
    west = fleet["kiosk_fleet"]["campuses"]["west"]
    west["kiosks"]["kiosk-west-01"]["mac"] = "not-a-mac"
    west["timezone"] = "Mars/Olympus"
    # a MAC clash across campuses: only the full check can see it
    west["kiosks"]["kiosk-west-02"]["mac"] = "52:54:00:e1:00:01"
    fleet["kiosk_fleet_changes"]["hosts"]["west"] = {"bad host": "nope"}
    errors = pytest.raises(fleet_inventory.InventoryError, fleet_inventory.validate, fleet["kiosk_fleet"]).value.errors
    assert any(e.startswith("campuses.west.kiosks.kiosk-west-01.mac") for e in errors)
    assert any(e.startswith("campuses.west.kiosks.kiosk-west-02.mac") for e in errors)
    for minion_id in ("kiosk-east-01", "kiosk-east-02", "pi-east-1", "pi-east-2"):
        inv = fleet_inventory.from_pillar(fleet_inventory.slice_for(fleet, minion_id))
        assert list(inv["campuses"]) == ["east"], minion_id
    # the bad campus's own minions see their problem (each validates its slice)
    with pytest.raises(fleet_inventory.InventoryError, match="campuses.west.timezone"):
        fleet_inventory.from_pillar(fleet_inventory.slice_for(fleet, "pi-west-1"))


def test_a_malformed_other_campus_is_skipped(fleet):
    fleet["kiosk_fleet"]["campuses"]["west"] = "oops"
    fleet["kiosk_fleet"]["campuses"]["north"] = {"kiosks": ["kiosk-north-01"], "pis": None}
    assert list(fleet_inventory.slice_for(fleet, "kiosk-east-02")["kiosk_fleet"]["campuses"]) == ["east"]
    assert fleet_inventory.slice_for(fleet, "kiosk-west-01") == {}


def test_slices_do_not_alias_the_fleet_data(fleet):
    got = fleet_inventory.slice_for(fleet, "pi-east-1")
    got["kiosk_fleet"]["campuses"]["east"]["kiosks"].clear()
    got["kiosk_release"]["verify_key"].append("x")
    assert len(fleet["kiosk_fleet"]["campuses"]["east"]["kiosks"]) == 2
    assert fleet["kiosk_release"]["verify_key"] == [PUBLIC]


def test_fleet_wide_change_defaults_reach_every_campus_hosts_do_not(fleet):
    fleet["kiosk_fleet_changes"]["kiosk_user"] = "kiosk"
    got = fleet_inventory.slice_for(fleet, "kiosk-west-01")["kiosk_fleet_changes"]
    assert got == {"kiosk_user": "kiosk", "hosts": {"west": {"his.west.hospital.local": "127.0.60.15"}}}


def test_no_keys_no_release_section(fleet):
    del fleet["kiosk_release"]
    assert "kiosk_release" not in fleet_inventory.slice_for(fleet, "kiosk-east-01")


def test_campus_slice_is_a_valid_data_file_for_a_pi_master(fleet, tmp_path):
    part = fleet_inventory.campus_slice(fleet, "east")
    path = tmp_path / "east.yaml"
    path.write_text(yaml.safe_dump(part))
    loaded = fleet_inventory.load_data(str(path))
    # a Pi master renders the same slices from its campus part as the top master would from the whole
    for minion_id in ("kiosk-east-01", "pi-east-2"):
        assert fleet_inventory.slice_for(loaded, minion_id) == fleet_inventory.slice_for(fleet, minion_id)
    assert fleet_inventory.slice_for(loaded, "kiosk-west-01") == {}
    with pytest.raises(fleet_inventory.InventoryError, match="^campus: 'north'"):
        fleet_inventory.campus_slice(fleet, "north")
    with pytest.raises(fleet_inventory.InventoryError, match="^kiosk: 'kiosk-west-01'"):
        fleet_inventory.campus_slice(fleet, "east", kiosk="kiosk-west-01")


# --------------------------------------------------------------------------- the master-only file


def opts_for(path, **extra):
    return {"kiosk_fleet": {"data": str(path)}, **extra}


def test_master_data_reads_the_file_named_in_the_master_config(fleet, tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    assert fleet_inventory.master_data(opts_for(path)) == fleet
    inv = fleet_inventory.master_inventory(opts_for(path))
    assert sorted(inv["campuses"]) == ["east", "west"]


@pytest.mark.parametrize("opts, match", [
    ({}, "^kiosk_fleet:data: not set in the master config"),
    ({"kiosk_fleet": {}}, "^kiosk_fleet:data: not set"),
    ({"kiosk_fleet": "x"}, "^kiosk_fleet:data: not set"),
    ({"kiosk_fleet": {"data": "fleet.yaml"}}, "^kiosk_fleet:data: 'fleet.yaml' is not an absolute path"),
    ({"kiosk_fleet": {"data": 5}}, "^kiosk_fleet:data: 5 is not an absolute path"),
])
def test_data_path_names_the_setting(opts, match):
    with pytest.raises(fleet_inventory.InventoryError, match=match):
        fleet_inventory.data_path(opts)


def test_data_file_under_file_roots_is_refused(fleet, tmp_path):
    # anything under file_roots can be fetched by any minion (cp.get_file salt://...)
    root = tmp_path / "salt"
    (root / "fleet").mkdir(parents=True)
    path = root / "fleet" / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    opts = opts_for(path, file_roots={"base": [str(tmp_path / "other"), str(root)]})
    with pytest.raises(fleet_inventory.InventoryError, match=r"^kiosk_fleet:data: .* is under file_roots"):
        fleet_inventory.master_data(opts)
    # also through a symlinked directory
    link = tmp_path / "link"
    link.symlink_to(root / "fleet")
    with pytest.raises(fleet_inventory.InventoryError, match="is under file_roots"):
        fleet_inventory.data_path(opts_for(link / "fleet.yaml", file_roots={"base": [str(root)]}))
    # next to the roots is fine
    beside = tmp_path / "fleet.yaml"
    beside.write_text(yaml.safe_dump(fleet))
    assert fleet_inventory.data_path(opts_for(beside, file_roots={"base": [str(root)]})) == str(beside)


def test_missing_symlinked_and_non_yaml_files_are_named(tmp_path, fleet):
    with pytest.raises(fleet_inventory.InventoryError, match=r"^kiosk_fleet:data: cannot read .*nope.yaml: No such file"):
        fleet_inventory.master_data(opts_for(tmp_path / "nope.yaml"))
    real = tmp_path / "real.yaml"
    real.write_text(yaml.safe_dump(fleet))
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    with pytest.raises(fleet_inventory.InventoryError, match=r"^kiosk_fleet:data: cannot read .*link.yaml"):
        fleet_inventory.load_data(str(link))
    bad = tmp_path / "bad.yaml"
    bad.write_text("kiosk_fleet: {campuses: [\n")
    with pytest.raises(fleet_inventory.InventoryError, match=r"^kiosk_fleet:data: .*bad.yaml is not valid YAML at line"):
        fleet_inventory.load_data(str(bad))


@pytest.mark.parametrize("doc, match", [
    ("", "empty"),
    ("[1, 2]", "expected a mapping, got list"),
    ("kiosk_fleet: {}\nkiosk_flet_changes: {}\n", "unknown key kiosk_flet_changes"),
    ("kiosk_fleet: 3\n", r"\.kiosk_fleet: expected a mapping, got int"),
    ("kiosk_fleet: {}\nkiosk_release: {signing_key: /etc/k.pem}\n", "only verify_key belongs in the fleet data"),
    ("kiosk_fleet: {}\nkiosk_release: {verify_key: abc}\n", r"kiosk_release\.verify_key: expected a list"),
    ("kiosk_fleet: {}\nkiosk_release: {verify_key: ['-----BEGIN PRIVATE KEY-----\\nSECRET\\n']}\n",
     r"kiosk_release\.verify_key\[0\]: not a public key PEM"),
])
def test_badly_shaped_data_is_refused_naming_the_field(tmp_path, doc, match):
    path = tmp_path / "fleet.yaml"
    path.write_text(doc)
    with pytest.raises(fleet_inventory.InventoryError, match=match) as info:
        fleet_inventory.load_data(str(path))
    assert "SECRET" not in str(info.value)


# --------------------------------------------------------------------------- the shipped pillar SLS, rendered by Salt


def render_pillar_sls(minion_id, data_path, module_dirs=(str(REPO),)):
    """pillar/kiosk_fleet.sls through Salt's py renderer with a master's per-minion opts."""
    import salt.utils.templates

    opts = {"id": minion_id, "module_dirs": list(module_dirs), "kiosk_fleet": {"data": str(data_path)},
            "file_roots": {"base": [str(REPO / "states")]}}
    return salt.utils.templates.py(str(REPO / "pillar" / "kiosk_fleet.sls"), True, __opts__=opts, opts=opts,
                                   __salt__={}, __grains__={}, __pillar__={})


def test_shipped_pillar_sls_renders_the_slice_of_the_opts_id(fleet, tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    for minion_id in ("kiosk-east-02", "pi-west-2", "nobody"):
        rendered = render_pillar_sls(minion_id, path)
        assert rendered["result"] is True, rendered
        assert rendered["data"] == fleet_inventory.slice_for(fleet, minion_id)


def test_shipped_pillar_sls_fails_closed_without_its_file(tmp_path):
    rendered = render_pillar_sls("kiosk-east-01", tmp_path / "missing.yaml")
    assert rendered["result"] is False
    assert "kiosk_fleet:data: cannot read" in rendered["data"]


def test_shipped_top_file_gives_every_minion_the_slicer_only():
    top = yaml.safe_load((REPO / "pillar" / "top.sls").read_text())
    assert top == {"base": {"*": ["kiosk_fleet"]}}
    assert (REPO / "pillar" / "kiosk_fleet.sls").read_text().startswith("#!py\n")
    assert not any(p.name.endswith(".sls") and p.name not in ("top.sls", "kiosk_fleet.sls")
                   for p in (REPO / "pillar").iterdir())
    assert os.path.isfile(REPO / "pillar" / "fleet.yaml")
