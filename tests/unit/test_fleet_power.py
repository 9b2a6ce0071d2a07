import pytest

import fleet_power


def test_windows_shutdown_is_asked_in_seconds_with_the_message():
    fun, kwargs = fleet_power.windows_call("shutdown", 90, "Closing at 22:00")
    assert fun == "system.shutdown"
    assert kwargs == {"message": "Closing at 22:00", "timeout": 90, "in_seconds": True,
                      "force_close": True, "reboot": False}


def test_windows_reboot_goes_through_shutdown_to_show_the_message():
    fun, kwargs = fleet_power.windows_call("reboot", 30, "Maintenance")
    assert fun == "system.shutdown" and kwargs["reboot"] is True and kwargs["in_seconds"] is True
    assert fleet_power.windows_call("abort", 0, "") == ("system.shutdown_abort", {})
    with pytest.raises(ValueError, match="action"):
        fleet_power.windows_call("hibernate", 0, "")


def test_command_fills_placeholders_per_argument_never_splitting_the_message():
    message = 'bye "all" & del C:\\ | {delay} ; rm -rf /'
    argv = fleet_power.command({}, "shutdown", 61, message, "kiosk-1")
    assert argv == ["/sbin/shutdown", "-h", "+2", message]
    config = {"shutdown_command": ["hook", "power-off", "{id}", "--delay", "{delay}"]}
    assert fleet_power.command(config, "shutdown", 5, "", "kiosk-9") == ["hook", "power-off", "kiosk-9", "--delay", "5"]


@pytest.mark.parametrize(
    "config, match",
    [
        ({"shutdown_command": "shutdown -h now"}, "expected a list of strings"),
        ({"shutdown_command": []}, "expected a list of strings"),
        ({"shutdown_command": ["x", "{nope}"]}, "bad placeholder"),
    ],
)
def test_bad_command_config_is_named(config, match):
    with pytest.raises(ValueError, match=match):
        fleet_power.command(config, "shutdown", 0, "", "k")


@pytest.mark.parametrize(
    "delay, message, match",
    [(-1, "", "delay_s"), ("soon", "", "delay_s"), (1.5, "", "delay_s"), (86401, "", "delay_s"),
     (0, 42, "message"), (0, "x" * 513, "message")],
)
def test_bad_request_is_refused_naming_the_field(delay, message, match):
    with pytest.raises(ValueError, match=match):
        fleet_power.check_request(delay, message)
    assert fleet_power.check_request("120", None) == (120, "")
