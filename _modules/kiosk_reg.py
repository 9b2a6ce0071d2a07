"""
Registry edits on a kiosk, typed and idempotent, with snapshots and rollback.

Backends (``kiosk_reg.backend`` says which one loaded):

- **windows**: Salt's own ``reg`` module (``reg.read_value``, ``reg.set_value``,
  ``reg.list_values``, ``reg.delete_value``, ``reg.delete_key_recursive``,
  ``reg.import_file``); ``reg.exe export/load/unload`` as argument lists for
  what Salt's module lacks (snapshots, unloaded user hives).
- **wine** (Linux, labs and tests): Wine's real registry through its
  ``reg.exe`` (``C:\\windows\\system32\\reg.exe add/delete/export/import/query``
  started directly, not through ``wine reg``/``start.exe``), argument lists
  only, always ``/f``, stdin closed, a persistent ``wineserver -p`` per prefix,
  every Wine process started with address-space randomisation off
  (``setarch <machine> -R``, see :func:`fleet_reg.wine_argv` for why).
  Values are read back with ``reg export`` (exact for every type; ``reg query``
  output is lossy). Minion config::

      kiosk_reg:
        wineprefix: /var/lib/kiosk-reg/wine   # default: <cachedir>/kiosk_reg/wineprefix (created on first use)
        wine: wine                            # binaries, default from PATH
        wineserver: wineserver
        setarch: setarch                      # util-linux
        timeout: 60                           # seconds per reg.exe call
        snapshot_dir: /var/cache/salt/minion/kiosk_reg/snapshots   # default

Per-user hives: the minion runs as SYSTEM, so ``HKCU`` is SYSTEM's own hive.
``user=<name>`` redirects an ``HKCU\\...`` key to ``HKU\\<SID>\\...`` (SID from
the ProfileList); on Windows a user whose hive is not loaded gets its
``NTUSER.DAT`` loaded (``reg load``) for the call and unloaded after;
``user=Default`` is the default profile (``C:\\Users\\Default\\NTUSER.DAT``,
the template of new users). Wine has one user (the unix user running it,
SID S-1-5-21-0-0-0-1000, whose hive is always loaded) and no default profile.
"""

import contextlib
import datetime
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_reg
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_reg

import salt.utils.platform
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_reg"

PROFILE_LIST = "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList"
DEFAULT_PROFILE = "Default"


def _conf():
    conf = __opts__.get("kiosk_reg") or {}
    if not isinstance(conf, dict):
        raise CommandExecutionError(f"kiosk_reg: minion config must be a mapping, got {conf!r}")
    return conf


def __virtual__():
    if salt.utils.platform.is_windows():
        log.debug("kiosk_reg: Windows backend (Salt's reg module)")
        return __virtualname__
    conf = _conf() if isinstance(__opts__.get("kiosk_reg") or {}, dict) else {}
    wine = shutil.which(conf.get("wine", "wine"))
    server = shutil.which(conf.get("wineserver", "wineserver"))
    setarch = shutil.which(conf.get("setarch", "setarch"))
    if wine and server and setarch:
        log.debug("kiosk_reg: Wine backend (%s, %s)", wine, server)
        return __virtualname__
    if wine and server:
        return (False, f"kiosk_reg: the Wine backend needs {conf.get('setarch', 'setarch')!r} (util-linux) "
                       "on PATH to start Wine processes without address-space randomisation")
    return (False, "kiosk_reg: not Windows, and Wine is not installed for the Linux backend "
                   f"(no {conf.get('wine', 'wine')!r}/{conf.get('wineserver', 'wineserver')!r} on PATH; "
                   "apt-get install wine64 wine)")


def _bad(exc):
    return SaltInvocationError(str(exc))


# ======================================================================== backends


class _Wine:
    """Wine's registry through its ``reg.exe`` (one persistent wineserver per prefix)."""

    name = "wine"

    def __init__(self):
        conf = _conf()
        self.wine = shutil.which(conf.get("wine", "wine")) or conf.get("wine", "wine")
        self.wineserver = shutil.which(conf.get("wineserver", "wineserver")) or conf.get("wineserver", "wineserver")
        self.prefix = os.path.abspath(conf.get("wineprefix") or os.path.join(__opts__["cachedir"], "kiosk_reg", "wineprefix"))
        self.timeout = conf.get("timeout", 60)
        env = dict(os.environ)
        for var in ("DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(var, None)  # headless: reg.exe needs no display, and nothing may pop a dialog
        env.update({"WINEPREFIX": self.prefix, "WINEDEBUG": "-all",
                    "WINEDLLOVERRIDES": "mscoree,mshtml="})  # no Mono/Gecko install prompts
        self.env = env
        self.setarch = shutil.which(conf.get("setarch", "setarch")) or conf.get("setarch", "setarch")
        self.reg = self.launch([fleet_reg.WINE_REG_EXE])

    def launch(self, args):
        """Every Wine process of this backend starts through ``setarch -R`` (:func:`fleet_reg.wine_argv` says why)."""
        return fleet_reg.wine_argv(self.wine, args, setarch=self.setarch, machine=os.uname().machine)

    def _exec(self, argv, timeout=None):
        # Output goes to files, not pipes: Wine's helper processes (winedevice.exe, ...)
        # inherit stdout/stderr and outlive the call, and a pipe would never see EOF.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env,
                                      timeout=timeout or self.timeout, check=False, close_fds=True)
            except subprocess.TimeoutExpired:
                shown = " ".join(argv[len(self.reg) - 1:len(self.reg) + 1])
                raise CommandExecutionError(f"{shown} ... timed out after {timeout or self.timeout} s") from None
            except OSError as exc:
                raise CommandExecutionError(f"cannot run {argv[0]}: {exc}") from exc
            out.seek(0)
            err.seek(0)
            return (proc.returncode, out.read().decode("utf-8", "replace"),
                    err.read().decode("utf-8", "replace"))

    def ready(self):
        key = f"kiosk_reg.wine_ready:{self.prefix}"
        if __context__.get(key):
            return
        # system.reg appears only when the (persistent) wineserver saves; drive_c/windows at once
        fresh = not os.path.isdir(os.path.join(self.prefix, "drive_c", "windows"))
        os.makedirs(self.prefix, mode=0o700, exist_ok=True)
        # -p: persistent; returns at once (exit 2 when one already runs for this prefix)
        subprocess.run([self.wineserver, "-p"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=self.env, check=False, timeout=30)
        if fresh:
            log.warning("kiosk_reg: initialising Wine prefix %s (once, a few seconds)", self.prefix)
            rc, out, err = self._exec(self.launch(["wineboot", "--init"]), timeout=600)
            if rc != 0 or not os.path.isdir(os.path.join(self.prefix, "drive_c", "windows")):
                raise CommandExecutionError(f"wineboot --init failed in {self.prefix} ({rc}): {err or out}")
        __context__[key] = True

    def run(self, args, ok_missing=False):
        self.ready()
        rc, out, err = self._exec(self.reg + list(args))
        if rc != 0:
            message = (err or out).strip()
            if ok_missing and fleet_reg.is_not_found(message):
                return None
            raise CommandExecutionError(f"reg {args[0]} {args[1] if len(args) > 1 else ''} failed ({rc}): {message}")
        return out

    def export(self, hive, subkey, path):
        """True when exported, False when the key does not exist."""
        return self.run(fleet_reg.export_argv(hive, subkey, path, reg=[])[0:], ok_missing=True) is not None

    def read_key(self, hive, subkey):
        with tempfile.TemporaryDirectory(prefix="kiosk_reg") as tmp:
            path = os.path.join(tmp, "k.reg")
            if not self.export(hive, subkey, path):
                return None
            with open(path, "rb") as fh:
                sections = fleet_reg.parse_reg(fleet_reg.decode_reg(fh.read()))
        for values in sections.values():  # the first section is the exported key itself
            return dict(values or {})
        return {}

    def set(self, hive, subkey, name, vtype, data):
        argv = fleet_reg.add_argv(hive, subkey, name, vtype, data, reg=[])
        if argv is None:  # not representable on a command line: import a generated .reg
            text = fleet_reg.import_text([(fleet_reg.join_key(hive, subkey), {name: (vtype, data)})])
            return self.import_text(text)
        self.run(argv)

    def import_text(self, text):
        with tempfile.TemporaryDirectory(prefix="kiosk_reg") as tmp:
            path = os.path.join(tmp, "in.reg")
            with open(path, "wb") as fh:
                fh.write(fleet_reg.encode_reg(text))
            self.import_file(path)

    def import_file(self, path):
        self.run(fleet_reg.import_argv(path, reg=[]))

    def delete_value(self, hive, subkey, name):
        return self.run(fleet_reg.delete_value_argv(hive, subkey, name, reg=[]), ok_missing=True) is not None

    def delete_key(self, hive, subkey):
        return self.run(fleet_reg.delete_key_argv(hive, subkey, reg=[]), ok_missing=True) is not None

    def subkeys(self, hive, subkey):
        out = self.run(fleet_reg.query_argv(hive, subkey, reg=[]), ok_missing=True)
        return [] if out is None else fleet_reg.subkeys(out, fleet_reg.join_key(hive, subkey))

    def info(self):
        self.ready()
        rc, out, _ = self._exec([self.wine, "--version"])
        return {"backend": "wine", "wineprefix": self.prefix, "wine": self.wine,
                "wine_version": out.strip() if rc == 0 else None}

    @contextlib.contextmanager
    def user_root(self, user):
        if user.lower() == DEFAULT_PROFILE.lower():
            raise CommandExecutionError(
                "user: the default profile (C:\\Users\\Default\\NTUSER.DAT) does not exist on the Wine backend; "
                "Wine has a single user")
        yield fleet_reg.sid_from_profiles(user, _profiles(self))


class _Windows:
    """Salt's own ``reg`` module (win32 API), plus reg.exe for export/load/unload."""

    name = "windows"
    reg_exe = os.path.join(os.environ.get("SystemRoot", "C:\\Windows"), "System32", "reg.exe")

    def _call(self, op, hive, subkey, **kwargs):
        fun, call_kwargs = fleet_reg.windows_call(op, hive, subkey, **kwargs)
        return fun, __salt__[fun](**call_kwargs)

    def _cmd(self, argv, ok_missing=False):
        ret = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True, output_loglevel="quiet")
        if ret["retcode"] != 0:
            message = (ret.get("stderr") or ret.get("stdout") or "").strip()
            if ok_missing and fleet_reg.is_not_found(message):
                return None
            raise CommandExecutionError(f"{argv[1]} failed ({ret['retcode']}): {message}")
        return ret.get("stdout", "")

    def read_key(self, hive, subkey):
        _, ret = self._call("list_values", hive, subkey)
        return fleet_reg.windows_values(ret)

    def set(self, hive, subkey, name, vtype, data):
        fun, ok = self._call("set", hive, subkey, name=name, vtype=vtype, data=data)
        if not ok:
            raise CommandExecutionError(f"{fun} refused {fleet_reg.join_key(hive, subkey)} "
                                        f"{fleet_reg.display_name(name)}")

    def delete_value(self, hive, subkey, name):
        _, ret = self._call("delete_value", hive, subkey, name=name)
        return bool(ret)

    def delete_key(self, hive, subkey):
        _, ret = self._call("delete_key", hive, subkey)
        if isinstance(ret, dict) and ret.get("Failed"):
            raise CommandExecutionError(f"reg.delete_key_recursive failed: {ret['Failed']}")
        return bool(ret and ret.get("Deleted"))

    def subkeys(self, hive, subkey):
        _, ret = self._call("list_keys", hive, subkey)
        if isinstance(ret, tuple) or ret is False:
            return []
        return [fleet_reg.join_key(hive, f"{subkey}\\{k}") for k in ret]

    def export(self, hive, subkey, path):
        return self._cmd(fleet_reg.export_argv(hive, subkey, path, reg=self.reg_exe) + ["/reg:64"],
                         ok_missing=True) is not None

    def import_text(self, text):
        fd, path = tempfile.mkstemp(suffix=".reg", prefix="kiosk_reg")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(fleet_reg.encode_reg(text))
            self.import_file(path)
        finally:
            os.unlink(path)

    def import_file(self, path):
        __salt__["reg.import_file"](path)

    def info(self):
        return {"backend": "windows", "via": "salt reg module (win32 API)"}

    @contextlib.contextmanager
    def user_root(self, user):
        if user.lower() == DEFAULT_PROFILE.lower():
            sid, profile = None, os.environ.get("SystemDrive", "C:") + "\\Users\\Default"
        else:
            profiles = _profiles(self)
            sid = fleet_reg.sid_from_profiles(user, profiles)
            if __salt__["reg.key_exists"]("HKU", sid):
                yield sid
                return
            profile = os.path.expandvars(profiles[sid])
        mount = f"kiosk_reg_{sid or 'Default'}"
        self._cmd(fleet_reg.hive_load_argv(mount, fleet_reg.ntuser_path(profile), reg=self.reg_exe))
        try:
            yield mount
        finally:
            try:
                self._cmd(fleet_reg.hive_unload_argv(mount, reg=self.reg_exe))
            except CommandExecutionError as exc:  # open handles: Windows unloads it at the next reboot
                log.warning("kiosk_reg: could not unload HKU\\%s: %s", mount, exc)


def _backend():
    if "kiosk_reg.backend" not in __context__:
        __context__["kiosk_reg.backend"] = _Windows() if salt.utils.platform.is_windows() else _Wine()
    return __context__["kiosk_reg.backend"]


def _profiles(backend):
    """``{sid: ProfileImagePath}`` from HKLM's ProfileList."""
    out = {}
    for sub in backend.subkeys("HKEY_LOCAL_MACHINE", PROFILE_LIST):
        sid = sub.rsplit("\\", 1)[-1]
        values = backend.read_key("HKEY_LOCAL_MACHINE", f"{PROFILE_LIST}\\{sid}") or {}
        if "ProfileImagePath" in values:
            out[sid] = values["ProfileImagePath"][1]
    return out


# ======================================================================== helpers


def _parse(key, user, field="key"):
    try:
        hive, subkey = fleet_reg.parse_key(key, field)
        user = fleet_reg.check_user(user)
        if user is not None and hive != "HKEY_CURRENT_USER":
            raise fleet_reg.RegError(f"{field}: user= applies to HKCU keys only, got {fleet_reg.shown(key)}")
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc
    return hive, subkey, user


def _user_root(stack, backend, user):
    """``user``'s hive under HKU (its SID, or where it is mounted until ``stack`` closes)."""
    try:
        return stack.enter_context(backend.user_root(user))
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc


@contextlib.contextmanager
def _opened(hive, subkey, user):
    """``(backend, real hive, real subkey)`` of a parsed key: HKCU of ``user`` is HKU\\<SID or mount>."""
    backend = _backend()
    if user is None:
        yield backend, hive, subkey
        return
    with contextlib.ExitStack() as stack:
        yield backend, "HKEY_USERS", f"{_user_root(stack, backend, user)}\\{subkey}"


def _value(values, name):
    if values is None or name not in values:
        return None
    vtype, data = values[name]
    return {"vtype": vtype, "data": fleet_reg.to_output(vtype, data)}


def _shown(key, user):
    return f"{key} (user {user})" if user else key


def _snapshot_dir():
    path = _conf().get("snapshot_dir") or os.path.join(__opts__["cachedir"], "kiosk_reg", "snapshots")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _take_snapshot(backend, hive, subkey, label):
    """Export ``hive\\subkey`` to a .reg that, imported, puts the key back exactly (``[-KEY]`` first)."""
    full = fleet_reg.join_key(hive, subkey)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label)[-60:].strip("_")
    path = os.path.join(_snapshot_dir(), f"{stamp}-{slug}-{uuid.uuid4().hex[:8]}.reg")
    with tempfile.TemporaryDirectory(prefix="kiosk_reg") as tmp:
        exported = os.path.join(tmp, "k.reg")
        existed = backend.export(hive, subkey, exported)
        body = ""
        if existed:
            with open(exported, "rb") as fh:
                text = fleet_reg.decode_reg(fh.read())
            body = text.split("\n", 1)[1] if text.startswith(fleet_reg.REG_HEADER) else text
    header = fleet_reg.section_header(full, deleted=True)
    text = f"{fleet_reg.REG_HEADER}\r\n\r\n{header}\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")
    with open(path, "wb") as fh:
        fh.write(fleet_reg.encode_reg(text))
    return {"key": full, "existed": existed, "file": path}


# ======================================================================== public


def backend():
    """
    Which backend this minion uses (``windows`` or ``wine``) and its settings.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.backend
    """
    return _backend().info()


def get_value(key, name, user=None):
    """
    Read one value: ``{"key", "name", "exists", "vtype", "data"}`` (REG_BINARY
    data as hex text). ``name`` ``""`` or ``(Default)`` is the key's default value.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.get_value 'HKLM\\SOFTWARE\\Kiosk' Campus
        salt kiosk-riverside-01 kiosk_reg.get_value 'HKCU\\Control Panel\\Desktop' Wallpaper user=kiosk
    """
    hive, subkey, user = _parse(key, user)
    try:
        name = fleet_reg.check_name(name)
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc
    with _opened(hive, subkey, user) as (be, real_hive, real_key):
        value = _value(be.read_key(real_hive, real_key), name)
    return {"key": _shown(key, user), "name": fleet_reg.display_name(name), "exists": value is not None,
            "vtype": value and value["vtype"], "data": value and value["data"]}


def list_values(key, user=None):
    """
    Every value of a key: ``{name: {"vtype", "data"}}`` (``(Default)`` for the
    default value); ``{}`` for an empty key. A missing key is an error.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.list_values 'HKLM\\SOFTWARE\\Kiosk'
    """
    hive, subkey, user = _parse(key, user)
    with _opened(hive, subkey, user) as (be, real_hive, real_key):
        values = be.read_key(real_hive, real_key)
    if values is None:
        raise CommandExecutionError(f"key: {_shown(key, user)} does not exist")
    return {fleet_reg.display_name(n): _value(values, n) for n in values}


def _flag(value, field):
    """``test=`` and ``snapshot=``: a boolean, as the salt CLI's YAML gives ``True``/``False``."""
    if not isinstance(value, bool):
        raise SaltInvocationError(f"{field}: expected True or False, got {fleet_reg.shown(value)}")
    return value


def _check_change(change, field):
    """``field`` prefixes the field names: ``changes[1]`` for set_values, None for single calls."""
    if not isinstance(change, dict):
        raise fleet_reg.RegError(f"{field}: expected a mapping with key, name, data, vtype")
    sub = (lambda name: f"{field}.{name}") if field else (lambda name: name)
    unknown = set(change) - {"key", "name", "data", "vtype", "user", "absent"}
    if unknown:
        raise fleet_reg.RegError(f"{field}: unknown field(s) {', '.join(sorted(fleet_reg.shown(k) for k in unknown))}")
    hive, subkey = fleet_reg.parse_key(change.get("key"), sub("key"))
    user = fleet_reg.check_user(change.get("user"), sub("user"))
    if user is not None and hive != "HKEY_CURRENT_USER":
        raise fleet_reg.RegError(f"{sub('user')}: user= applies to HKCU keys only, got {fleet_reg.shown(change['key'])}")
    name = fleet_reg.check_name(change.get("name"), sub("name"))
    if _flag(change.get("absent", False), sub("absent")):
        return {"key": change["key"], "hive": hive, "subkey": subkey, "user": user, "name": name, "absent": True}
    vtype = fleet_reg.check_type(change.get("vtype", "REG_SZ"), sub("vtype"))
    data = fleet_reg.normalise(vtype, change.get("data"), sub("data"))
    return {"key": change["key"], "hive": hive, "subkey": subkey, "user": user, "name": name,
            "vtype": vtype, "data": data, "absent": False}


def set_values(changes, test=False, snapshot=True):  # pylint: disable=redefined-outer-name
    """
    Apply several value changes as one: every change is validated before
    anything is written; if a write fails half-way, the values already changed
    are put back (and keys this call created are removed), then the error is
    raised naming the change that failed. ``changes`` is a list of
    ``{key, name, data, vtype[, user]}`` or ``{key, name, absent: True}``.
    With ``snapshot=True`` each touched key is exported first (files in the
    result, usable with :func:`restore`).

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.set_values '[{"key": "HKLM\\\\SOFTWARE\\\\Kiosk", "name": "Campus", "data": "riverside"}, {"key": "HKLM\\\\SOFTWARE\\\\Kiosk", "name": "Slot", "data": 3, "vtype": "REG_DWORD"}]'
    """
    if not isinstance(changes, (list, tuple)) or not changes:
        raise SaltInvocationError("changes: expected a non-empty list of changes")
    _flag(test, "test")
    _flag(snapshot, "snapshot")
    try:
        plan = [_check_change(c, f"changes[{i}]") for i, c in enumerate(changes)]
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc
    return _apply(plan, test, snapshot)


def _apply(plan, test, snapshot):  # pylint: disable=redefined-outer-name
    be = _backend()
    results, done, snapshots, created = [], [], {}, []
    with contextlib.ExitStack() as stack:
        roots = {}
        for item in plan:  # per-user hives resolved (and on Windows loaded) once for the whole change
            if item["user"] is None:
                item["real"] = (item["hive"], item["subkey"])
                continue
            if item["user"] not in roots:
                roots[item["user"]] = _user_root(stack, be, item["user"])
            item["real"] = ("HKEY_USERS", f"{roots[item['user']]}\\{item['subkey']}")
        index = 0
        try:
            for index, item in enumerate(plan):
                real = item["real"]
                values = be.read_key(*real)
                old = None if values is None else values.get(item["name"])
                if item["absent"]:
                    change = old is not None
                else:
                    change = old is None or not fleet_reg.equal(old[0], old[1], item["vtype"], item["data"])
                results.append({"key": _shown(item["key"], item["user"]), "name": fleet_reg.display_name(item["name"]),
                                "changed": change, "old": _value(values, item["name"]),
                                "new": None if item["absent"] else
                                {"vtype": item["vtype"], "data": fleet_reg.to_output(item["vtype"], item["data"])}})
                if not change or test:
                    continue
                if snapshot and real not in snapshots:
                    snapshots[real] = _take_snapshot(be, *real, label=fleet_reg.join_key(*real))
                if values is None and real not in created:
                    created.append(real)
                # recorded before the write: a write that fails half-way is undone too
                done.append((index, real, item["name"], old))
                if item["absent"]:
                    be.delete_value(*real, item["name"])
                else:
                    be.set(*real, item["name"], item["vtype"], item["data"])
        except CommandExecutionError as exc:
            problems = _roll_back(be, done, created)
            undone = ", ".join(f"changes[{d[0]}]" for d in done if d[0] != index) or "nothing"
            message = f"changes[{index}]: {exc}; rolled back: {undone}"
            if problems:
                message += f"; ROLLBACK INCOMPLETE: {'; '.join(problems)} (snapshots: " \
                           f"{', '.join(s['file'] for s in snapshots.values()) or 'none'})"
            raise CommandExecutionError(message, info={"results": results, "snapshots": list(snapshots.values())}) \
                from exc
    return {"changed": any(r["changed"] for r in results), "test": bool(test), "changes": results,
            "snapshots": [s["file"] for s in snapshots.values()]}


def _roll_back(be, done, created):
    """Put back the old values of ``done`` (newest first) and drop keys this call created."""
    problems = []
    for index, real, name, old in reversed(done):
        try:
            if old is None:
                be.delete_value(*real, name)
            else:
                be.set(*real, name, old[0], old[1])
        except CommandExecutionError as exc:
            problems.append(f"changes[{index}]: {exc}")
    for real in reversed(created):
        try:
            values = be.read_key(*real)
            # Wine's reg add gives a new key an empty (Default) value: still "empty"
            if values is not None and all(n == "" and v[1] == "" for n, v in values.items()) \
                    and not be.subkeys(*real):
                be.delete_key(*real)
        except CommandExecutionError as exc:
            problems.append(f"{fleet_reg.join_key(*real)}: {exc}")
    return problems


def set_value(key, name, data, vtype="REG_SZ", user=None, test=False):
    """
    Set one value (creating the key). Idempotent: when the value already holds
    ``data`` of ``vtype`` (typed: REG_DWORD ``"1"`` equals ``1``) nothing is
    written and ``changed`` is False. ``test=True`` only reports old -> new.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.set_value 'HKLM\\SOFTWARE\\Kiosk' Campus riverside
        salt kiosk-riverside-01 kiosk_reg.set_value 'HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\HideDesktopIcons\\NewStartPanel' '"{645FF040-5081-101B-9F08-00AA002F954E}"' 1 vtype=REG_DWORD user=kiosk   # GUID quoted twice: bare {..} is YAML
        salt kiosk-riverside-01 kiosk_reg.set_value 'HKLM\\SOFTWARE\\Kiosk' Hosts '["a", "b"]' vtype=REG_MULTI_SZ
    """
    _flag(test, "test")
    try:
        plan = [_check_change({"key": key, "name": name, "data": data, "vtype": vtype, "user": user}, None)]
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc
    ret = _apply(plan, test, snapshot=False)
    return {**ret["changes"][0], "test": bool(test)}


def delete_value(key, name, user=None, test=False):
    """
    Delete one value; ``changed`` False when it was not there.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.delete_value 'HKLM\\SOFTWARE\\Kiosk' Campus
    """
    _flag(test, "test")
    try:
        plan = [_check_change({"key": key, "name": name, "user": user, "absent": True}, None)]
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc
    ret = _apply(plan, test, snapshot=False)
    return {**ret["changes"][0], "test": bool(test)}


def delete_key(key, user=None, test=False):
    """
    Delete a key with its subkeys and values; ``changed`` False when it was not
    there. Refuses keys directly below a hive (``HKLM\\SOFTWARE``) and a user's
    whole hive (``HKU\\<SID>\\Software``).

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.delete_key 'HKLM\\SOFTWARE\\Kiosk\\Old'
    """
    hive, subkey, user = _parse(key, user)
    _flag(test, "test")
    minimum = 3 if hive == "HKEY_USERS" else 2
    if len(subkey.split("\\")) < minimum:
        raise SaltInvocationError(f"key: refusing to delete {fleet_reg.shown(key)}: too close to the hive root")
    with _opened(hive, subkey, user) as (be, real_hive, real_key):
        values = be.read_key(real_hive, real_key)
        if values is None:
            return {"key": _shown(key, user), "changed": False, "old": None, "test": bool(test)}
        old = {fleet_reg.display_name(n): _value(values, n) for n in values}
        if not test:
            be.delete_key(real_hive, real_key)
    return {"key": _shown(key, user), "changed": True, "old": old, "test": bool(test)}


def snapshot(key, user=None):
    """
    Export a key (with subkeys) to a .reg file under the snapshot folder before
    a change. The file starts with ``[-KEY]``, so :func:`restore` puts the key
    back exactly (values added since are removed; a key that did not exist is
    deleted again).

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.snapshot 'HKLM\\SOFTWARE\\Kiosk'
    """
    hive, subkey, user = _parse(key, user)
    with _opened(hive, subkey, user) as (be, real_hive, real_key):
        return _take_snapshot(be, real_hive, real_key, label=key)


def restore(snapshot):  # pylint: disable=redefined-outer-name
    """
    Put a key back as :func:`snapshot` saved it. ``snapshot`` is the file path
    or the dict :func:`snapshot` returned; only files in the snapshot folder
    that start with ``[-KEY]`` and hold nothing outside ``KEY`` are accepted.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 kiosk_reg.restore /var/cache/salt/minion/kiosk_reg/snapshots/20261122T140000Z-HKLM_SOFTWARE_Kiosk-1a2b3c4d.reg
    """
    path = snapshot.get("file") if isinstance(snapshot, dict) else snapshot
    if not isinstance(path, str) or not path.endswith(".reg"):
        raise SaltInvocationError(f"snapshot: expected a .reg file from kiosk_reg.snapshot, got {fleet_reg.shown(snapshot)}")
    try:
        fleet_reg.check_path(path, "snapshot")
    except fleet_reg.RegError as exc:
        raise _bad(exc) from exc
    folder = os.path.realpath(_snapshot_dir())
    real = os.path.realpath(path)
    if os.path.dirname(real) != folder:
        raise SaltInvocationError(f"snapshot: {fleet_reg.shown(path)} is not in the snapshot folder {folder}")
    if not os.path.isfile(real):
        raise SaltInvocationError(f"snapshot: {fleet_reg.shown(path)} does not exist")
    with open(real, "rb") as fh:
        raw = fh.read()
    try:
        key = fleet_reg.snapshot_key(fleet_reg.decode_reg(raw))
    except fleet_reg.RegError as exc:
        raise SaltInvocationError(f"snapshot: {fleet_reg.shown(path)} cannot be restored: "
                                  f"{str(exc).removeprefix('snapshot: ')}") from exc
    _backend().import_file(real)
    return {"key": key, "file": real, "restored": True}
