"""
Inputs that never crash: every public function of the pure utilities that
takes operator, pillar, platform or HTTP data, fed random nested data, huge,
infinite and NaN numbers, odd unicode (unpaired surrogates, NUL), shell
metacharacters and values typed by YAML as the salt CLI reads them. Each
either returns or raises its module's own error (a ``fleet_fields.FleetError``)
whose message names the field; never TypeError, KeyError, OverflowError,
OSError or UnicodeError.

Bounded for CI: 200 examples per entry point, no deadline (the 2-core CI
machine is shared), no example database.
"""

import datetime as dt

import pytest
import salt.utils.args
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fleet_change
import fleet_env
import fleet_fields
import fleet_inventory
import fleet_power
import fleet_schedule
import fleet_wol
from tests.support.topology import two_campus_inventory

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

UTC = dt.timezone.utc
# What an operator may type; salt's CLI reads each as YAML 1.1 (on -> True,
# 1.10 -> 1.1, 52:54:00:10:01:01 -> base 60, 2024-01-01 -> a date, ~ -> None)
TYPED = [
    "on", "off", "yes", "no", "~", "1.10", ".inf", "-.inf", ".nan", "0x1F", "0o17", "017", "1_000",
    "52:54:00:10:01:01", "001122334455", "525400100101", "190:20:30", "2024-01-01", "2024-01-01 10:00:00",
    "[hall]", "{a: b}", "[[hall]]", "{on: 1}", "'quoted'", "1e400", "-0",
]
ODD_TEXT = [
    "", " ", "Europe", "America", "Etc", "Europe/", "/etc/localtime", "../../etc/passwd", "posixrules",
    "Asia/Shanghai", "x" * 5000, "\ud800", "a\udcffb", "a\x00b", "\u202e", "é", "日本", "💥",
    "a;rm -rf /", "$(id)", "`id`", "a|b", "a&&b", "'\"", "%s%n", "{0}", "{id.__class__}", "\\\\server\\share",
    "kiosk-east-01", "east", "hall", "pi-east-1", "52:54:00:e1:00:01", "ff:ff:ff:ff:ff:ff", "07:00-22:00",
]
NUMBERS = [
    float("inf"), float("-inf"), float("nan"), 10**400, -(10**400), 2**63, -1, 0, 1, 1.5, 1e308, -0.0, True, False,
]
INSTANTS = [
    dt.datetime.max.replace(tzinfo=UTC),
    dt.datetime.min.replace(tzinfo=UTC),
    dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-23))),
    dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=23))),
    dt.datetime(2027, 2, 5, 8, tzinfo=UTC),
    dt.datetime(2027, 2, 5, 8),  # naive
    dt.date(2027, 2, 5),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.binary(max_size=8),
    st.sampled_from(ODD_TEXT),
    st.sampled_from(NUMBERS),
    st.sampled_from(INSTANTS),
    st.sampled_from(TYPED).map(salt.utils.args.yamlify_arg),
    st.text(max_size=16).map(salt.utils.args.yamlify_arg),
)
keys = st.one_of(
    st.sampled_from(ODD_TEXT[:12] + ODD_TEXT[-8:]),
    st.sampled_from(
        ["campuses", "kiosks", "pis", "vlans", "timezone", "rules", "default", "mac", "vlan", "ip", "name",
         "weekly", "dates", "always", "network", "source", "interface", "hosts", "temperature", "humidity",
         "smoke", "gpio", "line", "chip_label", "hysteresis", "verify_key", "kiosk_fleet", "kiosk_fleet_changes"]
    ),
    st.booleans(),  # on: / off: keys
    st.integers(-2, 2),
    st.just(1.1),  # 1.10:
    st.none(),
)
hostile = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=20,
)


def refused_or_returned(error_class, fn, *args, **kwargs):
    """Call ``fn``; it may return, or raise ``error_class`` naming a field. Anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except error_class as exc:
        assert isinstance(exc, fleet_fields.FleetError) and isinstance(exc, ValueError)
        for message in getattr(exc, "errors", None) or [str(exc)]:
            assert ": " in message, f"{fn.__name__}: message names no field: {message!r}"
        return exc


# ---------------------------------------------------------------- every error is a FleetError


@pytest.mark.parametrize(
    "error_class",
    [fleet_schedule.ScheduleError, fleet_inventory.InventoryError, fleet_wol.WolError, fleet_env.EnvError,
     fleet_power.PowerError, fleet_change.ChangeError, fleet_fields.FieldErrors],
)
def test_every_error_class_is_a_fleet_error(error_class):
    assert issubclass(error_class, fleet_fields.FleetError) and issubclass(error_class, ValueError)


def test_every_error_class_of_every_utility_is_a_fleet_error():
    import importlib
    import inspect
    import pathlib

    found = []
    for path in sorted((pathlib.Path(__file__).resolve().parents[2] / "_utils").glob("fleet_*.py")):
        module = importlib.import_module(path.stem)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, Exception):
                found.append(name)
                assert issubclass(cls, fleet_fields.FleetError), f"{path.stem}.{name} is no FleetError"
    assert {"ScheduleError", "WolError", "RegError", "SweepError", "RolloutError", "AlertError"} <= set(found)


def test_fleet_error_carries_its_field():
    assert fleet_fields.FleetError("campuses.east.timezone: 'Europe' is not an IANA time zone").field == (
        "campuses.east.timezone"
    )
    assert fleet_fields.FleetError("no field here").field is None
    assert fleet_fields.FleetError("whatever", field="kiosks").field == "kiosks"
    assert fleet_fields.FieldErrors(["a.b: bad", "c: bad"]).field == "a.b"


# ---------------------------------------------------------------- schedules


SCHEDULE = fleet_schedule.load({"campuses": {
    "east": {"timezone": "Pacific/Kiritimati", "rules": [{"name": "open", "weekly": {"daily": "07:00-22:00"}}],
             "kiosks": {"kiosk-east-01": [{"name": "duty", "dates": ["2027-02-05", "2027-02-12"], "always": "on"}]}},
    "west": {"timezone": "Etc/GMT+12", "rules": [{"name": "open", "weekly": {"mon-fri": "02:30-03:30"}}]},
}})


@FUZZ
@given(hostile, hostile)
@example({"campuses": {"east": {"timezone": "Europe"}}}, None)
@example({"campuses": {"east": {"timezone": "x" * 5000}}}, None)
@example({"campuses": {"east": {"timezone": "Europe/../../../etc/passwd"}}}, None)
@example({"campuses": {"east": {"timezone": "\ud800"}}}, None)
@example({"campuses": {"east": {True: "on"}}}, None)  # on: as a key
@example({"campuses": {"east": {}}}, [["kiosk-east-01"]])
@example({"campuses": {"east": {}}}, {"east": [{"a": 1}]})
def test_schedule_validate_never_crashes(data, known):
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.validate, data, known)
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.validate, {"campuses": {"east": data}}, known)


@pytest.mark.parametrize("zone", ["Europe", "America", "Etc", "x" * 5000, "Europe/", "/etc/localtime", "\ud800"])
def test_schedule_time_zones_that_are_tzdata_folders_or_absurd_are_refused(zone):
    with pytest.raises(fleet_schedule.ScheduleError, match=r"campuses\.east\.timezone: .* is not an IANA time zone"):
        fleet_schedule.validate({"campuses": {"east": {"timezone": zone}}})
    with pytest.raises(fleet_inventory.InventoryError, match=r"campuses\.east\.timezone: .* is not an IANA time zone"):
        fleet_inventory.validate({"campuses": {"east": {"timezone": zone}}})


@FUZZ
@given(hostile, hostile, st.one_of(hostile, st.datetimes(timezones=st.timezones())), hostile)
@example("east", "kiosk-east-01", dt.datetime.max.replace(tzinfo=UTC), None)
@example("west", "kiosk-west-01", dt.datetime.min.replace(tzinfo=UTC), None)
def test_schedule_evaluation_never_crashes(campus, kiosk, instant, end):
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.desired_state, SCHEDULE, campus, kiosk, instant)
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.desired_states, SCHEDULE, {campus: kiosk}
                        if isinstance(campus, str) else campus, instant)
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.transitions, SCHEDULE, campus, kiosk, instant, end)


@FUZZ
@given(st.datetimes(timezones=st.one_of(st.timezones(), st.just(UTC))), st.sampled_from(["east", "west"]),
       st.timedeltas(dt.timedelta(0), dt.timedelta(days=3)))
def test_schedule_at_any_instant_of_the_calendar_decides_or_refuses(instant, campus, span):
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.desired_state, SCHEDULE, campus,
                        "kiosk-east-01" if campus == "east" else "k", instant)
    try:
        end = instant + span
    except OverflowError:
        return
    refused_or_returned(fleet_schedule.ScheduleError, fleet_schedule.transitions, SCHEDULE, campus, "k", instant, end)


@pytest.mark.parametrize("instant", INSTANTS[:4])
def test_schedule_instants_at_the_ends_of_the_calendar_are_refused_naming_the_field(instant):
    with pytest.raises(fleet_schedule.ScheduleError, match=r"^instant: .*ends of the calendar"):
        fleet_schedule.desired_state(SCHEDULE, "east", "kiosk-east-01", instant)
    with pytest.raises(fleet_schedule.ScheduleError, match=r"^instant: .*ends of the calendar"):
        fleet_schedule.desired_states(SCHEDULE, {"east": ["kiosk-east-01"]}, instant)


# ---------------------------------------------------------------- inventory


INVENTORY = fleet_inventory.from_pillar(two_campus_inventory(wol_port=9))
FLEET = two_campus_inventory(wol_port=9)


@FUZZ
@given(hostile)
@example({"campuses": {"east": {"kiosks": {"k1": {"mac": "52:54:00:00:00:01", "vlan": ["hall"]}}}}})
@example({"campuses": {"east": {"kiosks": {"k1": {"mac": "52:54:00:00:00:01", "vlan": {"hall": 1}}}}}})
@example({"campuses": {"east": {"vlans": {"hall": {"network": float("nan")}}, "wol_port": float("inf")}}})
def test_inventory_validate_never_crashes(data):
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.validate, data)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.validate, {"campuses": {"east": data}})
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.from_pillar, data)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.check_data, data)


@pytest.mark.parametrize(
    "mac", ["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:fb", "33:33:00:00:00:01"],
)
def test_inventory_refuses_broadcast_multicast_and_zero_kiosk_macs(mac):
    data = two_campus_inventory(wol_port=9)["kiosk_fleet"]
    data["campuses"]["east"]["kiosks"]["kiosk-east-01"]["mac"] = mac
    with pytest.raises(fleet_inventory.InventoryError, match=r"campuses\.east\.kiosks\.kiosk-east-01\.mac: "):
        fleet_inventory.validate(data)


@FUZZ
@given(hostile, hostile)
@example(["hall"], None)
@example([["kiosk-east-01"]], None)
@example(None, [{"east": 1}])
@example(True, None)
def test_inventory_selection_never_crashes(kiosks, campus):
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.select_kiosks, INVENTORY, kiosks, campus)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.names, kiosks, "kiosks")
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.campus_of, INVENTORY, kiosks)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.pis_of, INVENTORY, campus)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.campus_slice, FLEET, campus, kiosks)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.slice_for, FLEET, kiosks)
    refused_or_returned(fleet_inventory.InventoryError, fleet_inventory.slice_for, kiosks, "kiosk-east-01")


def test_a_list_where_a_kiosk_name_is_expected_is_refused_naming_the_field():
    with pytest.raises(fleet_inventory.InventoryError, match=r"^kiosks: \['kiosk-east-01'\] is not a name"):
        fleet_inventory.select_kiosks(INVENTORY, kiosks=[["kiosk-east-01"]])
    with pytest.raises(fleet_inventory.InventoryError, match=r"^campus: "):
        fleet_inventory.pis_of(INVENTORY, ["east"])


# ---------------------------------------------------------------- MACs and magic packets


@FUZZ
@given(hostile, hostile)
@example(float("inf"), None)
@example(10**400, "\ud800")
@example(True, True)
def test_wol_parsing_never_crashes(macs, password):
    refused_or_returned(fleet_wol.WolError, fleet_wol.normalize_macs, macs)
    refused_or_returned(fleet_wol.WolError, fleet_wol.normalize_mac, macs)
    refused_or_returned(fleet_wol.WolError, fleet_wol.kiosk_mac, macs, "kiosks.k1.mac")
    refused_or_returned(fleet_wol.WolError, fleet_wol.secureon_bytes, password)
    refused_or_returned(fleet_wol.WolError, fleet_wol.magic_packet, "52:54:00:00:00:01", password)
    refused_or_returned(fleet_wol.WolError, fleet_wol.parse_magic_packet, macs)


@FUZZ
@given(st.binary(max_size=120))
def test_any_received_datagram_parses_or_is_refused(data):
    refused_or_returned(fleet_wol.WolError, fleet_wol.parse_magic_packet, data)


@FUZZ
@given(st.text(alphabet="0123456789:", min_size=1, max_size=17))
@example("001122334455")
@example("0")
def test_digits_typed_bare_on_the_salt_cli_never_come_out_as_another_mac(text):
    typed = salt.utils.args.yamlify_arg(text)
    got = refused_or_returned(fleet_wol.WolError, fleet_wol.normalize_mac, typed)
    well_formed = len(text) == 12 and ":" not in text or len(text) == 17 and text[2::3] == ":::::"
    if isinstance(got, str) and well_formed:
        # a MAC typed in full comes back exactly: the same twelve digits, in order
        assert got.replace(":", "") == text.replace(":", "")
    if text.lstrip("0") != text and len(text) == 12:
        assert not isinstance(got, str) or got.replace(":", "") == text  # leading zeros never lost


SELECTION = {"east": ["kiosk-east-01", "kiosk-east-02"]}
CAMPUS_PIS = {"east": ["pi-east-1", "pi-east-2"]}


@FUZZ
@given(hostile, hostile)
@example(None, {"kiosks": None})
@example({"kiosks": {"kiosk-east-01": None}}, {"kiosks": {"kiosk-east-02": {"packets": float("inf")}}})
@example({"kiosks": {"kiosk-east-01": {"packets": True}}}, {"kiosks": []})
def test_what_the_pis_report_after_a_wake_never_crashes_the_merge(first, second):
    ret = refused_or_returned(fleet_wol.WolError, fleet_wol.merge_wake_returns, SELECTION,
                              {"pi-east-1": first, "pi-east-2": second}, CAMPUS_PIS)
    assert set(ret["kiosks"]) == {"kiosk-east-01", "kiosk-east-02"}
    for kiosk in ret["unreached"]:
        assert not ret["kiosks"][kiosk]["sent_by"]


def test_a_pi_return_of_another_shape_is_that_pis_error_not_a_crash():
    ret = fleet_wol.merge_wake_returns(SELECTION, {"pi-east-1": {"kiosks": ["kiosk-east-01"]}}, CAMPUS_PIS)
    assert ret["pi_errors"] == {"pi-east-1": "{'kiosks': ['kiosk-east-01']}"} and ret["pis_silent"] == CAMPUS_PIS["east"]
    assert ret["unreached"] == SELECTION["east"] and ret["result"] is False


@FUZZ
@given(hostile, hostile)
@example({"pi-east-1": {"at": 10**400}}, None)
@example({"pi-east-1": {"at": float("nan"), "errors": {}}}, {"pi-east-1": []})
@example([], {})
def test_env_status_from_what_the_pis_and_the_cache_hold_never_crashes(returns, cached):
    ret = refused_or_returned(fleet_env.EnvError, fleet_env.status_report, CAMPUS_PIS, returns, cached, 1e9, 600)
    assert set(ret["campuses"]["east"]) == {"pi-east-1", "pi-east-2"}


# ---------------------------------------------------------------- env beacon config


@FUZZ
@given(hostile)
@example([{True: [10, 30]}])  # `- on: ...` in the beacon YAML
@example({True: 1, "temperature": [10, 30]})
@example({"temperature": [float("-inf"), float("inf")], "hysteresis": float("nan")})
@example({"sysfs_root": "/sys\x00", "textfile_dir": "/var/\ud800"})
@example({"gpio": {"chip_label": ["pinctrl"], "line": 10**400, 1.1: True}, "smoke": True})
def test_env_beacon_config_never_crashes(config):
    refused_or_returned(fleet_env.EnvError, fleet_env.config_dict, config)
    refused_or_returned(fleet_env.EnvError, fleet_env.check_config, config)
    if isinstance(config, dict):
        refused_or_returned(fleet_env.EnvError, fleet_env.check_config, [config])


def test_env_yaml_boolean_key_is_named_with_the_way_out():
    with pytest.raises(fleet_env.EnvError, match=r"True: unknown key \(known: .*\); YAML reads a bare on/off/yes/no key as true/false"):
        fleet_env.check_config([{True: 1}, {"temperature": [10, 30]}])


@FUZZ
@given(hostile, hostile, hostile)
def test_env_sensor_text_never_crashes(text, path, metric):
    refused_or_returned(fleet_env.EnvError, fleet_env.parse_milli, text, path, metric)


# ---------------------------------------------------------------- power requests


@FUZZ
@given(hostile, hostile, hostile)
@example(float("inf"), "x", "shutdown")
@example(True, "on", "reboot")
@example(60, "\ud800", "shutdown")
@example(60, "a\x00b", ["shutdown"])
def test_power_request_never_crashes(delay_s, message, action):
    checked = refused_or_returned(fleet_power.PowerError, fleet_power.check_request, delay_s, message)
    refused_or_returned(fleet_power.PowerError, fleet_power.windows_call, action, 60, "m")
    refused_or_returned(fleet_power.PowerError, fleet_power.command, {}, action, 60, "m", "kiosk-east-01")
    if isinstance(checked, tuple):
        assert isinstance(checked[0], int) and 0 <= checked[0] <= fleet_power.MAX_DELAY_S


@FUZZ
@given(hostile)
@example(["/sbin/shutdown", "{id.__class__}"])
@example(["/sbin/shutdown", "{0}"])
def test_power_command_template_from_config_never_crashes(template):
    refused_or_returned(fleet_power.PowerError, fleet_power.command, {"shutdown_command": template}, "shutdown",
                        60, "m", "kiosk-east-01")


# ---------------------------------------------------------------- change requests


@FUZZ
@given(hostile, hostile)
@example(["a"], {"kiosk-east-01": {}})
@example(None, None)
@example({"k": 1}, [])
def test_change_requests_never_crash(value, other):
    refused_or_returned(fleet_change.ChangeError, fleet_change.check_template, value, ["a", "b"])
    refused_or_returned(fleet_change.ChangeError, fleet_change.check_hosts, value)
    refused_or_returned(fleet_change.ChangeError, fleet_change.check_params, value)
    refused_or_returned(fleet_change.ChangeError, fleet_change.check_pillar, value)
    refused_or_returned(fleet_change.ChangeError, fleet_change.check_pillar, {fleet_change.PILLAR_KEY: value})
    refused_or_returned(fleet_change.ChangeError, fleet_change.templates_from_file_list, value)
    refused_or_returned(fleet_change.ChangeError, fleet_change.report, value, other)
    refused_or_returned(fleet_change.ChangeError, fleet_change.report, ["kiosk-east-01"], {"kiosk-east-01": value})
    refused_or_returned(fleet_change.ChangeError, fleet_change.summarize, value)


# ---------------------------------------------------------------- campus calendars

import fleet_calendar  # noqa: E402 - appended section: the calendar's entry points
import fleet_sign  # noqa: E402

_CAL_INVENTORY = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
_CAL_PRIVATE, _CAL_PUBLIC = fleet_sign.new_key_pair()
_CAL_DOC = fleet_calendar.sign(fleet_calendar.build(_CAL_INVENTORY, None, {}, "east",
                                                    1_800_000_000, 1_800_000_000), _CAL_PRIVATE)


@FUZZ
@given(hostile, hostile, hostile, hostile, hostile)
@example({"campuses": {"east": {"kiosks": {"kiosk-east-01": [{"name": "er", "always": "on",
                                                               "through_closures": "no"}]}}}}, {}, "east", 1, 1)
@example(None, {"kiosk-east-01": {"until": "\ud800", "state": "on", "reason": "r", "campus": "east"}}, "east", 1, 1)
@example(None, {"kiosk-east-01": {"until": "9999-12-31T23:59:59-23:00", "state": "on", "reason": "r",
                                  "campus": "east"}}, "east", 1, 1)
@example(None, None, "east", 10**400, float("nan"))
def test_calendar_build_never_crashes(schedule, holds, campus, serial, signed_at):
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.build, _CAL_INVENTORY, schedule, holds, campus,
                        serial, signed_at)
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.build, schedule, None, None, "east", 1, 1)
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.next_serial, serial, signed_at)


@FUZZ
@given(hostile, hostile, hostile)
@example(dict(_CAL_DOC, holds=[]), "east", None)
@example(dict(_CAL_DOC, inventory={"campuses": {"east": None}}), "east", None)
@example({k: v for k, v in _CAL_DOC.items() if k != "signature"}, "east", None)
@example("{\"kind\": 1}", "\ud800", [])
def test_calendar_verify_and_readers_never_crash(doc, campus, keys):
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.verify, doc, _CAL_PUBLIC, campus)
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.verify, doc, keys, "east")
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.verify, dict(_CAL_DOC, **{"holds": doc}),
                        _CAL_PUBLIC, "east")
    for reader in (fleet_calendar.inventory_of, fleet_calendar.schedule_of, fleet_calendar.holds_of,
                   fleet_calendar.content_digest, fleet_calendar.summary):
        refused_or_returned(fleet_calendar.CalendarError, reader, doc)
        refused_or_returned(fleet_calendar.CalendarError, reader, dict(_CAL_DOC, schedule=doc, holds=doc))


@FUZZ
@given(hostile, hostile, hostile, hostile)
@example(["pi-1"], 5, {"pi-1": {"serial": 1, "at": "\ud800"}}, {"pi-1": {"serial": 2, "at": 10**400}})
@example({"east": "pi-east-1"}, {"pi-east-1": None}, {}, [])
def test_calendar_lagging_and_supervision_never_crash(pis, serial, known, reported):
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.lagging, ["pi-1", "pi-2"], 5, known, reported)
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.lagging, pis, serial, {}, None)
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.highest_serial, known, reported, pis)
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.highest_serial, {"pis": known}, reported,
                        ["pi-1"])
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.supervision, pis, {"pi-east-1": serial},
                        {}, [])
    refused_or_returned(fleet_calendar.CalendarError, fleet_calendar.supervision, {"east": ["pi-east-1"]},
                        {"pi-east-1": known}, {}, [])
