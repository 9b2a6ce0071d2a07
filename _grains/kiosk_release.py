"""
The ``kiosk_release`` grain: the release versions a kiosk runs,
``{name: {"version", "previous", "serial", "signed_at", "installed_at"}}``,
read from ``<dir>/<name>/installed.json``.

``kiosk_pkg`` writes that file after an install (temp file, fsync, rename)
and then asks the minion to refresh its grains. It used to call
``grains.setval``, which rewrites the minion's grains file in place without
fsync: a power cut during that write could lose every static grain in it,
``campus`` included. This module writes nothing.

``<dir>`` is ``kiosk_release:dir`` from the minion config (or the pillar
the minion last compiled, when the grains are refreshed after start),
default ``<cachedir>/kiosk_release``, the same place ``kiosk_pkg`` uses.
A minion without installed releases (a Pi) gets no grain.
"""

import logging
import os

import importlib.util

# The installed package wins over any copy synced into extmods, and no ImportError
# is caught: a utility that fails to import shows its own error (see _utils/README.md).
if importlib.util.find_spec("saltext_kiosk_fleet") and importlib.util.find_spec("saltext_kiosk_fleet.utils"):
    from saltext_kiosk_fleet.utils import fleet_client
else:  # synced from file_roots: Salt puts the _utils folders on sys.path while loading
    import fleet_client

log = logging.getLogger(__name__)

__virtualname__ = "kiosk_release"
GRAIN = "kiosk_release"


def __virtual__():
    return __virtualname__


def _release_dir():
    for source in (__opts__, __opts__.get("pillar") or {}):
        conf = source.get("kiosk_release") if hasattr(source, "get") else None
        path = conf.get("dir") if isinstance(conf, dict) else None
        if path:
            return path
    return os.path.join(__opts__.get("cachedir") or "", "kiosk_release")


def kiosk_release():
    """
    ``{"kiosk_release": {name: record}}`` for every installed release, or
    ``{}`` when this minion has none.

    CLI Example:

    .. code-block:: bash

        salt -G kiosk_release:kiosk-app:version:1.4.0 test.ping
        salt kiosk-riverside-01 grains.get kiosk_release
    """
    path = _release_dir()
    if not isinstance(path, str) or not os.path.isabs(path):
        log.warning("kiosk_release grain: kiosk_release:dir %r is not an absolute path", path)
        return {}
    found = fleet_client.read_installed(path)
    return {GRAIN: found} if found else {}
