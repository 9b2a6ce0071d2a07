"""
Versioned kiosk releases, from the top master.

A release crosses the WAN once per campus: one Pi of the campus (the seed)
stages it from the master, the campus's other Pis copy it from the seed over
the LAN, and the kiosks download it from their Pis' repositories (nginx).
Every hop checks size, md5 and sha256 (``_utils/fleet_release.py``).

What a campus runs is its **pin** (kept here, in the master's cachedir, with
a serial that grows on every change, and copied into each Pi's repository
index). Kiosks follow the pin of their campus, so all kiosks of a campus run
the same version; campuses move independently.

This file is glue: it loads the config, the inventory and the state once per
run, asks the release store (``_utils/fleet_store.py``: import, hash, sign,
store) and the rollout policy (``_utils/fleet_rollout.py``: pins, pushes,
rings, rollback, status), calls the minions (``fleet_runner.call``), records
and reports.

Master config::

    kiosk_release:
      store: /srv/salt/kiosk_releases   # default: <first file_roots:base>/kiosk_releases (so salt:// reaches it)
      master_url: http://salt.example.org:8080/kiosk-releases/   # optional: Pis stage over HTTP,
                                        # resuming after a cut (nginx exporting the store);
                                        # default salt://kiosk_releases/ (cp.get_file)
      signing_key: /etc/salt/pki/master/kiosk_release.pem        # required by publish/rollback/rollout/pin:
                                        # Ed25519 private key (mode 0600; salt-run kiosk_release.keygen makes it)
      source_root: /var/lib/jenkins/workspace   # required by publish: a file or directory source must be
                                        # below it (no '..', no symlink on the way, read with O_NOFOLLOW)
      confirm_downloads: true           # rollout rings: a kiosk's return must agree with the Pis' nginx logs
      textfile_dir: /var/lib/prometheus/node-exporter            # optional: kiosk_release.prom
      timeout: 3600                     # seconds a staging or install job may take
      max_error_share: 0.0              # rollout halts when more kiosks than this share fail

Every function returns ``{"result": bool, ...}`` and exits non-zero on failure.
"""

import logging
import os
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_inventory,
        fleet_metrics,
        fleet_release,
        fleet_rollout,
        fleet_runner,
        fleet_state,
        fleet_store,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_inventory
    import fleet_metrics
    import fleet_release
    import fleet_rollout
    import fleet_runner
    import fleet_state
    import fleet_store

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_release"

CONFIG_KEY = "kiosk_release"
DEFAULT_TIMEOUT = 3600
TEXTFILE = "kiosk_release.prom"
STATE_DEFAULTS = {"pins": {}, "pushed": {}, "metrics": {}}
STATE_LOCK_WAIT = 60  # s; the lock is only held to read and write a small JSON file
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
    """What one runner call loads once: config and state at once; store, inventory and key when first used."""

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
        return self._once("store", lambda: fleet_store.store_dir(
            self.conf.get("store"), (__opts__.get("file_roots") or {}).get("base")))

    @property
    def inventory(self):
        return self._once("inventory", lambda: fleet_inventory.master_inventory(__opts__))

    def master_source(self):
        return self._once("master_source", lambda: fleet_store.master_source(self.conf.get("master_url")))

    def key(self):
        """The signing key PEM: read (and checked) at the first use of the run, never shown."""
        return self._once("key", lambda: fleet_store.read_signing_key(self.conf.get("signing_key")))

    def timeout(self, value=None):
        return fleet_runner.number(self.conf.get("timeout", DEFAULT_TIMEOUT) if value is None else value,
                                   "timeout", 10, 86400)

    def campuses(self, campuses, field="campuses"):
        known = self.inventory["campuses"]
        names = fleet_inventory.names(campuses, field) or sorted(known)
        unknown = [c for c in names if c not in known]
        if unknown:
            raise fleet_inventory.InventoryError(
                f"{field}: unknown campus {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return names

    def one_campus(self, campus):
        if not campus or len(fleet_inventory.names(campus, "campus")) != 1:
            raise fleet_rollout.RolloutError("campus: name one campus (campus=riverside)")
        return self.campuses(campus, "campus")[0]

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
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        got = fleet_runner.call(client.cmd_iter, targets, fun, arg, kwarg, timeout)
    if got.conflicting:
        log.warning("kiosk_release: %s: conflicting returns from %s", fun, ", ".join(got.conflicting))
    return {**got.returns, **dict.fromkeys(got.conflicting, CONFLICTING)}


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
    Publish release ``name`` ``version`` from ``source`` (a file or a flat
    directory of files under ``kiosk_release:source_root``, or an http(s) URL
    fetched without proxy or redirect): hash every file in the copying pass
    (size, md5, sha256), write the manifest signed with
    ``kiosk_release:signing_key`` (required) and store it under the master's
    store. A source outside the root, through ``..`` or through a symlink
    is refused and nothing is stored. ``install`` is the kiosk's install
    command as an argument list (``{dir}``, ``{name}``, ``{version}`` are
    filled in) and ``success_codes`` its exit codes that mean success
    (default ``[0]``; msiexec with ``/norestart``: ``[0, 3010]``). Without
    ``install``, a directory source's own ``kiosk-install.json`` gives them
    (an argument list, or ``{"install": [...], "success_codes": [...]}``).
    ``md5``: the hash the build computed,
    checked against the copy. Versions only go up.

    With ``campuses``, those campuses are pinned to the new version and
    recorded as waiting to be staged; the reactors take it from there
    (``kiosk/release/published`` -> ``on_published`` stages what is waiting
    -> ``kiosk/release/staged`` -> ``push`` installs on their kiosks).
    Without, the release waits for ``rollout``.

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
        if targets:
            with run.state.locked() as state:
                for campus in targets:
                    pin_ = fleet_rollout.set_pin(state, doc["name"], campus, doc["version"], run.key(), time.time())
                    # the published event is only a hint: on_published stages what is recorded here
                    fleet_rollout.wait_for_staging(state, doc["name"], campus, pin_["serial"])
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
    Make the Ed25519 key pair releases are signed with: the private key is
    written to ``path`` (default ``kiosk_release:signing_key``) with mode
    0600, never over an existing file unless ``force=True``; the public key
    is returned, for the ``kiosk_release:verify_key`` list in the Pis' and
    kiosks' pillar. The private key is never returned or logged.

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
        public = fleet_rollout.public_key_of(_Run().key()) if path is None else fleet_store.public_key_at(path)
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
    rounds = fleet_rollout.stage_rounds({c: fleet_inventory.pis_of(run.inventory, c) for c in campuses})
    returns = None
    try:
        while True:
            hop, wave = rounds.send(returns)
            returns, jobs = {}, {}
            for campus, pis in wave.items():  # one job per distinct kwargs (a signed pin names its campus)
                jobs.setdefault(campus if campus in pins else None, []).extend(pis)
            for campus, pis in jobs.items():
                kwarg = {"source": run.master_source() if hop == "master->pi" else "campus", "hop": hop}
                if campus is not None:
                    kwarg["pin"] = pins[campus]
                returns.update(_call(pis, "kiosk_pkg.stage", [name, version], kwarg, timeout))
    except StopIteration as done:
        report = done.value
    for campus, error in pin_errors.items():
        report[campus]["pin_error"] = error
    return report


def on_published(name=None, version=None, campuses=None, timeout=None):
    """
    What the ``kiosk/release/published`` reactor calls. The event is a hint
    (a kiosk can forge it): only campuses that ``publish`` recorded as
    waiting for this release, still pinned to it with the same serial, are
    staged, once per release, campus and serial. Anything else (an invented
    or replayed event) does nothing: no job, no change of state.

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
        with run.state.locked() as state:
            claimed = fleet_rollout.claim_event_staging(state, name, version, hints, held)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    if not claimed:
        # no metrics, no state write: a forged event must leave no trace but the log line
        log.info("kiosk_release: published event for %s %s: nothing of it is waiting to be staged", name, version)
        return fleet_runner.finish(__context__, {"result": True, "staged": False,
                                                 "comment": f"nothing of {name} {version} waits to be staged"})
    targets = [c for c in claimed if c in inventory["campuses"]]
    report = _stage(run, name, version, targets, timeout, claimed)
    failed = fleet_rollout.unstaged(report)
    ret = {"result": not failed, "staged": True, "name": name, "version": version, "campuses": report}
    if failed:
        ret["error"] = f"no Pi of {', '.join(failed)} could stage {name} {version} (run kiosk_release.stage or rollout)"
    return _finish("stage", ret, _record_wan(name, report))


def stage(name=None, version=None, campuses=None, timeout=None):
    """
    Stage a published release on the Pis of ``campuses`` (default: every
    campus): one Pi per campus fetches it from the master, the others copy it
    from that Pi. A Pi whose campus is pinned to this version pins it too.
    Fails when a campus ends with no Pi holding the release.

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
        serials = fleet_rollout.pinned_serials(run.state.read(), name, version, targets)
    except ValueError as exc:
        return _failed("stage", exc)
    report = _stage(run, name, version, targets, timeout, serials)
    failed = fleet_rollout.unstaged(report)
    ret = {"result": not failed, "name": name, "version": version, "campuses": report}
    if failed:
        ret["error"] = f"no Pi of {', '.join(failed)} could stage {name} {version}"
    return _finish("stage", ret, _record_wan(name, report))


# --------------------------------------------------------------------------- pins, pushes, rollouts


def _pin_pis(run, name, campus, pin_):
    """Copy the signed campus pin into the index of every Pi of the campus; ``{pi: True or error}``."""
    pis = fleet_inventory.pis_of(run.inventory, campus)
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
    pis = fleet_inventory.pis_of(run.inventory, campus)
    if not fleet_rollout.pin_live(_call(pis, "kiosk_pkg.repo_status", [name]), version, serial):
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
    Install ``version`` on the kiosks of ``campus`` if it is the campus pin
    and a Pi of the campus has it live, once per pin: the reactor calls this
    for every ``kiosk/release/staged`` event (one per Pi, each arriving more
    than once through the syndics; a kiosk can forge it too). ``pi`` must be a
    Pi of the inventory. The campus is marked pushed only after the push
    succeeded; a failed push is retried by the next call. Kiosks that were
    off catch up at boot (startup state ``kiosk_fleet.release``).

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
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    kiosks, skip = _push_campus(run, name, version, campus, timeout)
    if skip:  # nothing done: no metrics either (the state file stays as it was)
        return fleet_runner.finish(__context__, {"result": True, "pushed": False, "comment": skip})
    bad = fleet_rollout.failed_kiosks(kiosks)
    ret = {"result": not bad, "pushed": True, "name": name, "version": version, "campus": campus, "kiosks": kiosks}
    if bad:
        ret["error"] = f"{len(bad)} of {len(kiosks)} kiosks of {campus} are not on {version} (the push stays due)"
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
        pis = fleet_inventory.pis_of(run.inventory, campus)
        served = fleet_rollout.served_by_ip(_call(pis, "kiosk_pkg.served", [name, version]), name, version)
        spec = run.inventory["campuses"][campus]["kiosks"]
        ips = {k: str(spec[k].get("ip") or "") for k in kiosks}
        confirmed[campus] = fleet_rollout.confirm_ring(kiosks, ips, served, SILENT)
    return confirmed


def _roll_ring(run, name, version, ring, timeout, threshold):
    with run.state.locked() as state:
        now = time.time()
        pins = {c: fleet_rollout.set_pin(state, name, c, version, run.key(), now) for c in ring}
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
    return fleet_rollout.ring_outcome(ring, version, staged, kiosks, {c: run.kiosks(c) for c in ring}, threshold)


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
    Roll ``version`` out, ring by ring: stage it on the ring's Pis, pin the
    ring's campuses to it, install it on their kiosks, and go on to the next
    ring only while the share of kiosks not on the version stays at or below
    ``max_error_share`` (default ``kiosk_release:max_error_share``, 0).
    ``canary=east`` makes a first ring of that campus alone; ``rings`` gives
    the order (``'east;west,north'``). A halted rollout names the campuses
    it did not touch.

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
    except ValueError as exc:
        return _failed("rollout", exc)
    return _rollout(run, name, version, targets, ring_plan, threshold, timeout)


def pin(name=None, version=None, campus=None, timeout=None):
    """
    Pin ``campus`` to ``version`` without pushing: the version is staged on
    the campus Pis if needed and their indexes pinned; kiosks move at their
    next boot or ``kiosk_pkg.check_update`` (use ``rollout`` to push now).

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
        with run.state.locked() as state:
            now = time.time()
            pins = {c: fleet_rollout.set_pin(state, name, c, version, run.key(), now) for c in targets}
            for c in targets:  # no push: the staged reactor must leave these kiosks alone
                fleet_rollout.hold_push(state, name, c, pins[c]["serial"])
    except ValueError as exc:
        return _failed("pin", exc)
    staged = _stage(run, name, version, targets, timeout, {c: p["serial"] for c, p in pins.items()})
    failed = fleet_rollout.unstaged(staged)
    ret = {"result": not failed, "name": name, "version": version,
           "pins": {c: {k: v for k, v in p.items() if k != "history"} for c, p in pins.items()}, "staging": staged}
    if failed:
        ret["error"] = f"pinned, but no Pi of {', '.join(failed)} could stage {version}"
    return _finish("pin", ret)


def unpin(name=None, campus=None):
    """
    Freeze ``campus`` for release ``name``: kiosks keep the version they run
    and stop following new pins until the campus is pinned again.

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
            now = time.time()
            pins = {c: fleet_rollout.set_pin(state, name, c, None, run.key(), now) for c in targets}
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
    Put ``campus`` back on the content it ran before its current pin, the
    way operators do it: that content is republished under a new version,
    above every published one (``rollback_of`` in its manifest names the
    source), then rolled out to the campus. Kiosks only ever move up.

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
        fleet_store.rollback_copy(run.store, name, previous, version, run.key())
    except ValueError as exc:
        return _failed("rollback", exc)
    _fire("kiosk/release/published", {"name": name, "version": version, "campuses": [], "rollback_of": previous})
    ret = _rollout(run, name, version, [campus], [[campus]], threshold, timeout)
    ret["rolled_back"] = {"campus": campus, "from": pin_["version"], "content_of": previous, "as": version}
    return ret


# --------------------------------------------------------------------------- status


def status(name=None, campuses=None, timeout=60):
    """
    Where release ``name`` stands, per campus: the pin, what each Pi has
    staged and pinned, what each kiosk runs, and the drift (kiosks not on
    the pin, Pis without it). Fails (exit 1) on drift or on a campus whose
    kiosks run different versions; silent kiosks are listed, not failed.
    A campus pin whose push failed or never ran is pushed again here
    (``push_retried``) when a Pi of the campus has it live.

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
        push_timeout = run.timeout()
        state = run.state.read()
    except ValueError as exc:
        return _failed("status", exc)
    pis = {c: fleet_inventory.pis_of(run.inventory, c) for c in targets}
    pi_returns = _call([p for per in pis.values() for p in per], "kiosk_pkg.repo_status", [name], {}, timeout)
    kiosk_returns = _call([k for c in targets for k in run.kiosks(c)], "kiosk_pkg.installed", [name], {}, timeout)
    ret = {"result": True, "name": name, "campuses": {}}
    problems, on_pin, silent = [], {}, {}
    for campus in targets:
        entry, found, on, quiet = fleet_rollout.campus_status(
            campus, fleet_rollout.pin_of(state, name, campus), pis[campus], pi_returns, run.kiosks(campus),
            kiosk_returns)
        ret["campuses"][campus] = entry
        problems.extend(found)
        silent[campus] = quiet
        if on is not None:
            on_pin[campus] = on
    # a push that failed (or never ran: the staged event was lost) is retried here
    for campus, entry in ret["campuses"].items():
        if entry["pin"] is not None:
            kiosks, _skip = _push_campus(run, name, entry["pin"], campus, push_timeout)
            if kiosks is not None:
                entry["push_retried"] = kiosks
    if problems:
        ret.update(result=False, error="; ".join(problems))
    return _finish("status", ret, _record_kiosks(name, on_pin, silent))
