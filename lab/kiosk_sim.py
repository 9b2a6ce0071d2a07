"""
Kiosk simulator: the hardware the lab cannot have.

One process stands in for the campus LANs and the kiosks' network cards and
power buttons:

* for every VLAN it listens on the VLAN's broadcast address and WoL port (all
  on loopback) for real magic packets; a packet for the MAC of a powered-off
  kiosk on that VLAN "powers it on": the simulator starts the kiosk's
  salt-minion and opens its service port (e.g. TCP 3389 on 127.0.1.11);
* a control socket (``sim.sock`` in the run dir) takes ``off <kiosk> <delay>``
  from the kiosks' shutdown hook (``python -m lab.kiosk_sim power-off``) and
  ``on``/``off`` from the lab itself; powering off stops the minion and
  closes the port. Each ``off`` is one press of the kiosk's power button,
  counted: a shutdown that ran twice on a kiosk shows as two presses;
* ``keep-off <kiosk>`` (``--keep-off`` at start) makes a kiosk whose network
  card ignores magic packets (a dead NIC, a BIOS without wake-on-LAN): they
  are counted but power nothing on, so the reconciler's verification finds
  the kiosk off and raises the mismatch alert; ``let-on <kiosk>`` heals it.

State (power, pids, magic packets received and power-button presses per
kiosk) is written atomically to ``sim-state.json`` after every change, for
``kiosk-lab status`` and tests.
"""

import argparse
import json
import logging
import os
import pathlib
import selectors
import signal
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))

import fleet_wol  # noqa: E402  (the pack's own packet parser)

log = logging.getLogger("kiosk-sim")
KILL_AFTER_S = 15  # a simulated kiosk's minion gets this long to stop on SIGTERM


class Kiosk:
    def __init__(self, kiosk_id, spec, config_dir):
        self.id = kiosk_id
        self.mac = spec["mac"]
        self.ip = spec["ip"]
        self.vlan = spec["vlan"]
        self.service_port = spec["service_port"]
        self.config_dir = config_dir
        self.process = None
        self.listener = None
        self.packets = 0
        self.presses = 0  # shutdown requests from the kiosk's power hook
        self.off_at = None
        self.powered_on_at = None
        self.kept_off = False  # its NIC ignores magic packets (keep-off)
        self.ignored = 0  # magic packets it ignored

    @property
    def on(self):
        return self.process is not None and self.process.poll() is None


class Simulator:
    def __init__(self, run_dir, inventory, salt_minion):
        self.run_dir = pathlib.Path(run_dir)
        self.salt_minion = salt_minion
        self.selector = selectors.DefaultSelector()
        self.kiosks = {}
        self.by_vlan = {}  # (campus, vlan) -> {mac: Kiosk}
        for campus, spec in inventory["campuses"].items():
            for kiosk_id, kiosk in spec["kiosks"].items():
                sim = Kiosk(kiosk_id, kiosk, self.run_dir / "kiosks" / kiosk_id)
                self.kiosks[kiosk_id] = sim
                self.by_vlan.setdefault((campus, kiosk["vlan"]), {})[sim.mac] = sim
            for vlan, vlan_spec in spec["vlans"].items():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((vlan_spec["broadcast"], spec["wol_port"]))
                self.selector.register(sock, selectors.EVENT_READ, ("wol", (campus, vlan)))
                log.info("listening for magic packets on %s:%s (%s/%s)", vlan_spec["broadcast"], spec["wol_port"], campus, vlan)
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        control_path = self.run_dir / "sim.sock"
        if control_path.exists():
            control_path.unlink()
        self.control.bind(str(control_path))
        self.selector.register(self.control, selectors.EVENT_READ, ("control", None))
        self.running = True
        self.dying = []  # (process, SIGKILL deadline) of minions shutting down

    # -- power -------------------------------------------------------------
    def power_on(self, kiosk, why):
        if kiosk.on:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((kiosk.ip, kiosk.service_port))
        listener.listen(16)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, ("service", kiosk))
        kiosk.listener = listener
        logfile = open(kiosk.config_dir / "minion.out", "ab")  # noqa: SIM115 - lives with the child
        kiosk.process = subprocess.Popen(  # argument list, never a shell string
            [self.salt_minion, "-c", str(kiosk.config_dir), "--log-level=quiet"],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logfile.close()
        kiosk.powered_on_at = time.time()
        kiosk.off_at = None
        log.info("%s powered on (%s): minion pid %s, port %s:%s open", kiosk.id, why, kiosk.process.pid, kiosk.ip, kiosk.service_port)
        self.save()

    def power_off(self, kiosk, why):
        """Close the port and signal the minion; the loop reaps it (never blocks)."""
        kiosk.off_at = None
        if kiosk.listener is not None:
            self.selector.unregister(kiosk.listener)
            kiosk.listener.close()
            kiosk.listener = None
        if kiosk.process is not None:
            if kiosk.process.poll() is None:
                # the minion forks workers: signal its whole process group
                os.killpg(kiosk.process.pid, signal.SIGTERM)
                self.dying.append((kiosk.process, time.time() + KILL_AFTER_S))
            kiosk.process = None
            log.info("%s powered off (%s)", kiosk.id, why)
        self.save()

    def reap(self, force=False):
        """Collect stopped minions; SIGKILL the ones that outlive KILL_AFTER_S."""
        still = []
        for process, kill_at in self.dying:
            if process.poll() is not None:
                continue
            if force or time.time() >= kill_at:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            still.append((process, kill_at))
        self.dying = still

    # -- events ------------------------------------------------------------
    def on_magic_packet(self, sock, where):
        data, sender = sock.recvfrom(2048)
        try:
            mac, _password = fleet_wol.parse_magic_packet(data)
        except fleet_wol.WolError as exc:
            log.warning("ignored datagram from %s on %s: %s", sender, where, exc)
            return
        kiosk = self.by_vlan.get(where, {}).get(mac)
        if kiosk is None:
            log.info("magic packet for %s on %s/%s: no kiosk with that MAC on this VLAN", mac, *where)
            return
        kiosk.packets += 1
        if kiosk.kept_off:
            kiosk.ignored += 1
            log.info("magic packet for %s (%s) from %s:%s ignored: kept off", kiosk.id, mac, *sender)
            self.save()
            return
        log.info("magic packet for %s (%s) from %s:%s", kiosk.id, mac, *sender)
        self.power_on(kiosk, f"magic packet from {sender[0]}")
        self.save()

    def on_control(self):
        data = self.control.recv(4096).decode("utf-8", "replace").split()
        if len(data) < 2 or data[0] not in ("on", "off", "keep-off", "let-on") or data[1] not in self.kiosks:
            log.warning("bad control message %r", data)
            return
        kiosk = self.kiosks[data[1]]
        if data[0] in ("keep-off", "let-on"):
            kiosk.kept_off = data[0] == "keep-off"
            log.info("%s: magic packets %s", kiosk.id, "ignored from now on" if kiosk.kept_off else "work again")
            self.save()
            return
        if data[0] == "on":
            self.power_on(kiosk, "lab")
            return
        try:
            delay = float(data[2]) if len(data) > 2 else 0.0
        except ValueError:
            log.warning("bad delay in control message %r", data)
            return
        kiosk.presses += 1
        kiosk.off_at = time.time() + delay
        log.info("%s shutting down in %.0f s", kiosk.id, delay)

    def save(self):
        state = {
            k.id: {
                "on": k.on,
                "pid": k.process.pid if k.on else None,
                "packets": k.packets,
                "presses": k.presses,
                "kept_off": k.kept_off,
                "ignored": k.ignored,
                "ip": k.ip,
                "service_port": k.service_port,
                "powered_on_at": k.powered_on_at if k.on else None,
            }
            for k in self.kiosks.values()
        }
        tmp = self.run_dir / "sim-state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self.run_dir / "sim-state.json")

    def run(self, start_on, kept_off=()):
        for kiosk_id in kept_off:
            self.kiosks[kiosk_id].kept_off = True
        for kiosk_id in start_on:
            self.power_on(self.kiosks[kiosk_id], "lab start")
        self.save()
        while self.running:
            for key, _ in self.selector.select(timeout=0.5):
                kind, what = key.data
                if kind == "wol":
                    self.on_magic_packet(key.fileobj, what)
                elif kind == "control":
                    self.on_control()
                elif kind == "service":
                    try:
                        conn, _ = key.fileobj.accept()
                        conn.close()  # a liveness probe only needs the handshake
                    except BlockingIOError:
                        pass
            now = time.time()
            for kiosk in self.kiosks.values():
                if kiosk.off_at is not None and now >= kiosk.off_at:
                    self.power_off(kiosk, "shutdown")
            self.reap()
        for kiosk in self.kiosks.values():
            self.power_off(kiosk, "simulator stopping")
        deadline = time.time() + KILL_AFTER_S
        while self.dying and time.time() < deadline:
            self.reap()
            time.sleep(0.2)
        self.reap(force=True)

    def stop(self, *_):
        self.running = False


def send_control(run_dir, *words):
    """Send one command to a running simulator (used by the kiosks' power hook)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(" ".join(str(w) for w in words).encode(), str(pathlib.Path(run_dir) / "sim.sock"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kiosk_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the simulated LANs and kiosks")
    serve.add_argument("--inventory", required=True, help="normalised inventory (JSON)")
    serve.add_argument("--salt-minion", required=True)
    serve.add_argument("--on", default="", help="comma-separated kiosks powered on at start")
    serve.add_argument("--keep-off", default="", help="comma-separated kiosks whose NIC ignores magic packets")
    off = sub.add_parser("power-off", help="shutdown hook: power a kiosk off after a delay")
    off.add_argument("kiosk")
    off.add_argument("--delay", type=float, default=0)
    on = sub.add_parser("power-on", help="press the power button of a kiosk")
    on.add_argument("kiosk")
    for name, what in (("keep-off", "the kiosk's NIC ignores magic packets from now on"),
                       ("let-on", "the kiosk's NIC wakes on magic packets again")):
        sub.add_parser(name, help=what).add_argument("kiosk")
    args = parser.parse_args(argv)
    if args.command == "power-off":
        send_control(args.run_dir, "off", args.kiosk, args.delay)
        return 0
    if args.command in ("power-on", "keep-off", "let-on"):
        send_control(args.run_dir, "on" if args.command == "power-on" else args.command, args.kiosk)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kiosk-sim %(message)s")
    inventory = json.loads(pathlib.Path(args.inventory).read_text())
    sim = Simulator(args.run_dir, inventory, args.salt_minion)
    signal.signal(signal.SIGTERM, sim.stop)
    signal.signal(signal.SIGINT, sim.stop)
    unknown = sorted({k for k in args.keep_off.split(",") if k} - set(sim.kiosks))
    if unknown:
        parser.error(f"--keep-off: unknown kiosk {', '.join(unknown)}")
    sim.run([k for k in args.on.split(",") if k], [k for k in args.keep_off.split(",") if k])
    return 0


if __name__ == "__main__":
    sys.exit(main())
