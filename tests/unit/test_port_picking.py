"""The tests' port picker: slices below the kernel's ephemeral ports, one per pytest process."""

import socket

import pytest

from tests.support import topology


def test_each_worker_has_its_own_slice_below_the_ephemeral_ports():
    slices = [topology.port_slice(worker, ephemeral_low=32768) for worker in ("", "gw0", "gw1", "gw6")]
    assert all(s.stop <= 32768 and s.start >= topology.PORT_FLOOR for s in slices)
    for i, a in enumerate(slices):
        for b in slices[i + 1:]:
            assert set(a).isdisjoint(b)


def test_too_many_workers_or_too_few_ports_fail_loudly():
    with pytest.raises(RuntimeError, match="gw7"):
        topology.port_slice("gw7", ephemeral_low=32768)
    with pytest.raises(RuntimeError, match="too few"):
        topology.port_slice("gw0", ephemeral_low=topology.PORT_FLOOR + 500)


def test_a_port_taken_on_one_of_the_addresses_is_skipped_and_none_is_given_twice():
    first = topology.free_tcp_port("127.0.0.1", "127.0.0.2")
    taken = socket.socket()
    try:
        # the next port of the slice, taken on the second address only
        nxt = next(p for p in topology.port_slice() if p not in topology._ports_given)
        taken.bind(("127.0.0.2", nxt))
        second = topology.free_tcp_port("127.0.0.1", "127.0.0.2")
    finally:
        taken.close()
    assert second != nxt and second != first
    assert second in topology.port_slice()
    udp = topology.free_udp_port("127.0.0.1")
    assert udp not in (first, second)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", udp))  # free indeed
