"""
Kiosk release packages as states, through the ``kiosk_pkg`` execution module.

.. code-block:: yaml

    # on a kiosk: follow the campus pin (states/kiosk_fleet/release.sls, run at boot)
    kiosk-app:
      kiosk_pkg.installed

    # on a Pi: hold a release in the campus repository
    kiosk-app-1.4.0:
      kiosk_pkg.staged:
        - name: kiosk-app
        - version: 1.4.0
        - source: http://salt.example.org:8080/kiosk-releases/
"""

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_release
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_release

__virtualname__ = "kiosk_pkg"


def __virtual__():
    if "kiosk_pkg.check_update" in __salt__:
        return __virtualname__
    return (False, "kiosk_pkg state: the kiosk_pkg execution module is not available on this minion")


def installed(name):
    """
    The kiosk runs its campus's pinned version of release ``name``: a pin
    and a manifest signed by a key in pillar ``kiosk_release:verify_key``,
    files verified, install command run, ``installed.json`` written (the
    ``kiosk_release`` grain). Fails, installing nothing, when a signature
    or the key is missing.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 state.single kiosk_pkg.installed kiosk-app test=True
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    outcome = __salt__["kiosk_pkg.check_update"](name, test=__opts__["test"])
    one = outcome["releases"][name]
    if one["result"] is False:
        ret.update(result=False, comment=one.get("error", "update failed"))
    elif one["result"] is None:
        ret.update(result=None, comment=one["comment"], changes={"version": {"old": one.get("installed"), "new": one.get("pin")}})
    elif one.get("changed"):
        ret.update(comment=f"installed {one['version']} from {one.get('source')}",
                   changes={"version": {"old": one.get("installed"), "new": one["version"]}})
    else:
        ret["comment"] = one.get("comment", "up to date")
    return ret


def staged(name, version, source="salt://kiosk_releases/"):
    """
    This Pi's repository holds release ``name`` ``version``, verified
    (manifest signed by a key in pillar ``kiosk_release:verify_key``; size,
    md5, sha256) before it went live.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 state.single kiosk_pkg.staged kiosk-app version=1.4.0 test=True
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:  # YAML reads version: 1.10 as the float 1.1: refused, never staged as another version
        version = fleet_release.check_version(version)
    except fleet_release.ReleaseError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    have = __salt__["kiosk_pkg.repo_status"](name)
    if have.get("result") and version in have["staged"]:
        ret["comment"] = f"{name} {version} is staged"
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"would stage {name} {version} from {source}",
                   changes={"staged": {"old": None, "new": version}})
        return ret
    outcome = __salt__["kiosk_pkg.stage"](name, version, source=source)
    if not outcome["result"]:
        ret.update(result=False, comment=outcome["error"])
        return ret
    ret.update(comment=f"staged {name} {version} from {outcome['source']} ({outcome['fetched']} bytes)",
               changes={"staged": {"old": None, "new": version}})
    return ret
