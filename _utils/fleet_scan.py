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
