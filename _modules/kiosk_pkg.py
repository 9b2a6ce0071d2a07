"""
Kiosk release packages, the Salt glue: read the pillar and the minion
config, call the Pi's repository (``_utils/fleet_repo.py``: :func:`stage`,
:func:`pin`, :func:`repo_status`, :func:`served`, :func:`prune`) or the
kiosk's client (``_utils/fleet_client.py``: :func:`check_update`,
:func:`installed`), fire ``kiosk/release/*`` events. docs/releases.md is the
contract: signatures checked with pillar ``kiosk_release:verify_key`` only
(nothing is staged, pinned or installed without it), every file verified
before it goes live, every refusal an alert naming the hop and source.

Minion config (or pillar) ``kiosk_release``: ``repo_dir`` (Pi, default
``/srv/kiosk-releases``), ``access_log`` (Pi), ``dir`` (kiosk, default
``<cachedir>/kiosk_release``), ``releases``, ``install_timeout`` (1800),
``bind_source``, ``lan_rate`` (kiosk: the download cap, ``fleet_rate`` units,
e.g. ``20mbit``; none: no cap).
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
        fleet_rate,
        fleet_release,
        fleet_repo,
        fleet_runner,
        fleet_sign,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_client
    import fleet_fetch
    import fleet_inventory
    import fleet_rate
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


def _repo_dir():
    return _abs_path("repo_dir", _conf("repo_dir", DEFAULT_REPO_DIR))


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


def stage(name, version, source="salt://kiosk_releases/", pin=None, retries=3, hop="master->pi", rate=None):
    """
    Stage release ``name`` ``version`` into this Pi's repository from
    ``source``: the master's export (``http(s)://.../kiosk-releases/`` or
    ``salt://kiosk_releases/``), another Pi's repository, or ``campus`` (the
    other Pis of this Pi's campus). Live only after the manifest's signature
    (pillar ``kiosk_release:verify_key``) and every file's size/md5/sha256
    verified; the index is written last. ``pin``: the master's signed campus
    pin for this version (a pin not signed for this campus refuses the whole
    call). ``hop`` labels alerts (``master->pi``, ``pi->pi``). ``rate``
    caps an HTTP download (bytes/s, or a rate like ``2mbit``: ``fleet_rate``;
    the runner passes the campus's WAN cap to the seed Pi; ``salt://``
    sources cannot be paced and report ``rate: None``). The other
    staged versions serve as local bases (unchanged files and chunks are
    not fetched again, ``reused`` counts them). Fires
    ``kiosk/release/staged``, or ``kiosk/release/alert`` on a refusal or bad
    copy; exit code 1 on failure.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_pkg.stage kiosk-app 1.4.0
        salt pi-riverside-2 kiosk_pkg.stage kiosk-app 1.4.0 source=http://10.1.1.2/kiosk-releases/
        salt pi-riverside-1 kiosk_pkg.stage kiosk-app 1.4.0 source=http://salt/kiosk-releases/ rate=2mbit
    """
    version = _args(name, version)
    repo = _repo_dir()
    _checked(fleet_repo.check_source, source)
    if not isinstance(hop, str) or not HOP.match(hop):
        raise SaltInvocationError(f"hop: {hop!r} is not a hop label like master->pi")
    retries = _checked(fleet_runner.number, retries, "retries", 0, 100)
    pace = _checked(fleet_rate.pacer, rate)
    if pace is not None and source.startswith("salt://"):
        # cp.get_file cannot be paced: say so rather than claim a cap
        log.warning("kiosk_pkg: rate is ignored for salt:// sources (set kiosk_release:master_url for a capped WAN)")
        pace = None
    ret = {"result": True, "name": name, "version": version, "pi": __opts__["id"], "source": source,
           "changed": False, "fetched": 0, "rate": pace.rate if pace else None}
    try:
        keys = _verify_keys(hop, name, version)
        if pin is not None:
            pin = _signed_pin(pin, keys, name, hop, version)
        stage_from = fleet_repo.sources(source, *((_inventory(), __opts__["id"]) if source == "campus" else ()))
        with fleet_fetch.session() as session:
            out = fleet_repo.stage(repo, name, version, stage_from, keys, session, pin, retries, _get_file,
                                   lambda exc, base: _alert(hop, name, version, exc, base), pace=pace)
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
    repo = _repo_dir()
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
    repo = _repo_dir()
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


def prune(name, keep=None, also=None):
    """
    Delete staged versions of ``name`` the campus no longer needs: the
    pinned version, the previous one (the newest below the pin) and every
    version above the pin stay; with no pin (none yet, or frozen) all stay.
    ``keep``: the ``keep`` newest stay too (at least 2). ``also``: versions
    that stay whatever (a list; the runner passes the version a rollback
    would republish). The runner calls this after a successful push
    (``kiosk_release:prune``).

    CLI Example:

    .. code-block:: bash

        salt -G kiosk_fleet_role:pi kiosk_pkg.prune kiosk-app
        salt -G kiosk_fleet_role:pi kiosk_pkg.prune kiosk-app keep=3
        salt -G kiosk_fleet_role:pi kiosk_pkg.prune kiosk-app also='["1.3.2"]'
    """
    _args(name)
    if keep is not None:
        keep = _checked(fleet_repo.check_keep, keep)
    if also is None:
        also = []
    if not isinstance(also, (list, tuple)):
        raise SaltInvocationError(f"also: expected a list of versions, got {type(also).__name__}")
    also = [_checked(fleet_release.check_version, v, f"also[{i}]") for i, v in enumerate(also)]
    repo = _repo_dir()
    try:
        removed, kept = fleet_repo.prune(repo, name, keep, also)
    except (fleet_release.ReleaseError, OSError) as exc:
        return _fail({"name": name, "pi": __opts__["id"]}, exc)
    return {"result": True, "name": name, "pi": __opts__["id"], "removed": removed, "kept": kept}


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
    every release in ``kiosk_release:releases``): read the campus Pis'
    indexes (home Pi first; one that is down is skipped), follow the highest
    serial among pins signed by a key in pillar ``kiosk_release:verify_key``
    for this kiosk's campus (never one below the serial it installed under),
    download what is missing (resumed; the next Pi when a copy is bad),
    verify, run the manifest's install command, record
    ``<dir>/<name>/installed.json`` (the ``kiosk_release`` grain), keep the
    previous package. Refusals fire ``kiosk/release/alert`` (``hop:
    pi->kiosk``). ``test=True`` only says what would happen; ``force=True``
    reinstalls the pin. Kept packages are used before the network (a
    rollback to earlier content downloads nothing); the minion config or
    pillar ``kiosk_release:lan_rate`` caps the download rate. Exit code 1 on any failure (nothing changes then).

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_pkg.check_update
        salt -G campus:riverside kiosk_pkg.check_update kiosk-app
    """
    names = [name] if name is not None else _conf("releases") or []
    names = [names] if isinstance(names, str) else names  # one name in the config, not its letters
    if not isinstance(names, list) or not names:
        raise SaltInvocationError("name: no release named and kiosk_release:releases is no list of names")
    timeout = _checked(fleet_runner.number, _conf("install_timeout", 1800), "kiosk_release:install_timeout", 1,
                       86400)
    # the LAN cap of this kiosk's downloads (minion config or pillar); one bucket for the whole call
    pace = _checked(fleet_rate.pacer, _conf("lan_rate"), "kiosk_release:lan_rate")
    for each in names:
        _args(each)
    kiosk = __opts__["id"]
    campus, repos, address = _checked(fleet_client.my_repos, _checked(_inventory), kiosk)
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
    with fleet_fetch.session(address if _conf("bind_source") is True else None) as session:
        for each in names:
            result["releases"][each] = _update_one(session, repos, each, root, keys, campus, force, test, timeout,
                                                   pace)
    if any(report["result"] is False for report in result["releases"].values()):
        result["result"] = False
        __context__["retcode"] = 1
    return result


def _update_one(session, repos, name, root, keys, campus, force, test, timeout, pace=None):
    def alert(hop, version, error, source):
        _alert(hop, name, version, error, source)

    def run(argv, cwd):
        return __salt__["cmd.run_all"](argv, cwd=cwd, python_shell=False, timeout=timeout, output_loglevel="debug")

    report = fleet_client.update(session, repos, name, root, keys, campus, run, alert, force, test, pace)
    if report["changed"]:
        try:
            __salt__["saltutil.refresh_grains"](refresh_pillar=False)
        except Exception as exc:  # pylint: disable=broad-except - the install stands; the grain follows later
            log.warning("kiosk_pkg: grains not refreshed after installing %s %s: %s", name, report["version"], exc)
        _event("kiosk/release/installed", {"name": name, "version": report["version"], "campus": _campus_or_none()})
    return report
