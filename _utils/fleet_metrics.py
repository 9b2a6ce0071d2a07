"""
Prometheus textfile output (node_exporter's textfile collector), shared by
the env beacon, the release runner and the power sweeps: render metric
families to the text format and write the file atomically.
"""

import importlib.util
import math
import os

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_state


class MetricsError(fleet_fields.FleetError):
    """A metric value or textfile target that cannot be written; the message names the field."""


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels):
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _fmt(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(families):
    """
    ``families``: ``[(name, kind, help, [(labels dict, value), ...]), ...]``.
    Samples whose value is ``None`` are left out (no stale figure); a family
    with no sample is left out whole. No timestamps. :class:`MetricsError`
    (a ValueError) on a non-finite value.
    """
    lines = []
    for name, kind, help_text, samples in families:
        rows = [(labels, value) for labels, value in samples if value is not None]
        if not rows:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            if isinstance(value, float) and not math.isfinite(value):
                raise MetricsError(f"{name}: {value!r} is not a finite number")
            lines.append(f"{name}{_labels(labels)} {_fmt(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(directory, name, text, field="textfile_dir"):
    """
    Write ``text`` to ``directory/name`` atomically (:func:`fleet_state.write_atomic`:
    the temporary file ends in ``.tmp``, so node_exporter never reads it half
    written), mode 0644. Returns the path.
    """
    if not isinstance(directory, str) or not os.path.isdir(directory):
        raise MetricsError(f"{field}: {directory!r} is not an existing directory", field=field)
    if not isinstance(name, str) or "/" in name or not name.endswith(".prom"):
        raise MetricsError(f"name: {name!r} must be a file name ending in .prom", field="name")
    return fleet_state.write_atomic(os.path.join(directory, name), text, mode=0o644)


# The counters of kiosk_alerts.prom (top master, runner kiosk_alert): name, label key, help.
ALERT_COUNTERS = (
    ("kiosk_alerts_dropped_total", "minion", "Alerts dropped by the per-minion rate limit."),
    ("kiosk_alerts_duplicates_total", "minion",
     "Copies of an alert already accepted within the dedup window (one per Pi of a multi-master kiosk), dropped."),
    ("kiosk_alerts_refused_total", "reason", "Alert events refused: invalid or unknown sender, or not confirmed by a re-read."),
    ("kiosk_alerts_posted_total", "kind", "Alerts POSTed to the webhook and accepted (2xx)."),
    ("kiosk_alerts_post_failures_total", "kind", "Alerts the webhook did not accept (network error, non-2xx)."),
)


def alert_families(rows):
    """
    The families of ``kiosk_alerts.prom`` from ``rows``, ``[(metric, label
    value, count)]`` as ``fleet_state.Ledger.counters`` returns them; rows of
    other metrics are left out. :class:`MetricsError` naming ``rows`` on a
    row of the wrong shape.
    """
    if not isinstance(rows, (list, tuple)):
        raise MetricsError(f"rows: {type(rows).__name__} is not a list of (metric, label, count)", field="rows")
    for row in rows:
        if not (isinstance(row, (list, tuple)) and len(row) == 3 and isinstance(row[0], str)
                and isinstance(row[1], str) and isinstance(row[2], int) and not isinstance(row[2], bool)
                and row[2] >= 0):
            raise MetricsError(f"rows: {fleet_fields.shown(row)} is not (metric, label, count)", field="rows")
    return [(name, "counter", help_text, [({key: label}, count) for metric, label, count in rows if metric == name])
            for name, key, help_text in ALERT_COUNTERS]
