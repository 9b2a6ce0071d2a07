"""
Shared glue for the pack's runners: how a runner calls minions and tells
their answers apart (:func:`call`, :class:`Returns`), reads its master config
(:func:`config`), checks numbers (:func:`number`) and reports failure
(:func:`finish`, :func:`fail`), and runs per-campus jobs at once
(:func:`per_campus`), among them the Pis' presence check that spares a runner
the wait for kiosks that are off (:func:`split_by_presence`). No Salt here:
the runner passes in what talks to Salt.

Jenkins and operators read ``salt-run ... --out=json``: every runner returns a
dict with ``result`` (bool), ``retcode`` and, on failure, ``error``.

Two channels carry the exit code, because Salt reads both: salt 3007's
``salt-run`` exits with the ``retcode`` key of the returned dict
(salt/cli/run.py), while the job's ``success`` flag (salt-api, reactors,
orchestrate) comes from ``__context__["retcode"]`` (salt/client/mixins.py).
"""

import importlib.util
import math
import re
import time

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


def flag(value, field):
    """A yes/no argument as the CLI gives it (``True``, ``"false"``, ``1``...); anything else names ``field``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise RunnerError(f"{field}: {fleet_fields.shown(value)} is not True or False", field=field)


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


class RunnerError(fleet_fields.FleetError):
    """A runner's request that cannot be served (bad argument, unknown target); the message names the field."""


class ConfigError(RunnerError):
    """A runner's master config (``__opts__[key]``) that is not what the runner needs; names ``key.field``."""


def config(opts, key):
    """
    The runner's master config mapping ``opts[key]``: ``{}`` when unset,
    :class:`ConfigError` naming ``key`` when it is anything but a mapping.
    """
    if not isinstance(key, str) or not fleet_fields.NAME.match(key):
        raise ConfigError(f"key: {fleet_fields.shown(key)} is not a config key", field="key")
    value = (opts or {}).get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping in the master config, got {type(value).__name__}", field=key)
    return value


# ---------------------------------------------------------------- calling minions

# What Salt 3007 puts in place of a return it did not get (salt/client/__init__.py)
SILENT_PREFIX = "Minion did not return"
# The strings a minion returns instead of the function's answer (salt/minion.py): an
# exception, a missing function or module, bad arguments
_SALT_ERROR = re.compile(
    r"^(ERROR\b|The minion function caused an exception|Passed invalid arguments to |Command required for "
    r"|'[^']{1,200}' (is not available|__virtual__ returned False))"
)
MAX_REASON = 300


class Returns:
    """
    The answers of one job, each target in exactly one of:

    - ``answered``: ``{minion: return}``, the function's answer;
    - ``failed``: ``{minion: reason}``, answered with an error (one of Salt's
      error strings, a string with a non-zero retcode, or ``{"result": False}``
      with its ``error``/``comment``); the raw return is in ``returns``;
    - ``silent``: ``[minion]``, no return (Salt's "Minion did not return",
      or none at all), or ``conflicting``.

    ``conflicting`` lists the minions that answered twice, differently: a
    return forged by another minion behind a syndic (the real one still
    arrives), so neither is believed. ``returns`` holds the raw return of
    every minion in ``answered`` or ``failed``.
    """

    def __init__(self, targets, answered, failed, silent, conflicting, returns):
        self.targets = targets
        self.answered = answered
        self.failed = failed
        self.silent = silent
        self.conflicting = conflicting
        self.returns = returns

    @property
    def ok(self):
        """True when every target answered without an error."""
        return not self.failed and not self.silent

    def as_dict(self):
        """``{answered, failed, silent, conflicting}`` for a runner's return."""
        return {"answered": dict(self.answered), "failed": dict(self.failed),
                "silent": list(self.silent), "conflicting": list(self.conflicting)}

    def __repr__(self):
        return f"Returns(answered={sorted(self.answered)}, failed={self.failed}, silent={self.silent})"


def failure(ret, retcode=0):
    """
    Why a minion's return is a failure, or None when it is an answer: Salt's
    error strings (and any string with a non-zero ``retcode``), or a mapping
    with ``result`` False (its ``error`` or ``comment`` as the reason).
    """
    if isinstance(ret, str):
        if _SALT_ERROR.match(ret) or (retcode not in (0, None)):
            return _reason(ret)
        return None
    if isinstance(ret, dict) and ret.get("result") is False:
        return _reason(ret.get("error") or ret.get("comment") or "result: False")
    return None


def _reason(text):
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _silent(ret):
    return isinstance(ret, str) and ret.startswith(SILENT_PREFIX)


def targets_of(targets):
    """The minion ids of a list target, sorted and unique; :class:`RunnerError` naming ``targets`` otherwise."""
    if isinstance(targets, str) or not isinstance(targets, (list, tuple, set, frozenset)):
        raise RunnerError(f"targets: expected a list of minion ids, got {type(targets).__name__}", field="targets")
    for minion in targets:
        if not isinstance(minion, str) or not fleet_fields.NAME.match(minion):
            raise RunnerError(f"targets: {fleet_fields.shown(minion)} is not a minion id", field="targets")
    return sorted(set(targets))


def sort_returns(targets, pairs):
    """
    :class:`Returns` from the ``(minion, return, retcode)`` triples of one
    job, duplicates included (``retcode`` None when unknown). Returns from
    minions not in ``targets`` are dropped.
    """
    wanted = targets_of(targets)
    seen, conflicting = {}, set()
    for minion, ret, retcode in pairs:
        if minion not in wanted or _silent(ret):
            continue
        if minion in seen and seen[minion][0] != ret:
            conflicting.add(minion)
        seen.setdefault(minion, (ret, retcode))
    answered, failed, returns = {}, {}, {}
    for minion, (ret, retcode) in seen.items():
        if minion in conflicting:
            continue
        returns[minion] = ret
        reason = failure(ret, retcode)
        if reason is None:
            answered[minion] = ret
        else:
            failed[minion] = reason
    silent = sorted(m for m in wanted if m not in returns)
    return Returns(wanted, answered, failed, silent, sorted(conflicting), returns)


def call(run, targets, fun, arg=(), kwarg=None, timeout=60):
    """
    Run ``fun`` on the minions ``targets`` (a list target) and sort the
    answers: a :class:`Returns`. ``run`` is what talks to Salt, called as
    ``run(targets, fun, arg=..., kwarg=..., tgt_type="list", timeout=...)``:

    - a LocalClient (preferred: :func:`job_returns` yields every return, so
      a forged duplicate is seen, and the retcodes, and does not wait for a
      return Salt lost on its way through the syndics),
    - anything else with a ``cmd_iter`` of Salt's signature, or such a
      ``cmd_iter`` itself, or
    - ``__salt__["salt.execute"]`` (one ``{minion: return}`` mapping, in
      which a duplicate has already replaced the first return).

    No targets: an empty :class:`Returns`, nothing is sent.
    """
    wanted = targets_of(targets)
    if not isinstance(fun, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\Z", fun):
        raise RunnerError(f"fun: {fleet_fields.shown(fun)} is not a module.function name", field="fun")
    if arg is None:
        arg = ()
    if not isinstance(arg, (list, tuple)):  # a string would be sent as one argument per character
        raise RunnerError(f"arg: expected a list of arguments, got {type(arg).__name__}", field="arg")
    if not isinstance(kwarg, (dict, type(None))):
        raise RunnerError(f"kwarg: expected a mapping, got {type(kwarg).__name__}", field="kwarg")
    timeout = number(timeout, "timeout", 1, 86400)
    if not wanted:
        return sort_returns([], [])
    if hasattr(run, "run_job") and hasattr(run, "get_iter_returns"):
        got = job_returns(run, wanted, fun, arg=list(arg), kwarg=dict(kwarg or {}), timeout=timeout)
    else:
        run = getattr(run, "cmd_iter", run)
        got = run(wanted, fun, arg=list(arg), kwarg=dict(kwarg or {}), tgt_type="list", timeout=timeout) or {}
    if isinstance(got, dict):  # salt.execute: {minion: return}
        return sort_returns(wanted, [(m, r, None) for m, r in got.items()])
    pairs = []
    for item in got:  # cmd_iter: {minion: {"ret": ..., "retcode": ...}} per return
        for minion, load in (item or {}).items():
            if isinstance(load, dict) and "ret" in load:
                pairs.append((minion, load["ret"], load.get("retcode")))
    return sort_returns(wanted, pairs)


CACHE_POLL_S = 2.0  # how often a job still missing returns looks in the master's job cache


def _now():
    return time.monotonic()


def _idle():
    time.sleep(0.01)  # between two looks at the bus, as Salt's blocking iterator sleeps (no busy loop)


def job_returns(client, targets, fun, arg=(), kwarg=None, timeout=60):
    """
    One job to the minion ids ``targets`` on a LocalClient, yielding
    ``{minion: {"ret": ..., "retcode": ...}}`` per return as ``cmd_iter``
    does (duplicates included), with two differences that matter behind
    syndics:

    - it ends once every target has answered and the master's
      ``syndic_wait`` has passed since the publish (Salt's own window for
      late answers), instead of waiting for the syndics' lists of expected
      minions: the top master has no key for a kiosk, so without those lists
      Salt waits out the whole timeout;
    - while a target is missing it reads the job in the master's job cache
      every :data:`CACHE_POLL_S` and yields the returns found there that no
      event brought: under load some return events never reach the runner
      although the master stored the returns (measured: 10 of 25 kiosk
      returns of a push, the runner then held to its 300 s timeout).

    A target that never answers is waited for as Salt waits (its timeout,
    then ``find_job``). A forged duplicate is seen only as a second event:
    the job cache keeps the first return per minion, so a return taken from
    it is not compared with a later event of the same minion.
    """
    opts = getattr(client, "opts", None) or {}
    syndic_wait = float(opts.get("syndic_wait") or 0) if opts.get("order_masters") else 0.0
    cache = f"{opts.get('master_job_cache') or 'local_cache'}.get_jid"
    wanted = set(targets)
    was_listening = bool(getattr(client.event, "cpub", False))
    pub, returns = None, None
    try:
        pub = client.run_job(sorted(wanted), fun, arg=list(arg), tgt_type="list", timeout=timeout,
                             kwarg=kwarg, listen=True)
        if not pub or "jid" not in pub:
            return
        began = _now()
        next_poll, seen, from_cache = began + CACHE_POLL_S, set(), set()
        returns = client.get_iter_returns(pub["jid"], pub.get("minions") or [], timeout=timeout,
                                          tgt=sorted(wanted), tgt_type="list", block=False)
        for item in returns:
            if item is None:
                _idle()
            for minion, load in (item or {}).items():
                # a late event of a return already taken from the cache is the same return (the cache holds
                # the first one per minion, in full; an event over max_event_size arrives trimmed)
                if isinstance(load, dict) and "ret" in load and minion not in from_cache:
                    seen.add(minion)
                    yield {minion: load}
            now = _now()
            if wanted - seen and now >= next_poll:
                next_poll = now + CACHE_POLL_S
                for minion, load in cached_returns(client, cache, pub["jid"], wanted - seen):
                    seen.add(minion)
                    from_cache.add(minion)
                    yield {minion: load}
            if not wanted - seen and now - began >= syndic_wait:
                return
        # Salt's wait ended (every minion of the syndics' lists answered, or the timeout): a return whose
        # event was lost may have been stored since the last look
        for minion, load in cached_returns(client, cache, pub["jid"], wanted - seen):
            yield {minion: load}
    finally:
        if returns is not None:
            returns.close()
        if pub and "jid" in pub and hasattr(client, "_clean_up_subscriptions"):
            client._clean_up_subscriptions(pub["jid"])  # pylint: disable=protected-access
        if not was_listening:
            client.event.close_pub()


def cached_returns(client, cache, jid, missing):
    """
    ``[(minion, {"ret", "retcode"})]`` of the ``missing`` minions whose
    return for ``jid`` is in the master's job cache (the returner function
    ``cache``, e.g. ``local_cache.get_jid``); ``[]`` when the cache cannot
    be read (the events stay the only source).
    """
    try:
        data = client.returners[cache](jid) or {}
    except Exception:  # pylint: disable=broad-except  # any returner's failure: fall back to the events
        return []
    found = []
    for minion in sorted(missing):
        entry = data.get(minion) if isinstance(data, dict) else None
        if isinstance(entry, dict) and "return" in entry:
            found.append((minion, {"ret": entry["return"], "retcode": entry.get("retcode")}))
    return found


# --------------------------------------------------------------------------- per campus, presence

MAX_PARALLEL_JOBS = 32  # campus jobs in flight at once (one LocalClient and thread each)


def merge(parts):
    """One :class:`Returns` from the :class:`Returns` of disjoint jobs (each minion in one job only)."""
    return Returns(
        sorted(m for got in parts for m in got.targets),
        {m: r for got in parts for m, r in got.answered.items()},
        {m: r for got in parts for m, r in got.failed.items()},
        sorted(m for got in parts for m in got.silent),
        sorted(m for got in parts for m in got.conflicting),
        {m: r for got in parts for m, r in got.returns.items()},
    )


def per_campus(call_one, jobs, max_workers=MAX_PARALLEL_JOBS):
    """
    Run ``jobs`` (``{campus: (targets, fun, kwarg)}``) all at once, each as
    ``call_one(targets, fun, kwarg)`` on its own thread (a runner passes a
    function that opens its own LocalClient and calls :func:`call`, as Salt's
    netapi does), so a run waits one timeout, not one per campus. The
    threads run in copies of this context: Salt's loader dunders (``__opts__``)
    live in contextvars. Returns ``{campus: Returns}``.
    """
    import concurrent.futures  # pylint: disable=import-outside-toplevel
    import contextvars  # pylint: disable=import-outside-toplevel

    if not jobs:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), max_workers)) as pool:
        futures = {c: pool.submit(contextvars.copy_context().run, call_one, *jobs[c]) for c in sorted(jobs)}
        return {c: future.result() for c, future in futures.items()}


PRESENCE_FUN = "kiosk_scan.presence"


def presence_jobs(selection, campus_pis):
    """The ``kiosk_scan.presence`` job per campus of ``selection`` that has kiosks and Pis (for :func:`per_campus`)."""
    return {c: (campus_pis[c], PRESENCE_FUN, {"kiosks": sorted(ids)})
            for c, ids in selection.items() if ids and campus_pis.get(c)}


def present_kiosks(selection, answers):
    """
    Split the kiosks of ``selection`` (``{campus: [ids]}``) by the Pis'
    presence answers (``{campus: Returns}`` of :func:`presence_jobs`; each
    answer ``{"campus", "kiosks": {id: bool}}``): ``(present, absent,
    unknown)``, sorted lists. A kiosk is present when any Pi of its campus
    holds a connection from its minion, absent only when every Pi of its
    campus answered and none holds one (a kiosk may be connected to the one
    Pi that did not answer), unknown otherwise (a Pi cut or restarting, an
    older pack on the Pis): callers ask those as before rather than guess.
    """
    present, absent, unknown = [], [], []
    for campus, kiosk_ids in selection.items():
        got = answers.get(campus)
        seen = {p: r for p, r in (got.answered.items() if got else ())
                if isinstance(r, dict) and r.get("campus") == campus and isinstance(r.get("kiosks"), dict)}
        everyone = bool(got) and bool(got.targets) and set(got.targets) <= set(seen)
        for kiosk in kiosk_ids:
            if any(r["kiosks"].get(kiosk) is True for r in seen.values()):
                present.append(kiosk)
            elif everyone:
                absent.append(kiosk)
            else:
                unknown.append(kiosk)
    return sorted(present), sorted(absent), sorted(unknown)


PRESENCE_TIMEOUT = 10  # s: the Pis answer from their kernel's table at once


def caller(local_client, timeout):
    """
    ``call_one(targets, fun, kwarg)`` for :func:`per_campus`: one job on a
    LocalClient of its own (a client is not shared between threads), sorted
    by :func:`call`. ``local_client()`` opens one (the runner passes
    ``lambda: salt.client.get_local_client(__opts__["conf_file"])``).
    """

    def call_one(targets, fun, kwarg=None):
        with local_client() as client:
            return call(client, targets, fun, kwarg=kwarg, timeout=timeout)

    return call_one


def split_by_presence(local_client, campus_pis, selection, timeout=PRESENCE_TIMEOUT):
    """
    Ask each campus's Pis which of ``selection``'s kiosks have a minion
    connection (:func:`presence_jobs`, all campuses at once), so a runner
    sends its kiosk job only to kiosks that can answer and does not wait out
    its timeout for the ones that are off. Returns ``(ask, absent)``: the
    present kiosks plus those of campuses no Pi answered for (asked as
    before), and the kiosks no Pi of their campus holds a connection from.
    """
    answers = per_campus(caller(local_client, timeout), presence_jobs(selection, campus_pis))
    present, absent, unknown = present_kiosks(selection, answers)
    return sorted(present + unknown), absent
