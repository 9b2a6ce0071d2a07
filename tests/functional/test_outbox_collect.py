"""
The outbox collection glue loaded by Salt's loaders: ``kiosk_outbox``
(runner) on a top master, and the ``kiosk_outbox`` execution module as each
Pi minion runs it, over real ``fleet_outbox.Outbox`` files. The job between
them is stood in by a LocalClient that hands each targeted Pi's kwargs to
that Pi's loaded module (a Pi cut from the WAN answers nothing); the alerts
go through the real ``kiosk_alert.post`` to a real webhook on loopback.
"""

import json
import os
import pathlib

import pytest
import salt.client
import salt.config
import salt.loader
import yaml
from prometheus_client.parser import text_string_to_metric_families

import fleet_calendar
import fleet_inventory
import fleet_sign
from fleet_outbox import Outbox, entry_key
from tests.support.loopback import reply
from tests.support.topology import two_campus_inventory
from tests.support.webhook import Webhook
from tests.support.local_client import LocalClientStandIn

REPO = pathlib.Path(__file__).resolve().parents[2]
AT = "2027-02-05T06:45:00Z"
FLEET = two_campus_inventory(wol_port=9)
PIS = {pi: campus for campus, spec in FLEET["kiosk_fleet"]["campuses"].items() for pi in spec["pis"]}


class FlakyWebhook(Webhook):
    """The webhook, answering ``status`` (204 unless a test sets another) and recording only what it accepted."""

    status = 204

    def answer(self, request):
        if self.status == 204:
            super().answer(request)
            return
        request.rfile.read(int(request.headers.get("Content-Length", 0)))
        reply(request, self.status)


@pytest.fixture
def webhook():
    hook = FlakyWebhook()
    yield hook
    hook.close()


class Campus(LocalClientStandIn):
    """The Pis' outboxes and modules, and the stand-in LocalClient that reaches the ``reachable`` ones."""

    def __init__(self, root):
        self.root = root
        self.reachable = set(PIS)
        self.jobs = []
        self.stand_in = {}
        self.loaded = {}
        for pi in PIS:
            (root / pi).mkdir(parents=True)
            (root / pi / "clock.json").write_text(json.dumps({"synced": True, "offset_s": 0.0}))

    def mods(self, pi):
        """The Pi's modules (its own loader: a loaded_base_name per Pi, so two Pis never share module globals)."""
        if pi in self.stand_in:
            return self.stand_in[pi]
        if pi not in self.loaded:
            self.loaded[pi] = self._load(pi)
        return self.loaded[pi]

    def _load(self, pi):
        root = self.root
        opts = salt.config.minion_config(None)
        opts.update({"file_client": "local", "root_dir": str(root / pi), "cachedir": str(root / pi / "cache"),
                     "module_dirs": [str(REPO)], "id": pi, "grains": {},
                     "pillar": fleet_inventory.slice_for(FLEET, pi),
                     "kiosk_campus": {"dir": str(root / pi / "campus"), "clock_file": str(root / pi / "clock.json")}})
        return salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_outbox", "config"],
                                       loaded_base_name=f"kf_outbox_{pi.replace('-', '_')}_{id(self)}")

    def outbox(self, pi):
        return Outbox(str(self.root / pi / "campus" / "outbox.db"))

    def cmd_iter(self, targets, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        self.jobs.append((fun, sorted(targets), kwarg))
        for pi in targets:
            if pi not in self.reachable:
                continue
            try:
                ret, retcode = self.mods(pi)[fun](**kwarg), 0
            except Exception as exc:  # what the minion returns for an exception
                ret, retcode = f"ERROR: {exc}", 1
            yield {pi: {"ret": ret, "retcode": retcode}}


@pytest.fixture
def campus(tmp_path, monkeypatch):
    fake = Campus(tmp_path / "pis")
    monkeypatch.setattr(salt.client, "get_local_client", fake)
    return fake


@pytest.fixture
def top(tmp_path, webhook):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(FLEET))
    (tmp_path / "prom").mkdir()
    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                 "kiosk_fleet": {"data": str(fleet)}, "__role": "master",
                 "kiosk_fleet_alerts": {"webhook_url": webhook.url, "timeout": 3},
                 "kiosk_outbox": {"textfile_dir": str(tmp_path / "prom")}})
    return salt.loader.runner(opts, utils=salt.loader.utils(opts))


def action(pi, kiosk, at=AT):
    return ("action", entry_key("east", kiosk, "wake", at),
            {"kiosk": kiosk, "campus": "east", "pi": pi, "action": "wake", "at": at, "transition": at, "result": True},
            at)


def mismatch(pi, kiosk, at=AT):
    key = entry_key("east", kiosk, "mismatch", at)
    payload = {"severity": "warning", "kind": "power_mismatch", "kiosk": kiosk, "campus": "east", "expected": "on",
               "observed": "off", "since": at, "summary": f"kiosk {kiosk} (east) should be on, observed off since {at}",
               "idempotency_key": key, "pi": pi}
    return ("alert", key, payload, at)


def observation(pi, kiosk, minute, observed):
    at = f"2027-02-05T06:{minute:02}:00Z"
    return ("observation", entry_key("east", kiosk, "observed", at),
            {"kiosk": kiosk, "campus": "east", "pi": pi, "observed": observed, "expected": "on"}, at)


def metrics(tmp_path):
    text = (tmp_path / "prom" / "kiosk_campus.prom").read_text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ---------------------------------------------------------------- the runner


def test_one_job_collects_every_pi_and_posts_an_alert_both_pis_recorded_once(tmp_path, campus, top, webhook):
    for pi in ("pi-east-1", "pi-east-2"):  # both live Pis woke the kiosk and both saw it stay off
        campus.outbox(pi).add_many([action(pi, "kiosk-east-01"), mismatch(pi, "kiosk-east-01"),
                                    observation(pi, "kiosk-east-01", 50, "off")])
    campus.outbox("pi-west-1").add(*action("pi-west-1", "kiosk-east-02"))  # a key of another campus: refused
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["result"] is True and ret["retcode"] == 0, ret
    assert [fun for fun, _, _ in campus.jobs] == ["kiosk_outbox.entries"]  # ONE job, every Pi
    assert campus.jobs[0][1] == sorted(PIS)
    assert ret["new"] == {"action": 1, "alert": 1, "observation": 1}
    east = ret["campuses"]["east"]["pis"]
    assert east["pi-east-1"]["new"] + east["pi-east-2"]["new"] == 3
    assert east["pi-east-1"]["duplicates"] + east["pi-east-2"]["duplicates"] == 3
    assert ret["campuses"]["west"]["pis"]["pi-west-1"]["refused"] == 1
    key = "east/kiosk-east-01/mismatch/2027-02-05T06:45:00Z"
    assert ret["alerts"] == {"posted": [key], "errors": []}
    assert len(webhook.posts) == 1  # not one per Pi
    body = webhook.posts[0]["json"]
    assert body["idempotency_key"] == key and body["kiosk"] == "kiosk-east-01" and body["campus"] == "east"

    again = top["kiosk_outbox.collect"](timeout=5)  # acknowledges: both Pis prune what was collected
    assert again["result"] is True and again["new"] == {} and len(webhook.posts) == 1
    jobs = campus.jobs[1][2]["cursors"]
    assert jobs["pi-east-1"]["cursor"] == 3 and jobs["pi-east-1"]["outbox"] == campus.outbox("pi-east-1").after()["outbox"]
    assert all(campus.outbox(pi).after()["entries"] == [] for pi in ("pi-east-1", "pi-east-2", "pi-west-1"))

    day = top["kiosk_outbox.day"](campus="east")
    assert day["result"] is True and list(day["campuses"]) == ["east"]
    shown = day["campuses"]["east"]
    assert shown["kiosks"]["kiosk-east-01"]["observed"] == "off"
    assert [a["key"] for a in shown["alerts"]] == [key] and shown["alerts"][0]["posted"] is True
    assert shown["alerts"][0]["pis"] == ["pi-east-1", "pi-east-2"]
    assert shown["pis"]["pi-east-2"]["clock"]["synced"] is True
    seen = metrics(tmp_path)
    assert seen[("kiosk_campus_entries_total", (("campus", "east"), ("kind", "alert"), ("pi", "pi-east-1")))] + \
        seen.get(("kiosk_campus_entries_total", (("campus", "east"), ("kind", "alert"), ("pi", "pi-east-2"))), 0) == 1
    assert seen[("kiosk_campus_alerts_posted_total", (("campus", "east"),))] == 1
    assert seen[("kiosk_campus_entries_refused_total", (("campus", "west"), ("pi", "pi-west-1")))] == 1
    assert seen[("kiosk_campus_kiosk_observed_on", (("campus", "east"), ("kiosk", "kiosk-east-01")))] == 0
    assert seen[("kiosk_campus_kiosk_mismatch", (("campus", "east"), ("kiosk", "kiosk-east-01")))] == 1
    assert seen[("kiosk_campus_pi_clock_synced", (("campus", "east"), ("pi", "pi-east-2")))] == 1
    assert webhook.secrets_in(json.dumps(ret)) == []


def test_a_silent_pi_is_normal_and_its_entries_come_after_the_reconnect(tmp_path, campus, top, webhook):
    campus.outbox("pi-east-1").add(*action("pi-east-1", "kiosk-east-01"))
    campus.outbox("pi-east-2").add_many([action("pi-east-2", "kiosk-east-02"), mismatch("pi-east-2", "kiosk-east-02")])
    campus.reachable -= {"pi-east-2"}  # its WAN link is cut
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["result"] is True and ret["retcode"] == 0 and ret["silent"] == ["pi-east-2"]
    assert ret["new"] == {"action": 1} and webhook.posts == []
    assert metrics(tmp_path)[("kiosk_campus_collect_silent_total", (("campus", "east"), ("pi", "pi-east-2")))] == 1
    campus.reachable.add("pi-east-2")
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["silent"] == [] and ret["new"] == {"action": 1, "alert": 1}
    assert [p["json"]["kiosk"] for p in webhook.posts] == ["kiosk-east-02"]


def test_an_unsynchronised_clock_is_posted_once_per_pi_and_day(campus, top, webhook):
    clock = {"campus": "east", "pi": "pi-east-2", "synced": False, "offset_s": 0.0, "confirmed_by": [],
             "source": "file", "summary": "Pi pi-east-2 (east): clock not synchronised; no shutdowns, no wakes until it is"}
    campus.outbox("pi-east-2").add("clock", entry_key("east", "pi-east-2", "clock", "1970-01-01"), clock,
                                   "1970-01-01T00:03:00Z")
    campus.outbox("pi-east-1").add("clock", entry_key("east", "pi-east-1", "clock", "2027-02-05"),
                                   dict(clock, pi="pi-east-1", synced=True), AT)  # synchronised: nothing to post
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["result"] is True and ret["alerts"]["posted"] == ["east/pi-east-2/clock/1970-01-01"]
    assert [(p["json"]["kind"], p["json"]["pi"]) for p in webhook.posts] == [("pi_clock", "pi-east-2")]
    campus.outbox("pi-east-2").add("clock", entry_key("east", "pi-east-2", "clock", "1970-01-01"), clock,
                                   "1970-01-01T00:04:00Z")  # the next run's record: the same key
    top["kiosk_outbox.collect"](timeout=5)
    assert len(webhook.posts) == 1
    clocks = top["kiosk_outbox.day"](campus="east", since="1970-01-01T00:00:00Z")["campuses"]["east"]["clocks"]
    assert [(c["pi"], c.get("posted")) for c in clocks] == [("pi-east-2", True), ("pi-east-1", None)]


def test_paging_runs_rounds_within_the_budget_and_the_rest_comes_next_time(campus, top):
    box = campus.outbox("pi-east-1")
    box.add_many([observation("pi-east-1", f"kiosk-east-{n:02}", n, "on") for n in range(10)])
    ret = top["kiosk_outbox.collect"](timeout=5, limit=3, budget_s=0)
    assert ret["result"] is True and ret["rounds"] == 1 and ret["more"] == ["pi-east-1"]
    assert ret["new"] == {"observation": 3}
    ret = top["kiosk_outbox.collect"](timeout=5, limit=3, budget_s=60)
    assert ret["rounds"] == 3 and ret["new"] == {"observation": 7} and "more" not in ret
    # later rounds go to the Pis with more only
    assert [targets for _, targets, _ in campus.jobs[2:]] == [["pi-east-1"]] * 2
    assert [e["seq"] for e in box.after()["entries"]] == [10]  # the last page waits for the next cursor


def test_a_recreated_outbox_is_collected_from_zero_without_posting_twice(campus, top, webhook):
    campus.outbox("pi-east-1").add_many([action("pi-east-1", f"kiosk-east-{n:02}") for n in range(1, 6)]
                                        + [mismatch("pi-east-1", "kiosk-east-01")])
    assert top["kiosk_outbox.collect"](timeout=5)["new"] == {"action": 5, "alert": 1}
    path = campus.outbox("pi-east-1").path
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    # the new file repeats two old keys (the reconciler redid its day) and has two new ones
    campus.outbox("pi-east-1").add_many([mismatch("pi-east-1", "kiosk-east-01"), action("pi-east-1", "kiosk-east-01"),
                                         action("pi-east-1", "kiosk-east-01", at="2027-02-05T18:00:00Z"),
                                         mismatch("pi-east-1", "kiosk-east-02")])
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["campuses"]["east"]["pis"]["pi-east-1"]["reset"] is True
    assert ret["new"] == {"action": 1, "alert": 1}
    assert sorted(p["json"]["kiosk"] for p in webhook.posts) == ["kiosk-east-01", "kiosk-east-02"]


def test_a_refused_post_fails_the_run_and_is_posted_once_later(campus, top, webhook):
    campus.outbox("pi-east-1").add(*mismatch("pi-east-1", "kiosk-east-01"))
    webhook.status = 503
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["result"] is False and ret["retcode"] == 1 and "HTTP 503" in ret["error"]
    assert webhook.secrets_in(ret["error"]) == []
    webhook.status = 204
    ret = top["kiosk_outbox.collect"](timeout=5)  # nothing new on the Pi: the stored alert is posted
    assert ret["result"] is True and ret["new"] == {}
    assert len(webhook.posts) == 1
    assert top["kiosk_outbox.collect"](timeout=5)["alerts"]["posted"] == []
    assert len(webhook.posts) == 1


def test_a_pi_with_a_broken_outbox_fails_the_run_and_the_others_are_collected(campus, top):
    campus.outbox("pi-east-1").add(*action("pi-east-1", "kiosk-east-01"))
    broken = campus.root / "pi-east-2" / "campus" / "outbox.db"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a database" * 200)
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["result"] is False and ret["retcode"] == 1
    assert "pi-east-2" in ret["failed"] and "not a usable database" in ret["failed"]["pi-east-2"]
    assert ret["new"] == {"action": 1}


def test_an_answer_for_another_pi_is_not_taken(campus, top, monkeypatch):
    campus.outbox("pi-east-2").add(*action("pi-east-2", "kiosk-east-01"))
    other = campus.mods("pi-east-2")

    class Impostor:
        def __getitem__(self, fun):
            return lambda **kw: dict(other[fun](cursors={"pi-east-2": kw["cursors"]["pi-east-1"]}))

    campus.stand_in["pi-east-1"] = Impostor()
    ret = top["kiosk_outbox.collect"](campus="east", timeout=5)
    assert ret["result"] is False and ret["failed"]["pi-east-1"].startswith("answer.pi:")


def test_a_cursor_forged_for_a_cut_off_pi_prunes_nothing(campus, top, webhook):
    box = campus.outbox("pi-east-1")
    box.add_many([action("pi-east-1", f"kiosk-east-{n:02}") for n in range(1, 5)] + [mismatch("pi-east-1", "kiosk-east-03")])
    outbox_id = box.after()["outbox"]  # every job to the Pi master's minions carries it: no secret

    class Forger:  # the Pi is cut off; something behind the syndic answers in its name
        def __getitem__(self, fun):
            return lambda **kw: {"result": True, "pi": "pi-east-1", "campus": "east", "entries": [], "cursor": 5,
                                 "outbox": outbox_id, "more": False}

    campus.stand_in["pi-east-1"] = Forger()
    assert top["kiosk_outbox.collect"](campus="east", timeout=5)["new"] == {}
    del campus.stand_in["pi-east-1"]  # the real Pi back: the forged cursor 5 never came from it
    ret = top["kiosk_outbox.collect"](campus="east", timeout=5)
    assert ret["campuses"]["east"]["pis"]["pi-east-1"]["reset"] is True
    assert ret["new"] == {"action": 4, "alert": 1} and len(webhook.posts) == 1


@pytest.mark.parametrize("kwargs, field", [
    ({"campus": "north"}, "campus"), ({"timeout": 0}, "timeout"), ({"limit": 10**6}, "limit"),
    ({"budget_s": -1}, "budget_s"),
])
def test_bad_arguments_fail_naming_the_field(campus, top, kwargs, field):
    ret = top["kiosk_outbox.collect"](**kwargs)
    assert ret["result"] is False and ret["retcode"] == 1 and ret["error"].startswith(field + ":")
    assert campus.jobs == []


def test_an_unusable_cachedir_fails_the_run_naming_it(campus, top, tmp_path):
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "kiosk_outbox").write_text("a file where the store's folder goes")
    ret = top["kiosk_outbox.collect"](timeout=5)
    assert ret["result"] is False and ret["retcode"] == 1 and ret["error"].startswith("cachedir:")
    assert campus.jobs == []


def test_day_refuses_a_bad_since(top):
    ret = top["kiosk_outbox.day"](since="yesterday")
    assert ret["result"] is False and ret["error"].startswith("since:")
    assert top["kiosk_outbox.day"]()["campuses"] == {}


# ---------------------------------------------------------------- the module on a Pi


def test_the_module_acknowledges_its_cursor_and_answers_the_next_page(campus):
    box = campus.outbox("pi-east-1")
    box.add_many([action("pi-east-1", f"kiosk-east-{n:02}") for n in range(1, 6)])
    entries = campus.mods("pi-east-1")["kiosk_outbox.entries"]
    first = entries(limit=2)
    assert first["result"] is True and (first["pi"], first["campus"]) == ("pi-east-1", "east")
    assert [e["seq"] for e in first["entries"]] == [1, 2] and first["more"] is True and first["acked"] == 0
    assert first["clock"] == {"synced": True, "source": "file", "offset_s": 0.0,
                              "file": str(campus.root / "pi-east-1" / "clock.json")}
    assert first["serial"] is None  # no kiosk_campus module loaded here
    second = entries(cursor=first["cursor"], outbox=first["outbox"], limit=2)
    assert [e["seq"] for e in second["entries"]] == [3, 4] and second["acked"] == 2
    assert [e["seq"] for e in box.after()["entries"]] == [3, 4, 5]  # only what was acknowledged went
    by_map = entries(cursors={"pi-east-1": {"cursor": 4, "outbox": first["outbox"]}, "pi-east-2": {"cursor": 99}})
    assert [e["seq"] for e in by_map["entries"]] == [5] and by_map["acked"] == 2
    assert entries(cursors={"pi-east-2": {"cursor": 99}})["entries"][0]["seq"] == 5  # not named: from 0
    stats = campus.mods("pi-east-1")["kiosk_outbox.stats"]()
    assert stats["integrity"] == "ok" and stats["entries"]["action"] == 1 and stats["last_seq"] == 5


def test_the_module_does_not_acknowledge_a_cursor_of_another_outbox(campus):
    box = campus.outbox("pi-east-1")
    box.add_many([action("pi-east-1", f"kiosk-east-{n:02}") for n in range(1, 4)])
    entries = campus.mods("pi-east-1")["kiosk_outbox.entries"]
    for kwargs in ({"cursor": 2, "outbox": "0" * 32}, {"cursor": 40}):
        ret = entries(**kwargs)
        assert ret["reset"] is True and ret["acked"] == 0 and [e["seq"] for e in ret["entries"]] == [1, 2, 3]


@pytest.mark.parametrize("kwargs, text", [
    ({"cursor": -1}, "cursor:"), ({"limit": "many"}, "limit:"), ({"outbox": 5, "cursor": 1}, "outbox:"),
    ({"cursors": "pi-east-1=3"}, "cursors:"),
])
def test_the_module_refuses_bad_arguments(campus, kwargs, text):
    from salt.exceptions import SaltInvocationError  # pylint: disable=import-outside-toplevel

    with pytest.raises(SaltInvocationError, match=text):
        campus.mods("pi-east-1")["kiosk_outbox.entries"](**kwargs)


def test_the_module_reports_the_calendar_serial_the_pi_holds_and_keeps_its_exit_code(campus):
    release_key, release_pub = fleet_sign.new_key_pair()
    root = campus.root / "pi-east-1"
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(root), "cachedir": str(root / "cache"),
                 "module_dirs": [str(REPO)], "id": "pi-east-1", "grains": {},
                 "pillar": fleet_inventory.slice_for(FLEET, "pi-east-1"),
                 "kiosk_campus": {"dir": str(root / "campus"), "verify_key": [release_pub]}})
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts),
                                   whitelist=["kiosk_outbox", "kiosk_campus", "config", "pillar"],
                                   loaded_base_name=f"kf_outbox_serial_{id(campus)}")
    assert mods["kiosk_outbox.entries"]()["serial"] is None  # no calendar yet: the campus module says so
    assert mods.pack["__context__"].get("retcode") in (None, 0)  # ... and this job still succeeds
    inventory = fleet_inventory.validate(FLEET["kiosk_fleet"])
    doc = fleet_calendar.sign(fleet_calendar.build(inventory, None, {}, "east", 1_800_000_007, 1_800_000_007),
                              release_key)
    fleet_calendar.store(str(root / "campus"), doc, [release_pub], "east")
    assert mods["kiosk_outbox.entries"]()["serial"] == 1_800_000_007
