"""
nginx serving a kiosk release repository from the SHIPPED templates, outside Salt.

One piece of code for the lab (``lab/kiosk_lab.py``: the top master's export
of its store and every Pi's repository) and the tests
(``tests/support/nginx.py``, ``NginxRepo``):

* :func:`write_config` renders the templates the ``kiosk_fleet.release_repo``
  state installs (``kiosk-release-repo-http.conf.jinja`` at http level,
  ``kiosk-release-repo.conf.jinja`` as the server block) with plain jinja2,
  as Salt's jinja renderer does, into ``workdir``, with a minimal main
  ``nginx.conf`` (:func:`main_conf`) whose pid file, error log and temp
  directories live in ``workdir``;
* :func:`command` is the argument list that runs it
  (``nginx -p <workdir>/ -c <conf> -e <workdir>/error.log ...``; add
  ``-g "daemon off;"`` to keep it in the foreground, ``-t`` to check);
* :func:`wait_listening` returns once nginx serves on every listen address.

Starting the process is the caller's: the tests tie nginx to the test
process, the lab records its pid with the other daemons so that
``kiosk-lab down`` stops it.

Network rule: listen addresses must be in 127.0.0.0/8 (:func:`resolve_listen`).
"""

import contextlib
import ipaddress
import os
import pathlib
import shutil
import socket
import time

import jinja2

REPO = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "states" / "kiosk_fleet" / "files"
SERVER_TEMPLATE = "kiosk-release-repo.conf.jinja"
HTTP_TEMPLATE = "kiosk-release-repo-http.conf.jinja"
URL_PREFIX = "/kiosk-releases/"


class NginxError(RuntimeError):
    pass


def nginx_binary():
    """Path of the nginx binary, or None (non-root PATHs often lack /usr/sbin)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render(template, **context):
    """Render one of the shipped templates with plain jinja2 (as Salt's jinja renderer does)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return env.get_template(template).render(**context)


def free_port(address):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def split_listen(listen):
    """``"127.0.1.2:8080"`` -> ``("127.0.1.2", 8080)``."""
    address, _, port = listen.rpartition(":")
    return address, int(port)


def resolve_listen(entries):
    """``["127.x.y.z:port" or bare "127.x.y.z"]`` -> ``["127.x.y.z:port"]``, a free port for bare addresses.
    Raises ValueError for anything outside 127.0.0.0/8 (network rule)."""
    listen = []
    for entry in entries:
        address, port = split_listen(entry) if ":" in entry else (entry, None)
        ip = ipaddress.ip_address(address)
        if ip.version != 4 or not ip.is_loopback:
            raise ValueError(f"{entry}: the lab and the tests listen on 127.0.0.0/8 only")
        listen.append(f"{address}:{port or free_port(address)}")
    return listen


def main_conf(workdir, includes, run_as_root_user=True):
    """A minimal main nginx.conf: everything nginx writes stays in workdir; ``includes`` go into http { }."""
    workdir = pathlib.Path(workdir)
    lines = []
    if run_as_root_user and os.geteuid() == 0:
        # workers run as "nobody" by default: they could not read directories made with mode 0700
        lines.append("user root root;")
    lines += [
        "worker_processes 1;",
        f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'error.log'} info;",
        "events {",
        "    worker_connections 64;",
        "}",
        "http {",
        f"    client_body_temp_path {workdir / 'tmp' / 'body'};",
        f"    proxy_temp_path {workdir / 'tmp' / 'proxy'};",
        f"    fastcgi_temp_path {workdir / 'tmp' / 'fastcgi'};",
        f"    uwsgi_temp_path {workdir / 'tmp' / 'uwsgi'};",
        f"    scgi_temp_path {workdir / 'tmp' / 'scgi'};",
        f"    access_log {workdir / 'default-access.log'};",
    ]
    lines += [f"    include {path};" for path in includes]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_repo(listen, repo_dir, access_log):
    """(http-level snippet, server block) as the ``kiosk_fleet.release_repo`` state would install them."""
    return (render(HTTP_TEMPLATE),
            render(SERVER_TEMPLATE, listen=list(listen), repo_dir=str(repo_dir), access_log=str(access_log)))


def write_config(workdir, listen, repo_dir, access_log, server_conf=None, name="nginx.conf"):
    """Write the rendered snippets and a main conf including them into ``workdir``; returns the main conf's
    path. ``listen``: resolved "address:port" entries. ``server_conf`` replaces the rendered server block."""
    http_conf, rendered = render_repo(listen, repo_dir, access_log)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    stem = pathlib.Path(name).stem
    http_path = workdir / f"{stem}-kiosk-release-repo-http.conf"
    server_path = workdir / f"{stem}-kiosk-release-repo.conf"
    http_path.write_text(http_conf)
    server_path.write_text(rendered if server_conf is None else server_conf)
    conf = workdir / name
    conf.write_text(main_conf(workdir, [http_path, server_path]))
    return conf


def command(nginx, workdir, conf, *extra):
    """nginx's argument list for ``conf``; ``-g "daemon off;"`` keeps it in the foreground."""
    # -e: the log for messages before the config is read (the compiled-in one is /var/log/nginx)
    return [nginx, "-p", f"{workdir}/", "-c", str(conf), "-e", str(pathlib.Path(workdir) / "error.log"), *extra]


def wait_listening(proc, workdir, listen, timeout):
    """Return once nginx (``proc``: a Popen of ``nginx ... -g "daemon off;"``) serves on every ``listen``
    address; NginxError when it exits or is not listening after ``timeout`` s."""
    # nginx writes its pid file once every listen socket is bound: until then a connection could reach
    # whoever else holds the port (nginx retries a busy bind for ~2.5 s, then exits)
    deadline = time.monotonic() + timeout
    pid_file = pathlib.Path(workdir) / "nginx.pid"
    pending = list(listen)
    while pending:
        if proc.poll() is not None:
            raise NginxError(f"nginx exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise NginxError(f"nginx is not listening on {pending} after {timeout} s")
        if _read(pid_file) != str(proc.pid):
            time.sleep(0.02)
            continue
        address, port = split_listen(pending[0])
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            pending.pop(0)
            continue
        time.sleep(0.02)


def _read(path):
    try:
        return path.read_text().strip()
    except OSError:
        return None


def error_log_tail(workdir, chars=4000):
    path = pathlib.Path(workdir) / "error.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
