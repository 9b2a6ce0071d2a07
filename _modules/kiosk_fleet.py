"""
What a minion (kiosk or Pi) is in the fleet, from the inventory in pillar;
on a Pi, the keys its salt-master holds; on a kiosk, its multi-master minion
settings (the choices themselves live in ``fleet_keys``).

Settings, read with ``config.get`` (minion config, then pillar)::

    kiosk_fleet:
      master_pki_dir: /etc/salt/pki/master    # the Pi master's pki_dir
      minion_overrides: {}                    # kiosk: fleet_keys.KIOSK_MINION_SETTINGS to change
"""

import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_keys
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory
    import fleet_keys

from salt.exceptions import CommandExecutionError

__virtualname__ = "kiosk_fleet"

DEFAULT_MASTER_PKI_DIR = "/etc/salt/pki/master"
# Salt's pki folders of a master, by key state
KEY_FOLDERS = {"accepted": "minions", "pending": "minions_pre", "rejected": "minions_rejected",
               "denied": "minions_denied"}


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


def _fingerprint(path):
    """sha256 fingerprint of a public key file; None when absent, ``"invalid key"`` when no RSA public key."""
    try:
        return fleet_keys.shown_fingerprint(fleet_keys.read_bytes(path, "kiosk_fleet:master_pki_dir"))
    except fleet_keys.CampusKeyError as exc:
        raise CommandExecutionError(str(exc)) from None


def master_keys():
    """
    On a Pi: the keys of its salt-master, read from the master's pki_dir
    (setting ``kiosk_fleet:master_pki_dir``, default
    ``/etc/salt/pki/master``): the sha256 fingerprint of ``master.pub`` (what
    ``salt-key -f master.pub`` prints with ``hash_type: sha256``) and the
    accepted, pending, rejected and denied minion ids, each with its key's
    fingerprint. Public keys only; no private key is read.

    Returns ``{"pki_dir", "master", "accepted": {id: fingerprint},
    "pending", "rejected", "denied"}``.

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_fleet.master_keys
    """
    pki_dir = __salt__["config.get"]("kiosk_fleet:master_pki_dir", DEFAULT_MASTER_PKI_DIR)
    if not isinstance(pki_dir, str) or not os.path.isabs(pki_dir):
        raise CommandExecutionError(f"kiosk_fleet:master_pki_dir: {pki_dir!r} is not an absolute path")
    if not os.path.isdir(pki_dir):
        raise CommandExecutionError(f"kiosk_fleet:master_pki_dir: {pki_dir} is not a directory (no salt-master here?)")
    out = {"pki_dir": pki_dir, "master": _fingerprint(os.path.join(pki_dir, fleet_keys.MASTER_PUB))}
    for state, folder in KEY_FOLDERS.items():
        where = os.path.join(pki_dir, folder)
        names = sorted(os.listdir(where)) if os.path.isdir(where) else []
        out[state] = {name: _fingerprint(os.path.join(where, name)) for name in names
                      if not name.startswith(".") and os.path.isfile(os.path.join(where, name))}
    return out


def minion_config():
    """
    On a kiosk: its minion settings as a multi-master minion of every Pi of
    its campus (``fleet_keys.kiosk_minion_config`` on this kiosk's pillar
    slice), with ``kiosk_fleet:minion_overrides`` applied. What the state
    ``kiosk_fleet.kiosk_minion`` writes to ``minion.d/kiosk_fleet.conf``.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_fleet.minion_config
    """
    overrides = __salt__["config.get"]("kiosk_fleet:minion_overrides", {}) or {}
    if not isinstance(overrides, dict):
        raise CommandExecutionError("kiosk_fleet:minion_overrides: expected a mapping of settings")
    try:
        return fleet_keys.kiosk_minion_config(inventory(), __opts__["id"], **{str(k): v for k, v in overrides.items()})
    except fleet_keys.CampusKeyError as exc:
        raise CommandExecutionError(str(exc)) from exc
