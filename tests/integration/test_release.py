"""
Versioned releases on the topology: top master -> Pi syndics -> kiosks.

Real parts: the master's store is exported by nginx (the Pis stage over HTTP
from it), every Pi serves its repository with nginx (the shipped template),
kiosks download from their Pis with requests, the reactors drive the
published -> staged -> push chain. Bytes are counted from nginx's access logs.

The tests run in file order and build on each other (one release history).
"""

import hashlib
import json
import os
import pathlib
import sys
import threading
import time

import pytest

from tests.support import topology as topo
from tests.support.nginx import nginx_binary, topology_repos

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
]

NAME = "kiosk-app"
MB = 1 << 20
BIG = 50 * MB  # the generated 50 MB package
SMALL = 3 * MB

INSTALL_SCRIPT = """\
import pathlib, sys
package = pathlib.Path(sys.argv[1])
(package / "INSTALLED").write_text(sys.argv[2])
with open(package.parent / "install.log", "a") as log:
    log.write(sys.argv[2] + "\\n")
"""
INSTALL = json.dumps([sys.executable, "{dir}/install.py", "{dir}", "{version}"])


class Fleet:
    """The topology plus its release servers and paths."""

    def __init__(self, topology, master, pis, build_dir):
        self.t = topology
        self.master = master  # nginx exporting the master's store
        self.pis = pis  # {pi id: nginx serving its repository}
        self.build_dir = build_dir
        self.store = pathlib.Path(topology.top.config["kiosk_release"]["store"])

    def campus_spec(self, campus):
        return self.t.inventory["kiosk_fleet"]["campuses"][campus]

    def kiosks(self, campus=None):
        campuses = [campus] if campus else ["east", "west"]
        return sorted(k for c in campuses for k in self.campus_spec(c)["kiosks"])

    def pi_repo(self, pi_id):
        return pathlib.Path(self.t.release_dir["root"]) / "repo" / pi_id

    def kiosk_dir(self, kiosk_id):
        return pathlib.Path(self.t.release_dir["root"]) / "kiosk" / kiosk_id

    def build(self, version, size, seed):
        """A package directory: app.bin (pseudo-random, ``size`` bytes) and install.py."""
        out = self.build_dir / version
        out.mkdir(parents=True, exist_ok=True)
        block = hashlib.sha256(f"{seed}".encode()).digest() * (MB // 32)
        with open(out / "app.bin", "wb") as handle:
            left, n = size, 0
            while left > 0:
                chunk = bytes([n % 251]) + block[1:]  # every MiB differs
                handle.write(chunk[:left])
                left -= len(chunk)
                n += 1
        (out / "install.py").write_text(INSTALL_SCRIPT)
        return out

    def installed(self, campus=None):
        """{kiosk: installed version or None}, asked through the syndics."""
        kiosks = self.kiosks(campus)
        result = self.t.salt("-L", "kiosk_pkg.installed", NAME, tgt=",".join(kiosks))
        data = result.data if isinstance(result.data, dict) else {}
        return {k: (data.get(k) or {}).get("version") if isinstance(data.get(k), dict) else None for k in kiosks}

    def wait_installed(self, version, campus=None, timeout=180):
        deadline = time.time() + timeout
        seen = {}
        while time.time() < deadline:
            seen = self.installed(campus)
            if all(v == version for v in seen.values()):
                return seen
            time.sleep(3)
        raise AssertionError(f"kiosks not on {version} after {timeout}s: {seen}")

    def master_bytes(self, version, file_name="app.bin"):
        return self.master.bytes_served(f"/kiosk-releases/{NAME}/{version}/{file_name}")

    def install_log(self, kiosk_id):
        path = self.kiosk_dir(kiosk_id) / NAME / "install.log"
        return path.read_text().split() if path.exists() else []


@pytest.fixture(scope="module")
def fleet(topology):
    with topology_repos(topology, topo.MASTER_EXPORT_ADDRESS) as (master, pis):
        # builds are made under the top master's kiosk_release:source_root (publish reads nothing else)
        yield Fleet(topology, master, pis, pathlib.Path(topology.release_dir["builds"]))


def alerts(topology, version):
    return [p["json"] for p in topology.webhook.posts
            if "json" in p and p["json"].get("kind") == "kiosk_release" and p["json"].get("version") == version]


def test_publish_crosses_the_wan_once_per_campus_and_reaches_every_kiosk_by_reactor(fleet):
    # before anything is staged for the campus, a kiosk's check (its boot state) has nothing to do: no failure
    early = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-east-01")
    assert early.returncode == 0 and early.data["releases"][NAME]["repos_down"] == {}, early
    build = fleet.build("1.0.0", BIG, seed=1)
    size = (build / "app.bin").stat().st_size
    md5 = hashlib.md5((build / "app.bin").read_bytes()).hexdigest()
    result = fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", "version=1.0.0", f"source={build}",
                              f"install={INSTALL}", "campuses=east,west")
    assert result.returncode == 0, result
    assert result.data["files"]["app.bin"]["md5"] == md5 and result.data["bytes"] > size
    # reactors: published -> stage on the Pis -> staged -> push to the kiosks
    installed = fleet.wait_installed("1.0.0")
    assert set(installed) == {"kiosk-east-01", "kiosk-east-02", "kiosk-west-01", "kiosk-west-02"}
    # the WAN: app.bin left the master exactly once per campus
    assert fleet.master_bytes("1.0.0") == 2 * size
    # every Pi holds it, verified (the copies on the LAN came from the seed Pi)
    for pi_id in fleet.pis:
        copy = fleet.pi_repo(pi_id) / NAME / "1.0.0" / "app.bin"
        assert hashlib.md5(copy.read_bytes()).hexdigest() == md5, pi_id
    served_by_pis = sum(server.bytes_served(f"/kiosk-releases/{NAME}/1.0.0/app.bin") for server in fleet.pis.values())
    assert served_by_pis == (2 + 4) * size  # 2 Pi->Pi copies, 4 kiosk downloads
    for kiosk_id in fleet.kiosks():
        package = fleet.kiosk_dir(kiosk_id) / NAME / "1.0.0"
        assert (package / "INSTALLED").read_text() == "1.0.0"
        # staged events arrive from each Pi, twice through the syndics: still one install
        assert fleet.install_log(kiosk_id) == ["1.0.0"], kiosk_id
    # ... and one push per campus: each kiosk checked its two Pis' indexes once (plus the early check)
    index_reads = [e for server in fleet.pis.values() for e in server.log_entries()
                   if e["path"].endswith(f"/{NAME}/index.json")]
    assert len(index_reads) == 2 + 4 * 2, index_reads
    status = fleet.t.salt_run("kiosk_release.status", NAME)
    assert status.returncode == 0, status
    for campus in ("east", "west"):
        entry = status.data["campuses"][campus]
        assert entry["pin"] == "1.0.0" and entry["drift"] == {} and entry["versions_running"] == ["1.0.0"]
    metrics = (pathlib.Path(fleet.t.release_dir["textfile_dir"]) / "kiosk_release.prom").read_text()
    assert f'kiosk_release_stage_wan_bytes{{name="{NAME}",campus="east"}} {size + len(INSTALL_SCRIPT)}' in metrics
    assert f'kiosk_release_kiosks{{name="{NAME}",campus="west",state="on_pin"}} 2' in metrics


def test_rollout_canary_first_then_the_rest_and_status_per_kiosk(fleet):
    build = fleet.build("1.1.0", SMALL, seed=2)
    published = fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", "version=1.1.0", f"source={build}",
                                 f"install={INSTALL}")
    assert published.returncode == 0, published
    assert fleet.installed() == dict.fromkeys(fleet.kiosks(), "1.0.0")  # published is not rolled out
    result = fleet.t.salt_run("kiosk_release.rollout", NAME, "1.1.0", "canary=west", timeout=400)
    assert result.returncode == 0, result
    rings = result.data["rings"]
    assert [r["campuses"] for r in rings] == [["west"], ["east"]]
    assert all(v is True for r in rings for per in r["kiosks"].values() for v in per.values())
    assert fleet.installed() == dict.fromkeys(fleet.kiosks(), "1.1.0")
    status = fleet.t.salt_run("kiosk_release.status", NAME, "campuses=east")
    assert status.returncode == 0, status
    assert status.data["campuses"]["east"]["kiosks"]["kiosk-east-02"] == {"installed": "1.1.0", "previous": "1.0.0"}
    # the previous package stays for rollback, older ones go
    assert sorted(os.listdir(fleet.kiosk_dir("kiosk-east-02") / NAME)) == ["1.0.0", "1.1.0", "install.log",
                                                                           "installed.json"]


def flip_bit(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def no_partial_files(root):
    return [str(p) for p in pathlib.Path(root).rglob("*.part")]


@pytest.mark.parametrize("fault", ["bit flip", "truncation"])
def test_corrupt_copy_on_the_master_to_pi_hop_never_goes_live(fleet, fault):
    version = "1.2.0" if fault == "bit flip" else "1.2.1"
    # content of its own per case: a Pi holding an identical file reuses it and never reads the bad copy
    build = fleet.build(version, SMALL, seed=3 if fault == "bit flip" else 40)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}", f"source={build}",
                            f"install={INSTALL}").returncode == 0
    before = fleet.installed("east")
    stored = fleet.store / NAME / version / "app.bin"
    original = stored.read_bytes()
    if fault == "bit flip":
        flip_bit(stored, SMALL // 2)
    else:
        with open(stored, "r+b") as handle:
            handle.truncate(SMALL - 1000)
    try:
        result = fleet.t.salt_run("kiosk_release.rollout", NAME, version, "campuses=east")
        assert result.returncode == 1 and result.data["halted"] is True, result
        staging = result.data["rings"][0]["staging"]["east"]
        assert staging["seed"] is None
        assert all("mismatch" in r["error"] or "shorter" in r["error"] for r in staging["pis"].values()), staging
        for pi_id in ("pi-east-1", "pi-east-2"):
            assert not (fleet.pi_repo(pi_id) / NAME / version).exists()
            assert version not in json.loads((fleet.pi_repo(pi_id) / NAME / "index.json").read_text())["versions"]
            assert no_partial_files(fleet.pi_repo(pi_id)) == []
        assert fleet.installed("east") == before  # the old version stays
        post = fleet.t.webhook.wait_for(lambda j: j.get("kind") == "kiosk_release" and j.get("version") == version
                                        and j.get("hop") == "master->pi", timeout=60)
        assert post is not None, fleet.t.webhook.posts
    finally:
        stored.write_bytes(original)
    # the master's copy repaired: the same command now goes through
    again = fleet.t.salt_run("kiosk_release.rollout", NAME, version, "campuses=east")
    assert again.returncode == 0, again
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), version)


def test_corrupt_copies_on_the_pi_to_kiosk_hop_never_go_live_and_a_good_pi_is_used(fleet):
    version = "1.3.0"
    build = fleet.build(version, SMALL, seed=4)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}", f"source={build}",
                            f"install={INSTALL}").returncode == 0
    staged = fleet.t.salt_run("kiosk_release.stage", NAME, version, "campuses=east")
    assert staged.returncode == 0 and staged.data["campuses"]["east"]["complete"], staged
    before = fleet.installed("east")
    copies = {pi: fleet.pi_repo(pi) / NAME / version / "app.bin" for pi in ("pi-east-1", "pi-east-2")}
    original = copies["pi-east-1"].read_bytes()
    flip_bit(copies["pi-east-1"], 12345)  # bit flip on one Pi
    with open(copies["pi-east-2"], "r+b") as handle:  # truncation on the other
        handle.truncate(SMALL // 3)
    pinned = fleet.t.salt_run("kiosk_release.pin", NAME, version, "campus=east")
    assert pinned.returncode == 0, pinned
    result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-east-01")
    assert result.returncode != 0 and result.data["result"] is False, result
    assert "no source delivered an intact copy" in result.data["releases"][NAME]["error"]
    assert fleet.installed("east") == before  # the old version stays
    assert not (fleet.kiosk_dir("kiosk-east-01") / NAME / version).exists()
    assert no_partial_files(fleet.kiosk_dir("kiosk-east-01")) == []
    post = fleet.t.webhook.wait_for(lambda j: j.get("version") == version and j.get("hop") == "pi->kiosk", timeout=60)
    assert post is not None and post["json"]["minion"] == "kiosk-east-01"
    # repair one Pi: the kiosk whose home Pi (pi-east-2 for kiosk-east-02) is still bad uses the good one
    copies["pi-east-1"].write_bytes(original)
    result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-east-02")
    assert result.returncode == 0, result
    assert result.data["releases"][NAME]["source"] == "pi-east-1"
    copies["pi-east-2"].write_bytes(original)
    assert fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-east-01").returncode == 0
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), version)


def test_a_cut_download_resumes_where_it_stopped(fleet):
    version = "1.4.0"
    build = fleet.build(version, BIG // 5, seed=5)
    size = (build / "app.bin").stat().st_size
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}", f"source={build}",
                            f"install={INSTALL}").returncode == 0
    assert fleet.t.salt_run("kiosk_release.pin", NAME, version, "campus=west").returncode == 0
    # kiosk-west-01 lost its link after 4 MB (a cut keeps what arrived in the .part file)
    work = fleet.kiosk_dir("kiosk-west-01") / ".staging" / f"{NAME}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    have = 4 * MB
    with open(build / "app.bin", "rb") as src:
        (work / "app.bin.part").write_bytes(src.read(have))
    seen = {pi: len(server.log_entries()) for pi, server in fleet.pis.items()}  # the Pis' staging copies
    result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-west-01")
    assert result.returncode == 0, result
    report = result.data["releases"][NAME]
    assert report["resumed"] is True and report["version"] == version
    server = fleet.pis[report["source"]]
    entries = [e for e in server.log_entries()[seen[report["source"]]:] if e["path"].endswith(f"/{version}/app.bin")]
    assert [(e["status"], e["range"], e["bytes"]) for e in entries] == [(206, f"bytes={have}-", size - have)]
    # pin does not push: kiosk-west-02 moves at its next boot or check
    assert fleet.installed("west")["kiosk-west-02"] != version
    # two jobs at once on one kiosk (the boot state and a push): one download, one install
    results = {}
    jobs = [threading.Thread(target=lambda n=n: results.update(
        {n: fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-west-02")})) for n in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert all(r.returncode == 0 for r in results.values()), results
    assert fleet.install_log("kiosk-west-02").count(version) == 1
    assert fleet.installed("west")["kiosk-west-02"] == version


def test_one_pi_down_kiosks_use_the_other(fleet):
    version = "1.5.0"
    build = fleet.build(version, SMALL, seed=6)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}", f"source={build}",
                            f"install={INSTALL}").returncode == 0
    fleet.pis["pi-west-1"].stop()  # its repository is down (the Pi's minion still answers)
    try:
        result = fleet.t.salt_run("kiosk_release.rollout", NAME, version, "campuses=west")
        assert result.returncode == 0, result
        assert fleet.installed("west") == dict.fromkeys(fleet.kiosks("west"), version)
        reports = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-west-01")  # home Pi: pi-west-1
        assert reports.data["releases"][NAME]["repos_down"].keys() == {"pi-west-1"}
    finally:
        fleet.pis["pi-west-1"].start()


def test_rollback_republishes_the_previous_content_under_a_higher_version(fleet):
    pins = fleet.t.salt_run("kiosk_release.status", NAME, "campuses=east")
    current = pins.data["campuses"]["east"]["pin"]
    result = fleet.t.salt_run("kiosk_release.rollback", NAME, "campus=east", timeout=400)
    assert result.returncode == 0, result
    rolled = result.data["rolled_back"]
    assert rolled["from"] == current and rolled["content_of"] != current
    new = rolled["as"]
    published = fleet.t.salt_run("kiosk_release.published", NAME).data["releases"][NAME]
    assert published[-1] == new  # above every published version
    manifest = json.loads((fleet.store / NAME / new / "manifest.json").read_text())
    old = json.loads((fleet.store / NAME / rolled["content_of"] / "manifest.json").read_text())
    assert manifest["rollback_of"] == rolled["content_of"] and manifest["files"] == old["files"]
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), new)
    assert fleet.installed("west") == dict.fromkeys(fleet.kiosks("west"), "1.5.0")  # other campus untouched


def test_bad_requests_fail_with_the_field_named(fleet, tmp_path):
    cases = [
        (("kiosk_release.publish", f"name={NAME}", "version=0.9.0", f"source={tmp_path}"),
         "version: 0.9.0 is not above"),
        # YAML reads 1.10 as the float 1.1: refused, never guessed
        (("kiosk_release.publish", f"name={NAME}", "version=9.10", f"source={tmp_path}"), "arrived as a number"),
        (("kiosk_release.rollout", "name=../etc", "version=9.0.0"), "name:"),
        (("kiosk_release.publish", "name=../x", "version=9.0.0", f"source={tmp_path}"), "name:"),
        (("kiosk_release.publish", f"name={NAME}", "version=9.0.0", "source=/nonexistent/pkg"), "source:"),
        (("kiosk_release.publish", f"name={NAME}", "version=9.0.0", f"source={tmp_path}", "install=msiexec /i x"),
         "install:"),
        (("kiosk_release.rollout", NAME, "7.7.7", "campuses=east"), "version: kiosk-app 7.7.7 is not published"),
        (("kiosk_release.rollout", NAME, "1.0.0", "campuses=mars"), "campuses: unknown campus mars"),
        (("kiosk_release.rollout", NAME, "1.0.0", "canary=mars"), "canary:"),
        (("kiosk_release.rollback", NAME, "campus=west,east"), "campus: name one campus"),
    ]
    for args, message in cases:
        result = fleet.t.salt_run(*args)
        assert result.returncode == 1, (args, result)
        assert message in result.data["error"], (args, result.data)


def test_the_pi_repository_refuses_path_traversal(fleet):
    server = fleet.pis["pi-east-1"]
    secret = fleet.t.release_dir["root"] / "secret.txt"
    secret.write_text("not for kiosks")
    for path in ("/kiosk-releases/../../../../../../etc/passwd", "/kiosk-releases/%2e%2e/%2e%2e/secret.txt",
                 f"/kiosk-releases/{NAME}/../../../secret.txt", "/kiosk-releases/.staging/"):
        status, answer = server.raw_get(path)
        assert 400 <= status < 500, (path, answer[:200])
        assert b"not for kiosks" not in answer and b"root:" not in answer


def test_staging_over_salt_fileserver_is_checked_by_the_pack(fleet):
    """source=salt://: cp.get_file has no hash check of its own; a flipped bit never goes live."""
    version = "3.0.0"
    build = fleet.build(version, SMALL, seed=7)
    assert fleet.t.salt_run("kiosk_release.publish", f"name={NAME}", f"version={version}", f"source={build}",
                            f"install={INSTALL}").returncode == 0
    stored = fleet.store / NAME / version / "app.bin"
    original = stored.read_bytes()
    flip_bit(stored, 777)
    try:
        # the Pi minion's master serves the same tree in this topology (shared file_roots)
        bad = fleet.t.salt("kiosk_pkg.stage", NAME, version, "source=salt://kiosk_releases/", tgt="pi-west-2")
        assert bad.returncode != 0 and "md5 mismatch" in bad.data["error"], bad
        assert not (fleet.pi_repo("pi-west-2") / NAME / version).exists()
        assert no_partial_files(fleet.pi_repo("pi-west-2")) == []
    finally:
        stored.write_bytes(original)
    good = fleet.t.salt("kiosk_pkg.stage", NAME, version, "source=salt://kiosk_releases/", tgt="pi-west-2")
    assert good.returncode == 0 and good.data["changed"] is True, good
    copy = fleet.pi_repo("pi-west-2") / NAME / version / "app.bin"
    assert copy.read_bytes() == original
    index = json.loads((fleet.pi_repo("pi-west-2") / NAME / "index.json").read_text())
    assert version in index["versions"] and index["pin"]["version"] != version  # staged, not pinned
