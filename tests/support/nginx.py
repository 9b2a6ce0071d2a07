"""
A real nginx serving the kiosk release repository, for tests.

Renders the SAME templates the ``kiosk_fleet.release_repo`` state installs
(``states/kiosk_fleet/files/kiosk-release-repo-http.conf.jinja`` at http level,
``kiosk-release-repo.conf.jinja`` as the server block) into a minimal main
``nginx.conf`` whose pid file, error log and temp directories live in
``workdir``, and runs ``nginx -p <workdir> -c <conf> -g 'daemon off;'`` as a
child process (its own process group, stopped by its pid). Rendering, main
conf, command line and the start-up wait are ``lab/nginx_repo.py``, the code
the lab runs its release servers with.

    with NginxRepo(["127.0.1.2"], repo_dir, workdir) as repo:   # a free port is chosen
        urllib.request.urlopen(repo.url("app/index.json"))
        repo.wait_for_log(1)
        repo.log_entries()   # [{"remote_addr": "127.0.0.1", "method": "GET", "path": ..., "status": 200, ...}]

Network rule: listen addresses must be in 127.0.0.0/8 (checked).
"""

import contextlib
import ctypes
import json
import os
import pathlib
import signal
import socket
import subprocess
import time

# the rendering, main conf, command line and start-up wait are shared with the lab (lab/nginx_repo.py)
from lab import nginx_repo
from lab.nginx_repo import (  # this module's public API (__all__)
    HTTP_TEMPLATE,
    REPO,
    SERVER_TEMPLATE,
    TEMPLATES,
    URL_PREFIX,
    NginxError,
    free_port,
    main_conf,
    nginx_binary,
    render,
)

__all__ = ["HTTP_TEMPLATE", "REPO", "SERVER_TEMPLATE", "TEMPLATES", "URL_PREFIX", "NginxError", "NginxRepo",
           "free_port", "main_conf", "nginx_binary", "render"]

_split = nginx_repo.split_listen


def _die_with_parent():
    """In the child before exec: SIGTERM (nginx's fast shutdown) when the test process dies without stop()."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NginxRepo:
    """nginx serving ``repo_dir`` under /kiosk-releases/ on ``listen``.

    listen:   list of "127.x.y.z:port" or bare "127.x.y.z" (a free port is chosen);
    repo_dir: the repository; workdir: configs, logs, pid and temp dirs (created).
    """

    def __init__(self, listen, repo_dir, workdir, access_log=None, start_timeout=10.0):
        self.nginx = nginx_binary()
        if not self.nginx:
            raise NginxError("nginx is not installed (.ci/bootstrap installs it)")
        self.repo_dir = pathlib.Path(repo_dir)
        self.workdir = pathlib.Path(workdir)
        self.access_log = pathlib.Path(access_log) if access_log else self.workdir / "access.log"
        self.start_timeout = start_timeout
        self._requested = list(listen)
        self.listen = []
        self.proc = None
        self._resolve_listen()

    def _resolve_listen(self):
        self.listen = nginx_repo.resolve_listen(self._requested)

    # configuration
    def render(self):
        """(http-level snippet, server block) as the state would install them."""
        return nginx_repo.render_repo(self.listen, self.repo_dir, self.access_log)

    def write_config(self, server_conf=None, name="nginx.conf"):
        """Write the snippets and a main conf including them; returns the main conf's path.
        ``server_conf`` replaces the rendered server block (e.g. one Salt rendered)."""
        return nginx_repo.write_config(self.workdir, self.listen, self.repo_dir, self.access_log,
                                       server_conf=server_conf, name=name)

    def _cmd(self, conf, *extra):
        return nginx_repo.command(self.nginx, self.workdir, conf, *extra)

    def check(self, server_conf=None):
        """``nginx -t`` of the config (or of ``server_conf`` in the same main conf): CompletedProcess."""
        conf = self.write_config(server_conf, name="nginx-check.conf")
        return subprocess.run(self._cmd(conf, "-t"), capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)

    # process
    def start(self):
        if self.is_running:
            return self
        for attempt in range(3):
            conf = self.write_config()
            (self.workdir / "nginx.pid").unlink(missing_ok=True)
            self.proc = subprocess.Popen(self._cmd(conf, "-g", "daemon off;"), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                         preexec_fn=_die_with_parent)
            try:
                self._wait_listening()
                return self
            except NginxError as exc:
                err = self.stop()
                # another process took a port we chose between free_port() and nginx's bind: choose again
                if "Address already in use" in err and attempt < 2 and any(":" not in e for e in self._requested):
                    self._resolve_listen()
                    continue
                raise NginxError(f"{exc}\n{err}") from None
        raise AssertionError("unreachable")

    def _wait_listening(self):
        nginx_repo.wait_listening(self.proc, self.workdir, self.listen, self.start_timeout)

    @property
    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """Stop nginx (SIGQUIT: graceful, then SIGKILL to its process group); returns its stderr."""
        if self.proc is None:
            return ""
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # master and workers: the group nginx leads
                proc.wait(5)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        return err + nginx_repo.error_log_tail(self.workdir)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # client side
    def url(self, path="", listen=None):
        """http://<listen>/kiosk-releases/<path> (first listen address unless given)."""
        return f"http://{listen or self.listen[0]}{URL_PREFIX}{path.lstrip('/')}"

    def raw_get(self, target):
        """``(status, whole answer)`` of ``GET <target>`` sent exactly as written (http clients
        would normalise dot segments away), on the first listen address."""
        host, port = self.listen[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1]), data

    def log_entries(self):
        """Parsed access log: dicts with remote_addr, method, path (raw, without query; from the request line
        when nginx refused it with 400 and uri is empty), query, uri, request,
        status (int), bytes (int, body bytes sent), range ("" if none), content_range, time, request_time,
        server_addr, server_port (int), user_agent."""
        if not self.access_log.exists():
            return []
        entries = []
        for line in self.access_log.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            # $request_uri is empty when nginx refused the request line itself (400): take it from the line
            uri = entry["uri"] or (entry["request"].split(" ") + ["", ""])[1]
            path, _, query = uri.partition("?")
            entry.update(path=path, query=query)
            if str(entry.get("server_port", "")).isdigit():
                entry["server_port"] = int(entry["server_port"])
            entries.append(entry)
        return entries

    def wait_for_log(self, count, timeout=5.0):
        """The access log once it holds ``count`` entries: nginx writes an entry when the request is
        finalised, which can be a moment after the client has read the last byte."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.log_entries()
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.02)

    def bytes_served(self, path_prefix=None):
        """Sum of body bytes sent, for request paths starting with ``path_prefix`` (a full URL path such as
        /kiosk-releases/app/, or one relative to /kiosk-releases/)."""
        if path_prefix is not None and not path_prefix.startswith("/"):
            path_prefix = URL_PREFIX + path_prefix
        return sum(e["bytes"] for e in self.log_entries() if path_prefix is None or e["path"].startswith(path_prefix))


@contextlib.contextmanager
def topology_repos(topology, export_address):
    """
    nginx for the topology's release path, stopped by pid on the way out:
    the master's export of its store on ``export_address``:<master_port>, and
    each Pi's repository on its VLAN addresses. Yields ``(master, {pi: repo})``.
    The work dirs (and so the access logs the Pi minions' ``access_log``
    names) are the same for every module that uses them.
    """
    inventory = topology.inventory["kiosk_fleet"]
    root = pathlib.Path(topology.release_dir["root"])
    store = pathlib.Path(topology.top.config["kiosk_release"]["store"])
    store.mkdir(parents=True, exist_ok=True)
    started = []
    try:
        master = NginxRepo([f"{export_address}:{topology.release_dir['master_port']}"], store,
                           root / "nginx" / "master").start()
        started.append(master)
        pis = {}
        for campus in inventory["campuses"].values():
            for pi_id, pi in campus["pis"].items():
                (root / "repo" / pi_id).mkdir(parents=True, exist_ok=True)
                listen = [f"{v['source']}:{campus['repo_port']}" for v in pi["vlans"].values()]
                pis[pi_id] = NginxRepo(listen, root / "repo" / pi_id, root / "nginx" / pi_id).start()
                started.append(pis[pi_id])
        yield master, pis
    finally:
        for server in started:
            server.stop()
