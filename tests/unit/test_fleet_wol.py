import pytest
from hypothesis import given
from hypothesis import strategies as st

import fleet_fields
import fleet_wol

MAC = "52:54:00:ab:cd:ef"
RAW = bytes.fromhex("525400abcdef")


@pytest.mark.parametrize(
    "notation",
    ["52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "5254.00ab.cdef", "525400ABCDEF", "  52:54:00:Ab:cD:eF \n"],
)
def test_every_common_notation_gives_the_same_packet(notation):
    assert fleet_wol.normalize_mac(notation) == MAC
    packet = fleet_wol.magic_packet(notation)
    assert packet == b"\xff" * 6 + RAW * 16
    assert len(packet) == 102


@pytest.mark.parametrize(
    "bad",
    ["52:54:00:ab:cd", "52:54:00:ab:cd:eg", "52:54-00:ab:cd:ef", "5254.00ab.cde", "52:54:00:ab:cd:ef:01", "", None,
     9 * 10**10, 10**12, True, 1.5],
)
def test_bad_mac_is_refused_with_the_value_named(bad):
    with pytest.raises(fleet_wol.WolError) as info:
        fleet_wol.normalize_mac(bad, field="kiosks.k1.mac")
    assert "kiosks.k1.mac" in str(info.value)
    assert repr(bad) in str(info.value)


def test_secureon_password_is_appended():
    assert fleet_wol.magic_packet(MAC, "01:02:03:04:05:06")[-6:] == bytes([1, 2, 3, 4, 5, 6])
    assert fleet_wol.magic_packet(MAC, "192.168.1.7")[-4:] == bytes([192, 168, 1, 7])
    assert fleet_wol.magic_packet(MAC, "0a0b0c0d")[-4:] == bytes([10, 11, 12, 13])
    assert len(fleet_wol.magic_packet(MAC, "")) == 102


@pytest.mark.parametrize("bad", ["300.1.1.1", "01:02:03", "hunter2", 1234])
def test_bad_secureon_password_is_refused(bad):
    with pytest.raises(fleet_wol.WolError, match="password"):
        fleet_wol.magic_packet(MAC, bad)


def test_parse_round_trip_and_rejects():
    assert fleet_wol.parse_magic_packet(fleet_wol.magic_packet(MAC, "1.2.3.4")) == (MAC, bytes([1, 2, 3, 4]))
    with pytest.raises(fleet_wol.WolError, match="length"):
        fleet_wol.parse_magic_packet(b"\xff" * 6 + RAW * 15)
    with pytest.raises(fleet_wol.WolError, match="0xFF"):
        fleet_wol.parse_magic_packet(b"\x00" * 6 + RAW * 16)
    with pytest.raises(fleet_wol.WolError, match="16 times"):
        fleet_wol.parse_magic_packet(b"\xff" * 6 + RAW * 15 + bytes(6))


def test_a_list_with_one_bad_mac_is_refused_whole_naming_its_position():
    with pytest.raises(fleet_wol.WolError) as info:
        fleet_wol.normalize_macs(["52:54:00:00:00:01", "nope", "52:54:00:00:00:02"])
    assert "macs[1]" in str(info.value) and "'nope'" in str(info.value)
    assert fleet_wol.normalize_macs("525400000001, 52-54-00-00-00-01,5254.0000.0002") == [
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
    ]
    with pytest.raises(fleet_wol.WolError, match="no MAC"):
        fleet_wol.normalize_macs(" , ")


octets = st.lists(st.integers(0, 255), min_size=6, max_size=6)


@given(octets, st.sampled_from(["colon", "dash", "dot", "bare"]), st.booleans())
def test_any_mac_in_any_notation_normalises_and_round_trips(values, notation, upper):
    hexes = [f"{v:02x}" for v in values]
    flat = "".join(hexes)
    text = {
        "colon": ":".join(hexes),
        "dash": "-".join(hexes),
        "dot": ".".join(flat[i : i + 4] for i in (0, 4, 8)),
        "bare": flat,
    }[notation]
    text = text.upper() if upper else text
    mac = fleet_wol.normalize_mac(text)
    assert mac == ":".join(hexes)
    assert fleet_wol.parse_magic_packet(fleet_wol.magic_packet(text)) == (mac, b"")


@given(st.text(max_size=20))
def test_arbitrary_text_either_parses_to_a_mac_or_raises_woLerror(text):
    try:
        mac = fleet_wol.normalize_mac(text)
    except fleet_wol.WolError:
        return
    assert len(bytes.fromhex(mac.replace(":", ""))) == 6


@given(st.lists(st.integers(0, 59), min_size=5, max_size=5), st.integers(10, 99))
def test_digit_only_mac_read_by_yaml_on_the_salt_cli_is_recovered(tail, first):
    import salt.utils.args

    text = ":".join(f"{p:02d}" for p in [first, *tail])
    typed = salt.utils.args.yamlify_arg(text)  # what `salt pi kiosk_wol.wake 52:54:00:10:01:01` passes on
    assert isinstance(typed, int)
    try:
        got = fleet_wol.normalize_mac(typed)
    except fleet_wol.WolError as exc:
        # the same number is also a bare MAC whose leading zeros YAML dropped: refused, never guessed
        assert set(str(typed)) <= set("01234567") and text in str(exc) and "quote the MAC" in str(exc)
        return
    assert got == text


def test_a_number_two_macs_could_have_become_is_refused():
    # 10:00:00:00:00:00 in base 60 and 007776000000 both reach the module as 7776000000
    with pytest.raises(fleet_wol.WolError, match="10:00:00:00:00:00 or .* like 007776000000 .*quote"):
        fleet_wol.normalize_mac(7776000000)
    # 41135076069 has a 9 among its digits: YAML never reads a leading-zero MAC into it
    assert fleet_wol.normalize_mac(41135076069) == "52:54:00:10:01:09"
    # 52:54:00:10:01:01 is 41135076061, also what 041135076061 typed bare becomes
    with pytest.raises(fleet_wol.WolError, match="52:54:00:10:01:01 or .*041135076061"):
        fleet_wol.normalize_mac(41135076061)


@given(st.lists(st.integers(0, 255), min_size=6, max_size=6))
def test_any_bare_digits_mac_typed_on_the_salt_cli_is_recovered_exactly_or_refused(octets):
    import salt.utils.args

    for text in ("".join(f"{o:02x}" for o in octets), "".join(f"{o % 100:02d}" for o in octets)):
        typed = salt.utils.args.yamlify_arg(text)
        try:
            got = fleet_wol.normalize_mac(typed)
        except fleet_wol.WolError as exc:
            assert str(exc).startswith("mac: ") and "quote" in str(exc)
            continue
        assert got.replace(":", "") == text.lower()


def test_leading_zero_bare_mac_typed_on_the_salt_cli_is_refused_not_changed():
    import salt.utils.args

    typed = salt.utils.args.yamlify_arg("001122334455")
    assert typed == 1122334455  # the zeros are gone by the time the module sees it
    with pytest.raises(fleet_wol.WolError, match=r"^macs\[0\]: 1122334455 .*if the MAC is 001122334455, quote it"):
        fleet_wol.normalize_macs(typed)
    assert fleet_wol.normalize_macs("001122334455") == ["00:11:22:33:44:55"]  # quoted: a string


@pytest.mark.parametrize(
    "mac",
    ["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:01", "33:33:00:00:00:01", "000000000000"],
)
def test_broadcast_multicast_and_zero_macs_are_no_kiosk_macs(mac):
    with pytest.raises(fleet_wol.WolError, match=r"^macs\[0\]: .*not a machine's address"):
        fleet_wol.normalize_macs([mac])
    with pytest.raises(fleet_wol.WolError, match=r"^kiosks.k1.mac: "):
        fleet_wol.kiosk_mac(mac, "kiosks.k1.mac")
    assert fleet_wol.normalize_mac(mac)  # still a MAC: a SecureOn password may be spelled like one


def test_wol_error_is_a_fleet_error_naming_its_field():
    with pytest.raises(fleet_wol.WolError) as info:
        fleet_wol.normalize_mac(["52:54:00:00:00:01"], field="kiosks.k1.mac")
    assert isinstance(info.value, fleet_fields.FleetError) and isinstance(info.value, ValueError)
    assert info.value.field == "kiosks.k1.mac"


def test_digit_only_bare_mac_read_as_an_int_is_recovered():
    assert fleet_wol.normalize_mac(525400100101) == "52:54:00:10:01:01"


@pytest.mark.parametrize("name, ok", [
    ("eth0", True), ("wlan0.20", True), ("a" * 15, True), ("a" * 16, False), ("", False), ("eth 0", False),
    ("eth0:1", False), ("../x", False), ("eth\u00e9", False), ("eth\n", False), (["eth0"], False), (None, False),
])
def test_interface_names_follow_the_kernel_rule(name, ok):
    assert fleet_wol.is_interface_name(name) is ok
