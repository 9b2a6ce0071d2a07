"""
Collection of the campuses' outboxes on the top master: ``collect`` (every
minute from the master schedule, and at once after a reconnect) and ``day``
(what ``kiosk_power.status`` shows). Contract: docs/outbox.md.

Glue only: the cursors, the dedup by key across a campus's Pis and the
alert delivery record live in ``fleet_outbox.Collected``
(``<cachedir>/kiosk_outbox/collected.db``); the decisions on a Pi's answer,
the alert payload and the metric families in ``fleet_outbox``.

.. code-block:: yaml

    # /etc/salt/master.d/kiosk-fleet-top.conf
    kiosk_outbox:
      textfile_dir: /var/lib/prometheus/node-exporter   # kiosk_campus.prom; default: none
      limit: 5000        # entries per Pi per round (1-5000), default 5000
      budget_s: 40       # rounds of one collect stop after this many seconds, default 40
"""

import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_inventory, fleet_lock, fleet_metrics, fleet_outbox
    from saltext_kiosk_fleet.utils import fleet_runner
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_inventory
    import fleet_lock
    import fleet_metrics
    import fleet_outbox
    import fleet_runner

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_outbox"

CONFIG_KEY = "kiosk_outbox"
STATE_DIR = "kiosk_outbox"
STORE_FILE = "collected.db"
LOCK_FILE = "collect.lock"
TEXTFILE = "kiosk_campus.prom"
DEFAULT_LIMIT = 5000  # entries per Pi per round: each round is a job round trip through the syndics
DEFAULT_BUDGET_S = 40
LOCK_WAIT_S = 120
RETRY_ALERTS_S = 86400  # an alert the webhook refused is tried again at each collect for a day
SHOWN_REFUSED = 5
ERRORS = (fleet_fields.FleetError,)


def __virtual__():
    return __virtualname__


def _dir():
    path = os.path.join(__opts__["cachedir"], STATE_DIR)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise fleet_runner.RunnerError(f"cachedir: cannot create {path} ({exc.strerror})", field="cachedir") from None
    return path


def _store():
    return fleet_outbox.Collected(os.path.join(_dir(), STORE_FILE))


def _settings(limit, budget_s, timeout):
    conf = fleet_runner.config(__opts__, CONFIG_KEY)
    limit = conf.get("limit", DEFAULT_LIMIT) if limit is None else limit
    budget_s = conf.get("budget_s", DEFAULT_BUDGET_S) if budget_s is None else budget_s
    return {
        "limit": fleet_runner.number(limit, "limit", 1, fleet_outbox.MAX_LIMIT),
        "budget_s": fleet_runner.number(budget_s, "budget_s", 0, 3600),
        "timeout": fleet_runner.number(timeout, "timeout", 1, 600),
        "textfile_dir": conf.get("textfile_dir"),
    }


def _call(targets, fun, timeout, kwarg):
    """ONE job to ``targets``, sorted by ``fleet_runner.call``: answered, failed, silent, conflicting."""
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        return fleet_runner.call(client, targets, fun, kwarg=kwarg, timeout=timeout)


def _pis(inventory, campus):
    """``{pi: campus}`` of the campuses asked for (all by default)."""
    names = fleet_inventory.names(campus, "campus") or sorted(inventory["campuses"])
    unknown = [c for c in names if c not in inventory["campuses"]]
    if unknown:
        raise fleet_inventory.InventoryError(f"campus: unknown campus {', '.join(unknown)}"
                                             f" (known: {', '.join(sorted(inventory['campuses']))})")
    return {pi: c for c in names for pi in fleet_inventory.pis_of(inventory, c)}


def _take(store, pi, campus, answer, report):
    """Merge one Pi's answer; its new entries (also added to the Pi's line of ``report``)."""
    line = report["campuses"][campus]["pis"].setdefault(pi, {"new": 0, "duplicates": 0, "refused": 0})
    try:
        entries, cursor, outbox, more, info = fleet_outbox.check_answer(answer, pi, campus)
    except fleet_outbox.OutboxError as exc:
        report["failed"][pi] = str(exc)
        store.count("kiosk_campus_collect_failed_total", campus=campus, pi=pi)
        return [], False
    refused = []
    new = store.merge(campus, pi, entries, cursor=cursor, outbox=outbox, info=info, refused=refused)
    line["new"] += len(new)
    line["duplicates"] += len(entries) - len(new) - len(refused)
    line["refused"] += len(refused)
    if refused:
        line.setdefault("refusals", []).extend(refused[: SHOWN_REFUSED - len(line.get("refusals", []))])
        log.warning("kiosk_outbox: %s: %d entries refused, first: %s", pi, len(refused), refused[0])
    line.update(cursor=cursor, more=more, serial=info.get("serial"), clock=info.get("clock"))
    if answer.get("reset"):
        line["reset"] = True
        log.warning("kiosk_outbox: %s answered from a new outbox: collected again from 0", pi)
    return new, more


def _rounds(store, pis, settings, report):
    """One job to every Pi (each with its own cursor), then again to those with more, within the budget."""
    started = time.monotonic()
    pending, first, new = sorted(pis), True, []
    while pending:
        report["rounds"] += 1
        cursors = store.cursors([(pis[p], p) for p in pending])
        got = _call(pending, "kiosk_outbox.entries", settings["timeout"],
                    {"cursors": cursors, "limit": settings["limit"]})
        more = []
        for pi in sorted(got.answered):
            taken, has_more = _take(store, pi, pis[pi], got.answered[pi], report)
            new += taken
            if has_more:
                more.append(pi)
        for pi, reason in got.failed.items():
            report["failed"][pi] = reason
            store.count("kiosk_campus_collect_failed_total", campus=pis[pi], pi=pi)
        for pi in got.conflicting:
            report["failed"][pi] = "answered twice, differently (one return was forged): nothing of it taken"
        if first:  # a Pi silent later, while paging, was reached: it is collected on at the next run
            report["silent"] = sorted(set(got.silent) - set(got.conflicting))
            for pi in report["silent"]:
                store.count("kiosk_campus_collect_silent_total", campus=pis[pi], pi=pi)
        first = False
        if more and time.monotonic() - started >= settings["budget_s"]:
            report["more"] = more  # the rest comes at the next collect
            break
        pending = more
    return new


def _post(store, alerts, report):
    """Post each alert once (``kiosk_alert.post``); one the webhook refused stays to post at the next collect."""
    done = set()
    for entry in alerts:
        key = entry["key"]
        if key in done:
            continue
        done.add(key)
        campus = key.split("/", 1)[0]
        try:
            payload = fleet_outbox.alert_payload(entry, campus)
        except fleet_outbox.OutboxError as exc:
            store.mark_posted(key)  # never postable: not tried again
            report["alerts"]["errors"].append(f"{key}: {exc}")
            continue
        answer = __salt__["kiosk_alert.post"](payload)
        if isinstance(answer, dict) and answer.get("result"):
            store.mark_posted(key)
            store.count("kiosk_campus_alerts_posted_total", campus=campus)
            report["alerts"]["posted"].append(key)
        else:
            store.count("kiosk_campus_alert_post_failures_total", campus=campus)
            error = answer.get("error") if isinstance(answer, dict) else answer
            report["alerts"]["errors"].append(f"{key}: {error}")


def _metrics(store, directory):
    """kiosk_campus.prom for node_exporter; a write problem is logged, never a failed collect."""
    if not directory:
        return
    try:
        families = fleet_outbox.metrics(store.counters(), store.day(), store.unposted(RETRY_ALERTS_S))
        fleet_metrics.write_textfile(directory, TEXTFILE, fleet_metrics.render(families),
                                     field=f"{CONFIG_KEY}.textfile_dir")
    except (OSError, ValueError) as exc:
        log.warning("kiosk_outbox: metrics not written (%s): %s", directory, exc)


def collect(campus=None, timeout=20, limit=None, budget_s=None):
    """
    Collect the campuses' outboxes: ONE ``kiosk_outbox.entries`` job to
    every Pi of the campuses (all by default), each Pi taking its own
    cursor from the job's ``cursors`` map (sending it acknowledges what was
    collected before), then again to the Pis that have more, until
    ``budget_s`` is spent. Entries are stored once per key across a
    campus's Pis; each new alert is posted once (``kiosk_alert.post``, with
    ``idempotency_key``); an alert the webhook refused is posted at a later
    collect. ``timeout``: how long the first round waits for the Pis (a
    silent one is waited for that long). An unsynchronised clock record (``clock``, ``synced: False``:
    one per Pi per day) is posted the same way, as a ``pi_clock`` warning.
    Writes ``kiosk_campus.prom`` when ``kiosk_outbox:textfile_dir``
    is set.

    A silent Pi (a WAN cut, the Pi down) is normal: its entries wait in its
    outbox and come at the first collect after it answers again. It is named
    in ``silent`` and does NOT fail the run. Exit code 1 when a Pi answered
    with an error or an invalid or forged answer, or an alert could not be
    posted.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_outbox.collect
        salt-run kiosk_outbox.collect campus=riverside timeout=10 --out=json
    """
    try:
        settings = _settings(limit, budget_s, timeout)
        inventory = fleet_inventory.master_inventory(__opts__)
        pis = _pis(inventory, campus)
        store = _store()
        busy = fleet_runner.RunnerError(f"collect: another collect held {LOCK_FILE} for {LOCK_WAIT_S} s")
        report = {"result": True, "campuses": {c: {"pis": {}} for c in sorted(set(pis.values()))},
                  "silent": [], "failed": {}, "rounds": 0, "new": {},
                  "alerts": {"posted": [], "errors": []}}
        with fleet_lock.exclusive(os.path.join(_dir(), LOCK_FILE), LOCK_WAIT_S, busy):
            retry = store.unposted(RETRY_ALERTS_S)
            new = _rounds(store, pis, settings, report)
            for entry in new:
                report["new"][entry["kind"]] = report["new"].get(entry["kind"], 0) + 1
            _post(store, retry + [e for e in new if fleet_outbox.postable(e["kind"], e["data"])], report)
            store.prune()
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    except OSError as exc:  # the lock file: the store's own errors are OutboxErrors
        return fleet_runner.fail(__context__, f"cachedir: {exc}")
    _metrics(store, settings["textfile_dir"])
    problems = [f"{pi}: {why}" for pi, why in sorted(report["failed"].items())] + report["alerts"]["errors"]
    if problems:
        report.update(result=False, error="; ".join(problems))
    return fleet_runner.finish(__context__, report)


def day(campus=None, since=None):
    """
    What the campuses did, as collected: per campus its Pis (cursor, last
    collection, calendar serial, clock, leader), actions, verification
    results, alerts (posted or not), clock records and each kiosk's last
    observation, since ``since`` (ISO 8601; default the last 24 hours).
    Reads the collected store only; ``collect`` fills it.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_outbox.day
        salt-run kiosk_outbox.day campus=riverside since=2027-02-05T00:00:00+08:00 --out=json
    """
    try:
        names = fleet_inventory.names(campus, "campus")
        if len(names) > 1:
            raise fleet_runner.RunnerError("campus: one campus, or none for all")
        shown = _store().day(names[0] if names else None, since)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "campuses": shown})
