import fleet_runner


def test_failure_sets_both_exit_code_channels():
    context = {}
    ret = fleet_runner.fail(context, "kiosks: unknown kiosk k9", down=["k9"])
    assert ret == {"result": False, "error": "kiosks: unknown kiosk k9", "down": ["k9"], "retcode": 1}
    assert context["retcode"] == 1


def test_success_leaves_context_alone():
    context = {}
    assert fleet_runner.finish(context, {"result": True})["retcode"] == 0
    assert context == {}


def test_presence_splits_up_and_down_per_campus():
    selection = {"east": ["k1", "k2", "k3"], "west": ["k4"]}
    answered = {"k1": True, "k3": False, "k4": True, "pi-east-1": True}
    assert fleet_runner.presence(selection, answered) == {
        "east": {"up": ["k1"], "down": ["k2", "k3"]},
        "west": {"up": ["k4"], "down": []},
    }
