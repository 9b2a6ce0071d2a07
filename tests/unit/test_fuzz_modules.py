"""
Inputs that never crash, at the Salt entry points of the Pi: the
``kiosk_wol`` and ``kiosk_env`` execution modules and the ``kiosk_env``
beacon's ``validate``, loaded from their files with Salt's injected names
stood in. Arguments come as the salt CLI and the minion config hand them
over (YAML-typed), or as random nested data. A module raises only
``SaltInvocationError`` naming the argument (Salt's way to refuse a call);
``check`` and the beacon's ``validate`` never raise at all.

Nothing is sent: the WoL socket code is replaced by a recorder. Nothing is
written: the env textfile writer is replaced too.
"""

import importlib.util
import pathlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from salt.exceptions import SaltInvocationError

from tests.support.topology import two_campus_inventory
from tests.unit.test_fuzz_inputs import hostile

REPO = pathlib.Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


def load(folder, name, **dunders):
    spec = importlib.util.spec_from_file_location(f"fuzz_{folder}_{name}", REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in dunders.items():
        setattr(module, key, value)
    return module


class Gpio:
    """A smoke sensor that reads clear, so nothing touches /dev/gpiochip*."""

    def read(self):
        return False


PILLAR = two_campus_inventory(wol_port=9)
SENT = []

kiosk_wol = load("_modules", "kiosk_wol", __pillar__=PILLAR, __opts__={"id": "pi-east-1"}, __context__={})
kiosk_wol._send = lambda destinations, repeat, spacing_ms: SENT.append(destinations) or {}

kiosk_env = load("_modules", "kiosk_env", __pillar__=PILLAR, __opts__={"id": "pi-east-1"}, __grains__={})
kiosk_env.__context__ = {kiosk_env.READER_KEY: Gpio()}
kiosk_env._write_metrics = lambda *args: None

env_beacon = load("_beacons", "kiosk_env", __opts__={"id": "pi-east-1", "cachedir": "/nonexistent"},
                  __context__={}, __salt__={"kiosk_env.check": kiosk_env.check})


def refused_or_returned(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SaltInvocationError as exc:
        assert ": " in str(exc), f"{fn.__name__}: message names no argument: {exc}"
        return exc


@FUZZ
@given(hostile, hostile, hostile, hostile, hostile, hostile)
@example(1122334455, "10.0.0.255", 9, 3, 100, None)  # 001122334455 typed bare
@example("ff:ff:ff:ff:ff:ff", "10.0.0.255", 9, 3, 100, None)
@example("52:54:00:00:00:01", "10.0.0.255", float("inf"), float("nan"), float("inf"), ["eth0"])
@example("52:54:00:00:00:01", "\ud800", True, True, True, "eth0/../x")
@example("52:54:00:00:00:01", "10.0.0.255", 9, 3, 100, "a;rm -rf /")
def test_wake_never_crashes_and_sends_only_what_it_validated(macs, broadcast, port, repeat, spacing_ms, interface):
    SENT.clear()
    ret = refused_or_returned(kiosk_wol.wake, macs, broadcast=broadcast, port=port, repeat=repeat,
                              spacing_ms=spacing_ms, interface=interface)
    if isinstance(ret, SaltInvocationError):
        assert not SENT  # a refused request sends nothing
        return
    for dest in SENT[0]:
        for mac in dest["packets"]:
            assert int(mac[:2], 16) & 1 == 0 and mac != "00:00:00:00:00:00"


def test_wake_refuses_the_broadcast_mac_and_a_leading_zero_mac_typed_bare():
    with pytest.raises(SaltInvocationError, match=r"^macs\[0\]: ff:ff:ff:ff:ff:ff is the broadcast MAC"):
        kiosk_wol.wake("ff:ff:ff:ff:ff:ff")
    with pytest.raises(SaltInvocationError, match=r"^macs\[0\]: 1122334455 .*001122334455"):
        kiosk_wol.wake(1122334455)
    with pytest.raises(SaltInvocationError, match=r"^port: inf "):
        kiosk_wol.wake("52:54:00:00:00:01", port=float("inf"))
    with pytest.raises(SaltInvocationError, match=r"^interface: "):
        kiosk_wol.wake("52:54:00:00:00:01", interface=["eth0"])


@FUZZ
@given(hostile, hostile, hostile, hostile)
@example(["kiosk-east-01"], None, 3, 100)
@example([["kiosk-east-01"]], None, 3, 100)
@example(None, {"east": 1}, 3, 100)
@example("kiosk-east-01", None, 10**400, float("nan"))
def test_wake_kiosks_never_crashes(kiosks, campus, repeat, spacing_ms):
    refused_or_returned(kiosk_wol.wake_kiosks, kiosks=kiosks, campus=campus, repeat=repeat, spacing_ms=spacing_ms)


@FUZZ
@given(hostile, st.dictionaries(st.sampled_from(["temperature", "humidity", "smoke", "gpio", "hysteresis",
                                                 "warmup_s", "retries", "campus", "sysfs_root"]), hostile, max_size=4))
@example([{True: [10, 30]}], {})  # `- on: ...` in the minion config
@example(None, {"temperature": "[10, 1e400]"})
@example(None, {"sysfs_root": "/sys\x00", "campus": "\ud800"})
def test_env_check_and_read_never_crash(config, kwargs):
    ret = kiosk_env.check(config=config, **kwargs)
    assert isinstance(ret["result"], bool) and ret["comment"].startswith("kiosk_env: ")
    refused_or_returned(kiosk_env.read, **kwargs)
    refused_or_returned(kiosk_env.poll, config=config if config is not None else {}, now=1000.0)


@FUZZ
@given(hostile)
@example([{True: [10, 30]}, {"temperature": [10, 30]}])
@example([{"temperature": [float("nan"), float("inf")]}])
@example([{"sysfs_root": "\ud800"}])
def test_env_beacon_validate_never_crashes(config):
    env_beacon.__context__.clear()
    ok, message = env_beacon.validate(config)
    assert isinstance(ok, bool) and message.startswith("kiosk_env")
    assert env_beacon.validate(config) == (ok, message)  # the cached answer is the same


@FUZZ
@given(hostile, hostile)
@example({"intervals": "x"}, None)
@example("x", 1.0)
@example({"a": "x"}, 1.0)
@example(None, 10**400)
@example(None, float("nan"))
@example(None, {})
def test_env_poll_refuses_a_state_or_time_it_did_not_hand_out(state, now):
    refused_or_returned(kiosk_env.poll, config={"temperature": [10, 30]}, state=state, now=now)
    good = kiosk_env.poll(config={"temperature": [10, 30]}, now=1000.0)["state"]
    for key in good:
        refused_or_returned(kiosk_env.poll, config={"temperature": [10, 30]}, state=dict(good, **{key: state}), now=now)
