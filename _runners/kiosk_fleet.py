"""
Fleet-wide runners on the top master: the inventory, and who answers.

Every runner returns a dict with ``result`` and sets a non-zero exit code on
failure, so ``salt-run ... --out=json`` works as a Jenkins step.
"""

import logging
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_runner, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory
    import fleet_runner
    import fleet_state

import salt.client

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_fleet"


def __virtual__():
    return __virtualname__


def _load_inventory():
    """The validated inventory from the master-only fleet data file (raises InventoryError)."""
    return fleet_inventory.master_inventory(__opts__)


def inventory():
    """
    Validate the whole fleet inventory (the fleet data file named by the
    master config ``kiosk_fleet:data``) and return it, normalised. This is the
    full check: every campus, MACs and ids unique across campuses (a minion
    checks only its own slice).

    Fails (exit code 1) with every problem listed, each naming its field.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.inventory --out=json
    """
    try:
        inv = _load_inventory()
    except fleet_inventory.InventoryError as exc:
        return fleet_runner.fail(__context__, exc, errors=exc.errors)
    counts = {c: {"pis": len(s["pis"]), "kiosks": len(s["kiosks"])} for c, s in inv["campuses"].items()}
    return fleet_runner.finish(__context__, {"result": True, "counts": counts, "inventory": inv})


def ping(campus=None, kiosks=None, timeout=10):
    """
    Ping kiosks through their campus Pis and name the ones that did not answer.

    Fails (exit code 1) when any selected kiosk is down. ``campus`` and
    ``kiosks`` take a name or a comma-separated list; with neither, every
    campus.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.ping campus=east
        salt-run kiosk_fleet.ping kiosks=kiosk-east-01,kiosk-east-02 --out=json
    """
    try:
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        inv = _load_inventory()
        if campus is None and kiosks is None:
            campus = sorted(inv["campuses"])
        selection = fleet_inventory.select_kiosks(inv, kiosks=kiosks, campus=campus)
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    targets = sorted(k for ids in selection.values() for k in ids)
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        returns = fleet_runner.call(client.cmd_iter, targets, "test.ping", timeout=timeout)
    # a kiosk that failed (answered an error) or whose return conflicts (a forged copy) is down too
    report = fleet_runner.presence(selection, returns.answered)
    down = sorted(k for r in report.values() for k in r["down"])
    ret = {"result": not down, "campuses": report, "down": down}
    if down:
        ret["error"] = f"{len(down)} kiosk(s) did not answer: {', '.join(down)}"
    return fleet_runner.finish(__context__, ret)


def campus_data(campus=None, dest=None):
    """
    The part of the fleet data a campus's Pi masters need (its inventory,
    hosts entries and the release verification keys; what
    ``fleet_inventory.campus_slice`` keeps): with ``dest`` (an absolute path
    on this master), written there (mode 0640, replaced atomically) for the
    operator to copy to the campus's Pis as their ``kiosk_fleet:data``;
    without, returned. The campus must pass the full inventory check first.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.campus_data campus=east dest=/srv/kiosk-fleet/east.yaml
        salt-run kiosk_fleet.campus_data campus=east --out=yaml
    """
    try:
        names = fleet_inventory.names(campus, "campus")
        if len(names) != 1:
            raise fleet_inventory.InventoryError(f"campus: name exactly one campus, got {campus!r}")
        if dest is not None and (not isinstance(dest, str) or not os.path.isabs(dest)):
            raise fleet_inventory.InventoryError(f"dest: {dest!r} is not an absolute path")
        data = fleet_inventory.master_data(__opts__)
        inv = fleet_inventory.validate(data.get(fleet_inventory.PILLAR_KEY))
        if names[0] not in inv["campuses"]:
            raise fleet_inventory.InventoryError(
                f"campus: unknown campus {names[0]} (known: {', '.join(sorted(inv['campuses']))})")
        part = fleet_inventory.campus_slice(data, names[0])
    except fleet_inventory.InventoryError as exc:
        return fleet_runner.fail(__context__, exc)
    if dest is None:
        return fleet_runner.finish(__context__, {"result": True, "campus": names[0], "data": part})
    import yaml  # Salt's own dependency

    try:
        fleet_state.write_atomic(dest, yaml.safe_dump(part, default_flow_style=False), mode=0o640)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in dest, text no UTF-8 can carry
        return fleet_runner.fail(__context__, f"dest: cannot write {dest}: {getattr(exc, 'strerror', None) or exc}")
    return fleet_runner.finish(__context__, {"result": True, "campus": names[0], "dest": dest})
