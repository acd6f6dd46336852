"""memory_op: ballooning out and in, exchange, reservations, maps and Xen's errors."""
from __future__ import annotations

import struct

import pytest

from xenpy.abi import memory as M
from xenpy.abi.errno import Errno
from xenpy.abi.xen import DOMID_SELF, PAGE_SIZE
from xenpy.hv import mm
from xenpy.hv.machine import DOMID_FREE, PageType

from .world import PTE_RW

E = Errno


@pytest.fixture(autouse=True)
def _audited(pair):
    yield
    assert mm.audit(pair[0].d.host) == []


def reservation(g, extents: list[int], order: int = 0, domid: int = DOMID_SELF,
                nr: int | None = None) -> int:
    """Write a xen_memory_reservation at scratch with its extent list at out."""
    g.put_ulongs(g.out, extents or [0])
    g.write(g.scratch, struct.pack(M.MEMORY_RESERVATION[g.w], g.out,
                                   len(extents) if nr is None else nr, order, 0, domid))
    return g.scratch


def test_balloon_out_and_back_in(pair):
    a, _ = pair
    host = a.d.host
    pfns = [a.free_pfn(i) for i in range(4)]
    mfns = [a.d.p2m[p] for p in pfns]
    free0 = host.mem.free_frames
    arg = reservation(a, mfns)
    assert a.call("memory_op", M.XENMEM_decrease_reservation, arg) == 4
    assert host.mem.free_frames == free0 + 4
    assert all(host.mem.owner[m] == DOMID_FREE for m in mfns)
    assert all(a.d.p2m[p] == -1 for p in pfns)
    a.write(a.scratch, struct.pack("<H", DOMID_SELF))
    assert a.call("memory_op", M.XENMEM_current_reservation, a.scratch) == a.d.max_pages - 4
    assert a.call("memory_op", M.XENMEM_maximum_reservation, a.scratch) == a.d.max_pages
    # populate the same pfns again: new frames, recorded in the M2P, written back
    arg = reservation(a, pfns)
    assert a.call("memory_op", M.XENMEM_populate_physmap, arg) == 4
    new = a.ulongs(a.out, 4)
    for pfn, mfn in zip(pfns, new):
        assert a.d.p2m[pfn] == mfn and a.mem.m2p(mfn) == pfn and a.d.owns(mfn)
    assert a.d.nr_pages == a.d.max_pages
    # ... and no more than max_pages
    arg = reservation(a, [a.free_pfn(10)])
    assert a.call("memory_op", M.XENMEM_populate_physmap, arg) == 0


def test_increase_reservation_returns_frames_to_place(pair):
    a, _ = pair
    arg = reservation(a, [a.free_mfn(0), a.free_mfn(1)])
    assert a.call("memory_op", M.XENMEM_decrease_reservation, arg) == 2
    arg = reservation(a, [0, 0, 0])
    assert a.call("memory_op", M.XENMEM_increase_reservation, arg) == 2     # max_pages
    got = a.ulongs(a.out, 2)
    assert all(a.d.owns(m) for m in got) and a.d.nr_pages == a.d.max_pages
    # the guest places them with MMU_MACHPHYS_UPDATE, then maps them
    for pfn, mfn in zip((a.free_pfn(0), a.free_pfn(1)), got):
        assert a.mmu_update([((mfn << 12) | 1, pfn)]) == (0, 1)
        assert a.d.p2m[pfn] == mfn
    assert a.uvm(a.window(), (got[0] << 12) | PTE_RW) == 0


def test_reservation_errors(pair):
    a, b = pair
    assert a.call("memory_op", M.XENMEM_decrease_reservation,
                  reservation(a, [a.free_mfn()], domid=b.domid)) == -E.EPERM
    assert a.call("memory_op", M.XENMEM_decrease_reservation,
                  reservation(a, [a.free_mfn()], domid=0x7000)) == -E.ESRCH
    assert a.call("memory_op", M.XENMEM_decrease_reservation,
                  reservation(a, [a.free_mfn()], order=9)) == 0               # PV: order 0 only
    # another domain's frame, and a hypervisor page shared with the guest, stop the batch
    for bad in (b.free_mfn(), a.d.shared_info_mfn):
        arg = reservation(a, [a.free_mfn(0), bad, a.free_mfn(1)])
        assert a.call("memory_op", M.XENMEM_decrease_reservation, arg) == 1
        assert b.d.owns(b.free_mfn())
        a.call("memory_op", M.XENMEM_populate_physmap, reservation(a, [a.free_pfn(0)]))
    assert a.call("memory_op", M.XENMEM_decrease_reservation,
                  reservation(a, [a.free_mfn()], nr=1) + 0x100000) == -E.EFAULT
    assert a.call("memory_op", 63, a.scratch) == -E.ENOSYS


def test_a_mapped_frame_given_back_lives_until_unmapped(pair):
    a, _ = pair
    host = a.d.host
    mfn = a.free_mfn()
    assert a.uvm(a.window(), (mfn << 12) | PTE_RW) == 0
    assert a.call("memory_op", M.XENMEM_decrease_reservation, reservation(a, [mfn])) == 1
    assert a.d.owns(mfn) and a.mem.ref_count[mfn] == 1           # only the mapping is left
    assert a.d.nr_pages == a.d.max_pages - 1
    free0 = host.mem.free_frames
    old = a.d.p2m[(a.window() - a.lay.virt_base) >> 12]
    assert a.uvm(a.window(), (old << 12) | PTE_RW) == 0
    assert host.mem.owner[mfn] == DOMID_FREE and host.mem.free_frames == free0 + 1
    # giving it back twice is refused
    assert a.call("memory_op", M.XENMEM_decrease_reservation, reservation(a, [mfn])) == 0


def test_a_pinned_page_table_given_back_is_unpinned(pair):
    a, _ = pair
    mfn = a.free_mfn()
    assert a.mmuext([(0, mfn, 0)]) == (0, 1)
    assert a.call("memory_op", M.XENMEM_decrease_reservation, reservation(a, [mfn])) == 1
    assert a.mem.owner[mfn] == DOMID_FREE


def test_exchange(pair):
    a, b = pair
    w = a.w
    fmt = M.MEMORY_RESERVATION[w]
    ins = [a.free_mfn(0), a.free_mfn(1)]
    outs = [a.free_pfn(0), a.free_pfn(1)]
    in_list, out_list = a.out, a.out + 64
    a.put_ulongs(in_list, ins)
    a.put_ulongs(out_list, outs)
    arg = a.scratch

    def exchange(nr_in: int = 2, nr_out: int = 2, out_dom: int = DOMID_SELF) -> int:
        a.write(arg, struct.pack(fmt, in_list, nr_in, 0, 0, DOMID_SELF)
                + struct.pack(fmt, out_list, nr_out, 0, 0, out_dom)
                + (0).to_bytes(w, "little"))
        return a.call("memory_op", M.XENMEM_exchange, arg)

    assert exchange(2, 1) == -E.EINVAL
    assert exchange(out_dom=b.domid) == -E.EPERM
    assert exchange() == 0
    got = a.ulongs(out_list, 2)
    assert a.ulongs(arg + M.EXCHANGE_DONE_OFFSET[w], 1) == [2]
    assert all(a.d.owns(m) for m in got) and got[0] != ins[0]
    assert [a.d.p2m[p] for p in outs] == got and a.d.nr_pages == a.d.max_pages
    assert all(a.mem.owner[m] == DOMID_FREE for m in ins if m not in got)
    # a frame in use cannot be exchanged: progress stops there
    a.put_ulongs(in_list, [got[0], a.pt_mfns()[0]])
    a.put_ulongs(out_list, outs)
    assert exchange() == -E.EINVAL
    assert a.ulongs(arg + M.EXCHANGE_DONE_OFFSET[w], 1) == [1]


def test_maps_and_limits(pair):
    a, _ = pair
    w = a.w
    assert a.call("memory_op", M.XENMEM_maximum_ram_page, 0) == a.mem.nr_frames - 1
    a.write(a.scratch, struct.pack("<H", DOMID_SELF))
    assert a.call("memory_op", M.XENMEM_maximum_gpfn, a.scratch) == len(a.d.p2m) - 1
    a.write(a.scratch, struct.pack(M.MEMORY_MAP[w], 4, a.out))
    assert a.call("memory_op", M.XENMEM_memory_map, a.scratch) == 0
    assert a.ulongs(a.scratch, 1)[0] & 0xFFFFFFFF == 1
    assert struct.unpack(M.E820_ENTRY, a.read(a.out, 20)) == (0, a.d.max_pages * PAGE_SIZE,
                                                               M.E820_RAM)
    a.write(a.scratch, struct.pack(M.MEMORY_MAP[w], 0, a.out))
    assert a.call("memory_op", M.XENMEM_memory_map, a.scratch) == -E.EINVAL
    assert a.call("memory_op", M.XENMEM_machphys_mapping, a.scratch) == 0
    start, end, max_mfn = a.ulongs(a.scratch, 3)
    assert start == (0xF5800000 if w == 4 else 0xFFFF800000000000) and end > start
    assert max_mfn == a.mem.nr_frames - 1
    # the M2P frames, as the guest can read them through the M2P mapping
    a.write(a.scratch, struct.pack("<II" if w == 4 else "<I4xQ", 8, a.out))
    assert a.call("memory_op", M.XENMEM_machphys_mfn_list, a.scratch) == 0
    first = a.ulongs(a.out, 1)[0]
    assert first == (a.mem.m2p32 if w == 4 else a.mem.m2p64)[0]


def test_add_to_physmap(pair):
    a, _ = pair
    fmt = M.ADD_TO_PHYSMAP[a.w]

    def add(space: int, idx: int, gpfn: int) -> int:
        a.write(a.scratch, struct.pack(fmt, DOMID_SELF, 0, space, idx, gpfn))
        return a.call("memory_op", M.XENMEM_add_to_physmap, a.scratch)

    assert add(M.XENMAPSPACE_shared_info, 0, 0x9000) == 0
    assert a.mem.m2p(a.d.shared_info_mfn) == 0x9000
    assert add(M.XENMAPSPACE_shared_info, 1, 0x9000) == -E.EINVAL
    assert add(M.XENMAPSPACE_grant_table, 1, 0x9001) == 0           # grows the table
    gt = a.d.gnttab
    assert len(gt.shared) == 2 and a.mem.m2p(gt.shared[1]) == 0x9001
    assert a.mem.type[gt.shared[1]] == PageType.writable            # never a page table
    assert add(M.XENMAPSPACE_grant_table, M.XENMAPIDX_grant_table_status, 0x9002) == -E.EINVAL
    assert add(M.XENMAPSPACE_grant_table, 64, 0x9003) == -E.EINVAL
    assert add(M.XENMAPSPACE_gmfn, a.free_pfn(), 0x9004) == -E.EACCES
    assert add(M.XENMAPSPACE_dev_mmio, 0, 0) == -E.ENOSYS
    # the shared pages are not RAM the guest can give back
    arg = reservation(a, [gt.shared[1]])
    assert a.call("memory_op", M.XENMEM_decrease_reservation, arg) == 0


def test_descriptor_table_frames_given_back_stay_until_released(pair):
    """A frame in use as a GDT or LDT is not freed by decrease_reservation (it would be
    handed to another domain while the CPU still reads descriptors from it)."""
    a, _ = pair
    gdt, ldt = a.free_mfn(0), a.free_mfn(1)
    assert a.uvm(a.window(0), (gdt << 12) | 0x21) == 0
    assert a.uvm(a.window(1), (ldt << 12) | 0x21) == 0
    a.put_ulongs(a.out, [gdt])
    assert a.call("set_gdt", a.out, 16) == 0
    assert a.mmuext([(13, a.window(1), 16)]) == (0, 1)               # MMUEXT_SET_LDT
    for va in (a.window(0), a.window(1)):                             # unmap both
        assert a.uvm(va, 0) == 0
    assert a.call("memory_op", M.XENMEM_decrease_reservation, reservation(a, [gdt, ldt])) == 2
    assert a.d.owns(gdt) and a.d.owns(ldt)
    assert a.mem.type[gdt] == a.mem.type[ldt] == PageType.seg_desc
    assert a.mmuext([(13, 0, 0)]) == (0, 1)
    assert a.mem.owner[ldt] == DOMID_FREE
    assert a.call("set_gdt", a.out, 0) == 0
    assert a.mem.owner[gdt] == DOMID_FREE
