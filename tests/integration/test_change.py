"""
Change templates applied through the syndics: the hosts template (Salt's
host state, on a per-kiosk hosts file set by the minion option hosts.file).
"""

import pytest

pytestmark = pytest.mark.topology

BASE = "127.0.0.1 localhost\n# kept as is\n"


def entries(text):
    """{(ip, hostname)} of a hosts file (Salt re-aligns columns with tabs)."""
    pairs = set()
    for line in text.splitlines():
        fields = line.split("#")[0].split()
        pairs.update((fields[0], name) for name in fields[1:])
    return pairs


def hosts_file(topology, kiosk_id):
    return topology.power_dir / f"hosts-{kiosk_id}"


def test_hosts_template_test_mode_previews_and_changes_nothing(topology):
    for kiosk_id in topology.kiosks:
        hosts_file(topology, kiosk_id).write_text(BASE)
    result = topology.salt_run("kiosk_change.apply", "template=hosts", "campus=east,west", "test=True")
    assert result.returncode == 0, result
    report = result.data
    assert report["test"] is True and report["failed"] == [] and report["silent"] == []
    assert report["kiosks"]["kiosk-east-01"]["pending"] == 2  # two east entries would be added
    assert report["kiosks"]["kiosk-west-02"]["pending"] == 1
    for kiosk_id in topology.kiosks:
        assert hosts_file(topology, kiosk_id).read_text() == BASE


def test_hosts_template_reaches_kiosks_behind_both_campuses_pis_and_is_idempotent(topology):
    for kiosk_id in topology.kiosks:
        hosts_file(topology, kiosk_id).write_text(BASE)
    result = topology.salt_run("kiosk_change.apply", "template=hosts", "campus=east,west")
    assert result.returncode == 0, result
    assert sorted(result.data["kiosks"]) == sorted(topology.kiosks)
    east = hosts_file(topology, "kiosk-east-02").read_text()
    assert entries(east) == {
        ("127.0.0.1", "localhost"),
        ("127.0.50.15", "his.east.hospital.local"),
        ("127.0.50.16", "pay.east.hospital.local"),
    }
    assert "# kept as is" in east
    west = hosts_file(topology, "kiosk-west-01").read_text()
    assert entries(west) == {("127.0.0.1", "localhost"), ("127.0.60.15", "his.west.hospital.local")}
    again = topology.salt_run("kiosk_change.apply", "template=hosts", "kiosks=kiosk-east-02")
    assert again.returncode == 0, again
    assert again.data["kiosks"]["kiosk-east-02"]["changed"] == 0


def test_unknown_template_or_bad_params_fail_with_the_field_named(topology):
    result = topology.salt_run("kiosk_change.apply", "template=../top", "campus=east")
    assert result.returncode == 1 and result.data["error"].startswith("template:")
    result = topology.salt_run("kiosk_change.apply", "template=nope", "campus=east")
    assert result.returncode == 1 and "unknown template 'nope'" in result.data["error"]
    result = topology.salt_run(
        "kiosk_change.apply", "template=hosts", "campus=east", 'params={"hosts": {"his.local": "10.1.1"}}'
    )
    assert result.returncode == 1 and "params.hosts.his.local" in result.data["error"]
    listed = topology.salt_run("kiosk_change.templates")
    assert "hosts" in listed.data["templates"]
