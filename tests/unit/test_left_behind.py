"""
The topology's last teardown step: whatever still runs with the session's
folder on its command line is killed by pid; a process of another folder
is left alone. Real processes.
"""

import logging
import subprocess
import sys

from tests.support import topology as topo

SLEEPER = "import sys, time; time.sleep(60)"


def test_what_names_the_root_is_killed_and_nothing_else(tmp_path):
    root = tmp_path / "kf"
    other = tmp_path / "kfother"
    mine = subprocess.Popen([sys.executable, "-c", SLEEPER, f"--config-dir={root}/pi-east-1/conf"])
    theirs = subprocess.Popen([sys.executable, "-c", SLEEPER, f"--config-dir={other}/pi-east-1/conf"])
    try:
        killed = topo.kill_left_behind(root, logging.getLogger(__name__))
        assert list(killed) == [mine.pid]
        assert mine.wait(timeout=10) == -9
        assert theirs.poll() is None
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait()
