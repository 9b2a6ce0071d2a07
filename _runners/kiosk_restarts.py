"""
Unexpected kiosk restarts, on the top master: ``boot`` (run by the
``kiosk/boot`` reactor) records each boot of a kiosk and decides whether the
pack caused it; ``show`` lists the counts and the last unexpected restarts.

.. code-block:: yaml

    # /etc/salt/master.d/kiosk-fleet-top.conf
    kiosk_restarts:
      textfile_dir: /var/lib/prometheus/node-exporter   # default: kiosk_power:textfile_dir
      timeout: 30            # seconds to wait for the kiosk's answer, default 30
      collect_first: true    # no wake known for a fresh boot: collect its campus first (unless collected since), default true

The boot event is a hint: its id and its data are claims (behind a syndic a
kiosk can fire ``kiosk/boot`` with any id). So ``boot`` takes only the id,
checks it is a kiosk of the inventory and asks that kiosk itself, through the
syndics, for ``kiosk_power.last_boot`` (``ps.boot_time`` when the pack's
module is not synced yet). The wakes the pack sent come from the Pis' outbox
entries collected here (``fleet_outbox.Collected``, kind ``action``), the
top-master sweeps (``kiosk_power`` state) and the wakes ``kiosk_power.wake``
recorded in the store; the expected state from the schedule in force and the
holds. The decision is ``fleet_restarts.decide``; the record
(``fleet_restarts.store_path``: ``<cachedir>/kiosk_restarts/restarts.db``)
keeps one row per kiosk and boot time, so the event's copies (one per Pi)
count once.

Writes ``kiosk_restarts.prom``: ``kiosk_boots_total{campus,kiosk}``,
``kiosk_unexpected_restarts_total{campus,kiosk}``,
``kiosk_last_boot_timestamp_seconds{campus,kiosk}``.
"""

import datetime as _dt
import logging
import os
import threading
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_calendar, fleet_fields, fleet_inventory, fleet_metrics, fleet_outbox
    from saltext_kiosk_fleet.utils import fleet_restarts, fleet_runner, fleet_state, fleet_sweep
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_calendar
    import fleet_fields
    import fleet_inventory
    import fleet_metrics
    import fleet_outbox
    import fleet_restarts
    import fleet_runner
    import fleet_state
    import fleet_sweep

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_restarts"

CONFIG_KEY = "kiosk_restarts"
TEXTFILE = "kiosk_restarts.prom"
COLLECTED = ("kiosk_outbox", "collected.db")  # the outbox collection's store (kiosk_outbox.collect)
FUNCTION = "kiosk_power.last_boot"
FALLBACK = "ps.boot_time"  # Salt's own: a kiosk that has not got the pack's modules yet
DEFAULT_TIMEOUT = 30
COLLECT_IF_BOOTED_S = 1800  # a boot this recent may have a wake not collected yet
ERRORS = (fleet_fields.FleetError,)
# reactor runners are threads of one process: a campus whose power came back boots all its kiosks
# at once, and one collect serves them all (the others find the campus collected since their boot)
_COLLECT_LOCK = threading.Lock()


def __virtual__():
    return __virtualname__


def _settings(timeout):
    conf = fleet_runner.config(__opts__, CONFIG_KEY)
    collect_first = conf.get("collect_first", True)
    if not isinstance(collect_first, bool):
        raise fleet_runner.ConfigError(f"{CONFIG_KEY}.collect_first: {collect_first!r} is not true or false",
                                       field=f"{CONFIG_KEY}.collect_first")
    return {
        "timeout": fleet_runner.number(conf.get("timeout", DEFAULT_TIMEOUT) if timeout is None else timeout,
                                       "timeout", 1, 600),
        "collect_first": collect_first,
        "textfile_dir": conf.get("textfile_dir") or fleet_runner.config(__opts__, "kiosk_power").get("textfile_dir"),
    }


def _store():
    return fleet_restarts.Restarts(fleet_restarts.store_path(__opts__["cachedir"]))


def _ask(kiosk, timeout):
    """The kiosk's own ``last_boot`` answer, checked (``fleet_restarts.check_answer``)."""
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        got = fleet_runner.call(client, [kiosk], FUNCTION, kwarg={"reason": True}, timeout=timeout)
        if kiosk in got.failed and "is not available" in got.failed[kiosk]:
            # the pack's modules not synced yet (the reactor syncs them at the same time): Salt's own boot time
            got = fleet_runner.call(client, [kiosk], FALLBACK, timeout=timeout)
            if kiosk in got.answered:
                got.answered[kiosk] = {"boot_time": got.answered[kiosk], "shutdown": None}
    if got.conflicting:
        raise fleet_runner.RunnerError(f"kiosk: {kiosk} answered twice, differently (one answer was forged)",
                                       field="kiosk")
    if kiosk in got.failed:
        raise fleet_runner.RunnerError(f"kiosk: {kiosk} failed {FUNCTION}: {got.failed[kiosk]}", field="kiosk")
    if kiosk not in got.answered:
        raise fleet_runner.RunnerError(f"kiosk: {kiosk} did not answer {FUNCTION} within {timeout} s", field="kiosk")
    return fleet_restarts.check_answer(got.answered[kiosk], "answer")


def _wakes(store, campus, kiosk, boot):
    """
    Unix times of the wakes the pack sent ``kiosk`` around ``boot``: collected
    outbox actions, sweeps, and the wakes ``kiosk_power.wake`` recorded in ``store``.
    """
    since = _dt.datetime.fromtimestamp(boot - fleet_restarts.WAKE_WINDOW_S, _dt.timezone.utc)
    wakes = store.wakes(kiosk, max(0, boot - fleet_restarts.WAKE_WINDOW_S), boot + fleet_restarts.CLOCK_SKEW_S)
    path = os.path.join(__opts__["cachedir"], *COLLECTED)
    if os.path.exists(path):
        day = fleet_outbox.Collected(path).day(campus=campus, since=since)
        wakes += fleet_restarts.wakes_from_day(day, campus, kiosk)
    state = os.path.join(__opts__["cachedir"], fleet_calendar.POWER_DIR, fleet_calendar.POWER_STATE_FILE)
    sweeps = fleet_sweep.load_state(fleet_state.read_json(state, fleet_sweep.SweepError, None))["sweeps"]
    wakes += fleet_restarts.wakes_from_sweeps(sweeps, kiosk)
    return sorted(wakes)


def _expected(inventory, data, campus, kiosk, boot):
    """The schedule's state for ``kiosk`` at ``boot`` (holds included): on, off or unmanaged."""
    schedule, _ = fleet_calendar.schedule_in_force(__opts__["cachedir"], data, inventory)
    holds = fleet_calendar.holds_in_force(__opts__["cachedir"])
    at = _dt.datetime.fromtimestamp(boot, _dt.timezone.utc)
    view = fleet_sweep.expect(inventory, schedule, holds, at, selection={campus: [kiosk]})
    return view["expected"][kiosk]["state"]


def _collect(campus, booted):
    """
    One collect of the campus's outboxes (``kiosk_outbox.collect``) unless a
    Pi of the campus was collected since the boot; a failure is logged, never fatal.
    """
    path = os.path.join(__opts__["cachedir"], *COLLECTED)
    if os.path.exists(path):
        pis = fleet_outbox.Collected(path).pis(campus=campus).get(campus, {})
        # a wake stamped up to CLOCK_SKEW_S after the boot still explains it (decide): collected after that
        if fleet_restarts.collected_since(pis, booted + fleet_restarts.CLOCK_SKEW_S):
            return
    try:
        answer = __salt__["kiosk_outbox.collect"](campus=campus, timeout=10, budget_s=20)
    except (KeyError, *ERRORS) as exc:  # kiosk_outbox not loaded, or refused
        log.warning("kiosk_restarts: collect of %s not run: %s", campus, exc)
        return
    if not answer.get("result"):
        log.warning("kiosk_restarts: collect of %s: %s", campus, answer.get("error"))


def _write_metrics(directory, inventory):
    if not directory:
        return None

    def write(totals):
        # a 0 for every kiosk of the inventory with no boot yet: increase() misses a series born at 1
        seen = {row["kiosk"] for row in totals}
        rows = totals + [{"campus": campus, "kiosk": kiosk, "boots": 0, "unexpected": 0, "last_boot": None}
                         for campus, spec in sorted(inventory["campuses"].items())
                         for kiosk in sorted(spec["kiosks"]) if kiosk not in seen]
        try:  # inside the store's transaction: an older count never overwrites a newer file
            fleet_metrics.write_textfile(directory, TEXTFILE,
                                         fleet_metrics.render(fleet_restarts.metric_families(rows)),
                                         field=f"{CONFIG_KEY}.textfile_dir")
        except (OSError, ValueError) as exc:
            log.warning("kiosk_restarts: metrics not written: %s", exc)

    return write


def boot(kiosk=None, timeout=None):
    """
    Record a boot of ``kiosk`` (the id the ``kiosk/boot`` event claims):
    check it is a kiosk of the inventory, ask the kiosk for
    ``kiosk_power.last_boot``, decide whether the pack caused the boot
    (``fleet_restarts.decide``: a wake shortly before it; otherwise it is an
    unexpected restart, with the reason), record it once per boot time and
    rewrite ``kiosk_restarts.prom``. ``duplicate: True`` when that boot was
    recorded already (the event's copy from another Pi). Exit code 1 when the
    id is no kiosk, the kiosk does not answer, or the record cannot be made.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_restarts.boot kiosk=kiosk-riverside-01 --out=json
    """
    try:
        settings = _settings(timeout)
        if not isinstance(kiosk, str) or not fleet_fields.NAME.match(kiosk):
            raise fleet_runner.RunnerError(f"kiosk: {fleet_fields.shown(kiosk)} is not a minion id", field="kiosk")
        data = fleet_inventory.master_data(__opts__)
        inventory = fleet_inventory.validate(data.get(fleet_inventory.PILLAR_KEY))
        campus = next((c for c, spec in inventory["campuses"].items() if kiosk in spec["kiosks"]), None)
        if campus is None:
            raise fleet_runner.RunnerError(f"kiosk: {kiosk} is not a kiosk of the inventory", field="kiosk")
        answer = _ask(kiosk, settings["timeout"])
        booted = answer["boot_time"]
        if booted > time.time() + fleet_restarts.CLOCK_SKEW_S:
            raise fleet_runner.RunnerError(f"answer.boot_time: {fleet_restarts.iso(booted)} is in the future"
                                           f" (more than {fleet_restarts.CLOCK_SKEW_S} s ahead of the top master)",
                                           field="answer.boot_time")
        store = _store()
        known = store.known(kiosk, booted)
        if known is not None:
            return fleet_runner.finish(__context__, {"result": True, "kiosk": kiosk, "campus": campus,
                                                     "boot_time": fleet_restarts.iso(known["boot"]),
                                                     "verdict": known["verdict"], "reason": known["reason"],
                                                     "duplicate": True})
        wakes = _wakes(store, campus, kiosk, booted)
        fresh = time.time() - booted < COLLECT_IF_BOOTED_S
        near = [w for w in wakes if booted - fleet_restarts.WAKE_WINDOW_S <= w <= booted + fleet_restarts.CLOCK_SKEW_S]
        if settings["collect_first"] and fresh and not near:
            with _COLLECT_LOCK:  # the Pis' record of the wake may not have been collected yet
                _collect(campus, booted)
            wakes = _wakes(store, campus, kiosk, booted)
        expected = _expected(inventory, data, campus, kiosk, booted)
        done = store.record(campus, kiosk, booted, wakes, expected, answer["shutdown"],
                            after=_write_metrics(settings["textfile_dir"], inventory))
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc, kiosk=kiosk if isinstance(kiosk, str) else None)
    if done["verdict"] == "unexpected" and not done["duplicate"]:
        log.warning("kiosk_restarts: %s (%s) unexpected restart at %s: %s", kiosk, campus,
                    fleet_restarts.iso(done["boot"]), done["reason"])
    return fleet_runner.finish(__context__, {
        "result": True, "kiosk": kiosk, "campus": campus, "boot_time": fleet_restarts.iso(done["boot"]),
        "previous_boot": None if done["previous_boot"] is None else fleet_restarts.iso(done["previous_boot"]),
        "expected_state": expected, "shutdown": answer["shutdown"], "verdict": done["verdict"],
        "reason": done["reason"], "duplicate": done["duplicate"]})


def show(campus=None, kiosk=None, limit=20):
    """
    The boots recorded (per kiosk: ``boots``, ``unexpected``, ``last_boot``)
    and the last ``limit`` unexpected restarts with their reason, newest
    first; of one campus or one kiosk when given. Reads the record only.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_restarts.show
        salt-run kiosk_restarts.show campus=riverside limit=50 --out=json
        salt-run kiosk_restarts.show kiosk=kiosk-riverside-01
    """
    try:
        campus = None if campus in (None, "") else campus
        kiosk = None if kiosk in (None, "") else kiosk
        for field, value in (("campus", campus), ("kiosk", kiosk)):
            if value is not None and (not isinstance(value, str) or not fleet_fields.NAME.match(value)):
                raise fleet_runner.RunnerError(f"{field}: {fleet_fields.shown(value)} is not a name", field=field)
        limit = fleet_runner.number(limit, "limit", 1, fleet_restarts.MAX_SHOWN)
        path = fleet_restarts.store_path(__opts__["cachedir"])
        if not os.path.exists(path):  # nothing recorded yet: reading must not create the store
            return fleet_runner.finish(__context__, {"result": True, "kiosks": {}, "unexpected": []})
        store = fleet_restarts.Restarts(path)
        totals = store.totals(campus, kiosk)
        last = store.unexpected(campus, kiosk, limit)
    except ERRORS as exc:
        return fleet_runner.fail(__context__, exc)
    kiosks = {row["kiosk"]: {"campus": row["campus"], "boots": row["boots"], "unexpected": row["unexpected"],
                             "last_boot": fleet_restarts.iso(row["last_boot"])} for row in totals}
    return fleet_runner.finish(__context__, {"result": True, "kiosks": kiosks, "unexpected": last})
