"""End-to-end: each bundled 32-bit guest boots through the Python API and does its job."""
from __future__ import annotations

import pytest

from xenpy.abi.sched import Shutdown

TIMEOUT = 20.0


def last_line(guest) -> str:
    return guest.lines[-1] if guest.lines else ""


def test_hello_prints_and_powers_off(domain_factory):
    g = domain_factory("hello", memory_mib=16, cmdline="quiet n=3")
    assert g.run(TIMEOUT), "hello did not shut down"
    assert g.shutdown_reason == Shutdown.poweroff, g.domain.crash_message
    lines = g.lines
    assert lines[0] == "Hello from xenpy-test (xen-3.0-x86_32p)"
    assert "cmdline: quiet n=3" in lines
    assert f"nr_pages: {16 * 256}" in lines
    assert "hello: console_io returned 0" in lines
    assert last_line(g) == "hello: PASS"
    # console_io output goes to the hypervisor console as well
    assert b"hello: console_io works" in b"".join(g.host.hv_console)


def test_traps_all_checks_pass(domain_factory):
    g = domain_factory("traps", memory_mib=16)
    assert g.run(TIMEOUT)
    assert g.shutdown_reason == Shutdown.poweroff, g.domain.crash_message
    assert not [l for l in g.lines if "FAIL" in l]
    assert last_line(g) == "traps: PASS (15 checks)"


def test_crash_shuts_down_with_reason_crash(domain_factory):
    g = domain_factory("crash", memory_mib=8)
    assert g.run(TIMEOUT)
    assert g.shutdown_reason == Shutdown.crash
    assert last_line(g) == "crash: about to crash"


def test_echo_reads_console_input(domain_factory):
    g = domain_factory("echo", memory_mib=8)
    assert g.run_until_output("echo: ready\n", TIMEOUT), g.console
    assert g.shutdown_reason is None
    g.host.consoles.consoles[g.domain.domid].feed(b"hi\n")
    assert g.run(TIMEOUT)
    assert g.shutdown_reason == Shutdown.poweroff, g.domain.crash_message
    assert last_line(g) == "echo: hi"


def lcg(n: int) -> int:
    x = 1
    for _ in range(n):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
    return x


@pytest.mark.parametrize("n", [0, 1, 5000])
def test_spin_computes_the_lcg(domain_factory, n):
    g = domain_factory("spin", memory_mib=8, cmdline=f"n={n}")
    assert g.run(TIMEOUT)
    assert g.shutdown_reason == Shutdown.poweroff, g.domain.crash_message
    assert g.lines == [f"spin: n={n}", f"spin: done {lcg(n):08x}"]


def test_nullhc_makes_n_hypercalls(domain_factory):
    g = domain_factory("nullhc", memory_mib=8, cmdline="n=2000")
    assert g.run(TIMEOUT)
    assert g.shutdown_reason == Shutdown.poweroff, g.domain.crash_message
    assert g.lines == ["nullhc: n=2000", "nullhc: done 2000"]


def test_two_guests_on_one_host_keep_their_consoles_apart(domain_factory):
    a = domain_factory("spin", memory_mib=8, cmdline="n=100")
    b = domain_factory("hello", memory_mib=8, cmdline="b")
    assert a.host.run([a.domain, b.domain], timeout=TIMEOUT)
    assert a.lines[-1] == f"spin: done {lcg(100):08x}"
    assert b.lines[-1] == "hello: PASS"
    assert not any("hello" in l for l in a.lines)
    assert not any("spin" in l for l in b.lines)


def test_domain_memory_is_freed_on_destroy(xen_host, domain_factory):
    free = xen_host.mem.free_frames
    g = domain_factory("hello", memory_mib=8)
    assert xen_host.mem.free_frames < free - 8 * 256
    assert g.run(TIMEOUT)
    xen_host.destroy_domain(g.domain)
    assert xen_host.mem.free_frames == free
