"""Traps for 64-bit PV guests: Xen's x86-64 PV model on Unicorn.

The guest kernel and its user processes both run at CPL 3; the hypervisor tells them
apart (Xen's TF_kernel_mode) and switches between them itself — page-table base
(guest_table / guest_table_user) and GS base (as swapgs would).  So no transition
ever changes the CPL and everything is register writes:

* ``syscall`` in kernel mode is a hypercall (args rdi rsi rdx r10 r8 r9, result rax);
  in user mode it goes to the guest's syscall callback, with rcx/r11 as the
  instruction would have left them.  Unicorn adds 2 to RIP after the syscall hook
  even when the hook wrote RIP (unicorn-notes §3), so targets are written minus 2.
* exceptions and ``int N`` arrive at the interrupt hook and are bounced in Xen's
  64-bit frame: from the top RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS, on the
  kernel stack (16-byte aligned), the saved event mask in CS bits 32-39, a kernel
  CS reported with RPL 0; from user mode the switch to kernel mode and stack first.
"""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from ..abi.xen import (FLAT_RING3_CS64, FLAT_RING3_SS64, TI_DPL_MASK, TI_FLAG_IF,
                       TRAP_gp_fault, TRAP_invalid_op, TRAP_page_fault)
from . import emul_priv_op, hypercall as hc, mm
from ..cpu.x86 import MSR_GS_BASE, MSR_SHADOW_GS_BASE
from .guest_access import PFEC_user, GuestFault
from .traps import (EFLAGS_IF, EFLAGS_IOPL, EFLAGS_NT, EFLAGS_RF, EFLAGS_TF, EFLAGS_VM,
                    classify, forced_emulation, install_common_hooks, interrupt_hook)

if TYPE_CHECKING:
    from .vcpu import TrapEntry, Vcpu

log = logging.getLogger("xenpy.traps64")
MASK64 = 0xFFFFFFFFFFFFFFFF
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11


def canonical(addr: int) -> bool:
    return addr < 0x0000800000000000 or 0xFFFF800000000000 <= addr <= MASK64


def install_hooks(v: "Vcpu") -> None:
    from ..cpu.chooks import NO_RESULT, HypercallEntry
    from ..cpu.x86 import REGS64
    v.fw_iret = v.domain.hv_layout.host.firmware.symbols["iret_tramp"]
    fast = hc.fast_dispatcher(v)
    DEFER = hc.DEFER
    cpu = v.cpu

    def on_syscall(rax, rdi, rsi, rdx, r10, r8, r9, rip, _unused):
        """syscall, registers read by the C hook; returns the new rax or NO_RESULT."""
        if emul_priv_op.after_denied_io(v):
            return NO_RESULT
        res = None
        v.in_syscall_hook = True
        try:
            if v.kernel_mode:
                res = fast(rax & 0xFFFFFFFF, rdi, rsi, rdx, r10, r8, r9)
                if res is DEFER:
                    set_ip(v, rip)                    # back onto the syscall
                    v.debug_stop = True
                    cpu.stop()
                    return NO_RESULT
                if v.vcpu_info_pending():
                    deliver_event(v)
            else:
                user_syscall(v, rip)
        finally:
            v.in_syscall_hook = False
        if v.preempt_pending:
            v.hook_exit()
        if res is None:
            return NO_RESULT
        res &= MASK64                  # rax as the C hook's int64_t: -EINVAL stays -22
        return res - (1 << 64) if res >> 63 else res

    HypercallEntry(cpu, [REGS64[n] for n in ("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9",
                                             "rip")],
                   REGS64["rax"], None, on_syscall, interrupt_hook(v, do_trap))
    install_common_hooks(v, lambda: do_invalid_op(v))


def set_ip(v: "Vcpu", rip: int) -> None:
    """Write RIP, compensating Unicorn's +2 when we are inside the syscall hook."""
    v.cpu.set_reg("rip", (rip - 2) & MASK64 if v.in_syscall_hook else rip)


def toggle_guest_mode(v: "Vcpu") -> None:
    """Switch kernel<->user: page-table base and GS base, as Xen's toggle_guest_mode."""
    cpu = v.cpu
    gs, shadow = cpu.read_msr(MSR_GS_BASE), cpu.read_msr(MSR_SHADOW_GS_BASE)
    cpu.write_msr(MSR_GS_BASE, shadow)
    cpu.write_msr(MSR_SHADOW_GS_BASE, gs)
    v.kernel_mode = not v.kernel_mode
    table = v.guest_table if v.kernel_mode else v.guest_table_user
    v.set_cr3(table << 12)


def do_trap(v: "Vcpu", vector: int) -> None:
    cpu = v.cpu
    rip = cpu.reg("rip")
    hardware, error_code = classify(v, vector, rip)
    if hardware:
        if rip == v.fw_iret or cpu.reg("cs") & 3 != 3:
            # the hypervisor's own ring-0 iretq faulted on the frame it was handed (a bad
            # context): bouncing now would run the guest's handler with the hypervisor's
            # CS, at ring 0
            v.domain.crash(f"fault {vector} (ec={error_code}) entering the guest context "
                           "(bad vCPU context)")
            return
        if vector == TRAP_gp_fault and error_code == 0:
            if emul_priv_op.emulate_tsc(v, rip) or (v.kernel_mode
                                                   and emul_priv_op.emulate64(v, rip)):
                return
        if vector == TRAP_page_fault:
            cr2 = cpu.reg("cr2")
            if v.kernel_mode and mm.ptwr_do_page_fault(v, cr2, error_code, rip):
                return
            v.vcpu_info.arch.cr2 = cr2
            if v.kernel_mode:
                error_code &= ~PFEC_user          # Xen reports guest-kernel accesses as supervisor
        inject(v, vector, error_code, rip)
        return
    ti = v.trap_table[vector]
    dpl = ti.flags & TI_DPL_MASK
    if not ti.address or dpl < (1 if v.kernel_mode else 3):
        inject(v, TRAP_gp_fault, (vector << 3) | 2, rip - 2)
        return
    inject(v, vector, None, rip)


def do_invalid_op(v: "Vcpu") -> bool:
    rip = v.cpu.reg("rip")
    if not forced_emulation(v, rip, "rip"):
        inject(v, TRAP_invalid_op, None, rip)
    return True


def _regs(v: "Vcpu", rip: int) -> dict[str, int]:
    c = v.cpu
    return {"rip": rip, "cs": c.reg("cs"), "rflags": c.reg("rflags"), "rsp": c.reg("rsp"),
            "ss": c.reg("ss"), "rcx": c.reg("rcx"), "r11": c.reg("r11")}


def inject(v: "Vcpu", vector: int, error_code: int | None, rip: int) -> None:
    ti = v.trap_table[vector]
    if not ti.address:
        v.domain.crash(f"unhandled trap {vector} (ec={error_code if error_code is not None else '-'})"
                       f" at rip {rip:#x}" + (f", cr2 {v.vcpu_info.arch.cr2:#x}"
                                              if vector == TRAP_page_fault else ""))
        return
    bounce(v, ti, error_code, _regs(v, rip))


def bounce(v: "Vcpu", ti: "TrapEntry", error_code: int | None, regs: dict[str, int]) -> None:
    """create_bounce_frame (x86_64/entry.S)."""
    was_kernel = v.kernel_mode
    if not was_kernel:
        toggle_guest_mode(v)
        sp = v.kernel_sp
    else:
        sp = regs["rsp"]
    sp &= ~0xF
    vi = v.vcpu_info
    mask = vi.evtchn_upcall_mask
    cs = (regs["cs"] & ~3) if was_kernel else (regs["cs"] | 3)
    rflags = (regs["rflags"] & ~EFLAGS_IF) | (0 if mask else EFLAGS_IF)
    words = [regs["rcx"], regs["r11"]]
    if error_code is not None:
        words.append(error_code)
    words += [regs["rip"], (cs & 0xFFFF) | (mask << 32), rflags, regs["rsp"], regs["ss"] | 3]
    sp = (sp - 8 * len(words)) & MASK64
    try:
        v.gmem.write(sp, struct.pack(f"<{len(words)}Q", *[w & MASK64 for w in words]))
    except GuestFault as f:
        v.domain.crash(f"cannot write a bounce frame to the guest kernel stack at {f.va:#x}")
        return
    if ti.flags & TI_FLAG_IF:
        vi.evtchn_upcall_mask = 1
    cpu = v.cpu
    flags = regs["rflags"] & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_VM | EFLAGS_RF | EFLAGS_IOPL)
    cpu.set_regs(rsp=sp, rflags=flags | EFLAGS_IF)
    set_ip(v, ti.address)


def user_syscall(v: "Vcpu", rip: int) -> None:
    """`syscall` from guest user mode: to the registered syscall callback."""
    from .vcpu import TrapEntry
    cpu = v.cpu
    regs = _regs(v, rip + 2)
    regs["rcx"], regs["r11"] = rip + 2, regs["rflags"]
    if not v.syscall_callback:
        inject_from_syscall(v, TRAP_invalid_op, rip)   # Xen: no callback → #UD
        return
    cpu.set_regs(rcx=rip + 2, r11=regs["rflags"])
    flags = TI_FLAG_IF if v.syscall_mask_events else 0
    bounce(v, TrapEntry(flags, FLAT_RING3_CS64, v.syscall_callback), None, regs)


def inject_from_syscall(v: "Vcpu", vector: int, rip: int) -> None:
    inject(v, vector, None, rip)


def deliver_event(v: "Vcpu") -> None:
    from .vcpu import TrapEntry
    _cs, rip = v.event_callback
    if not rip:
        return
    cpu = v.cpu
    cur = cpu.reg("rip")
    if v.in_syscall_hook:
        cur += 2
    bounce(v, TrapEntry(TI_FLAG_IF, FLAT_RING3_CS64, rip), None, _regs(v, cur))


def initial_state(v: "Vcpu", *, entry: int, stack: int, start_info: int, cr3: int) -> None:
    """Xen's initial 64-bit vCPU: CPL 3 kernel mode, flat selectors, RSI = start_info."""
    from .host import enable_paging
    from .layout64 import SEL_RING0_CS64, SEL_RING0_DS
    cpu = v.cpu
    enable_paging(v, cr3, efer=EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
    cpu.set_regs(cs=SEL_RING0_CS64, ss=SEL_RING0_DS)
    frame = [entry, FLAT_RING3_CS64, 0x200, stack, FLAT_RING3_SS64]
    sp = stack - 8 * len(frame)
    v.gmem.write(sp, b"".join(x.to_bytes(8, "little") for x in frame))
    cpu.set_regs(rax=0, rbx=0, rcx=0, rdx=0, rsi=start_info, rdi=0, rbp=0, rsp=sp,
                 rip=v.fw_iret)
    # DS/ES/FS/GS stay null (FLAT_KERNEL_DS64 is the null selector), as libxenguest sets them.
    v.kernel_mode = True
    v.online = True
