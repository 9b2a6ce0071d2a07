"""A real HTTP server on loopback that records the JSON bodies POSTed to it."""

import http.server
import json
import threading
import time


class Webhook:
    def __init__(self):
        self.posts = []
        received = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    received.append({"path": self.path, "json": json.loads(body)})
                except json.JSONDecodeError:
                    received.append({"path": self.path, "raw": body.decode("utf-8", "replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kiosk"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout=60):
        """The first recorded POST for which ``predicate(json)`` holds, or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for post in list(self.posts):
                if "json" in post and predicate(post["json"]):
                    return post
            time.sleep(0.5)
        return None

    def close(self):
        self.server.shutdown()
        self.server.server_close()
