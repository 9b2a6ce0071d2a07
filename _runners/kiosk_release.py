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

Master config::

    kiosk_release:
      store: /srv/salt/kiosk_releases   # default: <first file_roots:base>/kiosk_releases (so salt:// reaches it)
      master_url: http://salt.example.org:8080/kiosk-releases/   # optional: Pis stage over HTTP,
                                        # resuming after a cut (nginx exporting the store);
                                        # default salt://kiosk_releases/ (cp.get_file)
      signing_key: /etc/salt/pki/master/kiosk_release.pem        # required by publish/rollback: Ed25519 private
                                        # key (mode 0600; salt-run kiosk_release.keygen makes it)
      source_root: /var/lib/jenkins/workspace   # required by publish: a file or directory source must be
                                        # below it (no '..', no symlink on the way, read with O_NOFOLLOW)
      textfile_dir: /var/lib/prometheus/node-exporter            # optional: kiosk_release.prom
      timeout: 3600                     # seconds a staging or install job may take
      max_error_share: 0.0              # rollout halts when more kiosks than this share fail

Every function returns ``{"result": bool, ...}`` and exits non-zero on failure.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_http,
        fleet_inventory,
        fleet_lock,
        fleet_metrics,
        fleet_release,
        fleet_rollout,
        fleet_runner,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_http
    import fleet_inventory
    import fleet_lock
    import fleet_metrics
    import fleet_release
    import fleet_rollout
    import fleet_runner

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_release"

CONFIG_KEY = "kiosk_release"
DEFAULT_TIMEOUT = 3600
TEXTFILE = "kiosk_release.prom"
STATE_LOCK_WAIT = 60  # s; the lock is only held to read and write a small JSON file


def __virtual__():
    return __virtualname__


# --------------------------------------------------------------------------- configuration and state


def _conf(key, default=None):
    conf = __opts__.get(CONFIG_KEY) or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{CONFIG_KEY}: expected a mapping in the master config")
    return conf.get(key, default)


def _store():
    store = _conf("store")
    if store is None:
        roots = (__opts__.get("file_roots") or {}).get("base") or []
        if not roots:
            raise ValueError(f"{CONFIG_KEY}.store: not set and the master has no file_roots:base")
        store = os.path.join(roots[0], "kiosk_releases")
    if not isinstance(store, str) or not os.path.isabs(store):
        raise ValueError(f"{CONFIG_KEY}.store: {store!r} is not an absolute path")
    os.makedirs(store, exist_ok=True)
    return store


def _master_source():
    url = _conf("master_url")
    if url is None:
        return "salt://kiosk_releases/"
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{CONFIG_KEY}.master_url: {url!r} is not an http(s) URL")
    return url if url.endswith("/") else url + "/"


def _timeout(timeout):
    return fleet_runner.number(_conf("timeout", DEFAULT_TIMEOUT) if timeout is None else timeout,
                               "timeout", 10, 86400)


@contextlib.contextmanager
def _state():
    """The runner's state (pins, pushes, metrics), locked: reactors run runners concurrently."""
    directory = os.path.join(__opts__["cachedir"], "kiosk_release")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "state.json")
    busy = ValueError(f"state: {path} stayed locked by another kiosk_release run for {STATE_LOCK_WAIT} s")
    with fleet_lock.exclusive(os.path.join(directory, "state.lock"), STATE_LOCK_WAIT, busy):
        state = fleet_release.read_json(path, "state") or {}
        state.setdefault("pins", {})
        state.setdefault("pushed", {})
        state.setdefault("metrics", {})
        before = json.dumps(state, sort_keys=True)
        yield state
        # written only when changed: a refused (forged, replayed) event leaves the file as it was
        if json.dumps(state, sort_keys=True) != before:
            fleet_release.write_json_atomic(path, state)


def _read_state():
    with _state() as state:
        return json.loads(json.dumps(state))


def _inventory():
    return fleet_inventory.master_inventory(__opts__)


def _campuses(inventory, campuses, field="campuses"):
    names = fleet_inventory.names(campuses, field) or sorted(inventory["campuses"])
    unknown = [c for c in names if c not in inventory["campuses"]]
    if unknown:
        raise fleet_inventory.InventoryError(
            f"{field}: unknown campus {', '.join(unknown)} (known: {', '.join(sorted(inventory['campuses']))})"
        )
    return names


def _published(store, name):
    root = os.path.join(store, name)
    if not os.path.isdir(root):
        return []
    return fleet_release.sort_versions(
        v for v in os.listdir(root)
        if fleet_release.VERSION.match(v) and os.path.isfile(os.path.join(root, v, fleet_release.MANIFEST))
    )


def _manifest(store, name, version):
    fleet_release.check_name(name)
    version = fleet_release.check_version(version)
    doc = fleet_release.read_json(os.path.join(store, name, version, fleet_release.MANIFEST), "manifest")
    if doc is None:
        known = _published(store, name)
        raise ValueError(f"version: {name} {version} is not published (published: {', '.join(known) or 'none'})")
    return fleet_release.validate_manifest(doc, name=name, version=version)


def _pin_of(state, name, campus):
    return state["pins"].get(name, {}).get(campus)


def _set_pin(state, name, campus, version):
    """
    Move the campus pin; the serial grows on every change so Pis and kiosks
    can order pins. The pin is signed here (``signed``: what the Pis store
    and the kiosks verify); without a usable ``kiosk_release:signing_key``
    this raises ValueError and, called inside ``_state()``, nothing is saved.
    """
    current = state["pins"].setdefault(name, {}).get(campus) or {"version": None, "serial": 0, "history": []}
    history = list(current.get("history", []))
    if current.get("version") is not None and current["version"] != version:
        history.append(current["version"])
    # the serial also follows the clock: a master whose cachedir was wiped never
    # issues serials below what the Pis hold (they refuse older serials); kiosks
    # refuse a serial more than a day ahead of its signing time
    serial = max(current["serial"] + 1, int(time.time()))
    signed = fleet_release.sign_pin(name, campus, version, serial, _signing_key())
    pin = {"version": version, "serial": serial, "history": history[-20:], "at": fleet_release.now_iso(),
           "signed": signed}
    state["pins"][name][campus] = pin
    state["pushed"].setdefault(name, {}).pop(campus, None)
    return pin


def _pin_doc(name, campus, pin):
    """The signed pin of a state entry; an entry saved before pins were signed is signed now (same serial)."""
    signed = pin.get("signed")
    if isinstance(signed, dict) and signed.get("serial") == pin["serial"] and signed.get("version") == pin["version"]:
        return signed
    return fleet_release.sign_pin(name, campus, pin["version"], pin["serial"], _signing_key())


# --------------------------------------------------------------------------- metrics


def _metrics(state):
    """Rewrite kiosk_release.prom from the state (when textfile_dir is set)."""
    directory = _conf("textfile_dir")
    if not directory:
        return
    m = state["metrics"]
    families = [
        ("kiosk_release_pin_serial", "gauge", "Serial of the campus pin (grows on every pin change).",
         [({"name": n, "campus": c, "version": p["version"] or "frozen"}, p["serial"])
          for n, pins in sorted(state["pins"].items()) for c, p in sorted(pins.items())]),
        ("kiosk_release_published_bytes", "gauge", "Size of the newest published version.",
         [({"name": n, "version": v["version"]}, v["bytes"]) for n, v in sorted(m.get("published", {}).items())]),
        ("kiosk_release_stage_wan_bytes", "gauge", "Bytes the last staging took from the master, per campus.",
         [({"name": n, "campus": c}, b) for n, per in sorted(m.get("wan", {}).items()) for c, b in sorted(per.items())]),
        ("kiosk_release_kiosks", "gauge", "Kiosks per campus on the pin, drifting or silent (last status/rollout).",
         [({"name": n, "campus": c, "state": s}, k) for n, per in sorted(m.get("kiosks", {}).items())
          for c, states in sorted(per.items()) for s, k in sorted(states.items())]),
        ("kiosk_release_last_run_success", "gauge", "1 when the last run of the action succeeded.",
         [({"action": a}, ok) for a, ok in sorted(m.get("runs", {}).items())]),
    ]
    try:
        fleet_metrics.write_textfile(directory, TEXTFILE, fleet_metrics.render(families), field=f"{CONFIG_KEY}.textfile_dir")
    except (ValueError, OSError) as exc:
        log.warning("kiosk_release: cannot write %s in %s: %s", TEXTFILE, directory, exc)


def _done(action, ret, update=None):
    """Finish a runner: record metrics, set the exit code."""
    try:
        with _state() as state:
            if update:
                update(state["metrics"])
            state["metrics"].setdefault("runs", {})[action] = bool(ret.get("result"))
            _metrics(state)
    except (OSError, ValueError) as exc:  # metrics must not turn a result around
        log.warning("kiosk_release: metrics not recorded: %s", exc)
    return fleet_runner.finish(__context__, ret)


def _failed(action, exc):
    data = getattr(exc, "data", {})
    return _done(action, {"result": False, "error": str(exc), **data})


# --------------------------------------------------------------------------- calls to minions


SILENT_KIOSK = "silent"  # a kiosk that did not answer a push: not counted against a ring
SILENT = "Minion did not return"  # what salt.execute (3007) puts in place of a silent minion's return


def _execute(targets, fun, arg=(), kwarg=None, timeout=60):
    """``salt.execute`` on a list of minions; ``{minion: return}``, silent minions left out."""
    if not targets:
        return {}
    returns = __salt__["salt.execute"](sorted(targets), fun, arg=list(arg), kwarg=kwarg or {},
                                      tgt_type="list", timeout=timeout) or {}
    return {m: r for m, r in returns.items() if not (isinstance(r, str) and r.startswith(SILENT))}


def _ok(ret):
    return isinstance(ret, dict) and ret.get("result") is True


def _why(ret):
    if ret is None:
        return "did not answer"
    if isinstance(ret, dict):
        return ret.get("error") or ret.get("comment") or "failed"
    return str(ret)[:300]


# --------------------------------------------------------------------------- publish


def _source_root():
    root = _conf("source_root")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise ValueError(f"{CONFIG_KEY}:source_root: not set to an absolute directory in the master config "
                         f"(publish reads packages only from under it)")
    return root


def _import_url(source, work):
    """Download one file; no proxy from the environment, no redirect followed, errors without path or query."""
    import requests  # pylint: disable=import-outside-toplevel

    fleet_http.check_url(source, "source")
    host = fleet_http.host_of(source)
    path = source.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    file_name = fleet_release.check_file_name(path.rsplit("/", 1)[-1], "source (the URL's last path segment)")
    digest = fleet_release.Digest()
    try:
        with fleet_http.session() as sess, \
                sess.get(source, stream=True, timeout=(10, 120), allow_redirects=False) as resp:
            fleet_rollout.check_source_response(resp.status_code, resp.headers.get("Location"), host)
            with open(os.path.join(work, file_name), "wb") as out:
                for data in resp.iter_content(fleet_release.CHUNK):
                    out.write(data)
                    digest.update(data)
                out.flush()
                os.fsync(out.fileno())
    except requests.TooManyRedirects:  # the session allows none: raised on the first 3xx
        raise ValueError(f"source: {host} answered a redirect; redirects are not followed") from None
    except requests.RequestException as exc:
        raise ValueError(f"source: cannot be downloaded ({fleet_http.describe_error(exc, source)})") from None
    return {file_name: digest.result()}


def _import_source(source, work, md5):
    """Copy (hashing in the same pass) a file, the files of a directory, or an http(s) URL into ``work``."""
    if not isinstance(source, str) or not source:
        raise ValueError("source: give a file or directory under kiosk_release:source_root, or an http(s) URL")
    if source.startswith(("http://", "https://")):
        files = _import_url(source, work)
    else:
        # walked from the root with lstat + O_NOFOLLOW: no '..', no symlink, no hard link to another file
        _kind, fds = fleet_rollout.open_confined(source, _source_root())
        files = {}
        try:
            for entry in sorted(fds):
                # open() of an fd: the very file that was checked, closed when hashed
                files[entry] = fleet_release.hash_file(fds.pop(entry), copy_to=os.path.join(work, entry))
        finally:
            fleet_rollout.close_all(fds)
    if md5 is not None:
        if len(files) != 1:
            raise ValueError("md5: only for a single-file source")
        (entry,) = files.values()
        if str(md5).lower() != entry["md5"]:
            raise ValueError(f"md5: the package's md5 is {entry['md5']}, the pipeline said {md5} (corrupt upload?)")
    return files


INSTALL_FILE = "kiosk-install.json"  # in a package directory: its install command (the Jenkinsfile passes none)


def _install_from_package(work, files, install, success_codes):
    """
    ``install``/``success_codes`` as given, or, when ``install`` is not
    given, read from the package's own ``kiosk-install.json`` (the copy just
    made and hashed): an argument list, or ``{"install": [...],
    "success_codes": [...]}``.
    """
    if install is not None or INSTALL_FILE not in files:
        return fleet_release.check_install(install), fleet_release.check_success_codes(success_codes)
    field = f"source.{INSTALL_FILE}"
    if files[INSTALL_FILE]["size"] > 65536:
        raise ValueError(f"{field}: larger than 64 KiB")
    try:
        with open(os.path.join(work, INSTALL_FILE), encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        raise ValueError(f"{field}: not valid JSON (expected an argument list or {{\"install\": [...]}})") from None
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"install", "success_codes"})
        if unknown:
            raise ValueError(f"{field}: unknown key {', '.join(map(str, unknown))}")
        codes = doc.get("success_codes") if success_codes is None else success_codes
        return (fleet_release.check_install(doc.get("install"), f"{field}.install"),
                fleet_release.check_success_codes(codes, f"{field}.success_codes"))
    return fleet_release.check_install(doc, field), fleet_release.check_success_codes(success_codes)


def _signing_key():
    """The Ed25519 private key PEM publish signs with: required, read without following a symlink, mode 0600."""
    key_path = _conf("signing_key")
    field = getattr(fleet_release, "SIGNING_KEY_FIELD", f"{CONFIG_KEY}.signing_key")
    if not key_path:
        raise ValueError(f"{field}: not set in the master config; publish signs every manifest "
                         f"(make a key with salt-run kiosk_release.keygen path=/etc/salt/pki/master/kiosk_release.pem)")
    if not isinstance(key_path, str) or not os.path.isabs(key_path):
        raise ValueError(f"{field}: {key_path!r} is not an absolute path")
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {key_path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        fleet_rollout.check_key_mode(os.fstat(handle.fileno()).st_mode, field)
        pem = handle.read()
    fleet_rollout.public_key_of(pem, field)  # an unusable key fails here, before anything is copied
    return pem


def _sign(doc, key_pem):
    return fleet_release.sign_manifest(doc, key_pem)


def _store_release(store, doc, work):
    """Write the manifest and move ``work`` to ``<store>/<name>/<version>`` in one rename."""
    fleet_release.write_json_atomic(os.path.join(work, fleet_release.MANIFEST), doc)
    os.makedirs(os.path.join(store, doc["name"]), exist_ok=True)
    os.chmod(work, 0o755)
    os.rename(work, os.path.join(store, doc["name"], doc["version"]))


def _new_release(store, name, version, files_from, install, rollback_of=None, success_codes=None):
    key_pem = _signing_key()
    fleet_release.check_name(name)
    version = fleet_release.check_version(version)
    published = _published(store, name)
    if published and fleet_release.parse_version(version) <= fleet_release.parse_version(published[-1]):
        raise ValueError(
            f"version: {version} is not above the newest published {name} {published[-1]} "
            f"(versions only go up; to go back use kiosk_release.rollback)"
        )
    staging = os.path.join(store, fleet_release.STAGING)
    os.makedirs(staging, exist_ok=True)
    work = tempfile.mkdtemp(dir=staging, prefix=f"{name}-{version}-")
    try:
        files = files_from(work)
        if callable(install):  # publish: the command may come from the package itself
            install, success_codes = install(work, files)
        fleet_release.check_free_space(store, 0)
        doc = _sign(fleet_release.build_manifest(name, version, files, install, rollback_of=rollback_of,
                                                 success_codes=success_codes), key_pem)
        _store_release(store, doc, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return doc


def _fire(tag, data):
    __salt__["event.send"](tag, data)


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
        store = _store()
        inventory = _inventory() if campuses else None
        targets = _campuses(inventory, campuses) if campuses else []
        if install is not None:  # refused early, before anything is copied
            install = fleet_release.check_install(install)
        success_codes = fleet_release.check_success_codes(success_codes) if success_codes is not None else None
        doc = _new_release(store, name, version, lambda work: _import_source(source, work, md5),
                           lambda work, files: _install_from_package(work, files, install, success_codes))
        if targets:
            with _state() as state:
                for campus in targets:
                    pin_ = _set_pin(state, doc["name"], campus, doc["version"])
                    # the published event is only a hint: on_published stages what is recorded here
                    state.setdefault("to_stage", {}).setdefault(doc["name"], {})[campus] = pin_["serial"]
    except (ValueError, OSError, fleet_inventory.InventoryError) as exc:
        if isinstance(exc, OSError):
            exc = fleet_release.disk_error(exc, _conf("store") or "the release store", "store")
        return _failed("publish", exc)
    size = fleet_release.manifest_size(doc)
    _fire("kiosk/release/published", {"name": doc["name"], "version": doc["version"], "campuses": targets})

    def record(metrics):
        metrics.setdefault("published", {})[doc["name"]] = {"version": doc["version"], "bytes": size}

    return _done("publish", {
        "result": True, "name": doc["name"], "version": doc["version"], "bytes": size,
        "files": doc["files"], "signed": "signature" in doc, "campuses": targets,
    }, record)


def published(name=None):
    """
    The published versions of ``name`` (or of every release), oldest first.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.published kiosk-app
    """
    try:
        store = _store()
        if name is not None:
            fleet_release.check_name(name)
        names = [name] if name else sorted(n for n in os.listdir(store) if not n.startswith("."))
    except (ValueError, OSError) as exc:
        return fleet_runner.fail(__context__, exc)
    return fleet_runner.finish(__context__, {"result": True, "releases": {n: _published(store, n) for n in names}})


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
        path = _conf("signing_key") if path is None else path
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError(f"path: {path!r} is not an absolute path (or set {CONFIG_KEY}:signing_key)")
        if not isinstance(force, bool):
            raise ValueError(f"force: expected True or False, got {force!r}")
        if os.path.lexists(path) and not force:
            raise ValueError(f"path: {path} exists; refusing to replace a signing key (force=True replaces it)")
        private, public = fleet_rollout.new_key_pair()
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kiosk_release-key-")  # mode 0600 from the start
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(private)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (ValueError, OSError) as exc:
        if isinstance(exc, OSError):
            exc = ValueError(f"path: cannot write the key: {exc.strerror}")
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
        pem = _signing_key() if path is None else _read_key(path)
        return fleet_runner.finish(__context__, {"result": True, "public_key": fleet_rollout.public_key_of(pem)})
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)


def _read_key(path):
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"path: {path!r} is not an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValueError(f"path: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


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
        store = _store()
        fleet_release.check_name(name)
        version = fleet_release.check_version(version)
        hints = fleet_inventory.names(campuses, "campuses") if campuses not in (None, "") else None
        timeout = _timeout(timeout)
        held = version in _published(store, name)
        if held:
            _manifest(store, name, version)  # a readable, valid manifest (signed at publish)
        inventory = _inventory()  # before the claim: a claim is never lost to an inventory error
        with _state() as state:
            claimed = fleet_rollout.claim_event_staging(state, name, version, hints, held)
        if not claimed:
            # no metrics, no state write: a forged event must leave no trace but the log line
            log.info("kiosk_release: published event for %s %s: nothing of it is waiting to be staged", name, version)
            return fleet_runner.finish(__context__, {"result": True, "staged": False,
                                                     "comment": f"nothing of {name} {version} waits to be staged"})
        targets = [c for c in claimed if c in inventory["campuses"]]
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return fleet_runner.fail(__context__, exc)
    report = _stage_campuses(inventory, name, version, targets, timeout, claimed)
    failed = sorted(c for c, e in report.items() if not e["seed"])
    ret = {"result": not failed, "staged": True, "name": name, "version": version, "campuses": report}
    if failed:
        ret["error"] = f"no Pi of {', '.join(failed)} could stage {name} {version} (run kiosk_release.stage or rollout)"
    return _done("stage", ret, _record_wan(name, report))


# --------------------------------------------------------------------------- staging on the Pis


def _stage_campuses(inventory, name, version, campuses, timeout, serials):
    """
    Stage on every Pi of ``campuses``: in each round, one job to one not yet
    tried Pi of every campus still without a seed (the WAN copy); then one
    job to all remaining Pis with ``source=campus`` (LAN copy from the seed);
    Pis that cannot copy from a campus Pi fall back to the master.
    """
    master_source = _master_source()
    report = {c: {"seed": None, "pis": {}, "wan_bytes": 0} for c in campuses}
    untried = {c: fleet_inventory.pis_of(inventory, c) for c in campuses}
    pins = _signed_pins(name, version, serials, report) if serials else {}

    def call(pis_by_campus, source, hop):
        jobs = {}  # one job per distinct kwargs (a signed pin names its campus)
        for campus, pis in pis_by_campus.items():
            key = campus if campus in pins else None
            jobs.setdefault(key, []).extend((campus, p) for p in pis)
        for key, members in jobs.items():
            kwarg = {"source": source, "hop": hop}
            if key is not None:
                kwarg["pin"] = pins[key]
            returns = _execute([p for _, p in members], "kiosk_pkg.stage", [name, version], kwarg, timeout)
            for campus, pi in members:
                ret = returns.get(pi)
                report[campus]["pis"][pi] = {"staged": _ok(ret), "source": hop,
                                             **({} if _ok(ret) else {"error": _why(ret)})}
                if _ok(ret) and hop == "master->pi":
                    report[campus]["wan_bytes"] += ret.get("fetched", 0)

    while True:
        wave = {c: [untried[c].pop(0)] for c in campuses if report[c]["seed"] is None and untried[c]}
        if not wave:
            break
        call(wave, master_source, "master->pi")
        for campus, (pi,) in wave.items():
            if report[campus]["pis"][pi]["staged"]:
                report[campus]["seed"] = pi
    # every Pi still without it (never tried, or failed as a seed) copies from the campus over the LAN
    peers = {c: [p for p in fleet_inventory.pis_of(inventory, c) if not report[c]["pis"].get(p, {}).get("staged")]
             for c in campuses if report[c]["seed"]}
    peers = {c: pis for c, pis in peers.items() if pis}
    call(peers, "campus", "pi->pi")
    retry = {c: [p for p in pis if not report[c]["pis"][p]["staged"]] for c, pis in peers.items()}
    call({c: p for c, p in retry.items() if p}, master_source, "master->pi")
    for entry in report.values():
        entry["staged_on"] = sorted(p for p, r in entry["pis"].items() if r["staged"])
        entry["complete"] = len(entry["staged_on"]) == len(entry["pis"])
    return report


def _signed_pins(name, version, serials, report):
    """
    ``{campus: signed pin}`` for the campuses whose pin in the state still
    has the serial the caller decided on and names ``version``; the Pis get
    it with ``kiosk_pkg.stage`` and store it only after verifying it. A pin
    that moved on meanwhile, or cannot be signed, is left out (the Pis then
    stage without pinning; ``pin_error`` says why).
    """
    state = _read_state()
    pins = {}
    for campus, serial in serials.items():
        pin = _pin_of(state, name, campus)
        if not pin or pin["serial"] != serial or pin["version"] != version:
            continue
        try:
            pins[campus] = _pin_doc(name, campus, pin)
        except ValueError as exc:
            if campus in report:
                report[campus]["pin_error"] = str(exc)
    return pins


def _record_wan(name, report):
    def update(metrics):
        per = metrics.setdefault("wan", {}).setdefault(name, {})
        for campus, entry in report.items():
            per[campus] = entry["wan_bytes"]

    return update


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
        store = _store()
        _manifest(store, name, fleet_release.check_version(version))
        version = str(version)
        inventory = _inventory()
        targets = _campuses(inventory, campuses)
        timeout = _timeout(timeout)
        state = _read_state()
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return _failed("stage", exc)
    serials = {c: p["serial"] for c in targets if (p := _pin_of(state, name, c)) and p["version"] == version}
    report = _stage_campuses(inventory, name, version, targets, timeout, serials)
    failed = sorted(c for c, e in report.items() if not e["seed"])
    ret = {"result": not failed, "name": name, "version": version, "campuses": report}
    if failed:
        ret["error"] = f"no Pi of {', '.join(failed)} could stage {name} {version}"
    return _done("stage", ret, _record_wan(name, report))


# --------------------------------------------------------------------------- pins, pushes, rollouts


def _pin_pis(inventory, name, campus, pin):
    """Copy the campus pin into the index of every Pi of the campus; ``{pi: ok or error}``."""
    pis = fleet_inventory.pis_of(inventory, campus)
    try:
        doc = _pin_doc(name, campus, pin)
    except ValueError as exc:
        return dict.fromkeys(pis, str(exc))
    # the signed pin, not a bare serial: the Pis verify it, and kiosks verify it again
    returns = _execute(pis, "kiosk_pkg.pin", [name], {"pin": doc})
    return {pi: True if _ok(returns.get(pi)) else _why(returns.get(pi)) for pi in pis}


def _push(inventory, name, version, campuses, timeout):
    """Run check_update on the kiosks of ``campuses``; ``{campus: {kiosk: True | error}}``."""
    kiosks = {k: c for c in campuses for k in inventory["campuses"][c]["kiosks"]}
    returns = _execute(list(kiosks), "kiosk_pkg.check_update", [name], {}, timeout)
    result = {c: {} for c in campuses}
    for kiosk, campus in sorted(kiosks.items()):
        if kiosk not in returns:  # off (night, power cut): it follows the pin at its next boot
            result[campus][kiosk] = SILENT_KIOSK
            continue
        ret = returns.get(kiosk)
        one = ((ret or {}).get("releases") or {}).get(name) if isinstance(ret, dict) else None
        on_version = isinstance(one, dict) and one.get("result") and (one.get("version") or one.get("installed")) == version
        result[campus][kiosk] = True if on_version else (_why(one) if one else _why(ret))
    return result


def _push_campus(inventory, name, version, campus, timeout):
    """
    Push the campus pin if it is due: not pushed yet, not being pushed by
    another run, and live on a Pi of the campus (``kiosk_pkg.repo_status``:
    pinned with this serial and staged). The campus is marked pushed only
    after the push succeeded; a failed push is left due, for the next event,
    ``rollout`` or ``status``. Returns ``(kiosks, None)`` or ``(None, why not)``.
    """
    with _state() as state:  # only read here: no write when nothing is due
        serial, skip = fleet_rollout.push_decision(state, name, campus, version, time.time())
    if skip:
        return None, skip
    pis = fleet_inventory.pis_of(inventory, campus)
    live = fleet_rollout.pin_live(_execute(pis, "kiosk_pkg.repo_status", [name], {}, 60), version, serial)
    if not live:
        return None, f"{campus}: no Pi has the pin {name} {version} (serial {serial}) live yet"
    with _state() as state:  # decide again under the lock, claim, act after releasing it
        again, skip = fleet_rollout.push_decision(state, name, campus, version, time.time())
        if skip or again != serial:
            return None, skip or f"{campus}: the pin moved while its Pis were asked"
        fleet_rollout.claim_push(state, name, campus, serial, int(time.time()) + timeout + 60)
    ok = False
    try:
        kiosks = _push(inventory, name, version, [campus], timeout)[campus]
        ok = fleet_rollout.push_succeeded(kiosks, SILENT_KIOSK)
    finally:
        with _state() as state:
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
        fleet_release.check_name(name)
        version = fleet_release.check_version(version)
        inventory = _inventory()
        if pi is not None:
            campus = fleet_rollout.campus_of_pi(inventory, pi)
        if not campus or len(fleet_inventory.names(campus, "campus")) != 1:
            raise ValueError("campus: name one campus to push to (or pi=<a Pi of it>)")
        (campus,) = _campuses(inventory, campus, "campus")
        timeout = _timeout(timeout)
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return fleet_runner.fail(__context__, exc)
    kiosks, skip = _push_campus(inventory, name, version, campus, timeout)
    if skip:  # nothing done: no metrics either (the state file stays as it was)
        return fleet_runner.finish(__context__, {"result": True, "pushed": False, "comment": skip})
    bad = {k: v for k, v in kiosks.items() if v is not True and v != SILENT_KIOSK}
    ret = {"result": not bad, "pushed": True, "name": name, "version": version, "campus": campus, "kiosks": kiosks}
    if bad:
        ret["error"] = f"{len(bad)} of {len(kiosks)} kiosks of {campus} are not on {version} (the push stays due)"
    return _done("push", ret)


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
        store = _store()
        version = fleet_release.check_version(version)
        _manifest(store, name, version)
        inventory = _inventory()
        targets = _campuses(inventory, campuses)
        ring_plan = fleet_release.plan_rings(targets, canary=canary, rings=rings)
        threshold = fleet_release.check_share(_conf("max_error_share", 0.0) if max_error_share is None else max_error_share)
        timeout = _timeout(timeout)
        _signing_key()  # pins are signed: fail here, before any ring, without a usable key
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return _failed("rollout", exc)
    done, ret = [], {"result": True, "name": name, "version": version, "rings": []}
    for ring in ring_plan:
        entry = _roll_ring(inventory, name, version, ring, timeout, threshold)
        ret["rings"].append(entry)
        done.extend(ring)
        if not entry["go_on"]:
            ret["result"] = False
            ret["halted"] = True
            ret["not_started"] = [c for c in targets if c not in done]
            ret["error"] = entry["error"]
            break
    return _done("rollout", ret, _record_kiosks(name, {c: k for r in ret["rings"] for c, k in r["kiosks"].items()}))


def _roll_ring(inventory, name, version, ring, timeout, threshold):
    with _state() as state:
        pins = {c: _set_pin(state, name, c, version) for c in ring}
        until = int(time.time()) + 2 * timeout + 120
        for campus in ring:  # the push below is this rollout's: reactors skip it while it runs
            fleet_rollout.claim_push(state, name, campus, pins[campus]["serial"], until)
    ok = {}
    try:
        staged = _stage_campuses(inventory, name, version, ring, timeout, {c: p["serial"] for c, p in pins.items()})
        # staging with the serial pinned every Pi that holds the version (staged_on)
        pushed = [c for c in ring if staged[c]["seed"]]
        kiosks = _push(inventory, name, version, pushed, timeout)
        kiosks = _confirm(inventory, name, version, kiosks)
        ok = {c: fleet_rollout.push_succeeded(kiosks[c], SILENT_KIOSK) for c in pushed}
    finally:
        with _state() as state:  # only a campus whose push succeeded is marked pushed
            for campus in ring:
                fleet_rollout.end_push(state, name, campus, pins[campus]["serial"], ok.get(campus, False))
    for campus in ring:
        if not staged[campus]["seed"]:
            kiosks[campus] = dict.fromkeys(inventory["campuses"][campus]["kiosks"],
                                           f"{campus}: no Pi staged {version}")
    flat = {k: v is True for per in kiosks.values() for k, v in per.items() if v != SILENT_KIOSK}
    go_on, share = fleet_release.ring_verdict(flat, threshold)
    entry = {"campuses": ring, "staging": staged, "kiosks": kiosks,
             "error_share": share, "go_on": go_on}
    if not go_on:
        entry["error"] = (f"halted after ring {', '.join(ring)}: {share:.0%} of its kiosks are not on {version} "
                          f"(limit {threshold:.0%})")
    return entry


def _confirm(inventory, name, version, kiosks_by_campus):
    """
    A kiosk's return alone does not count (another minion behind the same
    syndic can forge it): with ``kiosk_release:confirm_downloads`` (default
    on), a kiosk counts as on ``version`` only when a Pi of its campus also
    served it that version's files (``kiosk_pkg.served``, read from the Pi's
    nginx access log, by the kiosk's inventory address).
    """
    if not _conf("confirm_downloads", True):
        return kiosks_by_campus
    confirmed = {}
    for campus, kiosks in kiosks_by_campus.items():
        spec = inventory["campuses"][campus]
        pis = fleet_inventory.pis_of(inventory, campus)
        served = fleet_rollout.served_by_ip(_execute(pis, "kiosk_pkg.served", [name, version], {}, 60), name, version)
        ips = {k: str(spec["kiosks"][k].get("ip") or "") for k in kiosks}
        confirmed[campus] = fleet_rollout.confirm_ring(kiosks, ips, served, SILENT_KIOSK)
    return confirmed


def _record_kiosks(name, kiosks_by_campus, silent=None):
    def update(metrics):
        per = metrics.setdefault("kiosks", {}).setdefault(name, {})
        for campus, kiosks in kiosks_by_campus.items():
            on = sum(1 for v in kiosks.values() if v is True)
            off = sum(1 for v in kiosks.values() if v == SILENT_KIOSK)
            quiet = len((silent or {}).get(campus, [])) + off
            per[campus] = {"on_pin": on, "drift": len(kiosks) - on - off, "silent": quiet}

    return update


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
        store = _store()
        version = fleet_release.check_version(version)
        _manifest(store, name, version)
        inventory = _inventory()
        if not campus:
            raise ValueError("campus: name the campus (campus=riverside)")
        targets = _campuses(inventory, campus, "campus")
        timeout = _timeout(timeout)
        with _state() as state:
            pins = {c: _set_pin(state, name, c, version) for c in targets}
            for campus in targets:  # no push: the staged reactor must leave these kiosks alone
                state["pushed"].setdefault(name, {})[campus] = pins[campus]["serial"]
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return _failed("pin", exc)
    staged = _stage_campuses(inventory, name, version, targets, timeout, {c: p["serial"] for c, p in pins.items()})
    failed = sorted(c for c, e in staged.items() if not e["seed"])
    ret = {"result": not failed, "name": name, "version": version,
           "pins": {c: {k: v for k, v in p.items() if k != "history"} for c, p in pins.items()}, "staging": staged}
    if failed:
        ret["error"] = f"pinned, but no Pi of {', '.join(failed)} could stage {version}"
    return _done("pin", ret)


def unpin(name=None, campus=None):
    """
    Freeze ``campus`` for release ``name``: kiosks keep the version they run
    and stop following new pins until the campus is pinned again.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_release.unpin kiosk-app campus=riverside
    """
    try:
        fleet_release.check_name(name)
        inventory = _inventory()
        if not campus:
            raise ValueError("campus: name the campus (campus=riverside)")
        targets = _campuses(inventory, campus, "campus")
        with _state() as state:
            pins = {c: _set_pin(state, name, c, None) for c in targets}
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return _failed("unpin", exc)
    pis = {c: _pin_pis(inventory, name, c, pins[c]) for c in targets}
    bad = {c: {p: r for p, r in per.items() if r is not True} for c, per in pis.items()}
    bad = {c: per for c, per in bad.items() if per}
    ret = {"result": not bad, "name": name, "frozen": targets, "pis": pis}
    if bad:
        ret["error"] = f"the pin could not be cleared on {', '.join(sorted(p for per in bad.values() for p in per))}"
    return _done("unpin", ret)


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
        store = _store()
        fleet_release.check_name(name)
        inventory = _inventory()
        if not campus or len(fleet_inventory.names(campus, "campus")) != 1:
            raise ValueError("campus: name one campus (campus=riverside)")
        (campus,) = _campuses(inventory, campus, "campus")
        pin_ = _pin_of(_read_state(), name, campus)
        if not pin_ or pin_["version"] is None:
            raise ValueError(f"campus: {campus} is not pinned to a {name} version (frozen or never rolled out)")
        current = pin_["version"]
        previous = _before(store, name, current, pin_.get("history", []))
        source = _manifest(store, name, previous)
        version = fleet_release.next_version(_published(store, name))

        def copy(work):
            for file_name in source["files"]:
                src = os.path.join(store, name, previous, file_name)
                try:
                    os.link(src, os.path.join(work, file_name))  # same content, no second copy on disk
                except OSError:
                    shutil.copyfile(src, os.path.join(work, file_name))
                fleet_release.compare(source["files"][file_name], fleet_release.hash_file(
                    os.path.join(work, file_name)), f"{name} {previous} {file_name}")
            return source["files"]

        doc = _new_release(store, name, version, copy, source["install"], rollback_of=previous,
                           success_codes=source.get("success_codes"))
    except (ValueError, OSError, fleet_inventory.InventoryError) as exc:
        return _failed("rollback", exc)
    _fire("kiosk/release/published", {"name": name, "version": version, "campuses": [], "rollback_of": previous})
    ret = rollout(name=name, version=doc["version"], campuses=campus, timeout=timeout)
    ret.update({"rolled_back": {"campus": campus, "from": current, "content_of": previous, "as": version}})
    return ret


def _before(store, name, current, history):
    """
    The version whose content a campus ran before ``current``: the newest
    history entry with other content; if ``current`` is itself a rollback to
    X, only versions up to X count (a second rollback goes further back,
    never to the release it rolled back from).
    """
    now = _manifest(store, name, current)
    limit = fleet_release.parse_version(now["rollback_of"]) if now.get("rollback_of") else None
    for version in reversed(history):
        if version is None or (limit is not None and fleet_release.parse_version(version) > limit):
            continue
        try:
            if _manifest(store, name, version)["files"] != now["files"]:
                return version
        except ValueError:  # no longer in the store
            continue
    raise ValueError(f"campus: no earlier {name} content to go back to from {current} (history: {history})")


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
        fleet_release.check_name(name)
        inventory = _inventory()
        targets = _campuses(inventory, campuses)
        timeout = fleet_runner.number(timeout, "timeout", 1, 3600)
        push_timeout = _timeout(None)
        state = _read_state()
    except (ValueError, fleet_inventory.InventoryError) as exc:
        return _failed("status", exc)
    pis = [p for c in targets for p in fleet_inventory.pis_of(inventory, c)]
    kiosks = [k for c in targets for k in inventory["campuses"][c]["kiosks"]]
    pi_returns = _execute(pis, "kiosk_pkg.repo_status", [name], {}, timeout)
    kiosk_returns = _execute(kiosks, "kiosk_pkg.installed", [name], {}, timeout)
    ret = {"result": True, "name": name, "campuses": {}}
    problems, on_pin, silent = [], {}, {}
    for campus in targets:
        pin_ = _pin_of(state, name, campus)
        want = pin_["version"] if pin_ else None
        entry = {"pin": want, "serial": pin_["serial"] if pin_ else None, "pis": {}, "kiosks": {}}
        for pi in fleet_inventory.pis_of(inventory, campus):
            r = pi_returns.get(pi)
            entry["pis"][pi] = ({"staged": r["staged"], "pin": (r.get("pin") or {}).get("version")}
                                if _ok(r) else {"error": _why(r)})
        installed = {}
        for kiosk in sorted(inventory["campuses"][campus]["kiosks"]):
            if kiosk not in kiosk_returns:
                entry["kiosks"][kiosk] = {"silent": True}
                silent.setdefault(campus, []).append(kiosk)
                continue
            rec = kiosk_returns[kiosk] if isinstance(kiosk_returns[kiosk], dict) else {}
            installed[kiosk] = rec.get("version")
            entry["kiosks"][kiosk] = {"installed": rec.get("version"), "previous": rec.get("previous")}
        entry["drift"] = fleet_release.drift(want, installed)
        entry["versions_running"] = sorted({v for v in installed.values() if v}, key=fleet_release.parse_version)
        entry["pis_without_pin"] = sorted(p for p, r in entry["pis"].items()
                                          if want and want not in r.get("staged", []))
        if entry["drift"]:
            problems.append(f"{campus}: {len(entry['drift'])} kiosk(s) not on {want}")
        if len(entry["versions_running"]) > 1:
            problems.append(f"{campus}: kiosks run {', '.join(entry['versions_running'])}")
        if entry["pis_without_pin"]:
            problems.append(f"{campus}: {', '.join(entry['pis_without_pin'])} lack {want}")
        if want is not None:  # an unpinned campus has no kiosk on (or off) its pin
            on_pin[campus] = {k: k not in entry["drift"] for k in installed}
        ret["campuses"][campus] = entry
    # a push that failed (or never ran: the staged event was lost) is retried here
    for campus in targets:
        want = ret["campuses"][campus]["pin"]
        if want is not None:
            kiosks, _skip = _push_campus(inventory, name, want, campus, push_timeout)
            if kiosks is not None:
                ret["campuses"][campus]["push_retried"] = kiosks
    if problems:
        ret.update(result=False, error="; ".join(problems))
    return _done("status", ret, _record_kiosks(name, on_pin, silent))
