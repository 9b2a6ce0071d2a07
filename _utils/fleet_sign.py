"""
Signatures of the release path: the master signs manifests and campus pins
with its Ed25519 key; Pis and kiosks verify them with the public keys in
pillar ``kiosk_release:verify_key`` (a list, for rotation). One function,
:func:`verify`, checks every signed document; :func:`verify_pin` and
:func:`verify_index` add what a pin must hold besides its signature.

Every refusal raises :class:`fleet_release.SignatureError` naming the field;
callers tell a refusal from a broken download by class, never by message.
Key material never appears in a message.
"""

import base64
import json
import stat

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_release
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_release

# seconds a pin's serial may run ahead of its signing time (serials follow the clock)
MAX_SERIAL_AHEAD = 86400
VERIFY_KEY_FIELD = "kiosk_release:verify_key"
SIGNING_KEY_FIELD = "kiosk_release.signing_key"
UNSIGNED = "refusing to work unsigned"



def canonical(doc):
    """The bytes a signature covers: the document without ``signature``, sorted keys, no spaces."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - salt 3007 depends on cryptography
        raise fleet_release.SignatureError("signature: the cryptography package is not installed") from None
    return serialization, ed25519


def _private_key(private_key_pem, field=SIGNING_KEY_FIELD):
    serialization, ed25519 = _crypto()
    if not isinstance(private_key_pem, (str, bytes)):
        raise fleet_release.SignatureError(f"{field}: expected an Ed25519 private key in PEM, got {type(private_key_pem).__name__}")
    try:
        key = serialization.load_pem_private_key(_bytes(private_key_pem), password=None)
    except (ValueError, TypeError):  # the exception text could quote key material: not shown
        raise fleet_release.SignatureError(f"{field}: not a PEM private key (unencrypted PKCS#8 expected)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise fleet_release.SignatureError(f"{field}: expected an Ed25519 private key")
    return key


def new_key_pair():
    """A fresh Ed25519 key pair: ``(private PEM bytes, public PEM str)``."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, _public_pem(key)


def _public_pem(private_key):
    serialization, _ = _crypto()
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_of(private_pem, field=SIGNING_KEY_FIELD):
    """The public PEM of an Ed25519 private key PEM; :class:`fleet_release.SignatureError` naming ``field`` otherwise."""
    return _public_pem(_private_key(private_pem, field))


def check_key_mode(mode, field=SIGNING_KEY_FIELD):
    """A private key readable by group or others is refused (the master runs as root; Jenkins must not read it)."""
    if stat.S_IMODE(mode) & 0o077:
        raise fleet_release.SignatureError(
            f"{field}: mode {stat.S_IMODE(mode):04o} lets others read the private key (chmod 600)")


def verify_keys(value, field=VERIFY_KEY_FIELD):
    """
    The Ed25519 public keys in ``value`` (pillar ``kiosk_release:verify_key``:
    one PEM string or a list of them, for rotation), loaded. None or an empty
    list means the minion cannot verify anything: :class:`fleet_release.SignatureError`.
    """
    serialization, ed25519 = _crypto()
    if value is None or value == "" or value == []:
        raise fleet_release.SignatureError(f"{field}: missing from pillar (the master's Ed25519 public key, PEM, or a list); "
                             f"{UNSIGNED}")
    items = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(items, (list, tuple)):
        raise fleet_release.SignatureError(f"{field}: expected a PEM public key or a list of them, got {type(value).__name__}")
    keys = []
    for i, item in enumerate(items):
        where = field if items is not value else f"{field}[{i}]"
        if not isinstance(item, (str, bytes)):
            raise fleet_release.SignatureError(f"{where}: expected a PEM public key, got {type(item).__name__}")
        try:
            key = serialization.load_pem_public_key(_bytes(item))
        except (ValueError, TypeError):
            raise fleet_release.SignatureError(f"{where}: not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise fleet_release.SignatureError(f"{where}: expected an Ed25519 public key")
        keys.append(key)
    return keys


def sign(doc, private_key_pem, field=SIGNING_KEY_FIELD):
    """Return ``doc`` with ``signature: {"alg": "ed25519", "value": <base64>}`` over :func:`canonical`."""
    if not isinstance(doc, dict):
        raise fleet_release.ReleaseError(f"document: expected a mapping to sign, got {type(doc).__name__}")
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
    :func:`verify_keys`). Anything else raises :class:`fleet_release.SignatureError`
    naming ``<field>.signature`` (or the key field). Returns ``doc``.
    """
    from cryptography.exceptions import InvalidSignature

    _, ed25519 = _crypto()
    if not (isinstance(keys, (list, tuple)) and keys and all(isinstance(k, ed25519.Ed25519PublicKey) for k in keys)):
        keys = verify_keys(keys)
    if not isinstance(doc, dict):
        raise fleet_release.SignatureError(f"{field}: expected a signed JSON object, got {type(doc).__name__}")
    sig = doc.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519" or not isinstance(sig.get("value"), str):
        raise fleet_release.SignatureError(f"{field}.signature: missing (the fleet accepts signed documents only)")
    try:
        raw = base64.b64decode(sig["value"], validate=True)
    except ValueError:
        raise fleet_release.SignatureError(f"{field}.signature: not base64") from None
    body = canonical(doc)
    for key in keys:
        try:
            key.verify(raw, body)
            return doc
        except InvalidSignature:
            continue
    raise fleet_release.SignatureError(f"{field}.signature: does not match (tampered, or signed by a key not in "
                         f"{VERIFY_KEY_FIELD})")


def verify_signature(doc, public_key_pem):
    """A manifest signed by ``public_key_pem`` (or a list of keys): :func:`verify` with field ``manifest``."""
    return verify(doc, public_key_pem, "manifest")


def sign_pin(name, campus, version, serial, private_key_pem, signed_at=None):
    return sign(fleet_release.build_pin(name, campus, version, serial, signed_at), private_key_pem)


def verify_pin(pin, keys, name, campus, field="pin"):
    """
    A campus pin a Pi or kiosk may act on: signed by one of ``keys``
    (:func:`verify`), of release ``name``, for ``campus`` (the verifier's
    own, from pillar), its serial at most :data:`MAX_SERIAL_AHEAD` seconds
    ahead of its signing time (a forged or runaway serial would outrank
    every later pin). Raises :class:`fleet_release.SignatureError`; returns ``pin``.
    """
    if isinstance(pin, str):  # from the CLI
        try:
            pin = json.loads(pin)
        except ValueError:
            raise fleet_release.SignatureError(f"{field}: not JSON") from None
    if not isinstance(pin, dict):
        raise fleet_release.SignatureError(f"{field}: expected a signed pin object, got {type(pin).__name__}")
    verify(pin, keys, field)
    if pin.get("kind") != fleet_release.PIN_KIND:
        raise fleet_release.SignatureError(f"{field}.kind: {pin.get('kind')!r} is not a pin")
    if pin.get("name") != name:
        raise fleet_release.SignatureError(f"{field}.name: {pin.get('name')!r} is not release {name!r}")
    if pin.get("campus") != campus:
        raise fleet_release.SignatureError(f"{field}.campus: {pin.get('campus')!r} is not this minion's campus {campus!r}")
    for key in ("serial", "signed_at"):
        value = pin.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fleet_release.SignatureError(f"{field}.{key}: {value!r} is not a whole number >= 0")
    if pin.get("version") is not None:
        try:
            fleet_release.check_version(pin["version"], f"{field}.version")
        except fleet_release.ReleaseError as exc:
            raise fleet_release.SignatureError(str(exc)) from None
    if pin["serial"] > pin["signed_at"] + MAX_SERIAL_AHEAD:
        raise fleet_release.SignatureError(f"{field}.serial: {pin['serial']} is more than {MAX_SERIAL_AHEAD} s ahead of "
                             f"its signing time {pin['signed_at']}")
    return pin


def _bytes(value):
    return value.encode() if isinstance(value, str) else value


def load_manifest(raw, keys, name=None, version=None, source="manifest"):
    """
    A manifest from its raw bytes: JSON, signed by one of ``keys``, then
    checked field by field (signature first: garbage is refused as unsigned
    before anything else of it is looked at).
    """
    try:
        doc = json.loads(raw)
    except ValueError:
        raise fleet_release.ReleaseError(f"manifest: {source} is not JSON") from None
    verify(doc, keys, "manifest")
    return fleet_release.validate_manifest(doc, name=name, version=version)


def verify_index(doc, name, keys, campus, field="index"):
    """
    A Pi's index as a kiosk may use it: well-formed (:func:`fleet_release.validate_index`)
    and its pin, if any, signed for this ``campus`` (:func:`verify_pin`,
    the same signature check as manifests). Returns ``doc``.
    """
    fleet_release.validate_index(doc, name, field)
    if doc.get("pin") is not None:
        verify_pin(doc["pin"], keys, name, campus, f"{field}.pin")
    return doc
