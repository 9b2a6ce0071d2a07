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
  the kiosk off and raises the mismatch alert; ``let-on <kiosk>`` heals it;
* ``reboot <kiosk>``: a kiosk that restarts on its own (a power blip, a
  Windows update): its minion is stopped and started again with no magic
  packet, so its boot is an unexpected restart for the top master;
* ``--weather FILE``: the Pis' DHT11 sensors, as fake IIO sysfs trees the
  Pis' ``kiosk_env`` beacons read through their real path
  (``<sysfs_root>/bus/iio/devices/iio:device0``): a warm afternoon, each
  Pi's temperature climbing from its start to its peak over the file's
  ``ramp_s`` (see :func:`afternoon`), rewritten every few seconds.

State (power, pids, magic packets received and power-button presses per
kiosk) is written atomically to ``sim-state.json`` after every change, for
``kiosk-lab status`` and tests.
"""

import argparse
import json
import logging
import math
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
WEATHER_EVERY_S = 2  # how often the sensors' files are rewritten
DHT11_DEVICE = "iio:device0"


# --------------------------------------------------------------------------- the Pis' sensors


class SimError(ValueError):
    """A bad weather profile or sensor argument; the message names the field."""


def _number(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SimError(f"{field}: {value!r} is not a number")
    return float(value)


def afternoon(elapsed_s, start, peak, ramp_s):
    """A warm afternoon: ``start`` at 0 s, ``peak`` from ``ramp_s`` on, in between a half cosine (slow,
    then steep, then slow, as a room under the sun); before 0 s, ``start``."""
    elapsed_s, start, peak = _number(elapsed_s, "elapsed_s"), _number(start, "start"), _number(peak, "peak")
    if _number(ramp_s, "ramp_s") <= 0:
        raise SimError(f"ramp_s: {ramp_s!r} is not a positive number of seconds")
    x = min(max(elapsed_s / ramp_s, 0.0), 1.0)
    return start + (peak - start) * (1 - math.cos(math.pi * x)) / 2


def dht11_reading(profile, elapsed_s, ramp_s):
    """``(milli-degrees C, milli-percent RH)`` of one Pi's DHT11 ``elapsed_s`` into the afternoon, in whole
    degrees and whole percent as a DHT11 measures them. ``profile``: ``{"temperature": [start, peak],
    "humidity": [start, end]}``."""
    if not isinstance(profile, dict):
        raise SimError(f"profile: {profile!r} is not a mapping")
    values = []
    for field in ("temperature", "humidity"):
        pair = profile.get(field)
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise SimError(f"{field}: {pair!r} is not [start, end]")
        values.append(round(afternoon(elapsed_s, pair[0], pair[1], ramp_s)) * 1000)
    return values[0], values[1]


def write_dht11(sysfs_root, temp_milli_c, humidity_milli_pct):
    """A DHT11 as the kernel's IIO driver shows it; each value file replaced atomically (the beacon never
    reads half a number). Returns the device directory."""
    device = pathlib.Path(sysfs_root) / "bus" / "iio" / "devices" / DHT11_DEVICE
    device.mkdir(parents=True, exist_ok=True)
    for name, text in (("name", "dht11"), ("in_temp_input", str(int(temp_milli_c))),
                       ("in_humidityrelative_input", str(int(humidity_milli_pct)))):
        tmp = device / f".{name}.tmp"
        tmp.write_text(text + "\n")
        os.replace(tmp, device / name)
    return device


def load_weather(path):
    """The weather file the lab writes: ``{"started_at": epoch, "ramp_s": s, "pis": {pi: {"sysfs_root",
    "temperature": [start, peak], "humidity": [start, end]}}}``, checked."""
    weather = json.loads(pathlib.Path(path).read_text())
    if not isinstance(weather, dict) or not isinstance(weather.get("pis"), dict):
        raise SimError("weather: expected {started_at, ramp_s, pis: {pi: profile}}")
    _number(weather.get("started_at"), "weather.started_at")
    ramp = _number(weather.get("ramp_s"), "weather.ramp_s")
    for pi, profile in weather["pis"].items():
        if not isinstance(profile, dict) or not isinstance(profile.get("sysfs_root"), str):
            raise SimError(f"weather.pis.{pi}.sysfs_root: missing")
        dht11_reading(profile, 0, ramp)  # the profile's fields, checked now
    return weather


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
        self.reboots = 0  # restarts with no wake (reboot)
        self.boot_after = None  # a reboot: the old minion's process, gone before the new one starts

    @property
    def on(self):
        return self.process is not None and self.process.poll() is None


class Simulator:
    def __init__(self, run_dir, inventory, salt_minion, weather_file=None):
        self.run_dir = pathlib.Path(run_dir)
        self.weather_file = pathlib.Path(weather_file) if weather_file else None
        self.weather, self.weather_mtime = None, None
        self.weather_at = 0.0
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
        # every simulated kiosk shares the host's kernel (one /proc/stat btime): its own boot time, for the
        # pack's boot report (kiosk_power:boot_time_file in the lab's kiosk config)
        boot_time = kiosk.config_dir / "boot_time"
        boot_time.with_suffix(".tmp").write_text(f"{int(time.time())}\n")
        os.replace(boot_time.with_suffix(".tmp"), boot_time)
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
            kiosk.boot_after = kiosk.process if why == "reboot" else None
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
        if len(data) < 2 or data[0] not in ("on", "off", "keep-off", "let-on", "reboot") or data[1] not in self.kiosks:
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
        if data[0] == "reboot":
            if not kiosk.on:
                log.warning("%s: reboot ignored, it is off", kiosk.id)
                return
            kiosk.reboots += 1
            self.power_off(kiosk, "reboot")  # started again by the loop once the old minion is gone
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
                "reboots": k.reboots,
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
                # a salt-minion refuses to start while its predecessor's pid file names a live process
                if kiosk.boot_after is not None and kiosk.boot_after.poll() is not None:
                    kiosk.boot_after = None
                    self.power_on(kiosk, "reboot, no wake")
            self.reap()
            if self.weather_file and now - self.weather_at >= WEATHER_EVERY_S:
                self.weather_at = now
                self.update_sensors(now)
        for kiosk in self.kiosks.values():
            self.power_off(kiosk, "simulator stopping")
        deadline = time.time() + KILL_AFTER_S
        while self.dying and time.time() < deadline:
            self.reap()
            time.sleep(0.2)
        self.reap(force=True)

    def update_sensors(self, now):
        """Every Pi's DHT11 files at this moment of the afternoon; the weather file is read again when it
        changed (the lab starts the afternoon anew once the Pis' beacons run)."""
        try:
            mtime = self.weather_file.stat().st_mtime_ns
            if mtime != self.weather_mtime:
                self.weather, self.weather_mtime = load_weather(self.weather_file), mtime
                log.info("weather: %s Pis, the afternoon from %s", len(self.weather["pis"]),
                         time.strftime("%H:%M:%S", time.localtime(self.weather["started_at"])))
        except (OSError, ValueError) as exc:
            log.warning("weather: %s: %s", self.weather_file, exc)
        if not self.weather:
            return
        elapsed = now - self.weather["started_at"]
        for pi, profile in sorted(self.weather["pis"].items()):
            try:
                write_dht11(profile["sysfs_root"], *dht11_reading(profile, elapsed, self.weather["ramp_s"]))
            except OSError as exc:
                log.warning("%s: cannot write its DHT11 files: %s", pi, exc)

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
    serve.add_argument("--weather", help="the Pis' DHT11 sensors and their afternoon (JSON, see load_weather)")
    off = sub.add_parser("power-off", help="shutdown hook: power a kiosk off after a delay")
    off.add_argument("kiosk")
    off.add_argument("--delay", type=float, default=0)
    on = sub.add_parser("power-on", help="press the power button of a kiosk")
    on.add_argument("kiosk")
    for name, what in (("keep-off", "the kiosk's NIC ignores magic packets from now on"),
                       ("let-on", "the kiosk's NIC wakes on magic packets again"),
                       ("reboot", "the kiosk restarts on its own (no wake): an unexpected restart")):
        sub.add_parser(name, help=what).add_argument("kiosk")
    args = parser.parse_args(argv)
    if args.command == "power-off":
        send_control(args.run_dir, "off", args.kiosk, args.delay)
        return 0
    if args.command in ("power-on", "keep-off", "let-on", "reboot"):
        send_control(args.run_dir, "on" if args.command == "power-on" else args.command, args.kiosk)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kiosk-sim %(message)s")
    inventory = json.loads(pathlib.Path(args.inventory).read_text())
    try:
        if args.weather:
            load_weather(args.weather)  # a bad file stops the start, not the afternoon later
    except (OSError, ValueError) as exc:
        parser.error(f"--weather: {exc}")
    sim = Simulator(args.run_dir, inventory, args.salt_minion, args.weather)
    signal.signal(signal.SIGTERM, sim.stop)
    signal.signal(signal.SIGINT, sim.stop)
    unknown = sorted({k for k in args.keep_off.split(",") if k} - set(sim.kiosks))
    if unknown:
        parser.error(f"--keep-off: unknown kiosk {', '.join(unknown)}")
    sim.run([k for k in args.on.split(",") if k], [k for k in args.keep_off.split(",") if k])
    return 0


if __name__ == "__main__":
    sys.exit(main())
