"""
Power runners on the top master: wake kiosks through every Pi of their
campus, shut them down through their own minion.

Jenkins-friendly: every runner returns ``result``/``retcode``/``error`` and
exits non-zero when any kiosk was not reached.
"""

import logging

try:  # classic install: Salt puts the _utils folder on sys.path while loading
    import fleet_inventory
    import fleet_power
    import fleet_runner
    import fleet_wol
except ImportError:  # pip-installed extension
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_power, fleet_runner, fleet_wol

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_power"


def __virtual__():
    return __virtualname__


def _selection(kiosks, campus):
    inventory = fleet_inventory.from_pillar(__salt__["pillar.show_pillar"]())
    return inventory, fleet_inventory.select_kiosks(inventory, kiosks=kiosks, campus=campus)


def wake(kiosks=None, campus=None, repeat=3, timeout=30):
    """
    Wake kiosks with magic packets sent from every Pi of their campus.

    One job goes to all Pis of the campuses concerned (through the syndics);
    each Pi sends to its own campus's kiosks on their VLANs. Succeeds when at
    least one Pi sent to every kiosk; names the kiosks no Pi reached and the
    Pis that did not answer. Exit code 1 when any kiosk got no packet.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.wake campus=riverside
        salt-run kiosk_power.wake kiosks=kiosk-riverside-10,kiosk-riverside-11 --out=json
    """
    try:
        inventory, selection = _selection(kiosks, campus)
    except fleet_inventory.InventoryError as exc:
        return fleet_runner.fail(__context__, exc)
    campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in selection}
    pis = sorted({p for ids in campus_pis.values() for p in ids})
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    returns = __salt__["salt.execute"](
        pis,
        "kiosk_wol.wake_kiosks",
        tgt_type="list",
        kwarg={"kiosks": kiosk_ids, "repeat": int(repeat)},
        timeout=int(timeout),
    ) or {}
    report = fleet_wol.merge_wake_returns(selection, returns, campus_pis)
    if report["unreached"]:
        report["error"] = (
            f"no Pi sent a magic packet to {', '.join(report['unreached'])}"
            f" (Pis silent: {', '.join(report['pis_silent']) or 'none'})"
        )
    return fleet_runner.finish(__context__, report)


def shutdown(kiosks=None, campus=None, delay_s=60, message="This kiosk is shutting down.", timeout=30):
    """
    Shut kiosks down through their own minion (``kiosk_power.shutdown``).

    Exit code 1 when any kiosk did not accept (not answering, or its
    shutdown command failed); those are named.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.shutdown campus=hillside delay_s=300 message='Closing for the night'
        salt-run kiosk_power.shutdown kiosks=kiosk-riverside-01 delay_s=0
    """
    try:
        delay_s, message = fleet_power.check_request(delay_s, message)
        _, selection = _selection(kiosks, campus)
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return fleet_runner.fail(__context__, exc)
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    returns = __salt__["salt.execute"](
        kiosk_ids,
        "kiosk_power.shutdown",
        tgt_type="list",
        kwarg={"delay_s": delay_s, "message": message},
        timeout=int(timeout),
    ) or {}
    accepted = sorted(k for k, r in returns.items() if isinstance(r, dict) and r.get("action") == "shutdown")
    failed = {k: str(r) for k, r in returns.items() if k not in accepted}
    silent = sorted(set(kiosk_ids) - set(returns))
    ret = {
        "result": not failed and not silent,
        "accepted": accepted,
        "failed": failed,
        "silent": silent,
        "delay_s": delay_s,
    }
    if not ret["result"]:
        ret["error"] = f"not shut down: {', '.join(sorted(set(failed) | set(silent)))}"
    return fleet_runner.finish(__context__, ret)
