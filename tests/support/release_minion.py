"""
Release minions for functional tests: a Pi or kiosk loaded by Salt's own
loader (each in its own loader namespace), Salt's real minion event bus for
it (the IPC publisher a salt-minion runs, and a subscriber), and releases
built and signed with the pack's own functions and real Ed25519 keys.
"""

import asyncio
import hashlib
import itertools
import json
import os
import pathlib
import sys
import threading
import time

import salt.config
import salt.loader
import salt.transport
import salt.utils.event
import tornado.ioloop

import fleet_release
import fleet_sign

REPO = pathlib.Path(__file__).resolve().parents[2]
NAME = "kiosk-app"

INSTALL_SCRIPT = """\
import pathlib, sys
package = pathlib.Path(sys.argv[1])
(package / "INSTALLED").write_text(sys.argv[2])
with open(package.parent / "install.log", "a") as log:
    log.write(sys.argv[2] + "\\n")
"""
DEADLINE = 20  # s: an event fired on the bus arrives in milliseconds
LOADERS = itertools.count()


class Releases:
    """Packages and signed documents, built with the pack's own functions and real keys."""

    def __init__(self, root, private_pem, other_pem):
        self.root = pathlib.Path(root)
        self.key = private_pem
        self.other = other_pem

    def package(self, version, install=None, key="real", sign=True):
        """``{url path suffix: bytes}`` of a release: app.bin, install.py and its manifest."""
        files = {"app.bin": hashlib.sha256(version.encode()).digest() * 4096,
                 "install.py": INSTALL_SCRIPT.encode()}
        entries = {n: {"size": len(b), "md5": hashlib.md5(b).hexdigest(), "sha256": hashlib.sha256(b).hexdigest()}
                   for n, b in files.items()}
        if install is None:
            install = [sys.executable, "{dir}/install.py", "{dir}", "{version}"]
        doc = fleet_release.build_manifest(NAME, version, entries, install, created_at="2026-12-01T00:00:00+00:00")
        if sign:
            doc = fleet_sign.sign(doc, self.key if key == "real" else self.other)
        out = {f"{version}/{n}": b for n, b in files.items()}
        out[f"{version}/{fleet_release.MANIFEST}"] = json.dumps(doc).encode()
        return out

    def pin(self, version, serial, campus="east", key="real", signed_at=None):
        return fleet_sign.sign_pin(NAME, campus, version, serial, self.key if key == "real" else self.other,
                                      signed_at=signed_at)

    @staticmethod
    def index(versions, pin):
        index = fleet_release.new_index(NAME)
        index["versions"] = {v: {"size": 1, "created_at": "x", "staged_at": "x", "rollback_of": None}
                             for v in versions}
        index["pin"] = pin
        return json.dumps(index).encode()


class Bus:
    """Salt's minion event bus for one minion id: the IPC publisher a salt-minion runs, and a subscriber."""

    def __init__(self, opts):
        self.opts = opts
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            io_loop = tornado.ioloop.IOLoop.current()
            self.server = salt.transport.ipc_publish_server("minion", opts)
            io_loop.spawn_callback(self.server.publisher, self.server.publish_payload, io_loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "the event publisher did not start"
        self.sub = salt.utils.event.get_event("minion", opts=opts, listen=True)
        self.sub.subscribe("")
        self._wait_ready()

    def _wait_ready(self):
        """Fire probes until one comes back: the subscriber is connected (no sleep-and-hope)."""
        deadline = time.time() + DEADLINE
        while time.time() < deadline:
            with salt.utils.event.get_event("minion", sock_dir=self.opts["sock_dir"], opts=self.opts,
                                            listen=False) as ev:
                ev.fire_event({"probe": True}, "test/probe")
            got = self.sub.get_event(wait=0.5, tag="test/probe", full=True)
            if got:
                return
        raise AssertionError("the event bus never delivered a probe")

    def drain(self, tag, quiet=0.5, first=DEADLINE):
        """
        Every event with ``tag``: the first awaited up to ``first`` seconds
        (the caller expects one; pass 0 when none is expected), then the rest
        until the bus has been quiet for ``quiet`` seconds.
        """
        got = []
        wait = first or quiet
        while True:
            event = self.sub.get_event(wait=wait, tag=tag, full=True)
            if not event:
                return got
            if event["tag"] == tag:
                got.append(event["data"])
                wait = quiet

    def wait_for(self, tag, match, seen):
        """The first event with ``tag`` whose data satisfies ``match`` (``seen`` collects every one read)."""
        deadline = time.time() + DEADLINE
        while time.time() < deadline:
            for data in seen:
                if match(data):
                    return data
            seen.extend(self.drain(tag, first=0))
        raise AssertionError(f"no {tag} event matching; got {seen}")

    def close(self):
        self.sub.destroy()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def minion(root, minion_id, pillar, extra=None):
    root = pathlib.Path(root)
    opts = salt.config.minion_config(None)
    opts.update({
        "id": minion_id, "file_client": "local", "root_dir": str(root), "cachedir": str(root / "cache"),
        "sock_dir": str(root / "sock"), "pki_dir": str(root / "pki"), "module_dirs": [str(REPO)],
        # a campus grain that lies: what counts is the campus of the pillar inventory
        "grains": {"campus": "a-campus-grain-nobody-checks"}, "pillar": pillar, "enable_fqdns_grains": False,
        **(extra or {}),
    })
    for key in ("cachedir", "sock_dir", "pki_dir"):
        os.makedirs(opts[key], exist_ok=True)
    # a loader namespace of its own: two minions loaded in one process must not share module objects
    # (the second one's event module would fire on the first one's bus)
    base = f"salt.loaded.kf{next(LOADERS)}"
    utils = salt.loader.utils(opts, loaded_base_name=base)
    mods = salt.loader.minion_mods(opts, utils=utils, loaded_base_name=base,
                                   whitelist=["kiosk_pkg", "event", "cmd", "config", "saltutil", "cp"])
    return opts, mods
