"""
Sample node_exporter textfiles for a small fleet, written by the pack's own
writers: every figure goes through the functions the runners and the beacon
use (``fleet_sweep.metrics``, ``fleet_rollout.metric_families``,
``fleet_campus.metrics``, ``fleet_outbox.metrics``,
``fleet_metrics.alert_families``, ``fleet_restarts.metric_families``,
``fleet_env.render_textfile``, then ``fleet_metrics.render`` and
``write_textfile``), never hand-written metric text.

The fleet (:func:`sample_fleet`): campuses ``north`` and ``south``, two Pis
each, five kiosks; ``pi-north-2`` is warm (41.5 °C, its temperature alert
raised), ``kiosk-n02`` restarted unexpectedly, ``kiosk-s02`` should be on
but is off (a mismatch), and one ``north`` kiosk runs another version than
the pin (a release drift).

Used by tests/unit/test_dashboards.py (the metric names the dashboards may
use), tests/functional/test_dashboard_queries.py (a Prometheus to query) and
the lab. ``write_samples(dirs, tick=n)`` with a growing ``n`` makes the
counters grow, so ``rate()`` and ``increase()`` have something to show.
"""

import copy
import datetime as _dt
import importlib.util
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
# the lab runs from a checkout: the pack's utilities are imported from _utils/
if importlib.util.find_spec("fleet_metrics") is None:
    sys.path.insert(0, str(REPO / "_utils"))

import fleet_campus  # noqa: E402
import fleet_env  # noqa: E402
import fleet_metrics  # noqa: E402
import fleet_outbox  # noqa: E402
import fleet_restarts  # noqa: E402
import fleet_rollout  # noqa: E402
import fleet_sweep  # noqa: E402

TOP = "top"  # the exporter of the top master (kiosk_power, kiosk_release, kiosk_alerts, kiosk_campus, kiosk_restarts)


class SamplesError(ValueError):
    """Sample data or a target folder that cannot be used; the message names the field."""


_FLEET = {
    "campuses": {
        "north": {
            "pis": {
                "pi-north-1": {"temperature": 24.5, "humidity": 41.0, "smoke": False, "alerts": [],
                               "leader": True, "serial": 12},
                "pi-north-2": {"temperature": 41.5, "humidity": 38.0, "smoke": False, "alerts": ["temperature"],
                               "leader": False, "serial": 12},
            },
            # observed power state, expected state, release answer (True: on the pin, else the version found)
            "kiosks": {
                "kiosk-n01": {"observed": "on", "expected": "on", "release": True},
                "kiosk-n02": {"observed": "on", "expected": "on", "release": True, "unexpected": 1, "boots": 3},
                "kiosk-n03": {"observed": "degraded", "expected": "on", "release": "2.3.9"},
            },
            "pin": "2.4.1",
        },
        "south": {
            "pis": {
                "pi-south-1": {"temperature": 22.0, "humidity": 47.5, "smoke": False, "alerts": [],
                               "leader": True, "serial": 11},
                "pi-south-2": {"temperature": 22.5, "humidity": 46.0, "smoke": False, "alerts": [],
                               "leader": False, "serial": 11, "clock_synced": False},
            },
            "kiosks": {
                "kiosk-s01": {"observed": "on", "expected": "on", "release": True},
                "kiosk-s02": {"observed": "off", "expected": "on", "release": fleet_rollout.SILENT},
            },
            "pin": "2.4.1",
        },
    },
    "release": "kiosk-app",
    "ranges": {"temperature": [5, 35], "humidity": [20, 70]},
}


def sample_fleet():
    """A fresh copy of the sample fleet (see the module docstring)."""
    return copy.deepcopy(_FLEET)


def _check(fleet, tick, now):
    if not isinstance(fleet, dict) or not isinstance(fleet.get("campuses"), dict) or not fleet["campuses"]:
        raise SamplesError("fleet: expected {'campuses': {campus: {'pis': ..., 'kiosks': ...}}, ...}")
    if isinstance(tick, bool) or not isinstance(tick, int) or tick < 0:
        raise SamplesError(f"tick: {tick!r} is not a count of 0 or more")
    if isinstance(now, bool) or not isinstance(now, (int, float)) or now <= 0:
        raise SamplesError(f"now: {now!r} is not a Unix time")


def pi_names(fleet=None):
    """The Pis of ``fleet`` (default :func:`sample_fleet`), sorted."""
    fleet = sample_fleet() if fleet is None else fleet
    _check(fleet, 0, 1)
    return sorted(pi for spec in fleet["campuses"].values() for pi in spec["pis"])


def exporter_dirs(root, fleet=None):
    """
    ``{name: folder}`` of one node_exporter textfile folder per host, created
    under ``root``: :data:`TOP` (the top master) and each Pi. What
    ``lab.monitor.Stack`` takes as ``exporters``.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise SamplesError(f"root: {str(root)!r} is not an existing directory")
    dirs = {}
    for name in [TOP, *pi_names(fleet)]:
        dirs[name] = root / name
        dirs[name].mkdir(exist_ok=True)
    return dirs


def _write(directory, name, families):
    return pathlib.Path(fleet_metrics.write_textfile(str(directory), name, fleet_metrics.render(families)))


def _write_power(directory, fleet, tick, now):
    """``kiosk_power.prom`` after a sweep then a verify (``fleet_sweep.metrics``)."""
    inventory = {"campuses": {c: {"kiosks": sorted(spec["kiosks"])} for c, spec in fleet["campuses"].items()}}
    observed = {k: v["observed"] for spec in fleet["campuses"].values() for k, v in spec["kiosks"].items()}
    wake = {c: [k for k, v in sorted(spec["kiosks"].items()) if v["expected"] == "on" and v["observed"] != "on"]
            for c, spec in fleet["campuses"].items()}
    sweep = {"result": True, "observed": observed, "wake": wake, "shutdown": {c: [] for c in fleet["campuses"]}}
    last, _ = fleet_sweep.metrics({}, "sweep", sweep, inventory, now - 30)
    mismatches = [{"kiosk": k, "campus": c, "expected": v["expected"], "observed": v["observed"]}
                  for c, spec in fleet["campuses"].items() for k, v in sorted(spec["kiosks"].items())
                  if v["expected"] in ("on", "off") and v["observed"] in ("on", "off") and v["observed"] != v["expected"]]
    verify = {"result": not mismatches, "observed": observed, "mismatches": mismatches}
    _, families = fleet_sweep.metrics(last, "verify", verify, inventory, now)
    return _write(directory, "kiosk_power.prom", families)


def _write_release(directory, fleet, tick, now):
    """``kiosk_release.prom`` (``fleet_rollout.metric_families``): pins, published size, WAN bytes, drift."""
    name = fleet["release"]
    pins = {c: {"version": spec["pin"], "serial": 7} for c, spec in fleet["campuses"].items()}
    answers = {c: {k: v["release"] for k, v in spec["kiosks"].items()} for c, spec in fleet["campuses"].items()}
    state = {"pins": {name: pins}, "metrics": {
        "published": {name: {"version": max(spec["pin"] for spec in fleet["campuses"].values()),
                             "bytes": 48_213_504}},
        # one campus staged from the master, the next from a peer Pi (a fraction over the WAN)
        "wan": {name: {c: 48_213_504 // (1 + 9 * i) + 1024 * tick for i, c in enumerate(sorted(fleet["campuses"]))}},
        "kiosks": {name: fleet_rollout.kiosk_counts(answers)},
        "runs": {"publish": True, "push": True, "status": True},
    }}
    return _write(directory, "kiosk_release.prom", fleet_rollout.metric_families(state))


def _write_alerts(directory, fleet, tick, now):
    """``kiosk_alerts.prom`` (``fleet_metrics.alert_families``), every counter present, growing with ``tick``."""
    rows = [
        ("kiosk_alerts_posted_total", "power_mismatch", 4 + tick),
        ("kiosk_alerts_posted_total", "env", 2 + tick),
        ("kiosk_alerts_post_failures_total", "env", 1),
        ("kiosk_alerts_dropped_total", "pi-north-2", 3 + tick),
        ("kiosk_alerts_duplicates_total", "pi-north-2", 1 + tick),
        ("kiosk_alerts_refused_total", "not_confirmed", 1),
    ]
    return _write(directory, "kiosk_alerts.prom", fleet_metrics.alert_families(rows))


def _write_outbox(directory, fleet, tick, now):
    """The top master's ``kiosk_campus.prom`` (``fleet_outbox.metrics``): collect counters, each Pi and kiosk."""
    at = _dt.datetime.fromtimestamp(now - 20, _dt.timezone.utc).isoformat()
    counters, day, unposted = [], {}, []
    for campus, spec in sorted(fleet["campuses"].items()):
        pis = {}
        for pi, info in sorted(spec["pis"].items()):
            labels = {"campus": campus, "pi": pi}
            counters += [
                ("kiosk_campus_entries_total", dict(labels, kind="observation"), 40 + 5 * tick),
                ("kiosk_campus_entries_total", dict(labels, kind="action"), 6 + tick),
                ("kiosk_campus_entries_duplicate_total", labels, 20 + 2 * tick),
                ("kiosk_campus_entries_refused_total", labels, 0),
                ("kiosk_campus_alerts_posted_total", labels, 1 + tick),
                ("kiosk_campus_alert_post_failures_total", labels, 0),
                ("kiosk_campus_collect_silent_total", labels, 2 if pi == "pi-south-2" else 0),
                ("kiosk_campus_collect_failed_total", labels, 0),
            ]
            pis[pi] = {"collected_at": at, "clock": {"synced": info.get("clock_synced", True)},
                       "serial": info["serial"], "dropped": {"observation": 0}}
        kiosks = {k: {"observed": v["observed"], "expected": v["expected"]} for k, v in spec["kiosks"].items()}
        day[campus] = {"pis": pis, "kiosks": kiosks}
        if any(v["observed"] != v["expected"] for v in spec["kiosks"].values()):
            unposted.append({"key": f"{campus}/sample-mismatch"})
    return _write(directory, "kiosk_campus.prom", fleet_outbox.metrics(counters, day, unposted))


def _write_restarts(directory, fleet, tick, now):
    """``kiosk_restarts.prom`` (``fleet_restarts.metric_families``): boots and unexpected restarts per kiosk."""
    rows = [{"campus": c, "kiosk": k, "boots": v.get("boots", 1) + tick,
             "unexpected": v.get("unexpected", 0) + (tick if v.get("unexpected") else 0), "last_boot": now - 600}
            for c, spec in sorted(fleet["campuses"].items()) for k, v in sorted(spec["kiosks"].items())]
    return _write(directory, "kiosk_restarts.prom", fleet_restarts.metric_families(rows))


def _write_pi(directory, fleet, campus, pi, tick, now):
    """One Pi's ``kiosk_env.prom`` (``fleet_env.render_textfile``) and ``kiosk_campus.prom`` (``fleet_campus.metrics``)."""
    spec = fleet["campuses"][campus]
    info = spec["pis"][pi]
    values = {"temperature": info["temperature"], "humidity": info["humidity"], "smoke": info["smoke"]}
    text = fleet_env.render_textfile(campus, pi, values, {"dht11": 2 + tick, "mq2": 0},
                                     {"dht11": True, "mq2": True}, sorted(info["alerts"]), ranges=fleet["ranges"])
    paths = [pathlib.Path(fleet_env.write_textfile(str(directory), text))]
    synced = info.get("clock_synced", True)
    peers = sorted(spec["pis"])
    ret = {
        "result": True, "leader": info["leader"], "live": peers, "serial": info["serial"],
        "clock": {"synced": synced, "confirmed_by": [p for p in peers if p != pi]},
        "observed": {k: v["observed"] for k, v in spec["kiosks"].items()},
        "woke": [k for k, v in sorted(spec["kiosks"].items())
                 if info["leader"] and v["expected"] == "on" and v["observed"] != "on"],
        "shut_down": [],
        # a Pi whose clock is not synchronised leaves its shutdowns alone
        "withheld": {"shutdown": [] if synced else sorted(spec["kiosks"])},
    }
    paths.append(_write(directory, "kiosk_campus.prom", fleet_campus.metrics(campus, pi, ret, now - 5)))
    return paths


def write_samples(dirs, fleet=None, tick=0, now=None):
    """
    Write every sample textfile into ``dirs`` (:func:`exporter_dirs`): the
    top master's five and each Pi's two. ``tick`` (0, 1, 2...) makes the
    counters grow; ``now`` (Unix time, default the clock) dates the runs.
    Returns ``{name: [paths]}``.
    """
    fleet = sample_fleet() if fleet is None else fleet
    now = time.time() if now is None else now
    _check(fleet, tick, now)
    if not isinstance(dirs, dict):
        raise SamplesError(f"dirs: expected {{name: folder}}, got {type(dirs).__name__}")
    missing = [name for name in [TOP, *pi_names(fleet)] if name not in dirs or not pathlib.Path(dirs[name]).is_dir()]
    if missing:
        raise SamplesError(f"dirs: no existing folder for {', '.join(missing)}")
    written = {TOP: [writer(dirs[TOP], fleet, tick, now)
                     for writer in (_write_power, _write_release, _write_alerts, _write_outbox, _write_restarts)]}
    for campus, spec in sorted(fleet["campuses"].items()):
        for pi in sorted(spec["pis"]):
            written[pi] = _write_pi(dirs[pi], fleet, campus, pi, tick, now)
    return written


def metric_names(paths):
    """The metric names the textfiles at ``paths`` hold (their ``# TYPE`` lines)."""
    if isinstance(paths, (str, pathlib.Path)) or not isinstance(paths, (list, tuple, set)):
        raise SamplesError(f"paths: expected a list of textfile paths, got {type(paths).__name__}")
    names = set()
    for path in paths:
        for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("# TYPE "):
                names.add(line.split()[2])
    return names
