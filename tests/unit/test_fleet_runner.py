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
