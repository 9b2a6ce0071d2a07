"""
Release policy of the top master's runner (``_runners/kiosk_release.py``),
kept pure so it can be tested without Salt: where a published package may
come from, which events may start work, when a campus counts as pushed, and
when a kiosk of a rollout ring counts as installed.

Events on the master's bus are hints: a kiosk can put any tag with any data
(``id`` included) on its Pi master's bus and the syndic forwards it. So the
decisions below read the runner's own state (pins, serials, what is waiting
to be staged) and what the Pis report, never the event's word.
"""

import json
import os
import stat

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_release
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_release


class RolloutError(fleet_fields.FleetError):
    """A refused request or source; the message names the field."""


# --------------------------------------------------------------------------- keys


def new_key_pair():
    """A fresh Ed25519 key pair: ``(private PEM bytes, public PEM str)``."""
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ed25519  # pylint: disable=import-outside-toplevel

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def public_key_of(private_pem, field="signing_key"):
    """The public PEM of an Ed25519 private key PEM; RolloutError naming ``field`` otherwise."""
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ed25519  # pylint: disable=import-outside-toplevel

    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        raise RolloutError(f"{field}: not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RolloutError(f"{field}: expected an Ed25519 private key")
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def check_key_mode(mode, field="signing_key"):
    """A private key readable by group or others is refused (the master runs as root; Jenkins must not read it)."""
    if stat.S_IMODE(mode) & 0o077:
        raise RolloutError(f"{field}: mode {stat.S_IMODE(mode):04o} lets others read the private key (chmod 600)")


# --------------------------------------------------------------------------- confined sources


def source_parts(source, root, field="source"):
    """
    The path components of ``source`` below ``root`` (both as given, not
    resolved): ``source`` is absolute and under ``root``, or relative to it;
    ``..``, empty names, NUL and control characters are refused. Symlinks are
    checked while walking (:func:`open_confined`), not here.
    """
    if not isinstance(root, str) or not os.path.isabs(root):
        raise RolloutError("kiosk_release:source_root: not set to an absolute directory in the master config "
                           "(publish only reads packages from under it)")
    if not isinstance(source, str) or not source:
        raise RolloutError(f"{field}: give a file or directory under the source root, or an http(s) URL")
    if any(ord(c) < 32 or c == "\x7f" for c in source):
        raise RolloutError(f"{field}: holds control characters")
    raw = source.split("/")
    if ".." in raw:
        raise RolloutError(f"{field}: '..' is not allowed in the path")
    base = [p for p in root.split("/") if p not in ("", ".")]
    parts = [p for p in raw if p not in ("", ".")]
    if os.path.isabs(source):
        if parts[:len(base)] != base:
            raise RolloutError(f"{field}: {source} is not under the source root {root}")
        parts = parts[len(base):]
    if not parts:
        raise RolloutError(f"{field}: name a file or directory below the source root, not the root itself")
    return parts


def _open_entry(dir_fd, name, field, directory=False):
    """Open ``name`` inside ``dir_fd`` without following a symlink; ``(fd, stat)``."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise RolloutError(f"{field}: {name} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise RolloutError(f"{field}: {name} is a symlink (refused: a release is read from real files only)")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    if directory or stat.S_ISDIR(st.st_mode):
        flags |= os.O_DIRECTORY
    elif not stat.S_ISREG(st.st_mode):
        raise RolloutError(f"{field}: {name} is not a plain file or directory")
    else:
        flags |= getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in would otherwise block the open
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:  # ELOOP: swapped for a symlink after the lstat
        raise RolloutError(f"{field}: {name} cannot be opened without following links ({exc.strerror})") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise RolloutError(f"{field}: {name} changed while it was opened")
    if stat.S_ISREG(opened.st_mode) and opened.st_nlink != 1:
        # a hard link made in the workspace could name a file of the master the build user cannot read
        os.close(fd)
        raise RolloutError(f"{field}: {name} has {opened.st_nlink} hard links (copy the file, do not link it)")
    return fd, opened


def open_confined(source, root, field="source"):
    """
    Walk from ``root`` to ``source`` one component at a time (``lstat`` then
    ``O_NOFOLLOW``, each relative to the directory opened before), refusing a
    symlink anywhere below the root. Returns ``("file", {name: fd})`` or
    ``("dir", {name: fd, ...})`` for a flat directory of plain files; the
    caller closes the fds (:func:`close_all`).
    """
    parts = source_parts(source, root, field)
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise RolloutError(f"kiosk_release:source_root: cannot open {root} ({exc.strerror})") from None
    opened = {}
    try:
        for name in parts[:-1]:
            fd, _ = _open_entry(dir_fd, name, field, directory=True)
            os.close(dir_fd)
            dir_fd = fd
        fd, st = _open_entry(dir_fd, parts[-1], field)
        if stat.S_ISREG(st.st_mode):
            opened[fleet_release.check_file_name(parts[-1], field)] = fd
            return "file", opened
        os.close(dir_fd)
        dir_fd = fd
        entries = sorted(os.listdir(dir_fd))
        if not entries:
            raise RolloutError(f"{field}: {source} is an empty directory")
        for entry in entries:
            fleet_release.check_file_name(entry, f"{field}.{entry}")
            fd, st = _open_entry(dir_fd, entry, f"{field}.{entry}")
            opened[entry] = fd
            if not stat.S_ISREG(st.st_mode):
                raise RolloutError(f"{field}.{entry}: not a plain file (a release is a flat set of files)")
        return "dir", opened
    except BaseException:
        close_all(opened)
        raise
    finally:
        os.close(dir_fd)


def close_all(fds):
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass


def check_source_response(status, location, host, field="source"):
    """A URL source must answer 200 itself: redirects are refused, never followed (the target is not shown)."""
    if 300 <= status < 400:
        raise RolloutError(f"{field}: {host} answered a redirect (HTTP {status}); redirects are not followed")
    if status != 200:
        raise RolloutError(f"{field}: {host} answered HTTP {status}")


# --------------------------------------------------------------------------- events as hints


def claim_event_staging(state, name, version, campuses, published):
    """
    What a ``kiosk/release/published`` event may stage: only campuses that
    ``publish`` recorded as waiting (``state["to_stage"][name][campus] ==
    serial``), whose pin is still that version with that serial, of a
    version the store holds (``published``), named by the event (``campuses``;
    ``None``: all waiting ones). Claimed entries leave ``to_stage`` (at most
    once per release, campus and serial). Returns ``{campus: serial}``; an
    invented or replayed event gets ``{}`` and leaves ``state`` unchanged.
    """
    if not published:
        return {}
    waiting = state.get("to_stage", {}).get(name, {})
    pins = state.get("pins", {}).get(name, {})
    claimed = {}
    for campus, serial in sorted(waiting.items()):
        if campuses is not None and campus not in campuses:
            continue
        pin = pins.get(campus) or {}
        if pin.get("version") == version and pin.get("serial") == serial:
            claimed[campus] = serial
    for campus in claimed:
        del waiting[campus]
    if not waiting and name in state.get("to_stage", {}):
        del state["to_stage"][name]
    return claimed


def pin_live(pi_returns, version, serial):
    """
    Pis (``{pi: kiosk_pkg.repo_status return}``) on which the campus pin is
    live: the pin names ``version`` with ``serial`` and the version is staged.
    """
    live = []
    for pi, ret in sorted(pi_returns.items()):
        if not isinstance(ret, dict) or ret.get("result") is not True or ret.get("pin_verified") is False:
            continue
        pin = ret.get("pin") or {}
        if (isinstance(pin, dict) and pin.get("version") == version and pin.get("serial") == serial
                and version in (ret.get("staged") or [])):
            live.append(pi)
    return live


def push_decision(state, name, campus, version, now):
    """
    Whether to push ``version`` to ``campus`` now: ``(serial, None)`` to
    go on, ``(None, reason)`` to skip. Skips when the campus is not pinned to
    ``version``, when that pin serial was pushed (or deliberately held by
    ``pin``), or while another run is pushing it (``pushing``, until its
    deadline). Does not change ``state``.
    """
    pin = state.get("pins", {}).get(name, {}).get(campus)
    if not pin or pin.get("version") != version:
        return None, f"{campus} is pinned to {pin and pin.get('version')}, not {version}: nothing to push"
    serial = pin["serial"]
    if state.get("pushed", {}).get(name, {}).get(campus) == serial:
        return None, f"{name} {version} already pushed to {campus}"
    busy = state.get("pushing", {}).get(name, {}).get(campus)
    if isinstance(busy, dict) and busy.get("serial") == serial and busy.get("until", 0) > now:
        return None, f"{name} {version} is being pushed to {campus} by another run"
    return serial, None


def claim_push(state, name, campus, serial, until):
    state.setdefault("pushing", {}).setdefault(name, {})[campus] = {"serial": serial, "until": until}


def end_push(state, name, campus, serial, succeeded):
    """Release the claim; only a push that succeeded marks the campus pushed (a failed one is retried)."""
    pushing = state.get("pushing", {}).get(name, {})
    if (pushing.get(campus) or {}).get("serial") == serial:
        del pushing[campus]
        if not pushing:
            del state["pushing"][name]
        if not state["pushing"]:
            del state["pushing"]
    if succeeded:
        pin = state.get("pins", {}).get(name, {}).get(campus) or {}
        if pin.get("serial") == serial:  # a newer pin since: its own push is still due
            state.setdefault("pushed", {}).setdefault(name, {})[campus] = serial


def push_succeeded(kiosks, silent):
    """A push succeeded when no kiosk that answered failed (silent kiosks follow the pin at boot)."""
    return all(v is True or v == silent for v in kiosks.values())


# --------------------------------------------------------------------------- rollout rings


def served_by_ip(pi_returns, name, version):
    """
    ``{client ip: set of statuses}`` of the ``GET``s of ``name`` ``version``
    files that the Pis' nginx logs show (``kiosk_pkg.served`` returns).
    """
    seen = {}
    for ret in pi_returns.values():
        if not isinstance(ret, dict) or ret.get("result") is not True:
            continue
        if ret.get("name") != name or str(ret.get("version")) != version:
            continue
        for ip, statuses in (ret.get("clients") or {}).items():
            if isinstance(ip, str) and isinstance(statuses, list):
                seen.setdefault(ip, set()).update(s for s in statuses if isinstance(s, int))
    return seen


def confirm_ring(kiosk_results, kiosk_ips, served, silent):
    """
    Count a kiosk of a ring as installed only when its own return says so
    AND a Pi's access log shows its inventory address fetched the version's
    files (200 or 206). A return alone can be forged by another minion behind
    the same syndic; the Pi's log of a download cannot be written by a kiosk.
    Returns ``{kiosk: True | silent | reason}``.
    """
    confirmed = {}
    for kiosk, result in kiosk_results.items():
        if result is not True:
            confirmed[kiosk] = result
            continue
        ip = kiosk_ips.get(kiosk)
        if ip and served.get(ip, set()) & {200, 206}:
            confirmed[kiosk] = True
        else:
            confirmed[kiosk] = (f"its return says installed, but no Pi of the campus served the files to "
                                f"{ip or 'its address'}")
    return confirmed


def campus_of_pi(inventory, pi):
    """The campus of a Pi of the inventory; a kiosk id or an unknown name is refused (naming ``pi``)."""
    if not isinstance(pi, str):
        raise RolloutError(f"pi: expected a Pi id, got {type(pi).__name__}")
    for campus, spec in sorted(inventory["campuses"].items()):
        if pi in spec["pis"]:
            return campus
    raise RolloutError(f"pi: {pi!r} is not a Pi of the inventory")


def served_from_log(lines, name, version, prefix=fleet_release.REPO_PREFIX, limit=100000):
    """
    What a Pi's nginx access log (the shipped ``kiosk_release_repo`` JSON
    format, one object per line) says about ``name`` ``version``: ``{client
    address: sorted statuses}`` of the ``GET``s of files under
    ``<prefix><name>/<version>/`` (the manifest and ``index.json`` left out).
    Unparsable lines are skipped; at most ``limit`` matching requests count.
    Meant for a Pi-side ``kiosk_pkg.served``: the log is written by nginx, not
    by the kiosk, so a kiosk cannot claim a download it did not make.
    """
    fleet_release.check_name(name)
    version = fleet_release.check_version(version)
    base = f"{prefix}{name}/{version}/"
    seen, count = {}, 0
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("method") != "GET":
            continue
        uri, addr, status = entry.get("uri"), entry.get("remote_addr"), entry.get("status")
        if not isinstance(uri, str) or not isinstance(addr, str) or not isinstance(status, int):
            continue
        rest = uri[len(base):] if uri.startswith(base) else None
        if not rest or "/" in rest or "?" in rest or rest == fleet_release.MANIFEST:
            continue
        seen.setdefault(addr, set()).add(status)
        count += 1
        if count >= limit:
            break
    return {addr: sorted(statuses) for addr, statuses in sorted(seen.items())}
