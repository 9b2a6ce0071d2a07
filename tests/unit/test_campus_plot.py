"""lab/campus_plot.py: Prometheus matrices -> plot data, restarts from a counter, and the PNG it draws."""

import pathlib
import struct

import pytest

from lab import campus_plot
from lab.campus_plot import PlotError

START = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


def series(values, **labels):
    return {"metric": {"__name__": "x", **labels}, "values": [[t, str(v)] for t, v in values]}


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", raw[:8]
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", raw[16:24])


def test_queries_select_the_campus_and_refuse_what_would_need_escaping():
    assert campus_plot.queries("hillside") == {
        "temperature": 'kiosk_env_temperature_celsius{campus="hillside"}',
        "restarts": 'kiosk_unexpected_restarts_total{campus="hillside"}',
    }
    for bad in ('x"} or vector(1) #', "", None, "a b"):
        with pytest.raises(PlotError, match="campus"):
            campus_plot.queries(bad)


def test_time_span_keeps_a_series_under_the_point_limit():
    assert campus_plot.time_span(START, 15) == (START - 900, START, 2)
    assert campus_plot.time_span(START, 1) == (START - 60, START, 1)
    start, end, step = campus_plot.time_span(START, 24 * 60)
    assert (end - start) / step <= campus_plot.MAX_POINTS
    for bad in (0, -5, True, "15", 8 * 24 * 60):
        with pytest.raises(PlotError, match="minutes"):
            campus_plot.time_span(START, bad)
    with pytest.raises(PlotError, match="end"):
        campus_plot.time_span(float("nan"), 15)


def test_lines_by_pi_sorted_with_nan_left_out():
    matrix = [
        series([(START + 10, 25), (START, 24), (START + 20, "NaN")], campus="hillside", pi="pi-hillside-2"),
        series([(START, 22.5)], campus="hillside", pi="pi-hillside-1"),
    ]
    assert campus_plot.lines_by(matrix, "pi") == {
        "pi-hillside-1": ([START], [22.5]),
        "pi-hillside-2": ([START, START + 10], [24.0, 25.0]),
    }


@pytest.mark.parametrize("matrix, message", [
    ({"metric": {}}, "expected a matrix"),
    ([{"metric": {"pi": "a"}}], "not a range-query series"),
    ([series([(START, 1)], campus="c")], "without the label 'pi'"),
    ([series([(START, 1)], pi="a"), series([(START, 2)], pi="a")], "two series for pi='a'"),
    ([{"metric": {"pi": "a"}, "values": [["soon", "1"]]}], "not a \\[time, value\\] pair"),
])
def test_lines_by_names_what_is_wrong(matrix, message):
    with pytest.raises(PlotError, match=f"temperature: .*{message}|temperature: {message}"):
        campus_plot.lines_by(matrix, "pi")


def test_restarts_are_the_counter_increases_with_resets_counted_from_zero():
    matrix = [
        # 0 -> 1 at +30 (one restart), 1 -> 3 at +60 (two in one step), reset to 1 at +90, 0 after a reset: none
        series([(START, 0), (START + 30, 1), (START + 45, 1), (START + 60, 3), (START + 90, 1), (START + 120, 0)],
               campus="hillside", kiosk="kiosk-hillside-01"),
        series([(START, 4), (START + 30, 4)], campus="hillside", kiosk="kiosk-hillside-02"),
    ]
    assert campus_plot.restarts(matrix) == [
        (START + 30, "kiosk-hillside-01", 1),
        (START + 60, "kiosk-hillside-01", 2),
        (START + 90, "kiosk-hillside-01", 1),
    ]


def test_a_counter_born_above_zero_is_a_baseline_and_a_bad_series_is_named():
    born = [series([(START + 300, 1), (START + 315, 1), (START + 330, 2)], campus="hillside", kiosk="kiosk-hillside-01")]
    assert campus_plot.restarts(born) == [(START + 330, "kiosk-hillside-01", 1)]
    with pytest.raises(PlotError, match="restarts: .*without the label 'kiosk'"):
        campus_plot.restarts([series([(START, 1)], campus="hillside")])


def test_title_names_the_campus_and_the_span():
    assert campus_plot.title("hillside", START, START + 900) == \
        "hillside: Pi temperatures, 2026-11-30 00:53-01:08 UTC (15 min)"
    assert "2026-11-30 00:53-2026-12-01 00:53 UTC (1440 min)" in campus_plot.title("hillside", START, START + 86400)
    with pytest.raises(PlotError, match="start, end"):
        campus_plot.title("hillside", START, START)


def test_plot_data_joins_both_queries():
    temps = [series([(START, 24), (START + 60, 30)], campus="hillside", pi="pi-hillside-1")]
    counter = [series([(START, 0), (START + 60, 1)], campus="hillside", kiosk="kiosk-hillside-01")]
    data = campus_plot.plot_data("hillside", temps, counter, START, START + 120)
    assert data["lines"] == {"pi-hillside-1": ([START, START + 60], [24.0, 30.0])}
    assert data["restarts"] == [(START + 60, "kiosk-hillside-01", 1)]
    assert (data["start"], data["end"]) == (START, START + 120)
    assert data["title"].startswith("hillside: Pi temperatures")


def test_draw_writes_a_png_of_the_asked_size(tmp_path):
    temps = [series([(START + 15 * i, 24 + i) for i in range(40)], campus="hillside", pi="pi-hillside-1"),
             series([(START + 15 * i, 22) for i in range(40)], campus="hillside", pi="pi-hillside-2")]
    counter = [series([(START, 0), (START + 300, 1)], campus="hillside", kiosk="kiosk-hillside-01")]
    data = campus_plot.plot_data("hillside", temps, counter, START, START + 600)
    out = campus_plot.draw(data, tmp_path / "plot.png", width_px=800, height_px=400)
    assert out == tmp_path / "plot.png"
    assert png_size(out) == (800, 400)
    # the default size, and an empty span still draws (and says so on the plot)
    empty = campus_plot.plot_data("hillside", [], [], START, START + 600)
    assert png_size(campus_plot.draw(empty, tmp_path / "empty.png")) == (campus_plot.WIDTH_PX, campus_plot.HEIGHT_PX)


def test_draw_refuses_bad_input(tmp_path):
    with pytest.raises(PlotError, match="data"):
        campus_plot.draw({"lines": {}}, tmp_path / "x.png")
    data = campus_plot.plot_data("hillside", [], [], START, START + 60)
    with pytest.raises(PlotError, match="width_px"):
        campus_plot.draw(data, tmp_path / "x.png", width_px=0)
    assert not (tmp_path / "x.png").exists()


def test_fetch_range_refuses_a_url_that_is_not_a_server_address():
    for bad in ("ftp://127.0.0.1:9090", "http://127.0.0.1:9090/api?x=1", 9090):
        with pytest.raises(PlotError, match="prometheus_url"):
            campus_plot.fetch_range(bad, "up", START, START + 60, 1)


def test_fetch_range_reads_the_matrix_and_names_a_refusal(monkeypatch):
    answers = []

    class Response:
        status_code = 200

        def __init__(self, body):
            self.body = body

        def json(self):
            return self.body

    def get(url, timeout, params):
        answers.append((url, params))
        return Response(bodies.pop(0))

    import requests

    monkeypatch.setattr(requests, "get", get)
    matrix = [series([(START, 1)], pi="a")]
    bodies = [{"status": "success", "data": {"resultType": "matrix", "result": matrix}},
              {"status": "error", "error": "parse error"},
              {"status": "success", "data": {"resultType": "vector", "result": []}}]
    assert campus_plot.fetch_range("http://127.0.0.1:9", "up", START, START + 60, 1) == matrix
    assert answers == [("http://127.0.0.1:9/api/v1/query_range",
                        {"query": "up", "start": START, "end": START + 60, "step": 1})]
    with pytest.raises(PlotError, match="refused 'up'.*parse error"):
        campus_plot.fetch_range("http://127.0.0.1:9", "up", START, START + 60, 1)
    with pytest.raises(PlotError, match="did not answer a matrix"):
        campus_plot.fetch_range("http://127.0.0.1:9", "up", START, START + 60, 1)


# --------------------------------------------------------------------------- the data's source: the warm afternoon


def test_the_afternoon_climbs_from_start_to_peak_and_holds():
    from lab import kiosk_sim

    assert kiosk_sim.afternoon(0, 24, 41, 480) == 24
    assert kiosk_sim.afternoon(240, 24, 41, 480) == pytest.approx(32.5)
    assert kiosk_sim.afternoon(480, 24, 41, 480) == kiosk_sim.afternoon(10_000, 24, 41, 480) == 41
    assert kiosk_sim.afternoon(-60, 24, 41, 480) == 24
    climb = [kiosk_sim.afternoon(t, 24, 41, 480) for t in range(0, 481, 30)]
    assert climb == sorted(climb)
    with pytest.raises(kiosk_sim.SimError, match="ramp_s"):
        kiosk_sim.afternoon(0, 24, 41, 0)
    with pytest.raises(kiosk_sim.SimError, match="peak"):
        kiosk_sim.afternoon(0, 24, "hot", 60)


def test_a_dht11_reads_whole_degrees_and_percent(tmp_path):
    from lab import kiosk_sim

    profile = {"temperature": [24, 41], "humidity": [50, 28]}
    assert kiosk_sim.dht11_reading(profile, 240, 480) == (32000, 39000)  # 32.5 -> 32 (round half to even), 39
    with pytest.raises(kiosk_sim.SimError, match="humidity"):
        kiosk_sim.dht11_reading({"temperature": [24, 41]}, 0, 480)
    device = kiosk_sim.write_dht11(tmp_path / "sys", 32000, 39000)
    assert device == tmp_path / "sys" / "bus" / "iio" / "devices" / "iio:device0"
    assert [(device / n).read_text() for n in ("name", "in_temp_input", "in_humidityrelative_input")] == \
        ["dht11\n", "32000\n", "39000\n"]
    assert sorted(p.name for p in device.iterdir()) == ["in_humidityrelative_input", "in_temp_input", "name"]


def test_the_lab_puts_one_pi_under_a_tent_and_the_beacon_reads_its_tree(tmp_path):
    import sys

    from lab import kiosk_lab, kiosk_sim

    sys.path.insert(0, str(kiosk_lab.REPO / "_utils"))
    import fleet_env

    _, inv = kiosk_lab.load_inventory(kiosk_lab.REPO / "pillar" / "fleet.yaml")
    profiles = kiosk_lab.afternoon_profiles(inv, tmp_path)
    assert set(profiles) == {pi for spec in inv["campuses"].values() for pi in spec["pis"]}
    assert profiles["pi-hillside-1"]["temperature"] == [24, 41]
    others = [p["temperature"] for pi, p in profiles.items() if pi != "pi-hillside-1"]
    assert all(peak - start == 4 and peak < 32 for start, peak in others)  # warm, never past the range
    path = kiosk_lab.write_weather(tmp_path, inv, 8, 1_796_000_000.0)
    weather = kiosk_sim.load_weather(path)
    assert weather["ramp_s"] == 480 and weather["pis"] == profiles
    # the pack's own reader finds the device the lab wrote and reads the start of the afternoon
    device = fleet_env.find_dht11(profiles["pi-hillside-1"]["sysfs_root"])
    assert (pathlib.Path(device) / "in_temp_input").read_text() == "24000\n"
    with pytest.raises(ValueError, match="afternoon_minutes"):
        kiosk_lab.write_weather(tmp_path, inv, 0, 1_796_000_000.0)


def test_the_lab_runs_the_shipped_alertmanager_routes_to_its_own_webhook(tmp_path):
    import yaml

    from lab import kiosk_lab

    url = kiosk_lab.alertmanager_webhook_url()
    text = kiosk_lab.lab_alertmanager_yaml(url)
    shipped = yaml.safe_load(kiosk_lab.ALERTMANAGER_FILE.read_text())
    config = yaml.safe_load(text)
    hooks = [hook["url"] for receiver in config["receivers"] for hook in receiver.get("webhook_configs") or []]
    assert hooks and set(hooks) == {url}  # no placeholder left
    assert config["route"] == shipped["route"] and config.get("inhibit_rules") == shipped.get("inhibit_rules")
    assert kiosk_lab.lab_alertmanager_yaml(url, tmp_path / "missing.yml") is None
    (tmp_path / "bad.yml").write_text("route: {}\n")
    with pytest.raises(ValueError, match="receivers"):
        kiosk_lab.lab_alertmanager_yaml(url, tmp_path / "bad.yml")
