"""
Kiosk releases: verification speed, staging memory and WAN bytes per campus,
through ``fleet_release`` (the code the Pis and kiosks run). Prints figures
with their targets; asserts nothing.

    .venv/bin/python bench/release_bench.py [--size-mb 500] [--stage-mb 1024] [--wan-mb 20]
                                            [--kiosks 25] [--runs 3] [--quick]

1. verification: ``fleet_fetch.hash_file`` (md5 + sha256, one read, sha256
   on a second thread) against the ``md5sum`` binary on the same random file
   in the page cache (written with fsync, one warm-up read, median of
   ``--runs`` interleaved rounds), with a one-thread baseline (md5 then
   sha256 in one loop) and hash_file with 4 MiB chunks. Target >= 0.8x md5sum.
2. staging memory: ``fleet_fetch.fetch`` of a ``--stage-mb`` random file
   from a loopback HTTP server (its own process) into a ``.part`` file, in a
   child process whose peak RSS is read with ``os.wait4``. Target <= 64 MB.
3. WAN bytes per campus and release: a master server and 4 Pi servers on
   loopback addresses (127.0.1.1, 127.0.2.1-4) that count the bytes they
   write to their sockets; the pack's flow (seed Pi <- master, other Pis <-
   seed, kiosks <- home Pi round robin, addresses from
   ``fleet_release.kiosk_repo_urls``) against a naive push (every kiosk <-
   master). Target: master bytes / package size = 1.0x.

``--quick``: 100 MB hash, 200 MB staging, 5 MB WAN package. Only loopback
traffic; proxies from the environment are ignored. Temp files go to a
directory under /tmp, removed at the end with the child servers (also on
Ctrl-C).
"""

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
UTILS = str(REPO / "_utils")
MB = 1 << 20
BLOCK = MB
NAME, VERSION, FILE = "kiosk-app", "1.0.0", "kiosk-app.bin"
MASTER_HOST = "127.0.1.1"
PI_HOSTS = [f"127.0.2.{i}" for i in range(1, 5)]

CHILDREN = []  # every process we started, terminated at the end


# --------------------------------------------------------------------------- child modes


def serve(directory, host, port):
    """A static HTTP server (HTTP/1.1 keep-alive) counting the bytes written to its sockets."""
    import http.server
    import threading

    sent = {"bytes": 0, "requests": 0}
    lock = threading.Lock()

    class Counting:
        def __init__(self, raw):
            self.raw = raw

        def write(self, data):
            n = self.raw.write(data)  # socket sendall: every byte is in the socket when it returns
            with lock:
                sent["bytes"] += len(data) if n is None else n
            return n

        def __getattr__(self, name):
            return getattr(self.raw, name)

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def setup(self):
            super().setup()
            self.wfile = Counting(self.wfile)

        def do_GET(self):
            if self.path == "/__sent__":  # control: answered uncounted
                self.wfile = self.wfile.raw if isinstance(self.wfile, Counting) else self.wfile
                with lock:
                    body = json.dumps(sent).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
                return
            with lock:
                sent["requests"] += 1
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
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


def fetch_child(url, part, expected_json, imports_only):
    """Run in a child: fetch ``url`` into ``part`` with fleet_fetch.fetch; print a JSON report."""
    sys.path.insert(0, UTILS)
    import requests

    import fleet_fetch

    report = {}
    if not imports_only:
        expected = json.loads(expected_json)
        with requests.Session() as session:
            session.trust_env = False  # no proxy: loopback only
            start = time.perf_counter()
            ret = fleet_fetch.fetch(session, url, part, expected, "bench")
            report = {"elapsed": time.perf_counter() - start, "fetched": ret["fetched"]}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                report["vmhwm_kb"] = int(line.split()[1])
    print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------- helpers


def spawn(argv, **kwargs):
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # Ctrl-C reaches us; we end them
    CHILDREN.append(proc)
    return proc


def start_server(directory, host, port=0):
    proc = spawn([sys.executable, __file__, "--serve", str(directory), "--host", host, "--port", str(port)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.wait(5)
        raise RuntimeError(f"server on {host}:{port} did not start: {proc.stderr.read().strip()[-300:]}")
    return proc, int(line.split()[1])


def stop(proc):
    if proc.returncode is not None:
        return
    try:
        proc.terminate()
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def sent(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=10)  # direct: never a proxy
    try:
        conn.request("GET", "/__sent__")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def write_random(path, size, digest=None):
    """``size`` bytes of incompressible data (os.urandom), hashed on the way when ``digest`` is given."""
    with open(path, "wb") as out:
        left = size
        while left:
            data = os.urandom(min(BLOCK, left))
            out.write(data)
            if digest is not None:
                digest.update(data)
            left -= len(data)
        out.flush()
        os.fsync(out.fileno())  # no write-back running under the timed reads; the pages stay cached
    return path


def read_all(path):
    buf = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buf):
            pass


def timed(funcs, runs):
    """Median seconds and last result of each of ``funcs``, run in interleaved rounds (drift hits all alike)."""
    times = {name: [] for name in funcs}
    results = {}
    for _ in range(runs):
        for name, func in funcs.items():
            start = time.perf_counter()
            results[name] = func()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def one_thread(path):
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb") as handle:
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            md5.update(view[:n])
            sha.update(view[:n])
    return md5.hexdigest(), sha.hexdigest()


def loadavg():
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


# --------------------------------------------------------------------------- 1. verification


def bench_hash(tmp, size_mb, runs, rows):
    import fleet_fetch

    path = write_random(tmp / "hash.bin", size_mb * MB)
    read_all(path)  # warm-up: the file is in the page cache for every run below
    secs, out = timed({
        "md5sum": lambda: subprocess.run(["md5sum", str(path)], check=True, capture_output=True, text=True).stdout,
        "hash_file": lambda: fleet_fetch.hash_file(str(path)),
        "one_thread": lambda: one_thread(path),
        "hash_file_4m": lambda: fleet_fetch.hash_file(str(path), chunk=4 * MB),
        "sha256sum": lambda: subprocess.run(["sha256sum", str(path)], check=True, capture_output=True),
    }, runs)
    ours = out["hash_file"]
    agree = (out["md5sum"].split()[0] == ours["md5"] == out["one_thread"][0] == out["hash_file_4m"]["md5"]
             and ours["sha256"] == out["one_thread"][1] == out["hash_file_4m"]["sha256"])
    ref = secs["md5sum"]
    ratio = ref / secs["hash_file"]
    print(f"\n1. verification, {size_mb} MB random file in the page cache, median of {runs} interleaved runs")
    print(f"   md5sum (binary)                             {size_mb / ref:8.0f} MB/s")
    print(f"   fleet_fetch.hash_file (md5+sha256, 2 thr) {size_mb / secs['hash_file']:8.0f} MB/s   {ratio:.2f}x md5sum")
    print(f"   one thread, md5 then sha256 per chunk       {size_mb / secs['one_thread']:8.0f} MB/s   "
          f"{ref / secs['one_thread']:.2f}x md5sum")
    print(f"   hash_file with chunk=4 MiB (1 MiB default)  {size_mb / secs['hash_file_4m']:8.0f} MB/s   "
          f"{ref / secs['hash_file_4m']:.2f}x md5sum")
    print(f"   sha256sum (binary, for reference)           {size_mb / secs['sha256sum']:8.0f} MB/s")
    print(f"   digests agree (md5sum / hash_file / one thread / 4 MiB): {agree}")
    rows.append(("hash_file vs md5sum (md5+sha256, one pass)", f"{ratio:.2f}x ({size_mb / secs['hash_file']:.0f} MB/s)", ">= 0.8x"))
    os.unlink(path)


# --------------------------------------------------------------------------- 2. staging memory


def run_child(args):
    """Run ``bench --fetch-child ...``; return (its JSON report, its peak RSS in KB from wait4)."""
    proc = spawn([sys.executable, __file__, "--fetch-child", *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not touch the pid again
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"fetch child exited {proc.returncode}: {out.strip()[-300:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss  # KB on Linux


def bench_stage(tmp, size_mb, rows):
    import fleet_fetch

    src = tmp / "master"
    (src / NAME / VERSION).mkdir(parents=True)
    digest = fleet_fetch.Digest()
    write_random(src / NAME / VERSION / FILE, size_mb * MB, digest)
    expected = json.dumps(digest.result())
    server, port = start_server(src, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}/{NAME}/{VERSION}/{FILE}"
        part = tmp / "pi" / (FILE + ".part")
        part.parent.mkdir()
        base, base_rss = run_child([url, str(part), expected, "--imports-only"])
        report, rss = run_child([url, str(part), expected])
        served = sent("127.0.0.1", port)
    finally:
        stop(server)
    ok = os.path.getsize(part) == size_mb * MB
    os.unlink(part)
    os.unlink(src / NAME / VERSION / FILE)
    mbps = size_mb / report["elapsed"]
    print(f"\n2. staging {size_mb} MB over loopback HTTP with fleet_fetch.fetch in a child process")
    print(f"   child peak RSS (wait4 ru_maxrss)            {rss / 1024:8.1f} MB   (VmHWM {report['vmhwm_kb'] / 1024:.1f} MB)")
    print(f"   same child, imports only (requests, fleet_release): {base_rss / 1024:.1f} MB  -> fetch adds {(rss - base_rss) / 1024:.1f} MB")
    print(f"   download + verify throughput                {mbps:8.0f} MB/s   ({report['elapsed']:.2f} s)")
    print(f"   server wrote {served['bytes']:,} bytes for {report['fetched']:,} fetched; part file complete and verified: {ok}")
    rows.append(("peak RSS staging a package (child)", f"{rss / 1024:.1f} MB ({size_mb} MB file)", "<= 64 MB"))
    rows.append(("download + verify throughput", f"{mbps:.0f} MB/s", "(info)"))


# --------------------------------------------------------------------------- 3. WAN bytes per campus


def stage_from(session, base, root, expected_doc=None):
    """What a Pi or kiosk does: manifest, then the file with fetch (verified), renamed into place."""
    import fleet_fetch
    import fleet_release

    resp = session.get(fleet_release.file_url(base, NAME, VERSION, fleet_release.MANIFEST), timeout=(3, 10))
    resp.raise_for_status()
    doc = fleet_release.validate_manifest(json.loads(resp.content), name=NAME, version=VERSION)
    work = root / fleet_release.STAGING / f"{NAME}-{VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    part = work / (FILE + ".part")
    fleet_fetch.fetch(session, fleet_release.file_url(base, NAME, VERSION, FILE), str(part), doc["files"][FILE], FILE)
    os.replace(part, work / FILE)
    (work / fleet_release.MANIFEST).write_bytes(resp.content)
    (root / NAME).mkdir(parents=True, exist_ok=True)
    os.rename(work, root / NAME / VERSION)
    return doc


def bench_wan(tmp, size_mb, kiosks, rows):
    import requests

    import fleet_inventory
    import fleet_fetch
    import fleet_release

    base_dir = tmp / "wan"
    master_repo = base_dir / "master" / "kiosk-releases"
    (master_repo / NAME / VERSION).mkdir(parents=True)
    write_random(master_repo / NAME / VERSION / FILE, size_mb * MB)
    files = {FILE: fleet_fetch.hash_file(str(master_repo / NAME / VERSION / FILE))}
    doc = fleet_release.build_manifest(NAME, VERSION, files)
    (master_repo / NAME / VERSION / fleet_release.MANIFEST).write_text(json.dumps(doc))
    package = size_mb * MB

    pis = [f"pi-bench-{i}" for i in range(1, len(PI_HOSTS) + 1)]
    servers = []
    try:
        master, master_port = start_server(base_dir / "master", MASTER_HOST)
        servers.append(master)
        # all Pis on one repo_port, each on its own loopback address, as on a campus
        for attempt in range(5):
            pi_port, started = 0, []
            try:
                for host, pi in zip(PI_HOSTS, pis):
                    (base_dir / pi / "kiosk-releases").mkdir(parents=True, exist_ok=True)
                    proc, pi_port = start_server(base_dir / pi, host, pi_port)
                    started.append(proc)
                break
            except RuntimeError:
                for proc in started:
                    stop(proc)
                if attempt == 4:
                    raise
        servers.extend(started)
        inventory = {"campuses": {"bench": {
            "repo_port": pi_port,
            "pis": {pi: {"vlans": {"hall": {"source": host}}} for pi, host in zip(pis, PI_HOSTS)},
            "kiosks": {f"kiosk-bench-{k:02d}": {"vlan": "hall"} for k in range(1, kiosks + 1)},
        }}}
        spec = inventory["campuses"]["bench"]
        master_url = f"http://{MASTER_HOST}:{master_port}{fleet_release.REPO_PREFIX}"
        pi_url = {pi: fleet_release.repo_url(inventory, "bench", pi) for pi in pis}

        with requests.Session() as session:
            session.trust_env = False  # no proxy: loopback only
            start = time.perf_counter()
            # the pack's flow: the release crosses the WAN once (seed), the rest is campus LAN
            stage_from(session, master_url, base_dir / pis[0] / "kiosk-releases")
            for pi in pis[1:]:
                stage_from(session, pi_url[pis[0]], base_dir / pi / "kiosk-releases")
            homes = {}
            for kiosk in sorted(spec["kiosks"]):
                home = fleet_inventory.home_pi(spec, kiosk)
                homes[home] = homes.get(home, 0) + 1
                _, base = fleet_release.kiosk_repo_urls(inventory, "bench", kiosk, home)[0]
                kdir = base_dir / "kiosks" / kiosk
                stage_from(session, base, kdir)
                shutil.rmtree(kdir)  # keep /tmp small
            ours_s = time.perf_counter() - start
            ours_master = sent(MASTER_HOST, master_port)
            lan = {pi: sent(host, pi_port) for pi, host in zip(pis, PI_HOSTS)}
            # naive push: every kiosk pulls from the master
            start = time.perf_counter()
            for kiosk in sorted(spec["kiosks"]):
                kdir = base_dir / "naive" / kiosk
                stage_from(session, master_url, kdir)
                shutil.rmtree(kdir)
            naive_s = time.perf_counter() - start
            naive_master = sent(MASTER_HOST, master_port)
    finally:
        for proc in servers:
            stop(proc)
    ours_b = ours_master["bytes"]
    naive_b = naive_master["bytes"] - ours_b
    print(f"\n3. WAN bytes per campus and release: 4 Pis, {kiosks} kiosks, {size_mb} MB package "
          f"(counted by the servers: headers + bodies written to sockets)")
    print(f"   pack flow:  master wrote {ours_b:>13,} bytes in {ours_master['requests']} requests "
          f"= {ours_b / package:.4f}x package  ({ours_s:.1f} s)")
    for pi, host in zip(pis, PI_HOSTS):
        print(f"     {pi} ({host}:{pi_port}, LAN) wrote {lan[pi]['bytes']:>13,} bytes in {lan[pi]['requests']} requests "
              f"= {lan[pi]['bytes'] / package:.2f}x package")
    print(f"     kiosks per home Pi: {dict(sorted(homes.items()))}")
    print(f"   naive push: master wrote {naive_b:>13,} bytes in {naive_master['requests'] - ours_master['requests']} requests "
          f"= {naive_b / package:.4f}x package  ({naive_s:.1f} s)")
    rows.append(("WAN bytes / package, pack flow", f"{ours_b / package:.4f}x", "1.0x"))
    rows.append((f"WAN bytes / package, naive push ({kiosks} kiosks)", f"{naive_b / package:.4f}x", f"{kiosks}x (reference)"))


# --------------------------------------------------------------------------- main


def interrupted(*_):
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=None, help="hash test file (default 500, quick 100)")
    parser.add_argument("--stage-mb", type=int, default=None, help="staging test package (default 1024, quick 200)")
    parser.add_argument("--wan-mb", type=int, default=None, help="WAN test package (default 20, quick 5)")
    parser.add_argument("--kiosks", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    # child modes (internal)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fetch-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if not args.host.startswith("127."):
            parser.error("--host: loopback only (127.0.0.0/8)")
        return serve(args.serve, args.host, args.port)
    if args.fetch_child:
        return fetch_child(*args.fetch_child, args.imports_only)

    size_mb = args.size_mb or (100 if args.quick else 500)
    stage_mb = args.stage_mb or (200 if args.quick else 1024)
    wan_mb = args.wan_mb or (5 if args.quick else 20)
    sys.path.insert(0, UTILS)
    signal.signal(signal.SIGTERM, interrupted)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="releasebench", dir="/tmp"))
    rows = []
    print(f"release bench: {os.cpu_count()} CPUs, nice {os.nice(0)}, load average {loadavg()}, temp dir {tmp}")
    try:
        bench_hash(tmp, size_mb, args.runs, rows)
        bench_stage(tmp, stage_mb, rows)
        bench_wan(tmp, wan_mb, args.kiosks, rows)
        print(f"\n{'figure':<48} {'measured':<28} target")
        for figure, measured, target in rows:
            print(f"{figure:<48} {measured:<28} {target}")
        print(f"load average at the end: {loadavg()}")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        for proc in CHILDREN:
            with contextlib.suppress(Exception):
                stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
