"""
Alert delivery from the top master: one JSON POST to the webhook configured
in the master config.

.. code-block:: yaml

    # /etc/salt/master.d/kiosk-fleet.conf
    kiosk_fleet_alerts:
      webhook_url: https://alerts.example.org/hooks/kiosk   # http(s)
      timeout: 5                                            # seconds, default 5

One attempt per alert with a short timeout, never a retry loop: reactors run
in the master's thread pool, and a dead webhook must not pile up threads.
"""

import logging
import urllib.parse

try:  # classic install: Salt puts the _utils folder on sys.path while loading
    import fleet_runner
except ImportError:  # pip-installed extension
    from saltext_kiosk_fleet.utils import fleet_runner

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_alert"

CONFIG_KEY = "kiosk_fleet_alerts"
DEFAULT_TIMEOUT = 5
SEVERITIES = ("info", "warning", "critical")


def __virtual__():
    if not HAS_REQUESTS:
        return False, "kiosk_alert: the requests package is not installed"
    return __virtualname__


def _settings(timeout):
    conf = __opts__.get(CONFIG_KEY)
    if not isinstance(conf, dict):
        raise ValueError(f"{CONFIG_KEY}: not set in the master config (expected {{webhook_url: https://...}})")
    url = conf.get("webhook_url")
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if not parsed or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{CONFIG_KEY}.webhook_url: {url!r} is not an http(s) URL")
    timeout = conf.get("timeout", DEFAULT_TIMEOUT) if timeout is None else timeout
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        timeout = -1
    if not 0 < timeout <= 60:
        raise ValueError(f"timeout: {timeout!r} is outside 0-60 seconds")
    return url, timeout


def post(payload, timeout=None):
    """
    POST ``payload`` (a mapping with at least ``severity`` and ``summary``)
    as JSON to ``kiosk_fleet_alerts:webhook_url``. Fails (exit code 1) on a
    bad payload, a missing URL, a network error or a non-2xx answer.

    CLI Example:

    .. code-block:: bash

        salt-run kiosk_alert.post '{"severity": "warning", "summary": "test from the top master"}'
    """
    if not isinstance(payload, dict):
        return fleet_runner.fail(__context__, f"payload: expected a mapping, got {type(payload).__name__}")
    if payload.get("severity") not in SEVERITIES:
        return fleet_runner.fail(__context__, f"payload.severity: {payload.get('severity')!r} is not one of {SEVERITIES}")
    if not isinstance(payload.get("summary"), str) or not payload["summary"]:
        return fleet_runner.fail(__context__, "payload.summary: missing")
    try:
        url, timeout = _settings(timeout)
    except ValueError as exc:
        return fleet_runner.fail(__context__, exc)
    try:
        answer = requests.post(url, json=payload, timeout=timeout)
    except requests.RequestException as exc:
        # the URL may carry a token: name only its scheme and host
        parsed = urllib.parse.urlsplit(url)
        error = str(exc).replace(url, f"{parsed.scheme}://{parsed.hostname}/...")
        if parsed.path and len(parsed.path) > 1:
            error = error.replace(parsed.path, "/...")
        log.error("kiosk_alert: POST to the webhook failed: %s (%s)", error, payload["summary"])
        return fleet_runner.fail(__context__, f"webhook_url: POST failed: {error}", payload=payload)
    if not 200 <= answer.status_code < 300:
        log.error("kiosk_alert: webhook answered %s (%s)", answer.status_code, payload["summary"])
        return fleet_runner.fail(__context__, f"webhook_url: answered HTTP {answer.status_code}", payload=payload)
    return fleet_runner.finish(__context__, {"result": True, "status": answer.status_code, "payload": payload})
