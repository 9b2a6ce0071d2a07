"""
Wake-on-LAN magic packets: MAC parsing, packet building and parsing.

Pure functions, besides :func:`send` and :func:`wake_kiosks` (the one UDP
sender, used by the ``kiosk_wol`` execution module on a Pi minion and by the
``kiosk_campus`` runner on a Pi master); the lab's kiosk simulator parses
what it receives with the same code.

A magic packet is 6 bytes of 0xFF followed by the target MAC repeated 16 times
(102 bytes), optionally followed by a 4- or 6-byte SecureOn password.
"""

import logging
import re
import socket
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

log = logging.getLogger(__name__)

SYNC_STREAM = b"\xff" * 6
MAGIC_PACKET_LEN = 6 + 16 * 6

_HEX12 = re.compile(r"[0-9a-f]{12}")
# SecureOn passwords are written like a MAC (6 bytes) or as 4 bytes dotted/hex
_PASSWORD_4 = re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}$")


class WolError(fleet_fields.FleetError):
    """A MAC address or SecureOn password that cannot be used; the message names it."""


def normalize_mac(mac, field="mac"):
    """
    Return ``mac`` as lower-case ``aa:bb:cc:dd:ee:ff``.

    Accepts colon, dash, Cisco-dot and bare-hex notations, any case, with
    surrounding white space. Raises :class:`WolError` naming ``field`` and the
    bad value otherwise.
    """
    if isinstance(mac, int) and not isinstance(mac, bool):
        mac = _mac_from_yaml_int(mac, field)
    if not isinstance(mac, str):
        raise WolError(f"{field}: {mac!r} is not a MAC address (expected a string)")
    text = mac.strip().lower()
    # aa:bb:cc:dd:ee:ff / aa-bb-cc-dd-ee-ff (one separator throughout),
    # aabb.ccdd.eeff (Cisco), aabbccddeeff; string slicing, not a regex per
    # form: a Pi validates 1,000 MACs per campus wake
    digits = None
    if len(text) == 17 and text[2::3] in (":::::", "-----"):
        digits = text.replace(text[2], "")
    elif len(text) == 14 and text[4] == "." and text[9] == ".":
        digits = text.replace(".", "")
    elif len(text) == 12:
        digits = text
    if digits is not None and _HEX12.fullmatch(digits):
        return f"{digits[0:2]}:{digits[2:4]}:{digits[4:6]}:{digits[6:8]}:{digits[8:10]}:{digits[10:12]}"
    raise WolError(
        f"{field}: {mac!r} is not a MAC address "
        "(use aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff)"
    )


def _mac_from_yaml_int(value, field):
    """
    Undo YAML's reading of a digits-only MAC typed on the salt CLI, exactly
    or not at all.

    ``salt pi kiosk_wol.wake 52:54:00:10:01:01`` reaches the module as the
    int 41135076061: YAML 1.1 reads colon-separated digits as base 60, and
    each pair after the first is 00-59, so base-60 digits give the pairs
    back. ``525400100101`` (bare, digits only) arrives as a decimal int.
    ``001122334455`` (leading zero, digits 0-7: YAML's octal form, read as
    decimal by Salt) arrives as 1122334455 with the zeros gone; nothing
    tells it from a shorter typo, so it is refused, never padded, and so is
    a base-60 number that such a MAC could also have become
    (``10:00:00:00:00:00`` and ``007776000000`` both give 7776000000).
    """
    zeros_dropped = 0 <= value < 10**11 and set(str(value)) <= set("01234567")
    if 10 * 60**5 <= value < 100 * 60**5:
        pairs = []
        rest = value
        for _ in range(5):
            rest, pair = divmod(rest, 60)
            pairs.append(pair)
        pairs.append(rest)
        colons = ":".join(f"{p:02d}" for p in reversed(pairs))
        if not zeros_dropped:
            return colons
        raise WolError(
            f"{field}: {value!r} is a number that could be the MAC {colons} or one typed with leading zeros "
            f"YAML dropped, like {value:012d} (quote the MAC on the command line, or write it with dashes)"
        )
    if 10**11 <= value < 10**12:
        return f"{value:012d}"
    if zeros_dropped:
        raise WolError(
            f"{field}: {value!r} is a number with any leading zeros dropped by YAML "
            f"(if the MAC is {value:012d}, quote it on the command line, or write it with dashes)"
        )
    raise WolError(f"{field}: {value!r} is a number, not a MAC address (quote the MAC on the command line, or write it with dashes)")


def kiosk_mac(mac, field="mac"):
    """
    :func:`normalize_mac` for the MAC of one machine: refuses the all-zero
    MAC and group (multicast, broadcast) MACs, which no network card owns;
    a magic packet to one would wake nothing or everything.
    """
    normalized = normalize_mac(mac, field)
    if normalized == "00:00:00:00:00:00":
        raise WolError(f"{field}: {normalized} is the all-zero MAC, not a machine's address")
    if int(normalized[:2], 16) & 1:
        kind = "the broadcast" if normalized == "ff:ff:ff:ff:ff:ff" else "a multicast (group)"
        raise WolError(f"{field}: {normalized} is {kind} MAC, not a machine's address")
    return normalized


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


def magic_packets(normalized_macs, password=None):
    """``{mac: packet}`` for MACs already normalised (by :func:`normalize_macs`)."""
    secret = secureon_bytes(password)
    return {mac: SYNC_STREAM + bytes.fromhex(mac.replace(":", "")) * 16 + secret for mac in normalized_macs}


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
    elif isinstance(macs, int) and not isinstance(macs, bool):
        items = [macs]  # a digits-only MAC the salt CLI read as a number
    elif isinstance(macs, (list, tuple)):
        items = list(macs)
    else:
        raise WolError(f"{field}: expected a MAC, a comma-separated string or a list, got {macs!r}")
    if not items:
        raise WolError(f"{field}: no MAC address given")
    result = {}  # dict: drops duplicates in O(1), keeps order
    for index, item in enumerate(items):
        result.setdefault(kiosk_mac(item, f"{field}[{index}]"), None)
    return list(result)


def is_interface_name(value):
    """
    Whether ``value`` can be a Linux network interface name (``SO_BINDTODEVICE``
    takes it): text of 1-15 printable ASCII characters without ``/``, ``:`` or a space.
    """
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 15
        and value.isascii()
        and value.isprintable()
        and not any(c in value for c in "/: ")
    )


def wake_plan(inventory, pi_id, kiosk_ids):
    """
    What one Pi sends to wake ``kiosk_ids``: a list of destinations, each
    ``{"broadcast", "port", "source", "interface", "kiosks": {kiosk: mac}}``.

    A Pi wakes only kiosks of its own campus (it is on their LAN); the
    destination is the kiosk VLAN's subnet-directed broadcast, sent from the
    Pi's address/interface on that VLAN when the inventory names one. Kiosk
    ids of other campuses are left out (their own Pis wake them).
    """
    if not isinstance(pi_id, str):
        raise WolError(f"pi: {pi_id!r} is not a Pi id")
    if isinstance(kiosk_ids, str) or not isinstance(kiosk_ids, (list, tuple, set)) or not all(
        isinstance(k, str) for k in kiosk_ids
    ):
        raise WolError(f"kiosks: expected a list of kiosk ids, got {kiosk_ids!r}")
    campus = next((c for c, s in inventory["campuses"].items() if pi_id in s["pis"]), None)
    if campus is None:
        raise WolError(f"pi: {pi_id!r} is not a Pi of any campus in the inventory")
    spec = inventory["campuses"][campus]
    pi_vlans = spec["pis"][pi_id]["vlans"]
    destinations = {}
    for kiosk_id in kiosk_ids:
        kiosk = spec["kiosks"].get(kiosk_id)
        if kiosk is None:
            continue
        vlan = kiosk["vlan"]
        dest = destinations.setdefault(vlan, {
            "vlan": vlan,
            "broadcast": spec["vlans"][vlan]["broadcast"],
            "port": spec["wol_port"],
            "source": pi_vlans.get(vlan, {}).get("source"),
            "interface": pi_vlans.get(vlan, {}).get("interface"),
            "kiosks": {},
        })
        dest["kiosks"][kiosk_id] = kiosk["mac"]
    return {"campus": campus, "destinations": [destinations[v] for v in sorted(destinations)]}


def merge_wake_returns(selection, pi_returns, campus_pis):
    """
    Merge what each Pi reported sending into a per-kiosk view.

    ``selection``: ``{campus: [kiosk ids]}``; ``pi_returns``: ``{pi: return
    of kiosk_wol.wake_kiosks}`` for the Pis that answered (a non-dict return
    is an error string from that Pi); ``campus_pis``: ``{campus: [pi ids]}``.
    A kiosk is reached when at least one Pi sent it at least one packet.
    """
    if not isinstance(pi_returns, dict):
        raise WolError(f"pi_returns: expected {{pi: return}}, got {type(pi_returns).__name__}")
    kiosks = {}
    for campus, kiosk_ids in selection.items():
        for kiosk_id in kiosk_ids:
            kiosks[kiosk_id] = {"campus": campus, "sent_by": {}}
    pi_errors = {}
    for pi_id, ret in pi_returns.items():
        if not isinstance(ret, dict) or not isinstance(ret.get("kiosks"), dict):
            pi_errors[pi_id] = str(ret)  # an error string, or a return of another shape: nothing was sent
            continue
        for kiosk_id, sent in ret["kiosks"].items():
            packets = sent.get("packets", 0) if isinstance(sent, dict) else 0
            if isinstance(packets, bool) or not isinstance(packets, int):
                continue  # a count that is no count proves nothing was sent
            if isinstance(kiosk_id, str) and kiosk_id in kiosks and packets > 0:
                kiosks[kiosk_id]["sent_by"][pi_id] = {
                    k: sent[k] for k in ("to", "port", "packets", "source") if k in sent
                }
    expected_pis = sorted({p for c in selection for p in campus_pis.get(c, [])})
    answered = sorted(p for p in pi_returns if p not in pi_errors)
    unreached = sorted(k for k, v in kiosks.items() if not v["sent_by"])
    return {
        "result": not unreached,
        "kiosks": kiosks,
        "pis_answered": answered,
        # no report: not answering, or answering with an error (pi_errors says which)
        "pis_silent": sorted(set(expected_pis) - set(answered)),
        "pi_errors": pi_errors,
        "unreached": unreached,
    }


# --------------------------------------------------------------------------- sending


def send(destinations, repeat, spacing_ms):
    """
    Send every destination's packets (``{"broadcast", "port", "source",
    "interface", "packets": {mac: bytes}}``) ``repeat`` rounds,
    ``spacing_ms`` apart, one socket per destination, closed afterwards.
    Returns packets sent per (destination index, mac). A send that fails
    (one bad route) is logged and skipped so the other VLANs still get
    theirs; a socket that cannot be set up raises :class:`WolError`.
    """
    sockets = []
    sent = {}
    try:
        for dest in destinations:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if dest.get("interface"):
                # one interface per VLAN on the Pi; needs CAP_NET_RAW (the minion and master run as root)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dest["interface"].encode())
            if dest.get("source"):
                sock.bind((dest["source"], 0))
        for round_no in range(repeat):
            if round_no:
                time.sleep(spacing_ms / 1000.0)
            for index, (dest, sock) in enumerate(zip(destinations, sockets)):
                address = (dest["broadcast"], dest["port"])
                for mac, packet in dest["packets"].items():
                    try:
                        sock.sendto(packet, address)
                    except OSError as exc:  # one bad route must not stop the other VLANs
                        log.warning("WoL to %s:%s for %s failed: %s", dest["broadcast"], dest["port"], mac, exc)
                        continue
                    sent[(index, mac)] = sent.get((index, mac), 0) + 1
    except OSError as exc:
        raise WolError(f"socket: WoL socket setup failed: {exc}") from exc
    finally:
        for sock in sockets:
            sock.close()
    return sent


def wake_kiosks(inventory, pi_id, kiosk_ids, repeat, spacing_ms, sender=None):
    """
    Wake ``kiosk_ids`` from Pi ``pi_id`` (:func:`wake_plan`: its campus's
    kiosks, each on its VLAN's broadcast) and report it the way
    ``kiosk_wol.wake_kiosks`` answers: ``{"pi", "campus", "kiosks": {kiosk:
    {mac, to, port, source, packets}}}`` (what :func:`merge_wake_returns`
    reads). ``sender`` stands in for :func:`send` (same arguments).
    """
    plan = wake_plan(inventory, pi_id, kiosk_ids)
    destinations = [dict(dest, packets=magic_packets(dest["kiosks"].values())) for dest in plan["destinations"]]
    sent = (sender or send)(destinations, repeat, spacing_ms)
    result = {}
    for index, dest in enumerate(destinations):
        for kiosk_id, mac in dest["kiosks"].items():
            result[kiosk_id] = {
                "mac": mac,
                "to": dest["broadcast"],
                "port": dest["port"],
                "source": dest["source"],
                "packets": sent.get((index, mac), 0),
            }
    return {"pi": pi_id, "campus": plan["campus"], "kiosks": result}
