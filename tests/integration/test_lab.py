"""
The lab as an operator runs it: `kiosk-lab up`, the fleet answering through
the Pis, a simulated kiosk woken by a real magic packet, `kiosk-lab down`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import fleet_wol

pytestmark = pytest.mark.topology

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
OFF_KIOSK = "kiosk-hillside-03"


def lab(run, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lab.kiosk_lab", "--dir", str(run), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )


def salt(run, *args):
    out = subprocess.run(
        [str(BIN / "salt"), "-c", str(run / "top"), "--out=json", "--static", "--timeout=15", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )
    return json.loads(out.stdout or "{}")


def port_open(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout, step=1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def lab_run():
    run = pathlib.Path(tempfile.mkdtemp(prefix="kl", dir="/tmp"))
    up = lab(run, "up", "--off", OFF_KIOSK)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield run, up.stdout
    finally:
        pids = json.loads((run / "pids.json").read_text()) if (run / "pids.json").exists() else {}
        down = lab(run, "down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [name for name, pid in pids.items() if alive(pid)], "kiosk-lab down left processes running"


def test_lab_up_prints_the_config_dir_and_every_minion_answers(lab_run):
    run, stdout = lab_run
    assert f"-c {run / 'top'}" in stdout
    answered = salt(run, "*", "test.ping")
    assert answered == {
        m: True
        for m in [
            "kiosk-hillside-01", "kiosk-hillside-02", "kiosk-riverside-01", "kiosk-riverside-02",
            "kiosk-riverside-10", "kiosk-riverside-11",
            "pi-hillside-1", "pi-hillside-2", "pi-riverside-1", "pi-riverside-2",
        ]
    }


def salt_run(run, *args):
    out = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(run / "top"), "--out=json", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return out.returncode, json.loads(out.stdout or "{}")


def sim_state(run):
    return json.loads((run / "sim-state.json").read_text())


def test_kiosk_power_wake_and_shutdown_cycle_a_simulated_kiosk(lab_run):
    run, _ = lab_run
    assert not port_open("127.0.3.13", 3389)
    code, report = salt_run(run, "kiosk_power.wake", f"kiosks={OFF_KIOSK}")
    assert code == 0, report
    assert sorted(report["kiosks"][OFF_KIOSK]["sent_by"]) == ["pi-hillside-1", "pi-hillside-2"]
    assert wait_for(lambda: port_open("127.0.3.13", 3389), 20), "service port did not open"
    # it boots, its startup state fires kiosk/boot, the top master's reactor
    # syncs the pack to it: then kiosk_power answers
    assert wait_for(lambda: isinstance(salt(run, OFF_KIOSK, "kiosk_power.status").get(OFF_KIOSK), dict), 120, step=3)
    # two Pis x 3 repeats reached the simulated NIC; the first one woke it
    assert sim_state(run)[OFF_KIOSK]["packets"] == 6
    code, report = salt_run(run, "kiosk_power.shutdown", f"kiosks={OFF_KIOSK}", "delay_s=1")
    assert code == 0, report
    assert report["accepted"] == [OFF_KIOSK]
    assert wait_for(lambda: not port_open("127.0.3.13", 3389), 30), "service port still open"
    status = lab(run, "status")
    assert f"{OFF_KIOSK:<24} power off" in status.stdout


def test_a_magic_packet_on_the_wrong_vlan_wakes_nothing(lab_run):
    run, _ = lab_run
    before = sim_state(run)
    # kiosk-riverside-01's MAC, broadcast on hillside's lobby VLAN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(fleet_wol.magic_packet("52:54:00:10:01:01"), ("127.0.3.255", 40009))
    time.sleep(1)
    assert sim_state(run) == before
