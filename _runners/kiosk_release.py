"""
Versioned kiosk releases, from the top master (``salt-run kiosk_release.*``;
the contract, config keys included, is docs/releases.md).

A release crosses the WAN once per campus (a seed Pi stages it from the
master's store, the campus's other Pis copy it over the LAN, kiosks download
it from their Pis); what a campus runs is its signed **pin**, kept in the
master's cachedir with a serial that grows on every change.

This file is glue: it loads the ``kiosk_release`` master config, the
inventory and the state once per run, asks the release store
(``_utils/fleet_store.py``: import, hash, sign, store) and the rollout rules
(``_utils/fleet_rollout.py``: pins, pushes, rings, rollback, staging,
status), calls the minions through ``fleet_runner.call``, records and
reports. Every function returns ``{"result": bool, ...}`` and exits non-zero
on failure.
"""

import concurrent.futures
import contextvars
import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_alerts,
        fleet_fields,
        fleet_inventory,
        fleet_metrics,
        fleet_rate,
        fleet_release,
        fleet_rollout,
        fleet_runner,
        fleet_sign,
        fleet_state,
        fleet_store,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_alerts
    import fleet_fields
    import fleet_inventory
    import fleet_metrics
    import fleet_rate
    import fleet_release
    import fleet_rollout
    import fleet_runner
    import fleet_sign
    import fleet_state
    import fleet_store

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_release"

CONFIG_KEY = "kiosk_release"
DEFAULT_TIMEOUT = 3600
TEXTFILE = "kiosk_release.prom"
STATE_DEFAULTS = {"pins": {}, "pushed": {}, "metrics": {}}
STATE_LOCK_WAIT = 60  # s; the lock is only held to read and write a small JSON file
PI_STATUS_TIMEOUT = 60  # s; at most this long for the Pis' repo_status before a push
SILENT = fleet_rollout.SILENT
CONFLICTING = "answered twice, differently (a forged return): not believed"


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------- one run


def _state():
    """The runner's state (pins, pushes, metrics), locked when changed: reactors run runners concurrently."""
    return fleet_state.Store(os.path.join(__opts__["cachedir"], CONFIG_KEY), "state.json", STATE_DEFAULTS,
                             STATE_LOCK_WAIT, fleet_rollout.RolloutError)


class _Run:
    """What one runner call loads once: the config and state now; store, inventory, key when first used."""

    def __init__(self):
        self.conf = fleet_runner.config(__opts__, CONFIG_KEY)
        self.state = _state()
        self._loaded = {}

    def _once(self, what, load):
        if what not in self._loaded:
            self._loaded[what] = load()
        return self._loaded[what]

    @property
    def store(self):
        base = (__opts__.get("file_roots") or {}).get("base")
        return self._once("store", lambda: fleet_store.store_dir(self.conf.get("store"), base))

    @property
    def data(self):
        return self._once("data", lambda: fleet_inventory.master_data(__opts__))

    @property
    def inventory(self):
        return self._once("inventory", lambda: fleet_inventory.validate(self.data.get(fleet_inventory.PILLAR_KEY)))

    def verify_keys(self):
        """The fleet's release verify keys (fleet data ``kiosk_release:verify_key``, what the Pis get in pillar)."""
        release = self.data.get(fleet_inventory.RELEASE_KEY)
        return self._once("verify_keys", lambda: fleet_sign.verify_keys(
            release.get("verify_key") if isinstance(release, dict) else None))

    def master_source(self):
        return self._once("source", lambda: fleet_store.master_source(self.conf.get("master_url")))

    def key(self):  # read and checked at its first use in the run; never shown
        return self._once("key", lambda: fleet_store.read_signing_key(self.conf.get("signing_key")))

    def rates(self):
        """
        The transfer caps (``fleet_rate``): ``{"wan": {campus: bytes/s or None}, "lan": bytes/s or None}``
        from ``kiosk_release:wan_rate``, ``campus_rates`` and ``lan_rate``; checked before any job.
        """
        return self._once("rates", lambda: {"wan": fleet_rate.campus_rates(self.conf, sorted(self.inventory["campuses"])),
                                            "lan": fleet_rate.lan_rate(self.conf)})

    def prune(self):
        """Whether a successful push prunes its campus's Pis (``kiosk_release:prune``, default true)."""
        return self._once("prune", lambda: fleet_rollout.check_prune(self.conf.get("prune")))

    def timeout(self, value=None):
        value = self.conf.get("timeout", DEFAULT_TIMEOUT) if value is None else value
        return fleet_runner.number(value, "timeout", 10, 86400)

    def campuses(self, campuses, field="campuses"):
        return fleet_rollout.select_campuses(self.inventory, campuses, field)

    def one_campus(self, campus):
        if not campus or len(fleet_inventory.names(campus, "campus")) != 1:
            raise fleet_rollout.RolloutError("campus: name one campus (campus=riverside)")
        return self.campuses(campus, "campus")[0]

    def pis(self, campus):
        return fleet_inventory.pis_of(self.inventory, campus)

    def kiosks(self, campus):
        return sorted(self.inventory["campuses"][campus]["kiosks"])


def _finish(action, ret, update=None):
    """Finish a runner: record metrics (never turning a result around), set the exit code."""
    try:
        with _state().locked() as state:
            if update:
                update(state["metrics"])
            state["metrics"].setdefault("runs", {})[action] = bool(ret.get("result"))
            directory = fleet_runner.config(__opts__, CONFIG_KEY).get("textfile_dir")
            if directory:
                try:
                    fleet_metrics.write_textfile(directory, TEXTFILE,
                                                 fleet_metrics.render(fleet_rollout.metric_families(state)),
                                                 field=f"{CONFIG_KEY}.textfile_dir")
                except (ValueError, OSError) as exc:
                    log.warning("kiosk_release: cannot write %s in %s: %s", TEXTFILE, directory, exc)
    except (OSError, ValueError) as exc:
        log.warning("kiosk_release: metrics not recorded: %s", exc)
    return fleet_runner.finish(__context__, ret)


def _failed(action, exc):
    return _finish(action, {"result": False, "error": str(exc)})


def _call(targets, fun, arg=(), kwarg=None, timeout=60):
    """
    ``{minion: return}`` of one job (failed answers too, for their reason);
    a silent minion is left out, one that answered twice, differently (a
    return forged behind a syndic) gets :data:`CONFLICTING`, never believed.
    """
    if not targets:
        return {}
    with _local_client() as client:
        got = fleet_runner.call(client, targets, fun, arg, kwarg, timeout)
    if got.conflicting:
        log.warning("kiosk_release: %s: conflicting returns from %s", fun, ", ".join(got.conflicting))
    return {**got.returns, **dict.fromkeys(got.conflicting, CONFLICTING)}


def _local_client():
    import salt.client  # pylint: disable=import-outside-toplevel

    return salt.client.get_local_client(__opts__["conf_file"])


def _fire(tag, data):
    __salt__["event.send"](tag, data)


def _record_kiosks(name, kiosks_by_campus, silent=None):
    counts = fleet_rollout.kiosk_counts(kiosks_by_campus, silent)
    return lambda metrics: metrics.setdefault("kiosks", {}).setdefault(name, {}).update(counts)


def _record_wan(name, report):
    wan = {campus: entry["wan_bytes"] for campus, entry in report.items()}
    return lambda metrics: metrics.setdefault("wan", {}).setdefault(name, {}).update(wan)


# --------------------------------------------------------------------------- the store


def publish(name=None, version=None, source=None, install=None, campuses=None, md5=None, success_codes=None):
    """
    Publish ``name`` ``version`` from ``source`` (a file or flat directory
    under ``kiosk_release:source_root``, read without following a link, or
    an http(s) URL fetched without proxy or redirect) into the store,
    hashed while copied, with a manifest signed by ``kiosk_release:signing_key``
    (``fleet_store.publish``). ``install``: the kiosk's install command as an
    argument list (default: the package's ``kiosk-install.json``);
    ``success_codes``: its exit codes meaning success (default ``[0]``);
    ``md5``: the build's, checked against the copy. Versions only go up.
    With ``campuses``, they are pinned to it and wait to be staged by the
    reactors (``on_published``, then ``push``).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.publish name=kiosk-app version=1.4.0 source=/var/lib/jenkins/workspace/out/kiosk-app-1.4.0.msi \\
            install='["msiexec", "/i", "{dir}\\\\kiosk-app-1.4.0.msi", "/qn"]' md5=9e107d9d372bb6826bd81d3542a419d6
        salt-run kiosk_release.publish name=kiosk-app version=1.4.1 source=/var/lib/jenkins/workspace/out/ campuses=riverside
    """
    try:
        run = _Run()
        targets = run.campuses(campuses) if campuses else []
        doc = fleet_store.publish(run.store, name, version, source, run.conf.get("source_root"), run.key(),
                                  install=install, success_codes=success_codes, md5=md5)
        with run.state.locked() as state:  # not written when no campus is named
            for campus, pin_ in fleet_rollout.set_pins(state, name, targets, doc["version"], run.key(),
                                                       time.time()).items():
                # the published event is only a hint: on_published stages what is recorded here
                fleet_rollout.wait_for_staging(state, name, campus, pin_["serial"])
    except (ValueError, OSError) as exc:
        return _failed("publish", exc)
    size = fleet_release.manifest_size(doc)
    _fire("kiosk/release/published", {"name": doc["name"], "version": doc["version"], "campuses": targets})
    return _finish("publish", {
        "result": True, "name": doc["name"], "version": doc["version"], "bytes": size,
        "files": doc["files"], "signed": "signature" in doc, "campuses": targets,
    }, lambda metrics: metrics.setdefault("published", {}).update(
        {doc["name"]: {"version": doc["version"], "bytes": size}}))


def published(name=None):
    """
    The published versions of ``name`` (or of every release), oldest first.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.published kiosk-app
    """
    try:
        store = _Run().store
        names = [fleet_release.check_name(name)] if name else fleet_store.releases(store)
        releases = {n: fleet_store.published(store, n) for n in names}
    except (ValueError, OSError) as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "releases": releases})


def keygen(path=None, force=False):
    """
    Write a new Ed25519 signing key to ``path`` (default
    ``kiosk_release:signing_key``), mode 0600, never over an existing file
    unless ``force=True``; return only its public key (for the
    ``kiosk_release:verify_key`` pillar list).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.keygen path=/etc/salt/pki/master/kiosk_release-2027.pem
    """
    try:
        path = fleet_runner.config(__opts__, CONFIG_KEY).get("signing_key") if path is None else path
        public = fleet_store.write_key(path, force)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    log.info("kiosk_release: wrote a new signing key to %s", path)
    return fleet_runner.finish(__context__, {"result": True, "path": path, "public_key": public})


def public_key(path=None):
    """
    The public key of the signing key (default ``kiosk_release:signing_key``),
    to put in the ``kiosk_release:verify_key`` pillar list.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.public_key
    """
    try:
        public = fleet_sign.public_key_of(_Run().key()) if path is None else fleet_store.public_key_at(path)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "public_key": public})


# --------------------------------------------------------------------------- staging on the Pis


def _stage(run, name, version, campuses, timeout, serials):
    """
    Stage on every Pi of ``campuses`` in the rounds ``fleet_rollout.stage_rounds``
    plans (one WAN copy per campus, then LAN copies); the Pis of a campus
    pinned to ``version`` with the serial in ``serials`` get the signed pin.
    """
    pins, pin_errors = fleet_rollout.signed_pins(run.state.read(), name, version, serials, run.key)
    rates = run.rates()
    wan = {c: rates["wan"].get(c) for c in campuses}
    if any(wan.values()) and run.master_source().startswith("salt://"):
        # cp.get_file cannot be paced: the report says "no cap" rather than claim one
        log.warning("kiosk_release: the WAN cap needs kiosk_release:master_url (HTTP); salt:// staging is not capped")
        wan = dict.fromkeys(wan)
    rounds = fleet_rollout.stage_rounds({c: run.pis(c) for c in campuses})
    returns = None
    try:
        while True:
            hop, wave = rounds.send(returns)
            returns = {}
            source = run.master_source() if hop == "master->pi" else "campus"
            # the WAN cap on the master->Pi copies only; the LAN copies uncapped unless lan_rate
            for pis, pin_, rate in fleet_rollout.stage_jobs(wave, pins, fleet_rollout.hop_rates(hop, wan,
                                                                                                rates["lan"])):
                kwarg = {"source": source, "hop": hop, **({"pin": pin_} if pin_ else {}),
                         **({"rate": rate} if rate else {})}
                returns.update(_call(pis, "kiosk_pkg.stage", [name, version], kwarg, timeout))
    except StopIteration as done:
        report = done.value
    for campus, error in pin_errors.items():
        report[campus]["pin_error"] = error
    return fleet_rollout.stage_rates(report, wan, rates["lan"])


def _rollback_target(run, name, campus):
    """
    ``[version]`` that ``rollback`` would republish for ``campus`` now (from
    the pin's history, :func:`fleet_rollout.rollback_plan`), ``[]`` when
    there is none: the Pis keep it, so a rollback stays free.
    """
    pin_ = fleet_rollout.pin_of(run.state.read(), name, campus)
    wanted = [pin_.get("version"), *(pin_.get("history") or [])] if pin_ else []
    try:
        previous, _ = fleet_rollout.rollback_plan(
            name, campus, pin_, fleet_store.manifests(run.store, name, wanted), fleet_store.published(run.store, name))
    except ValueError:  # no earlier content (first release) or a store that lost it: nothing extra to keep
        return []
    return [previous]


def _prune(run, name, campus, timeout):
    """
    After a successful push: ``kiosk_pkg.prune`` on the campus's Pis (the
    pin, the previous version and anything above the pin stay);
    ``{pi: {"removed", "kept"} | {"error"}}``. Never fails the push.
    """
    pis = run.pis(campus)
    try:
        kwarg = {"also": _rollback_target(run, name, campus)}
        returns = _call(pis, "kiosk_pkg.prune", [name], kwarg, min(timeout, PI_STATUS_TIMEOUT))
    except Exception as exc:  # pylint: disable=broad-except - the push stands whatever the pruning does
        log.warning("kiosk_release: pruning %s on %s failed: %s", name, campus, exc)
        returns = dict.fromkeys(pis, {"result": False, "error": f"prune: {exc.__class__.__name__}"})
    pruned = fleet_rollout.prune_results(pis, returns)
    for pi, entry in pruned.items():
        if "error" in entry:
            log.warning("kiosk_release: %s: prune of %s failed: %s", pi, name, entry["error"])
    return pruned


def on_published(name=None, version=None, campuses=None, timeout=None):
    """
    What the ``kiosk/release/published`` reactor calls. The event is a hint
    (a kiosk can forge it): only campuses ``publish`` recorded as waiting,
    still pinned to it with that serial, are staged, once; an invented or
    replayed event starts no job and changes no state.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.on_published kiosk-app 1.4.0 campuses=riverside
    """
    try:
        run = _Run()
        fleet_release.check_name(name)
        version = fleet_release.check_version(version)
        hints = fleet_inventory.names(campuses, "campuses") if campuses not in (None, "") else None
        timeout = run.timeout(timeout)
        held = version in fleet_store.published(run.store, name)
        if held:
            fleet_store.manifest(run.store, name, version)  # a readable, valid manifest (signed at publish)
        inventory = run.inventory  # before the claim: a claim is never lost to an inventory error
        run.master_source()  # the same for a bad master_url
        run.rates()  # and for a bad wan_rate, campus_rates or lan_rate
        with run.state.locked() as state:
            claimed = fleet_rollout.claim_event_staging(state, name, version, hints, held)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    if not claimed:
        # no metrics, no state write: a forged event must leave no trace but the log line
        log.info("kiosk_release: published event for %s %s: nothing of it is waiting to be staged", name, version)
        return fleet_runner.finish(__context__, {"result": True, "staged": False,
                                                 "comment": f"nothing of {name} {version} waits to be staged"})
    report = _stage(run, name, version, [c for c in claimed if c in inventory["campuses"]], timeout, claimed)
    return _staged("stage", {"staged": True, "name": name, "version": version, "campuses": report}, report,
                   f"could stage {name} {version} (run kiosk_release.stage or rollout)", _record_wan(name, report))


def stage(name=None, version=None, campuses=None, timeout=None):
    """
    Stage a published release on the Pis of ``campuses`` (default: all):
    one Pi per campus fetches it from the master, the others copy it from
    that Pi; a campus pinned to it gets its pin too. Fails when a campus
    ends with no Pi holding it.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.stage kiosk-app 1.4.0
        salt-run kiosk_release.stage kiosk-app 1.4.0 campuses=riverside,hillside
    """
    try:
        run = _Run()
        version = fleet_release.check_version(version)
        fleet_store.manifest(run.store, name, version)
        targets = run.campuses(campuses)
        timeout = run.timeout(timeout)
        run.master_source()  # a bad master_url fails here, before any job
        run.rates()  # a bad rate setting too
        serials = fleet_rollout.pinned_serials(run.state.read(), name, version, targets)
    except ValueError as exc:
        return _failed("stage", exc)
    report = _stage(run, name, version, targets, timeout, serials)
    return _staged("stage", {"name": name, "version": version, "campuses": report}, report,
                   f"could stage {name} {version}", _record_wan(name, report))


def _staged(action, ret, report, error, update=None):
    """Finish a staging runner: it fails when a campus ended with no Pi holding the release."""
    failed = fleet_rollout.unstaged(report)
    ret = {"result": not failed, **ret}
    if failed:
        ret["error"] = f"no Pi of {', '.join(failed)} {error}"
    return _finish(action, ret, update)


# --------------------------------------------------------------------------- pins, pushes, rollouts


def _pin_pis(run, name, campus, pin_):
    """Copy the signed campus pin into the index of every Pi of the campus; ``{pi: True or error}``."""
    pis = run.pis(campus)
    try:
        doc = fleet_rollout.pin_doc(name, campus, pin_, run.key)
    except ValueError as exc:
        return dict.fromkeys(pis, str(exc))
    returns = _call(pis, "kiosk_pkg.pin", [name], {"pin": doc})
    return {pi: True if fleet_rollout.answer_ok(returns.get(pi)) else fleet_rollout.answer_error(returns.get(pi))
            for pi in pis}


def _push(run, name, version, campuses, timeout):
    """``check_update`` on the kiosks of ``campuses``; ``{campus: {kiosk: True | SILENT | reason}}``."""
    kiosks = {c: run.kiosks(c) for c in campuses}
    returns = _call([k for per in kiosks.values() for k in per], "kiosk_pkg.check_update", [name], {}, timeout)
    return fleet_rollout.push_results(kiosks, returns, name, version)


def _push_campus(run, name, version, campus, timeout):
    """
    Push the campus pin if it is due (``fleet_rollout.push_decision``) and
    live on a Pi of the campus; the campus is marked pushed only after the
    push succeeded. Returns ``(kiosks, None)`` or ``(None, why not)``.
    """
    serial, skip = fleet_rollout.push_decision(run.state.read(), name, campus, version, time.time())
    if skip:
        return None, skip
    pis = run.pis(campus)
    # the Pis answer in seconds; a stopped Pi costs the whole wait, so a short push timeout shortens it too
    asked = _call(pis, "kiosk_pkg.repo_status", [name], timeout=min(timeout, PI_STATUS_TIMEOUT))
    if not fleet_rollout.pin_live(asked, version, serial):
        return None, f"{campus}: no Pi has the pin {name} {version} (serial {serial}) live yet"
    with run.state.locked() as state:  # decide again under the lock, claim, act after releasing it
        again, skip = fleet_rollout.push_decision(state, name, campus, version, time.time())
        if skip or again != serial:
            return None, skip or f"{campus}: the pin moved while its Pis were asked"
        fleet_rollout.claim_push(state, name, campus, serial, int(time.time()) + timeout + 60)
    ok = False
    try:
        kiosks = _push(run, name, version, [campus], timeout)[campus]
        ok = fleet_rollout.push_succeeded(kiosks)
    finally:
        with run.state.locked() as state:
            fleet_rollout.end_push(state, name, campus, serial, ok)
    return kiosks, None


def push(name=None, version=None, campus=None, pi=None, timeout=None):
    """
    Install ``version`` on the kiosks of ``campus`` (or of the inventory Pi
    ``pi``, as the ``kiosk/release/staged`` reactor passes it) if it is the
    campus pin, a Pi has it live and it is not pushed yet; the campus is
    marked pushed only after a push no answering kiosk failed.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.push kiosk-app 1.4.0 campus=riverside
        salt-run kiosk_release.push kiosk-app 1.4.0 pi=pi-riverside-2   # the campus of that Pi
    """
    try:
        run = _Run()
        fleet_release.check_name(name)
        version = fleet_release.check_version(version)
        if pi is not None:
            campus = fleet_rollout.campus_of_pi(run.inventory, pi)
        if not campus:
            raise fleet_rollout.RolloutError("campus: name one campus to push to (or pi=<a Pi of it>)")
        campus = run.one_campus(campus)
        timeout = run.timeout(timeout)
        prune_after = run.prune()
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    kiosks, skip = _push_campus(run, name, version, campus, timeout)
    if skip:  # nothing done: no metrics either (the state file stays as it was)
        return fleet_runner.finish(__context__, {"result": True, "pushed": False, "comment": skip})
    bad = fleet_rollout.failed_kiosks(kiosks)
    ret = {"result": not bad, "pushed": True, "name": name, "version": version, "campus": campus, "kiosks": kiosks}
    if bad:
        ret["error"] = f"{len(bad)} of {len(kiosks)} kiosks of {campus} are not on {version} (the push stays due)"
    elif prune_after:
        ret["pruned"] = _prune(run, name, campus, timeout)
    return _finish("push", ret)


def _confirm(run, name, version, kiosks_by_campus):
    """
    With ``kiosk_release:confirm_downloads`` (default on) a kiosk counts as
    on ``version`` only when a Pi of its campus also served it that
    version's files (``kiosk_pkg.served``: the Pi's nginx log, by the
    kiosk's inventory address): a return alone can be forged behind a syndic.
    """
    if not run.conf.get("confirm_downloads", True):
        return kiosks_by_campus
    confirmed = {}
    for campus, kiosks in kiosks_by_campus.items():
        pis = run.pis(campus)
        served = fleet_rollout.served_by_ip(_call(pis, "kiosk_pkg.served", [name, version]), name, version)
        spec = run.inventory["campuses"][campus]["kiosks"]
        ips = {k: str(spec[k].get("ip") or "") for k in kiosks}
        confirmed[campus] = fleet_rollout.confirm_ring(kiosks, ips, served, SILENT)
    return confirmed


def _roll_ring(run, name, version, ring, timeout, threshold):
    with run.state.locked() as state:
        now = time.time()
        pins = fleet_rollout.set_pins(state, name, ring, version, run.key(), now)
        for campus in ring:  # the push below is this rollout's: reactors skip it while it runs
            fleet_rollout.claim_push(state, name, campus, pins[campus]["serial"], int(now) + 2 * timeout + 120)
    ok = {}
    try:
        staged = _stage(run, name, version, ring, timeout, {c: p["serial"] for c, p in pins.items()})
        # staging with the serial pinned every Pi that holds the version (staged_on)
        pushed = [c for c in ring if staged[c]["seed"]]
        kiosks = _confirm(run, name, version, _push(run, name, version, pushed, timeout))
        ok = {c: fleet_rollout.push_succeeded(kiosks[c]) for c in pushed}
    finally:
        with run.state.locked() as state:  # only a campus whose push succeeded is marked pushed
            for campus in ring:
                fleet_rollout.end_push(state, name, campus, pins[campus]["serial"], ok.get(campus, False))
    entry = fleet_rollout.ring_outcome(ring, version, staged, kiosks, {c: run.kiosks(c) for c in ring}, threshold)
    if run.prune():  # a campus whose push succeeded no longer needs what is below its previous version
        entry["pruned"] = {c: _prune(run, name, c, timeout) for c in ring if ok.get(c)}
    return entry


def _rollout(run, name, version, targets, rings, threshold, timeout):
    done, ret = [], {"result": True, "name": name, "version": version, "rings": []}
    for ring in rings:
        entry = _roll_ring(run, name, version, ring, timeout, threshold)
        ret["rings"].append(entry)
        done.extend(ring)
        if not entry["go_on"]:
            ret.update(result=False, halted=True, not_started=[c for c in targets if c not in done],
                       error=entry["error"])
            break
    kiosks = {c: k for entry in ret["rings"] for c, k in entry["kiosks"].items()}
    return _finish("rollout", ret, _record_kiosks(name, kiosks))


def rollout(name=None, version=None, campuses=None, canary=None, rings=None, max_error_share=None, timeout=None):
    """
    Roll ``version`` out ring by ring (``canary=east`` first alone, or
    ``rings='east;west,north'``): pin, stage, install, confirm by the Pis'
    nginx logs, and go on only while the share of kiosks not on it stays at
    or below ``max_error_share`` (default ``kiosk_release:max_error_share``).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.rollout kiosk-app 1.4.0 campuses=riverside
        salt-run kiosk_release.rollout kiosk-app 1.4.0 canary=riverside max_error_share=0.1
        salt-run kiosk_release.rollout kiosk-app 1.4.0 rings='riverside;hillside,lakeside'
    """
    try:
        run = _Run()
        version = fleet_release.check_version(version)
        fleet_store.manifest(run.store, name, version)
        targets = run.campuses(campuses)
        ring_plan = fleet_rollout.plan_rings(targets, canary=canary, rings=rings)
        threshold = fleet_rollout.check_share(
            run.conf.get("max_error_share", 0.0) if max_error_share is None else max_error_share)
        timeout = run.timeout(timeout)
        run.key()  # pins are signed: fail here, before any ring, without a usable key
        run.master_source()  # a bad master_url fails here too
        run.rates()
        run.prune()
    except ValueError as exc:
        return _failed("rollout", exc)
    return _rollout(run, name, version, targets, ring_plan, threshold, timeout)


def pin(name=None, version=None, campus=None, timeout=None):
    """
    Pin ``campus`` to ``version`` and stage it on its Pis, without a push:
    kiosks move at their next boot or ``kiosk_pkg.check_update``.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.pin kiosk-app 1.3.2 campus=riverside
    """
    try:
        run = _Run()
        version = fleet_release.check_version(version)
        fleet_store.manifest(run.store, name, version)
        if not campus:
            raise fleet_rollout.RolloutError("campus: name the campus (campus=riverside)")
        targets = run.campuses(campus, "campus")
        timeout = run.timeout(timeout)
        run.master_source()  # a bad master_url fails before the pin moves
        run.rates()  # so does a bad rate setting
        with run.state.locked() as state:
            pins = fleet_rollout.set_pins(state, name, targets, version, run.key(), time.time())
            for c in targets:  # no push: the staged reactor must leave these kiosks alone
                fleet_rollout.hold_push(state, name, c, pins[c]["serial"])
    except ValueError as exc:
        return _failed("pin", exc)
    staged = _stage(run, name, version, targets, timeout, {c: p["serial"] for c, p in pins.items()})
    shown = {c: {k: v for k, v in p.items() if k != "history"} for c, p in pins.items()}
    return _staged("pin", {"name": name, "version": version, "pins": shown, "staging": staged}, staged,
                   f"could stage {version} (pinned all the same)")


def unpin(name=None, campus=None):
    """
    Freeze ``campus`` for ``name``: kiosks keep what they run until it is pinned again.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.unpin kiosk-app campus=riverside
    """
    try:
        run = _Run()
        fleet_release.check_name(name)
        if not campus:
            raise fleet_rollout.RolloutError("campus: name the campus (campus=riverside)")
        targets = run.campuses(campus, "campus")
        with run.state.locked() as state:
            pins = fleet_rollout.set_pins(state, name, targets, None, run.key(), time.time())
    except ValueError as exc:
        return _failed("unpin", exc)
    pis = {c: _pin_pis(run, name, c, pins[c]) for c in targets}
    bad = sorted(p for per in pis.values() for p, r in per.items() if r is not True)
    ret = {"result": not bad, "name": name, "frozen": targets, "pis": pis}
    if bad:
        ret["error"] = f"the pin could not be cleared on {', '.join(bad)}"
    return _finish("unpin", ret)


def rollback(name=None, campus=None, timeout=None):
    """
    Put ``campus`` back on the content it ran before its pin: republished
    (hard links) as the next version, ``rollback_of`` naming the source, and
    rolled out to the campus. Kiosks only ever move up.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.rollback kiosk-app campus=riverside
    """
    try:
        run = _Run()
        fleet_release.check_name(name)
        campus = run.one_campus(campus)
        timeout = run.timeout(timeout)
        threshold = fleet_rollout.check_share(run.conf.get("max_error_share", 0.0))
        pin_ = fleet_rollout.pin_of(run.state.read(), name, campus)
        wanted = [pin_.get("version"), *(pin_.get("history") or [])] if pin_ else []
        previous, version = fleet_rollout.rollback_plan(
            name, campus, pin_, fleet_store.manifests(run.store, name, wanted), fleet_store.published(run.store, name))
        run.master_source()  # a bad master_url fails before anything is stored
        run.rates()
        run.prune()
        fleet_store.rollback_copy(run.store, name, previous, version, run.key())
    except ValueError as exc:
        return _failed("rollback", exc)
    _fire("kiosk/release/published", {"name": name, "version": version, "campuses": [], "rollback_of": previous})
    ret = _rollout(run, name, version, [campus], [[campus]], threshold, timeout)
    ret["rolled_back"] = {"campus": campus, "from": pin_["version"], "content_of": previous, "as": version}
    return ret


# --------------------------------------------------------------------------- status


def status(name=None, campuses=None, timeout=60, presence=True):
    """
    Where ``name`` stands per campus: the pin, each Pi's staged versions
    and pin, each kiosk's version, the drift. Fails on drift or mixed
    versions (silent kiosks are listed, not failed). A due push whose pin a
    Pi has live is retried here (``push_retried``). While the Pis are asked
    for their repositories, they also say which kiosks hold a minion
    connection (``kiosk_scan.presence``); only those kiosks (and all kiosks
    of a campus no Pi answered for) are asked for their version, the others
    are listed silent and in ``absent`` without waiting out the timeout
    (``presence=False``: ask every kiosk).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.status kiosk-app
        salt-run kiosk_release.status kiosk-app campuses=riverside --out=json
    """
    try:
        run = _Run()
        fleet_release.check_name(name)
        targets = run.campuses(campuses)
        timeout = fleet_runner.number(timeout, "timeout", 1, 3600)
        presence = fleet_runner.flag(presence, "presence")
        push_timeout = run.timeout()
        state = run.state.read()
    except ValueError as exc:
        return _failed("status", exc)
    pis, kiosks = {c: run.pis(c) for c in targets}, {c: run.kiosks(c) for c in targets}
    asked, absent = sorted(k for per in kiosks.values() for k in per), []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # the Pis' two jobs at once: a silent Pi costs one timeout, not two
        # (each thread in a copy of this context: Salt's loader dunders live in contextvars)
        repos = pool.submit(contextvars.copy_context().run, _call, [p for per in pis.values() for p in per],
                            "kiosk_pkg.repo_status", [name], {}, timeout)
        if presence:
            asked, absent = pool.submit(contextvars.copy_context().run, fleet_runner.split_by_presence,
                                        _local_client, pis, kiosks).result()
        pi_returns = repos.result()
    kiosk_returns = _call(asked, "kiosk_pkg.installed", [name], {}, timeout)
    campuses, problems, on_pin, silent = fleet_rollout.status_report(name, state, pis, kiosks, pi_returns,
                                                                     kiosk_returns)
    ret = {"result": True, "name": name, "campuses": campuses, "absent": absent}
    # a push that failed (or never ran: the staged event was lost) is retried here
    for campus, entry in campuses.items():
        if entry["pin"] is not None:
            kiosks, _skip = _push_campus(run, name, entry["pin"], campus, push_timeout)
            if kiosks is not None:
                entry["push_retried"] = kiosks
    if problems:
        ret.update(result=False, error="; ".join(problems))
    return _finish("status", ret, _record_kiosks(name, on_pin, silent))


# --------------------------------------------------------------------------- a standby top master


def _alert_refused(name, found):
    """
    Post one alert per Pi whose pin was refused (``kiosk_alert.post``, as
    ``kiosk_power.verify`` posts its mismatches): ``{"posted": [pi], "errors": [...]}``.
    """
    posted, errors = [], []
    for campus, seen in sorted(found.items()):
        for pi, why in sorted(seen["refused"].items()):
            claim = {"minion": pi, "body": {"name": name, "version": why["version"], "hop": "pi->master",
                                            "error": why["error"], "source": None}}
            try:
                answer = __salt__["kiosk_alert.post"](fleet_alerts.release_alert(claim, campus))
            except (fleet_alerts.AlertError, KeyError) as exc:  # KeyError: kiosk_alert not loaded here
                answer = {"result": False, "error": str(exc)}
            if answer.get("result"):
                posted.append(pi)
            else:
                errors.append(f"{pi}: {answer.get('error')}")
    return {"posted": posted, "errors": errors}


def rebuild(name=None, campuses=None, dry_run=False, timeout=60):
    """
    Rebuild the runner's pins of ``name`` for ``campuses`` (default: all)
    from the Pis' repository indexes (``kiosk_pkg.repo_status``): what a
    warm standby top master runs after taking over with an empty or stale
    state. Each Pi's pin is verified here with the fleet data's
    ``kiosk_release:verify_key`` for the Pi's own campus; the newest valid
    serial wins, and replaces the state's pin only when newer. Rebuilt pins
    count as pushed (kiosks follow them at boot; ``rollout`` pushes now).
    Pis that hold an older pin or none are listed (``behind``); a forged,
    unsigned or other campus's pin is refused and alerted; pinned versions
    missing from this master's store are reported (copy the store).
    ``dry_run=True`` reports and writes nothing. Exit code 1 on a refused
    pin, a conflict, a campus no Pi answered, or a pinned version not in
    the store.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.rebuild kiosk-app dry_run=True
        salt-run kiosk_release.rebuild kiosk-app campuses=riverside,hillside --out=json
    """
    try:
        run = _Run()
        fleet_release.check_name(name)
        targets = run.campuses(campuses)
        timeout = fleet_runner.number(timeout, "timeout", 1, 3600)
        if not isinstance(dry_run, bool):
            raise fleet_rollout.RolloutError(f"dry_run: expected True or False, got {fleet_fields.shown(dry_run)}")
        keys = run.verify_keys()
        published = fleet_store.published(run.store, name)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc) if dry_run is True else _failed("rebuild", exc)
    pis = {c: run.pis(c) for c in targets}
    returns = _call([p for per in pis.values() for p in per], "kiosk_pkg.repo_status", [name], {}, timeout)
    found = {c: fleet_rollout.pis_pin(name, c, pis[c], returns, keys) for c in targets}
    alerts = _alert_refused(name, found)
    now = time.time()
    try:
        if dry_run:
            report = fleet_rollout.rebuild_report(run.state.read(), name, found, published, now)
        else:
            with run.state.locked() as state:
                report = fleet_rollout.rebuild_report(state, name, found, published, now)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc) if dry_run else _failed("rebuild", exc)
    report_campuses, missing, problems = report
    ret = {"result": not problems, "name": name, "dry_run": dry_run, "campuses": report_campuses,
           "missing_from_store": missing, "alerts": alerts}
    if problems:
        ret["error"] = "; ".join(problems)
    return fleet_runner.finish(__context__, ret) if dry_run else _finish("rebuild", ret)
