"""
Delta transfers end to end (``fleet_fetch.fetch_release`` with ``bases``)
against a real HTTP server written here: a ThreadingHTTPServer on 127.0.0.1
that honours ``Range: bytes=a-b`` and ``bytes=N-`` (206 + Content-Range, 416
past the end) and can be told to misbehave: cut the connection after K body
bytes on its first requests, ignore Range, or serve other bytes than the
signed manifest describes. Every request is recorded with its Range header;
the server counts the body bytes it sent (the WAN bytes).

The kiosk (or Pi) holds version 1.0.0 with its signed manifest; 2.0.0
differs in a few regions. Loopback only; files of a few MiB, seconds.
"""

import hashlib
import http.server
import json
import os
import random
import re
import socket
import threading

import pytest
import requests

import fleet_delta
import fleet_fetch
import fleet_release
import fleet_sign

MiB = 1 << 20
KiB = 1 << 10
SERVE_CHUNK = 64 * KiB
NAME = "app"


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = {}  # URL path -> bytes served
        self.requests = []  # {"path", "range", "status"}
        self.sent = 0  # body bytes written to sockets, all requests (manifest included)
        self.file_sent = 0  # the same, release files only
        self.cut_after = None  # close the connection after this many body bytes ...
        self.cut_requests = 1  # ... on this many first file requests
        self.ignore_range = False
        self.lock = threading.Lock()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.server_address[1]}/kiosk-releases/"

    def publish(self, version, files, manifest_raw):
        for file_name, data in files.items():
            self.files[f"/kiosk-releases/{NAME}/{version}/{file_name}"] = data
        self.files[f"/kiosk-releases/{NAME}/{version}/manifest.json"] = manifest_raw

    def file_requests(self):
        return [r for r in self.requests if not r["path"].endswith("manifest.json")]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest's output quiet
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        is_file = not self.path.endswith("manifest.json")
        with srv.lock:
            number = len(srv.file_requests())
            record = {"path": self.path, "range": rng, "status": None}
            srv.requests.append(record)
        data = srv.files.get(self.path)
        if data is None:
            return self._empty(record, 404)
        total, start, end = len(data), 0, len(data) - 1
        if rng and not srv.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            if not match:
                return self._empty(record, 400)
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), total - 1)
            if start >= total:
                return self._empty(record, 416, {"Content-Range": f"bytes */{total}"})
            record["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        else:
            record["status"] = 200
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end + 1 - start))  # always the full length
        self.end_headers()
        budget = None
        if is_file and srv.cut_after is not None and number < srv.cut_requests:
            budget = srv.cut_after
            self.close_connection = True
        pos = start
        while pos <= end:
            want = min(SERVE_CHUNK, end + 1 - pos) if budget is None else min(SERVE_CHUNK, end + 1 - pos, budget)
            piece = data[pos:pos + want]
            try:
                self.wfile.write(piece)
            except OSError:
                self.close_connection = True
                return
            pos += len(piece)
            with srv.lock:
                srv.sent += len(piece)
                if is_file:
                    srv.file_sent += len(piece)
            if budget is not None:
                budget -= len(piece)
                if budget == 0:  # a cut: the announced Content-Length is not met
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return

    def _empty(self, record, status, headers=None):
        record["status"] = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def start_server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return srv, thread


@pytest.fixture
def servers():
    started = []

    def make():
        started.append(start_server())
        return started[-1][0]

    yield make
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def server(servers):
    return servers()


@pytest.fixture
def session():
    with requests.Session() as sess:
        sess.trust_env = False  # loopback only: never a proxy from the environment
        yield sess


@pytest.fixture
def keys():
    return fleet_sign.new_key_pair()


def describe(path, data):
    with open(path, "wb") as out:
        out.write(data)
    return {"size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
            "chunks": fleet_delta.chunk_file(path)}


def signed(version, files, key, tmp_path):
    """(manifest, raw bytes) of ``files`` ({name: bytes}), chunked with fastcdc as publish does."""
    scratch = tmp_path / f"scratch-{version}"
    scratch.mkdir(parents=True, exist_ok=True)
    entries = {n: describe(str(scratch / n), d) for n, d in files.items()}
    doc = fleet_sign.sign_manifest(fleet_release.build_manifest(NAME, version, entries, install=[]), key)
    return doc, json.dumps(doc).encode()


def edit(data, regions, seed):
    """``data`` with ``regions`` ([(offset, length)]) replaced by other random bytes (same size)."""
    out, rnd = bytearray(data), random.Random(seed)
    for offset, length in regions:
        out[offset:offset + length] = rnd.randbytes(length)
    return bytes(out)


@pytest.fixture
def release(tmp_path, server, keys):
    """1.0.0 on the kiosk's disk (files + signed manifest), 2.0.0 on the server; returns what the tests need."""
    v1 = {"app.bin": random.Random(1).randbytes(4 * MiB + 3), "conf.txt": b"mode=kiosk\n" * 50}
    v2 = {"app.bin": edit(v1["app.bin"], [(300 * KiB, 20 * KiB), (2 * MiB, 1 * MiB), (4 * MiB - 5000, 100)], 2),
          "conf.txt": v1["conf.txt"]}
    root = tmp_path / "kiosk"
    base = root / NAME / "1.0.0"
    base.mkdir(parents=True)
    doc1, raw1 = signed("1.0.0", v1, keys[0], tmp_path)
    for file_name, data in v1.items():
        (base / file_name).write_bytes(data)
    (base / "manifest.json").write_bytes(raw1)
    doc2, raw2 = signed("2.0.0", v2, keys[0], tmp_path)
    server.publish("2.0.0", v2, raw2)
    index = fleet_delta.base_index([(str(base), doc1)])
    planned = fleet_delta.plan_bytes(fleet_delta.plan(doc2["files"]["app.bin"], index))
    return {"v1": v1, "v2": v2, "doc2": doc2, "raw2": raw2, "root": root, "base": str(base), "planned": planned,
            "ops": fleet_delta.plan(doc2["files"]["app.bin"], index), "keys": keys}


def fetch_release(session, rel, sources, **kwargs):
    kwargs.setdefault("bases", [rel["base"]])
    return fleet_fetch.fetch_release(session, sources, NAME, "2.0.0", str(rel["root"]), rel["keys"][1], **kwargs)


def work_file(rel, file_name):
    return rel["root"] / ".staging" / f"{NAME}-2.0.0" / file_name


# --------------------------------------------------------------------------- the good paths


def test_only_the_changed_chunks_cross_the_wire_in_coalesced_ranges(server, session, release):
    paced = []
    got = fetch_release(session, release, [("pi", server.base)], pace=paced.append)
    assert got["modes"] == {"app.bin": "delta", "conf.txt": "local"}
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]
    assert work_file(release, "conf.txt").read_bytes() == release["v2"]["conf.txt"]
    size = len(release["v2"]["app.bin"])
    planned = release["planned"]
    assert 0 < planned["fetch"] < size * 0.45 and planned["reused"] + planned["fetch"] == size
    assert got["fetched"] == server.file_sent == planned["fetch"] == sum(paced)
    assert got["reused"] == planned["reused"] + len(release["v2"]["conf.txt"])
    fetches = [op for op in release["ops"] if op[0] == "fetch"]
    ranges = [r["range"] for r in server.file_requests()]
    assert ranges == [f"bytes={op[1]}-{op[1] + op[2] - 1}" for op in fetches]  # one request per run of chunks
    assert len(ranges) < sum(len(op[3]) for op in fetches)  # adjacent chunks were coalesced
    assert not work_file(release, "app.bin.part").exists()


def test_a_rollback_to_content_on_disk_costs_no_file_byte(server, session, release, keys, tmp_path):
    doc, raw = signed("2.0.0", release["v1"], keys[0], tmp_path / "rb")  # 2.0.0 republishes 1.0.0's content
    server.publish("2.0.0", release["v1"], raw)
    got = fetch_release(session, release, [("pi", server.base)])
    assert got["modes"] == {"app.bin": "local", "conf.txt": "local"}
    assert got["fetched"] == 0 and server.file_requests() == [] and server.file_sent == 0
    assert got["reused"] == sum(len(d) for d in release["v1"].values())
    assert got["doc"] == doc
    assert work_file(release, "app.bin").read_bytes() == release["v1"]["app.bin"]


def test_without_bases_every_file_comes_whole(server, session, release):
    got = fetch_release(session, release, [("pi", server.base)], bases=())
    assert got["modes"] == {"app.bin": "whole", "conf.txt": "whole"} and got["reused"] == 0
    assert server.file_sent == got["fetched"] == sum(len(d) for d in release["v2"].values())
    assert [r["range"] for r in server.file_requests()] == [None, None]


def test_a_server_ignoring_range_gets_a_whole_fetch(server, session, release):
    server.ignore_range = True
    got = fetch_release(session, release, [("pi", server.base)])
    assert got["modes"]["app.bin"] == "whole"
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]


# --------------------------------------------------------------------------- cuts and resume


def test_a_cut_mid_range_is_resumed_from_the_last_chunk_boundary(server, session, release):
    fetches = [op for op in release["ops"] if op[0] == "fetch"]
    big = max(range(len(fetches)), key=lambda i: fetches[i][2])
    assert fetches[big][2] > 600 * KiB
    server.cut_after = 600 * KiB  # inside the 1 MiB changed region's range (the smaller ones end before)
    server.cut_requests = big + 1
    got = fetch_release(session, release, [("pi", server.base)], retries=3)
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]
    cut, after = server.file_requests()[big:big + 2]
    cut_start, after_start = (int(r["range"][6:].split("-")[0]) for r in (cut, after))
    assert cut_start == fetches[big][1]
    assert cut_start < after_start <= cut_start + 600 * KiB  # resumed from a boundary, not restarted
    assert server.file_sent <= release["planned"]["fetch"] + fleet_delta.MAX_CHUNK  # at most one chunk again
    assert got["resumed"] is True


def test_a_cut_run_is_continued_by_the_next_run_without_fetching_twice(server, session, release):
    big = max((op for op in release["ops"] if op[0] == "fetch"), key=lambda op: op[2])
    before_big = sum(op[2] for op in release["ops"] if op[0] == "fetch" and op[1] < big[1])
    server.cut_after = 600 * KiB
    server.cut_requests = 100  # every request of this run is cut after 600 KiB
    with pytest.raises(fleet_release.ReleaseError, match=r"no source delivered.*delta download .* failed after 1 attempts"):
        fetch_release(session, release, [("pi", server.base)], retries=0)
    part = work_file(release, "app.bin.part")
    kept = part.stat().st_size
    assert big[1] < kept <= big[1] + 600 * KiB  # the reassembled prefix stays, cut at a chunk boundary
    first_run = server.file_sent
    assert first_run == before_big + 600 * KiB
    server.cut_after = None
    server.requests.clear()
    got = fetch_release(session, release, [("pi", server.base)], retries=0)
    second_run = server.file_sent - first_run
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]
    assert int(server.file_requests()[0]["range"][6:].split("-")[0]) == kept  # from the boundary on
    rest = release["planned"]["fetch"] - (kept - big[1]) - before_big
    assert second_run == got["fetched"] == rest
    assert first_run + second_run <= release["planned"]["fetch"] + fleet_delta.MAX_CHUNK


# --------------------------------------------------------------------------- bad bytes


def test_a_corrupted_chunk_is_refused_naming_file_and_chunk_and_the_next_source_delivers(servers, session, release):
    bad_srv, good_srv = servers(), servers()
    corrupt = bytearray(release["v2"]["app.bin"])
    corrupt[2 * MiB + 1000] ^= 0x08
    bad_srv.publish("2.0.0", {"app.bin": bytes(corrupt), "conf.txt": release["v2"]["conf.txt"]}, release["raw2"])
    good_srv.publish("2.0.0", release["v2"], release["raw2"])
    alerts = []
    got = fetch_release(session, release, [("bad", bad_srv.base), ("good", good_srv.base)],
                        bad_copy=lambda exc, base: alerts.append((type(exc), str(exc), base)))
    assert got["source"] == "good" and got["modes"]["app.bin"] == "delta"
    (cls, message, base), = alerts
    assert cls is fleet_release.IntegrityError and base == bad_srv.base
    assert re.match(r"^app 2\.0\.0 app\.bin: chunk \d+ \(bytes \d+-\d+\): sha256 mismatch", message), message
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]


def test_a_corrupted_chunk_with_no_good_source_leaves_nothing_live(server, session, release):
    corrupt = bytearray(release["v2"]["app.bin"])
    corrupt[300 * KiB + 7] ^= 0x01
    server.publish("2.0.0", {"app.bin": bytes(corrupt), "conf.txt": release["v2"]["conf.txt"]}, release["raw2"])
    alerts = []
    with pytest.raises(fleet_release.ReleaseError, match=r"app\.bin: chunk \d+ .*sha256 mismatch"):
        fetch_release(session, release, [("pi", server.base)], bad_copy=lambda exc, base: alerts.append(exc))
    assert len(alerts) == 1 and isinstance(alerts[0], fleet_release.IntegrityError)
    assert not work_file(release, "app.bin.part").exists() and not work_file(release, "app.bin").exists()
    assert not (release["root"] / NAME / "2.0.0").exists()


def test_a_base_whose_bytes_differ_from_its_manifest_is_not_used(server, session, release):
    rotten = bytearray(release["v1"]["app.bin"])
    rotten[100 * KiB] ^= 0x20  # bit rot on the kiosk's disk, same size: its manifest still lists the old chunk
    with open(os.path.join(release["base"], "app.bin"), "wb") as out:
        out.write(rotten)
    got = fetch_release(session, release, [("pi", server.base)])
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]
    assert got["modes"]["app.bin"] == "delta"
    covered = [tuple(int(x) for x in r["range"][6:].split("-")) for r in server.file_requests()]
    assert any(a <= 100 * KiB <= b for a, b in covered)  # the rotten chunk came from the server
    assert got["fetched"] > release["planned"]["fetch"]


def test_a_rotten_base_file_is_not_reused_whole(server, session, release):
    path = os.path.join(release["base"], "conf.txt")
    with open(path, "r+b") as out:
        out.write(b"X")
    got = fetch_release(session, release, [("pi", server.base)])
    assert got["modes"]["conf.txt"] != "local"
    assert work_file(release, "conf.txt").read_bytes() == release["v2"]["conf.txt"]


def test_a_served_file_of_another_size_is_refused(server, session, release):
    server.publish("2.0.0", {"app.bin": release["v2"]["app.bin"] + b"tail", "conf.txt": release["v2"]["conf.txt"]},
                   release["raw2"])
    with pytest.raises(fleet_release.ReleaseError, match=r"app\.bin: .* is 4194311 bytes, the manifest says 4194307"):
        fetch_release(session, release, [("pi", server.base)])


def test_bad_bases_and_pace_are_named(server, session, release):
    with pytest.raises(fleet_release.ReleaseError, match=r"^bases: "):
        fetch_release(session, release, [("pi", server.base)], bases=release["base"])
    with pytest.raises(fleet_release.ReleaseError, match=r"^pace: "):
        fetch_release(session, release, [("pi", server.base)], pace=5)
    assert server.requests == []


def test_a_part_left_as_a_link_to_a_held_file_is_never_written_into(server, session, release):
    # a run killed between linking a base file as the part and its rename leaves the part as a second
    # name of the held version's file; a later run that fetches the file must not write into that inode
    held = os.path.join(release["base"], "app.bin")
    work = work_file(release, "app.bin.part")
    work.parent.mkdir(parents=True, exist_ok=True)
    os.link(held, work)
    got = fetch_release(session, release, [("pi", server.base)], bases=())
    assert got["modes"]["app.bin"] == "whole"
    assert work_file(release, "app.bin").read_bytes() == release["v2"]["app.bin"]
    with open(held, "rb") as handle:
        assert handle.read() == release["v1"]["app.bin"]  # the held version is untouched
