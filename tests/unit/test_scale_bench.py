"""The pure parts of bench/scale.py: the topology plan, the growth-exponent fit, the table. No daemon starts."""

import importlib.util
import ipaddress
import math
import pathlib

import fleet_inventory
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loopback(address):
    return ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8")


def test_the_plan_deals_the_kiosks_over_the_campuses_on_loopback(scale):
    topology = scale.plan(2, 2, 25)
    assert sorted(topology["campuses"]) == ["c001", "c002"]
    sizes = [len(spec["kiosks"]) for spec in topology["campuses"].values()]
    assert sizes == [13, 12]
    assert scale.pi_ids(topology) == ["pi-c001-1", "pi-c001-2", "pi-c002-1", "pi-c002-2"]
    assert scale.kiosk_ids(topology)[:2] == ["kiosk-c001-001", "kiosk-c001-002"]
    assert len(scale.kiosk_ids(topology)) == 25
    east = topology["campuses"]["c001"]
    assert east["pis"]["pi-c001-2"] == {"address": "127.0.141.3", "master": "127.0.141.3:4506"}
    assert east["kiosks"]["kiosk-c001-013"]["ip"] == "127.0.141.33"
    assert topology["top"] == {"id": "top", "address": "127.0.130.1", "ports": [4505, 4506]}


def test_every_address_is_loopback_distinct_and_inside_its_campus_network(scale):
    topology = scale.plan(30, 4, 1000)
    addresses = [topology["top"]["address"]]
    for spec in topology["campuses"].values():
        network = ipaddress.ip_network(spec["network"])
        mine = [p["address"] for p in spec["pis"].values()] + [k["ip"] for k in spec["kiosks"].values()]
        assert all(ipaddress.ip_address(a) in network for a in mine)
        addresses += mine
    assert all(_loopback(a) for a in addresses)
    assert len(addresses) == len(set(addresses)) == 1 + 30 * 4 + 1000
    macs = [k["mac"] for spec in topology["campuses"].values() for k in spec["kiosks"].values()]
    assert len(set(macs)) == 1000


def test_the_fleet_data_is_a_valid_inventory_with_every_kiosk_managed(scale):
    data = scale.fleet_data(scale.plan(3, 2, 10))
    inventory = fleet_inventory.validate(data[fleet_inventory.PILLAR_KEY])
    assert sum(len(c["kiosks"]) for c in inventory["campuses"].values()) == 10
    assert inventory["campuses"]["c002"]["pis"]["pi-c002-1"]["master"] == "127.0.142.2:4506"
    schedules = data["kiosk_fleet_schedules"]["campuses"]
    assert {c["default"] for c in schedules.values()} == {"on"} and sorted(schedules) == ["c001", "c002", "c003"]


@pytest.mark.parametrize(("args", "field"), [
    ((0, 2, 10), "campuses"), ((2, 0, 10), "pis"), ((2, 10, 10), "pis"), ((3, 2, 2), "kiosks"),
    ((1, 1, 231), "kiosks"), ((True, 2, 10), "campuses"), ((2, 2, "25"), "kiosks"),
])
def test_a_bad_size_is_refused_naming_it(scale, args, field):
    with pytest.raises(scale.ScaleError) as err:
        scale.plan(*args)
    assert err.value.field == field and str(err.value).startswith(f"{field}:")


def test_the_kiosk_counts_parse_and_bad_ones_are_named(scale):
    assert scale.parse_counts("50, 25,50,100") == [25, 50, 100]
    for bad in ("", "25,x", "0,25"):
        with pytest.raises(scale.ScaleError) as err:
            scale.parse_counts(bad)
        assert err.value.field == "kiosks"


def test_the_stopped_kiosks_are_30_percent_spread_over_the_campuses(scale):
    kiosks = scale.kiosk_ids(scale.plan(2, 2, 100))
    off = scale.stopped(kiosks)
    assert len(off) == 30 == len(set(off))
    assert sum(k.startswith("kiosk-c001") for k in off) == 15
    assert scale.stopped(kiosks, 0) == []
    with pytest.raises(scale.ScaleError):
        scale.stopped(kiosks, 1.5)


def test_the_exponent_fit_recovers_known_growth(scale):
    ns = [25, 50, 100, 200]
    assert scale.fit_exponent(ns, [3.0 * n for n in ns]) == pytest.approx(1.0)
    assert scale.fit_exponent(ns, [0.01 * n ** 2 for n in ns]) == pytest.approx(2.0)
    assert scale.fit_exponent(ns, [35.0] * 4) == pytest.approx(0.0)
    # least squares through noisy points: between the two slopes it averages
    assert 0.4 < scale.fit_exponent([25, 50, 100], [10.0, 20.0, 22.0]) < 1.0
    assert scale.fit_exponent([25], [10.0]) is None
    assert scale.fit_exponent([25, 25], [10.0, 11.0]) is None


@pytest.mark.parametrize(("ns", "values", "field"), [
    ([25, 50], [1.0], "values"), ([25, 50], [1.0, 0.0], "values"), ([25, 50], [1.0, math.nan], "values"),
    ([0, 50], [1.0, 2.0], "ns"),
])
def test_the_fit_refuses_what_has_no_logarithm(scale, ns, values, field):
    with pytest.raises(scale.ScaleError) as err:
        scale.fit_exponent(ns, values)
    assert err.value.field == field


def test_the_projection_follows_the_exponent_from_the_largest_n(scale):
    assert scale.project([25, 50], [10.0, 20.0], 1000) == pytest.approx(400.0)
    assert scale.project([50, 25], [40.0, 40.0], 1000) == pytest.approx(40.0)
    assert scale.project([25], [10.0], 1000) is None


def _run(wall, top, cpu, rc=0):
    return {"wall": wall, "top_cpu": top, "run_cpu": cpu, "rc": rc}


def test_the_table_has_a_line_per_runner_and_n_and_the_exponents(scale):
    results = [
        {"kiosks": 50, "runs": {"kiosk_fleet.ping": _run(4.0, 0.8, 2.0), "kiosk_power.plan (30% off)": _run(40.0, 2.0, 3.0, 1)},
         "rss_mib": [60.0, 64.0, 62.0], "notes": [("start-up", "80 s")]},
        {"kiosks": 25, "runs": {"kiosk_fleet.ping": _run(2.0, 0.4, 1.0), "kiosk_power.plan (30% off)": _run(40.0, 1.0, 3.0, 1)},
         "rss_mib": [61.0], "notes": []},
    ]
    text = scale.format_table(results, target=1000)
    lines = text.splitlines()
    ping = [line for line in lines if line.startswith("kiosk_fleet.ping ")]
    assert [line.split()[1] for line in ping[:2]] == ["25", "50"]  # sorted by N
    assert ping[0].split()[2:6] == ["2.0", "0.40", "1.00", "0"]
    # exponents: ping doubles with N (1.00 everywhere), plan's wall is flat, its top CPU doubles
    assert ping[2].split()[1:] == ["1.00", "1.00", "1.00", "80"]
    plan_fit = [line for line in lines if line.startswith("kiosk_power.plan (30% off)")][-1]
    assert plan_fit.split()[3:] == ["0.00", "1.00", "0.00", "40"]
    assert "growth exponent over N = 25, 50" in text
    assert "N=50: RSS per kiosk minion median 62 MiB (min 60, max 64)" in text and "start-up 80 s" in text


def test_describe_names_the_daemons_it_would_start(scale):
    lines = scale.describe(scale.plan(2, 2, 25))
    assert lines[0] == "top master top on 127.0.130.1 (ports 4505/4506)"
    assert "pi-c001-1 on 127.0.141.2:4506" in lines[1]
    assert lines[-1] == "38 daemons; 8 kiosks stopped for the 30 % runs"


def test_master_settings_parse_to_yaml_values_and_bad_ones_are_named(scale):
    assert scale.parse_master_opts(["gather_job_timeout=10", "syndic_wait=5", "zmq_filtering=true"]) == {
        "gather_job_timeout": 10, "syndic_wait": 5, "zmq_filtering": True}
    assert scale.parse_master_opts([]) == {}
    for bad in (["gather_job_timeout"], ["interface=0.0.0.0"], ["syndic_wait=soon"], ["worker_threads=true"]):
        with pytest.raises(scale.ScaleError) as err:
            scale.parse_master_opts(bad)
        assert err.value.field == "master-opt"
        assert bad[0] in str(err.value)


def test_runs_are_selected_by_label_words_and_an_unknown_word_is_named(scale):
    assert scale.selected_runs(None) == scale.RUNS
    verify = scale.selected_runs("verify,status")
    assert {label for label, _, _ in verify} == {"kiosk_power.verify", "kiosk_release.status"}
    assert all(argv[0] in ("kiosk_power.verify", "kiosk_release.status") for _, argv, _ in verify)
    with pytest.raises(scale.ScaleError) as err:
        scale.selected_runs("reboot")
    assert err.value.field == "runs"


def test_the_table_shows_the_machine_cpu_and_how_busy_the_cores_were(scale):
    run = dict(_run(4.0, 0.5, 2.0), machine_cpu=6.0)
    text = scale.format_table([{"kiosks": 25, "cores": 2, "runs": {"kiosk_fleet.ping": run}, "rss_mib": []}])
    line = [row for row in text.splitlines() if row.startswith("kiosk_fleet.ping ")][0]
    assert line.split()[2:] == ["4.0", "0.50", "2.00", "0", "6.0", "75%"]  # 6 CPU s over 4 s x 2 cores
    older = scale.format_table([{"kiosks": 25, "runs": {"kiosk_fleet.ping": _run(4.0, 0.5, 2.0)}}])
    assert [row for row in older.splitlines() if row.startswith("kiosk_fleet.ping ")][0].split()[-2:] == ["-", "-"]


def test_stop_children_reaps_its_children_so_none_is_left_as_a_zombie(scale):
    import os
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
             for _ in range(2)]
    scale.stop_children({f"sleeper {i}": p.pid for i, p in enumerate(procs)}, grace=10)
    for proc in procs:
        with pytest.raises(ChildProcessError):  # reaped by stop_children, not left for anyone to wait on
            os.waitpid(proc.pid, os.WNOHANG)
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)


def test_kiosks_start_in_batches_and_a_bad_batch_size_is_named(scale):
    assert scale.batches(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert scale.batches([], 25) == []
    for bad in (0, -1, True, "25"):
        with pytest.raises(scale.ScaleError) as err:
            scale.batches(["a"], bad)
        assert err.value.field == "start-batch"


def test_artifacts_are_named_by_size_and_run_and_only_with_a_folder(scale, tmp_path):
    assert scale.artifact(None, 50, "kiosk_release.status (30% off)", ".log") is None
    path = scale.artifact(tmp_path / "dbg", 50, "kiosk_release.status (30% off)", ".log")
    assert path == tmp_path / "dbg" / "N50-kiosk_release_status_30_off_.log" and path.parent.is_dir()
