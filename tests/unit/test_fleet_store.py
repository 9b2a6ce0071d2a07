"""The release store on the master's disk (no Salt): keys, import, hash, sign, store, list, rollback copies."""

import hashlib
import json
import os
import pathlib
import random
import re
import stat

import pytest

import fleet_delta
import fleet_release
import fleet_sign
import fleet_store

NAME = "kiosk-app"
INSTALL = ["msiexec", "/i", "{dir}\\app.msi", "/qn"]


def raises(fn, *args, match, **kwargs):
    """Call ``fn`` expecting StoreError (or another ReleaseError); return its message."""
    with pytest.raises(fleet_release.ReleaseError) as info:
        fn(*args, **kwargs)
    assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


@pytest.fixture
def key():
    private, public = fleet_sign.new_key_pair()
    return private, public


@pytest.fixture
def site(tmp_path):
    """A store, a source root with a package, and nothing else."""

    class Site:
        store = str(tmp_path / "store")
        root = tmp_path / "builds"

        def package(self, rel="job/out/app.msi", data=b"MSI build output"):
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return path

        def stored(self):
            return sorted(str(p.relative_to(self.store)) for p in tmp_path.joinpath("store").rglob("*") if p.is_file())

    os.makedirs(Site.store)
    Site.root.mkdir()
    return Site()


def publish(site, key, version="1.0.0", source="job/out/app.msi", **kwargs):
    kwargs.setdefault("install", INSTALL)
    return fleet_store.publish(site.store, NAME, version, source, str(site.root), key[0], **kwargs)


# --------------------------------------------------------------------------- where the store is


def test_store_dir_is_the_configured_one_or_under_file_roots(tmp_path):
    assert fleet_store.store_dir(str(tmp_path / "s"), None) == str(tmp_path / "s")
    assert os.path.isdir(tmp_path / "s")
    assert fleet_store.store_dir(None, [str(tmp_path / "files")]) == str(tmp_path / "files" / "kiosk_releases")


@pytest.mark.parametrize("store, roots", [(None, None), (None, []), (None, [5]), ("relative", None), (["/x"], None),
                                          ("/a\0b", None), ("/a\ud800", None)])
def test_a_bad_store_names_the_config_key(store, roots):
    raises(fleet_store.store_dir, store, roots, match=r"^kiosk_release\.store: ")


def test_master_source():
    assert fleet_store.master_source(None) == "salt://kiosk_releases/"
    assert fleet_store.master_source("http://m:8080/kiosk-releases") == "http://m:8080/kiosk-releases/"
    for bad in ("ftp://m/", "/srv", 5, ["http://m/"]):
        raises(fleet_store.master_source, bad, match=r"^kiosk_release\.master_url: ")


# --------------------------------------------------------------------------- the signing key


def test_keygen_writes_0600_and_returns_only_the_public_key(tmp_path):
    path = str(tmp_path / "keys" / "k.pem")
    public = fleet_store.write_key(path)
    assert "PUBLIC KEY" in public and "PRIVATE" not in public
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert fleet_sign.public_key_of(fleet_store.read_signing_key(path)) == public
    assert fleet_store.public_key_at(path) == public
    before = pathlib.Path(path).read_bytes()
    raises(fleet_store.write_key, path, match=r"^path: .* exists; refusing .*force=True")
    assert pathlib.Path(path).read_bytes() == before
    assert fleet_store.write_key(path, force=True) != public
    raises(fleet_store.write_key, "relative.pem", match=r"^path: 'relative.pem' is not an absolute path")
    raises(fleet_store.write_key, path, force="yes", match=r"^force: ")
    raises(fleet_store.write_key, "/k\udc80.pem", match=r"^path: .* is not an absolute path")
    raises(fleet_store.public_key_at, "/k\udc80.pem", match=r"^path: ")
    assert [p for p in os.listdir(tmp_path / "keys") if p.startswith(".")] == []  # no temp file left


def test_the_signing_key_is_refused_unless_0600_plain_ed25519_and_not_a_symlink(tmp_path, key):
    path = tmp_path / "k.pem"
    raises(fleet_store.read_signing_key, None, match=r"^kiosk_release\.signing_key: not set .*keygen")
    raises(fleet_store.read_signing_key, str(path), match=r"^kiosk_release\.signing_key: cannot read")
    raises(fleet_store.read_signing_key, "k.pem", match=r"^kiosk_release\.signing_key: 'k.pem' is not an absolute")
    raises(fleet_store.read_signing_key, ["/k"], match=r"^kiosk_release\.signing_key: ")
    path.write_bytes(key[0])
    os.chmod(path, 0o644)
    raises(fleet_store.read_signing_key, str(path), match=r"^kiosk_release\.signing_key: mode 0644 .*chmod 600")
    os.chmod(path, 0o600)
    assert fleet_store.read_signing_key(str(path)) == key[0]
    link = tmp_path / "link.pem"
    link.symlink_to(path)
    raises(fleet_store.read_signing_key, str(link), match=r"^kiosk_release\.signing_key: cannot read")
    raises(fleet_store.read_signing_key, str(tmp_path), match=r"^kiosk_release\.signing_key: .* not a plain file")
    path.write_bytes(key[1].encode())  # a public key is no signing key
    raises(fleet_store.read_signing_key, str(path), match=r"^kiosk_release\.signing_key: not a PEM private key")
    os.mkfifo(tmp_path / "fifo")  # never blocks
    raises(fleet_store.read_signing_key, str(tmp_path / "fifo"), match=r"not a plain file")


# --------------------------------------------------------------------------- publish


def test_publish_hashes_signs_and_stores_in_one_rename(site, key):
    pkg = site.package()
    doc = publish(site, key, md5=hashlib.md5(pkg.read_bytes()).hexdigest())
    fleet_sign.verify_signature(doc, key[1])
    data = pkg.read_bytes()
    assert doc["files"]["app.msi"] == {"size": len(data), "md5": hashlib.md5(data).hexdigest(),
                                       "sha256": hashlib.sha256(data).hexdigest(),
                                       "chunks": [[len(data), hashlib.sha256(data).hexdigest()]]}
    assert site.stored() == ["kiosk-app/1.0.0/app.msi", "kiosk-app/1.0.0/manifest.json"]
    assert fleet_store.manifest(site.store, NAME, "1.0.0") == doc
    assert os.listdir(os.path.join(site.store, ".staging")) == []
    assert fleet_store.published(site.store, NAME) == ["1.0.0"]
    assert fleet_store.releases(site.store) == [NAME]


def test_versions_only_go_up(site, key):
    site.package()
    publish(site, key, "1.10.0")
    raises(publish, site, key, "1.9.0", match=r"^version: 1\.9\.0 is not above the newest published kiosk-app 1\.10\.0")
    raises(publish, site, key, "1.10.0", match=r"^version: ")
    raises(publish, site, key, "1.x", match=r"^version: ")
    raises(fleet_store.publish, site.store, "../etc", "2.0", "job/out/app.msi", str(site.root), key[0],
           match=r"^name: ")
    assert fleet_store.published(site.store, NAME) == ["1.10.0"]


@pytest.mark.parametrize("source, match", [
    ("/etc/passwd", r"^source: /etc/passwd is not under the source root"),
    ("job/../../x.msi", r"^source: '\.\.' is not allowed"),
    ("job/out/missing.msi", r"^source: missing\.msi does not exist"),
    ("", r"^source: give a file"),
    (None, r"^source: give a file"),
    (["job"], r"^source: give a file"),
])
def test_a_refused_source_stores_nothing(site, key, source, match):
    site.package()
    raises(publish, site, key, source=source, match=match)
    assert site.stored() == []


def test_without_a_source_root_nothing_is_read(site, key):
    site.package()
    raises(fleet_store.publish, site.store, NAME, "1.0", "job/out/app.msi", None, key[0],
           match=r"^kiosk_release:source_root: not set")


def test_a_symlink_or_hard_link_in_the_source_is_refused(site, key, tmp_path):
    (tmp_path / "secret").write_bytes(b"secret")
    site.package()
    os.symlink(tmp_path / "secret", site.root / "job" / "out" / "link.msi")
    raises(publish, site, key, source="job/out", match=r"^source\.link\.msi: link\.msi is a symlink")
    os.unlink(site.root / "job" / "out" / "link.msi")
    os.link(tmp_path / "secret", site.root / "job" / "out" / "hard.msi")
    raises(publish, site, key, source="job/out", match=r"hard links")
    assert site.stored() == []


def test_a_wrong_md5_is_refused_and_nothing_stored(site, key):
    site.package()
    raises(publish, site, key, md5="0" * 32, match=r"^md5: the package's md5 is [0-9a-f]{32}, the pipeline said")
    (site.root / "job" / "out" / "b.msi").write_bytes(b"b")
    raises(publish, site, key, source="job/out", md5="0" * 32, match=r"^md5: only for a single-file source")
    assert site.stored() == []


def test_the_install_command_comes_from_the_package(site, key):
    pkg = site.package()
    install = pkg.parent / "kiosk-install.json"
    install.write_text(json.dumps({"install": ["setup.exe", "/S"], "success_codes": [0, 3010]}))
    doc = publish(site, key, source="job/out", install=None)
    assert doc["install"] == ["setup.exe", "/S"] and doc["success_codes"] == [0, 3010]
    install.write_text(json.dumps(["setup.exe"]))
    assert publish(site, key, "1.1", source="job/out", install=None, success_codes=[0, 1])["success_codes"] == [0, 1]
    for text, match in [('"setup.exe /S"', r"^source\.kiosk-install\.json: expected a list"),
                        ("{not json", r"^source\.kiosk-install\.json: not valid JSON"),
                        ('{"install": ["a"], "shell": "x"}', r"^source\.kiosk-install\.json: unknown key shell"),
                        ('{"install": "a b"}', r"^source\.kiosk-install\.json\.install: "),
                        ('{"install": ["a"], "success_codes": "0"}', r"^source\.kiosk-install\.json\.success_codes: "),
                        ("[" + '"a",' * 40000 + '"a"]', r"^source\.kiosk-install\.json: larger than 64 KiB")]:
        install.write_text(text)
        raises(publish, site, key, "1.2", source="job/out", install=None, match=match)
    assert fleet_store.published(site.store, NAME) == ["1.0.0", "1.1"]
    # a command given wins over the package's, and a shell string given is refused before any copy
    assert publish(site, key, "1.2", source="job/out")["install"] == INSTALL
    raises(publish, site, key, "1.3", source="job/out", install="msiexec /i x", match=r"^install: ")
    raises(publish, site, key, "1.3", source="job/out", success_codes="zero", match=r"^success_codes: ")


def test_a_full_disk_is_said_plainly_and_leaves_no_staging(site, key, monkeypatch):
    import errno

    site.package()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fleet_store.os, "rename", full)
    raises(publish, site, key, match=r"^store: no space left while writing")
    assert site.stored() == []


def test_the_store_reads_back_what_it_holds_and_names_what_it_does_not(site, key):
    site.package()
    publish(site, key, "1.0.0")
    raises(fleet_store.manifest, site.store, NAME, "2.0", match=r"^version: kiosk-app 2\.0 is not published "
                                                               r"\(published: 1\.0\.0\)")
    raises(fleet_store.manifest, site.store, "other", "2.0", match=r"published: none")
    raises(fleet_store.manifest, site.store, NAME, 1.0, match=r"^version: ")
    assert fleet_store.published(site.store, "other") == []
    assert set(fleet_store.manifests(site.store, NAME, ["1.0.0", "2.0", None, "x", 5])) == {"1.0.0"}
    with open(os.path.join(site.store, NAME, "1.0.0", "manifest.json"), "w") as handle:
        handle.write("[1]")
    raises(fleet_store.manifest, site.store, NAME, "1.0.0", match=r"expected a JSON object")
    assert fleet_store.manifests(site.store, NAME, ["1.0.0"]) == {}


# --------------------------------------------------------------------------- rollback copies


def test_a_rollback_copy_hard_links_the_old_files_under_a_new_signed_version(site, key):
    site.package(data=b"old build")
    publish(site, key, "1.0.0", success_codes=[0, 3010])
    site.package(data=b"new build")
    publish(site, key, "1.1.0")
    doc = fleet_store.rollback_copy(site.store, NAME, "1.0.0", "1.1.1", key[0])
    fleet_sign.verify_signature(doc, key[1])
    old = os.stat(os.path.join(site.store, NAME, "1.0.0", "app.msi"))
    new = os.stat(os.path.join(site.store, NAME, "1.1.1", "app.msi"))
    assert (old.st_ino, old.st_dev) == (new.st_ino, new.st_dev)  # the same file, no second copy
    assert doc["rollback_of"] == "1.0.0" and doc["files"] == fleet_store.manifest(site.store, NAME, "1.0.0")["files"]
    assert doc["install"] == INSTALL and doc["success_codes"] == [0, 3010]
    assert fleet_store.published(site.store, NAME) == ["1.0.0", "1.1.0", "1.1.1"]


def test_a_rollback_copy_of_a_corrupted_file_is_refused(site, key):
    site.package(data=b"old build")
    publish(site, key, "1.0.0")
    with open(os.path.join(site.store, NAME, "1.0.0", "app.msi"), "wb") as handle:
        handle.write(b"bit rot!!")
    raises(fleet_store.rollback_copy, site.store, NAME, "1.0.0", "1.0.1", key[0],
           match=r"^kiosk-app 1\.0\.0 app\.msi: (size|md5) mismatch")
    raises(fleet_store.rollback_copy, site.store, NAME, "0.9", "1.0.1", key[0], match=r"^version: .* is not published")
    assert fleet_store.published(site.store, NAME) == ["1.0.0"]
    assert os.listdir(os.path.join(site.store, ".staging")) == []


# --------------------------------------------------------------------------- chunk lists for delta transfers


def test_publish_lists_the_chunks_of_every_file_and_signs_them(site, key):
    big = random.Random(1).randbytes(3 * 2**20 + 5)
    site.package("job/out/app.bin", big)
    site.package("job/out/empty.txt", b"")
    doc = publish(site, key, source="job/out")
    fleet_sign.verify_signature(doc, key[1])
    chunks = doc["files"]["app.bin"]["chunks"]
    assert len(chunks) > 10 and sum(c[0] for c in chunks) == len(big)
    offset = 0
    for length, digest in chunks:
        assert hashlib.sha256(big[offset:offset + length]).hexdigest() == digest
        offset += length
    assert doc["files"]["empty.txt"]["chunks"] == []
    assert fleet_store.manifest(site.store, NAME, "1.0.0") == doc  # what the Pis read is what was signed
    tampered = json.loads(json.dumps(doc))
    tampered["files"]["app.bin"]["chunks"][3][1] = "0" * 64
    with pytest.raises(fleet_release.SignatureError):
        fleet_sign.verify_signature(tampered, key[1])


def test_publish_without_fastcdc_is_refused_naming_chunks_and_stores_nothing(site, key, monkeypatch):
    site.package()
    monkeypatch.setattr(fleet_delta, "cdc_available", lambda: (False, False))
    raises(publish, site, key, match=r"^kiosk-app 1\.0\.0 app\.msi chunks: the fastcdc package is missing")
    assert site.stored() == []


def test_a_rollback_copy_carries_the_old_chunks_or_computes_missing_ones(site, key):
    old = random.Random(2).randbytes(600 * 1024)
    site.package(data=old)
    first = publish(site, key, "1.0.0")
    site.package(data=b"new build")
    publish(site, key, "1.1.0")
    doc = fleet_store.rollback_copy(site.store, NAME, "1.0.0", "1.1.1", key[0])
    assert doc["files"]["app.msi"]["chunks"] == first["files"]["app.msi"]["chunks"]
    # a version published before chunk lists existed: its rollback copy gets them
    legacy = json.loads(json.dumps(first))
    del legacy["files"]["app.msi"]["chunks"]
    path = os.path.join(site.store, NAME, "1.0.0", "manifest.json")
    with open(path, "w") as handle:
        json.dump(fleet_sign.sign_manifest(legacy, key[0]), handle)
    doc = fleet_store.rollback_copy(site.store, NAME, "1.0.0", "1.1.2", key[0])
    assert doc["files"]["app.msi"]["chunks"] == first["files"]["app.msi"]["chunks"]
    fleet_sign.verify_signature(doc, key[1])
