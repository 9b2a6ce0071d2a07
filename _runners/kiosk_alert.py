"""
Alert delivery from the top master: the one runner that posts to the
webhook configured in the master config. Payloads are built by
``_utils/fleet_alerts.py``; reactors only hand ``tag`` and ``data`` to
:func:`event`.

.. code-block:: yaml

    # /etc/salt/master.d/kiosk-fleet-top.conf
    kiosk_fleet_alerts:
      webhook_url: https://alerts.example.org/hooks/kiosk   # http(s); may carry a token, never shown
      timeout: 5               # seconds per POST, default 5
      rate_limit: 10           # alerts accepted per sending minion per window, default 10
      rate_window_s: 60        # the window, default 60 s
      dedup_window_s: 120      # drop copies of one alert within this many s, default 120; 0: off
      reread_timeout: 20       # seconds to wait for a Pi's re-read, default 20
      textfile_dir: /var/lib/prometheus/node-exporter   # default: kiosk_power:textfile_dir

One attempt per alert with a short timeout, never a retry loop: reactors run
in the master's thread pool, and a dead webhook must not pile up threads.
The URL is shown as ``scheme://host[:port]`` only (``fleet_http``): its path
and query may hold a token.

Rate limit: per claimed sender id, at most ``rate_limit`` accepted alerts in
any ``rate_window_s`` seconds, decided under an SQLite write transaction
(``<cachedir>/kiosk_alerts/rate.sqlite``: reactor runners are threads of one
process, the CLI another process); the rest are dropped and counted in
``kiosk_alerts_dropped_total{minion}``. The id is what the event claims, so
a tampered kiosk can use up a Pi's allowance for a window: the counter shows
it, and the Pi's own ``kiosk_env`` metrics are not affected.

Copies: a kiosk is a minion of every Pi of its campus (multi-master), so
each event it sends reaches the top master once per Pi. An event whose key
(``fleet_alerts.alert_key``: sender id, tag, payload as built) was accepted
less than ``dedup_window_s`` seconds ago is dropped and counted in
``kiosk_alerts_duplicates_total{minion}``, in the same transaction as the
rate limit (two reactor threads with two copies: one post), and does not
use up the sender's allowance. The same alert after the window is posted
again. Only release alerts (the alert event a kiosk sends) are
de-duplicated: a Pi has one master, and an environment event is believed
only after a re-read, so a forged copy refused by the re-read must not hide
the Pi's real alert. ``kiosk_alert.post`` (alerts a runner of this master
built itself, once) is not de-duplicated.
"""

import logging
import os
import sqlite3
import threading
import time

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import (
        fleet_alerts,
        fleet_fields,
        fleet_http,
        fleet_inventory,
        fleet_metrics,
        fleet_runner,
        fleet_state,
    )
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_alerts
    import fleet_fields
    import fleet_http
    import fleet_inventory
    import fleet_metrics
    import fleet_runner
    import fleet_state

import salt.client

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_alert"

CONFIG_KEY = "kiosk_fleet_alerts"
DEFAULT_TIMEOUT = 5
DEFAULT_RATE_LIMIT = 10
DEFAULT_RATE_WINDOW_S = 60
DEFAULT_REREAD_TIMEOUT = 20
DEFAULT_DEDUP_WINDOW_S = fleet_alerts.DEDUP_WINDOW_S
STATE_DIR = "kiosk_alerts"
RATE_DB = "rate.sqlite"
TEXTFILE = "kiosk_alerts.prom"
INVENTORY_TTL_S = 30  # a flood of events must not compile pillar once per event
_INVENTORY = {"at": None, "value": None}
_INVENTORY_LOCK = threading.Lock()


def __virtual__():
    if not HAS_REQUESTS:
        return False, "kiosk_alert: the requests package is not installed"
    return __virtualname__


def _settings(timeout=None):
    conf = fleet_runner.config(__opts__, CONFIG_KEY)
    if not conf:
        raise fleet_runner.ConfigError(f"{CONFIG_KEY}: not set in the master config (expected {{webhook_url: https://...}})")
    url = fleet_http.check_url(conf.get("webhook_url"), f"{CONFIG_KEY}.webhook_url")
    given = conf.get("timeout", DEFAULT_TIMEOUT) if timeout is None else timeout
    try:
        timeout = float(given)
    except (TypeError, ValueError, OverflowError):
        timeout = -1
    if isinstance(given, bool) or not 0 < timeout <= 60:  # nan fails the comparison too
        raise fleet_runner.RunnerError(f"timeout: {fleet_fields.shown(given)} is outside 0-60 seconds")
    textfile_dir = conf.get("textfile_dir") or fleet_runner.config(__opts__, "kiosk_power").get("textfile_dir")
    return {
        "url": url,
        "timeout": timeout,
        "rate_limit": fleet_runner.number(conf.get("rate_limit", DEFAULT_RATE_LIMIT),
                                          f"{CONFIG_KEY}.rate_limit", 1, 100000),
        "rate_window_s": fleet_runner.number(conf.get("rate_window_s", DEFAULT_RATE_WINDOW_S),
                                             f"{CONFIG_KEY}.rate_window_s", 1, 86400),
        "dedup_window_s": fleet_runner.number(conf.get("dedup_window_s", DEFAULT_DEDUP_WINDOW_S),
                                              f"{CONFIG_KEY}.dedup_window_s", 0, 86400),
        "reread_timeout": fleet_runner.number(conf.get("reread_timeout", DEFAULT_REREAD_TIMEOUT),
                                              f"{CONFIG_KEY}.reread_timeout", 1, 600),
        "textfile_dir": textfile_dir,
    }


def _inventory():
    """The fleet inventory, kept for INVENTORY_TTL_S seconds in this process."""
    with _INVENTORY_LOCK:
        now = time.monotonic()
        if _INVENTORY["at"] is None or now - _INVENTORY["at"] > INVENTORY_TTL_S:
            _INVENTORY["value"] = fleet_inventory.master_inventory(__opts__)
            _INVENTORY["at"] = now
        return _INVENTORY["value"]


# ---------------------------------------------------------------- durable state: rate limit and counters


def _ledger():
    return fleet_state.Ledger(os.path.join(__opts__["cachedir"], STATE_DIR, RATE_DB))


def _count(book, metric, label, settings):
    book.count(metric, label)
    directory = settings.get("textfile_dir") if settings else None
    if not directory:
        return
    # the counters and their help live in fleet_metrics (ALERT_COUNTERS)
    try:  # written inside the transaction: a later count never gets overwritten by an older file
        families = fleet_metrics.alert_families(book.counters())
        fleet_metrics.write_textfile(directory, TEXTFILE, fleet_metrics.render(families),
                                     field=f"{CONFIG_KEY}.textfile_dir")
    except (OSError, ValueError) as exc:
        log.warning("kiosk_alert: metrics not written: %s", type(exc).__name__)


def _record(metric, label, settings):
    try:
        with _ledger().transaction() as book:
            _count(book, metric, label, settings)
    except sqlite3.Error as exc:
        log.error("kiosk_alert: could not count %s: %s", metric, type(exc).__name__)


def _admit(minion, key, settings):
    """
    ``"duplicate"``, ``"dropped"`` (rate limit) or ``"accepted"`` for the
    alert ``key`` from ``minion`` (``None``: not de-duplicated): both checks
    decided and recorded in one transaction, so of two copies handled at
    once exactly one is accepted.
    """
    window = settings["dedup_window_s"] if key is not None else 0
    with _ledger().transaction() as book:
        now = time.time()  # read under the lock: decisions are taken in clock order
        if window:
            book.forget_seen(now - window, after=now + window)
        if key is not None and fleet_alerts.is_duplicate(book.seen_at(key), now, window):
            _count(book, "kiosk_alerts_duplicates_total", minion, settings)
            return "duplicate"  # before the rate limit: a copy uses up no allowance
        allowed, _ = fleet_alerts.rate_decision(book.times(minion), now, settings["rate_limit"],
                                                settings["rate_window_s"])
        book.forget_before(now - settings["rate_window_s"])
        if not allowed:
            _count(book, "kiosk_alerts_dropped_total", minion, settings)
            return "dropped"
        book.record(minion, now)
        if window:
            book.remember(key, now)
    return "accepted"


# ---------------------------------------------------------------- posting


def _send(payload, settings):
    url = settings["url"]
    kind = str(payload.get("kind") or "manual")
    try:
        with fleet_http.session() as sess:
            answer = sess.post(url, json=payload, timeout=settings["timeout"], allow_redirects=False)
    except requests.RequestException as exc:
        error = fleet_http.describe_error(exc, url)
        log.error("kiosk_alert: POST to the webhook failed: %s (%s)", error, payload["summary"])
        _record("kiosk_alerts_post_failures_total", kind, settings)
        return fleet_runner.fail(__context__, f"{CONFIG_KEY}.webhook_url: POST failed: {error}", payload=payload)
    if not 200 <= answer.status_code < 300:
        log.error("kiosk_alert: the webhook at %s answered HTTP %s (%s)", fleet_http.host_of(url),
                  answer.status_code, payload["summary"])
        _record("kiosk_alerts_post_failures_total", kind, settings)
        return fleet_runner.fail(__context__, f"{CONFIG_KEY}.webhook_url: {fleet_http.host_of(url)} answered"
                                 f" HTTP {answer.status_code}", payload=payload)
    _record("kiosk_alerts_posted_total", kind, settings)
    return fleet_runner.finish(__context__, {"result": True, "status": answer.status_code, "payload": payload})


def post(payload=None, timeout=None):
    """
    POST ``payload`` (a mapping with at least ``severity``: info, warning or
    critical, and a one-line ``summary``) as JSON to
    ``kiosk_fleet_alerts:webhook_url``. What ``kiosk_power.verify`` calls
    for its mismatches, and an operator's test. Fails (exit code 1) on a bad
    payload, a missing URL, a network error or a non-2xx answer; errors name
    the webhook's scheme and host only.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_alert.post '{"severity": "warning", "summary": "test from the top master"}'
    """
    try:
        fleet_alerts.check_payload(payload)
        settings = _settings(timeout)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    return _send(payload, settings)


def _reread(pi, timeout):
    """
    ``(reading, why)``: ``kiosk_env.read`` on ``pi`` now, every return of the
    job collected: two different returns for the Pi mean one was forged
    (``fleet_runner.call``), and the reading is not used.
    """
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        returns = fleet_runner.call(client, [pi], "kiosk_env.read", timeout=timeout)
    if pi in returns.conflicting:
        return None, f"{pi} answered the re-read twice, differently (a forged return)"
    if pi in returns.failed:
        return None, f"{pi} failed the re-read: {returns.failed[pi]}"
    if pi not in returns.answered:
        return None, f"{pi} did not answer the re-read within {timeout} s"
    return returns.answered[pi], ""


def _refuse(settings, reason, tag, error):
    log.warning("kiosk_alert: alert event %.120r not posted: %s", tag, error)
    _record("kiosk_alerts_refused_total", reason, settings)
    return fleet_runner.fail(__context__, error, posted=False)


def event(tag=None, data=None, timeout=None):
    """
    Post the alert an event announces, after checking it: what the alert
    reactors call with the event's ``tag`` and ``data``, nothing else.

    - ``salt/beacon/<pi>/kiosk_env/alert|clear|sensor_error``: ``data["id"]``
      must equal the tag's Pi and be a Pi of the inventory; the Pi is asked
      again (``kiosk_env.read``, one job) and the alert is posted only when
      the reading agrees (an alert still out of range, an all-clear back in
      range, a sensor still failing); otherwise nothing is posted and the
      refusal is logged;
    - ``kiosk/release/alert``: ``data["id"]`` must be a Pi or kiosk of the
      inventory;
    - release alerts: a copy of one accepted less than ``dedup_window_s``
      seconds ago (same sender id, tag and payload: a multi-master kiosk's
      event arrives once per Pi) is dropped and counted
      (``kiosk_alerts_duplicates_total{minion}``, exit code 0,
      ``duplicate: True``) and uses up no allowance;
    - both: at most ``rate_limit`` alerts per sender id per
      ``rate_window_s`` seconds, the rest dropped and counted
      (``kiosk_alerts_dropped_total{minion}``).

    The campus comes from the inventory, never from the event. Power
    mismatches are never posted from an event (``kiosk_power.verify`` posts
    them itself). ``timeout``: seconds to wait for the re-read (default
    ``reread_timeout``). Exit code 1 when nothing was posted (a dropped
    copy excepted).

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_alert.event tag=salt/beacon/pi-riverside-1/kiosk_env/alert \\
            data='{"id": "pi-riverside-1", "metric": "smoke", "value": true}'
    """
    try:
        settings = _settings()
        if timeout is not None:
            settings["reread_timeout"] = fleet_runner.number(timeout, "timeout", 1, 600)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    try:
        claim = fleet_alerts.sender(tag, data)
        campus = fleet_alerts.campus_of_sender(_inventory(), claim)
        key = None
        if claim["kind"] == "release":
            payload = fleet_alerts.release_alert(claim, campus)
            key = fleet_alerts.alert_key(claim["minion"], tag, payload)
        else:
            # not de-duplicated: a Pi has one master (one copy), and a forged copy
            # the re-read refuses must not hide the Pi's real alert
            fleet_alerts.env_subject(claim)
    except (fleet_alerts.AlertError, fleet_inventory.InventoryError) as exc:
        return _refuse(settings, "invalid", tag, exc)
    minion = claim["minion"]
    try:
        verdict = _admit(minion, key, settings)
    except (sqlite3.Error, ValueError) as exc:
        log.error("kiosk_alert: rate limit state unusable (%s): nothing posted", type(exc).__name__)
        return fleet_runner.fail(__context__, f"rate limit: state unusable ({type(exc).__name__})", posted=False)
    if verdict == "duplicate":
        log.info("kiosk_alert: alert %.120r from %s already accepted within %s s: this copy dropped",
                 tag, minion, settings["dedup_window_s"])
        return fleet_runner.finish(__context__, {"result": True, "posted": False, "duplicate": True})
    if verdict == "dropped":
        log.warning("kiosk_alert: %s sent more than %s alerts in %s s: alert %.120r dropped",
                    minion, settings["rate_limit"], settings["rate_window_s"], tag)
        return fleet_runner.fail(
            __context__, f"rate limit: {minion} sent more than {settings['rate_limit']} alerts"
            f" in {settings['rate_window_s']} s; dropped", posted=False)
    try:
        if claim["kind"] == "env":
            reading, why = _reread(minion, settings["reread_timeout"])
            agrees = False
            if reading is not None:
                agrees, why = fleet_alerts.reread_agrees(claim, reading)
            if not agrees:
                return _refuse(settings, "unconfirmed", tag,
                               f"re-read of {minion} does not confirm the {claim['env_kind']}: {why}")
            payload = fleet_alerts.env_alert(claim, campus, reading)
    except fleet_alerts.AlertError as exc:
        return _refuse(settings, "invalid", tag, exc)
    return _send(payload, settings)
