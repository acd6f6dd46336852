"""Guest entry points: set_trap_table, set_callbacks / callback_op, stack_switch, fpu_taskswitch."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi.callback import (CALLBACKF_mask_events, CALLBACKOP_register, CALLBACKOP_unregister, CALLBACKTYPE_event,
                            CALLBACKTYPE_failsafe, CALLBACKTYPE_nmi, CALLBACKTYPE_syscall)
from ..abi.errno import Errno
from ..abi.xen import Width
from .hypercall import hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu


def _kernel_cs(cs: int) -> int:
    """fixup_guest_code_selector: a ring-0 selector becomes the guest kernel's ring."""
    return cs | 1 if cs & 3 == 0 else cs


@hypercall("set_trap_table", 1)
def do_set_trap_table(v: "Vcpu", traps: int) -> int:
    """Install the virtual IDT; a NULL list clears it; the list ends at address 0."""
    from .vcpu import TrapEntry
    if traps == 0:
        v.trap_table = [TrapEntry() for _ in range(256)]
        return 0
    TrapInfo = v.domain.abi.TrapInfo
    size = __import__("ctypes").sizeof(TrapInfo)
    for i in range(256):
        ti = v.gmem.read_struct(traps + i * size, TrapInfo)
        if ti.address == 0:
            break
        v.trap_table[ti.vector] = TrapEntry(ti.flags, _kernel_cs(ti.cs), ti.address)
    return 0


@hypercall("stack_switch", 2)
def do_stack_switch(v: "Vcpu", ss: int, esp: int) -> int:
    """Record the kernel stack for the next user→kernel transition (TSS ss1:esp1)."""
    ss &= 0xFFFF
    if ss & 3 == 0:
        ss |= 1
    v.kernel_ss = ss
    v.kernel_sp = esp & 0xFFFFFFFF if v.domain.width == Width.X86_32 else esp
    v.domain.hv_layout.set_ring1_stack(v.domain.mem, v.vcpu_id, v.kernel_ss, v.kernel_sp)
    return 0


def _register(v: "Vcpu", type_: int, cs: int, eip: int) -> int:
    if type_ == CALLBACKTYPE_event:
        v.event_callback = (_kernel_cs(cs), eip)
    elif type_ == CALLBACKTYPE_failsafe:
        v.failsafe_callback = (_kernel_cs(cs), eip)
    elif type_ == CALLBACKTYPE_nmi:
        v.nmi_callback = eip
    else:
        return -Errno.EINVAL
    return 0


@hypercall("set_callbacks", 4, abis=(Width.X86_32,))
def do_set_callbacks(v: "Vcpu", ev_cs: int, ev_eip: int, fs_cs: int, fs_eip: int) -> int:
    _register(v, CALLBACKTYPE_event, ev_cs, ev_eip)
    _register(v, CALLBACKTYPE_failsafe, fs_cs, fs_eip)
    return 0


@hypercall("set_callbacks", 3, abis=(Width.X86_64,))
def do_set_callbacks64(v: "Vcpu", event: int, failsafe: int, syscall: int) -> int:
    _register(v, CALLBACKTYPE_event, 0, event)
    _register(v, CALLBACKTYPE_failsafe, 0, failsafe)
    v.syscall_callback = syscall
    return 0


@hypercall("callback_op", 2)
def do_callback_op(v: "Vcpu", cmd: int, arg: int) -> int:
    """struct callback_register {uint16 type; uint16 flags; xen_callback_t address}."""
    if cmd == CALLBACKOP_register:
        type_, _flags = v.gmem.read_u32(arg) & 0xFFFF, v.gmem.read_u32(arg) >> 16
        if v.domain.width == Width.X86_32:
            cs, eip = v.gmem.read_u32(arg + 4), v.gmem.read_u32(arg + 8)
        else:
            cs, eip = 0, v.gmem.read_u64(arg + 8)
        if type_ == CALLBACKTYPE_syscall and v.domain.width == Width.X86_64:
            v.syscall_callback = eip
            v.syscall_mask_events = bool(_flags & CALLBACKF_mask_events)
            return 0
        return _register(v, type_, cs, eip)
    if cmd == CALLBACKOP_unregister:
        type_ = v.gmem.read_u32(arg) & 0xFFFF
        if type_ == CALLBACKTYPE_event:
            v.event_callback = (0, 0)
            return 0
        return -Errno.EINVAL
    return -Errno.ENOSYS


@hypercall("fpu_taskswitch", 1)
def do_fpu_taskswitch(v: "Vcpu", set_: int) -> int:
    v.cr0_ts = bool(set_)
    return 0


SEGBASE_FS = 0
SEGBASE_GS_USER = 1
SEGBASE_GS_KERNEL = 2
SEGBASE_GS_USER_SEL = 3


@hypercall("set_segment_base", 2, abis=(Width.X86_64,))
def do_set_segment_base(v: "Vcpu", which: int, base: int) -> int:
    """FS base, and the user/kernel GS bases Xen swaps on every mode switch."""
    from ..cpu.x86 import MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE
    from .traps64 import canonical
    cpu = v.cpu
    if which == SEGBASE_GS_USER_SEL:
        # Load a user GS selector: with flat 64-bit segments only the null selector and
        # Xen's flat data selector are meaningful; the base itself stays as it is.
        return 0 if (base & 0xFFFF) in (0, 0xE02B) else -Errno.EINVAL
    if not canonical(base):
        return -Errno.EINVAL
    if which == SEGBASE_FS:
        cpu.write_msr(MSR_FS_BASE, base)
    elif which == SEGBASE_GS_USER:
        cpu.write_msr(MSR_SHADOW_GS_BASE if v.kernel_mode else MSR_GS_BASE, base)
    elif which == SEGBASE_GS_KERNEL:
        cpu.write_msr(MSR_GS_BASE if v.kernel_mode else MSR_SHADOW_GS_BASE, base)
    else:
        return -Errno.EINVAL
    return 0
