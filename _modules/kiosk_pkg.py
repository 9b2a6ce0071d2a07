"""
Kiosk release packages on the Pis and on the kiosks.

On a Pi (its repository, served read-only by nginx, see
``states/kiosk_fleet/release_repo.sls``):

* :func:`stage` fetches a release from the master (``http(s)://`` export of
  the master's store, resumable; or ``salt://`` through ``cp.get_file``) or
  from another Pi of the campus, verifies size, md5 and sha256 of every
  file, and only then renames the version into the repository and updates
  its index. A mismatch deletes the download, leaves the live versions as
  they were and fires ``kiosk/release/alert``; success fires
  ``kiosk/release/staged``.
* :func:`pin` sets the campus's version in the repository index.

On a kiosk:

* :func:`check_update` asks its campus's Pi repositories (home Pi first,
  the next when one is down) for the campus pin, downloads what is missing
  with HTTP Range resume, verifies, runs the manifest's install command and
  records the version in the ``kiosk_release`` grain. The previous version's
  package stays on disk.

Minion config (or pillar), key ``kiosk_release``::

    kiosk_release:
      repo_dir: /srv/kiosk-releases      # Pi: the repository nginx serves
      dir: C:\\ProgramData\\kiosk-fleet\\releases   # kiosk: packages (default: <cachedir>/kiosk_release)
      releases: [kiosk-app]              # kiosk: what check_update looks at by default
      verify_key: |                      # optional: Ed25519 public key (PEM); unsigned manifests are refused
        -----BEGIN PUBLIC KEY-----
        ...
      install_timeout: 1800
"""

import json
import logging
import os
import shutil

from salt.exceptions import SaltInvocationError

try:  # classic install: Salt puts the _utils folder on sys.path while loading
    import fleet_inventory
    import fleet_lock
    import fleet_release
    import fleet_runner
except ImportError:  # pip-installed extension
    from saltext_kiosk_fleet.utils import fleet_inventory, fleet_lock, fleet_release, fleet_runner

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_pkg"

GRAIN = "kiosk_release"
DEFAULT_REPO_DIR = "/srv/kiosk-releases"
NOT_STAGED = "release not staged"
INDEX_TIMEOUT = (3, 10)  # connect, read: a dead Pi must not hold up the boot
# another job staging or installing the same release (a push during the boot
# state, a rollout during the reactor's staging): wait for it, then find it done
BUSY_WAIT = 3600
INSTALLED = "installed.json"  # <dir>/<name>/installed.json: the grain, readable by the next job at once


def __virtual__():
    if not HAS_REQUESTS:
        return False, "kiosk_pkg: the requests package is not installed"
    return __virtualname__


def _conf(key, default=None):
    return __salt__["config.get"](f"kiosk_release:{key}", default)


def _fail(ret, error):
    ret.update({"result": False, "error": str(error)})
    __context__["retcode"] = 1
    return ret


def _event(tag, data):
    try:
        __salt__["event.send"](tag, data)
    except Exception as exc:  # pylint: disable=broad-except - an event must not hide the result
        log.error("kiosk_pkg: could not fire %s: %s", tag, exc)


def _alert(hop, name, version, error, source=None):
    _event(
        "kiosk/release/alert",
        {"hop": hop, "name": name, "version": version, "error": str(error), "source": source,
         "campus": __grains__.get("campus")},
    )


def _args(name, version=None):
    try:
        fleet_release.check_name(name)
        return fleet_release.check_version(version) if version is not None else None
    except fleet_release.ReleaseError as exc:
        raise SaltInvocationError(str(exc)) from exc


def _verify_key():
    return _conf("verify_key") or None


def _load_manifest(raw, name, version, source):
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise fleet_release.ReleaseError(f"manifest: {source} is not JSON ({exc})") from None
    doc = fleet_release.validate_manifest(doc, name=name, version=version)
    key = _verify_key()
    if key:
        fleet_release.verify_signature(doc, key)
    return doc


# --------------------------------------------------------------------------- Pi: the campus repository


def _repo_dir():
    repo = _conf("repo_dir", DEFAULT_REPO_DIR)
    if not isinstance(repo, str) or not os.path.isabs(repo):
        raise SaltInvocationError(f"kiosk_release:repo_dir: {repo!r} is not an absolute path")
    return repo


def _index(repo, name):
    path = os.path.join(repo, name, fleet_release.INDEX)
    doc = fleet_release.read_json(path, f"{name}/{fleet_release.INDEX}")
    return fleet_release.validate_index(doc, name) if doc is not None else fleet_release.new_index(name)


def _write_index(repo, name, index):
    os.makedirs(os.path.join(repo, name), exist_ok=True)
    fleet_release.write_json_atomic(os.path.join(repo, name, fleet_release.INDEX), index)


def _session():
    session = requests.Session()
    # campus LAN and the master's export only: never the hospital's proxy from the
    # environment or the Windows (WinINET/GPO) settings
    session.trust_env = False
    return session


def _lock(root, key, wait=BUSY_WAIT):
    staging = os.path.join(root, fleet_release.STAGING)
    os.makedirs(staging, exist_ok=True)
    busy = fleet_release.ReleaseError(f"lock: another job kept {key} busy for {wait} s")
    return fleet_lock.exclusive(os.path.join(staging, f"{key}.lock"), wait, busy)


def _live(repo, name, version):
    """A version is live when its directory and manifest are there (they arrive by one rename)."""
    return os.path.isfile(os.path.join(repo, name, version, fleet_release.MANIFEST))


def _salt_fetch(url, part, expected, field):
    """``salt://`` through the minion's file client (no hash check of its own), then ours."""
    cached = __salt__["cp.get_file"](url, part, makedirs=True)
    if not cached:
        raise fleet_release.ReleaseError(f"{field}: {url} is not on the master")
    try:
        fleet_release.compare(expected, fleet_release.hash_file(part), field)
    except fleet_release.ReleaseError:
        os.unlink(part)
        raise
    return {"url": url, "fetched": expected["size"], "resumed_from": []}


def _fetch_manifest(session, source, name, version, tmp_dir):
    url = fleet_release.file_url(source, name, version, fleet_release.MANIFEST)
    if source.startswith("salt://"):
        path = os.path.join(tmp_dir, fleet_release.MANIFEST)
        if not __salt__["cp.get_file"](url, path, makedirs=True):
            raise fleet_release.ReleaseError(f"source: {url} is not on the master")
        with open(path, "rb") as handle:
            raw = handle.read()
        os.unlink(path)
    else:
        try:
            resp = session.get(url, timeout=INDEX_TIMEOUT)
        except requests.RequestException as exc:
            raise fleet_release.ReleaseError(f"source: {url} cannot be reached ({exc.__class__.__name__})") from None
        if resp.status_code != 200:
            raise fleet_release.ReleaseError(f"source: {url} answered HTTP {resp.status_code}")
        raw = resp.content
    return _load_manifest(raw, name, version, url), raw


def _download(session, source, doc, work_dir, retries):
    """Every file of the release into ``work_dir``, verified; returns per-file fetch reports."""
    reports = {}
    for file_name, expected in sorted(doc["files"].items()):
        url = fleet_release.file_url(source, doc["name"], doc["version"], file_name)
        part = os.path.join(work_dir, file_name + ".part")
        final = os.path.join(work_dir, file_name)
        if os.path.exists(final):
            # left by an earlier, interrupted run of this release: keep it only if it matches
            # this manifest (the earlier run may have trusted another source's manifest)
            try:
                fleet_release.compare(expected, fleet_release.hash_file(final), file_name)
                continue
            except fleet_release.ReleaseError:
                os.unlink(final)
        field = f"{doc['name']} {doc['version']} {file_name}"
        if source.startswith("salt://"):
            reports[file_name] = _salt_fetch(url, part, expected, field)
        else:
            reports[file_name] = fleet_release.fetch(session, url, part, expected, field, retries=retries)
        os.replace(part, final)
    return reports


def _materialise(root, doc, raw_manifest, work_dir):
    """Move a verified ``work_dir`` to ``<root>/<name>/<version>`` in one rename."""
    with open(os.path.join(work_dir, fleet_release.MANIFEST), "wb") as handle:
        handle.write(raw_manifest)
        handle.flush()
        os.fsync(handle.fileno())
    os.makedirs(os.path.join(root, doc["name"]), exist_ok=True)
    target = os.path.join(root, doc["name"], doc["version"])
    if os.path.exists(target):  # left by a run that died between this rename and the index write
        shutil.rmtree(target)
    os.rename(work_dir, target)
    return target


def _work_dir(root, name, version):
    # one directory per release under the staging area: a later run resumes its .part files
    path = os.path.join(root, fleet_release.STAGING, f"{name}-{version}")
    os.makedirs(path, exist_ok=True)
    return path


def stage(name, version, source="salt://kiosk_releases/", serial=None, retries=3, hop="master->pi"):
    """
    Stage release ``name`` ``version`` into this Pi's repository from
    ``source``: the master's export (``http(s)://host/kiosk-releases/`` or
    ``salt://kiosk_releases/``) or another Pi's repository. Every file is
    checked (size, md5, sha256) before the version goes live; the index is
    updated last. With ``serial``, the campus pin moves to this version too
    (``serial`` is the master's pin counter for the campus). ``hop`` labels
    alerts (``master->pi``, or ``pi->pi`` when ``source`` is another Pi).

    Fires ``kiosk/release/staged`` on success, ``kiosk/release/alert`` on a
    mismatch or a failed download. Exit code 1 on failure.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_pkg.stage kiosk-app 1.4.0
        salt pi-riverside-2 kiosk_pkg.stage kiosk-app 1.4.0 source=http://10.1.1.2/kiosk-releases/
    """
    version = _args(name, version)
    repo = _repo_dir()
    if not isinstance(source, str) or not (source == "campus" or source.startswith(("salt://", "http://", "https://"))):
        raise SaltInvocationError(f"source: {source!r} is not 'campus' or a salt:// or http(s):// URL")
    ret = {"result": True, "name": name, "version": version, "pi": __opts__["id"], "source": source,
           "changed": False, "fetched": 0}
    try:
        retries = _retries(retries)
        os.makedirs(repo, exist_ok=True)
        with _lock(repo, f"{name}-{version}"):
            index = _index(repo, name)
            if version not in index["versions"] or not _live(repo, name, version):
                with _session() as session:
                    doc, raw, work, label, reports = _fetch_release(
                        session, _stage_sources(source), name, version, repo, hop, retries)
                _materialise(repo, doc, raw, work)
                ret.update(changed=True, source=label, fetched=sum(r["fetched"] for r in reports.values()),
                           resumed=any(r["resumed_from"] for r in reports.values()))
            if ret["changed"] or serial is not None:
                with _lock(repo, f"{name}.index", 60):  # read-modify-write: one writer at a time
                    index = _index(repo, name)
                    if ret["changed"]:
                        index = fleet_release.index_add(index, doc)
                    if serial is not None:
                        try:
                            index = fleet_release.index_pin(index, version, serial)
                            ret["pinned"] = True
                        except fleet_release.ReleaseError as exc:
                            # a newer pin arrived while this job ran: the staging still counts
                            ret["pin_skipped"] = str(exc)
                    _write_index(repo, name, index)
    except (fleet_release.ReleaseError, fleet_inventory.InventoryError, OSError) as exc:
        return _fail(ret, fleet_release.disk_error(exc, repo) if isinstance(exc, OSError) else exc)
    if ret["changed"]:
        _event("kiosk/release/staged", {"name": name, "version": version, "campus": __grains__.get("campus"),
                                         "fetched": ret["fetched"], "pinned": bool(ret.get("pinned"))})
    ret["staged"] = fleet_release.sort_versions(index["versions"])
    ret["pin"] = index["pin"]
    return ret


def _retries(value):
    try:
        return fleet_runner.number(value, "retries", 0, 100)
    except ValueError as exc:
        raise SaltInvocationError(str(exc)) from None


def _stage_sources(source):
    """``[(label, base URL)]``: the given source, or for ``campus`` the other Pis of this Pi's campus."""
    if source != "campus":
        return [("master" if source.startswith("salt://") else source, source if source.endswith("/") else source + "/")]
    inventory = fleet_inventory.from_pillar(__pillar__)
    campus = fleet_inventory.campus_of(inventory, __opts__["id"])
    peers = [p for p in fleet_inventory.pis_of(inventory, campus) if p != __opts__["id"]]
    sources = [(p, fleet_release.repo_url(inventory, campus, p)) for p in peers]
    return [(p, url) for p, url in sources if url]


def pin(name, version, serial):
    """
    Set the campus pin of release ``name`` in this Pi's repository index to
    ``version`` (which must be staged here); ``version=None`` freezes the
    campus (kiosks stop updating). ``serial`` is the master's pin counter:
    an older serial never overwrites a newer pin.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_pkg.pin kiosk-app 1.4.0 serial=7
    """
    version = _args(name, version)
    repo = _repo_dir()
    ret = {"result": True, "name": name, "version": version, "pi": __opts__["id"]}
    try:
        os.makedirs(repo, exist_ok=True)
        with _lock(repo, f"{name}.index", 60):
            index = fleet_release.index_pin(_index(repo, name), version, serial)
            _write_index(repo, name, index)
    except (fleet_release.ReleaseError, OSError) as exc:
        return _fail(ret, exc)
    ret["pin"] = index["pin"]
    return ret


def repo_status(name):
    """
    What this Pi's repository holds for release ``name``: staged versions and
    the campus pin.

    CLI Example:

    .. code-block:: bash

        salt -G kiosk_fleet_role:pi kiosk_pkg.repo_status kiosk-app
    """
    _args(name)
    repo = _repo_dir()
    try:
        index = _index(repo, name)
    except fleet_release.ReleaseError as exc:
        return _fail({"name": name, "pi": __opts__["id"]}, exc)
    live = [v for v in index["versions"] if _live(repo, name, v)]
    return {"result": True, "name": name, "pi": __opts__["id"], "staged": fleet_release.sort_versions(live),
            "pin": index["pin"]}


def prune(name, keep=3):
    """
    Delete staged versions of ``name`` beyond the ``keep`` newest; the pinned
    version is never deleted.

    CLI Example:

    .. code-block:: bash

        salt -G kiosk_fleet_role:pi kiosk_pkg.prune kiosk-app keep=3
    """
    _args(name)
    try:
        keep = int(keep)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"keep: {keep!r} is not a whole number") from None
    if keep < 2:
        raise SaltInvocationError(f"keep: {keep} is below 2 (the pin and the one before it stay)")
    repo = _repo_dir()
    try:
        return _prune(repo, name, keep)
    except (fleet_release.ReleaseError, OSError) as exc:
        return _fail({"name": name, "pi": __opts__["id"]}, exc)


def _prune(repo, name, keep):
    with _lock(repo, f"{name}.index", 60):
        index = _index(repo, name)
        versions = fleet_release.sort_versions(index["versions"])
        pinned = {index["pin"]["version"]} if index["pin"] and index["pin"]["version"] else set()
        kept = set(versions[-keep:]) | pinned
        removed = fleet_release.prune_plan(versions, kept)
        for version in removed:
            del index["versions"][version]
        _write_index(repo, name, index)  # first out of the index, then off the disk
        for version in removed:
            shutil.rmtree(os.path.join(repo, name, version), ignore_errors=True)
    return {"result": True, "name": name, "removed": removed, "kept": fleet_release.sort_versions(kept)}


# --------------------------------------------------------------------------- kiosk: follow the campus pin


def _kiosk_dir():
    path = _conf("dir") or os.path.join(__opts__["cachedir"], "kiosk_release")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise SaltInvocationError(f"kiosk_release:dir: {path!r} is not an absolute path")
    return path


def _my_repos():
    inventory = fleet_inventory.from_pillar(__pillar__)
    kiosk_id = __opts__["id"]
    campus = fleet_inventory.campus_of(inventory, kiosk_id)
    spec = inventory["campuses"][campus]
    return campus, fleet_release.kiosk_repo_urls(inventory, campus, kiosk_id, fleet_inventory.home_pi(spec, kiosk_id))


def _read_indexes(session, repos, name):
    """Each Pi's index (None for a Pi that is down or answers garbage), and why."""
    indexes, problems = {}, {}
    for pi_id, base in repos:
        url = f"{base}{name}/{fleet_release.INDEX}"
        try:
            resp = session.get(url, timeout=INDEX_TIMEOUT)
            if resp.status_code == 404:
                indexes[base], problems[pi_id] = None, NOT_STAGED
                continue
            resp.raise_for_status()
            indexes[base] = fleet_release.validate_index(resp.json(), name, f"{pi_id} index")
        except (requests.RequestException, ValueError) as exc:
            indexes[base], problems[pi_id] = None, f"{exc.__class__.__name__}: {exc}"
    return indexes, problems


def installed(name=None):
    """
    The release versions this kiosk runs (the ``kiosk_release`` grain):
    ``{name: {"version", "previous", "serial", "installed_at"}}``.

    CLI Example:

    .. code-block:: bash

        salt -G campus:riverside kiosk_pkg.installed
        salt kiosk-riverside-01 kiosk_pkg.installed kiosk-app
    """
    if name is not None:
        _args(name)
        return _current(_kiosk_dir(), name) or None
    return __grains__.get(GRAIN) or {}


def _install(doc, package_dir):
    argv = fleet_release.install_argv(doc, package_dir)
    if not argv:
        return {"retcode": 0, "stdout": "", "stderr": ""}
    return __salt__["cmd.run_all"](argv, cwd=package_dir, python_shell=False,
                                   timeout=int(_conf("install_timeout", 1800)), output_loglevel="debug")


def _current(root, name):
    """What this kiosk runs: the record next to the packages (written at once by the job that
    installed), else the grain (this job's copy of the grains may predate another job's install)."""
    try:
        record = fleet_release.read_json(os.path.join(root, name, INSTALLED), INSTALLED)
    except fleet_release.ReleaseError as exc:  # a torn record must not stop the update: the grain is the fallback
        log.warning("kiosk_pkg: %s", exc)
        record = None
    return record if isinstance(record, dict) else ((__grains__.get(GRAIN) or {}).get(name) or {})


def _record(root, name, version, serial):
    before = _current(root, name)
    record = {
        "version": version,
        "previous": before.get("version") if before.get("version") != version else before.get("previous"),
        "serial": serial,
        "installed_at": fleet_release.now_iso(),
    }
    fleet_release.write_json_atomic(os.path.join(root, name, INSTALLED), record)
    grain = dict(__grains__.get(GRAIN) or {})
    grain[name] = record
    __salt__["grains.setval"](GRAIN, grain)
    return record


def _integrity(exc):
    """True when a copy was bad (hash, size, signature), as opposed to a source that is down."""
    return any(word in str(exc) for word in ("mismatch", "longer than", "shorter than", "signature"))


def _fetch_release(session, candidates, name, version, root, hop, retries=3):
    """
    Download and verify ``version`` from the first of ``candidates``
    (``[(label, base URL)]``) that has an intact copy; every bad copy fires
    an alert naming its source. Returns ``(manifest, raw manifest, verified
    work dir, label, per-file reports)``.
    """
    tried = []
    for label, base in candidates:
        work = _work_dir(root, name, version)
        try:
            doc, raw = _fetch_manifest(session, base, name, version, work)
            missing = sum(e["size"] for f, e in doc["files"].items() if not os.path.exists(os.path.join(work, f)))
            fleet_release.check_free_space(root, missing)
            reports = _download(session, base, doc, work, retries)
        except fleet_release.ReleaseError as exc:
            tried.append(f"{label}: {exc}")
            if _integrity(exc):
                _alert(hop, name, version, exc, base)
            continue
        return doc, raw, work, label, reports
    raise fleet_release.ReleaseError(
        f"{name} {version}: no source delivered an intact copy ({'; '.join(tried) or 'no source holds it'})"
    )


def check_update(name=None, force=False, test=False):
    """
    Bring this kiosk to its campus's pinned version of ``name`` (default:
    every release in ``kiosk_release:releases``): read the index of each of
    the campus Pis' repositories (home Pi first; a Pi that is down is
    skipped), follow the pin with the highest serial, download what is
    missing (resumes a cut download), verify size/md5/sha256, run the
    manifest's install command, record the version in the ``kiosk_release``
    grain and keep the previous version's package. Nothing changes when the
    kiosk already runs the pin; ``test=True`` only says what would happen.
    Exit code 1 on any failure; the installed version then stays as it was.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_pkg.check_update
        salt -G campus:riverside kiosk_pkg.check_update kiosk-app
    """
    names = [name] if name is not None else list(_conf("releases") or [])
    if not names:
        raise SaltInvocationError("name: no release named and kiosk_release:releases is empty")
    for each in names:
        _args(each)
    try:
        campus, repos = _my_repos()
    except (fleet_inventory.InventoryError, fleet_release.ReleaseError) as exc:
        raise SaltInvocationError(str(exc)) from exc
    root = _kiosk_dir()
    os.makedirs(root, exist_ok=True)
    result = {"result": True, "kiosk": __opts__["id"], "campus": campus, "releases": {}}
    with _session() as session:
        for each in names:
            report = _update_one(session, repos, each, root, force, test)
            result["releases"][each] = report
            if report["result"] is False:
                result["result"] = False
    if not result["result"]:
        __context__["retcode"] = 1
    return result


def _update_one(session, repos, name, root, force, test):
    report = {"result": True, "changed": False}
    indexes, problems = _read_indexes(session, repos, name)
    report["repos_down"] = {k: v for k, v in problems.items() if v != NOT_STAGED}
    pin_ = fleet_release.choose_pin(indexes)
    current = _current(root, name)
    report["installed"] = current.get("version")
    if pin_ is None:
        down = report["repos_down"]
        if len(down) == len(repos):
            return _fail(report, f"repos: no campus Pi answered ({'; '.join(f'{k}: {v}' for k, v in down.items())})")
        report["comment"] = "no campus pin for this release yet: nothing to do"
        return report
    report["pin"] = pin_["version"]
    if pin_["version"] is None:
        report["comment"] = "campus frozen (unpinned): nothing to do"
        return report
    version = pin_["version"]
    if current.get("version") == version and not force:
        report["comment"] = f"already on {version}"
        return report
    if isinstance(current.get("serial"), int) and pin_["serial"] < current["serial"] and not force:
        # the Pis that answered missed a pin change this kiosk already followed: never go back
        report["comment"] = (f"keeping {current.get('version')}: the answering Pis carry an older pin "
                             f"(serial {pin_['serial']} < {current['serial']})")
        return report
    if test:
        report.update(result=None, comment=f"would install {version} (installed: {current.get('version')})")
        return report
    try:
        with _lock(root, f"{name}.install"):  # one install per kiosk and version, whichever job comes first
            if _current(root, name).get("version") == version and not force:
                report["comment"] = f"already on {version} (installed by another job)"
                return report
            return _fetch_and_install(session, repos, indexes, pin_, name, version, root, report)
    except fleet_release.ReleaseError as exc:
        return _fail(report, exc)


def _fetch_and_install(session, repos, indexes, pin_, name, version, root, report):
    # the repo that set the pin first, then the others that hold the version
    order = sorted(repos, key=lambda r: r[1] != pin_["repo"])
    candidates = [r for r in order if indexes.get(r[1]) and version in indexes[r[1]]["versions"]]
    package = os.path.join(root, name, version)
    try:
        if os.path.isfile(os.path.join(package, fleet_release.MANIFEST)):
            with open(os.path.join(package, fleet_release.MANIFEST), "rb") as handle:
                doc = _load_manifest(handle.read(), name, version, package)
            for file_name, expected in doc["files"].items():  # kept on disk: check before running it
                fleet_release.compare(expected, fleet_release.hash_file(os.path.join(package, file_name)),
                                      f"{name} {version} {file_name} (local copy)")
            report["source"] = "local"
        else:
            doc, raw, work, pi_id, fetched = _fetch_release(session, candidates, name, version, root, "pi->kiosk")
            package = _materialise(root, doc, raw, work)
            report["source"] = pi_id
            report["fetched"] = sum(r["fetched"] for r in fetched.values())
            report["resumed"] = any(r["resumed_from"] for r in fetched.values())
    except (fleet_release.ReleaseError, OSError) as exc:
        return _fail(report, exc)
    outcome = _install(doc, package)
    if outcome["retcode"] not in doc.get("success_codes", [0]):
        error = f"install command exited {outcome['retcode']}: {(outcome.get('stderr') or '')[-500:]}"
        _alert("install", name, version, error)
        return _fail(report, error)
    try:
        report.update(changed=True, version=version, record=_record(root, name, version, pin_["serial"]))
    except OSError as exc:
        return _fail(report, f"installed {version}, but the record could not be written: {exc}")
    keep = {version, report["record"]["previous"]}
    present = [v for v in os.listdir(os.path.join(root, name)) if fleet_release.VERSION.match(v)]
    for old in fleet_release.prune_plan(present, keep):
        shutil.rmtree(os.path.join(root, name, old), ignore_errors=True)
    _event("kiosk/release/installed", {"name": name, "version": version, "campus": __grains__.get("campus")})
    return report
