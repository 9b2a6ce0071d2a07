"""
The kiosk fleet's Grafana dashboards, built with grafana-foundation-sdk.

``python monitoring/grafana/build.py`` writes ``monitoring/grafana/<uid>.json``
(sorted keys, two-space indent, one trailing newline: the same bytes on every
run); ``--check`` writes nothing and exits 1 naming each committed file that
differs from what this script builds (CI runs it, and so does
tests/unit/test_dashboards.py).

Every panel queries the Prometheus picked by the ``datasource`` variable, so
the JSON works in any Grafana; every metric is one the pack writes (its
textfiles through node_exporter) or node_exporter's own
``node_textfile_mtime_seconds``. docs/dashboards.md says what each panel shows.
"""

import argparse
import json
import pathlib
import re
import sys

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = pathlib.Path(__file__).resolve().parent
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["kiosk-fleet"]
# A Pi's reconciler and the top master's sweep run every minute: 5 min without a run is an alert
STALE_S = 300
# The operators' blue-screen plot: kiosks crashed while their Pis read about 40 °C
HOT_C = 40
CAMPUS = 'campus="$campus"'
UIDS = ("kiosk-fleet", "kiosk-campus", "kiosk-releases", "kiosk-sweeps")


class DashboardError(ValueError):
    """A dashboard that cannot be built or written; the message names the field."""


# ---------------------------------------------------------------- small builders


def query(expr, legend=None, ref="A", instant=False, table_format=False):
    """A Prometheus target on the ``datasource`` variable."""
    if not isinstance(expr, str) or not expr.strip():
        raise DashboardError(f"expr: {expr!r} is not a PromQL expression")
    if not (isinstance(ref, str) and ref.isalpha() and ref.isupper()):
        raise DashboardError(f"ref: {ref!r} is not a query letter")
    target = prom.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend is not None:
        target = target.legend_format(legend)
    if instant:
        target = target.instant()
    if table_format:
        target = target.format(PromQueryFormat.TABLE)
    return target


def _targets(panel, *queries):
    """``panel`` with ``queries`` (``(expr, legend)`` pairs) as targets A, B, C..."""
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, ref=chr(ord("A") + index)))
    return panel


def _thresholds(*steps):
    """Absolute thresholds: ``("green", None), ("red", 300)`` (the first step is the base)."""
    return (dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=value, color=color) for color, value in steps]))


def _mapping(**texts):
    """A value mapping ``{"0": ("off", "red"), ...}`` given as ``v0=("off", "red")``."""
    return [model.ValueMap(options={key[1:]: model.ValueMappingResult(text=text, color=color, index=i)
                                    for i, (key, (text, color)) in enumerate(sorted(texts.items()))})]


ON_OFF = _mapping(v0=("off", "red"), v1=("on", "green"))
OK_FAILED = _mapping(v0=("failed", "red"), v1=("ok", "green"))
YES_NO = _mapping(v0=("no", "orange"), v1=("yes", "green"))


def _timeline(title, description, *queries, maps=ON_OFF, height=8, span=24):
    """A state timeline of 0/1 gauges, one row per series."""
    panel = (statetimeline.Panel().title(title).description(description).datasource(DATASOURCE)
             .height(height).span(span).mappings(maps).show_value(common.VisibilityMode.NEVER)
             .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.FIXED).fixed_color("transparent")))
    return _targets(panel, *queries)


def _graph(title, description, *queries, unit="short", height=8, span=12, bars=False):
    """A time series panel."""
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .height(height).span(span).unit(unit)
             .legend(common_builders.VizLegendOptions().show_legend(True)
                     .display_mode(common.LegendDisplayMode.LIST).placement(common.LegendPlacement.BOTTOM)))
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    return _targets(panel, *queries)


def _single(title, description, *queries, unit="short", steps=None, maps=None, height=5, span=6):
    """A stat panel: the last value of each series."""
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
             .height(height).span(span).unit(unit).graph_mode(common.BigValueGraphMode.NONE)
             .color_mode(common.BigValueColorMode.BACKGROUND)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    panel = panel.thresholds(_thresholds(*(steps or [("green", None)])))
    if maps:
        panel = panel.mappings(maps)
    return _targets(panel, *queries)


def _age(title, description, expr, legend, height=5, span=12):
    """Seconds since a Unix-time gauge, red past :data:`STALE_S`."""
    return _single(title, description, (f"time() - {expr}", legend), unit="s",
                  steps=[("green", None), ("orange", STALE_S / 2), ("red", STALE_S)], height=height, span=span)


def _new_dashboard(uid, title, description):
    """A dashboard with the ``datasource`` variable (any Prometheus) and the pack's tag and links."""
    if uid not in UIDS:
        raise DashboardError(f"uid: {uid!r} is not one of {', '.join(UIDS)}")
    return (dash.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
            .time("now-6h", "now").refresh("1m").timezone("browser")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(dash.DashboardLink("Kiosk fleet").type(model.DashboardLinkType.DASHBOARDS).tags(TAGS)
                  .as_dropdown(True).include_vars(True).keep_time(True))
            .annotation(dash.AnnotationQuery().name("Annotations & Alerts").built_in(1).type("dashboard")
                        .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                        .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)"))
            .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))


def _campus_variable():
    """The ``campus`` variable: the campuses the top master's sweep knows."""
    return (dash.QueryVariable("campus").label("Campus").datasource(DATASOURCE)
            .query("label_values(kiosk_power_kiosks_observed, campus)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))


# ---------------------------------------------------------------- the dashboards


def fleet():
    """(1) Every campus now: kiosks on, off, degraded, unknown; mismatches; Pi alerts; restarts."""
    states = ("on", "off", "degraded", "unknown")
    now = (table.Panel().title("Campuses now").datasource(DATASOURCE).height(8).span(24)
           .description("One row per campus: kiosks per power state at the last sweep or verify of the top "
                        "master, kiosks not in their expected state at the last verify, kiosks the Pis' last "
                        "reports show in mismatch, Pi environment alerts raised, unexpected restarts today."))
    exprs = [f'sum by (campus) (kiosk_power_kiosks_observed{{state="{s}"}})' for s in states] + [
        "sum by (campus) (kiosk_power_verify_mismatches)",
        "sum by (campus) (kiosk_campus_kiosk_mismatch)",
        "sum by (campus) (kiosk_env_alert_active)",
        "sum by (campus) (increase(kiosk_unexpected_restarts_total[1d]))",
    ]
    names = [*states, "mismatch (verify)", "mismatch (Pis)", "Pi alerts", "restarts 24h"]
    for index, expr in enumerate(exprs):
        now = now.with_target(query(expr, ref=chr(ord("A") + index), instant=True, table_format=True))
    # a click on a campus opens its dashboard, same Prometheus and time range
    now = now.override_by_name("campus", [model.DynamicConfigValue(id_val="links", value=[{
        "title": "Open the campus dashboard",
        "url": "/d/kiosk-campus?var-campus=${__value.raw}&var-datasource=${datasource}&${__url_time_range}"}])])
    now = (now.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
           .with_transformation(model.DataTransformerConfig(id_val="organize", options={
               "excludeByName": {"Time": True},
               "renameByName": {f"Value #{chr(ord('A') + i)}": name for i, name in enumerate(names)},
               "indexByName": {"campus": 0, **{name: i + 1 for i, name in enumerate(names)}}})))
    return (_new_dashboard("kiosk-fleet", "Kiosk fleet", "Every campus at a glance: kiosk power states, "
                          "mismatches, Pi environment alerts and unexpected restarts.")
            .with_row(dash.Row("Now"))
            .with_panel(now)
            .with_panel(_single("Kiosks on", "Kiosks observed on at the last sweep/verify, per campus.",
                               ('sum by (campus) (kiosk_power_kiosks_observed{state="on"})', "{{campus}}"),
                               steps=[("blue", None)]))
            .with_panel(_single("Kiosks in mismatch", "Kiosks not in their expected state at the last verify.",
                               ("sum by (campus) (kiosk_power_verify_mismatches)", "{{campus}}"),
                               steps=[("green", None), ("red", 1)]))
            .with_panel(_single("Pi environment alerts", "Temperature, humidity or smoke alerts raised now.",
                               ("sum by (campus) (kiosk_env_alert_active)", "{{campus}}"),
                               steps=[("green", None), ("red", 1)]))
            .with_panel(_single("Unexpected restarts (range)", "Kiosk boots not preceded by a shutdown the pack "
                               "asked for, over the time range picked.",
                               ("sum by (campus) (increase(kiosk_unexpected_restarts_total[$__range]))", "{{campus}}"),
                               steps=[("green", None), ("orange", 1), ("red", 5)]))
            .with_row(dash.Row("Over time"))
            .with_panel(_graph("Kiosks on per campus", "Observed on at each sweep/verify, and the kiosks the "
                              "calendar wants on (from the Pis' last reports).",
                              ('sum by (campus) (kiosk_power_kiosks_observed{state="on"})', "{{campus}} on"),
                              ("sum by (campus) (kiosk_campus_kiosk_expected_on)", "{{campus}} expected on")))
            .with_panel(_graph("Kiosks per state", "Managed kiosks per observed state at each sweep/verify.",
                              ("sum by (campus, state) (kiosk_power_kiosks_observed)", "{{campus}} {{state}}")))
            .with_panel(_graph("Mismatches per campus", "Kiosks not in the state they should be at each verify "
                              "(top master) and in the Pis' last reports.",
                              ("sum by (campus) (kiosk_power_verify_mismatches)", "{{campus}} verify"),
                              ("sum by (campus) (kiosk_campus_kiosk_mismatch)", "{{campus}} Pis"), span=24)))


def campus():
    """(2) One campus: its kiosks' timeline, its Pis' environment with restarts overlaid, its reconcilers."""
    hot = (_graph("Pi temperature and unexpected kiosk restarts",
                 "Each Pi's DHT11 temperature (left axis, the configured maximum dashed) with the campus's "
                 "unexpected kiosk restarts as bars (right axis). Restarts that line up with a Pi near "
                 f"{HOT_C} °C point at heat in the cabinet, not at the kiosks.",
                 (f"kiosk_env_temperature_celsius{{{CAMPUS}}}", "{{pi}}"),
                 (f"sum by (kiosk) (increase(kiosk_unexpected_restarts_total{{{CAMPUS}}}[$__rate_interval]))",
                  "restarts {{kiosk}}"),
                 (f'kiosk_env_range_limit{{{CAMPUS},metric="temperature",bound="max"}}', "max {{pi}}"),
                 unit="celsius", height=10, span=24)
           .thresholds(_thresholds(("green", None), ("red", HOT_C)))
           .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
           .override_by_query("B", [
               model.DynamicConfigValue(id_val="unit", value="short"),
               model.DynamicConfigValue(id_val="decimals", value=0),
               model.DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
               model.DynamicConfigValue(id_val="custom.fillOpacity", value=80),
               model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
               model.DynamicConfigValue(id_val="custom.axisLabel", value="unexpected restarts"),
               model.DynamicConfigValue(id_val="custom.thresholdsStyle", value={"mode": "off"}),
               model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})])
           .override_by_query("C", [
               model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
               model.DynamicConfigValue(id_val="custom.thresholdsStyle", value={"mode": "off"})]))
    return (_new_dashboard("kiosk-campus", "Kiosk campus", "One campus: its kiosks on and off, its Pis' "
                          "temperature, humidity and smoke against unexpected kiosk restarts, its leader, "
                          "calendar, clocks and reconcilers.")
            .with_variable(_campus_variable())
            .annotation(dash.AnnotationQuery().name("Unexpected restarts").datasource(DATASOURCE)
                        .enable(True).icon_color("red")
                        .expr(f"sum by (kiosk) (increase(kiosk_unexpected_restarts_total{{{CAMPUS}}}[$__rate_interval])) > 0"))
            .with_row(dash.Row("Kiosks"))
            .with_panel(_timeline("Kiosks on/off", "Each kiosk's state as the Pis last reported it "
                                 "(collected by the top master): on, or off/degraded.",
                                 (f"kiosk_campus_kiosk_observed_on{{{CAMPUS}}}", "{{kiosk}}")))
            .with_panel(_timeline("Kiosks in mismatch", "1 while a kiosk's last observation differs from the "
                                 "state its calendar wants.",
                                 (f"kiosk_campus_kiosk_mismatch{{{CAMPUS}}}", "{{kiosk}}"),
                                 maps=_mapping(v0=("ok", "green"), v1=("mismatch", "red")), height=6, span=16))
            .with_panel(_single("Kiosk boots (range)", "Boots per kiosk over the time range picked, and how many "
                               "of them were unexpected (no shutdown or wake by the pack before them).",
                               (f"sum by (kiosk) (increase(kiosk_boots_total{{{CAMPUS}}}[$__range]))", "{{kiosk}}"),
                               (f"sum by (kiosk) (increase(kiosk_unexpected_restarts_total{{{CAMPUS}}}[$__range]))",
                                "{{kiosk}} unexpected"), steps=[("blue", None)], height=6, span=8))
            .with_row(dash.Row("Pis' environment"))
            .with_panel(hot)
            .with_panel(_graph("Pi humidity", "Each Pi's DHT11 relative humidity, the configured maximum dashed.",
                              (f"kiosk_env_humidity_percent{{{CAMPUS}}}", "{{pi}}"),
                              (f'kiosk_env_range_limit{{{CAMPUS},metric="humidity",bound="max"}}', "max {{pi}}"),
                              unit="humidity")
                        .override_by_query("B", [model.DynamicConfigValue(
                            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]))
            .with_panel(_timeline("Smoke", "Each Pi's smoke detector: clear or SMOKE.",
                                 (f"kiosk_env_smoke_detected{{{CAMPUS}}}", "{{pi}}"),
                                 maps=_mapping(v0=("clear", "green"), v1=("SMOKE", "red")), height=5, span=12))
            .with_panel(_timeline("Sensors up", "1 when the sensor gave a reading in the beacon's last interval.",
                                 (f"kiosk_env_sensor_up{{{CAMPUS}}}", "{{pi}} {{sensor}}"),
                                 maps=_mapping(v0=("down", "red"), v1=("up", "green")), height=6, span=12))
            .with_panel(_graph("Sensor read errors", "Failed sensor reads per second.",
                              (f"sum by (pi, sensor) (rate(kiosk_env_read_errors_total{{{CAMPUS}}}[$__rate_interval]))",
                               "{{pi}} {{sensor}}"), unit="reqps", height=6))
            .with_row(dash.Row("Pis' reconcilers"))
            .with_panel(_timeline("Leader", "Which Pi leads the campus (wakes and shuts down its kiosks).",
                                 (f"kiosk_campus_leader{{{CAMPUS}}}", "{{pi}}"),
                                 maps=_mapping(v0=("follower", "blue"), v1=("leader", "green")), height=5, span=12))
            .with_panel(_timeline("Clock", "Each Pi's clock: synchronised, confirmed by a peer Pi, and synchronised "
                                 "as the top master last collected it. A Pi with an unsynchronised clock shuts no "
                                 "kiosk down.",
                                 (f"kiosk_campus_clock_synced{{{CAMPUS}}}", "{{pi}} synced"),
                                 (f"kiosk_campus_clock_confirmed{{{CAMPUS}}}", "{{pi}} confirmed"),
                                 (f"kiosk_campus_pi_clock_synced{{{CAMPUS}}}", "{{pi}} synced (collected)"),
                                 maps=YES_NO, height=5, span=12))
            .with_panel(_single("Calendar serial", "The calendar serial each Pi runs on, and the one the top "
                               "master last collected from it: Pis of one campus should agree.",
                               (f"kiosk_campus_calendar_serial{{{CAMPUS}}}", "{{pi}}"),
                               (f"kiosk_campus_pi_calendar_serial{{{CAMPUS}}}", "{{pi}} (collected)"),
                               steps=[("blue", None)], span=8))
            .with_panel(_age("Reconcile age", "Seconds since each Pi's last reconcile.",
                            f"kiosk_campus_last_reconcile_timestamp_seconds{{{CAMPUS}}}", "{{pi}}", span=8))
            .with_panel(_single("Last reconcile", "Whether each Pi's last reconcile succeeded, and how many Pis "
                               "of the campus it could reach.",
                               (f"kiosk_campus_last_reconcile_success{{{CAMPUS}}}", "{{pi}}"),
                               maps=OK_FAILED, steps=[("red", None), ("green", 1)], span=4))
            .with_panel(_single("Peers live", "Pis of the campus each Pi reaches (itself included).",
                               (f"kiosk_campus_peers_live{{{CAMPUS}}}", "{{pi}}"), steps=[("blue", None)], span=4))
            .with_panel(_graph("Reconciler actions", "Kiosks each Pi woke or shut down in its last reconcile, and "
                              "those due a change it left alone (clock not trusted, not the leader).",
                              (f"kiosk_campus_actions{{{CAMPUS}}}", "{{pi}} {{action}}"),
                              (f"kiosk_campus_withheld{{{CAMPUS}}}", "{{pi}} withheld {{action}}"), bars=True))
            .with_panel(_single("Pi textfile age", "Seconds since node_exporter saw each of the Pi's textfiles "
                               "change (the beacon and the reconciler rewrite theirs every run).",
                               ("max by (pi, file) ((time() - node_textfile_mtime_seconds) * on (instance) "
                                f"group_left (pi) group by (instance, pi) (kiosk_env_alert_active{{{CAMPUS}}}))",
                                "{{pi}} {{file}}"),
                               unit="s", steps=[("green", None), ("orange", STALE_S / 2), ("red", STALE_S)], span=12)))


def releases():
    """(3) Releases: the version pinned per campus, kiosks off the pin, staging's WAN bytes."""
    pins = (table.Panel().title("Pinned version per campus").datasource(DATASOURCE).height(8).span(12)
            .description("Each release name's pin per campus: the version and the pin serial (it grows on "
                         "every pin change; 'frozen' when the campus is frozen).")
            .with_target(query("max by (name, campus, version) (kiosk_release_pin_serial)", instant=True,
                               table_format=True))
            .with_transformation(model.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True}, "renameByName": {"Value": "pin serial"},
                "indexByName": {"name": 0, "campus": 1, "version": 2, "Value": 3}})))
    return (_new_dashboard("kiosk-releases", "Kiosk releases", "Releases: the version pinned per campus, "
                          "kiosks drifting from it, WAN bytes staging took.")
            .with_panel(pins)
            .with_panel(bargauge.Panel().title("Kiosks on the pin, drifting, silent").datasource(DATASOURCE)
                        .description("At the last status/rollout: kiosks on their campus's pin, on another "
                                     "version (drift), or not answering.")
                        .height(8).span(12).unit("short")
                        .with_target(query("sum by (campus, state) (kiosk_release_kiosks)", "{{campus}} {{state}}")))
            .with_panel(_single("Drift from pin", "Kiosks not on their campus's pinned version.",
                               ('sum by (campus) (kiosk_release_kiosks{state="drift"})', "{{campus}}"),
                               steps=[("green", None), ("orange", 1)], span=8))
            .with_panel(_single("Published size", "Size of the newest published version of each release.",
                               ("kiosk_release_published_bytes", "{{name}} {{version}}"), unit="bytes",
                               steps=[("blue", None)], span=8))
            .with_panel(_single("Last release runs", "Whether the last run of each release action succeeded.",
                               ("kiosk_release_last_run_success", "{{action}}"), maps=OK_FAILED,
                               steps=[("red", None), ("green", 1)], span=8))
            .with_panel(_graph("Pin serial per campus", "A step is a pin change; the legend names the version.",
                              ("max by (campus, version) (kiosk_release_pin_serial)", "{{campus}} {{version}}")))
            .with_panel(_graph("Staging WAN bytes", "Bytes the last staging of each campus took from the master.",
                              ("kiosk_release_stage_wan_bytes", "{{campus}} {{name}}"), unit="bytes", bars=True)))


def sweeps():
    """(4) Sweeps and reconcilers: actions, mismatches, run ages, outbox collect health, alerts."""
    def counter_rate(expr, by):
        return f"sum by ({by}) (increase({expr}[$__rate_interval]))"

    return (_new_dashboard("kiosk-sweeps", "Kiosk sweeps and reconcilers", "The top master's sweep and "
                          "verify, the campuses' reconcilers, the outbox collect and the alerts posted.")
            .with_row(dash.Row("Top master: sweep and verify"))
            .with_panel(_age("Sweep/verify age", "Seconds since the last sweep and verify ran.",
                            "kiosk_power_last_run_timestamp_seconds", "{{action}}", span=8))
            .with_panel(_single("Last sweep/verify", "Whether the last sweep and verify succeeded.",
                               ("kiosk_power_last_run_success", "{{action}}"), maps=OK_FAILED,
                               steps=[("red", None), ("green", 1)], span=4))
            .with_panel(_graph("Sweep actions", "Kiosks each sweep woke or shut down, per campus.",
                              ("kiosk_power_sweep_actions", "{{campus}} {{action}}"), bars=True, span=6))
            .with_panel(_graph("Verify mismatches", "Kiosks not in their expected state at each verify.",
                              ("kiosk_power_verify_mismatches", "{{campus}}"), span=6))
            .with_row(dash.Row("Campus reconcilers"))
            .with_panel(_age("Reconcile age per Pi", "Seconds since each Pi's reconciler last ran.",
                            "kiosk_campus_last_reconcile_timestamp_seconds", "{{campus}} {{pi}}", span=8))
            .with_panel(_single("Last reconcile per Pi", "Whether each Pi's last reconcile succeeded.",
                               ("kiosk_campus_last_reconcile_success", "{{campus}} {{pi}}"), maps=OK_FAILED,
                               steps=[("red", None), ("green", 1)], span=4))
            .with_panel(_graph("Reconciler actions", "Kiosks woken and shut down by each campus's Pis in their "
                              "last reconcile, and kiosks due a change they left alone.",
                              ("sum by (campus, action) (kiosk_campus_actions)", "{{campus}} {{action}}"),
                              ("sum by (campus, action) (kiosk_campus_withheld)", "{{campus}} withheld {{action}}"),
                              bars=True))
            .with_row(dash.Row("Outbox collect"))
            .with_panel(_age("Last collect per Pi", "Seconds since the top master last collected each Pi's outbox.",
                            "kiosk_campus_pi_last_collected_timestamp_seconds", "{{campus}} {{pi}}", span=8))
            .with_panel(_single("Alerts waiting", "Collected alerts the webhook has not accepted yet.",
                               ("kiosk_campus_alerts_unposted", "{{campus}}"),
                               steps=[("green", None), ("orange", 1)], span=4))
            .with_panel(_graph("Collects silent or failed", "Collects a Pi did not answer (WAN cut, Pi down) "
                              "or answered with an error.",
                              (counter_rate("kiosk_campus_collect_silent_total", "campus, pi"), "{{pi}} silent"),
                              (counter_rate("kiosk_campus_collect_failed_total", "campus, pi"), "{{pi}} failed"),
                              bars=True))
            .with_panel(_graph("Entries collected", "Outbox entries collected per kind, copies another Pi "
                              "already reported, and entries refused.",
                              (counter_rate("kiosk_campus_entries_total", "campus, kind"), "{{campus}} {{kind}}"),
                              (counter_rate("kiosk_campus_entries_duplicate_total", "campus"), "{{campus}} duplicate"),
                              (counter_rate("kiosk_campus_entries_refused_total", "campus"), "{{campus}} refused"),
                              bars=True))
            .with_panel(_single("Dropped by the Pis' outbox cap", "Entries a Pi's outbox dropped before the top "
                               "master collected them (a long WAN cut).",
                               ("sum by (campus, pi) (kiosk_campus_outbox_dropped_total)", "{{pi}}"),
                               steps=[("green", None), ("orange", 1)], span=12))
            .with_row(dash.Row("Alerts"))
            .with_panel(_graph("Alerts posted and failed", "Alerts the top master's runners and the outbox "
                              "collect posted to the webhook, and posts it did not accept.",
                              (counter_rate("kiosk_alerts_posted_total", "kind"), "posted {{kind}}"),
                              (counter_rate("kiosk_alerts_post_failures_total", "kind"), "failed {{kind}}"),
                              (counter_rate("kiosk_campus_alerts_posted_total", "campus"), "collected posted {{campus}}"),
                              (counter_rate("kiosk_campus_alert_post_failures_total", "campus"),
                               "collected failed {{campus}}"), bars=True))
            .with_panel(_graph("Alerts dropped, duplicate, refused", "Alerts the per-minion rate limit dropped, "
                              "copies of an accepted alert, and alert events refused.",
                              (counter_rate("kiosk_alerts_dropped_total", "minion"), "dropped {{minion}}"),
                              (counter_rate("kiosk_alerts_duplicates_total", "minion"), "duplicate {{minion}}"),
                              (counter_rate("kiosk_alerts_refused_total", "reason"), "refused {{reason}}"), bars=True))
            .with_row(dash.Row("Textfiles"))
            .with_panel(_single("Textfile age", "Seconds since node_exporter saw each textfile change, per host.",
                               ("time() - node_textfile_mtime_seconds", "{{instance}} {{file}}"), unit="s",
                               steps=[("green", None), ("orange", STALE_S / 2), ("red", STALE_S)], span=24)))


BUILDERS = {"kiosk-fleet": fleet, "kiosk-campus": campus, "kiosk-releases": releases, "kiosk-sweeps": sweeps}


# ---------------------------------------------------------------- reading the built JSON back

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}


def panel_queries(data):
    """
    ``[(panel title, refId, expr)]`` of a built dashboard: every target of
    every panel (rows' nested panels too), then its Prometheus annotations
    (panel title ``annotation: <name>``) and query variables (``variable:
    <name>``, the ``label_values(...)`` text).
    """
    if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
        raise DashboardError("data: expected a dashboard with a panels list")
    found = []

    def walk(panels):
        for panel in panels:
            found.extend((panel.get("title", ""), t.get("refId", ""), t.get("expr", ""))
                         for t in panel.get("targets") or [])
            walk(panel.get("panels") or [])

    walk(data["panels"])
    for item in (data.get("annotations") or {}).get("list") or []:
        if item.get("expr"):
            found.append((f"annotation: {item['name']}", "", item["expr"]))
    for item in (data.get("templating") or {}).get("list") or []:
        if item.get("type") == "query":
            found.append((f"variable: {item['name']}", "", item["query"]))
    return found


def expr_metrics(expr):
    """
    The metric names a PromQL expression (or ``label_values(metric, label)``)
    reads: identifiers that are not a function call, a keyword, a label
    name in ``by (...)``/``on (...)``-style lists, or inside a ``{...}``
    selector, ``[...]`` range or string.
    """
    if not isinstance(expr, str):
        raise DashboardError(f"expr: {expr!r} is not a string")
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    label_values = re.fullmatch(r"\s*label_values\(\s*([^,]+?)\s*,\s*\w+\s*\)\s*", text)
    if label_values:
        text = label_values.group(1)
    names = set()
    for match in re.finditer(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def substitute(expr, variables):
    """``expr`` with Grafana's ``$name``/``${name}`` replaced from ``variables`` (``{name: text}``); unknown ones kept."""
    if not isinstance(variables, dict):
        raise DashboardError(f"variables: expected {{name: text}}, got {type(variables).__name__}")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: str(variables.get(m.group(1) or m.group(2), m.group(0))), expr)


# ---------------------------------------------------------------- output


def _numbered(panels, start=1):
    """Give every panel (rows' nested panels too) a stable id in layout order."""
    next_id = start
    for panel in panels:
        panel["id"] = next_id
        next_id += 1
        next_id = _numbered(panel.get("panels", []), next_id)
    return next_id


def build(uid):
    """The dashboard ``uid`` as plain JSON data (dicts and lists)."""
    if uid not in BUILDERS:
        raise DashboardError(f"uid: {uid!r} is not one of {', '.join(UIDS)}")
    data = json.loads(json.dumps(BUILDERS[uid]().build(), cls=JSONEncoder))
    _numbered(data["panels"])
    return data


def render(uid):
    """The bytes written to ``<uid>.json``: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(build(uid), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def differing(directory=HERE):
    """The uids whose ``<uid>.json`` in ``directory`` is missing or differs from :func:`render`."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DashboardError(f"directory: {str(directory)!r} is not a directory")
    return [uid for uid in UIDS if not (directory / f"{uid}.json").is_file()
            or (directory / f"{uid}.json").read_text(encoding="utf-8") != render(uid)]


def write(directory=HERE):
    """Write every dashboard to ``directory/<uid>.json``; returns the paths."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DashboardError(f"directory: {str(directory)!r} is not a directory")
    paths = []
    for uid in UIDS:
        path = directory / f"{uid}.json"
        path.write_text(render(uid), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed JSON differs from the build")
    parser.add_argument("--out", default=str(HERE), help="folder of the JSON files (default: this script's)")
    args = parser.parse_args(argv)
    if args.check:
        stale = differing(args.out)
        for uid in stale:
            print(f"{args.out}/{uid}.json differs from what build.py builds: run python monitoring/grafana/build.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
