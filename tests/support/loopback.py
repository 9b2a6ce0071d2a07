"""
HTTP servers on 127.0.0.1 for tests.

:class:`Loopback` is the one server: a free port on 127.0.0.1, a daemon
thread, every request handed to :meth:`Loopback.answer`. The schedule
platform (:class:`SchedulePlatform`) and the alert webhook
(``tests/support/webhook.py``) are built on it.
"""

import http.server
import json
import secrets
import threading


class Loopback:
    """An HTTP server on 127.0.0.1 (a free port) in a daemon thread; ``origin`` is ``http://127.0.0.1:<port>``."""

    def __init__(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.answer(self)

            def do_POST(self):  # noqa: N802 - http.server's name
                server.answer(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.closed = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request):
        """Answer one request (a ``BaseHTTPRequestHandler``); subclasses say how."""
        reply(request, 404)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


def reply(request, status, body=b"", headers=()):
    """Send ``status``, ``headers`` (pairs), a Content-Length and ``body`` (bytes)."""
    request.send_response(status)
    for name, value in headers:
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


class SchedulePlatform(Loopback):
    """
    The schedule platform: answers GET with the status and body the test set
    (:meth:`serve`) and records each request's path and Authorization header.
    Its URL carries a token in the path and one in the query (``tokens``:
    path, query, and a bearer token for the master config), random unless given.
    """

    def __init__(self, body=None, tokens=None):
        super().__init__()
        self.tokens = tuple(tokens) if tokens else tuple(
            f"pf{kind}{secrets.token_hex(5)}" for kind in ("path", "query", "bearer"))
        self.url = f"{self.origin}/api/{self.tokens[0]}/schedules?token={self.tokens[1]}"
        self.requests = []
        self.serve(200, {} if body is None else body)

    def serve(self, status, body):
        """Answer every later GET with ``status`` and ``body`` (bytes as they are, anything else as JSON)."""
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def secrets_in(self, value):
        """The tokens of this platform found in ``value`` (any JSON-able value)."""
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return [token for token in self.tokens if token in text]

    def answer(self, request):
        self.requests.append({"path": request.path, "authorization": request.headers.get("Authorization")})
        reply(request, self.status, self.body, [("Content-Type", "application/json")])

