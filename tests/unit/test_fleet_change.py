import pytest

import fleet_change


def test_template_names_are_checked_against_what_the_master_serves():
    files = ["kiosk_fleet/changes/hosts.sls", "kiosk_fleet/changes/lockdown.sls", "kiosk_fleet/boot.sls",
             "kiosk_fleet/changes/sub/x.sls", "kiosk_fleet/changes/README.md"]
    available = fleet_change.templates_from_file_list(files)
    assert available == ["hosts", "lockdown"]
    assert fleet_change.check_template("hosts", available) == "kiosk_fleet.changes.hosts"
    for bad in ("../boot", "Hosts", "", None, "sub.x"):
        with pytest.raises(fleet_change.ChangeError, match="template:"):
            fleet_change.check_template(bad, available)


def test_hosts_entries_are_validated_naming_each_bad_one():
    assert fleet_change.check_hosts({"HIS.example.org": "10.0.0.5"}) == {"his.example.org": "10.0.0.5"}
    with pytest.raises(fleet_change.ChangeError) as info:
        fleet_change.check_hosts({"bad_name!": "10.0.0.5", "ok.example": "10.0.0", "x": "1.2.3.4"}, "params.hosts")
    assert info.value.errors == ["params.hosts.bad_name!: not a host name", "params.hosts.ok.example: '10.0.0' is not an IPv4 address"]
    with pytest.raises(fleet_change.ChangeError, match="kiosk_fleet_changes.hosts.east.pay"):
        fleet_change.check_pillar({"kiosk_fleet_changes": {"hosts": {"east": {"pay": "nope"}}}})
    assert fleet_change.check_params(None) == {}
    with pytest.raises(fleet_change.ChangeError, match="params: expected a mapping"):
        fleet_change.check_params("hosts=1")


def test_state_returns_are_summarised():
    ret = {
        "host_|-a_|-a_|-present": {"result": True, "changes": {"added": "a"}, "comment": ""},
        "host_|-b_|-b_|-present": {"result": True, "changes": {}, "comment": ""},
        "host_|-c_|-c_|-present": {"result": None, "changes": {}, "comment": "would add"},
        "kiosk_reg_|-d_|-d_|-present": {"result": False, "changes": {}, "comment": "bad type", "__id__": "d"},
    }
    assert fleet_change.summarize(ret) == {"result": False, "changed": 1, "pending": 1, "failed": {"d": "bad type"}, "errors": []}
    assert fleet_change.summarize(["Rendering SLS 'base:x' failed"])["errors"] == ["Rendering SLS 'base:x' failed"]
    report = fleet_change.report(["k1", "k2", "k3"], {"k1": {}, "k2": "Minion did not return"})
    assert report["silent"] == ["k3"] and report["failed"] == ["k2"] and report["result"] is False
