"""Traps: every way guest execution reaches the hypervisor, for 32-bit PV guests.

What Unicorn reports (unicorn-notes §0-1): exceptions and ``int N`` arrive at one
interrupt hook with no IDT involved; #UD arrives at the invalid-instruction hook;
the CPL cannot be changed from a hook.  So:

* ``int $0x82`` from ring 1 is a hypercall (from ring 3 it is #GP, as Xen's DPL-1 gate);
* a fault is acknowledged at once (the nested-fault bug) and bounced to the guest's
  trap table in Xen's frame format (``create_bounce_frame``), or emulated when it is a
  privileged instruction Xen emulates for PV guests (emul_priv_op.py);
* ``int N`` is delivered when the trap table's DPL allows it, else #GP((N<<3)|2);
* an event for the kernel that happens in ring 3 goes through the call gate: the
  vCPU is pointed at the firmware's ``lcall``, the CPU switches to the ring-1 stack of
  the guest's stack_switch, and ``int $0x83`` there brings us back to finish the bounce;
* returns to the guest that change CS go through the firmware's ``iretd``.
"""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Callable

from ..abi.xen import (FLAT_RING1_CS, HYPERCALL_VECTOR, TI_DPL_MASK, TI_FLAG_IF,
                       TRAP_gp_fault, TRAP_invalid_op, TRAP_page_fault,
                       TRAPS_WITH_ERROR_CODE)
from . import emul_priv_op, hypercall as hc, mm
from .guest_access import GuestFault

if TYPE_CHECKING:
    from .vcpu import TrapEntry, Vcpu

log = logging.getLogger("xenpy.traps")

GATE_VECTOR = 0x83
EFLAGS_IF = 1 << 9
EFLAGS_IOPL = 3 << 12
EFLAGS_TF = 1 << 8
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17
#: vectors whose hardware delivery sets Unicorn's old_exception (notes §1)
_HW_TRACKED = frozenset({0, 8, 10, 11, 12, 13, 14})
_FORCED_EMUL = b"\x0f\x0bxen"


def install_hooks(v: "Vcpu") -> None:
    from ..cpu.chooks import NO_RESULT, HypercallEntry
    from ..cpu.x86 import REGS32
    fw = v.domain.host.layout32.firmware.symbols
    v.fw_iret = fw["iret_tramp"]
    v.fw_gate_return = fw["gate_entry"] + 2
    v.fw_user_gate = fw["user_gate"]
    fast = hc.fast_dispatcher(v)
    DEFER = hc.DEFER
    cpu = v.cpu

    def on_hypercall(eax, ebx, ecx, edx, esi, edi, ebp, cs, eip, _m=0xFFFFFFFF):
        """int $0x82, registers read by the C hook; returns the new eax or NO_RESULT."""
        if emul_priv_op.after_denied_io(v):
            return NO_RESULT
        if cs & 3 != 1:
            do_trap(v, HYPERCALL_VECTOR)          # from ring 3: #GP, as Xen's DPL-1 gate
            return NO_RESULT
        v.in_hypercall = True
        res = fast(eax & _m, ebx, ecx, edx, esi, edi, ebp)
        v.in_hypercall = False
        if res is DEFER:
            cpu.set_reg("eip", eip - 2)           # back onto the int $0x82
            v.debug_stop = True
            cpu.stop()
            return NO_RESULT
        if v.vcpu_info_pending():
            deliver_event(v)
        if v.preempt_pending:
            v.hook_exit()
        return NO_RESULT if res is None else res & _m

    HypercallEntry(cpu, [REGS32[n] for n in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp",
                                             "cs", "eip")],
                   REGS32["eax"], HYPERCALL_VECTOR, on_hypercall, interrupt_hook(v, do_trap))
    install_common_hooks(v, lambda: do_invalid_op(v))


def interrupt_hook(v: "Vcpu", do_trap) -> Callable[[int], None]:
    """The interrupt/exception hook of either width around its ``do_trap``."""
    def on_interrupt(vector: int) -> None:
        if emul_priv_op.after_denied_io(v):
            return
        do_trap(v, vector)
        v.hook_exit()
    return on_interrupt


def install_common_hooks(v: "Vcpu", invalid_op) -> None:
    """#UD, CPUID and port I/O: the same policy for both guest widths."""
    cpu = v.cpu
    cpu.on_invalid_opcode(invalid_op)
    cpu.on_cpuid(lambda: emul_priv_op.cpuid(v))
    cpu.on_port_in(lambda port, size: emul_priv_op.port_in(v, port, size))
    cpu.on_port_out(lambda port, size, val: emul_priv_op.port_out(v, port, size, val))


def classify(v: "Vcpu", vector: int, ip: int) -> tuple[bool, int | None]:
    """(hardware?, error code) of an interrupt-hook vector, acknowledging a fault.

    Unicorn reports exceptions and `int N` alike.  Vectors that set old_exception
    (0, 8, 10-14) are hardware when it says so; #DB, int3 and into are treated as
    hardware (Xen's IDT gives them DPL 3); anything else is `int N` when the two
    bytes before the IP encode it."""
    cpu = v.cpu
    if vector >= 32:
        return False, None
    if vector in _HW_TRACKED:
        hardware = cpu.pending_exception() == vector
    elif vector in (1, 3, 4):
        hardware = True
    else:
        hardware = _prev_bytes(v, ip, 2) != bytes((0xCD, vector))
    if not hardware:
        return False, None
    err = cpu.ack_fault()
    return True, (err if vector in TRAPS_WITH_ERROR_CODE else None)


def forced_emulation(v: "Vcpu", ip: int, ip_reg: str) -> bool:
    """Xen's forced-emulation prefix (ud2a; .ascii "xen") before a cpuid: skip the prefix;
    Unicorn then runs the cpuid and our CPUID hook answers it."""
    try:
        head = v.gmem.read(ip, 7)
    except GuestFault:
        return False
    if head[:5] == _FORCED_EMUL and head[5:7] == b"\x0f\xa2":
        v.cpu.set_reg(ip_reg, ip + 5)
        return True
    return False


def do_trap(v: "Vcpu", vector: int) -> None:
    """The interrupt hook for everything but a ring-1 hypercall."""
    cpu = v.cpu
    eip = cpu.reg("eip")
    cs = cpu.reg("cs")
    if vector == GATE_VECTOR and eip == v.fw_gate_return and cs & 3 == 1:
        finish_user_bounce(v)
        return
    hardware, error_code = classify(v, vector, eip)
    if hardware:
        if eip in (v.fw_iret, v.fw_user_gate):
            v.domain.crash(f"fault {vector} (ec={error_code}) returning to the guest at "
                           f"{'iret' if eip == v.fw_iret else 'the kernel stack'} "
                           f"(bad iret frame or stack_switch stack)")
            return
        if vector == TRAP_gp_fault and error_code == 0:
            if emul_priv_op.emulate_tsc(v, eip) or (cs & 3 == 1 and emul_priv_op.emulate(v, eip)):
                return
        if vector == TRAP_page_fault:
            cr2 = cpu.reg("cr2")
            if cs & 3 == 1 and mm.ptwr_do_page_fault(v, cr2, error_code, eip):
                return
            v.vcpu_info.arch.cr2 = cr2
        inject(v, vector, error_code, eip)
        return
    # A software interrupt `int N` (EIP is after the 2-byte instruction).
    ti = v.trap_table[vector]
    dpl = ti.flags & TI_DPL_MASK
    if vector == HYPERCALL_VECTOR or not ti.address or dpl < (cs & 3):
        inject(v, TRAP_gp_fault, (vector << 3) | 2, eip - 2)
        return
    inject(v, vector, None, eip)


def _prev_bytes(v: "Vcpu", eip: int, n: int) -> bytes:
    try:
        return v.gmem.read(eip - n, n)
    except GuestFault:
        return b""


def do_invalid_op(v: "Vcpu") -> bool:
    """#UD: Xen's forced-emulation prefix, or a bounce to the guest."""
    eip = v.cpu.reg("eip")
    if not forced_emulation(v, eip, "eip"):
        inject(v, TRAP_invalid_op, None, eip)
    return True


def inject(v: "Vcpu", vector: int, error_code: int | None, eip: int) -> None:
    """pv_inject_event: bounce ``vector`` to the guest as if it happened at ``eip``."""
    ti = v.trap_table[vector]
    if not ti.address:
        v.domain.crash(f"unhandled trap {vector} (ec={error_code if error_code is not None else '-'}) "
                       f"at eip {eip:#x}" + (f", cr2 {v.vcpu_info.arch.cr2:#x}"
                                             if vector == TRAP_page_fault else ""))
        return
    cpu = v.cpu
    regs = {"eip": eip, "cs": cpu.reg("cs"), "eflags": cpu.reg("eflags"),
            "esp": cpu.reg("esp"), "ss": cpu.reg("ss")}
    bounce(v, vector, error_code, ti, regs)


def bounce(v: "Vcpu", vector: int, error_code: int | None, ti: "TrapEntry",
           regs: dict[str, int]) -> None:
    """create_bounce_frame: from ring 1 build it now; from ring 3, via the call gate."""
    from .vcpu import PendingUserEvent
    if regs["cs"] & 3 == 3:
        v.pending_user = PendingUserEvent(vector, error_code, regs["eip"], regs["cs"],
                                          regs["eflags"], regs["esp"], regs["ss"], ti)
        v.cpu.set_reg("eip", v.fw_user_gate)
        return
    frame = [regs["eip"], None, regs["eflags"]]
    _push_frame(v, frame, error_code, regs["cs"], regs["esp"], ti, user=None)


def _push_frame(v: "Vcpu", frame: list, error_code: int | None, cs: int, sp: int,
                ti: "TrapEntry", user: tuple[int, int] | None) -> None:
    vi = v.vcpu_info
    mask = vi.evtchn_upcall_mask
    eflags = (frame[2] & ~EFLAGS_IF) | (0 if mask else EFLAGS_IF)
    words = [frame[0], (cs & 0xFFFF) | (mask << 16), eflags]
    if user is not None:
        words += [user[0], user[1]]
    if error_code is not None:
        words.insert(0, error_code)
    sp = (sp - 4 * len(words)) & 0xFFFFFFFF
    try:
        v.gmem.user = False
        v.gmem.write(sp, struct.pack(f"<{len(words)}I", *[w & 0xFFFFFFFF for w in words]))
    except GuestFault as f:
        v.domain.crash(f"cannot write a bounce frame to the guest kernel stack at {f.va:#x}")
        return
    if ti.flags & TI_FLAG_IF:
        vi.evtchn_upcall_mask = 1
    new_flags = (frame[2] & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_VM | EFLAGS_RF | EFLAGS_IOPL)) | EFLAGS_IF
    transfer(v, ti.cs or FLAT_RING1_CS, ti.address, sp, new_flags)


def transfer(v: "Vcpu", cs: int, eip: int, esp: int, eflags: int) -> None:
    """Continue the guest at ring-1 cs:eip with esp (same-ring iret through firmware)."""
    cs = (cs & 0xFFFC) | 1
    cpu = v.cpu
    if cpu.reg("cs") == cs:
        cpu.set_regs(esp=esp, eflags=eflags, eip=eip)
        return
    sp = (esp - 12) & 0xFFFFFFFF
    v.gmem.write(sp, struct.pack("<III", eip & 0xFFFFFFFF, cs, eflags))
    cpu.set_regs(esp=sp, eip=v.fw_iret)


def finish_user_bounce(v: "Vcpu") -> None:
    """int $0x83 from the gate entry: the CPU is now in ring 1 on the kernel stack."""
    cpu = v.cpu
    esp = cpu.reg("esp")
    ev = v.pending_user
    v.pending_user = None
    if ev is None:
        # User code called the gate itself: Xen has no such gate, so that is #GP.
        try:
            ret_eip, ucs, uesp, uss = struct.unpack("<IIII", v.gmem.read(esp, 16))
        except GuestFault:
            v.domain.crash("stray call-gate entry with an unreadable kernel stack")
            return
        from .vcpu import PendingUserEvent
        ev = PendingUserEvent(TRAP_gp_fault, 0, ret_eip - 6, ucs, cpu.reg("eflags"), uesp, uss,
                              v.trap_table[TRAP_gp_fault])
        if not ev.ti.address:
            v.domain.crash(f"unhandled #GP from user mode at {ev.eip:#x}")
            return
    sp = (esp + 16) & 0xFFFFFFFF          # discard what the call gate pushed
    _push_frame(v, [ev.eip, None, ev.eflags], ev.error_code, ev.cs, sp, ev.ti,
                user=(ev.esp, ev.ss))


def deliver_event(v: "Vcpu") -> None:
    """Bounce to the event callback (upcall) with events masked, as Xen does on exit."""
    cs, eip = v.event_callback
    if not eip:
        return
    from .vcpu import TrapEntry
    ti = TrapEntry(TI_FLAG_IF, cs, eip)
    cpu = v.cpu
    regs = {"eip": cpu.reg("eip"), "cs": cpu.reg("cs"), "eflags": cpu.reg("eflags"),
            "esp": cpu.reg("esp"), "ss": cpu.reg("ss")}
    bounce(v, -1, None, ti, regs)

