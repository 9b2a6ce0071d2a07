"""The shipped Jenkinsfile calls runners that exist, always with JSON output through one helper."""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]


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
    text = (REPO / "Jenkinsfile").read_text()
    called = set(re.findall(r"'(kiosk_[a-z]+\.[a-z_]+)'", text))
    assert {"kiosk_release.publish", "kiosk_release.rollout", "kiosk_release.status",
            "kiosk_release.rollback", "kiosk_power.sweep", "kiosk_power.verify"} <= called
    assert called - runner_functions() == set()


def test_salt_run_is_only_called_through_the_json_helper():
    text = (REPO / "Jenkinsfile").read_text()
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    # the only place that names salt-run builds the argument list with --out=json
    assert code.count("'salt-run'") == 1 and "'--out=json'" in code
    assert re.search(r"returnStatus: true", code) and "error(" in code
    # no shell string with salt-run built from parameters
    assert not re.search(r"""sh\s*\(?\s*(script:\s*)?["']\s*(sudo\s+)?salt-run""", code)


def test_no_parameter_is_interpolated_into_a_shell_script():
    code = (REPO / "Jenkinsfile").read_text()
    scripts = re.findall(r"sh\s*\(\s*script:\s*(\"[^\"]*\"|'[^']*')", code)
    assert scripts, "expected at least one sh(script: ...) step"
    for script in scripts:
        assert "${" not in script or script.startswith("'"), script  # Groovy interpolates "..." only
        assert "params." not in script, script
