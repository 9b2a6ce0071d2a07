"""
What a minion (kiosk or Pi) is in the fleet, from the inventory in pillar.
"""

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_inventory
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory

from salt.exceptions import CommandExecutionError

__virtualname__ = "kiosk_fleet"


def __virtual__():
    return __virtualname__


def inventory():
    """
    Return the validated fleet inventory from this minion's pillar.

    Raises an error listing every problem (each naming its field) when the
    inventory is invalid.

    CLI Example:

    .. code-block:: bash

        salt 'pi-*' kiosk_fleet.inventory
    """
    try:
        return fleet_inventory.from_pillar(__pillar__)
    except fleet_inventory.InventoryError as exc:
        raise CommandExecutionError(f"invalid kiosk_fleet pillar: {exc}") from exc


def whoami():
    """
    Return this minion's role, campus and inventory entry.

    CLI Example:

    .. code-block:: bash

        salt 'kiosk-*' kiosk_fleet.whoami
    """
    inv = inventory()
    minion_id = __opts__["id"]
    try:
        campus = fleet_inventory.campus_of(inv, minion_id)
    except fleet_inventory.InventoryError as exc:
        raise CommandExecutionError(str(exc)) from exc
    spec = inv["campuses"][campus]
    if minion_id in spec["kiosks"]:
        return {"id": minion_id, "role": "kiosk", "campus": campus, "kiosk": spec["kiosks"][minion_id]}
    return {"id": minion_id, "role": "pi", "campus": campus, "pi": spec["pis"][minion_id]}
