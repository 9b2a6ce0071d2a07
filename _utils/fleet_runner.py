"""
Shared glue for the pack's runners: how a runner reports failure.

Jenkins and operators read ``salt-run ... --out=json``: every runner returns a
dict with ``result`` (bool), ``retcode`` and, on failure, ``error``.

Two channels carry the exit code, because Salt reads both: salt 3007's
``salt-run`` exits with the ``retcode`` key of the returned dict
(salt/cli/run.py), while the job's ``success`` flag (salt-api, reactors,
orchestrate) comes from ``__context__["retcode"]`` (salt/client/mixins.py).
"""


def finish(context, ret):
    """Set the runner's exit code from ``ret["result"]`` and return ``ret``."""
    retcode = 0 if ret.get("result", False) else 1
    # always set: the reactor reuses one runner context across jobs, so a
    # failure must not stick to the next, successful, job
    context["retcode"] = retcode
    ret["retcode"] = retcode
    return ret


def number(value, field, low, high):
    """``value`` as an int within ``low..high``; ValueError naming ``field`` otherwise."""
    try:
        checked = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: {value!r} is not a whole number") from None
    if isinstance(value, bool) or not low <= checked <= high:
        raise ValueError(f"{field}: {value!r} is outside {low}-{high}")
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

