"""
A real HTTP server on loopback that records the JSON bodies POSTed to it.

Its URL carries a token in the path and one in the query, as real webhooks
do (``/hooks/<token>/kiosk?token=...``): tests check that neither ever shows
up in a runner's return, an event or the master's log (:meth:`secrets_in`).
"""

import json
import secrets
import time

from tests.support.loopback import Loopback, reply


class Webhook(Loopback):
    def __init__(self):
        super().__init__()
        self.posts = []
        self.path_token = f"pathtok{secrets.token_hex(6)}"
        self.query_token = f"querytok{secrets.token_hex(6)}"
        self.path = f"/hooks/{self.path_token}/kiosk?token={self.query_token}"
        self.url = f"{self.origin}{self.path}"

    def answer(self, request):
        if request.command != "POST":
            reply(request, 405)
            return
        body = request.rfile.read(int(request.headers.get("Content-Length", 0)))
        post = {"path": request.path, "at": time.time()}
        try:
            post["json"] = json.loads(body)
        except json.JSONDecodeError:
            post["raw"] = body.decode("utf-8", "replace")
        self.posts.append(post)
        reply(request, 204)

    def secrets_in(self, text):
        """The tokens of this webhook's URL found in ``text``."""
        return [t for t in (self.path_token, self.query_token) if t in text]

    def wait_for(self, predicate, timeout=60, after=None):
        """
        The first recorded POST for which ``predicate(json)`` holds, or None;
        with ``after`` (a ``time.time()``), only POSTs received since then: the
        webhook lives for the whole session, so earlier tests' posts are there too.
        """
        deadline = time.time() + timeout
        while True:
            found = self.matching(predicate, after)
            if found:
                return found[0]
            if time.time() >= deadline:
                return None
            time.sleep(0.5)

    def matching(self, predicate, after=None):
        """Every recorded POST (since ``after``, if given) whose JSON body satisfies ``predicate``."""
        return [p for p in list(self.posts)
                if "json" in p and (after is None or p["at"] >= after) and predicate(p["json"])]
