"""
``kiosk-lab plot CAMPUS``: the operators' campus plot, from Prometheus.

One PNG per campus: the temperature of each of the campus's Pis
(``kiosk_env_temperature_celsius``, written by the Pis' ``kiosk_env`` beacon)
over the last minutes, one line per Pi, and a vertical mark at every
unexpected kiosk restart (an increase of
``kiosk_unexpected_restarts_total{campus,kiosk}``, written by the top
master). The figures come from Prometheus's HTTP ``query_range`` API; the
drawing is matplotlib's Agg backend (no display needed).

    kiosk-lab plot hillside --minutes 15 --out /tmp/hillside.png

The pure pieces (queries, Prometheus matrices -> plot data, restarts from a
counter's increases, the title) take data and return data; ``draw`` writes
the file; ``fetch_range`` is the one HTTP call.
"""

import datetime
import math
import pathlib
import re

TEMPERATURE_METRIC = "kiosk_env_temperature_celsius"
RESTARTS_METRIC = "kiosk_unexpected_restarts_total"
LABEL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # a campus id: nothing to escape in PromQL
MAX_POINTS = 600  # per series: Prometheus refuses more than 11,000; a plot needs far fewer
WIDTH_PX, HEIGHT_PX, DPI = 1200, 600, 100


class PlotError(ValueError):
    """A bad argument or a Prometheus answer the plot cannot use; the message names the field."""


def _campus(campus):
    if not isinstance(campus, str) or not LABEL_VALUE.match(campus):
        raise PlotError(f"campus: {campus!r} is not a campus id (letters, digits, '.', '_', '-')")
    return campus


def queries(campus):
    """``{"temperature": promql, "restarts": promql}`` for one campus."""
    campus = _campus(campus)
    return {
        "temperature": f'{TEMPERATURE_METRIC}{{campus="{campus}"}}',
        "restarts": f'{RESTARTS_METRIC}{{campus="{campus}"}}',
    }


def time_span(end, minutes):
    """``(start, end, step)`` in epoch seconds for the last ``minutes`` before ``end``: at most
    MAX_POINTS points a series, a step of at least one second."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= 7 * 24 * 60:
        raise PlotError(f"minutes: {minutes!r} is not a number of minutes in (0, 10080]")
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
        raise PlotError(f"end: {end!r} is not an epoch time")
    span = float(minutes) * 60
    step = max(1, math.ceil(span / MAX_POINTS))
    return float(end) - span, float(end), step


def _samples(series, field):
    if not isinstance(series, dict) or not isinstance(series.get("metric"), dict) \
            or not isinstance(series.get("values"), list):
        raise PlotError(f"{field}: {series!r:.80} is not a range-query series (metric, values)")
    points = []
    for pair in series["values"]:
        try:
            at, value = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError):
            raise PlotError(f"{field}: {pair!r:.80} is not a [time, value] pair") from None
        if math.isfinite(value):
            points.append((at, value))
    return sorted(points)


def lines_by(matrix, label, field="temperature"):
    """A range query's matrix -> ``{label value: ([times], [values])}``, sorted by label value and time;
    NaN/Inf samples left out. Series without ``label`` are an error (naming ``field``)."""
    if not isinstance(matrix, list):
        raise PlotError(f"{field}: expected a matrix (a list of series), got {type(matrix).__name__}")
    lines = {}
    for series in matrix:
        points = _samples(series, field)
        name = series["metric"].get(label)
        if not isinstance(name, str) or not name:
            raise PlotError(f"{field}: a series without the label {label!r}: {series['metric']}")
        if name in lines:
            raise PlotError(f"{field}: two series for {label}={name!r}: {series['metric']}")
        lines[name] = ([t for t, _ in points], [v for _, v in points])
    return dict(sorted(lines.items()))


def restarts(matrix):
    """Unexpected restarts from the counter's range query: ``[(time, kiosk, count)]``, sorted by time.

    A restart is where a kiosk's counter went up between two samples (``count`` restarts in that
    step). A drop is a counter reset (the top master's file rewritten from zero): the new value counts
    as restarts from zero, as Prometheus's ``increase()`` does. A series's first sample is its baseline:
    the top master writes both counters of a kiosk from its first recorded boot on, so a restart after
    that is an increase; a counter that is born above zero (the kiosk's very first recorded boot was
    unexpected, e.g. the lab's kiosks powered on at start-up with no wake) is not marked."""
    marks = []
    for kiosk, (times, values) in lines_by(matrix, "kiosk", field="restarts").items():
        previous = None
        for at, value in zip(times, values):
            if previous is not None and value > previous:
                marks.append((at, kiosk, int(round(value - previous))))
            elif previous is not None and 0 < value < previous:  # reset: counted from zero again
                marks.append((at, kiosk, int(round(value))))
            previous = value
    return sorted(marks)


def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)


def title(campus, start, end):
    """``<campus>: Pi temperatures, 2026-12-02 17:50-18:05 UTC (15 min)``."""
    campus = _campus(campus)
    if not (isinstance(start, (int, float)) and isinstance(end, (int, float)) and start < end):
        raise PlotError(f"start, end: {start!r}, {end!r} is not a time span")
    first, last = _utc(start), _utc(end)
    until = last.strftime("%H:%M") if first.date() == last.date() else last.strftime("%Y-%m-%d %H:%M")
    return (f"{campus}: Pi temperatures, {first.strftime('%Y-%m-%d %H:%M')}-{until} UTC "
            f"({round((end - start) / 60)} min)")


def plot_data(campus, temperature_matrix, restarts_matrix, start, end):
    """Everything ``draw`` needs, from the two range queries' matrices."""
    return {
        "title": title(campus, start, end),
        "start": float(start),
        "end": float(end),
        "lines": lines_by(temperature_matrix, "pi"),
        "restarts": restarts(restarts_matrix),
    }


def draw(data, out, width_px=WIDTH_PX, height_px=HEIGHT_PX, dpi=DPI):
    """Write the plot to ``out`` (PNG, ``width_px`` x ``height_px``); returns the path."""
    # the object API with the Agg canvas: no pyplot, no display, no global figure state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    if not isinstance(data, dict) or not {"title", "start", "end", "lines", "restarts"} <= set(data):
        raise PlotError("data: expected plot_data()'s mapping (title, start, end, lines, restarts)")
    for field, value in (("width_px", width_px), ("height_px", height_px), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10000:
            raise PlotError(f"{field}: {value!r} is not a positive number of pixels")
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for pi, (times, values) in data["lines"].items():
        axes.plot([_utc(t) for t in times], values, label=pi, linewidth=1.8)
    for index, (at, kiosk, count) in enumerate(data["restarts"]):
        axes.axvline(_utc(at), color="crimson", linestyle="--", linewidth=1.2,
                     label="unexpected kiosk restart" if index == 0 else None)
        axes.annotate(f"{kiosk}" + (f" x{count}" if count > 1 else ""), xy=(_utc(at), 1), xycoords=("data", "axes fraction"),
                      xytext=(3, -12), textcoords="offset points", rotation=90, va="top", fontsize=8, color="crimson")
    if not data["lines"]:
        axes.text(0.5, 0.5, "no temperature samples in this span", transform=axes.transAxes, ha="center")
    axes.set_xlim(_utc(data["start"]), _utc(data["end"]))
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=datetime.timezone.utc))
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel("temperature (°C)")
    axes.set_title(data["title"])
    axes.grid(True, alpha=0.3)
    if data["lines"] or data["restarts"]:
        axes.legend(loc="upper left", fontsize=9)
    figure.tight_layout()
    out = pathlib.Path(out)
    figure.savefig(out, format="png", dpi=dpi)  # no bbox_inches="tight": the size stays what was asked
    return out


def fetch_range(prometheus_url, promql, start, end, step, timeout=15):
    """Prometheus's ``/api/v1/query_range`` -> its matrix (list of series). PlotError on an HTTP error or
    an answer that is not a successful matrix."""
    import requests

    if not isinstance(prometheus_url, str) or not re.match(r"^https?://[^/?#\s]+/?\Z", prometheus_url):
        raise PlotError(f"prometheus_url: {prometheus_url!r} is not http(s)://host:port")
    try:
        response = requests.get(f"{prometheus_url.rstrip('/')}/api/v1/query_range", timeout=timeout,
                                params={"query": promql, "start": start, "end": end, "step": step})
        answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise PlotError(f"prometheus_url: {prometheus_url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise PlotError(f"query: Prometheus refused {promql!r} (HTTP {response.status_code}): {error}")
    data = answer.get("data") or {}
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise PlotError(f"query: {promql!r} did not answer a matrix")
    return data["result"]


def campus_plot(prometheus_url, campus, out, minutes=30, end=None):
    """Query Prometheus and draw the plot; returns ``(path, plot data)``."""
    start, end, step = time_span(end if end is not None else datetime.datetime.now().timestamp(), minutes)
    promql = queries(campus)
    data = plot_data(campus, fetch_range(prometheus_url, promql["temperature"], start, end, step),
                     fetch_range(prometheus_url, promql["restarts"], start, end, step), start, end)
    return draw(data, out), data
