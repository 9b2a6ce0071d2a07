"""
Kiosk liveness from the campus Pis: an nmap TCP connect probe of each
kiosk's service port (the central master cannot reach kiosk IPs behind NAT).

nmap runs as ``nmap -oX - <kiosk ips> -p <port> -sT -Pn -n --max-retries 1
--host-timeout 10s`` (python-nmap builds the argument list and runs it
without a shell): ``-Pn`` instead of ``-sn`` (a ping scan calls every
loopback address up), ``-n`` so nmap never sends reverse-DNS queries off the
machine. Only the inventory's kiosk addresses of this Pi's own campus are
ever scanned.

Each scan also says per kiosk whether its minion is connected to this Pi's
salt-master (``minion``), and ``presence`` says only that: both read the
kernel's TCP table (``fleet_scan.presence``), no job to the kiosks. The
Pi master's ports come from the minion config (or pillar)::

    kiosk_scan:
      master_ports: [4505, 4506]   # this Pi master's publish_port and ret_port

Unset, they are read from the Pi master config that
``kiosk_campus:master_config`` names (when set), else 4505 and 4506.

Needs python-nmap and the ``nmap`` binary (``apt-get install nmap``).
"""

import datetime as _dt
import logging
import os
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


def _pi_campus():
    """``(inventory, campus)`` of this Pi; a kiosk's id is refused."""
    inventory = fleet_inventory.from_pillar(__pillar__)
    campus = fleet_inventory.campus_of(inventory, __opts__["id"])
    if __opts__["id"] not in inventory["campuses"][campus]["pis"]:
        raise fleet_scan.ScanError(f"id: {__opts__['id']} is a kiosk, not a Pi; run kiosk_scan on the Pis")
    return inventory, campus


def _setting(block, key):
    """``<block>:<key>`` of the minion config, else of the pillar, else None."""
    for source in (__opts__, __pillar__):
        value = source.get(block)
        if isinstance(value, dict) and value.get(key) is not None:
            return value[key]
    return None


def _master_ports():
    """
    The Pi master's ports: ``kiosk_scan:master_ports``, else the
    ``publish_port`` and ``ret_port`` of the Pi master config named by
    ``kiosk_campus:master_config`` (the file ``kiosk_campus.reconcile``
    reads: one place for the ports), else 4505, 4506.
    """
    ports = _setting("kiosk_scan", "master_ports")
    if ports is not None:
        return fleet_scan.master_ports(ports)
    path = _setting("kiosk_campus", "master_config")
    if isinstance(path, str) and os.path.isabs(path) and os.path.isfile(path):
        import salt.config  # pylint: disable=import-outside-toplevel

        try:
            opts = salt.config.master_config(path)
        except (SystemExit, Exception):  # noqa: BLE001 - Salt exits on a config it cannot parse
            raise fleet_scan.ScanError(f"kiosk_campus:master_config: {path} is not a readable master config") from None
        return fleet_scan.master_ports([opts["publish_port"], opts["ret_port"]], f"{path}: publish_port/ret_port")
    return fleet_scan.DEFAULT_MASTER_PORTS


def _connected(inventory, campus, kiosks, ports):
    """``{kiosk: bool}``: connected to this Pi's master (``fleet_scan.presence`` on this host's TCP table)."""
    try:
        rows = fleet_scan.read_tcp_tables()
        return fleet_scan.presence(inventory, campus, kiosks, rows, ports,
                                   fleet_scan.pi_addresses(inventory, campus, __opts__["id"]))
    except fleet_scan.ScanError as exc:
        raise CommandExecutionError(str(exc)) from exc


def scan(kiosks=None, host_timeout_s=fleet_scan.DEFAULT_HOST_TIMEOUT_S, max_retries=fleet_scan.DEFAULT_MAX_RETRIES):
    """
    Probe the service port of this Pi's campus kiosks (all, or those of
    ``kiosks``). The Pi's pillar holds its own campus only, so an id of
    another campus is refused like any unknown id: the runner sends each
    campus's Pis a job of their own, with that campus's kiosks.

    Returns ``{"pi", "campus", "scanned_at", "elapsed_s", "kiosks": {kiosk:
    {"ip", "port", "state": "open"|"closed"|"filtered", "scanned_at",
    "minion": bool}}}``: ``minion`` is True when the kiosk's minion holds a
    connection to this Pi's salt-master (the kernel's TCP table, read right
    after the probe).

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_scan.scan
        salt pi-riverside-1 kiosk_scan.scan kiosks=kiosk-riverside-01,kiosk-riverside-02 host_timeout_s=5
    """
    try:
        fleet_scan.nmap_arguments(host_timeout_s, max_retries)  # refused before anything else
        inventory, campus = _pi_campus()
        targets = fleet_scan.scan_targets(inventory, campus, kiosks)
        ports = _master_ports()
    except (fleet_inventory.InventoryError, fleet_scan.ScanError) as exc:
        raise SaltInvocationError(str(exc)) from exc
    try:
        result, elapsed = fleet_scan.run(targets, host_timeout_s, max_retries)
    except fleet_scan.ScanError as exc:
        raise CommandExecutionError(str(exc)) from exc
    connected = _connected(inventory, campus, sorted(result), ports)
    return {
        "pi": __opts__["id"],
        "campus": campus,
        "scanned_at": fleet_sweep.iso(_dt.datetime.now(_dt.timezone.utc)),
        "elapsed_s": elapsed,
        "kiosks": {k: dict(entry, minion=connected[k]) for k, entry in result.items()},
    }


def presence(kiosks=None):
    """
    Which kiosks of this Pi's campus (all, or those of ``kiosks``) hold a
    minion connection to this Pi's salt-master, from the kernel's TCP table:
    no job to the kiosks, so a kiosk that is off costs nothing. An id of
    another campus is refused (a Pi answers for its own campus only).

    Returns ``{"pi": <this Pi>, "campus": <its campus>, "kiosks": {kiosk:
    true|false}}``.

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_scan.presence
        salt pi-riverside-1 kiosk_scan.presence kiosks=kiosk-riverside-01,kiosk-riverside-02
    """
    try:
        inventory, campus = _pi_campus()
        wanted = fleet_scan.own_kiosks(inventory, campus, None if kiosks == "" else kiosks)
        ports = _master_ports()
    except (fleet_inventory.InventoryError, fleet_scan.ScanError) as exc:
        raise SaltInvocationError(str(exc)) from exc
    return {"pi": __opts__["id"], "campus": campus, "kiosks": _connected(inventory, campus, wanted, ports)}
