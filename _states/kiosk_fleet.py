"""
Multi-master kiosks as states: the campus master key on a Pi, the Pi
master's autosign file, the kiosk's minion settings. The decisions live in
``fleet_keys``; these functions read, compare, report and write.

.. code-block:: yaml

    # on a Pi (states/kiosk_fleet/pi_master.sls)
    campus_key:
      kiosk_fleet.master_key:
        - name: /etc/salt/pki/master
        - sealed: {{ pillar['kiosk_fleet_master_key']['sealed'] }}
        - public: {{ pillar['kiosk_fleet_master_key']['public'] }}
    autosign:
      kiosk_fleet.autosign:
        - name: /etc/salt/autosign.conf

    # on a kiosk or a Pi minion (states/kiosk_fleet/master_trust.sls)
    campus_master_pinned:
      kiosk_fleet.master_pub:
        - name: /etc/salt/pki/minion/minion_master.pub
        - public: {{ pillar['kiosk_fleet_master_key']['public'] }}

    # on a kiosk (states/kiosk_fleet/kiosk_minion.sls)
    minion_settings:
      kiosk_fleet.minion_config:
        - name: /etc/salt/minion.d/kiosk_fleet.conf

No private key appears in a return, a comment or a log line: changes show
key fingerprints only.
"""

import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_keys, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory
    import fleet_keys
    import fleet_state

from salt.exceptions import CommandExecutionError

__virtualname__ = "kiosk_fleet"

MINION_CONFIG_HEADER = ("# The multi-master settings of this kiosk, rendered from the inventory by the state\n"
                        "# kiosk_fleet.kiosk_minion (fleet_keys.kiosk_minion_config). Edits here are overwritten.\n")


def __virtual__():
    if "kiosk_fleet.inventory" in __salt__:
        return __virtualname__
    return (False, "kiosk_fleet state: the kiosk_fleet execution module is not available on this minion")


def _ret(name):
    return {"name": name, "result": False, "changes": {}, "comment": ""}


def _absolute(ret, name):
    if not isinstance(name, str) or not os.path.isabs(name):
        ret["comment"] = f"name: {name!r} is not an absolute path"
        return False
    return True


def master_key(name, sealed=None, public=None):
    """
    The campus master key pair in the Pi master's pki_dir ``name``. The
    private key arrives sealed to this minion's own key (``sealed``, made by
    ``salt-run kiosk_fleet.campus_keys`` on the top master from the key it
    accepted for this Pi); it is opened with ``<pki_dir>/minion.pem`` (on a Pi
    also the syndic's key) and must match ``public``, else nothing is written.
    The old pair is kept as ``master.pem.previous`` / ``master.pub.previous``.
    Changes show fingerprints only.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 state.apply kiosk_fleet.pi_master test=True
    """
    ret = _ret(name)
    if not _absolute(ret, name):
        return ret
    for field, value in (("sealed", sealed), ("public", public)):
        if not isinstance(value, str) or not value.strip():
            ret["comment"] = (f"{field}: missing (pillar kiosk_fleet_master_key:{field}, "
                              "sent by salt-run kiosk_fleet.campus_keys); nothing written")
            return ret
    own_path = os.path.join(__opts__["pki_dir"], "minion.pem")
    try:
        own = fleet_keys.read_bytes(own_path, "pki_dir")
        if own is None:
            raise CommandExecutionError(f"this minion's key {own_path} is missing")
        private = fleet_keys.unseal(sealed, own)
        if not fleet_keys.same_public_key(fleet_keys.public_key_of(private, field="sealed"), public, field="public"):
            raise fleet_keys.CampusKeyError("public: does not match the sealed private key")
        new_fp = fleet_keys.fingerprint(public)
        old_pem = fleet_keys.read_bytes(os.path.join(name, fleet_keys.MASTER_PEM), "name")
        old_pub = fleet_keys.read_bytes(os.path.join(name, fleet_keys.MASTER_PUB), "name")
    except (fleet_keys.CampusKeyError, CommandExecutionError) as exc:  # no message holds key material
        ret["comment"] = f"{exc}; nothing written"
        return ret
    if old_pem == private and old_pub == public.encode():
        ret.update(result=True, comment=f"the campus key {new_fp} is in place in {name}")
        return ret
    ret["changes"] = {"fingerprint": {"old": fleet_keys.shown_fingerprint(old_pub), "new": new_fp}}
    if __opts__["test"]:
        ret.update(result=None, comment=f"would install the campus key {new_fp} in {name}")
        return ret
    try:
        fleet_keys.write_master_key_pair(name, private, public)
    except fleet_keys.CampusKeyError as exc:
        ret.update(changes={}, comment=str(exc))
        return ret
    kept = " (the previous pair kept as master.pem.previous / master.pub.previous)" if old_pub is not None else ""
    ret.update(result=True, comment=f"installed the campus key {new_fp} in {name}{kept}")
    return ret


def _pem_text(raw):
    """A PEM as Salt compares a master's key with the pinned one (salt.crypt.clean_key): stripped, LF line ends."""
    return "\n".join(raw.decode("ascii", "replace").strip().splitlines())


def master_pub(name, public=None):
    """
    The master public key this minion accepts (``name``: its
    ``<pki_dir>/minion_master.pub``) set to the campus key ``public``.
    A minion compares every master's key with this file at each sign-in and
    refuses a master whose key differs (``salt/crypt.py`` ``verify_master``),
    so the kiosks of a campus (and each Pi's own minion) must hold the campus
    key before their Pi masters switch to it. No restart: the file is read at
    the next sign-in. Changes show fingerprints only.

    CLI Example:

    .. code-block:: bash

        salt -L kiosk-riverside-01,kiosk-riverside-02 state.apply kiosk_fleet.master_trust test=True
    """
    ret = _ret(name)
    if not _absolute(ret, name):
        return ret
    if not isinstance(public, str) or not public.strip():
        ret["comment"] = "public: missing (pillar kiosk_fleet_master_key:public); nothing written"
        return ret
    try:
        new_fp = fleet_keys.fingerprint(public)
        old = fleet_keys.read_bytes(name, "name")
    except fleet_keys.CampusKeyError as exc:
        ret["comment"] = f"{exc}; nothing written"
        return ret
    text = public if public.endswith("\n") else public + "\n"
    if old is not None and _pem_text(old) == _pem_text(text.encode()):
        ret.update(result=True, comment=f"the master key {new_fp} is already the one this minion accepts")
        return ret
    _write(ret, name, old, text, f"the accepted master key {new_fp}")
    if ret["result"] is not False:
        ret["changes"] = {"fingerprint": {"old": fleet_keys.shown_fingerprint(old), "new": new_fp}}
    return ret


def _write(ret, name, old, text, what):
    """Write ``text`` to ``name`` unless it holds it already (``old``: its bytes); ``test=True`` only says so."""
    if old == text.encode():
        ret.update(result=True, comment=f"{what} {name} is up to date")
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"would write {what} {name}")
        return ret
    try:
        os.makedirs(os.path.dirname(name), exist_ok=True)
        fleet_state.write_atomic(name, text, 0o644)
    except (OSError, fleet_state.StateError) as exc:
        ret.update(changes={}, comment=f"cannot write {name}: {getattr(exc, 'strerror', None) or exc}")
        return ret
    ret.update(result=True, comment=f"wrote {what} {name}")
    return ret


def _listed(text):
    """The ids of an autosign file's text (comments skipped, escaped dots read back)."""
    return {line.strip().replace("\\.", ".") for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")}


def autosign(name):
    """
    The Pi master's ``autosign_file`` ``name``: the ids of this Pi's campus
    (its Pis and kiosks), from the inventory in this Pi's pillar, so its
    master accepts the campus's kiosks on their first sign-in and nothing
    else. An id dropped from the inventory is dropped here, but a key
    already accepted stays accepted (``salt-key -d`` removes it).

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 state.single kiosk_fleet.autosign /etc/salt/autosign.conf test=True
    """
    ret = _ret(name)
    if not _absolute(ret, name):
        return ret
    try:
        inventory = __salt__["kiosk_fleet.inventory"]()
        minion_id = __opts__["id"]
        campus = fleet_inventory.campus_of(inventory, minion_id)
        if minion_id not in inventory["campuses"][campus]["pis"]:
            raise fleet_inventory.InventoryError(f"kiosk: {minion_id} is a kiosk, not a Pi: no master here")
        ids = fleet_keys.autosign_ids(inventory, campus)
        text = fleet_keys.autosign_text(ids)
        old = fleet_keys.read_bytes(name, "name")
    except (CommandExecutionError, fleet_inventory.InventoryError, fleet_keys.CampusKeyError) as exc:
        ret["comment"] = str(exc)
        return ret
    before = _listed(old.decode("utf-8", "replace")) if old is not None else set()
    added, removed = sorted(set(ids) - before), sorted(before - set(ids))
    _write(ret, name, old, text, f"the autosign file of campus {campus} ({len(ids)} ids)")
    if ret["result"] is not False and old != text.encode():
        ret["changes"] = {"added": added, "removed": removed}
    return ret


def minion_config(name):
    """
    The kiosk's multi-master settings in the minion config file ``name``
    (YAML, e.g. ``/etc/salt/minion.d/kiosk_fleet.conf``): every Pi of its
    campus as a master, and the settings of ``fleet_keys.kiosk_minion_config``
    (``kiosk_fleet.minion_config`` shows them). Takes effect at the next
    minion start (the state ``kiosk_fleet.kiosk_minion`` restarts it).

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 state.single kiosk_fleet.minion_config /etc/salt/minion.d/kiosk_fleet.conf test=True
    """
    import yaml  # Salt's own dependency

    ret = _ret(name)
    if not _absolute(ret, name):
        return ret
    try:
        config = __salt__["kiosk_fleet.minion_config"]()
        old = fleet_keys.read_bytes(name, "name")
    except (CommandExecutionError, fleet_keys.CampusKeyError) as exc:
        ret["comment"] = str(exc)
        return ret
    text = MINION_CONFIG_HEADER + yaml.safe_dump(config, default_flow_style=False, sort_keys=True)
    try:
        before = yaml.safe_load(old) if old is not None else {}
    except yaml.YAMLError:
        before = {}
    before = before if isinstance(before, dict) else {}
    _write(ret, name, old, text, "the multi-master settings")
    if ret["result"] is not False and old != text.encode():
        ret["changes"] = {key: {"old": before.get(key), "new": value} for key, value in sorted(config.items())
                          if before.get(key) != value} or {"file": {"old": "other text", "new": name}}
    return ret
