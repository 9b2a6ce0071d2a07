import pytest

import fleet_runner


def test_failure_sets_both_exit_code_channels():
    context = {}
    ret = fleet_runner.fail(context, "kiosks: unknown kiosk k9", down=["k9"])
    assert ret == {"result": False, "error": "kiosks: unknown kiosk k9", "down": ["k9"], "retcode": 1}
    assert context["retcode"] == 1


def test_success_after_a_failure_resets_the_shared_context():
    context = {"retcode": 1}  # the reactor's cached runner context, after a failed job
    assert fleet_runner.finish(context, {"result": True})["retcode"] == 0
    assert context == {"retcode": 0}


def test_number_names_the_field():
    assert fleet_runner.number("30", "timeout", 1, 600) == 30
    for bad, match in (("abc", "not a whole number"), (0, "outside 1-600"), (True, "not a whole number"), (None, "not a whole")):
        try:
            fleet_runner.number(bad, "timeout", 1, 600)
        except ValueError as exc:
            assert str(exc).startswith("timeout:") and match in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_presence_splits_up_and_down_per_campus():
    selection = {"east": ["k1", "k2", "k3"], "west": ["k4"]}
    answered = {"k1": True, "k3": False, "k4": True, "pi-east-1": True}
    assert fleet_runner.presence(selection, answered) == {
        "east": {"up": ["k1"], "down": ["k2", "k3"]},
        "west": {"up": ["k4"], "down": []},
    }



@pytest.mark.parametrize(
    "bad", [float("inf"), float("-inf"), float("nan"), 1.5, 10**5000, [30], {"a": 1}, "1e3", False],
    ids=["inf", "-inf", "nan", "1.5", "huge", "list", "dict", "1e3", "False"],
)
def test_number_refuses_what_is_no_whole_number_with_the_pack_error(bad):
    import fleet_fields

    with pytest.raises(fleet_fields.FleetError) as info:
        fleet_runner.number(bad, "timeout", 1, 600)
    assert str(info.value).startswith("timeout: ") and info.value.field == "timeout"
    assert len(str(info.value)) < 200


def test_number_takes_whole_floats_and_strings():
    assert fleet_runner.number(30.0, "timeout", 1, 600) == 30
    assert fleet_runner.number(" 42 ", "timeout", 1, 600) == 42


# ---------------------------------------------------------------- calling minions


def _iter_run(*items):
    """A stand-in for LocalClient.cmd_iter yielding the given items; records the call."""
    calls = []

    def run(tgt, fun, **kwargs):
        calls.append((tgt, fun, kwargs))
        return iter(items)

    run.calls = calls
    return run


def test_call_tells_answered_failed_silent_and_conflicting_apart():
    run = _iter_run(
        {"k1": {"ret": True, "retcode": 0}},
        {"k2": {"ret": "ERROR executing 'test.ping': boom", "retcode": 1}},
        {"k3": {"ret": {"result": False, "error": "disk full"}, "retcode": 1}},
        {"k4": {"ret": "Minion did not return. [No response]\nThe minions may not...", "retcode": 1}},
        {"k5": {"ret": {"on": True}, "retcode": 0}},
        {"k5": {"ret": {"on": False}, "retcode": 0}},  # a forged copy behind a syndic
        {"k1": {"ret": True, "retcode": 0}},  # an identical copy counts once
        {"intruder": {"ret": True, "retcode": 0}},  # not asked: dropped
        {"k7": {"failed": True}},  # expect_minions' marker: no return
    )
    got = fleet_runner.call(run, ["k6", "k5", "k4", "k3", "k2", "k1", "k7"], "test.ping", timeout=5)
    assert got.answered == {"k1": True}
    assert got.failed == {"k2": "ERROR executing 'test.ping': boom", "k3": "disk full"}
    assert got.silent == ["k4", "k5", "k6", "k7"]
    assert got.conflicting == ["k5"]
    assert got.returns == {"k1": True, "k2": "ERROR executing 'test.ping': boom",
                           "k3": {"result": False, "error": "disk full"}}
    assert not got.ok
    assert got.as_dict()["silent"] == ["k4", "k5", "k6", "k7"]
    (tgt, fun, kwargs), = run.calls
    assert tgt == ["k1", "k2", "k3", "k4", "k5", "k6", "k7"] and fun == "test.ping"
    assert kwargs == {"arg": [], "kwarg": {}, "tgt_type": "list", "timeout": 5}


def test_call_reads_salt_execute_mappings_the_same_way():
    def execute(tgt, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None):
        assert (tgt, fun, arg, kwarg, tgt_type) == (["k1", "k2", "k3", "k4"], "kiosk_env.read", ["x"], {"y": 1}, "list")
        return {"k1": {"result": True}, "k2": "'kiosk_env.read' is not available.",
                "k3": "Minion did not return"}
    got = fleet_runner.call(execute, ["k1", "k2", "k3", "k4"], "kiosk_env.read", ["x"], {"y": 1})
    assert got.answered == {"k1": {"result": True}}
    assert got.failed == {"k2": "'kiosk_env.read' is not available."}
    assert got.silent == ["k3", "k4"] and got.conflicting == []


def test_call_with_everyone_answering_is_ok_and_none_returned_means_all_silent():
    assert fleet_runner.call(_iter_run({"k1": {"ret": "hello", "retcode": 0}}), ["k1"], "test.echo").ok
    got = fleet_runner.call(lambda *a, **k: None, ["k1"], "test.ping")
    assert got.silent == ["k1"] and not got.ok


def test_call_without_targets_sends_nothing():
    run = _iter_run()
    got = fleet_runner.call(run, [], "test.ping")
    assert run.calls == [] and got.ok and got.answered == {} and got.silent == []


@pytest.mark.parametrize(("ret", "retcode", "reason"), [
    ("ERROR: module kiosk_env cannot be loaded", None, "ERROR: module kiosk_env cannot be loaded"),
    ("The minion function caused an exception: Traceback\n  File x", None,
     "The minion function caused an exception: Traceback File x"),
    ("Passed invalid arguments to kiosk_env.read: unexpected keyword", None,
     "Passed invalid arguments to kiosk_env.read: unexpected keyword"),
    ("'kiosk_env' __virtual__ returned False: no sensors", None, "'kiosk_env' __virtual__ returned False: no sensors"),
    ("any text", 1, "any text"),
    ({"result": False, "comment": "pinned"}, 1, "pinned"),
    ({"result": False}, 0, "result: False"),
    ("x" * 1000, 1, "x" * 297 + "..."),
])
def test_failure_names_the_reason(ret, retcode, reason):
    assert fleet_runner.failure(ret, retcode) == reason


@pytest.mark.parametrize(("ret", "retcode"), [
    ("ERRORS ARE FINE", 0), ("hello", None), ({"result": True}, 0), ({"result": None}, 1), (False, 1), ([], 0),
])
def test_failure_is_none_for_answers(ret, retcode):
    assert fleet_runner.failure(ret, retcode) is None


@pytest.mark.parametrize("bad", ["k1", None, ["k1", 3], ["bad id"], {"k1": 1}])
def test_call_refuses_bad_targets_with_the_pack_error(bad):
    with pytest.raises(fleet_runner.RunnerError, match="^targets: "):
        fleet_runner.call(_iter_run(), bad, "test.ping")


@pytest.mark.parametrize("bad", ["ping", "", None, "a.b c", "test.ping; rm"])
def test_call_refuses_bad_function_names(bad):
    with pytest.raises(fleet_runner.RunnerError, match="^fun: "):
        fleet_runner.call(_iter_run(), ["k1"], bad)


@pytest.mark.parametrize(("arg", "kwarg", "field"), [("abc", None, "arg"), ({"a": 1}, None, "arg"),
                                                    ([], ["a"], "kwarg"), ((), "a=1", "kwarg")])
def test_call_refuses_bad_arguments_before_sending(arg, kwarg, field):
    run = _iter_run()
    with pytest.raises(fleet_runner.RunnerError) as info:
        fleet_runner.call(run, ["k1"], "test.arg", arg, kwarg)
    assert info.value.field == field and run.calls == []


def test_call_refuses_bad_timeouts():
    with pytest.raises(fleet_runner.fleet_fields.FleetError, match="^timeout: "):
        fleet_runner.call(_iter_run(), ["k1"], "test.ping", timeout=float("nan"))


# ---------------------------------------------------------------- master config


def test_config_is_the_mapping_or_empty():
    assert fleet_runner.config({"kiosk_release": {"timeout": 5}}, "kiosk_release") == {"timeout": 5}
    assert fleet_runner.config({}, "kiosk_release") == {}
    assert fleet_runner.config({"kiosk_release": None}, "kiosk_release") == {}


@pytest.mark.parametrize("bad", ["text", ["a"], 3, True])
def test_config_refuses_what_is_no_mapping(bad):
    with pytest.raises(fleet_runner.ConfigError) as info:
        fleet_runner.config({"kiosk_release": bad}, "kiosk_release")
    assert str(info.value).startswith("kiosk_release: expected a mapping") and info.value.field == "kiosk_release"
    assert isinstance(info.value, fleet_runner.RunnerError)
    import fleet_fields

    assert isinstance(info.value, fleet_fields.FleetError)


def _answers(campus, **kiosks):
    return fleet_runner.Returns([f"pi-{campus}-1"], {f"pi-{campus}-1": {"campus": campus, "kiosks": kiosks}},
                                {}, [], [], {})


def test_present_kiosks_splits_present_absent_and_unknown_campuses():
    selection = {"east": ["k-e1", "k-e2"], "west": ["k-w1"], "north": ["k-n1"]}
    east = fleet_runner.merge([_answers("east", **{"k-e1": True, "k-e2": False}),
                               fleet_runner.Returns(["pi-east-2"], {"pi-east-2": {"campus": "east",
                                                                                   "kiosks": {"k-e2": True}}},
                                                    {}, [], [], {})])
    west = fleet_runner.Returns(["pi-west-1"], {}, {}, ["pi-west-1"], [], {})  # the campus is cut
    # a Pi answering for another campus (or with garbage) is no evidence for this one
    north = fleet_runner.Returns(["pi-north-1"], {"pi-north-1": {"campus": "east", "kiosks": {"k-n1": True}}},
                                 {}, [], [], {})
    present, absent, unknown = fleet_runner.present_kiosks(selection, {"east": east, "west": west, "north": north})
    assert present == ["k-e1", "k-e2"]  # k-e2 is connected to the second Pi only
    assert absent == []
    assert unknown == ["k-n1", "k-w1"]
    present, absent, unknown = fleet_runner.present_kiosks({"east": ["k-e1", "k-e2"]},
                                                           {"east": _answers("east", **{"k-e1": True})})
    assert (present, absent, unknown) == (["k-e1"], ["k-e2"], [])
    # one Pi of two answered: a kiosk it does not hold may be connected to the other one
    half = fleet_runner.merge([_answers("east", **{"k-e1": True, "k-e2": False}),
                               fleet_runner.Returns(["pi-east-2"], {}, {}, ["pi-east-2"], [], {})])
    assert fleet_runner.present_kiosks({"east": ["k-e1", "k-e2"]}, {"east": half}) == (["k-e1"], [], ["k-e2"])


def test_presence_jobs_go_to_each_campus_pis_with_that_campus_kiosks_only():
    jobs = fleet_runner.presence_jobs({"east": ["k-e2", "k-e1"], "west": ["k-w1"], "south": []},
                                      {"east": ["pi-east-1", "pi-east-2"], "west": [], "south": ["pi-south-1"]})
    assert jobs == {"east": (["pi-east-1", "pi-east-2"], "kiosk_scan.presence", {"kiosks": ["k-e1", "k-e2"]})}


def test_per_campus_runs_every_job_and_keeps_the_context(monkeypatch):
    import contextvars

    marker = contextvars.ContextVar("marker")
    marker.set("runner")
    seen = []

    def call_one(targets, fun, kwarg):
        seen.append((tuple(targets), fun, marker.get()))
        return fleet_runner.Returns(targets, dict.fromkeys(targets, True), {}, [], [], {})

    got = fleet_runner.per_campus(call_one, {"b": (["p2"], "f.g", {}), "a": (["p1"], "f.g", {})}, max_workers=2)
    assert sorted(got) == ["a", "b"]
    assert sorted(seen) == [(("p1",), "f.g", "runner"), (("p2",), "f.g", "runner")]
    merged = fleet_runner.merge(list(got.values()))
    assert merged.targets == ["p1", "p2"] and merged.answered == {"p1": True, "p2": True}
    assert fleet_runner.per_campus(call_one, {}) == {}


# ------------------------------------------------------------- a LocalClient behind syndics (job_returns)


class _Event:
    def __init__(self):
        self.cpub = False
        self.closed = 0

    def close_pub(self):
        self.closed += 1


class _Client:
    """What job_returns uses of a LocalClient: run_job, get_iter_returns (non-blocking: None between events),
    the job cache through returners, the event bus. ``script``: the items Salt's iterator yields, one per tick
    of the fake clock (a second each)."""

    def __init__(self, script, cache=None, syndic_wait=2, cache_error=None):
        self.opts = {"order_masters": True, "syndic_wait": syndic_wait, "master_job_cache": "local_cache"}
        self.event = _Event()
        self.script, self.cache, self.cache_error = script, cache or {}, cache_error
        self.now, self.yielded, self.closed, self.published, self.cache_reads, self.idles = 0.0, 0, False, None, 0, 0
        self.returners = {"local_cache.get_jid": self._get_jid}
        self.unsubscribed, self.publish_error = False, None

    def clock(self):
        return self.now

    def idle(self):
        self.idles += 1

    def _get_jid(self, jid):
        assert jid == "20261203051500000000"
        self.cache_reads += 1
        if self.cache_error:
            raise self.cache_error
        return dict(self.cache)

    def run_job(self, tgt, fun, arg=(), tgt_type="glob", timeout=None, kwarg=None, listen=False):
        self.published = (tgt, fun, arg, tgt_type, kwarg, listen)
        if self.publish_error:
            raise self.publish_error
        return {"jid": "20261203051500000000", "minions": []}  # the top master holds no kiosk key

    def get_iter_returns(self, jid, minions, timeout=None, tgt=None, tgt_type=None, block=True):
        assert block is False and jid == "20261203051500000000"
        try:
            for item in self.script:
                self.now += 1.0
                self.yielded += 1
                yield item
        finally:
            self.closed = True

    def _clean_up_subscriptions(self, jid):
        assert jid == "20261203051500000000"
        self.unsubscribed = True


def _ret(value, retcode=0):
    return {"ret": value, "retcode": retcode}


@pytest.fixture
def on_clock(monkeypatch):
    """The client's fake clock as job_returns' clock."""

    def use(client):
        monkeypatch.setattr(fleet_runner, "_now", client.clock)
        monkeypatch.setattr(fleet_runner, "_idle", client.idle)
        return client

    return use


def test_job_returns_takes_from_the_job_cache_what_no_event_brought_and_stops_there(on_clock):
    # two of three returns arrive as events; the third only ever reaches the job cache (its event lost)
    script = [{"k1": _ret(True)}, None, {"k2": _ret(True)}] + [None] * 300
    client = on_clock(_Client(script, cache={"k1": {"return": True, "retcode": 0}, "k3": {"return": "v3", "retcode": 0}}))
    got = fleet_runner.call(client, ["k1", "k2", "k3"], "test.ping", timeout=300)
    assert got.answered == {"k1": True, "k2": True, "k3": "v3"} and not got.silent and not got.conflicting
    assert client.yielded < 10 and client.closed  # not the 300 ticks Salt would have waited
    assert client.published == (["k1", "k2", "k3"], "test.ping", [], "list", {}, True)
    assert client.event.closed == 1 and client.unsubscribed  # it was not listening before: closed again


def test_job_returns_with_every_answer_in_waits_syndic_wait_for_a_late_duplicate(on_clock):
    # everyone answered at tick 1; a forged second return for k1 comes at tick 2, inside syndic_wait
    script = [{"k1": _ret(True), "k2": _ret(True)}, {"k1": _ret("forged")}] + [None] * 50
    client = on_clock(_Client(script, syndic_wait=3))
    got = fleet_runner.call(client, ["k1", "k2"], "test.ping", timeout=60)
    assert got.conflicting == ["k1"] and got.silent == ["k1"] and got.answered == {"k2": True}
    assert client.yielded == 3  # stopped at the first tick past syndic_wait, not at the end of Salt's wait


def test_job_returns_waits_as_salt_does_for_a_target_that_never_answers(on_clock):
    script = [{"k1": _ret(True)}] + [None] * 40
    client = on_clock(_Client(script, cache={"k1": {"return": True}}))
    got = fleet_runner.call(client, ["k1", "k2"], "test.ping", timeout=30)
    assert got.silent == ["k2"] and got.answered == {"k1": True}
    assert client.yielded == 41 and client.cache_reads >= 10  # Salt's iterator ran out; the cache was looked at
    assert client.idles == 40  # a pause after each empty look at the bus, none after a return


def test_job_returns_without_a_readable_job_cache_keeps_to_the_events(on_clock):
    script = [{"k1": _ret(True)}] + [None] * 5 + [{"k2": _ret("ERROR: no such module", 1)}] + [None] * 5
    client = on_clock(_Client(script, cache_error=OSError("no such returner")))
    got = fleet_runner.call(client, ["k1", "k2"], "test.ping", timeout=30)
    assert got.answered == {"k1": True} and got.failed == {"k2": "ERROR: no such module"}
    assert client.cache_reads >= 1 and client.closed


def test_job_returns_keeps_the_retcode_of_a_cached_return(on_clock):
    script = [None] * 10
    client = on_clock(_Client(script, cache={"k1": {"return": "boom", "retcode": 2}}))
    got = fleet_runner.call(client, ["k1"], "cmd.run", arg=["x"], timeout=30)
    assert got.failed == {"k1": "boom"} and not got.answered


def test_job_returns_reads_the_cache_once_more_when_salt_ends_before_the_first_look(on_clock):
    # Salt's own wait ends after one tick (a syndic's list said only k1): k2's return is only in the cache
    client = on_clock(_Client([{"k1": _ret(True)}], cache={"k2": {"return": "late", "retcode": 0}}))
    got = fleet_runner.call(client, ["k1", "k2"], "test.ping", timeout=60)
    assert got.answered == {"k1": True, "k2": "late"} and not got.silent


def test_job_returns_does_not_take_a_late_event_of_a_cached_return_for_a_forgery(on_clock):
    # k2's event arrives after its return was taken from the cache, trimmed (over max_event_size)
    script = [{"k1": _ret(True)}, None, None, {"k2": _ret("VALUE_TRIMMED")}] + [None] * 5
    client = on_clock(_Client(script, cache={"k2": {"return": {"big": "x" * 100}, "retcode": 0}}, syndic_wait=9))
    got = fleet_runner.call(client, ["k1", "k2"], "test.ping", timeout=60)
    assert got.answered == {"k1": True, "k2": {"big": "x" * 100}} and not got.conflicting


def test_job_returns_leaves_a_subscription_it_found_open_and_raises_a_failed_publish(on_clock):
    client = on_clock(_Client([{"k1": _ret(True)}]))
    client.event.cpub = True  # the caller was listening already: not closed behind its back
    fleet_runner.call(client, ["k1"], "test.ping", timeout=60)
    assert client.event.closed == 0
    down = on_clock(_Client([]))
    down.publish_error = RuntimeError("The salt master could not be contacted. Is master running?")
    with pytest.raises(RuntimeError, match="could not be contacted"):
        fleet_runner.call(down, ["k1"], "test.ping", timeout=60)
    assert down.event.closed == 1 and not down.unsubscribed
