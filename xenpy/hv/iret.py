"""HYPERCALL_iret for 32-bit PV guests (Xen's compat_iret).

The hypercall page's iret stub pushed eax; above it the guest laid out eip, cs,
eflags and, when returning to ring 3, esp and ss.  We force the privilege bits,
take the virtual IOPL and event mask from the saved EFLAGS, and let the CPU's own
iretd (in firmware) perform the return, so a bad selector faults in the CPU as on
hardware (and crashes the domain, as a failed Xen return does).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .hypercall import Continue, hypercall
from .traps import EFLAGS_IF, EFLAGS_IOPL, EFLAGS_VM
from ..abi.xen import Width

if TYPE_CHECKING:
    from .vcpu import Vcpu


@hypercall("iret", 0, abis=(Width.X86_32,))
def do_iret(v: "Vcpu") -> int:
    cpu = v.cpu
    esp = cpu.reg("esp") & 0xFFFFFFFF
    v.gmem.user = False
    eax, eip, cs, eflags = struct.unpack("<IIII", v.gmem.read(esp, 16))
    if eflags & EFLAGS_VM:
        v.domain.crash("iret to vm86 mode is not supported for PV guests")
        raise Continue
    v.iopl = (eflags & EFLAGS_IOPL) >> 12
    v.vcpu_info.evtchn_upcall_mask = 0 if eflags & EFLAGS_IF else 1
    eflags = (eflags & ~EFLAGS_IOPL) | EFLAGS_IF
    cs &= 0xFFFF
    if cs & 3 == 0:
        cs |= 1
    if cs & 3 == 1:
        frame = struct.pack("<III", eip, cs, eflags)
    else:
        uesp, uss = struct.unpack("<II", v.gmem.read(esp + 16, 8))
        cs |= 3
        frame = struct.pack("<IIIII", eip, cs, eflags, uesp, (uss & 0xFFFF) | 3)
    v.gmem.write(esp + 4, frame)
    if cs & 3 == 1 and cs == cpu.reg("cs"):
        cpu.set_regs(eax=eax, esp=esp + 16, eflags=eflags, eip=eip)
    else:
        cpu.set_regs(eax=eax, esp=esp + 4, eip=v.fw_iret)
    raise Continue


@hypercall("iret", 0, abis=(Width.X86_64,))
def do_iret64(v: "Vcpu") -> int:
    """Xen's 64-bit do_iret: struct iret_context at RSP (rax r11 rcx flags rip cs rflags rsp ss)."""
    from .traps64 import set_ip, toggle_guest_mode
    from ..abi.xen import VGCF_in_syscall
    cpu = v.cpu
    rsp = cpu.reg("rsp")
    rax, r11, rcx, flags, rip, cs, rflags, usp, ss = struct.unpack("<9Q", v.gmem.read(rsp, 72))
    if (cs & 3) == 3:
        if not v.guest_table_user:
            v.domain.crash("iret to user mode without a user page table")
            raise Continue
        toggle_guest_mode(v)
    if v.domain.vm_assist & (1 << 4):          # VMASST_TYPE_architectural_iopl
        v.iopl = (rflags & EFLAGS_IOPL) >> 12
    regs = {"rax": rax, "rflags": (rflags & ~(EFLAGS_IOPL | EFLAGS_VM)) | EFLAGS_IF, "rsp": usp}
    if not flags & VGCF_in_syscall:
        regs["r11"], regs["rcx"] = r11, rcx
    cpu.set_regs(**regs)
    v.vcpu_info.evtchn_upcall_mask = 0 if rflags & EFLAGS_IF else 1
    set_ip(v, rip)
    raise Continue
