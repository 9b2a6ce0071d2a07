"""
The Pi's campus repository (``kiosk_pkg.stage``, ``pin``, ``repo_status``,
``served``, ``prune``), without Salt: the loader module reads the pillar and
the minion config, calls these, and fires the events.

Layout, served read-only by nginx::

    <repo>/<name>/index.json         staged versions and the signed campus pin
    <repo>/<name>/<version>/...      the files and the signed manifest
    <repo>/.staging/                 work directories and locks (never served)

A version goes live by one rename after its signature and every file
verified (``fleet_fetch.fetch_release``); the index is written last, so a
kiosk never reads of a version that is not complete on disk. Removing goes
the other way: first out of the index, then off the disk.
"""

import logging
import os
import shutil

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fetch, fleet_inventory, fleet_release, fleet_rollout, fleet_runner, fleet_sign, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fetch
    import fleet_inventory
    import fleet_release
    import fleet_rollout
    import fleet_runner
    import fleet_sign
    import fleet_state

log = logging.getLogger(__name__)

INDEX_LOCK_WAIT = 60  # s: an index read-modify-write takes milliseconds


def check_source(source):
    """``campus`` or a ``salt://`` / ``http(s)://`` base URL (the master's export or another Pi's repository)."""
    if not isinstance(source, str) or not (source == "campus" or source.startswith(("salt://", "http://", "https://"))):
        raise fleet_release.ReleaseError(f"source: {source!r} is not 'campus' or a salt:// or http(s):// URL")
    return source


def sources(source, inventory=None, pi_id=None):
    """
    ``[(label, base URL)]`` to stage from: the given source (labelled
    ``master`` for ``salt://``), or for ``campus`` the other Pis of ``pi_id``'s
    campus in ``inventory`` that have an address.
    """
    if source != "campus":
        return [("master" if source.startswith("salt://") else source, source if source.endswith("/") else source + "/")]
    campus = fleet_inventory.campus_of(inventory, pi_id)
    peers = [p for p in fleet_inventory.pis_of(inventory, campus) if p != pi_id]
    found = [(p, fleet_release.repo_url(inventory, campus, p)) for p in peers]
    return [(p, url) for p, url in found if url]


def read_index(repo, name):
    """The index of release ``name`` (a new, empty one when there is none yet)."""
    doc = fleet_state.read_json(os.path.join(repo, name, fleet_release.INDEX), fleet_release.ReleaseError)
    return fleet_release.validate_index(doc, name) if doc is not None else fleet_release.new_index(name)


def write_index(repo, name, index):
    os.makedirs(os.path.join(repo, name), exist_ok=True)
    fleet_state.write_json_atomic(os.path.join(repo, name, fleet_release.INDEX), index)


def live(repo, name, version):
    """A version is live when its directory and manifest are there (they arrive by one rename)."""
    return os.path.isfile(os.path.join(repo, name, version, fleet_release.MANIFEST))


def live_signed(repo, name, version, keys):
    """
    Live, and its manifest signed by one of ``keys``: a copy staged before
    signing (or under a retired key) is fetched again, signed, rather than
    served to kiosks that would refuse it.
    """
    if not live(repo, name, version):
        return False
    try:
        with open(os.path.join(repo, name, version, fleet_release.MANIFEST), "rb") as handle:
            fleet_sign.load_manifest(handle.read(), keys, name, version, "staged copy")
    except (fleet_release.ReleaseError, OSError) as exc:
        log.warning("fleet_repo: %s %s is staged but not usable (%s): fetching it again", name, version, exc)
        return False
    return True


def bases(repo, name, version, index=None):
    """
    The directories of the other live versions of ``name`` in ``repo``
    (newest first): what a new version can take unchanged files and chunks
    from instead of the network (``fleet_fetch.fetch_release(bases=...)``,
    which re-hashes everything it takes against the new signed manifest).
    A rollback republished as a new version thus costs no package bytes.
    """
    index = read_index(repo, name) if index is None else index
    others = [v for v in index["versions"] if v != version and live(repo, name, v)]
    return [os.path.join(repo, name, v) for v in reversed(fleet_release.sort_versions(others))]


def stage(repo, name, version, stage_from, keys, session, pin=None, retries=3, get_file=None, bad_copy=None,
          pace=None):
    """
    Stage ``name`` ``version`` into ``repo`` from the first of ``stage_from``
    (``[(label, base URL)]``) with an intact copy, unless a signed copy is
    live already; then record it in the index and, with ``pin`` (already
    verified for this Pi's campus and version), move the campus pin to it.
    Returns ``{"changed", "index", ...}`` (``source``, ``fetched``,
    ``reused``, ``resumed`` when it fetched; ``pinned`` or ``pin_skipped``
    with a pin). The other live versions are the download's local
    :func:`bases`; ``pace(nbytes)`` (``fleet_rate.Pacer``) caps its network
    rate.
    """
    out = {"changed": False, "fetched": 0}
    os.makedirs(repo, exist_ok=True)
    with fleet_fetch.lock(repo, f"{name}-{version}"):
        index = read_index(repo, name)
        if version not in index["versions"] or not live_signed(repo, name, version, keys):
            got = fleet_fetch.fetch_release(session, stage_from, name, version, repo, keys, retries, get_file, bad_copy,
                                            bases=bases(repo, name, version, index), pace=pace)
            fleet_fetch.materialise(repo, got["doc"], got["raw"], got["work"])
            out.update(changed=True, source=got["source"], fetched=got["fetched"], reused=got.get("reused", 0),
                       resumed=got["resumed"])
        if out["changed"] or pin is not None:
            with fleet_fetch.lock(repo, f"{name}.index", INDEX_LOCK_WAIT):  # read-modify-write: one writer
                index = read_index(repo, name)
                if out["changed"]:
                    index = fleet_release.index_add(index, got["doc"])
                if pin is not None:
                    try:
                        index = fleet_release.index_pin(index, pin)
                        out["pinned"] = True
                    except fleet_release.ReleaseError as exc:
                        # a newer pin arrived while this job ran: the staging still counts
                        out["pin_skipped"] = str(exc)
                write_index(repo, name, index)
    out["index"] = index
    return out


def store_pin(repo, name, pin):
    """Put a verified campus ``pin`` into the index (never over a newer one); returns the index."""
    os.makedirs(repo, exist_ok=True)
    with fleet_fetch.lock(repo, f"{name}.index", INDEX_LOCK_WAIT):
        index = fleet_release.index_pin(read_index(repo, name), pin)
        write_index(repo, name, index)
    return index


def status(repo, name, pin_holds):
    """
    ``{"staged": live versions, "pin", "pin_verified"}``; ``pin_holds(pin)``
    says whether a kiosk of this campus would follow the stored pin (it
    raises :class:`fleet_release.ReleaseError` when not).
    """
    index = read_index(repo, name)
    verified = False
    if index["pin"] is not None:
        try:
            verified = bool(pin_holds(index["pin"]))
        except (fleet_release.ReleaseError, fleet_inventory.InventoryError):
            verified = False
    staged = [v for v in index["versions"] if live(repo, name, v)]
    return {"staged": fleet_release.sort_versions(staged), "pin": index["pin"], "pin_verified": verified}


def served(path, name, version):
    """
    ``{client address: [HTTP statuses]}`` of GETs of the version's files in
    the nginx access log ``path`` (JSON lines); ``{}`` when there is no log
    yet (nothing served since it was created or rotated).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return fleet_rollout.served_from_log(handle, name, version)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise fleet_release.ReleaseError(
            f"kiosk_release:access_log: cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None


def check_keep(keep):
    """How many staged versions prune keeps at least: a whole number, at least 2 (the pin and the one before it)."""
    value = fleet_runner.number(keep, "keep", 0, 10**6)
    if value < 2:
        raise fleet_release.ReleaseError(f"keep: {value} is below 2 (the pin and the one before it stay)")
    return value


def prune_plan(index, keep=None, also=()):
    """
    ``(removed, kept)`` of the versions staged in ``index``. With a campus
    pin: the pinned version, the previous one (the newest staged below the
    pin: what a rollback republishes) and every version above the pin
    (pre-staged, or what the campus was rolled back from) stay; the rest
    goes. Without a pin (none yet, or the campus frozen) nothing is known to
    be unused: all stay. ``keep`` (the manual call) keeps the ``keep``
    newest as well, pin or not; ``also`` names versions that stay whatever
    (the runner passes what ``rollback`` would republish: the pin's own
    history, which may be older than the newest version below the pin).
    """
    versions = fleet_release.sort_versions(index["versions"])
    pinned = index["pin"]["version"] if index["pin"] and index["pin"].get("version") else None
    if pinned is None:
        kept = set(versions[-keep:]) if keep else set(versions)
    else:
        floor = fleet_release.parse_version(pinned)
        below = [v for v in versions if fleet_release.parse_version(v) < floor]
        kept = {pinned, *below[-1:], *(v for v in versions if fleet_release.parse_version(v) > floor)}
        if keep:
            kept |= set(versions[-keep:])
    kept |= set(also) & set(versions)
    return fleet_release.prune_plan(versions, kept), fleet_release.sort_versions(kept)


def prune(repo, name, keep=None, also=()):
    """Delete the versions :func:`prune_plan` drops: first out of the index, then off the disk."""
    if keep is not None:
        keep = check_keep(keep)
    with fleet_fetch.lock(repo, f"{name}.index", INDEX_LOCK_WAIT):
        index = read_index(repo, name)
        removed, kept = prune_plan(index, keep, also)
        if removed:
            for version in removed:
                del index["versions"][version]
            write_index(repo, name, index)
        for version in removed:
            shutil.rmtree(os.path.join(repo, name, version), ignore_errors=True)
    return removed, kept
