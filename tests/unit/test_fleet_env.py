import errno
import os

import pytest

import fleet_env


def make_sysfs(root, temp="24000", hum="41000", index=3, others=("mcp3008",)):
    """A fake sysfs tree: the DHT11 at iio:device<index>, other IIO devices before it."""
    base = root / "bus" / "iio" / "devices"
    for n, name in enumerate(others):
        (base / f"iio:device{n}").mkdir(parents=True)
        (base / f"iio:device{n}" / "name").write_text(name + "\n")
    dev = base / f"iio:device{index}"
    dev.mkdir(parents=True)
    (dev / "name").write_text("dht11\n")
    (dev / "in_temp_input").write_text(temp + "\n")
    (dev / "in_humidityrelative_input").write_text(hum + "\n")
    return dev


def config(**overrides):
    raw = {"temperature": [10, 30], "humidity": [20, 80], "report_every": 0, "campus": "riverside"}
    raw.update(overrides)
    return fleet_env.check_config(raw)


def run(cfg, state, readings, start=1000.0):
    """Feed readings (dicts for fleet_env.sample) one interval each; return the events per interval."""
    out = []
    for i, reading in enumerate(readings):
        events, state = fleet_env.evaluate(cfg, state, fleet_env.sample(**reading), start + 30 * i)
        out.append(events)
    return out, state


# ---------------------------------------------------------------- sysfs parsing


def test_finds_the_dht11_by_name_not_by_index(tmp_path):
    dev = make_sysfs(tmp_path, index=7, others=("mcp3008", "bme280"))
    assert fleet_env.find_dht11(str(tmp_path)) == str(dev)
    values = fleet_env.read_dht11(str(dev))
    assert values == {"temperature": 24.0, "humidity": 41.0, "failed_attempts": 0}


def test_scaling_of_milli_units(tmp_path):
    dev = make_sysfs(tmp_path, temp="-1500", hum="99999")
    assert fleet_env.read_dht11(str(dev))[("temperature")] == -1.5
    assert fleet_env.parse_milli("23456\n", "x", "humidity") == 23.456


def test_missing_device_names_what_was_found(tmp_path):
    make_sysfs(tmp_path / "a", others=("mcp3008",))
    os.remove(tmp_path / "a" / "bus/iio/devices/iio:device3/name")
    with pytest.raises(fleet_env.SensorMissing, match=r"no IIO device named dht11 .*iio:device0=mcp3008"):
        fleet_env.find_dht11(str(tmp_path / "a"))
    with pytest.raises(fleet_env.SensorMissing, match="does not exist"):
        fleet_env.find_dht11(str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    "text, match",
    [("", "empty"), ("  \n", "empty"), ("twenty", "not an integer"), ("24.5", "not an integer"),
     ("81000", "outside"), ("-41000", "outside")],
)
def test_garbage_temperature_is_an_error_naming_the_file(text, match):
    with pytest.raises(fleet_env.EnvError, match=match) as info:
        fleet_env.parse_milli(text, "/sys/x/in_temp_input", "temperature")
    assert "/sys/x/in_temp_input" in str(info.value)


def test_humidity_above_100_is_garbage(tmp_path):
    dev = make_sysfs(tmp_path, hum="100001")
    with pytest.raises(fleet_env.SensorReadError, match=r"in_humidityrelative_input: humidity 100.001 .*\(3 attempts\)"):
        fleet_env.read_dht11(str(dev), retries=2)


class FlakyOpen:
    """Make the first ``fails`` opens of in_temp_input raise EIO/ETIMEDOUT, like the DHT11 driver."""

    def __init__(self, monkeypatch, fails, code=errno.EIO):
        self.fails, self.code, self.calls = fails, code, 0
        real = open

        def fake_open(path, *args, **kwargs):
            if str(path).endswith("in_temp_input"):
                self.calls += 1
                if self.calls <= self.fails:
                    raise OSError(self.code, os.strerror(self.code), str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", fake_open)


def test_transient_eio_is_retried(tmp_path, monkeypatch):
    dev = make_sysfs(tmp_path)
    flaky = FlakyOpen(monkeypatch, fails=2, code=errno.ETIMEDOUT)
    assert fleet_env.read_dht11(str(dev), retries=2) == {"temperature": 24.0, "humidity": 41.0, "failed_attempts": 2}
    assert flaky.calls == 3


def test_retries_are_bounded_and_the_error_names_the_file(tmp_path, monkeypatch):
    dev = make_sysfs(tmp_path)
    flaky = FlakyOpen(monkeypatch, fails=100)
    with pytest.raises(fleet_env.SensorReadError) as info:
        fleet_env.read_dht11(str(dev), retries=1)
    assert flaky.calls == 2 and info.value.attempts == 2
    assert "in_temp_input: Input/output error (2 attempts)" in str(info.value)
    with pytest.raises(fleet_env.EnvError, match="delay_s"):
        fleet_env.read_dht11(str(dev), delay_s=1.0)  # a beacon must not sleep for long


def test_vanished_device_is_missing_not_retried(tmp_path):
    dev = make_sysfs(tmp_path)
    os.remove(dev / "in_temp_input")
    with pytest.raises(fleet_env.SensorMissing, match="in_temp_input is gone"):
        fleet_env.read_dht11(str(dev))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"temprature": [1, 2]}, "temprature: unknown key"),
        ({"temperature": [30, 10]}, "temperature: min 30.0 must be below max 10.0"),
        ({"temperature": [10]}, r"temperature: expected \[min, max\]"),
        ({"humidity": [10, 120]}, r"humidity\[1\] \(max\): 120 is outside"),
        ({"smoke": "yes"}, "smoke: 'yes' is not true/false"),
        ({"smoke": True}, "gpio.chip_label"),
        ({"smoke": True, "gpio": {"chip_label": "pinctrl-bcm2711", "line": -1}}, "gpio.line"),
        ({"gpio": {"chip_label": "c", "line": 4, "pin": 4}}, "gpio: unknown key pin"),
        ({"retries": 9}, "retries: 9 is outside 0-5"),
        ({"error_after": 0}, "error_after"),
        ({"warmup_s": "2m"}, "warmup_s: '2m' is not a number"),
        ({"textfile_dir": "relative/dir"}, "textfile_dir"),
        ({"temperature": [20, 21], "hysteresis": 1.0}, "hysteresis.temperature: 1.0 is too wide"),
        ({"hysteresis": {"temp": 1}}, "hysteresis: unknown key temp"),
        ("temperature", "list of mappings"),
        (["temperature"], r"kiosk_env\[0\]"),
    ],
)
def test_bad_config_is_refused_naming_the_key(raw, match):
    with pytest.raises(fleet_env.EnvError, match=match):
        fleet_env.check_config(raw)


def test_salt_list_config_with_salt_keys_is_accepted_with_defaults():
    cfg = fleet_env.check_config([{"interval": 30}, {"temperature": [5, 32]}, {"_beacon_name": "kiosk_env"},
                                  {"hysteresis": 0.5}])
    assert cfg["temperature"] == [5.0, 32.0] and cfg["humidity"] is None
    assert cfg["hysteresis"] == {"temperature": 0.5, "humidity": 0.5}
    assert (cfg["warmup_s"], cfg["retries"], cfg["error_after"], cfg["report_every"]) == (120.0, 2, 3, 10)
    assert cfg["gpio"]["active_low"] is True


# ---------------------------------------------------------------- hysteresis


def test_alert_on_crossing_then_clear_only_past_the_margin():
    cfg = config()  # temperature [10, 30], hysteresis 1.0
    state = fleet_env.new_state(0.0, uptime_s=10_000)
    temps = [25, 30, 30.5, 31, 29.5, 30.2, 29.1, 28.9, 31.5]
    events, _ = run(cfg, state, [{"temperature": t} for t in temps])
    tags = [[(e["tag"], e.get("metric")) for e in ev] for ev in events]
    assert tags == [[], [], [("alert", "temperature")], [], [], [], [], [("clear", "temperature")],
                    [("alert", "temperature")]]
    alert = events[2][0]
    assert (alert["value"], alert["bound"], alert["limit"], alert["severity"], alert["campus"]) == (
        30.5, "max", 30.0, "warning", "riverside")
    assert events[7][0]["value"] == 28.9


def test_no_flapping_around_the_threshold():
    cfg = config(humidity=[20, 80], hysteresis={"temperature": 1.0, "humidity": 3.0})
    state = fleet_env.new_state(0.0, uptime_s=10_000)
    wobble = [80.5, 79.8, 80.2, 79.9, 80.4, 77.5, 80.6, 76.9]
    events, state = run(cfg, state, [{"humidity": h} for h in wobble])
    flat = [(e["tag"], e["metric"]) for ev in events for e in ev]
    assert flat == [("alert", "humidity"), ("clear", "humidity")]
    assert events[7] == [{"tag": "clear", "metric": "humidity", "value": 76.9, "range": [20.0, 80.0], "unit": "%RH",
                          "campus": "riverside"}]
    assert state["alerts"] == {}


def test_low_bound_and_jump_across_the_range():
    cfg = config()
    events, state = run(cfg, fleet_env.new_state(0.0, 10_000), [{"temperature": 9.5}, {"temperature": 35}])
    assert [(e["tag"], e["bound"]) for e in events[0] + events[1]] == [("alert", "min"), ("alert", "max")]
    assert state["alerts"] == {"temperature": "max"}


def test_missing_reading_keeps_the_alert():
    cfg = config()
    events, state = run(cfg, fleet_env.new_state(0.0, 10_000),
                        [{"temperature": 31}, {"errors": {"dht11": "EIO"}}, {"temperature": 30.5}])
    assert [e["tag"] for ev in events for e in ev] == ["alert"]
    assert state["alerts"] == {"temperature": "max"}


# ---------------------------------------------------------------- sustained failure


def test_sensor_error_only_after_n_consecutive_failed_intervals():
    cfg = config(error_after=3)
    fail = {"errors": {"dht11": "in_temp_input: Input/output error (3 attempts)"}, "failed_attempts": {"dht11": 3}}
    ok = {"temperature": 20, "failed_attempts": {"dht11": 1}}
    events, state = run(cfg, fleet_env.new_state(0.0, 10_000), [fail, fail, ok, fail, fail, fail, fail, ok])
    tags = [[e["tag"] for e in ev] for ev in events]
    assert tags == [[], [], [], [], [], ["sensor_error"], [], ["clear"]]
    assert events[5][0]["sensor"] == "dht11" and events[5][0]["intervals"] == 3
    assert "Input/output error" in events[5][0]["error"]
    assert events[7][0]["metric"] == "dht11"
    assert state["read_errors"]["dht11"] == 3 * 6 + 2  # every failed attempt counted


# ---------------------------------------------------------------- smoke and warm-up


def test_smoke_ignored_during_warmup_then_critical():
    cfg = config(smoke=True, gpio={"chip_label": "pinctrl-bcm2711", "line": 17}, warmup_s=120, report_every=1)
    state = fleet_env.new_state(1000.0)  # uptime unknown: warm-up counts from the first read
    smoky = {"temperature": 20, "smoke": True}
    events, state = run(cfg, state, [smoky] * 6, start=1000.0)  # t = 1000, 1030, ..., 1150
    alerts = [[e for e in ev if e["tag"] == "alert"] for ev in events]
    assert alerts[:4] == [[], [], [], []]  # t - 1000 < 120
    assert alerts[4] == [{"tag": "alert", "metric": "smoke", "value": True, "severity": "critical",
                          "campus": "riverside"}]
    assert alerts[5] == []
    readings = [next(e for e in ev if e["tag"] == "reading") for ev in events]
    assert [r["smoke"] for r in readings] == [None, None, None, None, True, True]
    assert [r["warming_up"] for r in readings] == [True] * 4 + [False] * 2
    events, state = fleet_env.evaluate(cfg, state, fleet_env.sample(temperature=20, smoke=False), 1200.0)
    assert [(e["tag"], e.get("metric")) for e in events] == [("clear", "smoke"), ("reading", None)]


def test_warmup_counts_from_boot_when_uptime_is_known():
    cfg = config(smoke=True, gpio={"chip_label": "c", "line": 4})
    state = fleet_env.new_state(5000.0, uptime_s=600)
    events, _ = fleet_env.evaluate(cfg, state, fleet_env.sample(smoke=True), 5000.0)
    assert [e["metric"] for e in events if e["tag"] == "alert"] == ["smoke"]


class FakeLine:
    def __init__(self, values):
        self.values = list(values)

    def read(self):
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


def test_smoke_reader_retries_oserror_and_checks_type():
    assert fleet_env.read_smoke(FakeLine([OSError(errno.EBUSY, "busy"), True]), retries=2) == (True, 1)
    with pytest.raises(fleet_env.SensorReadError, match=r"gpio: busy \(2 attempts\)"):
        fleet_env.read_smoke(FakeLine([OSError(errno.EBUSY, "busy")] * 2), retries=1)
    with pytest.raises(fleet_env.EnvError, match="not true/false"):
        fleet_env.read_smoke(FakeLine([1]))
    with pytest.raises(fleet_env.EnvError, match="not a GPIO reader"):
        fleet_env.read_smoke(object())


def test_missing_chip_label_is_named(tmp_path):
    try:
        fleet_env.load_gpiod()
    except fleet_env.SensorMissing as exc:
        assert "gpiod Python package" in str(exc)
        return
    with pytest.raises(fleet_env.SensorMissing, match=r"no GPIO chip labelled 'pinctrl-bcm2711' .*found: none"):
        fleet_env.find_chip("pinctrl-bcm2711", str(tmp_path))


def test_reading_events_every_n_intervals():
    cfg = config(report_every=3)
    events, _ = run(cfg, fleet_env.new_state(0.0, 10_000), [{"temperature": 20, "humidity": 50}] * 7)
    assert [i for i, ev in enumerate(events) if any(e["tag"] == "reading" for e in ev)] == [0, 3, 6]
    assert events[3][0] == {"tag": "reading", "temperature": 20, "humidity": 50, "smoke": None, "warming_up": False,
                            "alerts": [], "errors": {}, "campus": "riverside"}


def test_evaluate_validates_its_inputs():
    with pytest.raises(fleet_env.EnvError, match="config"):
        fleet_env.evaluate({}, fleet_env.new_state(0), fleet_env.sample(), 0)
    with pytest.raises(fleet_env.EnvError, match="state"):
        fleet_env.evaluate(config(), {}, fleet_env.sample(), 0)
    with pytest.raises(fleet_env.EnvError, match="now"):
        fleet_env.evaluate(config(), fleet_env.new_state(0), fleet_env.sample(), "later")


# ---------------------------------------------------------------- textfile


def render():
    return fleet_env.render_textfile(
        "riverside", 'pi-"odd"\\1', {"temperature": 24.5, "humidity": 41.0, "smoke": False},
        {"dht11": 7, "mq2": 0}, {"dht11": True, "mq2": False}, alerts=["temperature"],
    )


def test_textfile_lines():
    text = render()
    assert text.endswith("\n")
    assert 'kiosk_env_temperature_celsius{campus="riverside",pi="pi-\\"odd\\"\\\\1"} 24.5' in text
    assert 'kiosk_env_read_errors_total{campus="riverside",pi="pi-\\"odd\\"\\\\1",sensor="dht11"} 7' in text
    assert "# TYPE kiosk_env_read_errors_total counter" in text
    for line in text.splitlines():
        if not line.startswith("#"):
            assert len(line.rsplit(" ", 1)) == 2 and "}" in line  # name{labels} value, no timestamp
            float(line.rsplit(" ", 1)[1])


def test_textfile_parses_with_prometheus_client():
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(render())}
    assert families["kiosk_env_temperature_celsius"].type == "gauge"
    sample = families["kiosk_env_temperature_celsius"].samples[0]
    assert sample.value == 24.5 and sample.labels == {"campus": "riverside", "pi": 'pi-"odd"\\1'}
    assert sample.timestamp is None
    assert families["kiosk_env_read_errors"].type == "counter"
    errors = {s.labels["sensor"]: s.value for s in families["kiosk_env_read_errors"].samples}
    assert errors == {"dht11": 7.0, "mq2": 0.0}
    up = {s.labels["sensor"]: s.value for s in families["kiosk_env_sensor_up"].samples}
    assert up == {"dht11": 1.0, "mq2": 0.0}
    assert families["kiosk_env_smoke_detected"].samples[0].value == 0.0


def test_none_values_are_left_out():
    text = fleet_env.render_textfile("c", "p", {"temperature": None, "humidity": 40}, {}, {"dht11": False})
    assert "kiosk_env_temperature_celsius" not in text and "kiosk_env_smoke_detected" not in text
    assert 'kiosk_env_humidity_percent{campus="c",pi="p"} 40' in text
    with pytest.raises(fleet_env.EnvError, match="campus"):
        fleet_env.render_textfile("", "p", {}, {}, {})


def test_writer_replaces_atomically_and_leaves_no_temp(tmp_path):
    (tmp_path / "kiosk_env.prom").write_text("old\n")
    path = fleet_env.write_textfile(str(tmp_path), "new 1\n")
    assert path == str(tmp_path / "kiosk_env.prom")
    assert (tmp_path / "kiosk_env.prom").read_text() == "new 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kiosk_env.prom"]
    assert oct((tmp_path / "kiosk_env.prom").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(fleet_env.EnvError, match="textfile_dir"):
        fleet_env.write_textfile(str(tmp_path / "missing"), "x")
    with pytest.raises(fleet_env.EnvError, match=r"\.prom"):
        fleet_env.write_textfile(str(tmp_path), "x", name="env.txt")


# ---------------------------------------------------------------- fleet status and alert payloads


def test_status_report_marks_stale_and_missing():
    campus_pis = {"riverside": ["pi-r-1", "pi-r-2"], "hillside": ["pi-h-1"]}
    returns = {"pi-r-1": {"at": 990.0, "temperature": 22.0, "errors": {}, "alerts": ["temperature"]}}
    cached = {"pi-r-2": {"at": 100.0, "temperature": 21.0, "errors": {}, "alerts": []}}
    report = fleet_env.status_report(campus_pis, returns, cached, 1000.0, 600)
    assert report["campuses"]["riverside"]["pi-r-1"]["source"] == "live"
    assert report["campuses"]["riverside"]["pi-r-1"]["stale"] is False
    assert report["campuses"]["riverside"]["pi-r-2"] == {
        "at": 100.0, "temperature": 21.0, "errors": {}, "alerts": [], "source": "cache", "age_s": 900.0, "stale": True}
    assert report["stale"] == ["pi-r-2"] and report["missing"] == ["pi-h-1"] and report["alerting"] == ["pi-r-1"]
    with pytest.raises(fleet_env.EnvError, match="stale_s"):
        fleet_env.status_report(campus_pis, {}, {}, 0, 0)
