"""
The campus Pis' liveness probe (``kiosk_scan``): which kiosk addresses and
ports to hand nmap, nmap's options, and how to read its answer. Pure: the
module runs nmap, this file only decides.

nmap runs as ``nmap -oX - <kiosk ips> -p <port> -sT -Pn -n --max-retries 1
--host-timeout 10s``: a TCP connect probe (``-sT``), no host discovery
(``-Pn``: ``-sn`` calls every loopback address up), never reverse DNS
(``-n``), bounded time. Only the inventory's kiosk addresses of the Pi's own
campus ever reach its command line.

:func:`run` is the one place nmap runs (python-nmap, imported there): the
``kiosk_scan`` module on a Pi minion and the ``kiosk_campus`` runner on a Pi
master both call it.
"""

import datetime as _dt
import ipaddress
import re
import sys
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_runner
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_runner

PORT_STATES = ("open", "closed", "filtered")
# nmap timing for one TCP connect probe per kiosk
DEFAULT_HOST_TIMEOUT_S = 10
DEFAULT_MAX_RETRIES = 1
# a Pi master's publish and ret ports unless its minion's kiosk_scan:master_ports says otherwise
DEFAULT_MASTER_PORTS = (4505, 4506)
TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_ESTABLISHED = 1  # the kernel's TCP_ESTABLISHED (include/net/tcp_states.h)


class ScanError(fleet_fields.FleetError):
    """A scan request that cannot be made; the message names the field."""


def _whole(value, field, low, high):
    try:
        return fleet_runner.number(value, field, low, high)
    except fleet_fields.FleetError as exc:
        raise ScanError(str(exc)) from None


def nmap_arguments(host_timeout_s=DEFAULT_HOST_TIMEOUT_S, max_retries=DEFAULT_MAX_RETRIES):
    """
    nmap's options besides ``-p <port>`` and the targets, as a list: TCP
    connect probe (``-sT``), no host discovery (``-Pn``: ``-sn`` would call
    every loopback address up), never reverse DNS (``-n``), bounded time.
    """
    host_timeout_s = _whole(host_timeout_s, "host_timeout_s", 1, 300)
    max_retries = _whole(max_retries, "max_retries", 0, 5)
    return ["-sT", "-Pn", "-n", "--max-retries", str(max_retries), "--host-timeout", f"{host_timeout_s}s"]


def scan_targets(inventory, campus, kiosks=None):
    """
    ``{port: {ip: kiosk}}`` for the kiosks of ``campus`` to probe (all of them,
    or those of ``kiosks`` that belong to it). An id the inventory does not
    hold is refused; on a Pi that is every other campus's kiosk too (its
    pillar is its campus's slice). Kiosks of other campuses that the
    inventory does hold are skipped. Addresses and ports are re-checked
    here: only the inventory's kiosk IPs ever reach nmap's command line.
    """
    if not isinstance(campus, str) or campus not in inventory["campuses"]:
        raise ScanError(f"campus: {fleet_fields.shown(campus)} is not a campus of the inventory")
    own = inventory["campuses"][campus]["kiosks"]
    if kiosks is None:
        wanted = sorted(own)
    else:
        if isinstance(kiosks, str):
            kiosks = [k.strip() for k in kiosks.split(",") if k.strip()]
        if not isinstance(kiosks, (list, tuple, set)):
            raise ScanError(f"kiosks: expected ids, got {fleet_fields.shown(kiosks)}")
        known = {k for spec in inventory["campuses"].values() for k in spec["kiosks"]}
        for kiosk in kiosks:
            if not isinstance(kiosk, str) or kiosk not in known:
                name = kiosk if isinstance(kiosk, str) and fleet_fields.NAME.match(kiosk) else fleet_fields.shown(kiosk)
                raise ScanError(f"kiosks: {name} is not a kiosk of the inventory")
        wanted = sorted(k for k in set(kiosks) if k in own)
    targets = {}
    for kiosk in wanted:
        spec = own[kiosk]
        ip = str(ipaddress.IPv4Address(spec["ip"]))
        port = spec["service_port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ScanError(f"campuses.{campus}.kiosks.{kiosk}.service_port: {port!r} is not a port")
        targets.setdefault(port, {})[ip] = kiosk
    return targets


def port_states(nmap_result, port, ips):
    """
    ``{ip: "open"|"closed"|"filtered"}`` from python-nmap's ``scan()`` dict for
    one port. A host nmap gave up on (host timeout), or an answer of the
    wrong shape, is ``filtered``.
    """
    scanned = nmap_result.get("scan") if isinstance(nmap_result, dict) else None
    scanned = scanned if isinstance(scanned, dict) else {}
    out = {}
    for ip in ips:
        host = scanned.get(ip)
        tcp = host.get("tcp") if isinstance(host, dict) else None
        entry = tcp.get(port) if isinstance(tcp, dict) else None
        state = entry.get("state") if isinstance(entry, dict) else None
        out[ip] = state if state in ("open", "closed") else "filtered"
    return out


def _now_iso():
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def run(targets, host_timeout_s=DEFAULT_HOST_TIMEOUT_S, max_retries=DEFAULT_MAX_RETRIES):
    """
    Probe ``targets`` (``{port: {ip: kiosk}}`` from :func:`scan_targets`):
    one nmap run per port, without a shell. Returns ``({kiosk: {"ip",
    "port", "state", "scanned_at"}}, elapsed seconds)``. Needs python-nmap
    and the nmap binary; a failed run raises :class:`ScanError`.
    """
    import nmap  # pylint: disable=import-outside-toplevel  (only the Pis have it)

    arguments = nmap_arguments(host_timeout_s, max_retries)
    if not isinstance(targets, dict):
        raise ScanError(f"targets: expected {{port: {{ip: kiosk}}}}, got {fleet_fields.shown(targets)}")
    scanner = nmap.PortScanner()
    started = time.monotonic()
    result = {}
    for port, by_ip in sorted(targets.items()):
        ips = sorted(str(ipaddress.IPv4Address(ip)) for ip in by_ip)
        try:
            # every token is a validated IPv4 address or one of our fixed
            # options: python-nmap shlex-splits them back into an argv list
            answer = scanner.scan(
                hosts=" ".join(ips),
                ports=str(int(port)),
                arguments=" ".join(arguments),
                timeout=int(host_timeout_s) * 2 + 30,
            )
        except (nmap.PortScannerError, nmap.PortScannerTimeout) as exc:
            raise ScanError(f"nmap: failed for port {port}: {exc}") from exc
        scanned_at = _now_iso()
        for ip, state in port_states(answer, port, ips).items():
            result[by_ip[ip]] = {"ip": ip, "port": port, "state": state, "scanned_at": scanned_at}
    return result, round(time.monotonic() - started, 3)


# ---------------------------------------------------------------- presence (the kernel's TCP table)


# an address:port of the table: 8 hex digits (IPv4) or 32 (IPv6), then the port's 4
_ENDPOINT = re.compile(r"^([0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}):([0-9A-Fa-f]{4})\Z")
_STATE = re.compile(r"^[0-9A-Fa-f]{2}\Z")


def _address(hexed, byteorder):
    """An address of /proc/net/tcp{,6}: 32-bit words in host byte order; an IPv4-mapped IPv6 one as IPv4."""
    raw = bytes.fromhex(hexed)
    if byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


def parse_tcp_table(text, byteorder=sys.byteorder):
    """
    The rows of ``/proc/net/tcp`` or ``tcp6`` text as ``(local address,
    local port, remote address, state)`` tuples (state: the kernel's
    number, 1 = ESTABLISHED). The header and lines that are not a row are
    skipped: the table is the kernel's, a line cut short by a concurrent
    change must not hide the others.
    """
    if not isinstance(text, str):
        raise ScanError(f"tcp_table: expected text, got {fleet_fields.shown(text)}")
    if byteorder not in ("little", "big"):
        raise ScanError(f"byteorder: {fleet_fields.shown(byteorder)} is not little or big")
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].endswith(":") or not fields[0][:-1].isdigit():
            continue
        local, remote = _ENDPOINT.match(fields[1]), _ENDPOINT.match(fields[2])
        if not local or not remote or not _STATE.match(fields[3]):
            continue
        rows.append((_address(local[1], byteorder), int(local[2], 16), _address(remote[1], byteorder),
                     int(fields[3], 16)))
    return rows


def read_tcp_tables(paths=TCP_TABLES):
    """The rows of this host's TCP tables (:func:`parse_tcp_table`); a table that is not there (no IPv6) is skipped."""
    rows = []
    for path in paths:
        try:
            with open(path, encoding="ascii", errors="replace") as table:
                text = table.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ScanError(f"tcp_table: {path} is not readable ({exc.strerror or exc})") from None
        rows.extend(parse_tcp_table(text))
    return rows


def master_ports(value, field="kiosk_scan:master_ports"):
    """The Pi master's ports (publish, ret) as a sorted tuple of distinct ports; None is the default 4505, 4506."""
    if value is None:
        return DEFAULT_MASTER_PORTS
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set)) or not value:
        raise ScanError(f"{field}: {fleet_fields.shown(value)} is not a list of ports")
    return tuple(sorted({_whole(port, field, 1, 65535) for port in value}))


def pi_addresses(inventory, campus, pi):
    """
    The addresses this Pi's kiosks reach its master on, from the inventory:
    its ``source`` on each VLAN and its ``master`` host. None (any local
    address counts) when that is not known: ``master`` is a DNS name, or the
    Pi has no address at all. Matters where Pis share a host (the tests'
    topology): one Pi must not count connections to another's master.
    """
    if not isinstance(campus, str) or campus not in inventory["campuses"]:
        raise ScanError(f"campus: {fleet_fields.shown(campus)} is not a campus of the inventory")
    spec = inventory["campuses"][campus]["pis"].get(pi) if isinstance(pi, str) else None
    if spec is None:
        name = pi if isinstance(pi, str) and fleet_fields.NAME.match(pi) else fleet_fields.shown(pi)
        raise ScanError(f"pi: {name} is not a Pi of campus {campus}")
    addresses = {v["source"] for v in (spec.get("vlans") or {}).values() if v.get("source")}
    if spec.get("master"):
        host = spec["master"].rsplit(":", 1)[0]
        try:
            addresses.add(str(ipaddress.IPv4Address(host)))
        except ValueError:
            return None  # a DNS name: this Pi cannot tell which of its addresses the kiosks use
    return frozenset(addresses) or None


def own_kiosks(inventory, campus, kiosks=None):
    """
    The sorted ids of ``kiosks`` (ids, or one comma-separated string; None:
    every kiosk of ``campus``), each a kiosk of ``campus``: a Pi answers for
    its own campus only, any other id is refused.
    """
    if not isinstance(campus, str) or campus not in inventory["campuses"]:
        raise ScanError(f"campus: {fleet_fields.shown(campus)} is not a campus of the inventory")
    own = inventory["campuses"][campus]["kiosks"]
    if kiosks is None:
        return sorted(own)
    if isinstance(kiosks, str):
        kiosks = [k.strip() for k in kiosks.split(",") if k.strip()]
    if not isinstance(kiosks, (list, tuple, set, frozenset)):
        raise ScanError(f"kiosks: expected ids, got {fleet_fields.shown(kiosks)}")
    for kiosk in kiosks:
        if not isinstance(kiosk, str) or kiosk not in own:
            name = kiosk if isinstance(kiosk, str) and fleet_fields.NAME.match(kiosk) else fleet_fields.shown(kiosk)
            raise ScanError(f"kiosks: {name} is not a kiosk of campus {campus}")
    return sorted(set(kiosks))


def presence(inventory, campus, kiosks, rows, ports, local_addresses=None):
    """
    ``{kiosk: bool}`` for ``kiosks`` of ``campus`` (:func:`own_kiosks`):
    True when the table ``rows`` (:func:`parse_tcp_table`) hold an
    ESTABLISHED connection from the kiosk's inventory address to one of
    ``ports`` (the Pi master's) on one of ``local_addresses`` (None: any).
    A kiosk minion keeps one open to each of its masters; one that is off
    holds none once the Pi's kernel drops it (a clean shutdown closes it at
    once; after a power cut the Pi master's TCP keepalive ends it).
    """
    wanted = own_kiosks(inventory, campus, kiosks)
    ports = set(master_ports(ports, "ports"))
    locals_ = None if local_addresses is None else set(local_addresses)
    connected = {remote for local, port, remote, state in rows
                 if state == TCP_ESTABLISHED and port in ports and (locals_ is None or local in locals_)}
    own = inventory["campuses"][campus]["kiosks"]
    return {kiosk: own[kiosk]["ip"] in connected for kiosk in wanted}
