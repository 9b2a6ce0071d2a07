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

# python-nmap is imported where nmap runs (fleet_scan.run); here only whether it is there
HAS_NMAP = importlib.util.find_spec("nmap") is not None

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
        fleet_scan.nmap_arguments(host_timeout_s, max_retries)  # refused before anything else
        inventory = fleet_inventory.from_pillar(__pillar__)
        campus = fleet_inventory.campus_of(inventory, __opts__["id"])
        if __opts__["id"] not in inventory["campuses"][campus]["pis"]:
            raise fleet_scan.ScanError(f"id: {__opts__['id']} is a kiosk, not a Pi; run kiosk_scan on the Pis")
        targets = fleet_scan.scan_targets(inventory, campus, kiosks)
    except (fleet_inventory.InventoryError, fleet_scan.ScanError) as exc:
        raise SaltInvocationError(str(exc)) from exc
    try:
        result, elapsed = fleet_scan.run(targets, host_timeout_s, max_retries)
    except fleet_scan.ScanError as exc:
        raise CommandExecutionError(str(exc)) from exc
    return {
        "pi": __opts__["id"],
        "campus": campus,
        "scanned_at": fleet_sweep.iso(_dt.datetime.now(_dt.timezone.utc)),
        "elapsed_s": elapsed,
        "kiosks": result,
    }
