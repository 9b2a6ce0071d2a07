"""
The campus runtime on each Pi MASTER (runners its own master ``schedule:``
runs; contract: docs/campus.md): ``probe`` (every ~20 s: this Pi's signed
status out, the peers' statuses in, a newer calendar taken from a peer),
``reconcile`` (the calendar against what this Pi observes of its campus,
through the same engine as the top master's sweep), ``tick`` (every 5 s: a
reconcile at each schedule transition and at least every minute), ``status``.

Glue only: the decisions are ``fleet_campus`` and ``fleet_sweep``'s. Settings
are the master config's ``kiosk_campus:`` block (``fleet_campus.SETTINGS``).
Files in ``kiosk_campus:dir``: ``calendar.json`` (``fleet_calendar``),
``peers.json`` (the last probe's view), ``reconciler.json`` (pending checks,
last observations, leader view, what started each kiosk's expected state), ``outbox.db`` (``fleet_outbox``). Each
runner holds its own lock (a second probe or reconcile on this Pi is
refused, never run twice at once).
"""

import concurrent.futures
import datetime as _dt
import json
import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_calendar, fleet_campus, fleet_clock, fleet_fields, fleet_http
    from saltext_kiosk_fleet.utils import fleet_keys, fleet_lock, fleet_metrics, fleet_outbox, fleet_power
    from saltext_kiosk_fleet.utils import fleet_runner, fleet_scan, fleet_schedule, fleet_state, fleet_sweep, fleet_wol
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_calendar
    import fleet_campus
    import fleet_clock
    import fleet_fields
    import fleet_http
    import fleet_keys
    import fleet_lock
    import fleet_metrics
    import fleet_outbox
    import fleet_power
    import fleet_runner
    import fleet_scan
    import fleet_schedule
    import fleet_state
    import fleet_sweep
    import fleet_wol

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_campus"

PEERS_FILE = "peers.json"
STATE_FILE = "reconciler.json"
OUTBOX_FILE = "outbox.db"
METRICS_FILE = "kiosk_campus.prom"
STATE_DEFAULTS = {"observed": {}, "leader": None}
# a run waits this long for the one before it (the schedule's, or an operator's) to finish
PROBE_WAIT_S = 10
RECONCILE_WAIT_S = 45
ERRORS = (fleet_fields.FleetError,)


class FetchError(fleet_campus.CampusError):
    """A peer's HTTP answer that is no document (not 200, too big, not JSON): like no answer, not a refusal."""


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- load


def _settings():
    return fleet_campus.settings(fleet_runner.config(__opts__, fleet_campus.CONFIG_KEY))


def _unusable(setting, folder, exc):
    """The CampusError for a folder this Pi cannot use (a file in its place, a full or read-only disk)."""
    field = f"{fleet_campus.CONFIG_KEY}:{setting}"
    return fleet_campus.CampusError(f"{field}: {folder} is not usable ({exc.strerror or exc})", field=field)


def _path(conf, name):
    try:
        os.makedirs(conf["dir"], mode=0o700, exist_ok=True)
    except OSError as exc:
        raise _unusable("dir", conf["dir"], exc) from None
    return os.path.join(conf["dir"], name)


def _calendar(conf, required=True):
    doc = fleet_calendar.load(conf["dir"], conf["verify_key"], conf["campus"])
    if doc is None and required:
        raise fleet_campus.CampusError(
            f"calendar: none stored in {conf['dir']} yet (the top master sends it: salt-run kiosk_calendar.publish)",
            field="calendar")
    return doc


def _mono():
    """The host's boot-time clock (s): what a peer status's age is counted on, whatever the wall clock does."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def _clock(conf):
    """``(clock state, now)``: the kernel's sync state (or the clock file's) and the clock's now."""
    state = fleet_clock.clock_state(conf["clock_file"])
    return state, fleet_clock.now(state)


def _master_keys():
    """The campus master key pair of this Pi master (``<pki_dir>/master.pem``, ``master.pub``)."""
    pki_dir = __opts__["pki_dir"]
    private = fleet_keys.read_bytes(os.path.join(pki_dir, fleet_keys.MASTER_PEM), "pki_dir")
    public = fleet_keys.read_bytes(os.path.join(pki_dir, fleet_keys.MASTER_PUB), "pki_dir")
    if private is None or public is None:
        raise fleet_campus.CampusError(f"pki_dir: no campus master key pair in {pki_dir} "
                                       "(salt-run kiosk_fleet.campus_keys sends it)", field="pki_dir")
    return private, public


def _view(conf):
    """The last probe's view (peers.json): ``{"pis": {pi: record}, "probed_mono", ...}``."""
    view = fleet_state.read_json(_path(conf, PEERS_FILE), fleet_campus.CampusError, {})
    if not isinstance(view.get("pis"), dict):
        view["pis"] = {}
    return view


def _peers(conf):
    return _view(conf)["pis"]


def _inventory_parts(doc):
    schedule = fleet_calendar.schedule_of(doc)
    if schedule is None:  # no schedule: every kiosk unmanaged
        schedule = fleet_schedule.load({"campuses": {}})
    return fleet_calendar.inventory_of(doc), schedule, fleet_calendar.holds_of(doc)


# ---------------------------------------------------------------- peers over HTTP


def _get_json(session, url, timeout, limit):
    answer = session.get(url, timeout=timeout, allow_redirects=False, stream=True)
    try:
        if answer.status_code != 200:
            raise FetchError(f"url: {fleet_http.host_of(url)} answered HTTP {answer.status_code}")
        body = answer.raw.read(limit + 1, decode_content=True)
    finally:
        answer.close()
    if len(body) > limit:
        raise FetchError(f"url: {fleet_http.host_of(url)} sent more than {limit} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError(f"url: {fleet_http.host_of(url)} sent no JSON") from None


def _fetch_status(inventory, conf, pi, public, clock, previous):
    """
    The peer's status, fetched and verified: a new record; on failure the
    previous record's last good status stays (with the error), so one lost
    fetch does not move leadership: the status's own age does (``stale_s``).
    """
    import requests  # pylint: disable=import-outside-toplevel

    url = fleet_campus.status_url(inventory, conf["campus"], pi)
    try:
        if url is None:
            raise fleet_campus.CampusError(f"pi: {pi} has no address in the calendar's inventory")
        with fleet_http.session() as session:
            doc = _get_json(session, url, conf["probe_timeout_s"], fleet_campus.MAX_STATUS_BYTES)
        status = fleet_campus.verify_status(doc, public, conf["campus"], pi, field=f"peers.{pi}")
        return fleet_campus.peer_record(fleet_clock.now(clock), status=status, mono=_mono())
    except requests.RequestException as exc:
        error = fleet_http.describe_error(exc, url)
    except FetchError as exc:
        error = str(exc)
    except ERRORS as exc:  # fail closed: unsigned, badly signed, another campus: unreachable
        error = str(exc)
        previous = None  # a refused status also withdraws the last good one: the key or the Pi changed
    return fleet_campus.failed_record(previous, fleet_clock.now(clock), error)


def _take_calendar(inventory, conf, pi):
    """Fetch the peer ``pi``'s calendar and keep it if it verifies and is newer (``fleet_calendar.store``)."""
    import requests  # pylint: disable=import-outside-toplevel

    url = fleet_campus.calendar_url(inventory, conf["campus"], pi)
    try:
        with fleet_http.session() as session:
            doc = _get_json(session, url, max(conf["probe_timeout_s"], 5), fleet_campus.MAX_CALENDAR_BYTES)
        return dict(fleet_calendar.store(conf["dir"], doc, conf["verify_key"], conf["campus"]), source=pi)
    except requests.RequestException as exc:
        return {"stored": False, "source": pi, "error": fleet_http.describe_error(exc, url)}
    except ERRORS as exc:  # a bad signature: refused, the last good copy stays
        log.warning("kiosk_campus.probe: calendar from %s refused: %s", pi, exc)
        return {"stored": False, "source": pi, "error": str(exc)}


def _serve(conf, name, doc):
    """Write ``doc`` to ``<repo_dir>/campus/<name>`` atomically (nginx serves it; readable by all)."""
    folder = os.path.join(conf["repo_dir"], os.path.dirname(fleet_campus.STATUS_PATH))
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        fleet_state.write_json_atomic(os.path.join(folder, name), doc, mode=0o644)
    except OSError as exc:  # the peers keep the last status served until it is stale
        raise _unusable("repo_dir", folder, exc) from None


# ---------------------------------------------------------------- observe, act


def _presence(inventory, conf, kiosks):
    """
    ``{kiosk: bool}``: the kiosk's minion holds a connection to this Pi
    master's publish or ret port, on one of this Pi's addresses
    (``fleet_scan.presence`` on the kernel's TCP table; the same rule as the
    Pi minion's ``kiosk_scan.scan``). No ``test.ping`` that waits out its
    timeout for the kiosks that are off. Salt's ``CkMinions.connected_ids``
    matches the same table against cached grains instead, which needs the
    minion data cache on every Pi master and on one host (the tests'
    topology) counts every cached minion as connected. An unreadable table
    is logged and counts as no presence (off, never on).
    """
    campus = conf["campus"]
    try:
        ports = fleet_scan.master_ports([__opts__.get("publish_port", 4505), __opts__.get("ret_port", 4506)],
                                        "publish_port")
        return fleet_scan.presence(inventory, campus, kiosks, fleet_scan.read_tcp_tables(), ports,
                                   fleet_scan.pi_addresses(inventory, campus, conf["pi"]))
    except fleet_scan.ScanError as exc:
        log.warning("kiosk_campus: minion connections unreadable: %s", exc)
        return {}


def _observe(inventory, conf, selection):
    """``(observed, pis report, errors)`` of ``selection`` from this Pi's nmap probe and its master's connections."""
    campus, me = conf["campus"], conf["pi"]
    kiosks = sorted(k for ids in selection.values() for k in ids)
    if not kiosks:
        return {}, {"answered": [], "silent": []}, []
    scans, errors = {}, []
    try:
        targets = fleet_scan.scan_targets(inventory, campus, kiosks)
        result, elapsed = fleet_scan.run(targets, conf["scan_host_timeout_s"], 1)
        scans[me] = {"pi": me, "campus": campus, "kiosks": result, "elapsed_s": elapsed}
    except ERRORS as exc:
        errors.append(f"scan: {exc}")
    observed = fleet_sweep.observed_states(selection, scans, {campus: [me]}, _presence(inventory, conf, kiosks))
    return observed, fleet_sweep.pis_report([me], scans, {}), errors


def _wake(inventory, conf, selection):
    """Magic packets from this Pi to every kiosk of ``selection`` (its VLANs' broadcasts): a wake report."""
    ids = sorted(k for group in selection.values() for k in group)
    try:
        sent = fleet_wol.wake_kiosks(inventory, conf["pi"], ids, conf["wake_repeat"], 100)
    except ERRORS as exc:
        return {"unreached": ids, "error": str(exc)}
    report = fleet_wol.merge_wake_returns(selection, {conf["pi"]: sent}, {conf["campus"]: [conf["pi"]]})
    if report["unreached"]:
        report["error"] = f"no magic packet sent to {', '.join(report['unreached'])}"
    return report


def _wake_rest(inventory, conf, selection, early, early_ret):
    """
    The engine's wakes, less the kiosks this run already woke before its
    scan: one wake report for the whole run (``fleet_sweep.acted`` reads it).
    """
    reached_early = set(early) - set((early_ret or {}).get("unreached", []))
    rest = {c: [k for k in ids if k not in reached_early] for c, ids in selection.items()}
    rest = {c: ids for c, ids in rest.items() if ids}
    later = _wake(inventory, conf, rest) if rest else {"unreached": []}
    report = {"unreached": sorted(later.get("unreached", []))}
    errors = [r["error"] for r in (early_ret, later) if r and r.get("error")]
    if errors:
        report["error"] = "; ".join(errors)
    return report


def _shutdown(conf, selection, transitions):
    """
    The leader's shutdowns: one ``kiosk_power.shutdown`` job per transition
    through this Pi master (``key`` names the kiosk as ``{id}``: each kiosk
    presses once per key). A report like ``fleet_power.shutdown_report``'s.
    """
    import salt.client  # pylint: disable=import-outside-toplevel

    ids = sorted(k for group in selection.values() for k in group)
    jobs = fleet_campus.shutdown_jobs(conf["campus"], {k: transitions[k] for k in ids})
    accepted, failed, silent, results = [], {}, [], {}
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        for template, kiosks in sorted(jobs.items()):
            kwarg = {"delay_s": conf["shutdown_delay_s"], "message": fleet_campus.SHUTDOWN_MESSAGE, "key": template}
            got = fleet_runner.call(client, kiosks, "kiosk_power.shutdown", kwarg=kwarg,
                                    timeout=conf["shutdown_timeout_s"])
            report = fleet_power.shutdown_report(got.answered, got.failed, got.silent)
            accepted += report["accepted"]
            failed.update(report["failed"])
            silent += report["silent"]
            results.update({k: "duplicate" if (got.answered.get(k) or {}).get("duplicate") else "pressed"
                            for k in report["accepted"]})
    report = {"accepted": sorted(accepted), "failed": failed, "silent": sorted(silent), "results": results}
    if failed or silent:
        report["error"] = f"not shut down: {', '.join(sorted(set(failed) | set(silent)))}"
    return report


def _metrics(conf, ret):
    if not conf["textfile_dir"]:
        return
    at = _dt.datetime.now(_dt.timezone.utc).timestamp()
    try:
        text = fleet_metrics.render(fleet_campus.metrics(conf["campus"], conf["pi"], ret, at))
        fleet_metrics.write_textfile(conf["textfile_dir"], METRICS_FILE, text, field="kiosk_campus:textfile_dir")
    except (OSError, ValueError) as exc:  # metrics never fail a run
        log.warning("kiosk_campus: metrics not written (%s): %s", conf["textfile_dir"], exc)


def _busy(what, conf):
    return fleet_campus.CampusError(f"{what}: another {what} is still running on this Pi ({conf['dir']})", field=what)


# ---------------------------------------------------------------- runners


def probe():
    """
    Write this Pi's signed status to ``<repo_dir>/campus/status.json`` (its
    nginx serves it), fetch each peer's status from the calendar's inventory
    (``probe_timeout_s``, all at once), keep the view in ``peers.json``, and
    take a newer calendar from a peer that announces one (verified and
    stored by ``fleet_calendar.store``; a bad one is refused, the last good
    copy stays). Run by this Pi master's ``schedule:`` every ~20 s.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_campus.probe
        salt-run -c /etc/salt kiosk_campus.probe --out=json
    """
    try:
        conf = _settings()
        with fleet_lock.exclusive(_path(conf, "probe.lock"), PROBE_WAIT_S, _busy("probe", conf)):
            ret = _probe(conf)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, ret)


def _probe(conf):
    me, campus = conf["pi"], conf["campus"]
    private, public = _master_keys()
    clock, now = _clock(conf)
    doc = _calendar(conf, required=False)
    peers, taken = {}, None
    if doc is not None:
        inventory = fleet_calendar.inventory_of(doc)
        others = [p for p in fleet_campus.pis_of(inventory, campus) if p != me]
        if others:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(others), 8)) as pool:
                before = _peers(conf)
                futures = {p: pool.submit(_fetch_status, inventory, conf, p, public, clock, before.get(p))
                           for p in others}
                peers = {p: f.result() for p, f in futures.items()}
        now = fleet_clock.now(clock)
        newer = fleet_campus.newest_calendar(peers, doc["serial"], now, conf["stale_s"], _mono())
        if newer is not None:
            taken = _take_calendar(inventory, conf, newer[0])
            if taken.get("stored"):
                doc = _calendar(conf)
    campus_pis = None if doc is None else fleet_campus.pis_of(fleet_calendar.inventory_of(doc), campus)
    reachable = fleet_campus.live(me, clock, peers, now, conf["stale_s"], _mono())
    leader_pi = fleet_campus.leader(reachable, campus_pis)
    sees = {p: v for p, v in reachable.items() if p != me and v["via"] == p}
    serial = None if doc is None else doc["serial"]
    status = fleet_campus.sign_status(
        fleet_campus.build_status(campus, me, now, serial, clock, sees, leader_pi), private)
    _serve(conf, os.path.basename(fleet_campus.STATUS_PATH), status)
    if doc is not None:
        try:
            served = fleet_state.read_json(os.path.join(conf["repo_dir"], fleet_campus.CALENDAR_PATH),
                                           fleet_campus.CampusError, {})
        except fleet_campus.CampusError:
            served = {}  # a damaged copy is replaced
        if served.get("serial") != doc["serial"]:
            _serve(conf, os.path.basename(fleet_campus.CALENDAR_PATH), doc)
    view = {"probed_at": fleet_campus.iso(now), "probed_mono": _mono(), "pis": peers, "leader": leader_pi,
            "reachable": sorted(reachable)}
    try:
        fleet_state.write_json_atomic(_path(conf, PEERS_FILE), view, mode=0o600)
    except OSError as exc:
        raise _unusable("dir", conf["dir"], exc) from None
    ret = {"result": True, "campus": campus, "pi": me, "at": fleet_campus.iso(now), "serial": serial,
           "peers": {p: r.get("error") or "ok" for p, r in sorted(peers.items())},
           "reachable": sorted(reachable), "leader_pi": leader_pi, "clock": {k: clock.get(k) for k in
                                                                            ("synced", "source", "offset_s")}}
    if taken is not None:
        ret["calendar"] = taken
    if doc is None:
        ret["warning"] = "no calendar yet: no peers known, status written with serial None"
    return ret


def reconcile(at=None):
    """
    One reconciler run: the calendar's expected state of every kiosk of this
    campus now (``at``: an ISO 8601 instant standing in for the clock's now,
    refused unless ``kiosk_campus:clock_file`` is set: tests and the lab's
    compressed day only, as the run acts for real), against this Pi's observation
    (its nmap probe of the service ports, its master's connected minions).
    Every live Pi wakes the kiosks due on; the leader alone shuts down, runs
    the +5/+10/+15 verification and raises alerts; nothing is shut down on an
    unsynchronised clock, nothing woken unless the clock is synchronised or
    confirmed by a peer. Everything done goes to the outbox. Exit code 1 when
    the run could not decide, or an action failed.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_campus.reconcile
        salt-run kiosk_campus.reconcile at=2027-03-01T07:20:00+08:00 --out=json
    """
    try:
        conf = _settings()
        with fleet_lock.exclusive(_path(conf, "reconcile.lock"), RECONCILE_WAIT_S, _busy("reconcile", conf)):
            ret = _reconcile(conf, at)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    _metrics(conf, ret)
    return fleet_runner.finish(__context__, ret)


def _leader(conf, clock, clock_now, campus_pis):
    """``(peers, boot-time now, reachable, leader)`` from the last probe's view (peers.json)."""
    probed = _view(conf)
    mono = _mono()
    reachable = fleet_campus.live(conf["pi"], clock, probed["pis"], clock_now, conf["stale_s"], mono)
    # no recent probe (just started): no leader known, so no shutdown from this Pi yet
    ready = fleet_campus.view_ready(probed, conf["pi"], campus_pis, mono, conf["stale_s"])
    return probed["pis"], mono, reachable, fleet_campus.leader(reachable, campus_pis) if ready else None


def _reconcile(conf, at):
    me, campus = conf["pi"], conf["campus"]
    if at not in (None, "") and conf["clock_file"] is None:
        # a run at another instant acts for real and leaves checks and expected states for that
        # instant in reconciler.json: only where the clock is a stand-in (tests, the lab's day)
        raise fleet_campus.CampusError(
            "at: a reconcile at another instant than now needs kiosk_campus:clock_file (tests, the lab); "
            "on a Pi's real clock it would act and record checks for that instant", field="at")
    doc = _calendar(conf)
    inventory, schedule, holds = _inventory_parts(doc)
    campus_pis = fleet_campus.pis_of(inventory, campus)
    if me not in campus_pis:
        raise fleet_campus.CampusError(f"kiosk_campus:pi: {me} is not a Pi of campus {campus} in the calendar",
                                       field="kiosk_campus:pi")
    # peers are judged on this Pi's clock; ``at`` moves only the calendar's instant
    clock, clock_now = _clock(conf)
    now = clock_now if at in (None, "") else fleet_campus.instant(at, "at")
    peers, mono, reachable, leader_pi = _leader(conf, clock, clock_now, campus_pis)
    confirmed_by = fleet_clock.confirmed(
        clock_now, fleet_campus.peer_clocks(peers, clock_now, conf["stale_s"], mono,
                                             conf["probe_s"] + conf["probe_timeout_s"]), conf["confirm_tolerance_s"])
    allowed = fleet_campus.gate(clock, confirmed_by, leader_pi == me, leader_pi)
    timezone = inventory["campuses"][campus]["timezone"]
    store = fleet_state.Store(conf["dir"], STATE_FILE, STATE_DEFAULTS, 30, fleet_campus.CampusError)
    with store.locked() as stored:
        state = fleet_sweep.load_state(stored)
        view = fleet_sweep.expect(inventory, schedule, holds, now)
        expected_now = fleet_campus.expected_map(view)
        # packets first: kiosks that just became due on are woken before the scan (seconds, not a scan's wait)
        early = fleet_campus.newly_due_on(expected_now, state.get("expected")) if allowed["wake"] else []
        early_ret = _wake(inventory, conf, {campus: early}) if early else None
        due = fleet_sweep.due_selection(state, now, inventory) if allowed["verify"] else {}
        selection = {campus: sorted(set(view["managed"].get(campus, [])) | set(due.get(campus, [])))}
        observed, pis, errors = _observe(inventory, conf, selection)
        decision = fleet_campus.decide(view, observed, state["pending"], allowed)
        acting = [k for part in ("wake", "shutdown") for ids in decision[part].values() for k in ids]
        # what started each kiosk's expected state (schedule, a hold's end, a new calendar): the action keys
        memory = fleet_campus.remember(schedule, view, now, state.get("transitions"),
                                       {"serial": doc["serial"], "signed_at": doc["signed_at"], "holds": holds})
        transitions = {k: fleet_campus.transition(schedule, view, k, now, timezone, memory) for k in acting}
        wake_ret = _wake_rest(inventory, conf, decision["wake"], early, early_ret) if decision["wake"] else None
        shutdown_ret = _shutdown(conf, decision["shutdown"], transitions) if decision["shutdown"] else None
        woken, shut_down, act_errors = fleet_sweep.acted(decision, wake_ret, shutdown_ret)
        if wake_ret is None and (early_ret or {}).get("error"):  # the early wake's trouble, when no later wake reports it
            act_errors.append(f"wake: {early_ret['error']}")
        state, record = fleet_sweep.settle(state, view, decision, woken, shut_down, errors + act_errors, pis,
                                           {"source": "calendar", "serial": doc["serial"]},
                                           _dt.datetime.now(_dt.timezone.utc))
        state["pending"] = fleet_campus.with_transitions(state["pending"], transitions)
        pending_before = state["pending"]
        found = None
        if allowed["verify"]:
            found = fleet_sweep.verify_due(state, due, observed, now)
            state = found["state"]
        acted = {"woken": woken, "shut_down": shut_down,
                 "results": dict(dict.fromkeys(woken, "sent"), **(shutdown_ret or {}).get("results", {}))}
        expected = {k: view["expected"][k]["state"] for k in observed}
        entries = fleet_campus.entries(campus, me, now, acted, found, pending_before, transitions, observed,
                                       state.get("observed") or {}, expected, allowed, clock, confirmed_by,
                                       leader_pi, reachable, state.get("leader"))
        outbox = fleet_outbox.Outbox(_path(conf, OUTBOX_FILE), conf["outbox_cap"])
        added = outbox.add_many(entries) if entries else []
        state["observed"] = {k: v["state"] for k, v in observed.items()}
        state["leader"] = leader_pi
        state["expected"] = expected_now
        state["transitions"] = memory
        state["reconciled_at"] = fleet_campus.iso(clock_now)
        stored.clear()
        stored.update(state)
    ret = {
        "result": not record["errors"],
        "campus": campus,
        "pi": me,
        "at": fleet_campus.iso(now),
        "serial": doc["serial"],
        "leader": leader_pi == me,
        "leader_pi": leader_pi,
        "live": sorted(reachable),
        "clock": {"synced": bool(clock.get("synced")), "confirmed_by": confirmed_by,
                  "offset_s": clock.get("offset_s"), "source": clock.get("source")},
        "wake": sorted(k for ids in decision["wake"].values() for k in ids),
        "shutdown": sorted(k for ids in decision["shutdown"].values() for k in ids),
        "withheld": decision["withheld"],
        "woke": sorted(woken),
        "shut_down": sorted(shut_down),
        "nothing": decision["nothing"],
        "observed": {k: v["state"] for k, v in observed.items()},
        "verified": found["verified"] if found else [],
        "waiting": found["waiting"] if found else [],
        "mismatches": found["mismatches"] if found else [],
        "transitions": transitions,
        "woke_early": early,
        "outbox": {"added": sum(1 for a in added if a), "entries": len(entries)},
    }
    if record["errors"]:
        ret["error"] = "; ".join(record["errors"])
    return ret


def tick():
    """
    What this Pi master's schedule runs every ``tick_s`` (5 s): a reconcile
    when one is due, nothing otherwise. Due: a schedule transition before
    the next tick (the tick sleeps until that instant, so magic packets go
    out within a second or two of it), the expected states changed since
    the last reconcile (a hold, a new calendar), the leader in the last
    probe's view changed (a failover: the new leader acts at once), or the
    last reconcile is ``reconcile_s`` (60 s) old. A reconcile already running: nothing.
    Returns the reconcile's answer plus ``reconciled``/``why``.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_campus.tick --out=json
    """
    try:
        conf = _settings()
        busy = _busy("reconcile", conf)
        try:
            with fleet_lock.exclusive(_path(conf, "reconcile.lock"), 0, busy):
                ret = _tick(conf)
        except fleet_campus.CampusError as exc:
            if exc is not busy:
                raise
            ret = {"result": True, "reconciled": False, "why": "a reconcile is running"}
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    if ret.get("reconciled"):
        _metrics(conf, ret)
    return fleet_runner.finish(__context__, ret)


def _tick(conf):
    doc = _calendar(conf)
    inventory, schedule, holds = _inventory_parts(doc)
    clock, now = _clock(conf)
    state = fleet_state.Store(conf["dir"], STATE_FILE, STATE_DEFAULTS, 30, fleet_campus.CampusError).read()
    upcoming = fleet_campus.next_minute(now)
    leader_pi = _leader(conf, clock, now, fleet_campus.pis_of(inventory, conf["campus"]))[3]
    plan = fleet_campus.tick_plan(
        fleet_campus.expected_map(fleet_sweep.expect(inventory, schedule, holds, now)),
        fleet_campus.expected_map(fleet_sweep.expect(inventory, schedule, holds, upcoming)),
        state.get("expected"), state.get("reconciled_at"), now, upcoming, conf["tick_s"], conf["reconcile_s"],
        leader_pi, state.get("leader"))
    if not plan["run"]:
        return {"result": True, "reconciled": False, "why": plan["why"], "at": fleet_campus.iso(now)}
    if plan["sleep"] > 0:
        time.sleep(plan["sleep"])
    return dict(_reconcile(conf, None), reconciled=True, why=plan["why"])


def status():
    """
    This Pi's campus runtime: settings in use (no key material), the
    calendar it runs on, the last probe's view of its peers and leader, the
    clock, pending verifications, the last reconcile and the outbox's size.
    Reads only.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_campus.status --out=json
    """
    try:
        conf = _settings()
        peers_file = _path(conf, PEERS_FILE)
        doc = _calendar(conf, required=False)
        view = fleet_state.read_json(peers_file, fleet_campus.CampusError, {})
        state = fleet_sweep.load_state(fleet_state.read_json(_path(conf, STATE_FILE), fleet_campus.CampusError, {}))
        clock = fleet_clock.clock_state(conf["clock_file"])
        outbox = fleet_outbox.Outbox(_path(conf, OUTBOX_FILE), conf["outbox_cap"]).stats()
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    shown = {k: v for k, v in conf.items() if k != "verify_key"}
    return fleet_runner.finish(__context__, {
        "result": doc is not None,
        "settings": shown,
        "calendar": fleet_calendar.summary(doc),
        "peers": {p: {"status_at": (r.get("status") or {}).get("at"), "fetched_at": r.get("fetched_at"),
                      "error": r.get("error")} for p, r in sorted((view.get("pis") or {}).items())},
        "probed_at": view.get("probed_at"),
        "leader_pi": state.get("leader"),
        "clock": {k: clock.get(k) for k in ("synced", "source", "offset_s", "error") if k in clock},
        "pending": state["pending"],
        "last_reconcile": state["sweeps"][-1] if state["sweeps"] else None,
        "mismatches": state["mismatches"][-fleet_sweep.SHOWN_MISMATCHES:],
        "outbox": outbox,
        **({} if doc is not None else {"error": f"calendar: none stored in {conf['dir']} yet"}),
    })
