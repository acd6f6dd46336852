"""Frame types and counts, mmu_update, mmuext_op, update_va_mapping: success and Xen's errors.

Every test runs for a 32-bit PAE and a 64-bit guest, and ends by recounting every
reference from first principles (mm.audit) against the frame table.
"""
from __future__ import annotations


import pytest

from xenpy.abi.errno import Errno
from xenpy.abi.xen import (DOMID_SELF, MMU_MACHPHYS_UPDATE, MMU_PT_UPDATE_PRESERVE_AD,
                           MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_FLUSH_CACHE,
                           MMUEXT_FLUSH_CACHE_GLOBAL, MMUEXT_INVLPG_ALL, MMUEXT_INVLPG_LOCAL,
                           MMUEXT_INVLPG_MULTI, MMUEXT_MARK_SUPER, MMUEXT_NEW_BASEPTR,
                           MMUEXT_NEW_USER_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE,
                           MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE, MMUEXT_SET_LDT,
                           MMUEXT_TLB_FLUSH_ALL, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_MULTI,
                           MMUEXT_UNPIN_TABLE, PAGE_SIZE, UVMF_ALL, UVMF_INVLPG, UVMF_TLB_FLUSH,
                           VMASST_CMD_disable, VMASST_CMD_enable,
                           VMASST_TYPE_writable_pagetables, _PAGE_ACCESSED, _PAGE_DIRTY,
                           _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW)
from xenpy.hv import mm
from xenpy.hv.machine import PageType

from .world import PTE_RO, PTE_RW, counts

E = Errno


@pytest.fixture(autouse=True)
def _audited(pair):
    yield
    a, _ = pair
    assert mm.audit(a.d.host) == []


def test_boot_state_is_consistent(pair):
    a, b = pair
    top = a.top
    assert a.mem.pinned[top] and a.mem.type[top] == (PageType.l3 if a.w == 4 else PageType.l4)
    # allocation, pin, CR3 and its read-only mapping; types: pin and CR3
    assert a.mem.ref_count[top] == 4 and a.mem.type_count[top] == 2
    for mfn in a.pt_mfns():
        assert a.mem.type[mfn] in mm.PT_TYPES
    assert a.mem.type[a.d.shared_info_mfn] == PageType.writable


def test_map_own_frame_and_back_restores_counts(pair):
    a, _ = pair
    base = counts(a.d)
    va = a.window()
    old = a.mem.read_u64(a.l1e(va))
    mfn = a.free_mfn()
    assert a.uvm(va, (mfn << 12) | PTE_RW, UVMF_INVLPG) == 0
    assert a.v.gmem.translate(va) == mfn << 12
    assert a.mem.type[mfn] == PageType.writable and a.mem.ref_count[mfn] == 2
    a.write(va, b"through the new mapping")
    assert bytes(a.mem.page(mfn)[:7]) == b"through"
    assert a.uvm(va, old, UVMF_TLB_FLUSH | UVMF_ALL) == 0
    assert counts(a.d) == base


def test_foreign_and_hypervisor_frames_are_refused(pair):
    a, b = pair
    va = a.window()
    m2p = a.mem.m2p32[0] if a.w == 4 else a.mem.m2p64[0]
    for mfn, err in [(b.free_mfn(), E.EBUSY), (b.d.shared_info_mfn, E.EBUSY),
                     (m2p, E.EBUSY), (a.mem.nr_frames + 5, E.EPERM)]:
        for prot in (PTE_RW, PTE_RO):
            assert a.uvm(va, (mfn << 12) | prot) == -err, (hex(mfn), prot)
            assert a.pt_update(va, (mfn << 12) | prot) == -err


def test_reserved_pte_bits_and_superpages_are_refused(pair):
    a, _ = pair
    assert a.uvm(a.window(), (a.free_mfn() << 12) | PTE_RW | (1 << 52)) == -E.EINVAL
    # a PSE entry in an L2 (any L2 slot the guest owns)
    l1 = a.l1e(a.window()) >> 12
    l2_slot = _parent_slot(a, l1)
    assert a.pt_update(l2_slot, (a.free_mfn() << 12) | PTE_RW | _PAGE_PSE, maddr=True) == -E.EINVAL


def _parent_slot(g, l1_mfn: int) -> int:
    """Machine address of the L2 entry that links L1 ``l1_mfn`` (search the L2s)."""
    for mfn in g.pt_mfns():
        if g.mem.type[mfn] != PageType.l2:
            continue
        for i in range(512):
            e = g.mem.read_u64((mfn << 12) + 8 * i)
            if e & _PAGE_PRESENT and (e >> 12) & 0xFFFFFFFFFF == l1_mfn:
                return (mfn << 12) + 8 * i
    raise AssertionError("no L2 links it")


def test_page_tables_cannot_be_mapped_writable(pair):
    a, _ = pair
    base = counts(a.d)
    for mfn in a.pt_mfns():
        assert a.uvm(a.window(), (mfn << 12) | PTE_RW) == -E.EBUSY
    assert a.uvm(a.window(), (a.pt_mfns()[-1] << 12) | PTE_RO) == 0      # read-only is fine
    for cmd, a1, a2 in [(MMUEXT_CLEAR_PAGE, a.top, 0), (MMUEXT_COPY_PAGE, a.top, a.free_mfn())]:
        assert a.mmuext([(cmd, a1, a2)])[0] == -E.EINVAL
    old = a.d.p2m[(a.window() - a.lay.virt_base) >> 12]
    assert a.uvm(a.window(), (old << 12) | PTE_RW) == 0
    assert counts(a.d) == base


def test_writable_frame_cannot_become_a_page_table(pair):
    a, _ = pair
    mfn = a.free_mfn()
    assert a.uvm(a.window(), (mfn << 12) | PTE_RW) == 0
    assert a.mmuext([(MMUEXT_PIN_L1_TABLE, mfn, 0)])[0] == -E.EINVAL
    assert a.mem.type[mfn] == PageType.writable


def test_pin_and_unpin_every_level(pair):
    a, _ = pair
    base = counts(a.d)
    levels = [(MMUEXT_PIN_L1_TABLE, PageType.l1), (MMUEXT_PIN_L2_TABLE, PageType.l2),
              (MMUEXT_PIN_L3_TABLE, PageType.l3)]
    if a.w == 8:
        levels.append((MMUEXT_PIN_L4_TABLE, PageType.l4))
    for i, (cmd, t) in enumerate(levels):
        mfn = a.free_mfn(i)
        assert a.mmuext([(cmd, mfn, 0)]) == (0, 1)
        assert a.mem.type[mfn] == t and a.mem.pinned[mfn]
        assert a.mmuext([(cmd, mfn, 0)])[0] == -E.EINVAL                 # already pinned
        assert a.uvm(a.window(), (mfn << 12) | PTE_RW) == -E.EBUSY      # a table: no RW map
    for i, _ in enumerate(levels):
        assert a.mmuext([(MMUEXT_UNPIN_TABLE, a.free_mfn(i), 0)]) == (0, 1)
    assert a.mmuext([(MMUEXT_UNPIN_TABLE, a.free_mfn(0), 0)])[0] == -E.EINVAL   # not pinned
    if a.w == 4:
        assert a.mmuext([(MMUEXT_PIN_L4_TABLE, a.free_mfn(), 0)])[0] == -E.EINVAL
    assert counts(a.d) == base


def test_a_table_linking_a_foreign_frame_does_not_validate(pair):
    a, b = pair
    base = counts(a.d)
    page = a.free_mfn()
    a.mem.write_u64(page << 12, (b.free_mfn() << 12) | PTE_RO)
    assert a.mmuext([(MMUEXT_PIN_L1_TABLE, page, 0)])[0] == -E.EBUSY
    a.mem.write_u64(page << 12, (b.free_mfn() << 12) | _PAGE_PRESENT)
    assert a.mmuext([(MMUEXT_PIN_L2_TABLE, page, 0)])[0] == -E.EINVAL
    a.mem.write_u64(page << 12, 0)
    assert counts(a.d) == base


def test_mmuext_batch_stops_at_the_first_error(pair):
    a, _ = pair
    ok = (MMUEXT_TLB_FLUSH_LOCAL, 0, 0)
    assert a.mmuext([ok, ok, (MMUEXT_UNPIN_TABLE, a.free_mfn(), 0), ok]) == (-E.EINVAL, 2)
    assert a.mmuext([(99, 0, 0)])[0] == -E.ENOSYS
    assert a.mmuext([ok], dom=b_domid(a))[0] == -E.EPERM


def b_domid(a) -> int:
    return a.domid + 1


def test_reserved_slots_are_the_hypervisors(pair):
    a, _ = pair
    top = a.top
    own = a.free_mfn()
    if a.w == 4:
        # L3 slot 3 holds the L2 with Xen's mappings
        assert a.pt_update((top << 12) + 24, 0, maddr=True) == -E.EINVAL
        l2 = (a.mem.read_u64((top << 12) + 24) >> 12) & 0xFFFFFFFFFF
        before = bytes(a.mem.page(l2))
        for slot in (mm.FIRST_HV_L2_SLOT, 511):
            assert a.pt_update((l2 << 12) + 8 * slot, (own << 12) | PTE_RW,
                               maddr=True) == -E.EPERM
        assert bytes(a.mem.page(l2)) == before
        hv_vas = [0xF5800000, 0xFF000000]
    else:
        before = bytes(a.mem.page(top))
        for slot in (256, 257, 271):
            assert a.pt_update((top << 12) + 8 * slot, (own << 12) | PTE_RW,
                               maddr=True) == -E.EINVAL
        assert bytes(a.mem.page(top)) == before
        hv_vas = [0xFFFF800000000000, 0xFFFF808000000000]
    for va in hv_vas:
        assert a.uvm(va, (own << 12) | PTE_RW) == -E.EINVAL


def test_pae_xen_l2_cannot_be_linked_elsewhere(pair):
    a, _ = pair
    if a.w == 8:
        pytest.skip("PAE only")
    top = a.top
    xen_l2 = a.mem.read_u64((top << 12) + 24) & ~0xFFF & 0xFFFFFFFFFF000
    # slot 2 of the L3 is free (the guest maps 0xC0000000+ through slot 3)
    assert a.pt_update((top << 12) + 16, xen_l2 | _PAGE_PRESENT, maddr=True) == -E.EINVAL


def test_preserve_ad_keeps_accessed_and_dirty(pair):
    a, _ = pair
    va = a.window()
    slot = a.l1e(va)
    mfn = a.free_mfn()
    assert a.uvm(va, (mfn << 12) | PTE_RW | _PAGE_DIRTY) == 0
    ok = a.pt_update(slot, (mfn << 12) | _PAGE_PRESENT | _PAGE_RW, maddr=True,
                     cmd=MMU_PT_UPDATE_PRESERVE_AD)
    assert ok == 0
    assert a.mem.read_u64(slot) & (_PAGE_ACCESSED | _PAGE_DIRTY) == _PAGE_ACCESSED | _PAGE_DIRTY


def test_mmu_update_batches_report_progress(pair):
    a, b = pair
    s0, s1 = a.l1e(a.window(0)), a.l1e(a.window(1))
    reqs = [(s0, (a.free_mfn(0) << 12) | PTE_RW), (s1, (a.free_mfn(1) << 12) | PTE_RW),
            (s0, (b.free_mfn() << 12) | PTE_RW), (s1, 0)]
    assert a.mmu_update(reqs) == (-E.EBUSY, 2)
    assert a.v.gmem.translate(a.window(1)) == a.free_mfn(1) << 12     # the first two stuck
    assert a.mmu_update([(s0, 0)], dom=b.domid)[0] == -E.EPERM
    assert a.mmu_update([(s0 | 3, 0)])[0] == -E.ENOSYS


def test_mmu_update_writes_a_plain_frame(pair):
    a, _ = pair
    mfn = a.free_mfn()
    assert a.pt_update((mfn << 12) + 8, 0x1234, maddr=True) == 0
    assert a.mem.read_u64((mfn << 12) + 8) == 0x1234
    assert a.mem.type_count[mfn] == 0


def test_machphys_update(pair):
    a, b = pair
    mfn = a.free_mfn()
    pfn = a.free_pfn()
    assert a.mmu_update([((mfn << 12) | MMU_MACHPHYS_UPDATE, pfn + 1)]) == (0, 1)
    assert a.mem.m2p(mfn) == pfn + 1 and a.d.p2m[pfn + 1] == mfn and a.d.p2m[pfn] == -1
    assert a.d.nr_pages == a.d.max_pages           # moved, not duplicated
    # the other frame that was at pfn+1 is still counted
    assert a.mmu_update([((mfn << 12) | MMU_MACHPHYS_UPDATE, pfn)]) == (0, 1)
    assert a.mmu_update([((b.free_mfn() << 12) | MMU_MACHPHYS_UPDATE, 3)])[0] == -E.EINVAL
    assert b.mem.m2p(b.free_mfn()) == b.free_pfn()


def test_tlb_flushes_and_invlpg(pair):
    a, _ = pair
    mask = a.out
    a.put_ulongs(mask, [1])
    for op in [(MMUEXT_TLB_FLUSH_LOCAL, 0, 0), (MMUEXT_INVLPG_LOCAL, a.window(), 0),
               (MMUEXT_TLB_FLUSH_MULTI, 0, mask), (MMUEXT_INVLPG_MULTI, a.window(), mask),
               (MMUEXT_TLB_FLUSH_ALL, 0, 0), (MMUEXT_INVLPG_ALL, a.window(), 0)]:
        assert a.mmuext([op]) == (0, 1), op
    assert a.mmuext([(MMUEXT_TLB_FLUSH_MULTI, 0, 0x10)])[0] == -E.EFAULT


def test_cache_flush_and_superpages_need_privilege(pair):
    a, _ = pair
    assert a.mmuext([(MMUEXT_FLUSH_CACHE, 0, 0)])[0] == -E.EACCES
    assert a.mmuext([(MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0)])[0] == -E.EINVAL
    assert a.mmuext([(MMUEXT_MARK_SUPER, a.free_mfn(), 0)])[0] == -E.EOPNOTSUPP


def test_copy_and_clear_page(pair):
    a, b = pair
    src, dst = a.free_mfn(0), a.free_mfn(1)
    a.mem.write(src << 12, b"copy me" * 100)
    assert a.mmuext([(MMUEXT_COPY_PAGE, dst, src)]) == (0, 1)
    assert bytes(a.mem.page(dst)) == bytes(a.mem.page(src))
    assert a.mmuext([(MMUEXT_CLEAR_PAGE, dst, 0)]) == (0, 1)
    assert bytes(a.mem.page(dst)) == bytes(PAGE_SIZE)
    assert a.mmuext([(MMUEXT_COPY_PAGE, dst, b.free_mfn())])[0] == -E.EINVAL    # foreign source
    assert a.mmuext([(MMUEXT_CLEAR_PAGE, b.free_mfn(), 0)])[0] == -E.EINVAL    # foreign target


def test_new_baseptr_and_user_baseptr(pair):
    a, b = pair
    top = a.top
    base = counts(a.d)
    # a copy of the top-level table is a valid second address space
    new = a.free_mfn()
    a.mem.write(new << 12, bytes(a.mem.page(top)))
    assert a.mmuext([(MMUEXT_NEW_BASEPTR, new, 0)]) == (0, 1)
    assert a.v.guest_table == new and a.v.gmem.translate(a.scratch)
    assert a.mmuext([(MMUEXT_NEW_BASEPTR, top, 0)]) == (0, 1)
    assert a.mmuext([(MMUEXT_NEW_BASEPTR, b.top, 0)])[0] == -E.EINVAL
    assert a.uvm(a.window(), (new << 12) | PTE_RW) == 0          # no longer a table
    assert a.mmuext([(MMUEXT_NEW_BASEPTR, new, 0)])[0] == -E.EINVAL
    old = a.d.p2m[(a.window() - a.lay.virt_base) >> 12]
    assert a.uvm(a.window(), (old << 12) | PTE_RW) == 0
    if a.w == 4:
        assert a.mmuext([(MMUEXT_NEW_USER_BASEPTR, top, 0)])[0] == -E.EINVAL
    else:
        user = a.free_mfn(1)
        assert a.mmuext([(MMUEXT_NEW_USER_BASEPTR, user, 0)]) == (0, 1)
        assert a.mem.type[user] == PageType.l4 and a.v.guest_table_user == user
        assert a.mmuext([(MMUEXT_NEW_USER_BASEPTR, 0, 0)]) == (0, 1)
    assert counts(a.d) == base


def test_set_ldt(pair):
    a, _ = pair
    va = a.window()
    mfn = a.free_mfn()
    assert a.uvm(va, (mfn << 12) | PTE_RW) == 0
    assert a.mmuext([(MMUEXT_SET_LDT, va, 16)])[0] == -E.EINVAL            # mapped writable
    assert a.uvm(va, (mfn << 12) | PTE_RO) == 0
    assert a.mmuext([(MMUEXT_SET_LDT, va, 16)]) == (0, 1)
    assert a.mem.type[mfn] == PageType.seg_desc and a.v.ldt == (va, 16)
    assert a.uvm(va, (mfn << 12) | PTE_RW) == -E.EBUSY                 # an LDT is never writable
    assert a.mmuext([(MMUEXT_SET_LDT, va + 8, 1)])[0] == -E.EINVAL         # misaligned
    assert a.mmuext([(MMUEXT_SET_LDT, va, 8193)])[0] == -E.EINVAL          # too many entries
    assert a.mmuext([(MMUEXT_SET_LDT, 0, 0)]) == (0, 1)
    assert a.mem.type[mfn] == PageType.none


def test_gdt_frames_are_never_writable(pair):
    a, _ = pair
    va = a.window()
    mfn = a.free_mfn()
    assert a.uvm(va, (mfn << 12) | PTE_RO) == 0
    a.put_ulongs(a.out, [mfn])
    assert a.call("set_gdt", a.out, 16) == 0
    assert a.mem.type[mfn] == PageType.seg_desc
    assert a.uvm(va, (mfn << 12) | PTE_RW) == -E.EBUSY
    assert a.mmuext([(MMUEXT_CLEAR_PAGE, mfn, 0)])[0] == -E.EINVAL


def test_update_va_mapping_flags(pair):
    a, b = pair
    va = a.window()
    mfn = a.free_mfn()
    mask = a.out
    a.put_ulongs(mask, [1])
    for flags in (0, UVMF_INVLPG, UVMF_TLB_FLUSH, UVMF_INVLPG | UVMF_ALL, UVMF_TLB_FLUSH | mask):
        assert a.uvm(va, (mfn << 12) | PTE_RW, flags) == 0, flags
    assert a.uvm(va, (mfn << 12) | PTE_RW, UVMF_INVLPG | 0x10) == -E.EFAULT   # bad vcpumask
    far = a.lay.virt_base + (a.d.max_pages << 12) + (64 << 20)              # no L1 there
    assert a.uvm(far, (mfn << 12) | PTE_RW) == -E.EINVAL


def test_update_va_mapping_otherdomain(pair):
    a, b = pair
    va = a.window()
    pte = (a.free_mfn() << 12) | PTE_RW
    if a.w == 4:
        args = (va, pte & 0xFFFFFFFF, pte >> 32, UVMF_INVLPG)
    else:
        args = (va, pte, UVMF_INVLPG)
    assert a.call("update_va_mapping_otherdomain", *args, DOMID_SELF) == 0
    assert a.call("update_va_mapping_otherdomain", *args, b.domid) == -E.EPERM


def test_vm_assist(pair):
    a, _ = pair
    t = VMASST_TYPE_writable_pagetables
    assert a.call("vm_assist", VMASST_CMD_enable, t) == 0
    assert a.d.vm_assist >> t & 1
    assert a.call("vm_assist", VMASST_CMD_disable, t) == 0
    assert not a.d.vm_assist >> t & 1
    assert a.call("vm_assist", VMASST_CMD_enable, 17) == -E.EINVAL
    assert a.call("vm_assist", 7, t) == -E.ENOSYS


def test_audit_catches_a_corrupted_count(pair):
    """The audit itself can fail: a stray reference is reported."""
    a, _ = pair
    a.mem.ref_count[a.free_mfn()] += 1
    problems = mm.audit(a.d.host)
    a.mem.ref_count[a.free_mfn()] -= 1
    assert any(f"{a.free_mfn():#x}" in p for p in problems)
