"""
Registry values and keys on a kiosk, through the ``kiosk_reg`` execution
module (Salt's ``reg`` module on Windows, Wine's registry on Linux).

.. code-block:: yaml

    hide-recycle-bin-icon:
      kiosk_reg.present:
        - name: 'HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\HideDesktopIcons\\NewStartPanel'
        - vname: '{645FF040-5081-101B-9F08-00AA002F954E}'
        - data: 1
        - vtype: REG_DWORD
        - user: kiosk            # the kiosk user's hive, not SYSTEM's HKCU

    no-old-setting:
      kiosk_reg.absent:
        - name: 'HKLM\\SOFTWARE\\Kiosk'
        - vname: LegacyMode

    no-old-vendor-key:
      kiosk_reg.key_absent:
        - name: 'HKLM\\SOFTWARE\\OldVendor'

With ``test=True`` nothing is written; ``changes`` shows ``old`` -> ``new``.
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "kiosk_reg"


def __virtual__():
    if "kiosk_reg.set_value" in __salt__:
        return __virtualname__
    return (False, "kiosk_reg state: the kiosk_reg execution module is not available on this minion")


# kiosk_reg's errors name its own arguments (key, name); the states call them name, vname
_STATE_FIELDS = {"key": "name", "name": "vname"}


def _comment(exc):
    field, sep, rest = str(exc).partition(": ")
    if sep and field in _STATE_FIELDS:
        return f"{_STATE_FIELDS[field]}: {rest}"
    return str(exc)


def _fmt(value):
    if value is None:
        return "(absent)"
    return f"{value['vtype']} {value['data']!r}"


def _ensure(name, change, comments):
    """
    The state return of one registry change: ``change(test)`` calls the
    kiosk_reg module (``test`` from the state run), ``comments(res)`` gives
    the comments ``(unchanged, would change, changed)`` for its answer.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    test = bool(__opts__.get("test"))
    try:
        res = change(test)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret.update(result=False, comment=_comment(exc))
        return ret
    unchanged, would, done = comments(res)
    if not res["changed"]:
        ret["comment"] = unchanged
        return ret
    ret["changes"] = {"old": res["old"], "new": res.get("new")}
    if test:
        ret.update(result=None, comment=would)
    else:
        ret["comment"] = done
    return ret


def present(name, vname=None, data=None, vtype="REG_SZ", user=None):
    """
    Ensure value ``vname`` of key ``name`` holds ``data`` of type ``vtype``
    (``vname`` unset: the key's default value). Typed comparison: REG_DWORD
    ``"1"`` and ``1`` are the same, so nothing is written.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 state.single kiosk_reg.present name='HKLM\\SOFTWARE\\Kiosk' vname=Mode data=1 vtype=REG_DWORD test=True
    """

    def comments(res):
        where, old, new = f"{res['key']} {res['name']}", _fmt(res["old"]), _fmt(res["new"])
        return f"{where} is already {new}", f"{where} would change: {old} -> {new}", f"{where} set: {old} -> {new}"

    def change(test):
        return __salt__["kiosk_reg.set_value"](name, vname, data, vtype=vtype, user=user, test=test)

    return _ensure(name, change, comments)


def absent(name, vname=None, user=None):
    """
    Ensure value ``vname`` of key ``name`` does not exist.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 state.single kiosk_reg.absent name='HKLM\\SOFTWARE\\Kiosk' vname=LegacyMode
    """

    def comments(res):
        where, old = f"{res['key']} {res['name']}", _fmt(res["old"])
        return f"{where} is already absent", f"{where} would be deleted: {old} -> (absent)", f"{where} deleted (was {old})"

    def change(test):
        return __salt__["kiosk_reg.delete_value"](name, vname, user=user, test=test)

    return _ensure(name, change, comments)


def key_absent(name, user=None):
    """
    Ensure key ``name`` (with its subkeys and values) does not exist.

    CLI Example:

    .. code-block:: bash

        salt kiosk-riverside-01 state.single kiosk_reg.key_absent name='HKLM\\SOFTWARE\\OldVendor'
    """

    def comments(res):
        key, count = res["key"], len(res["old"] or {})
        return f"{key} is already absent", f"{key} would be deleted with {count} value(s)", f"{key} deleted"

    def change(test):
        return __salt__["kiosk_reg.delete_key"](name, user=user, test=test)

    return _ensure(name, change, comments)
