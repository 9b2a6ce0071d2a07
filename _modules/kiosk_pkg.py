"""
Kiosk release packages on the Pis and on the kiosks: the Salt glue. It
reads the pillar and the minion config, calls the Pi's repository
(``_utils/fleet_repo.py``) or the kiosk's client (``_utils/fleet_client.py``),
and fires the events; docs/releases.md is the full contract.

On a Pi (its repository, served read-only by nginx, see
``states/kiosk_fleet/release_repo.sls``): :func:`stage` fetches a release
from the master (``http(s)://`` export, resumable, or ``salt://`` through
``cp.get_file``) or another Pi of the campus, checks the manifest's
signature and every file's size, md5 and sha256, and only then renames the
version into the repository and updates its index; :func:`pin` stores the
master's signed campus pin; :func:`repo_status`, :func:`served`, :func:`prune`.
A bad signature or copy leaves the live versions as they were and fires
``kiosk/release/alert``; success fires ``kiosk/release/staged``.

On a kiosk: :func:`check_update` follows the campus pin signed for its
campus from its campus's Pis (home Pi first, the next when one is down),
downloads what is missing (HTTP Range resume), verifies, runs the
manifest's install command (an argument list) and records the version in
``<dir>/<name>/installed.json`` (the ``kiosk_release`` grain); the previous
version's package stays on disk. :func:`installed` reads that record.

Nothing is staged, pinned or installed without the master's public key in
**pillar** ``kiosk_release:verify_key`` (one PEM or a list, for rotation;
never read from the minion config: a kiosk's own files are not trusted).

Minion config (or pillar), key ``kiosk_release``: ``repo_dir`` (Pi, default
``/srv/kiosk-releases``), ``access_log`` (Pi), ``dir`` (kiosk, default
``<cachedir>/kiosk_release``), ``releases`` (what check_update looks at by
default), ``install_timeout`` (1800), ``bind_source``.
"""

import logging
import os
import re

from salt.exceptions import SaltInvocationError

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_client,
        fleet_fetch,
        fleet_inventory,
        fleet_release,
        fleet_repo,
        fleet_runner,
        fleet_sign,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_client
    import fleet_fetch
    import fleet_inventory
    import fleet_release
    import fleet_repo
    import fleet_runner
    import fleet_sign

try:
    import requests  # noqa: F401 - fleet_fetch downloads with it

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_pkg"

DEFAULT_REPO_DIR = "/srv/kiosk-releases"
HOP = re.compile(r"^[a-z]+->[a-z]+\Z")
ERRORS = (fleet_release.ReleaseError, fleet_inventory.InventoryError)


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
    _event("kiosk/release/alert", {"hop": hop, "name": name, "version": version, "error": str(error),
                                   "source": source, "campus": _campus_or_none()})


def _alerter(hop, name, version):
    """``bad_copy(exc, source)`` for the utils: every bad copy is an alert naming its source."""
    return lambda exc, source: _alert(hop, name, version, exc, source)


def _checked(check, *args):
    try:
        return check(*args)
    except ValueError as exc:  # the pack's errors: FleetError is a ValueError
        raise SaltInvocationError(str(exc)) from exc


def _args(name, version=None):
    _checked(fleet_release.check_name, name)
    return _checked(fleet_release.check_version, version) if version is not None else None


def _abs_path(key, value):
    if not isinstance(value, str) or not os.path.isabs(value):
        raise SaltInvocationError(f"kiosk_release:{key}: {value!r} is not an absolute path")
    return value


def _verify_keys(hop=None, name=None, version=None):
    """The master's public keys, from pillar only; SignatureError (refuse everything, with an alert) without."""
    conf = __pillar__.get("kiosk_release") or {}
    try:
        return fleet_sign.verify_keys(conf.get("verify_key") if isinstance(conf, dict) else None)
    except fleet_release.SignatureError as exc:
        if hop:
            _alert(hop, name, version, exc)
        raise


def _inventory():
    return fleet_inventory.from_pillar(__pillar__)


def _my_campus():
    """This minion's campus from the pillar inventory (never from a grain the minion reports about itself)."""
    return fleet_inventory.campus_of(_inventory(), __opts__["id"])


def _campus_or_none():
    """The pillar campus for event data (informational: the receiving runners look the sender up themselves)."""
    try:
        return _my_campus()
    except fleet_inventory.InventoryError:
        return None


def _signed_pin(pin, keys, name, hop, version=None):
    """The master's signed pin checked for this Pi's campus (and version); an alert names the hop when not."""
    try:
        pin = fleet_sign.verify_pin(pin, keys, name, _my_campus())
        if version is not None and pin.get("version") != version:
            raise fleet_release.SignatureError(
                f"pin.version: {pin.get('version')!r} is not the version being staged ({version})")
    except fleet_release.SignatureError as exc:
        _alert(hop, name, version, exc)
        raise
    return pin


def _get_file(url, path):
    return bool(__salt__["cp.get_file"](url, path, makedirs=True))


# --------------------------------------------------------------------------- Pi: the campus repository


def stage(name, version, source="salt://kiosk_releases/", pin=None, retries=3, hop="master->pi"):
    """
    Stage release ``name`` ``version`` into this Pi's repository from
    ``source``: the master's export (``http(s)://host/kiosk-releases/`` or
    ``salt://kiosk_releases/``), another Pi's repository, or ``campus`` (the
    other Pis of this Pi's campus). The manifest must be signed by a key in
    pillar ``kiosk_release:verify_key``, and every file is checked (size,
    md5, sha256) before the version goes live; the index is updated last.
    With ``pin`` (the master's signed campus pin for this version), the
    campus pin moves to this version too; a pin not signed for this Pi's
    campus refuses the whole call. ``hop`` labels alerts (``master->pi``,
    or ``pi->pi`` when ``source`` is another Pi).

    Fires ``kiosk/release/staged`` on success, ``kiosk/release/alert`` on a
    refused signature or pin, a mismatch or a failed download. Exit code 1
    on failure.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_pkg.stage kiosk-app 1.4.0
        salt pi-riverside-2 kiosk_pkg.stage kiosk-app 1.4.0 source=http://10.1.1.2/kiosk-releases/
    """
    version = _args(name, version)
    repo = _abs_path("repo_dir", _conf("repo_dir", DEFAULT_REPO_DIR))
    _checked(fleet_repo.check_source, source)
    if not isinstance(hop, str) or not HOP.match(hop):
        raise SaltInvocationError(f"hop: {hop!r} is not a hop label like master->pi")
    retries = _checked(fleet_runner.number, retries, "retries", 0, 100)
    ret = {"result": True, "name": name, "version": version, "pi": __opts__["id"], "source": source,
           "changed": False, "fetched": 0}
    try:
        keys = _verify_keys(hop, name, version)
        if pin is not None:
            pin = _signed_pin(pin, keys, name, hop, version)
        stage_from = fleet_repo.sources(source, *((_inventory(), __opts__["id"]) if source == "campus" else ()))
        with fleet_fetch.session() as session:
            out = fleet_repo.stage(repo, name, version, stage_from, keys, session, pin, retries, _get_file,
                                   _alerter(hop, name, version))
    except ERRORS as exc:
        return _fail(ret, exc)
    except OSError as exc:
        return _fail(ret, fleet_fetch.disk_error(exc, repo))
    index = out.pop("index")
    ret.update(out)
    if ret["changed"]:
        _event("kiosk/release/staged", {"name": name, "version": version, "campus": _campus_or_none(),
                                         "fetched": ret["fetched"], "pinned": bool(ret.get("pinned"))})
    ret["staged"] = fleet_release.sort_versions(index["versions"])
    ret["pin"] = index["pin"]
    return ret


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
    repo = _abs_path("repo_dir", _conf("repo_dir", DEFAULT_REPO_DIR))
    ret = {"result": True, "name": name, "pi": __opts__["id"]}
    try:
        pin = _signed_pin(pin, _verify_keys("master->pi", name, None), name, "master->pi")
        ret["version"] = pin["version"]
        ret["pin"] = fleet_repo.store_pin(repo, name, pin)["pin"]
    except (*ERRORS, OSError) as exc:
        return _fail(ret, exc)
    return ret


def repo_status(name):
    """
    What this Pi's repository holds for release ``name``: staged versions,
    the campus pin, and whether that pin verifies for this Pi's campus with
    its keys (``pin_verified``).

    CLI Example:

    .. code-block:: bash

        salt -G kiosk_fleet_role:pi kiosk_pkg.repo_status kiosk-app
    """
    _args(name)
    repo = _abs_path("repo_dir", _conf("repo_dir", DEFAULT_REPO_DIR))
    ret = {"result": True, "name": name, "pi": __opts__["id"]}
    try:  # what a kiosk would make of the pin (a pin left from before signing is not followed)
        ret.update(fleet_repo.status(repo, name, lambda p: fleet_sign.verify_pin(p, _verify_keys(), name,
                                                                                 _my_campus())))
    except fleet_release.ReleaseError as exc:
        return _fail(ret, exc)
    return ret


def served(name, version):
    """
    Which clients this Pi's nginx served files of release ``name`` ``version``
    to, from its access log (minion config ``kiosk_release:access_log``, the
    JSON lines of the shipped ``kiosk_release_repo`` log format):
    ``{"clients": {address: [HTTP statuses]}}``. GETs of the version's files
    count (not the manifest, not index.json). Only the current log file is
    read (rotated files are not).

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
        ret["clients"] = fleet_repo.served(path, name, version)
    except fleet_release.ReleaseError as exc:
        return _fail(ret, exc)
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
    keep = _checked(fleet_repo.check_keep, keep)
    repo = _abs_path("repo_dir", _conf("repo_dir", DEFAULT_REPO_DIR))
    try:
        removed, kept = fleet_repo.prune(repo, name, keep)
    except (fleet_release.ReleaseError, OSError) as exc:
        return _fail({"name": name, "pi": __opts__["id"]}, exc)
    return {"result": True, "name": name, "removed": removed, "kept": kept}


# --------------------------------------------------------------------------- kiosk: follow the campus pin


def _kiosk_dir():
    return _abs_path("dir", _conf("dir") or os.path.join(__opts__["cachedir"], "kiosk_release"))


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
        return fleet_client.current(_kiosk_dir(), name) or None
    return fleet_client.read_installed(_kiosk_dir())


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
    inventory = _checked(_inventory)
    kiosk = __opts__["id"]
    campus = _checked(fleet_inventory.campus_of, inventory, kiosk)
    home = _checked(fleet_inventory.home_pi, inventory["campuses"][campus], kiosk)
    repos = _checked(fleet_release.kiosk_repo_urls, inventory, campus, kiosk, home)
    root = _kiosk_dir()
    os.makedirs(root, exist_ok=True)
    result = {"result": True, "kiosk": kiosk, "campus": campus, "releases": {}}
    try:
        keys = _verify_keys()
    except fleet_release.SignatureError as exc:
        for each in names:
            _alert("pi->kiosk", each, None, exc)
            result["releases"][each] = {"result": False, "changed": False, "error": str(exc)}
        result["result"] = False
        __context__["retcode"] = 1
        return result
    # bind_source: the kiosk's inventory IP as the local address (hosts with many addresses, like the
    # test topology on loopback, where the Pis' logs could not tell kiosks apart otherwise)
    source = inventory["campuses"][campus]["kiosks"][kiosk]["ip"] if _conf("bind_source") is True else None
    with fleet_fetch.session(source) as session:
        for each in names:
            result["releases"][each] = report = _update_one(session, repos, each, root, force, test, keys, campus)
            if report["result"] is False:
                result["result"] = False
    if not result["result"]:
        __context__["retcode"] = 1
    return result


def _update_one(session, repos, name, root, force, test, keys, campus):
    report = {"result": True, "changed": False}
    seen = fleet_client.read_indexes(session, repos, name, keys, campus)
    for base, exc in seen["errors"].items():
        _alert("pi->kiosk", name, None, exc, base)
    report["repos_down"] = seen["down"]
    if seen["refused"]:
        report["refused"] = seen["refused"]
    pin_ = fleet_release.choose_pin(seen["indexes"])
    current = fleet_client.current(root, name)
    report["installed"] = current.get("version")
    if pin_ is not None:
        report["pin"] = pin_["version"]
    action, what = fleet_client.decide(pin_, current, seen, len(repos), force)
    if action == "fail":
        return _fail(report, what)
    if action == "skip":
        report["comment"] = what
        return report
    if test:
        report.update(result=None, comment=f"would install {what} (installed: {current.get('version')})")
        return report
    try:
        with fleet_fetch.lock(root, f"{name}.install"):  # one install per kiosk and version, whichever job first
            if fleet_client.current(root, name).get("version") == what and not force:
                report["comment"] = f"already on {what} (installed by another job)"
                return report
            return _fetch_and_install(session, repos, seen["indexes"], pin_, name, what, root, report, keys)
    except fleet_release.ReleaseError as exc:
        return _fail(report, exc)


def _fetch_and_install(session, repos, indexes, pin_, name, version, root, report, keys):
    alert = _alerter("pi->kiosk", name, version)
    package = os.path.join(root, name, version)
    doc = fleet_client.kept_copy(root, name, version, keys, alert)
    if doc is not None:
        report["source"] = "local"
    else:
        try:
            got = fleet_fetch.fetch_release(session, fleet_client.candidates(repos, indexes, pin_, version), name,
                                            version, root, keys, bad_copy=alert)
            package = fleet_fetch.materialise(root, got["doc"], got["raw"], got["work"])
        except (fleet_release.ReleaseError, OSError) as exc:
            return _fail(report, exc)
        doc = got["doc"]
        report.update(source=got["source"], fetched=got["fetched"], resumed=got["resumed"])
    outcome = _install(doc, package)
    if outcome["retcode"] not in doc.get("success_codes", [0]):
        error = f"install command exited {outcome['retcode']}: {(outcome.get('stderr') or '')[-500:]}"
        _alert("install", name, version, error)
        return _fail(report, error)
    try:
        report.update(changed=True, version=version, record=fleet_client.record(root, name, version, pin_))
    except OSError as exc:
        return _fail(report, f"installed {version}, but the record could not be written: {exc}")
    try:
        __salt__["saltutil.refresh_grains"](refresh_pillar=False)
    except Exception as exc:  # pylint: disable=broad-except - the install stands; the grain follows later
        log.warning("kiosk_pkg: grains not refreshed after installing %s %s: %s", name, version, exc)
    fleet_client.keep_two(root, name, version, report["record"]["previous"])
    _event("kiosk/release/installed", {"name": name, "version": version, "campus": _campus_or_none()})
    return report


def _install(doc, package_dir):
    argv = fleet_release.install_argv(doc, package_dir)
    if not argv:
        return {"retcode": 0, "stdout": "", "stderr": ""}
    return __salt__["cmd.run_all"](argv, cwd=package_dir, python_shell=False,
                                   timeout=int(_conf("install_timeout", 1800)), output_loglevel="debug")
