"""
The habits of the repository, checked on every run of the suite.

- ruff with the configuration in pyproject.toml;
- salt-lint over every SLS with the configuration in .salt-lint;
- every public loader function (modules, states, runners, beacons, grains)
  shows a ``CLI Example:`` with a salt command line;
- one rule for importing the utilities (see _utils/README.md);
- no issue numbers in comments: they mean nothing to a reader of the repository.

.pre-commit-config.yaml runs the same ruff and salt-lint.
"""

import ast
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
LOADER_FOLDERS = ("_modules", "_states", "_runners", "_beacons", "_grains")
CODE_FOLDERS = LOADER_FOLDERS + ("_utils",)
IMPORT_RULE = ast.unparse(ast.parse(
    'importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils")',
    mode="eval",
).body)
# build/ and dist/: what pip and setuptools leave behind (ignored by git), not sources
SKIP_DIRS = {".git", ".venv", ".hypothesis", "__pycache__", "docs", "build", "dist"}


def _files(*patterns):
    found = set()
    for pattern in patterns:
        for path in REPO.rglob(pattern):
            if not SKIP_DIRS.intersection(path.relative_to(REPO).parts) and path.is_file():
                found.add(path)
    return sorted(found)


def _code_files():
    return [path for folder in CODE_FOLDERS for path in sorted((REPO / folder).glob("*.py"))]


def _tool(name):
    """The console script installed beside this interpreter (the venv's), else on PATH."""
    beside = pathlib.Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    assert path, f"{name} is not installed: it is in setup.cfg's tests extra (.ci/bootstrap installs it)"
    return path


def test_ruff_finds_nothing():
    proc = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_salt_lint_finds_nothing_in_any_sls():
    sls = [str(path.relative_to(REPO)) for path in _files("*.sls")]
    assert len(sls) > 10, sls  # the pillar, the reactors and the states are all found
    proc = subprocess.run(
        [_tool("salt-lint"), "-c", ".salt-lint", *sls],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _public_functions(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]


def test_every_public_loader_function_has_a_cli_example():
    missing = []
    count = 0
    for folder in LOADER_FOLDERS:
        for path in sorted((REPO / folder).glob("*.py")):
            for func in _public_functions(path):
                count += 1
                doc = ast.get_docstring(func) or ""
                _, found, after = doc.partition("CLI Example")
                if not found or not re.search(r"^\s*salt(-run|-call|-key)?\s", after, re.M):
                    missing.append(f"{path.relative_to(REPO)}:{func.lineno} {func.name}")
    assert count > 50, count  # the check saw the pack's functions
    assert not missing, "no 'CLI Example:' with a salt command line in: " + ", ".join(missing)


def test_cli_example_check_can_fail(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text('def good():\n    """\n    CLI Example:\n\n        salt k mod.good\n    """\n\n'
                      'def bad():\n    """Nothing to show."""\n\n'
                      'def _private():\n    pass\n')
    undocumented = [f.name for f in _public_functions(module) if "CLI Example" not in (ast.get_docstring(f) or "")]
    assert undocumented == ["bad"]


def _utility_imports(tree):
    """(node, parent) for every import of a pack utility."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        bare = isinstance(node, ast.Import) and any(alias.name.startswith("fleet_") for alias in node.names)
        installed = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saltext_kiosk_fleet")
        if bare or installed:
            yield node, parents[node]


@pytest.mark.parametrize("path", _code_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_utilities_are_imported_by_the_one_rule(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node, parent in _utility_imports(tree):
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        assert isinstance(parent, ast.If), f"{where}: a utility imported outside the import rule's if/else"
        assert ast.unparse(parent.test) == IMPORT_RULE, f"{where}: a different test than the import rule"
        if isinstance(node, ast.ImportFrom):
            assert node in parent.body, f"{where}: the installed package belongs in the if branch"
        else:
            assert node in parent.orelse, f"{where}: the bare (synced) import belongs in the else branch"
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and list(_utility_imports(ast.Module(body=node.body, type_ignores=[]))):
            pytest.fail(f"{path.relative_to(REPO)}:{node.lineno}: a utility import inside try/except")


def test_utilities_have_no_loader_boilerplate():
    # Salt's utils loader names a module by its file; nothing calls __virtual__ in _utils
    for path in sorted((REPO / "_utils").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        names |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                  if isinstance(t, ast.Name)}
        assert not names & {"__virtual__", "__virtualname__"}, path.name


ISSUE_NUMBER = re.compile(r"\b(issues?|tickets? in the tracker)\s*(no\.?\s*)?#?\d+\b|(?<![\w/-])#\d{1,4}\b", re.I)


def test_no_issue_numbers_in_comments():
    # README.md and docs/ are the documentation's own; data such as "ticket 42" is fine
    found = []
    for path in _files("*.py", "*.sls", "*.yaml", "*.yml", "*.conf", "*.cfg", "*.toml", "*.md", "*.sh", "run",
                       "bootstrap", "Jenkinsfile"):
        if path == REPO / "README.md":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ISSUE_NUMBER.search(line) and "saltstack/salt" not in line:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, node.lineno


def test_utilities_import_nothing_of_salt():
    # _utils/README.md: a utility gets what it needs from Salt as arguments
    found = [f"_utils/{path.name}:{line} {name}" for path in sorted((REPO / "_utils").glob("*.py"))
             for name, line in _imported_modules(path) if name == "salt" or name.startswith("salt.")]
    assert not found, found


def test_product_code_never_imports_the_tests():
    paths = _code_files() + sorted((REPO / "lab").glob("*.py"))
    found = [f"{path.relative_to(REPO)}:{line} {name}" for path in paths
             for name, line in _imported_modules(path) if name == "tests" or name.startswith("tests.")]
    assert not found, found
