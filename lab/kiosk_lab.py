"""
kiosk-lab: the production topology on one machine, outside pytest.

    kiosk-lab up      start top master, every Pi (master + syndic + minion),
                      the release servers (nginx: the master's store export
                      and each Pi's repository), the kiosk simulator and the
                      kiosks' minions
    kiosk-lab status  which daemons and simulated kiosks are running
    kiosk-lab demo    up, then show the fleet answering through the Pis, a
                      kiosk woken and shut down, and a release published
                      to one campus reaching its kiosks through the reactors
    kiosk-lab pi-down PI  stop one Pi's master, syndic and minion (by pid):
                      its campus's kiosks keep answering through the other Pis
    kiosk-lab pi-up PI    start them again
    kiosk-lab plot CAMPUS  draw the campus's Pi temperatures and unexpected
                      kiosk restarts from the lab's Prometheus (PNG)
    kiosk-lab down    stop everything the lab started, by pid

Every node gets its own loopback address and Salt's standard ports, as on
real hosts: the top master listens on 127.0.100.1:4505/4506, each Pi master on
the inventory's ``master`` address of that Pi (127.0.1.2:4506, ...), kiosks
sit on their VLANs (127.0.1.11, ...) and connect to every Pi master of their
campus (Salt's hot multi-master, the config from fleet_keys). The Pis of a
campus share one master key pair, made at start-up and kept on the top master
as ``salt-run kiosk_fleet.campus_keygen`` keeps it; every master accepts keys
through an autosign file rendered from the inventory (no ``auto_accept``).
nginx exports the top master's release store on 127.0.100.1:8080 and serves
each Pi's repository on its VLAN addresses, on the campus ``repo_port`` of the
inventory. A monitoring stack (lab/monitor.py: one node_exporter per Pi's
textfile directory and one for the top master's, Prometheus with the shipped
rules, Alertmanager posting to a second lab webhook) listens on 127.0.0.1
ports of its choosing; the Pis' DHT11 sensors are fake IIO sysfs trees the
kiosk simulator warms through an afternoon. Nothing leaves 127.0.0.0/8.
"""

import argparse
import contextlib
import ctypes
import getpass
import json
import os
import pathlib
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))

import fleet_inventory  # noqa: E402
import fleet_keys  # noqa: E402
import fleet_state  # noqa: E402

from lab import kiosk_sim, nginx_repo  # noqa: E402

DEFAULT_RUN_DIR = "/tmp/kiosk-lab"  # short: salt's unix sockets must stay < 107 chars
TOP_ADDRESS = "127.0.100.1"
MASTER_EXPORT_PORT = 8080  # nginx exporting the top master's release store (kiosk_release:master_url)
WEBHOOK_PORT = 8091  # the lab's alert webhook (lab/webhook.py; kiosk_fleet_alerts:webhook_url)
DEMO_OFF_KIOSK = "kiosk-hillside-03"
DEMO_RELEASE = "kiosk-app"
DEMO_RELEASE_VERSION = "1.0.0"
DEMO_RELEASE_CAMPUS = "riverside"  # the campus the demo publishes to (else the inventory's first)
DEMO_RELEASE_MB = 4
RELEASE_REACTORS = ("published", "staged", "alert")  # kiosk/release/<event> -> reactor/kiosk_release_<event>.sls
PACK_DIRS = ("_modules", "_states", "_runners", "_beacons", "_grains", "_utils")
# monitoring: Alertmanager posts to a webhook of its own, so the pack's alert log (webhook.jsonl, where
# `kiosk-lab day` counts each alert's POSTs) holds the pack's alerts only
ALERTMANAGER_WEBHOOK_PORT = 8092
RULES_FILE = REPO / "monitoring" / "prometheus" / "kiosk_fleet.rules.yml"
ALERTMANAGER_FILE = REPO / "monitoring" / "alertmanager" / "alertmanager.yml"
SCRAPE_INTERVAL = "5s"
# the warm afternoon: one Pi of this campus stands under a tent, the others warm gently
WARM_CAMPUS = "hillside"
TENT = {"temperature": [24, 41], "humidity": [50, 28]}
AFTERNOON_MINUTES = 8  # the climb, from `up`; then the peak holds
ENV_INTERVAL_S = 5  # the Pis' kiosk_env beacon interval
ENV_RANGES = {"temperature": [5, 32], "humidity": [20, 80]}
BIN = pathlib.Path(sys.executable).parent


def say(message):
    print(f"kiosk-lab: {message}", flush=True)


def load_inventory(path):
    """The fleet data file the lab runs on and its validated inventory (InventoryError naming the field)."""
    raw = fleet_inventory.load_data(str(path))
    inv = fleet_inventory.validate(raw.get(fleet_inventory.PILLAR_KEY))
    for campus, spec in inv["campuses"].items():
        for pi_id, pi in spec["pis"].items():
            if not pi.get("master"):  # production may default to the VLAN sources; a lab master binds one
                raise fleet_inventory.InventoryError(
                    f"campuses.{campus}.pis.{pi_id}.master: the lab needs it (the one loopback address the Pi's "
                    "master binds, host:port)")
    return raw, inv


def pi_master(pi_spec):
    """``(host, port)`` a Pi's salt-master binds: the Pi's ``master`` in the inventory, the address
    its campus's kiosks connect to (fleet_keys.kiosk_masters)."""
    host, _, port = pi_spec["master"].rpartition(":")
    return host, int(port)


def pi_dirs(run, pi_id):
    """A Pi's config dir (master, syndic and minion share its root) and its master's pki dir."""
    return run / pi_id, run / pi_id / "pki" / "master"


def pi_daemons(run, pi_id):
    """``[(name, argv)]`` of one Pi, in start order: the master first (its syndic and minion connect to it)."""
    pi_dir = str(pi_dirs(run, pi_id)[0])
    return [
        (f"{pi_id} master", ["salt-master", "-c", pi_dir]),
        (f"{pi_id} syndic", ["salt-syndic", "-c", pi_dir]),
        (f"{pi_id} minion", ["salt-minion", "-c", pi_dir]),
    ]


def write_campus_keys(run, inv, keys_dir):
    """Each campus's master key pair: kept on the top master in ``kiosk_fleet:campus_keys_dir`` as
    ``salt-run kiosk_fleet.campus_keygen`` keeps it (``<campus>.pem`` 0600, ``<campus>.pub``) and written
    into the pki dir of each of the campus's Pi masters before they start (in production the state
    kiosk_fleet.pi_master does that). Every kiosk talks to all the Pis of its campus and keeps one
    master public key: they must share the pair."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    for campus, spec in inv["campuses"].items():
        private_pem, public_pem = fleet_keys.new_master_key_pair()
        fleet_state.write_atomic(str(keys_dir / f"{campus}.pem"), private_pem.decode(), mode=0o600)
        fleet_state.write_atomic(str(keys_dir / f"{campus}.pub"), public_pem.decode(), mode=0o644)
        for pi_id in spec["pis"]:
            pki_dir = pi_dirs(run, pi_id)[1]
            pki_dir.mkdir(parents=True, exist_ok=True)
            fleet_keys.write_master_key_pair(str(pki_dir), private_pem, public_pem)


def write_autosign(path, ids):
    """A master's autosign file (Salt ignores one others may write: 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fleet_state.write_atomic(str(path), fleet_keys.autosign_text(ids), mode=0o644)
    return str(path)


def campus_dir(run, pi_id):
    """A Pi's ``kiosk_campus:dir``: its calendar, outbox and reconciler state (master and minion share it)."""
    return run / pi_id / "campus"


def clock_file(run, pi_id):
    """A Pi's ``kiosk_campus:clock_file``: the lab's stand-in for the kernel clock (``kiosk-lab day`` moves it)."""
    return run / pi_id / "clock.json"


def write_clock(run, pi_id, offset_s, synced=True):
    """Set a Pi's clock as its reconciler reads it: host time + ``offset_s``, synchronised or not."""
    fleet_state.write_json_atomic(str(clock_file(run, pi_id)), {"synced": bool(synced), "offset_s": float(offset_s)})


def webhook_url():
    return f"http://{TOP_ADDRESS}:{WEBHOOK_PORT}/hooks/kiosk"


def webhook_log(run):
    return run / "webhook.jsonl"


def alertmanager_webhook_url():
    return f"http://{TOP_ADDRESS}:{ALERTMANAGER_WEBHOOK_PORT}/hooks/alertmanager"


def alertmanager_log(run):
    return run / "alertmanager.jsonl"


def sysfs_root(run, pi_id):
    """A Pi's fake sysfs: its DHT11 under bus/iio/devices (the kiosk simulator writes the values)."""
    return run / pi_id / "sys"


def textfile_dir(run, pi_id=None):
    """node_exporter's textfile directory of a Pi (its env beacon and campus reconciler write there), or of
    the top master (power, release, alerts, outbox, restarts) when ``pi_id`` is None."""
    return run / "metrics" / pi_id if pi_id else run / "metrics"


def afternoon_profiles(inv, run):
    """``{pi: {"sysfs_root", "temperature": [start, peak], "humidity": [start, end]}}``: the first Pi of
    WARM_CAMPUS (else of the first campus) stands under a tent and climbs TENT; every other Pi warms by
    4 degrees from 21 + its rank (the lines stay apart on a plot)."""
    campuses = sorted(inv["campuses"])
    warm = WARM_CAMPUS if WARM_CAMPUS in inv["campuses"] else campuses[0]
    tent = sorted(inv["campuses"][warm]["pis"])[0]
    pis = sorted(pi for spec in inv["campuses"].values() for pi in spec["pis"])
    profiles = {}
    for rank, pi in enumerate(p for p in pis if p != tent):
        profiles[pi] = {"temperature": [21 + rank, 25 + rank], "humidity": [45, 40]}
    profiles[tent] = {key: list(value) for key, value in TENT.items()}
    return {pi: {"sysfs_root": str(sysfs_root(run, pi)), **profile} for pi, profile in sorted(profiles.items())}


def write_weather(run, inv, minutes, started_at):
    """The kiosk simulator's weather file (kiosk_sim.load_weather), and every Pi's DHT11 at the start of the
    afternoon (its beacon finds the device before the simulator's first update). Returns the path."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        raise ValueError(f"afternoon_minutes: {minutes!r} is not a positive number of minutes")
    weather = {"started_at": started_at, "ramp_s": minutes * 60, "pis": afternoon_profiles(inv, run)}
    for profile in weather["pis"].values():
        kiosk_sim.write_dht11(profile["sysfs_root"], *kiosk_sim.dht11_reading(profile, 0, weather["ramp_s"]))
    path = run / "weather.json"
    fleet_state.write_json_atomic(str(path), weather)
    return path


def release_store(run):
    """The top master's release store: under its first file root, so salt://kiosk_releases/ reaches it too."""
    return run / "srv" / "salt" / "kiosk_releases"


def master_export_url():
    return f"http://{TOP_ADDRESS}:{MASTER_EXPORT_PORT}{nginx_repo.URL_PREFIX}"


def release_servers(run, inv):
    """``[(name, repo_dir, listen)]``: nginx exporting the top master's store, and each Pi's repository on
    the Pi's VLAN source addresses and its campus ``repo_port`` (where the kiosks look for it)."""
    servers = [("nginx top export", release_store(run), [f"{TOP_ADDRESS}:{MASTER_EXPORT_PORT}"])]
    for spec in inv["campuses"].values():
        for pi_id, pi in sorted(spec["pis"].items()):
            listen = [f"{v['source']}:{spec['repo_port']}" for _, v in sorted(pi["vlans"].items()) if v.get("source")]
            servers.append((f"nginx {pi_id}", run / "repo" / pi_id, listen))
    return servers


def start_release_servers(run, inv):
    """Start nginx (the shipped templates, lab/nginx_repo.py) for the master export and every Pi; each is
    recorded in pids.json like the salt daemons. Returns an error message, or None."""
    nginx = nginx_repo.nginx_binary()
    if not nginx:
        return "nginx is not installed (.ci/bootstrap installs it)"
    for name, repo_dir, listen in release_servers(run, inv):
        try:
            listen = nginx_repo.resolve_listen(listen)  # network rule: 127.0.0.0/8 only
        except ValueError as exc:
            return f"{name}: {exc}"
        repo_dir.mkdir(parents=True, exist_ok=True)
        workdir = run / "nginx" / name.split(" ", 1)[1].replace(" ", "-")
        conf = nginx_repo.write_config(workdir, listen, repo_dir, workdir / "access.log")
        proc = start(run, name, nginx_repo.command(nginx, workdir, conf, "-g", "daemon off;"))
        try:
            nginx_repo.wait_listening(proc, workdir, listen, timeout=15)
        except nginx_repo.NginxError as exc:
            return f"{name}: {exc}\n{nginx_repo.error_log_tail(workdir, 1000)}"
        say(f"started {name:<24} pid {proc.pid} (http://{', http://'.join(listen)}{nginx_repo.URL_PREFIX})")
    return None


def start_webhook(run, name="alert webhook", port=WEBHOOK_PORT, log=None, url=None):
    """A lab webhook (lab/webhook.py), recorded in pids.json: by default the pack's alert webhook. Returns an
    error message, or None."""
    log, url = log or webhook_log(run), url or webhook_url()
    proc = start(run, name, [sys.executable, "-m", "lab.webhook", "--listen", f"{TOP_ADDRESS}:{port}",
                             "--log", str(log)])
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            return f"the {name} exited with {proc.returncode} (port {port} taken?)"
        with contextlib.suppress(OSError), socket.create_connection((TOP_ADDRESS, port), timeout=0.5):
            say(f"started {name:<24} pid {proc.pid} ({url})")
            return None
        time.sleep(0.1)
    return f"the {name} is not listening after 15 s"


def lab_alertmanager_yaml(url, path=ALERTMANAGER_FILE):
    """The shipped Alertmanager config (routes, grouping, inhibitions) with every webhook receiver's
    placeholder URL pointed at ``url``: YAML text, or None when the file is not there."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or not isinstance(config.get("receivers"), list):
        raise ValueError(f"{path}: receivers: expected a list")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs") or []:
            hook["url"] = url
    return yaml.safe_dump(config, default_flow_style=False, sort_keys=False)


def monitor_file(run):
    """The running lab's monitoring addresses (``kiosk-lab plot`` reads Prometheus's from it)."""
    return run / "monitor.json"


def start_monitoring(run, inv):
    """lab/monitor.py's Stack: a node_exporter on each Pi's textfile directory and on the top master's,
    Prometheus with the shipped rules (when present), Alertmanager posting to the lab's Alertmanager
    webhook. Its processes go into pids.json (``down`` stops them with the rest, by pid) and its addresses
    into monitor.json. Returns an error message, or None."""
    from lab import monitor  # noqa: PLC0415 - only the commands that start the lab need it

    error = start_webhook(run, "alertmanager webhook", ALERTMANAGER_WEBHOOK_PORT, alertmanager_log(run),
                          alertmanager_webhook_url())
    if error:
        return error
    exporters = {"top": textfile_dir(run)}
    exporters.update({pi: textfile_dir(run, pi) for spec in inv["campuses"].values() for pi in sorted(spec["pis"])})
    rules = [RULES_FILE] if RULES_FILE.is_file() else []
    shipped = lab_alertmanager_yaml(alertmanager_webhook_url())
    stack = monitor.Stack(run / "monitor", exporters, rules, alertmanager_webhook_url(),
                          scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL,
                          **({"alertmanager_yaml": shipped} if shipped else {}))
    try:
        stack.start()
    except monitor.MonitorError as exc:
        return f"monitoring: {exc}"
    pids = read_pids(run)
    pids.update(stack.pids)
    (run / "pids.json").write_text(json.dumps(pids, indent=1))
    addresses = {"prometheus": stack.prometheus_url, "alertmanager": stack.alertmanager_url,
                 "exporters": stack.exporter_urls, "rules": [str(r) for r in rules],
                 "alertmanager_webhook": alertmanager_webhook_url()}
    fleet_state.write_json_atomic(str(monitor_file(run)), addresses)
    for name, pid in stack.pids.items():
        say(f"started {name:<24} pid {pid}")
    say(f"Prometheus {stack.prometheus_url}  Alertmanager {stack.alertmanager_url}  "
        f"(rules: {RULES_FILE.relative_to(REPO) if rules else 'none, ' + str(RULES_FILE.relative_to(REPO)) + ' is missing'}; "
        f"routes: {ALERTMANAGER_FILE.relative_to(REPO) if shipped else 'one webhook route'})")
    return None


def make_signing_key(directory, name="kiosk_release"):
    """A fresh Ed25519 key pair for signing releases: the private key PEM is written to
    ``<directory>/<name>.pem`` (mode 0600, created with that mode: never readable by others);
    returns ``(path, public_pem)``. The lab and the test topology make one at start-up."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = pathlib.Path(directory) / f"{name}.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return path, public


def write_yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, default_flow_style=False))


def write_configs(run, raw, inv):
    """Write every node's config under ``run``; return the daemons to start."""
    user = getpass.getuser()
    srv = run / "srv"
    (srv / "salt").mkdir(parents=True, exist_ok=True)
    (srv / "pillar").mkdir(parents=True, exist_ok=True)
    for name in PACK_DIRS:
        link = srv / "salt" / name
        if not link.exists():
            os.symlink(REPO / name, link)
    for sls in (REPO / "pillar").glob("*.sls"):  # the shipped pillar: top.sls and the kiosk_fleet.sls slicer
        shutil.copy(sls, srv / "pillar" / sls.name)
    # releases are signed: a key pair made now; the public key goes into the fleet data, whose
    # pillar slices give it to every Pi and kiosk
    signing_key, public_pem = make_signing_key(run / "keys")
    data = dict(raw)
    data[fleet_inventory.RELEASE_KEY] = {"verify_key": [public_pem]}
    # the fleet data, outside every root: the whole of it for the top master's runners, each
    # campus's part for its Pi masters (they render the pillar of that campus's minions)
    fleet_files = {None: run / "fleet" / "fleet.yaml"}
    write_yaml(fleet_files[None], data)
    for campus in inv["campuses"]:
        fleet_files[campus] = run / "fleet" / f"{campus}.yaml"
        write_yaml(fleet_files[campus], fleet_inventory.campus_slice(data, campus))
    (run / "metrics").mkdir(exist_ok=True)
    roots = {
        "file_roots": {"base": [str(srv / "salt"), str(REPO / "states")]},
        "pillar_roots": {"base": [str(srv / "pillar")]},
        "module_dirs": [str(REPO)],
        "user": user,
        "enable_fqdns_grains": False,  # no reverse-DNS lookups off the machine
    }
    top = run / "top"
    write_yaml(top / "master", {
        "id": "top",
        "interface": TOP_ADDRESS,
        "root_dir": str(top),
        "log_file": str(top / "master.log"),
        "order_masters": True,
        # keys: the Pis' syndics only (the kiosks' keys are accepted by their campus's Pi masters)
        "autosign_file": write_autosign(top / "autosign", fleet_keys.top_autosign_ids(inv)),
        "syndic_wait": 2,
        # a powered-off kiosk costs every call its timeout plus this wait for find_job
        # (Salt's default 10 s); on one machine a running minion answers find_job in ~1 s
        "gather_job_timeout": 5,
        # Salt rebuilds the reactor's runner client every reactor_refresh_interval (60 s);
        # reactions that start together right then each load a MasterMinion, and CPython
        # 3.11's importlib.invalidate_caches races (KeyError): one reaction is lost
        "reactor_refresh_interval": 3600,
        # the whole fleet (runners only) and the campus master key pairs (campus_keygen, campus_keys)
        "kiosk_fleet": {"data": str(fleet_files[None]), "campus_keys_dir": str(top / "campus-keys")},
        # a kiosk's event reaches the top master once per Pi it is connected to, plain and as
        # syndic/<pi>/...: plain tags only, and the reactors are idempotent
        "reactor": [{"kiosk/boot": [str(REPO / "reactor" / "kiosk_boot.sls")]}] + [
            {f"kiosk/release/{event}": [str(REPO / "reactor" / f"kiosk_release_{event}.sls")]}
            for event in RELEASE_REACTORS
        ],
        # each kiosk/boot recorded by kiosk_restarts.boot (the kiosk/boot reactor): kiosk_restarts.prom
        "kiosk_restarts": {"textfile_dir": str(run / "metrics")},
        # alerts (the campuses' mismatches, posted once by kiosk_outbox.collect) go to the lab's webhook
        "kiosk_fleet_alerts": {"webhook_url": webhook_url()},
        # releases: the store under the first file root (salt://kiosk_releases/), exported by
        # nginx for the Pis (start_release_servers); metrics next to the run's other files
        "kiosk_release": {
            "store": str(release_store(run)),
            "master_url": master_export_url(),
            "textfile_dir": str(run / "metrics"),
            "timeout": 300,
            "signing_key": str(signing_key),  # made above, mode 0600
            "source_root": str(build_root(run)),  # publish takes sources from below it only
        },
        **roots,
    })
    build_root(run).mkdir(exist_ok=True)
    write_campus_keys(run, inv, top / "campus-keys")
    daemons = [("top master", ["salt-master", "-c", str(top)])]
    for campus, spec in inv["campuses"].items():
        for pi_id, pi in sorted(spec["pis"].items()):
            host, port = pi_master(pi)
            pi_dir, pki_dir = pi_dirs(run, pi_id)
            write_yaml(pi_dir / "master", {
                "id": pi_id,
                "interface": host,
                "ret_port": port,
                "root_dir": str(pi_dir),
                "pki_dir": str(pki_dir),  # holds the campus's master key pair (write_campus_keys)
                "log_file": str(pi_dir / "master.log"),
                # this campus's Pis and kiosks only: a kiosk of another campus, or a minion the
                # inventory does not know, stays pending
                "autosign_file": write_autosign(pi_dir / "autosign", fleet_keys.autosign_ids(inv, campus)),
                "syndic_master": TOP_ADDRESS,
                "kiosk_fleet": {"data": str(fleet_files[campus])},  # this campus's part only
                "syndic_log_file": str(pi_dir / "syndic.log"),
                "syndic_pidfile": str(pi_dir / "syndic.pid"),
                # the campus runtime (kiosk_campus.probe / reconcile on this Pi master): calendar, outbox and
                # state in dir; status.json under repo_dir/campus/ (this Pi's nginx serves it to its peers);
                # the clock from clock_file, not the host's (kiosk-lab day compresses a day through it)
                "kiosk_campus": {
                    "dir": str(campus_dir(run, pi_id)),
                    "campus": campus,
                    "pi": pi_id,
                    "verify_key": [public_pem],
                    "repo_dir": str(run / "repo" / pi_id),
                    "clock_file": str(clock_file(run, pi_id)),
                    "probe_timeout_s": 2,
                    # a compressed day: a simulated kiosk shuts down 2 real seconds after its leader asks
                    "shutdown_delay_s": 2,
                    "textfile_dir": str(run / "metrics" / pi_id),
                },
                **roots,
            })
            campus_dir(run, pi_id).mkdir(mode=0o700, parents=True, exist_ok=True)
            (run / "metrics" / pi_id).mkdir(parents=True, exist_ok=True)
            write_clock(run, pi_id, 0.0)
            write_yaml(pi_dir / "minion", {
                "id": pi_id,
                "master": f"{host}:{port}",
                "root_dir": str(pi_dir),
                "log_file": str(pi_dir / "minion.log"),
                "user": user,
                "enable_fqdns_grains": False,  # no reverse-DNS lookups off the machine
                "grains": {"campus": campus, "kiosk_fleet_role": "pi"},
                # the repository this Pi's nginx serves to its kiosks, and that nginx's access log
                # (kiosk_pkg.served: which kiosk fetched what, for the master to check kiosk returns against)
                "kiosk_release": {"repo_dir": str(run / "repo" / pi_id),
                                  "access_log": str(run / "nginx" / pi_id / "access.log")},
                # where the state kiosk_fleet.pi_master (salt-run kiosk_fleet.campus_keys) finds this Pi's
                # master: it renders the same autosign file; no restart in the lab (pi-down, pi-up)
                "kiosk_fleet": {"master_pki_dir": str(pki_dir), "master_config_dir": str(pi_dir / "master.d"),
                                "autosign_file": str(pi_dir / "autosign"), "restart": False},
                # the campus runtime's minion side: kiosk_campus.calendar stores the top master's calendar in
                # dir, kiosk_outbox.entries reads the outbox there, kiosk_campus.reconcile runs the master's
                "kiosk_campus": {
                    "dir": str(campus_dir(run, pi_id)),
                    "repo_dir": str(run / "repo" / pi_id),
                    "master_config": str(pi_dir / "master"),
                    "clock_file": str(clock_file(run, pi_id)),
                },
                # the Pi's DHT11 through its real sysfs path, on the lab's fake tree (the kiosk simulator's
                # warm afternoon); the textfile next to the reconciler's, for the Pi's node_exporter
                "beacons": {"kiosk_env": [
                    {"interval": ENV_INTERVAL_S},
                    {"sysfs_root": str(sysfs_root(run, pi_id))},
                    *({metric: list(bounds)} for metric, bounds in ENV_RANGES.items()),
                    {"smoke": False},  # no MQ-2 (GPIO) in the lab
                    {"textfile_dir": str(textfile_dir(run, pi_id))},
                    {"campus": campus},
                ]},
            })
            daemons += pi_daemons(run, pi_id)
        for kiosk_id in sorted(spec["kiosks"]):
            kiosk_dir = run / "kiosks" / kiosk_id
            write_yaml(kiosk_dir / "minion", {
                # every Pi master of the campus (hot multi-master) and how the kiosk watches them:
                # the production kiosk config (state kiosk_fleet.kiosk_minion renders the same)
                **fleet_keys.kiosk_minion_config(inv, kiosk_id),
                # from the inventory IP, as on its VLAN: the Pis tell connected kiosks by address
                "source_address": spec["kiosks"][kiosk_id]["ip"],
                "id": kiosk_id,
                "root_dir": str(kiosk_dir),
                "log_file": str(kiosk_dir / "minion.log"),
                "user": user,
                "enable_fqdns_grains": False,
                # Salt's hosts module edits this file (change template "hosts"), not /etc/hosts
                "hosts.file": str(kiosk_dir / "hosts"),
                "grains": {"campus": campus, "kiosk_fleet_role": "kiosk"},
                # release packages (C:\ProgramData\kiosk-fleet\releases on a real kiosk)
                "kiosk_release": {"dir": str(run / "kiosk" / kiosk_id),
                                  "bind_source": True},  # download from its inventory IP (the Pis' logs tell kiosks apart)
                # at boot, announce kiosk/boot: the top master's reactor syncs the pack
                "startup_states": "sls",
                "sls_list": ["kiosk_fleet.boot"],
                # the shutdown hook of a simulated kiosk: its power button
                "kiosk_power": {
                    "shutdown_command": [sys.executable, "-m", "lab.kiosk_sim", "--run-dir", str(run),
                                         "power-off", kiosk_id, "--delay", "{delay}"],
                    "cwd": str(REPO),
                    # the lab's kiosks share the host's kernel (one /proc/stat btime): the simulator writes
                    # each one's boot time at every power-on, for kiosk_power.last_boot
                    "boot_time_file": str(kiosk_dir / "boot_time"),
                },
            })
    (run / "inventory.json").write_text(json.dumps(inv))
    return daemons


def read_pids(run):
    path = run / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def alive(pid):
    """True while ``pid`` runs. A zombie is not running: a daemon the lab started outlives the
    ``kiosk-lab`` process that started it, and whoever inherits it may reap it late."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start(run, name, argv):
    log = open(run / "daemons.out", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(  # argument list, never a shell string
        [str(BIN / argv[0]), *argv[1:]] if (BIN / argv[0]).exists() else argv,
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
    )
    log.close()
    pids = read_pids(run)
    pids[name] = proc.pid
    (run / "pids.json").write_text(json.dumps(pids, indent=1))
    return proc


def salt(run, *args, timeout=60, master="top"):
    """Run ``salt`` against the lab's top master (or the master whose config dir is ``run/master``, e.g. a
    Pi's); return parsed JSON, or ``{"_error": ...}``."""
    cmd = [str(BIN / "salt"), "-c", str(run / master), "--out=json", "--static", f"--timeout={timeout}", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, check=False)
    except subprocess.TimeoutExpired:  # a master still starting on a loaded machine: callers poll again
        return {"_error": f"salt {' '.join(args)} timed out after {timeout + 60} s"}
    try:
        return json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return {"_error": out.stdout + out.stderr}


MASTER_START_S = 120
MASTER_SOCKETS = ("publish_pull.ipc", "workers.ipc", "master_event_pub.ipc")


def master_sock_dir(config_dir):
    return config_dir / "var" / "run" / "salt" / "master"  # Salt's sock_dir under root_dir


def wait_master_sockets(config_dir, pid, timeout):
    """True once the master whose config is in ``config_dir`` has bound its IPC sockets."""
    sock_dir = master_sock_dir(config_dir)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all((sock_dir / name).exists() for name in MASTER_SOCKETS):
            return True
        if not alive(pid):
            return False
        time.sleep(0.2)
    return False


def is_answer(fun, value):
    """Whether ``value`` is a live answer to ``fun``: True for test.ping, any dict otherwise
    (e.g. kiosk_power.status)."""
    return value is True if fun == "test.ping" else isinstance(value, dict)


_job_caches = {}


def job_cache(run, master):
    """Salt's own local_cache returner on ``master``'s job cache (``run/master``), loaded once."""
    key = (str(run), master)
    if key not in _job_caches:
        import salt.config  # noqa: PLC0415 - heavy: only a wait that missed answers pays for it
        import salt.loader  # noqa: PLC0415

        opts = salt.config.master_config(str(run / master / "master"))
        _job_caches[key] = salt.loader.returners(opts, {})
    return _job_caches[key]


def cached_answers(run, fun, minions, since, master="top"):
    """``{minion: True}`` for those of ``minions`` that answered a ``fun`` job ``master`` published
    at or after ``since`` (epoch seconds), read from that master's job cache: on a loaded machine an
    answer can reach the master well after the ``salt`` CLI gave up on it."""
    returners = job_cache(run, master)
    # jids are the master's local time; one second earlier, for the rounding
    first = time.strftime("%Y%m%d%H%M%S", time.localtime(since - 1))
    found = {}
    try:
        jobs = returners["local_cache.get_jids"]()
        for jid, job in jobs.items():
            if jid < first or job.get("Function") != fun:
                continue
            for minion, ret in returners["local_cache.get_jid"](jid).items():
                if minion in minions and is_answer(fun, ret.get("return")):
                    found[minion] = True
    except OSError:  # no job cached yet (no jobs folder), or a job cleaned away while read
        pass
    return found


def wait_for_minions(run, expected, timeout, fun="test.ping", master="top"):
    """Poll ``fun`` on ``expected`` (through ``master``) until each of them has answered once;
    ``{minion: True}`` for those that did, the last answer for the others. Each poll asks only the
    minions still silent, and an answer the ``salt`` CLI missed counts once it is in the master's job
    cache: under load Salt 3007's CLI misses return events (README, "What remains open in Salt
    itself"), and on a busy machine an answer may come 30 s after the CLI stopped waiting."""
    began = time.time()
    deadline = began + timeout
    replies = {}
    while time.time() < deadline:
        silent = [m for m in expected if replies.get(m) is not True]
        if not silent:
            break
        got = salt(run, "-L", ",".join(silent), fun, timeout=10, master=master)
        replies.update({k: True if is_answer(fun, v) else v for k, v in got.items() if k in silent})
        silent = [m for m in expected if replies.get(m) is not True]
        if silent:
            cached = cached_answers(run, fun, silent, began, master=master)
            if cached:
                say(f"{', '.join(sorted(cached))}: answered (the {master} master's job cache; the salt CLI missed it)")
            replies.update(cached)
        if all(replies.get(m) is True for m in expected):
            break
        time.sleep(2)
    return replies


def wait_pis_reach_kiosks(run, inv, powered, timeout):
    """``{pi: (kiosks its own master reached, powered-on kiosks of its campus)}``, asked of every Pi
    master at once (``salt -c <run>/<pi>``), each until all its kiosks answer or ``timeout``."""
    reach = {}

    def ask(pi, wanted):
        answered = wait_for_minions(run, wanted, timeout, master=pi)
        reach[pi] = (sorted(k for k in wanted if answered.get(k) is True), wanted)

    threads = [threading.Thread(target=ask, args=(pi, sorted(set(spec["kiosks"]) & powered)))
               for spec in inv["campuses"].values() if set(spec["kiosks"]) & powered for pi in spec["pis"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return reach


def start_daemons(run, daemons):
    """Start ``[(name, argv)]`` in order, each master's syndic and minion only once the master listens.
    False (and said why) when a master did not come up."""
    for name, argv in daemons:
        if name.endswith(" master"):
            for sock in MASTER_SOCKETS:  # a killed master's sockets must not pass for the new one's
                with contextlib.suppress(FileNotFoundError):
                    (master_sock_dir(pathlib.Path(argv[-1])) / sock).unlink()
        pid = start(run, name, argv).pid
        say(f"started {name:<24} pid {pid}")
        # a master's syndic connects once to the master's publisher socket and never
        # retries (salt 3007): wait until the master has bound it, however slow the start
        if name.endswith(" master") and not wait_master_sockets(pathlib.Path(argv[-1]), pid, MASTER_START_S):
            say(f"{name} did not open its sockets within {MASTER_START_S} s; logs under {run}")
            return False
    return True


def cmd_up(args):
    run = pathlib.Path(args.dir)
    if any(alive(pid) for pid in read_pids(run).values()):
        say(f"already running in {run} (kiosk-lab down first)")
        return 1
    try:
        raw, inv = load_inventory(args.inventory)
    except fleet_inventory.InventoryError as exc:
        say(f"--inventory: {exc}")
        return 2
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    daemons = write_configs(run, raw, inv)
    weather = write_weather(run, inv, args.afternoon_minutes, time.time())
    error = start_release_servers(run, inv) or start_webhook(run) or start_monitoring(run, inv)
    if error:
        say(f"start-up failed: {error}")
        cmd_down(args)
        return 1
    if not start_daemons(run, daemons):
        cmd_down(args)
        return 1
    kiosks = sorted(k for c in inv["campuses"].values() for k in c["kiosks"])
    off = [k for k in (args.off or "").split(",") if k]
    unknown = sorted(set(off) - set(kiosks))
    if unknown:
        say(f"--off: unknown kiosk {', '.join(unknown)}")
        cmd_down(args)
        return 2
    pid = start(run, "kiosk simulator", [
        sys.executable, "-m", "lab.kiosk_sim", "--run-dir", str(run), "serve",
        "--inventory", str(run / "inventory.json"), "--salt-minion", str(BIN / "salt-minion"),
        "--on", ",".join(k for k in kiosks if k not in off), "--weather", str(weather),
    ]).pid
    say(f"started {'kiosk simulator':<24} pid {pid} (magic packets -> kiosk minions; the Pis' DHT11 sensors)")
    expected = sorted([p for c in inv["campuses"].values() for p in c["pis"]] + [k for k in kiosks if k not in off])
    say(f"waiting for {len(expected)} minions to answer the top master through the syndics ...")
    answered = wait_for_minions(run, expected, args.timeout)
    missing = sorted(set(expected) - {k for k, v in answered.items() if v is True})
    if missing:
        say(f"no answer from {', '.join(missing)}; logs under {run}")
        return 1
    # multi-master: each Pi's own master must reach every powered-on kiosk of its campus
    say("each Pi master reaches the kiosks of its campus (every kiosk is connected to all of its campus's Pis):")
    reach = wait_pis_reach_kiosks(run, inv, set(kiosks) - set(off), args.timeout)
    for pi, (reached, wanted) in sorted(reach.items()):
        print(f"    {pi}: {len(reached)} of {len(wanted)}  {', '.join(reached)}")
    if any(len(reached) < len(wanted) for reached, wanted in reach.values()):
        say(f"a kiosk is not connected to every Pi of its campus; logs under {run}")
        return 1
    synced = salt(run, "*", "saltutil.sync_all", timeout=60)
    say(f"pack synced to {len(synced)} minions")
    # the Pis' beacons run from the sync on (their module came with it): the afternoon starts now
    write_weather(run, inv, args.afternoon_minutes, time.time())
    say("up. Use the top master with:")
    print(f"    {BIN / 'salt'} -c {run / 'top'} '*' test.ping")
    print(f"    {BIN / 'salt-run'} -c {run / 'top'} kiosk_fleet.ping")
    print(f"    {BIN / 'salt-run'} -c {run / 'top'} kiosk_release.publish name=... version=... source=... campuses=...")
    print(f"    {REPO / 'lab' / 'kiosk-lab'} down")
    print_monitoring(run)
    return 0


def print_monitoring(run):
    """The monitoring addresses and the warm afternoon, as ``up`` and ``status`` show them."""
    path = monitor_file(run)
    if not path.exists():
        return
    addresses = json.loads(path.read_text())
    say(f"monitoring: Prometheus {addresses['prometheus']}  Alertmanager {addresses['alertmanager']}  "
        f"(alerts posted to {addresses['alertmanager_webhook']}, logged in {alertmanager_log(run)})")
    weather = run / "weather.json"
    if weather.exists():
        afternoon = json.loads(weather.read_text())
        hot = max(afternoon["pis"], key=lambda pi: afternoon["pis"][pi]["temperature"][1])
        low, high = afternoon["pis"][hot]["temperature"]
        began = time.strftime("%H:%M:%S UTC", time.gmtime(afternoon["started_at"]))
        say(f"a warm afternoon: {hot} (under a tent) climbs from {low} to {high} °C in "
            f"{afternoon['ramp_s'] / 60:g} min from {began}; the other Pis warm by 4 °C")
    campus = WARM_CAMPUS if WARM_CAMPUS in (lab_inventory(run) or {}).get("campuses", {}) else "CAMPUS"
    print(f"    {REPO / 'lab' / 'kiosk-lab'} plot {campus} --minutes 15")


KILL_WAIT_S = 10


def stop_processes(pids, grace=45):
    """SIGTERM each process group of ``{name: pid}`` in order (every daemon was started in a session
    of its own: its workers go with it), SIGKILL what is still there after ``grace`` seconds."""
    for pid in pids.values():
        if alive(pid):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.2)
    killed = {}
    for name, pid in pids.items():
        if alive(pid):
            say(f"{name} (pid {pid}) ignored SIGTERM: SIGKILL")
            os.killpg(pid, signal.SIGKILL)
            killed[name] = pid
    # SIGKILL is delivered, not waited for: down returns once they are gone
    deadline = time.time() + KILL_WAIT_S
    while time.time() < deadline and any(alive(p) for p in killed.values()):
        time.sleep(0.1)
    for name, pid in killed.items():
        if alive(pid):
            say(f"{name} (pid {pid}) still there {KILL_WAIT_S} s after SIGKILL")


def cmd_down(args):
    run = pathlib.Path(args.dir)
    pids = read_pids(run)
    if not pids:
        say(f"nothing to stop in {run}")
        return 0
    # simulator first: it stops the kiosk minions it powered on
    stop_processes({name: pids[name] for name in sorted(pids, key=lambda n: (n != "kiosk simulator",
                                                                             n == "top master"))})
    # safety net: kiosk minions the simulator started, should it have died first
    state_file = run / "sim-state.json"
    if state_file.exists():
        for kiosk, state in json.loads(state_file.read_text()).items():
            if state.get("pid") and alive(state["pid"]):
                say(f"{kiosk} minion (pid {state['pid']}) outlived the simulator: SIGKILL")
                os.killpg(state["pid"], signal.SIGKILL)
    (run / "pids.json").unlink()
    with contextlib.suppress(FileNotFoundError):
        (run / "cuts.json").unlink()  # the syndics cut stopped are gone with the rest
    with contextlib.suppress(FileNotFoundError):
        monitor_file(run).unlink()  # its processes are gone too
    say(f"stopped {len(pids)} processes")
    return 0


def cmd_status(args):
    run = pathlib.Path(args.dir)
    pids = read_pids(run)
    for name, pid in sorted(pids.items()):
        print(f"{name:<24} pid {pid:<8} {'running' if alive(pid) else 'STOPPED'}")
    down = pis_down(run, pids)
    for pi in down:
        for name, _ in pi_daemons(run, pi):
            print(f"{name:<24} {'':<12} stopped by pi-down (kiosk-lab pi-up {pi})")
    for campus, pis in sorted(read_cuts(run).items()):
        for pi in pis:
            print(f"{pi + ' syndic':<24} {'':<12} stopped by cut: {campus}'s WAN link is down "
                  f"(kiosk-lab restore {campus})")
    state_file = run / "sim-state.json"
    if state_file.exists():
        for kiosk, state in sorted(json.loads(state_file.read_text()).items()):
            power = "on " if state["on"] else "off"
            print(f"{kiosk:<24} power {power} {state['ip']}:{state['service_port']}  magic packets {state['packets']}"
                  f"  power-button presses {state.get('presses', 0)}"
                  + (f"  restarts without a wake {state['reboots']}" if state.get("reboots") else ""))
    if pids:
        print_monitoring(run)
    return 0 if pids and all(alive(p) for p in pids.values()) and not down and not read_cuts(run) else 1


# --------------------------------------------------------------------------- a campus's WAN link cut and restored


def read_cuts(run):
    """``{campus: [pi whose syndic cut stopped]}`` of the running lab."""
    path = run / "cuts.json"
    return json.loads(path.read_text()) if path.exists() else {}


def campus_of_lab(args):
    """``(run, inventory)`` for the ``campus`` argument, or an exit code after saying why."""
    run = pathlib.Path(args.dir)
    inv = lab_inventory(run)
    if not inv or not read_pids(run):
        say(f"the lab is not running in {run} (kiosk-lab up first)")
        return 1
    if args.campus not in inv["campuses"]:
        say(f"campus: {args.campus!r} is not a campus of the lab's inventory ({', '.join(sorted(inv['campuses']))})")
        return 2
    return run, inv


def cut_campus(run, inv, campus):
    """Cut ``campus``'s WAN link: stop its Pis' syndics by pid, the only daemons that talk to the top master.
    The Pis' masters, minions and nginx, and the campus's kiosks, stay up: the campus is alone.
    Returns ``{syndic name: pid}`` stopped."""
    pids = read_pids(run)
    syndics = {f"{pi} syndic": pids[f"{pi} syndic"] for pi in sorted(inv["campuses"][campus]["pis"])
               if f"{pi} syndic" in pids}
    stop_processes(syndics, grace=20)
    cuts = read_cuts(run)
    cuts[campus] = sorted(set(cuts.get(campus, [])) | {name.split()[0] for name in syndics})
    fleet_state.write_json_atomic(str(run / "cuts.json"), cuts)
    pids = {name: pid for name, pid in read_pids(run).items() if name not in syndics}
    (run / "pids.json").write_text(json.dumps(pids, indent=1))
    return syndics


def restore_campus(run, campus, timeout):
    """Restore ``campus``'s WAN link: start its Pis' syndics again and wait until the top master hears
    the Pis. Returns ``(started {name: pid}, Pis the top master does not hear)``."""
    cuts = read_cuts(run)
    pis = cuts.pop(campus, [])
    pids = read_pids(run)
    started = {}
    for pi in pis:
        if f"{pi} master" not in pids:  # pi-down meanwhile: pi-up starts all three
            continue
        pi_dir = str(pi_dirs(run, pi)[0])
        started[f"{pi} syndic"] = start(run, f"{pi} syndic", ["salt-syndic", "-c", pi_dir]).pid
    fleet_state.write_json_atomic(str(run / "cuts.json"), cuts)
    heard = wait_for_minions(run, pis, timeout) if started else {}
    return started, sorted(p for p in pis if f"{p} syndic" in started and heard.get(p) is not True)


def cmd_cut(args):
    found = campus_of_lab(args)
    if isinstance(found, int):
        return found
    run, inv = found
    if args.campus in read_cuts(run):
        say(f"{args.campus} is already cut (kiosk-lab restore {args.campus})")
        return 0
    stopped = cut_campus(run, inv, args.campus)
    say(f"{args.campus}'s WAN link is cut: stopped " + ", ".join(f"{n} (pid {p})" for n, p in stopped.items())
        + f"; its Pis and kiosks run alone. Restore with: {REPO / 'lab' / 'kiosk-lab'} restore {args.campus}")
    return 0


def cmd_restore(args):
    found = campus_of_lab(args)
    if isinstance(found, int):
        return found
    run, _ = found
    if args.campus not in read_cuts(run):
        say(f"{args.campus} is not cut")
        return 0
    started, silent = restore_campus(run, args.campus, args.timeout)
    say(f"{args.campus}'s WAN link is back: started " + ", ".join(f"{n} (pid {p})" for n, p in started.items()))
    if silent:
        say(f"the top master does not hear {', '.join(silent)}; logs under {run}")
        return 1
    return 0


def lab_inventory(run):
    """The normalised inventory of the running lab (written by ``up``), or None."""
    path = run / "inventory.json"
    return json.loads(path.read_text()) if path.exists() else None


def pis_down(run, pids):
    """The inventory's Pis none of whose daemons the lab runs now (stopped by pi-down)."""
    inv = lab_inventory(run) if pids else None
    if not inv:
        return []
    return sorted(pi for spec in inv["campuses"].values() for pi in spec["pis"]
                  if not any(name in pids for name, _ in pi_daemons(run, pi)))


def pi_of_lab(args):
    """``(run, inventory, campus)`` for the ``pi`` argument, or an exit code after saying why."""
    run = pathlib.Path(args.dir)
    inv = lab_inventory(run)
    pids = read_pids(run)
    if not inv or not alive(pids.get("top master", 0) or 0):
        say(f"the lab is not running in {run} (kiosk-lab up first)")
        return 1
    campus = next((c for c, spec in inv["campuses"].items() if args.pi in spec["pis"]), None)
    if campus is None:
        known = sorted(pi for spec in inv["campuses"].values() for pi in spec["pis"])
        say(f"pi: {args.pi!r} is not a Pi of the lab's inventory ({', '.join(known)})")
        return 2
    return run, inv, campus


def cmd_pi_down(args):
    """Stop one Pi's master, syndic and minion by pid: the Pi losing power, as far as Salt can tell."""
    found = pi_of_lab(args)
    if isinstance(found, int):
        return found
    run, inv, campus = found
    pids = read_pids(run)
    mine = {name: pids[name] for name, _ in reversed(pi_daemons(run, args.pi)) if name in pids}
    if not mine:
        say(f"{args.pi} is already down (kiosk-lab pi-up {args.pi} starts it)")
        return 0
    stop_processes(mine, grace=20)
    pids = {name: pid for name, pid in read_pids(run).items() if name not in mine}
    (run / "pids.json").write_text(json.dumps(pids, indent=1))
    say(f"{args.pi} is down: stopped its " + ", ".join(f"{n.split()[-1]} (pid {p})" for n, p in mine.items()))
    others = [p for p in sorted(inv["campuses"][campus]["pis"]) if p not in pis_down(run, pids)]
    kiosks = sorted(inv["campuses"][campus]["kiosks"])
    top = f"-c {run / 'top'}"
    if not others:
        say(f"no Pi of {campus} is up: its kiosks are out of reach until one comes back")
    else:
        say(f"the kiosks of {campus} are connected to every Pi of their campus and keep answering "
            f"through {', '.join(others)}, with no restart. Try:")
        print(f"    {BIN / 'salt'} {top} -L {','.join(kiosks)} test.ping")
        print(f"    {BIN / 'salt-run'} {top} kiosk_power.shutdown kiosks={','.join(kiosks[:2])} delay_s=5")
        print(f"    {BIN / 'salt'} -c {run / others[0]} '*' test.ping      (what {others[0]}'s own master reaches)")
    print(f"    {REPO / 'lab' / 'kiosk-lab'} pi-up {args.pi}")
    return 0


def cmd_pi_up(args):
    """Start one Pi's master, syndic and minion again; wait until the top master hears the Pi and the
    Pi's master hears its campus's powered-on kiosks (they reconnect on their own)."""
    found = pi_of_lab(args)
    if isinstance(found, int):
        return found
    run, inv, campus = found
    pids = read_pids(run)
    daemons = pi_daemons(run, args.pi)
    running = {name: pids[name] for name, _ in daemons if name in pids and alive(pids[name])}
    if len(running) == len(daemons):
        say(f"{args.pi} is already up")
        return 0
    stop_processes(running, grace=20)  # half up (one daemon died): start all three afresh
    if not start_daemons(run, daemons):
        stop_processes({name: pid for name, pid in read_pids(run).items() if name in dict(daemons)}, grace=20)
        return 1
    power = json.loads((run / "sim-state.json").read_text()) if (run / "sim-state.json").exists() else {}
    kiosks = sorted(k for k in inv["campuses"][campus]["kiosks"] if power.get(k, {}).get("on"))
    began = time.time()
    heard = wait_for_minions(run, [args.pi], args.timeout)
    reached = wait_for_minions(run, kiosks, args.timeout, master=args.pi) if kiosks else {}
    missing = sorted({args.pi} - {k for k, v in heard.items() if v is True}) + sorted(
        set(kiosks) - {k for k, v in reached.items() if v is True})
    if missing:
        say(f"{args.pi} is up, but no answer from {', '.join(missing)}; logs under {run / args.pi}")
        return 1
    say(f"{args.pi} is up: the top master hears it and its master reaches {len(kiosks)} powered-on kiosks "
        f"of {campus} ({time.time() - began:.0f} s). Check with:")
    print(f"    {BIN / 'salt'} -c {run / args.pi} '*' test.ping")
    print(f"    {REPO / 'lab' / 'kiosk-lab'} status")
    return 0


def salt_run(run, *args, timeout=120):
    cmd = [str(BIN / "salt-run"), "-c", str(run / "top"), "--out=json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        return out.returncode, json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return out.returncode, {"_error": out.stdout + out.stderr}


def cmd_demo(args):
    """Up with one kiosk powered off, wake it through its Pis and shut it down, then publish a release to one
    campus and follow the reactors staging it on the campus's Pis and installing it on its kiosks."""
    args.off = args.off or DEMO_OFF_KIOSK
    status = cmd_up(args)
    if status:
        return status
    run = pathlib.Path(args.dir)
    # what an operator keeps open in a second terminal; started now, it listens by the time of the release
    watch = EventWatch(run, "kiosk/release/*")
    try:
        code = demo_power(run, args.off.split(",")[0])
        code = demo_release(run, watch) or code
    finally:
        watch.stop()
    code = demo_restart(run) or code
    cmd_status(args)
    say("the lab stays up; stop it with: lab/kiosk-lab down")
    return code


def demo_power(run, kiosk):
    top = f"-c {run / 'top'}"
    say(f"$ salt {top} '*' test.ping      ({kiosk} is powered off)")
    answered = salt(run, "*", "test.ping")
    for minion in sorted(answered):
        print(f"    {minion}: {answered[minion]}")
    say(f"$ salt-run {top} kiosk_power.wake kiosks={kiosk}")
    code, report = salt_run(run, "kiosk_power.wake", f"kiosks={kiosk}")
    for pi, sent in sorted(report.get("kiosks", {}).get(kiosk, {}).get("sent_by", {}).items()):
        print(f"    {pi} sent {sent['packets']} magic packets to {sent['to']}:{sent['port']} from {sent['source']}")
    if code:
        say(f"wake failed: {report.get('error', report)}")
        return code
    # its boot state fires kiosk/boot; the top master's reactor syncs the pack to it
    up = wait_for_minions(run, [kiosk], 120, fun="kiosk_power.status")
    say(f"{kiosk} {'is up, pack synced by the kiosk/boot reactor' if up.get(kiosk) else 'did NOT come up'}")
    say(f"$ salt {top} '*' test.ping      (every kiosk, each through its Pi)")
    answered = salt(run, "*", "test.ping")
    for minion in sorted(answered):
        print(f"    {minion}: {answered[minion]}")
    say(f"$ salt-run {top} kiosk_power.shutdown kiosks={kiosk} delay_s=2")
    code, report = salt_run(run, "kiosk_power.shutdown", f"kiosks={kiosk}", "delay_s=2", "message=Lab demo")
    print(f"    accepted: {report.get('accepted')}  failed: {report.get('failed')}  silent: {report.get('silent')}")
    time.sleep(4)
    return code


def demo_restart(run):
    """One kiosk of the warm campus restarts on its own (the simulator stops and starts its minion with no
    wake): its boot reaches the top master as a kiosk/boot with no wake before it, an unexpected restart
    for kiosk_unexpected_restarts_total, a mark on ``kiosk-lab plot``."""
    inv = lab_inventory(run)
    campus = WARM_CAMPUS if WARM_CAMPUS in inv["campuses"] else sorted(inv["campuses"])[0]
    power = json.loads((run / "sim-state.json").read_text())
    kiosk = next((k for k in sorted(inv["campuses"][campus]["kiosks"]) if power.get(k, {}).get("on")), None)
    if kiosk is None:
        say(f"no kiosk of {campus} is on: no unexpected restart shown")
        return 0
    before = power[kiosk].get("reboots", 0)
    query = f'kiosk_unexpected_restarts_total{{kiosk="{kiosk}"}}'
    before_count = max(prometheus_values(run, query) or [0])
    say(f"{kiosk} restarts on its own (a power blip: no wake before its boot)")
    began = time.time()
    kiosk_sim.send_control(run, "reboot", kiosk)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = json.loads((run / "sim-state.json").read_text()).get(kiosk, {})
        if state.get("reboots", 0) > before and state.get("on"):
            break
        time.sleep(0.5)
    up = wait_for_minions(run, [kiosk], 120)
    if up.get(kiosk) is not True:
        say(f"{kiosk} did NOT come back after its restart")
        return 1
    say(f"{kiosk} is back (its boot state announced kiosk/boot to the top master)")
    # the top master's kiosk_restarts.boot asks the kiosk for its boot time and counts the restart
    counted = poll_prometheus(run, query, lambda values: bool(values) and max(values) > before_count, 240)
    if counted:
        say(f"Prometheus: {query} = {max(counted):g} (was {before_count:g}; restart shown in "
            f"{time.time() - began:.0f} s)")
    else:
        say(f"Prometheus: {query} did not rise within 240 s (is the kiosk_restarts runner installed?)")
    return 0


def prometheus_values(run, promql):
    """The values of an instant query on the lab's Prometheus, or None when it does not answer."""
    if not monitor_file(run).exists():
        return None
    url = json.loads(monitor_file(run).read_text())["prometheus"]
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as answer:
            body = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return [float(item["value"][1]) for item in (body.get("data") or {}).get("result", [])]


def poll_prometheus(run, promql, done, timeout):
    """Poll an instant query until ``done(values)``; the values, or None at the deadline."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        values = prometheus_values(run, promql)
        if values is not None and done(values):
            return values
        time.sleep(2)
    return None


# --------------------------------------------------------------------------- the release part of the demo

RELEASE_INSTALL_SCRIPT = """\
# kiosk-app's installer in the lab: the kiosk's install step, as msiexec would be on a real kiosk
import pathlib, sys, time
package, version = pathlib.Path(sys.argv[1]), sys.argv[2]
(package / "INSTALLED").write_text(f"{version} {time.strftime('%Y-%m-%dT%H:%M:%S')}\\n")
"""
MIB = 1 << 20


def _die_with_parent():
    """In the child before exec: SIGTERM when the lab process dies (a watcher must not outlive the demo)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EventWatch:
    """``salt-run state.event <tagmatch>`` on the top master, its lines read in a thread."""

    def __init__(self, run, tagmatch):
        self.proc = subprocess.Popen(  # argument list, never a shell string
            [str(BIN / "salt-run"), "-c", str(run / "top"), "state.event", tagmatch],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, cwd=REPO,
            preexec_fn=_die_with_parent,
        )
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            tag, _, raw = line.rstrip("\n").partition("\t")
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            self.events.put((time.time(), tag, data if isinstance(data, dict) else {}))

    def get(self, timeout):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def build_root(run):
    """Where the lab's builds are made: the top master's kiosk_release:source_root."""
    return run / "build"


def build_demo_package(run):
    """What Jenkins would hand over: a few MB app payload and its install script."""
    out = build_root(run) / f"{DEMO_RELEASE}-{DEMO_RELEASE_VERSION}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.bin").write_bytes(os.urandom(DEMO_RELEASE_MB * MIB))
    (out / "install.py").write_text(RELEASE_INSTALL_SCRIPT)
    return out


def describe_event(tag, data):
    """One line for a kiosk/release/* event on the top master's bus."""
    payload = data.get("data") if isinstance(data.get("data"), dict) else data
    what = f"{payload.get('name')} {payload.get('version')}"
    if tag == "kiosk/release/published":
        return f"{what} for {', '.join(payload.get('campuses') or []) or 'no campus'}" \
               "  -> reactor: kiosk_release.stage on the campus's Pis"
    if tag == "kiosk/release/staged":
        return (f"{data.get('id')}: {what} verified and live, {payload.get('fetched', 0) / MIB:.1f} MiB fetched"
                f"{', campus pin set' if payload.get('pinned') else ''}  -> reactor: kiosk_release.push")
    if tag == "kiosk/release/installed":
        return f"{data.get('id')}: {what} installed"
    if tag == "kiosk/release/alert":
        return f"{data.get('id')}: {what} REFUSED ({payload.get('hop')}): {payload.get('error')}"
    return json.dumps(payload)[:200]


def served_mib(run, server, name, version):
    """MiB of ``name``/``version`` an nginx of the lab served (its access log, one JSON object a line)."""
    log = run / "nginx" / server / "access.log"
    prefix = f"{nginx_repo.URL_PREFIX}{name}/{version}/"
    total = 0
    for line in (log.read_text().splitlines() if log.exists() else []):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            if entry["uri"].startswith(prefix):
                total += int(entry["bytes"])
    return total / MIB


def demo_release(run, watch):
    """Publish a release to one campus; the reactors stage it on its Pis and install it on its kiosks."""
    inv = json.loads((run / "inventory.json").read_text())
    campus = DEMO_RELEASE_CAMPUS if DEMO_RELEASE_CAMPUS in inv["campuses"] else next(iter(inv["campuses"]))
    power = json.loads((run / "sim-state.json").read_text())
    kiosks = sorted(inv["campuses"][campus]["kiosks"])
    powered = [k for k in kiosks if power.get(k, {}).get("on")]
    top = f"-c {run / 'top'}"
    name, version = DEMO_RELEASE, DEMO_RELEASE_VERSION
    began = time.time()
    build = build_demo_package(run)
    install = json.dumps([sys.executable, "{dir}/install.py", "{dir}", "{version}"])
    argv = ["kiosk_release.publish", f"name={name}", f"version={version}", f"source={build}",
            f"install={install}", f"campuses={campus}"]
    say(f"$ salt-run {top} {shlex.join(argv)}")
    started = time.time()
    code, report = salt_run(run, *argv)
    if code or not report.get("result"):
        say(f"publish failed: {report.get('error', report)}")
        return code or 1
    md5 = report["files"]["app.bin"]["md5"]
    print(f"    {name} {version} in the store: {', '.join(sorted(report['files']))} ({report['bytes'] / MIB:.1f} MiB, "
          f"app.bin md5 {md5}); {campus} pinned to it")
    say(f"the reactors take over; the top master's event bus (salt-run {top} state.event 'kiosk/release/*'):")
    pis = set(inv["campuses"][campus]["pis"])
    staged, installed, failed, done_at, deadline = set(), set(), set(), None, time.time() + 90
    # until every Pi of the campus staged it and every powered-on kiosk installed it (or its install failed)
    while time.time() < deadline and not (pis <= staged and set(powered) <= installed | failed):
        event = watch.get(timeout=1)
        if event is None:
            continue
        at, tag, data = event
        print(f"    +{at - started:4.1f}s {tag:<24} {describe_event(tag, data)}")
        if tag == "kiosk/release/staged":
            staged.add(data.get("id"))
        payload = data.get("data") if isinstance(data.get("data"), dict) else data
        if tag == "kiosk/release/alert" and payload.get("hop") == "install" and data.get("id") in kiosks:
            failed.add(data["id"])  # a bad download is retried from the next Pi; a failed install is final
        if tag == "kiosk/release/installed" and data.get("id") in kiosks:
            installed.add(data["id"])
            done_at = at if set(powered) <= installed and done_at is None else done_at
    if done_at:
        say(f"{name} {version} installed on the {len(powered)} powered-on kiosks of {campus}, "
            f"{done_at - started:.0f} s after the publish")
    served = {server: served_mib(run, server, name, version)
              for server in ["top-export"] + sorted(inv["campuses"][campus]["pis"])}
    print(f"    nginx served {name} {version}: " + ", ".join(f"{s} {m:.1f} MiB" for s, m in served.items())
          + f"  (top-export: the WAN copy, once for {campus})")
    # timeout=5: a powered-off kiosk never answers; the runner's default (60 s) is for real WAN links
    say(f"$ salt-run {top} kiosk_release.status {name} timeout=5")
    status_code, status = salt_run(run, "kiosk_release.status", name, "timeout=5")
    campuses = status.get("campuses") or {}
    for each, entry in sorted(campuses.items()):
        silent = sorted(k for k, v in entry["kiosks"].items() if v.get("silent"))
        held = ", ".join(f"{p} has {', '.join(r['staged']) or 'none'}" if "staged" in r else f"{p}: {r.get('error')}"
                         for p, r in sorted(entry["pis"].items()))
        print(f"    {each}: pin {entry['pin'] or 'none'}"
              + (f" (serial {entry['serial']})" if entry["serial"] else "")
              + f", running {', '.join(entry['versions_running']) or 'none'}"
              + f", drift {entry['drift'] or 'none'}"
              + (f", silent {', '.join(silent)}" if silent else "")
              + f"; {held}")
    kiosks_seen = (campuses.get(campus) or {}).get("kiosks", {})
    for kiosk in kiosks:
        seen = kiosks_seen.get(kiosk, {})
        print(f"      {kiosk}: {'silent' if seen.get('silent') else seen.get('installed') or 'nothing installed'}"
              + ("" if kiosk in powered else " (powered off)"))
    if status_code:
        say(f"status: {status.get('error', status)}")
    missing = [k for k in powered if kiosks_seen.get(k, {}).get("installed") != version]
    if missing:
        say(f"release {name} {version} did NOT reach {', '.join(missing)} of {campus}")
        return 1
    say(f"release {name} {version} on {campus}: {'done' if not status_code else 'installed, status FAILED'} "
        f"(release demo {time.time() - began:.0f} s)")
    return status_code


def cmd_plot(args):
    """Draw ``args.campus``'s Pi temperatures and unexpected kiosk restarts from Prometheus (lab/campus_plot.py)."""
    from lab import campus_plot  # noqa: PLC0415 - matplotlib is loaded for this command only

    run = pathlib.Path(args.dir)
    url = args.prometheus
    if not url:
        if not monitor_file(run).exists():
            say(f"the lab's monitoring is not running in {run} (kiosk-lab up first, or --prometheus URL)")
            return 1
        url = json.loads(monitor_file(run).read_text())["prometheus"]
    inv = lab_inventory(run)
    if inv and args.campus not in inv["campuses"]:
        say(f"campus: {args.campus!r} is not a campus of the lab's inventory ({', '.join(sorted(inv['campuses']))})")
        return 2
    out = pathlib.Path(args.out or run / f"campus-plot-{args.campus}.png")
    try:
        path, data = campus_plot.campus_plot(url, args.campus, out, minutes=args.minutes)
    except (campus_plot.PlotError, OSError) as exc:
        say(f"plot: {exc}")
        return 1
    lines = ", ".join(f"{pi} {values[-1]:g} °C" for pi, (_, values) in data["lines"].items() if values)
    marks = ", ".join(f"{kiosk} at {time.strftime('%H:%M:%S', time.gmtime(at))} UTC"
                      for at, kiosk, _ in data["restarts"])
    say(f"{data['title']}: {lines or 'no temperature samples'}; unexpected restarts: {marks or 'none'}")
    say(f"wrote {path}")
    return 0 if data["lines"] else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kiosk-lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("KIOSK_LAB_DIR", DEFAULT_RUN_DIR), help="run directory")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "demo"):
        p = sub.add_parser(name)
        p.add_argument("--inventory", default=str(REPO / "pillar" / "fleet.yaml"),
                       help="fleet data file (inventory, change parameters; README \"Inventory\")")
        p.add_argument("--off", help="kiosks that start powered off (comma-separated)")
        p.add_argument("--timeout", type=int, default=180, help="seconds to wait for every minion")
        p.add_argument("--afternoon-minutes", type=float, default=AFTERNOON_MINUTES,
                       help="how long the warm afternoon's climb takes, from start-up (the Pis' DHT11 sensors)")
    sub.add_parser("down")
    p = sub.add_parser("plot", help="draw a campus's Pi temperatures and unexpected restarts (PNG)")
    p.add_argument("campus", help="a campus of the inventory, e.g. hillside")
    p.add_argument("--out", help="PNG file to write (default <run>/campus-plot-<campus>.png)")
    p.add_argument("--minutes", type=float, default=30, help="the span: the last N minutes")
    p.add_argument("--prometheus", help="Prometheus URL (default: the running lab's, from <run>/monitor.json)")
    sub.add_parser("status")
    for name, what in (("pi-down", "stop one Pi's master, syndic and minion (by pid)"),
                       ("pi-up", "start one Pi's master, syndic and minion again")):
        p = sub.add_parser(name, help=what)
        p.add_argument("pi", help="a Pi of the inventory, e.g. pi-riverside-1")
        p.add_argument("--timeout", type=int, default=120, help="seconds to wait for the Pi and its kiosks (pi-up)")
    for name, what in (("cut", "cut a campus's WAN link: stop its Pis' syndics (by pid)"),
                       ("restore", "restore a campus's WAN link: start its Pis' syndics again")):
        p = sub.add_parser(name, help=what)
        p.add_argument("campus", help="a campus of the inventory, e.g. riverside")
        p.add_argument("--timeout", type=int, default=120, help="seconds to wait for the top master to hear the Pis")
    from lab import kiosk_day  # noqa: PLC0415 - the day driver uses this module's helpers

    kiosk_day.add_parser(sub)
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "demo": cmd_demo,
            "pi-down": cmd_pi_down, "pi-up": cmd_pi_up, "cut": cmd_cut, "restore": cmd_restore,
            "day": kiosk_day.cmd_day, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
