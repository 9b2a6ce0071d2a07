"""
kiosk-lab day: the campuses run a compressed simulated day on their own.

    kiosk-lab day [--date 2027-02-03] [--from 05:45] [--to 22:30] [--step 30]
                  [--outage riverside|top|none] [--outage-from 06:00] [--outage-to 09:00]
                  [--keep-off kiosk-riverside-01]

The top master publishes each campus's signed calendar to its Pis
(``kiosk_campus.calendar``, through ``salt-run kiosk_calendar.publish``).
Then the day runs in steps of simulated local time (the campuses' time zone):
every ``--step`` minutes, at every instant the schedule changes a kiosk's
state, and 5, 10 and 15 minutes after each (the verification). At each step
every running Pi's clock is set through its ``kiosk_campus:clock_file``
(``{"synced": true, "offset_s": <simulated - host time>}``; the host's clock
is never touched), then each running Pi master runs ``kiosk_campus.probe``
(twice: statuses out, then the peers' fresh ones in) and
``kiosk_campus.reconcile`` (``salt-run -c <run>/<pi>``, as its own schedule
would), and the step waits for the kiosks to follow (the simulator's
power state). From ``--outage-from`` to ``--outage-to`` the campus's WAN link
is cut (its Pis' syndics stopped by pid, as ``kiosk-lab cut``) or the top
master is stopped (``--outage top``). One kiosk's NIC ignores magic packets
(``--keep-off``): its verification fails and the campus raises one alert.
After the restore the top master collects the outboxes
(``kiosk_outbox.collect``, which posts each new alert once to the lab's
webhook) and the day prints the top master's view (``kiosk_power.status``,
``kiosk_outbox.day``) and what the webhook received.

The lab's Pi masters run no reconcile schedule of their own: on the host's
clock the sample schedule would switch the demo's kiosks off at night.
"""

import contextlib
import datetime as dt
import json
import pathlib
import subprocess
import sys
import threading
import time
import zoneinfo

import yaml

from lab import kiosk_lab, kiosk_sim, webhook
from lab.kiosk_lab import BIN, REPO, say

import fleet_schedule  # noqa: E402  (kiosk_lab put _utils on sys.path)

DAY_DATE = "2027-02-03"  # a Wednesday: every campus open; 2027-02-08 is a Spring Festival closure day
DAY_KEPT_OFF = "kiosk-riverside-01"  # opens at 07:00, inside the default outage
DAY_OUTAGE = "riverside"
CHECKS_MIN = (5, 10, 15)  # the reconciler's verification after a transition
# a check falls due 5/10/15 minutes after the action it checks, which happened a few real seconds after its
# step's instant: the day stops this much later, so each check is due when the reconciler runs
CHECK_MARGIN = dt.timedelta(seconds=30)
RUNNER_TIMEOUT_S = 120


def add_parser(sub):
    p = sub.add_parser("day", help="run the campuses' reconcilers through a compressed simulated day")
    p.add_argument("--date", default=DAY_DATE, help=f"the simulated local date (default {DAY_DATE}, a Wednesday)")
    p.add_argument("--from", dest="start", default="05:45", help="first simulated local time (HH:MM)")
    p.add_argument("--to", dest="end", default="22:30", help="last simulated local time (HH:MM)")
    p.add_argument("--step", type=int, default=30, help="simulated minutes between steps away from transitions")
    p.add_argument("--outage", default=DAY_OUTAGE,
                   help="a campus (its WAN link cut), 'top' (the top master stopped) or 'none'")
    p.add_argument("--outage-from", default="06:00", help="simulated local time the outage begins")
    p.add_argument("--outage-to", default="09:00", help="simulated local time the outage ends")
    p.add_argument("--keep-off", default=DAY_KEPT_OFF, help="a kiosk whose NIC ignores magic packets ('' for none)")
    p.add_argument("--settle", type=int, default=90, help="real seconds a step waits for kiosks to follow")
    return p


# --------------------------------------------------------------------------- pure parts: instants and reports


def local_time(date, hhmm, tz, field):
    """The aware instant of ``hhmm`` on ``date`` in ``tz``; ValueError naming ``field``."""
    try:
        day = dt.date.fromisoformat(date)
        hours, minutes = (int(x) for x in hhmm.split(":"))
        return dt.datetime(day.year, day.month, day.day, hours, minutes, tzinfo=tz)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{field}: {hhmm!r} on {date!r} is not a local time (HH:MM): {exc}") from None


def day_instants(schedule, inv, start, end, step_min, extra=()):
    """The simulated instants the day stops at, sorted: every ``step_min`` minutes from ``start`` to ``end``,
    every transition of a kiosk's desired state in between and 5/10/15 minutes (+ ``CHECK_MARGIN``) after
    each, and ``extra``."""
    instants = {start, end, *[e for e in extra if start <= e <= end]}
    at = start
    while at < end:
        instants.add(at)
        at += dt.timedelta(minutes=step_min)
    for campus, spec in inv["campuses"].items():
        for kiosk in spec["kiosks"]:
            for instant, _state, _rule in fleet_schedule.transitions(schedule, campus, kiosk, start, end):
                for after in (0, *CHECKS_MIN):
                    moment = instant + dt.timedelta(minutes=after) + (CHECK_MARGIN if after else dt.timedelta())
                    if moment <= end:
                        instants.add(moment.astimezone(start.tzinfo))
    return sorted(instants)


def names(value):
    """A reconcile answer's kiosk list or mapping as a short text."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" if not isinstance(v, dict | list) else k for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return ", ".join(str(v.get("kiosk", v)) if isinstance(v, dict) else str(v) for v in value)
    return str(value)


def describe_reconcile(pi, answer):
    """One line for one Pi's ``kiosk_campus.reconcile`` answer (docs/campus.md)."""
    if not isinstance(answer, dict):
        return f"{pi}: no answer ({str(answer)[:200]})"
    if answer.get("result") is False or answer.get("error") or answer.get("_error"):
        return f"{pi}: FAILED: {answer.get('error') or answer.get('_error') or answer}"
    parts = []
    if answer.get("woke_early"):  # due on: magic packets before its scan, seconds after the due instant
        parts.append(f"woke {names(answer['woke_early'])} (before its scan)")
    later = [k for k in answer.get("woke") or [] if k not in (answer.get("woke_early") or [])]
    if later:
        parts.append(f"woke {names(later)}")
    if answer.get("shut_down"):
        parts.append(f"shut down {names(answer['shut_down'])}")
    if answer.get("verified"):
        parts.append(f"verified {names(answer['verified'])}")
    if answer.get("waiting"):
        parts.append(f"check failed, checking again later: {names(answer['waiting'])}")
    for mismatch in answer.get("mismatches") or []:
        parts.append(f"MISMATCH {mismatch.get('kiosk')} expected {mismatch.get('expected')}, "
                     f"observed {mismatch.get('observed')} -> alert in the outbox")
    withheld = answer.get("withheld") if isinstance(answer.get("withheld"), dict) else {}
    for part, kiosks in sorted(withheld.items()):
        if kiosks:
            parts.append(f"withheld {part} of {names(kiosks)}")
    clock = answer.get("clock") if isinstance(answer.get("clock"), dict) else {}
    if clock and not clock.get("synced", True):
        parts.append("clock NOT synchronised")
    role = " (leader)" if answer.get("leader") is True else ""
    return f"{pi}{role}: {'; '.join(parts) or 'nothing to do'}"


def kiosk_changes(before, after, kept_off):
    """What the kiosks felt between two simulator states: ``[text]``."""
    lines = []
    for kiosk in sorted(after):
        was, now = before.get(kiosk, {}), after[kiosk]
        packets = now.get("packets", 0) - was.get("packets", 0)
        presses = now.get("presses", 0) - was.get("presses", 0)
        bits = []
        if packets:
            bits.append(f"{packets} magic packets")
        if presses:
            bits.append(f"{presses} power-button press{'es' if presses > 1 else ''}")
        if was.get("on") != now.get("on"):
            bits.append("powered " + ("on" if now.get("on") else "off"))
        elif packets and kiosk in kept_off and not now.get("on"):
            bits.append("ignored: its NIC is kept off, it stays off")
        elif packets and now.get("on"):
            bits.append("already on (a Pi wakes the kiosks due on before its scan: duplicates are harmless)")
        if bits:
            lines.append(f"{kiosk}: {', '.join(bits)}")
    return lines


def alert_posts(posts):
    """``{idempotency key: number of POSTs}`` of the webhook's log (the pack's alert payloads carry the key)."""
    counts = {}
    for post in posts:
        body = post.get("body") if isinstance(post.get("body"), dict) else {}
        payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
        key = body.get("idempotency_key") or payload.get("idempotency_key") \
            or f"{body.get('kiosk', '?')} (no idempotency key)"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --------------------------------------------------------------------------- the lab side


def salt_run_json(run, config, *args, timeout=RUNNER_TIMEOUT_S):
    """``salt-run -c <run>/<config> --out=json args`` -> (exit code, parsed answer or {"_error": text})."""
    cmd = [str(BIN / "salt-run"), "-c", str(run / config), "--out=json", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        return 1, {"_error": f"salt-run {' '.join(args)} timed out after {timeout} s"}
    try:
        return out.returncode, json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return out.returncode, {"_error": (out.stdout + out.stderr).strip()[-2000:]}


def on_every(run, pis, *args):
    """Run ``salt-run -c <run>/<pi> args`` on every Pi at once: ``{pi: (code, answer)}``."""
    answers = {}

    def one(pi):
        answers[pi] = salt_run_json(run, pi, *args)

    threads = [threading.Thread(target=one, args=(pi,)) for pi in pis]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def live_pis(run, inv):
    pids = kiosk_lab.read_pids(run)
    return sorted(pi for spec in inv["campuses"].values() for pi in spec["pis"]
                  if kiosk_lab.alive(pids.get(f"{pi} master", 0) or 0))


def sim_state(run):
    path = run / "sim-state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def await_kiosks(run, before, kept_off, settle):
    """Wait (real time, at most ``settle`` s) until every kiosk that got a magic packet is on (unless its NIC is
    kept off) and every kiosk whose power button was pressed is off: the next step observes the result."""
    deadline = time.time() + settle
    while True:
        now = sim_state(run)
        pending = [k for k, s in now.items()
                   if (s["packets"] > before.get(k, {}).get("packets", 0) and k not in kept_off and not s["on"])
                   or (s["presses"] > before.get(k, {}).get("presses", 0) and s["on"])]
        if not pending or time.time() > deadline:
            return now, pending
        time.sleep(0.5)


def stop_top(run):
    pids = kiosk_lab.read_pids(run)
    top = {"top master": pids["top master"]} if "top master" in pids else {}
    kiosk_lab.stop_processes(top, grace=20)
    (run / "pids.json").write_text(json.dumps({n: p for n, p in kiosk_lab.read_pids(run).items() if n not in top},
                                              indent=1))
    return top


def start_top(run, inv, timeout):
    if not kiosk_lab.start_daemons(run, [("top master", ["salt-master", "-c", str(run / "top")])]):
        return ["top master"]
    pis = sorted(pi for spec in inv["campuses"].values() for pi in spec["pis"])
    heard = kiosk_lab.wait_for_minions(run, pis, timeout)
    return sorted(p for p in pis if heard.get(p) is not True)


def hhmm(iso, tz):
    """``HH:MM`` local of an ISO 8601 instant (as the outbox stores them), or the text itself."""
    try:
        return dt.datetime.fromisoformat(iso).astimezone(tz).strftime("%H:%M")
    except (TypeError, ValueError):
        return str(iso)


def print_top_view(run, campuses, tz):
    """``kiosk_outbox.collect`` then the top master's view of ``campuses`` (``kiosk_power.status``,
    ``kiosk_outbox.day``) and the webhook's log. Returns ``(exit code, {idempotency key: POSTs})``."""
    top = f"-c {run / 'top'}"
    code, collected = salt_run_json(run, "top", "kiosk_outbox.collect")
    say(f"$ salt-run {top} kiosk_outbox.collect      (exit {code})")
    for campus, entry in sorted((collected.get("campuses") or {}).items()):
        print(f"    {campus}: " + ", ".join(f"{pi} {line.get('new', 0)} new + {line.get('duplicates', 0)} already "
                                            f"collected from a peer" for pi, line in sorted(entry["pis"].items())))
    if collected.get("new"):
        print("    new entries: " + ", ".join(f"{n} {kind}" for kind, n in sorted(collected["new"].items())))
    alerts = collected.get("alerts") or {}
    for key in alerts.get("posted") or []:
        print(f"    alert posted: {key}")
    for key in ("silent", "error", "_error"):
        if collected.get(key):
            print(f"    {key}: {names(collected[key]) if not isinstance(collected[key], str) else collected[key]}")
    failed = code
    code, status = salt_run_json(run, "top", "kiosk_power.status")
    say(f"$ salt-run {top} kiosk_power.status         (exit {code}; its campuses part)")
    failed = failed or code
    view = status.get("campuses") if isinstance(status.get("campuses"), dict) else {}
    for campus in campuses:
        entry = view.get(campus) or {}
        pis = ", ".join(f"{pi} (calendar serial {p.get('serial')}, cursor {p.get('cursor')})"
                        for pi, p in sorted((entry.get("pis") or {}).items()))
        checks = entry.get("verifications") or []
        bad = [c for c in checks if not (c.get("data") or {}).get("ok")]
        print(f"    {campus}: {pis or 'no Pi collected yet'}")
        print(f"      {len(entry.get('actions') or [])} actions, {len(checks)} verifications ({len(bad)} failed), "
              f"{len(entry.get('alerts') or [])} alerts, {len(entry.get('kiosks') or {})} kiosks observed")
        for alert in entry.get("alerts") or []:
            print(f"      alert {alert['key']}  posted: {alert.get('posted')}  (reported by {', '.join(alert['pis'])})")
    if status.get("error") or status.get("_error"):
        print(f"    {status.get('error') or status.get('_error')}")
    for campus in campuses:
        code, day = salt_run_json(run, "top", "kiosk_outbox.day", f"campus={campus}")
        say(f"$ salt-run {top} kiosk_outbox.day campus={campus}   (exit {code}; actions and failed checks)")
        failed = failed or code
        entry = (day.get("campuses") or {}).get(campus) if isinstance(day.get("campuses"), dict) else None
        if not isinstance(entry, dict):
            print(f"    {day.get('error') or day.get('_error') or 'nothing collected'}")
            continue
        for action in entry.get("actions") or []:
            data = action.get("data") or {}
            print(f"    {hhmm(action['at'], tz)} {data.get('action', '?'):<8} {data.get('kiosk', '?'):<20} "
                  f"{data.get('result', '')}  by {', '.join(action['pis'])}")
        for check in entry.get("verifications") or []:
            data = check.get("data") or {}
            if not data.get("ok"):
                print(f"    {hhmm(check['at'], tz)} check    {data.get('kiosk', '?'):<20} expected "
                      f"{data.get('expected')}, observed {data.get('observed')}  ({check['key'].split('/')[2]})")
    counts = alert_posts(webhook.posts(kiosk_lab.webhook_log(run)))
    say(f"the alert webhook ({kiosk_lab.webhook_url()}) received {sum(counts.values())} POSTs:")
    for key, count in sorted(counts.items()):
        print(f"    {key}: {count} POST{'s' if count > 1 else ''}{'' if count == 1 else '  <- DUPLICATE'}")
    return failed, counts


def cmd_day(args):
    run = pathlib.Path(args.dir)
    inv = kiosk_lab.lab_inventory(run)
    pids = kiosk_lab.read_pids(run)
    if not inv or not kiosk_lab.alive(pids.get("top master", 0) or 0):
        say(f"the lab is not running in {run}, or its top master is stopped (kiosk-lab up first)")
        return 1
    if args.outage not in ("none", "top", *inv["campuses"]):
        say(f"--outage: {args.outage!r} is not 'none', 'top' or a campus ({', '.join(sorted(inv['campuses']))})")
        return 2
    kept_off = [k for k in args.keep_off.split(",") if k]
    known = {k for spec in inv["campuses"].values() for k in spec["kiosks"]}
    if set(kept_off) - known:
        say(f"--keep-off: unknown kiosk {', '.join(sorted(set(kept_off) - known))}")
        return 2
    fleet = yaml.safe_load((run / "fleet" / "fleet.yaml").read_text())
    try:
        schedule = fleet_schedule.load(fleet.get(fleet_schedule.PILLAR_KEY), known_kiosks=inv)
    except fleet_schedule.ScheduleError as exc:
        say(f"the lab's fleet data has no usable schedule: {exc}")
        return 1
    campus_of = args.outage if args.outage in inv["campuses"] else next(iter(inv["campuses"]))
    tz = zoneinfo.ZoneInfo(inv["campuses"][campus_of].get("timezone") or "Asia/Shanghai")
    try:
        start = local_time(args.date, args.start, tz, "--from")
        end = local_time(args.date, args.end, tz, "--to")
        outage = (local_time(args.date, args.outage_from, tz, "--outage-from"),
                  local_time(args.date, args.outage_to, tz, "--outage-to"))
    except ValueError as exc:
        say(str(exc))
        return 2
    if not start < end or not outage[0] < outage[1] or args.step < 1:
        say("--from must be before --to, --outage-from before --outage-to, --step at least 1")
        return 2
    if kiosk_lab.read_cuts(run):
        say(f"a campus is cut ({', '.join(kiosk_lab.read_cuts(run))}): kiosk-lab restore it first")
        return 1
    began = time.time()
    campuses = sorted(inv["campuses"])
    code = 0

    # the campuses' calendars, while every link is up
    say(f"$ salt-run -c {run / 'top'} kiosk_calendar.publish force=True")
    rc, published = salt_run_json(run, "top", "kiosk_calendar.publish", "force=True")
    for campus, entry in sorted(((published or {}).get("campuses") or {}).items()):
        print(f"    {campus}: {json.dumps(entry, sort_keys=True)[:300]}")
    if rc:
        say(f"calendar publish failed: {published.get('error') or published.get('_error') or published}")
        return 1
    for kiosk in kept_off:
        kiosk_sim.send_control(run, "keep-off", kiosk)
        say(f"{kiosk}'s NIC ignores magic packets from now on (the simulator keeps it off)")

    instants = day_instants(schedule, inv, start, end, args.step,
                            extra=outage if args.outage != "none" else ())
    say(f"a day on {args.date} ({tz.key}) from {args.start} to {args.end}: {len(instants)} steps; "
        + (f"outage '{args.outage}' {args.outage_from}-{args.outage_to}" if args.outage != "none" else "no outage"))
    down = False
    posted = {}
    for instant in instants:
        if args.outage != "none" and not down and outage[0] <= instant < outage[1]:
            if args.outage == "top":
                stopped = stop_top(run)
                say(f"{instant:%H:%M} the top master is stopped (pid {stopped.get('top master')})")
            else:
                stopped = kiosk_lab.cut_campus(run, inv, args.outage)
                say(f"{instant:%H:%M} {args.outage}'s WAN link is cut: stopped "
                    + ", ".join(f"{n} (pid {p})" for n, p in stopped.items()))
            down = True
        if down and instant >= outage[1]:
            if args.outage == "top":
                silent = start_top(run, inv, 180)
                say(f"{instant:%H:%M} the top master is back" + (f"; silent: {', '.join(silent)}" if silent else ""))
            else:
                started, silent = kiosk_lab.restore_campus(run, args.outage, 180)
                say(f"{instant:%H:%M} {args.outage}'s WAN link is back: started "
                    + ", ".join(f"{n} (pid {p})" for n, p in started.items())
                    + (f"; the top master does not hear {', '.join(silent)}" if silent else ""))
            down = False
            code = 1 if silent else code
            failed, counts = print_top_view(run, [args.outage] if args.outage in campuses else campuses, tz)
            code = code or failed
            posted.update(counts)
        pis = live_pis(run, inv)
        offset = instant.timestamp() - time.time()
        for pi in pis:
            kiosk_lab.write_clock(run, pi, offset)
        before = sim_state(run)
        # twice: the first round publishes every Pi's status at the new time, the second reads its peers' fresh
        # ones (right after a jump of the clocks every status read before looks stale: no leader would agree)
        on_every(run, pis, "kiosk_campus.probe")
        on_every(run, pis, "kiosk_campus.probe")
        answers = on_every(run, pis, "kiosk_campus.reconcile")
        after, pending = await_kiosks(run, before, kept_off, args.settle)
        with open(run / "day-steps.jsonl", "a", encoding="utf-8") as out:  # every answer, for a closer look
            out.write(json.dumps({"at": instant.isoformat(), "offset_s": offset,
                                  "reconcile": {pi: answer for pi, (_, answer) in answers.items()}}) + "\n")
        lines = []
        for campus in campuses:
            mine = [pi for pi in pis if pi in inv["campuses"][campus]["pis"]]
            did = [describe_reconcile(pi, answers[pi][1]) for pi in mine]
            felt = kiosk_changes({k: v for k, v in before.items() if k in inv["campuses"][campus]["kiosks"]},
                                 {k: v for k, v in after.items() if k in inv["campuses"][campus]["kiosks"]},
                                 kept_off)
            if felt or any("nothing to do" not in line for line in did):
                lines.append(f"  {campus}" + ("  (cut off)" if down and campus == args.outage else ""))
                lines += [f"    {line}" for line in did] + [f"    kiosk {line}" for line in felt]
            code = 1 if any(answers[pi][0] for pi in mine) else code
        if lines:
            print(f"{instant:%H:%M:%S}"[:8 if instant.second else 5] + f"  (Pi clocks {offset:+.0f} s from the host's)",
                  flush=True)
            print("\n".join(lines), flush=True)
        if pending:
            say(f"{', '.join(pending)} did not follow within {args.settle} s")
    if down:  # the day ended inside the outage: restore before the summary
        if args.outage == "top":
            start_top(run, inv, 180)
        else:
            kiosk_lab.restore_campus(run, args.outage, 180)
        say(f"{args.outage} restored at the end of the day")
    for kiosk in kept_off:
        kiosk_sim.send_control(run, "let-on", kiosk)
    say("the end of the day: the top master's view")
    failed, posted = print_top_view(run, campuses, tz)
    code = code or failed
    if any(count > 1 for count in posted.values()):
        say("an alert was posted more than once")
        code = 1
    with contextlib.suppress(OSError):
        (run / "day.json").write_text(json.dumps({"posted": posted, "seconds": time.time() - began}))
    say(f"day done in {time.time() - began:.0f} s (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(kiosk_lab.main(["day", *sys.argv[1:]]))
