"""
The runners' pure parts at fleet size, without Salt: a synthetic, valid fleet
of N kiosks (30 campuses x 4 Pis at N = 1,000, scaled with N) with power
schedules, and the decisions and reports every run of the runners computes,
timed over N. Prints figures; asserts nothing.

    .venv/bin/python bench/scale_sim.py [--kiosks 250,500,1000,2000,4000] [--repeats 5] [--quick]

Cases (each called with the arguments the runner passes):

- ``kiosk_power``: the load (inventory validation, schedule compile), an
  operator's selection naming every kiosk (``select_kiosks``), the
  sweep engine (``expect``, ``observed_states`` over synthetic scan answers
  of 4 Pis per campus, ``sweep``, ``verify_now``/``verify_due``, ``metrics``)
  and ``plan_kiosks`` (12 hours of transitions per kiosk);
- ``kiosk_campus``: one reconcile on every campus's leader (calendar parts,
  expect, scan targets, observation, ``decide``, ``remember``, transition
  keys, ``settle``, ``verify_due``, outbox entries, metrics) at a campus
  opening minute, the tick's two expects, and one campus holding all N;
- ``kiosk_release.status``: ``status_report`` over synthetic Pi and kiosk
  returns, ``kiosk_counts``, ``metric_families``;
- ``kiosk_outbox.collect``: 4 Pis per campus returning the same keys,
  ``check_answer`` + ``Collected.merge`` (SQLite in /dev/shm when there),
  the alerts to post, ``day``/``counters``/``unposted``/``metrics``;
- alert payloads: ``power_mismatch`` + ``alert_key`` per mismatch, and
  release alerts (``sender``, ``campus_of_sender``, ``release_alert``) from
  5 % of the kiosks;
- ``fleet_schedule.desired_states`` for one campus, a whole day at one
  minute resolution (1,440 instants), per-campus size and one campus of N.

Each case: median wall ms and median CPU ms (this process) of ``--repeats``
runs, the peak traced memory of one more run (tracemalloc), and the growth
exponent over N (least squares of log time on log N). The verdict is taken
on the CPU time, which the other jobs of a shared machine disturb less than
the wall time: an exponent above 1.15 is flagged SUPERLINEAR.
"""

import argparse
import datetime as dt
import functools
import gc
import math
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from zoneinfo import ZoneInfo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "_utils"))

import fleet_alerts  # noqa: E402
import fleet_calendar  # noqa: E402
import fleet_campus  # noqa: E402
import fleet_inventory  # noqa: E402
import fleet_outbox  # noqa: E402
import fleet_rollout  # noqa: E402
import fleet_scan  # noqa: E402
import fleet_schedule  # noqa: E402
import fleet_sweep  # noqa: E402

FULL_N = (250, 500, 1000, 2000, 4000)
QUICK_N = (50, 100, 200)
CAMPUSES_PER_1000 = 30
PIS_PER_CAMPUS = 4
SUPERLINEAR = 1.15
ONE_CAMPUS = "1 campus of N"  # the cases run on a fleet of one campus holding every kiosk
RELEASE = "kiosk-app"
PIN, OLD = "1.4.0", "1.3.0"
SHANGHAI, BERLIN = "Asia/Shanghai", "Europe/Berlin"
# a Wednesday, the opening minute of the Shanghai campuses (00:00 in Berlin)
NOW = dt.datetime(2027, 3, 3, 7, 0, tzinfo=ZoneInfo(SHANGHAI))
UTC = dt.timezone.utc

CAMPUS_RULES = [
    {"name": "opening-hours", "weekly": {"mon-fri": ["07:00-22:00"], "sat,sun": ["08:00-12:00"]}},
    # a date range with exceptions: the closure switches every kiosk off but
    # those with a dated rule of their own (festival duty) and the 24/7 ones
    {"name": "spring-festival", "dates": ["2027-02-05", "2027-02-12"], "always": "off"},
    {"name": "national-day", "dates": ["2027-10-01", "2027-10-07"], "weekly": {"daily": ["09:00-15:00"]}},
    {"name": "inspection", "dates": "2027-05-20", "always": "on"},
]

# the synthetic kiosks' roles, by their index in their campus
EMERGENCY = 1  # 24/7, through closures
OFF_KIOSK = 3  # powered off while it should be on: a mismatch, silent to the release status
HELD = 5  # held on for a day


def shape(kiosks, campuses=None):
    """``(campuses, Pis per campus)`` for N kiosks: 30 x 4 at 1,000, campuses growing with N."""
    if campuses is None:
        campuses = max(1, round(kiosks * CAMPUSES_PER_1000 / 1000))
    return campuses, PIS_PER_CAMPUS


def campus_name(c):
    return f"c{c:03d}"


def kiosk_name(c, i):
    return f"k-c{c:03d}-{i:04d}"


def _kiosk_rules(i):
    if i == EMERGENCY or i % 50 == 7:
        return [{"name": "emergency", "always": "on", "through_closures": True}]
    rules = []
    if i % 5 == 2:
        rules.append({"name": "own-hours", "weekly": {"mon-fri": [f"07:{i % 60:02d}-21:00"], "sat": ["08:00-12:00"]}})
    if i % 10 == 4:
        rules.append({"name": "festival-duty", "dates": ["2027-02-05", "2027-02-12"],
                      "weekly": {"daily": ["08:00-16:00"]}})
    return rules


def build_fleet(kiosks, campuses=None, pis=PIS_PER_CAMPUS):
    """
    The fleet data (``{kiosk_fleet, kiosk_fleet_schedules}``, as the fleet
    data file holds it): ``campuses`` campuses of ``pis`` Pis and two VLANs
    (/17 each), ``kiosks`` kiosks dealt over them in blocks, unique MACs,
    every fifth campus in Berlin; campus rules, per-kiosk rules, the
    closure's exceptions and 24/7 kiosks.
    """
    campuses = shape(kiosks, campuses)[0] if campuses is None else campuses
    if not 1 <= campuses <= 250 or kiosks < campuses or pis < 1:
        raise ValueError(f"shape: {kiosks} kiosks, {campuses} campuses, {pis} Pis is not a fleet this builds")
    inventory, schedule = {"campuses": {}}, {"campuses": {}}
    for c in range(campuses):
        name, octet = campus_name(c), c + 1
        count = kiosks // campuses + (1 if c < kiosks % campuses else 0)
        timezone = BERLIN if c % 5 == 4 else SHANGHAI
        spec = {
            "timezone": timezone,
            "vlans": {"hall": {"network": f"10.{octet}.0.0/17"}, "ward": {"network": f"10.{octet}.128.0/17"}},
            "pis": {f"pi-c{c:03d}-{p}": {"vlans": {"hall": {"source": f"10.{octet}.0.{2 + p}"},
                                                   "ward": {"source": f"10.{octet}.128.{2 + p}"}}}
                    for p in range(1, pis + 1)},
            "kiosks": {},
        }
        rules = {}
        for i in range(count):
            half = 0 if i % 2 == 0 else 128
            host = 10 + i // 2
            spec["kiosks"][kiosk_name(c, i)] = {
                "mac": f"52:54:{c >> 8 & 255:02x}:{c & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                "ip": f"10.{octet}.{half + host // 256}.{host % 256}",
                "vlan": "ward" if half else "hall",
                "location": f"floor {i % 7}",
            }
            own = _kiosk_rules(i)
            if own:
                rules[kiosk_name(c, i)] = own
        inventory["campuses"][name] = spec
        schedule["campuses"][name] = {"timezone": timezone, "rules": CAMPUS_RULES, "kiosks": rules}
    return {fleet_inventory.PILLAR_KEY: inventory, fleet_schedule.PILLAR_KEY: schedule}


def index_of(kiosk):
    return int(kiosk.rsplit("-", 1)[1])


def build_holds(inventory, now=NOW):
    """One hold per campus: its kiosk ``HELD`` kept on for a day."""
    holds = {}
    for spec in inventory["campuses"].values():
        held = [k for k in spec["kiosks"] if index_of(k) == HELD]
        for kiosk in held:
            holds[kiosk] = fleet_sweep.make_hold(inventory, kiosk, "on", fleet_sweep.iso(now + dt.timedelta(days=1)),
                                                 "ward move", now - dt.timedelta(hours=1))
    return holds


def actual_state(kiosk, expected):
    """What the synthetic kiosk really is: ``on``, ``off`` or ``degraded`` (powered on, app down)."""
    i = index_of(kiosk)
    if i == OFF_KIOSK:
        return "off"
    if i % 20 == 9:
        return "degraded"
    if i % 25 == 11:  # the wrong way round: something to wake or shut down
        return "off" if expected == "on" else "on"
    return "on" if expected == "on" else "off"


_PORT = {"on": "open", "degraded": "closed", "off": "filtered"}


def silent_pi(campus):
    """One Pi of every seventh campus does not answer (scans, release status)."""
    c = int(campus[1:])
    return f"pi-c{c:03d}-{PIS_PER_CAMPUS}" if c % 7 == 3 else None


def scan_answers(view, campus_pis):
    """``({pi: kiosk_scan.scan answer}, presence)`` of every answering Pi of ``view``'s managed kiosks."""
    answers, presence = {}, {}
    for campus, ids in view["managed"].items():
        seen = {}
        for kiosk in ids:
            state = actual_state(kiosk, view["expected"][kiosk]["state"])
            seen[kiosk] = {"state": _PORT[state]}
            if state != "off":
                presence[kiosk] = True
        for pi in campus_pis[campus]:
            if pi != silent_pi(campus):
                answers[pi] = {"pi": pi, "campus": campus, "kiosks": dict(seen), "elapsed_s": 2.5}
    return answers, presence


def pending_checks(view, now=NOW, share=10):
    """Verifications started 15 minutes before ``now`` for every ``share``-th managed kiosk: all due now."""
    changed = {c: [k for k in ids if index_of(k) % share == 0] for c, ids in view["managed"].items()}
    return fleet_sweep.schedule_checks({}, changed, view["expected"], now - dt.timedelta(minutes=15))


# ---------------------------------------------------------------- the top master: kiosk_power


def power_context(data, now=NOW):
    """Everything ``kiosk_power``'s pure steps take, built once (the load itself is a case of its own)."""
    inventory = fleet_inventory.validate(data[fleet_inventory.PILLAR_KEY])
    schedule, _ = fleet_sweep.schedule_in_force(None, data, inventory)
    holds = build_holds(inventory, now)
    view = fleet_sweep.expect(inventory, schedule, holds, now)
    campus_pis = {c: fleet_inventory.pis_of(inventory, c) for c in view["managed"]}
    scans, presence = scan_answers(view, campus_pis)
    state = fleet_sweep.load_state({"holds": holds, "pending": pending_checks(view, now)})
    observed = fleet_sweep.observed_states(view["managed"], scans, campus_pis, presence)
    return {"data": data, "inventory": inventory, "schedule": schedule, "holds": holds, "now": now, "view": view,
            "campus_pis": campus_pis, "scans": scans, "presence": presence, "state": state, "observed": observed}


def run_load(ctx):
    """``kiosk_power._load``: the inventory validated and the schedule compiled, on every runner call."""
    inventory = fleet_inventory.validate(ctx["data"][fleet_inventory.PILLAR_KEY])
    return fleet_sweep.schedule_in_force(None, ctx["data"], inventory)


def run_select(ctx, ids):
    """``kiosk_power._selected`` for ``kiosks=<every kiosk id>`` (wake, shutdown, verify of a named list)."""
    return fleet_inventory.select_kiosks(ctx["inventory"], kiosks=ids)


def run_expect(ctx):
    return fleet_sweep.expect(ctx["inventory"], ctx["schedule"], ctx["holds"], ctx["now"])


def run_observe(ctx):
    """``kiosk_power._observe`` after the jobs: the scans merged, the Pis' report."""
    view, campus_pis, scans = ctx["view"], ctx["campus_pis"], ctx["scans"]
    pis = sorted({p for c, ids in view["managed"].items() if ids for p in campus_pis[c]})
    report = fleet_sweep.pis_report(pis, scans, {}, [])
    return fleet_sweep.observed_states(view["managed"], scans, campus_pis, ctx["presence"]), report


def run_sweep(ctx):
    """``plan``'s ``sweep_would``: the engine's decision."""
    return fleet_sweep.sweep(ctx["view"], ctx["observed"], ctx["state"]["pending"])


def run_verify_now(ctx):
    """``verify explicit=True``: every managed kiosk checked, the answer, the metrics."""
    found = fleet_sweep.verify_now(ctx["state"], ctx["view"], ctx["observed"])
    alerts = [fleet_alerts.power_mismatch(m) for m in found["mismatches"]]
    answer = fleet_sweep.verify_answer(found, ctx["observed"], {"answered": sorted(ctx["scans"]), "silent": []},
                                       ctx["now"], True, [m["kiosk"] for m in found["mismatches"]], [], [], "t")
    fleet_sweep.metrics({}, "verify", answer, ctx["inventory"], ctx["now"].timestamp())
    return found, alerts


def run_power_metrics(ctx, answer):
    """``kiosk_power._metrics`` after a verify: the families of kiosk_power.prom."""
    return fleet_sweep.metrics({}, "verify", answer, ctx["inventory"], ctx["now"].timestamp())


def run_verify_due(ctx):
    """``verify`` (the due checks): the due selection, the checks, the metrics."""
    due = fleet_sweep.due_selection(ctx["state"], ctx["now"], ctx["inventory"])
    found = fleet_sweep.verify_due(ctx["state"], due, ctx["observed"], ctx["now"])
    answer = fleet_sweep.verify_answer(found, ctx["observed"], {"answered": sorted(ctx["scans"]), "silent": []},
                                       ctx["now"], False, [], [], [], "t")
    fleet_sweep.metrics({}, "verify", answer, ctx["inventory"], ctx["now"].timestamp())
    return found


def run_plan(ctx):
    """``plan hours=12``: each kiosk's expected state and its schedule transitions."""
    return fleet_sweep.plan_kiosks(ctx["view"], ctx["schedule"], 12)


# ---------------------------------------------------------------- each campus's leader: kiosk_campus


def _calendar(data, campus, now):
    inventory = fleet_inventory.validate(data[fleet_inventory.PILLAR_KEY])
    schedule = fleet_schedule.load(data[fleet_schedule.PILLAR_KEY], inventory)
    holds = build_holds(inventory, now)
    signed_at = int(now.timestamp()) - 3600
    return fleet_calendar.build(inventory, schedule, holds, campus, signed_at, signed_at)


def reconcile(doc, stored, now):
    """
    The pure steps of ``kiosk_campus._reconcile`` on the campus's leader
    (synchronised clock, leading), in its order; the Pi's I/O (the scan,
    the magic packets, the shutdown jobs, the outbox) replaced by what it
    would answer. The kiosks are as the last run expected them (``stored``'s
    ``expected``; none: as expected now): at an opening minute every kiosk
    due on is still off and is woken. Returns ``(state to store, answer,
    outbox entries)``.
    """
    inventory = fleet_calendar.inventory_of(doc)
    schedule = fleet_calendar.schedule_of(doc)
    holds = fleet_calendar.holds_of(doc)
    campus = doc["campus"]
    campus_pis = fleet_campus.pis_of(inventory, campus)
    me = campus_pis[0]
    clock = {"synced": True, "offset_s": 0.001, "source": "sim"}
    allowed = fleet_campus.gate(clock, [], True, me)
    timezone = inventory["campuses"][campus]["timezone"]
    state = fleet_sweep.load_state(stored)
    view = fleet_sweep.expect(inventory, schedule, holds, now)
    expected_now = fleet_campus.expected_map(view)
    early = fleet_campus.newly_due_on(expected_now, state.get("expected"))
    due = fleet_sweep.due_selection(state, now, inventory)
    selection = {campus: sorted(set(view["managed"].get(campus, [])) | set(due.get(campus, [])))}
    kiosks = selection[campus]
    fleet_scan.scan_targets(inventory, campus, kiosks)
    before = stored.get("expected") or {}
    seen = {k: {"state": _PORT[actual_state(k, before.get(k, expected_now[k]))]} for k in kiosks}
    scans = {me: {"pi": me, "campus": campus, "kiosks": seen, "elapsed_s": 2.5}}
    presence = {k: True for k in kiosks if seen[k]["state"] != "filtered"}
    observed = fleet_sweep.observed_states(selection, scans, {campus: [me]}, presence)
    pis = fleet_sweep.pis_report([me], scans, {})
    decision = fleet_campus.decide(view, observed, state["pending"], allowed)
    acting = [k for part in ("wake", "shutdown") for ids in decision[part].values() for k in ids]
    memory = fleet_campus.remember(schedule, view, now, state.get("transitions"),
                                   {"serial": doc["serial"], "signed_at": doc["signed_at"], "holds": holds})
    transitions = {k: fleet_campus.transition(schedule, view, k, now, timezone, memory) for k in acting}
    off = sorted(k for ids in decision["shutdown"].values() for k in ids)
    fleet_campus.shutdown_jobs(campus, {k: transitions[k] for k in off})
    wake_ret = {"unreached": []} if decision["wake"] else None
    shutdown_ret = {"accepted": off, "results": dict.fromkeys(off, "pressed")} if off else None
    woken, shut_down, act_errors = fleet_sweep.acted(decision, wake_ret, shutdown_ret)
    state, record = fleet_sweep.settle(state, view, decision, woken, shut_down, act_errors, pis,
                                       {"source": "calendar", "serial": doc["serial"]}, now)
    state["pending"] = fleet_campus.with_transitions(state["pending"], transitions)
    pending_before = state["pending"]
    found = fleet_sweep.verify_due(state, due, observed, now)
    state = found["state"]
    acted = {"woken": woken, "shut_down": shut_down,
             "results": dict(dict.fromkeys(woken, "sent"), **(shutdown_ret or {}).get("results", {}))}
    expected = {k: view["expected"][k]["state"] for k in observed}
    entries = fleet_campus.entries(campus, me, now, acted, found, pending_before, transitions, observed,
                                   state.get("observed") or {}, expected, allowed, clock, [], me, campus_pis,
                                   state.get("leader"))
    state["observed"] = {k: v["state"] for k, v in observed.items()}
    state["leader"] = me
    state["expected"] = expected_now
    state["transitions"] = memory
    ret = {"result": not record["errors"], "leader": True, "live": campus_pis, "clock": {"synced": True},
           "withheld": decision["withheld"], "woke": sorted(woken), "shut_down": sorted(shut_down),
           "observed": state["observed"], "serial": doc["serial"], "mismatches": found["mismatches"],
           "wake": sorted(k for ids in decision["wake"].values() for k in ids), "early": early}
    fleet_campus.metrics(campus, me, ret, now.timestamp())
    return state, ret, entries


def tick(doc, stored, now):
    """The pure steps of ``kiosk_campus._tick`` (every 5 s): the calendar now and at the next minute, the plan."""
    inventory = fleet_calendar.inventory_of(doc)
    schedule = fleet_calendar.schedule_of(doc)
    holds = fleet_calendar.holds_of(doc)
    upcoming = fleet_campus.next_minute(now)
    return fleet_campus.tick_plan(
        fleet_campus.expected_map(fleet_sweep.expect(inventory, schedule, holds, now)),
        fleet_campus.expected_map(fleet_sweep.expect(inventory, schedule, holds, upcoming)),
        stored.get("expected"), stored.get("reconciled_at"), now, upcoming, 5, 60, None, None)


def campus_context(data, now=NOW):
    """
    Per campus its calendar and the state its leader stored at the run one
    minute before ``now`` (so the run at ``now`` sees the opening minute's
    changes), plus verifications due now for every tenth managed kiosk.
    """
    out = {}
    for campus in sorted(data[fleet_inventory.PILLAR_KEY]["campuses"]):
        doc = _calendar(data, campus, now)
        before, _, _ = reconcile(doc, {}, now - dt.timedelta(minutes=1))
        view = fleet_sweep.expect(fleet_calendar.inventory_of(doc), fleet_calendar.schedule_of(doc),
                                  fleet_calendar.holds_of(doc), now)
        before["pending"] = dict(before["pending"], **pending_checks(view, now))
        before["reconciled_at"] = fleet_sweep.iso(now - dt.timedelta(minutes=1))
        out[campus] = {"doc": doc, "stored": before}
    return out


def decide_context(part, now=NOW):
    """The inputs of ``fleet_campus.decide`` at ``now`` for one campus (``campus_context``'s entry)."""
    doc, stored = part["doc"], part["stored"]
    inventory = fleet_calendar.inventory_of(doc)
    view = fleet_sweep.expect(inventory, fleet_calendar.schedule_of(doc), fleet_calendar.holds_of(doc), now)
    campus = doc["campus"]
    before = stored.get("expected") or {}
    ids = view["managed"].get(campus, [])
    scans = {"me": {"pi": "me", "campus": campus, "elapsed_s": 1.0, "kiosks": {
        k: {"state": _PORT[actual_state(k, before.get(k, view["expected"][k]["state"]))]} for k in ids}}}
    observed = fleet_sweep.observed_states(view["managed"], scans, {campus: ["me"]}, {})
    allowed = fleet_campus.gate({"synced": True}, [], True, "me")
    return {"view": view, "observed": observed, "pending": fleet_sweep.load_state(stored)["pending"],
            "allowed": allowed}


def run_decide(ctx):
    return fleet_campus.decide(ctx["view"], ctx["observed"], ctx["pending"], ctx["allowed"])


def supervision_context(campus_ctx):
    """
    What ``kiosk_power.sweep`` gets back from ``kiosk_campus.reconcile`` on
    every Pi: each Pi's answer (the leader's as computed, the others
    leading nothing), the Pis of every tenth campus silent (a WAN cut).
    """
    campus_pis, answered, silent = {}, {}, []
    for campus, part in campus_ctx.items():
        _, ret, _ = reconcile(part["doc"], part["stored"], NOW)
        pis = fleet_campus.pis_of(fleet_calendar.inventory_of(part["doc"]), campus)
        campus_pis[campus] = pis
        if int(campus[1:]) % 10 == 9:
            silent += pis
            continue
        for pi in pis:
            answered[pi] = dict(ret, pi=pi, leader=pi == pis[0])
    return {"campus_pis": campus_pis, "answered": answered, "silent": silent}


def run_supervision(ctx):
    """``kiosk_power.sweep`` after its job: the campuses' runs reported."""
    return fleet_calendar.supervision(ctx["campus_pis"], ctx["answered"], {}, ctx["silent"])


def run_reconcile_all(ctx):
    return {c: reconcile(part["doc"], part["stored"], NOW) for c, part in ctx.items()}


def run_tick_all(ctx):
    return {c: tick(part["doc"], part["stored"], NOW) for c, part in ctx.items()}


# ---------------------------------------------------------------- the top master: kiosk_release.status


def release_context(data):
    """The runner's state (a pin per campus) and what the Pis and kiosks answer."""
    inventory = fleet_inventory.validate(data[fleet_inventory.PILLAR_KEY])
    targets = fleet_rollout.select_campuses(inventory, None)
    pis = {c: fleet_inventory.pis_of(inventory, c) for c in targets}
    kiosks = {c: sorted(inventory["campuses"][c]["kiosks"]) for c in targets}
    state = {"pins": {RELEASE: {c: {"version": PIN, "serial": 1_800_000_000 + n, "history": [OLD],
                                    "at": "2027-03-01T00:00:00+00:00", "signed": {}}
                                for n, c in enumerate(targets)}}, "metrics": {}}
    pi_returns = {p: {"result": True, "staged": [OLD, PIN], "pin": {"version": PIN, "serial": 1}}
                  for c in targets for p in pis[c] if p != silent_pi(c)}
    kiosk_returns = {}
    for c in targets:
        for k in kiosks[c]:
            i = index_of(k)
            if i == OFF_KIOSK:
                continue  # off: silent
            kiosk_returns[k] = {"version": OLD if i % 20 == 9 else PIN, "previous": OLD}
    return {"pis": pis, "kiosks": kiosks, "state": state, "pi_returns": pi_returns, "kiosk_returns": kiosk_returns}


def run_release_status(ctx):
    """``kiosk_release.status`` after its two jobs: the report, the counts, the metric families."""
    campuses, problems, on_pin, silent = fleet_rollout.status_report(
        RELEASE, ctx["state"], ctx["pis"], ctx["kiosks"], ctx["pi_returns"], ctx["kiosk_returns"])
    state = {"pins": ctx["state"]["pins"], "metrics": {}}
    state["metrics"].setdefault("kiosks", {}).setdefault(RELEASE, {}).update(fleet_rollout.kiosk_counts(on_pin, silent))
    fleet_rollout.metric_families(state)
    return campuses, problems, on_pin, silent


# ---------------------------------------------------------------- the top master: kiosk_outbox.collect


def outbox_answers(campus_ctx):
    """
    ``{pi: kiosk_outbox.entries answer}``: per campus, the entries its
    leader's reconcile wrote (actions, observations, checks, alerts) plus a
    leader view, returned by EVERY Pi of the campus under the same keys (each
    Pi's reconciler writes them), as one page.
    """
    answers = {}
    for campus, part in campus_ctx.items():
        _, _, entries = reconcile(part["doc"], part["stored"], NOW)
        pis = fleet_campus.pis_of(fleet_calendar.inventory_of(part["doc"]), campus)
        for pi in pis:
            own = [{"seq": n + 1, "kind": kind, "key": key, "data": dict(data, pi=pi), "at": at}
                   for n, (kind, key, data, at) in enumerate(entries)]
            answers[pi] = (campus, {"pi": pi, "campus": campus, "entries": own, "cursor": len(own),
                                    "outbox": f"{abs(hash(pi)) % 16**12:012x}", "more": False, "serial": 7,
                                    "clock": {"synced": True, "source": "sim"}})
    return answers


def _scratch():
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="kf-scale-sim-", dir=base)


def run_collect(answers, directory):
    """``kiosk_outbox.collect`` without the jobs: merge every Pi's page, the alerts to post, the metrics."""
    store = fleet_outbox.Collected(os.path.join(tempfile.mkdtemp(dir=directory), "collected.db"))
    new = []
    for pi, (campus, answer) in sorted(answers.items()):
        entries, cursor, outbox, _more, info = fleet_outbox.check_answer(answer, pi, campus)
        new += store.merge(campus, pi, entries, cursor=cursor, outbox=outbox, info=info, refused=[])
    payloads = [fleet_outbox.alert_payload(e, e["key"].split("/", 1)[0]) for e in new
                if fleet_outbox.postable(e["kind"], e["data"])]
    fleet_outbox.metrics(store.counters(), store.day(now=NOW), store.unposted(86400))
    return new, payloads


# ---------------------------------------------------------------- alerts


def release_events(inventory, share=20):
    """``kiosk/release/alert`` events from every ``share``-th kiosk (a refused copy)."""
    return [{"id": k, "data": {"name": RELEASE, "version": PIN, "hop": "pi->kiosk", "error": "md5 mismatch",
                               "source": "http://10.1.0.3/kiosk-releases/"}}
            for spec in inventory["campuses"].values() for k in sorted(spec["kiosks"]) if index_of(k) % share == 0]


def run_power_alerts(mismatches):
    """``kiosk_power._alert`` and ``kiosk_alert.post``'s dedup key, per mismatch."""
    return [fleet_alerts.alert_key(m["kiosk"], "kiosk/power/mismatch", fleet_alerts.power_mismatch(m))
            for m in mismatches]


def run_release_alerts(inventory, events):
    """``kiosk_alert`` on each ``kiosk/release/alert``: the claim, its campus from the inventory, the payload."""
    out = []
    for data in events:
        claim = fleet_alerts.sender("kiosk/release/alert", data)
        campus = fleet_alerts.campus_of_sender(inventory, claim)
        payload = fleet_alerts.release_alert(claim, campus)
        out.append(fleet_alerts.alert_key(claim["minion"], "kiosk/release/alert", payload))
    return out


# ---------------------------------------------------------------- schedules


def run_schedule_day(schedule, campus, ids, day_start):
    """The desired state of one campus's kiosks at every minute of a day."""
    selection = {campus: ids}
    return [fleet_schedule.desired_states(schedule, selection, day_start + dt.timedelta(minutes=m))
            for m in range(1440)]


# ---------------------------------------------------------------- measuring


def measure(fn, repeats):
    """
    ``(median wall ms, median CPU ms, peak traced KiB)``: ``repeats`` timed
    runs, then one under tracemalloc. The CPU time (this process's) is what
    the fit uses: on a machine shared with test suites the wall time also
    counts the waits for a core.
    """
    times, cpu = [], []
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1000)
        times.append((time.perf_counter() - start) * 1000)
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return statistics.median(times), statistics.median(cpu), peak / 1024


def exponent(ns, values):
    """Least-squares slope of log(value) on log(N); None with fewer than two usable points."""
    points = [(math.log(n), math.log(v)) for n, v in zip(ns, values) if v and v > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def groups(n, scratch):
    """
    ``[(build, [(case name, fn(inputs))])]`` for a fleet of ``n`` kiosks:
    the cases by the inputs they share. ``main`` builds one group's inputs
    (untimed) when its turn comes and drops them after, so a case runs with
    its own inputs in memory, not every other case's too (a bigger heap
    spreads the objects walked over more cache lines).
    """
    day = dt.datetime(2027, 3, 3, tzinfo=ZoneInfo(SHANGHAI))

    def power_group():
        power = power_context(build_fleet(n))
        found = fleet_sweep.verify_now(power["state"], power["view"], power["observed"])
        campuses = power["inventory"]["campuses"]
        first = sorted(campuses)[0]
        return {"power": power, "mismatches": found["mismatches"],
                "verified": fleet_sweep.verify_answer(found, power["observed"],
                                                      {"answered": sorted(power["scans"]), "silent": []},
                                                      power["now"], True, [], [], [], "t"),
                "every_id": sorted(k for spec in campuses.values() for k in spec["kiosks"]),
                "events": release_events(power["inventory"]), "first": first,
                "first_ids": sorted(campuses[first]["kiosks"])}

    def campus_group():
        campuses = campus_context(build_fleet(n))
        return {"campuses": campuses, "supervised": supervision_context(campuses),
                "answers": outbox_answers(campuses)}

    def big_group():
        big = build_fleet(n, campuses=1)
        campus = campus_context(big)
        return {"campus": campus, "decide": decide_context(campus["c000"]),
                "schedule": fleet_schedule.load(big[fleet_schedule.PILLAR_KEY]),
                "ids": sorted(big[fleet_inventory.PILLAR_KEY]["campuses"]["c000"]["kiosks"])}

    return [
        (power_group, [
            ("kiosk_power load (validate, compile)", lambda g: run_load(g["power"])),
            ("select_kiosks (kiosks=every id)", lambda g: run_select(g["power"], g["every_id"])),
            ("fleet_sweep.expect", lambda g: run_expect(g["power"])),
            ("fleet_sweep.observed_states+pis_report", lambda g: run_observe(g["power"])),
            ("fleet_sweep.sweep (decision)", lambda g: run_sweep(g["power"])),
            ("verify explicit (verify_now+metrics)", lambda g: run_verify_now(g["power"])),
            ("fleet_sweep.metrics (verify)", lambda g: run_power_metrics(g["power"], g["verified"])),
            ("verify due (due_selection+verify_due)", lambda g: run_verify_due(g["power"])),
            ("plan_kiosks hours=12", lambda g: run_plan(g["power"])),
            ("alerts: power_mismatch+alert_key", lambda g: run_power_alerts(g["mismatches"])),
            ("alerts: release (campus_of_sender)", lambda g: run_release_alerts(g["power"]["inventory"], g["events"])),
            ("schedule day @1 min, 1 campus",
             lambda g: run_schedule_day(g["power"]["schedule"], g["first"], g["first_ids"], day)),
        ]),
        (lambda: release_context(build_fleet(n)), [
            ("fleet_rollout.status_report+counts", run_release_status),
        ]),
        (campus_group, [
            ("kiosk_power.sweep (supervision)", lambda g: run_supervision(g["supervised"])),
            ("kiosk_campus reconcile, every campus", lambda g: run_reconcile_all(g["campuses"])),
            ("kiosk_campus tick, every campus", lambda g: run_tick_all(g["campuses"])),
            ("kiosk_outbox collect (4 Pis/campus)", lambda g: run_collect(g["answers"], scratch)),
        ]),
        (big_group, [
            (f"kiosk_campus reconcile, {ONE_CAMPUS}", lambda g: run_reconcile_all(g["campus"])),
            (f"fleet_campus.decide, {ONE_CAMPUS}", lambda g: run_decide(g["decide"])),
            (f"schedule day @1 min, {ONE_CAMPUS}", lambda g: run_schedule_day(g["schedule"], "c000", g["ids"], day)),
        ]),
    ]


def cases(n, scratch):
    """``[(case name, callable)]``: every case with its inputs, all built at once."""
    out = []
    for build, members in groups(n, scratch):
        inputs = build()
        out += [(name, functools.partial(fn, inputs)) for name, fn in members]
    return out


def report(results, ns):
    """
    The table: per case and N the figures, then the growth exponents (CPU
    time, wall time, peak memory) and the verdict, taken on the CPU time.
    """
    lines = [f"{'case':42} {'N':>5} {'camp':>4} {'Pis':>4} {'wall ms':>9} {'CPU ms':>9} {'peak KiB':>9}"]
    names = list(dict.fromkeys(name for name, _ in results))
    for name in names:
        for n in ns:
            wall, cpu, peak = results[(name, n)]
            campuses, pis = (1, PIS_PER_CAMPUS) if ONE_CAMPUS in name else shape(n)
            lines.append(f"{name:42} {n:>5} {campuses:>4} {campuses * pis:>4} {wall:>9.2f} {cpu:>9.2f} {peak:>9.0f}")
    lines.append("")
    lines.append(f"growth exponent over N = {', '.join(map(str, ns))} (log-log least squares)")
    lines.append(f"{'case':42} {'CPU':>6} {'wall':>6} {'memory':>7} {'CPU ms at N=1000':>17}  verdict")
    flagged = []
    for name in names:
        walls, cpus, peaks = ([results[(name, n)][i] for n in ns] for i in range(3))
        k_cpu, k_wall, k_mem = exponent(ns, cpus), exponent(ns, walls), exponent(ns, peaks)
        if 1000 in ns:
            at_1000 = cpus[ns.index(1000)]
        elif k_cpu is None:
            at_1000 = statistics.median(cpus)
        else:  # extrapolated from the largest N along the fitted slope
            at_1000 = math.exp(math.log(cpus[-1]) + k_cpu * (math.log(1000) - math.log(ns[-1])))
        verdict = "SUPERLINEAR" if k_cpu is not None and k_cpu > SUPERLINEAR else "linear or better"
        if verdict == "SUPERLINEAR":
            flagged.append(name)
        shown = [("  n/a" if k is None else f"{k:6.2f}") for k in (k_cpu, k_wall, k_mem)]
        lines.append(f"{name:42} {shown[0]:>6} {shown[1]:>6} {shown[2]:>7} {at_1000:>17.1f}  {verdict}")
    return "\n".join(lines), flagged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiosks", default=None, help="comma-separated N (default 250,500,1000,2000,4000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case and N (default 5, quick 3)")
    parser.add_argument("--quick", action="store_true", help="small N (50,100,200), 3 runs: a smoke run")
    parser.add_argument("--only", default=None, help="only the cases whose name contains one of these texts (a,b)")
    args = parser.parse_args(argv)
    ns = tuple(int(n) for n in args.kiosks.split(",")) if args.kiosks else (QUICK_N if args.quick else FULL_N)
    repeats = args.repeats or (3 if args.quick else 5)
    if len(ns) < 2 or any(n < 30 for n in ns) or repeats < 1:
        parser.error("--kiosks: at least two sizes of 30 kiosks or more; --repeats: 1 or more")
    scratch = _scratch()
    results = {}
    started = time.monotonic()
    try:
        for n in ns:
            for build, members in groups(n, scratch):
                chosen = [(name, fn) for name, fn in members
                          if not args.only or any(part in name for part in args.only.split(","))]
                if not chosen:
                    continue
                inputs = build()
                for name, fn in chosen:
                    results[(name, n)] = measure(functools.partial(fn, inputs), repeats)
                del inputs
            shutil.rmtree(scratch, ignore_errors=True)
            os.makedirs(scratch, exist_ok=True)
            print(f"N={n} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table, flagged = report(results, ns)
    print(table)
    if flagged:
        print(f"\nSUPERLINEAR (exponent > {SUPERLINEAR}): {', '.join(flagged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
