"""
A wineserver for one test Wine prefix, started and stopped by its pid.

The tests start the server themselves (``wineserver -f -p``: foreground, so the
pid Popen gives is the server's; persistent, so it does not exit between
``reg.exe`` calls) before kiosk_reg first touches the prefix; kiosk_reg's own
``wineserver -p`` then finds it running. ``stop`` sends SIGINT to that pid,
which makes the server kill the Wine processes of its prefix (services.exe,
winedevice.exe, ...) and exit, as ``wineserver -k`` does; SIGKILL to the same
pid after a deadline.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import time

import fleet_reg


def env(prefix):
    """Environment for a Wine process of ``prefix``: headless, quiet."""
    out = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out.update({"WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="})
    return out


def reg_argv(*args):
    """``reg.exe`` started the way kiosk_reg starts it (directly, randomisation off)."""
    return fleet_reg.wine_argv(shutil.which("wine"), [fleet_reg.WINE_REG_EXE, *args],
                               setarch=shutil.which("setarch"), machine=os.uname().machine)


class WineServer:
    def __init__(self, prefix):
        self.prefix = pathlib.Path(prefix)
        self.proc = None

    def _socket(self):
        """The server's socket path (Debian names its folder in <prefix>/wineserver; upstream /tmp/.wine-<uid>)."""
        st = self.prefix.stat()
        name = f"server-{st.st_dev:x}-{st.st_ino:x}"
        roots = [pathlib.Path(f"/tmp/.wine-{os.getuid()}")]
        pointer = self.prefix / "wineserver"
        if pointer.is_file():
            roots.insert(0, pathlib.Path("/tmp") / pointer.read_text().strip())
        return [root / name / "socket" for root in roots]

    def start(self, timeout=30):
        self.prefix.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.proc = subprocess.Popen([shutil.which("wineserver"), "-f", "-p"], env=env(self.prefix),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.prefix)
        deadline = time.monotonic() + timeout
        while not any(path.exists() for path in self._socket()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"wineserver for {self.prefix} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"wineserver for {self.prefix} not listening after {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
