"""
The kiosk release repository served by a real nginx (``tests/support/nginx.py``)
from the templates ``kiosk_fleet.release_repo`` installs, on 127.0.x.y only:
downloads, ranges, methods, hidden and staging files, symlinks, traversal,
caching headers and the access log; then the state itself rendered through
Salt's own loaders (pillar inventory -> listen addresses), its file.managed
run for real into a temp dir (template + check_cmd), and nginx -t.
"""

import hashlib
import http.client
import os
import pathlib
import shlex
import socket
import subprocess

import fleet_inventory
import pytest
import salt.config
import salt.loader
import yaml

from tests.support.nginx import NginxRepo, nginx_binary, render

REPO = pathlib.Path(__file__).resolve().parents[2]
SECRET = b"kiosk-release-repo: this file is outside the repository\n"
PI_ADDRESSES = ["127.0.1.2", "127.0.2.2"]  # pi-riverside-1 in pillar/fleet.yaml (hall, upstairs)

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/bootstrap installs it)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("release-repo")
    repo = base / "repo"
    (repo / "app" / "1.0.0").mkdir(parents=True)
    (repo / "app" / "index.json").write_text('{"name": "app", "versions": ["1.0.0"]}\n')
    (repo / "app" / "1.0.0" / "manifest.json").write_text('{"files": {"pkg.bin": {}}}\n')
    (repo / "app" / "1.0.0" / "pkg.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (repo / ".staging").mkdir()
    (repo / ".staging" / "x.tmp").write_bytes(b"half-downloaded " + SECRET)
    (base / "secret.txt").write_bytes(SECRET)
    (repo / "app" / "1.0.0" / "outside.bin").symlink_to(base / "secret.txt")
    (repo / "app" / "1.0.0" / ".hidden").write_bytes(SECRET)
    return base


@pytest.fixture(scope="module")
def nginx(tree):
    with NginxRepo(PI_ADDRESSES, tree / "repo", tree / "nginx") as repo:
        yield repo


def request(repo, method, path, headers=None, body=None, listen=None):
    host, port = (listen or repo.listen[0]).split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, "/kiosk-releases/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_serves_the_repository_read_only(nginx, tree):
    pkg = (tree / "repo" / "app" / "1.0.0" / "pkg.bin").read_bytes()
    before = len(nginx.log_entries())

    # every listen address answers; whole file, byte for byte
    for listen in nginx.listen:
        status, headers, body = request(nginx, "GET", "app/1.0.0/pkg.bin", listen=listen)
        assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(pkg).digest()
        assert "immutable" in headers["cache-control"]
        assert headers["content-type"] == "application/octet-stream"

    # resuming a download: the tail only
    offset = len(pkg) - 123_457
    status, headers, body = request(nginx, "GET", "app/1.0.0/pkg.bin", {"Range": f"bytes={offset}-"})
    assert status == 206 and body == pkg[offset:]
    headers_range = headers["content-range"]
    assert headers_range == f"bytes {offset}-{len(pkg) - 1}/{len(pkg)}"

    status, headers, body = request(nginx, "HEAD", "app/1.0.0/pkg.bin")
    assert (status, body, int(headers["content-length"])) == (200, b"", len(pkg))

    status, headers, body = request(nginx, "GET", "app/index.json")
    assert status == 200 and body == (tree / "repo" / "app" / "index.json").read_bytes()
    assert headers["cache-control"] == "no-cache" and headers["content-type"] == "application/json"
    status, headers, _ = request(nginx, "GET", "app/1.0.0/manifest.json")
    assert status == 200 and "immutable" in headers["cache-control"]

    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = request(nginx, method, "app/1.0.0/manifest.json", body=b"x")
        assert status == 405, method
        assert headers.get("allow") == "GET, HEAD"

    # staging and hidden files, directory listings, symlinks (even within the tree), other prefixes
    for path in (".staging/x.tmp", ".staging/", "app/1.0.0/.hidden", "app/", ""):
        status, _, body = request(nginx, "GET", path)
        assert status in (403, 404), path
        assert SECRET not in body and b"pkg.bin" not in body, path
    status, _, body = request(nginx, "GET", "app/1.0.0/outside.bin")
    assert status == 403 and SECRET not in body

    # the access log: one entry per request, body bytes actually sent, the Range header
    entries = nginx.wait_for_log(before + 15)[before:]
    assert len(entries) == 15
    assert {e["remote_addr"] for e in entries} == {"127.0.0.1"}
    full, ranged, head = entries[0], entries[2], entries[3]
    assert (full["method"], full["path"], full["status"], full["bytes"], full["range"]) == (
        "GET", "/kiosk-releases/app/1.0.0/pkg.bin", 200, len(pkg), "")
    assert {e["server_addr"] for e in entries[:2]} == set(PI_ADDRESSES)
    assert (ranged["status"], ranged["bytes"], ranged["range"]) == (206, len(pkg) - offset, f"bytes={offset}-")
    assert ranged["content_range"] == headers_range
    assert (head["method"], head["status"], head["bytes"]) == ("HEAD", 200, 0)
    assert [e["status"] for e in entries if e["method"] in ("POST", "PUT", "DELETE")] == [405] * 3
    assert nginx.bytes_served("app/1.0.0/pkg.bin") == 3 * len(pkg) - offset
    assert nginx.bytes_served("/kiosk-releases/app/1.0.0/pkg.bin") == 3 * len(pkg) - offset


def test_one_range_per_request_at_most(nginx, tree):
    """max_ranges 1: a resume ("bytes=N-") or one range is answered, several ranges get the plain file."""
    pkg = (tree / "repo" / "app" / "1.0.0" / "pkg.bin").read_bytes()
    status, headers, body = request(nginx, "GET", "app/1.0.0/pkg.bin", {"Range": "bytes=100-199"})
    assert (status, body, headers["content-range"]) == (206, pkg[100:200], f"bytes 100-199/{len(pkg)}")
    # 300 overlapping whole-file ranges: nginx without the limit answers a 206 multipart/byteranges
    # 300 times the file's size; with it, the file once, as if no Range had been sent
    status, headers, body = request(nginx, "GET", "app/1.0.0/pkg.bin", {"Range": "bytes=" + ",".join(["0-"] * 300)})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert len(body) == len(pkg) and body == pkg
    status, headers, body = request(nginx, "GET", "app/1.0.0/pkg.bin", {"Range": "bytes=0-9,20-29"})
    assert status == 200 and "multipart" not in headers["content-type"] and body == pkg


@pytest.mark.parametrize("target", [
    "/kiosk-releases/../../../../../../etc/passwd",
    "/kiosk-releases/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/kiosk-releases/..%2f..%2f..%2f..%2f..%2f..%2fetc/passwd",
    "/kiosk-releases/app/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/kiosk-releases/../secret.txt",           # resolves to /secret.txt: not under /kiosk-releases/
    "/kiosk-releases/%2e%2e/secret.txt",
    "/kiosk-releases/app/..%2f..%2fsecret.txt",
    "/kiosk-releases../secret.txt",            # the alias off-by-slash classic
    "/kiosk-releases/app/1.0.0/..%5c..%5c..%5csecret.txt",
    "/kiosk-releases/app/../.staging/x.tmp",
])
def test_traversal_is_refused(nginx, target):
    status, data = nginx.raw_get(target)
    assert 400 <= status < 500, data[:200]
    assert SECRET not in data and b"root:x:0:0" not in data


def test_nginx_dies_with_a_clear_error_on_a_taken_port(tree, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        repo = NginxRepo([f"127.0.0.1:{port}"], tree / "repo", tmp_path / "nginx", start_timeout=5)
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                repo.start()  # not fooled by the connection the other listener accepts
            assert not repo.is_running
        finally:
            repo.stop()


class CampusRepo(NginxRepo):
    """The shipped server block rendered with ``campus_pis``, as Salt renders it on a Pi from its pillar."""

    def __init__(self, listen, repo_dir, workdir, campus_pis):
        super().__init__(listen, repo_dir, workdir)
        self.campus_pis = campus_pis

    def write_config(self, server_conf=None, name="nginx.conf"):
        if server_conf is None:
            server_conf = render("kiosk-release-repo.conf.jinja", listen=self.listen, repo_dir=str(self.repo_dir),
                                 access_log=str(self.access_log), campus_pis=self.campus_pis)
        return super().write_config(server_conf, name)


def fetch_from(listen, path, source):
    """GET ``/kiosk-releases/<path>`` from the loopback address ``source`` (a Pi, or a kiosk)."""
    host, port = listen.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/kiosk-releases/" + path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_campus_folder_is_for_the_campus_pis_only_and_never_cached(tree, tmp_path):
    (tree / "repo" / "campus").mkdir(exist_ok=True)
    (tree / "repo" / "campus" / "calendar.json").write_text('{"kind": "calendar"}\n')
    (tree / "repo" / "campus" / "status.json").write_text('{"kind": "campus-status"}\n')
    with CampusRepo(["127.0.1.2"], tree / "repo", tmp_path / "nginx", ["127.0.1.2", "127.0.1.3"]) as repo:
        for pi in ("127.0.1.2", "127.0.1.3"):  # a peer Pi, and the Pi itself
            status, headers, body = fetch_from(repo.listen[0], "campus/calendar.json", pi)
            assert status == 200 and body == b'{"kind": "calendar"}\n'
            assert headers["cache-control"] == "no-cache"
        # a kiosk (any other address of the VLAN) reads no calendar, no status
        for path in ("campus/calendar.json", "campus/status.json", "campus/../campus/status.json"):
            status, _, body = fetch_from(repo.listen[0], path, "127.0.1.50")
            assert status in (400, 403) and b"kind" not in body, (path, status)
        # the releases stay open to the kiosks, cached as before
        status, headers, _ = fetch_from(repo.listen[0], "app/index.json", "127.0.1.50")
        assert status == 200 and headers["cache-control"] == "no-cache"
        status, headers, _ = fetch_from(repo.listen[0], "app/1.0.0/manifest.json", "127.0.1.50")
        assert status == 200 and "immutable" in headers["cache-control"]


# --- the state, rendered through Salt ---------------------------------------------------------------------

def _minion(root, minion_id, pillar):
    opts = salt.config.minion_config(None)
    opts.update({
        "id": minion_id, "file_client": "local", "root_dir": str(root / "r"), "cachedir": str(root / "cache"),
        "pki_dir": str(root / "pki"), "sock_dir": str(root / "sock"), "log_file": str(root / "minion.log"),
        "file_roots": {"base": [str(REPO / "states")]}, "pillar_roots": {"base": [str(pillar)]},
        "enable_fqdns_grains": False,  # no reverse-DNS lookups (network rule)
    })
    opts["grains"] = salt.loader.grains(opts)
    # a campus grain that lies: the state takes the campus from the pillar inventory, never from this
    opts["grains"]["campus"] = "hillside"
    # a loader namespace per minion: two minions loaded in one process must not share module objects
    base = f"salt.loaded.kfrepo_{minion_id.replace('-', '_')}"
    return salt.loader.minion_mods(opts, utils=salt.loader.utils(opts, loaded_base_name=base), loaded_base_name=base)


@pytest.fixture(scope="module")
def pillar_tree(tmp_path_factory):
    """The Pi's pillar as the master computes it: its slice of the sample fleet data (pillar/kiosk_fleet.sls)."""
    root = tmp_path_factory.mktemp("pi-minion")
    pillar = root / "pillar"
    pillar.mkdir()
    # the inventory only for the Pi (as slice_for gives it); release_repo settings for every minion
    (pillar / "top.sls").write_text("base:\n  'pi-riverside-1':\n    - kiosk_fleet\n  '*':\n    - release_repo\n")
    fleet = yaml.safe_load((REPO / "pillar" / "fleet.yaml").read_text())
    (pillar / "kiosk_fleet.sls").write_text(yaml.safe_dump(fleet_inventory.slice_for(fleet, "pi-riverside-1")))
    (pillar / "release_repo.sls").write_text(yaml.safe_dump({"kiosk_release_repo": {
        # no port: it comes from the campus repo_port of the inventory (8080 in the sample), as kiosks use it
        "repo_dir": str(root / "releases"), "access_log": str(root / "access.log")}}))
    return root, pillar


@pytest.fixture(scope="module")
def pi_minion(pillar_tree):
    root, pillar = pillar_tree
    return root, _minion(root, "pi-riverside-1", pillar)


def _args(state, function):
    """{arg: value} of one state function in state.show_sls's output."""
    args = {}
    for item in state[function]:
        if isinstance(item, dict):
            args.update(item)
    return args


def test_state_renders_the_pi_config_from_the_inventory(pi_minion, tmp_path):
    root, mods = pi_minion
    states = mods["state.show_sls"]("kiosk_fleet.release_repo")
    assert isinstance(states, dict), states  # a list of render errors otherwise
    assert _args(states["kiosk_release_repo_nginx"], "pkg")["name"] == "nginx"
    assert _args(states["kiosk_release_repo_dir"], "file")["name"] == str(root / "releases")
    service = _args(states["kiosk_release_repo_service"], "service")
    assert (service["name"], service["reload"]) == ("nginx", True)
    assert {"file": "kiosk_release_repo_site"} in service["watch"]
    assert {"file": "kiosk_release_repo_log_format"} in service["watch"]
    http = _args(states["kiosk_release_repo_log_format"], "file")
    assert http["name"] == "/etc/nginx/conf.d/kiosk-release-repo-http.conf"
    site = _args(states["kiosk_release_repo_site"], "file")
    assert site["name"] == "/etc/nginx/sites-enabled/kiosk-release-repo.conf"
    assert site["context"] == {"listen": [f"{a}:8080" for a in PI_ADDRESSES], "repo_dir": str(root / "releases"),
                               "access_log": str(root / "access.log"), "limit_rate": ""}
    assert site["check_cmd"].startswith("/bin/sh -c ")
    # Salt's check_cmd temp file lands in the minion's cwd unless tmp_dir is set
    assert site["tmp_dir"] == "/etc/nginx"

    # the http-level snippet and the site through Salt's file.managed, as on the Pi (template, context,
    # check_cmd), into a temp dir; the check includes the snippet from there
    http_conf = tmp_path / "kiosk-release-repo-http.conf"
    ret = mods["state.single"]("file.managed", name=str(http_conf), source=http["source"], template="jinja")
    assert all(r["result"] for r in ret.values()), ret
    check_cmd = site["check_cmd"].replace(http["name"], str(http_conf))
    assert str(http_conf) in check_cmd

    dest = tmp_path / "kiosk-release-repo.conf"
    ret = mods["state.single"]("file.managed", name=str(dest), source=site["source"], template="jinja",
                               context=site["context"], check_cmd=check_cmd, tmp_dir=str(tmp_path))
    assert all(r["result"] for r in ret.values()), ret
    conf = dest.read_text()
    assert [line.strip() for line in conf.splitlines() if line.strip().startswith("listen ")] == [
        "listen 127.0.1.2:8080;", "listen 127.0.2.2:8080;"]
    assert f'alias "{root / "releases"}/";' in conf
    assert f'access_log "{root / "access.log"}" kiosk_release_repo;' in conf
    assert "limit_rate" not in conf  # no pillar limit_rate: no cap
    # the campus runtime's folder: this Pi's campus's Pis only (their VLAN sources and master addresses)
    riverside = ["127.0.1.2", "127.0.1.3", "127.0.2.2", "127.0.2.3"]
    assert [line.strip() for line in conf.splitlines() if line.strip().startswith(("allow ", "deny "))] == [
        f"allow {a};" for a in riverside] + ["deny all;"]
    # the tests' nginx renders the same files with plain jinja2 (the Pis' addresses given): same text
    assert conf == render("kiosk-release-repo.conf.jinja", **site["context"], campus_pis=riverside)
    assert http_conf.read_text() == render("kiosk-release-repo-http.conf.jinja")

    # and nginx accepts it in the tests' main conf
    checked = NginxRepo(PI_ADDRESSES, root / "releases", tmp_path / "nginx").check(server_conf=conf)
    assert checked.returncode == 0, checked.stderr

    # a config nginx refuses is not installed: check_cmd fails, the file keeps its content
    bad = dict(site["context"], listen=["127.0.1.2:notaport"])
    ret = mods["state.single"]("file.managed", name=str(dest), source=site["source"], template="jinja",
                               context=bad, check_cmd=check_cmd, tmp_dir=str(tmp_path))
    (result,) = ret.values()
    assert result["result"] is False and "check_cmd execution failed" in result["comment"], result
    assert "invalid port" in result["comment"]
    assert dest.read_text() == conf


@pytest.mark.parametrize("rate", ["256k", "1M", 125000])
def test_a_pillar_limit_rate_lands_in_the_server_block_and_nginx_accepts_it(pi_minion, tmp_path, rate):
    root, mods = pi_minion
    pillar = {"kiosk_release_repo": {"repo_dir": str(root / "releases"), "access_log": str(root / "access.log"),
                                     "limit_rate": rate}}
    states = mods["state.show_sls"]("kiosk_fleet.release_repo", pillar=pillar)
    assert isinstance(states, dict) and "kiosk_release_repo_site" in states, states
    site = _args(states["kiosk_release_repo_site"], "file")
    assert site["context"]["limit_rate"] == str(rate)
    http = _args(states["kiosk_release_repo_log_format"], "file")
    http_conf = tmp_path / "kiosk-release-repo-http.conf"
    ret = mods["state.single"]("file.managed", name=str(http_conf), source=http["source"], template="jinja")
    assert all(r["result"] for r in ret.values()), ret
    dest = tmp_path / "kiosk-release-repo.conf"
    # Salt's own check_cmd (nginx -t of the candidate) passes with the directive in it
    ret = mods["state.single"]("file.managed", name=str(dest), source=site["source"], template="jinja",
                               context=site["context"], check_cmd=site["check_cmd"].replace(http["name"], str(http_conf)),
                               tmp_dir=str(tmp_path))
    assert all(r["result"] for r in ret.values()), ret
    conf = dest.read_text()
    assert [line.strip() for line in conf.splitlines() if line.strip().startswith("limit_rate")] == [
        f"limit_rate {rate};"]
    checked = NginxRepo(PI_ADDRESSES, root / "releases", tmp_path / "nginx").check(server_conf=conf)
    assert checked.returncode == 0, checked.stderr
    # the tests' plain-jinja2 render gives the same text
    assert conf == render("kiosk-release-repo.conf.jinja", **site["context"],
                          campus_pis=["127.0.1.2", "127.0.1.3", "127.0.2.2", "127.0.2.3"])


@pytest.mark.parametrize("rate", ["1m; return 200 x", "fast", "0", "-1k", "1g", "1.5m", True, "256k\nlisten 0.0.0.0:80"])
def test_a_limit_rate_that_is_no_nginx_rate_fails_the_state_and_installs_nothing(pi_minion, rate):
    root, mods = pi_minion
    pillar = {"kiosk_release_repo": {"repo_dir": str(root / "releases"), "limit_rate": rate}}
    states = mods["state.show_sls"]("kiosk_fleet.release_repo", pillar=pillar)
    assert list(states) == ["kiosk_release_repo_bad_limit_rate"], states
    assert "kiosk_release_repo:limit_rate: " in _args(states["kiosk_release_repo_bad_limit_rate"], "test")["name"]


def test_state_off_the_inventory_needs_listen_from_pillar(pillar_tree, tmp_path):
    """The central master is no Pi of the inventory: no address at all fails the state (never 0.0.0.0)."""
    _, pillar = pillar_tree
    mods = _minion(tmp_path, "salt-top", pillar)  # no inventory in its pillar, whatever its campus grain says
    states = mods["state.show_sls"]("kiosk_fleet.release_repo")
    given = mods["state.show_sls"]("kiosk_fleet.release_repo",
                                    pillar={"kiosk_release_repo": {"listen": ["127.0.9.1", "::1"]}})
    one = mods["state.show_sls"]("kiosk_fleet.release_repo", pillar={"kiosk_release_repo": {"listen": "127.0.9.1"}})
    assert list(states) == ["kiosk_release_repo_needs_addresses"], states
    assert "test" in states["kiosk_release_repo_needs_addresses"]
    # off the inventory there is no campus repo_port: the default port, 80
    assert _args(given["kiosk_release_repo_site"], "file")["context"]["listen"] == ["127.0.9.1:80", "[::1]:80"]
    assert _args(one["kiosk_release_repo_site"], "file")["context"]["listen"] == ["127.0.9.1:80"]


def test_check_cmd_is_a_plain_command(pi_minion):
    """Salt runs check_cmd without a shell (shlex-split, the temp file appended): it must split into sh -c."""
    _, mods = pi_minion
    site = _args(mods["state.show_sls"]("kiosk_fleet.release_repo")["kiosk_release_repo_site"], "file")
    argv = shlex.split(site["check_cmd"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-1] == "kiosk-release-repo-check" and len(argv) == 4
    syntax = subprocess.run(["/bin/sh", "-n", "-c", argv[2]], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
