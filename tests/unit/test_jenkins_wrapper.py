"""
The Jenkins user's only root command, ``kiosk-salt-run``: it runs kiosk pack
runners with JSON output and refuses everything else. Checked on its pure
rule and end to end (the script run as a process, salt-run replaced by a
recorder that writes its argv).
"""

import importlib.machinery
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
WRAPPER = REPO / "states" / "kiosk_fleet" / "files" / "jenkins" / "kiosk-salt-run"
SUDOERS = REPO / "states" / "kiosk_fleet" / "files" / "jenkins" / "kiosk-jenkins.sudoers"


def load():
    loader = importlib.machinery.SourceFileLoader("kiosk_salt_run", str(WRAPPER))
    spec = importlib.util.spec_from_loader("kiosk_salt_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


wrapper = load()


@pytest.mark.parametrize("argv", [
    ["kiosk_release.status", "kiosk-app", "campuses=east,west"],
    ["kiosk_release.publish", "name=kiosk-app", 'version="1.10"', "source=/var/lib/jenkins/workspace/job/out/app"],
    ["kiosk_release.rollout", "kiosk-app", 'version="1.4.0"', "canary=east", "max_error_share=0.05"],
    ["kiosk_release.rollout", "kiosk-app", "1.4.0", "rings=[[east], [west, north]]"],
    ["kiosk_power.sync_schedules"],
    ["kiosk_power.verify"],
])
def test_pack_runner_calls_pass_with_json_output(argv):
    command = wrapper.check(argv)
    assert command[:3] == ["/usr/bin/salt-run", "--out=json", "--no-color"] and command[3:] == argv


@pytest.mark.parametrize("function", [
    "salt.cmd", "cmd.run", "state.orchestrate", "jobs.lookup_jid", "kiosk_x.status", "kiosk_release",
    "Kiosk_release.status", "kiosk_release.status;id", "kiosk_release._state", "kiosk_release.keygen",
    "kiosk_releasex.status", "", "--version", "-c/tmp/evil",
])
def test_anything_but_a_pack_runner_function_is_refused(function):
    with pytest.raises(wrapper.Refused) as info:
        wrapper.check([function, "arg"])
    assert str(info.value).startswith("function:")


@pytest.mark.parametrize("arg", [
    "--out-file=/root/.ssh/authorized_keys", "-c", "-c/tmp/evil-config", "--config-dir=/tmp", "-l", "--",
    "campuses=east;id", "source=$(id)", "source=`id`", "x|sh", "a&&b", "a>b", "a<b", "x\ny", "tab\there", "nul\0",
    "name='x'", "glob*", "home=~root", "", "x" * 5000,
])
def test_options_and_shell_metacharacters_are_refused(arg):
    with pytest.raises(wrapper.Refused) as info:
        wrapper.check(["kiosk_release.status", arg])
    assert str(info.value).startswith("argument 1:")


def test_too_many_arguments_are_refused():
    with pytest.raises(wrapper.Refused):
        wrapper.check(["kiosk_release.status"] + ["a"] * 40)


@pytest.fixture
def recorder(tmp_path):
    """A copy of the wrapper whose salt-run is a recorder writing its argv to a file."""
    record = tmp_path / "argv.json"
    fake = tmp_path / "salt-run"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\nprint('{{\"result\": true}}')\n")
    fake.chmod(0o755)
    text = WRAPPER.read_text()
    assert text.count('SALT_RUN = "/usr/bin/salt-run"') == 1
    copy = tmp_path / "kiosk-salt-run"
    copy.write_text(text.replace('SALT_RUN = "/usr/bin/salt-run"', f"SALT_RUN = {str(fake)!r}"))
    return copy, record


def run(copy, *args):
    return subprocess.run([sys.executable, "-I", str(copy), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_wrapper_execs_salt_run_with_json_output(recorder):
    copy, record = recorder
    done = run(copy, "kiosk_release.status", "kiosk-app", "campuses=east")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"result": True}
    assert json.loads(record.read_text()) == ["--out=json", "--no-color", "kiosk_release.status", "kiosk-app",
                                              "campuses=east"]


@pytest.mark.parametrize("args", [
    ["salt.cmd", "cmd.run", "id"],
    ["kiosk_release.status", "kiosk-app", "--out-file=/etc/passwd"],
    ["kiosk_release.status", "kiosk-app;id"],
    [],
])
def test_the_wrapper_refuses_before_running_anything(recorder, args):
    copy, record = recorder
    done = run(copy, *args)
    assert done.returncode == 2 and "kiosk-salt-run: refused:" in done.stderr
    assert done.stdout == "" and not record.exists()


def test_the_sudoers_snippet_allows_the_wrapper_only():
    rules = [line for line in SUDOERS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    grants = [r for r in rules if not r.startswith("Defaults")]
    assert grants == ["jenkins ALL=(root) NOPASSWD: /usr/local/sbin/kiosk-salt-run"]
    assert any("env_reset" in r for r in rules)
    # the wrapper the snippet names is the one the Jenkinsfile calls
    assert "'/usr/local/sbin/kiosk-salt-run'" in (REPO / "Jenkinsfile").read_text()
