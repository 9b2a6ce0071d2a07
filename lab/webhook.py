"""
The lab's alert webhook: what the hospital's alerting system is in production.

An HTTP server on one loopback address that answers every POST with 200 and
appends it to a JSON-lines file (``{"at", "path", "body"}``, the body parsed
as JSON when it is JSON), so ``kiosk-lab day`` and the tests can count the
alerts the top master posted: each alert must arrive once, not once per Pi.

    python -m lab.webhook --listen 127.0.100.1:8091 --log <run>/webhook.jsonl

Network rule: the listen address must be in 127.0.0.0/8.
"""

import argparse
import http.server
import ipaddress
import json
import os
import pathlib
import signal
import sys
import threading
import time

MAX_BODY = 1 << 20


class Receiver(http.server.BaseHTTPRequestHandler):
    log_path = None
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - http.server's naming
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.send_error(413)
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        line = json.dumps({"at": time.time(), "path": self.path, "body": body}, sort_keys=True)
        with self.lock, open(self.log_path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        answer = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_):  # the JSON-lines file is the log
        pass


def posts(log_path):
    """Every POST the webhook received so far: ``[{"at", "path", "body"}]`` (``[]`` before the first)."""
    path = pathlib.Path(log_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="webhook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="address:port in 127.0.0.0/8")
    parser.add_argument("--log", required=True, help="JSON-lines file the POSTs are appended to")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        parser.error(f"--listen: {host} is not in 127.0.0.0/8 (the lab stays on loopback)")
    Receiver.log_path = args.log
    server = http.server.ThreadingHTTPServer((host, int(port)), Receiver)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
