"""UcDebug on a bare Unicorn: steps, breakpoints, watchpoints and cross-thread interrupts."""

from __future__ import annotations

import threading

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_EDI, UC_X86_REG_EIP, UC_X86_REG_ESP

from xenpy.debug.gdbstub.target import BpKind, MemoryAccessError
from xenpy.debug.gdbstub.uc_debug import DebugHit, UcDebug

BASE = 0x1000
MEM = 0x100000


def make(src: str) -> tuple[Uc, UcDebug, bytes]:
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, BASE)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, MEM)
    uc.mem_write(BASE, code)
    uc.reg_write(UC_X86_REG_EIP, BASE)
    uc.reg_write(UC_X86_REG_ESP, 0x8000)
    return uc, UcDebug(uc, lambda va: va if va < MEM else None), code


def run(uc: Uc, dbg: UcDebug, step: bool = False) -> DebugHit | None:
    """One iteration of a vCPU run loop, repeated while UcDebug asks to keep going."""
    for _ in range(4):
        if dbg.before_run(step):
            uc.emu_start(uc.reg_read(UC_X86_REG_EIP), 0xFFFFFFFF)
        hit = dbg.after_run()
        if hit is not None:
            return hit
    raise AssertionError("no debug stop")


def pc(uc: Uc) -> int:
    return uc.reg_read(UC_X86_REG_EIP)


def test_step_runs_one_instruction_even_in_a_cached_block() -> None:
    uc, dbg, code = make("inc ecx; inc ecx; add ecx, 5; here: jmp here")
    dbg.before_run(False)
    # Translate the whole block first so the step must defeat the translation cache.
    uc.emu_start(BASE, BASE + len(code) - 2)
    uc.reg_write(UC_X86_REG_EIP, BASE)
    uc.reg_write(UC_X86_REG_ECX, 0)
    dbg.after_run()
    assert run(uc, dbg, step=True) == DebugHit("step")
    assert (pc(uc), uc.reg_read(UC_X86_REG_ECX)) == (BASE + 1, 1)
    assert run(uc, dbg, step=True) == DebugHit("step")
    assert run(uc, dbg, step=True) == DebugHit("step")
    assert (pc(uc), uc.reg_read(UC_X86_REG_ECX)) == (BASE + 5, 7)
    assert run(uc, dbg, step=True) == DebugHit("step")  # jmp $ jumps onto itself
    assert pc(uc) == BASE + 5


def test_rep_stos_steps_one_iteration() -> None:
    uc, dbg, _ = make("rep stosb; nop")
    uc.reg_write(UC_X86_REG_ECX, 3)
    uc.reg_write(UC_X86_REG_EDI, 0x4000)
    assert run(uc, dbg, step=True) == DebugHit("step")
    assert uc.reg_read(UC_X86_REG_ECX) == 2


def test_breakpoint_in_a_loop_hits_every_iteration() -> None:
    uc, dbg, _ = make("top: inc ecx; jmp top")
    dbg.insert(BpKind.SOFTWARE, BASE, 1)
    counts = []
    for _ in range(3):
        assert run(uc, dbg) == DebugHit("swbreak")
        assert pc(uc) == BASE
        counts.append(uc.reg_read(UC_X86_REG_ECX))
    assert counts == [1, 2, 3]  # resuming from the breakpoint runs its instruction once
    dbg.remove(BpKind.SOFTWARE, BASE, 1)
    dbg.insert(BpKind.HARDWARE, BASE + 1, 1)
    assert run(uc, dbg) == DebugHit("hwbreak")
    assert dbg.breakpoints == {BASE + 1: frozenset({BpKind.HARDWARE})}


def test_step_onto_a_breakpoint_reports_the_step() -> None:
    uc, dbg, _ = make("inc ecx; inc ecx; nop")
    dbg.insert(BpKind.SOFTWARE, BASE, 1)
    dbg.insert(BpKind.SOFTWARE, BASE + 1, 1)
    assert run(uc, dbg, step=True) == DebugHit("step")
    assert pc(uc) == BASE + 1
    assert run(uc, dbg, step=True) == DebugHit("step")  # and steps off it again
    assert pc(uc) == BASE + 2


def test_watchpoints_trap_after_the_access() -> None:
    uc, dbg, _ = make("mov eax, [0x3000]; inc dword ptr [0x3002]; push eax; nop")
    dbg.insert(BpKind.READ, 0x3000, 1)
    assert run(uc, dbg) == DebugHit("rwatch", 0x3000)
    assert pc(uc) == BASE + 5
    dbg.clear()
    dbg.insert(BpKind.WRITE, 0x3004, 4)  # the 4-byte inc at 0x3002 overlaps its start
    assert run(uc, dbg) == DebugHit("watch", 0x3004)
    assert bytes(uc.mem_read(0x3000, 8)) == bytes([0, 0, 1, 0, 0, 0, 0, 0])  # incremented once
    dbg.insert(BpKind.ACCESS, 0x7FFC, 4)
    assert run(uc, dbg) == DebugHit("awatch", 0x7FFC)
    assert uc.reg_read(UC_X86_REG_ESP) == 0x7FFC
    with pytest.raises(MemoryAccessError, match="0x200000"):
        dbg.insert(BpKind.WRITE, 0x200000, 4)


def test_interrupt_from_another_thread_even_before_emu_start() -> None:
    uc, dbg, _ = make("top: inc ecx; jmp top")
    for _ in range(3):
        assert dbg.before_run(False)
        # The interrupt lands before emu_start begins: a single emu_stop would be lost.
        t = threading.Thread(target=dbg.interrupt)
        t.start()
        uc.emu_start(pc(uc), 0xFFFFFFFF)
        assert dbg.after_run() == DebugHit("interrupt")
        t.join()
    dbg.interrupt()  # requested while stopped: the next run stops at once
    assert run(uc, dbg) == DebugHit("interrupt")
    dbg.interrupt()
    dbg.discard_interrupt()
    dbg.insert(BpKind.SOFTWARE, BASE + 1, 1)
    assert run(uc, dbg) == DebugHit("swbreak")


def test_long_mode_step_and_breakpoint() -> None:
    from unicorn import UC_MODE_64
    from unicorn.x86_const import UC_X86_REG_RCX, UC_X86_REG_RIP

    code = bytes(Ks(KS_ARCH_X86, 8).asm("inc rcx; mov rax, 0x1122334455667788; inc rcx; nop", BASE)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, MEM)
    uc.mem_write(BASE, code)
    uc.reg_write(UC_X86_REG_RIP, BASE)
    dbg = UcDebug(uc, lambda va: va, mode64=True)
    dbg.insert(BpKind.SOFTWARE, BASE + 13, 1)
    assert run64(uc, dbg, step=True) == DebugHit("step")
    assert uc.reg_read(UC_X86_REG_RIP) == BASE + 3
    assert run64(uc, dbg) == DebugHit("swbreak")
    assert (uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_RCX)) == (BASE + 13, 1)


def run64(uc: Uc, dbg: UcDebug, step: bool = False) -> DebugHit | None:
    from unicorn.x86_const import UC_X86_REG_RIP

    if dbg.before_run(step):
        uc.emu_start(uc.reg_read(UC_X86_REG_RIP), 0xFFFFFFFFFFFFFFFF)
    return dbg.after_run()
