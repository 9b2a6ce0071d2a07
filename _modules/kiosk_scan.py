"""
Kiosk liveness from the campus Pis: an nmap TCP connect probe of each
kiosk's service port (the central master cannot reach kiosk IPs behind NAT).

nmap runs as ``nmap -oX - <kiosk ips> -p <port> -sT -Pn -n --max-retries 1
--host-timeout 10s`` (python-nmap builds the argument list and runs it
without a shell): ``-Pn`` instead of ``-sn`` (a ping scan calls every
loopback address up), ``-n`` so nmap never sends reverse-DNS queries off the
machine. Only the inventory's kiosk addresses of this Pi's own campus are
ever scanned.

Needs python-nmap and the ``nmap`` binary (``apt-get install nmap``).
"""

import datetime as _dt
import logging
import shutil
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_scan, fleet_sweep
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory
    import fleet_scan
    import fleet_sweep

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import nmap

    HAS_NMAP = True
except ImportError:
    HAS_NMAP = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_scan"


def __virtual__():
    if not HAS_NMAP:
        return False, "kiosk_scan: the python-nmap package is not installed"
    if shutil.which("nmap") is None:
        return False, "kiosk_scan: the nmap binary is not on PATH (apt-get install nmap)"
    return __virtualname__


def scan(kiosks=None, host_timeout_s=fleet_scan.DEFAULT_HOST_TIMEOUT_S, max_retries=fleet_scan.DEFAULT_MAX_RETRIES):
    """
    Probe the service port of this Pi's campus kiosks (all, or those of
    ``kiosks``). The Pi's pillar holds its own campus only, so an id of
    another campus is refused like any unknown id: the runner sends each
    campus's Pis a job of their own, with that campus's kiosks.

    Returns ``{"pi", "campus", "scanned_at", "elapsed_s", "kiosks": {kiosk:
    {"ip", "port", "state": "open"|"closed"|"filtered", "scanned_at"}}}``.

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_scan.scan
        salt pi-riverside-1 kiosk_scan.scan kiosks=kiosk-riverside-01,kiosk-riverside-02 host_timeout_s=5
    """
    try:
        arguments = fleet_scan.nmap_arguments(host_timeout_s, max_retries)
        inventory = fleet_inventory.from_pillar(__pillar__)
        campus = fleet_inventory.campus_of(inventory, __opts__["id"])
        if __opts__["id"] not in inventory["campuses"][campus]["pis"]:
            raise fleet_scan.ScanError(f"id: {__opts__['id']} is a kiosk, not a Pi; run kiosk_scan on the Pis")
        targets = fleet_scan.scan_targets(inventory, campus, kiosks)
    except (fleet_inventory.InventoryError, fleet_scan.ScanError) as exc:
        raise SaltInvocationError(str(exc)) from exc
    scanner = nmap.PortScanner()
    started = time.monotonic()
    result = {}
    for port, by_ip in sorted(targets.items()):
        ips = sorted(by_ip)
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
            raise CommandExecutionError(f"nmap failed for port {port}: {exc}") from exc
        scanned_at = fleet_sweep.iso(_dt.datetime.now(_dt.timezone.utc))
        for ip, state in fleet_scan.port_states(answer, port, ips).items():
            result[by_ip[ip]] = {"ip": ip, "port": port, "state": state, "scanned_at": scanned_at}
    return {
        "pi": __opts__["id"],
        "campus": campus,
        "scanned_at": fleet_sweep.iso(_dt.datetime.now(_dt.timezone.utc)),
        "elapsed_s": round(time.monotonic() - started, 3),
        "kiosks": result,
    }
