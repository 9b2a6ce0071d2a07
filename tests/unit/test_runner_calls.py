"""
The runners kiosk_fleet, kiosk_env, kiosk_change and kiosk_alert loaded by
Salt's runner loader, with the LocalClient stood in: each job goes through
``fleet_runner.call``, so a silent, a failed and a forged (conflicting)
minion are told apart the same way in every runner.
"""

import os
import pathlib
import stat
import time

import pytest
import salt.client
import salt.config
import salt.loader
import yaml

from tests.support.topology import two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
SILENT = "Minion did not return. [No response]\nThe minions may not have all finished running"


class FakeClient:
    """A LocalClient whose ``cmd_iter`` yields what ``answer(fun, tgt, arg, kwarg)`` returns."""

    def __init__(self, answer, jobs):
        self.answer = answer
        self.jobs = jobs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_iter(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", ret="", kwarg=None, **kwargs):
        assert tgt_type == "list" and isinstance(timeout, int)
        self.jobs.append({"tgt": list(tgt), "fun": fun, "arg": list(arg), "kwarg": kwarg})
        for minion, value, retcode in self.answer(fun, tgt, arg, kwarg):
            yield {minion: {"ret": value, "retcode": retcode, "jid": "1"}}


@pytest.fixture
def minions(monkeypatch):
    """Set ``minions.answer``; ``minions.jobs`` lists the jobs sent."""

    class Minions:
        jobs = []
        answer = staticmethod(lambda fun, tgt, arg, kwarg: [])

    monkeypatch.setattr(salt.client, "get_local_client",
                        lambda *args, **kwargs: FakeClient(lambda *a: Minions.answer(*a), Minions.jobs))
    return Minions


def load(tmp_path, **extra):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(two_campus_inventory(wol_port=9)))
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "__role": "master",
                 "file_roots": {"base": [str(REPO / "states")]}, **extra})
    return salt.loader.runner(opts, utils=salt.loader.utils(opts))


# ---------------------------------------------------------------- kiosk_fleet.ping


def test_ping_counts_failed_silent_and_forged_kiosks_as_down(tmp_path, minions):
    minions.answer = lambda fun, tgt, arg, kwarg: [
        ("kiosk-east-01", True, 0),
        ("kiosk-east-02", True, 0),
        ("kiosk-east-02", "forged", 0),  # another minion behind a syndic wrote kiosk-east-02's return
        ("kiosk-west-01", "ERROR: test.ping broke", 1),
        ("kiosk-west-02", SILENT, 1),
    ]
    ret = load(tmp_path)["kiosk_fleet.ping"]()
    assert minions.jobs[-1]["fun"] == "test.ping"
    assert minions.jobs[-1]["tgt"] == ["kiosk-east-01", "kiosk-east-02", "kiosk-west-01", "kiosk-west-02"]
    assert ret["result"] is False and ret["retcode"] == 1
    assert ret["campuses"]["east"] == {"up": ["kiosk-east-01"], "down": ["kiosk-east-02"]}
    assert ret["down"] == ["kiosk-east-02", "kiosk-west-01", "kiosk-west-02"]


def test_ping_of_a_campus_that_answers_succeeds(tmp_path, minions):
    minions.answer = lambda fun, tgt, arg, kwarg: [(k, True, 0) for k in tgt]
    ret = load(tmp_path)["kiosk_fleet.ping"](campus="west")
    assert ret["result"] is True and ret["retcode"] == 0 and ret["down"] == []


def _present(connected, silent_campuses=()):
    """An answer function: the Pis answer kiosk_scan.presence with ``connected``, kiosks answer True."""

    def answer(fun, tgt, arg, kwarg):
        if fun != "kiosk_scan.presence":
            return [(k, True, 0) for k in tgt]
        campus = tgt[0].split("-")[1]
        if campus in silent_campuses:
            return []
        return [(pi, {"pi": pi, "campus": campus, "kiosks": {k: k in connected for k in kwarg["kiosks"]}}, 0)
                for pi in tgt]

    return answer


def test_ping_asks_only_the_kiosks_a_pi_holds_a_connection_from(tmp_path, minions):
    minions.answer = _present({"kiosk-east-01", "kiosk-west-02"})
    ret = load(tmp_path)["kiosk_fleet.ping"]()
    presence = [j for j in minions.jobs if j["fun"] == "kiosk_scan.presence"]
    # one job per campus, to that campus's Pis, with that campus's kiosks only
    assert sorted((j["tgt"], j["kwarg"]["kiosks"]) for j in presence) == [
        (["pi-east-1", "pi-east-2"], ["kiosk-east-01", "kiosk-east-02"]),
        (["pi-west-1", "pi-west-2"], ["kiosk-west-01", "kiosk-west-02"])]
    assert minions.jobs[-1]["fun"] == "test.ping"
    assert minions.jobs[-1]["tgt"] == ["kiosk-east-01", "kiosk-west-02"]
    assert ret["result"] is False and ret["retcode"] == 1
    assert ret["absent"] == ret["down"] == ["kiosk-east-02", "kiosk-west-01"]
    assert ret["campuses"]["west"] == {"up": ["kiosk-west-02"], "down": ["kiosk-west-01"]}
    assert "not asked" in ret["error"]


def test_ping_asks_every_kiosk_of_a_campus_whose_pis_are_silent_or_when_told(tmp_path, minions):
    minions.answer = _present({"kiosk-east-01"}, silent_campuses={"west"})
    ret = load(tmp_path)["kiosk_fleet.ping"]()
    assert minions.jobs[-1]["tgt"] == ["kiosk-east-01", "kiosk-west-01", "kiosk-west-02"]
    assert ret["absent"] == ["kiosk-east-02"] and ret["down"] == ["kiosk-east-02"]
    minions.jobs.clear()
    ret = load(tmp_path)["kiosk_fleet.ping"](presence="false")
    assert [j["fun"] for j in minions.jobs] == ["test.ping"]
    assert ret["result"] is True and ret["absent"] == []


def test_ping_refuses_bad_arguments_without_a_job(tmp_path, minions):
    runners = load(tmp_path)
    assert runners["kiosk_fleet.ping"](timeout=float("nan"))["error"].startswith("timeout: ")
    assert runners["kiosk_fleet.ping"](campus=["north"])["error"].startswith("campus: unknown campus north")
    assert runners["kiosk_fleet.ping"](presence="maybe")["error"].startswith("presence: ")
    assert minions.jobs == []


def test_campus_data_is_written_atomically_with_mode_0640(tmp_path):
    dest = tmp_path / "east.yaml"
    ret = load(tmp_path)["kiosk_fleet.campus_data"](campus="east", dest=str(dest))
    assert ret == {"result": True, "campus": "east", "dest": str(dest), "retcode": 0}
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o640
    assert sorted(yaml.safe_load(dest.read_text())["kiosk_fleet"]["campuses"]) == ["east"]
    assert sorted(os.listdir(tmp_path)) == ["east.yaml", "fleet.yaml"]  # no temporary file left
    missing = load(tmp_path)["kiosk_fleet.campus_data"](campus="east", dest=str(tmp_path / "no" / "east.yaml"))
    assert missing["result"] is False and missing["error"].startswith("dest: cannot write ")


# ---------------------------------------------------------------- kiosk_env.status


def reading(pi, **values):
    return {"pi": pi, "at": time.time(), "temperature": 21.5, "humidity": 40.0, "smoke": False,
            "alerts": [], "errors": {}, **values}


def test_status_caches_good_readings_and_shows_failed_pis(tmp_path, minions):
    minions.answer = lambda fun, tgt, arg, kwarg: [
        ("pi-east-1", reading("pi-east-1"), 0),
        ("pi-east-2", "'kiosk_env.read' is not available.", 1),
        ("pi-west-1", reading("pi-west-1"), 0),
        ("pi-west-1", reading("pi-west-1", temperature=99.0), 0),  # forged: neither is believed
    ]
    runners = load(tmp_path)
    ret = runners["kiosk_env.status"]()
    assert minions.jobs[-1]["fun"] == "kiosk_env.read"
    assert ret["result"] is False
    east, west = ret["campuses"]["east"], ret["campuses"]["west"]
    assert east["pi-east-1"]["source"] == "live" and east["pi-east-1"]["stale"] is False
    assert east["pi-east-2"] == {"source": None, "stale": True, "error": "'kiosk_env.read' is not available."}
    assert west["pi-west-1"]["source"] is None and west["pi-west-2"]["error"] == "no reading"
    assert sorted(ret["missing"]) == ["pi-east-2", "pi-west-1", "pi-west-2"]
    cache = yaml.safe_load((tmp_path / "cache" / "kiosk_env" / "readings.json").read_text())
    assert sorted(cache["readings"]) == ["pi-east-1"]  # the forged pair was not cached
    # next run: pi-east-1 silent, its cached reading answers for it
    minions.answer = lambda fun, tgt, arg, kwarg: [("pi-east-1", SILENT, 1)]
    again = runners["kiosk_env.status"](campus="east")
    assert again["campuses"]["east"]["pi-east-1"]["source"] == "cache"
    assert again["campuses"]["east"]["pi-east-1"]["stale"] is False


@pytest.mark.parametrize("bad", ["nan", float("inf"), -5, True, [1], "soon"])
def test_status_refuses_a_bad_stale_s(tmp_path, minions, bad):
    ret = load(tmp_path)["kiosk_env.status"](stale_s=bad)
    assert ret["result"] is False and ret["error"].startswith("stale_s: ") and minions.jobs == []


def test_status_names_a_corrupt_cache_file(tmp_path, minions):
    folder = tmp_path / "cache" / "kiosk_env"
    folder.mkdir(parents=True)
    (folder / "readings.json").write_text("[]")
    ret = load(tmp_path)["kiosk_env.status"](campus="east")
    assert ret["result"] is False and "readings.json: expected a JSON object, got list" in ret["error"]


# ---------------------------------------------------------------- kiosk_change.apply


def test_apply_reports_silent_and_forged_kiosks(tmp_path, minions):
    ok = {"file_|-hosts_|-C:\\hosts_|-managed": {"result": True, "changes": {"diff": "+x"}, "comment": ""}}
    minions.answer = lambda fun, tgt, arg, kwarg: [
        ("kiosk-east-01", ok, 0),
        ("kiosk-east-02", ok, 0),
        ("kiosk-east-02", {"forged": {"result": True, "changes": {}}}, 0),
    ]
    ret = load(tmp_path)["kiosk_change.apply"](template="hosts", campus="east", params={"hosts": {"x": "127.0.0.1"}})
    job = minions.jobs[-1]
    assert job["fun"] == "state.apply" and job["arg"] == ["kiosk_fleet.changes.hosts"]
    assert job["kwarg"] == {"test": False, "pillar": {"kiosk_change": {"hosts": {"x": "127.0.0.1"}}}}
    assert ret["result"] is False and ret["silent"] == ["kiosk-east-02"] and ret["failed"] == []
    assert ret["kiosks"]["kiosk-east-01"]["changed"] == 1
    assert ret["error"] == "change hosts failed on kiosk-east-02"


def test_apply_lists_kiosks_no_pi_holds_as_silent_without_sending_them_the_state(tmp_path, minions):
    ok = {"file_|-hosts_|-C:\\hosts_|-managed": {"result": None, "changes": {"diff": "+x"}, "comment": ""}}
    answer = _present({"kiosk-east-01"})
    minions.answer = lambda fun, tgt, arg, kwarg: (answer(fun, tgt, arg, kwarg) if fun != "state.apply"
                                                   else [(k, ok, 0) for k in tgt])
    ret = load(tmp_path)["kiosk_change.apply"](template="hosts", campus="east", test=True)
    assert minions.jobs[-1]["fun"] == "state.apply" and minions.jobs[-1]["tgt"] == ["kiosk-east-01"]
    assert ret["absent"] == ret["silent"] == ["kiosk-east-02"]
    assert ret["result"] is False and ret["error"] == "change hosts failed on kiosk-east-02"


# ---------------------------------------------------------------- kiosk_alert: the re-read


@pytest.mark.parametrize(("returns", "why"), [
    ([("pi-east-1", {"pi": "pi-east-1", "smoke": True}, 0), ("pi-east-1", {"pi": "pi-east-1", "smoke": False}, 0)],
     "answered the re-read twice, differently"),
    ([("pi-east-1", "The minion function caused an exception: Traceback", 1)], "failed the re-read: The minion"),
    ([("pi-east-1", SILENT, 1)], "did not answer the re-read within 7 s"),
    ([], "did not answer the re-read within 7 s"),
])
def test_an_env_alert_is_not_posted_without_one_clear_reread(tmp_path, minions, returns, why):
    minions.answer = lambda fun, tgt, arg, kwarg: returns
    runners = load(tmp_path, kiosk_fleet_alerts={"webhook_url": "http://127.0.0.1:9/hook", "reread_timeout": 7})
    ret = runners["kiosk_alert.event"](tag="salt/beacon/pi-east-1/kiosk_env/alert",
                                       data={"id": "pi-east-1", "metric": "smoke", "value": True})
    assert minions.jobs[-1]["tgt"] == ["pi-east-1"] and minions.jobs[-1]["fun"] == "kiosk_env.read"
    assert ret["result"] is False and ret["posted"] is False
    assert why in ret["error"] and ret["error"].startswith("re-read of pi-east-1 does not confirm the alert")


@pytest.mark.parametrize(("conf", "error"), [
    (None, "kiosk_fleet_alerts: not set in the master config"),
    ("https://x", "kiosk_fleet_alerts: expected a mapping in the master config, got str"),
    ({"webhook_url": "http://127.0.0.1:9/h", "timeout": float("nan")}, "timeout: nan is outside 0-60 seconds"),
    ({"webhook_url": "http://127.0.0.1:9/h", "timeout": True}, "timeout: True is outside 0-60 seconds"),
])
def test_alert_settings_errors_name_the_key(tmp_path, conf, error):
    ret = load(tmp_path, kiosk_fleet_alerts=conf)["kiosk_alert.post"]({"severity": "info", "summary": "x"})
    assert ret["result"] is False and ret["error"].startswith(error)
