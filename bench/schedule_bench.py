"""
Power schedules: desired state of 10,000 kiosks at one instant with campus +
kiosk rules (target <= 20 ms), median of several runs, through
``fleet_schedule.desired_states`` on a schedule compiled once with
``fleet_schedule.load``. Pure Python, no Salt, no network. Prints figures;
asserts nothing.

    .venv/bin/python bench/schedule_bench.py [--kiosks 10000] [--runs 15]

Shapes: 2 campuses x 5,000 and 30 campuses x ~334 kiosks. Every campus has a
weekly rule and three dated rules (Spring Festival, National Day, an
inspection day); every kiosk has its own rules, drawn from realistic variants
(opening 07:00-07:59, some with dated festival duty, some 24/7). "distinct"
gives every kiosk a rule list of its own (nothing shared: the worst case).
"""

import argparse
import datetime as dt
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "_utils"))

import fleet_schedule  # noqa: E402

CAMPUS_RULES = [
    {"name": "opening-hours", "weekly": {"mon-fri": ["07:00-22:00"], "sat,sun": ["08:00-12:00"]}},
    {"name": "spring-festival", "dates": ["2027-02-05", "2027-02-12"], "always": "off"},
    {"name": "national-day", "dates": ["2027-10-01", "2027-10-07"], "weekly": {"daily": ["09:00-15:00"]}},
    {"name": "inspection", "dates": "2027-05-20", "always": "on"},
]


def kiosk_rules(n, distinct):
    minute = n % 60
    rules = [{"name": f"own-{n}" if distinct else "own",
              "weekly": {"mon-fri": [f"07:{minute:02d}-22:00"], "sat": ["08:00-12:00"], "fri": ["22:00-01:00"]}}]
    if n % 10 == 0:
        rules.append({"name": "festival-duty", "dates": ["2027-02-05", "2027-02-12"], "weekly": {"daily": ["08:00-16:00"]}})
    if n % 100 == 7:
        rules = [{"name": "emergency", "always": "on"}]
    return rules


def build(campuses, kiosks, distinct):
    per_campus = kiosks // campuses
    data, selection, n = {"campuses": {}}, {}, 0
    for c in range(campuses):
        name = f"campus-{c:02d}"
        ids = [f"kiosk-{name}-{k:04d}" for k in range(per_campus + (1 if c < kiosks % campuses else 0))]
        data["campuses"][name] = {
            "timezone": "Europe/Berlin" if c % 2 else "Asia/Shanghai",
            "rules": CAMPUS_RULES,
            "kiosks": {kiosk: kiosk_rules(n + i, distinct) for i, kiosk in enumerate(ids)},
        }
        n += len(ids)
        selection[name] = ids
    return data, selection


def median_ms(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiosks", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    instants = {
        "weekday 07:30": dt.datetime(2027, 3, 3, 7, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "spring festival": dt.datetime(2027, 2, 8, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "Berlin repeated hour": dt.datetime(2027, 10, 31, 1, 30, tzinfo=dt.timezone.utc),
    }
    print(f"python {sys.version.split()[0]}, {args.kiosks} kiosks, median of {args.runs} runs (min..max), target <= 20 ms")
    for campuses, distinct in ((2, False), (30, False), (2, True), (30, True)):
        data, selection = build(campuses, args.kiosks, distinct)
        start = time.perf_counter()
        schedule = fleet_schedule.load(data)
        load_ms = (time.perf_counter() - start) * 1000
        label = f"{campuses:>2} campuses x {args.kiosks // campuses:>5}, {'distinct' if distinct else 'shared  '} kiosk rules"
        for what, instant in instants.items():
            result = fleet_schedule.desired_states(schedule, selection, instant)
            counted = {}
            for states in result.values():
                for decision in states.values():
                    counted[decision["state"]] = counted.get(decision["state"], 0) + 1
            med, lo, hi = median_ms(lambda s=schedule, k=selection, t=instant: fleet_schedule.desired_states(s, k, t), args.runs)
            print(f"{label}  {what:<20} desired_states {med:6.2f} ms ({lo:.2f}..{hi:.2f})  "
                  f"{dict(sorted(counted.items()))}")
        print(f"{label}  load (validate + compile, once per pillar change) {load_ms:.0f} ms")
    data, selection = build(2, args.kiosks, False)
    schedule = fleet_schedule.load(data)
    instant = instants["weekday 07:30"]
    pairs = [(c, k) for c, ids in selection.items() for k in ids]
    med, lo, hi = median_ms(lambda: [fleet_schedule.desired_state(schedule, c, k, instant) for c, k in pairs], 3)
    print(f"for comparison, desired_state called once per kiosk: {med:.1f} ms ({lo:.1f}..{hi:.1f})")


if __name__ == "__main__":
    main()
