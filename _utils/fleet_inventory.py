"""
The fleet inventory: campuses, their Pis, VLANs and kiosks.

One schema, shared by every capability. It lives in pillar under the key
``kiosk_fleet`` (see ``pillar/kiosk_fleet.sls``)::

    kiosk_fleet:
      campuses:
        east:
          timezone: Asia/Shanghai          # IANA name, default Asia/Shanghai
          wol_port: 9                      # UDP port for magic packets, default 9
          repo_port: 80                    # the Pis' release repositories (nginx), default 80
          vlans:
            hall: {network: 10.1.1.0/24}   # broadcast defaults to the network's
          pis:
            pi-east-1:
              vlans: {hall: {source: 10.1.1.2}}   # optional source address per VLAN
              repo_url: http://pi-east-1.lan/kiosk-releases/   # optional, else http://<source>:<repo_port>/...
          kiosks:
            kiosk-east-01: {mac: "52:54:00:01:01:01", ip: 10.1.1.11, vlan: hall,
                            location: "Hall A", service_port: 3389}

:func:`validate` returns a normalised copy or raises :class:`InventoryError`
listing every problem, each naming the field (``campuses.east.kiosks.k1.mac``).
"""

import ipaddress
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

try:  # classic install: Salt puts the _utils folder on sys.path while loading
    import fleet_fields
    import fleet_wol
except ImportError:  # pip-installed extension
    from saltext_kiosk_fleet.utils import fleet_fields, fleet_wol

__virtualname__ = "fleet_inventory"

PILLAR_KEY = "kiosk_fleet"
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_WOL_PORT = 9
DEFAULT_SERVICE_PORT = 3389
DEFAULT_REPO_PORT = 80  # the Pis' release repositories (nginx)
# Salt minion ids and campus names: letters, digits, dot, dash, underscore
_NAME = fleet_fields.NAME


def __virtual__():
    return __virtualname__


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


def _validate_pis(campus, raw, vlans, errors):
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
                entry["interface"] = str(spec["interface"])
            pi_vlans[vlan_name] = entry
        pis[pi_id] = {"vlans": pi_vlans}
        repo_url = pi.get("repo_url")
        if repo_url is not None:
            # the Pi's release repository when not at http://<source>:<repo_port>/kiosk-releases/
            if not isinstance(repo_url, str) or not re.match(r"^https?://[^\s/]+/\S*\Z", repo_url):
                errors.append(f"{field}.repo_url: {repo_url!r} is not an http(s) URL ending in a path")
            else:
                pis[pi_id]["repo_url"] = repo_url if repo_url.endswith("/") else repo_url + "/"

    if not pis:
        errors.append(f"campuses.{campus}.pis: a campus needs at least one Pi")
    return pis


def _validate_kiosks(campus, raw, vlans, service_port, errors, seen_macs):
    kiosks = {}
    for kiosk_id, kiosk in _mapping(raw, f"campuses.{campus}.kiosks", errors).items():
        field = f"campuses.{campus}.kiosks.{kiosk_id}"
        _name(kiosk_id, field, errors)
        kiosk = _mapping(kiosk, field, errors)
        try:
            mac = fleet_wol.normalize_mac(kiosk.get("mac"), f"{field}.mac")
        except fleet_wol.WolError as exc:
            errors.append(str(exc))
            mac = None
        if mac is not None:
            if mac in seen_macs:
                errors.append(f"{field}.mac: {mac} is also the MAC of {seen_macs[mac]}")
            else:
                seen_macs[mac] = field
        vlan = kiosk.get("vlan")
        if vlan not in vlans:
            errors.append(f"{field}.vlan: {vlan!r} is not a VLAN of campus {campus} ({sorted(vlans)})")
        ip = _address(kiosk.get("ip"), f"{field}.ip", errors)
        if ip and vlan in vlans and ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(vlans[vlan]["network"]):
            errors.append(f"{field}.ip: {ip} is outside VLAN {vlan} ({vlans[vlan]['network']})")
        port = _port(kiosk.get("service_port", service_port), f"{field}.service_port", errors)
        kiosks[kiosk_id] = {
            "mac": mac,
            "ip": ip,
            "vlan": vlan,
            "location": str(kiosk.get("location", "")),
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
        try:
            ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError):
            errors.append(f"{field}.timezone: {timezone!r} is not an IANA time zone")
        wol_port = _port(spec.get("wol_port", DEFAULT_WOL_PORT), f"{field}.wol_port", errors)
        service_port = _port(spec.get("service_port", DEFAULT_SERVICE_PORT), f"{field}.service_port", errors)
        repo_port = _port(spec.get("repo_port", DEFAULT_REPO_PORT), f"{field}.repo_port", errors)
        vlans = _validate_vlans(campus, spec.get("vlans"), errors)
        if not vlans:
            errors.append(f"{field}.vlans: a campus needs at least one VLAN")
        pis = _validate_pis(campus, spec.get("pis"), vlans, errors)
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
    or a module's ``__pillar__`` (a loader context object with ``get``).
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
        return [str(v) for v in value]
    raise InventoryError(f"{field}: expected a name, a comma-separated string or a list, got {value!r}")


def campus_of(inventory, minion_id):
    """Return the campus of a kiosk or Pi id; :class:`InventoryError` when unknown."""
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
        unknown = []
        for kiosk_id in kiosk_ids:
            try:
                where = campus_of(inventory, kiosk_id)
            except InventoryError:
                unknown.append(kiosk_id)
                continue
            if kiosk_id not in known[where]["kiosks"]:
                unknown.append(kiosk_id)
                continue
            if campus_names and where not in campus_names:
                raise InventoryError(f"kiosks: {kiosk_id} belongs to campus {where}, not {', '.join(campus_names)}")
            selection.setdefault(where, [])
            if kiosk_id not in selection[where]:
                selection[where].append(kiosk_id)
        if unknown:
            raise InventoryError(f"kiosks: unknown kiosk {', '.join(unknown)}")
    else:
        for name in campus_names:
            selection[name] = sorted(known[name]["kiosks"])
    return selection


def home_pi(campus_spec, kiosk_id):
    """The Pi a kiosk's minion points at: the campus's Pis, round robin in kiosk id order."""
    pis = sorted(campus_spec["pis"])
    return pis[sorted(campus_spec["kiosks"]).index(kiosk_id) % len(pis)]


def pis_of(inventory, campus):
    """Return the sorted Pi ids of ``campus``."""
    if campus not in inventory["campuses"]:
        raise InventoryError(f"campus: unknown campus {campus!r}")
    return sorted(inventory["campuses"][campus]["pis"])
