"""
Shared fixtures.

The ``topology`` fixture starts, once per test session, the production shape
on loopback with pytest-salt-factories: a top master (``order_masters``), two
campuses with two Pi nodes each (salt-master + salt-syndic + salt-minion) and
kiosk minions, each a minion of every Pi master of its campus, all loaded with
the pack the classic way (``file_roots`` + ``saltutil.sync_all``). Keys are
accepted by autosign files from the inventory, never ``auto_accept``.
"""

import gc
import logging
import os
import pathlib
import shutil
import tempfile
import time

from fleet_inventory import home_pi
import pytest
import yaml
from hypothesis import settings as hypothesis_settings

from tests.support import topology as topo
from tests.support.webhook import Webhook

# No hypothesis deadline anywhere: a per-example time limit is a timing assertion,
# and on 2 loaded cores (CI, the topologies starting beside the unit tests) a
# plain hash of a few KiB overran the 200 ms default. Speed lives in bench/.
hypothesis_settings.register_profile("kiosk-fleet", deadline=None)
hypothesis_settings.load_profile("kiosk-fleet")

log = logging.getLogger(__name__)

REPO = pathlib.Path(__file__).resolve().parent.parent
# seconds each step of the topology start took; printed in the terminal summary
TOPOLOGY_TIMES = {}
# {xdist worker id: its TOPOLOGY_TIMES}, gathered by the controller
WORKER_TOPOLOGY_TIMES = {}


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # saltfactories binds its log server to 0.0.0.0 by default; loopback only here.
    log_server = config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None:
        log_server.log_host = "127.0.0.1"
    _drop_salt_deferred_handlers(detach=True)


# tests/run spreads the suite over pytest-xdist workers with --dist loadscope,
# whose scopes (one module each) are widened here to groups: a group runs on
# one worker, in file order, and each worker that runs topology tests starts
# its own topology. The topology tests mostly wait on daemons: two groups of
# about the same length run side by side, the power, alert and key files and the
# rest of tests/integration (the release files: one release history); the lab
# starts daemons of its own; the Wine tests share one machine-wide Wine. The
# groups go out first.
GROUPS = {
    "topology-power": {"test_env.py", "test_forged_alerts.py", "test_keys.py", "test_power.py", "test_sweep.py",
                       "test_topology.py"},
    # stop and restart Pis and the top master (test_campus: a campus's day with the top master down)
    "topology-mm": {"test_campus.py", "test_multimaster.py"},
    "lab": {"test_lab.py"},
    "wine": {"test_kiosk_reg_wine.py", "test_change_templates.py"},
}
FIRST = ("topology", "topology-power", "topology-mm", "lab", "wine")


def xdist_scope(nodeid):
    """The scheduling scope of a test: its group, else its module."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    for group, files in GROUPS.items():
        if name in files:
            return group
    return "topology" if path.startswith("tests/integration/") else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_scope(nodeid)

        def _assign_work_unit(self, node):
            for scope in reversed(FIRST):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)


def pytest_sessionfinish(session):
    # an xdist worker hands its topology's start times to the controller (pytest_testnodedown)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and TOPOLOGY_TIMES:
        workeroutput["topology_times"] = dict(TOPOLOGY_TIMES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    times = getattr(node, "workeroutput", {}).get("topology_times")
    if times:
        WORKER_TOPOLOGY_TIMES[node.gateway.id] = times


def pytest_terminal_summary(terminalreporter):
    started = dict(WORKER_TOPOLOGY_TIMES)
    if TOPOLOGY_TIMES:
        started["this process"] = TOPOLOGY_TIMES
    for where, times in sorted(started.items()):
        steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
        label = "" if list(started) == ["this process"] else f" ({where})"
        terminalreporter.write_line(f"topology start{label}: {steps}")


def _drop_salt_deferred_handlers(detach):
    """
    Empty Salt's temporary console handlers without writing what they hold.

    Importing Salt puts a DeferredStreamHandler on the root logger: it queues
    every record of this process (daemon logs forwarded by the saltfactories
    log server, loader tests) and writes them all to stderr at exit, after
    pytest's summary line. pytest already captured those records, so the
    queue is dropped, never flushed (``setStream`` and ``flush`` would write
    it), and ``detach`` takes the handler off the root logger so nothing
    queues again.
    """
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
    for handler in [o for o in gc.get_objects() if type(o).__name__ == "DeferredStreamHandler"]:
        handler.sync_with_handlers(())  # pops every queued record, hands it to no handler
        if detach and handler in logging.root.handlers:
            logging.root.removeHandler(handler)
            # a root with no handler at all would print through logging.lastResort
            logging.root.addHandler(logging.NullHandler())
        handler.setStream(devnull)


def pytest_unconfigure(config):
    # loader tests may have queued records in a handler of their own since
    _drop_salt_deferred_handlers(detach=False)


@pytest.fixture(scope="session")
def event_listener():
    # Same as saltfactories' fixture, but bound to loopback instead of 0.0.0.0.
    from saltfactories.plugins.event_listener import EventListener

    listener = EventListener()
    listener.host = "127.0.0.1"
    listener.address = f"tcp://127.0.0.1:{listener.port}"
    with listener:
        yield listener


@pytest.fixture(scope="session")
def short_root():
    # unix socket paths must stay under 107 characters: keep the root short
    path = pathlib.Path(tempfile.mkdtemp(prefix="kf", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def salt_factories_config(short_root):
    return {
        "root_dir": short_root / "d",
        "log_server_host": "127.0.0.1",
        "inject_sitecustomize": False,
        # three topologies and the lab start together on 2 cores: their masters took 88-170 s to
        # start in clean-clone runs. Past start_timeout saltfactories kills a master and starts it
        # again: in the run where six masters passed 120 s, both topologies that had one restarted
        # failed tests (silent Pis, a Pi missing), and request workers of killed masters were still
        # running after the suite. 300 s leaves room
        "start_timeout": 300,
        # slow_stop=False: SIGKILL-free fast teardown, ~21 s instead of ~57 s
        "slow_stop": False,
    }


@pytest.fixture(scope="session")
def fleet_inventory():
    """The test fleet: 2 campuses x 2 Pis, 2 kiosks each, on 127.0.x.0/24 VLANs."""
    return topo.two_campus_inventory()


@pytest.fixture(scope="session")
def signing_key(short_root):
    """The release signing key of the session: ``(private key PEM path (0600), public key PEM)``."""
    return topo.make_signing_key(short_root / "keys")


@pytest.fixture(scope="session")
def salt_tree(short_root, fleet_inventory, signing_key):
    """file_roots and pillar_roots shared by every master (see tests/support/topology.py)."""
    return topo.write_salt_tree(REPO, short_root / "srv", fleet_inventory, [signing_key[1]])


@pytest.fixture(scope="session")
def webhook():
    """The alert webhook: a real HTTP server on 127.0.0.1."""
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="session")
def topology(salt_factories, salt_tree, fleet_inventory, short_root, webhook, signing_key):
    started = []
    try:
        power_dir = short_root / "power"
        power_dir.mkdir(exist_ok=True)
        env_dir = short_root / "env"
        release_dir = topo.release_dirs(short_root / "rel")
        campus_root = short_root / "campus"
        keys = topo.key_paths(salt_factories.root_dir, fleet_inventory)
        began = time.monotonic()
        top = salt_factories.salt_master_daemon(
            "top",
            order_masters=True,
            factory_class=topo.AutosignMaster,
            defaults={"root_dir": str(keys["roots"]["top"])},
            overrides=topo.top_master_config(REPO, salt_tree, webhook.url, release_dir, signing_key[0], keys),
        )
        pis, kiosks = {}, {}
        campuses = fleet_inventory["kiosk_fleet"]["campuses"]
        for campus, spec in campuses.items():
            ports = topo.campus_ports([topo.pi_address(fleet_inventory, pi_id) for pi_id in spec["pis"]])
            for pi_id in sorted(spec["pis"]):
                # the campus runtime's settings (tests/support/campus.py): one block, master and minion
                campus_block = topo.campus_settings(fleet_inventory, pi_id, campus_root, release_dir, keys,
                                                    [signing_key[1]])
                pis[pi_id] = top.salt_syndic_daemon(
                    pi_id,
                    defaults={"root_dir": str(keys["roots"][pi_id])},
                    master_factory_class=topo.AutosignMaster,
                    master_overrides=topo.pi_master_config(
                        salt_tree, campus, keys, pi_id, topo.pi_address(fleet_inventory, pi_id), ports,
                        campus_block),
                    minion_overrides=topo.pi_minion_config(
                        campus, pi_id, env_dir, release_dir, keys, topo.pi_address(fleet_inventory, pi_id),
                        campus_block),
                )
        # the Pi masters' addresses are known now (their ports): kiosks sign in to every Pi of
        # their campus, from the inventory
        topo.set_pi_masters(fleet_inventory, pis)
        topo.check_campus_paths(pis)
        topo.write_fleet_data(salt_tree, fleet_inventory, [signing_key[1]])
        topo.install_keys(fleet_inventory, keys, top, pis)
        for spec in campuses.values():
            for kiosk_id in sorted(spec["kiosks"]):
                # the factory's master (its start event) is the kiosk's home Pi, one of its masters
                kiosks[kiosk_id] = pis[home_pi(spec, kiosk_id)].master.salt_minion_daemon(
                    kiosk_id,
                    overrides=topo.kiosk_minion_config(fleet_inventory, kiosk_id, power_dir, release_dir),
                )
        TOPOLOGY_TIMES["configs and keys"] = time.monotonic() - began
        # the top master and the four Pi masters side by side (no master needs another to
        # start); then, side by side, each Pi's minion and syndic (a syndic's start starts its
        # minion first) and the kiosks, which need only their Pis' masters
        started.append(top)
        started.extend(pi.master for pi in pis.values())
        TOPOLOGY_TIMES["masters"] = topo.start_together([top] + [pi.master for pi in pis.values()])
        # a syndic's terminate stops the syndic alone: its minion is stopped here too
        started.extend(pi.minion for pi in pis.values())
        started.extend(pis.values())
        started.extend(kiosks.values())
        TOPOLOGY_TIMES["Pi minions+syndics, kiosks"] = topo.start_together(
            list(pis.values()) + list(kiosks.values())
        )
        fleet = topo.Topology(
            top=top, pis=pis, kiosks=kiosks, inventory=fleet_inventory, salt_tree=salt_tree,
            power_dir=power_dir, env_dir=env_dir, webhook=webhook, release_dir=release_dir,
            signing_key_path=signing_key[0], verify_keys=[signing_key[1]], keys=keys, campus_root=campus_root,
        )
        began_sync = time.monotonic()
        fleet.sync_all()
        TOPOLOGY_TIMES["sync_all"] = time.monotonic() - began_sync
        TOPOLOGY_TIMES["total"] = time.monotonic() - began
        yield fleet
    finally:
        # every daemon below the top master at once, then the top master
        topo.stop_together(started[1:], log)
        topo.stop_together(started[:1], log)
        topo.kill_left_behind(short_root, log)


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture
def inventory_yaml(fleet_inventory):
    return yaml.safe_dump(fleet_inventory)
