"""
The campus runtime's decisions: settings, peer status documents, the leader,
clock safety and what one reconciler run does around the sweep engine
(``fleet_sweep``), and the outbox entries it leaves. Pure: no Salt, no I/O
(the ``kiosk_campus`` runner on each Pi master reads, fetches, sends).

Peers
    Every Pi master writes a signed *status* every ~20 s (``probe``) to
    ``<repo_dir>/campus/status.json``, which its nginx serves under the
    release repository (:func:`status_url`), and fetches its peers'::

        {"kind": "campus-status", "campus", "pi", "at": ISO (this Pi's clock),
         "serial": calendar serial or None, "clock": {"synced", "offset_s"},
         "sees": {pi: {"at", "synced"}},       # peers fresh in this Pi's view
         "leader": pi or None,                 # this Pi's choice, for people
         "signature": {"alg": "rsa-pss-sha256", "value": base64}}

    Signed with the campus master key pair all Pis of a campus share (the Pi
    master's ``<pki_dir>/master.pem``; checked with ``master.pub``), over
    ``fleet_sign.canonical``. Fail closed: a status that is unsigned, badly
    signed, of another campus or Pi, or *stale* (more than ``stale_s`` old
    by its own ``at``: :func:`status_age`, counted on the boot-time clock
    since the fetch, so a wall-clock step changes nothing) counts as an
    unreachable Pi.

Leader (:func:`leader`)
    The candidates are the Pis *reachable* in this Pi's view: itself, each
    peer whose fresh signed status it fetched, and each Pi such a peer's
    status lists as fresh in its own view (one hop: a Pi this Pi cannot reach
    but the others can still leads, so one broken link does not make two
    leaders). Among the candidates the Pis whose clock is synchronised come
    first (a leader on an unsynchronised clock could not shut anything down);
    the lowest id (string order) leads. A Pi that dies stops writing; its
    last ``at`` is at most one probe interval old when it dies and stale
    ``stale_s`` later, so leadership moves within ``stale_s`` + one probe
    interval (30 + 20 = 50 s with the defaults). A split campus LAN gives
    one leader per side: every action carries an idempotency key (the kiosk
    presses once per key, the top master posts each alert key once).

Clock safety (:func:`gate`)
    Pis have no battery-backed clock. A shutdown needs this Pi's own clock
    synchronised (kernel, or the clock file of tests) AND this Pi to lead;
    a wake needs a synchronised clock or one confirmed by a peer Pi whose
    own clock is synchronised (``fleet_clock.confirmed`` on the peers'
    signed ``at``, as old as one probe interval when fetched, moved on by
    the time since each was fetched: :func:`peer_clocks`). With
    neither, the run decides nothing from the calendar (no wake, no
    shutdown, no verification) and leaves a clock entry (the alert).

A run
    ``expect`` (the calendar at now) -> ``observed_states`` (this Pi's nmap
    probe + its master's connected minions) -> :func:`decide` (the engine's
    ``sweep`` under the gate) -> act -> ``settle`` -> ``verify_due`` (every Pi
    keeps its own checks; only the leader reports them) -> :func:`entries`.
    The state of the campus now decides, not what happened at 06:45: a Pi
    that boots at 07:20 wakes what should be on at 07:20.

On time (:func:`tick_plan`)
    The Pi master runs ``kiosk_campus.tick`` every few seconds: a reconcile
    on the second of a schedule transition, when the calendar's expected
    states changed, and at least every ``reconcile_s``; kiosks just due on
    (:func:`newly_due_on`) get their packets before the scan.

Every refusal raises :class:`CampusError` naming the field.
"""

import base64
import datetime as _dt
import re

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_alerts, fleet_fields, fleet_outbox, fleet_release, fleet_schedule
    from saltext_kiosk_fleet.utils import fleet_sign, fleet_sweep
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_alerts
    import fleet_fields
    import fleet_outbox
    import fleet_release
    import fleet_schedule
    import fleet_sign
    import fleet_sweep

STATUS_KIND = "campus-status"
STATUS_ALG = "rsa-pss-sha256"
STATUS_PATH = "campus/status.json"  # under the Pi's release repository (repo_dir, served by nginx)
CALENDAR_PATH = "campus/calendar.json"
CONFIG_KEY = "kiosk_campus"
# what kiosk_fleet.release_repo's nginx serves (kiosk_release_repo:repo_dir, kiosk_pkg's default)
REPO_DIR = "/srv/kiosk-releases"
# a transition further back than this is keyed by the campus day instead (a standing state)
LOOKBACK = _dt.timedelta(days=8)
MAX_STATUS_BYTES = 64 * 1024
MAX_CALENDAR_BYTES = 16 * 1024 * 1024
_UTC = _dt.timezone.utc
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")

# name: (default, kind, low, high); kind "path" is an absolute path, "num" a number, "int" a whole number
SETTINGS = {
    "dir": ("/var/lib/kiosk_fleet/campus", "path", None, None),
    "campus": (None, "name", None, None),
    "pi": (None, "name", None, None),
    "repo_dir": (REPO_DIR, "path", None, None),
    "clock_file": (None, "path?", None, None),
    "textfile_dir": (None, "path?", None, None),
    "probe_timeout_s": (2, "num", 0.1, 30),
    "probe_s": (20, "num", 1, 3600),  # the probe's interval (campus.sls writes its schedule's)
    "stale_s": (30, "num", 5, 3600),  # + the probe interval (20 s): a dead leader replaced within 50 s
    "confirm_tolerance_s": (5, "num", 0.5, 3600),
    "shutdown_delay_s": (60, "int", 0, 3600),
    "shutdown_timeout_s": (10, "int", 1, 120),
    "wake_repeat": (3, "int", 1, 20),
    "tick_s": (5, "num", 1, 60),
    "reconcile_s": (60, "num", 5, 3600),
    "scan_host_timeout_s": (5, "int", 1, 300),
    "outbox_cap": (fleet_outbox.DEFAULT_CAP, "int", 100, fleet_outbox.MAX_CAP),
}
SHUTDOWN_MESSAGE = "This kiosk is closing."


class CampusError(fleet_fields.FleetError):
    """A campus setting, status or decision input that cannot be used; the message names the field."""


# ---------------------------------------------------------------- settings


def _number(value, field, low, high, whole):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise CampusError(f"{field}: {fleet_fields.shown(value)} is not a number", field=field)
    if whole and value != int(value):
        raise CampusError(f"{field}: {fleet_fields.shown(value)} is not a whole number", field=field)
    if not low <= value <= high:
        raise CampusError(f"{field}: {fleet_fields.shown(value)} is outside {low}-{high}", field=field)
    return int(value) if whole else float(value)


def settings(conf, verify_key=None):
    """
    The ``kiosk_campus`` settings (master config, or the Pi minion's), checked,
    defaults filled (:data:`SETTINGS`); ``verify_key`` (the release verify
    keys, a PEM or a list) is required. ``campus`` and ``pi`` are required.
    """
    if conf is None:
        conf = {}
    if not isinstance(conf, dict):
        raise CampusError(f"{CONFIG_KEY}: expected a mapping, got {type(conf).__name__}", field=CONFIG_KEY)
    out = {}
    for name, (default, kind, low, high) in SETTINGS.items():
        field = f"{CONFIG_KEY}:{name}"
        value = conf.get(name, default)
        if kind == "name":
            if not isinstance(value, str) or not fleet_fields.NAME.match(value):
                raise CampusError(f"{field}: {fleet_fields.shown(value)} is not a name (required)", field=field)
        elif kind in ("path", "path?"):
            if value in (None, "") and kind == "path?":
                value = None
            elif not isinstance(value, str) or not value.startswith("/") or fleet_fields.bad_character(value):
                raise CampusError(f"{field}: {fleet_fields.shown(value)} is not an absolute path", field=field)
        else:
            value = _number(value, field, low, high, kind == "int")
        out[name] = value
    keys = verify_key if verify_key is not None else conf.get("verify_key")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) and k.strip() for k in keys):
        raise CampusError(f"{CONFIG_KEY}:verify_key: expected the release verify keys (PEM text or a list)",
                          field=f"{CONFIG_KEY}:verify_key")
    out["verify_key"] = list(keys)
    return out


# ---------------------------------------------------------------- instants


def iso(instant):
    """ISO 8601 UTC seconds (``...Z``): the form of every instant in statuses and records."""
    return fleet_sweep.iso(instant)


def instant(value, field="at"):
    """An aware datetime from an aware datetime or an ISO 8601 text with offset; CampusError naming ``field``."""
    if isinstance(value, str) and not _ISO.match(value):
        raise CampusError(f"{field}: {fleet_fields.shown(value)} is not an ISO 8601 instant", field=field)
    try:
        return fleet_sweep.parse_instant(value, field)
    except fleet_sweep.SweepError as exc:
        raise CampusError(str(exc), field=field) from None


def fresh(at, now, stale_s):
    """Whether an instant ``at`` (a status's own time) is within ``stale_s`` seconds of ``now``, either way."""
    try:
        then = instant(at)
    except CampusError:
        return False
    return abs((instant(now, "now") - then).total_seconds()) <= stale_s


# ---------------------------------------------------------------- where peers are


def status_url(inventory, campus, pi):
    """Where Pi ``pi`` serves its status: its release repository URL (``fleet_release.repo_url``) + ``campus/status.json``."""
    base = _repo(inventory, campus, pi)
    return None if base is None else base + STATUS_PATH


def calendar_url(inventory, campus, pi):
    """Where Pi ``pi`` serves a copy of its signed calendar (beside its status)."""
    base = _repo(inventory, campus, pi)
    return None if base is None else base + CALENDAR_PATH


def _repo(inventory, campus, pi):
    spec = (inventory.get("campuses") or {}).get(campus) if isinstance(inventory, dict) else None
    if not isinstance(spec, dict) or pi not in spec.get("pis", {}):
        raise CampusError(f"pi: {fleet_fields.shown(pi)} is not a Pi of campus {fleet_fields.shown(campus)}", field="pi")
    base = fleet_release.repo_url(inventory, campus, pi)
    return None if base is None else base if base.endswith("/") else base + "/"


def pis_of(inventory, campus):
    """The sorted Pi ids of ``campus`` in the calendar's inventory."""
    spec = (inventory.get("campuses") or {}).get(campus) if isinstance(inventory, dict) else None
    if not isinstance(spec, dict):
        raise CampusError(f"campus: {fleet_fields.shown(campus)} is not the calendar's campus", field="campus")
    return sorted(spec["pis"])


# ---------------------------------------------------------------- status documents


def build_status(campus, pi, at, serial, clock, sees, leader_pi):
    """An unsigned status document (see the module's docstring)."""
    for field, value in (("campus", campus), ("pi", pi)):
        if not isinstance(value, str) or not fleet_fields.NAME.match(value):
            raise CampusError(f"status.{field}: {fleet_fields.shown(value)} is not a name", field=f"status.{field}")
    doc = {"kind": STATUS_KIND, "campus": campus, "pi": pi, "at": iso(instant(at, "status.at")),
           "serial": serial, "clock": {"synced": bool((clock or {}).get("synced")),
                                       "offset_s": float((clock or {}).get("offset_s") or 0.0)},
           "sees": {p: {"at": v["at"], "synced": bool(v.get("synced"))} for p, v in sorted((sees or {}).items())},
           "leader": leader_pi}
    return _check_status(doc, "status")


def _check_status(doc, field):
    if not isinstance(doc, dict) or doc.get("kind") != STATUS_KIND:
        raise CampusError(f"{field}.kind: not a campus status", field=f"{field}.kind")
    for key in ("campus", "pi"):
        if not isinstance(doc.get(key), str) or not fleet_fields.NAME.match(doc[key]):
            raise CampusError(f"{field}.{key}: {fleet_fields.shown(doc.get(key))} is not a name", field=f"{field}.{key}")
    instant(doc.get("at"), f"{field}.at")
    serial = doc.get("serial")
    if serial is not None and (isinstance(serial, bool) or not isinstance(serial, int) or serial < 0):
        raise CampusError(f"{field}.serial: {fleet_fields.shown(serial)} is not a calendar serial", field=f"{field}.serial")
    clock = doc.get("clock")
    if not isinstance(clock, dict) or not isinstance(clock.get("synced"), bool):
        raise CampusError(f"{field}.clock: expected {{synced, offset_s}}", field=f"{field}.clock")
    sees = doc.get("sees")
    if not isinstance(sees, dict):
        raise CampusError(f"{field}.sees: expected {{pi: {{at, synced}}}}", field=f"{field}.sees")
    for pi, seen in sees.items():
        if not isinstance(pi, str) or not fleet_fields.NAME.match(pi) or not isinstance(seen, dict):
            raise CampusError(f"{field}.sees: {fleet_fields.shown(pi)} is not a Pi's view", field=f"{field}.sees")
        instant(seen.get("at"), f"{field}.sees.{pi}.at")
    leader_pi = doc.get("leader")
    if leader_pi is not None and (not isinstance(leader_pi, str) or not fleet_fields.NAME.match(leader_pi)):
        raise CampusError(f"{field}.leader: {fleet_fields.shown(leader_pi)} is not a Pi id", field=f"{field}.leader")
    return doc


def _rsa():
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import padding, rsa  # pylint: disable=import-outside-toplevel

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    return hashes, serialization, pss, rsa


def _pem(value, field):
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes) or not value:
        raise CampusError(f"{field}: expected a PEM key", field=field)
    return value


def sign_status(doc, private_pem, field="master.pem"):
    """``doc`` with its RSA-PSS/SHA-256 signature by the campus master key (``private_pem``)."""
    hashes, serialization, pss, rsa = _rsa()
    doc = _check_status(doc, "status")
    try:
        key = serialization.load_pem_private_key(_pem(private_pem, field), password=None)
    except (ValueError, TypeError):  # the message could quote key material: never shown
        raise CampusError(f"{field}: not an unencrypted PEM private key", field=field) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CampusError(f"{field}: expected the campus RSA master key", field=field)
    value = key.sign(fleet_sign.canonical(doc), pss, hashes.SHA256())
    return dict(doc, signature={"alg": STATUS_ALG, "value": base64.b64encode(value).decode()})


def verify_status(doc, public_pem, campus, pi=None, field="status"):
    """
    ``doc`` if it is a status of ``campus`` (and of ``pi`` when given) signed
    by the campus master key ``public_pem``; :class:`CampusError` naming
    ``<field>.<what>`` otherwise (fail closed: the caller counts that Pi as
    unreachable).
    """
    from cryptography.exceptions import InvalidSignature  # pylint: disable=import-outside-toplevel

    hashes, serialization, pss, rsa = _rsa()
    if not isinstance(doc, dict):
        raise CampusError(f"{field}: expected a signed JSON object, got {type(doc).__name__}", field=field)
    sig = doc.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != STATUS_ALG or not isinstance(sig.get("value"), str):
        raise CampusError(f"{field}.signature: missing (only signed statuses count)", field=f"{field}.signature")
    try:
        key = serialization.load_pem_public_key(_pem(public_pem, "master.pub"))
    except (ValueError, TypeError):
        raise CampusError("master.pub: not a PEM public key", field="master.pub") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CampusError("master.pub: expected the campus RSA master key", field="master.pub")
    try:
        raw = base64.b64decode(sig["value"], validate=True)
        key.verify(raw, fleet_sign.canonical(doc), pss, hashes.SHA256())
    except (ValueError, InvalidSignature):
        raise CampusError(f"{field}.signature: does not match the campus master key", field=f"{field}.signature") from None
    _check_status(doc, field)
    if doc["campus"] != campus:
        raise CampusError(f"{field}.campus: {doc['campus']} is not this Pi's campus {campus}", field=f"{field}.campus")
    if pi is not None and doc["pi"] != pi:
        raise CampusError(f"{field}.pi: {doc['pi']} answered for {pi}", field=f"{field}.pi")
    return doc


def peer_record(fetched_at, status=None, error=None, mono=None):
    """
    What the probe keeps of one peer: ``{"fetched_at", "fetched_mono",
    "status"}`` (verified) or ``{"fetched_at", "error"}``. ``mono``: the
    host's boot-time clock at the fetch (seconds), which no clock step moves.
    """
    record = {"fetched_at": iso(instant(fetched_at, "fetched_at"))}
    if isinstance(mono, (int, float)) and not isinstance(mono, bool):
        record["fetched_mono"] = float(mono)
    if status is not None:
        record["status"] = status
    else:
        record["error"] = str(error or "no answer")[:300]
    return record


def failed_record(previous, failed_at, error):
    """
    A peer whose fetch failed now: its previous record's last good status
    (and when that was fetched) kept, with the error; :func:`live` drops it
    once the status's own ``at`` is stale. No previous status: unreachable.
    """
    record = {"fetched_at": iso(instant(failed_at, "failed_at"))}
    if isinstance(previous, dict) and isinstance(previous.get("status"), dict) and previous.get("fetched_at"):
        record = {k: previous[k] for k in ("fetched_at", "fetched_mono", "status") if k in previous}
    record["error"] = str(error or "no answer")[:300]
    record["failed_at"] = iso(instant(failed_at, "failed_at"))
    return record


# ---------------------------------------------------------------- the view: live Pis, leader, clock


def _status_of(record):
    """The status a peer record holds, if it is one (peers.json is a file: a damaged one is no status)."""
    status = record.get("status") if isinstance(record, dict) else None
    try:
        return _check_status(status, "status") if isinstance(status, dict) else None
    except CampusError:
        return None


def status_age(record, status, now, mono_now=None):
    """
    How old (s) a fetched peer status is by its own signed ``at``: its age
    when fetched (``fetched_at - at``, this Pi's clock then) plus the time
    since the fetch on the boot-time clock (``mono_now - fetched_mono``), so
    a step of this Pi's clock (NTP's first sync, a lab's compressed day)
    neither revives nor kills a peer. Without those: ``now - at``. None when
    unknown (a fetch "after" now: the host rebooted since).
    """
    try:
        at = instant(status.get("at"), "status.at")
        fetched = instant(record.get("fetched_at"), "fetched_at")
    except CampusError:
        return None
    mono = record.get("fetched_mono")
    if mono_now is None or isinstance(mono, bool) or not isinstance(mono, (int, float)):
        return (instant(now, "now") - at).total_seconds()
    since = mono_now - mono
    if since < 0:
        return None
    return since + (fetched - at).total_seconds()


def _fresh_status(record, status, now, stale_s, mono_now):
    age = status_age(record, status, now, mono_now)
    return age is not None and abs(age) <= stale_s


def live(me, own, peers, now, stale_s, mono_now=None):
    """
    ``{pi: {"at", "synced", "via"}}`` of the Pis reachable in this Pi's view
    at ``now``: this Pi (``own``: its clock state), every peer whose fetched
    signed status is fresh (:func:`status_age` within ``stale_s``), and every
    Pi a fresh peer's status sees fresh (``via`` that peer: one hop).
    """
    out = {me: {"at": iso(instant(now, "now")), "synced": bool((own or {}).get("synced")), "via": me}}
    fresh_peers = {}
    for pi, record in sorted((peers or {}).items()):
        status = _status_of(record)
        if pi != me and status is not None and _fresh_status(record, status, now, stale_s, mono_now):
            fresh_peers[pi] = status
            out[pi] = {"at": status["at"], "synced": bool(status["clock"]["synced"]), "via": pi}
    for peer, status in fresh_peers.items():
        for pi, seen in sorted(status.get("sees", {}).items()):
            if pi not in out and fresh(seen.get("at"), now, stale_s):
                out[pi] = {"at": seen["at"], "synced": bool(seen.get("synced")), "via": peer}
    return out


def view_ready(view, me, campus_pis, mono_now, stale_s):
    """
    Whether this Pi knows its peers well enough to lead: a campus of one Pi,
    or a probe (``view``: peers.json) within ``stale_s`` on the boot-time
    clock. A Pi that just started (or whose probes stopped) has not seen its
    peers yet and must not act as a second leader meanwhile.
    """
    if not [p for p in (campus_pis or []) if p != me]:
        return True
    probed = (view or {}).get("probed_mono")
    if mono_now is None or isinstance(probed, bool) or not isinstance(probed, (int, float)):
        return False
    return 0 <= mono_now - probed <= stale_s


def leader(reachable, campus_pis=None):
    """
    The leader among ``reachable`` (:func:`live`): Pis with a synchronised
    clock first, then the lowest id. Only Pis of ``campus_pis`` (the
    calendar's) count when given. None when no Pi is left.
    """
    pis = [p for p in reachable if campus_pis is None or p in campus_pis]
    if not pis:
        return None
    synced = [p for p in pis if reachable[p].get("synced")]
    return min(synced or pis)


def peer_clocks(peers, now, stale_s, mono_now=None, max_age_s=0):
    """
    The peers' clock readings for ``fleet_clock.confirmed``: ``[{"pi", "at",
    "synced"}]`` for peers fetched within ``stale_s``. A status is up to
    ``max_age_s`` old when fetched (the probe interval plus its timeout: the
    peer writes it once per probe), so a peer's clock agrees with this Pi's
    when ``at <= fetched_at <= at + max_age_s`` (``fetched_at``: this Pi's
    clock at the fetch). The reading is the signed ``at`` moved on by the
    part of that age the window allows and by the time since the fetch
    (boot-time clock when known, else this Pi's): a clock that agreed at the
    fetch reads exactly ``now``, one off by ``d`` beyond the window reads
    ``d`` away, and ``fleet_clock.confirmed``'s tolerance covers the rest.
    """
    now = instant(now, "now")
    window = float(max_age_s) if isinstance(max_age_s, (int, float)) and not isinstance(max_age_s, bool) else 0.0
    out = []
    for pi, record in sorted((peers or {}).items()):
        status = _status_of(record)
        if status is None:
            continue
        try:
            fetched = instant(record.get("fetched_at"), f"peers.{pi}.fetched_at")
            at = instant(status.get("at"), f"peers.{pi}.status.at")
        except CampusError:
            continue
        mono = record.get("fetched_mono")
        if mono_now is not None and isinstance(mono, (int, float)) and not isinstance(mono, bool):
            age = mono_now - mono
        else:
            age = (now - fetched).total_seconds()
        if 0 <= age <= stale_s:
            old = min(max((fetched - at).total_seconds(), 0.0), max(window, 0.0))
            out.append({"pi": pi, "at": iso(at + _dt.timedelta(seconds=age + old)),
                        "synced": bool(status["clock"]["synced"])})
    return out


def newest_calendar(peers, serial, now, stale_s, mono_now=None):
    """``(pi, serial)`` of the fresh peer announcing the newest calendar serial above ``serial`` (None: none newer)."""
    best = None
    for pi, record in sorted((peers or {}).items()):
        status = _status_of(record)
        if status is None or not _fresh_status(record, status, now, stale_s, mono_now):
            continue
        theirs = status.get("serial")
        if isinstance(theirs, int) and (serial is None or theirs > serial) and (best is None or theirs > best[1]):
            best = (pi, theirs)
    return best


def gate(clock, confirmed_by, leads, leader_pi):
    """
    What this run may do: ``{"wake", "shutdown", "verify", "report",
    "no_shutdown", "no_wake"}`` from this Pi's clock (``{"synced"}``), the
    peers confirming it (``fleet_clock.confirmed``), and whether it leads.
    ``no_*`` are the reasons written on the kiosks left alone.
    """
    synced = bool((clock or {}).get("synced"))
    trusted = synced or bool(confirmed_by)
    no_wake = None if trusted else "clock not synchronised and no peer Pi confirms it: nothing done from the calendar"
    if not synced:
        no_shutdown = no_wake or "clock not synchronised: no shutdown until it is"
    elif leader_pi is None:
        no_shutdown = "no view of the peer Pis yet (no recent probe): shutdowns wait for the leader to be known"
    elif not leads:
        no_shutdown = f"not the campus leader ({leader_pi or 'none'} leads): shutdowns are the leader's"
    else:
        no_shutdown = None
    return {"wake": trusted, "shutdown": no_shutdown is None, "verify": trusted, "report": trusted and leads,
            "no_wake": no_wake, "no_shutdown": no_shutdown}


def decide(view, observed, pending, allowed):
    """
    The engine's decision (``fleet_sweep.sweep``) under the gate ``allowed``
    (:func:`gate`): shutdowns withheld with ``no_shutdown``, wakes with
    ``no_wake``. Returns the decision plus ``withheld``: ``{"wake": [...],
    "shutdown": [...]}`` (the kiosks the gate stopped).
    """
    decision = fleet_sweep.sweep(view, observed, pending)
    withheld = {"wake": [], "shutdown": []}
    for part, reason in (("wake", allowed["no_wake"]), ("shutdown", allowed["no_shutdown"])):
        if reason is not None:
            withheld[part] = sorted(k for ids in decision[part].values() for k in ids)
            decision["nothing"].update(dict.fromkeys(withheld[part], reason))
            decision[part] = {}
    # one set of the acting kiosks, not a search of every list per kiosk: linear in the campus
    acting = {k for part in ("wake", "shutdown") for ids in decision[part].values() for k in ids}
    decision["checks"] = {k: c for k, c in decision["checks"].items() if k in acting}
    decision["withheld"] = withheld
    return decision


# ---------------------------------------------------------------- on time: the tick


def expected_map(view):
    """``{kiosk: on|off|unmanaged}`` of a view: what the tick compares between runs."""
    return {k: v["state"] for k, v in view["expected"].items()}


def next_minute(now):
    """The next whole minute after ``now``: schedules change state on whole minutes."""
    now = instant(now, "now")
    return now.replace(second=0, microsecond=0) + _dt.timedelta(minutes=1)


def newly_due_on(expected_now, previous):
    """
    Kiosks expected on now that were not at the last run (``previous``;
    None: no run yet, every kiosk due on): woken at once, before the scan,
    so packets go out within seconds of the due instant (a magic packet to
    a running PC does nothing).
    """
    return sorted(k for k, state in expected_now.items()
                  if state == fleet_sweep.ON and (previous is None or previous.get(k) != fleet_sweep.ON))


def tick_plan(expected_now, expected_next, previous, last_at, now, next_at, tick_s, reconcile_s,
              leader_now=None, leader_before=None):
    """
    What a tick (every ``tick_s``) does: ``{"sleep": s, "run": bool, "why"}``.
    A transition before the next tick (``expected_next`` at ``next_at``, the
    next whole minute, differs): sleep until it, then reconcile; the
    expected states changed since the last reconcile, none yet, the leader
    in the last probe's view (``leader_now``) is not the last reconcile's
    (``leader_before``: a failover, so a new leader acts at once, not up to
    ``reconcile_s`` later), or the last is ``reconcile_s`` old: reconcile
    now; else nothing.
    """
    now, next_at = instant(now, "now"), instant(next_at, "next_at")
    wait = (next_at - now).total_seconds()
    if 0 <= wait <= tick_s and expected_next != expected_now:
        return {"sleep": wait, "run": True, "why": f"a transition at {iso(next_at)}"}
    if previous is None or last_at is None:
        return {"sleep": 0, "run": True, "why": "no reconcile yet"}
    if previous != expected_now:
        return {"sleep": 0, "run": True, "why": "the expected states changed"}
    if leader_now != leader_before:
        return {"sleep": 0, "run": True, "why": f"the leader changed ({leader_before or 'none'} -> {leader_now or 'none'})"}
    try:
        age = (now - instant(last_at, "last_at")).total_seconds()
    except CampusError:
        age = reconcile_s
    if age >= reconcile_s or age < 0:
        return {"sleep": 0, "run": True, "why": f"the last reconcile is {int(age)} s old"}
    return {"sleep": 0, "run": False, "why": f"nothing due (last reconcile {int(age)} s ago)"}


# ---------------------------------------------------------------- transitions and keys


def _later(*instants):
    """The latest of the aware instants given (None ignored); None when there is none."""
    known = [i for i in instants if i is not None]
    return max(known) if known else None


def _started(schedule, view, kiosk, now, holds_seen):
    """
    When the kiosk's expected state at ``now`` began by the calendar alone
    (aware instant, or None for a standing state): the deciding hold's
    ``set_at``; else the latest of the schedule's last transition to that
    state within :data:`LOOKBACK` and the end of a hold of another state
    that ended since (``holds_seen``: :func:`remember`'s ``holds``).
    """
    want = view["expected"][kiosk]
    hold = view["holds"].get(kiosk)
    if hold is not None:
        return instant(hold["set_at"], f"holds.{kiosk}.set_at")
    sched = schedule if schedule is not None else fleet_schedule.load({"campuses": {}})
    last = None
    for at, state, _rule in fleet_schedule.transitions(sched, want["campus"], kiosk, now - LOOKBACK, now):
        if state == want["state"]:
            last = at
    ended = None
    for seen in (holds_seen or {}).get(kiosk, []):
        try:
            until = instant(seen.get("until"), f"holds_seen.{kiosk}.until")
        except CampusError:
            continue
        if seen.get("state") != want["state"] and now - LOOKBACK < until <= now:
            ended = _later(ended, until)
    return _later(last, ended)


def transition(schedule, view, kiosk, now, timezone="UTC", memory=None):
    """
    When the kiosk's expected state at ``now`` began: the key of the action
    that brings the kiosk there (``campus/kiosk/shutdown/<this>``), so a
    kiosk presses once per change of its expected state, never twice for one
    and never "duplicate" for a new one. The latest of: the deciding hold's
    ``set_at``; the schedule's last transition to that state within
    :data:`LOOKBACK`; the end (``until``) of a hold of another state that
    ended since; and, from ``memory`` (:func:`remember`), the calendar's
    ``signed_at`` when the state exists only since a new calendar (a closure
    published mid-day). None of these (a standing state): the campus day of
    ``now`` (``YYYY-MM-DD``), acted on at most once a day. Every value comes
    from the calendar every Pi holds: every Pi that watched the same
    calendars computes the same key.
    """
    now = instant(now, "now")
    want = view["expected"][kiosk]
    memory = memory or {}
    if view["holds"].get(kiosk) is not None:
        return iso(_started(schedule, view, kiosk, now, None))
    since = (memory.get("since") or {}).get(kiosk) or {}
    remembered = None
    if since.get("state") == want["state"] and since.get("at"):
        try:
            remembered = instant(since["at"], f"since.{kiosk}.at")
        except CampusError:
            remembered = None
    last = _later(_started(schedule, view, kiosk, now, memory.get("holds")), remembered)
    if last is not None:
        return iso(last)
    return now.astimezone(fleet_fields.time_zone(timezone) or _UTC).date().isoformat()


def remember(schedule, view, now, memory, calendar):
    """
    What the reconciler keeps between runs to name transitions
    (:func:`transition`), from the last run's ``memory`` (its state's
    ``transitions`` entry, or None) and the ``calendar`` now in use
    (``{"serial", "signed_at", "holds"}``: its holds as listed, ended ones too):

    - ``holds``: ``{kiosk: [{"state", "until", "set_at"}]}`` every hold seen
      in a calendar within :data:`LOOKBACK` (a calendar leaves out the holds
      that have ended, the key of the state after one is its ``until``); a
      hold gone from the calendar before its ``until`` (unhold) ended at
      that calendar's ``signed_at``;
    - ``since``: ``{kiosk: {"state", "at"}}`` when each kiosk's expected
      state began; a state that changed at this run with nothing in the
      calendar after the last run to explain it (no transition, no hold)
      began with the new calendar: its ``signed_at``;
    - ``at``, ``serial``: this run's instant and calendar serial.
    """
    now = instant(now, "now")
    memory = memory if isinstance(memory, dict) else {}
    serial = calendar.get("serial")
    signed = calendar.get("signed_at")
    signed_at = (_dt.datetime.fromtimestamp(signed, _UTC) if isinstance(signed, (int, float))
                 and not isinstance(signed, bool) else None)
    try:
        last_at = instant(memory["at"], "transitions.at") if memory.get("at") else None
    except CampusError:
        last_at = None
    changed_calendar = last_at is not None and memory.get("serial") != serial and signed_at is not None
    current = calendar.get("holds") if isinstance(calendar.get("holds"), dict) else {}
    holds = {}
    for kiosk, seen in (memory.get("holds") or {}).items():
        if not isinstance(seen, list):
            continue
        kept = []
        for record in seen:
            if not isinstance(record, dict):
                continue
            try:
                until = instant(record.get("until"), "until")
            except CampusError:
                continue
            now_hold = current.get(kiosk)
            if (signed_at is not None and until > signed_at and changed_calendar
                    and (now_hold is None or now_hold.get("set_at") != record.get("set_at"))):
                until = signed_at  # withdrawn or replaced by this calendar
            if until > now - LOOKBACK:
                kept.append({"state": record.get("state"), "until": iso(until), "set_at": record.get("set_at")})
        if kept:
            holds[kiosk] = kept
    for kiosk, hold in sorted(current.items()):
        if not isinstance(hold, dict):
            continue
        listed = holds.setdefault(kiosk, [])
        if not any(r.get("set_at") == hold.get("set_at") for r in listed):
            listed.append({"state": hold.get("state"), "until": hold.get("until"), "set_at": hold.get("set_at")})
    before = memory.get("since") if isinstance(memory.get("since"), dict) else {}
    since = {}
    for kiosk, want in sorted(view["expected"].items()):
        if want["state"] not in (fleet_sweep.ON, fleet_sweep.OFF):
            continue
        prev = before.get(kiosk)
        if isinstance(prev, dict) and prev.get("state") == want["state"]:
            since[kiosk] = {"state": want["state"], "at": prev.get("at")}
            continue
        began = _started(schedule, view, kiosk, now, holds)
        if isinstance(prev, dict) and changed_calendar and (began is None or began <= last_at):
            began = signed_at  # nothing since the last run explains it: the new calendar does
        since[kiosk] = {"state": want["state"], "at": None if began is None else iso(began)}
    return {"holds": holds, "since": since, "at": iso(now), "serial": serial}


def action_key(campus, kiosk, action, when):
    """``campus/kiosk/wake|shutdown/<transition>``: the same on every Pi for one transition."""
    return fleet_outbox.entry_key(campus, kiosk, action, when)


def shutdown_jobs(campus, transitions):
    """
    ``{key template: [kiosk ids]}``: one shutdown job per transition, its key
    naming the kiosk as ``{id}`` (``kiosk_power.shutdown`` fills in its own id).
    """
    jobs = {}
    for kiosk, when in sorted(transitions.items()):
        key = action_key(campus, kiosk, "shutdown", when)
        template = f"{campus}/{{id}}/" + key[len(f"{campus}/{kiosk}/"):]
        jobs.setdefault(template, []).append(kiosk)
    return jobs


# ---------------------------------------------------------------- outbox entries


def _minute(now):
    return iso(instant(now, "now").replace(second=0, microsecond=0))


def entries(campus, pi, now, acted, found, pending_before, transitions, observed, previous_observed, expected,
            allowed, clock, confirmed_by, leader_pi, reachable, previous_leader):
    """
    The outbox entries of one run, ``[(kind, key, data, at)]`` (``Outbox.add_many``):

    - ``action`` per kiosk woken / shut down (key ``campus/kiosk/wake|shutdown/<transition>``);
    - ``observation`` per kiosk whose observed state changed since the last run
      (``campus/kiosk/observed/<minute>``);
    - ``verification`` per check run, and ``alert`` per mismatch, leader only
      (``campus/kiosk/check+N/<transition>``, ``campus/kiosk/mismatch/<transition>``);
    - ``clock`` when this Pi's clock is not synchronised (``campus/pi/clock/<day>``);
    - ``leader`` when this Pi's view of the leader changed (``campus/pi/leader/<minute>``).
    """
    at = iso(instant(now, "now"))
    out = []
    for action, kiosks in (("wake", acted.get("woken", [])), ("shutdown", acted.get("shut_down", []))):
        for kiosk in sorted(kiosks):
            when = transitions.get(kiosk, at)
            out.append(("action", action_key(campus, kiosk, action, when),
                        {"kiosk": kiosk, "campus": campus, "pi": pi, "action": action, "at": at, "transition": when,
                         "result": acted.get("results", {}).get(kiosk, "done")}, at))
    for kiosk, seen in sorted(observed.items()):
        if previous_observed.get(kiosk) != seen["state"]:
            out.append(("observation", fleet_outbox.entry_key(campus, kiosk, "observed", _minute(now)),
                        {"kiosk": kiosk, "campus": campus, "pi": pi, "observed": seen["state"],
                         "expected": expected.get(kiosk)}, at))
    if allowed["report"] and found is not None:
        out += _verifications(campus, pi, at, found, pending_before, observed)
    if not clock.get("synced"):
        out.append(("clock", fleet_outbox.entry_key(campus, pi, "clock", at[:10]),
                    {"campus": campus, "pi": pi, "synced": False, "offset_s": float(clock.get("offset_s") or 0.0),
                     "confirmed_by": list(confirmed_by), "source": clock.get("source"),
                     "summary": f"Pi {pi} ({campus}): clock not synchronised; no shutdowns"
                                + ("" if confirmed_by else ", no wakes") + " until it is"}, at))
    if leader_pi != previous_leader:
        out.append(("leader", fleet_outbox.entry_key(campus, pi, "leader", _minute(now)),
                    {"campus": campus, "pi": pi, "leader": leader_pi, "reachable": sorted(reachable)}, at))
    return out


def _verifications(campus, pi, at, found, pending_before, observed):
    out = []
    results = {**dict.fromkeys(found["verified"], True), **dict.fromkeys(found["waiting"], False)}
    results.update({m["kiosk"]: False for m in found["mismatches"]})
    now = instant(at)
    for kiosk, ok in sorted(results.items()):
        record = pending_before.get(kiosk)
        if record is None:
            continue
        when = record.get("transition") or record["since"]
        passed = [c for c in record["checks"] if instant(c, "check") <= now]
        offset = fleet_sweep.CHECK_OFFSETS[min(len(passed), len(fleet_sweep.CHECK_OFFSETS)) - 1]
        seen = (observed.get(kiosk) or {}).get("state", fleet_sweep.UNKNOWN)
        out.append(("verification", fleet_outbox.entry_key(campus, kiosk, f"check+{offset}", when),
                    {"kiosk": kiosk, "campus": campus, "pi": pi, "expected": record["expected"],
                     "observed": seen, "ok": ok, "transition": when}, at))
    for item in found["mismatches"]:
        record = pending_before.get(item["kiosk"]) or {}
        when = record.get("transition") or item["since"]
        key = fleet_outbox.entry_key(campus, item["kiosk"], "mismatch", when)
        payload = dict(fleet_alerts.power_mismatch(item), idempotency_key=key, pi=pi)
        out.append(("alert", key, payload, at))
    return out


def with_transitions(pending, transitions):
    """``pending`` with each new verification's transition instant (the key its checks and alert carry)."""
    out = {}
    for kiosk, record in pending.items():
        if kiosk in transitions and record.get("transition") is None:
            record = dict(record, transition=transitions[kiosk])
        out[kiosk] = record
    return out


# ---------------------------------------------------------------- metrics


def metrics(campus, pi, ret, at):
    """``fleet_metrics.render`` families for ``kiosk_campus.prom`` after a reconcile that answered ``ret``."""
    labels = {"campus": campus, "pi": pi}
    clock = ret.get("clock") or {}
    observed = {}
    for state in ret.get("observed", {}).values():
        observed[state] = observed.get(state, 0) + 1
    return [
        ("kiosk_campus_last_reconcile_success", "gauge", "1 when this Pi's last reconcile succeeded.",
         [(labels, bool(ret.get("result")))]),
        ("kiosk_campus_last_reconcile_timestamp_seconds", "gauge", "When this Pi last reconciled (Unix time).",
         [(labels, at)]),
        ("kiosk_campus_leader", "gauge", "1 when this Pi leads its campus.", [(labels, bool(ret.get("leader")))]),
        ("kiosk_campus_peers_live", "gauge", "Pis of the campus reachable in this Pi's view (itself included).",
         [(labels, len(ret.get("live", [])))]),
        ("kiosk_campus_clock_synced", "gauge", "1 when this Pi's clock is synchronised.",
         [(labels, bool(clock.get("synced")))]),
        ("kiosk_campus_clock_confirmed", "gauge", "1 when a peer Pi confirms this Pi's clock.",
         [(labels, bool(clock.get("confirmed_by")))]),
        ("kiosk_campus_calendar_serial", "gauge", "Serial of the calendar this Pi runs on.",
         [(labels, ret.get("serial") or 0)]),
        ("kiosk_campus_withheld", "gauge", "Kiosks due a change this run left alone (clock not trusted, not leader).",
         [(dict(labels, action=a), len(ids)) for a, ids in sorted((ret.get("withheld") or {}).items())]),
        ("kiosk_campus_actions", "gauge", "Kiosks this Pi woke or shut down in its last reconcile.",
         [(dict(labels, action="wake"), len(ret.get("woke", []))),
          (dict(labels, action="shutdown"), len(ret.get("shut_down", [])))]),
        ("kiosk_campus_kiosks_observed", "gauge", "Managed kiosks per observed state in the last reconcile.",
         [(dict(labels, state=s), observed.get(s, 0)) for s in fleet_sweep.POWER_STATES]),
    ]
