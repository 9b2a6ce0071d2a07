"""Prometheus textfiles: rendering, and the atomic write through fleet_state."""

import os

import pytest

import fleet_fields
import fleet_metrics


def test_render_leaves_out_empty_families_and_none_samples():
    text = fleet_metrics.render([
        ("a_total", "counter", "A.", [({"k": 'x"y'}, 3), ({"k": "z"}, None)]),
        ("b", "gauge", "B.", [({"k": "z"}, None)]),
        ("c", "gauge", "C.", [({}, True), ({"f": "1"}, 0.5)]),
    ])
    assert text == ('# HELP a_total A.\n# TYPE a_total counter\na_total{k="x\\"y"} 3\n'
                    '# HELP c C.\n# TYPE c gauge\nc{} 1\nc{f="1"} 0.5\n')


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_render_refuses_non_finite_values_with_the_pack_error(bad):
    with pytest.raises(fleet_metrics.MetricsError, match="^a: ") as info:
        fleet_metrics.render([("a", "gauge", "A.", [({}, bad)])])
    assert isinstance(info.value, fleet_fields.FleetError)


def test_write_textfile_replaces_atomically_with_mode_0644(tmp_path, monkeypatch):
    path = fleet_metrics.write_textfile(str(tmp_path), "x.prom", "a 1\n")
    assert path == str(tmp_path / "x.prom") and (tmp_path / "x.prom").read_text() == "a 1\n"
    assert (os.stat(path).st_mode & 0o777) == 0o644
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        fleet_metrics.write_textfile(str(tmp_path), "x.prom", "a 2\n")
    assert (tmp_path / "x.prom").read_text() == "a 1\n" and os.listdir(tmp_path) == ["x.prom"]


@pytest.mark.parametrize(("directory", "name", "field"), [
    ("missing", "x.prom", "kiosk_power.textfile_dir"), (None, "x.prom", "kiosk_power.textfile_dir"),
    (".", "x.txt", "name"), (".", "a/x.prom", "name"), (".", None, "name"),
])
def test_write_textfile_names_the_bad_field(tmp_path, directory, name, field):
    directory = str(tmp_path / directory) if directory == "missing" else directory
    with pytest.raises(fleet_metrics.MetricsError) as info:
        fleet_metrics.write_textfile(directory, name, "a 1\n", field="kiosk_power.textfile_dir")
    assert info.value.field == field
