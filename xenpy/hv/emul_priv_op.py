"""Privileged instructions a PV kernel may execute, emulated as Xen's emul-priv-op.c does.

A ring-1 kernel that executes a privileged instruction takes #GP(0).  Xen decodes it
and emulates the ones a PV guest is allowed (reads of CR0/2/3/4, CR0.TS and CR3
writes, debug registers, a few MSRs, cli/sti under the virtual IOPL, wbinvd as a
no-op); anything else is reflected to the guest as #GP(0).  CPUID is answered with
Xen's hypervisor leaves; port I/O is checked against the virtual IOPL.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..abi.xen import PAGE_SHIFT, TRAP_gp_fault
from ..cpu.x86 import MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE
from .guest_access import GuestFault

if TYPE_CHECKING:
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.emul")

_GPR = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
XEN_CPUID_BASE = 0x40000000
XEN_MAJOR, XEN_MINOR = 4, 17
CR0_TS = 1 << 3
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_PLATFORM_ID = 0x17
MISC_ENABLE_BTS_UNAVAIL = 1 << 11
MISC_ENABLE_PEBS_UNAVAIL = 1 << 12


def _fetch(v: "Vcpu", eip: int, n: int) -> bytes:
    try:
        return v.gmem.read(eip, n)
    except GuestFault:
        return b""


def emulate_tsc(v: "Vcpu", ip: int) -> bool:
    """rdtsc / rdtscp at any privilege (CR4.TSD makes them trap): Xen's emulated TSC."""
    code = _fetch(v, ip, 3)
    if code[:2] == b"\x0f\x31":
        n = 2
    elif code[:3] == b"\x0f\x01\xf9":
        n = 3
        v.cpu.set_reg("ecx" if v.domain.width == 4 else "rcx", v.vcpu_id)   # TSC_AUX
    else:
        return False
    from .time import rdtsc
    tsc = rdtsc(v)
    if v.domain.width == 4:
        v.cpu.set_regs(eax=tsc & 0xFFFFFFFF, edx=(tsc >> 32) & 0xFFFFFFFF, eip=ip + n)
    else:
        v.cpu.set_regs(rax=tsc & 0xFFFFFFFF, rdx=(tsc >> 32) & 0xFFFFFFFF, rip=ip + n)
    return True


def _cli_sti(v: "Vcpu", op: int, ip_reg: str, ip: int) -> bool:
    """cli/sti under the virtual IOPL: they set or clear the event mask (Xen's iopl_ok)."""
    if v.iopl < 1:
        return False
    v.vcpu_info.evtchn_upcall_mask = 1 if op == 0xFA else 0
    v.cpu.set_reg(ip_reg, ip + 1)
    return True


def emulate(v: "Vcpu", eip: int) -> bool:
    """Emulate the instruction at ``eip`` if Xen would; True when done."""
    code = _fetch(v, eip, 3)
    if not code:
        return False
    cpu = v.cpu
    op = code[0]
    if op in (0xFA, 0xFB):                       # cli / sti
        return _cli_sti(v, op, "eip", eip)
    if op != 0x0F or len(code) < 2:
        return False
    op2 = code[1]
    if op2 == 0x06:                              # clts
        v.cr0_ts = False
        cpu.set_reg("eip", eip + 2)
        return True
    if op2 == 0x09:                              # wbinvd: ignored for unprivileged guests
        cpu.set_reg("eip", eip + 2)
        return True
    if op2 in (0x20, 0x22, 0x21, 0x23) and len(code) == 3 and code[2] >> 6 == 3:
        reg = _GPR[code[2] & 7]
        n = (code[2] >> 3) & 7
        if op2 == 0x20:
            value = read_cr(v, n)
            if value is None:
                return False
            cpu.set_reg(reg, value)
        elif op2 == 0x22:
            if not write_cr(v, n, cpu.reg(reg) & 0xFFFFFFFF):
                return False
        elif op2 == 0x21:
            cpu.set_reg(reg, v.debugreg[n] if n < 8 else 0)
        else:
            v.debugreg[n] = cpu.reg(reg) & 0xFFFFFFFF
        cpu.set_reg("eip", eip + 3)
        return True
    if op2 in (0x30, 0x32):                      # wrmsr / rdmsr
        msr = cpu.reg("ecx") & 0xFFFFFFFF
        if op2 == 0x32:
            value = read_msr(v, msr)
            if value is None:
                return False
            cpu.set_regs(eax=value & 0xFFFFFFFF, edx=value >> 32)
        else:
            value = (cpu.reg("edx") & 0xFFFFFFFF) << 32 | (cpu.reg("eax") & 0xFFFFFFFF)
            if read_msr(v, msr) != value:
                return False            # Xen refuses writes to everything a PV guest sees
        cpu.set_reg("eip", eip + 2)
        return True
    return False


_GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def emulate64(v: "Vcpu", rip: int) -> bool:
    """The 64-bit guest kernel's privileged instructions (it runs at CPL 3)."""
    code = _fetch(v, rip, 4)
    if not code:
        return False
    cpu = v.cpu
    rex = 0
    n = 0
    if 0x40 <= code[0] <= 0x4F:
        rex, n = code[0], 1
    op = code[n:]
    if op[:1] in (b"\xfa", b"\xfb") and not rex:
        return _cli_sti(v, op[0], "rip", rip)
    if len(op) < 2 or op[0] != 0x0F:
        return False
    if op[1] == 0x06:
        v.cr0_ts = False
        cpu.set_reg("rip", rip + n + 2)
        return True
    if op[1] == 0x09:
        cpu.set_reg("rip", rip + n + 2)
        return True
    if op[1] in (0x20, 0x22) and len(op) >= 3 and op[2] >> 6 == 3:
        reg = _GPR64[(op[2] & 7) | (8 if rex & 1 else 0)]
        crn = ((op[2] >> 3) & 7) | (8 if rex & 4 else 0)
        if op[1] == 0x20:
            value = read_cr64(v, crn)
            if value is None:
                return False
            cpu.set_reg(reg, value)
        else:
            value = cpu.reg(reg)
            if crn == 3:
                from . import mm
                if mm.new_guest_cr3(v, value >> PAGE_SHIFT) != 0:
                    return False
            elif not write_cr(v, crn, value):
                return False
        cpu.set_reg("rip", rip + n + 3)
        return True
    if op[1] in (0x30, 0x32):
        msr = cpu.reg("rcx") & 0xFFFFFFFF
        if op[1] == 0x32:
            value = read_msr64(v, msr)
            if value is None:
                return False
            cpu.set_regs(rax=value & 0xFFFFFFFF, rdx=value >> 32)
        else:
            value = (cpu.reg("rdx") & 0xFFFFFFFF) << 32 | (cpu.reg("rax") & 0xFFFFFFFF)
            if not write_msr64(v, msr, value):
                return False
        cpu.set_reg("rip", rip + n + 2)
        return True
    return False


def read_cr64(v: "Vcpu", n: int) -> int | None:
    if n == 3:
        return v.guest_table << PAGE_SHIFT
    return read_cr(v, n)


def read_msr64(v: "Vcpu", msr: int) -> int | None:
    if msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        return v.cpu.read_msr(msr)
    return read_msr(v, msr)


def write_msr64(v: "Vcpu", msr: int, value: int) -> bool:
    """FS/GS base writes, with #GP on a non-canonical address as on hardware."""
    from .traps64 import canonical
    if msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        if not canonical(value):
            return False
        v.cpu.write_msr(msr, value)
        return True
    return read_msr(v, msr) == value


def read_cr(v: "Vcpu", n: int) -> int | None:
    cpu = v.cpu
    if n == 0:
        return (cpu.reg("cr0") & ~CR0_TS) | (CR0_TS if v.cr0_ts else 0)
    if n == 2:
        return v.vcpu_info.arch.cr2
    if n == 3:
        mfn = v.gmem.cr3 >> PAGE_SHIFT
        return ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF       # xen_pfn_to_cr3 (compat)
    if n == 4:
        return cpu.reg("cr4")
    return None


def write_cr(v: "Vcpu", n: int, value: int) -> bool:
    cpu = v.cpu
    if n == 0:
        if (value ^ read_cr(v, 0)) & ~CR0_TS:
            v.domain.log_once("cr0", "attempt to change unmodifiable CR0 flags (%#x)", value)
            return False
        v.cr0_ts = bool(value & CR0_TS)
        return True
    if n == 2:
        v.vcpu_info.arch.cr2 = value
        return True
    if n == 3:
        from . import mm
        mfn = ((value >> 12) | (value << 20)) & 0xFFFFF        # xen_cr3_to_pfn (compat)
        return mm.new_guest_cr3(v, mfn) == 0
    if n == 4:
        return value == cpu.reg("cr4")
    return False


def read_msr(v: "Vcpu", msr: int) -> int | None:
    if msr == MSR_EFER:
        return v.cpu.read_msr(MSR_EFER)
    if msr == MSR_IA32_MISC_ENABLE:
        return MISC_ENABLE_BTS_UNAVAIL | MISC_ENABLE_PEBS_UNAVAIL
    if msr == MSR_IA32_PLATFORM_ID:
        return 0
    return None


def cpuid(v: "Vcpu") -> bool:
    """CPUID hook: Xen's leaves at 0x40000000; Unicorn's model for everything else."""
    cpu = v.cpu
    leaf = cpu.reg("eax") & 0xFFFFFFFF
    if not XEN_CPUID_BASE <= leaf < XEN_CPUID_BASE + 0x100:
        return False
    sub = leaf - XEN_CPUID_BASE
    a = b = c = d = 0
    if sub == 0:
        a = XEN_CPUID_BASE + 5
        b, c, d = (int.from_bytes(s, "little") for s in (b"XenV", b"MMXe", b"nVMM"))
    elif sub == 1:
        a = (XEN_MAJOR << 16) | XEN_MINOR
    elif sub == 2:
        a, b = 1, XEN_CPUID_BASE                 # one hypercall page; its MSR
    cpu.set_regs(eax=a, ebx=b, ecx=c, edx=d)
    return True


def _io_allowed(v: "Vcpu") -> bool:
    cpl = v.cpu.reg("cs") & 3
    return v.iopl >= (1 if cpl == 1 else 3)


def port_in(v: "Vcpu", port: int, size: int) -> int:
    """IN: no devices are emulated, so a permitted read floats high (~0), as under Xen."""
    if not _io_allowed(v):
        _deny_io(v)
    return (1 << (8 * size)) - 1


def port_out(v: "Vcpu", port: int, size: int, value: int) -> None:
    if not _io_allowed(v):
        _deny_io(v)


def _deny_io(v: "Vcpu") -> None:
    """Port I/O without I/O privilege is #GP(0) at the instruction.

    Unicorn never faults I/O (notes §0) and ignores an EIP written from an I/O hook, so
    we snapshot the registers here (EIP is the I/O instruction), stop the CPU, and the
    run loop restores the snapshot and injects the #GP (finish_denied_io).  Limitation:
    instructions after the I/O in the same translated block have run by then; their
    register effects are undone by the snapshot, memory stores are not; the hooks refuse
    a hypercall or trap after it (nothing the hypervisor tracks may change)."""
    if v.denied_io is None:
        v.denied_io = v.cpu.uc.context_save()
        v.domain.log_once("io", "port I/O without I/O privilege")
        v.cpu.stop()


def after_denied_io(v: "Vcpu") -> bool:
    """True (and the CPU asked to stop) when a denied port I/O earlier in the running
    block awaits its #GP: a hook must then do nothing — a hypercall or trap after it would
    change state the register rollback does not undo."""
    if v.denied_io is None:
        return False
    v.cpu.stop()
    return True


def finish_denied_io(v: "Vcpu") -> None:
    snap, v.denied_io = v.denied_io, None
    v.cpu.uc.context_restore(snap)
    if v.cpu.reg("cr3") != v.gmem.cr3:       # nothing after the I/O ran (hooks refuse it)
        v.domain.crash("denied port I/O: the page tables changed before the #GP")
        return
    ip = v.cpu.reg("eip" if v.domain.width == 4 else "rip")
    if v.domain.width == 4:
        from .traps import inject
    else:
        from .traps64 import inject
    inject(v, TRAP_gp_fault, 0, ip)
