#!py
"""
Need-to-know pillar: each minion gets its slice of the fleet data file named
in this master's config (``kiosk_fleet:data``), computed by
``fleet_inventory.slice_for`` from the minion id this master authenticated
(``__opts__["id"]`` while rendering pillar; Salt 3007 refuses a request whose
id differs from the signed payload's and encrypts the pillar reply to that
minion's key), never from grains a minion reports about itself.

- a kiosk: its own entry, its campus's settings, VLANs and Pis, its campus's
  ``kiosk_fleet_changes`` hosts, ``kiosk_release:verify_key``;
- a Pi: its campus (every kiosk of it), the same hosts and keys;
- any other id: nothing.

A missing or unreadable data file is a pillar error (the minion gets no
pillar, so no key and no inventory: fail closed), never the old whole file.
"""

import importlib
import importlib.util
import os
import sys


def _fleet_inventory():
    """
    The pack's fleet_inventory, by the rule of _utils/README.md: the installed
    package first (a synced copy never shadows it), else the classic _utils of
    module_dirs, else the synced extmods/utils Salt puts on sys.path. No
    ImportError is caught: a broken utility shows its own error.
    """
    if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
        return importlib.import_module("saltext_kiosk_fleet.utils.fleet_inventory")
    for base in __opts__.get("module_dirs") or []:
        utils = os.path.join(base, "_utils")
        if os.path.isfile(os.path.join(utils, "fleet_inventory.py")):
            if utils not in sys.path:
                sys.path.append(utils)
            break
    return importlib.import_module("fleet_inventory")


def run():
    fleet_inventory = _fleet_inventory()
    return fleet_inventory.slice_for(fleet_inventory.master_data(__opts__), __opts__["id"])
