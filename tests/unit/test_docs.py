"""The reference under docs/ kept in step with the code.

Every public function of the execution modules, runners and states is named
(``<virtualname>.<function>``) in docs/, and every ``kiosk_*`` function that
README.md or docs/ names exists in the code. Links between the pages point
at files that exist.
"""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = ("_modules", "_runners", "_states")
NAMED = re.compile(r"\b(kiosk_[a-z]+)\.([a-z_][a-z0-9_]*)\b(?!\.[a-z])")
FILE_ENDINGS = {"py", "sls", "prom", "pem", "yaml", "yml", "json", "conf", "png"}
CONFIG_KEYS = {("kiosk_release", "signing_key")}  # the config key as the error message spells it
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _docs():
    return sorted((REPO / "docs").glob("*.md"))


def _public(folder):
    """{virtualname: {public function names}} of one loader folder, read with ast."""
    found = {}
    for path in sorted((REPO / folder).glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        name, alias = path.stem, {}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets = {getattr(t, "id", None) for t in node.targets}
                if "__virtualname__" in targets:
                    name = ast.literal_eval(node.value)
                if "__func_alias__" in targets:
                    alias = ast.literal_eval(node.value)
        funcs = {alias.get(node.name, node.name) for node in tree.body
                 if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
        found.setdefault(name, set()).update(funcs)
    return found


def test_the_reference_has_its_pages():
    names = {path.name for path in _docs()}
    assert {"index.md", "install.md", "security.md", "testing.md", "releases.md"} <= names
    readme = (REPO / "README.md").read_text()
    for page in names:
        assert f"docs/{page}" in readme or f"({page}" in (REPO / "docs" / "index.md").read_text(), page


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_public_function_is_in_the_reference(folder):
    text = "\n".join(path.read_text() for path in _docs())
    missing = [f"{folder}: {module}.{func}" for module, funcs in sorted(_public(folder).items())
               for func in sorted(funcs) if not re.search(rf"\b{re.escape(module)}\.{re.escape(func)}\b", text)]
    assert not missing, "not named in docs/:\n" + "\n".join(missing)


def test_every_function_the_docs_name_exists():
    known = {}
    for folder in FOLDERS:
        for module, funcs in _public(folder).items():
            known.setdefault(module, set()).update(funcs)
    unknown = []
    for path in [REPO / "README.md", *_docs()]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for module, func in NAMED.findall(line):
                # kiosk_fleet.release etc. are SLS names (states/kiosk_fleet/...), not functions
                if (module in known and func not in known[module] and func not in FILE_ENDINGS
                        and (module, func) not in CONFIG_KEYS and not _is_sls(module, func)):
                    unknown.append(f"{path.relative_to(REPO)}:{number}: {module}.{func}")
    assert not unknown, "named but not in the code:\n" + "\n".join(unknown)


def _is_sls(module, name):
    base = REPO / "states" / module
    return (base / f"{name}.sls").exists() or (base / name / "init.sls").exists() or (base / name).is_dir()


def test_links_between_pages_resolve():
    broken = []
    for path in [REPO / "README.md", *_docs()]:
        for target, _anchor in LINK.findall(path.read_text()):
            if "://" in target:
                continue
            if not (path.parent / target).resolve().exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert not broken, "\n".join(broken)


def test_the_check_can_fail():
    # a function that no page names is reported
    text = "\n".join(path.read_text() for path in _docs())
    assert not re.search(r"\bkiosk_power\.no_such_function\b", text)
    assert "no_such_function" not in _public("_runners").get("kiosk_power", set())


def test_the_security_model_in_the_readme_matches_its_page():
    # the README keeps the Security model whole; docs/security.md is the same text
    readme = (REPO / "README.md").read_text()
    assert "\n## Security model\n" in readme
    page = (REPO / "docs" / "security.md").read_text()
    link = re.compile(r"\[(\"[^\"]+\")\]\([^)]*\)")
    lines = [link.sub(r"\1", line) for line in page.splitlines()
             if line.startswith(("| **", "- **")) or line.startswith("  ")]
    missing = [line for line in lines if line not in readme]
    assert lines and not missing, "\n".join(missing)
