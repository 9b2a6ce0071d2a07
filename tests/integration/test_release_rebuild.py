"""
A standby top master rebuilds its release pins from the Pis (topology).

The standby has the top master's keys and config but not its state: the
runner's state file is moved away, and ``kiosk_release.rebuild`` must put
back, from the Pis' signed indexes only, the pins (version, serial, the
signed document itself) and pushed marks the master had. One Pi's index
holds a pin signed by a key the fleet does not trust, with a higher serial:
it is refused, alerted, and outranks nothing.

Its own release name (``rebuild-app``), so nothing here depends on the
version history other modules publish, and the state file and the index it
touches are put back under the runner's own lock.
"""

import contextlib
import json
import pathlib
import time

import pytest

import fleet_lock
import fleet_sign
from tests.integration.test_release import INSTALL, fleet  # noqa: F401 - the module's fixture
from tests.support import topology as topo
from tests.support.nginx import nginx_binary

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
]

NAME = "rebuild-app"
SIZE = 64 << 10
FORGED_PI = "pi-west-1"


@contextlib.contextmanager
def state_moved_away(topology):
    """The runner's state file out of the way (a standby's empty state), put back afterwards, under its lock."""
    folder = pathlib.Path(topology.top.config["cachedir"]) / "kiosk_release"
    path, lock = folder / "state.json", folder / "state.lock"
    with fleet_lock.exclusive(str(lock), 60, AssertionError("the release state stayed locked")):
        original = path.read_bytes()
        path.unlink()
    try:
        yield json.loads(original)
    finally:
        with fleet_lock.exclusive(str(lock), 60, AssertionError("the release state stayed locked")):
            path.write_bytes(original)


def test_a_standby_rebuilds_the_pins_from_the_pis_and_refuses_a_forged_index(fleet, tmp_path):  # noqa: F811
    build = fleet.build("rebuild-1.0.0", SIZE, seed=21)
    published = fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", "version=1.0.0", f"source={build}",
                                 f"install={INSTALL}")
    assert published.returncode == 0, published
    rolled = fleet.t.salt_run("kiosk_release.rollout", NAME, "1.0.0", "campuses=east", timeout=300)
    assert rolled.returncode == 0, rolled
    pinned = fleet.t.salt_run("kiosk_release.pin", NAME, "1.0.0", "campus=west", timeout=300)  # held: no push
    assert pinned.returncode == 0, pinned
    index = fleet.pi_repo(FORGED_PI) / NAME / "index.json"
    genuine = index.read_bytes()
    with state_moved_away(fleet.t) as before:
        pins, pushed = before["pins"][NAME], before["pushed"][NAME]
        assert set(pins) == {"east", "west"} and pushed == {c: pins[c]["serial"] for c in ("east", "west")}
        dry = fleet.t.salt_run("kiosk_release.rebuild", NAME, "dry_run=True", timeout=120)
        assert dry.returncode == 0, dry
        assert {c: e["action"] for c, e in dry.data["campuses"].items()} == {"east": "rebuilt", "west": "rebuilt"}
        state = fleet.t.top.config["cachedir"] + "/kiosk_release/state.json"
        assert NAME not in (json.loads(pathlib.Path(state).read_text()).get("pins", {})
                            if pathlib.Path(state).exists() else {})  # a dry run writes no pin
        # a pin another key signed, serial above the genuine one, in one west Pi's index
        other_key, _ = topo.make_signing_key(tmp_path, name="not-the-fleet")
        doc = json.loads(genuine)
        doc["pin"] = fleet_sign.sign_pin(NAME, "west", "1.0.0", pins["west"]["serial"] + 10, other_key.read_bytes(),
                                         signed_at=pins["west"]["serial"] + 10)
        index.write_text(json.dumps(doc))
        since = time.time()
        try:
            result = fleet.t.salt_run("kiosk_release.rebuild", NAME, timeout=120)
        finally:
            index.write_bytes(genuine)
        assert result.returncode == 1, result  # a refused pin fails the run ...
        west = result.data["campuses"]["west"]
        assert list(west["refused"]) == [FORGED_PI], west
        assert west["refused"][FORGED_PI]["error"].startswith(f"{FORGED_PI}.pin.signature: does not match"), west
        assert west["from"] == ["pi-west-2"] and result.data["campuses"]["east"]["from"] == ["pi-east-1", "pi-east-2"]
        assert result.data["missing_from_store"] == {} and result.data["alerts"]["posted"] == [FORGED_PI]
        # ... and the pins are the master's, signed documents included, marked as they were
        rebuilt = json.loads(pathlib.Path(state).read_text())
        for campus in ("east", "west"):
            now, was = rebuilt["pins"][NAME][campus], pins[campus]
            assert (now["version"], now["serial"], now["signed"]) == (was["version"], was["serial"], was["signed"])
        assert rebuilt["pushed"][NAME] == pushed
        post = fleet.t.webhook.wait_for(lambda j: j.get("kind") == "kiosk_release" and j.get("hop") == "pi->master"
                                        and j.get("minion") == FORGED_PI, timeout=30, after=since)
        assert post is not None, fleet.t.webhook.posts
        assert post["json"]["campus"] == "west" and "pin.signature" in post["json"]["error"], post
