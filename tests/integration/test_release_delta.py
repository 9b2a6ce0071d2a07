"""
Releases that fit the campus links, on the topology: delta transfers of the
changed chunks, the WAN cap, rollback from what the Pis and kiosks hold, and
prune after success.

Real parts as in test_release.py: nginx exports the master's store and
serves every Pi's repository (the same work dirs, so the Pis' ``served``
reads the same logs; every count here starts from a mark taken before the
step). The release is ``kiosk-delta`` (and ``kiosk-delta-cap`` for the cap),
so nothing here meets test_release.py's ``kiosk-app``. Bytes on each hop are
counted from the nginx JSON access logs.

The tests run in file order and build on each other (one release history):
1.0.0 (50 MiB, whole) -> 2.0.0 (5 % changed, 4 regions) -> 3.0.0 (2 more
regions) -> rollback of east (3.0.1 = 2.0.0's content) -> 4.0.0, 5.0.0.
"""

import contextlib
import hashlib
import json
import pathlib
import random
import sys
import threading
import time
import urllib.request

import pytest

from tests.support import topology as topo
from tests.support.nginx import URL_PREFIX, nginx_binary, topology_repos

pytestmark = [
    pytest.mark.topology,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)"),
]

NAME = "kiosk-delta"
CAP_NAME = "kiosk-delta-cap"
KIB = 1 << 10
MB = 1 << 20
BIG = 50 * MB
# 2.0.0: 5 % of the bytes rewritten, in 4 contiguous regions of 640 KiB (offsets off any power of two)
REGIONS_V2 = [(3 * MB + 12345, 640 * KIB), (15 * MB + 777, 640 * KIB), (28 * MB + 4321, 640 * KIB),
              (41 * MB + 99, 640 * KIB)]
REGIONS_V3 = [(9 * MB + 777, 256 * KIB), (33 * MB + 4321, 256 * KIB)]
REGIONS_V4 = [(20 * MB + 55, 128 * KIB)]
REGIONS_V5 = [(25 * MB + 55, 128 * KIB)]
# fleet_delta's largest chunk: a changed region costs at most its length plus a chunk on each side
MAX_CHUNK = 256 * KIB
# the Pacer's burst (fleet_rate) and a client read: what can arrive before the bucket paces
BURST = 64 * KIB
READ = 64 * KIB
# the cap test: 1 MiB at 125,000 bytes/s is ~8.4 s of paced transfer
CAP_SIZE = 1 * MB
CAP_RATE = "125000"
CAP_BYTES_PER_S = 125000

INSTALL_SCRIPT = """\
import pathlib, sys
package = pathlib.Path(sys.argv[1])
(package / "INSTALLED").write_text(sys.argv[2])
with open(package.parent / "install.log", "a") as log:
    log.write(sys.argv[2] + "\\n")
"""
INSTALL = json.dumps([sys.executable, "{dir}/install.py", "{dir}", "{version}"])
INDEX_FILES = ("manifest.json", "index.json")


class Fleet:
    """The topology plus its release servers and paths, for the ``kiosk-delta`` history."""

    def __init__(self, topology, master, pis, build_dir):
        self.t = topology
        self.master = master  # nginx exporting the master's store
        self.pis = pis  # {pi id: nginx serving its repository}
        self.build_dir = build_dir
        self.store = pathlib.Path(topology.top.config["kiosk_release"]["store"])

    def kiosks(self, campus=None):
        campuses = self.t.inventory["kiosk_fleet"]["campuses"]
        return sorted(k for c, spec in campuses.items() if campus in (None, c) for k in spec["kiosks"])

    def campus_pis(self, campus):
        return sorted(self.t.inventory["kiosk_fleet"]["campuses"][campus]["pis"])

    def pi_repo(self, pi_id):
        return pathlib.Path(self.t.release_dir["root"]) / "repo" / pi_id

    def kiosk_dir(self, kiosk_id):
        return pathlib.Path(self.t.release_dir["root"]) / "kiosk" / kiosk_id

    def build(self, version, data, name=NAME):
        """A package directory under the top master's source_root: app.bin (``data``) and install.py."""
        out = self.build_dir / name / version
        out.mkdir(parents=True, exist_ok=True)
        (out / "app.bin").write_bytes(data)
        (out / "install.py").write_text(INSTALL_SCRIPT)
        return out

    def publish(self, version, data, *extra, name=NAME):
        build = self.build(version, data, name)
        result = self.t.salt_run("kiosk_release.publish", f"name={name}", f"version={version}", f"source={build}",
                                 f"install={INSTALL}", *extra, timeout=300)
        assert result.returncode == 0, result
        return result

    def manifest(self, version, name=NAME):
        return json.loads((self.store / name / version / "manifest.json").read_text())

    def installed(self, campus=None):
        """{kiosk: installed version or None}, asked through the syndics."""
        kiosks = self.kiosks(campus)
        result = self.t.salt("-L", "kiosk_pkg.installed", NAME, tgt=",".join(kiosks))
        data = result.data if isinstance(result.data, dict) else {}
        return {k: (data.get(k) or {}).get("version") if isinstance(data.get(k), dict) else None for k in kiosks}

    def wait_installed(self, version, campus=None, timeout=240):
        deadline = time.time() + timeout
        seen = {}
        while time.time() < deadline:
            seen = self.installed(campus)
            if all(v == version for v in seen.values()):
                return seen
            time.sleep(3)
        raise AssertionError(f"kiosks not on {version} after {timeout}s: {seen}")

    def marks(self):
        """Where every access log ends now: ``{"master": n, pi: n, ...}``."""
        return {"master": len(self.master.log_entries()),
                **{pi: len(server.log_entries()) for pi, server in self.pis.items()}}

    def since(self, marks, server_id):
        server = self.master if server_id == "master" else self.pis[server_id]
        return server.log_entries()[marks[server_id]:]

    def repo_versions(self, pi_id, name=NAME):
        """The version directories a Pi's repository holds (dot dirs and index.json aside)."""
        base = self.pi_repo(pi_id) / name
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def index_versions(self, pi_id, name=NAME):
        return sorted(json.loads((self.pi_repo(pi_id) / name / "index.json").read_text())["versions"])


@pytest.fixture(scope="module")
def fleet(topology):
    with topology_repos(topology, topo.MASTER_EXPORT_ADDRESS) as (master, pis):
        # builds are made under the top master's kiosk_release:source_root (publish reads nothing else)
        yield Fleet(topology, master, pis, pathlib.Path(topology.release_dir["builds"]))


# --------------------------------------------------------------------------- content and chunks


def first_content():
    """1.0.0's app.bin: 50 MiB of seeded pseudo-random bytes (no repeats for the chunker to find)."""
    return bytearray(random.Random(1).randbytes(BIG))


def changed(data, regions, seed):
    """A copy of ``data`` with each (offset, length) region rewritten with other random bytes."""
    out = bytearray(data)
    rng = random.Random(seed)
    for offset, length in regions:
        out[offset:offset + length] = rng.randbytes(length)
    return out


def chunks_at(entry):
    """``[(offset, length, sha256)]`` of a manifest file entry's ``chunks`` (offsets are cumulative)."""
    out, offset = [], 0
    for length, sha in entry["chunks"]:
        out.append((offset, length, sha))
        offset += length
    return out


def new_chunks(fleet, version, bases, file_name="app.bin"):
    """The chunks of ``version``'s file that no base version's manifest has (what must cross a hop)."""
    held = {sha for base in bases for entry in fleet.manifest(base)["files"].values() for _, sha in entry["chunks"]}
    return [c for c in chunks_at(fleet.manifest(version)["files"][file_name]) if c[2] not in held]


def digests(path):
    """``(md5, sha256)`` of a file, read in 1 MiB pieces."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MB):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def flip_bit(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def no_partial_files(root):
    return [str(p) for p in pathlib.Path(root).rglob("*.part")]


def package_entries(entries, name, version=None):
    """Log entries of a release's package files (not its manifest, not the index)."""
    prefix = f"{URL_PREFIX}{name}/" + (f"{version}/" if version else "")
    return [e for e in entries if e["path"].startswith(prefix) and e["path"].rsplit("/", 1)[-1] not in INDEX_FILES]


def range_start(entry):
    assert entry["range"].startswith("bytes="), entry
    return int(entry["range"][len("bytes="):].split("-", 1)[0])


# figures measured by the tests, printed at the end of the module (-s) and quoted in docs/releases.md
FIGURES = {}


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    for key, value in FIGURES.items():
        print(f"[release-delta] {key}: {value}")


# --------------------------------------------------------------------------- 1. delta


def test_a_five_percent_change_crosses_the_wan_as_its_changed_chunks_and_arrives_whole(fleet):
    data = first_content()
    fleet.publish("1.0.0", data, "campuses=east,west")
    fleet.wait_installed("1.0.0")
    whole = fleet.master.bytes_served(f"{NAME}/1.0.0/app.bin")
    assert whole == 2 * BIG  # no base anywhere yet: the whole file, once per campus
    marks = fleet.marks()
    v2 = changed(data, REGIONS_V2, seed=2)
    fleet.publish("2.0.0", v2, "campuses=east,west")
    installed = fleet.wait_installed("2.0.0")
    assert set(installed) == set(fleet.kiosks())
    manifest = fleet.manifest("2.0.0")
    size = sum(entry["size"] for entry in manifest["files"].values())
    # every file carries its signed chunk list, lengths summing to the size
    for file_name, entry in manifest["files"].items():
        assert sum(length for length, _ in entry["chunks"]) == entry["size"], file_name
    # the WAN: the v2 package files the master's nginx served, per campus
    wan = package_entries(fleet.since(marks, "master"), NAME, "2.0.0")
    campuses = len(fleet.t.inventory["kiosk_fleet"]["campuses"])
    per_campus = sum(e["bytes"] for e in wan) / campuses
    must = sum(length for _, length, _ in new_chunks(fleet, "2.0.0", ["1.0.0"]))
    FIGURES["2.0.0 master nginx bytes per campus"] = f"{per_campus:.0f} of {size} ({per_campus / size:.4f}x)"
    FIGURES["2.0.0 changed chunks"] = f"{must} bytes ({must / size:.4f}x; rewritten: {640 * KIB * 4})"
    assert per_campus <= 0.1 * size, wan
    assert per_campus >= must  # at least the chunks no base holds crossed
    assert must <= sum(length + 2 * MAX_CHUNK for _, length in REGIONS_V2)
    # ... as Range requests of the unchanged whole file, never the whole file
    app = [e for e in wan if e["path"].endswith("/app.bin")]
    assert app and all(e["status"] == 206 and e["range"] for e in app), app
    # the LAN: Pi->Pi copies and kiosk downloads are deltas too (2 Pi copies + 4 kiosks)
    lan = sum(e["bytes"] for pi in fleet.pis for e in package_entries(fleet.since(marks, pi), NAME, "2.0.0"))
    FIGURES["2.0.0 Pis' nginx bytes (2 LAN copies + 4 kiosks)"] = f"{lan} ({lan / (6 * size):.4f}x of 6 copies)"
    assert lan <= 0.1 * 6 * size
    # byte for byte the published file: every Pi's copy and every kiosk's
    published = {f: (e["md5"], e["sha256"]) for f, e in manifest["files"].items()}
    assert published["app.bin"] == (hashlib.md5(v2).hexdigest(), hashlib.sha256(v2).hexdigest())
    for pi_id in fleet.pis:
        for file_name, sums in published.items():
            assert digests(fleet.pi_repo(pi_id) / NAME / "2.0.0" / file_name) == sums, (pi_id, file_name)
    for kiosk_id in fleet.kiosks():
        package = fleet.kiosk_dir(kiosk_id) / NAME / "2.0.0"
        for file_name, sums in published.items():
            assert digests(package / file_name) == sums, (kiosk_id, file_name)
        assert (package / "INSTALLED").read_text() == "2.0.0"
    assert [no_partial_files(fleet.pi_repo(pi)) for pi in fleet.pis] == [[]] * len(fleet.pis)


# --------------------------------------------------------------------------- 2. corrupt chunks, a cut


def third_content(fleet):
    return changed(bytearray((fleet.build_dir / NAME / "2.0.0" / "app.bin").read_bytes()), REGIONS_V3, seed=3)


def test_a_corrupt_changed_chunk_on_the_master_to_pi_hop_never_goes_live(fleet):
    fleet.publish("3.0.0", third_content(fleet))
    before = fleet.installed("east")
    assert set(before.values()) == {"2.0.0"}
    fresh = new_chunks(fleet, "3.0.0", ["1.0.0", "2.0.0"])
    assert fresh, "3.0.0 changed no chunk"
    offset, length, _ = fresh[0]
    stored = fleet.store / NAME / "3.0.0" / "app.bin"
    original = stored.read_bytes()
    flip_bit(stored, offset + length // 2)  # inside a chunk the Pis must fetch
    since = time.time()
    try:
        result = fleet.t.salt_run("kiosk_release.rollout", NAME, "3.0.0", "campuses=east", timeout=400)
        assert result.returncode == 1 and result.data["halted"] is True, result
        staging = result.data["rings"][0]["staging"]["east"]
        assert staging["seed"] is None, staging
        assert all("app.bin" in r["error"] for r in staging["pis"].values()), staging
        for pi_id in fleet.campus_pis("east"):
            assert not (fleet.pi_repo(pi_id) / NAME / "3.0.0").exists()
            assert "3.0.0" not in fleet.index_versions(pi_id)
            assert no_partial_files(fleet.pi_repo(pi_id)) == []
        assert fleet.installed("east") == before  # the old version stays
        post = fleet.t.webhook.wait_for(lambda j: j.get("kind") == "kiosk_release" and j.get("name") == NAME
                                        and j.get("version") == "3.0.0" and j.get("hop") == "master->pi",
                                        timeout=60, after=since)
        assert post is not None, fleet.t.webhook.posts[-5:]
    finally:
        stored.write_bytes(original)
    again = fleet.t.salt_run("kiosk_release.rollout", NAME, "3.0.0", "campuses=east", timeout=400)
    assert again.returncode == 0, again
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), "3.0.0")
    sums = (fleet.manifest("3.0.0")["files"]["app.bin"]["md5"], fleet.manifest("3.0.0")["files"]["app.bin"]["sha256"])
    for kiosk_id in fleet.kiosks("east"):
        assert digests(fleet.kiosk_dir(kiosk_id) / NAME / "3.0.0" / "app.bin") == sums, kiosk_id


def test_a_corrupt_changed_chunk_on_the_pi_to_kiosk_hop_never_goes_live(fleet):
    staged = fleet.t.salt_run("kiosk_release.stage", NAME, "3.0.0", "campuses=west", timeout=400)
    assert staged.returncode == 0 and staged.data["campuses"]["west"]["complete"], staged
    before = fleet.installed("west")
    assert set(before.values()) == {"2.0.0"}
    offset, length, _ = new_chunks(fleet, "3.0.0", ["1.0.0", "2.0.0"])[-1]
    copies = {pi: fleet.pi_repo(pi) / NAME / "3.0.0" / "app.bin" for pi in fleet.campus_pis("west")}
    original = copies["pi-west-1"].read_bytes()
    for copy in copies.values():  # both Pis: no intact source for the kiosk
        flip_bit(copy, offset + length // 3)
    since = time.time()
    try:
        pinned = fleet.t.salt_run("kiosk_release.pin", NAME, "3.0.0", "campus=west")
        assert pinned.returncode == 0, pinned
        result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-west-01")
        assert result.returncode != 0 and result.data["result"] is False, result
        assert "no source delivered an intact copy" in result.data["releases"][NAME]["error"], result.data
        assert fleet.installed("west") == before  # the old version stays
        assert not (fleet.kiosk_dir("kiosk-west-01") / NAME / "3.0.0").exists()
        assert no_partial_files(fleet.kiosk_dir("kiosk-west-01")) == []
        post = fleet.t.webhook.wait_for(lambda j: j.get("name") == NAME and j.get("version") == "3.0.0"
                                        and j.get("hop") == "pi->kiosk", timeout=60, after=since)
        assert post is not None and post["json"]["minion"] == "kiosk-west-01", fleet.t.webhook.posts[-5:]
    finally:
        for copy in copies.values():
            copy.write_bytes(original)
    result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt="kiosk-west-01")
    assert result.returncode == 0, result
    assert fleet.installed("west")["kiosk-west-01"] == "3.0.0"


def test_a_cut_mid_delta_resumes_from_the_last_chunk_boundary(fleet):
    kiosk = "kiosk-west-02"  # pinned to 3.0.0 by the test before, not pushed: still on 2.0.0
    assert fleet.installed("west")[kiosk] == "2.0.0"
    fresh = new_chunks(fleet, "3.0.0", ["1.0.0", "2.0.0"])
    assert len(fresh) >= 2
    # the link dropped half-way through the second fetched chunk: the .part holds the reassembled prefix
    boundary, length, _ = fresh[1]
    have = boundary + length // 2
    work = fleet.kiosk_dir(kiosk) / ".staging" / f"{NAME}-3.0.0"
    work.mkdir(parents=True, exist_ok=True)
    with open(fleet.build_dir / NAME / "3.0.0" / "app.bin", "rb") as src:
        (work / "app.bin.part").write_bytes(src.read(have))
    marks = fleet.marks()
    result = fleet.t.salt("kiosk_pkg.check_update", NAME, tgt=kiosk)
    assert result.returncode == 0, result
    report = result.data["releases"][NAME]
    assert report["version"] == "3.0.0", report
    entries = [e for e in fleet.since(marks, report["source"]) if e["path"].endswith(f"/{NAME}/3.0.0/app.bin")]
    rest = sum(length for offset, length, _ in fresh if offset >= boundary)
    FIGURES["cut mid-delta: bytes fetched after the resume"] = (
        f"{sum(e['bytes'] for e in entries)} (the changed chunks from the boundary on: {rest}; prefix kept: {boundary})")
    # only the rest: Range requests from the chunk boundary on, none before it, nothing twice
    assert entries and all(e["status"] == 206 for e in entries), entries
    assert min(range_start(e) for e in entries) == boundary, entries
    assert sum(e["bytes"] for e in entries) == rest, entries
    assert fleet.installed("west")[kiosk] == "3.0.0"
    sums = digests(fleet.build_dir / NAME / "3.0.0" / "app.bin")
    assert digests(fleet.kiosk_dir(kiosk) / NAME / "3.0.0" / "app.bin") == sums
    assert no_partial_files(fleet.kiosk_dir(kiosk)) == []


# --------------------------------------------------------------------------- 3. the WAN cap


@contextlib.contextmanager
def master_setting(fleet, file_name, **settings):
    """A master.d drop-in the salt-run CLI reads at its next call (an included file replaces a top-level key
    as a whole, so it carries the whole kiosk_release mapping)."""
    dropin = pathlib.Path(fleet.t.top.config_dir) / "master.d" / file_name
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(json.dumps({"kiosk_release": {**fleet.t.top.config["kiosk_release"], **settings}}))
    try:
        yield dropin
    finally:
        dropin.unlink()


def test_the_wan_cap_paces_the_seed_pi_and_the_master_still_answers(fleet):
    data = random.Random(9).randbytes(CAP_SIZE)
    fleet.publish("1.0.0", data, name=CAP_NAME)
    parts = [fleet.pi_repo(pi) / ".staging" / f"{CAP_NAME}-1.0.0" / "app.bin.part" for pi in fleet.campus_pis("east")]
    finals = [fleet.pi_repo(pi) / CAP_NAME / "1.0.0" / "app.bin" for pi in fleet.campus_pis("east")]
    marks = fleet.marks()
    outcome = {}
    with master_setting(fleet, "zz-wan-rate.conf", wan_rate=CAP_RATE):
        began = time.monotonic()
        job = threading.Thread(target=lambda: outcome.update(result=fleet.t.salt_run(
            "kiosk_release.stage", CAP_NAME, "1.0.0", "campuses=east", timeout=300)))
        job.start()
        try:
            # the seed Pi's download: first seen (size), then live (renamed into the repository)
            seen = None
            deadline = time.monotonic() + 240
            while seen is None and job.is_alive() and time.monotonic() < deadline:
                for part in parts:
                    with contextlib.suppress(FileNotFoundError):
                        seen = (time.monotonic(), part.stat().st_size)
                        break
                time.sleep(0.02)
            assert seen is not None, "no .part of the capped download was ever seen"
            # a small file from the master's nginx while the capped transfer runs
            small = urllib.request.urlopen(fleet.master.url(f"{CAP_NAME}/1.0.0/install.py"), timeout=30).read()
            answered = time.monotonic()
            assert small == INSTALL_SCRIPT.encode()
            assert not any(f.exists() for f in finals) and job.is_alive(), "the capped staging ended before the GET"
            live = None
            while live is None and time.monotonic() < deadline:
                if any(f.exists() for f in finals):
                    live = time.monotonic()
                time.sleep(0.02)
            assert live is not None
        finally:
            job.join()
    total = time.monotonic() - began
    result = outcome["result"]
    assert result.returncode == 0, result
    start, size_then = seen
    FIGURES["cap"] = (f"{CAP_SIZE} bytes at {CAP_BYTES_PER_S} B/s: paced transfer seen {live - start:.1f} s "
                      f"(from {size_then} bytes on), salt-run stage {total:.1f} s, small GET answered "
                      f"{answered - start:.2f} s after the transfer was first seen")
    # what arrived between the two sightings passed the token bucket: at most burst + one read ahead of the rate
    assert live - start >= (CAP_SIZE - size_then - BURST - READ) / CAP_BYTES_PER_S, FIGURES["cap"]
    assert size_then < CAP_SIZE // 2
    wan = package_entries(fleet.since(marks, "master"), CAP_NAME, "1.0.0")
    assert sum(e["bytes"] for e in wan if e["path"].endswith("/app.bin")) == CAP_SIZE, wan
    for final in finals:
        assert final.read_bytes() == data


# --------------------------------------------------------------------------- 4. rollback, 5. prune


def test_rollback_takes_no_package_byte_from_the_master_or_the_pis(fleet):
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), "3.0.0")
    marks = fleet.marks()
    result = fleet.t.salt_run("kiosk_release.rollback", NAME, "campus=east", timeout=400)
    assert result.returncode == 0, result
    rolled = result.data["rolled_back"]
    assert rolled["from"] == "3.0.0" and rolled["content_of"] == "2.0.0", rolled
    new = rolled["as"]
    # the ring's success pruned east's Pis: 2.0.0 went (below the previous, 3.0.0)
    assert {pi: entry["removed"] for pi, entry in result.data["rings"][0]["pruned"]["east"].items()} == {
        pi: ["2.0.0"] for pi in fleet.campus_pis("east")}, result.data["rings"][0]
    served = {server: package_entries(fleet.since(marks, server), NAME) for server in ["master", *fleet.pis]}
    FIGURES["rollback package bytes (master, Pis)"] = {s: sum(e["bytes"] for e in es) for s, es in served.items()}
    assert all(sum(e["bytes"] for e in es) == 0 for es in served.values()), served
    # the manifest did cross (the Pis staged the new version), the package did not
    assert any(e["path"].endswith(f"/{NAME}/{new}/manifest.json") for e in fleet.since(marks, "master"))
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), new)
    sums = (fleet.manifest("2.0.0")["files"]["app.bin"]["md5"], fleet.manifest("2.0.0")["files"]["app.bin"]["sha256"])
    for kiosk_id in fleet.kiosks("east"):
        assert digests(fleet.kiosk_dir(kiosk_id) / NAME / new / "app.bin") == sums, kiosk_id
    for pi_id in fleet.campus_pis("east"):
        assert digests(fleet.pi_repo(pi_id) / NAME / new / "app.bin") == sums, pi_id
    assert fleet.installed("west") == dict.fromkeys(fleet.kiosks("west"), "3.0.0")  # other campus untouched


def test_prune_after_success_keeps_the_pin_the_previous_and_anything_newer(fleet):
    # after the rollback's ring: the pin (3.0.1) and the previous (3.0.0); 2.0.0 and 1.0.0 are gone
    for pi_id in fleet.campus_pis("east"):
        assert fleet.repo_versions(pi_id) == ["3.0.0", "3.0.1"], pi_id
        assert fleet.index_versions(pi_id) == ["3.0.0", "3.0.1"], pi_id
    # west had no push since 2.0.0's (3.0.0 was pinned, then kiosks checked): nothing pruned there yet
    for pi_id in fleet.campus_pis("west"):
        assert fleet.repo_versions(pi_id) == ["1.0.0", "2.0.0", "3.0.0"], pi_id
    base = bytearray((fleet.build_dir / NAME / "3.0.0" / "app.bin").read_bytes())
    fleet.publish("4.0.0", changed(base, REGIONS_V4, seed=4))
    fleet.publish("5.0.0", changed(base, REGIONS_V5, seed=5))
    staged = fleet.t.salt_run("kiosk_release.stage", NAME, "5.0.0", "campuses=east", timeout=400)  # pre-staged
    assert staged.returncode == 0, staged
    result = fleet.t.salt_run("kiosk_release.rollout", NAME, "4.0.0", "campuses=east", timeout=400)
    assert result.returncode == 0, result
    assert fleet.installed("east") == dict.fromkeys(fleet.kiosks("east"), "4.0.0")
    # pin 4.0.0, previous 3.0.1 (the newest staged below the pin), 5.0.0 above the pin; 3.0.0 went
    for pi_id in fleet.campus_pis("east"):
        assert fleet.repo_versions(pi_id) == ["3.0.1", "4.0.0", "5.0.0"], pi_id
        assert fleet.index_versions(pi_id) == ["3.0.1", "4.0.0", "5.0.0"], pi_id
    pruned = result.data["rings"][0]["pruned"]["east"]
    assert pruned == {pi: {"removed": ["3.0.0"], "kept": ["3.0.1", "4.0.0", "5.0.0"]}
                      for pi in fleet.campus_pis("east")}, pruned
    # kiosks keep two: what they run and the previous
    for kiosk_id in fleet.kiosks("east"):
        kept = sorted(p.name for p in (fleet.kiosk_dir(kiosk_id) / NAME).iterdir() if p.is_dir())
        assert kept == ["3.0.1", "4.0.0"], (kiosk_id, kept)
