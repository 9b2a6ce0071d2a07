"""fleet_delta: chunking at publish, bases, plans with coalesced ranges, the chunk-checked writer, resume points."""

import hashlib
import io
import json
import os
import random

import pytest

import fleet_delta
import fleet_fetch
import fleet_release
from fleet_release import IntegrityError, ReleaseError

KiB = 1024
MiB = 1 << 20


def rand(size, seed):
    return random.Random(seed).randbytes(size)


def chunks_of(data, lengths):
    out, offset = [], 0
    for length in lengths:
        out.append([length, hashlib.sha256(data[offset:offset + length]).hexdigest()])
        offset += length
    assert offset == len(data)
    return out


def entry(data, chunks=None):
    doc = {"size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
    if chunks is not None:
        doc["chunks"] = chunks
    return doc


def write_base(directory, files, name="app", version="1.0.0"):
    """A release directory with ``files`` ({name: (bytes, chunks)}) and its (unsigned) manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for file_name, (data, chunks) in files.items():
        (directory / file_name).write_bytes(data)
        entries[file_name] = entry(data, chunks)
    doc = fleet_release.build_manifest(name, version, entries, created_at="2026-12-01T00:00:00+00:00")
    (directory / "manifest.json").write_text(json.dumps(doc))
    return str(directory), doc


# --------------------------------------------------------------------------- chunking


def test_chunk_file_cuts_by_content_within_the_limits_and_lists_sha256(tmp_path):
    assert fleet_delta.cdc_available()[0]
    data = rand(3 * MiB + 123, 1)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    chunks = fleet_delta.chunk_file(str(path))
    assert sum(c[0] for c in chunks) == len(data)
    assert all(fleet_delta.MIN_CHUNK <= c[0] <= fleet_delta.MAX_CHUNK for c in chunks[:-1])
    assert 0 < chunks[-1][0] <= fleet_delta.MAX_CHUNK
    offset = 0
    for length, digest in chunks:
        assert hashlib.sha256(data[offset:offset + length]).hexdigest() == digest
        offset += length
    assert 20 < len(chunks) < 200  # ~64 KiB on average
    assert fleet_release.check_chunks(chunks, len(data)) == chunks
    with open(path, "rb") as handle:  # an open descriptor gives the same list, and stays open
        assert fleet_delta.chunk_file(handle.fileno()) == chunks
        assert handle.read(1) == data[:1]


def test_an_insertion_shifts_no_later_boundary(tmp_path):
    data = rand(2 * MiB, 2)
    edited = data[:MiB] + b"inserted bytes" + data[MiB:]
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(edited)
    old = {d for _, d in fleet_delta.chunk_file(str(tmp_path / "a"))}
    new = fleet_delta.chunk_file(str(tmp_path / "b"))
    changed = [c for c in new if c[1] not in old]
    assert 1 <= len(changed) <= 2 and sum(c[0] for c in changed) <= 2 * fleet_delta.MAX_CHUNK


def test_chunk_file_of_an_empty_file_and_bad_input(tmp_path, monkeypatch):
    (tmp_path / "empty").write_bytes(b"")
    assert fleet_delta.chunk_file(str(tmp_path / "empty")) == []
    with pytest.raises(ReleaseError, match=r"^x\.chunks: expected a path"):
        fleet_delta.chunk_file(["nope"], "x.chunks")
    with pytest.raises(ReleaseError, match=r"^chunks: cannot read"):
        fleet_delta.chunk_file(str(tmp_path / "missing"))
    monkeypatch.setattr(fleet_delta, "cdc_available", lambda: (False, False))
    with pytest.raises(ReleaseError, match=r"^chunks: the fastcdc package is missing"):
        fleet_delta.chunk_file(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- bases


def test_load_bases_keeps_valid_manifests_of_the_release_only(tmp_path):
    data = rand(100 * KiB, 3)
    good = write_base(tmp_path / "1.0.0", {"app.bin": (data, chunks_of(data, [60 * KiB, 40 * KiB]))})
    write_base(tmp_path / "other", {"app.bin": (data, None)}, name="other-app")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "manifest.json").write_text("{")
    bases = fleet_delta.load_bases([good[0], str(tmp_path / "other"), str(tmp_path / "torn"),
                                    str(tmp_path / "missing")], "app")
    assert bases == [good]
    with pytest.raises(ReleaseError, match=r"^bases: expected a list"):
        fleet_delta.load_bases("/srv/x", "app")
    with pytest.raises(ReleaseError, match=r"^bases\[1\]: "):
        fleet_delta.load_bases([good[0], 5], "app")


def test_base_index_and_same_file_skip_files_of_another_size_on_disk(tmp_path):
    data = rand(100 * KiB, 4)
    base = write_base(tmp_path / "1.0.0", {"app.bin": (data, chunks_of(data, [60 * KiB, 40 * KiB])),
                                           "conf.txt": (b"conf", None)})
    index = fleet_delta.base_index([base])
    path = str(tmp_path / "1.0.0" / "app.bin")
    first, second = chunks_of(data, [60 * KiB, 40 * KiB])
    assert index == {first[1]: (path, 0, 60 * KiB), second[1]: (path, 60 * KiB, 40 * KiB)}
    assert fleet_delta.same_file([base], entry(data)) == path
    assert fleet_delta.same_file([base], entry(data + b"x")) is None
    (tmp_path / "1.0.0" / "app.bin").write_bytes(data[:-1])  # truncated on disk: not offered at all
    assert fleet_delta.base_index([base]) == {}
    assert fleet_delta.same_file([base], entry(data)) is None


# --------------------------------------------------------------------------- plans


def test_plan_copies_what_bases_hold_and_coalesces_adjacent_fetches():
    data = rand(10 * 32 * KiB, 5)
    chunks = chunks_of(data, [32 * KiB] * 10)
    held = {chunks[i][1]: ("/b/app.bin", 1000 + i, 32 * KiB) for i in (0, 4, 9)}
    ops = fleet_delta.plan(entry(data, chunks), held)
    assert [op[0] for op in ops] == ["copy", "fetch", "copy", "fetch", "copy"]
    assert ops[0] == ("copy", "/b/app.bin", 1000, 32 * KiB, chunks[0][1])
    assert ops[1] == ("fetch", 32 * KiB, 3 * 32 * KiB, [tuple(c) for c in chunks[1:4]])
    assert ops[3][1:3] == (5 * 32 * KiB, 4 * 32 * KiB)
    assert fleet_delta.plan_bytes(ops) == {"reused": 3 * 32 * KiB, "fetch": 7 * 32 * KiB}


def test_a_fetch_range_is_capped_and_a_larger_chunk_goes_alone():
    data = rand(8 * 16 * KiB, 6)
    chunks = chunks_of(data, [16 * KiB] * 8)
    ops = fleet_delta.plan(entry(data, chunks), {}, max_range=48 * KiB)
    assert [(op[1], op[2], len(op[3])) for op in ops] == [(0, 48 * KiB, 3), (48 * KiB, 48 * KiB, 3),
                                                         (96 * KiB, 32 * KiB, 2)]
    big = chunks_of(data, [100 * KiB, 28 * KiB])
    assert [op[2] for op in fleet_delta.plan(entry(data, big), {}, max_range=48 * KiB)] == [100 * KiB, 28 * KiB]


def test_a_base_chunk_of_another_length_is_not_used():
    data = rand(64 * KiB, 7)
    chunks = chunks_of(data, [32 * KiB, 32 * KiB])
    ops = fleet_delta.plan(entry(data, chunks), {chunks[0][1]: ("/b", 0, 31 * KiB)})
    assert ops == [("fetch", 0, 64 * KiB, [tuple(c) for c in chunks])]


def test_plan_from_a_boundary_and_refusals():
    data = rand(96 * KiB, 8)
    chunks = chunks_of(data, [32 * KiB] * 3)
    ops = fleet_delta.plan(entry(data, chunks), {chunks[2][1]: ("/b", 0, 32 * KiB)}, start=32 * KiB)
    assert ops == [("fetch", 32 * KiB, 32 * KiB, [tuple(chunks[1])]), ("copy", "/b", 0, 32 * KiB, chunks[2][1])]
    assert fleet_delta.plan(entry(data, chunks), {}, start=96 * KiB) == []
    for kwargs, match in [({"start": 100}, r"^start: 100 is not a chunk boundary"),
                          ({"start": -1}, r"^start: "), ({"max_range": 0}, r"^max_range: "),
                          ({"max_range": True}, r"^max_range: ")]:
        with pytest.raises(ReleaseError, match=match):
            fleet_delta.plan(entry(data, chunks), {}, **kwargs)
    with pytest.raises(ReleaseError, match=r"^chunks: the manifest entry lists no chunks"):
        fleet_delta.plan(entry(data), {})


def test_resume_point_is_the_last_boundary_at_or_below():
    chunks = [[10, "a"], [20, "b"], [5, "c"]]
    assert [fleet_delta.resume_point(chunks, h) for h in (0, 9, 10, 29, 30, 34, 35, 99)] == [
        (0, 0), (0, 0), (10, 1), (10, 1), (30, 2), (30, 2), (35, 3), (35, 3)]


# --------------------------------------------------------------------------- writing and resuming


def test_the_assembler_checks_each_chunk_and_rolls_a_bad_one_back():
    data = rand(96 * KiB, 9)
    chunks = chunks_of(data, [32 * KiB] * 3)
    out, digest = io.BytesIO(), fleet_fetch.Digest()
    asm = fleet_delta.Assembler(out, chunks, 0, 0, digest)
    asm.write(data[:40 * KiB])  # a whole chunk and part of the next, in one write
    assert (asm.index, asm.offset) == (1, 32 * KiB)
    bad = bytearray(data[40 * KiB:64 * KiB])
    bad[5] ^= 1
    with pytest.raises(fleet_delta.ChunkMismatch, match=r"^chunk 1 \(bytes 32768-65535\): sha256 mismatch") as info:
        asm.write(bytes(bad))
    assert (info.value.index, info.value.offset) == (1, 32 * KiB)
    assert isinstance(info.value, IntegrityError)
    assert out.getvalue() == data[:32 * KiB] and asm.digest.size == 32 * KiB  # back to the boundary
    asm.write(data[32 * KiB:])
    assert asm.done and out.getvalue() == data
    assert asm.digest.result() == fleet_fetch.Digest().result() | entry(data)
    with pytest.raises(IntegrityError, match=r"more bytes than the manifest's"):
        asm.write(b"x")


def test_the_assembler_rolls_a_cut_back_to_the_last_boundary():
    data = rand(64 * KiB, 10)
    chunks = chunks_of(data, [32 * KiB] * 2)
    out = io.BytesIO()
    asm = fleet_delta.Assembler(out, chunks, 0, 0, fleet_fetch.Digest())
    asm.write(data[:50 * KiB])
    asm.rollback()
    assert out.getvalue() == data[:32 * KiB] and asm.digest.size == 32 * KiB
    asm.write(data[32 * KiB:])
    assert asm.digest.result()["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("have, corrupt_at, expect_offset", [
    (0, None, 0),
    (50 * KiB, None, 32 * KiB),  # a cut mid-chunk: truncated to the boundary below
    (96 * KiB, None, 96 * KiB),
    (90 * KiB, 40 * KiB, 32 * KiB),  # a bad byte in chunk 1: kept up to chunk 0 only
    (90 * KiB, 10, 0),
])
def test_verified_prefix_truncates_to_the_last_good_boundary(tmp_path, have, corrupt_at, expect_offset):
    data = rand(128 * KiB, 11)
    chunks = chunks_of(data, [32 * KiB] * 4)
    prefix = bytearray(data[:have])
    if corrupt_at is not None:
        prefix[corrupt_at] ^= 0x40
    part = tmp_path / "f.part"
    part.write_bytes(bytes(prefix))
    with open(part, "r+b") as handle:
        asm = fleet_delta.verified_prefix(handle, chunks, have, fleet_fetch.Digest())
        assert (asm.offset, asm.digest.size) == (expect_offset, expect_offset)
        assert os.path.getsize(part) == expect_offset
        asm.write(data[expect_offset:])
    assert part.read_bytes() == data
    assert asm.digest.result() == entry(data)


# --------------------------------------------------------------------------- the manifest's chunks


def test_chunk_lists_that_do_not_sum_to_the_size_are_refused():
    data = rand(64 * KiB, 12)
    chunks = chunks_of(data, [32 * KiB, 32 * KiB])
    with pytest.raises(ReleaseError, match=r"^f\.chunks: the chunk lengths sum to 65536, the file's size is 65537"):
        fleet_release.check_chunks(chunks, len(data) + 1, "f.chunks")
    assert fleet_release.check_chunks([], 0) == []
    assert fleet_release.chunk_errors([[1, "a" * 64]], 0) == ["chunks: the chunk lengths sum to 1, the file's size is 0"]
