"""Event upcalls on the real-time clock.

A regression test for a fixed xenpy bug: on a real-time Host, guests that took
event upcalls crashed now and then - a few percent of xs runs, sometimes timer - with
register or stack corruption: a `ret` to 0x3, RIP = 0xe030 (a CS value, as if an iret
frame were read one word off), a memcpy running off its end.  Every upcall is delivered
on the way out of a hypercall hook (none at slice start), so the guest sees no
asynchronous delivery at all; yet without the tick thread's asynchronous `uc_emu_stop`,
or on a deterministic host (budget stops at block starts), 100+ runs show no crash.
The suspect is a stop request landing inside a guest block before a hypercall hook that
then writes the PC (upcall bounce, HYPERVISOR_iret), or a stop that makes an already
executed instruction run again.
The fix: preemption is cooperative (the vCPU stops itself at its next hook); only a
vCPU that enters no hook for a whole quantum is stopped from the ticker thread.
The deterministic control below must always pass too.
"""
from __future__ import annotations

import pytest

from xenpy.hv.host import Host
from xenpy.testing import DomainFactory

from .conftest import HOST_MIB

RUNS = 16


def run_many(guest_build, deterministic: bool) -> list[str]:
    """Boot the xs guest RUNS times, each on a fresh host (closed at once to bound
    memory); returns a report per run that did not end in "xs: PASS"."""
    failures = []
    for i in range(RUNS):
        width = "x86_32" if i % 2 else "x86_64"
        host = Host(memory_mib=HOST_MIB, deterministic=deterministic)
        try:
            run = DomainFactory(host, [])(guest_build / f"xs-{width}.elf", memory_mib=8)
            finished = run.run(timeout=30)
            if not finished or run.lines[-1:] != ["xs: PASS"]:
                failures.append(f"run {i} ({width}): {run.report()[-400:]}")
        finally:
            host.close()
            host.mem.close()
    return failures


def test_xs_repeated_realtime(guest_build):
    failures = run_many(guest_build, deterministic=False)
    assert not failures, "\n".join(failures)


def test_xs_repeated_deterministic(guest_build):
    failures = run_many(guest_build, deterministic=True)
    assert not failures, "\n".join(failures)
