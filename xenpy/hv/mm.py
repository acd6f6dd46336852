"""PV memory management: typed frames and validated page-table updates (Xen's mm.c).

The safety argument, as in Xen: every frame has a *type* and a *type count*.  A frame
gains a page-table type (L1..L4) only when every entry in it has been validated —
each L1 entry maps a frame the domain owns, and maps it writable only if that frame
can take (and then holds) the ``writable`` type; each higher-level entry points to a
frame validated as the next level down.  A frame's type changes only when its type
count is zero, so no frame is ever both a page table and writable through some
mapping, and a guest can only change its page tables through these hypercalls.

``get_page_type`` / ``put_page_type`` are paired as in Xen; promotion validates the
table (taking references for its entries), demotion drops them.  The hypervisor
slots of a PAE L3-slot-3 L2 (Xen's PGT_pae_xen_l2) are owned by the hypervisor.
"""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.xen import (MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD,
                       MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_FLUSH_CACHE,
                       MMUEXT_FLUSH_CACHE_GLOBAL, MMUEXT_INVLPG_ALL, MMUEXT_INVLPG_LOCAL,
                       MMUEXT_INVLPG_MULTI, MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE,
                       MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE,
                       MMUEXT_SET_LDT, MMUEXT_TLB_FLUSH_ALL, MMUEXT_TLB_FLUSH_LOCAL,
                       MMUEXT_TLB_FLUSH_MULTI, MMUEXT_UNPIN_TABLE, PAGE_SHIFT, PAGE_SIZE,
                       _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_USER,
                       DOMID_SELF, VMASST_CMD_disable, VMASST_CMD_enable,
                       VMASST_TYPE_4gb_segments, VMASST_TYPE_4gb_segments_notify,
                       VMASST_TYPE_architectural_iopl, VMASST_TYPE_m2p_strict,
                       VMASST_TYPE_pae_extended_cr3, VMASST_TYPE_runstate_update_flag,
                       VMASST_TYPE_writable_pagetables, Width)
from .guest_access import MADDR_MASK, GuestFault
from .hypercall import hypercall
from .layout import FIRST_HV_L2_SLOT
from .machine import PageType

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.mm")

#: PTE bits a PV guest may not set: the reserved bits 52-62 (and PSE below L1 level).
L1_DISALLOW = 0x7FF0000000000000
PT_TYPES = (PageType.l1, PageType.l2, PageType.l3, PageType.l4)


class PageError(Exception):
    """A page-table update Xen would refuse (carries the errno)."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


def _entries(d: "Domain", mfn: int) -> tuple[int, ...]:
    return struct.unpack_from("<512Q", d.mem.buf, mfn << PAGE_SHIFT)


def _is_xen_l2(d: "Domain", mfn: int) -> bool:
    return mfn in d.xen_l2s


def _guest_slots(d: "Domain", level: int, mfn: int) -> range:
    if d.width == Width.X86_32:
        if level == PageType.l3:
            return range(4)
        if level == PageType.l2 and _is_xen_l2(d, mfn):
            return range(FIRST_HV_L2_SLOT)
        return range(512)
    if level == PageType.l4:
        return _L4_GUEST_SLOTS
    return range(512)


_L4_GUEST_SLOTS = [i for i in range(512) if not 256 <= i <= 271]   # Xen's slots 256-271


# --- type references -----------------------------------------------------------------------
def get_page_type(d: "Domain", mfn: int, type_: int) -> None:
    mem = d.mem
    if not d.owns(mfn):
        raise PageError(Errno.EINVAL, f"mfn {mfn:#x} is not owned by d{d.domid}")
    if mem.type_count[mfn] == 0:
        if type_ in PT_TYPES:
            _validate(d, mfn, type_)
        mem.type[mfn] = type_
    elif mem.type[mfn] != type_:
        raise PageError(Errno.EINVAL, f"mfn {mfn:#x} has type "
                        f"{PageType.NAMES[mem.type[mfn]]}, not {PageType.NAMES[type_]}")
    mem.type_count[mfn] += 1


def put_page_type(d: "Domain", mfn: int) -> None:
    mem = d.mem
    if mem.type_count[mfn] == 0:
        return
    mem.type_count[mfn] -= 1
    if mem.type_count[mfn] == 0:
        t = mem.type[mfn]
        if t in PT_TYPES:
            _devalidate(d, mfn, t)
        mem.type[mfn] = PageType.none


def _validate(d: "Domain", mfn: int, level: int) -> None:
    """alloc_lN_table: take a reference for every entry, undoing all on failure."""
    taken: list[int] = []
    if d.width == Width.X86_64:
        _adjust_user_bits(d, mfn, level)
    entries = _entries(d, mfn)
    try:
        for i in _guest_slots(d, level, mfn):
            e = entries[i]
            if e & _PAGE_PRESENT:
                _get_entry(d, level, e, slot=i)
                taken.append(i)
    except PageError:
        for i in taken:
            _put_entry(d, level, entries[i])
        raise
    if d.width == Width.X86_64 and level == PageType.l4:
        d.hv_layout.install(d.mem, mfn)


def _adjust_user_bits(d: "Domain", mfn: int, level: int) -> None:
    """adjust_guest_lNe: a 64-bit PV kernel runs at CPL 3, so its mappings carry _PAGE_USER."""
    base = mfn << PAGE_SHIFT
    for i in _guest_slots(d, level, mfn):
        e = d.mem.read_u64(base + 8 * i)
        if e & _PAGE_PRESENT and not e & _PAGE_USER:
            d.mem.write_u64(base + 8 * i, e | _PAGE_USER)


def _devalidate(d: "Domain", mfn: int, level: int) -> None:
    entries = _entries(d, mfn)
    for i in _guest_slots(d, level, mfn):
        if entries[i] & _PAGE_PRESENT:
            _put_entry(d, level, entries[i])
    d.xen_l2s.discard(mfn)


def _get_entry(d: "Domain", level: int, e: int, slot: int = -1) -> None:
    target = (e & MADDR_MASK) >> PAGE_SHIFT
    if level == PageType.l1:
        if e & L1_DISALLOW:
            raise PageError(Errno.EINVAL, f"L1 entry {e:#x} sets reserved bits")
        if not d.owns(target):
            raise PageError(Errno.EINVAL, f"L1 entry maps mfn {target:#x} not owned by d{d.domid}")
        if e & _PAGE_RW:
            get_page_type(d, target, PageType.writable)
        return
    if e & _PAGE_PSE:
        raise PageError(Errno.EINVAL, "superpage mappings are not allowed for PV guests")
    if d.width == Width.X86_32 and level == PageType.l3:
        if e & ~(MADDR_MASK | _PAGE_PRESENT | 0x18):
            raise PageError(Errno.EINVAL, f"PAE L3 entry {e:#x} sets bits a PDPTE may not have")
        get_page_type(d, target, PageType.l2)
        if slot == 3:
            d.xen_l2s.add(target)
            d.hv_layout.install(d.mem, target)
        return
    get_page_type(d, target, level - 1)


def _put_entry(d: "Domain", level: int, e: int) -> None:
    target = (e & MADDR_MASK) >> PAGE_SHIFT
    if level == PageType.l1:
        if e & _PAGE_RW:
            put_page_type(d, target)
        return
    put_page_type(d, target)


def mod_entry(d: "Domain", table: int, index: int, new: int, preserve_ad: bool = False) -> None:
    """mod_lN_entry: validate ``new`` (take its reference) before dropping the old one."""
    mem = d.mem
    level = mem.type[table]
    if mem.type_count[table] == 0 or level not in PT_TYPES:
        raise PageError(Errno.EINVAL, "not a page table")
    if index not in _guest_slots(d, level, table):
        raise PageError(Errno.EPERM, f"slot {index} of an L{level} is reserved for the hypervisor")
    addr = (table << PAGE_SHIFT) + 8 * index
    old = mem.read_u64(addr)
    if preserve_ad:
        new = (new & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) | (old & (_PAGE_ACCESSED | _PAGE_DIRTY))
    if new & _PAGE_PRESENT:
        if d.width == Width.X86_64:
            new |= _PAGE_USER
        _get_entry(d, level, new, slot=index)
    mem.write_u64(addr, new)
    if old & _PAGE_PRESENT:
        _put_entry(d, level, old)


# --- hypercalls --------------------------------------------------------------------------------
def _flush(v: "Vcpu", all_vcpus: bool = True) -> None:
    for w in (v.domain.vcpus if all_vcpus else [v]):
        w.cpu.flush_tlb()


@hypercall("mmu_update", 4)
def do_mmu_update(v: "Vcpu", ureqs: int, count: int, pdone: int, foreigndom: int) -> int:
    d = v.domain
    if foreigndom & 0xFFFF not in (DOMID_SELF, d.domid):
        return -Errno.EPERM          # foreign mappings need a privileged domain
    count &= 0x7FFFFFFF
    done = 0
    rc = 0
    for i in range(count):
        ptr, val = struct.unpack("<QQ", v.gmem.read(ureqs + 16 * i, 16))
        cmd = ptr & 3
        try:
            if cmd in (MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD):
                maddr = ptr & ~7
                mfn = maddr >> PAGE_SHIFT
                if not d.owns(mfn):
                    raise PageError(Errno.EINVAL, f"mmu_update of mfn {mfn:#x} not owned")
                if d.mem.type[mfn] in PT_TYPES and d.mem.type_count[mfn]:
                    mod_entry(d, mfn, (maddr & (PAGE_SIZE - 1)) >> 3, val,
                              cmd == MMU_PT_UPDATE_PRESERVE_AD)
                else:
                    get_page_type(d, mfn, PageType.writable)
                    d.mem.write_u64(maddr, val)
                    put_page_type(d, mfn)
            elif cmd == MMU_MACHPHYS_UPDATE:
                mfn = ptr >> PAGE_SHIFT
                if not d.owns(mfn):
                    raise PageError(Errno.EINVAL, f"machphys update of mfn {mfn:#x} not owned")
                d.mem.set_m2p(mfn, val)
            else:
                raise PageError(Errno.ENOSYS, f"mmu_update cmd {cmd}")
        except PageError as e:
            d.log_once(f"mmu_update {e}", "mmu_update: %s", e)
            rc = -e.errno
            break
        done += 1
    _flush(v)
    if pdone:
        v.gmem.write_u32(pdone, done)
    return rc


def guest_l1e_maddr(v: "Vcpu", va: int) -> int:
    """Machine address of the L1 entry mapping ``va`` in the current address space."""
    d = v.domain
    mem = d.mem
    if d.width == Width.X86_32:
        va &= 0xFFFFFFFF
        l3 = v.gmem.cr3 & 0xFFFFFFE0
        e = mem.read_u64(l3 + 8 * (va >> 30))
        idx = [(va >> 21) & 511]
    else:
        e = v.gmem.cr3 | _PAGE_PRESENT
        idx = [(va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511]
    for i in idx:
        if not e & _PAGE_PRESENT:
            raise PageError(Errno.EINVAL, f"no L1 table maps {va:#x}")
        e = mem.read_u64((e & MADDR_MASK) + 8 * i)
    if not e & _PAGE_PRESENT:
        raise PageError(Errno.EINVAL, f"no L1 table maps {va:#x}")
    return (e & MADDR_MASK) + 8 * ((va >> 12) & 511)


def _update_va_mapping(v: "Vcpu", va: int, val: int, flags: int) -> int:
    d = v.domain
    try:
        slot = guest_l1e_maddr(v, va)
        mod_entry(d, slot >> PAGE_SHIFT, (slot & (PAGE_SIZE - 1)) >> 3, val)
    except PageError as e:
        d.log_once(f"uvm {e}", "update_va_mapping(%#x, %#x): %s", va, val, e)
        return -e.errno
    _flush(v)
    return 0


@hypercall("update_va_mapping", 4, abis=(Width.X86_32,))
def do_update_va_mapping32(v: "Vcpu", va: int, lo: int, hi: int, flags: int) -> int:
    return _update_va_mapping(v, va, (hi << 32) | lo, flags)


@hypercall("update_va_mapping", 3, abis=(Width.X86_64,))
def do_update_va_mapping64(v: "Vcpu", va: int, val: int, flags: int) -> int:
    return _update_va_mapping(v, va, val, flags)


def new_guest_cr3(v: "Vcpu", mfn: int) -> int:
    d = v.domain
    level = PageType.l3 if d.width == Width.X86_32 else PageType.l4
    try:
        get_page_type(d, mfn, level)
    except PageError as e:
        d.log_once(f"cr3 {e}", "new baseptr %#x: %s", mfn, e)
        return -e.errno
    old = v.guest_table
    v.guest_table = mfn
    if d.width == Width.X86_32 or v.kernel_mode:
        v.set_cr3(mfn << PAGE_SHIFT)
    if old:
        put_page_type(d, old)
    return 0


def new_guest_user_cr3(v: "Vcpu", mfn: int) -> int:
    """MMUEXT_NEW_USER_BASEPTR: the 64-bit guest's user-mode page tables (0 = none)."""
    d = v.domain
    if d.width != Width.X86_64:
        return -Errno.EINVAL
    if mfn:
        try:
            get_page_type(d, mfn, PageType.l4)
        except PageError as e:
            d.log_once(f"ucr3 {e}", "new user baseptr %#x: %s", mfn, e)
            return -e.errno
    old = v.guest_table_user
    v.guest_table_user = mfn
    if not v.kernel_mode:
        v.set_cr3(mfn << PAGE_SHIFT)
    if old:
        put_page_type(d, old)
    return 0


@hypercall("mmuext_op", 4)
def do_mmuext_op(v: "Vcpu", uops: int, count: int, pdone: int, foreigndom: int) -> int:
    d = v.domain
    w = d.width
    size = 12 if w == Width.X86_32 else 24
    fmt = "<III" if w == Width.X86_32 else "<IxxxxQQ"
    count &= 0x7FFFFFFF
    done = 0
    rc = 0
    for i in range(count):
        cmd, arg1, arg2 = struct.unpack(fmt, v.gmem.read(uops + size * i, size))
        try:
            rc = _mmuext_one(v, cmd, arg1, arg2)
        except PageError as e:
            d.log_once(f"mmuext {e}", "mmuext_op %d: %s", cmd, e)
            rc = -e.errno
        if rc:
            break
        done += 1
    if pdone:
        v.gmem.write_u32(pdone, done)
    return rc


_PIN = {MMUEXT_PIN_L1_TABLE: PageType.l1, MMUEXT_PIN_L2_TABLE: PageType.l2,
        MMUEXT_PIN_L3_TABLE: PageType.l3, MMUEXT_PIN_L4_TABLE: PageType.l4}


def _mmuext_one(v: "Vcpu", cmd: int, arg1: int, arg2: int) -> int:
    d = v.domain
    mem = d.mem
    if cmd in _PIN:
        level = _PIN[cmd]
        if d.width == Width.X86_32 and level == PageType.l4:
            return -Errno.EINVAL
        if d.owns(arg1) and mem.pinned[arg1]:
            return -Errno.EINVAL
        get_page_type(d, arg1, level)
        mem.pinned[arg1] = 1
        return 0
    if cmd == MMUEXT_UNPIN_TABLE:
        if not d.owns(arg1) or not mem.pinned[arg1]:
            return -Errno.EINVAL
        mem.pinned[arg1] = 0
        put_page_type(d, arg1)
        return 0
    if cmd == MMUEXT_NEW_BASEPTR:
        return new_guest_cr3(v, arg1)
    if cmd == MMUEXT_NEW_USER_BASEPTR:
        return new_guest_user_cr3(v, arg1)
    if cmd in (MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_INVLPG_LOCAL):
        _flush(v, all_vcpus=False)
        return 0
    if cmd in (MMUEXT_TLB_FLUSH_MULTI, MMUEXT_INVLPG_MULTI, MMUEXT_TLB_FLUSH_ALL,
               MMUEXT_INVLPG_ALL, MMUEXT_FLUSH_CACHE, MMUEXT_FLUSH_CACHE_GLOBAL):
        _flush(v)
        return 0
    if cmd == MMUEXT_SET_LDT:
        if arg2 > 8192 or (arg1 & (PAGE_SIZE - 1) and arg2):
            return -Errno.EINVAL
        v.ldt = (arg1, arg2)
        return 0
    if cmd == MMUEXT_CLEAR_PAGE:
        get_page_type(d, arg1, PageType.writable)
        mem.write(arg1 << PAGE_SHIFT, bytes(PAGE_SIZE))
        put_page_type(d, arg1)
        return 0
    if cmd == MMUEXT_COPY_PAGE:
        if not d.owns(arg2):
            return -Errno.EINVAL
        get_page_type(d, arg1, PageType.writable)
        mem.write(arg1 << PAGE_SHIFT, mem.read(arg2 << PAGE_SHIFT, PAGE_SIZE))
        put_page_type(d, arg1)
        return 0
    return -Errno.ENOSYS


_VMASST_PV = {VMASST_TYPE_4gb_segments, VMASST_TYPE_4gb_segments_notify,
              VMASST_TYPE_writable_pagetables, VMASST_TYPE_pae_extended_cr3,
              VMASST_TYPE_architectural_iopl, VMASST_TYPE_runstate_update_flag,
              VMASST_TYPE_m2p_strict}


@hypercall("vm_assist", 2)
def do_vm_assist(v: "Vcpu", cmd: int, type_: int) -> int:
    if type_ not in _VMASST_PV or (type_ == VMASST_TYPE_m2p_strict
                                   and v.domain.width == Width.X86_32):
        return -Errno.EINVAL
    if cmd == VMASST_CMD_enable:
        v.domain.vm_assist |= 1 << type_
    elif cmd == VMASST_CMD_disable:
        v.domain.vm_assist &= ~(1 << type_)
    else:
        return -Errno.ENOSYS
    return 0


def ptwr_do_page_fault(v: "Vcpu", addr: int, error_code: int, ip: int) -> bool:
    """Writable page tables (Xen's ptwr_do_page_fault): a kernel write fault on one of its
    own read-only-mapped L1 tables is decoded, validated and applied.  Returns True when
    the write was emulated; False bounces the fault to the guest.  Emulation arrives with
    the memory-management work; until then every such fault is the guest's."""
    return False


def pin_initial_tables(d: "Domain", top_mfn: int) -> None:
    """The builder's MMUEXT_PIN_L3/L4_TABLE of the initial page tables."""
    level = PageType.l3 if d.width == Width.X86_32 else PageType.l4
    get_page_type(d, top_mfn, level)      # the pin
    d.mem.pinned[top_mfn] = 1
    get_page_type(d, top_mfn, level)      # the reference held by CR3
