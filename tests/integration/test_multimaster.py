"""
Multi-master kiosks behind syndics, on real daemons (Salt 3007): every kiosk
is a minion of each Pi master of its campus (hot multi-master, one Minion
object per master in one process).

What is counted is what happened on the kiosk, never what a runner says:
the power button's presses (``power_dir/<kiosk>.presses``, one line each),
the install log's lines, the job returns the masters' event buses carried
(the event listener hears the top master and every Pi master), the posts
the webhook received.

The tests run in file order: all Pis up first, then the kiosk's first Pi
stopped, then that Pi back and the other stopped; the module's teardown
brings every daemon back and waits until each minion answers.
"""

import json
import pathlib
import time
import uuid

import pytest

from tests.integration.test_release import INSTALL, SMALL, fleet  # noqa: F401 - fleet is a fixture
from tests.support.nginx import nginx_binary
from tests.support.topology import SILENT_TIMEOUT

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
]

NAME = "mm-app"  # its own package: the release history of test_release.py stays untouched
CAMPUS = "east"
KIOSK = "kiosk-east-01"
FIRST_PI, OTHER_PI = "pi-east-1", "pi-east-2"  # the kiosk's masters, in its master list's order (campus_pis)
# how long a second copy of a job's return or of an event is waited for once the first arrived:
# a syndic forwards at once, the top master waits syndic_wait (2 s) for late answers
SECOND_COPY_WAIT = 3


# --------------------------------------------------------------------------- what the kiosk did


def presses(topology, kiosk_id):
    """Every press of the kiosk's power button so far: one argv list per press."""
    path = pathlib.Path(topology.power_dir) / f"{kiosk_id}.presses"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def install_log(fleet, kiosk_id):  # noqa: F811 - the fixture
    path = fleet.kiosk_dir(kiosk_id) / NAME / "install.log"
    return path.read_text().split() if path.exists() else []


def installed(topology, kiosks):
    result = topology.salt("-L", "kiosk_pkg.installed", NAME, tgt=",".join(kiosks))
    data = result.data if isinstance(result.data, dict) and set(result.data) <= set(kiosks) else {}
    if len(kiosks) == 1 and not data:
        data = {kiosks[0]: result.data}  # saltfactories unwraps a single minion's answer
    return {k: data[k].get("version") if isinstance(data.get(k), dict) else None for k in kiosks}


def wait_installed(topology, kiosks, version, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        seen = installed(topology, kiosks)
        if all(v == version for v in seen.values()):
            return seen
        assert time.monotonic() < deadline, f"{NAME} not {version} on {kiosks} after {timeout} s: {seen}"
        time.sleep(2)


def targets_of(data):
    tgt = data.get("tgt") or []
    return tgt.split(",") if isinstance(tgt, str) else list(tgt)


def new_jobs(event_listener, daemon_id, fun, kiosk_id, after):
    """The jids of ``fun`` jobs published on ``daemon_id``'s master since ``after`` that target ``kiosk_id``."""
    jids = []
    for event in event_listener.get_events([(daemon_id, "salt/job/*/new")], after_time=after):
        if event.data.get("fun") == fun and kiosk_id in targets_of(event.data) and event.data["jid"] not in jids:
            jids.append(event.data["jid"])
    return jids


# get_events() without after_time looks only at events from now on; a jid is unique, so: all
EVER = 0.0


def returns(event_listener, daemon_id, jid, kiosk_id):
    """How many returns of job ``jid`` from ``kiosk_id`` the master ``daemon_id`` carried on its bus."""
    return len(event_listener.get_events([(daemon_id, f"salt/job/{jid}/ret/{kiosk_id}")], after_time=EVER))


def settle(count, expected, wait=SECOND_COPY_WAIT):
    """
    Poll ``count()`` until it reaches ``expected``, then keep polling for
    ``wait`` seconds to catch a late extra copy; returns the last count
    (at once when it went past ``expected``).
    """
    deadline = time.monotonic() + 60
    seen = count()
    while seen < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = count()
    quiet_until = time.monotonic() + wait
    while seen <= expected and time.monotonic() < quiet_until:
        time.sleep(0.5)
        seen = count()
    return seen


def job_path(topology, event_listener, jid, kiosk_id):
    """
    Where job ``jid`` went for ``kiosk_id``: the Pi masters that published
    it, the Pi masters and top master that carried a return of it.
    """
    pis = topology.pis
    return {
        "published_by": sorted(p for p in pis if jid in new_jobs_any(event_listener, p, jid)),
        "returned_via": {p: returns(event_listener, p, jid, kiosk_id) for p in pis if returns(
            event_listener, p, jid, kiosk_id)},
        "top_returns": returns(event_listener, topology.top.id, jid, kiosk_id),
    }


def new_jobs_any(event_listener, daemon_id, jid):
    return [e.data["jid"] for e in event_listener.get_events([(daemon_id, f"salt/job/{jid}/new")], after_time=EVER)]


def runner_job(event_listener, topology, fun, kiosk_id, after, timeout=60, master=None):
    """
    The one jid of the ``fun`` job published for ``kiosk_id`` since ``after``
    on the top master (a runner's), or on the Pi master ``master``; polled:
    the event listener hears a master's events a moment after they happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        jids = new_jobs(event_listener, master or topology.top.id, fun, kiosk_id, after)
        if jids:
            assert len(jids) == 1, f"{fun} published {len(jids)} times for {kiosk_id}: {jids}"
            return jids[0]
        assert time.monotonic() < deadline, f"no {fun} job for {kiosk_id} on the top master"
        time.sleep(0.5)


def assert_ran_once_returned_once(topology, event_listener, jid, kiosk_id, pis_up):
    """Job ``jid`` reached ``kiosk_id`` through every Pi in ``pis_up``; one return each way."""
    def total():
        path = job_path(topology, event_listener, jid, kiosk_id)
        return sum(path["returned_via"].values()) + path["top_returns"]

    settle(total, 2)
    path = job_path(topology, event_listener, jid, kiosk_id)
    assert path["published_by"] == sorted(pis_up), path  # the kiosk got it from each of its live masters
    assert sum(path["returned_via"].values()) == 1, path  # answered once, to the master that was first
    assert set(path["returned_via"]) <= set(pis_up), path
    assert path["top_returns"] == 1, path
    return path


# --------------------------------------------------------------------------- stopping and starting Pis


class Pis:
    """Stop a Pi (its syndic, minion and master, by their pids, and its nginx); start it again."""

    def __init__(self, topology, fleet):  # noqa: F811
        self.topology, self.fleet, self.stopped = topology, fleet, []

    def stop(self, pi_id):
        self.stopped.append(pi_id)
        self.topology.stop_pi(pi_id)
        self.fleet.pis[pi_id].stop()
        return time.monotonic()

    def start(self, pi_id):
        self.fleet.pis[pi_id].start()
        self.topology.start_pi(pi_id)  # its master, then its minion and syndic
        self.stopped.remove(pi_id)


@pytest.fixture(scope="module")
def pis(topology, fleet):  # noqa: F811
    switch = Pis(topology, fleet)
    yield switch
    for pi_id in list(switch.stopped):
        switch.start(pi_id)
    topology.wait_answering(topology.minion_ids, timeout=120)


def answering_after(topology, kiosks, began, timeout=120):
    """Seconds from ``began`` until one ``test.ping`` to ``kiosks`` is answered by every one of them."""
    deadline = time.monotonic() + timeout
    while True:
        data = topology.salt("-L", "test.ping", tgt=",".join(kiosks), timeout=SILENT_TIMEOUT).data
        if len(kiosks) == 1 and data is True:
            data = {kiosks[0]: True}
        if isinstance(data, dict) and all(data.get(k) is True for k in kiosks):
            return time.monotonic() - began
        assert time.monotonic() < deadline, f"{kiosks} did not answer within {timeout} s: {data}"


# --------------------------------------------------------------------------- all Pis up


def shutdown_once(topology, event_listener, kiosk_id, pis_up, message):
    before = presses(topology, kiosk_id)
    start = time.time()
    result = topology.salt_run("kiosk_power.shutdown", f"kiosks={kiosk_id}", "delay_s=600", f"message={message}")
    assert result.returncode == 0 and result.data["accepted"] == [kiosk_id], result
    jid = runner_job(event_listener, topology, "kiosk_power.shutdown", kiosk_id, start)
    path = assert_ran_once_returned_once(topology, event_listener, jid, kiosk_id, pis_up)
    assert presses(topology, kiosk_id)[len(before):] == [["shutdown", "600", message]]
    return jid, path


def test_a_top_master_shutdown_reaches_the_kiosk_through_both_pis_and_runs_once(topology, event_listener, pis):
    assert topology.campus_pis(KIOSK) == [FIRST_PI, OTHER_PI]  # its masters, in its master list's order
    jid, _ = shutdown_once(topology, event_listener, KIOSK, [FIRST_PI, OTHER_PI], "mm all up")
    # the top master's job cache holds the kiosk's one return
    looked_up = topology.salt_run("jobs.lookup_jid", jid)
    assert looked_up.returncode == 0 and KIOSK in looked_up.data, looked_up


def test_a_release_installs_once_on_each_multi_master_kiosk(topology, fleet, event_listener, pis):  # noqa: F811
    kiosks = fleet.kiosks(CAMPUS)
    build = fleet.build("1.0.0", SMALL, seed=201)
    start = time.time()
    result = topology.salt_run("kiosk_release.publish", f"name={NAME}", "version=1.0.0", f"source={build}",
                               f"install={INSTALL}", f"campuses={CAMPUS}")
    assert result.returncode == 0, result
    wait_installed(topology, kiosks, "1.0.0")  # the reactors: published -> stage -> staged -> push
    for kiosk_id in kiosks:
        jid = runner_job(event_listener, topology, "kiosk_pkg.check_update", kiosk_id, start)
        assert_ran_once_returned_once(topology, event_listener, jid, kiosk_id, [FIRST_PI, OTHER_PI])
        assert install_log(fleet, kiosk_id) == ["1.0.0"], kiosk_id


def test_a_job_published_by_one_pi_master_runs_once(topology, event_listener, pis):
    for pi_id in (FIRST_PI, OTHER_PI):
        before = presses(topology, KIOSK)
        start = time.time()
        message = f"from {pi_id}"
        result = topology.pis[pi_id].master.salt_cli(timeout=60).run(
            "kiosk_power.shutdown", "delay_s=600", f"message={message}", minion_tgt=KIOSK)
        assert result.returncode == 0, result
        jid = runner_job(event_listener, topology, "kiosk_power.shutdown", KIOSK, start, master=pi_id)
        assert settle(lambda jid=jid, pi=pi_id: returns(event_listener, pi, jid, KIOSK), 1) == 1
        assert presses(topology, KIOSK)[len(before):] == [["shutdown", "600", message]]
        # returned to the Pi that published it only; the top master, which never published it, got
        # at most the one copy that Pi's syndic forwards
        others = [p for p in topology.campus_pis(KIOSK) if p != pi_id]
        assert [returns(event_listener, p, jid, KIOSK) for p in others] == [0] * len(others)
        assert returns(event_listener, topology.top.id, jid, KIOSK) <= 1


def test_a_kiosk_event_reaches_the_top_master_once_per_pi(topology, event_listener, pis):
    tag = f"mm/probe/{uuid.uuid4().hex[:8]}"
    start = time.time()
    result = topology.salt("event.fire_master", json.dumps({"probe": tag}), tag, tgt=KIOSK)
    assert result.returncode == 0 and result.data is True, result

    def top_copies():
        return list(event_listener.get_events([(topology.top.id, f"*{tag}")], after_time=start))

    settle(lambda: len([e for e in top_copies() if e.tag == tag]), 2)
    copies = top_copies()
    plain = [e for e in copies if e.tag == tag]
    assert len(plain) == 2, [(e.tag, e.data) for e in copies]  # one copy through each Pi's syndic
    assert all(e.data.get("id") == KIOSK and e.data.get("data", e.data).get("probe") == tag for e in plain)
    for pi_id in (FIRST_PI, OTHER_PI):  # each Pi master had it once, from the kiosk
        assert len(event_listener.get_events([(pi_id, tag)], after_time=start)) == 1, pi_id


def test_the_boot_reactor_syncs_a_multi_master_kiosk_and_changes_nothing_twice(topology, event_listener, pis):
    """
    kiosk/boot arrives once per Pi: the reactor may start one sync per copy;
    the pack comes back once, and a second sync finds nothing to do.
    """
    extmods = topology.salt("config.get", "extension_modules", tgt=KIOSK).data
    synced = pathlib.Path(extmods) / "modules" / "kiosk_power.py"
    assert synced.exists(), synced
    synced.unlink()  # as if the kiosk had missed a sync
    try:
        jids, answers = boot_syncs(topology, event_listener)
    finally:
        if not synced.exists():  # later tests need the pack on the kiosk
            topology.salt("saltutil.sync_all", tgt=KIOSK)
    assert synced.exists()
    # the module came back once: one sync brought it, any other found it there
    assert sum("modules.kiosk_power" in got for got in answers) == 1, answers
    print(f"\nkiosk/boot from a kiosk on 2 Pis: {len(jids)} saltutil.sync_all job(s); modules synced: {answers}")


def boot_syncs(topology, event_listener):
    """Fire kiosk/boot on KIOSK; the reactor's sync jobs and what each synced."""
    start = time.time()
    result = topology.salt("event.send", "kiosk/boot", tgt=KIOSK)
    assert result.returncode == 0, result

    def syncs():
        return new_jobs(event_listener, topology.top.id, "saltutil.sync_all", KIOSK, start)

    settle(lambda: len(syncs()), 1)
    jids = syncs()
    assert 1 <= len(jids) <= 2, jids  # at most one per Pi the kiosk is connected to
    answers = []
    for jid in jids:
        assert_ran_once_returned_once(topology, event_listener, jid, KIOSK, [FIRST_PI, OTHER_PI])
        ret = next(iter(event_listener.get_events([(topology.top.id, f"salt/job/{jid}/ret/{KIOSK}")],
                                                  after_time=EVER))).data["return"]
        answers.append(ret.get("modules", []))
    return jids, answers


def test_a_release_alert_from_a_multi_master_kiosk_is_posted_once(topology, event_listener, pis):
    version = f"9.{uuid.uuid4().int % 1000}.1"
    alert = {"hop": "pi->kiosk", "name": NAME, "version": version, "error": "md5 mismatch (test)",
             "source": FIRST_PI, "campus": CAMPUS}
    since = time.time()
    result = topology.salt("event.send", "kiosk/release/alert", f"data={json.dumps(alert)}", tgt=KIOSK)
    assert result.returncode == 0, result

    def posted():
        return [p["json"] for p in topology.webhook.posts if "json" in p and p["json"].get("version") == version]

    seen = settle(lambda: len(posted()), 1)
    arrived = len(event_listener.get_events([(topology.top.id, "kiosk/release/alert")], after_time=since))
    assert seen == 1, f"{seen} posts for one alert (the event reached the top master {arrived} times): {posted()}"


# --------------------------------------------------------------------------- Pis stopped


@pytest.fixture(scope="module")
def pinned(topology, fleet):  # noqa: F811
    """Two releases published and staged on the campus with every Pi up, not pinned: a pin holds the push."""
    versions = ["1.1.0", "1.2.0"]
    for n, version in enumerate(versions):
        build = fleet.build(version, SMALL, seed=210 + n)
        result = topology.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}",
                                   f"source={build}", f"install={INSTALL}")
        assert result.returncode == 0, result
        staged = topology.salt_run("kiosk_release.stage", NAME, version, f"campuses={CAMPUS}")
        assert staged.returncode == 0, staged
    return versions


def still_managed(topology, fleet, event_listener, pi_up, version, message):  # noqa: F811
    """Shutdown, a change and a push reach KIOSK through ``pi_up`` alone, each once."""
    shutdown_once(topology, event_listener, KIOSK, [pi_up], message)

    hosts = pathlib.Path(topology.power_dir) / f"hosts-{KIOSK}"
    hosts.write_text("127.0.0.1 localhost\n")
    start = time.time()
    changed = topology.salt_run("kiosk_change.apply", "template=hosts", f"kiosks={KIOSK}")
    assert changed.returncode == 0 and changed.data["failed"] == [], changed
    jid = runner_job(event_listener, topology, "state.apply", KIOSK, start)
    assert_ran_once_returned_once(topology, event_listener, jid, KIOSK, [pi_up])
    assert "his.east.hospital.local" in hosts.read_text()

    before = install_log(fleet, KIOSK)
    start = time.time()
    # a rollout pins the campus and pushes (kiosk_release.push after kiosk_release.pin finds the push held)
    pushed = topology.salt_run("kiosk_release.rollout", NAME, version, f"campuses={CAMPUS}", "timeout=10")
    assert pushed.returncode == 0, pushed
    jid = runner_job(event_listener, topology, "kiosk_pkg.check_update", KIOSK, start)
    assert_ran_once_returned_once(topology, event_listener, jid, KIOSK, [pi_up])
    assert install_log(fleet, KIOSK)[len(before):] == [version]


def stop_and_manage(topology, fleet, event_listener, pis, down, up, version):  # noqa: F811
    """Stop Pi ``down``; time the first job its kiosks answer through ``up``; manage KIOSK through ``up``."""
    kiosks = fleet.kiosks(CAMPUS)
    began = pis.stop(down)
    seconds = answering_after(topology, kiosks, began)
    print(f"\n{down} stopped: first job answered by {', '.join(kiosks)} through {up} after {seconds:.1f} s")
    still_managed(topology, fleet, event_listener, up, version, f"mm {down} down")


def test_the_kiosks_first_pi_stopped_the_other_pi_still_manages_it(topology, fleet, event_listener, pis, pinned):  # noqa: F811
    stop_and_manage(topology, fleet, event_listener, pis, FIRST_PI, OTHER_PI, pinned[0])


def test_that_pi_back_and_the_other_stopped_its_syndic_forwards_again(topology, fleet, event_listener, pis, pinned):  # noqa: F811
    pis.start(FIRST_PI)
    topology.wait_answering([FIRST_PI])  # the Pi's own minion, through its restarted master and syndic
    stop_and_manage(topology, fleet, event_listener, pis, OTHER_PI, FIRST_PI, pinned[1])
    pis.start(OTHER_PI)
    topology.wait_answering(topology.minion_ids, timeout=120)


def test_a_syndic_forwards_again_after_its_pi_master_alone_restarted(topology, pis):
    """saltstack/salt#34973 reports a syndic that stopped forwarding after its master restarted: checked here."""
    pi = topology.pis["pi-west-2"]
    pi.master.terminate()
    began = time.monotonic()
    try:
        pi.master.start()
        topology.wait_answering(["pi-west-2"], timeout=60)  # the Pi's minion answers only through that syndic
        print(f"\npi-west-2's master restarted under its running syndic: its minion answered the top master "
              f"{time.monotonic() - began:.1f} s after the restart began")
    finally:
        restart_pi_minion(topology, "pi-west-2")


def restart_pi_minion(topology, pi_id):
    """
    Start a Pi's minion afresh after its master alone restarted under it, so
    later tests on this topology find it answering: the master's restart
    disconnected it, and a reconnected minion checks its master every
    ``master_alive_interval`` with ``status.master``, which looks for a
    connection on its ``publish_port``, the test topology's 4506 sentinel
    (``PI_MINION_PUBLISH_PORT``): none, so it drops and rejoins its master
    over and over. A minion started afresh never runs that check.
    """
    minion = topology.pis[pi_id].minion
    if minion.is_running():
        minion.terminate()
    minion.start()
    topology.wait_answering([pi_id], timeout=60)
