"""
Kiosk releases: the pure parts shared by the master runner, the Pi and the
kiosk (``kiosk_release`` runner, ``kiosk_pkg`` module and states).

* versions: dotted numbers (``1.4.0``, ``2026.11.22``), compared numerically;
* hashing: md5 and sha256 of a file in one read, the two digests computed on
  two threads (hashlib releases the GIL), so verification runs at md5 speed;
* the release manifest (name, version, files with size/md5/sha256, install
  command, created-at, Ed25519 signature by the master's key);
* the signed campus pin (name, campus, version, serial, signed_at) and the
  one function that verifies manifests and pins: :func:`verify`;
* the Pi's repository index (``<repo>/<name>/index.json``): staged versions
  and the signed campus pin;
* downloads: streamed to a ``.part`` file, resumed with HTTP Range after a
  cut, verified, and only then renamed into place;
* rollouts: rings (canary campus first) and the halt rule.

Every check raises :class:`ReleaseError`, whose messages name the bad field
(``manifest.files.app.zip.md5: ...``, ``version: ...``); a bad or missing
signature, or a pin that does not hold, raises :class:`SignatureError`, and a
copy whose size or hashes differ :class:`IntegrityError` (callers tell them
apart by class, never by message).
"""

import base64
import concurrent.futures
import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

FORMAT = 1
CHUNK = 1 << 20  # 1 MiB: constant memory whatever the package size
REPO_PREFIX = "/kiosk-releases/"
INDEX = "index.json"
MANIFEST = "manifest.json"
STAGING = ".staging"  # inside the repo (same file system: atomic rename); nginx never serves dot dirs
VERSION = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}\Z")
# files of a release sit flat in its version directory: no "/", no leading dot
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
HEX = {"md5": re.compile(r"^[0-9a-f]{32}\Z"), "sha256": re.compile(r"^[0-9a-f]{64}\Z")}
# placeholders of the install command, replaced argument by argument (never a shell)
PLACEHOLDER = re.compile(r"\{(dir|name|version)\}")
READ = 64 * 1024  # network reads: a cut loses at most this much of what arrived


class ReleaseError(fleet_fields.FieldErrors):
    """A bad release request or document, a hash mismatch, a failed download."""


class IntegrityError(ReleaseError):
    """A copy whose size, md5 or sha256 is not the manifest's."""


class SignatureError(ReleaseError):
    """No verify key, a missing or bad signature, or a signed pin that does not hold."""


# --------------------------------------------------------------------------- names and versions


def check_name(name, field="name"):
    if not isinstance(name, str) or not fleet_fields.NAME.match(name):
        raise ReleaseError(f"{field}: {name!r} is not a valid release name (letters, digits, . _ -)")
    return name


def parse_version(version, field="version"):
    """``"1.4.0"`` -> ``(1, 4, 0, 0)``: padded to four parts, so 1.4 == 1.4.0."""
    if isinstance(version, float):
        # YAML on the salt CLI turns version=1.10 into the float 1.1: never guess which was meant
        raise ReleaseError(f"{field}: {version!r} arrived as a number (YAML reads 1.10 as 1.1): "
                           f"quote it or give three parts, e.g. {field}='\"1.10\"' or 1.10.0")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)  # version=2 on the salt CLI
    if not isinstance(version, str) or not VERSION.match(version):
        raise ReleaseError(f"{field}: {version!r} is not a version (1 to 4 dot-separated numbers, e.g. 1.4.0)")
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (4 - len(parts))


def check_version(version, field="version"):
    parse_version(version, field)
    return str(version)


def sort_versions(versions):
    return sorted(versions, key=parse_version)


def next_version(versions):
    """The version above every one of ``versions``: the highest, last part + 1 (1.4.0 -> 1.4.1), carrying."""
    if not versions:
        raise ReleaseError("versions: no published version to go above")
    parts = [int(p) for p in sort_versions(versions)[-1].split(".")]
    i = len(parts) - 1
    parts[i] += 1
    while parts[i] > 999_999_999:  # 9 digits per part: carry to the left (1.999999999 -> 2.0)
        if i == 0:
            raise ReleaseError("versions: no version above the newest one fits in 9 digits per part")
        parts[i] = 0
        i -= 1
        parts[i] += 1
    return ".".join(map(str, parts))


def check_file_name(name, field):
    if not isinstance(name, str) or not FILE_NAME.match(name):
        raise ReleaseError(f"{field}: {name!r} is not a plain file name (no '/', no leading dot)")
    return name


# --------------------------------------------------------------------------- hashing


class Digest:
    """md5 + sha256 + size of a byte stream, fed chunk by chunk."""

    def __init__(self):
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data):
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def result(self):
        return {"size": self.size, "md5": self.md5.hexdigest(), "sha256": self.sha256.hexdigest()}


def hash_file(path, chunk=CHUNK, copy_to=None):
    """
    ``{"size", "md5", "sha256"}`` of a file, read once in ``chunk`` bytes
    (and written to ``copy_to`` in the same pass when given). sha256 runs on
    a second thread while md5 runs on this one: the pair costs about what
    md5 alone costs when there are two cores.
    """
    digest = Digest()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open(path, "rb"))
        out = stack.enter_context(open(copy_to, "wb")) if copy_to else None
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            data = view[:n]
            pending = pool.submit(digest.sha256.update, data)
            digest.md5.update(data)
            if out is not None:
                out.write(data)
            pending.result()  # the buffer is reused: both digests must be done with it
            digest.size += n
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    return digest.result()


def compare(expected, actual, field):
    """Raise :class:`ReleaseError` naming the first of size/md5/sha256 that differs."""
    for key in ("size", "md5", "sha256"):
        if expected[key] != actual[key]:
            raise IntegrityError(f"{field}: {key} mismatch (expected {expected[key]}, got {actual[key]})")


# --------------------------------------------------------------------------- manifest


def now_iso():
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_install(install, field="install"):
    """The install command: an argument list (never a shell string), or empty for files only."""
    if install is None or install == []:
        return []
    if isinstance(install, str):
        raise ReleaseError(f"{field}: expected a list of arguments, got the string {install!r} (no shell commands)")
    if not isinstance(install, (list, tuple)) or not all(isinstance(a, str) and a for a in install):
        raise ReleaseError(f"{field}: expected a list of non-empty strings, got {install!r}")
    return list(install)


def check_success_codes(codes, field="success_codes"):
    """Exit codes of the install command that mean success (default [0]; msiexec: [0, 3010])."""
    if codes is None:
        return [0]
    if isinstance(codes, int) and not isinstance(codes, bool):
        codes = [codes]
    if not isinstance(codes, (list, tuple)) or not codes or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise ReleaseError(f"{field}: expected a list of exit codes, got {codes!r}")
    return sorted(set(codes))


def build_manifest(name, version, files, install=None, created_at=None, rollback_of=None, success_codes=None):
    """A manifest from hashed files ``{file name: {"size", "md5", "sha256"}}``; validated."""
    doc = {
        "format": FORMAT,
        "name": name,
        "version": check_version(version),
        "created_at": created_at or now_iso(),
        "files": files,
        "install": check_install(install),
        "success_codes": check_success_codes(success_codes),
        "rollback_of": rollback_of,
    }
    return validate_manifest(doc)


def validate_manifest(doc, name=None, version=None):
    """Check a manifest (all problems at once); with ``name``/``version``, it must be that release."""
    errors = []
    if not isinstance(doc, dict):
        raise ReleaseError(f"manifest: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        errors.append(f"manifest.format: {doc.get('format')!r} is not {FORMAT}")
    for key, check in (("name", check_name), ("version", check_version)):
        try:
            check(doc.get(key), f"manifest.{key}")
        except ReleaseError as exc:
            errors.extend(exc.errors)
    if name is not None and doc.get("name") != name:
        errors.append(f"manifest.name: {doc.get('name')!r} is not the release asked for ({name!r})")
    if version is not None and doc.get("version") != str(version):
        errors.append(f"manifest.version: {doc.get('version')!r} is not the version asked for ({version!r})")
    if not isinstance(doc.get("created_at"), str):
        errors.append(f"manifest.created_at: {doc.get('created_at')!r} is not a timestamp")
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        errors.append("manifest.files: a release holds at least one file")
        files = {}
    for file_name, entry in files.items():
        field = f"manifest.files.{file_name}"
        try:
            check_file_name(file_name, field)
        except ReleaseError as exc:
            errors.extend(exc.errors)
        if not isinstance(entry, dict):
            errors.append(f"{field}: expected size, md5 and sha256")
            continue
        size = entry.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            errors.append(f"{field}.size: {size!r} is not a byte count")
        for algo, pattern in HEX.items():
            if not isinstance(entry.get(algo), str) or not pattern.match(entry[algo]):
                errors.append(f"{field}.{algo}: {entry.get(algo)!r} is not a lowercase hex {algo} digest")
    try:
        check_install(doc.get("install"), "manifest.install")
    except ReleaseError as exc:
        errors.extend(exc.errors)
    if "success_codes" in doc:
        try:
            check_success_codes(doc["success_codes"], "manifest.success_codes")
        except ReleaseError as exc:
            errors.extend(exc.errors)
    if doc.get("rollback_of") is not None:
        try:
            check_version(doc["rollback_of"], "manifest.rollback_of")
        except ReleaseError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ReleaseError(errors)
    return doc


def manifest_size(doc):
    return sum(entry["size"] for entry in doc["files"].values())


def canonical(doc):
    """The bytes a signature covers: the document without ``signature``, sorted keys, no spaces."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - salt 3007 depends on cryptography
        raise SignatureError("signature: the cryptography package is not installed") from None
    return serialization, ed25519


# seconds a pin's serial may run ahead of its signing time (serials follow the clock)
MAX_SERIAL_AHEAD = 86400
PIN_KIND = "pin"
VERIFY_KEY_FIELD = "kiosk_release:verify_key"
SIGNING_KEY_FIELD = "kiosk_release.signing_key"
UNSIGNED = "refusing to work unsigned"


def _private_key(private_key_pem, field=SIGNING_KEY_FIELD):
    serialization, ed25519 = _crypto()
    if not isinstance(private_key_pem, (str, bytes)):
        raise SignatureError(f"{field}: expected an Ed25519 private key in PEM, got {type(private_key_pem).__name__}")
    try:
        key = serialization.load_pem_private_key(_bytes(private_key_pem), password=None)
    except (ValueError, TypeError):  # the exception text could quote key material: not shown
        raise SignatureError(f"{field}: not a PEM private key (unencrypted PKCS#8 expected)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{field}: expected an Ed25519 private key")
    return key


def verify_keys(value, field=VERIFY_KEY_FIELD):
    """
    The Ed25519 public keys in ``value`` (pillar ``kiosk_release:verify_key``:
    one PEM string or a list of them, for rotation), loaded. None or an empty
    list means the minion cannot verify anything: :class:`SignatureError`.
    """
    serialization, ed25519 = _crypto()
    if value is None or value == "" or value == []:
        raise SignatureError(f"{field}: missing from pillar (the master's Ed25519 public key, PEM, or a list); "
                             f"{UNSIGNED}")
    items = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(items, (list, tuple)):
        raise SignatureError(f"{field}: expected a PEM public key or a list of them, got {type(value).__name__}")
    keys = []
    for i, item in enumerate(items):
        where = field if items is not value else f"{field}[{i}]"
        if not isinstance(item, (str, bytes)):
            raise SignatureError(f"{where}: expected a PEM public key, got {type(item).__name__}")
        try:
            key = serialization.load_pem_public_key(_bytes(item))
        except (ValueError, TypeError):
            raise SignatureError(f"{where}: not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SignatureError(f"{where}: expected an Ed25519 public key")
        keys.append(key)
    return keys


def sign(doc, private_key_pem, field=SIGNING_KEY_FIELD):
    """Return ``doc`` with ``signature: {"alg": "ed25519", "value": <base64>}`` over :func:`canonical`."""
    if not isinstance(doc, dict):
        raise ReleaseError(f"document: expected a mapping to sign, got {type(doc).__name__}")
    key = _private_key(private_key_pem, field)
    signed = dict(doc)
    signed["signature"] = {"alg": "ed25519", "value": base64.b64encode(key.sign(canonical(doc))).decode()}
    return signed


def sign_manifest(doc, private_key_pem):
    return sign(doc, private_key_pem)


def verify(doc, keys, field):
    """
    The one signature check for manifests, pins and the pin in a Pi's
    index: ``doc`` must carry an Ed25519 signature over :func:`canonical`
    by one of ``keys`` (PEM strings, a list for rotation, or keys from
    :func:`verify_keys`). Anything else raises :class:`SignatureError`
    naming ``<field>.signature`` (or the key field). Returns ``doc``.
    """
    from cryptography.exceptions import InvalidSignature

    _, ed25519 = _crypto()
    if not (isinstance(keys, (list, tuple)) and keys and all(isinstance(k, ed25519.Ed25519PublicKey) for k in keys)):
        keys = verify_keys(keys)
    if not isinstance(doc, dict):
        raise SignatureError(f"{field}: expected a signed JSON object, got {type(doc).__name__}")
    sig = doc.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519" or not isinstance(sig.get("value"), str):
        raise SignatureError(f"{field}.signature: missing (the fleet accepts signed documents only)")
    try:
        raw = base64.b64decode(sig["value"], validate=True)
    except ValueError:
        raise SignatureError(f"{field}.signature: not base64") from None
    body = canonical(doc)
    for key in keys:
        try:
            key.verify(raw, body)
            return doc
        except InvalidSignature:
            continue
    raise SignatureError(f"{field}.signature: does not match (tampered, or signed by a key not in "
                         f"{VERIFY_KEY_FIELD})")


def verify_signature(doc, public_key_pem):
    """A manifest signed by ``public_key_pem`` (or a list of keys): :func:`verify` with field ``manifest``."""
    return verify(doc, public_key_pem, "manifest")


# --------------------------------------------------------------------------- the signed campus pin


def build_pin(name, campus, version, serial, signed_at=None):
    """
    The campus pin as the master signs it: ``version`` None freezes the
    campus. ``signed_at`` defaults to now (epoch seconds).
    """
    doc = {
        "kind": PIN_KIND,
        "name": check_name(name, "pin.name"),
        "campus": check_name(campus, "pin.campus"),
        "version": None if version is None else check_version(version, "pin.version"),
        "serial": _serial(serial, "pin.serial"),
        "signed_at": int(time.time()) if signed_at is None else _serial(signed_at, "pin.signed_at"),
    }
    return doc


def sign_pin(name, campus, version, serial, private_key_pem, signed_at=None):
    return sign(build_pin(name, campus, version, serial, signed_at), private_key_pem)


def verify_pin(pin, keys, name, campus, field="pin"):
    """
    A campus pin a Pi or kiosk may act on: signed by one of ``keys``
    (:func:`verify`), of release ``name``, for ``campus`` (the verifier's
    own, from pillar), its serial at most :data:`MAX_SERIAL_AHEAD` seconds
    ahead of its signing time (a forged or runaway serial would outrank
    every later pin). Raises :class:`SignatureError`; returns ``pin``.
    """
    if isinstance(pin, str):  # from the CLI
        try:
            pin = json.loads(pin)
        except ValueError:
            raise SignatureError(f"{field}: not JSON") from None
    if not isinstance(pin, dict):
        raise SignatureError(f"{field}: expected a signed pin object, got {type(pin).__name__}")
    verify(pin, keys, field)
    if pin.get("kind") != PIN_KIND:
        raise SignatureError(f"{field}.kind: {pin.get('kind')!r} is not a pin")
    if pin.get("name") != name:
        raise SignatureError(f"{field}.name: {pin.get('name')!r} is not release {name!r}")
    if pin.get("campus") != campus:
        raise SignatureError(f"{field}.campus: {pin.get('campus')!r} is not this minion's campus {campus!r}")
    for key in ("serial", "signed_at"):
        value = pin.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SignatureError(f"{field}.{key}: {value!r} is not a whole number >= 0")
    if pin.get("version") is not None:
        try:
            check_version(pin["version"], f"{field}.version")
        except ReleaseError as exc:
            raise SignatureError(str(exc)) from None
    if pin["serial"] > pin["signed_at"] + MAX_SERIAL_AHEAD:
        raise SignatureError(f"{field}.serial: {pin['serial']} is more than {MAX_SERIAL_AHEAD} s ahead of "
                             f"its signing time {pin['signed_at']}")
    return pin


def _bytes(value):
    return value.encode() if isinstance(value, str) else value


def install_argv(doc, package_dir):
    """The manifest's install command with ``{dir}``, ``{name}``, ``{version}`` filled in, argument by argument."""
    values = {"dir": str(package_dir), "name": doc["name"], "version": doc["version"]}
    # one pass: a value that itself holds "{version}" is not substituted again
    return [PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in doc["install"]]


# --------------------------------------------------------------------------- files on disk


def write_json_atomic(path, doc):
    """Write JSON next to ``path`` (dot temp file, never served), fsync, rename over ``path``."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return path


def read_json(path, field):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{field}: cannot read {path}: {exc}") from None


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


INSTALLED = "installed.json"  # <kiosk dir>/<name>/installed.json: what a kiosk runs


def read_installed(root):
    """
    ``{name: record}`` from every ``<root>/<name>/installed.json`` (written
    by :func:`write_json_atomic` after an install): what the kiosk runs.
    Unreadable or foreign files are left out, never raised: the grains
    module calls this at every minion start.
    """
    found = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        if name.startswith(".") or not fleet_fields.NAME.match(name):
            continue
        try:
            record = read_json(os.path.join(root, name, INSTALLED), INSTALLED)
        except ReleaseError:
            continue
        if isinstance(record, dict) and isinstance(record.get("version"), str):
            found[name] = record
    return found


def check_free_space(directory, needed, field="disk"):
    """Refuse up front when ``directory`` has less than ``needed`` bytes (+1 %) free."""
    free = shutil.disk_usage(directory).free
    if free < needed * 1.01:
        raise ReleaseError(
            f"{field}: {directory} has {free // 2**20} MiB free, the release needs {needed // 2**20 + 1} MiB"
        )
    return free


def disk_error(exc, path, field="disk"):
    """An OSError from writing, as a ReleaseError (a full disk is said plainly)."""
    if exc.errno == errno.ENOSPC:
        return ReleaseError(f"{field}: no space left while writing {path}")
    return ReleaseError(f"{field}: cannot write {path}: {exc.strerror or exc}")


# --------------------------------------------------------------------------- repository index


def new_index(name):
    return {"format": FORMAT, "name": check_name(name), "versions": {}, "pin": None}


def validate_index(doc, name, field="index"):
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("name") != name:
        raise ReleaseError(f"{field}: not a repository index of release {name!r}")
    if not isinstance(doc.get("versions"), dict):
        raise ReleaseError(f"{field}.versions: expected a mapping")
    for version in doc["versions"]:  # they become directory names on the kiosk
        check_version(version, f"{field}.versions")
    pin = doc.get("pin")
    if pin is not None:
        if not isinstance(pin, dict) or (pin.get("version") is not None and pin.get("version") not in doc["versions"]):
            raise ReleaseError(f"{field}.pin: {pin!r} does not name a staged version")
        if isinstance(pin.get("serial"), bool) or not isinstance(pin.get("serial"), int):
            raise ReleaseError(f"{field}.pin.serial: {pin.get('serial')!r} is not a number")
    return doc


def index_add(index, doc):
    """Record a verified version in the index (a new dict)."""
    index = json.loads(json.dumps(index))
    index["versions"][doc["version"]] = {
        "size": manifest_size(doc),
        "created_at": doc["created_at"],
        "staged_at": now_iso(),
        "rollback_of": doc.get("rollback_of"),
    }
    return index


def index_pin(index, pin):
    """
    Store the campus ``pin`` (a signed pin, already checked with
    :func:`verify_pin`) in the index as it was signed (a new dict); its
    version must be staged here. ``version`` None freezes the campus: kiosks
    keep what they run. An older serial never replaces a newer pin.
    """
    if not isinstance(pin, dict) or "signature" not in pin:
        raise SignatureError("pin.signature: missing (a repository holds signed pins only)")
    version = pin.get("version")
    if version is not None and version not in index["versions"]:
        raise ReleaseError(f"version: {version} is not staged here (staged: {', '.join(sort_versions(index['versions'])) or 'none'})")
    serial = _serial(pin.get("serial"), "pin.serial")
    current = index.get("pin") or {}
    if isinstance(current.get("serial"), int) and current["serial"] > serial:
        raise ReleaseError(f"serial: {serial} is older than this repository's pin serial {current['serial']}")
    index = json.loads(json.dumps(index))
    index["pin"] = json.loads(json.dumps(pin))
    index["pinned_at"] = now_iso()
    return index


def verify_index(doc, name, keys, campus, field="index"):
    """
    A Pi's index as a kiosk may use it: well-formed (:func:`validate_index`)
    and its pin, if any, signed for this ``campus`` (:func:`verify_pin`,
    the same signature check as manifests). Returns ``doc``.
    """
    validate_index(doc, name, field)
    if doc.get("pin") is not None:
        verify_pin(doc["pin"], keys, name, campus, f"{field}.pin")
    return doc


def _serial(serial, field="serial"):
    try:
        value = int(serial)
    except (TypeError, ValueError):
        raise ReleaseError(f"{field}: {serial!r} is not a whole number") from None
    if isinstance(serial, float) and serial != value:
        raise ReleaseError(f"{field}: {serial!r} is not a whole number")
    if isinstance(serial, bool) or value < 0:
        raise ReleaseError(f"{field}: {serial!r} is not a whole number >= 0")
    return value


def choose_pin(indexes):
    """
    The pin a kiosk follows among its campus Pis' indexes (``{url: index or None}``,
    each already checked with :func:`verify_index`): the one with the highest
    serial, so a Pi that missed the last pin change never drags a kiosk back.
    ``None`` when no Pi has a pin.
    """
    best = None
    for url, index in indexes.items():
        pin = (index or {}).get("pin")
        if pin and (best is None or pin["serial"] > best["serial"]):
            best = {"version": pin["version"], "serial": pin["serial"], "repo": url,
                    "signed_at": pin.get("signed_at")}
    return best


def prune_plan(present, keep):
    """Version directories to delete: all of ``present`` except ``keep`` (current, previous)."""
    return sort_versions(v for v in present if v not in keep)


# --------------------------------------------------------------------------- downloads


def fetch(session, url, part, expected, field, timeout=(5, 60), retries=3, chunk=CHUNK):
    """
    Download ``url`` into the file ``part`` and verify it against ``expected``
    (``{"size", "md5", "sha256"}``); on success the verified ``part`` is left
    for the caller to rename into place. A ``part`` already on disk (a cut
    download, even from a previous boot) is resumed with ``Range``; a
    connection cut mid-way is resumed up to ``retries`` times. On a hash
    mismatch the part is deleted and :class:`ReleaseError` raised.

    Returns ``{"url", "fetched": bytes over the wire, "resumed_from": [offsets]}``.
    """
    import requests  # only where downloads happen: the master runner does not need it

    size = expected["size"]
    if size == 0 and not os.path.exists(part):
        open(part, "wb").close()  # nothing to download; the empty part is verified below
    digest = None
    fetched, resumed, last_error = 0, [], None
    for _attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > size:
            _unlink(part)
            have = 0
        if digest is None or digest.size != have:
            digest = _digest_of(part, have)
        if have == size:
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416:
                    _unlink(part)
                    raise IntegrityError(f"{field}: {url} is shorter than the manifest's {size} bytes")
                if resp.status_code == 404:
                    raise ReleaseError(f"{field}: {url} is not in the repository (404)")
                if resp.status_code not in (200, 206):
                    raise ReleaseError(f"{field}: {url} answered HTTP {resp.status_code}")
                if resp.status_code == 200 or not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    have, digest = 0, Digest()  # the server sent the whole file: start over
                elif have:
                    resumed.append(have)
                try:
                    with open(part, "r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        for data in resp.iter_content(min(chunk, READ)):
                            if digest.size + len(data) > size:
                                _unlink(part)
                                raise IntegrityError(f"{field}: {url} is longer than the manifest's {size} bytes")
                            out.write(data)
                            digest.update(data)
                            fetched += len(data)
                except requests.RequestException:
                    raise  # a network cut (requests' errors are OSErrors too): handled below
                except OSError as exc:
                    _unlink(part)
                    raise disk_error(exc, part) from None
        except requests.RequestException as exc:
            last_error = exc  # a cut: the part file keeps what arrived, the next attempt resumes
            time.sleep(min(0.5 * (_attempt + 1), 5))
            continue
        if digest.size >= size:
            break
        last_error = f"the server closed after {digest.size} of {size} bytes"
    else:
        raise ReleaseError(f"{field}: download from {url} failed after {retries + 1} attempts: {last_error}")
    try:
        compare(expected, digest.result(), field)
    except ReleaseError:
        _unlink(part)  # never keep (or resume from) bytes that do not match
        raise
    with open(part, "rb") as handle:  # on disk before the caller renames it live (power cuts)
        os.fsync(handle.fileno())
    return {"url": url, "fetched": fetched, "resumed_from": resumed}


def _digest_of(path, length):
    digest = Digest()
    if length:
        with open(path, "rb") as handle:
            while True:
                data = handle.read(CHUNK)
                if not data:
                    break
                digest.update(data)
    return digest


# --------------------------------------------------------------------------- where kiosks and Pis find repos


def repo_url(inventory, campus, pi_id, vlan=None):
    """
    The base URL of a Pi's repository (ends with ``/kiosk-releases/``): the
    Pi's ``repo_url`` from the inventory, else its source address on ``vlan``
    (the kiosk's VLAN, so the download stays on the LAN segment), else its
    first source address, on the campus ``repo_port``. ``None`` when the Pi
    has no address in the inventory.
    """
    spec = inventory["campuses"][campus]
    pi = spec["pis"][pi_id]
    if pi.get("repo_url"):
        return pi["repo_url"]
    sources = {name: v["source"] for name, v in pi["vlans"].items() if v.get("source")}
    address = sources.get(vlan) or next((sources[n] for n in sorted(sources)), None)
    if address is None:
        return None
    return f"http://{address}:{spec['repo_port']}{REPO_PREFIX}"


def kiosk_repo_urls(inventory, campus, kiosk_id, home_pi):
    """The kiosk's campus repos in the order it tries them: its home Pi first, then the others."""
    spec = inventory["campuses"][campus]
    if kiosk_id not in spec["kiosks"]:
        raise ReleaseError(f"kiosk: {kiosk_id!r} is not a kiosk of campus {campus}")
    if home_pi not in spec["pis"]:
        raise ReleaseError(f"home_pi: {home_pi!r} is not a Pi of campus {campus}")
    vlan = spec["kiosks"][kiosk_id]["vlan"]
    order = [home_pi] + sorted(p for p in spec["pis"] if p != home_pi)
    urls = [(pi, repo_url(inventory, campus, pi, vlan)) for pi in order]
    urls = [(pi, url) for pi, url in urls if url]
    if not urls:
        raise ReleaseError(f"campuses.{campus}.pis: no Pi has a repo_url or a source address")
    return urls


def file_url(base, name, version, file_name):
    return f"{base.rstrip('/')}/{name}/{version}/{file_name}"


# --------------------------------------------------------------------------- rollouts


def plan_rings(campuses, canary=None, rings=None):
    """
    The order a rollout visits campuses: ``rings`` (list of lists, or
    ``"east;west,north"``) as given, or the ``canary`` campus alone and then
    the rest, or every campus in one ring.
    """
    campuses = list(campuses)
    if not campuses:
        raise ReleaseError("campuses: no campus to roll out to")
    if rings is not None and canary is not None:
        raise ReleaseError("rings/canary: give one or the other")
    if rings is not None:
        if isinstance(rings, str):
            rings = [[c.strip() for c in ring.split(",") if c.strip()] for ring in rings.split(";")]
        if not isinstance(rings, list) or not all(isinstance(r, list) and r for r in rings):
            raise ReleaseError(f"rings: expected campus lists like 'east;west,north', got {rings!r}")
        flat = [c for ring in rings for c in ring]
        unknown = [c for c in flat if c not in campuses]
        if unknown:
            raise ReleaseError(f"rings: unknown campus {', '.join(map(str, unknown))}")
        dup = sorted({c for c in flat if flat.count(c) > 1})
        if dup:
            raise ReleaseError(f"rings: campus {', '.join(dup)} appears twice")
        return rings
    if canary is not None:
        if canary not in campuses:
            raise ReleaseError(f"canary: {canary!r} is not one of {', '.join(campuses)}")
        rest = [c for c in campuses if c != canary]
        return [[canary]] + ([rest] if rest else [])
    return [campuses]


def check_share(value, field="max_error_share"):
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ReleaseError(f"{field}: {value!r} is not a number") from None
    if isinstance(value, bool) or not 0.0 <= share <= 1.0:
        raise ReleaseError(f"{field}: {value!r} is outside 0-1")
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


def drift(pin, installed):
    """Kiosks whose installed version is not the campus pin: ``{kiosk: installed or None}``."""
    if pin is None:
        return {}
    want = parse_version(pin)
    return {k: v for k, v in sorted(installed.items())
            if v is None or not VERSION.match(str(v)) or parse_version(v) != want}
