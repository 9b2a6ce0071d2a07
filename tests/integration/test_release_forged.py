"""
Forged release events on the topology. A kiosk can put any tag with any data
(``id`` included) on its Pi master's bus, and the syndic forwards it to the
top master (``event.fire_master`` with ``preload='{"events": [...]}'``, or the
plain form). The release reactors must act on none of it: no staging job, no
push, no change in the runner's state file, no byte served by the master's
export. A real publish still stages and pushes.

Real parts: the topology's daemons and reactors, nginx exporting the store
and serving each Pi's repository (the fixture of test_release.py), the
top master's job cache and event bus.
"""

import json
import pathlib
import time

import pytest

from tests.integration.test_release import INSTALL, NAME, SMALL, fleet  # noqa: F401 - fleet is a fixture
from tests.support.nginx import nginx_binary

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
]

ATTACKER = "kiosk-west-01"  # a kiosk anyone in the hall can reach with a USB keyboard


def next_versions(fleet, n):  # noqa: F811 - the fixture
    """``n`` versions above every published one (this module may run after test_release.py)."""
    published = fleet.t.salt_run("kiosk_release.published", NAME).data["releases"].get(NAME, [])
    major = int(published[-1].split(".")[0]) + 1 if published else 1
    return [f"{major + i}.0.0" for i in range(n)]


def state_file(fleet):  # noqa: F811
    return pathlib.Path(fleet.t.top.config["cachedir"]) / "kiosk_release" / "state.json"


def snapshot(fleet):  # noqa: F811
    path = state_file(fleet)
    return {"state": path.read_bytes(), "mtime": path.stat().st_mtime_ns,
            "master_log": len(fleet.master.log_entries()),
            "pi_logs": {pi: len(server.log_entries()) for pi, server in fleet.pis.items()},
            "jobs": jobs(fleet)}


def jobs(fleet, functions=("kiosk_pkg.stage", "kiosk_pkg.check_update", "kiosk_pkg.pin",  # noqa: F811
                           "kiosk_pkg.repo_status")):
    """The top master's jobs of these functions: {function: set of jids}."""
    found = {}
    for fun in functions:
        listed = fleet.t.salt_run("jobs.list_jobs", f"search_function={fun}", timeout=60)
        found[fun] = set(listed.data) if isinstance(listed.data, dict) else set()
    return found


def fire(fleet, tag, data, preload):  # noqa: F811
    cli = fleet.t.kiosks[ATTACKER].salt_call_cli(timeout=60)
    if preload:
        result = cli.run("event.fire_master", "{}", "x", "preload=" + json.dumps({"events": [{"tag": tag, "data": data}]}))
    else:
        result = cli.run("event.fire_master", json.dumps(data), tag)
    assert result.returncode == 0, result
    return result


def runner_returns(event_listener, top_id, fun, start, done, timeout=90):
    """Poll (with a deadline) the returns of runner ``fun`` since ``start`` until ``done(returns)``."""
    deadline = time.time() + timeout
    rets = []
    while time.time() < deadline:
        rets = [e.data for e in event_listener.get_events([(top_id, "salt/run/*/ret")], after_time=start)
                if e.data.get("fun") == f"runner.{fun}"]
        if done(rets):
            return rets
        time.sleep(1)
    raise AssertionError(f"{fun}: returns after {timeout}s: {rets}")


def test_forged_release_events_start_nothing_and_a_real_publish_still_goes_through(fleet, event_listener):  # noqa: F811
    v1, v2, v3 = next_versions(fleet, 3)
    top = fleet.t.top.id

    # a real release to east, through the reactors: published -> on_published -> staged -> push
    build = fleet.build(v1, SMALL, seed=101)
    published = fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={v1}", f"source={build}",
                                 f"install={INSTALL}", "campuses=east")
    assert published.returncode == 0 and published.data["signed"] is True, published
    fleet.wait_installed(v1, "east")
    west_before = fleet.installed("west")
    assert v1 not in west_before.values()
    # a second release, published but not rolled out anywhere
    build2 = fleet.build(v2, SMALL, seed=102)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={v2}", f"source={build2}",
                            f"install={INSTALL}").returncode == 0
    # wait for the real chain to settle: east marked pushed for its pin
    deadline = time.time() + 120
    while json.loads(state_file(fleet).read_text())["pushed"].get(NAME, {}).get("east") is None:
        assert time.time() < deadline, state_file(fleet).read_text()
        time.sleep(1)
    east_logs = {k: fleet.install_log(k) for k in fleet.kiosks("east")}
    before = snapshot(fleet)
    # the detectors see the real chain: its staging, pin and install jobs and its WAN copy
    assert before["jobs"]["kiosk_pkg.stage"] and before["jobs"]["kiosk_pkg.check_update"], before["jobs"]
    assert fleet.master_bytes(v1) == (build / "app.bin").stat().st_size
    start = time.time()

    # 1. the lab's attack: a kiosk of west makes every Pi of another campus re-stage (v1 and v2), preload form
    fire(fleet, "kiosk/release/published", {"id": "pi-east-1", "name": NAME, "version": v1,
                                            "campuses": ["east", "west"]}, preload=True)
    fire(fleet, "kiosk/release/published", {"name": NAME, "version": v2, "campuses": ["west", "east"]}, preload=True)
    # ... and the plain form (the payload sits under data: the reactor finds no name, renders nothing)
    fire(fleet, "kiosk/release/published", {"name": NAME, "version": v2, "campuses": ["west"]}, preload=False)
    # 2. "a Pi staged it": for a campus already pushed, and for one not pinned to that version
    fire(fleet, "kiosk/release/staged", {"id": "pi-east-1", "name": NAME, "version": v1}, preload=True)
    fire(fleet, "kiosk/release/staged", {"id": "pi-west-1", "name": NAME, "version": v2}, preload=True)
    # ... in the kiosk's own name (plain form: data['id'] is the kiosk), and claiming to be another kiosk
    fire(fleet, "kiosk/release/staged", {"name": NAME, "version": v2}, preload=False)
    fire(fleet, "kiosk/release/staged", {"id": "kiosk-east-01", "name": NAME, "version": v2}, preload=True)

    staged_rets = runner_returns(event_listener, top, "kiosk_release.on_published", start, lambda r: len(r) >= 2)
    assert all(r["return"]["staged"] is False for r in staged_rets), staged_rets

    def refused(rets):
        return sorted(r["return"]["error"] for r in rets if r["return"]["result"] is False)

    push_rets = runner_returns(event_listener, top, "kiosk_release.push", start,
                               lambda rets: len(set(refused(rets))) >= 2 and len(rets) >= 4)
    assert not any(r["return"].get("pushed") for r in push_rets), push_rets
    # the kiosk is a minion of every Pi of its campus: each forged event arrives once per Pi, each copy refused
    assert sorted(set(refused(push_rets))) == sorted([f"pi: {ATTACKER!r} is not a Pi of the inventory",
                                                      "pi: 'kiosk-east-01' is not a Pi of the inventory"]), push_rets

    after = snapshot(fleet)
    assert after["jobs"] == before["jobs"]  # no staging, pin or install job
    assert after["state"] == before["state"] and after["mtime"] == before["mtime"]
    assert after["master_log"] == before["master_log"]  # not a byte left the master's export
    assert after["pi_logs"] == before["pi_logs"]
    assert {k: fleet.install_log(k) for k in fleet.kiosks("east")} == east_logs
    assert fleet.installed("west") == west_before
    for pi in ("pi-west-1", "pi-west-2"):
        assert not (fleet.pi_repo(pi) / NAME / v2).exists()

    # the real paths still work: a rollout of v2 to west, then a publish of v3 to west by reactor
    rolled = fleet.t.salt_run("kiosk_release.rollout", NAME, v2, "campuses=west", timeout=400)
    assert rolled.returncode == 0, rolled
    assert fleet.installed("west") == dict.fromkeys(fleet.kiosks("west"), v2)
    build3 = fleet.build(v3, SMALL, seed=103)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={v3}", f"source={build3}",
                            f"install={INSTALL}", "campuses=west").returncode == 0
    # the lab's other attack: "west's Pi staged v3" before it did, so that the real push would be skipped;
    # push asks the Pis, finds the pin not live (or the push already running/done), and marks nothing
    fire(fleet, "kiosk/release/staged", {"id": "pi-west-2", "name": NAME, "version": v3}, preload=True)
    fleet.wait_installed(v3, "west")
    size = (build3 / "app.bin").stat().st_size
    assert fleet.master_bytes(v3) == size  # staged once over the WAN for west
    state = json.loads(state_file(fleet).read_text())
    assert state["pushed"][NAME]["west"] == state["pins"][NAME]["west"]["serial"]
    assert "to_stage" not in state or not state["to_stage"].get(NAME)


def served_available(fleet):  # noqa: F811
    """kiosk_pkg.served answers on the Pis, and the kiosks fetch from their inventory address (bind_source)."""
    probe = fleet.t.salt("kiosk_pkg.served", NAME, "1.0.0", tgt="pi-west-1", timeout=60)
    ret = (probe.data or {}) if isinstance(probe.data, dict) else {}
    ret = ret.get("pi-west-1", ret)
    kiosk_conf = fleet.t.kiosks["kiosk-west-01"].config.get("kiosk_release") or {}
    return isinstance(ret, dict) and ret.get("result") is True and kiosk_conf.get("bind_source") is True


def forge_return_when_the_job_starts(fleet, event_listener, victim, version, start, done):  # noqa: F811
    """Watch the top master for the push's check_update job; answer it in ``victim``'s name from the attacker."""
    deadline = time.time() + 300
    while time.time() < deadline and not done:
        for event in event_listener.get_events([(fleet.t.top.id, "salt/job/*/new")], after_time=start):
            data = event.data
            tgt = data.get("tgt") or []
            targets = tgt.split(",") if isinstance(tgt, str) else tgt
            if data.get("fun") == "kiosk_pkg.check_update" and victim in targets:
                forged = {"id": victim, "jid": data["jid"], "fun": "kiosk_pkg.check_update", "fun_args": [NAME],
                          "retcode": 0, "success": True,
                          "return": {"result": True, "releases": {NAME: {"result": True, "version": version,
                                                                          "changed": True}}}}
                fire(fleet, f"salt/job/{data['jid']}/ret/{victim}", forged, preload=True)
                done.append(data["jid"])
                return
        time.sleep(0.5)


def test_a_forged_return_for_a_powered_off_kiosk_does_not_pass_a_rollout_ring(fleet, event_listener):  # noqa: F811
    import threading

    if not served_available(fleet):
        pytest.skip("needs kiosk_pkg.served on the Pis and kiosks fetching from their inventory address (bind_source)")
    (version,) = next_versions(fleet, 1)
    build = fleet.build(version, SMALL, seed=104)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}", f"source={build}",
                            f"install={INSTALL}").returncode == 0
    victim = "kiosk-west-02"
    # the salt-run CLI reads master.d at every call: the rollout below confirms downloads (an included
    # file replaces a top-level key as a whole, so the drop-in carries the whole kiosk_release mapping)
    dropin = pathlib.Path(fleet.t.top.config_dir) / "master.d" / "zz-confirm-downloads.conf"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(json.dumps({"kiosk_release": {**fleet.t.top.config["kiosk_release"], "confirm_downloads": True}}))
    fleet.t.kiosks[victim].terminate()  # powered off
    try:
        start, done = time.time(), []
        forger = threading.Thread(target=forge_return_when_the_job_starts,
                                  args=(fleet, event_listener, victim, version, start, done), daemon=True)
        forger.start()
        result = fleet.t.salt_run("kiosk_release.rollout", NAME, version, "campuses=west", timeout=400)
        done.append("rollout over")
        forger.join(timeout=30)
    finally:
        dropin.unlink()
        fleet.t.kiosks[victim].start()
    assert done and done[0] != "rollout over", "the forged return was never sent"
    kiosks = result.data["rings"][0]["kiosks"]["west"]
    # the forged return reached the runner (the victim is not "silent") but did not count
    assert isinstance(kiosks[victim], str) and "no Pi of the campus served the files" in kiosks[victim], kiosks
    assert kiosks["kiosk-west-01"] is True  # a real install, confirmed by its Pi's log
    assert result.returncode == 1 and result.data["halted"] is True, result
