"""
Power runners on the top master: wake kiosks through every Pi of their
campus, shut them down through their own minion; power schedules:
``sync_schedules``, ``plan``, ``sweep``, ``verify``, ``hold``/``unhold``,
``status``.

Jenkins-friendly: every runner returns ``result``/``retcode``/``error`` and
exits non-zero on failure.

Where the schedules come from (first found wins)
    1. the last good copy synced by ``kiosk_power.sync_schedules`` (the file
       ``<master cachedir>/kiosk_power/schedules.json``): once a platform
       sync succeeded, it is in force until the next good sync, and a failed
       sync (platform down, HTTP 500, invalid JSON, invalid schedule) leaves
       it in force; delete the file to go back to pillar;
    2. the key ``kiosk_fleet_schedules`` of the fleet data file (master
       config ``kiosk_fleet:data``, read on every call; no minion gets it);
    3. neither: every kiosk is ``unmanaged`` (sweeps do nothing).

State (``<master cachedir>/kiosk_power/state.json``, written to a temporary
file then ``os.replace``d, under an ``flock`` so the scheduled sweep and
verify never interleave): holds, pending verifications, recent sweeps and
mismatches.
"""

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_alerts,
        fleet_http,
        fleet_inventory,
        fleet_lock,
        fleet_metrics,
        fleet_power,
        fleet_runner,
        fleet_schedule,
        fleet_sweep,
        fleet_wol,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_alerts
    import fleet_http
    import fleet_inventory
    import fleet_lock
    import fleet_metrics
    import fleet_power
    import fleet_runner
    import fleet_schedule
    import fleet_sweep
    import fleet_wol

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_power"


def __virtual__():
    return __virtualname__


def _selection(kiosks, campus):
    inventory = _inventory()
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
        repeat = fleet_runner.number(repeat, "repeat", 1, 20)
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        inventory, selection = _selection(kiosks, campus)
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return fleet_runner.fail(__context__, exc)
    campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in selection}
    pis = sorted({p for ids in campus_pis.values() for p in ids})
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    returns = __salt__["salt.execute"](
        pis,
        "kiosk_wol.wake_kiosks",
        tgt_type="list",
        kwarg={"kiosks": kiosk_ids, "repeat": repeat},
        timeout=timeout,
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
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        _, selection = _selection(kiosks, campus)
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return fleet_runner.fail(__context__, exc)
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    returns = __salt__["salt.execute"](
        kiosk_ids,
        "kiosk_power.shutdown",
        tgt_type="list",
        kwarg={"delay_s": delay_s, "message": message},
        timeout=timeout,
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


# ---------------------------------------------------------------- schedules, sweeps

STATE_DIR = "kiosk_power"
SCHEDULES_FILE = "schedules.json"
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
LOCK_TIMEOUT_S = 300
KEEP_RECORDS = 100
MISMATCH_TAG = "kiosk/power/mismatch"
MAX_PLAN_HOURS = 168


def _state_dir():
    path = os.path.join(__opts__["cachedir"], STATE_DIR)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _read_json(name, default):
    path = os.path.join(_state_dir(), name)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:  # unreadable or not JSON: say which file, never a traceback
        raise fleet_sweep.SweepError(f"{path}: unreadable state file ({exc}); fix or move it aside") from exc
    if not isinstance(data, dict):
        raise fleet_sweep.SweepError(f"{path}: expected a JSON object, got {type(data).__name__}; fix or move it aside")
    return data


def _write_json(name, data):
    """Write to a temporary file in the same folder, then os.replace: never a torn file."""
    folder = _state_dir()
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _locked():
    """One sweep/verify/hold at a time on this master (the schedule runs them every minute)."""
    return fleet_lock.exclusive(
        os.path.join(_state_dir(), LOCK_FILE), LOCK_TIMEOUT_S,
        fleet_sweep.SweepError(f"state: another kiosk_power run held the lock for {LOCK_TIMEOUT_S} s"),
    )


POWER_STATES = ("on", "off", "degraded", "unknown")


def _metrics(action, ret, inventory):
    """
    kiosk_power.prom for node_exporter (master config ``kiosk_power:
    {textfile_dir: ...}``): what the last sweep did and what the last sweep or
    verify saw, per campus. Written after the run; a write problem is logged,
    never turned into a failed sweep.
    """
    directory = (__opts__.get("kiosk_power") or {}).get("textfile_dir")
    if not directory:
        return
    path = os.path.join(_state_dir(), "metrics.json")
    last = _read_json("metrics.json", {})
    campus_of = {k: c for c, spec in inventory["campuses"].items() for k in spec["kiosks"]}
    seen = {c: dict.fromkeys(POWER_STATES, 0) for c in inventory["campuses"]}
    for kiosk, observed in (ret.get("observed") or {}).items():
        if kiosk in campus_of and observed in POWER_STATES:
            seen[campus_of[kiosk]][observed] += 1
    last.setdefault("runs", {})[action] = {"ok": bool(ret.get("result")), "at": _dt.datetime.now(_dt.timezone.utc).timestamp()}
    last["observed"] = seen
    if action == "sweep":
        last["actions"] = {c: {"wake": len(ret.get("wake", {}).get(c, [])), "shutdown": len(ret.get("shutdown", {}).get(c, []))}
                           for c in inventory["campuses"]}
    if action == "verify":
        last["mismatches"] = {c: sum(1 for m in ret.get("mismatches", []) if m.get("campus") == c)
                              for c in inventory["campuses"]}
    families = [
        ("kiosk_power_last_run_success", "gauge", "1 when the last sweep/verify succeeded.",
         [({"action": a}, r["ok"]) for a, r in sorted(last["runs"].items())]),
        ("kiosk_power_last_run_timestamp_seconds", "gauge", "When the last sweep/verify ran (Unix time).",
         [({"action": a}, r["at"]) for a, r in sorted(last["runs"].items())]),
        ("kiosk_power_kiosks_observed", "gauge", "Managed kiosks per observed state in the last sweep/verify.",
         [({"campus": c, "state": st}, n) for c, per in sorted(last["observed"].items()) for st, n in per.items()]),
        ("kiosk_power_sweep_actions", "gauge", "Kiosks the last sweep woke or shut down.",
         [({"campus": c, "action": a}, n) for c, per in sorted(last.get("actions", {}).items()) for a, n in sorted(per.items())]),
        ("kiosk_power_verify_mismatches", "gauge", "Kiosks not in the state they should be at the last verify.",
         [({"campus": c}, n) for c, n in sorted(last.get("mismatches", {}).items())]),
    ]
    try:
        _write_json("metrics.json", last)
        fleet_metrics.write_textfile(directory, "kiosk_power.prom", fleet_metrics.render(families),
                                     field="kiosk_power.textfile_dir")
    except (OSError, ValueError) as exc:
        log.warning("kiosk_power: metrics not written (%s): %s", path, exc)


def _state():
    state = _read_json(STATE_FILE, {})
    for key, default in (("holds", {}), ("pending", {}), ("sweeps", []), ("mismatches", [])):
        state.setdefault(key, default)
    return state


def _inventory():
    return fleet_inventory.master_inventory(__opts__)


def _schedule(inventory):
    """(compiled schedule, description of its source); see the module docstring for the precedence."""
    synced = _read_json(SCHEDULES_FILE, None)
    if synced is not None:
        source = {"source": "synced", "synced_at": synced.get("synced_at"), "url": synced.get("url")}
        try:
            return fleet_schedule.load(synced.get("schedule"), inventory), source
        except fleet_schedule.ScheduleError as exc:
            raise fleet_schedule.ScheduleError(
                f"synced schedule ({os.path.join(_state_dir(), SCHEDULES_FILE)}) no longer matches the inventory: {exc}"
            ) from exc
    data = fleet_inventory.master_data(__opts__).get(fleet_schedule.PILLAR_KEY)
    if data is None:
        return fleet_schedule.load({"campuses": {}}), {"source": "none"}
    return fleet_schedule.load(data, inventory), {"source": "pillar", "key": fleet_schedule.PILLAR_KEY}


def _now(at):
    if at is None or at == "":
        return _dt.datetime.now(_dt.timezone.utc)
    return fleet_sweep.parse_instant(at, "at")


def _int(value, field, low, high):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise fleet_sweep.SweepError(f"{field}: {value!r} is not an integer") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise fleet_sweep.SweepError(f"{field}: {value!r} is outside {low}-{high}")
    return number


def _execute(targets, fun, timeout, kwarg=None):
    """
    ``(answers, conflicting)`` of one job to ``targets``: every return is
    collected, and a minion that answered twice, differently (a return forged
    by another minion behind a syndic, see ``fleet_alerts.single_returns``),
    counts as silent.
    """
    import salt.client  # pylint: disable=import-outside-toplevel

    pairs = []
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        for item in client.cmd_iter(targets, fun, kwarg=kwarg, tgt_type="list", timeout=timeout):
            for minion, answer in (item or {}).items():
                if minion in targets and isinstance(answer, dict) and "ret" in answer:
                    pairs.append((minion, answer["ret"]))
    answers, conflicting = fleet_alerts.single_returns(pairs)
    if conflicting:
        log.warning("kiosk_power: %s: conflicting returns from %s (one was forged); counted as silent",
                    fun, ", ".join(conflicting))
    return answers, conflicting


def _observe(inventory, selection, timeout):
    """
    ONE scan job: kiosk_scan.scan on every Pi of the campuses in
    ``selection``, and one ``test.ping`` of the kiosks. The Pis' probe of
    the service port decides (see ``fleet_sweep.observed_states``): a
    kiosk's own answer never makes it count as on, because a minion behind
    a syndic can forge another minion's return.
    """
    campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in selection}
    pis = sorted({p for ids in campus_pis.values() for p in ids})
    kiosk_ids = sorted(k for ids in selection.values() for k in ids)
    if not kiosk_ids:
        return {}, {"answered": [], "silent": []}
    returns, forged_pis = _execute(pis, "kiosk_scan.scan", timeout, kwarg={"kiosks": kiosk_ids})
    # minion presence only tells a powered kiosk with its app down ("degraded")
    # from one that is off, among kiosks a Pi saw with the port closed
    pings, _ = _execute(kiosk_ids, "test.ping", timeout)
    presence = {k: True for k, answer in pings.items() if answer is True}
    answered = sorted(p for p in pis if isinstance(returns.get(p), dict))
    pis_report = {"answered": answered, "silent": sorted(set(pis) - set(answered))}
    errors = {p: str(r) for p, r in returns.items() if p in pis and not isinstance(r, dict)}
    if errors:
        pis_report["errors"] = errors
    if forged_pis:
        pis_report["conflicting"] = forged_pis
    return fleet_sweep.observed_states(selection, returns, campus_pis, presence), pis_report


def _all_kiosks(inventory):
    return {c: sorted(spec["kiosks"]) for c, spec in inventory["campuses"].items()}


def _managed(expected, selection):
    out = {}
    for campus, ids in selection.items():
        keep = [k for k in ids if expected[k]["state"] != fleet_schedule.UNMANAGED]
        if keep:
            out[campus] = keep
    return out


def _platform(url):
    """
    ``(url, headers)`` for the schedule platform: ``url=`` when given (no
    token is sent to it), else ``kiosk_power:platform_url`` from the master
    config, with ``kiosk_power:platform_token`` (optional) sent as
    ``Authorization: Bearer``.
    """
    if url is not None and url != "":
        return fleet_http.check_url(url, "url"), {}
    conf = __opts__.get("kiosk_power") or {}
    configured = conf.get("platform_url")
    if configured is None:
        raise ValueError("url: not given, and kiosk_power:platform_url is not set in the master config")
    fleet_http.check_url(configured, "kiosk_power.platform_url")
    token = conf.get("platform_token")
    if token is None:
        return configured, {}
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0"):
        raise ValueError("kiosk_power.platform_token: expected one line of text")
    return configured, {"Authorization": f"Bearer {token}"}


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
        url, headers = _platform(url)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        timeout = -1
    if not 0 < timeout <= 120:
        return fleet_runner.fail(__context__, f"timeout: {timeout!r} is outside 0-120 seconds")
    shown = fleet_http.host_of(url)
    try:
        previous = _read_json(SCHEDULES_FILE, None)
    except fleet_sweep.SweepError as exc:  # a corrupt copy must not block syncing a good one
        log.warning("kiosk_power.sync_schedules: %s", exc)
        previous = None
    in_force = (
        {"source": "synced", "synced_at": previous.get("synced_at"), "url": previous.get("url")}
        if previous else {"source": "pillar"}
    )
    try:
        inventory = _inventory()
    except fleet_inventory.InventoryError as exc:
        return fleet_runner.fail(__context__, exc, in_force=in_force)
    try:
        with fleet_http.session() as sess:
            answer = sess.get(url, timeout=timeout, allow_redirects=False, headers=headers)
    except requests.RequestException as exc:
        error = fleet_http.describe_error(exc, url)
        return fleet_runner.fail(__context__, f"url: GET failed: {error}; last good copy kept", in_force=in_force)
    if answer.status_code != 200:
        return fleet_runner.fail(
            __context__, f"url: {shown} answered HTTP {answer.status_code}; last good copy kept", in_force=in_force
        )
    try:
        data = answer.json()
    except ValueError as exc:
        return fleet_runner.fail(__context__, f"url: {shown} sent invalid JSON ({type(exc).__name__});"
                                 " last good copy kept", in_force=in_force)
    if isinstance(data, dict) and fleet_schedule.PILLAR_KEY in data:
        data = data[fleet_schedule.PILLAR_KEY]
    try:
        normalised = fleet_schedule.validate(data, inventory)
    except fleet_schedule.ScheduleError as exc:
        return fleet_runner.fail(__context__, f"schedule from {shown} is invalid: {exc}; last good copy kept",
                                 in_force=in_force)
    if previous is not None:
        old = previous.get("schedule")
    else:
        old = fleet_inventory.master_data(__opts__).get(fleet_schedule.PILLAR_KEY)
        try:
            old = fleet_schedule.validate(old, inventory) if old is not None else None
        except fleet_schedule.ScheduleError:
            old = None
    digest = hashlib.sha256(json.dumps(normalised, sort_keys=True).encode()).hexdigest()
    record = {
        "synced_at": fleet_sweep.iso(_dt.datetime.now(_dt.timezone.utc)),
        "url": shown,
        "sha256": digest,
        "schedule": normalised,
    }
    _write_json(SCHEDULES_FILE, record)
    changes = fleet_sweep.changes(old, normalised)
    return fleet_runner.finish(__context__, {
        "result": True,
        "changed": bool(previous is None or previous.get("sha256") != digest),
        "changes": changes,
        "campuses": sorted(normalised["campuses"]),
        "sha256": digest,
        "synced_at": record["synced_at"],
        "url": shown,
        "replaced": in_force,
    })


def _holds_and_expected(state, schedule, selection, now):
    desired = fleet_schedule.desired_states(schedule, selection, now)
    active, expired = fleet_sweep.prune_holds(state["holds"], now)
    return desired, active, expired


def plan(hours=12, at=None, scan=True, timeout=30):
    """
    Dry run: the expected state of every kiosk at ``at`` (default now; a hold
    wins over the schedule), its schedule transitions in the next ``hours``
    (at most 168), and, with ``scan=True`` (one kiosk_scan job to the Pis),
    what a sweep would do now. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.plan
        salt-run kiosk_power.plan hours=24 scan=False --out=json
        salt-run kiosk_power.plan at=2027-02-05T07:00:00+08:00
    """
    try:
        hours = _int(hours, "hours", 0, MAX_PLAN_HOURS)
        timeout = _int(timeout, "timeout", 1, 600)
        now = _now(at)
        inventory = _inventory()
        schedule, source = _schedule(inventory)
        state = _state()
        selection = _all_kiosks(inventory)
        desired, active, _ = _holds_and_expected(state, schedule, selection, now)
    except (fleet_inventory.InventoryError, fleet_schedule.ScheduleError, fleet_sweep.SweepError) as exc:
        return fleet_runner.fail(__context__, exc)
    expected = fleet_sweep.expected_states(desired, active, now)
    end = now + _dt.timedelta(hours=hours)
    kiosks = {}
    for campus, ids in selection.items():
        for kiosk in ids:
            kiosks[kiosk] = dict(expected[kiosk], schedule=desired[campus][kiosk]["state"], transitions=[
                {"at": fleet_sweep.iso(i), "local": i.isoformat(), "state": s, "rule": r}
                for i, s, r in fleet_schedule.transitions(schedule, campus, kiosk, now, end)
            ])
    ret = {"result": True, "at": fleet_sweep.iso(now), "hours": hours, "schedule": source,
           "holds": active, "kiosks": kiosks}
    if scan is True or str(scan).lower() in ("true", "1", "yes"):
        managed = _managed(expected, selection)
        observed, pis = _observe(inventory, managed, timeout)
        actions = fleet_sweep.plan_actions(desired, observed, active, now, state["pending"])
        ret["sweep_would"] = {"wake": actions["wake"], "shutdown": actions["shutdown"], "nothing": actions["nothing"]}
        ret["observed"] = observed
        ret["pis"] = pis
    return fleet_runner.finish(__context__, ret)


def sweep(at=None, delay_s=60, message="This kiosk is closing for the day.", timeout=30):
    """
    Apply the schedules at ``at`` (default now): scan the managed kiosks from
    their campus Pis (one job), wake those expected on and seen off
    (``kiosk_power.wake``), shut down those expected off and seen on
    (``kiosk_power.shutdown`` with ``delay_s``/``message``), respecting holds.
    Unmanaged kiosks, kiosks no Pi could see and kiosks still waiting for
    the verification of an earlier change are left alone. Records the sweep
    and schedules verifications of the changed kiosks at +5/+10/+15 minutes.
    Exit code 1 when a wake or shutdown failed, or no Pi answered.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.sweep
        salt-run kiosk_power.sweep at=2027-02-05T07:00:00+08:00 delay_s=300 --out=json
    """
    try:
        timeout = _int(timeout, "timeout", 1, 600)
        delay_s, message = fleet_power.check_request(delay_s, message)
        now = _now(at)
        inventory = _inventory()
        schedule, source = _schedule(inventory)
    except (ValueError, fleet_inventory.InventoryError, fleet_schedule.ScheduleError) as exc:
        return fleet_runner.fail(__context__, exc)
    try:
        with _locked():
            return _sweep(inventory, schedule, source, now, delay_s, message, timeout)
    except fleet_sweep.SweepError as exc:
        return fleet_runner.fail(__context__, exc)


def _sweep(inventory, schedule, source, now, delay_s, message, timeout):
    state = _state()
    selection = _all_kiosks(inventory)
    desired, active, expired = _holds_and_expected(state, schedule, selection, now)
    expected = fleet_sweep.expected_states(desired, active, now)
    managed = _managed(expected, selection)
    observed, pis = _observe(inventory, managed, timeout)
    actions = fleet_sweep.plan_actions(desired, observed, active, now, state["pending"])
    errors = []
    changed_on, changed_off = {}, {}
    wake_ret = shutdown_ret = None
    if actions["wake"]:
        wake_ret = wake(kiosks=[k for ids in actions["wake"].values() for k in ids], timeout=timeout)
        unreached = set(wake_ret.get("unreached", []))
        if wake_ret.get("error"):
            errors.append(f"wake: {wake_ret['error']}")
        changed_on = {c: [k for k in ids if k not in unreached] for c, ids in actions["wake"].items()}
    if actions["shutdown"]:
        shutdown_ret = shutdown(kiosks=[k for ids in actions["shutdown"].values() for k in ids],
                                delay_s=delay_s, message=message, timeout=timeout)
        accepted = set(shutdown_ret.get("accepted", []))
        if shutdown_ret.get("error"):
            errors.append(f"shutdown: {shutdown_ret['error']}")
        changed_off = {c: [k for k in ids if k in accepted] for c, ids in actions["shutdown"].items()}
    if managed and not pis["answered"]:
        errors.append(f"scan: no Pi answered ({', '.join(pis['silent'])})")
    changed = {}
    for part in (changed_on, changed_off):
        for campus, ids in part.items():
            if ids:
                changed.setdefault(campus, []).extend(ids)
    state["pending"] = fleet_sweep.schedule_checks(state["pending"], changed, actions["expected"], now)
    state["holds"] = active
    record = {
        "at": fleet_sweep.iso(now),
        "ran_at": fleet_sweep.iso(_dt.datetime.now(_dt.timezone.utc)),
        "schedule": source,
        "woken": changed_on,
        "shut_down": changed_off,
        "errors": errors,
    }
    state["sweeps"] = (state["sweeps"] + [record])[-KEEP_RECORDS:]
    _write_json(STATE_FILE, state)
    ret = {
        "result": not errors,
        "at": record["at"],
        "schedule": source,
        "wake": actions["wake"],
        "shutdown": actions["shutdown"],
        "nothing": actions["nothing"],
        "observed": {k: v["state"] for k, v in observed.items()},
        "pis": pis,
        "verifications": {k: state["pending"][k]["checks"] for ids in changed.values() for k in ids},
        "holds": sorted(active),
        "expired_holds": sorted(expired),
        "wake_result": wake_ret,
        "shutdown_result": shutdown_ret,
    }
    if errors:
        ret["error"] = "; ".join(errors)
    _metrics("sweep", ret, inventory)
    return fleet_runner.finish(__context__, ret)


def _alert(mismatches):
    """
    Post one alert per mismatch (payload: ``fleet_alerts.power_mismatch``,
    through ``kiosk_alert.post``), then fire ``kiosk/power/mismatch`` for
    listeners. The event is informational: no reactor posts from it, since a
    kiosk can fire the same tag. Returns (kiosks whose alert was posted,
    errors, kiosks whose event was fired).
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


def verify(at=None, kiosks=None, campus=None, timeout=30):
    """
    Liveness verification from the campus Pis (``kiosk_scan.scan``, ONE job
    per call). Without ``kiosks``/``campus``: run the verifications due at
    ``at`` (default now) that sweeps scheduled at +5/+10/+15 minutes; a kiosk
    still not in its expected state at its last check is a mismatch. With
    ``kiosks``/``campus``: an explicit check now of those managed kiosks
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
        salt-run kiosk_power.verify kiosks=kiosk-riverside-10 at=2027-02-05T07:15:00+08:00
    """
    try:
        timeout = _int(timeout, "timeout", 1, 600)
        now = _now(at)
        inventory = _inventory()
        explicit = None
        if kiosks or campus:
            explicit = fleet_inventory.select_kiosks(inventory, kiosks=kiosks, campus=campus)
            schedule, _ = _schedule(inventory)
        with _locked():
            state = _state()
            if explicit is not None:
                desired, active, _ = _holds_and_expected(state, schedule, explicit, now)
                expected = fleet_sweep.expected_states(desired, active, now)
                selection = _managed(expected, explicit)
                observed, pis = _observe(inventory, selection, timeout)
                mismatches = [
                    fleet_sweep.mismatch(k, c, expected[k]["state"], observed[k]["state"], fleet_sweep.iso(now))
                    for c, ids in selection.items() for k in ids
                    if observed[k]["state"] != expected[k]["state"]
                ]
                verified = sorted(k for ids in selection.values() for k in ids
                                  if k not in {m["kiosk"] for m in mismatches})
                waiting = []
            else:
                due = fleet_sweep.due(state["pending"], now)
                selection = {}
                for kiosk in due:
                    selection.setdefault(state["pending"][kiosk]["campus"], []).append(kiosk)
                observed, pis = _observe(inventory, selection, timeout)
                state["pending"], verified, waiting, mismatches = fleet_sweep.apply_checks(
                    state["pending"], observed, now)
            if mismatches:
                state["mismatches"] = (state["mismatches"] + mismatches)[-KEEP_RECORDS:]
            _write_json(STATE_FILE, state)
    except (fleet_inventory.InventoryError, fleet_schedule.ScheduleError, fleet_sweep.SweepError) as exc:
        return fleet_runner.fail(__context__, exc)
    posted, alert_errors, fired = _alert(mismatches)
    ret = {
        "result": not mismatches and (not selection or bool(pis["answered"])),
        "at": fleet_sweep.iso(now),
        "mode": "explicit" if explicit is not None else "due",
        "checked": sorted(k for ids in selection.values() for k in ids),
        "verified": sorted(verified),
        "waiting": sorted(waiting),
        "mismatches": mismatches,
        "events": {"tag": MISMATCH_TAG, "kiosks": fired},
        "alerts": {"posted": posted, "errors": alert_errors},
        "observed": {k: v["state"] for k, v in observed.items()},
        "pis": pis,
    }
    if mismatches:
        ret["error"] = "not in the expected state: " + ", ".join(
            f"{m['kiosk']} (expected {m['expected']}, observed {m['observed']})" for m in mismatches)
        if alert_errors:
            ret["error"] += "; alerts not posted: " + "; ".join(alert_errors)
    elif selection and not pis["answered"]:
        ret["error"] = f"scan: no Pi answered ({', '.join(pis['silent'])})"
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
        inventory = _inventory()
        now = _dt.datetime.now(_dt.timezone.utc)
        record = fleet_sweep.make_hold(inventory, kiosk, state, until, reason, now)
        with _locked():
            data = _state()
            replaced = data["holds"].get(kiosk)
            data["holds"][kiosk] = record
            _write_json(STATE_FILE, data)
    except (fleet_inventory.InventoryError, fleet_sweep.SweepError) as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "hold": record, "replaced": replaced})


def unhold(kiosk=None):
    """
    Remove the hold on ``kiosk`` (the schedule applies again at the next
    sweep). Exit code 1 when the kiosk has no hold.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.unhold kiosk=kiosk-riverside-10
    """
    try:
        fleet_sweep.check_kiosk(kiosk, _inventory())
        with _locked():
            data = _state()
            removed = data["holds"].pop(kiosk, None)
            if removed is None:
                raise fleet_sweep.SweepError(f"kiosk: {kiosk} has no hold")
            _write_json(STATE_FILE, data)
    except (fleet_inventory.InventoryError, fleet_sweep.SweepError) as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "removed": removed})


def status(at=None):
    """
    Where the schedules come from, holds (in force / expired), pending
    verifications, the last sweep and recent mismatches. Reads state only.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_power.status --out=json
    """
    try:
        now = _now(at)
        inventory = _inventory()
        _, source = _schedule(inventory)
        state = _state()
        active, expired = fleet_sweep.prune_holds(state["holds"], now)
    except (fleet_inventory.InventoryError, fleet_schedule.ScheduleError, fleet_sweep.SweepError) as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {
        "result": True,
        "at": fleet_sweep.iso(now),
        "schedule": source,
        "holds": active,
        "expired_holds": expired,
        "pending": state["pending"],
        "last_sweep": state["sweeps"][-1] if state["sweeps"] else None,
        "mismatches": state["mismatches"][-20:],
    })
