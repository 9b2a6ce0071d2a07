"""
Change templates: parameter validation and reading state.apply returns. Pure.

A template is an SLS under ``kiosk_fleet/changes/`` in the masters'
``file_roots``; ``kiosk_change.apply`` runs it on kiosks through the syndics
and reports per kiosk with :func:`summarize`.
"""

import ipaddress
import re

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

TEMPLATE_DIR = "kiosk_fleet/changes"
PILLAR_KEY = "kiosk_fleet_changes"
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
# RFC 1123 host names, dotted
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class ChangeError(fleet_fields.FieldErrors):
    """A change request that cannot run; each message names its field."""


def check_template(name, available):
    """The SLS name of template ``name``; refuses path tricks and unknown templates."""
    if not isinstance(name, str) or not _TEMPLATE.match(name):
        raise ChangeError(f"template: {name!r} is not a template name (lower case, digits, _)")
    if name not in available:
        raise ChangeError(f"template: unknown template {name!r} (available: {', '.join(sorted(available)) or 'none'})")
    return f"{TEMPLATE_DIR.replace('/', '.')}.{name}"


def templates_from_file_list(files):
    """Template names from a fileserver file list (``kiosk_fleet/changes/<name>.sls``)."""
    prefix = TEMPLATE_DIR + "/"
    if isinstance(files, (str, bytes)) or not isinstance(files, (list, tuple, set, frozenset)):
        raise ChangeError(f"files: expected a list of file names, got {type(files).__name__}")
    bad = [f for f in files if not isinstance(f, str)]
    if bad:
        raise ChangeError(f"files: {bad[0]!r} is not a file name")
    return sorted(
        f[len(prefix):-4] for f in files
        if f.startswith(prefix) and f.endswith(".sls") and "/" not in f[len(prefix):] and _TEMPLATE.match(f[len(prefix):-4])
    )


def check_hosts(hosts, field="hosts"):
    """``{hostname: ipv4}`` validated; every bad entry named."""
    errors = []
    hosts = fleet_fields.mapping(hosts, field, errors)
    checked = {}
    for name, address in hosts.items():
        if not isinstance(name, str) or not _HOSTNAME.match(name):
            errors.append(f"{field}.{name}: not a host name")
            continue
        try:
            checked[name.lower()] = str(ipaddress.IPv4Address(str(address)))
        except ValueError:
            errors.append(f"{field}.{name}: {address!r} is not an IPv4 address")
    if errors:
        raise ChangeError(errors)
    return checked


def check_params(params):
    """Template parameters (``pillar['kiosk_change']``): a mapping; known keys validated."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ChangeError(f"params: expected a mapping, got {params!r}")
    checked = dict(params)
    if "hosts" in params:
        checked["hosts"] = check_hosts(params["hosts"], "params.hosts")
    return checked


def check_pillar(pillar):
    """The ``kiosk_fleet_changes`` pillar: per-campus hosts entries validated."""
    errors = []
    pillar = fleet_fields.mapping(pillar, "pillar", errors)
    changes = fleet_fields.mapping(pillar.get(PILLAR_KEY), PILLAR_KEY, errors)
    for campus, hosts in fleet_fields.mapping(changes.get("hosts"), f"{PILLAR_KEY}.hosts", errors).items():
        try:
            check_hosts(hosts, f"{PILLAR_KEY}.hosts.{campus}")
        except ChangeError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ChangeError(errors)
    return changes


def summarize(ret):
    """
    One kiosk's ``state.apply`` return -> ``{"result", "changed", "pending",
    "failed": {state id: comment}, "errors": [...]}``. ``pending`` counts
    states that would change under ``test=True`` (result None).
    """
    if isinstance(ret, list):  # render or compile errors come back as a list of strings
        return {"result": False, "changed": 0, "pending": 0, "failed": {}, "errors": [str(e) for e in ret]}
    if not isinstance(ret, dict):
        return {"result": False, "changed": 0, "pending": 0, "failed": {}, "errors": [str(ret)]}
    changed = pending = 0
    failed = {}
    for state_id, state in ret.items():
        if not isinstance(state, dict) or "result" not in state:
            failed[str(state_id)] = str(state)
            continue
        if state["result"] is False:
            failed[state.get("__id__", state_id)] = state.get("comment", "")
        elif state["result"] is None:
            pending += 1
        elif state.get("changes"):
            changed += 1
    return {"result": not failed, "changed": changed, "pending": pending, "failed": failed, "errors": []}


def report(kiosk_ids, returns):
    """Per-kiosk summaries; kiosks that did not answer are listed as silent."""
    if isinstance(kiosk_ids, (str, bytes)) or not isinstance(kiosk_ids, (list, tuple, set, frozenset)):
        raise ChangeError(f"kiosk_ids: expected a list of kiosk ids, got {type(kiosk_ids).__name__}")
    bad = [k for k in kiosk_ids if not isinstance(k, str)]
    if bad:
        raise ChangeError(f"kiosk_ids: {bad[0]!r} is not a kiosk id")
    if not isinstance(returns, dict):
        raise ChangeError(f"returns: expected {{kiosk id: return}}, got {type(returns).__name__}")
    kiosks = {k: summarize(returns[k]) for k in kiosk_ids if k in returns}
    silent = sorted(set(kiosk_ids) - set(returns))  # kiosk ids are strings: sortable
    failed = sorted(k for k, s in kiosks.items() if not s["result"])
    return {"result": not silent and not failed, "kiosks": kiosks, "failed": failed, "silent": silent}
