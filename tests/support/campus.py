"""
The campus runtime on the test topology's Pis (docs/campus.md): the
``kiosk_campus:`` settings every Pi master and Pi minion gets, the clock
stand-in file per Pi, the Pi master's probe/reconcile schedule, and the
magic-packet listeners on the VLANs' loopback broadcast addresses.

Time on a Pi is simulated, never the host's: each Pi's
``kiosk_campus:clock_file`` holds ``{"synced": bool, "offset_s": float}``
(``fleet_clock.clock_state``), so a test puts a campus at "06:59:50 campus
time" by giving its Pis the offset from now to that instant, and steps the
day forward by rewriting the offsets. A Pi with ``"synced": false`` and a
wrong offset is a Pi that booted without a network time source.

The Pi masters' schedule (probe, reconcile) is off in the session topology,
so no other test file sees a reconciler act: a campus test turns it on for
some Pis with :func:`write_schedule` and restarts those Pis
(``Topology.stop_pi`` / ``start_pi``: a whole Pi, its minion started afresh),
and :func:`remove_schedule` before the Pis restart at its end.
"""

import contextlib
import datetime
import ipaddress
import json
import pathlib
import socket
import threading
import time
import zoneinfo

import fleet_state

# How often the test Pis' masters probe their peers and reconcile (production: 20 s and 60 s).
# Short, so a test of a failover or a due transition waits seconds; the leader rule's
# "within 60 s" is checked against the real schedule's figures in docs/campus.md, not here.
PROBE_S = 3
RECONCILE_S = 5
# what a probe waits for a peer's status.json (kiosk_campus:probe_timeout_s)
PROBE_TIMEOUT_S = 1
STALE_S = 15
SCHEDULE_SNIPPET = "kiosk_campus_schedule.conf"


def dirs(root, pi_id):
    """``(campus dir, clock file)`` of a Pi under ``root``: the reconciler's state and its clock stand-in."""
    base = pathlib.Path(root) / pi_id
    return base / "state", base / "clock.json"


def settings(campus, pi_id, root, repo_dir, verify_keys, master_config):
    """
    The ``kiosk_campus:`` block of a test Pi (its master config and its
    minion config get the same one, as on a Pi: docs/campus.md). ``root``:
    where every Pi's campus state lives (:func:`dirs`); ``repo_dir``: the
    Pi's release repository, which its nginx serves (status.json goes
    below it); ``master_config``: the Pi master's config file (the minion's
    ``kiosk_campus.reconcile`` runs the master's reconciler with it).
    """
    state_dir, clock_file = dirs(root, pi_id)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir.parent / "prom").mkdir(exist_ok=True)
    if not clock_file.exists():
        write_clock(clock_file)
    return {
        "dir": str(state_dir),
        "campus": campus,
        "pi": pi_id,
        "verify_key": list(verify_keys),
        "repo_dir": str(repo_dir),
        "master_config": str(master_config),
        "clock_file": str(clock_file),
        "probe_timeout_s": PROBE_TIMEOUT_S,
        # a peer whose signed status is older than this is gone: with the test's 3 s probes a
        # failover takes ~STALE_S instead of production's 40 s (docs/campus.md)
        "stale_s": STALE_S,
        "shutdown_timeout_s": 10,
        "textfile_dir": str(state_dir.parent / "prom"),
    }


def write_clock(path, synced=True, offset_s=0.0):
    """Set a Pi's clock stand-in (atomic: the reconciler never reads half a file)."""
    if not isinstance(synced, bool):
        raise TypeError(f"synced: a bool, not {synced!r}")
    doc = {"synced": synced, "offset_s": float(offset_s)}
    fleet_state.write_atomic(str(path), json.dumps(doc))
    return doc


def offset_to(instant, now=None):
    """The clock offset (s) that makes a Pi read ``instant`` (aware datetime or ISO string) right now."""
    if isinstance(instant, str):
        instant = datetime.datetime.fromisoformat(instant)
    if instant.tzinfo is None:
        raise ValueError(f"instant: a time zone is needed, got {instant!r}")
    now = time.time() if now is None else now
    return instant.timestamp() - now


def local(day, hhmmss, timezone):
    """An aware datetime: ``day`` (YYYY-MM-DD) at ``hhmmss`` in the campus's ``timezone``."""
    return datetime.datetime.fromisoformat(f"{day}T{hhmmss}").replace(tzinfo=zoneinfo.ZoneInfo(timezone))


def schedule(probe_s=PROBE_S, reconcile_s=RECONCILE_S):
    """The Pi master's ``schedule:`` of the campus runtime (states/kiosk_fleet's Pi master snippet, faster)."""
    return {
        "schedule": {
            "kiosk_campus_probe": {"function": "kiosk_campus.probe", "seconds": probe_s,
                                   "maxrunning": 1, "return_job": False},
            "kiosk_campus_reconcile": {"function": "kiosk_campus.reconcile", "seconds": reconcile_s,
                                       "maxrunning": 1, "return_job": False},
        }
    }


def snippet_path(master_config):
    """Where a Pi master's schedule snippet goes: ``master.d/`` next to its config file (Salt's default_include)."""
    return pathlib.Path(master_config).parent / "master.d" / SCHEDULE_SNIPPET


def write_schedule(master_config, probe_s=PROBE_S, reconcile_s=RECONCILE_S):
    """Turn the campus schedule on for a Pi master; read at its next start."""
    path = snippet_path(master_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fleet_state.write_atomic(str(path), json.dumps(schedule(probe_s, reconcile_s)))  # JSON is YAML
    return path


def remove_schedule(master_config):
    snippet_path(master_config).unlink(missing_ok=True)


class Lan:
    """
    One UDP listener per VLAN broadcast address of the inventory's campuses
    (the kiosks' network cards): every magic packet, with the Pi address
    it came from.
    """

    def __init__(self, inventory, campuses=None):
        import fleet_wol

        self._parse = fleet_wol.parse_magic_packet
        self.sockets = {}
        self.packets = []  # (monotonic time, broadcast, sender ip, mac)
        for name, campus in inventory["kiosk_fleet"]["campuses"].items():
            if campuses and name not in campuses:
                continue
            for vlan in campus["vlans"].values():
                broadcast = str(ipaddress.IPv4Network(vlan["network"]).broadcast_address)
                if not ipaddress.IPv4Address(broadcast).is_loopback:
                    raise ValueError(f"{broadcast}: tests listen on 127.0.0.0/8 only")
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((broadcast, campus["wol_port"]))
                sock.setblocking(False)
                self.sockets[broadcast] = sock

    def drain(self):
        """Read what arrived; returns every packet so far."""
        for broadcast, sock in self.sockets.items():
            while True:
                try:
                    data, sender = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                mac, _ = self._parse(data)  # raises on anything but a magic packet
                self.packets.append((time.monotonic(), broadcast, sender[0], mac))
        return list(self.packets)

    def senders(self, mac, since=0.0):
        """The Pi addresses a magic packet for ``mac`` came from since ``since`` (monotonic)."""
        return sorted({p[2] for p in self.drain() if p[3] == mac and p[0] >= since})

    def wait_senders(self, mac, expected, since=0.0, timeout=30):
        """Poll until packets for ``mac`` came from every address in ``expected``; returns the senders."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.senders(mac, since)
            if set(expected) <= set(seen) or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)

    def close(self):
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}


class Services:
    """
    The kiosks' service ports on their loopback addresses: listening = the
    kiosk is on (nmap sees it). Each port accepts and closes what connects, as
    a service does: a socket that only listened would fill its backlog with
    the reconcilers' scans (two Pis, every few seconds) and then look closed.
    """

    def __init__(self, inventory):
        self.by_kiosk = {
            kiosk: (spec["ip"], spec.get("service_port", campus.get("service_port")))
            for campus in inventory["kiosk_fleet"]["campuses"].values()
            for kiosk, spec in campus["kiosks"].items()
        }
        self.open_sockets = {}

    def up(self, kiosk):
        if kiosk in self.open_sockets:
            return
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.by_kiosk[kiosk])
        sock.listen(64)
        self.open_sockets[kiosk] = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    @staticmethod
    def _accept(sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # closed by down()
                return
            conn.close()

    def down(self, kiosk):
        sock = self.open_sockets.pop(kiosk, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
            sock.close()

    def close(self):
        for kiosk in list(self.open_sockets):
            self.down(kiosk)
