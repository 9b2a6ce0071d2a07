"""
Fleet-wide runners on the top master: the inventory, and who answers.

Every runner returns a dict with ``result`` and sets a non-zero exit code on
failure, so ``salt-run ... --out=json`` works as a Jenkins step.
"""

import logging

try:  # classic install: Salt puts the _utils folder on sys.path while loading
    import fleet_inventory
    import fleet_runner
except ImportError:  # pip-installed extension
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_runner

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_fleet"


def __virtual__():
    return __virtualname__


def _load_inventory():
    """The validated inventory from the master's pillar (raises InventoryError)."""
    return fleet_inventory.from_pillar(__salt__["pillar.show_pillar"]())


def inventory():
    """
    Validate the fleet inventory in pillar and return it, normalised.

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
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return fleet_runner.fail(__context__, exc)
    targets = sorted(k for ids in selection.values() for k in ids)
    answered = __salt__["salt.execute"](targets, "test.ping", tgt_type="list", timeout=timeout) or {}
    report = fleet_runner.presence(selection, answered)
    down = sorted(k for r in report.values() for k in r["down"])
    ret = {"result": not down, "campuses": report, "down": down}
    if down:
        ret["error"] = f"{len(down)} kiosk(s) did not answer: {', '.join(down)}"
    return fleet_runner.finish(__context__, ret)
