"""
Getting a release onto disk, verified: the I/O half of the release path
(the model is ``fleet_release``, the signatures ``fleet_sign``).

* hashing: md5 and sha256 of a file in one read, the two digests computed on
  two threads (hashlib releases the GIL), so verification runs at md5 speed;
* downloads: streamed to a ``.part`` file, resumed with HTTP Range after a
  cut, verified, and only then renamed into place;
* deltas: with ``bases`` (other versions on this machine) a file is reused
  whole (hard link) or rebuilt from their chunks plus Range fetches of the
  missing ones, each chunk checked against the new manifest (``fleet_delta``);
* a whole release from the first of several sources with an intact copy,
  into a work directory under ``<root>/.staging/`` and then live at
  ``<root>/<name>/<version>`` by one rename (the Pi's repository and the
  kiosk's package folder work alike);
* free space, disk errors said plainly, the per-release lock.

A source that is down, answers an HTTP error or lacks the file raises
:class:`fleet_release.SourceError`; a copy that does not match the manifest
:class:`fleet_release.IntegrityError`; a manifest not signed by our keys
:class:`fleet_release.SignatureError`.
"""

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import shutil
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_delta, fleet_http, fleet_lock, fleet_release, fleet_sign
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_delta
    import fleet_http
    import fleet_lock
    import fleet_release
    import fleet_sign

CHUNK = 1 << 20  # 1 MiB: constant memory whatever the package size
READ = 64 * 1024  # network reads: a cut loses at most this much of what arrived
INDEX_TIMEOUT = (3, 10)  # connect, read: a dead Pi must not hold up the boot
# another job staging or installing the same release (a push during the boot
# state, a rollout during the reactor's staging): wait for it, then find it done
BUSY_WAIT = 3600

ReleaseError = fleet_release.ReleaseError
IntegrityError = fleet_release.IntegrityError
SourceError = fleet_release.SourceError


# --------------------------------------------------------------------------- hashing


class Digest:
    """md5 + sha256 + size of a byte stream, fed chunk by chunk."""

    def __init__(self):
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data):
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def result(self):
        return {"size": self.size, "md5": self.md5.hexdigest(), "sha256": self.sha256.hexdigest()}

    def copy(self):
        """The state so far (a delta rolls back to it when a chunk does not match)."""
        other = Digest.__new__(Digest)
        other.md5, other.sha256, other.size = self.md5.copy(), self.sha256.copy(), self.size
        return other


def hash_file(path, chunk=CHUNK, copy_to=None):
    """
    ``{"size", "md5", "sha256"}`` of a file, read once in ``chunk`` bytes
    (and written to ``copy_to`` in the same pass when given). sha256 runs on
    a second thread while md5 runs on this one: the pair costs about what
    md5 alone costs when there are two cores.
    """
    digest = Digest()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open(path, "rb"))
        out = stack.enter_context(open(copy_to, "wb")) if copy_to else None
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            data = view[:n]
            pending = pool.submit(digest.sha256.update, data)
            digest.md5.update(data)
            if out is not None:
                out.write(data)
            pending.result()  # the buffer is reused: both digests must be done with it
            digest.size += n
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    return digest.result()


# --------------------------------------------------------------------------- downloads


def check_pace(pace, field="pace"):
    """``pace``: None (no cap) or a callable ``pace(nbytes)`` called after every network read."""
    if pace is not None and not callable(pace):
        raise ReleaseError(f"{field}: expected a callable pace(nbytes) or None, got {type(pace).__name__}")
    return pace


def fetch(session, url, part, expected, field, timeout=(5, 60), retries=3, chunk=CHUNK, pace=None):
    """
    Download ``url`` into the file ``part`` and verify it against ``expected``
    (``{"size", "md5", "sha256"}``); on success the verified ``part`` is left
    for the caller to rename into place. A ``part`` already on disk (a cut
    download, even from a previous boot) is resumed with ``Range``; a
    connection cut mid-way is resumed up to ``retries`` times. A copy of
    another size or hash deletes the part and raises :class:`IntegrityError`;
    a 404, another HTTP error or a source still cut after the retries
    :class:`SourceError`; a disk that cannot take the file ``ReleaseError``.

    ``pace(nbytes)`` (when given) is called after every network read and
    sleeps as the bandwidth cap needs.

    Returns ``{"url", "fetched": bytes over the wire, "resumed_from": [offsets]}``.
    """
    import requests  # only where downloads happen: the master runner does not need it

    _own_part(part)

    check_pace(pace)
    size = expected["size"]
    if size == 0 and not os.path.exists(part):
        open(part, "wb").close()  # nothing to download; the empty part is verified below
    digest = None
    fetched, resumed, last_error = 0, [], None
    for _attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > size:
            _unlink(part)
            have = 0
        if digest is None or digest.size != have:
            digest = _digest_of(part, have)
        if have == size:
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416:
                    _unlink(part)
                    raise IntegrityError(f"{field}: {url} is shorter than the manifest's {size} bytes")
                if resp.status_code == 404:
                    raise SourceError(f"{field}: {url} is not in the repository (404)")
                if resp.status_code not in (200, 206):
                    raise SourceError(f"{field}: {url} answered HTTP {resp.status_code}")
                if resp.status_code == 200 or not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    have, digest = 0, Digest()  # the server sent the whole file: start over
                elif have:
                    resumed.append(have)
                try:
                    with open(part, "r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        for data in resp.iter_content(min(chunk, READ)):
                            if digest.size + len(data) > size:
                                _unlink(part)
                                raise IntegrityError(f"{field}: {url} is longer than the manifest's {size} bytes")
                            out.write(data)
                            digest.update(data)
                            fetched += len(data)
                            if pace is not None:
                                pace(len(data))
                except requests.RequestException:
                    raise  # a network cut (requests' errors are OSErrors too): handled below
                except OSError as exc:
                    _unlink(part)
                    raise disk_error(exc, part) from None
        except requests.RequestException as exc:
            last_error = exc  # a cut: the part file keeps what arrived, the next attempt resumes
            time.sleep(min(0.5 * (_attempt + 1), 5))
            continue
        if digest.size >= size:
            break
        last_error = f"the server closed after {digest.size} of {size} bytes"
    else:
        raise SourceError(f"{field}: download from {url} failed after {retries + 1} attempts: {last_error}")
    try:
        fleet_release.compare(expected, digest.result(), field)
    except ReleaseError:
        _unlink(part)  # never keep (or resume from) bytes that do not match
        raise
    with open(part, "rb") as handle:  # on disk before the caller renames it live (power cuts)
        os.fsync(handle.fileno())
    return {"url": url, "fetched": fetched, "resumed_from": resumed}


class _NoRange(SourceError):
    """The server answered a Range request with the whole file (200): the delta gives way to a plain fetch."""


class _Cut(SourceError):
    """A range answer that ended before its length: resumed like a network cut."""


def fetch_delta(session, url, part, expected, index, field, timeout=(5, 60), retries=3, pace=None,
                max_range=fleet_delta.MAX_RANGE):
    """
    Build the file ``expected`` (a manifest entry with ``chunks``) in
    ``part``: chunks found in ``index`` (:func:`fleet_delta.base_index`) are
    copied from the local bases, the others fetched from the whole file at
    ``url`` with ``Range: bytes=a-b`` (adjacent ones in one request). Each
    chunk is hashed against the manifest as it is written; a base chunk that
    does not match is fetched instead, a served chunk that does not match
    deletes ``part`` and raises :class:`IntegrityError` naming the file and
    the chunk. A ``part`` already there (a cut run) is checked chunk by chunk
    and continued from its last good chunk boundary; a cut mid-way is
    resumed so, up to ``retries`` times. The whole file is checked against
    size/md5/sha256 before returning. A server that ignores Range gets a
    plain :func:`fetch` (resumed from the verified prefix).

    Returns ``{"url", "fetched", "reused", "resumed_from", "mode": "delta"}``.
    """
    import requests  # only where downloads happen: the master runner does not need it

    check_pace(pace)
    _own_part(part)
    chunks, size = expected["chunks"], expected["size"]
    index = dict(index)  # a base chunk found bad is dropped from this run's index
    stats = {"fetched": 0, "reused": 0}
    resumed, cuts = [], 0
    try:
        with open(part, "r+b" if os.path.exists(part) else "w+b") as out:
            have = os.fstat(out.fileno()).st_size
            asm = fleet_delta.verified_prefix(out, chunks, min(have, size), Digest())
            if asm.offset:
                resumed.append(asm.offset)
            while not asm.done:
                try:
                    for op in fleet_delta.plan(expected, index, max_range, start=asm.offset):
                        if op[0] == "copy":
                            if not _copy_chunk(op, asm):
                                index.pop(op[4], None)  # not what its manifest says: fetched instead
                                _fetch_range(session, url, asm.offset, [(op[3], op[4])], asm, size, timeout,
                                             pace, stats, field)
                            else:
                                stats["reused"] += op[3]
                        else:
                            _fetch_range(session, url, op[1], op[3], asm, size, timeout, pace, stats, field)
                except (requests.RequestException, _Cut) as exc:
                    asm.rollback()  # keep whole chunks only: the next attempt starts at a boundary
                    cuts += 1
                    if cuts > retries:
                        raise SourceError(f"{field}: delta download from {url} failed after {cuts} attempts: "
                                          f"{fleet_http.describe_error(exc, url) if isinstance(exc, requests.RequestException) else exc}") from None
                    resumed.append(asm.offset)
                    time.sleep(min(0.5 * cuts, 5))
            out.flush()
            os.fsync(out.fileno())
            digest = asm.digest
    except fleet_delta.ChunkMismatch as exc:
        _unlink(part)
        raise IntegrityError(f"{field}: {exc} from {url}") from None
    except IntegrityError:
        _unlink(part)
        raise
    except _NoRange:
        report = fetch(session, url, part, expected, field, timeout=timeout, retries=retries, pace=pace)
        return dict(report, fetched=report["fetched"] + stats["fetched"], reused=0, mode="whole")
    except OSError as exc:
        if isinstance(exc, requests.RequestException):
            raise
        _unlink(part)
        raise disk_error(exc, part) from None
    try:
        fleet_release.compare(expected, digest.result(), field)
    except ReleaseError:
        _unlink(part)
        raise
    return {"url": url, "fetched": stats["fetched"], "reused": stats["reused"], "resumed_from": resumed,
            "mode": "delta"}


def _copy_chunk(op, asm):
    """Copy one base chunk into the part (hash-checked by the assembler); False when the base's bytes differ."""
    _kind, path, offset, length, _sha = op
    try:
        with open(path, "rb") as base:
            base.seek(offset)
            left = length
            while left:
                data = base.read(min(fleet_delta.BUFFER, left))
                if not data:
                    asm.rollback()
                    return False
                asm.write(data)
                left -= len(data)
    except fleet_delta.ChunkMismatch:
        return False  # the assembler rolled back
    except OSError:
        asm.rollback()  # a base that vanished or cannot be read: the network has the bytes
        return False
    return True


def _fetch_range(session, url, start, chunks, asm, size, timeout, pace, stats, field):
    """One ``Range: bytes=a-b`` request for the adjacent ``chunks`` starting at ``start``, written through ``asm``."""
    length = sum(c[0] for c in chunks)
    end = start + length - 1
    with session.get(url, headers={"Range": f"bytes={start}-{end}"}, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416:
            raise IntegrityError(f"{field}: {url} is shorter than the manifest's {size} bytes")
        if resp.status_code == 404:
            raise SourceError(f"{field}: {url} is not in the repository (404)")
        if resp.status_code == 200:
            raise _NoRange("the server answered the whole file")
        if resp.status_code != 206:
            raise SourceError(f"{field}: {url} answered HTTP {resp.status_code}")
        content_range = resp.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {start}-{end}/"):
            raise _NoRange("the server answered the whole file")
        total = content_range.rsplit("/", 1)[-1]
        if total != "*" and total != str(size):
            raise IntegrityError(f"{field}: {url} is {total} bytes, the manifest says {size}")
        got = 0
        for data in resp.iter_content(READ):
            if got + len(data) > length:
                raise IntegrityError(f"{field}: {url} sent more than the {length} bytes asked for")
            stats["fetched"] += len(data)
            got += len(data)
            if pace is not None:
                pace(len(data))
            asm.write(data)
        if got < length:
            raise _Cut(f"the server closed after {got} of {length} bytes")


def _digest_of(path, length):
    digest = Digest()
    if length:
        with open(path, "rb") as handle:
            while True:
                data = handle.read(CHUNK)
                if not data:
                    break
                digest.update(data)
    return digest


# --------------------------------------------------------------------------- disk


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_free_space(directory, needed, field="disk"):
    """Refuse up front when ``directory`` has less than ``needed`` bytes (+1 %) free."""
    free = shutil.disk_usage(directory).free
    if free < needed * 1.01:
        raise ReleaseError(
            f"{field}: {directory} has {free // 2**20} MiB free, the release needs {needed // 2**20 + 1} MiB"
        )
    return free


def disk_error(exc, path, field="disk"):
    """An OSError from writing, as a ReleaseError (a full disk is said plainly)."""
    if exc.errno == errno.ENOSPC:
        return ReleaseError(f"{field}: no space left while writing {path}")
    return ReleaseError(f"{field}: cannot write {path}: {exc.strerror or exc}")


def session(source_address=None):
    """
    A session for the campus LAN and the master's export only: never the
    hospital's proxy from the environment or the Windows (WinINET/GPO)
    settings, never a redirect elsewhere. With ``source_address``, every
    connection leaves from that local address (so a Pi's log names the kiosk).
    """
    import requests  # only where downloads happen: the master runner does not need it

    sess = fleet_http.session()
    if source_address is not None:

        class SourceAdapter(requests.adapters.HTTPAdapter):
            def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
                pool_kwargs["source_address"] = (source_address, 0)
                super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

        adapter = SourceAdapter()
        sess.mount("http://", adapter)
        sess.mount("https://", adapter)
    return sess


def lock(root, key, wait=BUSY_WAIT):
    """One job at a time per ``key`` under ``root`` (staging, installing, writing the index)."""
    staging = os.path.join(root, fleet_release.STAGING)
    os.makedirs(staging, exist_ok=True)
    busy = ReleaseError(f"lock: another job kept {key} busy for {wait} s")
    return fleet_lock.exclusive(os.path.join(staging, f"{key}.lock"), wait, busy)


def work_dir(root, name, version):
    """The staging directory of one release: a later run resumes its ``.part`` files."""
    path = os.path.join(root, fleet_release.STAGING, f"{name}-{version}")
    os.makedirs(path, exist_ok=True)
    return path


def materialise(root, doc, raw_manifest, work):
    """Move a verified ``work`` directory to ``<root>/<name>/<version>`` in one rename; returns that path."""
    with open(os.path.join(work, fleet_release.MANIFEST), "wb") as handle:
        handle.write(raw_manifest)
        handle.flush()
        os.fsync(handle.fileno())
    os.makedirs(os.path.join(root, doc["name"]), exist_ok=True)
    target = os.path.join(root, doc["name"], doc["version"])
    if os.path.exists(target):  # left by a run that died between this rename and the index write
        shutil.rmtree(target)
    os.rename(work, target)
    return target


def verify_tree(path, keys, name, version, field):
    """The manifest of a release directory on disk, after checking its signature and every file's hashes."""
    with open(os.path.join(path, fleet_release.MANIFEST), "rb") as handle:
        doc = fleet_sign.load_manifest(handle.read(), keys, name, version, field)
    for file_name, expected in doc["files"].items():
        fleet_release.compare(expected, hash_file(os.path.join(path, file_name)), f"{name} {version} {file_name} ({field})")
    return doc


def get_bytes(session, url, field, missing_ok=False, timeout=INDEX_TIMEOUT):
    """The body of ``url`` (``None`` for a 404 when ``missing_ok``); :class:`SourceError` when it cannot be had."""
    import requests  # only where downloads happen: the master runner does not need it

    try:
        resp = session.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise SourceError(f"{field}: {fleet_http.describe_error(exc, url)}") from None
    if resp.status_code == 404 and missing_ok:
        return None
    if resp.status_code != 200:
        raise SourceError(f"{field}: {url} answered HTTP {resp.status_code}")
    return resp.content


def _salt_file(get_file, url, path, field):
    """A ``salt://`` file through the minion's file client (``get_file(url, path)``, true when it arrived)."""
    if get_file is None:
        raise SourceError(f"{field}: {url}: no file client for salt:// sources")
    if not get_file(url, path):
        raise SourceError(f"{field}: {url} is not on the master")


def fetch_manifest(session, base, name, version, work, keys, get_file=None):
    """``(manifest, raw bytes)`` of a release at ``base``, signed by one of ``keys`` and valid."""
    url = fleet_release.file_url(base, name, version, fleet_release.MANIFEST)
    if base.startswith("salt://"):
        path = os.path.join(work, fleet_release.MANIFEST)
        _salt_file(get_file, url, path, "source")
        with open(path, "rb") as handle:
            raw = handle.read()
        os.unlink(path)
    else:
        raw = get_bytes(session, url, "source")
    return fleet_sign.load_manifest(raw, keys, name, version, url), raw


def _own_part(part):
    """
    Drop a ``part`` that is another name of some file (a whole-file reuse
    hard-links a base as the part; a run killed before the rename leaves the
    link): writing into it would change a live version.
    """
    try:
        if os.stat(part).st_nlink > 1:
            os.unlink(part)
    except FileNotFoundError:
        pass


def reuse_whole(path, part, expected, field):
    """
    A base file with the new manifest's size and sha256, hard-linked as
    ``part`` (copied when the file system cannot link) and hash-checked:
    True when it matches, else ``part`` is removed and False (the caller
    fetches). Costs no network byte: a rollback's content is still here.
    """
    _unlink(part)
    try:
        try:
            os.link(path, part)
            actual = hash_file(part)
        except OSError:
            _unlink(part)
            actual = hash_file(path, copy_to=part)
        fleet_release.compare(expected, actual, field)
    except (OSError, IntegrityError):
        _unlink(part)
        return False
    return True


def download(session, base, doc, work, retries=3, get_file=None, bases=(), pace=None):
    """
    Every file of the release into ``work``, verified; returns per-file
    reports with ``mode``: ``kept`` (already in ``work`` and matching),
    ``local`` (a file of ``bases``, ``[(dir, manifest)]`` from
    :func:`fleet_delta.load_bases`, reused whole), ``delta`` (base chunks
    plus ranges, :func:`fetch_delta`) or ``whole``; ``fetched`` is network
    bytes, ``reused`` bytes taken from the bases.
    """
    check_pace(pace)
    if bases and not isinstance(bases[0], tuple):  # directories, as fetch_release takes them
        bases = fleet_delta.load_bases(bases, doc["name"])
    reports, index = {}, None
    for file_name, expected in sorted(doc["files"].items()):
        url = fleet_release.file_url(base, doc["name"], doc["version"], file_name)
        part = os.path.join(work, file_name + ".part")
        final = os.path.join(work, file_name)
        if os.path.exists(final):
            # left by an earlier, interrupted run of this release: keep it only if it matches
            # this manifest (the earlier run may have trusted another source's manifest)
            try:
                fleet_release.compare(expected, hash_file(final), file_name)
                reports[file_name] = {"url": url, "fetched": 0, "reused": 0, "resumed_from": [], "mode": "kept"}
                continue
            except IntegrityError:
                os.unlink(final)
        field = f"{doc['name']} {doc['version']} {file_name}"
        local = fleet_delta.same_file(bases, expected) if bases else None
        if local is not None and reuse_whole(local, part, expected, field):
            reports[file_name] = {"url": url, "fetched": 0, "reused": expected["size"], "resumed_from": [],
                                  "mode": "local"}
        elif base.startswith("salt://"):
            _salt_file(get_file, url, part, field)  # no hash check of its own: ours follows
            try:
                fleet_release.compare(expected, hash_file(part), field)
            except IntegrityError:
                os.unlink(part)
                raise
            reports[file_name] = {"url": url, "fetched": expected["size"], "reused": 0, "resumed_from": [],
                                  "mode": "whole"}
        else:
            if bases and expected.get("chunks") and index is None:
                index = fleet_delta.base_index(bases)
            if index and expected.get("chunks") and fleet_delta.plan_bytes(
                    fleet_delta.plan(expected, index))["reused"]:
                reports[file_name] = fetch_delta(session, url, part, expected, index, field, retries=retries,
                                                 pace=pace)
            else:
                reports[file_name] = dict(fetch(session, url, part, expected, field, retries=retries, pace=pace),
                                          reused=0, mode="whole")
        os.replace(part, final)
    return reports


def fetch_release(session, sources, name, version, root, keys, retries=3, get_file=None, bad_copy=None,
                  bases=(), pace=None):
    """
    Download and verify ``version`` from the first of ``sources``
    (``[(label, base URL)]``) that has an intact copy, into a work directory
    under ``root``. A source that is down or lacks the release is skipped; a
    bad copy (hashes or signature) is skipped too and reported to
    ``bad_copy(exc, base)``. ``bases``: directories of other versions of the
    release on this machine (each with its ``manifest.json``), whose files
    and chunks are reused after checking them against the new manifest
    (see :func:`download`); ``pace(nbytes)`` paces every network read.
    Returns ``{"doc", "raw", "work", "source", "fetched", "reused",
    "resumed", "modes": {file: kept|local|delta|whole}}``;
    :class:`ReleaseError` when no source delivered.
    """
    check_pace(pace)
    fleet_release.check_name(name)
    bases = fleet_delta.load_bases(bases, name)
    tried = []
    for label, base in sources:
        work = work_dir(root, name, version)
        try:
            doc, raw = fetch_manifest(session, base, name, version, work, keys, get_file)
            missing = sum(e["size"] for f, e in doc["files"].items() if not os.path.exists(os.path.join(work, f)))
            check_free_space(root, missing)
            reports = download(session, base, doc, work, retries, get_file, bases=bases, pace=pace)
        except ReleaseError as exc:
            tried.append(f"{label}: {exc}")
            if fleet_release.bad_copy(exc) and bad_copy is not None:
                bad_copy(exc, base)
            continue
        return {"doc": doc, "raw": raw, "work": work, "source": label,
                "fetched": sum(r["fetched"] for r in reports.values()),
                "reused": sum(r["reused"] for r in reports.values()),
                "resumed": any(r["resumed_from"] for r in reports.values()),
                "modes": {f: r["mode"] for f, r in reports.items()}}
    raise ReleaseError(
        f"{name} {version}: no source delivered an intact copy ({'; '.join(tried) or 'no source holds it'})"
    )
