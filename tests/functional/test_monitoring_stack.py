"""
The alert path from a Pi's sensor to the operators' webhook, with the real
programs: the ``kiosk_env`` beacon (loaded through Salt's loaders with
``module_dirs: [repo]``, as tests/functional/test_env_beacon.py does) reads a
fake DHT11 IIO tree and a fake MQ-2 GPIO reader and writes ``kiosk_env.prom``;
``prometheus-node-exporter`` serves that directory; ``prometheus`` scrapes it
and evaluates the shipped rules (monitoring/prometheus/kiosk_fleet.rules.yml);
``prometheus-alertmanager`` posts to a loopback webhook
(tests/support/webhook.py). The stack is lab/monitor.py's ``Stack``, on
127.0.0.1 ports, started once for the module.

One Pi, pi-riverside-1, at 43 C from the start (PiTooHot, ``for: 1m``), so
that minute runs while the smoke test (PiSmoke, no ``for:``) raises and
clears smoke through the fake MQ-2 reader. One Pi because Salt's loaded
modules share ``__opts__`` within a process: a second minion loaded in the
same process would write its id into the first one's textfile. Every wait is
a poll with a deadline.

The shipped monitoring/alertmanager/alertmanager.yml (its placeholder URL
replaced by the test's webhook, its waits shortened) runs too, fed alerts
straight through Alertmanager's API: severity routing and the inhibition of
a stale Pi's reading alerts (never its smoke).
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import psutil
import pytest
import salt.config
import yaml
import salt.loader

from lab import monitor
from tests.support.topology import write_fake_dht11
from tests.support.webhook import Webhook

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "kiosk_fleet.rules.yml"
ALERTMANAGER_YML = REPO / "monitoring" / "alertmanager" / "alertmanager.yml"
# PiTooHot has `for: 1m`; scrape and evaluation every second, Alertmanager's
# group_wait 1 s: ~65 s on an idle machine, the rest is margin for 2 loaded cores
FIRING_DEADLINE_S = 150
SMOKE_DEADLINE_S = 60
SCRAPE_DEADLINE_S = 60
RESOLVED_DEADLINE_S = 45



def test_the_monitoring_binaries_are_installed():
    # .ci/bootstrap installs them: a missing one is a failure of the set-up, never a skip
    missing = [name for name in (monitor.PROMETHEUS, monitor.ALERTMANAGER, monitor.NODE_EXPORTER)
               if shutil.which(name) is None]
    assert not missing, f"not installed (Debian packages prometheus, prometheus-alertmanager, " \
                        f"prometheus-node-exporter; run .ci/bootstrap): {missing}"


class FakeSmoke:
    """The GPIO reader interface of the beacon: read() -> bool (True = smoke)."""

    def __init__(self, value):
        self.value = value

    def read(self):
        return self.value

    def close(self):
        pass


class Pi:
    """One Pi: its fake sysfs, its textfile directory and its kiosk_env beacon loaded by Salt."""

    def __init__(self, base, campus, pi_id, temp_milli_c, smoke):
        self.campus, self.id = campus, pi_id
        self.sysfs = base / "sys"
        self.device = write_fake_dht11(self.sysfs, temp_milli_c, 45000)
        self.textfiles = base / "textfiles"
        self.textfiles.mkdir()
        root = base / "minion"
        root.mkdir()
        opts = salt.config.minion_config(None)
        opts.update({"file_client": "local", "root_dir": str(root), "cachedir": str(root),
                     "module_dirs": [str(REPO)], "id": pi_id, "enable_fqdns_grains": False})
        opts["grains"] = salt.loader.grains(opts)
        mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts))
        self.reader = FakeSmoke(smoke)
        self.beacon = salt.loader.beacons(opts, mods, context={"kiosk_env.gpio_reader": self.reader})
        self.config = [{"sysfs_root": str(self.sysfs)}, {"temperature": [5, 40]}, {"humidity": [20, 80]},
                       {"smoke": True}, {"gpio": {"chip_label": "pinctrl-bcm2711", "line": 17, "active_low": True}},
                       {"warmup_s": 0}, {"textfile_dir": str(self.textfiles)}, {"campus": campus},
                       {"report_every": 0}]
        valid, message = self.beacon["kiosk_env.validate"](self.config)
        assert valid, message

    def interval(self):
        """One beacon interval (what the minion runs every 30 s): its events; it rewrites kiosk_env.prom."""
        return self.beacon["kiosk_env.beacon"](self.config)


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def pi(tmp_path_factory):
    hot = Pi(tmp_path_factory.mktemp("pi"), "riverside", "pi-riverside-1", 43000, smoke=False)
    assert [(e["tag"], e["metric"]) for e in hot.interval()] == [("alert", "temperature")]
    return hot


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pi, webhook):
    if not RULES.is_file():
        pytest.fail(f"{RULES.relative_to(REPO)} is missing: the shipped rules are what this test runs")
    root = tmp_path_factory.mktemp("stack")
    with monitor.Stack(root, {pi.id: pi.textfiles}, [RULES], webhook.url) as running:
        yield running


def alert_labels(pi, name):
    return {"alertname": name, "campus": pi.campus, "pi": pi.id}


def firing_in_prometheus(stack, labels):
    return [a for a in stack.alerts()
            if a["state"] == "firing" and all(a["labels"].get(k) == v for k, v in labels.items())]


def notification(status, labels):
    """A predicate for the webhook: an Alertmanager (version 4) POST of ``status`` carrying an alert with ``labels``."""
    def match(body):
        return (body.get("version") == "4" and body.get("status") == status
                and any(a.get("status") == status and all(a["labels"].get(k) == v for k, v in labels.items())
                        for a in body.get("alerts", [])))
    return match


def test_the_stack_scrapes_the_beacons_textfile_and_loads_the_shipped_rules(stack, pi):
    try:
        series = monitor.poll(lambda: stack.query(f'kiosk_env_temperature_celsius{{pi="{pi.id}"}}'), SCRAPE_DEADLINE_S,
                              "the Pi's temperature in Prometheus")
    except monitor.MonitorError as error:
        exported = {name: [line for line in monitor.http_get(url + "/metrics")[1].decode().splitlines()
                           if line.startswith("kiosk_env_temperature")] for name, url in stack.exporter_urls.items()}
        targets = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in stack.targets()]
        pytest.fail(f"{error}; targets {targets}; exported {exported}")
    assert [(s["metric"]["campus"], s["metric"]["node"], float(s["value"][1])) for s in series] == [
        ("riverside", pi.id, 43.0)]
    names = {r["name"] for g in stack.rules() for r in g["rules"] if r["type"] == "alerting"}
    assert {"PiTooHot", "PiSmoke", "PiTextfileStale"} <= names


def test_smoke_fires_pismoke_at_once_and_alertmanager_posts_it(stack, pi, webhook):
    labels = alert_labels(pi, "PiSmoke")
    pi.reader.value = True
    assert [(e["tag"], e["metric"]) for e in pi.interval()] == [("alert", "smoke")]
    [alert] = monitor.poll(lambda: firing_in_prometheus(stack, labels), SMOKE_DEADLINE_S, "PiSmoke firing")
    assert alert["labels"]["severity"] == "critical"
    assert pi.id in alert["annotations"]["summary"]
    post = webhook.wait_for(notification("firing", labels), timeout=SMOKE_DEADLINE_S)
    assert post is not None, f"no PiSmoke notification; posts: {[p.get('json', {}).get('groupKey') for p in webhook.posts]}"
    [sent] = [a for a in post["json"]["alerts"] if a["labels"]["alertname"] == "PiSmoke"]
    assert sent["labels"]["severity"] == "critical" and sent["annotations"]["summary"] == alert["annotations"]["summary"]
    assert post["path"] == webhook.path  # the configured URL, path and query as given

    pi.reader.value = False
    assert [(e["tag"], e["metric"]) for e in pi.interval()] == [("clear", "smoke")]
    resolved = webhook.wait_for(notification("resolved", labels), timeout=RESOLVED_DEADLINE_S, after=post["at"])
    assert resolved is not None, "the smoke cleared but no resolved notification arrived"


def test_a_hot_pi_fires_pitoohot_then_resolves_when_it_cools(stack, pi, webhook):
    labels = alert_labels(pi, "PiTooHot")
    [alert] = monitor.poll(lambda: firing_in_prometheus(stack, labels), FIRING_DEADLINE_S, "PiTooHot firing")
    assert alert["labels"]["severity"] == "warning"
    assert pi.id in alert["annotations"]["summary"]
    firing = webhook.wait_for(notification("firing", labels), timeout=30)
    assert firing is not None, "Prometheus fired PiTooHot but Alertmanager posted nothing"
    assert firing["json"]["groupLabels"] == labels

    (pi.device / "in_temp_input").write_text("25000\n")
    assert [(e["tag"], e["metric"]) for e in pi.interval()] == [("clear", "temperature")]
    resolved = webhook.wait_for(notification("resolved", labels), timeout=RESOLVED_DEADLINE_S, after=firing["at"])
    assert resolved is not None, "PiTooHot cleared but no resolved notification arrived"
    assert not firing_in_prometheus(stack, labels)


def test_no_webhook_token_in_the_stacks_logs(stack, webhook):
    for name, log in stack.logs.items():
        assert webhook.secrets_in(pathlib.Path(log).read_text(errors="replace")) == [], name


def test_every_listener_is_one_loopback_port_and_alertmanager_opens_no_gossip_port(stack):
    urls = {"prometheus": stack.prometheus_url, "alertmanager": stack.alertmanager_url,
            **{f"node_exporter-{name}": url for name, url in stack.exporter_urls.items()}}
    for name, pid in stack.pids.items():
        sockets = psutil.Process(pid).net_connections(kind="inet")
        listening = [c for c in sockets if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM]
        assert [f"http://{c.laddr.ip}:{c.laddr.port}" for c in listening] == [urls[name]], name


def test_stop_ends_every_process(stack):
    pids = stack.pids
    assert set(pids) == {"node_exporter-pi-riverside-1", "alertmanager", "prometheus"}
    assert set(stack.running()) == set(pids)
    stack.stop()
    assert stack.running() == {}
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):  # gone and reaped: no process, no zombie
            os.kill(pid, 0)


def test_a_process_that_does_not_come_up_is_named_with_its_log_and_nothing_is_left(tmp_path, webhook):
    broken = tmp_path / "broken.rules.yml"
    broken.write_text("groups:\n  - name: broken\n    rules:\n      - alert: Broken\n        expr: 'rate(('\n")
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    stack = monitor.Stack(tmp_path / "stack", {"pi-1": textfiles}, [broken], webhook.url, ready_timeout=30)
    with pytest.raises(monitor.MonitorError) as raised:
        stack.start()
    message = str(raised.value)
    assert message.startswith("prometheus (prometheus) exited with status")
    assert str(broken) in message  # Prometheus's own words on the rule file, from the tail of its log
    assert webhook.secrets_in(message) == []
    assert len(stack.pids) == 3 and stack.running() == {}
    for pid in stack.pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def shipped_alertmanager_for(webhook):
    """The shipped alertmanager.yml with the placeholder URL replaced by the test's webhook and short waits."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook.url
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update({"group_wait": "1s", "group_interval": "2s"})
    return monitor.render(config)


def test_the_shipped_alertmanager_routes_by_severity_and_a_stale_textfile_inhibits_but_not_smoke(tmp_path, webhook):
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    with monitor.Stack(tmp_path / "stack", {"pi-1": textfiles}, [], webhook.url,
                       alertmanager_yaml=shipped_alertmanager_for(webhook)) as stack:
        since = webhook.posts[-1]["at"] if webhook.posts else 0
        west = {"campus": "west", "pi": "pi-west-2"}
        stack.send_alerts([
            {"labels": {"alertname": "PiTextfileStale", "severity": "warning", "reason": "textfile_old", **west}},
            {"labels": {"alertname": "PiTooHot", "severity": "warning", **west}},
            {"labels": {"alertname": "PiSmoke", "severity": "critical", **west}},
            {"labels": {"alertname": "PiTooHot", "severity": "warning", "campus": "west", "pi": "pi-west-3"}},
        ])

        others = (("PiTextfileStale", "pi-west-2"), ("PiSmoke", "pi-west-2"), ("PiTooHot", "pi-west-3"))

        def states():
            # the inhibition is applied after the alerts appear: wait for it, not just for the four alerts
            held = {(a["labels"]["alertname"], a["labels"]["pi"]): a["status"]
                    for a in stack.alertmanager_alerts() if a["labels"].get("campus") == "west"}
            settled = (len(held) == 4 and held[("PiTooHot", "pi-west-2")]["state"] == "suppressed"
                       and all(held[key]["state"] == "active" for key in others))
            return held if settled else None

        held = monitor.poll(states, 30, "Alertmanager to suppress PiTooHot of pi-west-2 and hold the others active")
        assert held[("PiTooHot", "pi-west-2")]["state"] == "suppressed"
        assert held[("PiTooHot", "pi-west-2")]["inhibitedBy"]
        for key in others:
            assert held[key]["state"] == "active" and not held[key]["inhibitedBy"], key

        smoke = webhook.wait_for(notification("firing", {"alertname": "PiSmoke", **west}), timeout=30, after=since)
        assert smoke is not None and smoke["json"]["receiver"] == "kiosk-webhook-critical"
        other = webhook.wait_for(notification("firing", {"alertname": "PiTooHot", "pi": "pi-west-3"}), timeout=30,
                                 after=since)
        assert other is not None and other["json"]["receiver"] == "kiosk-webhook"
        # grouped by alertname and campus: the posted PiTooHot group holds the inhibited one's sibling only
        assert [a["labels"]["pi"] for a in other["json"]["alerts"]] == ["pi-west-3"]


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_pid_ends_a_process_started_elsewhere_with_sigkill_when_sigterm_is_ignored(ignore_term):
    code = ("import signal, sys, time\n"
            f"if {ignore_term}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert child.stdout.readline() == b"ready\n"  # its SIGTERM handler is in place
        assert monitor.stop_pid(child.pid, timeout=1) == ("SIGKILL" if ignore_term else "SIGTERM")
        with pytest.raises(ProcessLookupError):  # gone and reaped
            os.kill(child.pid, 0)
        assert monitor.stop_pid(child.pid) == "gone"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    with pytest.raises(monitor.MonitorError, match="^pid:"):
        monitor.stop_pid(1)


def test_a_port_taken_between_probe_and_bind_is_retried_on_another(tmp_path, webhook, monkeypatch):
    """free_port() can race another program on a shared machine: the stack then retries with a new port."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real = monitor.free_port
    monkeypatch.setattr(monitor, "free_port", lambda host: next(ports, None) or real(host))
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    try:
        with monitor.Stack(tmp_path / "stack", {"pi-1": textfiles}, [], webhook.url) as stack:
            assert stack.exporter_urls["pi-1"] != f"http://127.0.0.1:{taken.getsockname()[1]}"
            log = pathlib.Path(stack.logs["node_exporter-pi-1"]).read_text()
            assert "attempt 1" in log and "address already in use" in log and "attempt 2" in log
            assert len(stack.running()) == 3
    finally:
        taken.close()
