"""
HTTP rules shared by every part of the pack that talks to a web server (the
schedule platform, the alert webhook, release sources): what of a URL may be
shown, how an error is told without leaking a token, and a session that
ignores the environment's proxies and follows no redirect.

A URL's user-info, path and query may all carry secrets (``/hook/<token>``,
``?token=...``), and requests' exception text repeats the path and query
(``... with url: /api?token=SECRET``). So nothing here ever prints an
exception's text: errors name the exception class and the host only.
"""

import importlib.util
import logging
import urllib.parse

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_fields
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_fields

# urllib3 logs every request line, path and query included, at DEBUG: a
# master running at log_level debug would write platform and webhook tokens
# to its log. Importing this module (every part of the pack that does HTTP
# does) caps that logger at INFO.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)


def host_of(url):
    """``scheme://host[:port]`` of ``url``: what may appear in a return, an event, a log line or a metric."""
    if not isinstance(url, str):
        return "<invalid URL>"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" if parts.scheme else host
    return f"{shown}:{port}" if port else shown


def describe_error(exc, url):
    """``"ConnectTimeout contacting https://host"``: the class, never the text (it repeats path and query)."""
    return f"{type(exc).__name__} contacting {host_of(url)}"


class UrlError(fleet_fields.FleetError):
    """A URL that cannot be used; the message names the field, never the URL (it may hold a token)."""


def check_url(url, field):
    """``url`` if it is an absolute http(s) URL with a host; :class:`UrlError` naming ``field`` (never the URL) otherwise."""
    if not isinstance(url, str) or not url:
        raise UrlError(f"{field}: expected an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UrlError(f"{field}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlError(f"{field}: expected an http(s) URL with a host (got scheme {parts.scheme!r})")
    if any(c in url for c in "\r\n\0 "):
        raise UrlError(f"{field}: the URL holds whitespace or control characters")
    return url


def session():
    """A requests session that ignores ``*_proxy``/netrc from the environment and follows no redirect."""
    import requests  # pylint: disable=import-outside-toplevel

    sess = requests.Session()
    sess.trust_env = False
    sess.max_redirects = 0
    return sess
