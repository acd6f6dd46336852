"""Argument and result rendering of the hypercall trace, without a guest."""
from __future__ import annotations

import io

import pytest

from xenpy.abi.xen import Width
from xenpy.debug.decode import errno_result, hypercall_number, pte_flags, uvmf_flags
from xenpy.debug.trace import HypercallTrace, parse_names
from xenpy.errors import ConfigError


def test_results_as_errno_names_counts_and_addresses() -> None:
    assert errno_result(-22, Width.X86_32) == "-EINVAL"
    assert errno_result(-38, Width.X86_64) == "-ENOSYS"
    assert errno_result(-999, Width.X86_32) == "-999"
    assert errno_result(3, Width.X86_32) == "3"
    assert errno_result(0x40011, Width.X86_32) == "0x40011"
    assert errno_result(None, Width.X86_32) == "?"


def test_hypercall_names_and_numbers() -> None:
    assert hypercall_number("sched_op") == 29
    assert hypercall_number("__HYPERVISOR_xen_version") == 17
    assert hypercall_number(" 12 ") == 12
    with pytest.raises(ConfigError, match="got 'sched_opp'"):
        hypercall_number("sched_opp")
    assert parse_names(None) is None and parse_names("") is None
    assert parse_names("sched_op, 17") == frozenset({29, 17})


def test_flags() -> None:
    assert uvmf_flags(2) == "UVMF_INVLPG|UVMF_LOCAL"
    assert uvmf_flags(1 | 4) == "UVMF_TLB_FLUSH|UVMF_ALL"
    assert pte_flags(0x1234000 | 0x67) == "0x1234000|P|RW|U|A|D"
    assert pte_flags(0) == "0x0|0"


def test_attach_and_detach_on_any_host() -> None:
    class FakeHost:
        hypercall_observers: list = []

    host = FakeHost()
    host.hypercall_observers = []
    trace = HypercallTrace(io.StringIO())
    trace.attach(host)  # type: ignore[arg-type]
    trace.attach(host)  # type: ignore[arg-type]
    assert host.hypercall_observers == [trace]
    trace.detach(host)  # type: ignore[arg-type]
    assert host.hypercall_observers == []
