"""
nmap liveness of 250 kiosks on loopback (127.0.100.1-250), one TCP port,
through ``kiosk_scan.scan`` loaded by Salt's loader as on a Pi (real nmap,
``-sT -Pn -n``). Listeners stand in for the kiosks that are on (every
``--open-every``-th address). Prints figures; asserts nothing.

    .venv/bin/python bench/nmap_bench.py [--kiosks 250] [--open-every 5] [--runs 3]
"""

import argparse
import pathlib
import socket
import statistics
import sys
import tempfile
import time

import salt.config
import salt.loader

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inventory(kiosks, port):
    return {"kiosk_fleet": {"campuses": {"bench": {
        "service_port": port,
        "vlans": {"hall": {"network": "127.0.100.0/24"}},
        "pis": {"pi-bench-1": {"vlans": {"hall": {}}}},
        "kiosks": {f"kiosk-bench-{i:03d}": {"mac": f"52:54:00:bb:00:{i:02x}", "ip": f"127.0.100.{i}", "vlan": "hall"}
                   for i in range(1, kiosks + 1)},
    }}}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiosks", type=int, default=250)
    parser.add_argument("--open-every", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.kiosks <= 254:
        parser.error("--kiosks: 1-254 (one /24 of loopback)")
    port = free_port()
    root = tempfile.mkdtemp(prefix="nmapbench")
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": root, "cachedir": root, "module_dirs": [str(REPO)],
                 "id": "pi-bench-1", "grains": {}, "pillar": inventory(args.kiosks, port)})
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_scan"])
    listeners = []
    for i in range(1, args.kiosks + 1, args.open_every):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((f"127.0.100.{i}", port))
        sock.listen(16)
        listeners.append(sock)
    times = []
    try:
        for _ in range(args.runs):
            start = time.perf_counter()
            ret = mods["kiosk_scan.scan"]()
            times.append(time.perf_counter() - start)
            states = [k["state"] for k in ret["kiosks"].values()]
            opened = states.count("open")
            closed = states.count("closed")
            print(f"scan of {len(states)} kiosks, port {port}: {times[-1]:.2f} s "
                  f"(open {opened}, closed {closed}, filtered {states.count('filtered')}; "
                  f"nmap {ret['elapsed_s']:.2f} s; listeners {len(listeners)})")
    finally:
        for sock in listeners:
            sock.close()
    print(f"kiosk_scan.scan, {args.kiosks} loopback kiosks, one port: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
