"""
Wake-on-LAN magic packets: MAC parsing, packet building and parsing.

Pure functions, no I/O: the ``kiosk_wol`` execution module sends what these
build, and the lab's kiosk simulator parses what it receives with the same code.

A magic packet is 6 bytes of 0xFF followed by the target MAC repeated 16 times
(102 bytes), optionally followed by a 4- or 6-byte SecureOn password.
"""

import re

__virtualname__ = "fleet_wol"

SYNC_STREAM = b"\xff" * 6
MAGIC_PACKET_LEN = 6 + 16 * 6

# aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff (Cisco), aabbccddeeff
_MAC_FORMS = (
    re.compile(r"^([0-9a-f]{2})([:-])([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})$"),
    re.compile(r"^([0-9a-f]{4})\.([0-9a-f]{4})\.([0-9a-f]{4})$"),
    re.compile(r"^([0-9a-f]{12})$"),
)
# SecureOn passwords are written like a MAC (6 bytes) or as 4 bytes dotted/hex
_PASSWORD_4 = re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}$")


def __virtual__():
    return __virtualname__


class WolError(ValueError):
    """A MAC address or SecureOn password that cannot be used; the message names it."""


def normalize_mac(mac, field="mac"):
    """
    Return ``mac`` as lower-case ``aa:bb:cc:dd:ee:ff``.

    Accepts colon, dash, Cisco-dot and bare-hex notations, any case, with
    surrounding white space. Raises :class:`WolError` naming ``field`` and the
    bad value otherwise.
    """
    if not isinstance(mac, str):
        raise WolError(f"{field}: {mac!r} is not a MAC address (expected a string)")
    text = mac.strip().lower()
    for form in _MAC_FORMS:
        match = form.match(text)
        if match:
            digits = "".join(g for g in match.groups() if g not in (":", "-"))
            return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    raise WolError(
        f"{field}: {mac!r} is not a MAC address "
        "(use aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff)"
    )


def mac_bytes(mac, field="mac"):
    """Return the 6 bytes of ``mac`` (any notation accepted by :func:`normalize_mac`)."""
    return bytes.fromhex(normalize_mac(mac, field).replace(":", ""))


def secureon_bytes(password, field="password"):
    """
    Return the SecureOn password as bytes: 6 bytes written like a MAC, or
    4 bytes written as a dotted quad (``192.168.1.1``) or 8 hex digits.
    """
    if password is None or password == "":
        return b""
    if not isinstance(password, str):
        raise WolError(f"{field}: {password!r} is not a SecureOn password (expected a string)")
    text = password.strip().lower()
    if _PASSWORD_4.match(text):
        parts = [int(p) for p in text.split(".")]
        if all(0 <= p <= 255 for p in parts):
            return bytes(parts)
    elif re.fullmatch(r"[0-9a-f]{8}", text):
        return bytes.fromhex(text)
    else:
        try:
            return mac_bytes(text, field)
        except WolError:
            pass
    raise WolError(
        f"{field}: {password!r} is not a SecureOn password "
        "(6 bytes like a MAC, or 4 bytes as a.b.c.d or 8 hex digits)"
    )


def magic_packet(mac, password=None):
    """Return the magic packet (bytes) that wakes ``mac``, with an optional SecureOn password."""
    return SYNC_STREAM + mac_bytes(mac) * 16 + secureon_bytes(password)


def parse_magic_packet(data):
    """
    Parse a received magic packet.

    Returns ``(mac, password_bytes)`` with ``mac`` normalised; raises
    :class:`WolError` when ``data`` is not a well-formed magic packet.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise WolError(f"packet: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) not in (MAGIC_PACKET_LEN, MAGIC_PACKET_LEN + 4, MAGIC_PACKET_LEN + 6):
        raise WolError(f"packet: {len(data)} bytes is not a magic packet length (102, 106 or 108)")
    if not data.startswith(SYNC_STREAM):
        raise WolError("packet: does not start with 6 bytes of 0xFF")
    target = data[6:12]
    if data[6:MAGIC_PACKET_LEN] != target * 16:
        raise WolError("packet: the MAC is not repeated 16 times")
    mac = ":".join(f"{b:02x}" for b in target)
    return mac, data[MAGIC_PACKET_LEN:]


def normalize_macs(macs, field="macs"):
    """
    Normalise one MAC, a comma-separated string of MACs or a list of MACs.

    Validates all of them before returning, so a request with one bad MAC is
    refused whole (nothing is sent). Duplicates are dropped, order kept.
    """
    if isinstance(macs, str):
        items = [m for m in macs.split(",") if m.strip()]
    elif isinstance(macs, (list, tuple)):
        items = list(macs)
    else:
        raise WolError(f"{field}: expected a MAC, a comma-separated string or a list, got {macs!r}")
    if not items:
        raise WolError(f"{field}: no MAC address given")
    result = []
    for index, item in enumerate(items):
        mac = normalize_mac(item, f"{field}[{index}]")
        if mac not in result:
            result.append(mac)
    return result
