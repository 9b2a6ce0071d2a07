import pytest

import fleet_fields


def test_fleet_error_is_a_value_error_that_knows_its_field():
    exc = fleet_fields.FleetError("campuses.east.kiosks.k1.mac: 'x' is not a MAC address")
    assert isinstance(exc, ValueError) and exc.field == "campuses.east.kiosks.k1.mac"
    assert fleet_fields.FleetError("something went wrong").field is None
    assert fleet_fields.FleetError("any text", field="timeout").field == "timeout"


def test_field_errors_carry_every_problem_and_the_first_field():
    exc = fleet_fields.FieldErrors(["a.b: bad", "c: worse"])
    assert isinstance(exc, fleet_fields.FleetError)
    assert exc.errors == ["a.b: bad", "c: worse"] and str(exc) == "a.b: bad; c: worse" and exc.field == "a.b"
    assert fleet_fields.FieldErrors("one: problem").errors == ["one: problem"]


@pytest.mark.parametrize("name", ["UTC", "Asia/Shanghai", "America/Argentina/Buenos_Aires", "Etc/GMT+8",
                                  "America/Port-au-Prince"])
def test_time_zone_knows_iana_names(name):
    assert fleet_fields.time_zone(name).key == name


@pytest.mark.parametrize("name", ["Europe", "America", "Etc", "Europe/", "/etc/localtime", "../UTC", "Asia/../UTC",
                                  "x" * 5000, "Asia/Shang\ud800hai", "Asia/Shang\x00hai", "", None, ["UTC"], True,
                                  "Nowhere/City"])
def test_time_zone_refuses_folders_paths_and_absurd_names(name):
    assert fleet_fields.time_zone(name) is None


@pytest.mark.parametrize(("text", "found"), [
    ("plain", None), ("日本 é", None), ("a\x00b", "a NUL character"), ("a\ud800", "an unpaired surrogate (U+D800)"),
    ("\udcff", "an unpaired surrogate (U+DCFF)"), ("💥", None),
])
def test_bad_character_finds_what_cannot_leave_python(text, found):
    assert fleet_fields.bad_character(text) == found
