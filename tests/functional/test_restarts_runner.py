"""
Unexpected restarts through Salt's loaders, no daemons: the ``kiosk_power``
execution module's ``last_boot`` as a Linux kiosk runs it, the
``kiosk_restarts`` runner with the kiosks stood in by a LocalClient (which
hands the job to the kiosk's loaded module, or answers as the test says),
``kiosk_power.status`` showing the count, and the ``kiosk/boot`` reactor and
startup state rendered by Salt's renderers.
"""

import datetime as dt
import json
import pathlib
import time

import pytest
import salt.client
import salt.config
import salt.exceptions
import salt.loader
import salt.template
import yaml
from prometheus_client.parser import text_string_to_metric_families

import fleet_outbox
import fleet_restarts
from tests.support.topology import SWEEP_SCHEDULES, two_campus_inventory
from tests.support.local_client import LocalClientStandIn

REPO = pathlib.Path(__file__).resolve().parents[2]
KIOSK = "kiosk-east-01"


def wevtutil_text(event_id, when):
    """What ``wevtutil qe System ... /f:text`` prints for one event at ``when`` (Unix seconds), UTC."""
    date = dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    source = "Microsoft-Windows-Kernel-Power" if event_id == 41 else "EventLog"
    return (f"Event[0]:\n  Log Name: System\n  Source: {source}\n  Date: {date}\n  Event ID: {event_id}\n"
            "  Task: N/A\n  Level: Critical\n  Computer: KIOSK-EAST-01\n  Description: \nThe system has rebooted"
            " without cleanly shutting down first.\n")


# ---------------------------------------------------------------- the kiosk's module


def kiosk_module(tmp_path, **power):
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"),
                 "module_dirs": [str(REPO)], "id": KIOSK, "grains": {"kernel": "Linux"}, "kiosk_power": power})
    return salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_power", "cmd"],
                                   loaded_base_name=f"kf_restarts_{abs(hash(str(tmp_path)))}")


def proc_btime():
    with open("/proc/stat", encoding="ascii") as stat:
        return fleet_restarts.parse_btime(stat.read())


def test_last_boot_on_linux_reads_btime_and_the_configured_shutdown_file(tmp_path):
    shutdown = tmp_path / "last_shutdown.txt"
    mods = kiosk_module(tmp_path, last_shutdown_file=str(shutdown))
    booted = proc_btime()
    answer = mods["kiosk_power.last_boot"]()
    assert answer == {"id": KIOSK, "boot_time": booted, "boot_time_iso": fleet_restarts.iso(booted), "shutdown": None}
    shutdown.write_text(wevtutil_text(41, booted + 20))
    assert mods["kiosk_power.last_boot"]()["shutdown"] == {
        "event_id": 41, "source": "Microsoft-Windows-Kernel-Power", "at": booted + 20,
        "reason": fleet_restarts.EVENT_REASONS[41]}
    assert mods["kiosk_power.last_boot"](reason=False)["shutdown"] is None
    # an event of an earlier boot is not this boot's reason
    shutdown.write_text(wevtutil_text(6008, booted - 86400))
    assert mods["kiosk_power.last_boot"]()["shutdown"] is None
    # a reason that cannot be read is told, and never stops the boot announcement
    shutdown.write_text("Access is denied.\n")
    answer = mods["kiosk_power.last_boot"]()
    assert answer["boot_time"] == booted and answer["shutdown"] is None
    assert answer["shutdown_error"].startswith("text: ")
    with pytest.raises(salt.exceptions.SaltInvocationError, match="^reason: "):
        mods["kiosk_power.last_boot"](reason="yes")


def test_a_simulated_kiosk_takes_its_boot_time_from_the_boot_time_file(tmp_path):
    (tmp_path / "boot_time").write_text("1803888060\n")
    mods = kiosk_module(tmp_path, boot_time_file=str(tmp_path / "boot_time"))
    assert mods["kiosk_power.last_boot"]()["boot_time_iso"] == "2027-03-01T08:01:00Z"
    (tmp_path / "boot_time").write_text("later")
    with pytest.raises(salt.exceptions.CommandExecutionError, match="boot_time_file: "):
        mods["kiosk_power.last_boot"]()
    with pytest.raises(salt.exceptions.CommandExecutionError, match="kiosk_power:boot_time_file: "):
        kiosk_module(tmp_path / "b", boot_time_file="boot_time")["kiosk_power.last_boot"]()


def test_status_reads_the_same_boot_time_as_last_boot(tmp_path):
    (tmp_path / "boot_time").write_text("1700000000\n")
    mods = kiosk_module(tmp_path, boot_time_file=str(tmp_path / "boot_time"))
    status = mods["kiosk_power.status"]()
    assert status["boot_time"] == mods["kiosk_power.last_boot"]()["boot_time_iso"] == "2023-11-14T22:13:20Z"
    assert status["id"] == KIOSK and status["uptime_s"] >= int(time.time()) - 1700000000 - 1
    assert kiosk_module(tmp_path / "b")["kiosk_power.status"]()["boot_time"] == fleet_restarts.iso(proc_btime())


def test_last_boot_tells_a_bad_shutdown_file_setting(tmp_path):
    mods = kiosk_module(tmp_path, last_shutdown_file="relative/path.txt")
    answer = mods["kiosk_power.last_boot"]()
    assert answer["shutdown_error"].startswith("kiosk_power:last_shutdown_file: ")
    assert kiosk_module(tmp_path / "b")["kiosk_power.last_boot"]()["shutdown"] is None  # not set: no reason


# ---------------------------------------------------------------- the runner


class Kiosks(LocalClientStandIn):
    """A stand-in LocalClient: ``answer[fun](minion, kwarg)`` gives each kiosk's returns (a list: duplicates)."""

    def __init__(self):
        self.jobs = []
        self.answer = {}

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs.append((fun, list(targets), kwarg))
        for minion in targets:
            for ret in self.answer.get(fun, lambda m, k: [])(minion, kwarg):
                yield {minion: {"ret": ret, "retcode": 1 if isinstance(ret, str) else 0}}


@pytest.fixture
def kiosks(monkeypatch):
    fake = Kiosks()
    monkeypatch.setattr(salt.client, "get_local_client", fake)
    return fake


@pytest.fixture
def master(tmp_path, monkeypatch):
    """(loaded runners, calls recorder, cachedir, textfile dir)."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({**two_campus_inventory(wol_port=9), **SWEEP_SCHEDULES}))
    prom = tmp_path / "prom"
    prom.mkdir()
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "file_roots": {"base": [str(tmp_path / "files")]},
                 "kiosk_power": {"textfile_dir": str(prom)}, "kiosk_restarts": {"timeout": 5}, "__role": "master"})
    loaded = salt.loader.runner(opts, utils=salt.loader.utils(opts))
    calls = {"collect": [], "wake_on_collect": None}
    cachedir = pathlib.Path(opts["cachedir"])

    def collect(campus=None, timeout=20, budget_s=None):
        """kiosk_outbox.collect: brings in the Pi's wake entry when the test put one on the Pi."""
        calls["collect"].append(campus)
        wake = calls["wake_on_collect"]
        if wake is not None:
            merge_wake(cachedir, wake)
        return {"result": True}

    module = loaded["kiosk_restarts.boot"].func.__globals__
    monkeypatch.setitem(module, "__salt__", {"kiosk_outbox.collect": collect})
    return loaded, calls, cachedir, prom


def merge_wake(cachedir, when):
    """The wake of KIOSK at ``when`` (Unix seconds) as pi-east-1's outbox reported it, collected."""
    at = dt.datetime.fromtimestamp(int(when), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    store = fleet_outbox.Collected(str(cachedir / "kiosk_outbox" / "collected.db"))
    store.merge("east", "pi-east-1", [{"kind": "action", "key": f"east/{KIOSK}/wake/{at}", "at": at,
                                       "data": {"kiosk": KIOSK, "campus": "east", "pi": "pi-east-1",
                                                "action": "wake", "at": at, "transition": at}}])


def counters(prom):
    text = (prom / "kiosk_restarts.prom").read_text()
    return {(s.name, s.labels["kiosk"]): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_boot_the_kiosk_reports_with_no_wake_counts_once_whichever_pi_announced_it(master, kiosks, tmp_path,
                                                                                     monkeypatch):
    loaded, calls, _, prom = master
    # the host's boot counts as old whatever its uptime (a fresh CI VM): no collect first
    monkeypatch.setitem(loaded["kiosk_restarts.boot"].func.__globals__, "COLLECT_IF_BOOTED_S", 0)
    mods = kiosk_module(tmp_path / "kiosk", last_shutdown_file=str(tmp_path / "shutdown.txt"))
    (tmp_path / "shutdown.txt").write_text(wevtutil_text(41, proc_btime() + 15))
    # the job reaches the kiosk's own loaded module (this Linux machine's boot)
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [mods["kiosk_power.last_boot"](**k)]}
    ret = loaded["kiosk_restarts.boot"](kiosk=KIOSK)
    assert ret["result"] is True and ret["retcode"] == 0 and ret["verdict"] == "unexpected"
    assert ret["boot_time"] == fleet_restarts.iso(proc_btime()) and ret["duplicate"] is False
    assert ret["reason"].endswith(fleet_restarts.EVENT_REASONS[41]) and ret["shutdown"]["event_id"] == 41
    assert kiosks.jobs == [("kiosk_power.last_boot", [KIOSK], {"reason": True})]
    assert calls["collect"] == []  # no wake known, but the boot is older than COLLECT_IF_BOOTED_S
    assert counters(prom)[("kiosk_unexpected_restarts_total", KIOSK)] == 1
    again = loaded["kiosk_restarts.boot"](kiosk=KIOSK)  # the copy of the event from pi-east-2
    assert again["duplicate"] is True and again["verdict"] == "unexpected" and again["retcode"] == 0
    assert counters(prom)[("kiosk_boots_total", KIOSK)] == 1
    shown = loaded["kiosk_restarts.show"](campus="east")
    assert shown["kiosks"][KIOSK]["unexpected"] == 1 and shown["unexpected"][0]["reason"] == ret["reason"]
    assert loaded["kiosk_restarts.show"](campus="west")["kiosks"] == {}


def test_a_fresh_boot_collects_the_campus_once_and_the_collected_wake_makes_it_expected(master, kiosks):
    loaded, calls, cachedir, prom = master
    booted = int(time.time()) - 1500
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [{"boot_time": booted, "shutdown": None}]}
    calls["wake_on_collect"] = booted - 40  # on the Pi, not collected yet
    ret = loaded["kiosk_restarts.boot"](kiosk=KIOSK)
    assert calls["collect"] == ["east"]
    assert ret["verdict"] == "expected" and ret["reason"].startswith("woken by the pack at ")
    assert counters(prom)[("kiosk_unexpected_restarts_total", KIOSK)] == 0
    assert counters(prom)[("kiosk_last_boot_timestamp_seconds", KIOSK)] == booted
    # every other kiosk of the inventory starts at 0, so increase() sees its first unexpected restart
    written = counters(prom)
    for other in ("kiosk-east-02", "kiosk-west-01", "kiosk-west-02"):
        assert written[("kiosk_unexpected_restarts_total", other)] == 0
        assert written[("kiosk_boots_total", other)] == 0
        assert ("kiosk_last_boot_timestamp_seconds", other) not in written
    # the wake of its next boot (20 min later) was collected already: no collect
    merge_wake(cachedir, booted + 1200 - 30)
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [{"boot_time": booted + 1200, "shutdown": None}]}
    assert loaded["kiosk_restarts.boot"](kiosk=KIOSK)["verdict"] == "expected" and calls["collect"] == ["east"]


def test_a_fresh_boot_of_a_campus_collected_since_is_decided_without_another_collect(master, kiosks):
    loaded, calls, cachedir, prom = master
    booted = int(time.time()) - 300
    merge_wake(cachedir, booted - 7200)  # pi-east-1 answered a collect after the boot; its last wake was hours ago
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [{"boot_time": booted, "shutdown": None}]}
    ret = loaded["kiosk_restarts.boot"](kiosk=KIOSK)
    assert calls["collect"] == [] and ret["verdict"] == "unexpected"
    # a power cut: the campus's other kiosk boots with no wake either; the last collect came within
    # CLOCK_SKEW_S after its boot (a wake stamped then would still explain it): one collect
    booted = int(time.time()) - 5
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [{"boot_time": booted, "shutdown": None}]}
    assert loaded["kiosk_restarts.boot"](kiosk="kiosk-east-02")["verdict"] == "unexpected"
    assert calls["collect"] == ["east"]


def test_a_kiosk_without_the_pack_yet_answers_with_salts_own_boot_time(master, kiosks):
    loaded, _, _, prom = master
    booted = time.time() - 7200.4
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: ["'kiosk_power.last_boot' is not available."],
                     "ps.boot_time": lambda m, k: [booted]}
    ret = loaded["kiosk_restarts.boot"](kiosk=KIOSK)
    assert ret["result"] is True and ret["boot_time"] == fleet_restarts.iso(booted) and ret["shutdown"] is None
    assert [job[0] for job in kiosks.jobs] == ["kiosk_power.last_boot", "ps.boot_time"]
    assert counters(prom)[("kiosk_boots_total", KIOSK)] == 1


@pytest.mark.parametrize(("kiosk", "answer", "error"), [
    ("pi-east-1", None, "kiosk: pi-east-1 is not a kiosk of the inventory"),
    ("kiosk-nowhere", None, "kiosk: kiosk-nowhere is not a kiosk of the inventory"),
    ("kiosk east", None, "kiosk: 'kiosk east' is not a minion id"),
    (KIOSK, lambda m, k: [], "did not answer kiosk_power.last_boot"),
    (KIOSK, lambda m, k: [{"boot_time": 1800000000}, {"boot_time": 1800000999}], "answered twice, differently"),
    (KIOSK, lambda m, k: ["ERROR: psutil is broken"], "failed kiosk_power.last_boot: ERROR: psutil is broken"),
    (KIOSK, lambda m, k: [{"boot_time": "yesterday"}], "answer.boot_time: "),
    (KIOSK, lambda m, k: [{"boot_time": int(time.time()) + 3600}], "answer.boot_time: "),
])
def test_what_cannot_be_recorded_fails_the_run_and_records_nothing(master, kiosks, kiosk, answer, error):
    loaded, _, cachedir, prom = master
    if answer is not None:
        kiosks.answer = {"kiosk_power.last_boot": answer}
    ret = loaded["kiosk_restarts.boot"](kiosk=kiosk)
    assert ret["result"] is False and ret["retcode"] == 1 and error in ret["error"]
    assert loaded.pack["__context__"]["retcode"] == 1  # the job's success flag (reactor, salt-api)
    assert not (prom / "kiosk_restarts.prom").exists()
    assert not pathlib.Path(fleet_restarts.store_path(str(cachedir))).exists()
    if answer is None:
        assert kiosks.jobs == []  # nothing is sent to an id that is no kiosk of the inventory


def test_show_validates_and_status_shows_the_count_per_kiosk(master, kiosks):
    loaded, _, cachedir, _ = master
    # a fresh master: the empty answer, and reading creates no store
    assert loaded["kiosk_restarts.show"]() == {"result": True, "kiosks": {}, "unexpected": [], "retcode": 0}
    assert loaded["kiosk_power.status"]()["unexpected_restarts"] == {}
    assert not pathlib.Path(fleet_restarts.store_path(str(cachedir))).exists()
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [{"boot_time": int(time.time()) - 4000}]}
    loaded["kiosk_restarts.boot"](kiosk=KIOSK)
    status = loaded["kiosk_power.status"]()
    assert status["result"] is True and status["unexpected_restarts"] == {KIOSK: 1}
    assert loaded["kiosk_power.status"](campus="west")["unexpected_restarts"] == {}
    for kwargs, field in [({"limit": 0}, "limit"), ({"campus": "a/b"}, "campus"), ({"kiosk": ["x"]}, "kiosk")]:
        ret = loaded["kiosk_restarts.show"](**kwargs)
        assert ret["retcode"] == 1 and ret["error"].startswith(f"{field}: ")
    assert loaded["kiosk_restarts.show"](kiosk=KIOSK, limit="5")["unexpected"][0]["kiosk"] == KIOSK


# ---------------------------------------------------------------- the reactor and the startup state


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(root), "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
                 "sock_dir": str(root / "sock"), "file_roots": {"base": [str(root)]}})

    def run(path, functions=None, **context):
        renderers = salt.loader.render(opts, functions or {})
        out = salt.template.compile_template(path, renderers, opts["renderer"], opts["renderer_blacklist"],
                                             opts["renderer_whitelist"], **context)
        return json.loads(json.dumps(out))

    return run


def test_the_boot_reactor_hands_the_runner_the_id_alone(render):
    path = str(REPO / "reactor" / "kiosk_boot.sls")
    rendered = render(path, tag="kiosk/boot", data={"id": KIOSK, "boot_time": 1, "shutdown": {"event_id": 41}})
    assert rendered["record_kiosk_boot"] == {"runner.kiosk_restarts.boot": [{"args": [{"kiosk": KIOSK}]}]}
    assert rendered["sync_pack_on_kiosk_boot"]["local.saltutil.sync_all"][0] == {"tgt": KIOSK}
    for bad in ("kiosk-east-01\n", "*", ["kiosk-east-01"], ""):
        assert render(path, tag="kiosk/boot", data={"id": bad}) == {}


def test_the_boot_announcement_carries_the_boot_time_and_the_reason(render):
    path = str(REPO / "states" / "kiosk_fleet" / "boot.sls")
    shutdown = {"event_id": 41, "source": "Microsoft-Windows-Kernel-Power", "at": 1803888100, "reason": "x"}
    functions = {"pillar.get": lambda key, default=None: {"east": {}},
                 "kiosk_power.last_boot": lambda: {"boot_time": 1803888060, "shutdown": shutdown}}
    data = render(path, functions)["announce_kiosk_boot"]["event.send"]
    assert {"name": "kiosk/boot"} in data
    sent = next(item["data"] for item in data if "data" in item)
    assert sent == {"campus": "east", "boot_time": 1803888060, "shutdown": shutdown}
    # a kiosk that has not got the pack's module yet: Salt's own boot time
    functions = {"pillar.get": lambda key, default=None: {}, "ps.boot_time": lambda: 1803888061.5}
    sent = next(item["data"] for item in render(path, functions)["announce_kiosk_boot"]["event.send"]
                if "data" in item)
    assert sent == {"campus": "", "boot_time": 1803888061.5, "shutdown": None}


# ---------------------------------------------------------------- an operator's wake, recorded


def pi_sends(reached):
    """kiosk_wol.wake_kiosks as pi-east-1 answers it (packets to the kiosks in ``reached``); pi-east-2 silent."""
    return lambda m, k: ([{"kiosks": {x: {"packets": 3, "to": "127.0.1.255"} for x in k["kiosks"] if x in reached}}]
                         if m == "pi-east-1" else [])


def test_an_operators_wake_makes_the_boot_a_minute_later_expected_and_only_for_kiosks_sent_to(master, kiosks):
    loaded, calls, cachedir, prom = master
    kiosks.answer = {"kiosk_wol.wake_kiosks": pi_sends({KIOSK})}
    before = time.time()
    ret = loaded["kiosk_power.wake"](kiosks=f"{KIOSK},kiosk-east-02", timeout=5)
    after = time.time()
    # kiosk-east-02 got no packet: the wake fails for it, and no wake of it is recorded
    assert ret["retcode"] == 1 and ret["unreached"] == ["kiosk-east-02"] and ret["recorded"] is True
    store = fleet_restarts.Restarts(fleet_restarts.store_path(str(cachedir)))
    [sent] = store.wakes(KIOSK, 0, after)
    assert int(before) <= sent <= after and store.wakes("kiosk-east-02", 0, after) == []
    kiosks.answer = {"kiosk_power.last_boot": lambda m, k: [{"boot_time": sent + 60, "shutdown": None}]}
    ret = loaded["kiosk_restarts.boot"](kiosk=KIOSK)
    assert ret["verdict"] == "expected" and ret["reason"] == f"woken by the pack at {fleet_restarts.iso(sent)}"
    assert calls["collect"] == []  # the recorded wake explained the boot: no campus collect needed
    assert counters(prom)[("kiosk_unexpected_restarts_total", KIOSK)] == 0
    ret = loaded["kiosk_restarts.boot"](kiosk="kiosk-east-02")  # booted too, but not by the pack's wake
    assert ret["verdict"] == "unexpected" and ret["reason"].startswith("booted with no wake from the pack")


def test_a_wake_whose_record_fails_still_returns_the_wake(master, kiosks, caplog):
    loaded, _, cachedir, _ = master
    path = pathlib.Path(fleet_restarts.store_path(str(cachedir)))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database, a damaged file" * 100)
    kiosks.answer = {"kiosk_wol.wake_kiosks": pi_sends({KIOSK, "kiosk-east-02"})}
    with caplog.at_level("WARNING"):
        ret = loaded["kiosk_power.wake"](campus="east", timeout=5)
    assert ret["result"] is True and ret["retcode"] == 0 and loaded.pack["__context__"]["retcode"] == 0
    assert sorted(k for k, v in ret["kiosks"].items() if v["sent_by"]) == [KIOSK, "kiosk-east-02"]
    assert ret["recorded"] is False and ret["record_error"].startswith("store: ")
    assert "not recorded for kiosk_restarts" in caplog.text
