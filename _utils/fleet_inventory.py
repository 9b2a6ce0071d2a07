"""
The fleet inventory: campuses, their Pis, VLANs and kiosks.

One schema, shared by every capability. It lives under the key
``kiosk_fleet`` of the fleet data file (sample ``pillar/fleet.yaml``), and a
minion's pillar holds its slice under the same key::

    kiosk_fleet:
      campuses:
        east:
          timezone: Asia/Shanghai          # IANA name, default Asia/Shanghai
          wol_port: 9                      # UDP port for magic packets, default 9
          repo_port: 80                    # the Pis' release repositories (nginx), default 80
          master_port: 4506                # the Pi masters' ret port kiosks connect to, default 4506
          publish_port: 4505               # the Pi masters' publish port (one for the campus), default 4505
          vlans:
            hall: {network: 10.1.1.0/24}   # broadcast defaults to the network's
          pis:
            pi-east-1:
              vlans: {hall: {source: 10.1.1.2}}   # optional source address per VLAN
              repo_url: http://pi-east-1.lan/kiosk-releases/   # optional, else http://<source>:<repo_port>/...
              master: 10.1.9.2:4506        # optional: where kiosks reach this Pi's salt-master, else
                                           # its source on the kiosk's VLAN and master_port
          kiosks:
            kiosk-east-01: {mac: "52:54:00:01:01:01", ip: 10.1.1.11, vlan: hall,
                            location: "Hall A", service_port: 3389}

:func:`validate` returns a normalised copy or raises :class:`InventoryError`
listing every problem, each naming the field (``campuses.east.kiosks.k1.mac``).

Need to know. The whole fleet (inventory, power schedules, change parameters,
release verification keys) is one YAML file on the masters, named in the
master config (``kiosk_fleet: {data: /etc/salt/kiosk-fleet/fleet.yaml}``),
that no minion receives: the runners read it with :func:`master_inventory` /
:func:`master_data`; the pillar (``pillar/kiosk_fleet.sls``) gives each minion
:func:`slice_for` of it, keyed by the minion id the master authenticated: a
kiosk its own entry and its campus's settings, VLANs and Pis; a Pi its campus;
anyone else nothing. The slice keeps this schema, so :func:`from_pillar` works
on it, and validating a slice checks only that campus.
"""

import copy
import os

import ipaddress
import re

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_wol
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields
    import fleet_wol

PILLAR_KEY = "kiosk_fleet"
SCHEDULES_KEY = "kiosk_fleet_schedules"  # fleet_schedule.PILLAR_KEY
CHANGES_KEY = "kiosk_fleet_changes"  # fleet_change.PILLAR_KEY
RELEASE_KEY = "kiosk_release"  # only verify_key (public keys) in the fleet data
# what the fleet data file may hold: the pillar keys the fleet ever used
DATA_KEYS = (PILLAR_KEY, SCHEDULES_KEY, CHANGES_KEY, RELEASE_KEY)
MASTER_CONFIG_KEY = "kiosk_fleet"  # master config: kiosk_fleet: {data: <path>}
# campus settings a minion's slice carries (validate() ignores anything else)
_CAMPUS_SETTINGS = ("timezone", "wol_port", "service_port", "repo_port", "master_port", "publish_port", "vlans",
                    "pis")
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_WOL_PORT = 9
DEFAULT_SERVICE_PORT = 3389
DEFAULT_REPO_PORT = 80  # the Pis' release repositories (nginx)
DEFAULT_MASTER_PORT = 4506  # the Pi masters' ret port (Salt's master_port)
DEFAULT_PUBLISH_PORT = 4505  # the Pi masters' publish port (Salt's publish_port)
# Salt minion ids and campus names: letters, digits, dot, dash, underscore
_NAME = fleet_fields.NAME


class InventoryError(fleet_fields.FieldErrors):
    """The inventory is invalid, or a request names something it does not hold."""


def _port(value, field, errors):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        errors.append(f"{field}: {value!r} is not a port number (1-65535)")
        return None
    return value


def _address(value, field, errors):
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        errors.append(f"{field}: {value!r} is not an IPv4 address")
        return None


_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def master_address(value, default_port, field, errors):
    """
    A Pi's ``master``, ``host[:port]`` (IPv4 address or DNS name), as
    ``"host:port"`` with ``default_port`` filled in; None (and a message in
    ``errors``) when it is not one.
    """
    if not isinstance(value, str) or not value:
        errors.append(f"{field}: {fleet_fields.shown(value)} is not host[:port]")
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, default_port
    elif not port.isdigit() or not 1 <= int(port) <= 65535:
        errors.append(f"{field}: {fleet_fields.shown(value)}: the port is not a port number (1-65535)")
        return None
    try:
        host = str(ipaddress.IPv4Address(host))
    except ValueError:
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
            errors.append(f"{field}: {fleet_fields.shown(value)} is not an IPv4 address or host name")
            return None
    return f"{host}:{int(port)}"


def _name(value, field, errors):
    if not isinstance(value, str) or not _NAME.match(value):
        errors.append(f"{field}: {value!r} is not a valid name (letters, digits, . _ -)")
        return False
    return True


_mapping = fleet_fields.mapping


def _validate_vlans(campus, raw, errors):
    vlans = {}
    for vlan_name, vlan in _mapping(raw, f"campuses.{campus}.vlans", errors).items():
        field = f"campuses.{campus}.vlans.{vlan_name}"
        _name(vlan_name, field, errors)
        vlan = _mapping(vlan, field, errors)
        try:
            network = ipaddress.IPv4Network(str(vlan.get("network")), strict=False)
        except ValueError:
            errors.append(f"{field}.network: {vlan.get('network')!r} is not an IPv4 network")
            continue
        broadcast = vlan.get("broadcast", str(network.broadcast_address))
        broadcast = _address(broadcast, f"{field}.broadcast", errors)
        if broadcast and ipaddress.IPv4Address(broadcast) not in network:
            errors.append(f"{field}.broadcast: {broadcast} is outside {network}")
        vlans[vlan_name] = {"network": str(network), "broadcast": broadcast}
    return vlans


def _validate_pis(campus, raw, vlans, errors, master_port=DEFAULT_MASTER_PORT):
    pis = {}
    for pi_id, pi in _mapping(raw, f"campuses.{campus}.pis", errors).items():
        field = f"campuses.{campus}.pis.{pi_id}"
        _name(pi_id, field, errors)
        pi = _mapping(pi, field, errors)
        pi_vlans = {}
        for vlan_name, spec in _mapping(pi.get("vlans"), f"{field}.vlans", errors).items():
            if vlan_name not in vlans:
                errors.append(f"{field}.vlans.{vlan_name}: unknown VLAN (campus has {sorted(vlans)})")
                continue
            spec = _mapping(spec, f"{field}.vlans.{vlan_name}", errors)
            entry = {}
            if spec.get("source") is not None:
                entry["source"] = _address(spec["source"], f"{field}.vlans.{vlan_name}.source", errors)
            if spec.get("interface") is not None:
                interface = spec["interface"]
                if not fleet_wol.is_interface_name(interface):
                    errors.append(f"{field}.vlans.{vlan_name}.interface: {interface!r} is not a network interface name")
                else:
                    entry["interface"] = interface
            pi_vlans[vlan_name] = entry
        pis[pi_id] = {"vlans": pi_vlans}
        repo_url = pi.get("repo_url")
        if repo_url is not None:
            # the Pi's release repository when not at http://<source>:<repo_port>/kiosk-releases/
            if not isinstance(repo_url, str) or not re.match(r"^https?://[^\s/]+/\S*\Z", repo_url):
                errors.append(f"{field}.repo_url: {repo_url!r} is not an http(s) URL ending in a path")
            else:
                pis[pi_id]["repo_url"] = repo_url if repo_url.endswith("/") else repo_url + "/"
        if pi.get("master") is not None:
            # where kiosks reach this Pi's salt-master when not at its source on their VLAN
            master = master_address(pi["master"], master_port, f"{field}.master", errors)
            if master:
                pis[pi_id]["master"] = master

    if not pis:
        errors.append(f"campuses.{campus}.pis: a campus needs at least one Pi")
    return pis


def _location(value, field, errors):
    """Free text for people (a number YAML read is fine); never a list, a mapping or unpaired surrogates."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        errors.append(f"{field}: {value!r} is not text")
        return ""
    bad = fleet_fields.bad_character(value)
    if bad:
        errors.append(f"{field}: contains {bad}")
        return ""
    return value


def _validate_kiosks(campus, raw, vlans, service_port, errors, seen_macs):
    kiosks = {}
    for kiosk_id, kiosk in _mapping(raw, f"campuses.{campus}.kiosks", errors).items():
        field = f"campuses.{campus}.kiosks.{kiosk_id}"
        _name(kiosk_id, field, errors)
        kiosk = _mapping(kiosk, field, errors)
        try:
            mac = fleet_wol.kiosk_mac(kiosk.get("mac"), f"{field}.mac")
        except fleet_wol.WolError as exc:
            errors.append(str(exc))
            mac = None
        if mac is not None:
            if mac in seen_macs:
                errors.append(f"{field}.mac: {mac} is also the MAC of {seen_macs[mac]}")
            else:
                seen_macs[mac] = field
        vlan = kiosk.get("vlan")
        if not isinstance(vlan, str) or vlan not in vlans:  # vlan: [hall] is a list, not a name
            errors.append(f"{field}.vlan: {vlan!r} is not a VLAN of campus {campus} ({sorted(vlans)})")
        ip = _address(kiosk.get("ip"), f"{field}.ip", errors)
        if ip and vlan in vlans and ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(vlans[vlan]["network"]):
            errors.append(f"{field}.ip: {ip} is outside VLAN {vlan} ({vlans[vlan]['network']})")
        port = _port(kiosk.get("service_port", service_port), f"{field}.service_port", errors)
        kiosks[kiosk_id] = {
            "mac": mac,
            "ip": ip,
            "vlan": vlan,
            "location": _location(kiosk.get("location", ""), f"{field}.location", errors),
            "service_port": port,
        }
    return kiosks


def validate(data):
    """
    Validate an inventory (the value of the ``kiosk_fleet`` pillar key) and
    return a normalised copy: MACs as ``aa:bb:cc:dd:ee:ff``, defaults filled in.

    Raises :class:`InventoryError` listing every problem found.
    """
    errors = []
    data = _mapping(data, PILLAR_KEY, errors)
    campuses_raw = _mapping(data.get("campuses"), "campuses", errors)
    if not campuses_raw and not errors:
        errors.append("campuses: the inventory holds no campus")
    campuses = {}
    seen_macs = {}
    owner = {}  # minion id -> field, so a kiosk and a Pi never share an id
    for campus, spec in campuses_raw.items():
        field = f"campuses.{campus}"
        _name(campus, field, errors)
        spec = _mapping(spec, field, errors)
        timezone = spec.get("timezone", DEFAULT_TIMEZONE)
        if fleet_fields.time_zone(timezone) is None:
            errors.append(f"{field}.timezone: {timezone!r} is not an IANA time zone")
        wol_port = _port(spec.get("wol_port", DEFAULT_WOL_PORT), f"{field}.wol_port", errors)
        service_port = _port(spec.get("service_port", DEFAULT_SERVICE_PORT), f"{field}.service_port", errors)
        repo_port = _port(spec.get("repo_port", DEFAULT_REPO_PORT), f"{field}.repo_port", errors)
        master_port = _port(spec.get("master_port", DEFAULT_MASTER_PORT), f"{field}.master_port", errors)
        publish_port = _port(spec.get("publish_port", DEFAULT_PUBLISH_PORT), f"{field}.publish_port", errors)
        vlans = _validate_vlans(campus, spec.get("vlans"), errors)
        if not vlans:
            errors.append(f"{field}.vlans: a campus needs at least one VLAN")
        pis = _validate_pis(campus, spec.get("pis"), vlans, errors, master_port or DEFAULT_MASTER_PORT)
        kiosks = _validate_kiosks(campus, spec.get("kiosks"), vlans, service_port, errors, seen_macs)
        for minion_id, where in [(p, f"{field}.pis.{p}") for p in pis] + [
            (k, f"{field}.kiosks.{k}") for k in kiosks
        ]:
            if minion_id in owner:
                errors.append(f"{where}: id {minion_id!r} is already used at {owner[minion_id]}")
            else:
                owner[minion_id] = where
        campuses[campus] = {
            "timezone": str(timezone),
            "wol_port": wol_port,
            "service_port": service_port,
            "repo_port": repo_port,
            "master_port": master_port,
            "publish_port": publish_port,
            "vlans": vlans,
            "pis": pis,
            "kiosks": kiosks,
        }
    if errors:
        raise InventoryError(errors)
    return {"campuses": campuses}


def from_pillar(pillar):
    """
    Validate the inventory held in a pillar (under ``kiosk_fleet``): a dict,
    or a module's ``__pillar__`` (a loader context object with ``get``). On a
    minion that is its slice (:func:`slice_for`): its own campus only.
    """
    if not callable(getattr(pillar, "get", None)):
        raise InventoryError(f"pillar: expected a mapping, got {type(pillar).__name__}")
    return validate(pillar.get(PILLAR_KEY))


def names(value, field):
    """One name, a comma-separated string or a list -> list of names (empty for None/"")."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple, set)):
        # a number is a name YAML read as one (kiosk 1234); a list, dict or boolean is a mistake
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))]
        if bad:
            raise InventoryError(f"{field}: {bad[0]!r} is not a name")
        return [str(v) for v in value]
    raise InventoryError(f"{field}: expected a name, a comma-separated string or a list, got {value!r}")


def campus_of(inventory, minion_id):
    """Return the campus of a kiosk or Pi id; :class:`InventoryError` when unknown."""
    if not isinstance(minion_id, str):
        raise InventoryError(f"kiosk: {minion_id!r} is not a kiosk or Pi id")
    for campus, spec in inventory["campuses"].items():
        if minion_id in spec["kiosks"] or minion_id in spec["pis"]:
            return campus
    raise InventoryError(f"kiosk: {minion_id!r} is not a kiosk or Pi of any campus")


def select_kiosks(inventory, kiosks=None, campus=None):
    """
    Resolve an operator's selection to ``{campus: [kiosk ids]}``.

    ``kiosks`` and ``campus`` each take one name, a comma-separated string or
    a list; with both, the kiosks must belong to the named campuses. Unknown
    names are an error naming them; an empty selection is an error too, so a
    typo never turns into "do nothing, successfully".
    """
    kiosk_ids = names(kiosks, "kiosks")
    campus_names = names(campus, "campus")
    known = inventory["campuses"]
    unknown_campuses = [c for c in campus_names if c not in known]
    if unknown_campuses:
        raise InventoryError(f"campus: unknown campus {', '.join(unknown_campuses)} (known: {', '.join(sorted(known))})")
    if not kiosk_ids and not campus_names:
        raise InventoryError("kiosks/campus: name kiosks (kiosks=k1,k2) or campuses (campus=east)")
    selection = {}
    if kiosk_ids:
        # one map and one set, not a campus walk and a list search per id: linear in the ids
        owner = {}
        for name, spec in known.items():
            for minion_id in (*spec["kiosks"], *spec["pis"]):
                owner.setdefault(minion_id, name)  # the first campus wins, as in campus_of
        picked = set()
        unknown = []
        for kiosk_id in kiosk_ids:
            where = owner.get(kiosk_id)
            if where is None:
                unknown.append(kiosk_id)
                continue
            if kiosk_id not in known[where]["kiosks"]:
                unknown.append(kiosk_id)
                continue
            if campus_names and where not in campus_names:
                raise InventoryError(f"kiosks: {kiosk_id} belongs to campus {where}, not {', '.join(campus_names)}")
            selection.setdefault(where, [])
            if kiosk_id not in picked:
                picked.add(kiosk_id)
                selection[where].append(kiosk_id)
        if unknown:
            raise InventoryError(f"kiosks: unknown kiosk {', '.join(unknown)}")
    else:
        for name in campus_names:
            selection[name] = sorted(known[name]["kiosks"])
    return selection


def home_pi(campus_spec, kiosk_id):
    """The Pi a kiosk's minion points at: the campus's Pis, round robin in kiosk id order."""
    if not isinstance(kiosk_id, str) or kiosk_id not in campus_spec["kiosks"]:
        raise InventoryError(f"kiosk: {kiosk_id!r} is not a kiosk of this campus")
    pis = sorted(campus_spec["pis"])
    return pis[sorted(campus_spec["kiosks"]).index(kiosk_id) % len(pis)]


def pis_of(inventory, campus):
    """Return the sorted Pi ids of ``campus``."""
    if not isinstance(campus, str):
        raise InventoryError(f"campus: {campus!r} is not a campus name")
    if campus not in inventory["campuses"]:
        raise InventoryError(f"campus: unknown campus {campus!r}")
    return sorted(inventory["campuses"][campus]["pis"])


# --------------------------------------------------------------------------- master-only data and pillar slices


def _file_roots(opts):
    roots = opts.get("file_roots") if callable(getattr(opts, "get", None)) else None
    if not isinstance(roots, dict):
        return []
    return [r for env in roots.values() if isinstance(env, list) for r in env if isinstance(r, str)]


def data_path(opts):
    """
    The fleet data file named in the master config (``kiosk_fleet:data``), an
    absolute path outside every ``file_roots`` (a file there would be served
    to any minion by ``cp.get_file``). Raises :class:`InventoryError` naming
    the setting.
    """
    conf = opts.get(MASTER_CONFIG_KEY) if callable(getattr(opts, "get", None)) else None
    field = f"{MASTER_CONFIG_KEY}:data"
    if not isinstance(conf, dict) or conf.get("data") in (None, ""):
        raise InventoryError(f"{field}: not set in the master config (the fleet data file, e.g. "
                             "/etc/salt/kiosk-fleet/fleet.yaml; README \"Inventory\")")
    path = conf["data"]
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InventoryError(f"{field}: {path!r} is not an absolute path")
    real = os.path.realpath(path)
    for root in _file_roots(opts):
        root = os.path.realpath(root)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            raise InventoryError(f"{field}: {path} is under file_roots ({root}): minions could fetch it")
    return path


def _check_verify_keys(release, field, errors):
    """``kiosk_release`` in the fleet data: only ``verify_key``, a list of public key PEMs."""
    release = fleet_fields.mapping(release, field, errors)
    extra = sorted(set(release) - {"verify_key"})
    if extra:
        # the signing key stays in the top master's config; nothing else of kiosk_release belongs here
        errors.append(f"{field}: only verify_key belongs in the fleet data (found {', '.join(map(str, extra))})")
    keys = release.get("verify_key")
    if keys is None:
        return
    if not isinstance(keys, list):
        errors.append(f"{field}.verify_key: expected a list of public key PEMs, got {type(keys).__name__}")
        return
    for n, key in enumerate(keys):
        if not isinstance(key, str) or "PRIVATE KEY" in key or "-----BEGIN PUBLIC KEY-----" not in key:
            # never name or echo the value: it could be a private key pasted by mistake
            errors.append(f"{field}.verify_key[{n}]: not a public key PEM (-----BEGIN PUBLIC KEY-----)")


def check_data(data, source="fleet data"):
    """
    The fleet data document (a mapping of :data:`DATA_KEYS`): top-level shape
    only, so a bad entry in one campus never hides the others; the inventory
    itself is checked by :func:`validate`. Returns ``data``.
    """
    errors = []
    data = fleet_fields.mapping(data, source, errors)
    if not data and not errors:
        errors.append(f"{source}: empty")
    unknown = sorted(str(k) for k in data if k not in DATA_KEYS)
    if unknown:
        errors.append(f"{source}: unknown key {', '.join(unknown)} (known: {', '.join(DATA_KEYS)})")
    for key in (PILLAR_KEY, SCHEDULES_KEY, CHANGES_KEY):
        fleet_fields.mapping(data.get(key), f"{source}.{key}", errors)
    if RELEASE_KEY in data:
        _check_verify_keys(data[RELEASE_KEY], f"{source}.{RELEASE_KEY}", errors)
    if errors:
        raise InventoryError(errors)
    return data


def load_data(path):
    """
    Read the fleet data file (YAML, see ``pillar/fleet.yaml``); the file
    itself must not be a symlink. Raises :class:`InventoryError` naming the
    path for a missing, unreadable, non-YAML or wrongly shaped file.
    """
    import yaml  # Salt's own dependency; imported here so the pure parts need nothing

    field = f"{MASTER_CONFIG_KEY}:data"
    if not isinstance(path, str) or not path:
        raise InventoryError(f"{field}: {path!r} is not a path")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise InventoryError(f"{field}: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InventoryError(f"{field}: {path} is not valid YAML{line}") from None
    return check_data(data, source=path)


def master_data(opts):
    """The whole fleet data of this master (runners: ``master_data(__opts__)``)."""
    return load_data(data_path(opts))


def master_inventory(opts):
    """The whole validated inventory of this master (runners: ``master_inventory(__opts__)``)."""
    return validate(master_data(opts).get(PILLAR_KEY))


def _raw_campuses(fleet):
    inventory = fleet.get(PILLAR_KEY)
    campuses = inventory.get("campuses") if isinstance(inventory, dict) else None
    return campuses if isinstance(campuses, dict) else {}


def _members(spec, role):
    members = spec.get(role) if isinstance(spec, dict) else None
    return members if isinstance(members, dict) else {}


def campus_slice(fleet, campus, kiosk=None):
    """
    The pillar of one campus's minions, from the fleet data ``fleet``: the
    campus's settings, VLANs and Pis; its kiosks (all of them, or only
    ``kiosk``); its hosts entries of ``kiosk_fleet_changes`` (other keys of
    that mapping are fleet-wide defaults and are kept); the release
    verification keys. No power schedules (no minion needs them). Not
    validated: the minion validates what it gets.
    """
    if not isinstance(fleet, dict):
        raise InventoryError(f"fleet: expected a mapping, got {type(fleet).__name__}")
    if not isinstance(campus, str):
        raise InventoryError(f"campus: {campus!r} is not a campus name")
    if kiosk is not None and not isinstance(kiosk, str):
        raise InventoryError(f"kiosk: {kiosk!r} is not a kiosk id")
    spec = _raw_campuses(fleet).get(campus)
    if not isinstance(spec, dict):
        raise InventoryError(f"campus: {campus!r} is not a campus of the fleet data")
    kiosks = _members(spec, "kiosks")
    if kiosk is not None:
        if kiosk not in kiosks:
            raise InventoryError(f"kiosk: {kiosk!r} is not a kiosk of campus {campus}")
        kiosks = {kiosk: kiosks[kiosk]}
    entry = {k: spec[k] for k in _CAMPUS_SETTINGS if k in spec}
    entry["kiosks"] = kiosks
    out = {PILLAR_KEY: {"campuses": {campus: entry}}}
    changes = fleet.get(CHANGES_KEY)
    if isinstance(changes, dict):
        shared = {k: v for k, v in changes.items() if k != "hosts"}
        hosts = changes.get("hosts")
        if isinstance(hosts, dict) and campus in hosts:
            shared["hosts"] = {campus: hosts[campus]}
        if shared:
            out[CHANGES_KEY] = shared
    release = fleet.get(RELEASE_KEY)
    if isinstance(release, dict) and isinstance(release.get("verify_key"), list):
        out[RELEASE_KEY] = {"verify_key": list(release["verify_key"])}
    return copy.deepcopy(out)


def slice_for(fleet, minion_id):
    """
    The pillar of one minion from the fleet data ``fleet`` (what
    ``pillar/kiosk_fleet.sls`` returns): for a kiosk, :func:`campus_slice`
    of its campus holding only its own kiosk entry; for a Pi, its campus's
    slice with every kiosk of the campus; for any other id (or an id the
    data names twice), ``{}``. ``minion_id`` must be the id the master
    authenticated (``__opts__["id"]`` while rendering pillar), never a grain.

    Only the minion's own campus is read, so a bad entry in another campus
    changes nothing here.
    """
    if not isinstance(minion_id, str) or not minion_id:
        raise InventoryError(f"minion_id: {minion_id!r} is not a minion id")
    if not isinstance(fleet, dict):
        raise InventoryError(f"fleet: expected a mapping, got {type(fleet).__name__}")
    if not _NAME.match(minion_id):  # no fleet name looks like this (e.g. "*" of pillar.show_pillar)
        return {}
    found = [
        (campus, role)
        for campus, spec in _raw_campuses(fleet).items()
        for role in ("kiosks", "pis")
        if minion_id in _members(spec, role)
    ]
    if len(found) != 1:  # unknown, or claimed twice (kiosk_fleet.inventory names it): fail closed
        return {}
    campus, role = found[0]
    return campus_slice(fleet, campus, kiosk=minion_id if role == "kiosks" else None)
