"""
Shared glue for the pack's runners: how a runner reports failure.

Jenkins and operators read ``salt-run ... --out=json``: every runner returns a
dict with ``result`` (bool), ``retcode`` and, on failure, ``error``.

Two channels carry the exit code, because Salt reads both: salt 3007's
``salt-run`` exits with the ``retcode`` key of the returned dict
(salt/cli/run.py), while the job's ``success`` flag (salt-api, reactors,
orchestrate) comes from ``__context__["retcode"]`` (salt/client/mixins.py).
"""

import importlib.util
import math

# Installed pack first, else the synced _utils folder; no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields


def finish(context, ret):
    """Set the runner's exit code from ``ret["result"]`` and return ``ret``."""
    retcode = 0 if ret.get("result", False) else 1
    # always set: the reactor reuses one runner context across jobs, so a
    # failure must not stick to the next, successful, job
    context["retcode"] = retcode
    ret["retcode"] = retcode
    return ret


def number(value, field, low, high):
    """``value`` as an int within ``low..high``; :class:`fleet_fields.FleetError` naming ``field`` otherwise."""
    # a float must be whole (1.5 is no timeout of 1), inf/nan are no numbers,
    # and booleans (YAML's yes/no) are refused rather than read as 1/0
    if isinstance(value, bool) or (isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
        raise fleet_fields.FleetError(f"{field}: {value!r} is not a whole number", field=field)
    try:
        checked = int(value)
    except (TypeError, ValueError, OverflowError):
        raise fleet_fields.FleetError(f"{field}: {fleet_fields.shown(value)} is not a whole number", field=field) from None
    if not low <= checked <= high:
        raise fleet_fields.FleetError(f"{field}: {fleet_fields.shown(value)} is outside {low}-{high}", field=field)
    return checked


def fail(context, error, **data):
    """A failed runner answer: ``{"result": False, "error": ..., **data}``, retcode 1."""
    ret = {"result": False, "error": str(error)}
    ret.update(data)
    return finish(context, ret)


def presence(selection, answered):
    """
    Compare the kiosks asked for (``{campus: [ids]}``) with the answers of a
    ``test.ping`` (``{minion: True}``); return ``{campus: {"up": [...], "down": [...]}}``.
    """
    report = {}
    for campus, kiosk_ids in selection.items():
        up = sorted(k for k in kiosk_ids if answered.get(k) is True)
        report[campus] = {"up": up, "down": sorted(set(kiosk_ids) - set(up))}
    return report

