"""
The release store on the top master's disk, without Salt: where releases
are kept (``<store>/<name>/<version>/`` with its files and the signed
``manifest.json``), how a package gets in (a file or flat directory under
``kiosk_release:source_root``, walked without following a link, or an
http(s) URL fetched without proxy or redirect), hashed in the copying pass,
its chunk lists computed (``fleet_delta``), its manifest built and signed
with the master's Ed25519 key, and stored in
one ``rename``; the list of published versions, a manifest read back, and
the hard-linked copy a rollback republishes. Also the signing key file
itself (read without following a link, mode 0600; written by ``keygen``).

Everything comes in as arguments (paths, key PEM, config values); every
refusal raises :class:`StoreError` (a ``fleet_release.ReleaseError``, so a
``ValueError``) whose message names the field. Nothing half-done stays:
a release is assembled in ``<store>/.staging/`` and removed on any error.
"""

import json
import os
import shutil
import stat
import tempfile

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_delta,
        fleet_fetch,
        fleet_fields,
        fleet_http,
        fleet_release,
        fleet_rollout,
        fleet_sign,
        fleet_state,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_delta
    import fleet_fetch
    import fleet_fields
    import fleet_http
    import fleet_release
    import fleet_rollout
    import fleet_sign
    import fleet_state

STORE_FIELD = "kiosk_release.store"
SIGNING_KEY_FIELD = fleet_sign.SIGNING_KEY_FIELD
INSTALL_FILE = "kiosk-install.json"  # in a package directory: its install command (the Jenkinsfile passes none)
INSTALL_FILE_MAX = 65536
KEY_MAX = 65536  # an Ed25519 PEM is about 120 bytes: anything far larger is no key


class StoreError(fleet_release.ReleaseError):
    """A refused source, key or store request; the message names the field."""


# --------------------------------------------------------------------------- where the store is


def _absolute(path, field, hint=""):
    """``path`` if it is an absolute path the file system can take (no NUL, no unpaired surrogate)."""
    ok = isinstance(path, str) and "\0" not in path and os.path.isabs(path)
    if ok and any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        ok = False
    if not ok:
        raise StoreError(f"{field}: {fleet_fields.shown(path)} is not an absolute path{hint}")
    return path


def store_dir(store, file_roots_base):
    """
    The store folder, created if missing: ``store`` (``kiosk_release:store``,
    absolute), or by default ``<first file_roots:base>/kiosk_releases`` (so
    ``salt://kiosk_releases/`` reaches it).
    """
    if store is None:
        roots = file_roots_base if isinstance(file_roots_base, list) else []
        if not roots or not isinstance(roots[0], str):
            raise StoreError(f"{STORE_FIELD}: not set and the master has no file_roots:base")
        store = os.path.join(roots[0], "kiosk_releases")
    _absolute(store, STORE_FIELD)
    try:
        os.makedirs(store, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{STORE_FIELD}: cannot create {store} ({exc.strerror})") from None
    return store


def master_source(url):
    """Where the Pis fetch the store from: ``kiosk_release:master_url`` (http(s), ends in ``/``) or ``salt://``."""
    if url is None:
        return "salt://kiosk_releases/"
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise StoreError(f"kiosk_release.master_url: {fleet_fields.shown(url)} is not an http(s) URL")
    return url if url.endswith("/") else url + "/"


# --------------------------------------------------------------------------- the signing key


def _read_no_follow(path, field):
    """``(bytes, fstat)`` of a regular file opened without following a symlink."""
    _absolute(path, field)
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise StoreError(f"{field}: cannot read {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # checked on the fd: a directory cannot even be wrapped in a file object
        os.close(fd)
        raise StoreError(f"{field}: {path} is not a plain file")
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(KEY_MAX + 1), st
        except OSError as exc:
            raise StoreError(f"{field}: cannot read {path}: {exc.strerror}") from None


def read_signing_key(path, field=SIGNING_KEY_FIELD):
    """
    The Ed25519 private key PEM every manifest and pin is signed with:
    required, an absolute path, read without following a symlink, refused
    when group or others may read it or when it is no unencrypted Ed25519 key.
    """
    if path is None or path == "":
        raise StoreError(f"{field}: not set in the master config; publish signs every manifest "
                         f"(make a key with salt-run kiosk_release.keygen path=/etc/salt/pki/master/kiosk_release.pem)")
    pem, st = _read_no_follow(path, field)
    fleet_sign.check_key_mode(st.st_mode, field)
    fleet_sign.public_key_of(pem, field)  # an unusable key fails here, before anything is copied
    return pem


def public_key_at(path, field="path"):
    """The public PEM of the private key in ``path`` (read without following a symlink)."""
    return fleet_sign.public_key_of(_read_no_follow(path, field)[0], field)


def write_key(path, force=False, field="path"):
    """
    Write a new Ed25519 private key to ``path`` with mode 0600 from the start
    (never over an existing file unless ``force``) and return its public
    PEM. The private key is never returned.
    """
    _absolute(path, field, f" (or set {SIGNING_KEY_FIELD})")
    if not isinstance(force, bool):
        raise StoreError(f"force: expected True or False, got {fleet_fields.shown(force)}")
    if os.path.lexists(path) and not force:
        raise StoreError(f"{field}: {path} exists; refusing to replace a signing key (force=True replaces it)")
    private, public = fleet_sign.new_key_pair()
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fleet_state.write_atomic(path, private.decode("ascii"), 0o600)  # its temp file is 0600 from creation
    except OSError as exc:
        raise StoreError(f"{field}: cannot write the key: {exc.strerror}") from None
    return public


# --------------------------------------------------------------------------- reading the store


def releases(store):
    """The release names in the store (dot folders, such as ``.staging``, left out)."""
    try:
        return sorted(n for n in os.listdir(store) if not n.startswith(".") and fleet_fields.NAME.match(n))
    except OSError as exc:
        raise StoreError(f"{STORE_FIELD}: cannot list {store} ({exc.strerror})") from None


def published(store, name):
    """The versions of ``name`` that hold a manifest, oldest first."""
    fleet_release.check_name(name)
    root = os.path.join(store, name)
    if not os.path.isdir(root):
        return []
    return fleet_release.sort_versions(
        v for v in os.listdir(root)
        if fleet_release.VERSION.match(v) and os.path.isfile(os.path.join(root, v, fleet_release.MANIFEST))
    )


def manifest(store, name, version):
    """The validated manifest of ``name`` ``version``; StoreError naming ``version`` when it is not published."""
    fleet_release.check_name(name)
    version = fleet_release.check_version(version)
    doc = fleet_state.read_json(os.path.join(store, name, version, fleet_release.MANIFEST), StoreError)
    if doc is None:
        known = published(store, name)
        raise StoreError(f"version: {name} {version} is not published (published: {', '.join(known) or 'none'})")
    return fleet_release.validate_manifest(doc, name=name, version=version)


def manifests(store, name, versions):
    """``{version: manifest}`` of those of ``versions`` the store still holds readable; the others left out."""
    found = {}
    for version in versions:
        if not isinstance(version, str) or version in found:
            continue
        try:
            found[version] = manifest(store, name, version)
        except ValueError:  # no longer in the store, or not a version
            continue
    return found


# --------------------------------------------------------------------------- importing a package


def import_url(source, work, field="source"):
    """Download one file into ``work``, hashed on the way; no proxy from the environment, no redirect."""
    import requests  # pylint: disable=import-outside-toplevel

    fleet_http.check_url(source, field)
    host = fleet_http.host_of(source)
    path = source.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    file_name = fleet_release.check_file_name(path.rsplit("/", 1)[-1], f"{field} (the URL's last path segment)")
    digest = fleet_fetch.Digest()
    try:
        with fleet_http.session() as sess, \
                sess.get(source, stream=True, timeout=(10, 120), allow_redirects=False) as resp:
            fleet_rollout.check_source_response(resp.status_code, resp.headers.get("Location"), host, field)
            with open(os.path.join(work, file_name), "wb") as out:
                for data in resp.iter_content(fleet_fetch.CHUNK):
                    out.write(data)
                    digest.update(data)
                out.flush()
                os.fsync(out.fileno())
    except requests.TooManyRedirects:  # the session allows none: raised on the first 3xx
        raise StoreError(f"{field}: {host} answered a redirect; redirects are not followed") from None
    except requests.RequestException as exc:
        raise StoreError(f"{field}: cannot be downloaded ({fleet_http.describe_error(exc, source)})") from None
    return {file_name: digest.result()}


def import_source(source, work, source_root, md5=None, field="source"):
    """
    Copy into ``work``, hashing in the same pass, a file or the files of a
    flat directory under ``source_root`` (walked one component at a time,
    ``O_NOFOLLOW``: no ``..``, no symlink, no hard link), or an http(s) URL.
    ``md5`` (the build's) is checked against a single-file copy. Returns
    ``{file name: {size, md5, sha256}}``.
    """
    if not isinstance(source, str) or not source:
        raise StoreError(f"{field}: give a file or directory under kiosk_release:source_root, or an http(s) URL")
    if source.startswith(("http://", "https://")):
        files = import_url(source, work, field)
    else:
        _kind, fds = fleet_rollout.open_confined(source, source_root, field)
        files = {}
        try:
            for entry in sorted(fds):
                # open() of an fd: the very file that was checked, closed when hashed
                files[entry] = fleet_fetch.hash_file(fds.pop(entry), copy_to=os.path.join(work, entry))
        finally:
            fleet_rollout.close_all(fds)
    if md5 is not None:
        if len(files) != 1:
            raise StoreError("md5: only for a single-file source")
        (entry,) = files.values()
        if str(md5).lower() != entry["md5"]:
            raise StoreError(f"md5: the package's md5 is {entry['md5']}, the pipeline said "
                             f"{fleet_fields.shown(md5)} (corrupt upload?)")
    return files


def install_from_package(work, files, install=None, success_codes=None, field="source"):
    """
    ``(install, success_codes)`` as given, or, when ``install`` is None, read
    from the package's own ``kiosk-install.json`` (the copy just made and
    hashed, at most 64 KiB): an argument list, or ``{"install": [...],
    "success_codes": [...]}``. A shell string is refused.
    """
    if install is not None or INSTALL_FILE not in files:
        return fleet_release.check_install(install), fleet_release.check_success_codes(success_codes)
    field = f"{field}.{INSTALL_FILE}"
    if files[INSTALL_FILE]["size"] > INSTALL_FILE_MAX:
        raise StoreError(f"{field}: larger than 64 KiB")
    try:
        with open(os.path.join(work, INSTALL_FILE), encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        raise StoreError(f"{field}: not valid JSON (expected an argument list or {{\"install\": [...]}})") from None
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"install", "success_codes"})
        if unknown:
            raise StoreError(f"{field}: unknown key {', '.join(map(str, unknown))}")
        codes = doc.get("success_codes") if success_codes is None else success_codes
        return (fleet_release.check_install(doc.get("install"), f"{field}.install"),
                fleet_release.check_success_codes(codes, f"{field}.success_codes"))
    return fleet_release.check_install(doc, field), fleet_release.check_success_codes(success_codes)


# --------------------------------------------------------------------------- storing a release


def with_chunks(work, files, field):
    """
    ``files`` with ``chunks`` in every entry (content-defined, see
    ``fleet_delta``): kept when the entry has them (a rollback copies the
    old manifest's), else computed from the copy in ``work`` (a second read,
    from the page cache right after the copy). The Pis and kiosks fetch
    only the chunks they lack.
    """
    out = {}
    for file_name, entry in files.items():
        chunks = entry.get("chunks")
        if chunks is None:
            chunks = fleet_delta.chunk_file(os.path.join(work, file_name), f"{field} {file_name} chunks")
        out[file_name] = dict(entry, chunks=chunks)
    return out


def new_release(store, name, version, files_from, install, key_pem, rollback_of=None, success_codes=None):
    """
    Store a new version: ``files_from(work)`` fills the staging folder and
    returns the hashed files; ``install`` is the install command, or a
    function ``(work, files) -> (install, success_codes)``. The manifest is
    signed with ``key_pem`` and written, then the folder is renamed to
    ``<store>/<name>/<version>`` in one step. Versions only go up. On any
    error the staging folder is removed; an OSError becomes a StoreError.
    """
    fleet_release.check_name(name)
    version = fleet_release.check_version(version)
    versions = published(store, name)
    if versions and fleet_release.parse_version(version) <= fleet_release.parse_version(versions[-1]):
        raise StoreError(f"version: {version} is not above the newest published {name} {versions[-1]} "
                         f"(versions only go up; to go back use kiosk_release.rollback)")
    try:
        staging = os.path.join(store, fleet_release.STAGING)
        os.makedirs(staging, exist_ok=True)
        work = tempfile.mkdtemp(dir=staging, prefix=f"{name}-{version}-")
        try:
            files = with_chunks(work, files_from(work), f"{name} {version}")
            if callable(install):  # publish: the command may come from the package itself
                install, success_codes = install(work, files)
            doc = fleet_sign.sign_manifest(
                fleet_release.build_manifest(name, version, files, install, rollback_of=rollback_of,
                                             success_codes=success_codes), key_pem)
            fleet_state.write_json_atomic(os.path.join(work, fleet_release.MANIFEST), doc)
            os.makedirs(os.path.join(store, name), exist_ok=True)
            os.chmod(work, 0o755)
            os.rename(work, os.path.join(store, name, version))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    except OSError as exc:
        raise StoreError(str(fleet_fetch.disk_error(exc, store, "store"))) from None
    return doc


def publish(store, name, version, source, source_root, key_pem, install=None, success_codes=None, md5=None):
    """
    Import ``source`` (see :func:`import_source`) as ``name`` ``version``
    with its install command (given, or from the package, see
    :func:`install_from_package`); returns the signed manifest.
    """
    if install is not None:  # refused early, before anything is copied
        install = fleet_release.check_install(install)
    if success_codes is not None:
        success_codes = fleet_release.check_success_codes(success_codes)
    return new_release(store, name, version, lambda work: import_source(source, work, source_root, md5),
                       lambda work, files: install_from_package(work, files, install, success_codes), key_pem)


def rollback_copy(store, name, previous, version, key_pem):
    """
    Republish the content of ``previous`` as ``version`` (``rollback_of:
    previous``, same install command): the files are hard-linked (copied
    when the file system cannot link) and checked against the old manifest;
    its chunk lists are copied (computed when it has none).
    """
    source = manifest(store, name, previous)

    def copy(work):
        for file_name, expected in source["files"].items():
            src, dst = os.path.join(store, name, previous, file_name), os.path.join(work, file_name)
            try:
                os.link(src, dst)  # same content, no second copy on disk
            except OSError:
                shutil.copyfile(src, dst)
            fleet_release.compare(expected, fleet_fetch.hash_file(dst), f"{name} {previous} {file_name}")
        return source["files"]

    return new_release(store, name, version, copy, source["install"], key_pem, rollback_of=previous,
                       success_codes=source.get("success_codes"))
