"""PV memory management: typed, counted frames and validated page-table updates (Xen's mm.c).

The safety argument, as in Xen.  Every frame has an owner, a *type* (none, L1..L4, a
descriptor table, writable memory), a *type count* (how many uses of that type exist)
and a general *reference count* (how many things keep the frame alive: the allocation
itself, every page-table entry that maps or links it, every pin, every CR3, every grant
mapping).  A frame gains a page-table type only when every entry in it is validated —
each L1 entry maps a frame the domain owns, and maps it writable only if that frame
can take (and then holds) the ``writable`` type; each higher-level entry links a frame
validated as the next level down.  A frame changes type only when its type count is
zero, so no frame is ever both a page table (or a GDT/LDT) and writable through some
mapping, and a guest changes its page tables only through these hypercalls or through
the emulated writes of ptwr.py.

``get_page``/``put_page`` and ``get_page_type``/``put_page_type`` are paired as in Xen.
Promotion validates the table (taking references for its entries); demotion drops them.
The hypervisor's slots are the guest's to read, never to write: the upper slots of the
PAE L2 under L3 slot 3 (Xen's PGT_pae_xen_l2, which may only ever be linked from L3 slot
3, which the guest cannot change) and L4 slots 256-271 of a 64-bit guest.

An L1 entry of a domU maps only frames the domain owns: a foreign frame (another
domain's, or the hypervisor's, like the M2P) is refused with -EBUSY as Xen's
get_page_from_l1e does; foreign frames enter page tables only through the grant-table
interface (``install_grant_pte``), which the grant's mapping handle accounts for.
"""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.xen import (DOMID_SELF, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
                       MMU_PT_UPDATE_PRESERVE_AD, MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE,
                       MMUEXT_FLUSH_CACHE, MMUEXT_FLUSH_CACHE_GLOBAL, MMUEXT_INVLPG_ALL,
                       MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_MULTI, MMUEXT_MARK_SUPER,
                       MMUEXT_NEW_BASEPTR, MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE,
                       MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE,
                       MMUEXT_SET_LDT, MMUEXT_TLB_FLUSH_ALL, MMUEXT_TLB_FLUSH_LOCAL,
                       MMUEXT_TLB_FLUSH_MULTI, MMUEXT_UNMARK_SUPER, MMUEXT_UNPIN_TABLE,
                       HYPERVISOR_VIRT_START_PAE, PAGE_SHIFT, PAGE_SIZE, UVMF_ALL,
                       UVMF_FLUSHTYPE_MASK,
                       VMASST_CMD_disable, VMASST_CMD_enable,
                       VMASST_TYPE_4gb_segments, VMASST_TYPE_4gb_segments_notify,
                       VMASST_TYPE_architectural_iopl, VMASST_TYPE_m2p_strict,
                       VMASST_TYPE_pae_extended_cr3, VMASST_TYPE_runstate_update_flag,
                       VMASST_TYPE_writable_pagetables, Width, _PAGE_ACCESSED, _PAGE_DIRTY,
                       _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_USER)
from .guest_access import MADDR_MASK, GuestFault
from .hypercall import hypercall
from .layout import FIRST_HV_L2_SLOT
from .machine import PageType

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.mm")

#: PTE bits a PV guest may not set in an L1 entry: the reserved bits 52-62.
L1_DISALLOW = 0x7FF0000000000000
#: ... nor in a higher-level entry: those, and PSE (PV guests have no superpages).
UPPER_DISALLOW = L1_DISALLOW | _PAGE_PSE
#: A PAE PDPTE has only P, PWT, PCD and the address.
PAE_L3_ALLOWED = MADDR_MASK | _PAGE_PRESENT | 0x18
PT_TYPES = (PageType.l1, PageType.l2, PageType.l3, PageType.l4)
#: Xen's L4 slots of a 64-bit guest (init_xen_l4_slots): 256-271.
_L4_GUEST_SLOTS = range(0, 256), range(272, 512)
LDT_MAX_ENTS = 8192


class PageError(Exception):
    """A page-table or frame operation Xen would refuse (carries the errno)."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


# --- general references --------------------------------------------------------------------
def get_page(d: "Domain", mfn: int) -> None:
    """get_page(): a reference that keeps ``mfn`` (owned by ``d``) allocated."""
    if not d.owns(mfn):
        raise PageError(Errno.EINVAL, f"mfn {mfn:#x} is not owned by d{d.domid}")
    d.mem.ref_count[mfn] += 1


def put_page(d: "Domain", mfn: int) -> None:
    """put_page(): the last reference of a frame whose allocation was dropped frees it."""
    mem = d.mem
    if mem.ref_count[mfn] == 0:
        raise AssertionError(f"put_page of mfn {mfn:#x} with no references")
    mem.ref_count[mfn] -= 1
    _maybe_free(d, mfn)


def _maybe_free(d: "Domain", mfn: int) -> None:
    """Free a frame nothing references or uses any more (its allocation was dropped).
    A frame still used as a type (a GDT holds only a type reference) stays allocated."""
    mem = d.mem
    if mem.ref_count[mfn] == 0 and mem.type_count[mfn] == 0:
        mem.free_frames_of([mfn])


# --- type references -----------------------------------------------------------------------
def get_page_type(d: "Domain", mfn: int, type_: int, foreign_ok: bool = False) -> None:
    """_get_page_type(): one more use of ``mfn`` as ``type_``; validate on first use.

    A page-table or descriptor type needs a frame ``d`` owns; ``foreign_ok`` lets the
    grant-table code take the writable type of a frame another domain granted."""
    mem = d.mem
    if not (d.owns(mfn) or (foreign_ok and type_ == PageType.writable
                            and mem.valid_mfn(mfn))):
        raise PageError(Errno.EINVAL, f"mfn {mfn:#x} is not owned by d{d.domid}")
    if mem.type_count[mfn] == 0:
        if type_ == PageType.seg_desc and not _validate_segdesc_page(d, mfn):
            raise PageError(Errno.EINVAL, f"mfn {mfn:#x} holds a descriptor a PV guest "
                                          "may not install")
        mem.type[mfn] = type_
        if type_ in PT_TYPES:
            # Typed (tentatively) while its entries are validated, as Xen's PGT_partial:
            # a table that links itself, directly or through a cycle, as another level
            # then meets a type conflict instead of being promoted twice.
            mem.type_count[mfn] = 1
            try:
                _validate(d, mfn, type_)
            except PageError:
                mem.type_count[mfn] = 0
                mem.type[mfn] = PageType.none
                raise
            return
    elif mem.type[mfn] != type_:
        raise PageError(Errno.EINVAL, f"mfn {mfn:#x} has type "
                        f"{PageType.NAMES[mem.type[mfn]]}, not {PageType.NAMES[type_]}")
    mem.type_count[mfn] += 1


def _validate_segdesc_page(d: "Domain", mfn: int) -> bool:
    """alloc_segdesc_page(): every descriptor of a GDT/LDT frame passes check_descriptor
    (which may raise the DPL to the guest kernel's ring and sets the accessed bit)."""
    from .descriptor import check_descriptor
    base = mfn << PAGE_SHIFT
    rpl = 1 if d.width == Width.X86_32 else 3
    raw = d.mem.read(base, PAGE_SIZE)
    fixed = []
    for i in range(0, PAGE_SIZE, 8):
        f = check_descriptor(raw[i:i + 8], rpl)
        if f is None:
            return False
        fixed.append(f)
    d.mem.write(base, b"".join(fixed))
    return True


def put_page_type(d: "Domain", mfn: int) -> None:
    """_put_page_type(): the last use of a page-table type devalidates the table."""
    mem = d.mem
    if mem.type_count[mfn] == 0:
        return
    if mem.type_count[mfn] == 1 and mem.type[mfn] in PT_TYPES:
        _devalidate(d, mfn, mem.type[mfn])
    mem.type_count[mfn] -= 1
    if mem.type_count[mfn] == 0:
        mem.type[mfn] = PageType.none
        _maybe_free(d, mfn)


def get_page_and_type(d: "Domain", mfn: int, type_: int) -> None:
    get_page(d, mfn)
    try:
        get_page_type(d, mfn, type_)
    except PageError:
        put_page(d, mfn)
        raise


def put_page_and_type(d: "Domain", mfn: int) -> None:
    put_page_type(d, mfn)
    put_page(d, mfn)


def share_xen_page_with_guest(d: "Domain", mfn: int) -> None:
    """A hypervisor-written page the guest maps (shared_info, grant frames): a permanent
    writable type, so it can never become a page table the hypervisor scribbles on."""
    mem = d.mem
    if mem.type_count[mfn] == 0:
        mem.type[mfn] = PageType.writable
        mem.type_count[mfn] = 1
    d.special_frames.add(mfn)


# --- validation ----------------------------------------------------------------------------
def guest_slots(d: "Domain", level: int, mfn: int):
    """The slots of an L``level`` table at ``mfn`` that belong to the guest."""
    if d.width == Width.X86_32:
        if level == PageType.l3:
            return (range(4),)
        if level == PageType.l2 and mfn in d.xen_l2s:
            return (range(FIRST_HV_L2_SLOT),)
        return (range(512),)
    if level == PageType.l4:
        return _L4_GUEST_SLOTS
    return (range(512),)


def _is_guest_slot(d: "Domain", level: int, mfn: int, index: int) -> bool:
    return any(index in r for r in guest_slots(d, level, mfn))


def _entries(d: "Domain", mfn: int) -> tuple[int, ...]:
    return struct.unpack_from("<512Q", d.mem.buf, mfn << PAGE_SHIFT)


def _validate(d: "Domain", mfn: int, level: int) -> None:
    """promote_lN_table: take a reference for every entry, undoing all on failure."""
    if d.width == Width.X86_64:
        _adjust_user_bits(d, mfn, level)
    entries = _entries(d, mfn)
    taken: list[int] = []
    try:
        for r in guest_slots(d, level, mfn):
            for i in r:
                e = entries[i]
                if e & _PAGE_PRESENT:
                    get_entry(d, level, e, slot=i)
                    taken.append(i)
    except PageError:
        for i in taken:
            put_entry(d, level, entries[i], slot=i)
        raise
    if d.width == Width.X86_64 and level == PageType.l4:
        d.hv_layout.install(d.mem, mfn)


def _adjust_user_bits(d: "Domain", mfn: int, level: int) -> None:
    """adjust_guest_lNe: a 64-bit PV kernel runs at CPL 3, so its mappings carry _PAGE_USER."""
    base = mfn << PAGE_SHIFT
    mem = d.mem
    for r in guest_slots(d, level, mfn):
        for i in r:
            e = mem.read_u64(base + 8 * i)
            if e & _PAGE_PRESENT and not e & _PAGE_USER:
                mem.write_u64(base + 8 * i, e | _PAGE_USER)


def _devalidate(d: "Domain", mfn: int, level: int) -> None:
    entries = _entries(d, mfn)
    for r in guest_slots(d, level, mfn):
        for i in r:
            if entries[i] & _PAGE_PRESENT:
                put_entry(d, level, entries[i], slot=i)
    d.xen_l2s.discard(mfn)


def get_entry(d: "Domain", level: int, e: int, slot: int = -1) -> None:
    """get_page_from_lNe: the references a present entry ``e`` of an L``level`` holds."""
    mem = d.mem
    target = (e & MADDR_MASK) >> PAGE_SHIFT
    if level == PageType.l1:
        if e & L1_DISALLOW:
            raise PageError(Errno.EINVAL, f"bad L1 flags {e & L1_DISALLOW:#x}")
        if not mem.valid_mfn(target):
            raise PageError(Errno.EPERM, f"d{d.domid}: non-privileged attempt to map "
                            f"MMIO space {target:#x}")
        if not d.owns(target):
            raise PageError(Errno.EBUSY, f"L1 entry {e:#x} maps mfn {target:#x} of "
                            f"d{mem.owner[target]:#x}, not d{d.domid}")
        if e & _PAGE_RW and d.gnttab is not None and target in d.gnttab.status:
            raise PageError(Errno.EBUSY, f"grant status frame {target:#x} is read-only")
        mem.ref_count[target] += 1
        if e & _PAGE_RW:
            try:
                get_page_type(d, target, PageType.writable)
            except PageError:
                mem.ref_count[target] -= 1
                raise PageError(Errno.EBUSY, f"mfn {target:#x} cannot be mapped writable: it "
                                f"is a {PageType.NAMES[mem.type[target]]}") from None
        return
    if d.width == Width.X86_32 and level == PageType.l3:
        if e & ~PAE_L3_ALLOWED:
            raise PageError(Errno.EINVAL, f"bad PAE L3 flags {e & ~PAE_L3_ALLOWED:#x}")
        xen_l2 = slot == 3
        if d.owns(target) and mem.type_count[target] and mem.type[target] == PageType.l2 \
                and (target in d.xen_l2s) != xen_l2:
            raise PageError(Errno.EINVAL, f"L2 {target:#x} is linked under L3 slot 3 and "
                            "elsewhere (PGT_pae_xen_l2)")
        if xen_l2 and d.owns(target) and mem.type_count[target] == 0:
            d.xen_l2s.add(target)
            d.hv_layout.install(mem, target)
        try:
            get_page_and_type(d, target, PageType.l2)
        except PageError:
            if xen_l2 and mem.type_count[target] == 0:
                d.xen_l2s.discard(target)
            raise
        return
    if e & UPPER_DISALLOW:
        raise PageError(Errno.EINVAL, f"bad L{level} flags {e & UPPER_DISALLOW:#x}")
    get_page_and_type(d, target, level - 1)


def put_entry(d: "Domain", level: int, e: int, slot: int = -1) -> None:
    """put_page_from_lNe: drop what ``get_entry`` took (the owner may be foreign for a
    grant PTE, whose references install_grant_pte took)."""
    target = (e & MADDR_MASK) >> PAGE_SHIFT
    mem = d.mem
    if level == PageType.l1:
        if e & _PAGE_RW:
            put_page_type(d, target)
        mem.ref_count[target] -= 1
        _maybe_free(d, target)
        return
    put_page_and_type(d, target)


def mod_entry(d: "Domain", table: int, index: int, new: int, preserve_ad: bool = False) -> None:
    """mod_lN_entry: validate ``new`` (take its references) before dropping the old one."""
    mem = d.mem
    level = mem.type[table]
    if mem.type_count[table] == 0 or level not in PT_TYPES:
        raise PageError(Errno.EINVAL, f"mfn {table:#x} is not a page table")
    if d.width == Width.X86_32 and level == PageType.l3 and index >= 3:
        raise PageError(Errno.EINVAL, "L3 slot 3 of a 32-bit guest is the hypervisor's")
    if not _is_guest_slot(d, level, table, index):
        raise PageError(Errno.EPERM if level == PageType.l2 else Errno.EINVAL,
                        f"illegal L{level} update attempt in Xen-private area (slot {index})")
    addr = (table << PAGE_SHIFT) + 8 * index
    old = mem.read_u64(addr)
    if preserve_ad:
        new = (new & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) | (old & (_PAGE_ACCESSED | _PAGE_DIRTY))
    if new & _PAGE_PRESENT:
        if d.width == Width.X86_64:
            new |= _PAGE_USER
        get_entry(d, level, new, slot=index)
    mem.write_u64(addr, new)
    if old & _PAGE_PRESENT:
        put_entry(d, level, old, slot=index)


def install_grant_pte(d: "Domain", slot_maddr: int, pte: int) -> None:
    """create_grant_pv_mapping: write a PTE mapping a granted (possibly foreign) frame into
    one of ``d``'s L1 tables.  The PTE takes the references an L1 entry holds."""
    mem = d.mem
    table = slot_maddr >> PAGE_SHIFT
    if not d.owns(table) or mem.type[table] != PageType.l1 or not mem.type_count[table]:
        raise PageError(Errno.EINVAL, f"{slot_maddr:#x} is not in an L1 table of d{d.domid}")
    target = (pte & MADDR_MASK) >> PAGE_SHIFT
    if d.width == Width.X86_64:
        pte |= _PAGE_USER
    mem.ref_count[target] += 1
    if pte & _PAGE_RW:
        try:
            get_page_type(d, target, PageType.writable, foreign_ok=True)
        except PageError:
            mem.ref_count[target] -= 1
            raise
    old = mem.read_u64(slot_maddr)
    mem.write_u64(slot_maddr, pte)
    if old & _PAGE_PRESENT:
        put_entry(d, PageType.l1, old)


def clear_grant_pte(d: "Domain", slot_maddr: int, mfn: int) -> bool:
    """replace_grant_pv_mapping: zap the PTE if it still maps ``mfn``; False if it does not."""
    mem = d.mem
    table = slot_maddr >> PAGE_SHIFT
    if not d.owns(table) or mem.type[table] != PageType.l1 or not mem.type_count[table]:
        return False
    old = mem.read_u64(slot_maddr)
    if not old & _PAGE_PRESENT or (old & MADDR_MASK) >> PAGE_SHIFT != mfn:
        return False
    mem.write_u64(slot_maddr, 0)
    put_entry(d, PageType.l1, old)
    return True


# --- address-space helpers -----------------------------------------------------------------
def flush_tlbs(d: "Domain", vcpus=None) -> None:
    for w in (d.vcpus if vcpus is None else vcpus):
        w.cpu.flush_tlb()


def guest_l1e_maddr(v: "Vcpu", va: int) -> int:
    """Machine address of the L1 entry mapping ``va`` in the vCPU's kernel address space."""
    d = v.domain
    mem = d.mem
    if d.width == Width.X86_32:
        va &= 0xFFFFFFFF
        l3 = (v.guest_table << PAGE_SHIFT) if v.guest_table else v.gmem.cr3 & 0xFFFFFFE0
        e = mem.read_u64(l3 + 8 * (va >> 30))
        idx = [(va >> 21) & 511]
    else:
        root = v.guest_table if v.guest_table else v.gmem.cr3 >> PAGE_SHIFT
        e = (root << PAGE_SHIFT) | _PAGE_PRESENT
        idx = [(va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511]
    for i in idx:
        if not e & _PAGE_PRESENT or (e & MADDR_MASK) >= mem.size:
            raise PageError(Errno.EINVAL, f"no L1 table maps {va:#x}")
        e = mem.read_u64((e & MADDR_MASK) + 8 * i)
    if not e & _PAGE_PRESENT or e & _PAGE_PSE or (e & MADDR_MASK) >= mem.size:
        raise PageError(Errno.EINVAL, f"no L1 table maps {va:#x}")
    return (e & MADDR_MASK) + 8 * ((va >> 12) & 511)


def guest_va_ok(d: "Domain", va: int) -> bool:
    """__addr_ok: below the hypervisor's part of the address space."""
    if d.width == Width.X86_32:
        return 0 <= va < HYPERVISOR_VIRT_START_PAE
    return va < 0x0000800000000000 or va >= 0xFFFF880000000000


def _read_vcpumask(v: "Vcpu", ptr: int) -> list["Vcpu"]:
    """A guest bitmap of vCPUs (one unsigned long, XEN_LEGACY_MAX_VCPUS fit)."""
    bits = v.gmem.read_ulong(ptr)
    return [w for w in v.domain.vcpus if bits >> w.vcpu_id & 1]


# --- mmu_update -----------------------------------------------------------------------------
@hypercall("mmu_update", 4)
def do_mmu_update(v: "Vcpu", ureqs: int, count: int, pdone: int, foreigndom: int) -> int:
    d = v.domain
    if foreigndom & 0xFFFF not in (DOMID_SELF, d.domid) or foreigndom >> 16 not in (0, d.domid + 1):
        return -Errno.EPERM          # foreign mappings need a privileged domain
    count &= 0x7FFFFFFF
    done = 0
    rc = 0
    for i in range(count):
        try:
            ptr, val = struct.unpack("<QQ", v.gmem.read(ureqs + 16 * i, 16))
        except GuestFault:
            rc = -Errno.EFAULT       # Xen still reports the progress made
            break
        try:
            mmu_update_one(d, ptr, val)
        except PageError as e:
            d.log_once(f"mmu_update {e}", "mmu_update: %s", e)
            rc = -e.errno
            break
        done += 1
    if done:
        flush_tlbs(d)
    if pdone:
        v.gmem.write_u32(pdone, done)
    return rc


def mmu_update_one(d: "Domain", ptr: int, val: int) -> None:
    """One ``struct mmu_update`` request; raises PageError with Xen's errno."""
    cmd = ptr & 3
    if cmd in (MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD):
        maddr = ptr & ~7
        mfn = maddr >> PAGE_SHIFT
        if not d.owns(mfn):
            raise PageError(Errno.EINVAL, f"mmu_update of mfn {mfn:#x} not owned by d{d.domid}")
        mem = d.mem
        if mem.type[mfn] in PT_TYPES and mem.type_count[mfn]:
            mod_entry(d, mfn, (maddr & (PAGE_SIZE - 1)) >> 3, val,
                      cmd == MMU_PT_UPDATE_PRESERVE_AD)
        else:
            get_page_type(d, mfn, PageType.writable)
            mem.write_u64(maddr, val)
            put_page_type(d, mfn)
    elif cmd == MMU_MACHPHYS_UPDATE:
        mfn = ptr >> PAGE_SHIFT
        if not d.owns(mfn):
            raise PageError(Errno.EINVAL, f"machphys update of mfn {mfn:#x} not owned")
        set_gpfn_from_mfn(d, mfn, val)
    else:
        raise PageError(Errno.ENOSYS, f"mmu_update cmd {cmd}")


def set_gpfn_from_mfn(d: "Domain", mfn: int, pfn: int) -> None:
    """The M2P entry, and xenpy's own p2m bookkeeping of the domain's RAM frames."""
    mem = d.mem
    old = _p2m_index(d, mfn)
    tracked = old is not None or mfn in d.unplaced
    mem.set_m2p(mfn, pfn & ((1 << (8 * d.width)) - 1))
    if not tracked:
        return          # not RAM the domain holds (shared pages, frames it gave back)
    if old is not None:
        d.p2m[old] = -1
    if 0 <= pfn < max(len(d.p2m), d.max_pages) + 1024:
        if pfn >= len(d.p2m):
            d.p2m.extend([-1] * (pfn + 1 - len(d.p2m)))
        prev = d.p2m[pfn]
        d.p2m[pfn] = mfn
        if prev >= 0 and prev != mfn:
            d.unplaced.add(prev)
        d.unplaced.discard(mfn)
    else:
        d.unplaced.add(mfn)


def _p2m_index(d: "Domain", mfn: int) -> int | None:
    pfn = d.mem.m2p(mfn)
    if pfn is not None and pfn < len(d.p2m) and d.p2m[pfn] == mfn:
        return pfn
    return None          # every p2m entry is mirrored in the M2P (set_m2p alongside)


# --- update_va_mapping ---------------------------------------------------------------------
def _uvm_flush(v: "Vcpu", flags: int) -> None:
    ftype = flags & UVMF_FLUSHTYPE_MASK
    if not ftype:
        return
    target = flags & ~UVMF_FLUSHTYPE_MASK
    if target == 0:                                  # UVMF_LOCAL
        flush_tlbs(v.domain, [v])
    elif target == UVMF_ALL:
        flush_tlbs(v.domain)
    else:                                            # UVMF_MULTI: a pointer to a vCPU mask
        flush_tlbs(v.domain, _read_vcpumask(v, target))


def update_va_mapping(v: "Vcpu", va: int, val: int, flags: int) -> int:
    """do_update_va_mapping: mod_l1_entry on the L1 that maps ``va`` now, then flush."""
    d = v.domain
    if not guest_va_ok(d, va):
        return -Errno.EINVAL
    try:
        slot = guest_l1e_maddr(v, va)
        table = slot >> PAGE_SHIFT
        if not d.owns(table) or d.mem.type[table] != PageType.l1:
            raise PageError(Errno.EINVAL, f"the table mapping {va:#x} is not an L1 of d{d.domid}")
        mod_entry(d, table, (slot & (PAGE_SIZE - 1)) >> 3, val)
    except PageError as e:
        d.log_once(f"uvm {e}", "update_va_mapping(%#x, %#x): %s", va, val, e)
        return -e.errno
    _uvm_flush(v, flags)
    return 0


@hypercall("update_va_mapping", 4, abis=(Width.X86_32,))
def do_update_va_mapping32(v: "Vcpu", va: int, lo: int, hi: int, flags: int) -> int:
    return update_va_mapping(v, va, (hi << 32) | lo, flags)


@hypercall("update_va_mapping", 3, abis=(Width.X86_64,))
def do_update_va_mapping64(v: "Vcpu", va: int, val: int, flags: int) -> int:
    return update_va_mapping(v, va, val, flags)


def _uvm_other(v: "Vcpu", va: int, val: int, flags: int, domid: int) -> int:
    if domid & 0xFFFF not in (DOMID_SELF, v.domain.domid):
        return -Errno.EPERM          # get_pg_owner: only a privileged domain names another
    return update_va_mapping(v, va, val, flags)


@hypercall("update_va_mapping_otherdomain", 5, abis=(Width.X86_32,))
def do_uvm_otherdomain32(v: "Vcpu", va: int, lo: int, hi: int, flags: int, domid: int) -> int:
    return _uvm_other(v, va, (hi << 32) | lo, flags, domid)


@hypercall("update_va_mapping_otherdomain", 4, abis=(Width.X86_64,))
def do_uvm_otherdomain64(v: "Vcpu", va: int, val: int, flags: int, domid: int) -> int:
    return _uvm_other(v, va, val, flags, domid)


# --- base pointers -------------------------------------------------------------------------
def new_guest_cr3(v: "Vcpu", mfn: int) -> int:
    d = v.domain
    level = PageType.l3 if d.width == Width.X86_32 else PageType.l4
    try:
        get_page_and_type(d, mfn, level)
    except PageError as e:
        d.log_once(f"cr3 {e}", "new baseptr %#x: %s", mfn, e)
        return -e.errno
    old = v.guest_table
    v.guest_table = mfn
    if d.width == Width.X86_32 or v.kernel_mode:
        v.set_cr3(mfn << PAGE_SHIFT)
    if old:
        put_page_and_type(d, old)
    return 0


def new_guest_user_cr3(v: "Vcpu", mfn: int) -> int:
    """MMUEXT_NEW_USER_BASEPTR: the 64-bit guest's user-mode page tables (0 = none)."""
    d = v.domain
    if d.width != Width.X86_64:
        return -Errno.EINVAL
    if mfn:
        try:
            get_page_and_type(d, mfn, PageType.l4)
        except PageError as e:
            d.log_once(f"ucr3 {e}", "new user baseptr %#x: %s", mfn, e)
            return -e.errno
    old = v.guest_table_user
    v.guest_table_user = mfn
    if not v.kernel_mode:
        v.set_cr3(mfn << PAGE_SHIFT)
    if old:
        put_page_and_type(d, old)
    return 0


# --- mmuext_op -----------------------------------------------------------------------------
@hypercall("mmuext_op", 4)
def do_mmuext_op(v: "Vcpu", uops: int, count: int, pdone: int, foreigndom: int) -> int:
    d = v.domain
    if foreigndom & 0xFFFF not in (DOMID_SELF, d.domid):
        return -Errno.EPERM
    w = d.width
    size = 12 if w == Width.X86_32 else 24
    fmt = "<III" if w == Width.X86_32 else "<IxxxxQQ"
    count &= 0x7FFFFFFF
    done = 0
    rc = 0
    for i in range(count):
        try:
            cmd, arg1, arg2 = struct.unpack(fmt, v.gmem.read(uops + size * i, size))
        except GuestFault:
            rc = -Errno.EFAULT
            break
        try:
            rc = mmuext_one(v, cmd, arg1, arg2)
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


def mmuext_one(v: "Vcpu", cmd: int, arg1: int, arg2: int) -> int:
    """One ``struct mmuext_op``: 0 or -errno (a PageError carries Xen's errno too)."""
    d = v.domain
    mem = d.mem
    if cmd in _PIN:
        level = _PIN[cmd]
        if d.width == Width.X86_32 and level == PageType.l4:
            return -Errno.EINVAL
        if not d.owns(arg1):
            return -Errno.EINVAL
        if mem.pinned[arg1]:
            return -Errno.EINVAL      # "mfn already pinned"
        get_page_and_type(d, arg1, level)
        mem.pinned[arg1] = 1
        return 0
    if cmd == MMUEXT_UNPIN_TABLE:
        if not d.owns(arg1) or not mem.pinned[arg1]:
            return -Errno.EINVAL
        mem.pinned[arg1] = 0
        put_page_and_type(d, arg1)
        return 0
    if cmd == MMUEXT_NEW_BASEPTR:
        return new_guest_cr3(v, arg1)
    if cmd == MMUEXT_NEW_USER_BASEPTR:
        return new_guest_user_cr3(v, arg1)
    if cmd in (MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_INVLPG_LOCAL):
        flush_tlbs(d, [v])
        return 0
    if cmd in (MMUEXT_TLB_FLUSH_MULTI, MMUEXT_INVLPG_MULTI):
        flush_tlbs(d, _read_vcpumask(v, arg2))
        return 0
    if cmd in (MMUEXT_TLB_FLUSH_ALL, MMUEXT_INVLPG_ALL):
        flush_tlbs(d)
        return 0
    if cmd == MMUEXT_FLUSH_CACHE:
        return -Errno.EACCES          # cache_flush_permitted: a domU has no I/O resources
    if cmd == MMUEXT_FLUSH_CACHE_GLOBAL:
        return -Errno.EINVAL
    if cmd == MMUEXT_SET_LDT:
        return set_ldt(v, arg1, arg2)
    if cmd == MMUEXT_CLEAR_PAGE:
        get_page_and_type(d, arg1, PageType.writable)
        mem.write(arg1 << PAGE_SHIFT, bytes(PAGE_SIZE))
        put_page_and_type(d, arg1)
        return 0
    if cmd == MMUEXT_COPY_PAGE:
        get_page(d, arg2)             # the source: a plain (read) reference
        try:
            get_page_and_type(d, arg1, PageType.writable)
        except PageError:
            put_page(d, arg2)
            raise
        mem.write(arg1 << PAGE_SHIFT, mem.read(arg2 << PAGE_SHIFT, PAGE_SIZE))
        put_page_and_type(d, arg1)
        put_page(d, arg2)
        return 0
    if cmd in (MMUEXT_MARK_SUPER, MMUEXT_UNMARK_SUPER):
        return -Errno.EOPNOTSUPP
    return -Errno.ENOSYS


def set_ldt(v: "Vcpu", base: int, ents: int) -> int:
    """MMUEXT_SET_LDT.  Xen maps the LDT lazily, taking the seg_desc type of each frame on
    first use; here the frames mapped at ``base`` take it at once (so an LDT frame is
    never writable) and are released by the next SET_LDT."""
    d = v.domain
    if ents > LDT_MAX_ENTS or base & (PAGE_SIZE - 1) or not guest_va_ok(d, base) or \
            not guest_va_ok(d, base + ents * 8):
        return -Errno.EINVAL
    frames: list[int] = []
    try:
        for off in range(0, ents * 8, PAGE_SIZE):
            slot = guest_l1e_maddr(v, base + off)
            pte = d.mem.read_u64(slot)
            if not pte & _PAGE_PRESENT:
                raise PageError(Errno.EINVAL, f"LDT page {base + off:#x} is not mapped")
            mfn = (pte & MADDR_MASK) >> PAGE_SHIFT
            get_page_and_type(d, mfn, PageType.seg_desc)
            frames.append(mfn)
    except PageError as e:
        for mfn in frames:
            put_page_and_type(d, mfn)
        d.log_once(f"ldt {e}", "set_ldt(%#x, %d): %s", base, ents, e)
        return -e.errno
    for mfn in getattr(v, "ldt_frames", ()):
        put_page_and_type(d, mfn)
    v.ldt_frames = frames
    v.ldt = (base, ents)
    load_ldt(v)
    return 0


def load_ldt(v: "Vcpu") -> None:
    """Map the LDT frames in the hypervisor's area and point the CPU's LDTR at them."""
    d = v.domain
    frames = getattr(v, "ldt_frames", [])
    sel, _raw = d.hv_layout.set_ldt(d.mem, v.vcpu_id, frames)
    base, ents = v.ldt
    limit = ents * 8 - 1 if frames else 0
    va = d.hv_layout.ldt_va(v.vcpu_id) if frames else 0
    v.cpu.set_ldtr(sel, va, limit)
    v.cpu.flush_tlb()


# --- vm_assist -----------------------------------------------------------------------------
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


def audit(host) -> list[str]:
    """Recount every reference from first principles (see audit.py)."""
    from .audit import audit as recount
    return recount(host)


def ptwr_do_page_fault(v: "Vcpu", addr: int, error_code: int, ip: int) -> bool:
    """Writable page tables: see ptwr.py (kept here as the traps' entry point)."""
    from .ptwr import ptwr_do_page_fault as emulate
    return emulate(v, addr, error_code, ip)


# --- domain build and destroy --------------------------------------------------------------
def pin_initial_tables(d: "Domain", top_mfn: int) -> None:
    """The builder's MMUEXT_PIN_L3/L4_TABLE of the initial page tables, plus CR3's reference."""
    level = PageType.l3 if d.width == Width.X86_32 else PageType.l4
    if d.shared_info_mfn >= 0:
        share_xen_page_with_guest(d, d.shared_info_mfn)
    get_page_and_type(d, top_mfn, level)      # the pin
    d.mem.pinned[top_mfn] = 1
    get_page_and_type(d, top_mfn, level)      # the reference held by CR3


def relinquish_resources(d: "Domain") -> None:
    """domain_relinquish_resources: drop every grant the domain maps, then free its
    frames — except frames another domain still maps through a grant, which stay
    allocated (owned by the dead domain) until that mapping goes."""
    from . import grant_table
    mem = d.mem
    keep = grant_table.release_domain(d)
    domid = d.domid
    owner = mem.owner
    frames = [m for m in range(mem.nr_frames) if owner[m] == domid]
    free = []
    for mfn in frames:
        refs = keep.get(mfn)
        if refs is None:
            free.append(mfn)
        else:
            nref, nrw = refs
            mem.ref_count[mfn] = nref
            mem.type[mfn] = PageType.writable if nrw else PageType.none
            mem.type_count[mfn] = nrw
            mem.pinned[mfn] = 0
    mem.free_frames_of(free)
    d.p2m = []
    d.unplaced.clear()
    d.special_frames.clear()
    d.grant_frames.clear()
    d.xen_l2s.clear()
