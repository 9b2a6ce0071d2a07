"""
Keys and connections of multi-master kiosks: every kiosk is a minion of all
its campus's Pi masters at once (Salt's hot multi-master), so those masters
share one key pair and each accepts exactly the ids the inventory places on
its campus.

- The campus master key pair (:func:`new_master_key_pair`, Salt's own file
  format) is made on the top master and sent to each Pi sealed to that Pi's
  key (:func:`seal`; the Pi opens it with its own private key, :func:`unseal`)
  and written there by :func:`write_master_key_pair`. A kiosk keeps one
  ``minion_master.pub`` for all its masters, so they must share the pair.
- Acceptance: each Pi master's ``autosign_file`` lists the campus's ids
  (:func:`autosign_ids`, :func:`autosign_text`); never ``auto_accept``. It is
  trust on first use per Pi: the first key presented for a listed id is
  accepted, and Salt then refuses any other key for that id.
- The kiosk's minion config (:func:`kiosk_minion_config`): the one place the
  multi-master settings are chosen, each with its reason.

Errors raise :class:`CampusKeyError` naming the field; no message ever holds
key material.
"""

import base64
import hashlib
import os
import re

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_inventory, fleet_state
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_inventory
    import fleet_state

MASTER_PEM = "master.pem"
MASTER_PUB = "master.pub"
PREVIOUS = ".previous"
MIN_BITS = 2048  # salt-key --keysize refuses less (salt/utils/parsers.py)
MAX_BITS = 8192
# the sealed envelope: version, RSA-OAEP-wrapped AES key, GCM nonce, ciphertext
SEAL_PREFIX = "kfseal1"
_B64 = re.compile(r"^[A-Za-z0-9_-]+={0,2}\Z")
_AAD = SEAL_PREFIX.encode()


class CampusKeyError(fleet_fields.FleetError):
    """A campus key, envelope or multi-master setting is invalid; the message names the field."""


# --------------------------------------------------------------------------- keys


def _crypto():
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    return hashes, serialization, padding, rsa


def _pem_bytes(value, field):
    if isinstance(value, str):
        value = value.encode("utf-8") if fleet_fields.bad_character(value) is None else None
    if not isinstance(value, bytes) or not value:
        raise CampusKeyError(f"{field}: expected a PEM key (text or bytes)")
    return value


def _public_key(public_pem, field):
    _, serialization, _, rsa = _crypto()
    raw = _pem_bytes(public_pem, field)
    if b"PRIVATE KEY" in raw:
        # never echo it: a private key pasted where a public one belongs
        raise CampusKeyError(f"{field}: a private key where a public key belongs")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        raise CampusKeyError(f"{field}: not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_BITS:
        raise CampusKeyError(f"{field}: expected an RSA public key of at least {MIN_BITS} bits")
    return key


def _private_key(private_pem, field):
    _, serialization, _, rsa = _crypto()
    raw = _pem_bytes(private_pem, field)
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):  # the exception text could quote key material: not shown
        raise CampusKeyError(f"{field}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_BITS:
        raise CampusKeyError(f"{field}: expected an RSA private key of at least {MIN_BITS} bits")
    return key


def _public_pem(key):
    """The public PEM (SubjectPublicKeyInfo) of an RSA private key."""
    _, serialization, _, _ = _crypto()
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_master_key_pair(bits=2048):
    """
    A fresh RSA key pair in the format of Salt's ``gen_keys``: ``(private PEM
    bytes, public PEM bytes)``, private PKCS#1 ("BEGIN RSA PRIVATE KEY"),
    public SubjectPublicKeyInfo ("BEGIN PUBLIC KEY"), exponent 65537.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS or bits % 8:
        raise CampusKeyError(f"bits: {fleet_fields.shown(bits)} is not a key size ({MIN_BITS}-{MAX_BITS}, a multiple of 8)")
    _, serialization, _, rsa = _crypto()
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return private, _public_pem(key)


def public_key_of(private_pem, field="private_pem"):
    """The public PEM (bytes, SubjectPublicKeyInfo) of an RSA private key PEM."""
    return _public_pem(_private_key(private_pem, field))


def same_public_key(public_a, public_b, field="public_pem"):
    """True when two public key PEMs hold the same RSA key (PEM wrapping and line endings aside)."""
    a = _public_key(public_a, field).public_numbers()
    b = _public_key(public_b, field).public_numbers()
    return (a.n, a.e) == (b.n, b.e)


def fingerprint(public_pem):
    """
    The key's fingerprint as ``salt-key -f`` prints it with ``hash_type:
    sha256`` (``salt.utils.crypt.pem_finger``): SHA-256 of the PEM body lines
    (armor dropped, each line ending in a newline), hex pairs joined by ``:``.
    """
    raw = _pem_bytes(public_pem, "public_pem")
    _public_key(raw, "public_pem")
    lines = [line for line in raw.replace(b"\r\n", b"\n").split(b"\n") if line.strip()]
    body = b"".join(line + b"\n" for line in lines[1:-1])
    digest = hashlib.sha256(body).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def read_bytes(path, field="path"):
    """The bytes of a key file, None when it does not exist; :class:`CampusKeyError` naming ``field`` otherwise."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CampusKeyError(f"{field}: cannot read {path}: {exc.strerror}") from None


def shown_fingerprint(raw):
    """For reports: the fingerprint of a public key file's bytes, None for no file, "invalid key" for anything else."""
    if raw is None:
        return None
    try:
        return fingerprint(raw)
    except CampusKeyError:
        return "invalid key"


def write_master_key_pair(pki_dir, private_pem, public_pem):
    """
    Install a master key pair in ``pki_dir`` (a Pi master's
    ``/etc/salt/pki/master``): ``master.pem`` 0400 and ``master.pub`` 0644,
    each written atomically. The private key must match the public one. When
    the pair changes, the old files are kept as ``master.pem.previous`` /
    ``master.pub.previous``. Every file takes the owner and group of
    ``pki_dir`` (a packaged salt-master may run as user ``salt``). Returns
    True when anything changed; writes nothing when the pair is already there.
    """
    if not isinstance(pki_dir, str) or not os.path.isabs(pki_dir) or "\0" in pki_dir:
        raise CampusKeyError(f"pki_dir: {fleet_fields.shown(pki_dir)} is not an absolute path")
    private_key = _private_key(private_pem, "private_pem")
    public_raw = _pem_bytes(public_pem, "public_pem")
    if not same_public_key(_public_pem(private_key), public_raw):
        raise CampusKeyError("public_pem: does not match the private key")
    private_text = _pem_bytes(private_pem, "private_pem").decode("ascii")
    public_text = public_raw.decode("ascii")
    os.makedirs(pki_dir, mode=0o700, exist_ok=True)
    pem_path = os.path.join(pki_dir, MASTER_PEM)
    pub_path = os.path.join(pki_dir, MASTER_PUB)
    old_pem, old_pub = read_bytes(pem_path, "pki_dir"), read_bytes(pub_path, "pki_dir")
    if old_pem == private_text.encode() and old_pub == public_text.encode():
        return False
    try:
        if old_pem is not None and old_pem != private_text.encode():
            fleet_state.write_atomic(pem_path + PREVIOUS, old_pem.decode("ascii", "replace"), 0o400)
        if old_pub is not None and old_pub != public_text.encode():
            fleet_state.write_atomic(pub_path + PREVIOUS, old_pub.decode("ascii", "replace"), 0o644)
        # the public half first: a master that starts in between finds a mismatched pair and
        # refuses, never an old public key that kiosks would pin for the new private one
        fleet_state.write_atomic(pub_path, public_text, 0o644)
        fleet_state.write_atomic(pem_path, private_text, 0o400)
        _own_like_dir(pki_dir, [pub_path, pem_path, pub_path + PREVIOUS, pem_path + PREVIOUS])
    except (OSError, fleet_state.StateError) as exc:
        raise CampusKeyError(f"pki_dir: cannot write the key pair in {pki_dir}: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return True


def _own_like_dir(directory, paths):
    """chown ``paths`` (those that exist) to the owner of ``directory``; only root can, and only root needs to."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    owner = os.stat(directory)
    for path in paths:
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            continue
        if (current.st_uid, current.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


# --------------------------------------------------------------------------- sealed envelopes


def _b64(data):
    return base64.urlsafe_b64encode(data).decode("ascii")


def seal(secret, recipient_public_pem):
    """
    Encrypt ``secret`` (bytes) so that only the holder of the private key of
    ``recipient_public_pem`` (RSA) can read it: a fresh AES-256-GCM key
    encrypts the secret, RSA-OAEP-SHA256 wraps that key. Returns one line of
    text ``kfseal1.<wrapped key>.<nonce>.<ciphertext>`` (URL-safe base64).
    """
    if not isinstance(secret, bytes) or not secret:
        raise CampusKeyError("secret: expected non-empty bytes")
    hashes, _, padding, _ = _crypto()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    recipient = _public_key(recipient_public_pem, "recipient_public_pem")
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    wrapped = recipient.encrypt(key, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                                  label=None))
    ciphertext = AESGCM(key).encrypt(nonce, secret, _AAD + wrapped)
    return ".".join((SEAL_PREFIX, _b64(wrapped), _b64(nonce), _b64(ciphertext)))


def unseal(envelope, private_pem):
    """
    Open an envelope made by :func:`seal` with the recipient's private key
    PEM; returns the secret bytes. Anything else (another key, a changed
    byte, a truncated or foreign envelope) raises :class:`CampusKeyError`:
    nothing is returned that was not sealed to this key.
    """
    hashes, _, padding, _ = _crypto()
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(envelope, str):
        raise CampusKeyError(f"sealed: expected the sealed text, got {type(envelope).__name__}")
    parts = envelope.strip().split(".")
    if len(parts) != 4 or parts[0] != SEAL_PREFIX or not all(_B64.match(p) for p in parts[1:]):
        raise CampusKeyError(f"sealed: not a sealed envelope ({SEAL_PREFIX}.<key>.<nonce>.<data>)")
    private = _private_key(private_pem, "private_pem")
    try:
        wrapped, nonce, ciphertext = (base64.urlsafe_b64decode(p) for p in parts[1:])
    except ValueError:
        raise CampusKeyError("sealed: not valid base64") from None
    if len(nonce) != 12 or len(wrapped) != (private.key_size + 7) // 8:
        raise CampusKeyError("sealed: not sealed to this key (sizes differ)")
    try:
        key = private.decrypt(wrapped, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                                    label=None))
        return AESGCM(key).decrypt(nonce, ciphertext, _AAD + wrapped)
    except (ValueError, InvalidTag):
        raise CampusKeyError("sealed: cannot be opened with this key (another recipient, or altered)") from None


# --------------------------------------------------------------------------- acceptance


def _campus(inventory, campus):
    if not isinstance(inventory, dict) or not isinstance(inventory.get("campuses"), dict):
        raise CampusKeyError("inventory: expected a validated inventory (fleet_inventory.validate)")
    if not isinstance(campus, str) or campus not in inventory["campuses"]:
        raise CampusKeyError(f"campus: {fleet_fields.shown(campus)} is not a campus of the inventory")
    return inventory["campuses"][campus]


def autosign_ids(inventory, campus):
    """
    The minion ids a Pi master of ``campus`` may accept: the campus's Pis and
    kiosks, sorted. Nothing of another campus, nothing the inventory does
    not name.
    """
    spec = _campus(inventory, campus)
    return sorted(set(spec["pis"]) | set(spec["kiosks"]))


def autosign_text(ids):
    """
    The text of a Pi master's ``autosign_file``: one id a line. Salt matches
    each line as a glob and then as a regular expression
    (``salt.utils.stringutils.expr_match``), so the dots of an id are escaped:
    ``kiosk.1`` must not also accept ``kiosk-1``. Ids are fleet names
    (letters, digits, ``. _ -``), so no other character is special.
    """
    if not isinstance(ids, (list, tuple)):
        raise CampusKeyError(f"ids: expected a list of minion ids, got {type(ids).__name__}")
    lines = ["# Ids this master accepts on first sign-in (the campus's Pis and kiosks); rendered from the",
             "# inventory by the state kiosk_fleet.pi_master. Edits here are overwritten."]
    for n, minion_id in enumerate(ids):
        if not isinstance(minion_id, str) or not fleet_fields.NAME.match(minion_id):
            raise CampusKeyError(f"ids[{n}]: {fleet_fields.shown(minion_id)} is not a minion id")
    lines.extend(minion_id.replace(".", "\\.") for minion_id in sorted(set(ids)))
    return "\n".join(lines) + "\n"


def top_autosign_ids(inventory):
    """The ids the top master may accept: every Pi of every campus (their syndics and minions), sorted."""
    if not isinstance(inventory, dict) or not isinstance(inventory.get("campuses"), dict):
        raise CampusKeyError("inventory: expected a validated inventory (fleet_inventory.validate)")
    return sorted({pi for spec in inventory["campuses"].values() for pi in spec["pis"]})


KEY_STATES = ("accepted", "pending", "rejected", "denied")  # kiosk_fleet.master_keys, Salt's pki folders


def _answer(pi, answer):
    """A Pi's ``kiosk_fleet.master_keys`` return, or a problem text naming the Pi."""
    if not isinstance(answer, dict):
        return None, f"{pi}: answered {type(answer).__name__}, not the key listing"
    master = answer.get("master")
    if master is not None and not isinstance(master, str):
        return None, f"{pi}: master fingerprint is not text"
    for state in KEY_STATES:
        keys = answer.get(state, {})
        if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            return None, f"{pi}: {state} is not a mapping of id to fingerprint"
    return answer, None


def keys_report(inventory, campus, campus_fingerprint, answers, silent=(), failed=None):
    """
    Check one campus's Pi masters against the inventory: each should hold the
    campus key (``campus_fingerprint``) and have accepted every kiosk of the
    campus under one key, and nothing the campus does not own. ``answers``
    maps Pi id -> its ``kiosk_fleet.master_keys`` return; ``silent`` lists
    Pis that did not answer, ``failed`` maps Pis that answered an error to
    its text (campus Pis in none of these count as silent).

    Returns ``{"result", "pis": {pi: {"master", "matches"}}, "kiosks":
    {"everywhere", "missing": {kiosk: [pis]}, "differing": {kiosk: {pi: fp}}},
    "unexpected": {pi: [ids]}, "silent", "failed": {pi: reason},
    "problems"}``; ``result`` is True when there is no problem.
    """
    spec = _campus(inventory, campus)
    if campus_fingerprint is not None and not isinstance(campus_fingerprint, str):
        raise CampusKeyError(f"campus_fingerprint: {fleet_fields.shown(campus_fingerprint)} is not a fingerprint")
    if not isinstance(answers, dict):
        raise CampusKeyError(f"answers: expected a mapping of Pi id to key listing, got {type(answers).__name__}")
    if isinstance(silent, str) or not isinstance(silent, (list, tuple, set)):
        raise CampusKeyError(f"silent: expected a list of Pi ids, got {type(silent).__name__}")
    failed = {} if failed is None else failed
    if not isinstance(failed, dict):
        raise CampusKeyError(f"failed: expected a mapping of Pi id to reason, got {type(failed).__name__}")
    failed = {str(pi): str(reason) for pi, reason in failed.items()}
    allowed = set(autosign_ids(inventory, campus))
    problems, pis, unexpected, listings = [], {}, {}, {}
    for pi in sorted(answers, key=str):
        if pi not in spec["pis"]:
            problems.append(f"{pi}: not a Pi of campus {campus}")
            continue
        answer, problem = _answer(pi, answers[pi])
        if problem:
            problems.append(problem)
            continue
        matches = campus_fingerprint is not None and answer.get("master") == campus_fingerprint
        pis[pi] = {"master": answer.get("master"), "matches": matches}
        if not matches:
            problems.append(f"{pi}: master key {answer.get('master') or 'missing'} is not the campus key")
        extra = sorted(set(answer.get("accepted", {})) - allowed)
        if extra:
            unexpected[pi] = extra
            problems.append(f"{pi}: accepted ids the inventory does not place on {campus}: {', '.join(extra)}")
        listings[pi] = answer.get("accepted", {})
    problems.extend(f"{pi}: {failed[pi]}" for pi in sorted(failed))
    quiet = sorted(({p for p in silent if isinstance(p, str)} | (set(spec["pis"]) - set(answers))) - set(failed))
    problems.extend(f"{pi}: did not answer" for pi in quiet)
    everywhere, missing, differing = [], {}, {}
    for kiosk in sorted(spec["kiosks"]):
        without = [pi for pi in sorted(listings) if kiosk not in listings[pi]]
        prints = {pi: listings[pi][kiosk] for pi in sorted(listings) if kiosk in listings[pi]}
        if without:
            missing[kiosk] = without
            problems.append(f"{kiosk}: not accepted on {', '.join(without)}")
        if len(set(prints.values())) > 1:
            differing[kiosk] = prints
            problems.append(f"{kiosk}: accepted under different keys on {', '.join(prints)}")
        elif listings and not without:
            everywhere.append(kiosk)
    return {
        "result": not problems,
        "pis": pis,
        "kiosks": {"everywhere": everywhere, "missing": missing, "differing": differing},
        "unexpected": unexpected,
        "silent": quiet,
        "failed": failed,
        "problems": problems,
    }


# --------------------------------------------------------------------------- kiosk connections


def kiosk_masters(inventory, kiosk_id):
    """
    The ``master`` list of a kiosk: every Pi of its campus, sorted by Pi id,
    as ``host:port``. A Pi's own ``master`` (``host:port``) when the
    inventory sets it, else the Pi's ``source`` address on the kiosk's VLAN
    and the campus's ``master_port``.
    """
    if not isinstance(kiosk_id, str):
        raise CampusKeyError(f"kiosk_id: {fleet_fields.shown(kiosk_id)} is not a kiosk id")
    if not isinstance(inventory, dict) or not isinstance(inventory.get("campuses"), dict):
        raise CampusKeyError("inventory: expected a validated inventory (fleet_inventory.validate)")
    try:
        campus = fleet_inventory.campus_of(inventory, kiosk_id)
    except fleet_inventory.InventoryError:
        campus = None
    spec = inventory["campuses"].get(campus) or {}
    if kiosk_id not in spec.get("kiosks", {}):
        raise CampusKeyError(f"kiosk_id: {kiosk_id!r} is not a kiosk of the inventory")
    vlan = spec["kiosks"][kiosk_id]["vlan"]
    port = spec.get("master_port", fleet_inventory.DEFAULT_MASTER_PORT)
    masters = []
    for pi_id in sorted(spec["pis"]):
        pi = spec["pis"][pi_id]
        if pi.get("master"):
            masters.append(pi["master"])
            continue
        source = pi.get("vlans", {}).get(vlan, {}).get("source")
        if not source:
            raise CampusKeyError(f"campuses.{campus}.pis.{pi_id}.master: not set, and the Pi has no source "
                                 f"address on VLAN {vlan} of {kiosk_id}")
        masters.append(f"{source}:{port}")
    # Salt 3007 routes a multi-master minion's returns and disconnect events by master host alone
    # (salt/minion.py: the return tag and job_master carry opts["master"] without its port), so two
    # Pis on one host would each get every return and both drop when one stops
    hosts = {}
    for pi_id, master in zip(sorted(spec["pis"]), masters):
        host = master.rsplit(":", 1)[0]
        if host in hosts:
            raise CampusKeyError(f"campuses.{campus}.pis.{pi_id}.master: {master} is on the same host as "
                                 f"{hosts[host]}'s; each Pi of a campus needs its own address")
        hosts[host] = pi_id
    return masters


# One place for the kiosk's multi-master settings; each value was chosen from
# Salt 3007.15's source (salt/minion.py, salt/crypt.py, salt/transport/zeromq.py).
KIOSK_MINION_SETTINGS = {
    # hot multi-master: MinionManager runs one connection per Pi, all live, sharing one jid
    # queue, so a job that reaches the kiosk through several Pis runs once; "failover" notices a
    # dead master only through status.master and talks to one Pi at a time
    "master_type": "str",
    # each Pi connection gets one master (MinionManager), so Salt ignores shuffling and warns
    "random_master": False,
    # hourly, never 0: Salt schedules status.master at start when this is > 0 and, whatever it is,
    # again after every reconnect with `seconds: master_alive_interval`, and 0 there means every
    # schedule loop: one forked process per second on the kiosk for as long as it runs (about
    # 1,400 runs per kiosk in 20 minutes after a Pi restart, measured on 3007.15). The check adds
    # nothing: ZeroMQ's monitor already fires the disconnect and reconnects each Pi by itself.
    # status.master counts connections to this minion's publish_port, so that must be the Pis'
    # real one (kiosk_minion_config: the campus's publish_port), never Salt's 4506 "port the master
    # reports" sentinel: with it every live Pi looks gone and the kiosk tears its connections down
    # over and over; a Pi it does call gone is retried forever (master_tries -1)
    "master_alive_interval": 3600,
    # retry a Pi forever in its own connection: one down at boot joins when it comes back
    "master_tries": -1,
    # a Pi that lost power leaves a half-open connection: probes after 60 s idle, 3 x 20 s,
    # notice it in ~2 min (OS default ~2 h) so ZeroMQ reconnects once the Pi is back
    "tcp_keepalive": True,
    "tcp_keepalive_idle": 60,
    "tcp_keepalive_cnt": 3,
    "tcp_keepalive_intvl": 20,
    # ZeroMQ reconnect: a random first delay of 1-11 s, so a rebooted Pi's kiosks do not all sign
    # in in the same second
    "recon_default": 1000,
    "recon_max": 10000,
    "recon_randomize": True,
    # sign-in: Salt's defaults (5 s x 7 tries per attempt); a dead Pi only delays its own connection
    "auth_timeout": 5,
    "auth_tries": 7,
    # while a Pi has not accepted the key (not in its campus, or not yet rendered), retry after
    # 10 s, doubling up to 60 s: a kiosk presented to the wrong campus does not hammer its Pis
    "acceptance_wait_time": 10,
    "acceptance_wait_time_max": 60,
    # no minion_ping: it only restarts the minion (all Pis) with auth_safemode, and each ping is an
    # event per Pi that the syndics forward up
    "ping_interval": 0,
}


def kiosk_minion_config(inventory, kiosk_id, **overrides):
    """
    The minion settings of a multi-master kiosk (a ``minion.d`` file): the
    ``master`` list of :func:`kiosk_masters`, the campus's ``publish_port``
    (every Pi of a campus publishes on it) and
    :data:`KIOSK_MINION_SETTINGS`. ``overrides`` may change any of those
    settings (tests shorten waits), keeping its type; ``master`` is the
    inventory's.
    """
    config = {"master": kiosk_masters(inventory, kiosk_id)}
    campus = fleet_inventory.campus_of(inventory, kiosk_id)
    # one publish port for every Pi of the campus: Salt's status.master checks this one
    config["publish_port"] = inventory["campuses"][campus].get("publish_port", fleet_inventory.DEFAULT_PUBLISH_PORT)
    config.update(KIOSK_MINION_SETTINGS)
    for key, value in overrides.items():
        if key not in KIOSK_MINION_SETTINGS:
            raise CampusKeyError(f"{key}: not a kiosk multi-master setting (known: {', '.join(sorted(KIOSK_MINION_SETTINGS))})")
        default = KIOSK_MINION_SETTINGS[key]
        if key == "master_type" and value != "str":
            raise CampusKeyError(f"master_type: {fleet_fields.shown(value)}: kiosks run hot multi-master (str)")
        if type(value) is not type(default):  # noqa: E721 - bool must not pass for int
            raise CampusKeyError(f"{key}: {fleet_fields.shown(value)} is not a {type(default).__name__}")
        config[key] = value
    return config

