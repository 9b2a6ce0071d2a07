"""
How the pack's loader modules find the utilities, checked through Salt's own loader.

Every file of ``_modules/``, ``_runners/``, ... imports the utilities with one rule
(see ``_utils/README.md``): from the installed ``saltext_kiosk_fleet.utils`` package
when there is one, else by bare name from the synced ``_utils`` folder that Salt's
loader puts on ``sys.path`` while it loads. No ``ImportError`` is caught.

Each case runs in a fresh interpreter so that the utilities already imported by
this test process (``pythonpath = _utils``) cannot answer in place of the copies
under test.
"""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]

# Loads _modules/kiosk_fleet.py the way a minion does: LazyLoader over the
# module folder, with the utils folders as extra_module_dirs (salt.loader.minion_mods
# passes utils.module_dirs there: extmods/utils, utils_dirs and the installed
# package's utils folder).
PROBE = textwrap.dedent(
    """
    import json, sys
    import salt.config
    import salt.loader.lazy

    modules_dir, utils_dirs = sys.argv[1], json.loads(sys.argv[2])
    opts = dict(salt.config.DEFAULT_MINION_OPTS)
    opts.update(grains={}, pillar={}, id="probe")
    loader = salt.loader.lazy.LazyLoader(
        [modules_dir], opts, tag="module", extra_module_dirs=utils_dirs
    )
    out = {"loaded": "kiosk_fleet.whoami" in loader}
    if out["loaded"]:
        inventory = loader["kiosk_fleet.whoami"].func.__globals__["fleet_inventory"]
        out["inventory"] = inventory.__file__
        out["fields"] = inventory.fleet_fields.__file__
    else:
        out["missing"] = str(loader.missing_modules.get("kiosk_fleet"))
    print(json.dumps(out))
    """
)


def _probe(tmp_path, utils_dirs, site=None):
    modules = tmp_path / "modules"
    modules.mkdir()
    shutil.copy(REPO / "_modules" / "kiosk_fleet.py", modules)
    env = {"PATH": "/usr/bin:/bin"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(modules), json.dumps([str(d) for d in utils_dirs])],
        cwd=tmp_path,  # not the repo: its saltext_kiosk_fleet/ must not be found
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _synced_utils(tmp_path):
    """A copy of _utils as saltutil.sync_utils leaves it in extmods/utils."""
    synced = tmp_path / "extmods" / "utils"
    shutil.copytree(REPO / "_utils", synced, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    return synced


def _installed_package(tmp_path):
    """The layout pip install leaves in site-packages (setup.cfg package_dir)."""
    site = tmp_path / "site"
    pkg = site / "saltext_kiosk_fleet"
    shutil.copytree(REPO / "saltext_kiosk_fleet", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "_utils", pkg / "utils", ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    (pkg / "utils" / "__init__.py").touch()
    return site, pkg / "utils"


def test_synced_utilities_load_by_bare_name(tmp_path):
    synced = _synced_utils(tmp_path)
    out = _probe(tmp_path, [synced])
    assert out["loaded"], out
    assert out["inventory"] == str(synced / "fleet_inventory.py")
    assert out["fields"] == str(synced / "fleet_fields.py")


def test_a_utility_missing_a_dependency_shows_that_error(tmp_path):
    synced = _synced_utils(tmp_path)
    broken = synced / "fleet_inventory.py"
    broken.write_text("import kiosk_no_such_dependency  # noqa: F401\n" + broken.read_text())
    out = _probe(tmp_path, [synced])
    assert not out["loaded"]
    # the loader reports the utility's own failure, not a missing saltext_kiosk_fleet
    assert "kiosk_no_such_dependency" in out["missing"], out
    assert "saltext_kiosk_fleet" not in out["missing"], out


def test_a_broken_installed_utility_shows_its_error_too(tmp_path):
    synced = _synced_utils(tmp_path)
    site, installed = _installed_package(tmp_path)
    broken = installed / "fleet_fields.py"
    broken.write_text("import kiosk_no_such_dependency  # noqa: F401\n" + broken.read_text())
    out = _probe(tmp_path, [synced, installed], site=site)
    # the good synced copy does not quietly stand in for the broken installed one
    assert not out["loaded"]
    assert "kiosk_no_such_dependency" in out["missing"], out


def test_the_installed_package_wins_over_a_synced_copy(tmp_path):
    # extmods/utils comes first on the loader's path, as salt.loader._module_dirs orders it
    synced = _synced_utils(tmp_path)
    site, installed = _installed_package(tmp_path)
    out = _probe(tmp_path, [synced, installed], site=site)
    assert out["loaded"], out
    assert out["inventory"] == str(installed / "fleet_inventory.py")
    # and the utilities import each other from the same place
    assert out["fields"] == str(installed / "fleet_fields.py")
