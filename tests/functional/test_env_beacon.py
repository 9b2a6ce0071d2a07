"""
The kiosk_env beacon and execution module loaded through Salt's own loaders
(``module_dirs: [repo]``, in-process, as a Pi loads them), against a fake
sysfs tree and a fake GPIO reader. Nothing of Salt is mocked. The alert path
(re-read, webhook) is tested by tests/functional/test_alert_runner.py and on
the topology (tests/integration/test_env.py, test_forged_alerts.py).
"""

import pathlib

import pytest
import salt.beacons
import salt.config
import salt.loader

REPO = pathlib.Path(__file__).resolve().parents[2]


class FakeSmoke:
    """The GPIO reader interface: read() -> bool (True = smoke)."""

    def __init__(self, value=False):
        self.value = value
        self.reads = 0

    def read(self):
        self.reads += 1
        return self.value

    def close(self):
        pass


@pytest.fixture
def sysfs(tmp_path):
    base = tmp_path / "sys" / "bus" / "iio" / "devices"
    (base / "iio:device0").mkdir(parents=True)
    (base / "iio:device0" / "name").write_text("mcp3008\n")
    dev = base / "iio:device1"
    dev.mkdir()
    (dev / "name").write_text("dht11\n")
    (dev / "in_temp_input").write_text("24000\n")
    (dev / "in_humidityrelative_input").write_text("41000\n")
    return tmp_path / "sys", dev


@pytest.fixture
def minion(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(root), "cachedir": str(root), "module_dirs": [str(REPO)],
                 "id": "pi-riverside-1"})
    opts["enable_fqdns_grains"] = False  # no reverse-DNS lookups (network rule)
    opts["grains"] = salt.loader.grains(opts)
    # the Pi's pillar slice: its campus, where the module finds the campus label
    opts["pillar"] = {"kiosk_fleet": {"campuses": {"riverside": {
        "vlans": {"hall": {"network": "10.20.1.0/24"}},
        "pis": {"pi-riverside-1": {"vlans": {"hall": {"source": "10.20.1.2"}}}},
        "kiosks": {},
    }}}}
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts))
    return opts, mods


def beacons(opts, mods, reader=None):
    context = {"kiosk_env.gpio_reader": reader} if reader is not None else {}
    return salt.loader.beacons(opts, mods, context=context)


def beacon_config(sysfs_root, textfile_dir, **extra):
    conf = [{"interval": 30}, {"sysfs_root": str(sysfs_root)}, {"temperature": [10, 30]}, {"humidity": [20, 80]},
            {"textfile_dir": str(textfile_dir)}, {"report_every": 0}]
    return conf + [{k: v} for k, v in extra.items()]


GPIO = {"chip_label": "pinctrl-bcm2711", "line": 17, "active_low": True}


def test_validate_names_the_bad_key(minion, sysfs, tmp_path):
    opts, mods = minion
    beacon = beacons(opts, mods)
    ok, message = beacon["kiosk_env.validate"](beacon_config(sysfs[0], tmp_path, temprature=[1, 2]))
    assert ok is False and "temprature: unknown key" in message
    ok, message = beacon["kiosk_env.validate"](beacon_config(sysfs[0], tmp_path, hysteresis={"humidity": 40}))
    assert ok is False and "hysteresis.humidity: 40" in message
    ok, message = beacon["kiosk_env.validate"]({"temperature": [10, 30]})
    assert ok is False and "must be a list" in message
    ok, message = beacon["kiosk_env.validate"](beacon_config(sysfs[0], tmp_path))
    assert ok is True and "dht11 at " + str(sysfs[1]) in message


def test_validate_says_which_device_is_missing(minion, tmp_path):
    opts, mods = minion
    empty = tmp_path / "empty-sys"
    (empty / "bus" / "iio" / "devices" / "iio:device0").mkdir(parents=True)
    (empty / "bus" / "iio" / "devices" / "iio:device0" / "name").write_text("bme280\n")
    ok, message = beacons(opts, mods)["kiosk_env.validate"](beacon_config(empty, tmp_path))
    assert ok is False
    assert "no IIO device named dht11" in message and "iio:device0=bme280" in message


def test_validate_smoke_without_gpio_chip(minion, sysfs, tmp_path):
    opts, mods = minion
    no_chips = tmp_path / "dev"
    no_chips.mkdir()
    conf = beacon_config(sysfs[0], tmp_path, smoke=True, gpio=dict(GPIO, dev_dir=str(no_chips)))
    ok, message = beacons(opts, mods)["kiosk_env.validate"](conf)
    assert ok is False
    try:
        import gpiod  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        assert "gpiod Python package" in message and "not installed" in message
    else:
        assert f"no GPIO chip labelled 'pinctrl-bcm2711' under {no_chips} (found: none)" in message
    # the DHT11 part needs no gpiod at all
    assert beacons(opts, mods)["kiosk_env.validate"](beacon_config(sysfs[0], tmp_path))[0] is True


def test_beacon_alerts_when_the_temperature_crosses_and_writes_metrics(minion, sysfs, tmp_path):
    opts, mods = minion
    sysfs_root, dev = sysfs
    reader = FakeSmoke(False)
    beacon = beacons(opts, mods, reader)
    conf = beacon_config(sysfs_root, tmp_path, smoke=True, gpio=GPIO, warmup_s=0, campus="riverside")
    assert beacon["kiosk_env.validate"](conf)[0] is True
    run_conf = [c for c in conf if "interval" not in c] + [{"_beacon_name": "kiosk_env"}]  # as Salt calls it
    assert beacon["kiosk_env.beacon"](run_conf) == []
    (dev / "in_temp_input").write_text("31500\n")
    events = beacon["kiosk_env.beacon"](run_conf)
    assert events == [{"tag": "alert", "metric": "temperature", "value": 31.5, "bound": "max", "limit": 30.0,
                       "range": [10.0, 30.0], "unit": "C", "severity": "warning", "campus": "riverside"}]
    assert beacon["kiosk_env.beacon"](run_conf) == []  # still hot: no repeat
    reader.value = True
    assert [(e["tag"], e["metric"], e["severity"]) for e in beacon["kiosk_env.beacon"](run_conf)] == [
        ("alert", "smoke", "critical")]
    assert reader.reads == 4

    text = (tmp_path / "kiosk_env.prom").read_text()
    assert 'kiosk_env_temperature_celsius{campus="riverside",pi="pi-riverside-1"} 31.5' in text
    assert 'kiosk_env_smoke_detected{campus="riverside",pi="pi-riverside-1"} 1' in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".kiosk_env")] == []
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["kiosk_env_humidity_percent"].samples[0].value == 41.0
    alerts = {s.labels["metric"]: s.value for s in families["kiosk_env_alert_active"].samples}
    assert alerts == {"temperature": 1.0, "humidity": 0.0, "smoke": 1.0}


def test_sustained_dht11_failure_becomes_sensor_error(minion, sysfs, tmp_path):
    opts, mods = minion
    sysfs_root, dev = sysfs
    (dev / "in_temp_input").write_text("garbage\n")
    beacon = beacons(opts, mods)
    conf = beacon_config(sysfs_root, tmp_path, error_after=2, retries=1)
    first = beacon["kiosk_env.beacon"](conf)
    second = beacon["kiosk_env.beacon"](conf)
    assert first == []
    assert [(e["tag"], e["sensor"]) for e in second] == [("sensor_error", "dht11")]
    assert f"{dev}/in_temp_input: not an integer: 'garbage' (2 attempts)" == second[0]["error"]
    text = (tmp_path / "kiosk_env.prom").read_text()
    assert 'kiosk_env_read_errors_total{campus="riverside",pi="pi-riverside-1",sensor="dht11"} 4' in text
    assert 'sensor_up{campus="riverside",pi="pi-riverside-1",sensor="dht11"} 0' in text
    (dev / "in_temp_input").write_text("22000\n")
    assert [(e["tag"], e["metric"]) for e in beacon["kiosk_env.beacon"](conf)] == [("clear", "dht11")]


def test_salt_beacon_machinery_tags_the_events(minion, sysfs, tmp_path):
    """Salt's own Beacon.process runs validate() then beacon() and builds the tags."""
    opts, mods = minion
    sysfs_root, dev = sysfs
    (dev / "in_temp_input").write_text("35000\n")
    conf = {"kiosk_env": [c for c in beacon_config(sysfs_root, tmp_path) if "interval" not in c]}
    events = salt.beacons.Beacon(opts, mods).process(conf, opts["grains"])
    assert [e["tag"] for e in events] == ["salt/beacon/pi-riverside-1/kiosk_env/alert"]
    assert events[0]["data"]["id"] == "pi-riverside-1" and events[0]["data"]["campus"] == "riverside"
    bad = salt.beacons.Beacon(opts, mods).process({"kiosk_env": [{"temperature": "hot"}]}, opts["grains"])
    assert bad == []  # invalid config: logged, not run, the minion carries on


def test_state_survives_a_beacon_refresh(minion, sysfs, tmp_path):
    opts, mods = minion
    sysfs_root, dev = sysfs
    conf = beacon_config(sysfs_root, tmp_path)
    (dev / "in_temp_input").write_text("31000\n")
    first = beacons(opts, mods)
    assert [e["tag"] for e in first["kiosk_env.beacon"](conf)] == ["alert"]
    first["kiosk_env.close"](conf)  # what Salt does before replacing the Beacon on a refresh
    second = beacons(opts, mods)
    assert second["kiosk_env.beacon"](conf) == []  # same boot: the alert is not announced again
    (dev / "in_temp_input").write_text("28000\n")
    assert [e["tag"] for e in second["kiosk_env.beacon"](conf)] == ["clear"]


def test_module_read_uses_the_beacon_config(minion, sysfs, tmp_path):
    opts, mods = minion
    sysfs_root, dev = sysfs
    opts["beacons"] = {"kiosk_env": beacon_config(sysfs_root, tmp_path, temperature=[10, 20])}
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts))
    ret = mods["kiosk_env.read"]()
    assert (ret["pi"], ret["campus"], ret["temperature"], ret["humidity"], ret["smoke"]) == (
        "pi-riverside-1", "riverside", 24.0, 41.0, None)
    assert ret["alerts"] == ["temperature"] and ret["errors"] == {} and ret["device"] == str(dev)
    # explicit kwargs override the beacon config
    assert mods["kiosk_env.read"](temperature=[10, 30])["alerts"] == []
    with pytest.raises(Exception, match="retries: 7 is outside 0-5"):
        mods["kiosk_env.read"](retries=7)
    missing = mods["kiosk_env.read"](sysfs_root=str(tmp_path / "nope"))
    assert missing["temperature"] is None and "does not exist" in missing["errors"]["dht11"]
