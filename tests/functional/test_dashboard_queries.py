"""
Every query of the Grafana dashboards returns data from a real Prometheus.

The sample fleet's textfiles (lab/monitor_samples.py: the pack's own
writers) are served by one node_exporter per host of the loopback stack
(lab.monitor.Stack: node_exporter, Prometheus, Alertmanager from the Debian
packages, scraping every second). Counters are rewritten larger once two
scrapes are in, so ``rate()``/``increase()`` have two samples to work on;
then each panel's query, with Grafana's variables filled in, goes to
Prometheus's query API and must return at least one series.
"""

import importlib.util
import pathlib

import pytest

from lab import monitor_samples
from lab.monitor import MonitorError, Stack, poll

REPO = pathlib.Path(__file__).resolve().parents[2]
CAMPUS = "north"  # the campus of the warm Pi and the unexpected restart
# windows longer than the test runs: the counters grew once, and stay "grown" in every window
VARIABLES = {"campus": CAMPUS, "__rate_interval": "10m", "__interval": "10m", "__range": "1h"}
DEADLINE_S = 60


def _load_build():
    spec = importlib.util.spec_from_file_location("grafana_build", REPO / "monitoring" / "grafana" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _scrapes(stack, metric):
    found = stack.query(f"max(count_over_time({metric}[1m]))")
    return int(float(found[0]["value"][1])) if found else 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboards")
    (root / "textfiles").mkdir()
    dirs = monitor_samples.exporter_dirs(root / "textfiles")
    monitor_samples.write_samples(dirs, tick=0)
    # no rule files: nothing fires, so the (unused) webhook address is never called
    with Stack(root / "stack", dirs, [], "http://127.0.0.1:9/unused") as running:
        poll(lambda: len(running.query("up == 1")) == len(dirs), DEADLINE_S, "every exporter scraped")
        poll(lambda: _scrapes(running, "kiosk_unexpected_restarts_total") >= 2, DEADLINE_S, "two scrapes")
        monitor_samples.write_samples(dirs, tick=1)
        poll(lambda: running.query("increase(kiosk_unexpected_restarts_total[1m]) > 0"), DEADLINE_S,
             "the grown counters scraped")
        yield running


def _empty_queries(stack, uid):
    empty = []
    data = build.build(uid)
    for title, ref, expr in build.panel_queries(data):
        if title.startswith("variable:"):
            continue
        promql = build.substitute(expr, VARIABLES)
        assert "$" not in promql, f"{uid} / {title} {ref}: a variable left in {promql}"
        try:
            result = stack.query(promql)
        except MonitorError as exc:
            empty.append(f"{data['title']} / {title} {ref}: {promql}: {exc}")
            continue
        if not result:
            empty.append(f"{data['title']} / {title} {ref}: no series for {promql}")
    return empty


@pytest.mark.parametrize("uid", build.UIDS)
def test_every_panel_query_returns_a_series(stack, uid):
    assert _empty_queries(stack, uid) == []


def test_the_campus_variable_lists_the_sample_campuses(stack):
    data = build.build("kiosk-campus")
    variable = next(v for v in data["templating"]["list"] if v["name"] == "campus")
    (metric,) = build.expr_metrics(variable["query"])
    found = {series["metric"]["campus"] for series in stack.query(f"group by (campus) ({metric})")}
    assert found == set(monitor_samples.sample_fleet()["campuses"])


def test_the_overlay_shows_the_warm_pi_and_the_restart(stack):
    data = build.build("kiosk-campus")
    panel = next(p for p in data["panels"] if p["title"].startswith("Pi temperature"))
    by_ref = {t["refId"]: build.substitute(t["expr"], VARIABLES) for t in panel["targets"]}
    temperatures = {s["metric"]["pi"]: float(s["value"][1]) for s in stack.query(by_ref["A"])}
    assert temperatures == {"pi-north-1": 24.5, "pi-north-2": 41.5}
    restarts = {s["metric"]["kiosk"]: float(s["value"][1]) for s in stack.query(by_ref["B"])}
    assert restarts["kiosk-n02"] > 0 and restarts["kiosk-n01"] == 0


def test_an_empty_query_is_reported_by_name(stack, monkeypatch):
    real = build.build

    def with_a_typo(uid):
        data = real(uid)
        data["panels"][1]["targets"][0]["expr"] = "kiosk_power_kiosks_observd"
        return data

    monkeypatch.setattr(build, "build", with_a_typo)
    found = _empty_queries(stack, "kiosk-fleet")
    assert len(found) == 1 and found[0].startswith("Kiosk fleet / Campuses now A: no series")
