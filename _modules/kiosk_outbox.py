"""
A Pi's campus outbox, read by the top master (``kiosk_outbox.collect``):
what the campus reconciler recorded (actions, observations, verification
results, alerts, clock and leader views) since the collector's cursor.

The outbox is ``<kiosk_campus:dir>/outbox.db`` (``fleet_outbox.Outbox``,
SQLite in WAL mode), written by the Pi master's reconciler; this module runs
in the Pi minion, another process, and only reads and prunes. Sending a
cursor acknowledges every entry up to it: those are pruned. A cursor from
another outbox (the file was recreated) is not acknowledged: the answer
starts again from 0 with ``reset: True`` (the collector dedups by key).
"""

import logging
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_clock, fleet_fields, fleet_inventory, fleet_outbox
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_clock
    import fleet_fields
    import fleet_inventory
    import fleet_outbox

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_outbox"

DEFAULT_DIR = "/var/lib/kiosk_fleet/campus"
OUTBOX_FILE = "outbox.db"


def __virtual__():
    return __virtualname__


def _campus():
    """This Pi's campus: from its pillar's inventory slice, else ``kiosk_campus:campus``."""
    me = __opts__["id"]
    try:
        inventory = fleet_inventory.from_pillar(__pillar__)
    except fleet_inventory.InventoryError:
        inventory = None
    if inventory is not None:
        campus = fleet_inventory.campus_of(inventory, me)
        if me not in inventory["campuses"][campus]["pis"]:
            raise SaltInvocationError(f"id: {me} is a kiosk, not a Pi; the outbox is on the Pis")
        return campus
    campus = __salt__["config.get"]("kiosk_campus:campus")
    if not isinstance(campus, str) or not fleet_fields.NAME.match(campus):
        raise SaltInvocationError("kiosk_campus.campus: this Pi's campus is neither in its pillar nor configured")
    return campus


def _outbox():
    directory = __salt__["config.get"]("kiosk_campus:dir", DEFAULT_DIR) or DEFAULT_DIR
    cap = __salt__["config.get"]("kiosk_campus:outbox_cap", fleet_outbox.DEFAULT_CAP)
    if not isinstance(directory, str) or not os.path.isabs(directory):
        raise SaltInvocationError(f"kiosk_campus.dir: {fleet_fields.shown(directory)} is not an absolute path")
    try:
        return fleet_outbox.Outbox(os.path.join(directory, OUTBOX_FILE), cap=cap)
    except fleet_outbox.OutboxError as exc:  # only the cap can be wrong here: the path was checked
        raise SaltInvocationError(f"kiosk_campus.outbox_cap: {fleet_fields.shown(cap)} is not 1-"
                                  f"{fleet_outbox.MAX_CAP} entries ({exc})") from None


def _my_cursor(cursor, outbox, cursors):
    """``(cursor, outbox id)`` for this Pi: ``cursors`` (one job to every Pi: ``{pi: {"cursor", "outbox"}}``) wins."""
    if cursors is None:
        return cursor, outbox
    if not isinstance(cursors, dict):
        raise SaltInvocationError(f"cursors: expected a mapping of Pi ids, got {type(cursors).__name__}")
    mine = cursors.get(__opts__["id"])
    if mine is None:
        return 0, None  # the collector has nothing of this Pi yet
    if isinstance(mine, dict):
        return mine.get("cursor", 0), mine.get("outbox")
    return mine, None


def _serial():
    """The calendar serial this Pi holds (kiosk_campus.calendar without an argument reads it), or None."""
    if "kiosk_campus.calendar" not in __salt__:
        return None
    # kiosk_campus.calendar sets the job's exit code when it holds no calendar: not this job's failure
    retcode = __context__.get("retcode")
    try:
        answer = __salt__["kiosk_campus.calendar"]()
    except Exception as exc:  # pylint: disable=broad-except
        # the serial is a courtesy of this answer: a calendar problem must not hold the entries back
        log.warning("kiosk_outbox: calendar serial not read: %s", type(exc).__name__)
        answer = None
    finally:
        if retcode is None:
            __context__.pop("retcode", None)
        else:
            __context__["retcode"] = retcode
    serial = answer.get("serial") if isinstance(answer, dict) else None
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else None


def _clock():
    try:
        return fleet_clock.clock_state(__salt__["config.get"]("kiosk_campus:clock_file") or None)
    except fleet_clock.ClockError as exc:
        return {"synced": False, "source": "file", "offset_s": 0.0, "error": str(exc)}


def entries(cursor=0, limit=fleet_outbox.DEFAULT_LIMIT, outbox=None, cursors=None):
    """
    Acknowledge ``cursor`` (prune the entries up to it) and return the next
    at most ``limit`` entries of this Pi's outbox. ``outbox``: the outbox id
    the collector got with that cursor; a cursor of another outbox (the
    file was recreated), or one this outbox never handed out (a return
    forged for this Pi), is not acknowledged and the answer starts from 0
    (``reset: True``).
    ``cursors``: ``{pi: {"cursor", "outbox"}}`` for one job to every Pi;
    this Pi takes its own (none: from 0).

    Returns ``{"result": True, "pi", "campus", "entries": [{"seq", "kind",
    "key", "at", "data"}], "cursor", "more", "outbox", "last_seq",
    "dropped": {kind: n}, "acked", "reset", "serial": calendar serial or
    None, "clock": clock state}``.

    CLI Example:

    .. code-block:: bash

        salt pi-riverside-1 kiosk_outbox.entries
        salt pi-riverside-1 kiosk_outbox.entries cursor=1200 limit=100
    """
    me = __opts__["id"]
    cursor, outbox = _my_cursor(cursor, outbox, cursors)
    try:
        cursor = fleet_outbox.check_cursor(cursor)
        limit = fleet_outbox.check_limit(limit)
        if outbox is not None and not isinstance(outbox, str):
            raise fleet_outbox.OutboxError(f"outbox: {fleet_fields.shown(outbox)} is not an outbox id")
        campus = _campus()
    except (fleet_outbox.OutboxError, fleet_inventory.InventoryError) as exc:
        raise SaltInvocationError(str(exc)) from None
    box = _outbox()
    try:
        acked, reset = 0, False
        if cursor and box.knows(cursor, outbox):
            acked = box.ack(cursor)
        elif cursor:
            log.warning("kiosk_outbox: cursor %s is not of this outbox (recreated?): collecting from 0", cursor)
            cursor, reset = 0, True
        page = box.after(cursor, limit)
        box.handed(page["cursor"])  # only a cursor this outbox handed out is acknowledged later
    except fleet_outbox.OutboxError as exc:
        raise CommandExecutionError(f"kiosk_campus.dir: {exc}") from None
    return dict(page, result=True, pi=me, campus=campus, acked=acked, reset=reset, serial=_serial(), clock=_clock())


def stats():
    """
    What this Pi's outbox holds: ``{"result": True, "outbox", "last_seq",
    "entries": {kind: n}, "dropped": {kind: n}, "integrity": "ok"|findings}``.

    CLI Example:

    .. code-block:: bash

        salt 'pi-riverside-*' kiosk_outbox.stats
    """
    box = _outbox()
    try:
        return dict(box.stats(), result=True, integrity=box.integrity())
    except fleet_outbox.OutboxError as exc:
        raise CommandExecutionError(f"kiosk_campus.dir: {exc}") from None
