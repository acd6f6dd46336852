"""End to end: Debian's gdb drives GdbServer and a Unicorn-backed Target."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn.x86_const import UC_X86_REG_CR0

from xenpy.debug.gdbstub.target import BpKind

from .conftest import GdbRunner, finish, poll
from .fake_target import FakeTarget
from .uc_target import UnicornTarget

BASE = 0x1000
GUEST = """
    mov eax, 1
    mov ebx, 2
bp_here:
    add eax, ebx
    lea esi, [eax + eax*4 + 8]
    push eax
    pop ecx
    mov dword ptr [0x3000], eax
    inc dword ptr [0x3000]
    nop
spin:
    inc edx
    cmp dword ptr [0x3004], 0
    je spin
    mov eax, ebx
    int 0x80
"""


def assemble() -> tuple[bytes, list[tuple[int, int, str]]]:
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(GUEST, BASE)[0])
    insns = [(i.address, i.size, i.mnemonic) for i in Cs(CS_ARCH_X86, CS_MODE_32).disasm(code, BASE)]
    return code, insns


CODE, INSNS = assemble()
assert [m for _, _, m in INSNS] == [
    "mov", "mov", "add", "lea", "push", "pop", "mov", "inc", "nop", "inc", "cmp", "je", "mov", "int"
]
BP_HERE = INSNS[2][0]  # add eax, ebx
STORE_END = INSNS[7][0]  # after mov [0x3000], eax
INC_END = INSNS[8][0]  # after inc dword ptr [0x3000]
SPIN = INSNS[9][0]
SPIN_END = INSNS[11][0]


@pytest.fixture
def target() -> Iterator[UnicornTarget]:
    t = UnicornTarget(CODE, base=BASE)
    yield t
    t.close()


def test_break_continue_swbreak_and_info_registers(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, f"break *{BP_HERE:#x}\ncontinue\ninfo registers\np/x $cr0\n")
    assert f"Breakpoint 1, {BP_HERE:#010x} in ?? ()" in out
    assert re.search(rf"^eip\s+{BP_HERE:#x}\s", out, re.M)
    assert re.search(r"^eax\s+0x1\s+1$", out, re.M)
    assert re.search(r"^ebx\s+0x2\s+2$", out, re.M)
    assert re.search(r"^esp\s+0x80000\s", out, re.M)
    assert re.search(r"^eflags\s+0x\w+\s+\[", out, re.M)
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        assert re.search(rf"^{seg}\s+0x0\s+0$", out, re.M)
    assert f"= {target.uc.reg_read(UC_X86_REG_CR0):#x}" in out


def test_stop_reply_says_swbreak_and_no_ack_mode_is_used(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, f"break *{BP_HERE:#x}\ncontinue\n", debug_remote=True)
    assert re.search(r"Packet received: T05thread:0*1;swbreak:;", out), out
    assert "Sending packet: $QStartNoAckMode" in out and "Packet received: OK" in out
    assert "Breakpoint 1, " in out


def test_ack_mode_session(gdb: GdbRunner, target: UnicornTarget) -> None:
    """With no-ack mode refused by gdb, every packet is acked and the session still works."""
    out = gdb.run(
        target, f"break *{SPIN:#x}\ncontinue\nstepi\np/x $pc\n", debug_remote=True,
        settings=("set remote noack-packet off",),
    )
    assert "Sending packet: $QStartNoAckMode" not in out
    assert out.count("Received Ack") > 10
    assert f"$1 = {INSNS[10][0]:#x}" in out


def test_hardware_breakpoint_reports_hwbreak(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, f"hbreak *{SPIN:#x}\ncontinue\np $pc\n", debug_remote=True)
    assert re.search(r"Packet received: T05thread:0*1;hwbreak:;", out), out
    assert f"$1 = (void (*)()) {SPIN:#x}" in out
    assert "Hardware assisted breakpoint 1" in out


def test_read_and_write_memory_and_registers(gdb: GdbRunner, target: UnicornTarget) -> None:
    script = f"""
break *{BP_HERE:#x}
continue
x/4xb {BASE:#x}
set var $ecx = 0x1234abcd
p/x $ecx
set {{int}}0x3010 = 0x55667788
x/1xw 0x3010
set var $eax = 40
stepi
p $eax
x/1xw 0x7ffff000
"""
    out = gdb.run(target, script, allow_error=True)
    assert f"{BASE:#x}:\t" + "\t".join(f"0x{b:02x}" for b in CODE[:4]) in out
    assert "$1 = 0x1234abcd" in out
    assert "0x3010:\t0x55667788" in out
    assert "$2 = 42" in out  # the guest's add ran on the register gdb wrote
    assert "Cannot access memory at address 0x7ffff000" in out
    assert target.read_memory(0, 0x3010, 4) == (0x55667788).to_bytes(4, "little")


def test_stepi_executes_exactly_one_instruction(gdb: GdbRunner, target: UnicornTarget) -> None:
    steps = 7
    out = gdb.run(target, "p/x $pc\n" + "stepi\np/x $pc\n" * steps)
    pcs = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", out, re.M)]
    expected = [BASE]
    for addr, size, _ in INSNS[:steps]:
        assert expected[-1] == addr
        expected.append(addr + size)
    assert pcs == expected
    assert len({b - a for a, b in zip(pcs, pcs[1:])}) > 2  # several distinct lengths were covered


def test_write_watchpoint_reports_address_after_each_write(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, "watch *(int*)0x3000\ncontinue\np/x $pc\ncontinue\np/x $pc\n", debug_remote=True)
    assert "Hardware watchpoint 1: *(int*)0x3000" in out
    assert re.search(r"Packet received: T05thread:0*1;watch:0*3000;", out), out
    assert re.search(r"Old value = 0\s+New value = 3", out)
    assert re.search(r"Old value = 3\s+New value = 4", out)  # inc ran once, not twice
    assert f"$1 = {STORE_END:#x}" in out and f"$2 = {INC_END:#x}" in out


def test_read_and_access_watchpoints(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, "rwatch *(int*)0x3004\ncontinue\np/x $pc\ndelete\nawatch *(int*)0x3004\ncontinue\np/x $pc\n")
    assert "Hardware read watchpoint 1: *(int*)0x3004" in out
    assert re.search(r"Value = 0\s", out)
    assert f"$1 = {SPIN_END:#x}" in out  # stopped right after the cmp that read it
    assert "Hardware access (read/write) watchpoint 2: *(int*)0x3004" in out
    assert f"$2 = {SPIN_END:#x}" in out


def test_ctrl_c_stops_a_spinning_guest(gdb: GdbRunner, target: UnicornTarget) -> None:
    script = """
continue
p/x $pc
set var $ebx = 33
set {int}0x3004 = 1
continue
"""
    proc = gdb.start(gdb.serve(target), script)
    poll(lambda: target.resumes >= 1, "the guest to be resumed")
    proc.send_signal(signal.SIGINT)
    out = finish(proc)
    assert "Program received signal SIGINT, Interrupt." in out
    pc = int(re.search(r"^\$1 = (0x[0-9a-f]+)$", out, re.M).group(1), 16)  # type: ignore[union-attr]
    assert SPIN <= pc <= SPIN_END
    assert "[Inferior 1 (Remote target) exited with code 041]" in out  # 33 in octal, via W21


def test_detach_removes_breakpoints_and_lets_guest_run(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, f"break *{SPIN:#x}\nwatch *(int*)0x3008\ncontinue\nset {{int}}0x3004 = 1\ndetach\n")
    assert "Breakpoint 1, " in out
    assert "[Inferior 1 (Remote target) detached]" in out
    poll(target.exited.is_set, "the detached guest to finish")
    assert target.detached.is_set()
    assert target.dbg.breakpoints == {}


def test_kill(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, f"break *{BP_HERE:#x}\ncontinue\nkill\n")
    assert "[Inferior 1 (Remote target) killed]" in out
    poll(target.killed.is_set, "the target to be killed")


def test_monitor_command(gdb: GdbRunner, target: UnicornTarget) -> None:
    out = gdb.run(target, "monitor echo catch hypercall 3\n")
    assert "catch hypercall 3" in out
    assert target.monitor_log == ["echo catch hypercall 3"]


def test_x86_64_target_description_is_accepted(gdb: GdbRunner) -> None:
    fake = FakeTarget(arch="i386:x86-64", vcpus=2)
    fake.regs[0] = {"rip": 0xFFFF800000001000, "rsp": 0x7FFF0000, "cr3": 0x1234000, "fs_base": 0xABCD, "r15": 7}
    fake.regs[1] = {"rip": 0x2000}
    fake.map(0xFFFF800000001000, b"\x90" * 16)
    out = gdb.run(fake, "p/x $rip\np/x $cr3\np/x $fs_base\np $r15\ninfo threads\nthread 2\np/x $pc\n",
                  arch="i386:x86-64")
    assert "$1 = 0xffff800000001000" in out
    assert "$2 = 0x1234000" in out
    assert "$3 = 0xabcd" in out
    assert "$4 = 7" in out
    assert "Thread 2" in out
    assert "$5 = 0x2000" in out


def test_breakpoint_insertion_uses_no_step_hook(target: UnicornTarget) -> None:
    """Breakpoints alone add no per-instruction hook: only [addr, addr] hooks."""
    assert target.insert_breakpoint(BpKind.SOFTWARE, BP_HERE, 1)
    assert target.dbg._step_hook is None
    assert target.dbg.breakpoints == {BP_HERE: frozenset({BpKind.SOFTWARE})}
