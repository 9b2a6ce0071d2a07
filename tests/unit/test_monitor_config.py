"""
The monitoring configs: the pure builders of lab/monitor.py (what the
loopback stack runs) and the shipped production examples under monitoring/,
each checked by the tools of the installed Prometheus and Alertmanager
(``promtool check config``, ``amtool check-config``, ``amtool config routes
test``). No daemon is started here (tests/functional/test_monitoring_stack.py
runs the stack).
"""

import pathlib
import shutil
import subprocess

import pytest
import yaml

from lab import monitor

REPO = pathlib.Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO / "monitoring" / "prometheus" / "prometheus.yml"
RULES_YML = REPO / "monitoring" / "prometheus" / "kiosk_fleet.rules.yml"
ALERTMANAGER_YML = REPO / "monitoring" / "alertmanager" / "alertmanager.yml"
WEBHOOK = "http://127.0.0.1:8091/hooks/pathtokSECRET/kiosk?token=querytokSECRET"


def tool(name):
    path = shutil.which(name)
    # .ci/bootstrap installs it: missing is a failed set-up, not a skip
    assert path is not None, f"{name} is not installed (Debian package prometheus / prometheus-alertmanager)"
    return path


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def rules_file():
    assert RULES_YML.is_file(), f"{RULES_YML.relative_to(REPO)} is missing"
    return RULES_YML


# ------------------------------------------------------------------ prometheus_config


def test_prometheus_config_scrapes_each_exporter_labelled_with_its_name_only():
    config = monitor.prometheus_config({"pi-west-1": "127.0.0.1:9101", "pi-riverside-1": "127.0.0.2:9102"},
                                       ["/srv/rules/a.yml"], "127.0.0.1:9093", scrape_interval="2s",
                                       evaluation_interval="3s")
    assert config["global"] == {"scrape_interval": "2s", "evaluation_interval": "3s"}
    assert config["rule_files"] == ["/srv/rules/a.yml"]
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    [job] = config["scrape_configs"]
    assert job["static_configs"] == [
        {"targets": ["127.0.0.2:9102"], "labels": {"node": "pi-riverside-1"}},
        {"targets": ["127.0.0.1:9101"], "labels": {"node": "pi-west-1"}},
    ]


@pytest.mark.parametrize("kwargs, field", [
    ({"exporter_targets": {}}, "exporter_targets"),
    ({"exporter_targets": {"pi 1": "127.0.0.1:9100"}}, "exporter_targets"),
    ({"exporter_targets": {"pi-1": "10.0.0.5:9100"}}, "exporter_targets.pi-1"),
    ({"exporter_targets": {"pi-1": "127.0.0.1:0"}}, "exporter_targets.pi-1"),
    ({"rule_files": ["rules.yml"]}, "rule_files[0]"),
    ({"alertmanager_target": "0.0.0.0:9093"}, "alertmanager_target"),
    ({"scrape_interval": "1 second"}, "scrape_interval"),
    ({"evaluation_interval": 5}, "evaluation_interval"),
])
def test_prometheus_config_names_the_bad_field(kwargs, field):
    args = {"exporter_targets": {"pi-1": "127.0.0.1:9100"}, "rule_files": [], "alertmanager_target": "127.0.0.1:9093"}
    args.update(kwargs)
    with pytest.raises(monitor.MonitorError) as raised:
        monitor.prometheus_config(**args)
    assert str(raised.value).startswith(f"{field}:")


def test_rendered_prometheus_config_passes_promtool(tmp_path):
    promtool = tool("promtool")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "Hot", "expr": "kiosk_env_temperature_celsius > 40", "labels": {"severity": "warning"}}]}]}))
    config = tmp_path / "prometheus.yml"
    config.write_text(monitor.render(monitor.prometheus_config(
        {"pi-1": "127.0.0.1:9100"}, [str(rules)], "127.0.0.1:9093")))
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


# ------------------------------------------------------------------ alertmanager_config


def test_alertmanager_config_routes_everything_to_the_webhook_with_resolved():
    config = monitor.alertmanager_config(WEBHOOK, group_wait="1s", group_interval="2s", repeat_interval="5m")
    assert config["route"] == {"receiver": "webhook", "group_by": ["alertname", "campus", "pi"],
                               "group_wait": "1s", "group_interval": "2s", "repeat_interval": "5m"}
    assert config["receivers"] == [{"name": "webhook", "webhook_configs": [{"url": WEBHOOK, "send_resolved": True}]}]


@pytest.mark.parametrize("kwargs, field", [
    ({"webhook_url": "http://192.0.2.7/hooks/pathtokSECRET?token=querytokSECRET"}, "webhook_url"),
    ({"webhook_url": "ftp://127.0.0.1/pathtokSECRET"}, "webhook_url"),
    ({"webhook_url": None}, "webhook_url"),
    ({"group_wait": "soon"}, "group_wait"),
    ({"group_interval": ""}, "group_interval"),
    ({"repeat_interval": "1w"}, "repeat_interval"),
    ({"group_by": []}, "group_by"),
    ({"group_by": ["alert-name"]}, "group_by"),
])
def test_alertmanager_config_names_the_bad_field_and_never_the_url(kwargs, field):
    args = {"webhook_url": WEBHOOK, **kwargs}
    with pytest.raises(monitor.MonitorError) as raised:
        monitor.alertmanager_config(**args)
    assert str(raised.value).startswith(f"{field}:")
    assert "SECRET" not in str(raised.value)


def test_rendered_alertmanager_config_passes_amtool(tmp_path):
    amtool = tool("amtool")
    config = tmp_path / "alertmanager.yml"
    config.write_text(monitor.render(monitor.alertmanager_config(WEBHOOK)))
    result = run([amtool, "check-config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_is_yaml_of_the_dict():
    config = monitor.alertmanager_config(WEBHOOK)
    assert yaml.safe_load(monitor.render(config)) == config
    with pytest.raises(monitor.MonitorError, match="^config:"):
        monitor.render(["not", "a", "dict"])


# ------------------------------------------------------------------ argument lists


def test_argument_lists_bind_loopback_and_open_no_gossip_port():
    node = monitor.node_exporter_args("/var/tf", "127.0.0.1:9100")
    assert node[0] == "prometheus-node-exporter"
    assert {"--collector.disable-defaults", "--collector.textfile", "--collector.textfile.directory=/var/tf",
            "--web.listen-address=127.0.0.1:9100"} <= set(node)
    am = monitor.alertmanager_args("/r/am.yml", "/r/am", "127.0.0.1:9093")
    assert "--cluster.listen-address=" in am  # empty: clustering (gossip on 0.0.0.0:9094) off
    assert "--web.listen-address=127.0.0.1:9093" in am
    prom = monitor.prometheus_args("/r/p.yml", "/r/prometheus", "127.0.0.3:9090")
    assert {"--web.listen-address=127.0.0.3:9090", "--storage.tsdb.path=/r/prometheus",
            "--storage.tsdb.retention.time=1d"} <= set(prom)
    for build in (lambda: monitor.node_exporter_args("/tf", ":9100"),
                  lambda: monitor.alertmanager_args("/a", "/b", "0.0.0.0:9093"),
                  lambda: monitor.prometheus_args("/a", "/b", "10.1.2.3:9090")):
        with pytest.raises(monitor.MonitorError, match="^address:"):
            build()


def test_every_flag_exists_in_the_installed_binaries():
    """The flags the stack passes, against each binary's own --help (Debian 12: 2.42, 0.25, 1.5)."""
    for argv in (monitor.node_exporter_args("/tf", "127.0.0.1:1"),
                 monitor.alertmanager_args("/a", "/b", "127.0.0.1:1"),
                 monitor.prometheus_args("/a", "/b", "127.0.0.1:1")):
        binary = tool(argv[0])
        helptext = run([binary, "--help"])
        text = helptext.stdout + helptext.stderr
        for flag in argv[1:]:
            assert flag.split("=")[0] in text, f"{argv[0]} has no {flag}"


# ------------------------------------------------------------------ Stack arguments (nothing started)


@pytest.mark.parametrize("change, field", [
    ({"exporters": {}}, "exporters"),
    ({"exporters": {"pi-1": "/nonexistent/dir"}}, "exporters.pi-1"),
    ({"rule_files": ["/nonexistent/rules.yml"]}, "rule_files[0]"),
    ({"webhook_url": "https://alerts.example.org/hooks/pathtokSECRET"}, "webhook_url"),
    ({"host": "0.0.0.0"}, "host"),
    ({"host": "::1"}, "host"),
    ({"group_wait": "1 s"}, "group_wait"),
    ({"ready_timeout": 0}, "ready_timeout"),
])
def test_stack_names_the_bad_argument_before_starting_anything(tmp_path, change, field):
    args = {"root": tmp_path / "stack", "exporters": {"pi-1": tmp_path}, "rule_files": [], "webhook_url": WEBHOOK}
    args.update(change)
    with pytest.raises(monitor.MonitorError) as raised:
        monitor.Stack(**args)
    assert str(raised.value).startswith(f"{field}:")
    assert "SECRET" not in str(raised.value)
    assert not (tmp_path / "stack").exists()


@pytest.mark.parametrize("text, says", [
    ("route: {receiver: a}\nreceivers:\n  - name: a\n    webhook_configs:\n      - url: http://127.0.0.1:9/other\n",
     "every webhook url must be webhook_url"),
    ("route: {receiver: a}\nreceivers:\n  - name: a\n    email_configs:\n      - to: ops@example.org\n",
     "only webhook_configs"),
    ("route: {receiver: a}\n", "expected an Alertmanager config with a receivers list"),
    ("[unclosed", "not YAML"),
])
def test_a_given_alertmanager_config_may_only_post_to_the_webhook(tmp_path, text, says):
    with pytest.raises(monitor.MonitorError) as raised:
        monitor.Stack(tmp_path / "stack", {"pi-1": tmp_path}, [], WEBHOOK, alertmanager_yaml=text)
    assert str(raised.value).startswith("alertmanager_yaml:") and says in str(raised.value)


def test_a_given_alertmanager_config_posting_to_the_webhook_is_taken(tmp_path):
    text = monitor.render(monitor.alertmanager_config(WEBHOOK, group_wait="3s"))
    stack = monitor.Stack(tmp_path / "stack", {"pi-1": tmp_path}, [], WEBHOOK, alertmanager_yaml=text)
    assert stack.alertmanager_yaml == text


def test_the_alertmanager_config_and_the_logs_are_their_owners_only_even_when_they_existed(tmp_path, monkeypatch):
    stack = monitor.Stack(tmp_path / "stack", {"pi-1": tmp_path}, [], WEBHOOK)
    (tmp_path / "stack" / "logs").mkdir(parents=True, mode=0o755)
    (tmp_path / "stack" / "logs").chmod(0o755)  # a run before this fix left it readable by all
    config = tmp_path / "stack" / "alertmanager.yml"
    config.write_text("old")
    config.chmod(0o644)
    stack._write_private(config, "receivers: []\n")
    assert config.read_text() == "receivers: []\n" and config.stat().st_mode & 0o777 == 0o600

    def refuse(*args, **kwargs):
        raise monitor.MonitorError("no process started in a unit test")

    monkeypatch.setattr(stack, "_launch", refuse)
    with pytest.raises(monitor.MonitorError, match="no process started"):
        stack.start()
    assert (tmp_path / "stack" / "logs").stat().st_mode & 0o777 == 0o700


def test_log_tails_mask_the_webhook_url():
    text = f"level=error msg=notify err=Post {WEBHOOK}: refused; path /hooks/pathtokSECRET/kiosk?token=querytokSECRET"
    masked = monitor._mask(text, WEBHOOK)
    assert "SECRET" not in masked and "<webhook>" in masked


def test_poll_returns_the_first_truthy_value_or_names_what_it_waited_for():
    values = iter([[], None, ["x"]])
    assert monitor.poll(lambda: next(values), timeout=10, what="x", interval=0) == ["x"]
    with pytest.raises(monitor.MonitorError, match="waiting for PiTooHot firing"):
        monitor.poll(lambda: [], timeout=0, what="PiTooHot firing")


# ------------------------------------------------------------------ shipped production examples


def test_shipped_prometheus_config_passes_promtool_with_the_shipped_rules():
    promtool = tool("promtool")
    rules_file()
    result = run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_shipped_prometheus_config_scrapes_every_15s_and_alerts():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["kiosk_fleet.rules.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"kiosk-top-master", "kiosk-pis"}
    assert jobs["kiosk-pis"]["file_sd_configs"][0]["files"]


def test_shipped_alertmanager_config_passes_amtool():
    amtool = tool("amtool")
    result = run([amtool, "check-config", str(ALERTMANAGER_YML)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("labels, receiver", [
    (["alertname=PiSmoke", "severity=critical", "campus=riverside"], "kiosk-webhook-critical"),
    (["alertname=PiTooHot", "severity=warning", "campus=riverside"], "kiosk-webhook"),
    (["alertname=Other"], "kiosk-webhook"),
])
def test_shipped_alertmanager_routes_by_severity(labels, receiver):
    amtool = tool("amtool")
    result = run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_shipped_alertmanager_pages_critical_faster_and_keeps_secrets_out():
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    route = config["route"]
    assert route["group_by"] == ["alertname", "campus"]
    [critical] = [r for r in route["routes"] if r["matchers"] == ['severity="critical"']]
    seconds = {"s": 1, "m": 60, "h": 3600}
    assert int(critical["group_wait"][:-1]) * seconds[critical["group_wait"][-1]] < \
        int(route["group_wait"][:-1]) * seconds[route["group_wait"][-1]]
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["send_resolved"] is True
            assert hook["url"] == "https://alerts.example.org/hooks/REPLACE-AT-DEPLOY"  # placeholder, no token


def test_shipped_inhibition_mutes_a_stale_pis_readings_but_not_smoke():
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    [rule] = config["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname="PiTextfileStale"']
    [target] = rule["target_matchers"]
    assert target.startswith('alertname=~"') and target.endswith('"')
    assert set(target[len('alertname=~"'):-1].split("|")) == {"PiTooHot", "PiTooCold", "PiTooHumid", "PiSensorErrors"}
    assert "PiSmoke" not in target
    assert rule["equal"] == ["campus", "pi"]  # the labels PiTextfileStale and the Pi alerts share


def test_shipped_alert_names_exist_in_the_shipped_rules():
    """Every alert name the Alertmanager config matches on is one the rules define."""
    rules = yaml.safe_load(rules_file().read_text())
    defined = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    text = ALERTMANAGER_YML.read_text()
    for name in ("PiTextfileStale", "PiTooHot", "PiTooCold", "PiTooHumid", "PiSensorErrors", "PiSmoke"):
        assert name in text and name in defined
