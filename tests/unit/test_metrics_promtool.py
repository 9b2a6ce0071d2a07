"""
Every textfile the pack writes passes ``promtool check metrics`` (Prometheus's
own linter: HELP and TYPE, ``_total`` on counters only, base units, no
abbreviated units) with nothing to say. Each file is rendered by the pack's
own writer from realistic sample data, never hand-written metric text.
promtool comes with the monitoring packages (.ci/bootstrap): its absence is a
failure, not a skip.
"""

import datetime as dt
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
import salt.config
import salt.loader
from prometheus_client.parser import text_string_to_metric_families

import fleet_campus
import fleet_env
import fleet_inventory
import fleet_metrics
import fleet_outbox
import fleet_restarts
import fleet_rollout
import fleet_state
import fleet_sweep
from tests.support.topology import two_campus_inventory, write_fake_dht11

INVENTORY = fleet_inventory.validate(two_campus_inventory(wol_port=9)["kiosk_fleet"])
AT = dt.datetime(2027, 3, 1, 8, 0, tzinfo=dt.timezone.utc).timestamp()
REPO = pathlib.Path(__file__).resolve().parents[2]
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def promtool_check(text):
    """``(returncode, lint output)`` of ``promtool check metrics`` reading ``text`` on stdin."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (.ci/bootstrap installs the prometheus package)"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def kiosk_power():
    sweep = {"result": True, "wake": {"east": ["kiosk-east-01"]}, "shutdown": {"west": ["kiosk-west-01"]},
             "observed": {"kiosk-east-01": "off", "kiosk-east-02": "on", "kiosk-west-01": "degraded"}}
    last, _ = fleet_sweep.metrics({}, "sweep", sweep, INVENTORY, AT)
    _, families = fleet_sweep.metrics(last, "verify", {"result": False, "mismatches": [{"campus": "west"}]},
                                      INVENTORY, AT + 60)
    return fleet_metrics.render(families)


def kiosk_release():
    counts = fleet_rollout.kiosk_counts({"east": {"kiosk-east-01": True, "kiosk-east-02": "failed"},
                                         "west": {"kiosk-west-01": True}}, {"west": ["kiosk-west-02"]})
    state = {"pins": {"kiosk-app": {"east": {"version": "1.4.0", "serial": 1803888000},
                                    "west": {"version": None, "serial": 1803888001}}},
             "metrics": {"kiosks": {"kiosk-app": counts}, "runs": {"rollout": True, "status": False},
                         "published": {"kiosk-app": {"version": "1.4.0", "bytes": 73400320}},
                         "wan": {"kiosk-app": {"east": 73400320, "west": 0}}}}
    return fleet_metrics.render(fleet_rollout.metric_families(state))


def kiosk_alerts(tmp_path):
    ledger = fleet_state.Ledger(str(tmp_path / "rate.sqlite"))
    with ledger.transaction() as book:
        for metric, label in [("kiosk_alerts_posted_total", "kiosk_release"), ("kiosk_alerts_posted_total", "env"),
                              ("kiosk_alerts_dropped_total", "kiosk-east-01"),
                              ("kiosk_alerts_duplicates_total", "kiosk-east-02"),
                              ("kiosk_alerts_refused_total", "unknown_sender"),
                              ("kiosk_alerts_post_failures_total", "env")]:
            book.count(metric, label)
        rows = book.counters()
    return fleet_metrics.render(fleet_metrics.alert_families(rows))


def kiosk_campus_pi():
    ret = {"result": True, "leader": True, "live": ["pi-east-1", "pi-east-2"], "serial": 1803888000,
           "clock": {"synced": True, "confirmed_by": ["pi-east-2"]}, "withheld": {"shutdown": ["kiosk-east-02"]},
           "observed": {"kiosk-east-01": "on", "kiosk-east-02": "degraded"}, "woke": ["kiosk-east-01"],
           "shut_down": []}
    return fleet_metrics.render(fleet_campus.metrics("east", "pi-east-1", ret, AT))


def kiosk_campus_top(tmp_path):
    store = fleet_outbox.Collected(str(tmp_path / "collected.db"))
    at = "2027-03-01T08:00:00Z"
    entries = [
        {"kind": "action", "key": "east/kiosk-east-01/wake/2027-03-01T08:00:00Z", "at": at,
         "data": {"kiosk": "kiosk-east-01", "campus": "east", "pi": "pi-east-1", "action": "wake", "at": at}},
        {"kind": "observation", "key": "east/kiosk-east-01/observed/2027-03-01T08:00:00Z", "at": at,
         "data": {"kiosk": "kiosk-east-01", "campus": "east", "pi": "pi-east-1", "observed": "off", "expected": "on"}},
        {"kind": "observation", "key": "east/kiosk-east-02/observed/2027-03-01T08:00:00Z", "at": at,
         "data": {"kiosk": "kiosk-east-02", "campus": "east", "pi": "pi-east-1", "observed": "on", "expected": "on"}},
        {"kind": "bogus"},
    ]
    store.merge("east", "pi-east-1", entries, cursor=4, info={"serial": 7, "clock": {"synced": True},
                                                              "dropped": {"observation": 2}}, now=AT)
    store.merge("east", "pi-east-2", entries[:1], cursor=1, now=AT)
    store.count("kiosk_campus_collect_silent_total", campus="west", pi="pi-west-1")
    store.count("kiosk_campus_collect_failed_total", campus="west", pi="pi-west-2")
    store.count("kiosk_campus_alerts_posted_total", campus="east")
    store.count("kiosk_campus_alert_post_failures_total", campus="east")
    day = store.day(now=dt.datetime(2027, 3, 1, 8, 5, tzinfo=dt.timezone.utc))
    return fleet_metrics.render(fleet_outbox.metrics(store.counters(), day, store.unposted()))


def kiosk_env():
    return fleet_env.render_textfile("east", "pi-east-1", {"temperature": 24.5, "humidity": 41.0, "smoke": False},
                                     {"dht11": 7, "mq2": 0}, {"dht11": True, "mq2": True}, alerts=["temperature"],
                                     ranges={"temperature": [5, 35], "humidity": [20, 80]})


def kiosk_restarts(tmp_path):
    store = fleet_restarts.Restarts(str(tmp_path / "restarts.db"))
    store.record("east", "kiosk-east-01", AT - 86400, [AT - 86400 - 60], "on")
    store.record("east", "kiosk-east-01", AT, [], "on",
                 {"event_id": 41, "source": "Microsoft-Windows-Kernel-Power", "at": int(AT) + 30,
                  "reason": fleet_restarts.EVENT_REASONS[41]})
    store.record("west", "kiosk-west-01", AT, [AT - 120], "on")
    return fleet_metrics.render(fleet_restarts.metric_families(store.totals()))


WRITERS = {
    "kiosk_power.prom": (lambda tmp: kiosk_power(), {
        "kiosk_power_last_run_success", "kiosk_power_last_run_timestamp_seconds", "kiosk_power_kiosks_observed",
        "kiosk_power_sweep_actions", "kiosk_power_verify_mismatches"}),
    "kiosk_release.prom": (lambda tmp: kiosk_release(), {
        "kiosk_release_pin_serial", "kiosk_release_published_bytes", "kiosk_release_stage_wan_bytes",
        "kiosk_release_kiosks", "kiosk_release_last_run_success"}),
    "kiosk_alerts.prom": (kiosk_alerts, {
        "kiosk_alerts_posted", "kiosk_alerts_dropped", "kiosk_alerts_duplicates", "kiosk_alerts_refused",
        "kiosk_alerts_post_failures"}),
    "kiosk_campus.prom (Pi)": (lambda tmp: kiosk_campus_pi(), {
        "kiosk_campus_last_reconcile_success", "kiosk_campus_last_reconcile_timestamp_seconds", "kiosk_campus_leader",
        "kiosk_campus_peers_live", "kiosk_campus_clock_synced", "kiosk_campus_clock_confirmed",
        "kiosk_campus_calendar_serial", "kiosk_campus_withheld", "kiosk_campus_actions",
        "kiosk_campus_kiosks_observed"}),
    "kiosk_campus.prom (top master)": (kiosk_campus_top, {
        "kiosk_campus_entries", "kiosk_campus_entries_duplicate", "kiosk_campus_entries_refused",
        "kiosk_campus_collect_silent", "kiosk_campus_collect_failed", "kiosk_campus_alerts_posted",
        "kiosk_campus_alert_post_failures", "kiosk_campus_outbox_dropped", "kiosk_campus_pi_last_collected_timestamp_seconds",
        "kiosk_campus_pi_clock_synced", "kiosk_campus_pi_calendar_serial", "kiosk_campus_kiosk_observed_on",
        "kiosk_campus_kiosk_expected_on", "kiosk_campus_kiosk_mismatch", "kiosk_campus_alerts_unposted"}),
    "kiosk_env.prom": (lambda tmp: kiosk_env(), {
        "kiosk_env_temperature_celsius", "kiosk_env_humidity_percent", "kiosk_env_smoke_detected",
        "kiosk_env_alert_active", "kiosk_env_sensor_up", "kiosk_env_read_errors", "kiosk_env_range_limit"}),
    "kiosk_restarts.prom": (kiosk_restarts, {
        "kiosk_boots", "kiosk_unexpected_restarts", "kiosk_last_boot_timestamp_seconds"}),
}


@pytest.mark.parametrize("textfile", sorted(WRITERS))
def test_every_textfile_passes_promtool_with_nothing_to_say(textfile, tmp_path):
    render, families = WRITERS[textfile]
    text = render(tmp_path)
    # the sample fills every family: a family left out would be linted by nobody
    assert {f.name for f in text_string_to_metric_families(text) if f.samples} == families
    returncode, lint = promtool_check(text)
    assert (returncode, lint) == (0, "")


@pytest.mark.parametrize(("textfile", "labels"), [
    ("kiosk_campus.prom (Pi)", {"campus", "pi"}), ("kiosk_env.prom", {"campus", "pi"}),
    ("kiosk_restarts.prom", {"campus", "kiosk"}),
])
def test_per_pi_and_per_kiosk_files_carry_their_labels_in_the_file(textfile, labels, tmp_path):
    text = WRITERS[textfile][0](tmp_path)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert labels <= set(sample.labels), sample


def test_the_check_itself_catches_what_it_is_there_for():
    """The same call says something about a counter without _total and a metric without HELP."""
    text = fleet_metrics.render([("kiosk_bad_bytes", "counter", "Bytes.", [({"campus": "east"}, 1)])])
    returncode, lint = promtool_check(text + "kiosk_nohelp 1\n")
    assert returncode != 0 and '"_total" suffix' in lint and "no help text" in lint


def scrape_node_exporter(textfile_dir):
    """One scrape of a node_exporter (textfile collector only, 127.0.0.1) reading ``textfile_dir``; stopped by pid."""
    assert shutil.which(NODE_EXPORTER), "node_exporter is not installed (.ci/bootstrap installs it)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textfile_dir}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return response.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "node_exporter did not answer within 30 s"
                time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("host", [
    ("kiosk_power.prom", "kiosk_release.prom", "kiosk_alerts.prom", "kiosk_campus.prom (top master)",
     "kiosk_restarts.prom"),
    ("kiosk_campus.prom (Pi)", "kiosk_env.prom"),
], ids=["top-master", "pi"])
def test_node_exporter_reads_each_host_s_files_and_labels_mtime_with_the_full_path(host, tmp_path):
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    for textfile in host:
        fleet_metrics.write_textfile(str(textfiles), textfile.split(" ")[0], WRITERS[textfile][0](tmp_path))
    families = {f.name: f for f in text_string_to_metric_families(scrape_node_exporter(textfiles))}
    assert [s.value for s in families["node_textfile_scrape_error"].samples] == [0]
    # node_exporter 1.5 names each file by its full path (docs/metrics.md, "Staleness")
    assert sorted(s.labels["file"] for s in families["node_textfile_mtime_seconds"].samples) == sorted(
        str(textfiles / textfile.split(" ")[0]) for textfile in host)
    for textfile in host:
        assert WRITERS[textfile][1] <= set(families)


# ---------------------------------------------------------------- what the writers gained for the alert rules


def test_alert_families_refuse_a_row_of_the_wrong_shape():
    rows = [("kiosk_alerts_posted_total", "env", 2), ("kiosk_alerts_other_total", "x", 1)]
    posted = {name: samples for name, _, _, samples in fleet_metrics.alert_families(rows)}
    assert posted["kiosk_alerts_posted_total"] == [({"kind": "env"}, 2)] and posted["kiosk_alerts_dropped_total"] == []
    for bad in ("rows", [("kiosk_alerts_posted_total", "env")], [("kiosk_alerts_posted_total", "env", -1)],
                [("kiosk_alerts_posted_total", None, 1)], [("kiosk_alerts_posted_total", "env", True)]):
        with pytest.raises(fleet_metrics.MetricsError) as err:
            fleet_metrics.alert_families(bad)
        assert err.value.field == "rows"


def test_expected_on_follows_the_last_observation_expected_state():
    day = {"east": {"pis": {}, "kiosks": {
        "kiosk-east-01": {"observed": "off", "expected": "on"}, "kiosk-east-02": {"observed": "on", "expected": "off"},
        "kiosk-west-01": {"observed": "on", "expected": "unmanaged"}}}}
    families = {name: samples for name, _, _, samples in fleet_outbox.metrics([], day, [])}
    assert [(labels["kiosk"], value) for labels, value in families["kiosk_campus_kiosk_expected_on"]] == [
        ("kiosk-east-01", 1), ("kiosk-east-02", 0), ("kiosk-west-01", None)]


def test_range_limits_are_optional_and_checked():
    text = fleet_env.render_textfile("east", "pi-east-1", {"temperature": 24.5}, {}, {"dht11": True},
                                     ranges={"temperature": [5, 35.5]})
    limits = {(s.labels["metric"], s.labels["bound"]): s.value for f in text_string_to_metric_families(text)
              if f.name == "kiosk_env_range_limit" for s in f.samples}
    assert limits == {("temperature", "min"): 5, ("temperature", "max"): 35.5}
    assert "kiosk_env_range_limit" not in fleet_env.render_textfile("east", "pi-east-1", {}, {}, {})
    for ranges, field in [("5-35", "ranges"), ({"temperature": [5]}, "ranges.temperature"),
                          ({"humidity": [20, float("nan")]}, "ranges.humidity"),
                          ({"humidity": [True, 80]}, "ranges.humidity")]:
        with pytest.raises(fleet_env.EnvError) as err:
            fleet_env.render_textfile("east", "pi-east-1", {}, {}, {}, ranges=ranges)
        assert err.value.field == field


def test_the_env_module_writes_the_configured_ranges_and_promtool_agrees(tmp_path):
    """kiosk_env.poll, as the beacon runs it on a Pi (fake DHT11), writes kiosk_env.prom with its ranges."""
    write_fake_dht11(tmp_path / "sys", temp_milli_c=31500)
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"),
                 "module_dirs": [str(REPO)], "id": "pi-east-1", "grains": {}, "pillar": {}})
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_env"],
                                   loaded_base_name=f"kf_promtool_env_{abs(hash(str(tmp_path)))}")
    config = {"sysfs_root": str(tmp_path / "sys"), "temperature": [10, 30], "humidity": [20, 80],
              "textfile_dir": str(tmp_path), "campus": "east", "report_every": 0}
    mods["kiosk_env.poll"](config=config, now=1000.0)
    text = (tmp_path / "kiosk_env.prom").read_text()
    limits = {(s.labels["metric"], s.labels["bound"]): s.value for f in text_string_to_metric_families(text)
              if f.name == "kiosk_env_range_limit" for s in f.samples}
    assert limits == {("temperature", "min"): 10, ("temperature", "max"): 30,
                      ("humidity", "min"): 20, ("humidity", "max"): 80}
    assert 'kiosk_env_alert_active{campus="east",pi="pi-east-1",metric="temperature"} 1' in text
    assert promtool_check(text) == (0, "")
