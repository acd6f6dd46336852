"""XEN_DOMCTL-like operations the toolstack needs for save, restore and migration.

Xen's toolstack drives a domain from outside through domctls: it pauses it, reads and
writes each vCPU's ``vcpu_guest_context`` (getvcpucontext / setvcpucontext) and turns on
log-dirty mode (XEN_DOMCTL_SHADOW_OP_{ENABLE_LOGDIRTY,PEEK,CLEAN}).  This module is that
interface for xenpy, with three invariants:

* **Contexts are Xen's bytes.**  ``getvcpucontext`` returns exactly a
  ``vcpu_guest_context_x86_{32,64}_t`` (2800 / 5168 octets, checked against
  /usr/include/xen by a C offsetof probe in tests/migration), holding *machine* frame
  numbers in ``gdt_frames`` and ``ctrlreg[3]`` (and ``ctrlreg[1]`` for a 64-bit user
  table), as Xen's domctl does; the toolstack canonicalises them (save_restore.py).
  ``setvcpucontext`` takes the references Xen takes (the top-level table as a CR3, the
  GDT frames as descriptor pages) through mm's public functions, so a context naming a
  frame the domain does not own, or a table that does not validate, is refused.
* **Restoring a register state never writes guest memory.**  Unicorn cannot lower the
  CPL from a hook, so a vCPU whose saved CS is not ring 0 restarts in the firmware's
  ``iret`` with the frame [ip, cs, flags, sp, ss] placed in a hypervisor page (the TSS
  page on 32-bit, the reserved GDT page on 64-bit): the guest's stack, including a
  64-bit user's red zone, is untouched.
* **Every write to guest RAM is logged while log-dirty is on.**  The guest's own stores
  are seen by a C ``UC_HOOK_MEM_WRITE`` hook per vCPU (cpu/chooks.py, ~30% of store
  throughput); writes the hypervisor and the backends make through the host buffer do
  not fire hooks, so they must call :func:`mark_dirty`.  The migration sender also
  re-checks page contents in the last round (migrate.py) for writers that do not call it.
"""
from __future__ import annotations

import ctypes
import struct
from functools import cache
from typing import TYPE_CHECKING

from ..abi.xen import PAGE_SHIFT, Width, layouts
from ..errors import XenpyError
from ..cpu.x86 import UnicornFailure
from ..cpu.x86 import MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE
from . import firmware
from .machine import PageType

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

# vcpu_guest_context.flags (public/arch-x86/xen.h)
VGCF_I387_VALID = 1 << 0
VGCF_IN_KERNEL = 1 << 2
VGCF_failsafe_disables_events = 1 << 3
VGCF_syscall_disables_events = 1 << 4
VGCF_online = 1 << 5

_EFER_64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11)      # SCE LME LMA NXE
#: offset of the iret frame in the hypervisor page that holds it (above the TSS / GDT entries)
_IRET_FRAME_OFFSET = 0x800


class DomctlError(XenpyError):
    """A domctl Xen would refuse (a bad context, a frame the domain does not own)."""


class _CpuUserRegs32(ctypes.LittleEndianStructure):
    """struct cpu_user_regs (public/arch-x86/xen-x86_32.h)."""
    _fields_ = [("ebx", ctypes.c_uint32), ("ecx", ctypes.c_uint32), ("edx", ctypes.c_uint32),
                ("esi", ctypes.c_uint32), ("edi", ctypes.c_uint32), ("ebp", ctypes.c_uint32),
                ("eax", ctypes.c_uint32), ("error_code", ctypes.c_uint16),
                ("entry_vector", ctypes.c_uint16), ("eip", ctypes.c_uint32),
                ("cs", ctypes.c_uint16), ("saved_upcall_mask", ctypes.c_uint8),
                ("_pad0", ctypes.c_uint8), ("eflags", ctypes.c_uint32), ("esp", ctypes.c_uint32),
                ("ss", ctypes.c_uint16), ("_pad1", ctypes.c_uint16),
                ("es", ctypes.c_uint16), ("_pad2", ctypes.c_uint16),
                ("ds", ctypes.c_uint16), ("_pad3", ctypes.c_uint16),
                ("fs", ctypes.c_uint16), ("_pad4", ctypes.c_uint16),
                ("gs", ctypes.c_uint16), ("_pad5", ctypes.c_uint16)]


class _CpuUserRegs64(ctypes.LittleEndianStructure):
    """struct cpu_user_regs (public/arch-x86/xen-x86_64.h)."""
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
        "rax", "rcx", "rdx", "rsi", "rdi")] + [
        ("error_code", ctypes.c_uint32), ("entry_vector", ctypes.c_uint32),
        ("rip", ctypes.c_uint64), ("cs", ctypes.c_uint16), ("_pad0", ctypes.c_uint16),
        ("saved_upcall_mask", ctypes.c_uint8), ("_pad1", ctypes.c_uint8 * 3),
        ("rflags", ctypes.c_uint64), ("rsp", ctypes.c_uint64),
        ("ss", ctypes.c_uint16), ("_pad2", ctypes.c_uint16 * 3),
        ("es", ctypes.c_uint16), ("_pad3", ctypes.c_uint16 * 3),
        ("ds", ctypes.c_uint16), ("_pad4", ctypes.c_uint16 * 3),
        ("fs", ctypes.c_uint16), ("_pad5", ctypes.c_uint16 * 3),
        ("gs", ctypes.c_uint16), ("_pad6", ctypes.c_uint16 * 3)]


@cache
def vcpu_guest_context(width: Width) -> type[ctypes.LittleEndianStructure]:
    """struct vcpu_guest_context for a guest of ``width`` (as the 64-bit Xen lays it out
    for that guest: vcpu_guest_context_x86_32_t / _x86_64_t)."""
    ab = layouts(width)
    ul = ab.ulong
    w32 = width == Width.X86_32
    fields = [("fpu_ctxt", ctypes.c_uint8 * 512), ("flags", ul),
              ("user_regs", _CpuUserRegs32 if w32 else _CpuUserRegs64),
              ("trap_ctxt", ab.TrapInfo * 256), ("ldt_base", ul), ("ldt_ents", ul),
              ("gdt_frames", ul * 16), ("gdt_ents", ul), ("kernel_ss", ul), ("kernel_sp", ul),
              ("ctrlreg", ul * 8), ("debugreg", ul * 8)]
    if w32:
        fields += [("event_callback_cs", ul), ("event_callback_eip", ul),
                   ("failsafe_callback_cs", ul), ("failsafe_callback_eip", ul),
                   ("vm_assist", ul)]
    else:
        fields += [("event_callback_eip", ul), ("failsafe_callback_eip", ul),
                   ("syscall_callback_eip", ul), ("vm_assist", ul),
                   ("fs_base", ctypes.c_uint64), ("gs_base_kernel", ctypes.c_uint64),
                   ("gs_base_user", ctypes.c_uint64)]

    class VcpuGuestContext(ctypes.LittleEndianStructure):
        """struct vcpu_guest_context."""
        _fields_ = fields

    VcpuGuestContext.__name__ = f"VcpuGuestContext{width * 8}"
    return VcpuGuestContext


def xen_pfn_to_cr3(width: Width, pfn: int) -> int:
    """The ctrlreg[3] encoding (a 32-bit guest's cr3 holds pfn bits above 20 at the bottom)."""
    if width == Width.X86_32:
        return ((pfn << 12) | (pfn >> 20)) & 0xFFFFFFFF
    return pfn << 12


def xen_cr3_to_pfn(width: Width, cr3: int) -> int:
    if width == Width.X86_32:
        return ((cr3 >> 12) | (cr3 << 20)) & 0xFFFFFFFF
    return cr3 >> 12


_GPRS32 = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax")
_GPRS64 = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
           "rax", "rcx", "rdx", "rsi", "rdi")
_SEGS = ("es", "ds", "fs", "gs")


# --- pause -----------------------------------------------------------------------------------
def pause(d: "Domain") -> None:
    """XEN_DOMCTL_pausedomain.  Call from the scheduler thread (Host.run's ``until``):
    then no vCPU of ``d`` is mid-slice and its memory and registers are quiescent."""
    d.paused = True
    for v in d.vcpus:
        v.cpu.stop()


def unpause(d: "Domain") -> None:
    """XEN_DOMCTL_unpausedomain."""
    d.paused = False
    for cb in list(d.on_unpause):
        cb()
    d.host.notify_event(d)


# --- vCPU context ----------------------------------------------------------------------------
def getvcpucontext(v: "Vcpu") -> bytes:
    """XEN_DOMCTL_getvcpucontext: the vCPU's state with machine frame numbers."""
    d = v.domain
    w = d.width
    load_pending(v)
    ctx = vcpu_guest_context(w)()
    cpu = v.cpu
    r = ctx.user_regs
    if w == Width.X86_32:
        for n in _GPRS32 + ("eip", "esp", "eflags"):
            setattr(r, n, cpu.reg(n))
        kernel = cpu.reg("cs") & 3 != 3
    else:
        for n in _GPRS64 + ("rip", "rsp", "rflags"):
            setattr(r, n, cpu.reg(n))
        kernel = v.kernel_mode
    for n in ("cs", "ss") + _SEGS:
        setattr(r, n, cpu.reg(n))
    frame = firmware.pending_iret(v)
    if frame is not None:          # not yet entered: the context is the firmware's frame
        ip, sp, fl = ("eip", "esp", "eflags") if w == Width.X86_32 else ("rip", "rsp", "rflags")
        for n, x in zip((ip, "cs", fl, sp, "ss"), frame):
            setattr(r, n, x)
        if w == Width.X86_32:
            kernel = r.cs & 3 != 3
    _set_flags(ctx, w, _flags_of(ctx, w) | (v.iopl << 12))      # IOPL is virtual
    r.saved_upcall_mask = v.vcpu_info.evtchn_upcall_mask
    ctx.flags = (VGCF_IN_KERNEL if kernel else 0) | (VGCF_online if v.online else 0)
    for i, t in enumerate(v.trap_table):
        ctx.trap_ctxt[i].vector = i
        ctx.trap_ctxt[i].flags = t.flags
        ctx.trap_ctxt[i].cs = t.cs
        ctx.trap_ctxt[i].address = t.address
    ctx.ldt_base, ctx.ldt_ents = v.ldt
    for i, mfn in enumerate(v.gdt_frames):
        ctx.gdt_frames[i] = mfn
    ctx.gdt_ents = v.gdt_ents
    ctx.kernel_ss, ctx.kernel_sp = v.kernel_ss, v.kernel_sp
    ctx.ctrlreg[0] = cpu.reg("cr0") | (8 if v.cr0_ts else 0)
    ctx.ctrlreg[2] = v.vcpu_info.arch.cr2
    ctx.ctrlreg[3] = xen_pfn_to_cr3(w, v.guest_table)
    ctx.ctrlreg[4] = cpu.reg("cr4")
    for i, x in enumerate(v.debugreg):
        ctx.debugreg[i] = x
    ctx.vm_assist = d.vm_assist
    if w == Width.X86_32:
        ctx.event_callback_cs, ctx.event_callback_eip = v.event_callback
        ctx.failsafe_callback_cs, ctx.failsafe_callback_eip = v.failsafe_callback
    else:
        ctx.ctrlreg[1] = xen_pfn_to_cr3(w, v.guest_table_user) if v.guest_table_user else 0
        ctx.event_callback_eip = v.event_callback[1]
        ctx.failsafe_callback_eip = v.failsafe_callback[1]
        ctx.syscall_callback_eip = v.syscall_callback
        if v.syscall_mask_events:
            ctx.flags |= VGCF_syscall_disables_events
        ctx.fs_base = cpu.read_msr(MSR_FS_BASE)
        gs, shadow = cpu.read_msr(MSR_GS_BASE), cpu.read_msr(MSR_SHADOW_GS_BASE)
        ctx.gs_base_kernel, ctx.gs_base_user = (gs, shadow) if kernel else (shadow, gs)
    return bytes(ctx)


def setvcpucontext(v: "Vcpu", data: bytes, defer_registers: bool = False) -> None:
    """XEN_DOMCTL_setvcpucontext on a fresh (never run) vCPU of a paused domain.

    ``data`` holds machine frames owned by the domain; the top-level table(s) and the
    GDT frames are validated and referenced as Xen's arch_set_info_guest does.
    ``defer_registers``: called from inside another vCPU's emulation (VCPUOP_initialise),
    where touching this vCPU's Unicorn instance is not safe (it loads descriptors through
    the running one's TCG state): the registers are loaded by ``load_pending`` before the
    vCPU first runs or is read.
    """
    from . import mm
    from .vcpu import TrapEntry
    d = v.domain
    w = d.width
    C = vcpu_guest_context(w)
    if len(data) != ctypes.sizeof(C):
        raise DomctlError(f"vcpu{v.vcpu_id} context: expected {ctypes.sizeof(C)} bytes, "
                          f"got {len(data)}")
    ctx = C.from_buffer_copy(data)
    _sanitise(ctx, w)
    top = PageType.l3 if w == Width.X86_32 else PageType.l4
    cr3 = xen_cr3_to_pfn(w, ctx.ctrlreg[3])
    user = xen_cr3_to_pfn(w, ctx.ctrlreg[1]) if w == Width.X86_64 else 0
    if w == Width.X86_64 and not user and not ctx.flags & VGCF_IN_KERNEL:
        raise DomctlError(f"vcpu{v.vcpu_id} context: user mode without a user page table "
                          "(ctrlreg[1] = 0)")
    gdt = [ctx.gdt_frames[i] for i in range((ctx.gdt_ents + 511) // 512)]
    if ctx.gdt_ents > 14 * 512:
        raise DomctlError(f"vcpu{v.vcpu_id} gdt_ents: expected at most {14 * 512}, "
                          f"got {ctx.gdt_ents}")
    taken: list[tuple[int, bool]] = []
    try:
        for mfn in [cr3] + ([user] if user else []):
            mm.get_page_and_type(d, mfn, top)
            taken.append((mfn, True))
        for mfn in gdt:
            mm.get_page_type(d, mfn, PageType.seg_desc)
            taken.append((mfn, False))
    except mm.PageError as e:
        for mfn, full in reversed(taken):
            (mm.put_page_and_type if full else mm.put_page_type)(d, mfn)
        raise DomctlError(f"vcpu{v.vcpu_id} context: {e}") from None
    v.guest_table, v.guest_table_user = cr3, user
    v.gdt_frames, v.gdt_ents = gdt, ctx.gdt_ents
    d.hv_layout.set_guest_gdt_frames(d.mem, v.vcpu_id, gdt)
    v.trap_table = [TrapEntry(t.flags, t.cs, t.address) for t in ctx.trap_ctxt]
    v.ldt = (ctx.ldt_base, ctx.ldt_ents)
    v.kernel_ss, v.kernel_sp = ctx.kernel_ss, ctx.kernel_sp
    v.cr0_ts = bool(ctx.ctrlreg[0] & 8)
    v.debugreg = list(ctx.debugreg)
    v.online = bool(ctx.flags & VGCF_online)
    v.initialised = True
    v.iopl = (_flags_of(ctx, w) >> 12) & 3        # IOPL is virtual (arch_set_info_guest)
    _set_flags(ctx, w, (_flags_of(ctx, w) & ~_EFLAGS_CLEAR) | _EFLAGS_IF)
    v.vcpu_info.arch.cr2 = ctx.ctrlreg[2]
    kernel = bool(ctx.flags & VGCF_IN_KERNEL)
    if w == Width.X86_32:
        v.event_callback = (ctx.event_callback_cs, ctx.event_callback_eip)
        v.failsafe_callback = (ctx.failsafe_callback_cs, ctx.failsafe_callback_eip)
    else:
        v.event_callback = (0, ctx.event_callback_eip)
        v.failsafe_callback = (0, ctx.failsafe_callback_eip)
        v.syscall_callback = ctx.syscall_callback_eip
        v.syscall_mask_events = bool(ctx.flags & VGCF_syscall_disables_events)
        v.kernel_mode = kernel
    if defer_registers:
        v.pending_registers = (ctx, kernel)
    else:
        _load_registers(v, ctx, kernel)
        _load_ldt(v)


def load_pending(v: "Vcpu") -> None:
    """Load registers a deferred setvcpucontext left (outside any emulation)."""
    pending, v.pending_registers = v.pending_registers, None
    if pending is not None:
        _load_registers(v, *pending)
        _load_ldt(v)


def _load_ldt(v: "Vcpu") -> None:
    """The context's LDT, typed and mapped as MMUEXT_SET_LDT does (needs its page tables)."""
    from . import mm
    base, ents = v.ldt
    if ents and mm.set_ldt(v, base, ents) < 0:
        raise DomctlError(f"vcpu{v.vcpu_id} context: LDT at {base:#x} ({ents} entries) "
                          "is not a valid descriptor table")


_EFLAGS_IF = 1 << 9
_EFLAGS_CLEAR = (3 << 12) | (1 << 14) | (1 << 17)       # IOPL, NT, VM


def _flags_of(ctx, w: Width) -> int:
    return ctx.user_regs.eflags if w == Width.X86_32 else ctx.user_regs.rflags


def _set_flags(ctx, w: Width, value: int) -> None:
    setattr(ctx.user_regs, "eflags" if w == Width.X86_32 else "rflags", value)


def _sanitise(ctx, w: Width) -> None:
    """Xen's fixup_guest_code_selector / fixup_guest_stack_selector: a selector with
    RPL 0 gets the guest kernel's RPL (1 on 32-bit, 3 on 64-bit), so a context from a
    guest (VCPUOP_initialise) or a save file never runs anything at ring 0."""
    rpl = 1 if w == Width.X86_32 else 3

    def fix(sel: int) -> int:                  # __fixup_guest_selector: RPL >= the kernel's
        return (sel & ~3) | rpl if sel & 3 < rpl else sel
    r = ctx.user_regs
    r.cs, r.ss = fix(r.cs), fix(r.ss)
    ctx.kernel_ss = fix(ctx.kernel_ss)
    for t in ctx.trap_ctxt:
        t.cs = fix(t.cs)
    if w == Width.X86_32:
        ctx.event_callback_cs = fix(ctx.event_callback_cs)
        ctx.failsafe_callback_cs = fix(ctx.failsafe_callback_cs)
    else:                                      # entry points must be canonical addresses
        entries = [t.address for t in ctx.trap_ctxt] + [
            ctx.event_callback_eip, ctx.failsafe_callback_eip, ctx.syscall_callback_eip,
            ctx.user_regs.rip, ctx.ldt_base, ctx.fs_base, ctx.gs_base_kernel,
            ctx.gs_base_user]
        for a in entries:
            if not (a < 1 << 47 or a >= (1 << 64) - (1 << 47)):
                raise DomctlError(f"context: expected canonical addresses, got {a:#x}")


def _load_registers(v: "Vcpu", ctx, kernel: bool) -> None:
    """Put the saved registers into the (fresh, CPL 0) Unicorn CPU."""
    from .host import CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, PV_CR4
    d = v.domain
    w = d.width
    cpu = v.cpu
    lay = d.hv_layout
    r = ctx.user_regs
    cpu.set_reg("cr4", PV_CR4)     # Xen's pv_fixup_guest_cr4: not the guest's to choose
    table = v.guest_table if (w == Width.X86_32 or kernel) else v.guest_table_user
    v.set_cr3(table << PAGE_SHIFT)
    if w == Width.X86_64:
        cpu.write_msr(MSR_EFER, _EFER_64)
    cpu.set_reg("cr0", CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
    cpu.set_gdtr(lay.gdt_va(v.vcpu_id), 0xFFFF)
    if w == Width.X86_32:
        from .layout import SEL_RING0_CS, SEL_RING0_DS, SEL_TSS
        cpu.set_tr(SEL_TSS, lay.tss_va(v.vcpu_id), 0x67)
        lay.set_ring1_stack(d.mem, v.vcpu_id, ctx.kernel_ss, ctx.kernel_sp)
        names, ip, sp, fl, word = _GPRS32, "eip", "esp", "eflags", "<5I"
        frame_maddr = (lay.tss[v.vcpu_id] << PAGE_SHIFT) + _IRET_FRAME_OFFSET
        frame_va = lay.tss_va(v.vcpu_id) + _IRET_FRAME_OFFSET
    else:
        from ..abi.xen import FIRST_RESERVED_GDT_PAGE
        from .layout64 import SEL_RING0_CS64 as SEL_RING0_CS, SEL_RING0_DS
        names, ip, sp, fl, word = _GPRS64, "rip", "rsp", "rflags", "<5Q"
        frame_maddr = (lay.gdt_reserved[v.vcpu_id] << PAGE_SHIFT) + _IRET_FRAME_OFFSET
        frame_va = lay.gdt_va(v.vcpu_id) + FIRST_RESERVED_GDT_PAGE * 4096 + _IRET_FRAME_OFFSET
    cpu.set_regs(cs=SEL_RING0_CS, ss=SEL_RING0_DS)
    for n in _SEGS:
        try:
            cpu.set_reg(n, getattr(r, n))
        except UnicornFailure:        # a selector the CPU refuses: null, as a failsafe load
            cpu.set_reg(n, 0)
    if w == Width.X86_64:
        cpu.write_msr(MSR_FS_BASE, ctx.fs_base)
        gs, shadow = ((ctx.gs_base_kernel, ctx.gs_base_user) if kernel
                      else (ctx.gs_base_user, ctx.gs_base_kernel))
        cpu.write_msr(MSR_GS_BASE, gs)
        cpu.write_msr(MSR_SHADOW_GS_BASE, shadow)
    for n in names:
        cpu.set_reg(n, getattr(r, n))
    d.mem.write(frame_maddr, struct.pack(word, getattr(r, ip), r.cs, getattr(r, fl),
                                         getattr(r, sp), r.ss))
    cpu.set_regs(**{sp: frame_va, ip: v.fw_iret})


# --- log-dirty -------------------------------------------------------------------------------
class LogDirty:
    """Log-dirty mode of one domain: a C write hook per vCPU over all of machine memory,
    plus the frames host-side writers reported with :func:`mark_dirty`.

    Bitmaps are indexed by machine frame; ``peek``/``clean`` translate to the domain's
    pseudo-physical frames through the M2P, which is what the save stream speaks.
    """

    def __init__(self, d: "Domain") -> None:
        from ..cpu.chooks import DirtyLog
        self.d = d
        n = d.mem.nr_frames
        self._logs = [DirtyLog(v.cpu.handle, 0, n) for v in d.vcpus]
        self._marked: set[int] = set()
        for v in d.vcpus:
            v.cpu.invalidate_code(0, d.mem.size)   # translated blocks must pick up the hook

    def mark(self, mfn: int) -> None:
        self._marked.add(mfn)

    def _pfns(self, mfns: set[int]) -> set[int]:
        d = self.d
        mem = d.mem
        out = set()
        for mfn in mfns:
            if mem.owner[mfn] == d.domid:
                pfn = mem.m2p(mfn)
                if pfn is not None and pfn < len(d.p2m) and d.p2m[pfn] == mfn:
                    out.add(pfn)
        return out

    def _always(self) -> set[int]:
        """Pages the host writes through views the observer cannot see: the console and
        store rings (xenconsoled, xenstored) go in every round."""
        return {m for m in (self.d.console_mfn, self.d.store_mfn) if m >= 0}

    def peek_mfns(self) -> set[int]:
        s = set(self._marked) | self._always()
        for log in self._logs:
            s.update(log.peek())
        return s

    def peek(self) -> set[int]:
        """XEN_DOMCTL_SHADOW_OP_PEEK: the dirty pfns, bitmap left as it is."""
        return self._pfns(self.peek_mfns())

    def clean(self) -> set[int]:
        """XEN_DOMCTL_SHADOW_OP_CLEAN: the dirty pfns, and start a new round."""
        s = self._marked | self._always()
        self._marked = set()
        for log in self._logs:
            s.update(log.clean())
        return self._pfns(s)

    def close(self) -> None:
        for log in self._logs:
            log.close()
        self._logs = []


def log_dirty_enable(d: "Domain") -> LogDirty:
    """XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY (idempotent): every page starts clean."""
    ld = getattr(d, "log_dirty", None)
    if ld is None:
        ld = LogDirty(d)
        d.log_dirty = ld
        _update_observer(d.host)
    return ld


def _update_observer(host) -> None:
    """Route host-side writes to the log of the owning domain while any log is on."""
    if not any(getattr(d, "log_dirty", None) is not None for d in host.domains.values()):
        host.mem.write_observer = None
        return
    owner = host.mem.owner
    domains = host.domains

    def observe(mfn: int) -> None:
        d = domains.get(owner[mfn])
        ld = getattr(d, "log_dirty", None) if d is not None else None
        if ld is not None:
            ld.mark(mfn)
    host.mem.write_observer = observe


def log_dirty_disable(d: "Domain") -> None:
    """XEN_DOMCTL_SHADOW_OP_OFF."""
    ld = getattr(d, "log_dirty", None)
    if ld is not None:
        ld.close()
        d.log_dirty = None
        _update_observer(d.host)


def mark_dirty(d: "Domain", mfn: int) -> None:
    """paging_mark_dirty: the hook point for host-side writes into ``d``'s frames."""
    ld = getattr(d, "log_dirty", None)
    if ld is not None:
        ld.mark(mfn)
