"""
``kiosk_calendar`` (runner) loaded by Salt's runner loader; the jobs to the
Pis go to the real Pi minion module ``kiosk_campus.calendar``, each Pi on a
minion loader of its own (its own folder, its pillar's verify keys), behind a
stand-in LocalClient that can keep a Pi silent. Real Ed25519 keys, real
files.
"""

import datetime as dt
import json
import os
import pathlib
import shutil
import stat

import pytest
import salt.client
import salt.config
import salt.loader
import yaml

import fleet_calendar
import fleet_outbox
import fleet_sign
from tests.support.topology import fleet_data, two_campus_inventory
from tests.support.local_client import LocalClientStandIn

REPO = pathlib.Path(__file__).resolve().parents[2]
PIS = {"east": ["pi-east-1", "pi-east-2"], "west": ["pi-west-1", "pi-west-2"]}


class Pis(LocalClientStandIn):
    """A stand-in LocalClient in front of each Pi's real ``kiosk_campus`` module; ``silent``/``keys`` per Pi."""

    def __init__(self, root, public):
        self.root = root
        self.public = public
        self.jobs = []
        self.silent = set()
        self.keys = {}
        self.mods = {}

    def module(self, pi):
        """The Pi minion's loader (built on first use: ``keys`` may give it other verify keys)."""
        if pi not in self.mods:
            opts = salt.config.minion_config(None)
            base = self.root / pi
            opts.update({"file_client": "local", "root_dir": str(base), "cachedir": str(base / "cache"),
                         "module_dirs": [str(REPO)], "id": pi, "grains": {},
                         "pillar": {"kiosk_release": {"verify_key": [self.keys.get(pi, self.public)]}},
                         "kiosk_campus": {"dir": str(base / "campus"), "campus": self.campus(pi)}})
            self.mods[pi] = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts),
                                                    whitelist=["kiosk_campus", "config", "pillar"],
                                                    loaded_base_name=f"pi_{pi.replace('-', '_')}")
        return self.mods[pi]

    def campus(self, pi):
        return pi.split("-")[1]

    def serial(self, pi):
        doc = fleet_calendar.load(str(self.root / pi / "campus"), self.keys.get(pi, self.public), self.campus(pi))
        return None if doc is None else doc["serial"]

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs.append((fun, sorted(targets), kwarg))
        assert fun == "kiosk_campus.calendar" and tgt_type == "list"
        for pi in targets:
            if pi in self.silent:
                continue
            ret = self.module(pi)["kiosk_campus.calendar"](**kwarg)
            yield {pi: {"ret": ret, "retcode": 0 if ret.get("result") else 1}}


@pytest.fixture(scope="module")
def keys():
    private, public = fleet_sign.new_key_pair()
    return private, public


@pytest.fixture
def setup(tmp_path, keys, monkeypatch):
    private, public = keys
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(fleet_data(two_campus_inventory(wol_port=9), [public])))
    key_path = tmp_path / "signing.pem"
    key_path.write_bytes(private)
    key_path.chmod(0o600)
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "file_roots": {"base": [str(tmp_path / "files")]},
                 "kiosk_release": {"signing_key": str(key_path)}, "__role": "master"})
    loaded = salt.loader.runner(opts, utils=salt.loader.utils(opts))
    pis = Pis(tmp_path / "pis", public)
    monkeypatch.setattr(salt.client, "get_local_client", pis)
    return loaded, pis, pathlib.Path(opts["cachedir"]), opts


def publish(loaded, **kwargs):
    return loaded["kiosk_calendar.publish"](**dict({"timeout": 5}, **kwargs))


def test_publish_signs_each_campus_once_and_sends_it_to_that_campus_pis_only(setup, keys):
    loaded, pis, cache, _ = setup
    ret = publish(loaded)
    assert ret["result"] is True and ret["retcode"] == 0, ret
    by_targets = {tuple(j[1]): j[2]["calendar"] for j in pis.jobs}
    assert set(by_targets) == {tuple(PIS["east"]), tuple(PIS["west"])}
    for campus, doc in ((c, by_targets[tuple(PIS[c])]) for c in PIS):
        assert doc["campus"] == campus and list(doc["inventory"]["campuses"]) == [campus]
        fleet_calendar.verify(doc, [keys[1]], campus)
        report = ret["campuses"][campus]
        assert report["changed"] is True and report["sent_to"] == PIS[campus] and report["current"] == PIS[campus]
        assert report["answered"] == {pi: {"serial": doc["serial"], "stored": True} for pi in PIS[campus]}
        for pi in PIS[campus]:  # what the Pi's module says it holds
            assert pis.module(pi)["kiosk_campus.calendar"]() == {"result": True, "serial": doc["serial"],
                                                                 "stored": False}
        for pi in PIS[campus]:
            assert pis.serial(pi) == doc["serial"]
        path = cache / "kiosk_calendar" / f"{campus}.json"
        assert json.loads(path.read_text()) == doc and stat.S_IMODE(path.stat().st_mode) == 0o600
    # the west calendar carries west's schedule (campus-test rules), east's the east one
    assert "kiosk-west-01" in by_targets[tuple(PIS["west"])]["schedule"]["campuses"]["west"]["kiosks"]
    assert keys[0].decode().splitlines()[1] not in json.dumps(ret)  # the private key never shows


def test_an_unchanged_calendar_is_neither_signed_again_nor_sent_to_pis_that_hold_it(setup):
    loaded, pis, _, _ = setup
    first = publish(loaded)
    pis.jobs.clear()
    again = publish(loaded)
    assert again["result"] is True and pis.jobs == []
    for campus in PIS:
        assert again["campuses"][campus]["serial"] == first["campuses"][campus]["serial"]
        assert again["campuses"][campus]["changed"] is False and again["campuses"][campus]["sent_to"] == []
    forced = publish(loaded, campus="west", force=True)
    assert list(forced["campuses"]) == ["west"] and forced["campuses"]["west"]["changed"] is True
    assert forced["campuses"]["west"]["serial"] > first["campuses"]["west"]["serial"]
    assert [j[1] for j in pis.jobs] == [PIS["west"]]


def test_a_hold_changes_only_its_campus_calendar(setup):
    loaded, pis, cache, _ = setup
    first = publish(loaded)
    pis.jobs.clear()
    state = cache / "kiosk_power" / "state.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).replace(microsecond=0)
    hold = {"kiosk": "kiosk-east-01", "campus": "east", "state": "on", "until": until.isoformat(),
            "reason": "ward move", "set_at": "2027-01-01T00:00:00Z"}
    state.write_text(json.dumps({"holds": {"kiosk-east-01": hold}}))
    ret = publish(loaded)
    assert ret["campuses"]["east"]["changed"] is True and ret["campuses"]["west"]["changed"] is False
    assert ret["campuses"]["east"]["serial"] > first["campuses"]["east"]["serial"]
    assert [j[1] for j in pis.jobs] == [PIS["east"]]
    assert pis.jobs[0][2]["calendar"]["holds"] == {"kiosk-east-01": hold}


def test_a_silent_pi_gets_the_calendar_again_and_only_it(setup):
    loaded, pis, _, _ = setup
    pis.silent = {"pi-east-2"}
    first = publish(loaded)
    east = first["campuses"]["east"]
    assert first["result"] is True  # a Pi of the campus holds it: the campus runs on it
    assert east["silent"] == ["pi-east-2"] and east["current"] == ["pi-east-1"]
    pis.jobs.clear()
    pis.silent = set()
    again = publish(loaded)
    assert [j[1] for j in pis.jobs] == [["pi-east-2"]]
    assert again["campuses"]["east"]["current"] == PIS["east"]
    assert pis.serial("pi-east-2") == east["serial"]


def test_a_campus_whose_pis_are_all_silent_is_waiting_not_failed_and_is_retried(setup):
    loaded, pis, _, _ = setup
    pis.silent = set(PIS["west"])
    ret = publish(loaded)
    assert ret["result"] is True and ret["retcode"] == 0  # a cut link is normal
    assert ret["campuses"]["west"]["waiting"].startswith("no Pi of west holds calendar")
    assert ret["campuses"]["west"]["current"] == [] and "waiting" not in ret["campuses"]["east"]
    assert ret["campuses"]["east"]["current"] == PIS["east"]
    pis.jobs.clear()
    publish(loaded)
    assert [j[1] for j in pis.jobs] == [PIS["west"]]


def test_a_pi_that_reports_an_older_serial_to_the_collection_gets_it_again(setup):
    loaded, pis, cache, _ = setup
    first = publish(loaded)
    pis.jobs.clear()
    # pi-west-2 reinstalled: the outbox collection hears an older serial, after our send
    collected = fleet_outbox.Collected(str(cache / "kiosk_outbox" / "collected.db"))
    os.makedirs(cache / "kiosk_outbox", exist_ok=True)
    collected.merge("west", "pi-west-2", [], info={"serial": first["campuses"]["west"]["serial"] - 5},
                    now=dt.datetime.now(dt.timezone.utc).timestamp() + 5)
    collected.merge("west", "pi-west-1", [], info={"serial": first["campuses"]["west"]["serial"]})
    publish(loaded)
    assert [j[1] for j in pis.jobs] == [["pi-west-2"]]


def test_a_pi_refusing_the_calendar_is_named_and_fails_the_run(setup):
    loaded, pis, _, _ = setup
    pis.keys["pi-west-1"] = fleet_sign.new_key_pair()[1]  # a Pi that holds other verify keys
    ret = publish(loaded)
    assert ret["result"] is False
    west = ret["campuses"]["west"]
    assert west["refused"] == ["pi-west-1"] and west["current"] == ["pi-west-2"]
    assert west["answered"]["pi-west-1"]["error"].startswith("calendar.signature: does not match")
    assert west["answered"]["pi-west-1"]["error"].endswith("the last good calendar is kept")
    assert ret["error"].startswith("west: pi-west-1: calendar.signature")
    pis.jobs.clear()
    publish(loaded)
    assert [j[1] for j in pis.jobs] == [["pi-west-1"]]  # refused: tried again


def test_a_signing_key_the_pis_cannot_verify_with_is_refused_before_sending(setup, tmp_path):
    loaded, pis, _, _ = setup
    key = tmp_path / "signing.pem"
    key.write_bytes(fleet_sign.new_key_pair()[0])  # not the key of the fleet's kiosk_release:verify_key
    ret = publish(loaded)
    assert ret["result"] is False and pis.jobs == []
    assert ret["campuses"]["east"]["error"].startswith("calendar.signature: does not match")
    key.chmod(0o644)
    assert "chmod 600" in publish(loaded)["campuses"]["west"]["error"]
    key.unlink()
    assert publish(loaded)["campuses"]["west"]["error"].startswith("kiosk_release.signing_key: ")
    assert pis.jobs == []

@pytest.mark.parametrize("kwargs, field", [
    ({"campus": "north"}, "campus"), ({"campus": ["east", {"x": 1}]}, "campus"), ({"timeout": 0}, "timeout"),
    ({"timeout": "soon"}, "timeout"), ({"force": "maybe"}, "force"),
])
def test_bad_arguments_are_named(setup, kwargs, field):
    loaded, pis, _, _ = setup
    ret = publish(loaded, **kwargs)
    assert ret["result"] is False and ret["retcode"] == 1 and ret["error"].startswith(f"{field}:"), ret
    assert pis.jobs == []


def test_show_names_the_calendar_and_each_pi(setup):
    loaded, pis, _, _ = setup
    assert loaded["kiosk_calendar.show"](campus="east")["error"].startswith("campus: no calendar published for east")
    pis.silent = {"pi-east-2"}
    published = publish(loaded)
    shown = loaded["kiosk_calendar.show"](campus="east")
    assert shown["result"] is True and shown["calendar"]["serial"] == published["campuses"]["east"]["serial"]
    assert shown["calendar"]["kiosks"] == 2 and shown["missing"] == ["pi-east-2"]
    assert shown["pis"]["pi-east-1"]["current"] is True and "doc" not in shown
    full = loaded["kiosk_calendar.show"](campus="east", full="True")
    fleet_calendar.verify(full["doc"], pis.public, "east")
    assert loaded["kiosk_calendar.show"]()["error"].startswith("campus: name one campus")
    assert loaded["kiosk_calendar.show"](campus="east,west")["retcode"] == 1


def test_a_top_master_that_lost_its_state_still_publishes_calendars_the_pis_take(setup):
    loaded, pis, cache, _ = setup
    first = publish(loaded, campus="east")
    shutil.rmtree(cache / "kiosk_calendar")  # state lost (cachedir wiped, a standby master)
    # and the outbox collection heard a Pi hold a serial ahead of this master's clock (one that ran fast)
    collected = fleet_outbox.Collected(str(cache / "kiosk_outbox" / "collected.db"))
    os.makedirs(cache / "kiosk_outbox", exist_ok=True)
    ahead = first["campuses"]["east"]["serial"] + 3600
    collected.merge("east", "pi-east-1", [], info={"serial": ahead})
    again = publish(loaded, campus="east")
    assert again["campuses"]["east"]["serial"] == ahead + 1  # above what a Pi holds, not the clock's now
    assert again["campuses"]["east"]["current"] == PIS["east"]
