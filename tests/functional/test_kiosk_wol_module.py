"""
``kiosk_wol`` loaded by Salt's own loader (as on a Pi), sending to a UDP
listener on loopback.
"""

import pathlib
import socket

import pytest
import salt.config
import salt.loader
from salt.exceptions import SaltInvocationError

import fleet_wol

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kiosk_wol(tmp_path_factory):
    root = tmp_path_factory.mktemp("wolmod")
    opts = salt.config.minion_config(None)
    opts.update({"file_client": "local", "root_dir": str(root), "cachedir": str(root),
                 "module_dirs": [str(REPO)], "id": "pi-test-1", "grains": {}})
    mods = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts), whitelist=["kiosk_wol"])
    return mods


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    yield sock
    sock.close()


def drain(sock):
    got = []
    while True:
        try:
            got.append(sock.recvfrom(2048))
        except TimeoutError:
            return got


def test_secureon_packets_are_sent_repeat_times_from_the_source(kiosk_wol, listener):
    port = listener.getsockname()[1]
    ret = kiosk_wol["kiosk_wol.wake"]("52-54-00-00-00-09", broadcast="127.0.0.1", port=port, repeat=4,
                                     spacing_ms=0, source="127.0.0.1", password="1.2.3.4")
    assert ret == [{"mac": "52:54:00:00:00:09", "to": "127.0.0.1", "port": port, "source": "127.0.0.1", "packets": 4}]
    got = drain(listener)
    assert [data for data, _ in got] == [fleet_wol.magic_packet("52:54:00:00:00:09", "1.2.3.4")] * 4


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"macs": "52:54:00:00:00:01,nope"}, "macs[1]"),
        ({"macs": "52:54:00:00:00:01", "repeat": 0}, "repeat"),
        ({"macs": "52:54:00:00:00:01", "port": 70000}, "port"),
        ({"macs": "52:54:00:00:00:01", "port": True}, "port"),
        ({"macs": "52:54:00:00:00:01", "broadcast": "10.0.0"}, "broadcast"),
        ({"macs": "52:54:00:00:00:01", "source": "pi-1"}, "source"),
        ({"macs": "52:54:00:00:00:01", "password": "secret"}, "password"),
    ],
)
def test_a_bad_request_names_the_field_and_sends_nothing(kiosk_wol, listener, kwargs, field):
    kwargs.setdefault("broadcast", "127.0.0.1")
    kwargs.setdefault("port", listener.getsockname()[1])
    with pytest.raises(SaltInvocationError) as info:
        kiosk_wol["kiosk_wol.wake"](**kwargs)
    assert str(info.value).startswith(field)
    assert drain(listener) == []
