"""
Delta transfers of releases: only the changed parts of a file cross the
WAN, and what arrives is still checked as a whole.

At publish, the top master cuts every file into content-defined chunks
(FastCDC: the boundaries follow the content, so an insertion shifts no
later boundary) and lists them in the signed manifest as
``"chunks": [[length, sha256], ...]``. A Pi or kiosk never chunks: it reads
the chunk lists of the new manifest and of the versions it already holds
(its *bases*), copies the chunks it has, and fetches the others from the
unchanged whole file with HTTP ``Range`` requests (adjacent ones coalesced
into one request). Every chunk is hashed against the NEW signed manifest
as it is written, and the whole file against size/md5/sha256 before it
goes live, so a base manifest is used as a hint and never trusted.

Pure planning plus small I/O helpers (a base's manifest, a file's chunks,
the verified prefix of a ``.part`` file). ``fastcdc`` is needed only by
:func:`chunk_file`, on the top master. Errors are ``fleet_release``'s.
"""

import hashlib
import json
import mmap
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_release
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_release

# FastCDC sizes: 64 KiB on average keeps a 200 MB file's list near 3,000 entries
# (about 250 KB of manifest) while a change of a few bytes costs one chunk
MIN_CHUNK = 16 * 1024
AVG_CHUNK = 64 * 1024
MAX_CHUNK = 256 * 1024
MAX_RANGE = 8 * 1024 * 1024  # one Range request at most: a cut loses little, a request does a lot
BUFFER = 1 << 20  # reads of a base or a part: memory stays flat whatever the file size

ReleaseError = fleet_release.ReleaseError
IntegrityError = fleet_release.IntegrityError


class ChunkMismatch(IntegrityError):
    """A chunk whose bytes do not hash to the manifest's sha256; ``index`` and ``offset`` say which."""

    def __init__(self, message, index, offset):
        super().__init__(message)
        self.index = index
        self.offset = offset


# --------------------------------------------------------------------------- at publish (top master)


def cdc_available():
    """``(installed, compiled)``: whether fastcdc is there and whether its Cython build is the one in use."""
    if importlib.util.find_spec("fastcdc") is None:
        return False, False
    return True, importlib.util.find_spec("fastcdc.fastcdc_cy") is not None


def chunk_file(source, field="chunks"):
    """
    ``[[length, sha256 hex], ...]`` of a file (a path or an open file
    descriptor), cut with FastCDC (:data:`MIN_CHUNK`/:data:`AVG_CHUNK`/
    :data:`MAX_CHUNK`). The file is mapped, not read into memory. An empty
    file has no chunks. :class:`ReleaseError` naming ``field`` when fastcdc
    is missing (only publishing needs it).
    """
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise ReleaseError(f"{field}: expected a path or a file descriptor, got {fleet_fields.shown(source)}")
    if not cdc_available()[0]:
        raise ReleaseError(f"{field}: the fastcdc package is missing on this master "
                           f"(pip install 'fastcdc>=1.7,<2'; only publishing needs it)")
    from fastcdc import fastcdc  # pylint: disable=import-outside-toplevel

    try:
        fd = source if isinstance(source, int) else os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ReleaseError(f"{field}: cannot read the file to chunk it: {exc.strerror or exc}") from None
    try:
        if os.fstat(fd).st_size == 0:
            return []
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return [[c.length, c.hash] for c in fastcdc(view, min_size=MIN_CHUNK, avg_size=AVG_CHUNK,
                                                              max_size=MAX_CHUNK, hf=hashlib.sha256)]
            finally:
                view.release()
    except OSError as exc:
        raise ReleaseError(f"{field}: cannot read the file to chunk it: {exc.strerror or exc}") from None
    finally:
        if not isinstance(source, int):
            os.close(fd)


# --------------------------------------------------------------------------- the bases on a Pi or kiosk


def load_bases(bases, name, field="bases"):
    """
    ``[(directory, manifest)]`` of the release directories ``bases`` (other
    versions of release ``name`` on this machine). A directory without a
    readable, valid manifest of that release is left out: bases are only
    hints, every byte taken from them is checked against the new manifest.
    """
    if isinstance(bases, (str, bytes)) or not isinstance(bases, (list, tuple)):
        raise ReleaseError(f"{field}: expected a list of release directories, got {fleet_fields.shown(bases)}")
    found = []
    for i, directory in enumerate(bases):
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ReleaseError(f"{field}[{i}]: {fleet_fields.shown(directory)} is not a directory path")
        directory = str(directory)
        try:
            with open(os.path.join(directory, fleet_release.MANIFEST), "rb") as handle:
                doc = fleet_release.validate_manifest(json.loads(handle.read()), name=name)
        except (OSError, ValueError):
            continue
        found.append((directory, doc))
    return found


def _on_disk(directory, file_name, size):
    """The path of a base file when it is there with the manifest's size (a cheap first filter)."""
    path = os.path.join(directory, file_name)
    try:
        return path if os.path.getsize(path) == size else None
    except OSError:
        return None


def base_index(bases):
    """``{sha256: (path, offset, length)}`` of every chunk the ``bases`` (``[(dir, manifest)]``) list."""
    index = {}
    for directory, doc in bases:
        for file_name, entry in sorted(doc["files"].items()):
            chunks = entry.get("chunks")
            if not chunks or _on_disk(directory, file_name, entry["size"]) is None:
                continue
            path, offset = os.path.join(directory, file_name), 0
            for length, digest in chunks:
                index.setdefault(digest, (path, offset, length))
                offset += length
    return index


def same_file(bases, expected):
    """A base file whose manifest entry has ``expected``'s size and sha256 (reused whole), or None."""
    for directory, doc in bases:
        for file_name, entry in sorted(doc["files"].items()):
            if entry["size"] == expected["size"] and entry["sha256"] == expected["sha256"]:
                path = _on_disk(directory, file_name, entry["size"])
                if path is not None:
                    return path
    return None


# --------------------------------------------------------------------------- the plan


def plan(expected, index, max_range=MAX_RANGE, start=0):
    """
    How to build the file ``expected`` (a manifest entry with ``chunks``)
    from ``start`` (a chunk boundary) on: ``("copy", path, offset, length,
    sha256)`` for a chunk a base holds, ``("fetch", offset, length,
    [(length, sha256), ...])`` for a run of adjacent chunks no base holds,
    one HTTP range of at most ``max_range`` bytes (a single larger chunk
    goes alone).
    """
    chunks = expected.get("chunks") if isinstance(expected, dict) else None
    if not isinstance(chunks, list):
        raise ReleaseError("chunks: the manifest entry lists no chunks")
    if isinstance(max_range, bool) or not isinstance(max_range, int) or max_range <= 0:
        raise ReleaseError(f"max_range: {fleet_fields.shown(max_range)} is not a positive byte count")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ReleaseError(f"start: {fleet_fields.shown(start)} is not a byte offset")
    if resume_point(chunks, start)[0] != start:
        raise ReleaseError(f"start: {start} is not a chunk boundary of the file")
    ops, offset = [], 0
    for length, digest in chunks:
        if offset >= start:
            hit = index.get(digest)
            if hit is not None and hit[2] == length:
                ops.append(("copy", hit[0], hit[1], length, digest))
            elif ops and ops[-1][0] == "fetch" and ops[-1][2] + length <= max_range:
                ops[-1][2] += length
                ops[-1][3].append((length, digest))
            else:
                ops.append(["fetch", offset, length, [(length, digest)]])
        offset += length
    return [tuple(op) for op in ops]


def plan_bytes(ops):
    """``{"reused": bytes copied from bases, "fetch": bytes to download}`` of a plan."""
    reused = sum(op[3] for op in ops if op[0] == "copy")
    return {"reused": reused, "fetch": sum(op[2] for op in ops if op[0] == "fetch")}


# --------------------------------------------------------------------------- resuming and writing


def resume_point(chunks, have):
    """``(offset, index)``: the last chunk boundary at or below ``have`` bytes, and the chunk that starts there."""
    offset = 0
    for i, (length, _digest) in enumerate(chunks):
        if offset + length > have:
            return offset, i
        offset += length
    return offset, len(chunks)


class Assembler:
    """
    Writes a file's bytes from a chunk boundary on (``out`` positioned
    there), hashing each chunk as it completes: a chunk that does not match
    its sha256 is cut off again (the file and ``digest`` go back to the
    last good boundary) and :class:`ChunkMismatch` is raised. ``digest``
    (md5 + sha256 of the whole file, with ``update`` and ``copy``) follows
    every byte written.
    """

    def __init__(self, out, chunks, index, offset, digest):
        self.out, self.chunks, self.index, self.offset = out, chunks, index, offset
        self.digest = digest
        self._saved = digest.copy()
        self._current = hashlib.sha256()
        self._filled = 0

    @property
    def done(self):
        return self.index >= len(self.chunks)

    def write(self, data):
        view = memoryview(data)
        while len(view):
            if self.done:
                raise IntegrityError(f"more bytes than the manifest's {self.offset} (chunk {self.index})")
            length, expected = self.chunks[self.index]
            piece = view[:length - self._filled]
            self.out.write(piece)
            self._current.update(piece)
            self.digest.update(piece)
            self._filled += len(piece)
            view = view[len(piece):]
            if self._filled == length:
                if self._current.hexdigest() != expected:
                    index, offset = self.index, self.offset
                    self.rollback()
                    raise ChunkMismatch(f"chunk {index} (bytes {offset}-{offset + length - 1}): sha256 mismatch "
                                        f"(expected {expected}, got {self._current.hexdigest()})", index, offset)
                self.offset += length
                self.index += 1
                self._filled = 0
                self._current = hashlib.sha256()
                self._saved = self.digest.copy()

    def rollback(self):
        """Back to the last verified chunk boundary (a cut, or a chunk that did not match)."""
        self.out.seek(self.offset)
        self.out.truncate()
        self.digest = self._saved.copy()
        self._current = hashlib.sha256()
        self._filled = 0


def verified_prefix(handle, chunks, have, digest):
    """
    Check the first ``have`` bytes of an open ``.part`` file chunk by chunk
    (a cut download, even from an earlier run) and return an
    :class:`Assembler` positioned after the last chunk that matches, ``digest``
    fed with those bytes; the file is truncated there. A later run never
    re-downloads what arrived, and never keeps what does not match.
    """
    end, _ = resume_point(chunks, have)
    offset = index = 0
    handle.seek(0)
    while offset < end:
        length, expected = chunks[index]
        saved, current, left = digest.copy(), hashlib.sha256(), length
        while left:
            data = handle.read(min(BUFFER, left))
            if not data:
                break
            current.update(data)
            digest.update(data)
            left -= len(data)
        if left or current.hexdigest() != expected:
            digest = saved
            break
        offset += length
        index += 1
    handle.seek(offset)
    handle.truncate()
    return Assembler(handle, chunks, index, offset, digest)
