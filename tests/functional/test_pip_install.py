"""
The pack as a pip-installed Salt extension: ``pip install .`` into a venv of
its own makes every module, state, runner and beacon visible to a stock salt,
through the ``salt.loader`` entry point alone (no module_dirs, no sync).
The dependencies come from the suite's venv (see ``clean_venv``); that pip
resolves them from setup.cfg is not tested here.
"""

import json
import pathlib
import subprocess
import sys
import sysconfig
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# one loader per pack folder; the loader names the functions "<module>.<function>"
LOADERS = {"_modules": "minion_mods", "_states": "states", "_runners": "runner", "_beacons": "beacons",
           "_grains": "grains"}

PROBE = textwrap.dedent(
    """
    import json, sys
    import salt.config, salt.loader
    minion = salt.config.minion_config(sys.argv[1])
    master = salt.config.master_config(sys.argv[2])
    minion["enable_fqdns_grains"] = False  # no reverse-DNS lookups (network rule)
    minion["grains"] = salt.loader.grains(minion)
    utils = salt.loader.utils(minion)
    mods = salt.loader.minion_mods(minion, utils=utils)
    found = {
        "minion_mods": sorted(mods),
        "states": sorted(salt.loader.states(minion, mods, utils, {})),
        "runner": sorted(salt.loader.runner(master, utils=salt.loader.utils(master))),
        "beacons": sorted(salt.loader.beacons(minion, mods)),
        # grains modules by their functions' module names: "<module>.<function>"
        "grains": sorted(salt.loader.grain_funcs(minion)),
    }
    # the path each pack module was loaded from: must be the installed package
    found["paths"] = sorted(v[0] for k, v in mods.file_mapping.items() if k.startswith("kiosk_"))
    print(json.dumps(found))
    """
)


def pack_modules(folder):
    return sorted(p.stem for p in (REPO / folder).glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory):
    """
    A venv of its own holding the pack as pip installs it (wheel built from
    the checkout, its dist-info and ``salt.loader`` entry point), and nothing
    else: Salt and the other dependencies are the suite's, on its path by one
    ``.pth`` line. Installing Salt itself again took 3-4 minutes of both cores
    beside the integration tests, and tells nothing about the pack.
    """
    root = tmp_path_factory.mktemp("pipvenv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    suite_site = sysconfig.get_paths()["purelib"]
    assert not list(pathlib.Path(suite_site).glob("saltext_kiosk_fleet*")), "the suite's venv must not hold the pack"
    (pathlib.Path(site) / "suite-dependencies.pth").write_text(suite_site + "\n")
    # offline: the build backend (setuptools, wheel) from the wheelhouse .ci/bootstrap built;
    # no dependencies (they are the suite's)
    wheelhouse = REPO / ".venv" / "wheelhouse"
    if not wheelhouse.is_dir():
        pytest.skip(f"no wheelhouse at {wheelhouse}: run .ci/bootstrap")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--find-links", str(wheelhouse), "--no-deps", "--target", site, str(REPO)],
        capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    conf = root / "conf"
    conf.mkdir()
    (conf / "minion").write_text(
        f"file_client: local\nroot_dir: {root / 'r'}\nid: kiosk-pip-01\nuser: root\nenable_fqdns_grains: false\n"
    )
    (conf / "master").write_text(f"root_dir: {root / 'r'}\nuser: root\n")
    return venv, conf


def test_salt_call_lists_the_pack_modules(clean_venv):
    venv, conf = clean_venv
    out = subprocess.run(
        # salt-call as its console script runs it, under the venv's interpreter
        [str(venv / "bin" / "python"), "-c", "from salt.scripts import salt_call; salt_call()",
         "--local", "-c", str(conf), "sys.list_modules", "--out=json"],
        capture_output=True, text=True, timeout=300, check=False, cwd=conf,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    listed = json.loads(out.stdout)["local"]
    assert set(pack_modules("_modules")) <= set(listed), listed


def test_every_pack_folder_is_visible_through_the_entry_point(clean_venv):
    venv, conf = clean_venv
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE, str(conf / "minion"), str(conf / "master")],
        # not from the repo root: its saltext_kiosk_fleet/ would shadow the installed one
        capture_output=True, text=True, timeout=300, check=False, cwd=conf,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    checked = 0
    for folder, loader in LOADERS.items():
        for name in pack_modules(folder):
            assert any(f.startswith(f"{name}.") for f in found[loader]), f"{folder}/{name}.py not in {loader}"
            checked += 1
    assert checked >= 2  # the pack has modules and runners at the very least
    # loaded from the installed extension package, not from a checkout
    assert found["paths"] and all(
        "/site-packages/saltext_kiosk_fleet/modules/" in p for p in found["paths"]
    ), found["paths"]
