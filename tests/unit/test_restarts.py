"""
Unexpected restarts (``fleet_restarts``): the kiosk's boot time and shutdown
reason as read on the kiosk (``/proc/stat``, ``wevtutil`` text), the decision
expected/unexpected, the wakes found in the collected outbox and the sweeps,
and the top master's record (one row per kiosk and boot time, counters that
never go back).
"""

import datetime as dt
import threading

import pytest

import fleet_fields
import fleet_restarts
from fleet_restarts import RestartsError

UTC = dt.timezone.utc
BOOT = dt.datetime(2027, 3, 1, 8, 1, tzinfo=UTC).timestamp()  # 16:01 in Shanghai

KERNEL_POWER_41 = """Event[0]:
  Log Name: System
  Source: Microsoft-Windows-Kernel-Power
  Date: 2027-03-01T08:01:40.1230000Z
  Event ID: 41
  Task: N/A
  Level: Critical
  Opcode: Info
  Keyword: N/A
  User: S-1-5-18
  User Name: NT AUTHORITY\\SYSTEM
  Computer: KIOSK-EAST-01
  Description: \r
The system has rebooted without cleanly shutting down first. This error could be caused if the system stopped responding, crashed, or lost power unexpectedly.\r
"""

EVENTLOG_6008 = """Event[0]:
  Log Name: System
  Source: EventLog
  Date: 2027-03-01T16:01:52.000
  Event ID: 6008
  Task: N/A
  Level: Error
  Computer: KIOSK-EAST-01
  Description:
The previous system shutdown at 3:58:10 PM on 3/1/2027 was unexpected.
"""


# ---------------------------------------------------------------- what the kiosk reads


def test_parse_btime_reads_the_boot_time_of_proc_stat():
    stat = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1803888060\nprocesses 7\n"
    assert fleet_restarts.parse_btime(stat) == 1803888060
    with open("/proc/stat", encoding="ascii") as real:  # the tests run on Linux, like the lab's kiosks
        assert 0 < fleet_restarts.parse_btime(real.read()) < 4102444800
    for bad in ("cpu 1\n", "btime x\n", "btime -5\n"):
        with pytest.raises(RestartsError) as err:
            fleet_restarts.parse_btime(bad)
        assert err.value.field == "stat"
    with pytest.raises(RestartsError, match="^stat: "):
        fleet_restarts.parse_btime(None)


def test_parse_boot_time_file_reads_one_whole_number():
    assert fleet_restarts.parse_boot_time_file("1803888060\n") == 1803888060
    for bad in ("", "1803888060.5", "soon", "99999999999999", None):
        with pytest.raises(RestartsError) as err:
            fleet_restarts.parse_boot_time_file(bad)
        assert err.value.field == "boot_time_file"


def test_parse_wevtutil_reads_event_41():
    event = fleet_restarts.parse_wevtutil(KERNEL_POWER_41)
    assert event["event_id"] == 41 and event["source"] == "Microsoft-Windows-Kernel-Power"
    assert event["date"] == "2027-03-01T08:01:40.1230000Z" and event["level"] == "Critical"
    assert event["description"].startswith("The system has rebooted without cleanly shutting down first.")


def test_parse_wevtutil_reads_event_6008_in_local_time_and_only_the_first_event():
    event = fleet_restarts.parse_wevtutil(EVENTLOG_6008 + EVENTLOG_6008.replace("6008", "41"))
    assert event["event_id"] == 6008 and event["source"] == "EventLog"
    assert "was unexpected" in event["description"] and "Event[" not in event["description"]
    shanghai = dt.timezone(dt.timedelta(hours=8))
    assert fleet_restarts.event_time(event["date"], shanghai) == BOOT + 52


def test_parse_wevtutil_no_event_is_none_and_garbage_names_the_field():
    assert fleet_restarts.parse_wevtutil("") is None and fleet_restarts.parse_wevtutil("\r\n") is None
    with pytest.raises(RestartsError) as err:
        fleet_restarts.parse_wevtutil("Access is denied.")
    assert err.value.field == "text"
    with pytest.raises(RestartsError) as err:
        fleet_restarts.parse_wevtutil(KERNEL_POWER_41.replace("Event ID: 41", "Event ID: many"))
    assert err.value.field == "text.event_id"
    with pytest.raises(RestartsError) as err:
        fleet_restarts.parse_wevtutil(KERNEL_POWER_41.replace("2027-03-01T08:01:40.1230000Z", "yesterday"))
    assert err.value.field == "text.date"
    with pytest.raises(RestartsError) as err:
        fleet_restarts.parse_wevtutil(b"Event[0]:")
    assert err.value.field == "text" and isinstance(err.value, fleet_fields.FleetError)


def test_a_shutdown_reason_counts_for_this_boot_only():
    event = fleet_restarts.parse_wevtutil(KERNEL_POWER_41)
    reason = fleet_restarts.shutdown_reason(event, BOOT)
    assert reason == {"event_id": 41, "source": "Microsoft-Windows-Kernel-Power", "at": int(BOOT) + 40,
                      "reason": fleet_restarts.EVENT_REASONS[41]}
    # logged for an earlier boot: the reason of another restart
    assert fleet_restarts.shutdown_reason(event, BOOT + 86400) is None
    assert fleet_restarts.shutdown_reason(None, BOOT) is None
    with pytest.raises(RestartsError, match="^boot_time: "):
        fleet_restarts.shutdown_reason(event, "today")


def test_check_answer_keeps_our_reason_text_and_names_the_bad_field():
    shutdown = {"event_id": 6008, "source": "EventLog", "at": BOOT + 50, "reason": "<script>free text</script>"}
    checked = fleet_restarts.check_answer({"boot_time": BOOT + 0.7, "shutdown": shutdown, "id": "kiosk-east-01"})
    assert checked == {"boot_time": int(BOOT), "shutdown": {"event_id": 6008, "source": "EventLog",
                                                            "at": int(BOOT) + 50,
                                                            "reason": fleet_restarts.EVENT_REASONS[6008]}}
    assert fleet_restarts.check_answer({"boot_time": int(BOOT)})["shutdown"] is None
    for answer, field in [("ERROR", "answer"), ({}, "answer.boot_time"), ({"boot_time": True}, "answer.boot_time"),
                          ({"boot_time": float("nan")}, "answer.boot_time"), ({"boot_time": -1}, "answer.boot_time"),
                          ({"boot_time": BOOT, "shutdown": "41"}, "answer.shutdown"),
                          ({"boot_time": BOOT, "shutdown": dict(shutdown, event_id="41")}, "answer.shutdown.event_id"),
                          ({"boot_time": BOOT, "shutdown": dict(shutdown, at=None)}, "answer.shutdown.at"),
                          ({"boot_time": BOOT, "shutdown": dict(shutdown, source=7)}, "answer.shutdown.source")]:
        with pytest.raises(RestartsError) as err:
            fleet_restarts.check_answer(answer)
        assert err.value.field == field


# ---------------------------------------------------------------- the wakes the pack sent


def test_wakes_come_from_collected_wake_actions_of_this_kiosk_and_from_sweeps():
    day = {"east": {"actions": [
        {"key": "east/kiosk-east-01/wake/2027-03-01T08:00:00Z", "at": "2027-03-01T08:00:00Z",
         "data": {"kiosk": "kiosk-east-01", "action": "wake", "at": "2027-03-01T08:00:00Z"}},
        {"key": "east/kiosk-east-02/wake/2027-03-01T08:00:00Z", "at": "2027-03-01T08:00:00Z",
         "data": {"kiosk": "kiosk-east-02", "action": "wake", "at": "2027-03-01T08:00:00Z"}},
        {"key": "east/kiosk-east-01/shutdown/2027-03-01T07:00:00Z", "at": "2027-03-01T07:00:00Z",
         "data": {"kiosk": "kiosk-east-01", "action": "shutdown", "at": "2027-03-01T07:00:00Z"}},
        "odd"]}}
    assert fleet_restarts.wakes_from_day(day, "east", "kiosk-east-01") == [BOOT - 60]
    assert fleet_restarts.wakes_from_day(day, "west", "kiosk-east-01") == []
    sweeps = [{"at": "2027-03-01T07:59:00Z", "woken": {"east": ["kiosk-east-01"]}},
              {"at": "2027-03-01T08:00:30Z", "woken": {"east": ["kiosk-east-02"]}}, None]
    assert fleet_restarts.wakes_from_sweeps(sweeps, "kiosk-east-01") == [BOOT - 120]
    with pytest.raises(RestartsError, match="^kiosk: "):
        fleet_restarts.wakes_from_day(day, "east", "kiosk east")
    with pytest.raises(RestartsError, match="^sweeps: "):
        fleet_restarts.wakes_from_sweeps({}, "kiosk-east-01")


def test_a_campus_collected_since_the_boot_needs_no_collect():
    pis = {"pi-east-1": {"collected_at": "2027-03-01T08:00:30Z"}, "pi-east-2": {"collected_at": None}}
    assert fleet_restarts.collected_since(pis, BOOT - 30) is True
    assert fleet_restarts.collected_since(pis, BOOT) is False  # collected before the boot: the wake may be later
    assert fleet_restarts.collected_since({}, BOOT) is False
    with pytest.raises(RestartsError) as err:
        fleet_restarts.collected_since([], BOOT)
    assert err.value.field == "pis"


# ---------------------------------------------------------------- the decision


@pytest.mark.parametrize(("wakes", "previous", "expected", "verdict", "reason"), [
    ([BOOT - 60], BOOT - 86400, "on", "expected", "woken by the pack at 2027-03-01T08:00:00Z"),
    ([BOOT - 900], None, "off", "expected", "woken by the pack at 2027-03-01T07:46:00Z"),
    ([BOOT + 100], None, "on", "expected", "woken by the pack"),  # the kiosk's clock a little behind the Pi's
    ([BOOT - 901], BOOT - 86400, "on", "unexpected", "restarted while it should have been on (previous boot"),
    ([], BOOT - 3600, "on", "unexpected", "restarted while it should have been on (previous boot 2027-03-01T07:01"),
    ([], BOOT - 3600, "off", "unexpected", "booted with no wake from the pack in the 15 min before (schedule: off)"),
    ([], None, "on", "unexpected", "booted with no wake from the pack in the 15 min before (schedule: on)"),
    ([], None, "unmanaged", "unexpected", "(schedule: unmanaged)"),
    ([BOOT + 600], None, None, "unexpected", "(schedule: unknown)"),  # a wake after the boot did not cause it
])
def test_decide(wakes, previous, expected, verdict, reason):
    got = fleet_restarts.decide(BOOT, previous, wakes, expected)
    assert got["verdict"] == verdict and reason in got["reason"]


def test_decide_tells_the_logged_shutdown_reason():
    shutdown = fleet_restarts.check_answer({"boot_time": BOOT, "shutdown": {
        "event_id": 41, "source": "Microsoft-Windows-Kernel-Power", "at": BOOT + 40}})["shutdown"]
    got = fleet_restarts.decide(BOOT, BOOT - 3600, [], "on", shutdown)
    assert got["verdict"] == "unexpected" and got["reason"].endswith("; the kiosk logged "
                                                                     + fleet_restarts.EVENT_REASONS[41])
    # a wake explains the boot, whatever the last shutdown was
    assert fleet_restarts.decide(BOOT, BOOT - 3600, [BOOT - 30], "on", shutdown)["verdict"] == "expected"


@pytest.mark.parametrize(("args", "field"), [
    ((None, None, [], "on"), "boot_time"), ((BOOT, "yesterday", [], "on"), "previous_boot"),
    ((BOOT, None, "08:00", "on"), "wakes"), ((BOOT, None, [BOOT, "x"], "on"), "wakes.1"),
    ((BOOT, None, [], "maybe"), "expected"), ((BOOT, None, [], "on", "crash"), "shutdown"),
    ((BOOT, None, [], "on", None, 0), "window_s"), ((float("inf"), None, [], "on"), "boot_time"),
])
def test_decide_names_the_bad_input(args, field):
    with pytest.raises(RestartsError) as err:
        fleet_restarts.decide(*args)
    assert err.value.field == field


# ---------------------------------------------------------------- metrics


def test_metric_families_are_the_contract_names_with_campus_and_kiosk():
    rows = [{"campus": "east", "kiosk": "kiosk-east-01", "boots": 3, "unexpected": 1, "last_boot": int(BOOT)}]
    families = {name: (kind, samples) for name, kind, _, samples in fleet_restarts.metric_families(rows)}
    labels = {"campus": "east", "kiosk": "kiosk-east-01"}
    assert families == {"kiosk_boots_total": ("counter", [(labels, 3)]),
                        "kiosk_unexpected_restarts_total": ("counter", [(labels, 1)]),
                        "kiosk_last_boot_timestamp_seconds": ("gauge", [(labels, int(BOOT))])}
    for bad, field in [("rows", "rows"), ([dict(rows[0], campus="")], "rows.0.campus"),
                       ([dict(rows[0], unexpected=-1)], "rows.0.unexpected"),
                       ([dict(rows[0], boots=True)], "rows.0.boots"), (["x"], "rows.0")]:
        with pytest.raises(RestartsError) as err:
            fleet_restarts.metric_families(bad)
        assert err.value.field == field


# ---------------------------------------------------------------- the record


def test_one_row_per_kiosk_and_boot_time_and_counters_that_never_go_back(tmp_path):
    store = fleet_restarts.Restarts(str(tmp_path / "restarts.db"))
    first = store.record("east", "kiosk-east-01", BOOT - 86400, [BOOT - 86400 - 60], "on", now=BOOT - 86000)
    assert first["verdict"] == "expected" and first["previous_boot"] is None and not first["duplicate"]
    seen = []
    again = store.record("east", "kiosk-east-01", BOOT, [], "on", now=BOOT + 60, after=seen.append)
    assert again["verdict"] == "unexpected" and again["previous_boot"] == int(BOOT) - 86400
    assert seen == [[{"campus": "east", "kiosk": "kiosk-east-01", "boots": 2, "unexpected": 1,
                      "last_boot": int(BOOT)}]]
    # the same boot from the other Pi, its time read a few seconds off: counted once, answered as recorded
    copy = store.record("east", "kiosk-east-01", BOOT + 3, [BOOT], "on", now=BOOT + 61, after=seen.append)
    assert copy == {"boot": int(BOOT), "verdict": "unexpected", "reason": again["reason"], "previous_boot": None,
                    "duplicate": True}
    assert len(seen) == 1 and store.known("kiosk-east-01", BOOT - 2)["verdict"] == "unexpected"
    assert store.known("kiosk-east-02", BOOT) is None
    # 100 days later the boot rows are pruned; the counters are not
    later = BOOT + 100 * 86400
    store.record("east", "kiosk-east-01", later, [later - 10], "on", now=later + 60)
    assert store.totals() == [{"campus": "east", "kiosk": "kiosk-east-01", "boots": 3, "unexpected": 1,
                               "last_boot": int(later)}]
    assert store.unexpected() == []


def test_a_boot_announced_again_after_its_row_was_pruned_is_not_counted_again(tmp_path):
    store = fleet_restarts.Restarts(str(tmp_path / "restarts.db"))
    store.record("east", "kiosk-east-01", BOOT, [], "on", now=BOOT + 60)
    # another kiosk's boot 100 days later prunes the first row; kiosk-east-01 has been up all along
    later = BOOT + 100 * 86400
    store.record("east", "kiosk-east-02", later, [later - 10], "on", now=later)
    assert store.known("kiosk-east-01", BOOT) is None
    # its minion restarts and announces the same boot, its time read a few seconds off
    again = store.record("east", "kiosk-east-01", BOOT + 5, [], "on", now=later + 60)
    assert again["duplicate"] is True and again["boot"] == int(BOOT) and again["verdict"] is None
    assert store.totals(kiosk="kiosk-east-01") == [{"campus": "east", "kiosk": "kiosk-east-01", "boots": 1,
                                                    "unexpected": 1, "last_boot": int(BOOT)}]


def test_a_failed_write_of_the_metrics_records_nothing(tmp_path):
    store = fleet_restarts.Restarts(str(tmp_path / "restarts.db"))

    def broken(totals):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.record("east", "kiosk-east-01", BOOT, [], "on", after=broken)
    assert store.totals() == [] and store.known("kiosk-east-01", BOOT) is None


def test_copies_recorded_at_once_from_threads_count_once(tmp_path):
    path = str(tmp_path / "restarts.db")
    results, barrier = [], threading.Barrier(4)

    def copy():
        barrier.wait()
        results.append(fleet_restarts.Restarts(path).record("east", "kiosk-east-01", BOOT, [], "off"))

    threads = [threading.Thread(target=copy) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["duplicate"] for r in results) == [False, True, True, True]
    assert fleet_restarts.Restarts(path).totals()[0]["boots"] == 1


def test_unexpected_lists_the_newest_first_filtered(tmp_path):
    store = fleet_restarts.Restarts(str(tmp_path / "restarts.db"))
    for i, (campus, kiosk) in enumerate([("east", "kiosk-east-01"), ("west", "kiosk-west-01"),
                                         ("east", "kiosk-east-02")]):
        store.record(campus, kiosk, BOOT + i * 600, [], "on", now=BOOT + i * 600)
    store.record("east", "kiosk-east-01", BOOT + 4000, [BOOT + 3990], "on", now=BOOT + 4000)
    assert [r["kiosk"] for r in store.unexpected()] == ["kiosk-east-02", "kiosk-west-01", "kiosk-east-01"]
    assert [r["kiosk"] for r in store.unexpected(campus="east", limit=1)] == ["kiosk-east-02"]
    assert store.unexpected(kiosk="kiosk-east-01")[0]["at"] == "2027-03-01T08:01:00Z"
    assert [r["kiosk"] for r in store.totals(campus="west")] == ["kiosk-west-01"]
    for call, field in [(lambda: store.unexpected(limit=0), "limit"), (lambda: store.totals(campus="a b"), "campus"),
                        (lambda: store.unexpected(kiosk=""), "kiosk"),
                        (lambda: fleet_restarts.Restarts("relative.db"), "path"),
                        (lambda: store.record("east", "kiosk-east-01", "now", [], "on"), "boot")]:
        with pytest.raises(RestartsError) as err:
            call()
        assert err.value.field == field


# ---------------------------------------------------------------- the wakes the top master sent


def test_wakes_are_recorded_once_queried_by_window_and_pruned_after_a_few_days(tmp_path):
    store = fleet_restarts.Restarts(fleet_restarts.store_path(str(tmp_path)))
    assert store.path == str(tmp_path / "kiosk_restarts" / "restarts.db")
    assert store.record_wakes(["kiosk-east-01", "kiosk-east-02"], BOOT - 60.7, now=BOOT) == 2
    # the same wake again (a retried record) adds nothing; another source of the same second does
    assert store.record_wakes(["kiosk-east-01"], BOOT - 60.2, now=BOOT) == 0  # the same second
    assert store.record_wakes(["kiosk-east-01"], BOOT - 61, source="lab", now=BOOT) == 1
    assert store.record_wakes(["kiosk-east-01"], BOOT - 3000, now=BOOT) == 1
    assert store.wakes("kiosk-east-01", BOOT - fleet_restarts.WAKE_WINDOW_S, BOOT) == [int(BOOT) - 61]
    assert store.wakes("kiosk-east-01", BOOT - 3000, BOOT - 61) == [int(BOOT) - 3000, int(BOOT) - 61]
    assert store.wakes("kiosk-east-02", BOOT - 60, BOOT) == [] and store.wakes("kiosk-west-01", 0, BOOT) == []
    # a record a few days later prunes the old wakes; the boots and counters are not touched
    store.record("east", "kiosk-east-01", BOOT, store.wakes("kiosk-east-01", BOOT - 900, BOOT), "on", now=BOOT)
    later = BOOT + fleet_restarts.KEEP_WAKES_S + 3600
    assert store.record_wakes(["kiosk-west-01"], later, now=later) == 1
    assert store.wakes("kiosk-east-01", 0, later) == [] and store.wakes("kiosk-west-01", 0, later) == [int(later)]
    assert store.totals()[0]["boots"] == 1 and store.known("kiosk-east-01", BOOT)["verdict"] == "expected"


def test_sent_kiosks_are_those_a_pi_reports_having_sent_to():
    report = {"kiosks": {"kiosk-east-02": {"campus": "east", "sent_by": {"pi-east-1": {"packets": 3}}},
                         "kiosk-east-01": {"campus": "east", "sent_by": {}},
                         "kiosk-west-01": {"campus": "west", "sent_by": {"pi-west-2": {"packets": 1}}}},
              "unreached": ["kiosk-east-01"]}
    assert fleet_restarts.sent_kiosks(report) == ["kiosk-east-02", "kiosk-west-01"]
    assert fleet_restarts.sent_kiosks({"kiosks": {}}) == []


def test_bad_wake_input_names_the_field(tmp_path):
    store = fleet_restarts.Restarts(str(tmp_path / "restarts.db"))
    for call, field in [(lambda: store.record_wakes("kiosk-east-01", BOOT), "kiosks"),
                        (lambda: store.record_wakes(["kiosk-east-01", "a b"], BOOT), "kiosks.1"),
                        (lambda: store.record_wakes(["kiosk-east-01"], "now"), "at"),
                        (lambda: store.record_wakes(["kiosk-east-01"], -1), "at"),
                        (lambda: store.record_wakes(["kiosk-east-01"], BOOT, source="$(id)"), "source"),
                        (lambda: store.record_wakes(["kiosk-east-01"], BOOT, now=float("nan")), "now"),
                        (lambda: store.wakes("", 0, BOOT), "kiosk"),
                        (lambda: store.wakes("kiosk-east-01", True, BOOT), "since"),
                        (lambda: store.wakes("kiosk-east-01", BOOT, BOOT - 1), "until"),
                        (lambda: fleet_restarts.store_path("cache"), "cachedir"),
                        (lambda: fleet_restarts.sent_kiosks([]), "report"),
                        (lambda: fleet_restarts.sent_kiosks({"kiosks": {"a b": {}}}), "report.kiosks")]:
        with pytest.raises(RestartsError) as err:
            call()
        assert err.value.field == field
    assert store.wakes("kiosk-east-01", 0, BOOT) == []  # nothing recorded by a refused call
