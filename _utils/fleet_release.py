"""
Kiosk releases: the model shared by the master runner, the Pi and the kiosk
(``kiosk_release`` runner, ``kiosk_pkg`` module and states). Pure: no disk,
no network.

* versions: dotted numbers (``1.4.0``, ``2026.11.22``), compared numerically;
* the release manifest (name, version, files with size/md5/sha256 and, optionally,
  their content-defined chunks (``fleet_delta``), install command, created-at;
  the master signs it, see ``fleet_sign``);
* the campus pin (name, campus, version, serial, signed_at) and the Pi's
  repository index (``<repo>/<name>/index.json``): staged versions and the
  signed campus pin;
* where kiosks and Pis find the campus repositories.

Signatures live in ``fleet_sign``, downloads and disk in ``fleet_fetch``,
the Pi's repository in ``fleet_repo``, the kiosk's client in ``fleet_client``.

Every check raises :class:`ReleaseError`, whose messages name the bad field
(``manifest.files.app.zip.md5: ...``, ``version: ...``); a bad or missing
signature, or a pin that does not hold, raises :class:`SignatureError`, a
copy whose size or hashes differ :class:`IntegrityError`, a source that is
down or lacks the file :class:`SourceError` (callers tell them apart by
class, never by message: :func:`bad_copy`).
"""

import datetime as _dt
import json
import re
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

FORMAT = 1
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
PIN_KIND = "pin"
INSTALLED = "installed.json"  # <kiosk dir>/<name>/installed.json: what a kiosk runs


class ReleaseError(fleet_fields.FieldErrors):
    """A bad release request or document, a hash mismatch, a failed download."""


class IntegrityError(ReleaseError):
    """A copy whose size, md5 or sha256 is not the manifest's."""


class SignatureError(ReleaseError):
    """No verify key, a missing or bad signature, or a signed pin that does not hold."""


class SourceError(ReleaseError):
    """A source that is down, answers an HTTP error, or does not hold the file asked for."""


def bad_copy(exc):
    """
    True when ``exc`` says a source delivered a bad copy (size or hashes not
    the manifest's, or not signed by our keys): worth an alert naming the
    source. A :class:`SourceError` (down, HTTP error, missing) is not.
    """
    return isinstance(exc, (IntegrityError, SignatureError))


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
        if "chunks" in entry:
            errors.extend(chunk_errors(entry["chunks"], size, f"{field}.chunks"))
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


def chunk_errors(chunks, size, field="chunks"):
    """
    Problems of a file entry's optional ``chunks`` (``[[length, sha256 hex], ...]``
    in file order, lengths summing to ``size``): a list of messages naming
    ``<field>[i]``, empty when it holds. Old clients ignore the key.
    """
    if not isinstance(chunks, list):
        return [f"{field}: expected a list of [length, sha256] pairs, got {type(chunks).__name__}"]
    errors, total = [], 0
    for i, chunk in enumerate(chunks):
        if len(errors) >= 5:  # a broken list of thousands: the first few say enough
            return errors[:5] + [f"{field}: more errors not shown"]
        if not isinstance(chunk, (list, tuple)) or len(chunk) != 2:
            errors.append(f"{field}[{i}]: {fleet_fields.shown(chunk)} is not a [length, sha256] pair")
            continue
        length, digest = chunk
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            errors.append(f"{field}[{i}]: length {fleet_fields.shown(length)} is not a positive byte count")
        else:
            total += length
        if not isinstance(digest, str) or not HEX["sha256"].match(digest):
            errors.append(f"{field}[{i}]: {fleet_fields.shown(digest)} is not a lowercase hex sha256 digest")
    if not errors and isinstance(size, int) and not isinstance(size, bool) and total != size:
        errors.append(f"{field}: the chunk lengths sum to {total}, the file's size is {size}")
    return errors


def check_chunks(chunks, size, field="chunks"):
    """:func:`chunk_errors` as a :class:`ReleaseError`; returns ``chunks``."""
    errors = chunk_errors(chunks, size, field)
    if errors:
        raise ReleaseError(errors)
    return chunks


def manifest_size(doc):
    return sum(entry["size"] for entry in doc["files"].values())


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


def install_argv(doc, package_dir):
    """The manifest's install command with ``{dir}``, ``{name}``, ``{version}`` filled in, argument by argument."""
    values = {"dir": str(package_dir), "name": doc["name"], "version": doc["version"]}
    # one pass: a value that itself holds "{version}" is not substituted again
    return [PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in doc["install"]]


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
