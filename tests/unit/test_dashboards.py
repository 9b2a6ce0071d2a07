"""
The Grafana dashboards (monitoring/grafana/): the committed JSON is what
build.py builds, every panel queries Prometheus through the datasource
variable, and every metric a query reads is one the pack writes (the names
in the sample textfiles lab/monitor_samples.py renders with the pack's own
writers) or one node_exporter's textfile collector exports.
"""

import copy
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from lab import monitor_samples

REPO = pathlib.Path(__file__).resolve().parents[2]
GRAFANA = REPO / "monitoring" / "grafana"
# what node_exporter 1.5's textfile collector exports beside the files' own metrics
NODE_TEXTFILE = {"node_textfile_mtime_seconds", "node_textfile_scrape_error"}


def _load_build():
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module")
def dashboards():
    return {uid: build.build(uid) for uid in build.UIDS}


@pytest.fixture(scope="module")
def written_names(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    written = monitor_samples.write_samples(monitor_samples.exporter_dirs(root))
    return monitor_samples.metric_names([path for paths in written.values() for path in paths])


def unknown_metrics(dashboards, known):
    """``["<uid> / <panel> <ref>: <name>"]`` of every metric a query reads that is not in ``known``."""
    return [f"{uid} / {title} {ref}: {name}" for uid, data in sorted(dashboards.items())
            for title, ref, expr in build.panel_queries(data) for name in sorted(build.expr_metrics(expr))
            if name not in known]


def _panels(data):
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels") or []


def test_committed_json_is_what_build_py_builds():
    committed = sorted(path.stem for path in GRAFANA.glob("*.json"))
    assert committed == sorted(build.UIDS)
    for uid in build.UIDS:
        assert (GRAFANA / f"{uid}.json").read_text(encoding="utf-8") == build.render(uid), (
            f"{uid}.json is stale: run python monitoring/grafana/build.py")


def test_the_build_is_deterministic():
    assert [build.render(uid) for uid in build.UIDS] == [build.render(uid) for uid in build.UIDS]


def test_check_exits_non_zero_on_a_changed_file(tmp_path):
    script = [sys.executable, str(GRAFANA / "build.py")]
    assert subprocess.run([*script, "--out", str(tmp_path)], check=False).returncode == 0
    assert subprocess.run([*script, "--check", "--out", str(tmp_path)], check=False).returncode == 0
    path = tmp_path / "kiosk-campus.json"
    path.write_text(path.read_text(encoding="utf-8").replace("kiosk_env_temperature_celsius", "kiosk_env_temp"))
    run = subprocess.run([*script, "--check", "--out", str(tmp_path)], capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert "kiosk-campus.json" in run.stderr and "kiosk-fleet.json" not in run.stderr


def test_the_committed_files_pass_the_check():
    run = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr


def test_uids_and_titles_are_unique(dashboards):
    assert sorted(data["uid"] for data in dashboards.values()) == sorted(build.UIDS)
    titles = [data["title"] for data in dashboards.values()]
    assert len(set(titles)) == len(titles)


def test_every_panel_queries_prometheus_through_the_datasource_variable(dashboards):
    for uid, data in dashboards.items():
        variables = {v["name"]: v for v in data["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        panels = [p for p in _panels(data) if p["type"] != "row"]
        assert panels, uid
        for panel in panels:
            where = f"{uid} / {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel.get("targets"), f"{where}: no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs) and all(refs), where
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
                assert target["expr"].strip(), where


def test_panel_ids_are_unique_per_dashboard(dashboards):
    for uid, data in dashboards.items():
        ids = [p["id"] for p in _panels(data)]
        assert len(set(ids)) == len(ids) and 0 not in ids, uid


def test_every_variable_a_query_uses_is_defined(dashboards):
    builtin = {"__rate_interval", "__interval", "__range"}
    for uid, data in dashboards.items():
        defined = {v["name"] for v in data["templating"]["list"]} | builtin
        for title, ref, expr in build.panel_queries(data):
            leftover = build.substitute(expr, dict.fromkeys(defined, "x"))
            assert "$" not in leftover, f"{uid} / {title} {ref}: undefined variable in {expr}"


def test_every_metric_is_one_the_pack_writes(dashboards, written_names):
    assert "kiosk_unexpected_restarts_total" in written_names  # the samples cover the restarts textfile
    assert unknown_metrics(dashboards, written_names | NODE_TEXTFILE) == []


def test_a_typo_in_a_metric_name_is_caught(dashboards, written_names):
    broken = copy.deepcopy(dashboards)
    panel = next(p for p in _panels(broken["kiosk-sweeps"]) if p.get("targets"))
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("kiosk_", "kiosk_x", 1)
    found = unknown_metrics(broken, written_names | NODE_TEXTFILE)
    assert len(found) == 1 and found[0].startswith(f"kiosk-sweeps / {panel['title']} A: kiosk_x")
    variable = copy.deepcopy(dashboards)
    campus_var = next(v for v in variable["kiosk-campus"]["templating"]["list"] if v["name"] == "campus")
    campus_var["query"] = "label_values(kiosk_power_kiosk_observed, campus)"
    assert unknown_metrics(variable, written_names | NODE_TEXTFILE) == [
        "kiosk-campus / variable: campus : kiosk_power_kiosk_observed"]


@pytest.mark.parametrize("expr, names", [
    ('sum by (campus) (kiosk_power_kiosks_observed{state="on"})', {"kiosk_power_kiosks_observed"}),
    ("rate(kiosk_env_read_errors_total[$__rate_interval]) > bool 1e3", {"kiosk_env_read_errors_total"}),
    ("time() - node_textfile_mtime_seconds offset 5m", {"node_textfile_mtime_seconds"}),
    ("a * on (instance) group_left (pi) group by (instance, pi) (b{pi=~\"x|y\"})", {"a", "b"}),
    ("label_values(kiosk_campus_leader, campus)", {"kiosk_campus_leader"}),
    ('{__name__="x"}', set()),
])
def test_expr_metrics_reads_the_metric_names(expr, names):
    assert build.expr_metrics(expr) == names


def test_the_campus_dashboard_overlays_restarts_on_the_temperature_panel(dashboards):
    data = dashboards["kiosk-campus"]
    assert {v["name"]: v["type"] for v in data["templating"]["list"]} == {"datasource": "datasource", "campus": "query"}
    panel = next(p for p in _panels(data) if any(
        "kiosk_env_temperature_celsius" in t["expr"] for t in p.get("targets", [])))
    restarts = [t for t in panel["targets"] if "kiosk_unexpected_restarts_total" in t["expr"]]
    assert len(restarts) == 1 and 'campus="$campus"' in restarts[0]["expr"]
    override = next(o for o in panel["fieldConfig"]["overrides"]
                    if o["matcher"] == {"id": "byFrameRefID", "options": restarts[0]["refId"]})
    properties = {p["id"]: p.get("value") for p in override["properties"]}
    assert properties["custom.axisPlacement"] == "right" and properties["custom.drawStyle"] == "bars"
    assert panel["fieldConfig"]["defaults"]["unit"] == "celsius"
    kinds = {p["type"] for p in _panels(data)}
    assert "state-timeline" in kinds


def test_every_campus_query_is_filtered_by_the_campus_variable(dashboards):
    for title, ref, expr in build.panel_queries(dashboards["kiosk-campus"]):
        if not title.startswith("variable:"):
            assert 'campus="$campus"' in expr, f"{title} {ref}: {expr}"


def test_substitute_replaces_both_forms_and_keeps_unknown():
    assert build.substitute('x{campus="$campus"}[${__rate_interval}] $other', {
        "campus": "north", "__rate_interval": "1m"}) == 'x{campus="north"}[1m] $other'
    with pytest.raises(build.DashboardError, match="variables"):
        build.substitute("x", ["campus"])


def test_build_refuses_an_unknown_uid(tmp_path):
    with pytest.raises(build.DashboardError, match="uid"):
        build.build("kiosk-nope")
    with pytest.raises(build.DashboardError, match="directory"):
        build.differing(tmp_path / "missing")
    with pytest.raises(build.DashboardError, match="expr"):
        build.query("  ")


def test_provisioning_files():
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")


def test_the_samples_cover_the_story():
    fleet = monitor_samples.sample_fleet()
    pis = {pi: info for spec in fleet["campuses"].values() for pi, info in spec["pis"].items()}
    kiosks = {k: v for spec in fleet["campuses"].values() for k, v in spec["kiosks"].items()}
    assert len(fleet["campuses"]) == 2 and all(len(spec["pis"]) == 2 for spec in fleet["campuses"].values())
    assert any(info["temperature"] >= 40 and "temperature" in info["alerts"] for info in pis.values())
    assert sum(1 for v in kiosks.values() if v.get("unexpected")) == 1
    assert sum(1 for v in kiosks.values() if v["observed"] in ("on", "off") and v["observed"] != v["expected"]) == 1
    assert any(isinstance(v["release"], str) and v["release"] != "silent" for v in kiosks.values())


def test_the_samples_are_written_by_the_pack(tmp_path):
    dirs = monitor_samples.exporter_dirs(tmp_path)
    written = monitor_samples.write_samples(dirs, tick=2, now=1_800_000_000)
    assert sorted(written) == sorted(dirs)
    top = {path.name for path in written["top"]}
    assert top == {"kiosk_power.prom", "kiosk_release.prom", "kiosk_alerts.prom", "kiosk_campus.prom",
                   "kiosk_restarts.prom"}
    env = (dirs["pi-north-2"] / "kiosk_env.prom").read_text()
    assert 'kiosk_env_temperature_celsius{campus="north",pi="pi-north-2"} 41.5' in env
    restarts = (dirs["top"] / "kiosk_restarts.prom").read_text()
    assert 'kiosk_unexpected_restarts_total{campus="north",kiosk="kiosk-n02"} 3' in restarts
    mismatch = (dirs["top"] / "kiosk_campus.prom").read_text()
    assert 'kiosk_campus_kiosk_mismatch{campus="south",kiosk="kiosk-s02"} 1' in mismatch


def test_the_samples_refuse_bad_input(tmp_path):
    with pytest.raises(monitor_samples.SamplesError, match="tick"):
        monitor_samples.write_samples(monitor_samples.exporter_dirs(tmp_path), tick=-1)
    with pytest.raises(monitor_samples.SamplesError, match="dirs"):
        monitor_samples.write_samples({"top": tmp_path})
    with pytest.raises(monitor_samples.SamplesError, match="paths"):
        monitor_samples.metric_names(str(tmp_path / "kiosk_env.prom"))
    with pytest.raises(monitor_samples.SamplesError, match="root"):
        monitor_samples.exporter_dirs(tmp_path / "missing")


def test_the_json_is_the_sdk_model_unchanged():
    # decoded into the SDK's Grafana model and encoded again: nothing lost, nothing unknown added
    for uid in build.UIDS:
        data = json.loads((GRAFANA / f"{uid}.json").read_text(encoding="utf-8"))
        assert json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder)) == data, uid
        assert data["schemaVersion"] >= 39 and data["annotations"]["list"][0]["builtIn"] == 1


def test_the_datasource_interval_is_the_scrape_interval():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yml").read_text())
    prometheus = yaml.safe_load((REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
