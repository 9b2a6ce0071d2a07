"""
A real monitoring stack on loopback: node_exporter, Prometheus and
Alertmanager from the Debian packages, started as plain processes for the
tests and the lab (never the Debian services).

    from lab.monitor import Stack
    with Stack(root, {"pi-riverside-1": textfile_dir}, [rules], webhook_url) as stack:
        stack.query('kiosk_env_temperature_celsius')
        stack.alerts()

What it starts
    one ``prometheus-node-exporter`` per entry of ``exporters`` with only the
    textfile collector; one ``prometheus`` scraping them (target label
    ``node=<name>`` only: campus and pi come from the textfiles themselves),
    with the rule files and the Alertmanager as its alerting target; one
    ``prometheus-alertmanager`` routing every alert to ``webhook_url``
    (``send_resolved: true``), clustering off (``--cluster.listen-address=``
    empty: no gossip port). Every listener binds to ``host`` (a 127.x
    address) on a free port; storage, configs and each process's output log
    live under ``root``.

Processes
    each in its own process group (a new session), stopped by pid: SIGTERM,
    a wait, then SIGKILL. :meth:`Stack.start` waits for each one's readiness
    endpoint (``/-/ready``; node_exporter: ``/metrics``) with a deadline and
    raises :class:`MonitorError` naming the binary and the tail of its log
    when one does not come up (the webhook URL, which may carry tokens, is
    masked in anything this module raises).

The config builders (:func:`prometheus_config`, :func:`alertmanager_config`,
:func:`render`) are pure so they can be unit-tested and checked with
``promtool``/``amtool``.
"""

import ipaddress
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"
NODE_EXPORTER = "prometheus-node-exporter"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_DURATION = re.compile(r"^[0-9]{1,6}(ms|s|m|h|d)\Z")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}\Z")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
LOG_TAIL = 2000
PORT_ATTEMPTS = 3  # a free port can be taken between our probe and the child's bind
# no proxy, ever: every request of this module goes to loopback
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MonitorError(Exception):
    """A bad argument (naming the field), a process that did not come up, or a failed API call."""


# --------------------------------------------------------------------------- validation


def _check_host(host, field="host"):
    try:
        address = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        raise MonitorError(f"{field}: not an IP address: {host!r}") from None
    if address.version != 4 or not address.is_loopback:
        raise MonitorError(f"{field}: {host} is not in 127.0.0.0/8 (the stack listens on loopback only)")
    return str(address)


def _check_duration(value, field):
    if not isinstance(value, str) or not _DURATION.match(value):
        raise MonitorError(f"{field}: not a Prometheus duration such as '1s' or '5m': {value!r}")
    return value


def _check_name(value, field):
    if not isinstance(value, str) or not _NAME.match(value):
        raise MonitorError(f"{field}: not a name (letters, digits, '_.-', at most 63): {value!r}")
    return value


def _check_target(value, field):
    """``host:port`` with a loopback host."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise MonitorError(f"{field}: not host:port: {value!r}")
    host, port = value.split(":")
    _check_host(host, field)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MonitorError(f"{field}: bad port in {value!r}")
    return value


def _check_webhook_url(url, field="webhook_url"):
    """An http(s) URL on loopback; the message never repeats the URL (it may carry tokens)."""
    if not isinstance(url, str):
        raise MonitorError(f"{field}: not a string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MonitorError(f"{field}: not an http(s) URL")
    _check_host(parts.hostname, field)
    return url


def _mask(text, secret):
    """``text`` without the webhook URL nor its path and query (where tokens live)."""
    if not secret:
        return text
    parts = urllib.parse.urlsplit(secret)
    for piece in (secret, parts.path + ("?" + parts.query if parts.query else ""), parts.path, parts.query):
        if piece and len(piece) > 1:
            text = text.replace(piece, "<webhook>")
    return text


# --------------------------------------------------------------------------- pure config


def prometheus_config(exporter_targets, rule_files, alertmanager_target,
                      scrape_interval="1s", evaluation_interval="1s"):
    """
    The Prometheus configuration (a dict) of the loopback stack.

    ``exporter_targets``: ``{name: "127.0.0.1:port"}``, one scrape target
    each, labelled ``node=<name>`` only. ``rule_files``: absolute paths.
    ``alertmanager_target``: ``"127.0.0.1:port"``.
    """
    if not isinstance(exporter_targets, dict) or not exporter_targets:
        raise MonitorError("exporter_targets: expected a non-empty dict {name: 'host:port'}")
    if not isinstance(rule_files, (list, tuple)):
        raise MonitorError("rule_files: expected a list of paths")
    paths = []
    for index, path in enumerate(rule_files):
        if not isinstance(path, (str, os.PathLike)) or not os.path.isabs(os.fspath(path)):
            raise MonitorError(f"rule_files[{index}]: not an absolute path: {path!r}")
        paths.append(os.fspath(path))
    static = []
    for name in sorted(exporter_targets):
        _check_name(name, "exporter_targets")
        static.append({"targets": [_check_target(exporter_targets[name], f"exporter_targets.{name}")],
                       "labels": {"node": name}})
    return {
        "global": {
            "scrape_interval": _check_duration(scrape_interval, "scrape_interval"),
            "evaluation_interval": _check_duration(evaluation_interval, "evaluation_interval"),
        },
        "rule_files": paths,
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [_check_target(alertmanager_target, "alertmanager_target")]}]}]},
        "scrape_configs": [{"job_name": "node", "static_configs": static}],
    }


def alertmanager_config(webhook_url, group_wait="1s", group_interval="2s", repeat_interval="1h",
                        group_by=("alertname", "campus", "pi")):
    """
    The Alertmanager configuration (a dict): one route to one webhook
    receiver, resolved alerts sent too.
    """
    _check_webhook_url(webhook_url)
    if not isinstance(group_by, (list, tuple)) or not group_by:
        raise MonitorError("group_by: expected a non-empty list of label names")
    for label in group_by:
        if not isinstance(label, str) or not _LABEL.match(label):
            raise MonitorError(f"group_by: not a label name: {label!r}")
    return {
        "route": {
            "receiver": "webhook",
            "group_by": list(group_by),
            "group_wait": _check_duration(group_wait, "group_wait"),
            "group_interval": _check_duration(group_interval, "group_interval"),
            "repeat_interval": _check_duration(repeat_interval, "repeat_interval"),
        },
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }


def render(config):
    """A config dict as YAML text."""
    if not isinstance(config, dict):
        raise MonitorError("config: expected a dict")
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def prometheus_args(config_file, storage, address, retention="1d"):
    """
    The argument list of a loopback Prometheus (``address``: ``127.x:port``);
    the external URL is the loopback address too, not the machine's name,
    so the alerts' generatorURL points where the stack is.
    """
    _check_target(address, "address")
    return [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={storage}",
            f"--storage.tsdb.retention.time={_check_duration(retention, 'retention')}",
            f"--web.listen-address={address}", f"--web.external-url=http://{address}"]


def alertmanager_args(config_file, storage, address):
    """The argument list of a loopback Alertmanager, clustering off (no gossip port)."""
    _check_target(address, "address")
    return [ALERTMANAGER, f"--config.file={config_file}", f"--storage.path={storage}",
            f"--web.listen-address={address}", f"--web.external-url=http://{address}", "--cluster.listen-address="]


def node_exporter_args(textfile_dir, address):
    """The argument list of a node_exporter with only the textfile collector."""
    _check_target(address, "address")
    return [NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}", f"--web.listen-address={address}"]


# --------------------------------------------------------------------------- helpers


def free_port(host="127.0.0.1"):
    """A TCP port free on ``host`` right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_check_host(host), 0))
        return sock.getsockname()[1]


def poll(probe, timeout, what, interval=0.5):
    """
    Call ``probe()`` until it returns something truthy and return that;
    raise :class:`MonitorError` naming ``what`` after ``timeout`` seconds.
    Exceptions of ``probe`` are not caught.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise MonitorError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def http_post_json(url, data, timeout=5):
    """POST ``data`` as JSON to ``url`` (loopback, no proxy): ``(status, body bytes)``; ``(None, b"")`` when nothing answers."""
    request = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def http_get(url, timeout=5):
    """GET ``url`` (loopback, no proxy): ``(status, body bytes)``; ``(None, b"")`` when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid, timeout=10):
    """
    Stop a process of an earlier :class:`Stack` by its pid, from any process
    (``kiosk-lab down``): SIGTERM, wait up to ``timeout`` s, then SIGKILL.
    Returns what ended it, ``"SIGTERM"`` or ``"SIGKILL"``, ``"gone"`` when
    there was no such process, or ``""`` (false) when it outlived both. Only
    for pids this module started: the caller keeps them (``Stack.pids``) and
    checks they are still its own.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        raise MonitorError(f"pid: expected a process id > 1: {pid!r}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return "gone" if sig == signal.SIGTERM else "SIGTERM"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # reap it when it is our own child; otherwise its parent (init) does
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return sig.name
            except ChildProcessError:
                pass
            if not _alive(pid):
                return sig.name
            time.sleep(0.1)
    return "" if _alive(pid) else "SIGKILL"


def _tail(path, secret=None):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL))
            text = handle.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(no log: {error.strerror})"
    return _mask(text, secret).strip() or "(empty log)"


class _Process:
    """One child: its name, argv, log file, Popen and URLs."""

    def __init__(self, name, binary, log, ready_path):
        self.name, self.binary, self.log, self.ready_path = name, binary, log, ready_path
        self.popen = None
        self.url = None

    @property
    def pid(self):
        return self.popen.pid if self.popen else None


# --------------------------------------------------------------------------- the stack


class Stack:
    """
    node_exporter(s), Prometheus and Alertmanager on loopback; a context manager.

    ``exporters``: ``{name: textfile_dir}``; ``rule_files``: Prometheus rule
    files; ``webhook_url``: where Alertmanager posts (a loopback URL).
    After :meth:`start`: ``prometheus_url``, ``alertmanager_url``,
    ``exporter_urls`` (``{name: url}``), ``pids`` (``{process: pid}``) and
    ``logs`` (``{process: log path}``).
    """

    def __init__(self, root, exporters, rule_files, webhook_url, scrape_interval="1s", evaluation_interval="1s",
                 group_wait="1s", group_interval="2s", repeat_interval="1h", host="127.0.0.1",
                 ready_timeout=60, stop_timeout=10, retention="1d", alertmanager_yaml=None):
        if not isinstance(root, (str, os.PathLike)):
            raise MonitorError(f"root: not a path: {root!r}")
        self.root = pathlib.Path(root).resolve()
        if not isinstance(exporters, dict) or not exporters:
            raise MonitorError("exporters: expected a non-empty dict {name: textfile_dir}")
        self.exporters = {}
        for name, directory in exporters.items():
            _check_name(name, "exporters")
            if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
                raise MonitorError(f"exporters.{name}: not a directory: {directory!r}")
            self.exporters[name] = pathlib.Path(directory).resolve()
        if not isinstance(rule_files, (list, tuple)):
            raise MonitorError("rule_files: expected a list of paths")
        self.rule_files = []
        for index, path in enumerate(rule_files):
            if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
                raise MonitorError(f"rule_files[{index}]: not a file: {path!r}")
            self.rule_files.append(pathlib.Path(path).resolve())
        self.webhook_url = _check_webhook_url(webhook_url)
        self.host = _check_host(host)
        self.intervals = {
            "scrape_interval": _check_duration(scrape_interval, "scrape_interval"),
            "evaluation_interval": _check_duration(evaluation_interval, "evaluation_interval"),
        }
        self.routing = {
            "group_wait": _check_duration(group_wait, "group_wait"),
            "group_interval": _check_duration(group_interval, "group_interval"),
            "repeat_interval": _check_duration(repeat_interval, "repeat_interval"),
        }
        self.retention = _check_duration(retention, "retention")
        # a whole Alertmanager config instead of the built one (a test of the shipped
        # routes and inhibitions): still checked to name webhook_url as its only receiver URL
        if alertmanager_yaml is not None:
            self._check_alertmanager_yaml(alertmanager_yaml)
        self.alertmanager_yaml = alertmanager_yaml
        for field, value in (("ready_timeout", ready_timeout), ("stop_timeout", stop_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise MonitorError(f"{field}: expected a positive number of seconds: {value!r}")
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.processes = []
        self.prometheus_url = self.alertmanager_url = None
        self.exporter_urls = {}

    # ---- lifecycle

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def pids(self):
        return {p.name: p.pid for p in self.processes if p.popen}

    @property
    def logs(self):
        return {p.name: p.log for p in self.processes}

    def start(self):
        """Start every process and wait until each is ready; on any failure stop what started and raise."""
        if self.processes:
            raise MonitorError("start: this stack was already started")
        for sub in ("logs", "prometheus", "alertmanager", "config"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # the logs hold the processes' argv and output: readable by their owner only
        os.chmod(self.root / "logs", 0o700)
        try:
            for name, directory in self.exporters.items():
                proc = self._launch(f"node_exporter-{name}", NODE_EXPORTER, "/metrics",
                                    lambda address, d=directory: node_exporter_args(d, address))
                self.exporter_urls[name] = proc.url
            am_config = self.root / "config" / "alertmanager.yml"
            self._write_private(am_config, self.alertmanager_yaml
                                or render(alertmanager_config(self.webhook_url, **self.routing)))
            proc = self._launch("alertmanager", ALERTMANAGER, "/-/ready", lambda address: alertmanager_args(
                am_config, self.root / "alertmanager", address))
            self.alertmanager_url = proc.url
            targets = {name: urllib.parse.urlsplit(url).netloc for name, url in self.exporter_urls.items()}
            prom_config = self.root / "config" / "prometheus.yml"
            prom_config.write_text(render(prometheus_config(
                targets, [str(p) for p in self.rule_files], urllib.parse.urlsplit(self.alertmanager_url).netloc,
                **self.intervals)))
            proc = self._launch("prometheus", PROMETHEUS, "/-/ready", lambda address: prometheus_args(
                prom_config, self.root / "prometheus", address, self.retention))
            self.prometheus_url = proc.url
        except BaseException:
            self.stop()
            raise
        return self

    def _check_alertmanager_yaml(self, text):
        """Network rule: every webhook of a given config posts to ``webhook_url`` (loopback), nothing else."""
        try:
            config = yaml.safe_load(text) if isinstance(text, str) else None
        except yaml.YAMLError as error:
            raise MonitorError(f"alertmanager_yaml: not YAML: {error}") from None
        if not isinstance(config, dict) or not isinstance(config.get("receivers"), list):
            raise MonitorError("alertmanager_yaml: expected an Alertmanager config with a receivers list")
        for receiver in config["receivers"]:
            if not isinstance(receiver, dict):
                raise MonitorError("alertmanager_yaml: a receiver is not a mapping")
            for key, hooks in receiver.items():
                if key.endswith("_configs") and key != "webhook_configs":
                    raise MonitorError(f"alertmanager_yaml: receiver {receiver.get('name')!r}: only webhook_configs")
                if key == "webhook_configs" and any(
                        not isinstance(h, dict) or h.get("url") != self.webhook_url for h in hooks or []):
                    raise MonitorError(f"alertmanager_yaml: receiver {receiver.get('name')!r}: "
                                       "every webhook url must be webhook_url")

    def _write_private(self, path, text):
        """The Alertmanager config holds the webhook URL (tokens): readable by its owner only."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # the mode of os.open applies to a new file only: narrow an existing one too
        with os.fdopen(fd, "w") as handle:
            handle.write(text)

    def _launch(self, name, binary, ready_path, argv_for):
        """Start one process on a free port and wait until ``ready_path`` answers 200; retry a taken port."""
        log = self.root / "logs" / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
        for attempt in range(1, PORT_ATTEMPTS + 1):
            address = f"{self.host}:{free_port(self.host)}"
            argv = argv_for(address)
            proc = _Process(name, binary, log, ready_path)
            proc.url = f"http://{address}"
            with open(log, "ab") as out:
                out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} attempt {attempt}: {argv}\n".encode())
                out.flush()
                try:
                    # a new session: its own process group, away from the test's terminal signals
                    proc.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                                  start_new_session=True)
                except OSError as error:
                    raise MonitorError(f"{binary}: cannot start: {error.strerror}") from None
            self.processes.append(proc)
            state = self._wait_ready(proc)
            if state == "ready":
                return proc
            self._stop_one(proc)
            tail = _tail(log, self.webhook_url)
            if state == "exited" and "address already in use" in tail and attempt < PORT_ATTEMPTS:
                continue
            why = (f"exited with status {proc.popen.returncode}" if state == "exited"
                   else f"not ready at {proc.url}{ready_path} within {self.ready_timeout:g} s")
            raise MonitorError(f"{binary} ({name}) {why}; log {log}, its tail:\n{tail}")
        raise MonitorError(f"{binary} ({name}): no free port after {PORT_ATTEMPTS} attempts")  # not reached

    def _wait_ready(self, proc):
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if proc.popen.poll() is not None:
                return "exited"
            status, _ = http_get(proc.url + proc.ready_path, timeout=2)
            if status == 200:
                return "ready"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(0.2)

    def _stop_one(self, proc):
        popen = proc.popen
        if popen is None or popen.poll() is not None:
            return
        try:
            popen.send_signal(signal.SIGTERM)
            popen.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=self.stop_timeout)
        except ProcessLookupError:
            pass

    def stop(self):
        """Stop every process by pid (Prometheus first, so it sends nothing to a stopped Alertmanager)."""
        for proc in reversed(self.processes):
            self._stop_one(proc)

    def running(self):
        """``{process: pid}`` of the processes still alive."""
        return {p.name: p.pid for p in self.processes if p.popen and p.popen.poll() is None}

    # ---- API

    def _api(self, base, path, params=None, what="API"):
        if base is None:
            raise MonitorError(f"{what}: the stack is not started")
        url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        status, body = http_get(url, timeout=10)
        if status is None:
            raise MonitorError(f"{what}: nothing answered at {base}{path}")
        try:
            data = json.loads(body)
        except ValueError:
            raise MonitorError(f"{what}: HTTP {status}, not JSON: {body[:200]!r}") from None
        if status != 200 or (isinstance(data, dict) and data.get("status") not in (None, "success")):
            error = data.get("error") if isinstance(data, dict) else None
            raise MonitorError(f"{what}: HTTP {status}: {error or body[:200]!r}")
        return data

    def query(self, promql, at=None):
        """An instant query: the ``result`` list of /api/v1/query."""
        if not isinstance(promql, str) or not promql.strip():
            raise MonitorError("promql: expected a non-empty query")
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        return self._api(self.prometheus_url, "/api/v1/query", params, "query")["data"]["result"]

    def query_range(self, promql, start, end, step):
        """A range query: the ``result`` list of /api/v1/query_range (start/end: unix seconds; step: seconds)."""
        if not isinstance(promql, str) or not promql.strip():
            raise MonitorError("promql: expected a non-empty query")
        for field, value in (("start", start), ("end", end), ("step", step)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MonitorError(f"{field}: expected a number: {value!r}")
        if step <= 0 or end < start:
            raise MonitorError("step/end: expected step > 0 and end >= start")
        params = {"query": promql, "start": str(start), "end": str(end), "step": str(step)}
        return self._api(self.prometheus_url, "/api/v1/query_range", params, "query_range")["data"]["result"]

    def alerts(self):
        """Prometheus's active alerts (/api/v1/alerts): dicts with labels, annotations, state."""
        return self._api(self.prometheus_url, "/api/v1/alerts", None, "alerts")["data"]["alerts"]

    def rules(self):
        """Prometheus's rule groups (/api/v1/rules): shows whether the rule files loaded."""
        return self._api(self.prometheus_url, "/api/v1/rules", None, "rules")["data"]["groups"]

    def targets(self):
        """Prometheus's active scrape targets (/api/v1/targets)."""
        return self._api(self.prometheus_url, "/api/v1/targets", None, "targets")["data"]["activeTargets"]

    def send_alerts(self, alerts):
        """
        Post alerts straight to Alertmanager (/api/v2/alerts), as Prometheus
        would: a list of ``{"labels": {...}, "annotations": {...}}`` (optionally
        ``startsAt``/``endsAt``, RFC 3339).
        """
        if not isinstance(alerts, list) or not all(isinstance(a, dict) and isinstance(a.get("labels"), dict)
                                                   for a in alerts):
            raise MonitorError("alerts: expected a list of {'labels': {...}, ...}")
        if self.alertmanager_url is None:
            raise MonitorError("send_alerts: the stack is not started")
        status, body = http_post_json(self.alertmanager_url + "/api/v2/alerts", alerts)
        if status != 200:
            raise MonitorError(f"send_alerts: HTTP {status}: {body[:200]!r}")

    def alertmanager_alerts(self):
        """The alerts Alertmanager holds (/api/v2/alerts)."""
        return self._api(self.alertmanager_url, "/api/v2/alerts", None, "alertmanager_alerts")
