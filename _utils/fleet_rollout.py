"""
Release policy of the top master's runner (``_runners/kiosk_release.py``),
kept pure so it can be tested without Salt: where a published package may
come from, how a campus pin moves, which events may start work, when a
campus counts as pushed, how a rollout visits its rings and when a kiosk of
a ring counts as installed, what a rollback goes back to, where a campus
stands (``status``) and which Pis stage a release from where.

Events on the master's bus are hints: a kiosk can put any tag with any data
(``id`` included) on its Pi master's bus and the syndic forwards it. So the
decisions below read the runner's own state (pins, serials, what is waiting
to be staged) and what the Pis report, never the event's word.
"""

import datetime as _dt
import json
import os
import stat

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_inventory, fleet_release, fleet_sign
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_inventory
    import fleet_release
    import fleet_sign


class RolloutError(fleet_release.ReleaseError):
    """A refused request or source; the message names the field."""


SILENT = "silent"  # a kiosk that did not answer a push: not counted against a ring
PIN_HISTORY = 20  # earlier versions a pin remembers (what rollback can go back to)


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
    if any(ord(c) < 32 or c == "\x7f" or 0xD800 <= ord(c) <= 0xDFFF for c in source):
        raise RolloutError(f"{field}: holds control characters or unpaired surrogates")
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


def push_succeeded(kiosks, silent=SILENT):
    """A push succeeded when no kiosk that answered failed (silent kiosks follow the pin at boot)."""
    return not failed_kiosks(kiosks, silent)


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


# --------------------------------------------------------------------------- minion answers


def answer_ok(ret):
    """A module's return that says it worked (``{"result": True, ...}``)."""
    return isinstance(ret, dict) and ret.get("result") is True


def answer_error(ret):
    """Why a return is not a success, in a few words (None: the minion did not answer)."""
    if ret is None:
        return "did not answer"
    if isinstance(ret, dict):
        return str(ret.get("error") or ret.get("comment") or "failed")[:300]
    return str(ret)[:300]


# --------------------------------------------------------------------------- campus pins


def _iso(now):
    return _dt.datetime.fromtimestamp(int(now), _dt.timezone.utc).isoformat()


def pin_of(state, name, campus):
    """The campus pin of ``name`` in the runner's state (``{version, serial, history, at, signed}``) or None."""
    pin = state.get("pins", {}).get(name, {}).get(campus)
    return pin if isinstance(pin, dict) else None


def set_pin(state, name, campus, version, key_pem, now):
    """
    Move the pin of ``campus`` to ``version`` (None freezes the campus) in
    ``state``, signed with ``key_pem`` (what the Pis store and the kiosks
    verify); returns the new entry. The serial grows on every change and
    follows the clock (``max(previous + 1, now)``): a master whose state was
    wiped never issues serials below what the Pis hold (they refuse older
    ones), and kiosks refuse a serial more than a day ahead of its signing
    time. A new pin is due to be pushed (its ``pushed`` mark goes).
    """
    current = pin_of(state, name, campus) or {"version": None, "serial": 0, "history": []}
    history = list(current.get("history") or [])
    if current.get("version") is not None and current["version"] != version:
        history.append(current["version"])
    serial = max(int(current.get("serial") or 0) + 1, int(now))
    signed = fleet_sign.sign_pin(name, campus, version, serial, key_pem, signed_at=int(now))
    pin = {"version": version, "serial": serial, "history": history[-PIN_HISTORY:], "at": _iso(now), "signed": signed}
    state.setdefault("pins", {}).setdefault(name, {})[campus] = pin
    state.setdefault("pushed", {}).setdefault(name, {}).pop(campus, None)
    return pin


def set_pins(state, name, campuses, version, key_pem, now):
    """:func:`set_pin` for each of ``campuses``: ``{campus: new pin}``."""
    return {c: set_pin(state, name, c, version, key_pem, now) for c in campuses}


def pin_doc(name, campus, pin, key):
    """
    The signed pin of a state entry. An entry saved before pins were signed
    is signed now with the same serial; ``key`` is the private PEM or a
    function returning it (read only then).
    """
    signed = pin.get("signed")
    if isinstance(signed, dict) and signed.get("serial") == pin["serial"] and signed.get("version") == pin["version"]:
        return signed
    return fleet_sign.sign_pin(name, campus, pin["version"], pin["serial"], key() if callable(key) else key)


def signed_pins(state, name, version, serials, key):
    """
    ``({campus: signed pin}, {campus: why not})`` for the campuses of
    ``serials`` (``{campus: serial}``, what the caller decided on) whose pin
    still has that serial and names ``version``: the Pis get it with
    ``kiosk_pkg.stage`` and store it only after verifying it. A pin that moved
    on meanwhile is left out (those Pis stage without pinning).
    """
    pins, errors = {}, {}
    for campus, serial in sorted(serials.items()):
        pin = pin_of(state, name, campus)
        if not pin or pin.get("serial") != serial or pin.get("version") != version:
            continue
        try:
            pins[campus] = pin_doc(name, campus, pin, key)
        except ValueError as exc:
            errors[campus] = str(exc)
    return pins, errors


def pinned_serials(state, name, version, campuses):
    """``{campus: serial}`` of the ``campuses`` pinned to ``version``."""
    pins = {c: pin_of(state, name, c) for c in campuses}
    return {c: p["serial"] for c, p in pins.items() if p and p.get("version") == version}


def hold_push(state, name, campus, serial):
    """``pin`` moves a campus without a push: its serial counts as pushed, so the staged reactor leaves it alone."""
    state.setdefault("pushed", {}).setdefault(name, {})[campus] = serial


def wait_for_staging(state, name, campus, serial):
    """``publish campuses=``: the campus waits to be staged under this pin serial (see :func:`claim_event_staging`)."""
    state.setdefault("to_stage", {}).setdefault(name, {})[campus] = serial


# --------------------------------------------------------------------------- rebuilding pins from the Pis


def _shown_pin(pin):
    return {"version": pin.get("version"), "serial": pin.get("serial")}


def pis_pin(name, campus, pis, pi_returns, keys):
    """
    What the Pis of ``campus`` hold as its pin (``pi_returns``: ``{pi:
    kiosk_pkg.repo_status return}``, a silent Pi left out), each pin checked
    here with ``keys`` for this campus (:func:`fleet_sign.verify_pin`; the
    Pi's own ``pin_verified`` is not believed: a return can be forged behind
    a syndic). The campus pin is the valid one with the highest serial.

    Returns ``{"pin": signed pin or None, "from": [Pis holding it], "behind":
    {pi: {version, serial} or None (no pin)}, "refused": {pi: {"error",
    "version"}}, "failed": {pi: reason}, "silent": [pi], "staged": versions
    the answering Pis list (their word), "conflict": None or why}``. Two
    different valid pins with the same top serial are a conflict: no pin is
    chosen.
    """
    out = {"pin": None, "from": [], "behind": {}, "refused": {}, "failed": {}, "silent": [], "staged": [],
           "conflict": None}
    valid, staged = {}, set()
    for pi in pis:
        if pi not in pi_returns:
            out["silent"].append(pi)
            continue
        ret = pi_returns[pi]
        if not answer_ok(ret):
            out["failed"][pi] = answer_error(ret)
            continue
        staged.update(v for v in (ret.get("staged") if isinstance(ret.get("staged"), list) else [])
                      if isinstance(v, str) and fleet_release.VERSION.match(v))
        pin = ret.get("pin")
        if pin is None:
            valid[pi] = None
            continue
        try:
            valid[pi] = fleet_sign.verify_pin(pin, keys, name, campus, f"{pi}.pin")
            error = None
        except fleet_release.ReleaseError as exc:
            error = str(exc)
        except TypeError:  # keys JSON cannot sort: a minion return need not be JSON
            error = f"{pi}.pin: not a signed JSON document"
        if error is not None:
            version = pin.get("version") if isinstance(pin, dict) else None
            shown = version if isinstance(version, str) and fleet_release.VERSION.match(version) else None
            out["refused"][pi] = {"error": error, "version": shown}
    out["staged"] = fleet_release.sort_versions(staged)
    pins = [p for p in valid.values() if p is not None]
    if pins:
        top = max(p["serial"] for p in pins)
        best = [p for p in pins if p["serial"] == top]
        holders = sorted(pi for pi, p in valid.items() if p is not None and p["serial"] == top)
        if any(p != best[0] for p in best):
            out["conflict"] = (f"{campus}: {', '.join(holders)} hold different pins signed with serial {top}: "
                               f"{', '.join(sorted({str(p['version']) for p in best}))}")
        else:
            out["pin"], out["from"] = best[0], holders
    out["behind"] = {pi: (_shown_pin(p) if p is not None else None) for pi, p in sorted(valid.items())
                     if pi not in out["from"]}
    return out


def rebuild_pin(state, name, campus, found, now):
    """
    Put the campus pin the Pis hold (``found``, from :func:`pis_pin`) into
    ``state`` when it is newer than the state's (a standby's empty or older
    copy): the signed pin as it was signed, ``at`` its signing time, a
    history made of the state's entry (its history and version) or, with no
    entry, of the versions the Pis staged below the pin. A rebuilt pin
    counts as pushed (:func:`hold_push`): the master that set it may have
    pushed it or held it (``pin``), and a standby must not start installs
    the operator did not order; kiosks follow it at their next boot.
    Returns ``(action, entry)``: ``rebuilt`` (no entry before), ``updated``
    (an older one), ``kept`` (the state's is as new or newer), ``none`` (no
    Pi holds a pin), ``unanswered`` (no Pi gave a usable answer),
    ``conflict`` (:func:`pis_pin`'s, or the state holds another pin with the
    same serial); ``state`` changes only for the first two.
    """
    current = pin_of(state, name, campus)
    pin = found["pin"]
    if found["conflict"]:
        return "conflict", current
    if pin is None:
        if current:
            return "kept", current
        answered = found["from"] or found["behind"]
        return ("none" if answered else "unanswered"), None
    if current and int(current.get("serial") or 0) >= pin["serial"]:
        signed = current.get("signed")
        same = isinstance(signed, dict) and signed == pin
        if current.get("serial") == pin["serial"] and isinstance(signed, dict) and not same:
            return "conflict", current
        return "kept", current
    if current:
        history = [*(current.get("history") or []), current.get("version")]
    else:
        wanted = fleet_release.parse_version(pin["version"]) if pin["version"] is not None else None
        history = [v for v in found["staged"] if wanted is None or fleet_release.parse_version(v) < wanted]
    history = [v for v in history if isinstance(v, str) and v != pin["version"]]
    entry = {"version": pin["version"], "serial": pin["serial"], "history": history[-PIN_HISTORY:],
             "at": _iso(pin["signed_at"]), "signed": pin, "rebuilt_at": _iso(now)}
    state.setdefault("pins", {}).setdefault(name, {})[campus] = entry
    hold_push(state, name, campus, pin["serial"])
    for key in ("to_stage", "pushing"):  # claims and waits of older serials: never acted on again
        per = state.get(key, {}).get(name, {})
        per.pop(campus, None)
        if not per and name in state.get(key, {}):
            del state[key][name]
        if key in state and not state[key]:
            del state[key]
    return ("updated" if current else "rebuilt"), entry


def missing_from_store(pins, published):
    """``{version: [campus]}`` of the pinned versions (``{campus: version or None}``) the store does not hold."""
    missing = {}
    for campus, version in sorted(pins.items()):
        if version is not None and version not in published:
            missing.setdefault(version, []).append(campus)
    return missing


def rebuild_report(state, name, found, published, now):
    """
    :func:`rebuild_pin` for every campus of ``found`` (``{campus: pis_pin
    result}``) into ``state``, and what ``kiosk_release.rebuild`` reports:
    ``(campuses, missing, problems)``. ``campuses`` is ``{campus: {action,
    pin, serial, signed_at, from, behind, refused, failed, silent}}``,
    ``missing`` :func:`missing_from_store` of the resulting pins against
    ``published`` (the store's versions); ``problems`` what makes the run
    fail: refused pins (forged, unsigned, another campus's), conflicts,
    campuses no Pi answered, pinned versions the store lacks.
    """
    campuses, problems = {}, []
    for campus, seen in sorted(found.items()):
        action, entry = rebuild_pin(state, name, campus, seen, now)
        campuses[campus] = {
            "action": action,
            "pin": entry["version"] if entry else None,
            "serial": entry["serial"] if entry else None,
            "signed_at": ((entry.get("signed") or {}).get("signed_at") if entry else None),
            **{k: seen[k] for k in ("from", "behind", "refused", "failed", "silent")},
        }
        for pi, why in sorted(seen["refused"].items()):
            problems.append(f"{campus}: the pin on {pi} is refused: {why['error']}")
        if action == "conflict":
            problems.append(seen["conflict"] or f"{campus}: the Pis' pin and the state's share serial "
                                                 f"{entry['serial']} but differ")
        if action == "unanswered":
            problems.append(f"{campus}: no Pi gave a usable answer")
    missing = missing_from_store({c: e["pin"] for c, e in campuses.items()}, published)
    for version, where in missing.items():
        problems.append(f"{name} {version} (pinned on {', '.join(where)}) is not in this master's store: "
                        f"copy the store from the old master or its backup")
    return campuses, missing, problems


# --------------------------------------------------------------------------- rollback


def rollback_plan(name, campus, pin, manifests, published):
    """
    What ``rollback`` republishes for ``campus``: ``(previous, version)``.
    ``previous`` is the newest version of the pin's history whose files
    differ from those of the pinned version; when the pinned version is
    itself a rollback to X, only versions up to X count (a second rollback
    goes further back, never to the release it rolled back from).
    ``version`` is the next version above every ``published`` one (kiosks
    only ever move up). ``manifests`` holds ``{version: manifest}`` of the
    versions the store still has; the others are skipped.
    """
    if not pin or pin.get("version") is None:
        raise RolloutError(f"campus: {campus} is not pinned to a {name} version (frozen or never rolled out)")
    current = pin["version"]
    now = manifests.get(current)
    if now is None:
        raise RolloutError(f"version: {name} {current}, the pin of {campus}, is not published")
    limit = fleet_release.parse_version(now["rollback_of"]) if now.get("rollback_of") else None
    history = pin.get("history") or []
    for version in reversed(history):
        if not isinstance(version, str) or not fleet_release.VERSION.match(version):
            continue
        if limit is not None and fleet_release.parse_version(version) > limit:
            continue
        old = manifests.get(version)
        if old is not None and old["files"] != now["files"]:
            return version, fleet_release.next_version(published)
    raise RolloutError(f"campus: no earlier {name} content to go back to from {current} (history: {history})")


# --------------------------------------------------------------------------- staging on the Pis


def stage_rounds(pis_by_campus):
    """
    The order in which the Pis of some campuses stage a release, as rounds
    of jobs (a generator): it yields ``(hop, {campus: [pi, ...]})`` and is
    sent ``{pi: return of kiosk_pkg.stage}`` (a silent Pi left out) for each.
    First, in each round, one not yet tried Pi of every campus still without
    a seed fetches from the master (``master->pi``: the WAN copy, once per
    campus when it works); then all the other Pis of a campus with a seed
    copy from it (``pi->pi``, LAN); those that could not fall back to the
    master. Returns (``StopIteration.value``) the report: ``{campus: {seed,
    pis: {pi: {staged, source[, error]}}, wan_bytes, staged_on, complete}}``.
    """
    report = {c: {"seed": None, "pis": {}, "wan_bytes": 0} for c in pis_by_campus}
    untried = {c: list(pis) for c, pis in pis_by_campus.items()}

    def record(wave, hop, returns):
        for campus, pis in wave.items():
            for pi in pis:
                ret = returns.get(pi)
                ok = answer_ok(ret)
                report[campus]["pis"][pi] = {"staged": ok, "source": hop, **({} if ok else {"error": answer_error(ret)})}
                fetched = ret.get("fetched") if ok else 0
                if hop == "master->pi" and isinstance(fetched, int) and not isinstance(fetched, bool) and fetched > 0:
                    report[campus]["wan_bytes"] += fetched

    while True:
        wave = {c: [untried[c].pop(0)] for c in report if report[c]["seed"] is None and untried[c]}
        if not wave:
            break
        record(wave, "master->pi", (yield "master->pi", wave))
        for campus, (pi,) in wave.items():
            if report[campus]["pis"][pi]["staged"]:
                report[campus]["seed"] = pi
    # every Pi still without it (never tried, or failed as a seed) copies from the campus over the LAN
    peers = {c: [p for p in pis_by_campus[c] if not report[c]["pis"].get(p, {}).get("staged")]
             for c in report if report[c]["seed"]}
    peers = {c: pis for c, pis in peers.items() if pis}
    if peers:
        record(peers, "pi->pi", (yield "pi->pi", peers))
    retry = {c: [p for p in pis if not report[c]["pis"][p]["staged"]] for c, pis in peers.items()}
    retry = {c: pis for c, pis in retry.items() if pis}
    if retry:
        record(retry, "master->pi", (yield "master->pi", retry))
    for entry in report.values():
        entry["staged_on"] = sorted(p for p, r in entry["pis"].items() if r["staged"])
        entry["complete"] = len(entry["staged_on"]) == len(entry["pis"])
    return report


def stage_jobs(wave, pins, rates=None):
    """
    The jobs of one staging round ``{campus: [pi, ...]}``: ``[(pis, signed
    pin or None, rate or None)]``, one job per distinct pin (a signed pin
    names its campus; ``pins`` is ``{campus: signed pin}``) and rate
    (``rates``: ``{campus: bytes/s or None}`` for this round's hop), the
    campuses without a pin and with the same rate together.
    """
    rates = rates or {}
    jobs = {}
    for campus, pis in sorted(wave.items()):
        rate = rates.get(campus)
        jobs.setdefault((campus if campus in pins else None, rate), (pins.get(campus), rate, []))[2].extend(pis)
    return [(pis, pin, rate) for pin, rate, pis in jobs.values()]


def hop_rates(hop, wan, lan):
    """
    ``{campus: bytes/s or None}`` for one staging round: the campuses' WAN
    caps (``wan``, ``fleet_rate.campus_rates``) for ``master->pi``, the LAN
    cap ``lan`` for every campus on ``pi->pi``.
    """
    if hop == "master->pi":
        return dict(wan)
    return dict.fromkeys(wan, lan)


def stage_rates(report, wan, lan):
    """Name the caps used in a staging ``report``: each campus gets ``rate: {"wan", "lan"}`` (bytes/s, None: none)."""
    for campus, entry in report.items():
        entry["rate"] = {"wan": wan.get(campus), "lan": lan}
    return report


def check_prune(value, field="kiosk_release:prune"):
    """Whether the runner prunes the Pis after a successful push: True (default, ``None``) or False."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise RolloutError(f"{field}: {fleet_fields.shown(value)} is not true or false")
    return value


def prune_results(pis, returns):
    """
    ``{pi: {"removed": [...], "kept": [...]} | {"error": why}}`` from the
    ``kiosk_pkg.prune`` returns of a campus's Pis (a silent Pi: ``did not
    answer``). A failure is reported here, never turned into a failed push.
    """
    out = {}
    for pi in sorted(pis):
        ret = returns.get(pi)
        if answer_ok(ret) and isinstance(ret.get("removed"), list):
            out[pi] = {"removed": [str(v) for v in ret["removed"]], "kept": [str(v) for v in ret.get("kept") or []]}
        else:
            out[pi] = {"error": answer_error(ret)}
    return out


def unstaged(report):
    """The campuses of a staging report that ended with no Pi holding the release."""
    return sorted(c for c, entry in report.items() if not entry["seed"])


# --------------------------------------------------------------------------- pushes to kiosks


def push_results(kiosks, returns, name, version):
    """
    ``{campus: {kiosk: True | SILENT | reason}}`` from the ``check_update``
    returns (``{kiosk: return}``) of the kiosks ``{campus: [kiosk, ...]}``: a
    kiosk is on ``version`` when its return for ``name`` says so; one that did
    not answer (off at night, a power cut) is :data:`SILENT`: it follows the
    pin at its next boot.
    """
    result = {}
    for campus, members in kiosks.items():
        result[campus] = {}
        for kiosk in sorted(members):
            if kiosk not in returns:
                result[campus][kiosk] = SILENT
                continue
            ret = returns[kiosk]
            per = ret.get("releases") if isinstance(ret, dict) else None
            one = per.get(name) if isinstance(per, dict) else None
            on_version = answer_ok(one) and (one.get("version") or one.get("installed")) == version
            result[campus][kiosk] = True if on_version else answer_error(one if one else ret)
    return result


def failed_kiosks(kiosks, silent=SILENT):
    """The kiosks of ``{kiosk: True | silent | reason}`` that answered and are not on the version."""
    return {k: v for k, v in kiosks.items() if v is not True and v != silent}


# --------------------------------------------------------------------------- rollout rings


def plan_rings(campuses, canary=None, rings=None):
    """
    The order a rollout visits campuses: ``rings`` (list of lists, or
    ``"east;west,north"``) as given, or the ``canary`` campus alone and then
    the rest, or every campus in one ring.
    """
    campuses = list(campuses)
    if not campuses:
        raise RolloutError("campuses: no campus to roll out to")
    if rings is not None and canary is not None:
        raise RolloutError("rings/canary: give one or the other")
    if rings is not None:
        if isinstance(rings, str):
            rings = [[c.strip() for c in ring.split(",") if c.strip()] for ring in rings.split(";")]
        if not isinstance(rings, list) or not all(isinstance(r, list) and r for r in rings):
            raise RolloutError(f"rings: expected campus lists like 'east;west,north', got {fleet_fields.shown(rings)}")
        flat = [c for ring in rings for c in ring]
        unknown = [c for c in flat if c not in campuses]
        if unknown:
            raise RolloutError(f"rings: unknown campus {', '.join(map(str, unknown))}")
        dup = sorted({c for c in flat if flat.count(c) > 1})
        if dup:
            raise RolloutError(f"rings: campus {', '.join(dup)} appears twice")
        return rings
    if canary is not None:
        if canary not in campuses:
            raise RolloutError(f"canary: {fleet_fields.shown(canary)} is not one of {', '.join(campuses)}")
        rest = [c for c in campuses if c != canary]
        return [[canary]] + ([rest] if rest else [])
    return [campuses]


def check_share(value, field="max_error_share"):
    """A share of kiosks, 0 to 1 (``max_error_share``); a string from the CLI is read as a number."""
    try:
        share = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RolloutError(f"{field}: {fleet_fields.shown(value)} is not a number") from None
    if isinstance(value, bool) or not 0.0 <= share <= 1.0:
        raise RolloutError(f"{field}: {fleet_fields.shown(value)} is outside 0-1")
    return share


def ring_verdict(kiosk_results, max_error_share):
    """
    ``kiosk_results`` is ``{kiosk: True (on the version) | False}``. Returns
    ``(go_on, error_share)``: the rollout halts when the share of kiosks not
    on the version passes ``max_error_share``.
    """
    if not kiosk_results:
        return True, 0.0
    failed = sum(1 for ok in kiosk_results.values() if not ok)
    share = failed / len(kiosk_results)
    return share <= max_error_share, round(share, 4)


def ring_outcome(ring, version, staging, kiosks, campus_kiosks, threshold):
    """
    The report of one rollout ring and whether the rollout goes on.
    ``staging`` is the staging report of the ring's campuses, ``kiosks``
    ``{campus: {kiosk: True | SILENT | reason}}`` of the campuses pushed
    (confirmed), ``campus_kiosks`` ``{campus: [kiosk, ...]}``: every kiosk of
    a campus that no Pi staged counts as failed; silent kiosks are left out
    of the share.
    """
    kiosks = dict(kiosks)
    for campus in ring:
        if not staging[campus]["seed"]:
            kiosks[campus] = dict.fromkeys(campus_kiosks[campus], f"{campus}: no Pi staged {version}")
    flat = {k: v is True for per in kiosks.values() for k, v in per.items() if v != SILENT}
    go_on, share = ring_verdict(flat, threshold)
    entry = {"campuses": ring, "staging": staging, "kiosks": kiosks, "error_share": share, "go_on": go_on}
    if not go_on:
        entry["error"] = (f"halted after ring {', '.join(ring)}: {share:.0%} of its kiosks are not on {version} "
                          f"(limit {threshold:.0%})")
    return entry


# --------------------------------------------------------------------------- status


def drift(pin, installed):
    """Kiosks whose installed version is not the campus pin: ``{kiosk: installed or None}``."""
    if pin is None:
        return {}
    want = fleet_release.parse_version(pin)
    return {k: v for k, v in sorted(installed.items())
            if v is None or not fleet_release.VERSION.match(str(v)) or fleet_release.parse_version(v) != want}


def _version_key(version):
    # versions a kiosk reports are its word: one that is no version sorts last, never raises
    if isinstance(version, str) and fleet_release.VERSION.match(version):
        return (0, fleet_release.parse_version(version), "")
    return (1, (), str(version))


def campus_status(campus, pin, pis, pi_returns, kiosks, kiosk_returns):
    """
    Where one campus stands: ``(entry, problems, on_pin, silent)`` from the
    Pis' ``kiosk_pkg.repo_status`` and the kiosks' ``kiosk_pkg.installed``
    returns (``{minion: return}``, a silent minion left out). ``entry`` is
    what ``status`` reports for the campus; ``problems`` the drift found
    (kiosks off the pin, kiosks on different versions, Pis without the pinned
    version); ``on_pin`` ``{kiosk: bool}`` of the kiosks that answered (None
    for a campus with no pin); ``silent`` the kiosks that did not answer.
    """
    want = pin["version"] if pin else None
    entry = {"pin": want, "serial": pin["serial"] if pin else None, "pis": {}, "kiosks": {}}
    for pi in pis:
        ret = pi_returns.get(pi)
        if answer_ok(ret):
            staged = ret.get("staged") if isinstance(ret.get("staged"), list) else []
            pinned = ret.get("pin") if isinstance(ret.get("pin"), dict) else {}
            entry["pis"][pi] = {"staged": staged, "pin": pinned.get("version")}
        else:
            entry["pis"][pi] = {"error": answer_error(ret)}
    installed, silent = {}, []
    for kiosk in sorted(kiosks):
        if kiosk not in kiosk_returns:
            entry["kiosks"][kiosk] = {"silent": True}
            silent.append(kiosk)
            continue
        rec = kiosk_returns[kiosk] if isinstance(kiosk_returns[kiosk], dict) else {}
        version = rec.get("version") if isinstance(rec.get("version"), str) else None
        installed[kiosk] = version
        entry["kiosks"][kiosk] = {"installed": version, "previous": rec.get("previous")}
    entry["drift"] = drift(want, installed)
    entry["versions_running"] = sorted({v for v in installed.values() if v}, key=_version_key)
    entry["pis_without_pin"] = sorted(p for p, r in entry["pis"].items() if want and want not in r.get("staged", []))
    problems = []
    if entry["drift"]:
        problems.append(f"{campus}: {len(entry['drift'])} kiosk(s) not on {want}")
    if len(entry["versions_running"]) > 1:
        problems.append(f"{campus}: kiosks run {', '.join(entry['versions_running'])}")
    if entry["pis_without_pin"]:
        problems.append(f"{campus}: {', '.join(entry['pis_without_pin'])} lack {want}")
    # an unpinned campus has no kiosk on (or off) its pin
    on_pin = {k: k not in entry["drift"] for k in installed} if want is not None else None
    return entry, problems, on_pin, silent


def status_report(name, state, pis, kiosks, pi_returns, kiosk_returns):
    """
    :func:`campus_status` of every campus of ``pis`` (``{campus: [pi]}``;
    ``kiosks`` likewise): ``(campuses, problems, on_pin, silent)``, the last
    two ``{campus: ...}`` for :func:`kiosk_counts` (campuses without a pin
    are left out of ``on_pin``).
    """
    campuses, problems, on_pin, silent = {}, [], {}, {}
    for campus in pis:
        entry, found, on, quiet = campus_status(campus, pin_of(state, name, campus), pis[campus], pi_returns,
                                                kiosks[campus], kiosk_returns)
        campuses[campus] = entry
        problems.extend(found)
        silent[campus] = quiet
        if on is not None:
            on_pin[campus] = on
    return campuses, problems, on_pin, silent


def select_campuses(inventory, campuses, field="campuses"):
    """The campuses named (one name, ``a,b`` or a list; none: every campus), each of the inventory."""
    known = inventory["campuses"]
    names = fleet_inventory.names(campuses, field) or sorted(known)
    unknown = [c for c in names if c not in known]
    if unknown:
        raise RolloutError(f"{field}: unknown campus {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return names


# --------------------------------------------------------------------------- metrics


def kiosk_counts(kiosks_by_campus, silent=None):
    """``{campus: {on_pin, drift, silent}}`` from ``{campus: {kiosk: True | SILENT | reason or False}}``."""
    counts = {}
    for campus, kiosks in kiosks_by_campus.items():
        on = sum(1 for v in kiosks.values() if v is True)
        off = sum(1 for v in kiosks.values() if v == SILENT)
        counts[campus] = {"on_pin": on, "drift": len(kiosks) - on - off,
                          "silent": len((silent or {}).get(campus, [])) + off}
    return counts


def metric_families(state):
    """The families of ``kiosk_release.prom`` (``fleet_metrics.render``) from the runner's state."""
    pins, m = state.get("pins", {}), state.get("metrics", {})
    return [
        ("kiosk_release_pin_serial", "gauge", "Serial of the campus pin (grows on every pin change).",
         [({"name": n, "campus": c, "version": p["version"] or "frozen"}, p["serial"])
          for n, per in sorted(pins.items()) for c, p in sorted(per.items())]),
        ("kiosk_release_published_bytes", "gauge", "Size of the newest published version.",
         [({"name": n, "version": v["version"]}, v["bytes"]) for n, v in sorted(m.get("published", {}).items())]),
        ("kiosk_release_stage_wan_bytes", "gauge", "Bytes the last staging took from the master, per campus.",
         [({"name": n, "campus": c}, b) for n, per in sorted(m.get("wan", {}).items()) for c, b in sorted(per.items())]),
        ("kiosk_release_kiosks", "gauge", "Kiosks per campus on the pin, drifting or silent (last status/rollout).",
         [({"name": n, "campus": c, "state": s}, k) for n, per in sorted(m.get("kiosks", {}).items())
          for c, states in sorted(per.items()) for s, k in sorted(states.items())]),
        ("kiosk_release_last_run_success", "gauge", "1 when the last run of the action succeeded.",
         [({"action": a}, ok) for a, ok in sorted(m.get("runs", {}).items())]),
    ]
