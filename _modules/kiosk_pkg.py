"""
Kiosk release packages on the Pis and on the kiosks.

On a Pi (its repository, served read-only by nginx, see
``states/kiosk_fleet/release_repo.sls``):

* :func:`stage` fetches a release from the master (``http(s)://`` export of
  the master's store, resumable; or ``salt://`` through ``cp.get_file``) or
  from another Pi of the campus, checks the manifest's signature, verifies
  size, md5 and sha256 of every file, and only then renames the version
  into the repository and updates its index. A bad signature or copy
  deletes the download, leaves the live versions as they were and fires
  ``kiosk/release/alert``; success fires ``kiosk/release/staged``.
* :func:`pin` stores the master's signed campus pin in the repository index.

On a kiosk:

* :func:`check_update` asks its campus's Pi repositories (home Pi first,
  the next when one is down) for the campus pin, follows only a pin signed
  for its campus, downloads what is missing with HTTP Range resume,
  verifies signature and hashes, runs the manifest's install command and
  records the version in ``<dir>/<name>/installed.json`` (the
  ``kiosk_release`` grain, ``_grains/kiosk_release.py``). The previous
  version's package stays on disk.

Nothing is staged, pinned or installed without the master's public key in
**pillar** (never read from the minion config: a kiosk's own files are not
trusted), key ``kiosk_release:verify_key``: one PEM or a list (rotation).

Minion config (or pillar), key ``kiosk_release``::

    kiosk_release:
      repo_dir: /srv/kiosk-releases      # Pi: the repository nginx serves
      dir: C:\\ProgramData\\kiosk-fleet\\releases   # kiosk: packages (default: <cachedir>/kiosk_release)
      releases: [kiosk-app]              # kiosk: what check_update looks at by default
      install_timeout: 1800

Pillar only::

    kiosk_release:
      verify_key:                        # Ed25519 public key(s) of the master, PEM
        - |
          -----BEGIN PUBLIC KEY-----
          ...
"""

import json
import logging
import os
import re
import shutil
import time

from salt.exceptions import SaltInvocationError

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_http,
        fleet_inventory,
        fleet_lock,
        fleet_release,
        fleet_rollout,
        fleet_runner,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_http
    import fleet_inventory
    import fleet_lock
    import fleet_release
    import fleet_rollout
    import fleet_runner

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_pkg"

GRAIN = "kiosk_release"  # reported by _grains/kiosk_release.py from installed.json
DEFAULT_REPO_DIR = "/srv/kiosk-releases"
NOT_STAGED = "release not staged"
INDEX_TIMEOUT = (3, 10)  # connect, read: a dead Pi must not hold up the boot
# another job staging or installing the same release (a push during the boot
# state, a rollout during the reactor's staging): wait for it, then find it done
BUSY_WAIT = 3600
INSTALLED = fleet_release.INSTALLED  # <dir>/<name>/installed.json: read by the grains module and the next job
HOP = re.compile(r"^[a-z]+->[a-z]+\Z")


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
         "campus": _campus_or_none()},
    )


def _args(name, version=None):
    try:
        fleet_release.check_name(name)
        return fleet_release.check_version(version) if version is not None else None
    except fleet_release.ReleaseError as exc:
        raise SaltInvocationError(str(exc)) from exc


def _verify_keys():
    """The master's public keys, from pillar only; SignatureError (refuse everything) without them."""
    conf = __pillar__.get("kiosk_release") or {}
    value = conf.get("verify_key") if isinstance(conf, dict) else None
    return fleet_release.verify_keys(value)


def _keys_or_alert(hop, name, version):
    try:
        return _verify_keys()
    except fleet_release.SignatureError as exc:
        _alert(hop, name, version, exc)
        raise


def _load_manifest(raw, name, version, source, keys):
    """A manifest signed by one of ``keys``, then checked field by field (signature first: garbage is refused
    as unsigned before anything else of it is looked at)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise fleet_release.ReleaseError(f"manifest: {source} is not JSON") from None
    fleet_release.verify(doc, keys, "manifest")
    return fleet_release.validate_manifest(doc, name=name, version=version)


def _my_campus():
    """This minion's campus from the pillar inventory (never from a grain the minion reports about itself)."""
    return fleet_inventory.campus_of(fleet_inventory.from_pillar(__pillar__), __opts__["id"])


def _campus_or_none():
    """The pillar campus for event data (informational: the receiving runners look the sender up themselves)."""
    try:
        return _my_campus()
    except fleet_inventory.InventoryError:
        return None


def _signed_pin(pin, keys, name, hop, version=None):
    """The master's signed pin checked for this Pi's campus; an alert names the hop when it does not hold."""
    try:
        pin = fleet_release.verify_pin(pin, keys, name, _my_campus())
    except fleet_release.SignatureError as exc:
        _alert(hop, name, version, exc)
        raise
    return pin


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


def _session(source=None):
    # campus LAN and the master's export only: never the hospital's proxy from the
    # environment or the Windows (WinINET/GPO) settings, never a redirect elsewhere
    session = fleet_http.session()
    if source is not None:
        adapter = _SourceAdapter(source)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


if HAS_REQUESTS:

    class _SourceAdapter(requests.adapters.HTTPAdapter):
        """Connections from one local address (the kiosk's inventory IP), so the Pi's log names the kiosk."""

        def __init__(self, source, **kwargs):
            self._source = source
            super().__init__(**kwargs)

        def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
            pool_kwargs["source_address"] = (self._source, 0)
            super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


def _bind_source(campus):
    """
    The kiosk's inventory IP when minion config ``kiosk_release:bind_source``
    is True, else None (the system picks: a kiosk whose address is not the
    inventory's must still download). Meant for hosts with many addresses,
    like the test topology on loopback, where the Pis' logs could not tell
    kiosks apart otherwise.
    """
    if _conf("bind_source") is not True:
        return None
    inventory = fleet_inventory.from_pillar(__pillar__)
    return inventory["campuses"][campus]["kiosks"][__opts__["id"]]["ip"]


def _lock(root, key, wait=BUSY_WAIT):
    staging = os.path.join(root, fleet_release.STAGING)
    os.makedirs(staging, exist_ok=True)
    busy = fleet_release.ReleaseError(f"lock: another job kept {key} busy for {wait} s")
    return fleet_lock.exclusive(os.path.join(staging, f"{key}.lock"), wait, busy)


def _live(repo, name, version):
    """A version is live when its directory and manifest are there (they arrive by one rename)."""
    return os.path.isfile(os.path.join(repo, name, version, fleet_release.MANIFEST))


def _live_signed(repo, name, version, keys):
    """Live, and its manifest signed by a key we hold: a copy staged before signing (or under a retired
    key) is fetched again, signed, rather than served to kiosks that would refuse it."""
    if not _live(repo, name, version):
        return False
    try:
        with open(os.path.join(repo, name, version, fleet_release.MANIFEST), "rb") as handle:
            _load_manifest(handle.read(), name, version, "staged copy", keys)
    except (fleet_release.ReleaseError, OSError) as exc:
        log.warning("kiosk_pkg: %s %s is staged but not usable (%s): fetching it again", name, version, exc)
        return False
    return True


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


def _fetch_manifest(session, source, name, version, tmp_dir, keys):
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
            raise fleet_release.ReleaseError(f"source: {fleet_http.describe_error(exc, url)}") from None
        if resp.status_code != 200:
            raise fleet_release.ReleaseError(f"source: {url} answered HTTP {resp.status_code}")
        raw = resp.content
    return _load_manifest(raw, name, version, url, keys), raw


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


def stage(name, version, source="salt://kiosk_releases/", pin=None, retries=3, hop="master->pi"):
    """
    Stage release ``name`` ``version`` into this Pi's repository from
    ``source``: the master's export (``http(s)://host/kiosk-releases/`` or
    ``salt://kiosk_releases/``) or another Pi's repository. The manifest
    must be signed by a key in pillar ``kiosk_release:verify_key``, and
    every file is checked (size, md5, sha256) before the version goes live;
    the index is updated last. With ``pin`` (the master's signed campus pin
    for this version, as ``kiosk_release`` makes it), the campus pin moves
    to this version too; a pin not signed for this Pi's campus refuses the
    whole call. ``hop`` labels alerts (``master->pi``, or ``pi->pi`` when
    ``source`` is another Pi).

    Fires ``kiosk/release/staged`` on success, ``kiosk/release/alert`` on a
    refused signature or pin, a mismatch or a failed download. Exit code 1
    on failure.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_pkg.stage kiosk-app 1.4.0
        salt pi-riverside-2 kiosk_pkg.stage kiosk-app 1.4.0 source=http://10.1.1.2/kiosk-releases/
    """
    version = _args(name, version)
    repo = _repo_dir()
    if not isinstance(source, str) or not (source == "campus" or source.startswith(("salt://", "http://", "https://"))):
        raise SaltInvocationError(f"source: {source!r} is not 'campus' or a salt:// or http(s):// URL")
    if not isinstance(hop, str) or not HOP.match(hop):
        raise SaltInvocationError(f"hop: {hop!r} is not a hop label like master->pi")
    ret = {"result": True, "name": name, "version": version, "pi": __opts__["id"], "source": source,
           "changed": False, "fetched": 0}
    try:
        retries = _retries(retries)
        keys = _keys_or_alert(hop, name, version)
        if pin is not None:
            pin = _signed_pin(pin, keys, name, hop, version)
            if pin.get("version") != version:
                mismatch = fleet_release.SignatureError(
                    f"pin.version: {pin.get('version')!r} is not the version being staged ({version})")
                _alert(hop, name, version, mismatch)
                raise mismatch
        os.makedirs(repo, exist_ok=True)
        with _lock(repo, f"{name}-{version}"):
            index = _index(repo, name)
            if version not in index["versions"] or not _live_signed(repo, name, version, keys):
                with _session() as session:
                    doc, raw, work, label, reports = _fetch_release(
                        session, _stage_sources(source), name, version, repo, hop, keys, retries)
                _materialise(repo, doc, raw, work)
                ret.update(changed=True, source=label, fetched=sum(r["fetched"] for r in reports.values()),
                           resumed=any(r["resumed_from"] for r in reports.values()))
            if ret["changed"] or pin is not None:
                with _lock(repo, f"{name}.index", 60):  # read-modify-write: one writer at a time
                    index = _index(repo, name)
                    if ret["changed"]:
                        index = fleet_release.index_add(index, doc)
                    if pin is not None:
                        try:
                            index = fleet_release.index_pin(index, pin)
                            ret["pinned"] = True
                        except fleet_release.ReleaseError as exc:
                            # a newer pin arrived while this job ran: the staging still counts
                            ret["pin_skipped"] = str(exc)
                    _write_index(repo, name, index)
    except (fleet_release.ReleaseError, fleet_inventory.InventoryError, OSError) as exc:
        return _fail(ret, fleet_release.disk_error(exc, repo) if isinstance(exc, OSError) else exc)
    if ret["changed"]:
        _event("kiosk/release/staged", {"name": name, "version": version, "campus": _campus_or_none(),
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


def pin(name, pin):
    """
    Store the master's signed campus pin of release ``name`` (``pin``: the
    document ``kiosk_release`` signs, ``{kind, name, campus, version, serial,
    signed_at, signature}``, as a dict or its JSON) in this Pi's repository
    index. Its version must be staged here; version ``None`` freezes the
    campus (kiosks stop updating). Refused, with an alert naming the hop
    ``master->pi``: no ``kiosk_release:verify_key`` in pillar, a signature
    by no key in it, another campus or release, a serial more than a day
    ahead of its signing time. An older serial never overwrites a newer pin.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_pkg.pin kiosk-app pin='{"kind": "pin", "name": "kiosk-app", ...}'
    """
    _args(name)
    repo = _repo_dir()
    ret = {"result": True, "name": name, "pi": __opts__["id"]}
    try:
        keys = _keys_or_alert("master->pi", name, None)
        pin = _signed_pin(pin, keys, name, "master->pi")
        ret["version"] = pin["version"]
        os.makedirs(repo, exist_ok=True)
        with _lock(repo, f"{name}.index", 60):
            index = fleet_release.index_pin(_index(repo, name), pin)
            _write_index(repo, name, index)
    except (fleet_release.ReleaseError, fleet_inventory.InventoryError, OSError) as exc:
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
    try:  # what a kiosk would make of this pin (a pin left from before signing is not followed)
        verified = index["pin"] is not None and bool(
            fleet_release.verify_pin(index["pin"], _verify_keys(), name, _my_campus()))
    except (fleet_release.ReleaseError, fleet_inventory.InventoryError):
        verified = False
    return {"result": True, "name": name, "pi": __opts__["id"], "staged": fleet_release.sort_versions(live),
            "pin": index["pin"], "pin_verified": verified}


def served(name, version):
    """
    Which clients this Pi's nginx served files of release ``name`` ``version``
    to, from its access log (minion config ``kiosk_release:access_log``, the
    JSON lines of the shipped ``kiosk_release_repo`` log format):
    ``{"clients": {address: [HTTP statuses]}}``. GETs of the version's files
    count (not the manifest, not index.json). nginx writes the log, not the
    kiosks, so the top master can check a kiosk's "installed" return
    against it. Only the current log file is read (rotated files are not).

    CLI Example:

    .. code-block:: bash

        salt -G campus:riverside and kiosk_fleet_role:pi kiosk_pkg.served kiosk-app 1.4.0
    """
    version = _args(name, version)
    ret = {"result": True, "name": name, "version": version, "pi": __opts__["id"]}
    path = _conf("access_log")
    if not isinstance(path, str) or not os.path.isabs(path):
        return _fail(ret, f"kiosk_release:access_log: {path!r} is not the absolute path of the repository's "
                          "nginx access log (minion config)")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            ret["clients"] = fleet_rollout.served_from_log(handle, name, version)
    except FileNotFoundError:
        ret["clients"] = {}  # nothing served since the log was created or rotated
    except OSError as exc:
        return _fail(ret, f"kiosk_release:access_log: cannot read {path}: {exc.strerror or exc.__class__.__name__}")
    return ret


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


def _read_indexes(session, repos, name, keys, campus):
    """
    Each Pi's index (None for a Pi that is down or answers no JSON), why, and
    the Pis whose index was refused (a pin not signed by a key in pillar,
    another campus's, a serial far ahead of its signing time, or JSON that
    is no index of this release): an alert names each.
    """
    indexes, problems, refused = {}, {}, {}
    for pi_id, base in repos:
        url = f"{base}{name}/{fleet_release.INDEX}"
        try:
            resp = session.get(url, timeout=INDEX_TIMEOUT)
            if resp.status_code == 404:
                indexes[base], problems[pi_id] = None, NOT_STAGED
                continue
            resp.raise_for_status()
            indexes[base] = fleet_release.verify_index(resp.json(), name, keys, campus, "index")
        except fleet_release.ReleaseError as exc:  # a bad signature or pin, or an index that is no index
            indexes[base], refused[pi_id] = None, str(exc)
            _alert("pi->kiosk", name, None, exc, base)
        except (requests.RequestException, ValueError) as exc:
            indexes[base] = None
            problems[pi_id] = (fleet_http.describe_error(exc, url) if isinstance(exc, requests.RequestException)
                               else f"{exc.__class__.__name__}: {exc}")
    return indexes, problems, refused


def installed(name=None):
    """
    The release versions this kiosk runs, read from ``<dir>/<name>/installed.json``
    (what the ``kiosk_release`` grain reports after the next grains refresh):
    ``{name: {"version", "previous", "serial", "signed_at", "installed_at"}}``.

    CLI Example:

    .. code-block:: bash

        salt -G campus:riverside kiosk_pkg.installed
        salt kiosk-riverside-01 kiosk_pkg.installed kiosk-app
    """
    if name is not None:
        _args(name)
        return _current(_kiosk_dir(), name) or None
    return fleet_release.read_installed(_kiosk_dir())


def _install(doc, package_dir):
    argv = fleet_release.install_argv(doc, package_dir)
    if not argv:
        return {"retcode": 0, "stdout": "", "stderr": ""}
    return __salt__["cmd.run_all"](argv, cwd=package_dir, python_shell=False,
                                   timeout=int(_conf("install_timeout", 1800)), output_loglevel="debug")


def _current(root, name):
    """What this kiosk runs: the record next to the packages, written (fsync + rename) by the job that
    installed; the grains module reports the same file. ``{}`` when there is none."""
    try:
        record = fleet_release.read_json(os.path.join(root, name, INSTALLED), INSTALLED)
    except fleet_release.ReleaseError as exc:  # a torn record must not stop the update
        log.warning("kiosk_pkg: %s", exc)
        record = None
    return record if isinstance(record, dict) else {}


def _installed_serial(record):
    """
    The pin serial the kiosk installed under, which no later pin may go
    below. A record from before pins were signed may hold a serial an
    unsigned index made up (10**15 froze kiosks): one more than a day ahead
    of the clock is not honoured.
    """
    serial = record.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int):
        return None
    if serial > time.time() + fleet_release.MAX_SERIAL_AHEAD:
        log.warning("kiosk_pkg: the installed record's pin serial %s is far ahead of the clock: not honoured", serial)
        return None
    return serial


def _record(root, name, version, pin_):
    before = _current(root, name)
    record = {
        "version": version,
        "previous": before.get("version") if before.get("version") != version else before.get("previous"),
        "serial": pin_["serial"],
        "signed_at": pin_.get("signed_at"),
        "installed_at": fleet_release.now_iso(),
    }
    # one file, fsync'ed and renamed into place; the grains module reads it (no grains.setval:
    # that rewrites the minion's grains file in place, and a power cut could lose the campus grain)
    fleet_release.write_json_atomic(os.path.join(root, name, INSTALLED), record)
    try:
        __salt__["saltutil.refresh_grains"](refresh_pillar=False)
    except Exception as exc:  # pylint: disable=broad-except - the install stands; the grain follows later
        log.warning("kiosk_pkg: grains not refreshed after installing %s %s: %s", name, version, exc)
    return record


def _integrity(exc):
    """True when a copy was bad (hash, size) or not signed by our keys, as opposed to a source that is down."""
    return isinstance(exc, (fleet_release.IntegrityError, fleet_release.SignatureError))


def _fetch_release(session, candidates, name, version, root, hop, keys, retries=3):
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
            doc, raw = _fetch_manifest(session, base, name, version, work, keys)
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
    skipped), keep only pins signed by a key in pillar
    ``kiosk_release:verify_key`` for this kiosk's campus (pillar inventory),
    follow the one with the highest serial (never one below the serial this
    kiosk installed under), download what is missing (resumes a cut
    download), verify the manifest's signature and size/md5/sha256, run the
    manifest's install command, record the version in
    ``<dir>/<name>/installed.json`` (the ``kiosk_release`` grain) and keep
    the previous version's package. Every refusal (no key, a bad signature
    or pin) fires ``kiosk/release/alert`` with ``hop: pi->kiosk``. Nothing
    changes when the kiosk already runs the pin; ``test=True`` only says what
    would happen; ``force=True`` reinstalls the pinned version. Exit code 1
    on any failure; the installed version then stays as it was.

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
    try:
        keys = _verify_keys()
    except fleet_release.SignatureError as exc:
        for each in names:
            _alert("pi->kiosk", each, None, exc)
            result["releases"][each] = {"result": False, "changed": False, "error": str(exc)}
        result["result"] = False
        __context__["retcode"] = 1
        return result
    with _session(_bind_source(campus)) as session:
        for each in names:
            report = _update_one(session, repos, each, root, force, test, keys, campus)
            result["releases"][each] = report
            if report["result"] is False:
                result["result"] = False
    if not result["result"]:
        __context__["retcode"] = 1
    return result


def _update_one(session, repos, name, root, force, test, keys, campus):
    report = {"result": True, "changed": False}
    indexes, problems, refused = _read_indexes(session, repos, name, keys, campus)
    report["repos_down"] = {k: v for k, v in problems.items() if v != NOT_STAGED}
    if refused:
        report["refused"] = refused
    pin_ = fleet_release.choose_pin(indexes)
    current = _current(root, name)
    report["installed"] = current.get("version")
    if pin_ is None:
        down = report["repos_down"]
        if refused:
            return _fail(report, "index: refused from " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
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
    floor = _installed_serial(current)
    if floor is not None and pin_["serial"] < floor:
        # the Pis that answered missed a pin change this kiosk already followed (or replay an old
        # signed pin): never go back, not even with force
        report["comment"] = (f"keeping {current.get('version')}: the answering Pis carry an older pin "
                             f"(serial {pin_['serial']} < {floor})")
        return report
    if test:
        report.update(result=None, comment=f"would install {version} (installed: {current.get('version')})")
        return report
    try:
        with _lock(root, f"{name}.install"):  # one install per kiosk and version, whichever job comes first
            if _current(root, name).get("version") == version and not force:
                report["comment"] = f"already on {version} (installed by another job)"
                return report
            return _fetch_and_install(session, repos, indexes, pin_, name, version, root, report, keys)
    except fleet_release.ReleaseError as exc:
        return _fail(report, exc)


def _fetch_and_install(session, repos, indexes, pin_, name, version, root, report, keys):
    # the repo that set the pin first, then the others that hold the version
    order = sorted(repos, key=lambda r: r[1] != pin_["repo"])
    candidates = [r for r in order if indexes.get(r[1]) and version in indexes[r[1]]["versions"]]
    package = os.path.join(root, name, version)
    doc = None
    if os.path.isfile(os.path.join(package, fleet_release.MANIFEST)):
        try:  # kept on disk (a previous version, or a cut install): check before running it
            with open(os.path.join(package, fleet_release.MANIFEST), "rb") as handle:
                doc = _load_manifest(handle.read(), name, version, package, keys)
            for file_name, expected in doc["files"].items():
                fleet_release.compare(expected, fleet_release.hash_file(os.path.join(package, file_name)),
                                      f"{name} {version} {file_name} (local copy)")
            report["source"] = "local"
        except (fleet_release.ReleaseError, OSError) as exc:
            # a copy signed by a retired key, or changed on disk: never run it, fetch a fresh one
            if _integrity(exc):
                _alert("pi->kiosk", name, version, exc, "local")
            log.warning("kiosk_pkg: the kept copy of %s %s is not used: %s", name, version, exc)
            shutil.rmtree(package, ignore_errors=True)
            doc = None
    if doc is None:
        try:
            doc, raw, work, pi_id, fetched = _fetch_release(session, candidates, name, version, root, "pi->kiosk",
                                                            keys)
            package = _materialise(root, doc, raw, work)
        except (fleet_release.ReleaseError, OSError) as exc:
            return _fail(report, exc)
        report["source"] = pi_id
        report["fetched"] = sum(r["fetched"] for r in fetched.values())
        report["resumed"] = any(r["resumed_from"] for r in fetched.values())
    outcome = _install(doc, package)
    if outcome["retcode"] not in doc.get("success_codes", [0]):
        error = f"install command exited {outcome['retcode']}: {(outcome.get('stderr') or '')[-500:]}"
        _alert("install", name, version, error)
        return _fail(report, error)
    try:
        report.update(changed=True, version=version, record=_record(root, name, version, pin_))
    except OSError as exc:
        return _fail(report, f"installed {version}, but the record could not be written: {exc}")
    keep = {version, report["record"]["previous"]}
    present = [v for v in os.listdir(os.path.join(root, name)) if fleet_release.VERSION.match(v)]
    for old in fleet_release.prune_plan(present, keep):
        shutil.rmtree(os.path.join(root, name, old), ignore_errors=True)
    _event("kiosk/release/installed", {"name": name, "version": version, "campus": _campus_or_none()})
    return report
