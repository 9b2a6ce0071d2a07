"""``salt-call --local`` with a minion config of the test's own: Salt's loaders and states, no daemon."""

import json
import pathlib
import subprocess
import sys

BIN = pathlib.Path(sys.executable).parent


def salt_call(config_dir, *args):
    """
    ``salt-call --local -c <config_dir> --out=json <args>`` (a minion config
    in ``config_dir``): ``(exit code, the return, stderr)``, or the raw stdout
    in place of the return when it is no JSON (an error message).
    """
    out = subprocess.run(
        [str(BIN / "salt-call"), "--local", "-c", str(config_dir), "--out=json", *args],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL, cwd=config_dir,
    )
    try:
        return out.returncode, json.loads(out.stdout or "{}").get("local"), out.stderr
    except json.JSONDecodeError:  # an error message rather than a return
        return out.returncode, out.stdout, out.stderr
