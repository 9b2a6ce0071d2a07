"""
The kiosk's release client (``kiosk_pkg.check_update`` and ``installed``),
without Salt: the loader module reads the pillar and the minion config,
runs the install command through ``cmd.run_all`` and fires the events.

A kiosk reads the index of each of its campus's Pis (home Pi first), keeps
only pins signed for its campus, follows the highest serial (never one below
the serial it installed under), fetches what is missing from the Pi that
set the pin and then the others, and records what it runs in
``<dir>/<name>/installed.json`` (read by the ``kiosk_release`` grain). The
previous version's package stays on disk.
"""

import json
import logging
import os
import shutil
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fetch, fleet_fields, fleet_inventory, fleet_release, fleet_sign, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fetch
    import fleet_fields
    import fleet_inventory
    import fleet_release
    import fleet_sign
    import fleet_state

log = logging.getLogger(__name__)

INSTALLED = fleet_release.INSTALLED


def my_repos(inventory, kiosk_id):
    """``(campus, [(pi id, base URL)] home Pi first, the kiosk's inventory IP)`` of a kiosk of ``inventory``."""
    campus = fleet_inventory.campus_of(inventory, kiosk_id)
    spec = inventory["campuses"][campus]
    repos = fleet_release.kiosk_repo_urls(inventory, campus, kiosk_id, fleet_inventory.home_pi(spec, kiosk_id))
    return campus, repos, spec["kiosks"][kiosk_id]["ip"]


def read_indexes(session, repos, name, keys, campus):
    """
    What each Pi of ``repos`` (``[(pi id, base URL)]``) says about release
    ``name``. Returns ``{"indexes": {base: index or None}, "down": {pi: why},
    "not_staged": [pi], "refused": {pi: why}}``: a Pi that is down or answers
    no JSON is ``down``; one without the release (404) ``not_staged``; one
    whose index is refused (a pin not signed by ``keys``, another campus's,
    a serial far ahead of its signing time, JSON that is no index of this
    release) ``refused``, each with its error (:class:`fleet_release.ReleaseError`)
    under ``errors`` so the caller can alert.
    """
    out = {"indexes": {}, "down": {}, "not_staged": [], "refused": {}, "errors": {}}
    for pi_id, base in repos:
        out["indexes"][base] = None
        url = f"{base}{name}/{fleet_release.INDEX}"
        try:
            raw = fleet_fetch.get_bytes(session, url, "index", missing_ok=True)
        except fleet_release.SourceError as exc:
            out["down"][pi_id] = str(exc)
            continue
        if raw is None:
            out["not_staged"].append(pi_id)
            continue
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            out["down"][pi_id] = f"index: {url} is not JSON ({exc.__class__.__name__})"
            continue
        try:
            out["indexes"][base] = fleet_sign.verify_index(doc, name, keys, campus, "index")
        except fleet_release.ReleaseError as exc:  # a bad signature or pin, or an index that is no index
            out["refused"][pi_id] = str(exc)
            out["errors"][base] = exc
    return out


def current(root, name):
    """
    What this kiosk runs: the record next to the packages, written (fsync +
    rename) by the job that installed; ``{}`` when there is none or it is
    torn (a torn record must not stop the update).
    """
    try:
        record = fleet_state.read_json(os.path.join(root, name, INSTALLED), fleet_release.ReleaseError)
    except fleet_release.ReleaseError as exc:
        log.warning("fleet_client: %s", exc)
        record = None
    return record if isinstance(record, dict) else {}


def read_installed(root):
    """
    ``{name: record}`` from every ``<root>/<name>/installed.json``: what the
    kiosk runs. Unreadable or foreign files are left out, never raised: the
    grains module calls this at every minion start.
    """
    found = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        if name.startswith(".") or not fleet_fields.NAME.match(name):
            continue
        try:
            record = fleet_state.read_json(os.path.join(root, name, INSTALLED), fleet_release.ReleaseError)
        except fleet_release.ReleaseError:
            continue
        if isinstance(record, dict) and isinstance(record.get("version"), str):
            found[name] = record
    return found


def installed_serial(record, now=None):
    """
    The pin serial the kiosk installed under, which no later pin may go
    below. A record from before pins were signed may hold a serial an
    unsigned index made up (10**15 froze kiosks): one more than a day ahead
    of the clock is not honoured (None).
    """
    serial = record.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int):
        return None
    if serial > (time.time() if now is None else now) + fleet_sign.MAX_SERIAL_AHEAD:
        log.warning("fleet_client: the installed record's pin serial %s is far ahead of the clock: not honoured",
                    serial)
        return None
    return serial


def decide(pin, current_record, seen, n_repos, force=False, now=None):
    """
    What to do about one release, from the chosen ``pin``
    (:func:`fleet_release.choose_pin`), the ``current_record``, what
    :func:`read_indexes` ``seen`` and how many Pis were asked. Returns
    ``("fail", error)``, ``("skip", comment)`` or ``("install", version)``.
    """
    if pin is None:
        if seen["refused"]:
            return "fail", "index: refused from " + "; ".join(f"{k}: {v}" for k, v in seen["refused"].items())
        if len(seen["down"]) == n_repos:
            return "fail", f"repos: no campus Pi answered ({'; '.join(f'{k}: {v}' for k, v in seen['down'].items())})"
        return "skip", "no campus pin for this release yet: nothing to do"
    version = pin["version"]
    if version is None:
        return "skip", "campus frozen (unpinned): nothing to do"
    if current_record.get("version") == version and not force:
        return "skip", f"already on {version}"
    floor = installed_serial(current_record, now)
    if floor is not None and pin["serial"] < floor:
        # the Pis that answered missed a pin change this kiosk already followed (or replay an old
        # signed pin): never go back, not even with force
        return "skip", (f"keeping {current_record.get('version')}: the answering Pis carry an older pin "
                        f"(serial {pin['serial']} < {floor})")
    return "install", version


def candidates(repos, indexes, pin, version):
    """The Pis to fetch ``version`` from: the one that set the pin first, then the others that hold it."""
    order = sorted(repos, key=lambda r: r[1] != pin["repo"])
    return [r for r in order if indexes.get(r[1]) and version in indexes[r[1]]["versions"]]


def kept_copy(root, name, version, keys, bad_copy=None):
    """
    The manifest of a package kept on disk (a previous version, or a cut
    install) when it still verifies; otherwise the package is deleted (never
    run) and None returned. A bad copy is reported to ``bad_copy(exc, "local")``.
    """
    package = os.path.join(root, name, version)
    if not os.path.isfile(os.path.join(package, fleet_release.MANIFEST)):
        return None
    try:
        return fleet_fetch.verify_tree(package, keys, name, version, "local copy")
    except (fleet_release.ReleaseError, OSError) as exc:
        # a copy signed by a retired key, or changed on disk: never run it, fetch a fresh one
        if fleet_release.bad_copy(exc) and bad_copy is not None:
            bad_copy(exc, "local")
        log.warning("fleet_client: the kept copy of %s %s is not used: %s", name, version, exc)
        shutil.rmtree(package, ignore_errors=True)
        return None


def record(root, name, version, pin):
    """Write ``installed.json`` for ``version`` (the previous one named in it); returns the record."""
    before = current(root, name)
    doc = {
        "version": version,
        "previous": before.get("version") if before.get("version") != version else before.get("previous"),
        "serial": pin["serial"],
        "signed_at": pin.get("signed_at"),
        "installed_at": fleet_release.now_iso(),
    }
    # one file, fsync'ed and renamed into place; the grains module reads it (no grains.setval:
    # that rewrites the minion's grains file in place, and a power cut could lose the campus grain)
    fleet_state.write_json_atomic(os.path.join(root, name, INSTALLED), doc)
    return doc


def kept_bases(root, name, version):
    """
    The kiosk's kept packages of ``name`` other than ``version`` (newest
    first), as directories holding their manifest: the local bases a new
    version takes unchanged files and chunks from (re-hashed against the new
    signed manifest by ``fleet_fetch``). The previous package is kept, so a
    rollback, republished as a new version with the earlier content, costs
    the kiosk no download.
    """
    try:
        present = os.listdir(os.path.join(root, name))
    except OSError:
        return []
    found = [v for v in present if v != version and fleet_release.VERSION.match(v)
             and os.path.isfile(os.path.join(root, name, v, fleet_release.MANIFEST))]
    return [os.path.join(root, name, v) for v in reversed(fleet_release.sort_versions(found))]


def keep_two(root, name, version, previous):
    """Delete every package of ``name`` but ``version`` and ``previous``; returns what went."""
    present = [v for v in os.listdir(os.path.join(root, name)) if fleet_release.VERSION.match(v)]
    removed = fleet_release.prune_plan(present, {version, previous})
    for old in removed:
        shutil.rmtree(os.path.join(root, name, old), ignore_errors=True)
    return removed


def update(session, repos, name, root, keys, campus, run, alert, force=False, test=False, pace=None):
    """
    Bring release ``name`` under ``root`` to the campus pin read from
    ``repos`` (``[(pi id, base URL)]``, home Pi first) with ``keys``.
    ``run(argv, cwd)`` runs the install command (``{"retcode", "stderr"}``);
    ``alert(hop, version, error, source)`` is told every refusal and bad
    copy. Returns the report ``kiosk_pkg.check_update`` gives per release:
    ``result`` (True, None for ``test``, False with ``error``), ``changed``,
    ``installed``, ``pin``, ``repos_down``, ``refused``, ``source``,
    ``fetched``, ``reused``, ``resumed``, ``version``, ``record``,
    ``comment``. ``pace(nbytes)`` (``fleet_rate.Pacer``) caps the download's
    rate; the kept packages (:func:`kept_bases`) are used before the network.
    """
    report = {"result": True, "changed": False}
    seen = read_indexes(session, repos, name, keys, campus)
    for base, exc in seen["errors"].items():
        alert("pi->kiosk", None, exc, base)
    report["repos_down"] = seen["down"]
    if seen["refused"]:
        report["refused"] = seen["refused"]
    pin = fleet_release.choose_pin(seen["indexes"])
    before = current(root, name)
    report["installed"] = before.get("version")
    if pin is not None:
        report["pin"] = pin["version"]
    action, what = decide(pin, before, seen, len(repos), force)
    if action == "fail":
        return dict(report, result=False, error=what)
    if action == "skip":
        return dict(report, comment=what)
    if test:
        return dict(report, result=None, comment=f"would install {what} (installed: {before.get('version')})")
    try:
        with fleet_fetch.lock(root, f"{name}.install"):  # one install per kiosk and version, whichever job first
            if current(root, name).get("version") == what and not force:
                return dict(report, comment=f"already on {what} (installed by another job)")
            return _install(session, candidates(repos, seen["indexes"], pin, what), name, what, pin, root, keys,
                            run, alert, report, pace)
    except (fleet_release.ReleaseError, OSError) as exc:
        return dict(report, result=False, error=str(exc))


def _install(session, sources, name, version, pin, root, keys, run, alert, report, pace=None):
    def bad_copy(exc, source):
        alert("pi->kiosk", version, exc, source)

    doc = kept_copy(root, name, version, keys, bad_copy)
    package = os.path.join(root, name, version)
    if doc is not None:
        report["source"] = "local"
    else:
        got = fleet_fetch.fetch_release(session, sources, name, version, root, keys, bad_copy=bad_copy,
                                        bases=kept_bases(root, name, version), pace=pace)
        package = fleet_fetch.materialise(root, got["doc"], got["raw"], got["work"])
        doc = got["doc"]
        report.update(source=got["source"], fetched=got["fetched"], reused=got.get("reused", 0),
                      resumed=got["resumed"])
    argv = fleet_release.install_argv(doc, package)
    outcome = run(argv, package) if argv else {"retcode": 0, "stderr": ""}
    if outcome["retcode"] not in doc.get("success_codes", [0]):
        error = f"install command exited {outcome['retcode']}: {(outcome.get('stderr') or '')[-500:]}"
        alert("install", version, error, None)
        return dict(report, result=False, error=error)
    try:
        report.update(changed=True, version=version, record=record(root, name, version, pin))
    except OSError as exc:
        return dict(report, result=False, error=f"installed {version}, but the record could not be written: {exc}")
    keep_two(root, name, version, report["record"]["previous"])
    return report
