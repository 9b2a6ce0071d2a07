"""
kiosk-lab: the production topology on one machine, outside pytest.

    kiosk-lab up      start top master, every Pi (master + syndic + minion),
                      the kiosk simulator and the kiosks' minions
    kiosk-lab status  which daemons and simulated kiosks are running
    kiosk-lab demo    up, then show the fleet answering through the Pis
    kiosk-lab down    stop everything the lab started, by pid

Every node gets its own loopback address and Salt's standard ports, as on
real hosts: the top master listens on 127.0.100.1:4505/4506, each Pi master on
its first VLAN address (127.0.1.2, ...), kiosks sit on their VLANs
(127.0.1.11, ...). Nothing leaves 127.0.0.0/8.
"""

import argparse
import getpass
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))

import fleet_inventory  # noqa: E402

DEFAULT_RUN_DIR = "/tmp/kiosk-lab"  # short: salt's unix sockets must stay < 107 chars
TOP_ADDRESS = "127.0.100.1"
DEMO_OFF_KIOSK = "kiosk-hillside-03"
PACK_DIRS = ("_modules", "_states", "_runners", "_beacons", "_utils")
BIN = pathlib.Path(sys.executable).parent


def say(message):
    print(f"kiosk-lab: {message}", flush=True)


def load_inventory(path):
    raw = yaml.safe_load(pathlib.Path(path).read_text())
    return raw, fleet_inventory.validate(raw[fleet_inventory.PILLAR_KEY])


def pi_address(pi_spec, campus_spec):
    """A Pi's master listens on its first VLAN source address (sorted by VLAN)."""
    for vlan in sorted(pi_spec["vlans"]):
        if pi_spec["vlans"][vlan].get("source"):
            return pi_spec["vlans"][vlan]["source"]
    raise fleet_inventory.InventoryError("lab: every Pi needs a source address on one VLAN")


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
    for sls in (REPO / "pillar").glob("*.sls"):  # top.sls and the other sample pillars
        shutil.copy(sls, srv / "pillar" / sls.name)
    write_yaml(srv / "pillar" / "kiosk_fleet.sls", raw)  # the inventory the lab was given
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
        "auto_accept": True,
        "syndic_wait": 2,
        "reactor": [{"kiosk/boot": [str(REPO / "reactor" / "kiosk_boot.sls")]}],
        **roots,
    })
    daemons = [("top master", ["salt-master", "-c", str(top)])]
    for campus, spec in inv["campuses"].items():
        for pi_id, pi in sorted(spec["pis"].items()):
            address = pi_address(pi, spec)
            pi_dir = run / pi_id
            write_yaml(pi_dir / "master", {
                "id": pi_id,
                "interface": address,
                "root_dir": str(pi_dir),
                "log_file": str(pi_dir / "master.log"),
                "auto_accept": True,
                "syndic_master": TOP_ADDRESS,
                "syndic_log_file": str(pi_dir / "syndic.log"),
                "syndic_pidfile": str(pi_dir / "syndic.pid"),
                **roots,
            })
            write_yaml(pi_dir / "minion", {
                "id": pi_id,
                "master": address,
                "root_dir": str(pi_dir),
                "log_file": str(pi_dir / "minion.log"),
                "user": user,
                "enable_fqdns_grains": False,  # no reverse-DNS lookups off the machine
                "grains": {"campus": campus, "kiosk_fleet_role": "pi"},
            })
            daemons += [
                (f"{pi_id} master", ["salt-master", "-c", str(pi_dir)]),
                (f"{pi_id} syndic", ["salt-syndic", "-c", str(pi_dir)]),
                (f"{pi_id} minion", ["salt-minion", "-c", str(pi_dir)]),
            ]
        for kiosk_id in sorted(spec["kiosks"]):
            home = fleet_inventory.home_pi(spec, kiosk_id)
            kiosk_dir = run / "kiosks" / kiosk_id
            write_yaml(kiosk_dir / "minion", {
                "id": kiosk_id,
                "master": pi_address(spec["pis"][home], spec),
                "root_dir": str(kiosk_dir),
                "log_file": str(kiosk_dir / "minion.log"),
                "user": user,
                "enable_fqdns_grains": False,
                # Salt's hosts module edits this file (change template "hosts"), not /etc/hosts
                "hosts.file": str(kiosk_dir / "hosts"),
                "grains": {"campus": campus, "kiosk_fleet_role": "kiosk"},
                # at boot, announce kiosk/boot: the top master's reactor syncs the pack
                "startup_states": "sls",
                "sls_list": ["kiosk_fleet.boot"],
                # the shutdown hook of a simulated kiosk: its power button
                "kiosk_power": {
                    "shutdown_command": [sys.executable, "-m", "lab.kiosk_sim", "--run-dir", str(run),
                                         "power-off", kiosk_id, "--delay", "{delay}"],
                    "cwd": str(REPO),
                },
            })
    (run / "inventory.json").write_text(json.dumps(inv))
    return daemons


def read_pids(run):
    path = run / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
    return proc.pid


def salt(run, *args, timeout=60):
    """Run ``salt`` against the lab's top master; return parsed JSON (or raise)."""
    cmd = [str(BIN / "salt"), "-c", str(run / "top"), "--out=json", "--static", f"--timeout={timeout}", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, check=False)
    except subprocess.TimeoutExpired:  # a master still starting on a loaded machine: callers poll again
        return {"_error": f"salt {' '.join(args)} timed out after {timeout + 60} s"}
    try:
        return json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return {"_error": out.stdout + out.stderr}


def wait_for_minions(run, expected, timeout, fun="test.ping"):
    """Poll ``fun`` on every minion until each of ``expected`` answers True-ish."""
    deadline = time.time() + timeout
    answered = {}
    while time.time() < deadline:
        answered = salt(run, "*", fun, timeout=10)
        if fun != "test.ping":  # e.g. kiosk_power.status: any dict answer counts
            answered = {k: isinstance(v, dict) for k, v in answered.items()}
        if set(expected) <= {k for k, v in answered.items() if v is True}:
            return answered
        time.sleep(2)
    return answered


def cmd_up(args):
    run = pathlib.Path(args.dir)
    if any(alive(pid) for pid in read_pids(run).values()):
        say(f"already running in {run} (kiosk-lab down first)")
        return 1
    raw, inv = load_inventory(args.inventory)
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    daemons = write_configs(run, raw, inv)
    for name, argv in daemons:
        pid = start(run, name, argv)
        say(f"started {name:<24} pid {pid}")
        if name == "top master" or name.endswith(" master"):
            time.sleep(1.5)  # a master must listen before its syndic/minion dials in
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
        "--on", ",".join(k for k in kiosks if k not in off),
    ])
    say(f"started {'kiosk simulator':<24} pid {pid} (magic packets -> kiosk minions)")
    expected = sorted([p for c in inv["campuses"].values() for p in c["pis"]] + [k for k in kiosks if k not in off])
    say(f"waiting for {len(expected)} minions to answer the top master through the syndics ...")
    answered = wait_for_minions(run, expected, args.timeout)
    missing = sorted(set(expected) - {k for k, v in answered.items() if v is True})
    if missing:
        say(f"no answer from {', '.join(missing)}; logs under {run}")
        return 1
    synced = salt(run, "*", "saltutil.sync_all", timeout=60)
    say(f"pack synced to {len(synced)} minions")
    say("up. Use the top master with:")
    print(f"    {BIN / 'salt'} -c {run / 'top'} '*' test.ping")
    print(f"    {BIN / 'salt-run'} -c {run / 'top'} kiosk_fleet.ping")
    print(f"    {REPO / 'lab' / 'kiosk-lab'} down")
    return 0


def cmd_down(args):
    run = pathlib.Path(args.dir)
    pids = read_pids(run)
    if not pids:
        say(f"nothing to stop in {run}")
        return 0
    # simulator first: it stops the kiosk minions it powered on
    order = sorted(pids, key=lambda n: (n != "kiosk simulator", n == "top master"))
    for name in order:
        if alive(pids[name]):
            os.killpg(pids[name], signal.SIGTERM)
    deadline = time.time() + 45
    while time.time() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.5)
    for name, pid in pids.items():
        if alive(pid):
            say(f"{name} (pid {pid}) ignored SIGTERM: SIGKILL")
            os.killpg(pid, signal.SIGKILL)
    # safety net: kiosk minions the simulator started, should it have died first
    state_file = run / "sim-state.json"
    if state_file.exists():
        for kiosk, state in json.loads(state_file.read_text()).items():
            if state.get("pid") and alive(state["pid"]):
                say(f"{kiosk} minion (pid {state['pid']}) outlived the simulator: SIGKILL")
                os.killpg(state["pid"], signal.SIGKILL)
    (run / "pids.json").unlink()
    say(f"stopped {len(pids)} processes")
    return 0


def cmd_status(args):
    run = pathlib.Path(args.dir)
    pids = read_pids(run)
    for name, pid in sorted(pids.items()):
        print(f"{name:<24} pid {pid:<8} {'running' if alive(pid) else 'STOPPED'}")
    state_file = run / "sim-state.json"
    if state_file.exists():
        for kiosk, state in sorted(json.loads(state_file.read_text()).items()):
            power = "on " if state["on"] else "off"
            print(f"{kiosk:<24} power {power} {state['ip']}:{state['service_port']}  magic packets {state['packets']}")
    return 0 if pids and all(alive(p) for p in pids.values()) else 1


def salt_run(run, *args, timeout=120):
    cmd = [str(BIN / "salt-run"), "-c", str(run / "top"), "--out=json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        return out.returncode, json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return out.returncode, {"_error": out.stdout + out.stderr}


def cmd_demo(args):
    """Up with one kiosk powered off, then wake it through its Pis and shut it down."""
    args.off = args.off or DEMO_OFF_KIOSK
    status = cmd_up(args)
    if status:
        return status
    run = pathlib.Path(args.dir)
    top = f"-c {run / 'top'}"
    say(f"$ salt {top} '*' test.ping      ({args.off} is powered off)")
    answered = salt(run, "*", "test.ping")
    for minion in sorted(answered):
        print(f"    {minion}: {answered[minion]}")
    kiosk = args.off.split(",")[0]
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
    cmd_status(args)
    say("the lab stays up; stop it with: lab/kiosk-lab down")
    return code


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kiosk-lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("KIOSK_LAB_DIR", DEFAULT_RUN_DIR), help="run directory")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "demo"):
        p = sub.add_parser(name)
        p.add_argument("--inventory", default=str(REPO / "pillar" / "kiosk_fleet.sls"))
        p.add_argument("--off", help="kiosks that start powered off (comma-separated)")
        p.add_argument("--timeout", type=int, default=180, help="seconds to wait for every minion")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
