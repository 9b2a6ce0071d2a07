"""
Multi-step kiosk changes from templates, run on kiosks through the syndics.

A template is an SLS in ``states/kiosk_fleet/changes/`` (served by every
master's ``file_roots``); templates compose with ``include``. Parameters
reach the SLS as ``pillar['kiosk_change']``.
"""

import logging

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_change, fleet_inventory, fleet_runner
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_change
    import fleet_inventory
    import fleet_runner

import salt.client

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_change"


def _local_client():
    return salt.client.get_local_client(__opts__["conf_file"])


def __virtual__():
    return __virtualname__


def _available():
    return fleet_change.templates_from_file_list(__salt__["fileserver.file_list"](saltenv="base"))


def templates():
    """
    List the change templates the master serves.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_change.templates
    """
    return fleet_runner.finish(__context__, {"result": True, "templates": _available()})


def apply(template=None, campus=None, kiosks=None, test=False, params=None, timeout=120, presence=True):
    """
    Apply change template ``template`` to kiosks (by campus and/or id) and
    report per kiosk: states changed, would change (``test=True``), failed.
    Exit code 1 when any kiosk failed or did not answer. ``params`` (a dict)
    reaches the template as ``pillar['kiosk_change']``. The campus Pis are
    asked first which kiosks hold a minion connection (``kiosk_scan.presence``):
    the others are off, listed in ``silent`` and ``absent`` without waiting
    out the timeout for them (``presence=False``: send to every kiosk).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_change.templates
        salt-run kiosk_change.apply template=hosts campus=riverside test=True
        salt-run kiosk_change.apply template=hide_desktop_icons kiosks=kiosk-riverside-01,kiosk-riverside-02
        salt-run kiosk_change.apply template=lockdown campus=hillside params='{"user": "kiosk"}'
    """
    try:
        sls = fleet_change.check_template(template, _available())
        params = fleet_change.check_params(params)
        timeout = fleet_runner.number(timeout, "timeout", 1, 3600)
        if not isinstance(test, bool):
            raise fleet_change.ChangeError(f"test: expected True or False, got {test!r}")
        presence = fleet_runner.flag(presence, "presence")
        pillar = fleet_inventory.master_data(__opts__)  # master-only: the whole fleet
        fleet_change.check_pillar(pillar)
        inventory = fleet_inventory.from_pillar(pillar)
        selection = fleet_inventory.select_kiosks(inventory, kiosks=kiosks, campus=campus)
    except ValueError as exc:  # every error of the pack (ChangeError, InventoryError) is a ValueError
        return fleet_runner.fail(__context__, exc)
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    targets, absent = kiosk_ids, []
    if presence:
        campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in selection}
        targets, absent = fleet_runner.split_by_presence(_local_client, campus_pis, selection)
    with _local_client() as client:
        returns = fleet_runner.call(client, targets, "state.apply", [sls],
                                    {"test": test, "pillar": {"kiosk_change": params}}, timeout)
    # silent, conflicting and absent kiosks have no return: report() lists them as silent
    ret = fleet_change.report(kiosk_ids, returns.returns)
    ret.update({"template": template, "sls": sls, "test": test, "absent": absent})
    if not ret["result"]:
        ret["error"] = f"change {template} failed on {', '.join(ret['failed'] + ret['silent'])}"
    return fleet_runner.finish(__context__, ret)
