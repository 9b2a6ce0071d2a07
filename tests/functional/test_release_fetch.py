"""
``fleet_fetch.fetch`` (what a kiosk runs to download a release file from
its Pi) against a real HTTP server written here: a ThreadingHTTPServer on
127.0.0.1 that honours ``Range: bytes=N-`` (206 + Content-Range, 416 past the
end) and can be told to misbehave: cut the connection after K bytes (with
the full Content-Length announced), ignore Range, answer another status, or
serve other bytes than the manifest describes (a bit flip, a truncated or a
longer file). Every request is recorded with its Range header and the size
of the ``.part`` file on disk at that moment; the server counts the bytes it
sent.

Loopback only. Files are a few MiB (one 64 MiB file for the constant-memory
check), so the module takes seconds.
"""

import hashlib
import http.server
import os
import random
import re
import socket
import threading
import tracemalloc

import pytest
import requests

import fleet_fetch
import fleet_release

MiB = 1 << 20
SERVE_CHUNK = 64 * 1024
TIMEOUT = (3, 10)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = {}  # URL path -> file on disk to serve
        self.part = None  # the client's .part file, stat'ed at each request
        self.requests = []  # {"path", "range", "part_size", "status"}
        self.sent = 0  # body bytes written to sockets, all requests
        self.cut_after = None  # close the connection after this many body bytes ...
        self.cut_requests = 1  # ... on this many first requests
        self.ignore_range = False  # answer 200 with the whole file, whatever the Range
        self.status = None  # answer this status (and no body) instead
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, path, file_path):
        self.files[path] = str(file_path)
        return self.url + path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest's output quiet
        pass

    def do_GET(self):
        srv = self.server
        part_size = os.path.getsize(srv.part) if srv.part and os.path.exists(srv.part) else None
        rng = self.headers.get("Range")
        with srv.lock:
            number = len(srv.requests)
            record = {"path": self.path, "range": rng, "part_size": part_size, "status": None}
            srv.requests.append(record)
        if srv.status is not None:
            return self._empty(record, srv.status)
        file_path = srv.files.get(self.path)
        if file_path is None:
            return self._empty(record, 404)
        total = os.path.getsize(file_path)
        start = 0
        if rng and not srv.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            if not match:  # fetch only ever asks for "the rest from N": anything else fails the test
                return self._empty(record, 400)
            start = int(match.group(1))
            if start >= total:
                return self._empty(record, 416, {"Content-Range": f"bytes */{total}"})
            record["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            record["status"] = 200
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(total - start))  # always the full length
        self.end_headers()
        budget = None
        if srv.cut_after is not None and number < srv.cut_requests:
            budget = srv.cut_after
            self.close_connection = True
        with open(file_path, "rb") as handle:
            handle.seek(start)
            while True:
                want = SERVE_CHUNK if budget is None else min(SERVE_CHUNK, budget)
                data = handle.read(want)
                if not data:
                    break
                try:
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True
                    return
                with srv.lock:
                    srv.sent += len(data)
                if budget is not None:
                    budget -= len(data)
                    if budget == 0:
                        # a cut: the announced Content-Length is not met
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return

    def _empty(self, record, status, headers=None):
        record["status"] = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def session():
    with requests.Session() as sess:
        sess.trust_env = False  # loopback only: never a proxy from the environment
        yield sess


def random_bytes(size, seed):
    return random.Random(seed).randbytes(size)


def describe(data):
    return {"size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def package(tmp_path, server):
    """A 4 MiB + 3 file served at /kiosk-releases/app/1.0.0/app.bin; the kiosk's part path."""
    data = random_bytes(4 * MiB + 3, seed=1)
    served = tmp_path / "served.bin"
    served.write_bytes(data)
    url = server.add("/kiosk-releases/app/1.0.0/app.bin", served)
    kiosk = tmp_path / "kiosk"
    kiosk.mkdir()
    part = kiosk / "app.bin.part"
    server.part = str(part)
    return {"data": data, "served": served, "url": url, "part": part, "expected": describe(data)}


def fetch(session, pkg, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT)
    return fleet_fetch.fetch(session, pkg["url"], str(pkg["part"]), pkg["expected"], "files.app.bin", **kwargs)


def no_temp_files(directory):
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- the good paths


def test_plain_download_is_verified_and_left_as_the_part(server, session, package):
    report = fetch(session, package)
    assert package["part"].read_bytes() == package["data"]
    assert report == {"url": package["url"], "fetched": len(package["data"]), "resumed_from": []}
    assert [r["range"] for r in server.requests] == [None]
    assert server.sent == len(package["data"])


def test_an_empty_file_is_verified_without_a_download(server, session, tmp_path):
    served = tmp_path / "empty.txt"
    served.write_bytes(b"")
    url = server.add("/kiosk-releases/app/1.0.0/empty.txt", served)
    part = tmp_path / "empty.txt.part"
    report = fleet_fetch.fetch(session, url, str(part), describe(b""), "files.empty.txt", timeout=TIMEOUT)
    assert part.exists() and part.read_bytes() == b"" and report["fetched"] == 0


def test_a_cut_mid_way_is_resumed_with_range_from_what_is_on_disk(server, session, package):
    size = len(package["data"])
    server.cut_after = size // 2 + 12345  # not on a chunk boundary
    report = fetch(session, package)
    assert package["part"].read_bytes() == package["data"]
    first, second = server.requests
    assert first["range"] is None and first["part_size"] is None
    on_disk = second["part_size"]
    assert 0 < on_disk <= server.cut_after
    assert second["range"] == f"bytes={on_disk}-"
    assert second["status"] == 206
    assert report["resumed_from"] == [on_disk]
    assert report["fetched"] == size  # every byte kept: what arrived before the cut plus the rest
    assert server.sent < 1.2 * size, f"server sent {server.sent} bytes for a {size} byte file"


def test_a_part_left_by_a_previous_boot_is_resumed(server, session, package):
    data, half = package["data"], len(package["data"]) // 2
    package["part"].write_bytes(data[:half])
    report = fetch(session, package)
    assert package["part"].read_bytes() == data
    assert [(r["range"], r["status"]) for r in server.requests] == [(f"bytes={half}-", 206)]
    assert server.sent == len(data) - half
    assert report["resumed_from"] == [half] and report["fetched"] == len(data) - half


def test_a_complete_part_is_verified_without_a_request(server, session, package):
    package["part"].write_bytes(package["data"])
    report = fetch(session, package)
    assert server.requests == []
    assert report["fetched"] == 0
    assert package["part"].read_bytes() == package["data"]


def test_a_part_longer_than_the_manifest_is_started_over(server, session, package):
    package["part"].write_bytes(package["data"] + b"stale tail")
    fetch(session, package)
    assert [r["range"] for r in server.requests] == [None]
    assert package["part"].read_bytes() == package["data"]


def test_a_server_ignoring_range_restarts_the_download_cleanly(server, session, package):
    data = package["data"]
    package["part"].write_bytes(data[: len(data) // 3])
    server.ignore_range = True
    report = fetch(session, package)
    assert package["part"].read_bytes() == data
    assert [(r["range"], r["status"]) for r in server.requests] == [(f"bytes={len(data) // 3}-", 200)]
    assert report["resumed_from"] == [] and report["fetched"] == len(data)


def test_a_cut_then_a_server_ignoring_range_restarts_cleanly(server, session, package):
    data = package["data"]
    server.cut_after = len(data) // 2
    server.ignore_range = True
    fetch(session, package)
    assert package["part"].read_bytes() == data
    assert [r["status"] for r in server.requests] == [200, 200]
    assert server.requests[1]["range"] == f"bytes={server.requests[1]['part_size']}-"


def test_repeated_cuts_are_resumed_until_complete(server, session, package):
    data = package["data"]
    server.cut_after = MiB + 7
    server.cut_requests = 10  # every request is cut: progress only through resumption
    report = fetch(session, package, retries=10)
    assert package["part"].read_bytes() == data
    ranges = [r["range"] for r in server.requests]
    assert ranges[0] is None and all(r.startswith("bytes=") for r in ranges[1:])
    offsets = [int(r[6:-1]) for r in ranges[1:]]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # always forward
    assert report["resumed_from"] == offsets


def test_cuts_shorter_than_a_read_chunk_still_make_progress(server, session, package):
    # A flaky link that drops every ~600 KiB: each attempt must keep what
    # arrived, else the download never gets anywhere, however many retries.
    server.cut_after = 600 * 1024
    server.cut_requests = 100
    fetch(session, package, retries=12)
    assert package["part"].read_bytes() == package["data"]
    assert server.sent < 1.2 * len(package["data"])


def test_cuts_beyond_the_retries_fail_and_keep_the_part_for_later(server, session, package):
    server.cut_after = MiB + 7
    server.cut_requests = 100
    with pytest.raises(fleet_release.SourceError, match=r"files\.app\.bin: download from .* failed after 2 attempts"):
        fetch(session, package, retries=1)
    kept = package["part"].read_bytes()
    assert 0 < len(kept) < len(package["data"]) and package["data"].startswith(kept)
    # the next run (next boot) carries on from there
    server.cut_after = None
    fetch(session, package)
    assert package["part"].read_bytes() == package["data"]
    assert server.requests[-1]["range"] == f"bytes={len(kept)}-"


# --------------------------------------------------------------------------- bad bytes, bad answers


def serve_instead(package, data):
    package["served"].write_bytes(data)


def test_a_bit_flip_is_an_md5_mismatch_and_the_part_is_deleted(server, session, package):
    bad = bytearray(package["data"])
    bad[len(bad) * 3 // 4] ^= 0x10
    serve_instead(package, bytes(bad))
    with pytest.raises(fleet_release.IntegrityError, match=r"^files\.app\.bin: md5 mismatch"):
        fetch(session, package)
    assert not package["part"].exists()
    assert no_temp_files(package["part"].parent) == []


def test_a_corrupt_part_from_a_previous_boot_is_not_trusted(server, session, package):
    data = package["data"]
    corrupt = bytearray(data[: len(data) // 2])
    corrupt[100] ^= 0x01
    package["part"].write_bytes(bytes(corrupt))
    with pytest.raises(fleet_release.IntegrityError, match="md5 mismatch"):
        fetch(session, package)
    assert not package["part"].exists()
    fetch(session, package)  # and the next try starts from zero
    assert package["part"].read_bytes() == data


def test_a_truncated_file_on_the_server_is_refused_and_no_part_is_left(server, session, package):
    serve_instead(package, package["data"][: -(MiB // 2)])
    with pytest.raises(fleet_release.IntegrityError, match=r"files\.app\.bin: .* is shorter than the manifest's"):
        fetch(session, package)
    assert not package["part"].exists()
    assert no_temp_files(package["part"].parent) == []


def test_a_longer_file_on_the_server_is_refused_and_no_part_is_left(server, session, package):
    serve_instead(package, package["data"] + b"appended by someone")
    with pytest.raises(fleet_release.IntegrityError, match=r"files\.app\.bin: .* is longer than the manifest's"):
        fetch(session, package)
    assert not package["part"].exists()
    assert no_temp_files(package["part"].parent) == []


def test_a_missing_file_is_a_404(server, session, package):
    package["url"] = server.url + "/kiosk-releases/app/1.0.0/nope.bin"
    with pytest.raises(fleet_release.SourceError, match=r"files\.app\.bin: .*nope\.bin .*\(404\)"):
        fetch(session, package)
    assert len(server.requests) == 1  # a 404 is not retried
    assert not package["part"].exists()


def test_another_http_status_is_named(server, session, package):
    server.status = 503
    with pytest.raises(fleet_release.SourceError, match="HTTP 503"):
        fetch(session, package)


def test_a_server_that_is_down_fails_after_the_retries(session, package, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on port now: connection refused at each attempt
    package["url"] = f"http://127.0.0.1:{port}/kiosk-releases/app/1.0.0/app.bin"
    with pytest.raises(fleet_release.SourceError, match=r"download from .* failed after 3 attempts"):
        fetch(session, package, retries=2)
    assert not package["part"].exists()


# --------------------------------------------------------------------------- constant memory


def test_memory_stays_constant_for_a_large_file(server, session, tmp_path):
    size = 64 * MiB + 5
    served = tmp_path / "big.bin"
    md5, sha = hashlib.md5(), hashlib.sha256()
    block = random_bytes(MiB, seed=2)
    with open(served, "wb") as out:
        for i in range(size // MiB + 1):
            data = (i.to_bytes(8, "big") + block)[: min(MiB, size - i * MiB)]
            out.write(data)
            md5.update(data)
            sha.update(data)
    assert os.path.getsize(served) == size
    expected = {"size": size, "md5": md5.hexdigest(), "sha256": sha.hexdigest()}
    url = server.add("/kiosk-releases/big/1.0.0/big.bin", served)
    part = tmp_path / "big.bin.part"
    server.part = str(part)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        report = fleet_fetch.fetch(session, url, str(part), expected, "files.big.bin", timeout=TIMEOUT)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["fetched"] == size
    assert os.path.getsize(part) == size
    assert peak < 8 * MiB, f"peak Python allocation {peak / MiB:.1f} MiB while fetching {size / MiB:.0f} MiB"


# --------------------------------------------------------------------------- pacing (the bandwidth cap's hook)


def test_pace_is_told_every_network_read_including_after_a_cut(server, session, package):
    paced = []
    server.cut_after = MiB + 7
    report = fetch(session, package, pace=paced.append)
    assert package["part"].read_bytes() == package["data"]
    assert sum(paced) == report["fetched"] == len(package["data"])
    assert len(paced) >= len(package["data"]) // (64 * 1024) and max(paced) <= 64 * 1024  # after each read


def test_a_pace_that_is_not_callable_is_refused_before_any_request(server, session, package):
    with pytest.raises(fleet_release.ReleaseError, match=r"^pace: expected a callable"):
        fetch(session, package, pace="1mbit")
    assert server.requests == []
