"""
Wake-on-LAN throughput: 1,000 MACs x 3 repeats from one Pi (target <= 50 ms),
side by side with Salt's own ``network.wol`` called once per MAC per repeat.

Both are loaded through Salt's loader, as on a Pi, and send to a UDP sink on
127.0.0.1 (never a broadcast on a real interface). Prints figures; asserts
nothing.

    .venv/bin/python bench/wol_bench.py [--macs 1000] [--repeat 3] [--runs 5]
"""

import argparse
import pathlib
import random
import socket
import statistics
import tempfile
import threading
import time

import salt.config
import salt.loader

REPO = pathlib.Path(__file__).resolve().parent.parent


def loader():
    root = tempfile.mkdtemp(prefix="wolbench")
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": root, "cachedir": root, "module_dirs": [str(REPO)], "id": "pi-bench-1"})
    opts["enable_fqdns_grains"] = False  # no reverse-DNS lookups (network rule)
    opts["grains"] = salt.loader.grains(opts)
    utils = salt.loader.utils(opts)
    return salt.loader.minion_mods(opts, utils=utils)


class Sink:
    """A UDP receiver on loopback that counts what arrives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.running = True
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while self.running:
            try:
                self.sock.recv(2048)
                self.count += 1
            except TimeoutError:
                pass

    def take(self):
        time.sleep(0.3)
        count, self.count = self.count, 0
        return count

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--macs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    macs = [":".join(f"{b:02x}" for b in [0x52, 0x54] + [rng.randrange(256) for _ in range(4)]) for _ in range(args.macs)]
    mods = loader()
    sink = Sink()
    ours, salts, received = [], [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        mods["kiosk_wol.wake"](macs, broadcast="127.0.0.1", port=sink.port, repeat=args.repeat, spacing_ms=0)
        ours.append(time.perf_counter() - start)
        received.append(sink.take())
        start = time.perf_counter()
        for _ in range(args.repeat):
            for mac in macs:
                mods["network.wol"](mac, "127.0.0.1", sink.port)
        salts.append(time.perf_counter() - start)
        received.append(sink.take())
    sink.close()
    packets = args.macs * args.repeat
    ours_ms, salt_ms = statistics.median(ours) * 1000, statistics.median(salts) * 1000
    print(f"packets per run: {packets} ({args.macs} MACs x {args.repeat} repeats), runs: {args.runs}")
    print(f"kiosk_wol.wake (one socket, validated batch):   median {ours_ms:8.1f} ms  (target <= 50 ms)")
    print(f"network.wol x {packets} calls (socket per call):  median {salt_ms:8.1f} ms")
    print(f"ratio network.wol / kiosk_wol.wake:              {salt_ms / ours_ms:8.1f}x")
    print(f"packets received by the loopback sink per run:   {received[0::2]} / {received[1::2]}")
    print("kiosk_wol.wake spacing between repeats adds (repeat-1) x spacing_ms on a Pi (default 100 ms)")


if __name__ == "__main__":
    main()
