"""
Power over two campuses at once on the real topology: each Pi's pillar holds
its own campus only, so the runner must send each campus's Pis a job of
their own, with that campus's kiosks, and still reach every kiosk.
"""

import pytest

from tests.integration.test_power import counts, lan  # noqa: F401 (lan: the UDP listeners' fixture)

pytestmark = pytest.mark.topology


def test_wake_of_two_campuses_reaches_the_kiosks_of_both(topology, lan):  # noqa: F811
    result = topology.salt_run("kiosk_power.wake", "campus=east,west", "timeout=15")
    assert result.returncode == 0, result
    report = result.data
    assert report["unreached"] == [] and report["pi_errors"] == {}, report
    assert report["pis_answered"] == ["pi-east-1", "pi-east-2", "pi-west-1", "pi-west-2"]
    got = lan.received()
    # every Pi sent its own campus's kiosks only, 3 times each, from its own address on the VLAN
    assert counts(got["127.0.1.255"]) == {("127.0.1.2", "52:54:00:e1:00:01"): 3, ("127.0.1.3", "52:54:00:e1:00:01"): 3}
    assert counts(got["127.0.2.255"]) == {("127.0.2.2", "52:54:00:e1:00:02"): 3, ("127.0.2.3", "52:54:00:e1:00:02"): 3}
    assert counts(got["127.0.3.255"]) == {
        ("127.0.3.2", "52:54:00:a1:00:01"): 3, ("127.0.3.3", "52:54:00:a1:00:01"): 3,
        ("127.0.3.2", "52:54:00:a1:00:02"): 3, ("127.0.3.3", "52:54:00:a1:00:02"): 3,
    }
