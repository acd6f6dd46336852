"""xenconsoled's side of the PV console ring: hostile indices, wrap-around, input."""
from __future__ import annotations

import pytest

from xenpy.abi.io.console import XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface


@pytest.fixture
def con(domain_factory):
    g = domain_factory("hello", memory_mib=8)
    c = g.host.consoles.consoles[g.domain.domid]
    return g, c


def out_ring(g):
    d = g.domain
    base = (d.console_mfn << 12) + XenconsInterface.out.offset
    return d.mem.view[base:base + XENCONS_OUT_SIZE]


def in_ring(g):
    d = g.domain
    base = (d.console_mfn << 12) + XenconsInterface.in_.offset
    return d.mem.view[base:base + XENCONS_IN_SIZE]


def test_output_wraps_at_2_to_the_32(con):
    g, c = con
    data = b"0123456789abcdefghijklmnopqrstuv"
    start = (1 << 32) - 16
    ring = out_ring(g)
    for i, b in enumerate(data):
        ring[(start + i) % XENCONS_OUT_SIZE] = b
    c.ring.out_cons = start
    c.ring.out_prod = (start + len(data)) & 0xFFFFFFFF
    c.kick()
    assert not c.broken
    assert g.domain.console_log.endswith(data)
    assert c.ring.out_cons == c.ring.out_prod


@pytest.mark.parametrize("cons,prod", [
    (0, XENCONS_OUT_SIZE + 1), (100, 99), (0, 0x80000000), (0xFFFFFFFF, 0x7FFFFFFF)])
def test_bogus_output_indices_mark_the_console_broken(con, cons, prod):
    g, c = con
    before = bytes(g.domain.console_log)
    c.ring.out_cons, c.ring.out_prod = cons, prod
    c.kick()                                        # no exception
    assert c.broken
    assert bytes(g.domain.console_log) == before
    c.kick()                                        # and it stays quiet
    c.feed(b"ignored")
    assert bytes(g.domain.console_log) == before
    assert c.ring.in_prod == 0


def test_bogus_input_indices_mark_the_console_broken(con):
    g, c = con
    c.ring.in_cons, c.ring.in_prod = 0, XENCONS_IN_SIZE + 7
    c.feed(b"hello")
    assert c.broken
    assert c.ring.in_prod == XENCONS_IN_SIZE + 7


def test_input_fills_only_the_free_space(con):
    g, c = con
    c.ring.in_cons = c.ring.in_prod = (1 << 32) - 3        # wraps while filling
    c.feed(b"x" * (XENCONS_IN_SIZE + 100))
    assert not c.broken
    assert (c.ring.in_prod - c.ring.in_cons) & 0xFFFFFFFF == XENCONS_IN_SIZE
    assert len(c.pending_input) == 100
    assert bytes(in_ring(g)) == b"x" * XENCONS_IN_SIZE


def test_a_raising_host_side_call_is_logged_and_the_host_carries_on(caplog):
    from xenpy.hv.host import Host
    host = Host(memory_mib=16)
    ran = []
    try:
        def bug() -> None:
            raise RuntimeError("backend bug")
        host.call_soon(bug)
        host.call_soon(lambda: ran.append(1))
        host.run_soon_calls()
    finally:
        host.close()
        host.mem.close()
    assert ran == [1] and host.soon_call_failures == 1
    assert "backend bug" in caplog.text


def test_console_input_a_guest_never_reads_is_bounded(domain_factory):
    from xenpy.backends.console import MAX_PENDING_INPUT
    g = domain_factory("hello", memory_mib=8)
    con = g.domain.host.consoles.consoles[g.domain.domid]
    for _ in range(3):
        con.feed(b"x" * MAX_PENDING_INPUT)
    assert len(con.pending_input) <= MAX_PENDING_INPUT
