"""
Bandwidth caps (fleet_rate): the rate syntax, the per-campus rule, and the
token bucket on an injected clock (no real sleeping, no timed assertion).
"""

import random

import pytest

import fleet_rate
import fleet_release


@pytest.mark.parametrize("value, expected", [
    (125000, 125000), ("125000", 125000), (125000.0, 125000), ("2mbit", 250000), ("2Mbit/s", 250000),
    ("512kbit", 64000), ("1gbit", 125_000_000), ("8000bit", 1000), ("1.5mbit", 187500),
    ("1MB", 1_000_000), ("1kb", 1000), ("3gb", 3_000_000_000), ("64KiB", 65536), ("1mib", 1048576),
    ("1gib", 1024**3), (" 100 kb ", 100_000), ("2000b", 2000), ("2000B/s", 2000),
])
def test_parse_rate_units(value, expected):
    assert fleet_rate.parse_rate(value) == expected


@pytest.mark.parametrize("value, match", [
    (0, "not above 0"), ("0", "not above 0"), ("0mbit", "not above 0"), (-5, "not above 0"), (-1.5, "not above 0"),
    ("-2mbit", "not a rate"), ("fast", "not a rate"), ("2 mbps", "not a rate"), ("2mbits", "not a rate"),
    ("", "not a rate"), ("1e6", "not a rate"), ("2mbit; rm -rf /", "not a rate"), (float("nan"), "not a rate"),
    (float("inf"), "not a rate"), (True, "not a rate"), (None, "not a rate"), ([1], "not a rate"),
    ({"r": 1}, "not a rate"), ("100", "outside 1000-"), ("1kbit", "outside 1000-"), (10**400, "outside"),
    (1e300, "outside"), ("\ud800", "not a rate"), ("9" * 40, "not a rate"),
])
def test_parse_rate_refuses_garbage_naming_the_field(value, match):
    with pytest.raises(fleet_rate.RateError, match=rf"^wan_rate: .*{match}"):
        fleet_rate.parse_rate(value)
    with pytest.raises(fleet_release.ReleaseError, match=r"^kiosk_release:lan_rate: "):
        fleet_rate.parse_rate(value, "kiosk_release:lan_rate")


def test_campus_rates_global_override_and_unlimited():
    campuses = ["east", "west", "north"]
    assert fleet_rate.campus_rates({}, campuses) == {"east": None, "west": None, "north": None}
    conf = {"wan_rate": "2mbit", "campus_rates": {"west": "10mbit", "north": None}}
    assert fleet_rate.campus_rates(conf, campuses) == {"east": 250000, "west": 1_250_000, "north": None}
    assert fleet_rate.campus_rates({"campus_rates": {"east": "unlimited", "west": 5000}}, campuses) == {
        "east": None, "west": 5000, "north": None}
    assert fleet_rate.campus_rates({"wan_rate": 4000}, ["east"]) == {"east": 4000}


@pytest.mark.parametrize("conf, match", [
    ({"wan_rate": "lots"}, r"^kiosk_release:wan_rate: "),
    ({"wan_rate": 0}, r"^kiosk_release:wan_rate: .*not above 0"),
    ({"campus_rates": {"east": "x"}}, r"^kiosk_release:campus_rates\.east: "),
    ({"campus_rates": {"mars": "2mbit"}}, r"^kiosk_release:campus_rates\.mars: unknown campus"),
    ({"campus_rates": ["east"]}, r"^kiosk_release:campus_rates: .*not a mapping"),
    ({"campus_rates": "2mbit"}, r"^kiosk_release:campus_rates: "),
])
def test_campus_rates_refuse_bad_settings(conf, match):
    with pytest.raises(fleet_rate.RateError, match=match):
        fleet_rate.campus_rates(conf, ["east", "west"])


def test_lan_rate():
    assert fleet_rate.lan_rate({}) is None
    assert fleet_rate.lan_rate({"lan_rate": "100mbit"}) == 12_500_000
    with pytest.raises(fleet_rate.RateError, match=r"^kiosk_release:lan_rate: "):
        fleet_rate.lan_rate({"lan_rate": "-1"})
    with pytest.raises(fleet_rate.RateError, match=r"^kiosk_release: "):
        fleet_rate.lan_rate(["lan_rate"])


class FakeClock:
    """A monotonic clock that only the pacer's sleep (and the test) moves."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("rate, total, read", [(250_000, 10_000_000, 65536), (125_000, 3_000_000, 1000),
                                               (1000, 50_000, 4096), (12_500_000, 50_000_000, 1 << 20)])
def test_n_bytes_take_at_least_n_over_r_minus_the_burst(rate, total, read):
    fake = FakeClock()
    pacer = fleet_rate.Pacer(rate, clock=fake.clock, sleep=fake.sleep)
    start, sent = fake.now, 0
    rng = random.Random(rate)
    while sent < total:
        n = min(total - sent, rng.randint(1, read))
        sent += n
        pacer(n)
    elapsed = fake.now - start
    assert pacer.burst == min(rate, fleet_rate.MAX_BURST)
    assert elapsed >= (total - pacer.burst) / rate - 1e-6
    # and not much more: the bucket never throttles below the rate (the last read's debt at most)
    assert elapsed <= total / rate + 1e-6
    assert pacer.slept == pytest.approx(sum(fake.sleeps))


def test_idle_time_refills_only_up_to_the_burst():
    fake = FakeClock()
    pacer = fleet_rate.Pacer(100_000, burst=10_000, clock=fake.clock, sleep=fake.sleep)
    pacer(10_000)
    assert fake.sleeps == []  # the first burst goes at once
    fake.now += 3600  # an hour idle saves no more than one burst
    pacer(10_000)
    assert fake.sleeps == []
    pacer(50_000)
    assert fake.sleeps == [pytest.approx(0.5)]
    pacer(0)  # a zero-byte read costs nothing (the debt is paid)
    assert len(fake.sleeps) == 1


def test_a_clock_that_steps_back_gives_no_credit():
    fake = FakeClock()
    pacer = fleet_rate.Pacer(10_000, burst=1000, clock=fake.clock, sleep=fake.sleep)
    pacer(1000)
    fake.now -= 100
    pacer(1000)
    assert fake.sleeps == [pytest.approx(0.1)]


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": "lots"}, r"^rate: "), ({"rate": 0}, r"^rate: "), ({"rate": 5000, "burst": 0}, r"^burst: "),
    ({"rate": 5000, "burst": 10**6}, r"^burst: "), ({"rate": 5000, "burst": True}, r"^burst: "),
    ({"rate": 5000, "clock": 3}, r"^clock: "),
])
def test_pacer_refuses_bad_arguments(kwargs, match):
    with pytest.raises(fleet_rate.RateError, match=match):
        fleet_rate.Pacer(**kwargs)


@pytest.mark.parametrize("nbytes", [-1, 1.5, "10", None, True])
def test_pacer_refuses_a_bad_byte_count(nbytes):
    fake = FakeClock()
    with pytest.raises(fleet_rate.RateError, match=r"^pace: "):
        fleet_rate.Pacer(5000, clock=fake.clock, sleep=fake.sleep)(nbytes)


def test_pacer_helper():
    assert fleet_rate.pacer(None) is None
    assert fleet_rate.pacer("2mbit").rate == 250000
    with pytest.raises(fleet_rate.RateError, match=r"^rate: "):
        fleet_rate.pacer("x")
