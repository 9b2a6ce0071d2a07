"""
Power runners on the top master: ``wake`` (magic packets from every Pi of the
campus), ``shutdown`` (through the kiosk's own minion), and the schedules:
``sync_schedules``, ``plan``, ``sweep``, ``verify``, ``hold``/``unhold``,
``status`` (contract: docs/power.md, docs/schedules.md).

The campuses run their own day: each Pi master reconciles its campus against
its signed calendar (``kiosk_calendar``, ``kiosk_campus``). So the top master
takes no per-kiosk power decision in normal operation: ``hold``, ``unhold``
and ``sync_schedules`` publish the affected campuses' calendars at once,
``sweep`` asks the campuses' Pis to reconcile now and reports what they did,
``status`` shows the campuses' day as the outbox collection brought it in.
``plan`` and ``verify`` still look from here, for operators and Jenkins.

Glue only: each run loads the fleet data once, calls the minions (one job per
step, ``fleet_runner.call``; jobs to the Pis one per campus, all at once,
each carrying only that campus's kiosks), hands what they saw to the pure engine
(``fleet_sweep``) and stores the state it returns
(``<cachedir>/kiosk_power/state.json``, ``fleet_state.Store``: locked,
written atomically). Every runner returns ``result``/``retcode``/``error``.
"""

import datetime as _dt
import logging
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_alerts, fleet_calendar, fleet_fields, fleet_http, fleet_inventory
    from saltext_kiosk_fleet.utils import fleet_metrics, fleet_outbox, fleet_power, fleet_runner, fleet_schedule
    from saltext_kiosk_fleet.utils import fleet_restarts, fleet_state, fleet_sweep, fleet_wol
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_alerts
    import fleet_calendar
    import fleet_fields
    import fleet_http
    import fleet_inventory
    import fleet_metrics
    import fleet_outbox
    import fleet_power
    import fleet_restarts
    import fleet_runner
    import fleet_schedule
    import fleet_state
    import fleet_sweep
    import fleet_wol

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_power"

STATE_DIR = fleet_calendar.POWER_DIR  # the calendars are compiled from these files too
SCHEDULES_FILE = fleet_calendar.SCHEDULES_FILE
STATE_FILE = fleet_calendar.POWER_STATE_FILE
METRICS_FILE = "metrics.json"
LOCK_TIMEOUT_S = 300
MISMATCH_TAG = "kiosk/power/mismatch"
RECONCILE = "kiosk_campus.reconcile"  # the Pi minion's function: the Pi master's reconcile, now
PUBLISH = "kiosk_calendar.publish"
COLLECTED = ("kiosk_outbox", "collected.db")  # the outbox collection's store (kiosk_outbox.collect)
ERRORS = (fleet_fields.FleetError,)  # every refusal of the pack: a ValueError naming its field


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- load (once per run), store


def _path(name):
    path = os.path.join(__opts__["cachedir"], STATE_DIR)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return os.path.join(path, name)


def _read_json(name, default):
    return fleet_state.read_json(_path(name), fleet_sweep.SweepError, default)


def _write_json(name, data):
    fleet_state.write_json_atomic(_path(name), data, mode=0o600)


def _store():
    """holds, pending checks, recent sweeps and mismatches; one sweep/verify/hold at a time on this master."""
    return fleet_state.Store(os.path.dirname(_path(STATE_FILE)), STATE_FILE, None, LOCK_TIMEOUT_S,
                             fleet_sweep.SweepError)


def _state(stored):
    try:
        return fleet_sweep.load_state(stored)
    except fleet_sweep.SweepError as exc:
        raise fleet_sweep.SweepError(f"{_path(STATE_FILE)}: {exc}; fix or move it aside") from exc


def _load(schedule=True):
    """
    ``(inventory, schedule, source, data)`` from ONE read of the fleet data
    file. The schedule: the last good synced copy, else the fleet data's
    ``kiosk_fleet_schedules``, else none (every kiosk unmanaged).
    """
    data = fleet_inventory.master_data(__opts__)
    inventory = fleet_inventory.validate(data.get(fleet_inventory.PILLAR_KEY))
    if not schedule:
        return inventory, None, None, data
    schedule, source = fleet_calendar.schedule_in_force(__opts__["cachedir"], data, inventory)
    return inventory, schedule, source, data


def _selected(kiosks, campus):
    """``(inventory, {campus: [kiosk ids]})`` of an operator's selection."""
    inventory = _load(schedule=False)[0]
    return inventory, fleet_inventory.select_kiosks(inventory, kiosks=kiosks, campus=campus)


def _now(at):
    if at is None or at == "":
        return _dt.datetime.now(_dt.timezone.utc)
    return fleet_sweep.parse_instant(at, "at")


def _metrics(action, ret, inventory):
    """
    kiosk_power.prom for node_exporter (master config ``kiosk_power:
    {textfile_dir: ...}``), figures from ``fleet_sweep.metrics``. Written after
    the run; a write problem is logged, never turned into a failed run.
    """
    directory = (__opts__.get("kiosk_power") or {}).get("textfile_dir")
    if not directory:
        return
    try:
        last = _read_json(METRICS_FILE, {})
    except fleet_sweep.SweepError as exc:
        log.warning("kiosk_power: %s; metrics start afresh", exc)
        last = {}
    now = _dt.datetime.now(_dt.timezone.utc).timestamp()
    last, families = fleet_sweep.metrics(last, action, ret, inventory, now)
    try:
        _write_json(METRICS_FILE, last)
        fleet_metrics.write_textfile(directory, "kiosk_power.prom", fleet_metrics.render(families),
                                     field="kiosk_power.textfile_dir")
    except (OSError, ValueError) as exc:
        log.warning("kiosk_power: metrics not written (%s): %s", directory, exc)


# ---------------------------------------------------------------- call minions, act


def _call(targets, fun, timeout, kwarg=None):
    """ONE job to ``targets``, sorted by ``fleet_runner.call``: answered, failed, silent, conflicting."""
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        got = fleet_runner.call(client, targets, fun, kwarg=kwarg, timeout=timeout)
    if got.conflicting:
        log.warning("kiosk_power: %s: conflicting returns from %s (one was forged); counted as silent",
                    fun, ", ".join(got.conflicting))
    return got


def _per_campus(inventory, selection, fun, timeout, **kwarg):
    """
    One ``fun`` job per campus of ``selection`` (``{campus: [kiosk ids]}``),
    to that campus's Pis with that campus's kiosk ids only: a Pi's pillar
    holds its own campus (it refuses other ids), and neither it nor the
    kiosks on its bus may learn another campus's kiosks. All campuses are in
    flight at once, each job on its own LocalClient in its own thread (as
    Salt's netapi does), so a run waits one timeout, not one per campus.
    Returns ``({campus: [pi ids]}, the jobs' Returns merged)``: the Pis of
    two campuses are disjoint (the inventory refuses an id used twice).
    """
    campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in selection}
    jobs = {c: dict(kwarg, kiosks=sorted(ids)) for c, ids in selection.items() if ids and campus_pis[c]}
    parts = fleet_runner.per_campus(lambda targets, fun_, kw: _call(targets, fun_, timeout, kw),
                                    {c: (campus_pis[c], fun, jobs[c]) for c in jobs})
    return campus_pis, fleet_runner.merge([parts[c] for c in sorted(parts)])


def _observe(inventory, selection, timeout):
    """
    One ``kiosk_scan.scan`` job per campus in ``selection`` (that campus's
    Pis, its kiosks; all at once: ``_per_campus``), and no job to the
    kiosks: each Pi's answer says per kiosk whether its minion is connected
    to that Pi's master (its kernel's TCP table), so a kiosk that is off
    costs no timeout. Merged by ``fleet_sweep.observed_states`` (the Pis'
    probe decides; presence only tells degraded from off).
    """
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    if not kiosk_ids:
        return {}, {"answered": [], "silent": []}
    campus_pis, scans = _per_campus(inventory, selection, "kiosk_scan.scan", timeout)
    presence = fleet_sweep.scan_presence(selection, scans.answered, campus_pis)
    pis = sorted({p for c, ids in selection.items() if ids for p in campus_pis[c]})
    report = fleet_sweep.pis_report(pis, scans.answered, scans.failed, scans.conflicting)
    return fleet_sweep.observed_states(selection, scans.answered, campus_pis, presence), report


def _wake(inventory, selection, repeat, timeout):
    """One ``kiosk_wol.wake_kiosks`` job per campus (its Pis, its kiosks; all at once: ``_per_campus``)."""
    campus_pis, sent = _per_campus(inventory, selection, "kiosk_wol.wake_kiosks", timeout, repeat=repeat)
    report = fleet_wol.merge_wake_returns(selection, sent.returns, campus_pis)
    if report["unreached"]:
        report["error"] = (
            f"no Pi sent a magic packet to {', '.join(report['unreached'])}"
            f" (Pis silent: {', '.join(report['pis_silent']) or 'none'})"
        )
    return fleet_runner.finish(__context__, report)


def _shutdown(selection, delay_s, message, timeout):
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    got = _call(kiosk_ids, "kiosk_power.shutdown", timeout, kwarg={"delay_s": delay_s, "message": message})
    return fleet_runner.finish(__context__, dict(fleet_power.shutdown_report(got.answered, got.failed, got.silent),
                                                 delay_s=delay_s))


def _alert(mismatches):
    """
    Post one alert per mismatch (``fleet_alerts.power_mismatch`` through
    ``kiosk_alert.post``), then fire ``kiosk/power/mismatch`` for listeners
    (informational: a kiosk can fire the same tag, so nothing posts from it).
    Returns (kiosks whose alert was posted, errors, kiosks whose event was fired).
    """
    posted, errors, fired = [], [], []
    for item in mismatches:
        try:
            answer = __salt__["kiosk_alert.post"](fleet_alerts.power_mismatch(item))
        except fleet_alerts.AlertError as exc:
            answer = {"result": False, "error": str(exc)}
        if answer.get("result"):
            posted.append(item["kiosk"])
        else:
            errors.append(f"{item['kiosk']}: {answer.get('error')}")
        __salt__["event.send"](MISMATCH_TAG, dict(item))  # event.send stamps the dict it gets
        fired.append(item["kiosk"])
    return posted, errors, fired


def _publish(campuses):
    """
    Send the calendars of ``campuses`` now (``kiosk_calendar.publish``, this
    master's runner loader): ``{"result", "campuses": {campus: {serial,
    current, error?}}, "error"?}``. A failure is reported, never raised: the
    change is stored and the master schedule publishes every minute.
    """
    if not campuses:
        return None
    try:
        answer = __salt__[PUBLISH](campus=",".join(sorted(campuses)))
    except (KeyError, *ERRORS) as exc:  # kiosk_calendar not loaded (pack half installed)
        return {"result": False, "error": f"{PUBLISH}: {exc}"}
    shown = {"result": bool(answer.get("result")), "campuses": {
        c: {k: r.get(k) for k in ("serial", "changed", "current", "error") if k in r}
        for c, r in (answer.get("campuses") or {}).items()}}
    if answer.get("error"):
        shown["error"] = answer["error"]
    return shown


def _day(campus):
    """The campuses' day as the outbox collection brought it in (``fleet_outbox.Collected.day``), or None."""
    path = os.path.join(__opts__["cachedir"], *COLLECTED)
    if not os.path.exists(path):
        return None
    try:
        return fleet_outbox.Collected(path).day(campus=campus)
    except (ValueError, OSError) as exc:  # a damaged collection must not hide the rest of the status
        return {"error": f"{path}: {exc}"}


def _unexpected_restarts(campus):
    """``{kiosk: unexpected restarts recorded}`` (``kiosk_restarts.boot``), ``{}`` before the first boot recorded."""
    try:
        path = fleet_restarts.store_path(__opts__["cachedir"])
    except ValueError as exc:
        return {"error": str(exc)}
    if not os.path.exists(path):
        return {}
    try:
        return {row["kiosk"]: row["unexpected"] for row in fleet_restarts.Restarts(path).totals(campus=campus)}
    except (ValueError, OSError) as exc:  # a damaged record must not hide the rest of the status
        return {"error": f"{path}: {exc}"}


# ---------------------------------------------------------------- runners


def wake(kiosks=None, campus=None, repeat=3, timeout=30):
    """
    Wake kiosks with magic packets sent from every Pi of their campus.

    One job per campus concerned, all at once (through the syndics), to its
    Pis with its kiosks only; each Pi sends to its own campus's kiosks on
    their VLANs. Succeeds when at
    least one Pi sent to every kiosk; names the kiosks no Pi reached and the
    Pis that did not answer. Exit code 1 when any kiosk got no packet.
    The kiosks a Pi sent to are recorded in ``kiosk_restarts``'s store
    (``recorded``), so the boot the wake causes is no unexpected restart; a
    record that fails is told in ``record_error`` and never fails the wake.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.wake campus=riverside
        salt-run kiosk_power.wake campus=riverside,hillside timeout=60
        salt-run kiosk_power.wake kiosks=kiosk-riverside-10,kiosk-riverside-11 --out=json
    """
    try:
        repeat = fleet_runner.number(repeat, "repeat", 1, 20)
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        inventory, selection = _selected(kiosks, campus)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    # stamped when the job leaves: a kiosk may boot on the first Pi's packet while a silent Pi holds the job
    sent_at = _dt.datetime.now(_dt.timezone.utc).timestamp()
    return _record_wakes(_wake(inventory, selection, repeat, timeout), sent_at)


def _record_wakes(ret, sent_at):
    """
    Record the wake of every kiosk a Pi sent to in the restarts store, so
    ``kiosk_restarts.boot`` counts the boot it causes as expected. A failure
    is logged and told (``recorded: False``, ``record_error``), never a failed
    wake: waking kiosks matters more than counting restarts.
    """
    try:
        woken = fleet_restarts.sent_kiosks(ret)
        if woken:
            store = fleet_restarts.Restarts(fleet_restarts.store_path(__opts__["cachedir"]))
            store.record_wakes(woken, sent_at, source="kiosk_power.wake")
    except (*ERRORS, OSError) as exc:
        log.warning("kiosk_power: wake of %d kiosk(s) not recorded for kiosk_restarts: %s",
                    len(ret.get("kiosks") or {}), exc)
        return dict(ret, recorded=False, record_error=str(exc))
    return dict(ret, recorded=True)


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
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        inventory, selection = _selected(kiosks, campus)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    return _shutdown(selection, delay_s, message, timeout)


def sync_schedules(url=None, timeout=10):
    """
    Fetch the schedules from the web platform (HTTP GET, JSON: the schedule
    itself or ``{"kiosk_fleet_schedules": ...}``), validate them against the
    inventory and keep them as the last good copy (in force over pillar).
    When the platform is down, answers non-2xx (redirects are not
    followed), sends invalid JSON or an invalid schedule, the runner fails
    (exit code 1) and the last good copy stays in force. Reports what
    changed, by campus.

    Without ``url=`` (what the master schedule and Jenkins do) the platform
    is ``kiosk_power:platform_url`` in the master config, and
    ``kiosk_power:platform_token`` (optional) is sent as ``Authorization:
    Bearer``. Returns, errors, logs and the stored copy show the URL as
    ``scheme://host[:port]`` only: its path and query may hold a token too.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.sync_schedules
        salt-run kiosk_power.sync_schedules url=http://127.0.0.1:8080/schedules timeout=5 --out=json
    """
    if not HAS_REQUESTS:
        return fleet_runner.fail(__context__, "requests: the requests package is not installed")
    try:
        url, headers = fleet_sweep.platform(url, fleet_runner.config(__opts__, "kiosk_power"))
        timeout = fleet_sweep.http_timeout(timeout)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    shown = fleet_http.host_of(url)
    try:
        previous = _read_json(SCHEDULES_FILE, None)
    except fleet_sweep.SweepError as exc:  # a corrupt copy must not block syncing a good one
        log.warning("kiosk_power.sync_schedules: %s", exc)
        previous = None
    in_force = fleet_sweep.in_force(previous)
    try:
        inventory, _, _, data = _load(schedule=False)
        with fleet_http.session() as sess:
            answer = sess.get(url, timeout=timeout, allow_redirects=False, headers=headers)
        if answer.status_code != 200:
            raise fleet_sweep.SweepError(f"url: {shown} answered HTTP {answer.status_code}; last good copy kept")
        try:
            fetched = answer.json()
        except ValueError as exc:
            raise fleet_sweep.SweepError(f"url: {shown} sent invalid JSON ({type(exc).__name__}); last good copy kept"
                                         ) from None
        record, ret = fleet_sweep.synced(fetched, inventory, shown, previous, data.get(fleet_schedule.PILLAR_KEY),
                                         _dt.datetime.now(_dt.timezone.utc))
    except requests.RequestException as exc:
        error = fleet_http.describe_error(exc, url)
        return fleet_runner.fail(__context__, f"url: GET failed: {error}; last good copy kept", in_force=in_force)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc, in_force=in_force)
    _write_json(SCHEDULES_FILE, record)
    changed = {c for c in ret["changes"]["added"] + ret["changes"]["removed"] + ret["changes"]["changed"]
               if c in inventory["campuses"]}
    ret["calendar"] = _publish(changed)
    return fleet_runner.finish(__context__, ret)


def _yes(value):
    return value is True or str(value).lower() in ("true", "1", "yes")


def plan(hours=12, at=None, scan=True, timeout=30):
    """
    Dry run: the expected state of every kiosk at ``at`` (default now; a hold
    wins over the schedule), its schedule transitions in the next ``hours``
    (at most 168), and, with ``scan=True`` (kiosk_scan, one job per campus),
    what the sweep engine would do now (the campus reconcilers decide with
    the same engine and calendar). Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.plan
        salt-run kiosk_power.plan hours=24 scan=False --out=json
        salt-run kiosk_power.plan at=2027-02-05T07:00:00+08:00
    """
    try:
        hours = fleet_runner.number(hours, "hours", 0, fleet_sweep.MAX_PLAN_HOURS)
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        now = _now(at)
        inventory, schedule, source, _ = _load()
        state = _state(_store().read())
        view = fleet_sweep.expect(inventory, schedule, state["holds"], now)
        kiosks = fleet_sweep.plan_kiosks(view, schedule, hours)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    ret = {"result": True, "at": fleet_sweep.iso(now), "hours": hours, "schedule": source,
           "holds": view["holds"], "kiosks": kiosks}
    if _yes(scan):
        observed, ret["pis"] = _observe(inventory, view["managed"], timeout)
        would = fleet_sweep.sweep(view, observed, state["pending"])
        ret["sweep_would"] = {k: would[k] for k in ("wake", "shutdown", "nothing")}
        ret["observed"] = observed
    return fleet_runner.finish(__context__, ret)


def _campuses(inventory, campus):
    """The campuses an operator named (all of them by default), each checked against the inventory."""
    if campus is None or campus == "":
        return sorted(inventory["campuses"])
    names = fleet_inventory.names(campus, "campus")
    for name in names:
        fleet_inventory.pis_of(inventory, name)  # an unknown campus is named here
    return sorted(set(names))


def sweep(campus=None, at=None, timeout=60):
    """
    Supervision: ask each campus's Pis to reconcile now
    (``kiosk_campus.reconcile`` on every Pi of the campus, one job) and
    report what they did: per campus the Pis' answers, the leader(s), the
    kiosks woken and shut down, the silent and failed Pis. The decisions are
    the campuses' own (their calendar, their observation, their leader); the
    top master takes none. ``at`` (ISO 8601 with offset) is passed to the
    reconcilers in place of their clock's now: only Pis with a
    ``kiosk_campus:clock_file`` (tests, the lab) take it, since such a run acts
    for real; a production Pi refuses it (a failed Pi in the answer). Exit code
    1 when no Pi of a campus answered or a Pi's run failed.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.sweep campus=riverside
        salt-run kiosk_power.sweep --out=json
        salt-run kiosk_power.sweep campus=riverside at=2027-02-05T07:00:00+08:00 timeout=90
    """
    try:
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        kwarg = {} if at is None or at == "" else {"at": fleet_sweep.iso(_now(at))}
        inventory = _load(schedule=False)[0]
        campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in _campuses(inventory, campus)}
        got = _call(sorted(p for pis in campus_pis.values() for p in pis), RECONCILE, timeout, kwarg)
        campuses = fleet_calendar.supervision(campus_pis, got.answered, got.failed, got.silent)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    failing = [c for c, r in campuses.items() if "error" in r]
    ret = {"result": not failing, "campuses": campuses}
    if kwarg:
        ret["at"] = kwarg["at"]
    if failing:
        ret["error"] = "; ".join(f"{c}: {campuses[c]['error']}" for c in failing)
    return fleet_runner.finish(__context__, ret)


DUE_NOTE = ("the campuses verify their own transitions (+5/+10/+15, their leader's checks arrive with "
            "kiosk_outbox.collect; see kiosk_power.status); this checks only what this master recorded. "
            "For a check now: campus=..., kiosks=... or explicit=True (every managed kiosk)")


def verify(at=None, kiosks=None, campus=None, timeout=30, explicit=False):
    """
    Liveness verification from the campus Pis (``kiosk_scan.scan``, one job
    per campus, all at once). Without ``kiosks``/``campus``: run the verifications due at
    ``at`` (default now) recorded in this master's state at +5/+10/+15
    minutes after a change (the campuses now verify their own transitions:
    their leader's checks arrive through the outbox collection); a kiosk
    still not in its expected state at its last check is a mismatch. With
    ``kiosks``/``campus`` (or ``explicit=True``: every managed kiosk of the
    fleet): an explicit check now of those managed kiosks
    against their expected state, every difference is a mismatch (``since``:
    now). Each mismatch (``degraded`` included) is posted to the alert
    webhook by this runner (``kiosk_alert.post``), then fired as
    ``kiosk/power/mismatch`` (kiosk, campus, expected, observed, since) on
    this master's bus for listeners. Exit code 1 when a mismatch was found
    or no Pi answered.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.verify
        salt-run kiosk_power.verify campus=riverside --out=json
        salt-run kiosk_power.verify explicit=True
        salt-run kiosk_power.verify kiosks=kiosk-riverside-10 at=2027-02-05T07:15:00+08:00
    """
    try:
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        now = _now(at)
        if not isinstance(explicit, bool) and str(explicit).lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise fleet_runner.RunnerError(f"explicit: {fleet_fields.shown(explicit)} is not True or False",
                                           field="explicit")
        explicit = _yes(explicit) or bool(kiosks or campus)
        inventory, schedule, _, _ = _load(schedule=explicit)
        if kiosks or campus:
            selection = fleet_inventory.select_kiosks(inventory, kiosks=kiosks, campus=campus)
        else:  # explicit=True: every kiosk (the unmanaged ones drop out in expect)
            selection = fleet_sweep.campus_kiosks(inventory) if explicit else None
        with _store().locked() as stored:
            state = _state(stored)
            if explicit:
                view = fleet_sweep.expect(inventory, schedule, state["holds"], now, selection)
                observed, pis = _observe(inventory, view["managed"], timeout)
                found = fleet_sweep.verify_now(state, view, observed)
            else:
                due = fleet_sweep.due_selection(state, now, inventory)
                observed, pis = _observe(inventory, due, timeout)
                found = fleet_sweep.verify_due(state, due, observed, now)
            stored.update(found["state"])
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    posted, alert_errors, fired = _alert(found["mismatches"])
    ret = fleet_sweep.verify_answer(found, observed, pis, now, explicit, posted, alert_errors, fired, MISMATCH_TAG)
    if not explicit:  # an operator reading "checked: []" must not think the fleet was checked
        ret["note"] = DUE_NOTE
    _metrics("verify", ret, inventory)
    return fleet_runner.finish(__context__, ret)


def hold(kiosk=None, state=None, until=None, reason=None):
    """
    Operator override: keep ``kiosk`` ``on`` or ``off`` until ``until`` (ISO
    8601 with offset), whatever the schedule says; sweeps enforce it. A new
    hold on the same kiosk replaces the old one. Expired holds are ignored
    and dropped by the next sweep.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.hold kiosk=kiosk-riverside-10 state=on until=2027-02-06T18:00:00+08:00 reason='ward move, ticket 4711'
    """
    try:
        inventory, *_ = _load(schedule=False)
        record = fleet_sweep.make_hold(inventory, kiosk, state, until, reason, _dt.datetime.now(_dt.timezone.utc))
        with _store().locked() as stored:
            holds = _state(stored)["holds"]
            replaced = holds.get(kiosk)
            stored["holds"] = dict(holds, **{kiosk: record})
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    calendar = _publish([record["campus"]])
    return fleet_runner.finish(__context__, {"result": True, "hold": record, "replaced": replaced,
                                             "calendar": calendar})


def unhold(kiosk=None):
    """
    Remove the hold on ``kiosk`` (the schedule applies again at the next
    sweep). Exit code 1 when the kiosk has no hold.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.unhold kiosk=kiosk-riverside-10
    """
    try:
        inventory, *_ = _load(schedule=False)
        fleet_sweep.check_kiosk(kiosk, inventory)
        with _store().locked() as stored:
            holds = dict(_state(stored)["holds"])
            removed = holds.pop(kiosk, None)
            if removed is None:
                raise fleet_sweep.SweepError(f"kiosk: {kiosk} has no hold")
            stored["holds"] = holds
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    calendar = _publish([removed["campus"]])
    return fleet_runner.finish(__context__, {"result": True, "removed": removed, "calendar": calendar})


def status(at=None, campus=None):
    """
    Where the schedules come from, holds (in force / expired), pending
    verifications of explicit checks, recent mismatches, and the campuses'
    day (``campuses``: per campus its Pis (cursor, calendar serial, leader,
    clock), actions, verifications, alerts and each kiosk's last
    observation, as ``kiosk_outbox.collect`` brought them in; None before
    the first collection), and ``unexpected_restarts`` per kiosk
    (``kiosk_restarts.boot``). Reads state only.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.status --out=json
        salt-run kiosk_power.status campus=riverside
    """
    try:
        now = _now(at)
        inventory, _, source, _ = _load()
        if campus is not None and campus != "":
            campus = _campuses(inventory, campus)
            if len(campus) != 1:
                raise fleet_runner.RunnerError("campus: name one campus, or none for all", field="campus")
            campus = campus[0]
        else:
            campus = None
        shown = fleet_sweep.status(_state(_store().read()), now)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "at": fleet_sweep.iso(now), "schedule": source,
                                             **shown, "campuses": _day(campus),
                                             "unexpected_restarts": _unexpected_restarts(campus)})
