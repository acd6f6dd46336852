"""Debian's gdb against `xenpy run --gdb` on the bundled guests, both widths."""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .domain_gdb import XenpyRun, elf, finish_gdb, interrupt, start_gdb

GDB = shutil.which("gdb")
XEN_VERSION = 0x40011     # xenpy reports Xen 4.17
HC_XEN_VERSION = 17       # __HYPERVISOR_xen_version: its stub is hypercall_page + 17 * 32
FLAT_KERNEL_CS = {32: 0xE019, 64: 0xE033}
PC = {32: "eip", 64: "rip"}
AX = {32: "eax", 64: "rax"}
WIDTHS = pytest.mark.parametrize("width", [32, 64])


@pytest.fixture
def gdb(bundled_guests: Path) -> str:
    if GDB is None:
        pytest.skip("gdb is not installed (Debian package gdb)")
    return GDB


@pytest.fixture
def runs() -> Iterator[list[XenpyRun]]:
    started: list[XenpyRun] = []
    yield started
    for r in started:
        r.close()


def session(gdb: str, runs: list[XenpyRun], tmp_path: Path, guest: str, width: int, script: str,
            *extra: str) -> tuple[str, int, str, str]:
    """Run a gdb script against a fresh `xenpy run --gdb 0`; (gdb output, rc, stdout, stderr)."""
    kernel = elf(guest, width)
    run = XenpyRun(kernel, *extra)
    runs.append(run)
    out = finish_gdb(start_gdb(gdb, kernel, run.port, script, tmp_path))
    rc, stdout, stderr = run.finish()
    return out, rc, stdout, stderr


def values(out: str) -> list[int]:
    """The $N = VALUE lines gdb printed (hex or decimal), in order."""
    return [int(m.group(1), 0) for m in re.finditer(r"^\$\d+ = (?:\([^)]*\) )?(0x[0-9a-f]+|-?\d+)", out, re.M)]


@WIDTHS
def test_waits_before_first_instruction_then_breaks_at_a_symbol(gdb, runs, tmp_path, width) -> None:
    script = f"""p/x ${PC[width]}
break xg_c_start
continue
info registers
p/x ${PC[width]}
p/x &xg_c_start
p/x $cs
p/x $cr3
continue
"""
    out, rc, stdout, _ = session(gdb, runs, tmp_path, "hello", width, script)
    first, pc, sym, cs, cr3 = values(out)[:5]
    assert first != sym, "the guest ran before gdb said continue"
    assert "Breakpoint 1, xg_c_start" in out
    assert pc == sym
    assert cs == FLAT_KERNEL_CS[width]
    assert cr3 != 0 and cr3 % 0x1000 == 0 or width == 32
    assert re.search(r"^eflags\s+0x[0-9a-f]+\s+\[", out, re.M)
    assert re.search(r"^cr0\s+0x8", out, re.M)     # paging on
    assert "exited normally" in out
    assert rc == 0 and "hello: PASS" in stdout


#: the hypercall stubs xenpy writes: 32-bit `mov $nr,%eax; int $0x82; ret`,
#: 64-bit `push %rcx; push %r11; mov $nr,%eax; syscall; pop %r11; pop %rcx; ret`
STUB = {32: ["mov", "int", "ret"], 64: ["push", "push", "mov", "syscall", "pop", "pop", "ret"]}


@WIDTHS
def test_stepi_across_a_hypercall_one_instruction_at_a_time(gdb, runs, tmp_path, width) -> None:
    ax, stub = AX[width], STUB[width]
    steps = stub.index("int" if width == 32 else "syscall") + 1
    script = f"""break main
continue
break *((char *)&hypercall_page + {HC_XEN_VERSION * 32})
continue
x/{len(stub)}i $pc
p/x $pc
""" + "stepi\np/x $pc\n" * steps + f"""p/x ${ax}
set var ${ax} = 0x50002
continue
"""
    out, rc, stdout, _ = session(gdb, runs, tmp_path, "hello", width, script)
    insns = [int(a, 16) for a in re.findall(r"^(?:=> )?\s*(0x[0-9a-f]+) <hypercall_page\+\d+>:", out, re.M)]
    mnemonics = re.findall(r"<hypercall_page\+\d+>:\s+(\w+)", out)
    assert mnemonics == stub, out
    pcs = values(out)
    assert pcs[:steps + 1] == insns[:steps + 1], "each stepi must execute exactly one instruction"
    assert pcs[steps + 1] == XEN_VERSION          # the hypercall ran during the last stepi
    # The register write reached the guest: it prints the version we put in eax/rax.
    assert "xen_version: 5.2" in stdout and rc == 0


@WIDTHS
def test_read_and_write_memory(gdb, runs, tmp_path, width) -> None:
    script = """break main
continue
p xg_start_info->magic
p/x *(unsigned char *)&hypercall_page
set {char [6]} xg_start_info->cmd_line = "debug"
p xg_start_info->cmd_line
continue
"""
    out, rc, stdout, _ = session(gdb, runs, tmp_path, "hello", width, script)
    assert f'"xen-3.0-x86_{width}' in out
    assert re.search(r"^\$2 = 0x(b8|[0-9a-f]{2})$", out, re.M) and "$2 = 0xcc" not in out  # filled page
    assert '$3 = "debug' in out
    assert "cmdline: debug" in stdout and rc == 0


@WIDTHS
def test_write_watchpoint_reports_the_address(gdb, runs, tmp_path, width) -> None:
    script = """break xg_c_start
continue
watch xg_start_info
continue
p/x $pc
p/x xg_start_info
p/x &xg_start_info
delete
continue
"""
    out, rc, _, _ = session(gdb, runs, tmp_path, "hello", width, script)
    assert re.search(r"Hardware watchpoint 2: xg_start_info\s+Old value = .*0x0\s+New value = ", out), out
    pc, value, _addr = values(out)[:3]
    assert value != 0
    assert "exited normally" in out and rc == 0
    assert pc > 0


@WIDTHS
def test_catch_hypercall_stops_at_sched_op_shutdown_with_the_reason(gdb, runs, tmp_path, width) -> None:
    script = """monitor catch hypercall sched_op
continue
monitor hypercall
x/i $pc
continue
"""
    out, rc, stdout, _ = session(gdb, runs, tmp_path, "crash", width, script)
    assert "Program received signal SIGTRAP" in out
    assert "sched_op(SCHEDOP_shutdown, {reason=SHUTDOWN_crash})  (pending" in out
    assert re.search(r"<hypercall_page\+\d+>:\s+(int\s+\$0x82|syscall)", out)
    assert "crash: about to crash" in stdout           # the guest ran up to the call
    assert "Program terminated with signal SIGABRT" in out and rc == 1


@WIDTHS
def test_stepping_over_a_caught_hypercall_shows_its_result(gdb, runs, tmp_path, width) -> None:
    script = """monitor catch hypercall xen_version
continue
monitor hypercall
stepi
monitor hypercall
monitor catch delete
continue
"""
    out, rc, _, _ = session(gdb, runs, tmp_path, "hello", width, script)
    assert "xen_version(XENVER_version, NULL)  (pending: not run yet" in out
    assert f"xen_version(XENVER_version, NULL) = {XEN_VERSION:#x}" in out
    assert "exited normally" in out and rc == 0


def test_ctrl_c_interrupts_a_spinning_guest(gdb, runs, tmp_path) -> None:
    kernel = elf("spin", 32)
    run = XenpyRun(kernel, "--cmdline", "n=4000000000")
    runs.append(run)
    proc = start_gdb(gdb, kernel, run.port, "continue\np/x $pc\ninfo symbol $pc\nkill\n", tmp_path)
    run.stdout.wait_for(r"spin: n=4000000000")      # the guest is in its loop
    interrupt(proc)
    out = finish_gdb(proc)
    assert "Program received signal SIGINT, Interrupt." in out
    # Usually in main's loop; when the signal races the console kick that printed
    # "spin: n=", on the way back from that hypercall.
    assert re.search(r"(main|hypercall_page|xg_\w+)( \+ \d+)? in section \.text", out), out
    rc, stdout, _ = run.finish()
    assert "spin: done" not in stdout and rc == 1


def test_monitor_info(gdb, runs, tmp_path) -> None:
    script = """break main
continue
monitor info domains
monitor info evtchn
monitor info grants
monitor info pagewalk 0xc0002000
monitor info pagewalk 0x1000
monitor catch trap 3 14
monitor catch list
monitor catch hypercall no_such_call
monitor catch delete
continue
"""
    out, rc, _, _ = session(gdb, runs, tmp_path, "hello", 32, script)
    assert re.search(r"^\s+1\*hello-x86_32\s+x86_32\s+running\s+1\s+8192", out, re.M), out
    assert re.search(r"^\s+\d+ interdomain\s+0 remote d0:\d+ \(backend\)", out, re.M), out
    assert "no grant entries in use" in out
    assert re.search(r"-> machine address 0x[0-9a-f]+000\b", out)
    assert "L2[0] @" in out and "not present" in out
    assert "catch trap: 3, 14" in out
    assert "hypercall: expected a name such as sched_op or a number, got 'no_such_call'" in out
    assert rc == 0


#: where the bounce frame keeps the interrupted IP (Xen's frame: 32-bit EIP first;
#: 64-bit RCX, R11, then RIP)
FRAME_IP = {32: "*(unsigned int *)$esp", 64: "*(unsigned long *)($rsp + 16)"}


@WIDTHS
def test_catch_trap_stops_at_the_guest_handler(gdb, runs, tmp_path, width) -> None:
    script = f"""monitor trap
monitor catch trap 3
continue
monitor trap
info symbol $pc
p/x {FRAME_IP[width]}
p/x &traps_int3_after
monitor catch delete
continue
"""
    out, rc, stdout, _ = session(gdb, runs, tmp_path, "traps", width, script)
    assert "no trap caught yet" in out
    assert "Program received signal SIGTRAP" in out
    assert re.search(r"vcpu 0: trap 3 \(int3\), stopped at 0x[0-9a-f]+", out), out
    assert re.search(r"xg_trap_stubs \+ \d+ in section \.text", out), out   # the guest's stub
    frame_ip, after_int3 = values(out)[:2]
    assert frame_ip == after_int3           # the frame Xen pushed: EIP after the int3
    assert "traps: int3 (ip after the int3): ok" in stdout


#: offset of the hypercall number (mov $nr,%eax's imm32) inside a hypercall stub
STUB_IMM = {32: 1, 64: 4}
HC_EVENT_CHANNEL_OP = 32


@WIDTHS
def test_patching_code_that_already_ran_takes_effect(gdb, runs, tmp_path, width) -> None:
    # By hello.c:20 the event_channel_op stub has run (the first printf kicked the console),
    # so Unicorn holds a translation of it: gdb's write must drop that translation.
    stub = f"(char *)&hypercall_page + {HC_EVENT_CHANNEL_OP * 32}"
    script = f"""break hello.c:20
continue
p/x *(int *)({stub} + {STUB_IMM[width]})
set {{int}}({stub} + {STUB_IMM[width]}) = {HC_XEN_VERSION}
monitor catch hypercall xen_version
continue
monitor hypercall
p/x $pc
p/x {stub}
kill
"""
    out, rc, _, _ = session(gdb, runs, tmp_path, "hello", width, script)
    old, pc, stub_addr = values(out)[:3]
    assert old == HC_EVENT_CHANNEL_OP
    assert "xen_version(XENVER_changeset, " in out      # EVTCHNOP_send (4) read as a XENVER_ op
    assert stub_addr < pc < stub_addr + 32             # caught inside the patched stub
    assert rc == 1


def test_ctrl_c_interrupts_a_guest_waiting_for_input(gdb, runs, tmp_path) -> None:
    """The guest sits in SCHEDOP_poll most of the time: Ctrl-C must still stop it."""
    kernel = elf("echo", 32)
    run = XenpyRun(kernel)
    runs.append(run)
    proc = start_gdb(gdb, kernel, run.port, "continue\ninfo symbol $pc\nkill\n", tmp_path)
    run.stdout.wait_for(r"echo: ready")
    interrupt(proc)
    out = finish_gdb(proc)
    assert "Program received signal SIGINT, Interrupt." in out
    assert re.search(r"(hypercall_page|xg_\w+)( \+ \d+)? in section \.text", out), out
    rc, _, _ = run.finish()
    assert rc == 1


@WIDTHS
def test_detach_lets_the_guest_run_on_without_breakpoints(gdb, runs, tmp_path, width) -> None:
    script = """break main
break xg_shutdown
monitor catch hypercall sched_op
continue
detach
"""
    out, rc, stdout, _ = session(gdb, runs, tmp_path, "hello", width, script)
    assert "Breakpoint 1, main" in out
    assert "[Inferior 1 (Remote target) detached]" in out
    assert "hello: PASS" in stdout and rc == 0        # no breakpoint or catchpoint left behind
