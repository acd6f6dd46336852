"""DomainTarget in-process: holding, resuming, interrupting and detaching a real domain."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from xenpy import ROOT
from xenpy.abi.sched import Shutdown
from xenpy.debug.gdbstub.target import SIGINT, SIGTRAP, BpKind, MemoryAccessError, Resume
from xenpy.debug.target import DomainTarget
from xenpy.testing import DomainFactory, GuestRun
from xenpy.toolstack.elf import load_xen_elf

from .conftest import poll

WAIT_S = 20.0
BUILD = ROOT / "guests" / "build"


@pytest.fixture
def running(domain_factory: DomainFactory) -> Iterator[tuple[GuestRun, DomainTarget, threading.Thread]]:
    """A domain attached to a DomainTarget, its Host looping on another thread."""
    guest = domain_factory("echo", memory_mib=16)
    target = DomainTarget(guest.domain)
    target.attach()
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (guest.run(timeout=WAIT_S), finished.set()), daemon=True)
    thread.start()
    yield guest, target, thread
    if not finished.is_set():
        target.kill()
    thread.join(WAIT_S)


def test_held_before_the_first_instruction(running) -> None:
    guest, target, _ = running
    pc = target.pc(0)
    assert target.stopped and guest.console == ""
    assert target.wait_stop(0.05) is None          # nothing runs until gdb resumes
    assert target.pc(0) == pc


def test_interrupt_stops_a_guest_with_no_vcpu_running(running) -> None:
    guest, target, _ = running
    target.resume(Resume(cont=frozenset({0})))
    poll(lambda: "echo: ready" in guest.console, "the guest to wait for input", WAIT_S)
    v = guest.domain.vcpus[0]
    poll(lambda: v.blocked, "the vCPU to block in SCHEDOP_poll", WAIT_S)
    target.interrupt()
    event = target.wait_stop(WAIT_S)
    assert event is not None and event.signal == SIGINT and event.vcpu == 0
    assert target.stopped


def test_breakpoint_step_and_exit(running) -> None:
    guest, target, _ = running
    main = _symbol("main")
    target.insert_breakpoint(BpKind.SOFTWARE, main, 1)
    target.resume(Resume(cont=frozenset({0})))
    event = target.wait_stop(WAIT_S)
    assert event is not None and event.reason == "swbreak" and target.pc(0) == main
    target.remove_breakpoint(BpKind.SOFTWARE, main, 1)
    target.resume(Resume(step=frozenset({0})))
    event = target.wait_stop(WAIT_S)
    assert event is not None and event.reason == "step" and event.signal == SIGTRAP
    assert main < target.pc(0) <= main + 15
    assert target.read_memory(0, main, 4) == bytes(guest.domain.mem.view[target.translate(0, main):][:4])
    with pytest.raises(MemoryAccessError):
        target.read_memory(0, 0x1000, 4)          # unmapped in the guest
    guest.feed(b"abc\r")
    target.resume(Resume(cont=frozenset({0})))
    event = target.wait_stop(WAIT_S)
    assert event is not None and event.reason == "exited" and event.exit_status == 0
    assert guest.shutdown_reason == Shutdown.poweroff and "echo: abc" in guest.console


def test_detach_runs_the_class_method_again(running) -> None:
    guest, target, thread = running
    v = guest.domain.vcpus[0]
    assert "run_slice" in vars(v)                   # wrapped while attached
    target.detach()
    assert "run_slice" not in vars(v) and not v.debug_hold
    guest.feed(b"abc\r")
    thread.join(WAIT_S)
    assert guest.shutdown_reason == Shutdown.poweroff


def _symbol(name: str) -> int:
    return load_xen_elf(BUILD / "echo-x86_32.elf").symbols[name]
