"""
How `kiosk-lab down` tells a daemon gone: a zombie is not running, and a
process that ignores SIGTERM is killed and waited for before down returns.
Real processes, started and stopped by pid.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

from lab import kiosk_lab

# a child that ignores SIGTERM and says so once it does
STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def state(pid):
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_zombie_is_not_alive_and_a_running_process_is():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert kiosk_lab.alive(child.pid)
        child.kill()
        deadline = time.time() + 10
        # killed, not reaped: a zombie, which os.kill(pid, 0) still finds
        while time.time() < deadline and state(child.pid) != "Z":
            time.sleep(0.05)
        os.kill(child.pid, 0)
        assert not kiosk_lab.alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not kiosk_lab.alive(child.pid)


def test_stop_processes_kills_what_ignores_sigterm_and_returns_once_it_is_gone(capsys):
    # a session of its own, as the lab starts its daemons: stop_processes signals the group
    child = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        began = time.monotonic()
        kiosk_lab.stop_processes({"stubborn": child.pid}, grace=0.5)
        assert time.monotonic() - began < kiosk_lab.KILL_WAIT_S
        # gone the moment stop_processes returns (a zombie until this test, its parent, reaps it)
        assert not kiosk_lab.alive(child.pid)
        assert child.wait(timeout=5) == -signal.SIGKILL
        assert "stubborn (pid" in capsys.readouterr().out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
