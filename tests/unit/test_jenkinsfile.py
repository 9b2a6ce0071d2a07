"""The shipped Jenkinsfile: runners that exist, called only through the root wrapper, parameters checked first."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TEXT = (REPO / "Jenkinsfile").read_text()
CODE = "\n".join(line.split("//")[0] for line in TEXT.splitlines())


def runner_functions():
    found = set()
    for path in (REPO / "_runners").glob("*.py"):
        tree = ast.parse(path.read_text())
        virtual = next((n.value.value for n in tree.body if isinstance(n, ast.Assign)
                        and getattr(n.targets[0], "id", "") == "__virtualname__"), path.stem)
        found |= {f"{virtual}.{n.name}" for n in tree.body
                  if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    return found


def test_every_runner_the_pipeline_calls_exists():
    called = set(re.findall(r"'(kiosk_[a-z]+\.[a-z_]+)'", TEXT))
    assert {"kiosk_release.publish", "kiosk_release.rollout", "kiosk_release.status",
            "kiosk_release.rollback", "kiosk_power.sweep", "kiosk_power.verify"} <= called
    assert called - runner_functions() == set()


def test_the_sweep_stage_lets_the_campuses_decide_then_checks_every_managed_kiosk_once():
    stage = CODE[CODE.index("stage('Power sweep')"):CODE.index("stage('Status')")]
    calls = re.findall(r"'(kiosk_[a-z]+\.[a-z_]+)'", stage)
    assert calls == ["kiosk_power.sync_schedules", "kiosk_power.sweep", "kiosk_power.verify"]
    # the verify is an explicit check now, after the campuses' own +15 min check: not the due mode,
    # which checks only what the top master recorded (nothing, now that the campuses decide)
    assert "'explicit=True'" in stage
    assert stage.index("sleep(time: 15, unit: 'MINUTES')") < stage.index("'kiosk_power.verify'")
    assert '"campus=${params.CAMPUSES}"' in stage


def test_runners_are_only_called_through_the_wrapper():
    # the only command run with sudo is the wrapper, from one helper; never salt-run itself
    assert CODE.count("'sudo'") == 1 and "['sudo', '-n', '/usr/local/sbin/kiosk-salt-run']" in CODE
    assert "salt-run" not in CODE.replace("kiosk-salt-run", "")
    assert "--out-file" not in CODE  # the wrapper takes no salt-run option; its stdout is the JSON
    assert re.search(r"returnStatus: true", CODE) and "error(" in CODE


def test_the_install_command_is_no_parameter_and_comes_from_the_package():
    params = re.findall(r"(?:string|choice)\(name: '([A-Z_]+)'", CODE)
    assert "INSTALL" not in params and "PACKAGE" in params
    assert "install=" not in CODE
    assert "kiosk-install.json" in CODE and "readJSON(file: installFile)" in CODE


def test_every_parameter_is_checked_before_use():
    for field in ("RELEASE_NAME", "VERSION", "PACKAGE", "CANARY", "CAMPUSES", "MAX_ERROR_SHARE"):
        assert re.search(rf"checked\('{field}', params\.{field}, [A-Z]+_PATTERN\)", CODE), field
    stages = re.findall(r"stage\('([^']+)'\)", CODE)
    assert stages[0] == "Check parameters"


def groovy_pattern(name):
    return re.search(rf"^{name} = /(.*)/$", TEXT, re.M).group(1).replace("\\/", "/")


@pytest.mark.parametrize("package, ok", [
    ("out/kiosk-app", True), ("build/out/kiosk-app-1.4.0", True), ("out", True),
    ("../out", False), ("out/../../etc", False), ("/etc/passwd", False), ("out/.hidden", False),
    ("out//x", False), ("out/x;id", False), ("out/$(id)", False), ("", False), ("out/x y", False),
])
def test_package_pattern(package, ok):
    # Groovy's ==~ matches the whole string, like re.fullmatch
    assert bool(re.fullmatch(groovy_pattern("PACKAGE_PATTERN"), package)) is ok


@pytest.mark.parametrize("name, value, ok", [
    ("VERSION_PATTERN", "1.10", True), ("VERSION_PATTERN", "1.4.0.7", True), ("VERSION_PATTERN", "1.x", False),
    ("VERSION_PATTERN", "1.0;id", False), ("NAMES_PATTERN", "east,west", True), ("NAMES_PATTERN", "east;id", False),
    ("SHARE_PATTERN", "0.05", True), ("SHARE_PATTERN", "1", True), ("SHARE_PATTERN", "1.5", False),
    ("NAME_PATTERN", "kiosk-app", True), ("NAME_PATTERN", "-x", False),
])
def test_parameter_patterns(name, value, ok):
    assert bool(re.fullmatch(groovy_pattern(name), value)) is ok


def test_no_parameter_is_interpolated_into_a_shell_script():
    scripts = re.findall(r"sh\s*\(\s*script:\s*([^,]+),", CODE)
    assert scripts, "expected at least one sh(script: ...) step"
    for script in scripts:
        assert "params." not in script and "${" not in script, script  # Groovy interpolates "..." only
