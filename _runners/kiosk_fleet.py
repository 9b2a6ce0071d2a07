"""
Fleet-wide runners on the top master: the inventory, who answers, and the
keys (the campus master key pairs the Pi masters of a campus share, which
kiosk keys the Pis accept, the top master's autosign file).

Every runner returns a dict with ``result`` and sets a non-zero exit code on
failure, so ``salt-run ... --out=json`` works as a Jenkins step.
"""

import concurrent.futures
import contextvars
import logging
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_change, fleet_fields, fleet_inventory, fleet_keys, fleet_runner
    from saltext_kiosk_fleet.utils import fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_change
    import fleet_fields
    import fleet_inventory
    import fleet_keys
    import fleet_runner
    import fleet_state

import salt.client

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_fleet"


def _local_client():
    return salt.client.get_local_client(__opts__["conf_file"])


def __virtual__():
    return __virtualname__


def _load_inventory():
    """The validated inventory from the master-only fleet data file (raises InventoryError)."""
    return fleet_inventory.master_inventory(__opts__)


def inventory():
    """
    Validate the whole fleet inventory (the fleet data file named by the
    master config ``kiosk_fleet:data``) and return it, normalised. This is the
    full check: every campus, MACs and ids unique across campuses (a minion
    checks only its own slice).

    Fails (exit code 1) with every problem listed, each naming its field.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.inventory --out=json
    """
    try:
        inv = _load_inventory()
    except fleet_inventory.InventoryError as exc:
        return fleet_runner.fail(__context__, exc, errors=exc.errors)
    counts = {c: {"pis": len(s["pis"]), "kiosks": len(s["kiosks"])} for c, s in inv["campuses"].items()}
    return fleet_runner.finish(__context__, {"result": True, "counts": counts, "inventory": inv})


def ping(campus=None, kiosks=None, timeout=10, presence=True):
    """
    Ping kiosks through their campus Pis and name the ones that did not answer.

    First the campus Pis say which kiosks hold a minion connection to them
    (``kiosk_scan.presence``, one job per campus, all at once); only those
    kiosks (and every kiosk of a campus no Pi answered for) get the
    ``test.ping``, so kiosks that are off cost nothing instead of the
    timeout. ``absent`` lists the kiosks no Pi of their campus holds a
    connection from (not asked, counted down). ``presence=False`` pings
    every selected kiosk, as before.

    Fails (exit code 1) when any selected kiosk is down. ``campus`` and
    ``kiosks`` take a name or a comma-separated list; with neither, every
    campus.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.ping campus=east
        salt-run kiosk_fleet.ping kiosks=kiosk-east-01,kiosk-east-02 --out=json
        salt-run kiosk_fleet.ping presence=False
    """
    try:
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        presence = fleet_runner.flag(presence, "presence")
        inv = _load_inventory()
        if campus is None and kiosks is None:
            campus = sorted(inv["campuses"])
        selection = fleet_inventory.select_kiosks(inv, kiosks=kiosks, campus=campus)
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    targets, absent = sorted(k for ids in selection.values() for k in ids), []
    if presence:
        campus_pis = {c: fleet_inventory.pis_of(inv, c) for c in selection}
        targets, absent = fleet_runner.split_by_presence(_local_client, campus_pis, selection)
    with _local_client() as client:
        returns = fleet_runner.call(client, targets, "test.ping", timeout=timeout)
    # a kiosk that failed (answered an error) or whose return conflicts (a forged copy) is down too
    report = fleet_runner.presence(selection, returns.answered)
    down = sorted(k for r in report.values() for k in r["down"])
    ret = {"result": not down, "campuses": report, "down": down, "absent": absent}
    if down:
        ret["error"] = f"{len(down)} kiosk(s) did not answer: {', '.join(down)}"
        if absent:
            ret["error"] += f" ({len(absent)} with no minion connection to any Pi of their campus, not asked)"
    return fleet_runner.finish(__context__, ret)


def campus_data(campus=None, dest=None):
    """
    The part of the fleet data a campus's Pi masters need (its inventory,
    hosts entries and the release verification keys; what
    ``fleet_inventory.campus_slice`` keeps): with ``dest`` (an absolute path
    on this master), written there (mode 0640, replaced atomically) for the
    operator to copy to the campus's Pis as their ``kiosk_fleet:data``;
    without, returned. The campus must pass the full inventory check first.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.campus_data campus=east dest=/srv/kiosk-fleet/east.yaml
        salt-run kiosk_fleet.campus_data campus=east --out=yaml
    """
    try:
        names = fleet_inventory.names(campus, "campus")
        if len(names) != 1:
            raise fleet_inventory.InventoryError(f"campus: name exactly one campus, got {campus!r}")
        if dest is not None and (not isinstance(dest, str) or not os.path.isabs(dest)):
            raise fleet_inventory.InventoryError(f"dest: {dest!r} is not an absolute path")
        data = fleet_inventory.master_data(__opts__)
        inv = fleet_inventory.validate(data.get(fleet_inventory.PILLAR_KEY))
        if names[0] not in inv["campuses"]:
            raise fleet_inventory.InventoryError(
                f"campus: unknown campus {names[0]} (known: {', '.join(sorted(inv['campuses']))})")
        part = fleet_inventory.campus_slice(data, names[0])
    except fleet_inventory.InventoryError as exc:
        return fleet_runner.fail(__context__, exc)
    if dest is None:
        return fleet_runner.finish(__context__, {"result": True, "campus": names[0], "data": part})
    import yaml  # Salt's own dependency

    try:
        fleet_state.write_atomic(dest, yaml.safe_dump(part, default_flow_style=False), mode=0o640)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in dest, text no UTF-8 can carry
        return fleet_runner.fail(__context__, f"dest: cannot write {dest}: {getattr(exc, 'strerror', None) or exc}")
    return fleet_runner.finish(__context__, {"result": True, "campus": names[0], "dest": dest})


# ---------------------------------------------------------------- keys: campus master keys, acceptance, autosign

PI_MASTER_STATE = "kiosk_fleet.pi_master"
TRUST_STATE = "kiosk_fleet.master_trust"  # pins the campus public key as a minion's minion_master.pub
MASTER_KEY_PILLAR = "kiosk_fleet_master_key"  # the pillar the state kiosk_fleet.pi_master reads
MASTER_KEYS_FUN = "kiosk_fleet.master_keys"
KEYS_DIR_FIELD = "kiosk_fleet.campus_keys_dir"
PREVIOUS = ".previous"  # the pair a rotation replaced: <campus>.pem.previous, <campus>.pub.previous
# a changed Pi master restarts this long after its state ended (its return goes out first),
# the next Pi of the campus `stagger` seconds later (campus_keys)
FIRST_RESTART_S = 10
MAX_STAGGER_S = 600
# jobs in flight at once (one thread and LocalClient each); more queue
MAX_PARALLEL_JOBS = 32


def _campuses(inv, campus):
    """The campus names asked for (every campus with None), each one of the inventory's."""
    every = sorted(inv["campuses"])
    return sorted(fleet_inventory.select_kiosks(inv, campus=every if campus is None else campus))


def _keys_dir():
    """``kiosk_fleet:campus_keys_dir`` of the master config: an absolute path."""
    path = fleet_runner.config(__opts__, fleet_inventory.MASTER_CONFIG_KEY).get("campus_keys_dir")
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise fleet_runner.ConfigError(
            f"{KEYS_DIR_FIELD}: {fleet_fields.shown(path)} is not an absolute path (master config)",
            field=KEYS_DIR_FIELD)
    return path


def _pair_paths(keys_dir, campus):
    return os.path.join(keys_dir, f"{campus}.pem"), os.path.join(keys_dir, f"{campus}.pub")


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _fingerprint_of(path):
    """The fingerprint of the public key in ``path``; None when it is missing or no key."""
    try:
        return fleet_keys.fingerprint(_read(path))
    except (OSError, ValueError):
        return None


def _campus_pair(keys_dir, campus):
    """``(private_pem, public_pem)`` of ``campus`` from the keys dir; CampusKeyError when missing or mismatched."""
    pem_path, pub_path = _pair_paths(keys_dir, campus)
    try:
        private_pem, public_pem = _read(pem_path), _read(pub_path)
    except OSError as exc:
        raise fleet_keys.CampusKeyError(
            f"campus: {campus} has no readable key pair in {keys_dir} ({exc.strerror}: {exc.filename}); "
            f"make one with salt-run kiosk_fleet.campus_keygen campus={campus}", field="campus") from None
    # a pair half-replaced by hand would give the Pis a public key their private one does not match
    if not fleet_keys.same_public_key(fleet_keys.public_key_of(private_pem, f"{campus}.pem"), public_pem,
                                      f"{campus}.pub"):
        raise fleet_keys.CampusKeyError(f"campus: {pub_path} does not match {pem_path}; "
                                        f"make a new pair with campus_keygen campus={campus} rotate=True",
                                        field="campus")
    return private_pem, public_pem


def _new_pair(keys_dir, campus):
    """
    Make ``campus``'s key pair; a pair already there is first copied beside
    it (``.previous``, replacing an older one). Returns the fingerprints.
    """
    pem_path, pub_path = _pair_paths(keys_dir, campus)
    previous = _fingerprint_of(pub_path)
    for path, mode in ((pem_path, 0o600), (pub_path, 0o644)):
        if os.path.lexists(path):
            fleet_state.write_atomic(path + PREVIOUS, _read(path).decode("ascii"), mode=mode)
        elif os.path.lexists(path + PREVIOUS):  # half a pair: no older half may pose as this one's partner
            os.unlink(path + PREVIOUS)
    private_pem, public_pem = fleet_keys.new_master_key_pair()
    # the private key first: a pub without its pem is refused by campus_keys; mkstemp makes it 0600 from the start
    fleet_state.write_atomic(pem_path, private_pem.decode("ascii"), mode=0o600)
    fleet_state.write_atomic(pub_path, public_pem.decode("ascii"), mode=0o644)
    return {"fingerprint": fleet_keys.fingerprint(public_pem), "previous": previous}


def campus_keygen(campus=None, rotate=False):
    """
    Make the master key pair of each campus (all inventory campuses, or the
    ones named): the pair every Pi master of the campus shares, so that its
    kiosks (multi-master minions) trust each of them. Written into the
    master config's ``kiosk_fleet:campus_keys_dir`` (made 0700 if missing) as
    ``<campus>.pem`` (0600) and ``<campus>.pub``; returns fingerprints only,
    never key text.

    Refuses (exit code 1, nothing written) when any named campus already has
    a pair, unless ``rotate=True``: then the pair is replaced and the previous
    one kept beside it (``<campus>.pem.previous``, ``<campus>.pub.previous``).
    A campus that is not in the inventory is refused. Then (first pair or
    rotation): ``kiosk_fleet.campus_trust`` pins the new public key on the
    campus's kiosks, and ``kiosk_fleet.campus_keys`` sends the pair to its Pis.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.campus_keygen campus=east
        salt-run kiosk_fleet.campus_keygen campus=east rotate=True --out=json
    """
    try:
        if not isinstance(rotate, bool):
            raise fleet_runner.RunnerError(f"rotate: expected True or False, got {fleet_fields.shown(rotate)}",
                                           field="rotate")
        names = _campuses(_load_inventory(), campus)
        keys_dir = _keys_dir()
        existing = [c for c in names if any(os.path.lexists(p) for p in _pair_paths(keys_dir, c))]
        if existing and not rotate:
            raise fleet_keys.CampusKeyError(
                f"campus: {', '.join(existing)} already has a key pair in {keys_dir}; rotate=True replaces it "
                "and keeps the previous pair as <campus>.pem.previous", field="campus")
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    made = {}
    try:
        os.makedirs(keys_dir, mode=0o700, exist_ok=True)
        for name in names:
            made[name] = _new_pair(keys_dir, name)
    except (OSError, ValueError) as exc:  # ValueError: fleet_keys/fleet_state refusing
        why = getattr(exc, "strerror", None) or exc
        return fleet_runner.fail(__context__, f"{KEYS_DIR_FIELD}: cannot write a key pair in {keys_dir}: {why}",
                                 campuses=made)
    return fleet_runner.finish(__context__, {"result": True, "dir": keys_dir, "rotated": rotate, "campuses": made})


def _call(targets, fun, arg, kwarg, timeout):
    """ONE job to ``targets``, sorted by ``fleet_runner.call``: answered, failed, silent, conflicting."""
    with _local_client() as client:
        got = fleet_runner.call(client, targets, fun, arg, kwarg, timeout)
    if got.conflicting:
        log.warning("kiosk_fleet: %s: conflicting returns from %s (one was forged); counted as silent",
                    fun, ", ".join(got.conflicting))
    return got


def _each(jobs, timeout):
    """
    The jobs ``{name: (targets, fun, arg, kwarg)}`` all in flight at once,
    each on its own LocalClient in its own thread (as Salt's netapi does), so
    a run waits one timeout, not one per job. Returns ``{name: Returns}``.
    """
    if not jobs:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), MAX_PARALLEL_JOBS)) as pool:
        # each thread runs in a copy of this context: Salt's loader dunders (__opts__) live in contextvars
        futures = {name: pool.submit(contextvars.copy_context().run, _call, *job, timeout)
                   for name, job in sorted(jobs.items())}
        return {name: future.result() for name, future in futures.items()}


def _accepted_key(pi):
    """
    ``(public key PEM, None)`` of ``pi`` as accepted on this master (its
    syndic's key, which is the Pi minion's: salt-syndic uses the minion's
    pki_dir), or ``(None, why not)``.
    """
    path = os.path.join(__opts__["pki_dir"], "minions", pi)
    try:
        return _read(path), None
    except FileNotFoundError:
        return None, f"no key of {pi} accepted on this master ({path})"
    except OSError as exc:
        return None, f"cannot read the accepted key of {pi} ({path}): {exc.strerror}"


def _withheld(text, secrets):
    """``text`` for a return, unless it quotes key material (an envelope or part of one, a PEM block)."""
    text = " ".join(str(text).split())
    if any(mark in text for mark in ("-----BEGIN", fleet_keys.SEAL_PREFIX)) or any(s and s in text for s in secrets):
        return "(the answer quoted key material; withheld: see the Pi's minion log)"
    return text[: fleet_runner.MAX_REASON]


def _applied(got, minion, secrets=()):
    """One minion's answer to a ``state.apply`` job: ``{"status", "reason"?}``."""
    if minion in got.answered:
        summary = fleet_change.summarize(got.answered[minion])
        if not summary["result"]:
            why = [f"{k}: {v}" for k, v in sorted(summary["failed"].items())] + summary["errors"]
            return {"status": "failed", "reason": _withheld("; ".join(why) or "state failed", secrets)}
        if summary["pending"]:
            return {"status": "pending"}
        return {"status": "changed" if summary["changed"] else "unchanged"}
    if minion in got.failed:
        return {"status": "failed", "reason": _withheld(got.failed[minion], secrets)}
    if minion in got.conflicting:
        return {"status": "silent", "reason": "conflicting returns (one was forged): neither believed"}
    return {"status": "silent", "reason": "did not answer"}


def _tally(per, bad_statuses, what):
    """
    ``{status: [minions]}`` of the per-minion outcomes ``per``, ``result``
    (no minion in ``bad_statuses``) and, on failure, an ``error`` naming them.
    """
    ret = {s: sorted(m for m, r in per.items() if r["status"] == s)
           for s in ("changed", "unchanged", "pending", *bad_statuses)}
    bad = sorted(m for s in bad_statuses for m in ret[s])
    ret["result"] = not bad
    if bad:
        ret["error"] = f"{what} on " + ", ".join(f"{m} ({per[m]['status']})" for m in bad)
    return ret


def _key_job(campus, test, timeout):
    """The checked arguments of a run that sends campus keys: ``(test, timeout, inventory, campuses, pairs)``."""
    if not isinstance(test, bool):
        raise fleet_runner.RunnerError(f"test: expected True or False, got {fleet_fields.shown(test)}", field="test")
    timeout = fleet_runner.number(timeout, "timeout", 1, 3600)
    inv = _load_inventory()
    names = _campuses(inv, campus)
    keys_dir = _keys_dir()
    return test, timeout, inv, names, {c: _campus_pair(keys_dir, c) for c in names}


def campus_keys(campus=None, test=False, timeout=120, stagger=30):
    """
    Send each campus's master key pair (made by ``kiosk_fleet.campus_keygen``)
    to every inventory Pi of the campus (all campuses, or the ones named):
    the state ``kiosk_fleet.pi_master`` is applied on each Pi with pillar
    ``kiosk_fleet_master_key: {sealed, public}``, one job per Pi, all at once.

    ``sealed`` is the campus private key sealed (``fleet_keys.seal``) to the
    Pi's public key as accepted on THIS master (``<pki_dir>/minions/<pi>``,
    the Pi's syndic key, which is its minion key), never to a key a minion
    reports: returns can be forged behind a syndic. Only that Pi's private key
    opens it, so the kiosks and other Pis that see the publication on a Pi
    master's bus, and the job cache, hold ciphertext only. A Pi without an
    accepted key on this master is reported and sent nothing.

    A Pi master whose key changed restarts ``restart_delay`` seconds after
    its state ended (so the job's return goes out first): the campus's Pis in
    id order get 10, 10 + ``stagger``, 10 + 2 x ``stagger``... seconds, so they
    restart one after another and, meanwhile, the kiosks keep their live
    sessions with the others (a live session does not sign in again): jobs to
    the campus keep working. ``stagger=0`` restarts them together.

    Reports each Pi as ``changed``, ``unchanged``, ``pending`` (``test=True``:
    would change), ``failed`` (with the reason), ``silent``, or ``no_key``;
    any but the first three fails the run (exit code 1). Neither the private
    key nor an envelope appears in the return or the logs. The Pi masters
    use the new pair once restarted (the state's ``kiosk_fleet:restart``);
    a Pi whose return was lost anyway shows as silent: run again, the state
    is idempotent and reports it ``unchanged``.
    Before a campus's Pis switch to a new pair, pin it on the campus's kiosks
    with ``kiosk_fleet.campus_trust``.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.campus_keys campus=east test=True
        salt-run kiosk_fleet.campus_keys campus=east stagger=60 --out=json
    """
    try:
        test, timeout, inv, names, pairs = _key_job(campus, test, timeout)
        stagger = fleet_runner.number(stagger, "stagger", 0, MAX_STAGGER_S)
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    pis, jobs, secrets = {}, {}, []
    for name in names:
        private_pem, public_pem = pairs[name]
        for n, pi in enumerate(fleet_inventory.pis_of(inv, name)):
            accepted, why = _accepted_key(pi)
            if accepted is None:
                pis[pi] = {"campus": name, "status": "no_key", "reason": why}
                continue
            try:
                sealed = fleet_keys.seal(private_pem, accepted)
            except ValueError as exc:  # CampusKeyError: the accepted key is no RSA public key
                pis[pi] = {"campus": name, "status": "failed", "reason": f"the key accepted for {pi}: {exc}"}
                continue
            secrets.append(sealed)
            pillar = {MASTER_KEY_PILLAR: {"sealed": sealed, "public": public_pem.decode("ascii"),
                                          "restart_delay": FIRST_RESTART_S + n * stagger}}
            jobs[pi] = ([pi], "state.apply", [PI_MASTER_STATE], {"test": test, "pillar": pillar})
    campus_of = {pi: name for name in names for pi in fleet_inventory.pis_of(inv, name)}
    for pi, got in _each(jobs, timeout).items():
        pis[pi] = {"campus": campus_of[pi], **_applied(got, pi, secrets)}
        if pis[pi]["status"] == "changed":  # when its master restarts (unless kiosk_fleet:restart is off)
            pis[pi]["restart_in_s"] = jobs[pi][3]["pillar"][MASTER_KEY_PILLAR]["restart_delay"]
    ret = {"test": test, "campuses": {c: {"fingerprint": fleet_keys.fingerprint(pairs[c][1])} for c in names},
           "pis": dict(sorted(pis.items())),
           **_tally(pis, ("failed", "silent", "no_key"), "campus key not applied")}
    return fleet_runner.finish(__context__, ret)


def campus_trust(campus=None, test=False, timeout=120):
    """
    Pin each campus's master public key (``<campus>.pub`` of
    ``kiosk_fleet:campus_keys_dir``) on every inventory kiosk of the campus
    (all campuses, or the ones named): the state ``kiosk_fleet.master_trust``
    with pillar ``kiosk_fleet_master_key: {public}`` (the public key only),
    one job per campus, all at once. It replaces the kiosk's cached
    ``minion_master.pub``, read at its next sign-in; nothing restarts.

    Run it before ``kiosk_fleet.campus_keys`` whenever a campus's Pi masters
    get a new pair (the first campus pair, or a rotation): Salt 3007 compares
    a master's key at every sign-in with the cached one and refuses a master
    whose key differs ("The master key has changed", salt/crypt.py
    ``verify_master``), so a kiosk that missed this step is refused by every
    switched Pi. Until its Pis switch, a kiosk that signs in again is refused
    by them and retries.

    Reports each kiosk as ``changed``, ``unchanged``, ``pending``
    (``test=True``), ``failed`` (with the reason) or ``silent``; a failed or
    silent kiosk fails the run (exit code 1): wake it and run again before
    ``campus_keys``.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.campus_trust campus=east test=True
        salt-run kiosk_fleet.campus_trust campus=east --out=json
    """
    try:
        test, timeout, inv, names, pairs = _key_job(campus, test, timeout)
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    selection = {c: sorted(inv["campuses"][c]["kiosks"]) for c in names}
    jobs = {c: (selection[c], "state.apply", [TRUST_STATE],
                {"test": test, "pillar": {MASTER_KEY_PILLAR: {"public": pairs[c][1].decode("ascii")}}})
            for c in names if selection[c]}
    got = _each(jobs, timeout)
    kiosks = {k: {"campus": c, **_applied(got[c], k)} for c in jobs for k in selection[c]}
    ret = {"test": test, "campuses": {c: {"fingerprint": fleet_keys.fingerprint(pairs[c][1])} for c in names},
           "kiosks": dict(sorted(kiosks.items())),
           **_tally(kiosks, ("failed", "silent"), "campus key not pinned")}
    return fleet_runner.finish(__context__, ret)


def keys(campus=None, timeout=60):
    """
    Check key acceptance on each campus's Pi masters (all campuses, or the
    ones named): one ``kiosk_fleet.master_keys`` job per campus to its Pis,
    all at once. Per campus (``fleet_keys.keys_report``): each Pi's
    ``master.pub`` fingerprint against the campus key on this master
    (``kiosk_fleet:campus_keys_dir``); the campus's kiosks accepted on every
    Pi (``everywhere``), missing on some (``missing``), or accepted under
    different keys across Pis (``differing``); accepted ids the inventory
    does not place on the campus (``unexpected``); Pis that did not answer
    (``silent``) or answered an error (``failed``). Any problem fails the
    run (exit code 1); ``problems`` lists them in words.

    The Pis' answers are reports: a tampered Pi (or a minion forging returns
    behind a syndic) can lie. This is a check for operators, not a control;
    acceptance itself is enforced by each Pi master's autosign file.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.keys
        salt-run kiosk_fleet.keys campus=east --out=json
    """
    try:
        timeout = fleet_runner.number(timeout, "timeout", 1, 600)
        inv = _load_inventory()
        names = _campuses(inv, campus)
        keys_dir = _keys_dir()
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    campus_pis = {c: fleet_inventory.pis_of(inv, c) for c in names}
    got = _each({c: (campus_pis[c], MASTER_KEYS_FUN, [], None) for c in names if campus_pis[c]}, timeout)
    report, nothing = {}, fleet_runner.sort_returns([], [])
    for name in names:
        answered = got.get(name, nothing)
        fingerprint = _fingerprint_of(_pair_paths(keys_dir, name)[1])
        report[name] = fleet_keys.keys_report(inv, name, fingerprint, answered.answered,
                                              silent=answered.silent, failed=answered.failed)
        report[name]["fingerprint"] = fingerprint
        if fingerprint is None:
            report[name]["result"] = False
            report[name]["problems"].insert(0, f"{name}: no campus key on this master (in {keys_dir}); "
                                               f"salt-run kiosk_fleet.campus_keygen campus={name}")
    bad = [c for c in names if not report[c]["result"]]
    ret = {"result": not bad, "campuses": report}
    if bad:
        ret["error"] = "; ".join(p for c in bad for p in report[c]["problems"])[:2000]
    return fleet_runner.finish(__context__, ret)


def autosign(dest=None):
    """
    Write this (top) master's autosign file: the inventory's Pi ids, one a
    line, i.e. the syndics this master may accept, so it needs no
    ``auto_accept``. ``dest`` (an absolute path) defaults to the master
    config's ``autosign_file``, which is what the master reads. Replaced
    atomically (mode 0644: Salt ignores an autosign file that group or others
    may write). Run it again after the inventory gains or loses a Pi.

    Salt accepts a listed id only while no other key is accepted under it;
    the first key presented for a new Pi's id wins, so bring the Pi up
    before writing its id, or check the fingerprint with ``salt-key -f``.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_fleet.autosign
        salt-run kiosk_fleet.autosign dest=/etc/salt/autosign.conf --out=json
    """
    try:
        configured = __opts__.get("autosign_file")
        path = configured if dest is None else dest
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise fleet_runner.RunnerError(
                f"dest: {fleet_fields.shown(path)} is not an absolute path"
                + (" (the master config's autosign_file)" if dest is None else ""), field="dest")
        ids = fleet_keys.top_autosign_ids(_load_inventory())
        text = fleet_keys.autosign_text(ids)
    except ValueError as exc:  # every error of the pack is a ValueError naming its field
        return fleet_runner.fail(__context__, exc)
    try:
        try:
            changed = _read(path).decode("utf-8", "replace") != text
        except FileNotFoundError:
            changed = True
        if changed:
            fleet_state.write_atomic(path, text, mode=0o644)
        else:
            os.chmod(path, 0o644)
    except (OSError, ValueError) as exc:  # ValueError: fleet_state refusing the path
        return fleet_runner.fail(__context__, f"dest: cannot write {path}: {getattr(exc, 'strerror', None) or exc}")
    ret = {"result": True, "dest": path, "changed": changed, "ids": ids}
    if path != configured:
        ret["note"] = f"this master reads autosign_file {configured}, not {path}"
    return fleet_runner.finish(__context__, ret)
