"""Isolation under attack: a hostile guest tries every way into another domain's memory.

Each attempt must be refused with Xen's error, and afterwards the victim's memory,
frame-table entries and M2P entries are byte-identical, the hypervisor's own pages
unchanged, and every reference count still adds up.
"""
from __future__ import annotations

import hashlib
import struct

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks

from xenpy.abi import grant_table as G
from xenpy.abi import memory as M
from xenpy.abi.errno import Errno
from xenpy.abi.xen import (DOMID_SELF, MMU_MACHPHYS_UPDATE, MMUEXT_COPY_PAGE,
                           MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L1_TABLE, VMASST_CMD_enable,
                           VMASST_TYPE_writable_pagetables)
from xenpy.hv import mm
from xenpy.hv.guest_access import PFEC_present, PFEC_write

from .world import PTE_RO, PTE_RW, fingerprint

E = Errno


def hv_pages(host) -> str:
    """The hypervisor's frames (M2P, firmware, its page tables), hashed."""
    h = hashlib.sha256()
    for mfn in range(host.mem.nr_frames):
        if host.mem.owner[mfn] == 0x7FF2 and mfn not in set(host.mem.m2p32) | set(host.mem.m2p64):
            h.update(host.mem.page(mfn))
    return h.hexdigest()


@pytest.fixture
def attack(pair):
    a, b = pair
    b.setup_grant_table(1)
    before = fingerprint(b.d)
    m2p_before = (hashlib.sha256(b"".join(bytes(a.mem.page(m)) for m in a.mem.m2p32)).digest(),
                  hashlib.sha256(b"".join(bytes(a.mem.page(m)) for m in a.mem.m2p64)).digest())
    hv = hv_pages(a.d.host)
    yield a, b
    assert fingerprint(b.d) == before, "the attacker changed the victim"
    assert (hashlib.sha256(b"".join(bytes(a.mem.page(m)) for m in a.mem.m2p32)).digest(),
            hashlib.sha256(b"".join(bytes(a.mem.page(m)) for m in a.mem.m2p64)).digest()) \
        == m2p_before, "the M2P changed"
    assert hv_pages(a.d.host) == hv, "a hypervisor page changed"
    assert mm.audit(a.d.host) == []


def test_map_a_foreign_frame(attack):
    a, b = attack
    va = a.window()
    for mfn in [b.d.p2m[0], b.top, b.d.shared_info_mfn, b.d.grant_frames[0], b.free_mfn()]:
        for prot in (PTE_RW, PTE_RO):
            assert a.uvm(va, (mfn << 12) | prot) == -E.EBUSY
            assert a.pt_update(va, (mfn << 12) | prot) == -E.EBUSY
        # ... nor by linking a table full of them
        table = a.free_mfn()
        a.mem.write_u64(table << 12, (mfn << 12) | PTE_RW)
        assert a.mmuext([(MMUEXT_PIN_L1_TABLE, table, 0)])[0] == -E.EBUSY
        a.mem.write_u64(table << 12, 0)
        assert a.mmuext([(MMUEXT_NEW_BASEPTR, mfn, 0)])[0] == -E.EINVAL
        assert a.mmuext([(MMUEXT_COPY_PAGE, a.free_mfn(), mfn)])[0] == -E.EINVAL
        assert a.mmu_update([((mfn << 12) | MMU_MACHPHYS_UPDATE, 1)])[0] == -E.EINVAL
        assert a.mmu_update([((mfn << 12), 0)])[0] == -E.EINVAL       # write it directly


def test_make_a_page_table_writable(attack):
    a, _ = attack
    for mfn in a.pt_mfns():
        assert a.uvm(a.window(), (mfn << 12) | PTE_RW) == -E.EBUSY
    # through the writable-page-table path: write a PTE mapping the L1 itself writable
    a.call("vm_assist", VMASST_CMD_enable, VMASST_TYPE_writable_pagetables)
    slot = a.l1e(a.window())
    l1 = slot >> 12
    pte_va = a.lay.va(a.mem.m2p(l1)) + (slot & 0xFFF)
    ks = Ks(KS_ARCH_X86, KS_MODE_32 if a.w == 4 else KS_MODE_64)
    code = bytes(ks.asm("mov dword ptr [edx], eax" if a.w == 4 else "mov qword ptr [rdx], rax")[0])
    a.write(a.window(1), code)
    cpu = a.v.cpu
    bad = (l1 << 12) | PTE_RW
    if a.w == 4:
        cpu.set_regs(edx=pte_va, eax=bad)
    else:
        cpu.set_regs(rdx=pte_va, rax=bad)
    assert not mm.ptwr_do_page_fault(a.v, pte_va, PFEC_present | PFEC_write, a.window(1))
    assert a.mem.read_u64(slot) != bad | 0


def test_write_the_m2p(attack):
    a, b = attack
    m2p = a.mem.m2p32 if a.w == 4 else a.mem.m2p64
    m2p_va = 0xF5800000 if a.w == 4 else 0xFFFF800000000000
    assert a.uvm(a.window(), (m2p[0] << 12) | PTE_RW) == -E.EBUSY
    assert a.uvm(a.window(), (m2p[0] << 12) | PTE_RO) == -E.EBUSY
    assert a.mmu_update([((m2p[0] << 12) + 8, 0)])[0] == -E.EINVAL
    with pytest.raises(Exception):
        a.write(m2p_va, b"\0" * 8)                                 # read-only to the guest
    # the victim's M2P entries through the only legal path: refused
    assert a.mmu_update([((b.d.p2m[3] << 12) | MMU_MACHPHYS_UPDATE, 7)])[0] == -E.EINVAL
    # hypercall output pointed at the M2P is -EFAULT
    assert a.call("memory_op", M.XENMEM_machphys_mapping, m2p_va) == -E.EFAULT


def test_change_the_hypervisor_slots(attack):
    a, b = attack
    own = a.free_mfn()
    top = a.top
    if a.w == 4:
        l2 = (a.mem.read_u64((top << 12) + 24) >> 12) & 0xFFFFFFFFFF
        targets = [((l2 << 12) + 8 * s, -E.EPERM) for s in (mm.FIRST_HV_L2_SLOT, 500, 511)]
        targets.append(((top << 12) + 24, -E.EINVAL))
        hv_vas = [0xF5800000, 0xFF000000, 0xFF200000, 0xFF400000]
    else:
        targets = [((top << 12) + 8 * s, -E.EINVAL) for s in (256, 257, 270, 271)]
        hv_vas = [0xFFFF800000000000, 0xFFFF808000000000, 0xFFFF808000010000]
    for slot, err in targets:
        for val in ((own << 12) | PTE_RW, 0, (b.top << 12) | PTE_RW):
            assert a.pt_update(slot, val, maddr=True) == err, hex(slot)
    for va in hv_vas:
        assert a.uvm(va, (own << 12) | PTE_RW) == -E.EINVAL
        assert a.uvm(va, 0) == -E.EINVAL
    # an L4/L3 built by the guest with its own idea of the hypervisor slots gets Xen's
    if a.w == 8:
        fake = a.free_mfn(1)
        a.mem.write(fake << 12, bytes(a.mem.page(top)))
        a.mem.write_u64((fake << 12) + 8 * 256, (own << 12) | PTE_RW)
        assert a.mmuext([(MMUEXT_PIN_L1_TABLE + 3, fake, 0)]) == (0, 1)
        assert a.mem.read_u64((fake << 12) + 8 * 256) == a.mem.read_u64((top << 12) + 8 * 256)
        assert a.mmuext([(4, fake, 0)]) == (0, 1)


def test_grant_map_without_a_grant(attack):
    a, b = attack
    va = a.window()
    for ref in (0, 1, 10, 511):
        st, _, _ = a.map_grant(va, G.GNTMAP_host_map, ref, b.domid)
        assert st == G.GNTST_general_error
        st, _, _ = a.map_grant(0, G.GNTMAP_device_map, ref, b.domid)
        assert st == G.GNTST_general_error
    assert a.map_grant(va, G.GNTMAP_host_map, 512, b.domid)[0] == G.GNTST_bad_gntref
    # a grant b made to someone else
    gt = b.d.gnttab
    struct.pack_into("<HHI", b.mem.buf, gt._entry(5), G.GTF_permit_access, 0x55, b.free_mfn())
    assert a.map_grant(va, G.GNTMAP_host_map, 5, b.domid)[0] == G.GNTST_general_error
    struct.pack_into("<HHI", b.mem.buf, gt._entry(5), 0, 0, 0)
    # copies and transfers without grants
    fmt = G.COPY[a.w]
    rc, back = a.gnttab(G.GNTTABOP_copy, fmt, [
        (b.free_mfn(), DOMID_SELF, 0, a.free_mfn(), DOMID_SELF, 0, 64, 0, 0),
        (b.free_mfn(), b.domid, 0, a.free_mfn(), DOMID_SELF, 0, 64, 0, 0),
        (a.free_mfn(), DOMID_SELF, 0, 3, b.domid, 0, 64, G.GNTCOPY_dest_gref, 0)])
    assert [r[-1] for r in back] == [G.GNTST_bad_page, G.GNTST_permission_denied,
                                     G.GNTST_general_error]
    rc, back = a.gnttab(G.GNTTABOP_transfer, G.TRANSFER[a.w], [(b.free_mfn(), a.domid, 0, 0)])
    assert back[0][-1] == G.GNTST_bad_page
    # unmap handles that were never handed out
    assert a.unmap_grant(va, 0) == G.GNTST_bad_handle
    assert a.unmap_grant(va, 0xFFFFFFFF) == G.GNTST_bad_handle


def test_balloon_someone_elses_memory(attack):
    a, b = attack
    a.put_ulongs(a.out, [b.free_mfn(), b.d.shared_info_mfn])
    for domid in (DOMID_SELF, b.domid):
        a.write(a.scratch, struct.pack(M.MEMORY_RESERVATION[a.w], a.out, 2, 0, 0, domid))
        assert a.call("memory_op", M.XENMEM_decrease_reservation, a.scratch) in (0, -E.EPERM)
