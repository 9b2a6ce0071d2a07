"""
``kiosk_release.publish`` and ``keygen`` loaded by Salt's runner loader (as
on the top master), with real files, real Ed25519 keys and real HTTP servers
on 127.0.0.1: a source outside ``kiosk_release:source_root``, through ``..``,
through a symlinked file or directory, a hard link, and a URL that redirects
are refused and leave nothing in the store; a real source is published,
signed by the configured key. A published event nobody recorded does nothing.
"""

import hashlib
import http.server
import json
import os
import pathlib
import stat
import threading

import pytest
import salt.config
import salt.loader
import yaml

import fleet_sign
from tests.support.topology import two_campus_inventory

REPO = pathlib.Path(__file__).resolve().parents[2]
NAME = "kiosk-app"
INSTALL = ["msiexec", "/i", "{dir}\\app.msi", "/qn"]


class Http:
    """A loopback server: ``/pkg/app.msi`` is a package, ``/redirect/app.msi`` redirects to it (or elsewhere)."""

    def __init__(self):
        self.hits = []
        self.body = b"MSI over http"
        self.location = None
        http_server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                http_server.hits.append(self.path)
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", http_server.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(http_server.body)))
                self.end_headers()
                self.wfile.write(http_server.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_servers():
    servers = [Http(), Http()]
    yield servers
    for server in servers:
        server.close()


class Master:
    def __init__(self, tmp_path, without=()):
        self.root = tmp_path / "builds"
        self.store = tmp_path / "store"
        self.key = tmp_path / "keys" / "kiosk_release.pem"
        self.root.mkdir(exist_ok=True)
        self.conf = {"store": str(self.store), "source_root": str(self.root), "signing_key": str(self.key)}
        for key in without:
            del self.conf[key]
        fleet = tmp_path / "fleet.yaml"  # the master-only fleet data (on_published reads the inventory)
        fleet.write_text(yaml.safe_dump(two_campus_inventory(wol_port=9)))
        opts = salt.config.master_config(None)
        opts.update({"kiosk_fleet": {"data": str(fleet)}, "root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                     "sock_dir": str(tmp_path / "sock"), "module_dirs": [str(REPO)], "id": "top_master",
                     "file_roots": {"base": [str(tmp_path / "files")]}, "__role": "master",
                     "kiosk_release": self.conf})
        self.opts = opts
        self.runners = salt.loader.runner(opts, utils=salt.loader.utils(opts))
        self.state_file = pathlib.Path(opts["cachedir"]) / "kiosk_release" / "state.json"

    def run(self, fun, *args, **kwargs):
        return self.runners[f"kiosk_release.{fun}"](*args, **kwargs)

    def stored(self):
        """Every file under the store but the metrics/staging bookkeeping: what publish left."""
        if not self.store.exists():
            return []
        return sorted(str(p.relative_to(self.store)) for p in self.store.rglob("*") if p.is_file())

    def package(self, rel="job/out/app.msi", data=b"MSI build output"):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@pytest.fixture
def master(tmp_path):
    m = Master(tmp_path)
    keygen = m.run("keygen")
    assert keygen["result"] is True, keygen
    m.public = keygen["public_key"]
    return m


def publish(master, source, version="1.0.0", **kwargs):
    return master.run("publish", name=NAME, version=version, source=str(source), install=INSTALL, **kwargs)


def test_keygen_writes_a_private_key_only_root_reads_and_never_returns_it(tmp_path):
    m = Master(tmp_path)
    ret = m.run("keygen")
    assert ret["result"] is True and ret["retcode"] == 0 and ret["path"] == str(m.key)
    assert stat.S_IMODE(m.key.stat().st_mode) == 0o600
    private = m.key.read_bytes()
    assert b"PRIVATE KEY" in private and "PRIVATE" not in json.dumps(ret)
    again = m.run("keygen")
    assert again["result"] is False and again["error"].startswith("path:") and "force=True" in again["error"]
    assert m.key.read_bytes() == private  # untouched
    forced = m.run("keygen", force=True)
    assert forced["result"] is True and forced["public_key"] != ret["public_key"]
    assert m.run("public_key")["public_key"] == forced["public_key"]
    assert m.run("keygen", path="relative.pem")["error"].startswith("path:")


def test_publish_signs_every_manifest_with_the_configured_key(master):
    pkg = master.package()
    ret = publish(master, pkg, md5=hashlib.md5(pkg.read_bytes()).hexdigest())
    assert ret["result"] is True and ret["signed"] is True, ret
    manifest = json.loads((master.store / NAME / "1.0.0" / "manifest.json").read_text())
    fleet_sign.verify_signature(manifest, master.public)
    assert (master.store / NAME / "1.0.0" / "app.msi").read_bytes() == pkg.read_bytes()
    # a relative source is read under the root too; a directory source takes its files
    (master.root / "job" / "out" / "kiosk-install.json").write_text("[]")
    ret = publish(master, "job/out", version="1.1.0")
    assert ret["result"] is True and sorted(ret["files"]) == ["app.msi", "kiosk-install.json"], ret


def test_publish_refuses_to_run_without_a_signing_key(tmp_path):
    m = Master(tmp_path)  # no keygen: the configured key file does not exist
    pkg = m.package()
    ret = publish(m, pkg)
    assert ret["result"] is False and ret["retcode"] == 1
    assert "signing_key" in ret["error"] and "cannot read" in ret["error"], ret
    m = Master(tmp_path, without=["signing_key"])
    ret = publish(m, pkg)
    assert "signing_key" in ret["error"] and "not set" in ret["error"], ret
    assert m.stored() == []


def test_publish_refuses_a_private_key_others_can_read(master):
    os.chmod(master.key, 0o644)
    ret = publish(master, master.package())
    assert ret["result"] is False and "signing_key" in ret["error"] and "chmod 600" in ret["error"], ret
    assert master.stored() == []


def test_publish_refuses_without_a_source_root(tmp_path):
    m = Master(tmp_path, without=["source_root"])
    assert m.run("keygen")["result"] is True
    ret = publish(m, m.package())
    assert ret["result"] is False and ret["error"].startswith("kiosk_release:source_root: not set"), ret
    assert m.stored() == []


def refused(master, source, match, version="1.0.0"):
    ret = publish(master, source, version=version)
    assert ret["result"] is False and ret["retcode"] == 1, ret
    assert ret["error"].startswith("source") and match in ret["error"], ret
    assert master.stored() == [], master.stored()  # nothing stored, no staging leftovers
    return ret


def test_publish_refuses_a_source_outside_the_root(master, tmp_path):
    outside = tmp_path / "elsewhere.msi"
    outside.write_bytes(b"not a build")
    refused(master, outside, "is not under the source root")
    refused(master, "/etc/passwd", "is not under the source root")


def test_publish_refuses_dot_dot(master, tmp_path):
    master.package()
    (tmp_path / "secret.msi").write_bytes(b"secret")
    refused(master, master.root / "job" / ".." / ".." / "secret.msi", "'..' is not allowed")
    refused(master, "job/../../secret.msi", "'..' is not allowed")


def test_publish_refuses_a_symlinked_file(master, tmp_path):
    (tmp_path / "secret.msi").write_bytes(b"secret")
    master.package()
    os.symlink(tmp_path / "secret.msi", master.root / "job" / "out" / "link.msi")
    refused(master, master.root / "job" / "out" / "link.msi", "link.msi is a symlink")
    refused(master, master.root / "job" / "out", "link.msi is a symlink")  # inside a directory source


def test_publish_refuses_a_symlinked_directory_component(master, tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow.msi").write_bytes(b"root:x")
    os.symlink(tmp_path / "etc", master.root / "job-link")
    refused(master, master.root / "job-link" / "shadow.msi", "job-link is a symlink")
    refused(master, master.root / "job-link", "job-link is a symlink")


def test_publish_refuses_a_hard_link(master, tmp_path):
    secret = tmp_path / "secret.msi"
    secret.write_bytes(b"secret")
    (master.root / "job").mkdir()
    os.link(secret, master.root / "job" / "app.msi")
    refused(master, master.root / "job" / "app.msi", "hard links")


def test_publish_from_a_url_follows_no_redirect_and_no_proxy(master, http_servers, monkeypatch):
    origin, elsewhere = http_servers
    origin.location = f"{elsewhere.url}/pkg/app.msi"
    ret = refused(master, f"{origin.url}/redirect/app.msi?token=SECRET123", "redirect")
    assert "SECRET123" not in json.dumps(ret) and "/redirect/" not in ret["error"]
    assert origin.hits == ["/redirect/app.msi?token=SECRET123"] and elsewhere.hits == []  # not followed
    # a proxy from the environment is ignored: the origin is asked directly
    monkeypatch.setenv("http_proxy", elsewhere.url)
    monkeypatch.setenv("HTTP_PROXY", elsewhere.url)
    ret = publish(master, f"{origin.url}/pkg/app.msi")
    assert ret["result"] is True and ret["files"]["app.msi"]["size"] == len(origin.body), ret
    assert elsewhere.hits == []


def test_a_url_that_cannot_be_reached_names_the_host_only(master):
    ret = refused(master, "http://127.0.0.1:9/pkg/app.msi?token=SECRET123", "cannot be downloaded")
    assert "SECRET123" not in ret["error"] and "ConnectionError contacting http://127.0.0.1:9" in ret["error"]


def test_an_invented_published_event_does_nothing(master):
    assert publish(master, master.package())["result"] is True
    before = master.state_file.read_bytes()
    mtime = master.state_file.stat().st_mtime_ns
    for campuses in (["east"], ["east", "west"], None):
        ret = master.run("on_published", name=NAME, version="1.0.0", campuses=campuses)
        assert ret["result"] is True and ret["staged"] is False, ret
    ret = master.run("on_published", name=NAME, version="0.0.1", campuses="east")
    assert ret["staged"] is False
    assert master.state_file.read_bytes() == before and master.state_file.stat().st_mtime_ns == mtime
    bad = master.run("on_published", name="../etc", version="1.0.0")
    assert bad["result"] is False and bad["error"].startswith("name:")


def test_the_install_command_comes_from_the_package_when_not_given(master):
    pkg = master.package("job/out/app.msi")
    (pkg.parent / "kiosk-install.json").write_text(json.dumps(
        {"install": ["msiexec", "/i", "{dir}\\app.msi", "/qn", "/norestart"], "success_codes": [0, 3010]}))
    ret = master.run("publish", name=NAME, version="2.0.0", source=str(pkg.parent))
    assert ret["result"] is True, ret
    manifest = json.loads((master.store / NAME / "2.0.0" / "manifest.json").read_text())
    assert manifest["install"][:2] == ["msiexec", "/i"] and manifest["success_codes"] == [0, 3010]
    (pkg.parent / "kiosk-install.json").write_text('"msiexec /i app.msi"')  # a shell string: refused
    ret = master.run("publish", name=NAME, version="2.1.0", source=str(pkg.parent))
    assert ret["result"] is False and ret["error"].startswith("source.kiosk-install.json:"), ret
    assert not (master.store / NAME / "2.1.0").exists()


def test_publish_to_campuses_records_what_waits_and_other_events_do_not_touch_it(master):
    ret = publish(master, master.package(), campuses="east")
    assert ret["result"] is True and ret["campuses"] == ["east"], ret
    state = json.loads(master.state_file.read_text())
    serial = state["pins"][NAME]["east"]["serial"]
    assert state["to_stage"] == {NAME: {"east": serial}}
    assert state["pins"][NAME]["east"]["signed"]["campus"] == "east"  # the pin is signed
    before = master.state_file.read_bytes()
    # an event naming another campus or another version claims nothing
    for version, campuses in (("1.0.0", "west"), ("0.9.0", "east"), ("1.0.1", "east")):
        ret = master.run("on_published", name=NAME, version=version, campuses=campuses)
        assert ret["result"] is True and ret["staged"] is False, ret
    assert master.state_file.read_bytes() == before
