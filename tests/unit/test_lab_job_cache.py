"""The lab's wait reads answers the salt CLI missed from the master's job cache (Salt's local_cache)."""

import time

import salt.config
import salt.loader
import salt.utils.jid
import yaml

from lab import kiosk_lab


def master_with_jobs(run, jobs):
    """A master config dir ``run/top`` and its job cache, written by Salt's own returner:
    ``jobs`` is ``[(jid, fun, {minion: return})]``."""
    (run / "top").mkdir(parents=True)
    (run / "top" / "master").write_text(yaml.safe_dump({"id": "top", "root_dir": str(run / "top")}))
    returners = salt.loader.returners(salt.config.master_config(str(run / "top" / "master")), {})
    for jid, fun, returns in jobs:
        returners["local_cache.save_load"](jid, {"jid": jid, "fun": fun, "arg": [], "tgt": list(returns),
                                                 "tgt_type": "list", "user": "root"})
        for minion, ret in returns.items():
            returners["local_cache.returner"]({"jid": jid, "id": minion, "fun": fun, "return": ret,
                                               "retcode": 0, "success": True})


def jid_at(when):
    return time.strftime("%Y%m%d%H%M%S", time.localtime(when)) + "123456"


def test_an_answer_in_the_cache_counts_only_for_its_function_and_from_the_wait_on(tmp_path):
    now = time.time()
    master_with_jobs(tmp_path, [
        (jid_at(now - 600), "test.ping", {"kiosk-a": True}),  # before the wait: an old boot
        (jid_at(now), "test.ping", {"kiosk-b": True, "kiosk-c": False}),
        (jid_at(now + 1), "kiosk_power.status", {"kiosk-d": {"on": True}, "kiosk-e": "not a dict"}),
        (salt.utils.jid.gen_jid({}), "test.ping", {"pi-1": True}),
    ])
    found = kiosk_lab.cached_answers(tmp_path, "test.ping", ["kiosk-a", "kiosk-b", "kiosk-c", "kiosk-d"], now - 5)
    assert found == {"kiosk-b": True}
    found = kiosk_lab.cached_answers(tmp_path, "kiosk_power.status", ["kiosk-b", "kiosk-d", "kiosk-e"], now - 5)
    assert found == {"kiosk-d": True}
    # only the minions asked about
    assert kiosk_lab.cached_answers(tmp_path, "test.ping", ["pi-1"], now - 5) == {"pi-1": True}
    assert kiosk_lab.cached_answers(tmp_path, "test.ping", ["kiosk-z"], now - 5) == {}


def test_the_wait_ends_when_the_cache_holds_what_the_cli_missed(tmp_path, monkeypatch, capsys):
    asked = []

    def cli_that_misses(run, *args, timeout=60, master="top"):
        asked.append(args[1])
        # the CLI saw only pi-1's answer; kiosk-b's reached the job cache after the CLI gave up
        master_with_jobs(run, [(salt.utils.jid.gen_jid({}), "test.ping", {"pi-1": True, "kiosk-b": True})])
        return {"pi-1": True}

    monkeypatch.setattr(kiosk_lab, "salt", cli_that_misses)
    replies = kiosk_lab.wait_for_minions(tmp_path, ["kiosk-b", "pi-1"], timeout=30)
    assert replies == {"pi-1": True, "kiosk-b": True}
    assert asked == ["kiosk-b,pi-1"]  # one round: no second ask
    assert "kiosk-b: answered (the top master's job cache" in capsys.readouterr().out


def test_the_wait_gives_up_on_a_minion_that_never_answered(tmp_path, monkeypatch):
    master_with_jobs(tmp_path, [])
    monkeypatch.setattr(kiosk_lab, "salt", lambda run, *args, timeout=60, master="top": {})
    monkeypatch.setattr(kiosk_lab.time, "sleep", lambda s: None)
    assert kiosk_lab.wait_for_minions(tmp_path, ["kiosk-b"], timeout=0.5) == {}
