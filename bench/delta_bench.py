"""
Delta transfers of releases (``fleet_delta`` + ``fleet_fetch.fetch_release``
with ``bases``) against ``zstd --patch-from``. Prints figures with their
targets; asserts nothing.

    .venv/bin/python bench/delta_bench.py [--size-mb 200] [--quick] [--keep-going]

A ``--size-mb`` release (one file of random bytes, fixed seed) is published
as 1.0.0 and as versions with 5 % (10 contiguous regions), 20 % (40 regions)
and 100 % of its bytes changed, each with a signed manifest listing its
FastCDC chunks (as ``fleet_store.publish`` writes them). A loopback HTTP
server (its own process, ``Range: bytes=a-b`` and ``bytes=N-``) serves them
and counts the body bytes it writes. A client process holding 1.0.0 fetches
each version with ``bases=[1.0.0]``:

1. WAN bytes per campus: bytes the server sent for the file / package size
   (the seed Pi is the one WAN client of a campus); the manifest's size apart;
2. time: delta planning (bases, index, plan) and the whole fetch_release
   (reassembly: local copies, ranges, every chunk and the whole file hashed)
   against a plain copy of the file (``shutil.copyfile``, page cache) and
   against a whole fetch of the same version from the same server. Target:
   within 2x of the plain copy;
3. peak RSS of the reassembling process (``ru_maxrss`` of the child; the
   interpreter with requests and the pack's modules imported shown apart).
   Target <= 64 MB;
4. chunking MB/s at publish (``fleet_delta.chunk_file``; whether fastcdc's
   Cython build is in use);
5. ``zstd --patch-from`` (/usr/bin/zstd, ``--long`` = the window the file
   needs): patch size, time and peak RSS to make it (master) and to apply
   it (Pi/kiosk), from ``os.wait4`` of the child.

``--quick``: 20 MB. Loopback only; no proxy from the environment. Temp
files go to a directory under /tmp, removed at the end with the server
(also on Ctrl-C).
"""

import argparse
import json
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
UTILS = str(REPO / "_utils")
MB = 1 << 20
NAME, FILE = "kiosk-app", "kiosk-app.bin"
HOST = "127.0.1.1"
ZSTD = "/usr/bin/zstd"
TIME = "/usr/bin/time"  # GNU time: -v gives the child's peak RSS
CHILDREN = []


# --------------------------------------------------------------------------- child modes


def serve(directory, host):
    """A static HTTP server with Range (one range), counting the body bytes it writes."""
    import http.server
    import re
    import threading

    sent = {"bytes": 0, "requests": 0, "ranges": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/__sent__":  # control: answered uncounted
                with lock:
                    body = json.dumps(sent).encode()
                return self._reply(200, body)
            if self.path == "/__reset__":
                with lock:
                    sent.update(bytes=0, requests=0, ranges=0)
                return self._reply(200, b"{}")
            path = os.path.join(directory, self.path.lstrip("/"))
            if ".." in self.path or not os.path.isfile(path):
                return self._reply(404, b"")
            total = os.path.getsize(path)
            start, end = 0, total - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            with lock:
                sent["requests"] += 1
                sent["ranges"] += bool(match)
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
                if start >= total:
                    return self._reply(416, b"", {"Content-Range": f"bytes */{total}"})
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end + 1 - start))
            self.end_headers()
            with open(path, "rb") as handle:
                handle.seek(start)
                left = end + 1 - start
                while left:
                    data = handle.read(min(256 * 1024, left))
                    if not data:
                        break
                    self.wfile.write(data)
                    left -= len(data)
                    with lock:
                        sent["bytes"] += len(data)

        def _reply(self, status, body, headers=None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    parent = os.getppid()

    def watchdog():  # the bench died without cleaning up: do not linger
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


def client(base_url, version, root, public_key, bases_json, imports_only):
    """In a child: fetch_release of ``version`` with ``bases``; print a JSON report with ru_maxrss."""
    sys.path.insert(0, UTILS)
    import requests

    import fleet_delta
    import fleet_fetch

    report = {}
    if not imports_only:
        bases = json.loads(bases_json)
        with requests.Session() as session:
            session.trust_env = False  # no proxy: loopback only
            start = time.perf_counter()
            loaded = fleet_delta.load_bases(bases, NAME)
            index = fleet_delta.base_index(loaded)
            report["index_s"] = time.perf_counter() - start
            start = time.perf_counter()
            with open(public_key, encoding="ascii") as handle:
                keys = handle.read()
            got = fleet_fetch.fetch_release(session, [("master", base_url)], NAME, version, root, keys, bases=bases)
            report["fetch_s"] = time.perf_counter() - start
            entry = got["doc"]["files"][FILE]
            start = time.perf_counter()
            ops = fleet_delta.plan(entry, index) if entry.get("chunks") else []
            report["plan_s"] = time.perf_counter() - start + report["index_s"]
            report.update(fetched=got["fetched"], reused=got["reused"], modes=got["modes"],
                          planned=fleet_delta.plan_bytes(ops), ranges=sum(op[0] == "fetch" for op in ops))
            shutil.rmtree(got["work"])
    print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------- helpers


def cleanup():
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_server(directory):
    proc = subprocess.Popen([sys.executable, __file__, "--serve", directory, HOST],
                            stdout=subprocess.PIPE, text=True)
    CHILDREN.append(proc)
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        raise SystemExit("the loopback server did not start")
    return f"http://{HOST}:{line[1]}"


def control(url, what):
    import requests

    with requests.Session() as sess:
        sess.trust_env = False
        return sess.get(f"{url}/{what}", timeout=10).json()


def run_child(args):
    """
    Run a child under ``/usr/bin/time -v``; return (stdout, seconds, peak RSS in KB). GNU time
    forks the child from its own small process: ``ru_maxrss`` of a child forked from this
    bench would start at the bench's own RSS (Linux keeps the high-water mark across exec).
    """
    start = time.perf_counter()
    proc = subprocess.Popen([TIME, "-v"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    CHILDREN.append(proc)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - start
    err = err.decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} {args[1]} failed ({proc.returncode}): {err[-2000:]}")
    rss = [int(line.rsplit(":", 1)[1]) for line in err.splitlines() if "Maximum resident set size" in line]
    return out, elapsed, rss[-1]


def write_random(path, size, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(MB, left)
            out.write(rnd.randbytes(n))
            left -= n


def write_changed(src, dst, size, share, regions, seed):
    """``src`` with ``share`` of its bytes replaced by new random bytes in ``regions`` evenly spread runs."""
    shutil.copyfile(src, dst)
    rnd = random.Random(seed)
    if share >= 1:
        write_random(dst, size, seed)
        return
    run = int(size * share) // regions
    stride = size // regions
    with open(dst, "r+b") as out:
        for i in range(regions):
            offset = i * stride + rnd.randrange(0, stride - run)
            out.seek(offset)
            left = run
            while left:
                n = min(MB, left)
                out.write(rnd.randbytes(n))
                left -= n


def publish(store, version, path, key):
    """Store ``path`` as ``version`` with a signed manifest listing its chunks; returns chunking seconds."""
    import fleet_delta
    import fleet_fetch
    import fleet_release
    import fleet_sign

    target = os.path.join(store, NAME, version)
    os.makedirs(target)
    os.link(path, os.path.join(target, FILE))
    digest = fleet_fetch.hash_file(path)
    start = time.perf_counter()
    chunks = fleet_delta.chunk_file(path)
    chunk_s = time.perf_counter() - start
    doc = fleet_sign.sign_manifest(fleet_release.build_manifest(
        NAME, version, {FILE: dict(digest, chunks=chunks)}, install=[]), key)
    text = json.dumps(doc, indent=1, sort_keys=True)  # as fleet_state.write_json_atomic writes it
    with open(os.path.join(target, "manifest.json"), "w") as out:
        out.write(text)
    return chunk_s, len(chunks), len(text)


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 MB")
    opts = parser.parse_args()
    size = (20 if opts.quick else opts.size_mb) * MB
    sys.path.insert(0, UTILS)
    import fleet_delta
    import fleet_fetch
    import fleet_sign

    installed, compiled = fleet_delta.cdc_available()
    print(f"# delta_bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {size // MB} MB, "
          f"load {os.getloadavg()[0]:.1f}, fastcdc {'Cython' if compiled else 'pure Python' if installed else 'MISSING'}")
    tmp = tempfile.mkdtemp(prefix="kf-delta-bench-")
    try:
        store = os.path.join(tmp, "store")
        root = os.path.join(tmp, "kiosk")
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        private, public = fleet_sign.new_key_pair()
        key_path = os.path.join(tmp, "public.pem")
        with open(key_path, "w") as out:
            out.write(public)
        write_random(os.path.join(src, "1.0.0"), size, 1)
        variants = [("1.0.5", 0.05, 10), ("1.2.0", 0.20, 40), ("2.0.0", 1.0, 1)]
        for version, share, regions in variants:
            write_changed(os.path.join(src, "1.0.0"), os.path.join(src, version), size, share, regions, 7)
        chunking = {}
        for version in ["1.0.0"] + [v for v, _s, _r in variants]:
            chunking[version] = publish(store, version, os.path.join(src, version), private)
        # the kiosk (or seed Pi) holds 1.0.0: its own copy, as after a download
        base = os.path.join(root, NAME, "1.0.0")
        os.makedirs(base)
        shutil.copyfile(os.path.join(store, NAME, "1.0.0", FILE), os.path.join(base, FILE))
        shutil.copyfile(os.path.join(store, NAME, "1.0.0", "manifest.json"), os.path.join(base, "manifest.json"))

        secs = sum(c[0] for c in chunking.values())
        print(f"\nchunking at publish (fleet_delta.chunk_file, FastCDC {fleet_delta.MIN_CHUNK // 1024}/"
              f"{fleet_delta.AVG_CHUNK // 1024}/{fleet_delta.MAX_CHUNK // 1024} KiB, sha256 per chunk): "
              f"{len(chunking) * size / MB / secs:.0f} MB/s over {len(chunking)} files; "
              f"{chunking['1.0.0'][1]} chunks, manifest {chunking['1.0.0'][2] / 1024:.0f} KiB "
              f"({chunking['1.0.0'][2] / size * 100:.2f} % of the file)")

        copy_times = []
        for _ in range(3):
            dst = os.path.join(tmp, "copy")
            start = time.perf_counter()
            shutil.copyfile(os.path.join(src, "1.0.5"), dst)
            copy_times.append(time.perf_counter() - start)
            os.unlink(dst)
        plain = sorted(copy_times)[1]
        verified_times = []
        for _ in range(3):
            dst = os.path.join(tmp, "copy")
            start = time.perf_counter()
            fleet_fetch.hash_file(os.path.join(src, "1.0.5"), copy_to=dst)
            verified_times.append(time.perf_counter() - start)
            os.unlink(dst)
        verified = sorted(verified_times)[1]
        print(f"plain copy of the file (shutil.copyfile, page cache, median of 3): {plain:.2f} s; "
              f"verified copy (fleet_fetch.hash_file with copy_to: md5 + sha256 + fsync): {verified:.2f} s")

        url = start_server(store)
        base_url = url + "/"
        out, _t, rss0 = run_child([sys.executable, __file__, "--client", base_url, "x", root, key_path, "[]", "1"])
        print(f"client interpreter with requests + the pack's modules imported: peak RSS {rss0 / 1024:.1f} MB")
        print("\nversion  changed  mode   WAN bytes/size  ranges  planning s  fetch s  x plain copy  "
              "x verified copy  x whole fetch  peak RSS MB")
        rows = []
        for version, share, _regions in variants:
            control(url, "__reset__")
            out, _t, rss = run_child([sys.executable, __file__, "--client", base_url, version, root, key_path,
                                      json.dumps([base]), "0"])
            delta = dict(json.loads(out), maxrss_kb=rss)
            sent = control(url, "__sent__")
            control(url, "__reset__")
            out, _t, _rss = run_child([sys.executable, __file__, "--client", base_url, version, root, key_path,
                                       "[]", "0"])
            whole = json.loads(out)
            manifest_bytes = chunking[version][2]
            file_bytes = sent["bytes"] - manifest_bytes
            rows.append((version, share, delta, file_bytes, whole))
            ranges = sent["ranges"] if delta["modes"][FILE] == "delta" else "-"
            print(f"{version:7}  {share * 100:5.0f} %  {delta['modes'][FILE]:5}  {file_bytes / size:14.4f}  "
                  f"{ranges:>6}  {delta['plan_s']:10.2f}  {delta['fetch_s']:7.2f}  "
                  f"{delta['fetch_s'] / plain:12.1f}  {delta['fetch_s'] / verified:15.2f}  "
                  f"{delta['fetch_s'] / whole['fetch_s']:13.2f}  "
                  f"{delta['maxrss_kb'] / 1024:11.1f}")
        wholes = ", ".join(f"{r[4]['fetch_s']:.2f} s" for r in rows)
        print(f"(whole fetch of each version, same server, no bases: {wholes}; manifest "
              f"{chunking['1.0.5'][2] / 1024:.0f} KiB per version on top of the file bytes)")

        print("\nzstd --patch-from (level 3; the master makes one patch per (base, target) pair, "
              "the Pi/kiosk applies it)")
        wlog = max(10, math.ceil(math.log2(size)) + 1)
        print(f"version  patch/size   make s  make RSS MB  apply s  apply RSS MB   (--long={wlog})")
        for version, _share, _regions in variants:
            old, new = os.path.join(src, "1.0.0"), os.path.join(src, version)
            patch, back = os.path.join(tmp, "patch.zst"), os.path.join(tmp, "applied")
            _o, make_s, make_rss = run_child([ZSTD, "-q", "-f", f"--long={wlog}", f"--patch-from={old}", new,
                                              "-o", patch])
            _o, apply_s, apply_rss = run_child([ZSTD, "-q", "-d", "-f", f"--long={wlog}", f"--memory={2 ** wlog}",
                                                f"--patch-from={old}", patch, "-o", back])
            same = fleet_fetch.hash_file(back) == fleet_fetch.hash_file(new)
            print(f"{version:7}  {os.path.getsize(patch) / size:10.4f}  {make_s:7.2f}  {make_rss / 1024:11.1f}  "
                  f"{apply_s:7.2f}  {apply_rss / 1024:12.1f}{'' if same else '  (MISMATCH)'}")
            os.unlink(patch)
            os.unlink(back)
        print("\ntargets: delta within 2x of a plain copy; reassembling process <= 64 MB; "
              "WAN bytes/size ~ changed share (+ up to a chunk per changed region)")
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7] == "1")
    else:
        try:
            main()
        except KeyboardInterrupt:
            cleanup()
            sys.exit(130)
