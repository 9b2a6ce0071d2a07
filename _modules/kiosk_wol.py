"""
Wake-on-LAN from the campus Pis.

Kiosks are consumer PCs with no out-of-band card: a magic packet from a
machine on their LAN is the only way to power one on. Every Pi of a campus
sends (any one alive suffices), each packet ``repeat`` times, to the kiosk
VLAN's subnet-directed broadcast.
"""

import ipaddress
import logging

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_wol
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory
    import fleet_wol

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_wol"

DEFAULT_REPEAT = 3
DEFAULT_SPACING_MS = 100
MAX_REPEAT = 20


def __virtual__():
    return __virtualname__


def _check_repeat(repeat, spacing_ms):
    if isinstance(repeat, bool) or isinstance(repeat, float) and not repeat.is_integer():
        raise SaltInvocationError(f"repeat: {repeat!r} is not a whole number")
    try:
        repeat = int(repeat)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SaltInvocationError(f"repeat: {repeat!r} is not a number") from exc
    try:
        if isinstance(spacing_ms, bool):
            raise TypeError
        spacing_ms = float(spacing_ms)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SaltInvocationError(f"spacing_ms: {spacing_ms!r} is not a number") from exc
    if not 1 <= repeat <= MAX_REPEAT:
        raise SaltInvocationError(f"repeat: {repeat} is outside 1-{MAX_REPEAT}")
    if not 0 <= spacing_ms <= 5000:  # also refuses nan
        raise SaltInvocationError(f"spacing_ms: {spacing_ms} is outside 0-5000")
    return repeat, spacing_ms


def _check_interface(interface):
    """A Linux interface name (at most 15 bytes, no / or white space) or None."""
    if interface is None or interface == "":
        return None
    if not fleet_wol.is_interface_name(interface):
        raise SaltInvocationError(f"interface: {interface!r} is not a network interface name")
    return interface


def _check_destination(address, port, source):
    """Validated ``(broadcast, port, source)``; SaltInvocationError names the bad field."""
    checked = []
    for field, value in (("broadcast", address), ("source", source)):
        if value is None and field == "source":
            checked.append(None)
            continue
        try:
            checked.append(str(ipaddress.IPv4Address(str(value))))
        except ValueError as exc:
            raise SaltInvocationError(f"{field}: {value!r} is not an IPv4 address") from exc
    try:
        port_no = int(port)
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf
        port_no = -1
    if isinstance(port, float) and port != port_no:
        port_no = -1
    if isinstance(port, bool) or not 1 <= port_no <= 65535:
        raise SaltInvocationError(f"port: {port!r} is not a UDP port (1-65535)")
    return checked[0], port_no, checked[1]


def _send(destinations, repeat, spacing_ms):
    """The UDP send (``fleet_wol.send``, shared with the Pi master's ``kiosk_campus`` runner)."""
    try:
        return fleet_wol.send(destinations, repeat, spacing_ms)
    except fleet_wol.WolError as exc:
        raise CommandExecutionError(str(exc)) from exc


def wake(
    macs,
    broadcast="255.255.255.255",
    port=9,
    repeat=DEFAULT_REPEAT,
    spacing_ms=DEFAULT_SPACING_MS,
    source=None,
    interface=None,
    password=None,
):
    """
    Send magic packets for one or many MACs.

    macs
        One MAC, a comma-separated string or a list; any notation
        (``aa:bb:cc:dd:ee:ff``, ``aa-bb-..``, ``aabb.ccdd.eeff``, bare hex).
        A request with one bad MAC is refused whole: nothing is sent. A MAC of
        digits only typed bare on the CLI reaches the module as a YAML number:
        it is recovered when only one MAC can have become that number, else
        refused (quote it, or write it with dashes). Kiosk MACs must be
        unicast and non-zero.
    broadcast
        Destination address: the subnet-directed broadcast of the kiosks' VLAN
        (e.g. ``10.20.1.255``); default the limited broadcast.
    port
        UDP port (9 by default; 7 on some BIOSes).
    repeat, spacing_ms
        Each packet is sent ``repeat`` times, ``spacing_ms`` apart.
    source, interface
        Send from this local address / bind to this interface (VLAN).
    password
        SecureOn password (6 bytes like a MAC, or 4 as ``a.b.c.d``).

    Returns one entry per MAC: what was sent where.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_wol.wake 52-54-00-10-01-01 broadcast=10.20.1.255
        salt pi-riverside-1 kiosk_wol.wake '["5254.0010.0101", "525400100102"]' repeat=5
    """
    try:
        normalized = fleet_wol.normalize_macs(macs)
        packets = fleet_wol.magic_packets(normalized, password)
    except fleet_wol.WolError as exc:
        raise SaltInvocationError(str(exc)) from exc
    repeat, spacing_ms = _check_repeat(repeat, spacing_ms)
    broadcast, port, source = _check_destination(broadcast, port, source)
    interface = _check_interface(interface)
    dest = {"broadcast": broadcast, "port": port, "source": source, "interface": interface, "packets": packets}
    sent = _send([dest], repeat, spacing_ms)
    return [
        {"mac": mac, "to": broadcast, "port": port, "source": source, "packets": sent.get((0, mac), 0)}
        for mac in normalized
    ]


def wake_kiosks(kiosks=None, campus=None, repeat=DEFAULT_REPEAT, spacing_ms=DEFAULT_SPACING_MS):
    """
    Wake kiosks by id or by campus, from this Pi, looking MACs and VLANs up in
    the ``kiosk_fleet`` pillar. That pillar holds this Pi's campus only, so an
    id of another campus is refused like any unknown id: the runner sends
    each campus's Pis a job of their own, with that campus's kiosks.

    Returns ``{"pi": ..., "campus": ..., "kiosks": {kiosk: {mac, to, port,
    source, packets}}}``.

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_wol.wake_kiosks campus=riverside
        salt 'pi-riverside-*' kiosk_wol.wake_kiosks kiosks=kiosk-riverside-10,kiosk-riverside-11
    """
    repeat, spacing_ms = _check_repeat(repeat, spacing_ms)
    try:
        inventory = fleet_inventory.from_pillar(__pillar__)
        selection = fleet_inventory.select_kiosks(inventory, kiosks=kiosks, campus=campus)
        ids = [k for ids in selection.values() for k in ids]
        fleet_wol.wake_plan(inventory, __opts__["id"], ids)  # refuses a Pi of no campus before any send
    except (fleet_inventory.InventoryError, fleet_wol.WolError) as exc:
        raise SaltInvocationError(str(exc)) from exc
    return fleet_wol.wake_kiosks(inventory, __opts__["id"], ids, repeat, spacing_ms, sender=_send)

