"""grant_table_op: every operation's success path and Xen's GNTST_* for each misuse."""
from __future__ import annotations

import struct

import pytest

from mm.world import PTE_RW, counts
from xenpy.abi import grant_table as G
from xenpy.abi.errno import Errno
from xenpy.abi.xen import DOMID_SELF, PAGE_SIZE, _PAGE_RW
from xenpy.hv import grant_table as gnttab
from xenpy.hv import mm
from xenpy.hv.guest_access import GuestFault
from xenpy.hv.machine import DOMID_FREE, PageType

REF = 10
HOST = G.GNTMAP_host_map
RO = G.GNTMAP_readonly


@pytest.fixture(autouse=True)
def _audited(pair):
    yield
    assert mm.audit(pair[0].d.host) == []


def shared_page(a):
    """A's page to share: a free frame, filled with a recognisable pattern."""
    mfn = a.free_mfn()
    a.mem.write(mfn << 12, b"A's data".ljust(PAGE_SIZE, b"."))
    return mfn


def test_query_and_setup(pair):
    a, b = pair
    rc, [(_, nr, mx, st)] = a.gnttab(G.GNTTABOP_query_size, G.QUERY_SIZE,
                                     [(DOMID_SELF, 0, 0, 0)])
    assert (rc, nr, mx, st) == (0, 1, gnttab.MAX_GRANT_FRAMES, G.GNTST_okay)
    rc, back = a.gnttab(G.GNTTABOP_query_size, G.QUERY_SIZE,
                        [(b.domid, 0, 0, 0), (0x7000, 0, 0, 0)])
    assert [r[3] for r in back] == [G.GNTST_permission_denied, G.GNTST_bad_domain]
    assert a.setup_grant_table(3)[0] == a.d.grant_frames[0] and len(a.d.grant_frames) == 3
    fmt = G.SETUP_TABLE[a.w]
    rc, [(_, _, st, _)] = a.gnttab(G.GNTTABOP_setup_table, fmt, [(DOMID_SELF, 65, 0, a.out)])
    assert st == G.GNTST_general_error
    rc, [(_, _, st, _)] = a.gnttab(G.GNTTABOP_setup_table, fmt, [(b.domid, 1, 0, a.out)])
    assert st == G.GNTST_permission_denied
    assert a.call("grant_table_op", G.GNTTABOP_query_size, a.scratch, 513) == -Errno.EINVAL
    assert a.call("grant_table_op", 99, a.scratch, 1) == -Errno.ENOSYS
    # the guest maps its grant frame writable; it can never become a page table
    gf = a.d.grant_frames[0]
    assert a.uvm(a.window(), (gf << 12) | PTE_RW) == 0
    assert a.mmuext([(0, gf, 0)])[0] == -Errno.EINVAL


def test_map_write_see_unmap(pair):
    a, b = pair
    base_a, base_b = counts(a.d), counts(b.d)
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    va = b.window()
    st, handle, _ = b.map_grant(va, HOST, REF, a.domid)
    assert st == G.GNTST_okay
    assert b.v.gmem.translate(va) == mfn << 12                     # A's frame, no copy
    assert b.read(va, 8) == b"A's data"
    b.write(va, b"B wrote this")
    assert bytes(a.mem.page(mfn)[:12]) == b"B wrote this"
    assert a.d.gnttab.flags_of(REF) == G.GTF_permit_access | G.GTF_reading | G.GTF_writing
    assert a.mem.type[mfn] == PageType.writable
    assert not a.end_grant(REF)                                     # cannot revoke: mapped
    assert a.mmuext([(0, mfn, 0)])[0] == -Errno.EINVAL             # nor make it a page table
    assert a.mmu_update([])[0] == 0
    assert mm.audit(a.d.host) == []
    assert b.unmap_grant(va, handle) == G.GNTST_okay
    with pytest.raises(GuestFault):
        b.read(va, 1)                                               # B's access now faults
    assert a.d.gnttab.flags_of(REF) == G.GTF_permit_access
    assert b.unmap_grant(va, handle) == G.GNTST_bad_handle          # double unmap
    assert a.end_grant(REF)
    # B's window PTE went with the unmap; put its own frame back and compare
    old = b.d.p2m[(va - b.lay.virt_base) >> 12]
    assert b.uvm(va, (old << 12) | PTE_RW) == 0
    assert counts(b.d) == base_b
    a.mem.write(mfn << 12, bytes(PAGE_SIZE))
    assert counts(a.d) == base_a


def test_readonly_mapping(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn, G.GTF_permit_access | G.GTF_readonly)
    st, handle, _ = b.map_grant(b.window(), HOST, REF, a.domid)
    assert st == G.GNTST_general_error                              # r/o grant, r/w map
    st, handle, _ = b.map_grant(b.window(), HOST | RO, REF, a.domid)
    assert st == G.GNTST_okay
    assert not b.mem.read_u64(b.l1e(b.window())) & _PAGE_RW
    assert b.read(b.window(), 8) == b"A's data"
    with pytest.raises(GuestFault):
        b.write(b.window(), b"x")
    assert a.d.gnttab.flags_of(REF) & (G.GTF_reading | G.GTF_writing) == G.GTF_reading
    assert a.mem.type_count[mfn] == 0                               # no writable use
    assert b.unmap_grant(b.window(), handle) == G.GNTST_okay


def test_map_errors(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    base = counts(a.d)
    va = b.window()
    assert b.map_grant(va, 0, REF, a.domid)[0] == G.GNTST_bad_gntref             # no flags
    assert b.map_grant(va, HOST, REF, 0x7000)[0] == G.GNTST_bad_domain
    assert b.map_grant(va, HOST, 512, a.domid)[0] == G.GNTST_bad_gntref          # beyond
    assert b.map_grant(va, HOST, REF + 1, a.domid)[0] == G.GNTST_general_error   # not granted
    far = b.lay.virt_base + (b.d.max_pages << 12) + (64 << 20)
    assert b.map_grant(far, HOST, REF, a.domid)[0] == G.GNTST_general_error      # no L1 there
    assert b.map_grant(va + 8, HOST, REF, a.domid)[0] == G.GNTST_general_error   # misaligned
    a.grant(REF + 1, a.domid + 5, mfn)                                            # someone else
    assert b.map_grant(va, HOST, REF + 1, a.domid)[0] == G.GNTST_general_error
    a.grant(REF + 2, b.domid, b.free_mfn())                                       # not A's frame
    assert b.map_grant(va, HOST, REF + 2, a.domid)[0] == G.GNTST_bad_page
    a.grant(REF + 3, b.domid, a.pt_mfns()[0])                                     # a page table
    assert b.map_grant(va, HOST, REF + 3, a.domid)[0] == G.GNTST_general_error
    st, h, _ = b.map_grant(va, HOST | RO, REF + 3, a.domid)                      # ... r/o is fine
    assert st == G.GNTST_okay and b.unmap_grant(va, h) == G.GNTST_okay
    a.end_grant(REF)                                                               # revoked
    assert b.map_grant(va, HOST, REF, a.domid)[0] == G.GNTST_general_error
    assert counts(a.d) == base
    assert all(not a.d.gnttab.flags_of(r) & (G.GTF_reading | G.GTF_writing) for r in range(16))


def test_device_map_and_pte_maps(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    st, h, dev = b.map_grant(0, G.GNTMAP_device_map, REF, a.domid)
    assert st == G.GNTST_okay and dev == mfn << 12
    assert b.unmap_grant(0, h, dev=dev + PAGE_SIZE) == G.GNTST_bad_dev_addr
    assert b.unmap_grant(0, h, dev=dev) == G.GNTST_okay
    assert b.unmap_grant(0, h, dev=dev) == G.GNTST_bad_handle
    # GNTMAP_contains_pte: host_addr is the machine address of the PTE to write
    slot = b.l1e(b.window())
    st, h, _ = b.map_grant(slot, HOST | G.GNTMAP_contains_pte, REF, a.domid)
    assert st == G.GNTST_okay and b.v.gmem.translate(b.window()) == mfn << 12
    assert b.map_grant(a.l1e(a.window()), HOST | G.GNTMAP_contains_pte, REF,
                       a.domid)[0] == G.GNTST_general_error           # not B's table
    assert b.unmap_grant(slot, h) == G.GNTST_okay


def test_unmap_with_the_wrong_address_keeps_the_handle(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    st, h, _ = b.map_grant(b.window(0), HOST, REF, a.domid)
    assert b.unmap_grant(b.window(1), h) == G.GNTST_general_error
    assert b.unmap_grant(0, h) == G.GNTST_okay                     # host part not done...
    assert a.d.gnttab.flags_of(REF) & G.GTF_writing                 # ... so still mapped
    assert b.unmap_grant(b.window(0), h) == G.GNTST_okay
    assert not a.d.gnttab.flags_of(REF) & G.GTF_reading


def test_implicit_unmap_drops_the_pte_references(pair):
    """A guest overwriting its grant PTE drops that PTE's references (Xen warns); the
    handle holds its own until the grant is unmapped."""
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    st, h, _ = b.map_grant(b.window(), HOST, REF, a.domid)
    assert b.uvm(b.window(), 0) == 0
    assert mm.audit(a.d.host) == []
    assert a.mem.type_count[mfn] == 1                               # the handle's writable use
    assert b.unmap_grant(b.window(), h) == G.GNTST_general_error   # Xen: PTE does not match
    # a foreign PTE cannot be re-created by hand
    assert b.uvm(b.window(), (mfn << 12) | PTE_RW) == -Errno.EBUSY


def test_unmap_and_replace(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    w0, w1 = b.window(0), b.window(1)
    st, h, _ = b.map_grant(w0, HOST, REF, a.domid)
    other = b.v.gmem.translate(w1)
    rc, [(_, _, _, st)] = b.gnttab(G.GNTTABOP_unmap_and_replace, G.UNMAP_AND_REPLACE,
                                   [(w0, w1, h, 0)])
    assert (rc, st) == (0, G.GNTST_okay)
    assert b.v.gmem.translate(w0) == other
    with pytest.raises(GuestFault):
        b.v.gmem.translate(w1)
    rc, [(_, _, _, st)] = b.gnttab(G.GNTTABOP_unmap_and_replace, G.UNMAP_AND_REPLACE,
                                   [(w0, w1, h, 0)])
    assert st == G.GNTST_bad_handle
    assert a.end_grant(REF)


def test_copy(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    a.grant(REF + 1, b.domid, mfn, G.GTF_permit_access | G.GTF_readonly)
    mine = b.free_mfn()
    b.mem.write(mine << 12, b"from B".ljust(64, b"-"))
    fmt = G.COPY[b.w]
    SG, DG = G.GNTCOPY_source_gref, G.GNTCOPY_dest_gref

    def copy(*ops) -> list[int]:
        rc, back = b.gnttab(G.GNTTABOP_copy, fmt, [op + (0,) for op in ops])
        assert rc == 0
        return [r[-1] for r in back]

    assert copy((mine, DOMID_SELF, 0, REF, a.domid, 100, 6, DG),          # B -> A's grant
                (REF + 1, a.domid, 0, mine, DOMID_SELF, 200, 8, SG)) == [0, 0]   # A -> B
    assert bytes(a.mem.page(mfn)[100:106]) == b"from B"
    assert bytes(b.mem.page(mine)[200:208]) == b"A's data"
    assert copy((mine, DOMID_SELF, 0, REF + 1, a.domid, 0, 4, DG),        # r/o grant as dest
                (mine, DOMID_SELF, 4000, REF, a.domid, 0, 200, DG),        # beyond the page
                (mine, a.domid, 0, REF, a.domid, 0, 4, DG),                # frame of another
                (a.free_mfn(1), DOMID_SELF, 0, REF, a.domid, 0, 4, DG),    # not B's frame
                (REF, 0x7000, 0, mine, DOMID_SELF, 0, 4, SG),              # no such domain
                (REF + 7, a.domid, 0, mine, DOMID_SELF, 0, 4, SG),         # not granted
                (mine, DOMID_SELF, 0, b.pt_mfns()[0], DOMID_SELF, 0, 4, 0)) == [
        G.GNTST_general_error, G.GNTST_bad_copy_arg, G.GNTST_permission_denied,
        G.GNTST_bad_page, G.GNTST_bad_domain, G.GNTST_general_error, G.GNTST_general_error]
    assert not a.d.gnttab.active                                    # copies pin only briefly


def test_transfer(pair):
    a, b = pair
    # A makes room for one page and offers pfn P through an accept-transfer entry
    pfn = a.free_pfn(3)
    gone = a.d.p2m[pfn]
    a.put_ulongs(a.out, [gone])
    from xenpy.abi import memory as M
    a.write(a.scratch, struct.pack(M.MEMORY_RESERVATION[a.w], a.out, 1, 0, 0, DOMID_SELF))
    assert a.call("memory_op", M.XENMEM_decrease_reservation, a.scratch) == 1
    a.grant(REF, b.domid, pfn, G.GTF_accept_transfer)
    page = b.free_mfn()
    b.mem.write(page << 12, b"a gift")
    fmt = G.TRANSFER[b.w]
    mapped = b.free_mfn(1)
    assert b.uvm(b.window(), (mapped << 12) | PTE_RW) == 0
    rc, back = b.gnttab(G.GNTTABOP_transfer, fmt, [(mapped, a.domid, REF, 0),      # in use
                                                   (a.free_mfn(), a.domid, REF, 0),  # not B's
                                                   (page, a.domid, REF, 0)])
    assert rc == 0 and [r[-1] for r in back] == [G.GNTST_bad_page, G.GNTST_bad_page,
                                                 G.GNTST_okay]
    assert a.d.owns(page) and a.d.p2m[pfn] == page and a.mem.m2p(page) == pfn
    assert bytes(a.mem.page(page)[:6]) == b"a gift"
    flags = a.d.gnttab.flags_of(REF)
    assert flags & G.GTF_transfer_completed and a.d.gnttab.frame(REF) == page
    assert b.d.nr_pages == b.d.max_pages - 1 and a.d.nr_pages == a.d.max_pages
    # a second transfer through a used entry fails, and the page is lost (as in Xen)
    last = b.free_mfn(2)
    rc, back = b.gnttab(G.GNTTABOP_transfer, fmt, [(last, a.domid, REF + 1, 0)])
    assert back[0][-1] == G.GNTST_general_error and b.mem.owner[last] == DOMID_FREE


def test_dump_cache_flush_swap_and_version(pair):
    a, b = pair
    rc, back = a.gnttab(G.GNTTABOP_dump_table, G.DUMP_TABLE, [(DOMID_SELF, 0), (b.domid, 0)])
    assert [r[1] for r in back] == [G.GNTST_okay, G.GNTST_permission_denied]
    mfn = shared_page(a)
    fmt = G.CACHE_FLUSH
    for item, rc_want in [((mfn << 12, 0, 64, G.GNTTAB_CACHE_CLEAN), 0),
                          ((REF, 0, 64, G.GNTTAB_CACHE_INVAL | G.GNTTAB_CACHE_SOURCE_GREF), 0),
                          ((mfn << 12, 4000, 200, G.GNTTAB_CACHE_CLEAN), -Errno.EINVAL),
                          ((mfn << 12, 0, 64, 1 << 5), -Errno.EOPNOTSUPP),
                          ((b.free_mfn() << 12, 0, 64, G.GNTTAB_CACHE_CLEAN), -Errno.EPERM)]:
        assert a.gnttab(G.GNTTABOP_cache_flush, fmt, [item])[0] == rc_want, item
    a.grant(3, b.domid, mfn)
    rc, [(_, _, st)] = a.gnttab(G.GNTTABOP_swap_grant_ref, G.SWAP_GRANT_REF, [(3, 4, 0)])
    assert st == G.GNTST_okay and a.d.gnttab.header(4) == (G.GTF_permit_access, b.domid)
    rc, [(_, _, st)] = a.gnttab(G.GNTTABOP_swap_grant_ref, G.SWAP_GRANT_REF, [(3, 999, 0)])
    assert st == G.GNTST_bad_gntref
    rc, [(_, ver)] = a.gnttab(G.GNTTABOP_get_version, G.GET_VERSION, [(DOMID_SELF, 0)])
    assert (rc, ver) == (0, 1)
    assert a.gnttab(G.GNTTABOP_get_version, G.GET_VERSION, [(b.domid, 0)])[0] == -Errno.EPERM


def test_version_2(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(2, b.domid, mfn)                                       # a reserved entry survives
    rc, [(ver,)] = a.gnttab(G.GNTTABOP_set_version, G.SET_VERSION, [(3,)])
    assert (rc, ver) == (-Errno.EINVAL, 1)
    rc, [(ver,)] = a.gnttab(G.GNTTABOP_set_version, G.SET_VERSION, [(2,)])
    assert (rc, ver) == (0, 2)
    gt = a.d.gnttab
    assert gt.nr_entries == 256 and len(gt.status) == 1
    assert gt.header(2) == (G.GTF_permit_access, b.domid) and gt.frame(2) == mfn
    fmt = G.GET_STATUS_FRAMES[a.w]
    a.write(a.scratch, struct.pack(fmt, 1, DOMID_SELF, 0, a.out))
    assert a.call("grant_table_op", G.GNTTABOP_get_status_frames, a.scratch, 1) == 0
    assert struct.unpack(fmt, a.read(a.scratch, struct.calcsize(fmt)))[2] == G.GNTST_okay
    status_mfn = struct.unpack("<Q", a.read(a.out, 8))[0]
    assert status_mfn == gt.status[0]
    assert a.uvm(a.window(), (status_mfn << 12) | PTE_RW) == -Errno.EBUSY   # read-only
    assert a.uvm(a.window(1), (status_mfn << 12) | 0x21) == 0
    a.grant(REF, b.domid, mfn)
    st, h, _ = b.map_grant(b.window(), HOST, REF, a.domid)
    assert st == G.GNTST_okay and b.read(b.window(), 8) == b"A's data"
    assert struct.unpack("<H", a.read(a.window(1) + 2 * REF, 2))[0] == \
        G.GTF_reading | G.GTF_writing
    assert gt.header(REF)[0] == G.GTF_permit_access                 # v2: flags stay clean
    rc, _ = a.gnttab(G.GNTTABOP_set_version, G.SET_VERSION, [(1,)])
    assert rc == -Errno.EBUSY                                       # grants in use
    assert b.unmap_grant(b.window(), h) == G.GNTST_okay
    rc, _ = a.gnttab(G.GNTTABOP_set_version, G.SET_VERSION, [(1,)])
    assert rc == -Errno.EBUSY                                       # status frame still mapped
    assert a.uvm(a.window(1), 0) == 0
    rc, [(ver,)] = a.gnttab(G.GNTTABOP_set_version, G.SET_VERSION, [(1,)])
    assert (rc, ver) == (0, 1) and not gt.status
    a.write(a.scratch, struct.pack(fmt, 1, DOMID_SELF, 0, a.out))
    a.call("grant_table_op", G.GNTTABOP_get_status_frames, a.scratch, 1)
    assert struct.unpack(fmt, a.read(a.scratch, struct.calcsize(fmt)))[2] == \
        G.GNTST_general_error


def test_v2_sub_page_grants_limit_copies(pair):
    a, b = pair
    a.gnttab(G.GNTTABOP_set_version, G.SET_VERSION, [(2,)])
    mfn = shared_page(a)
    gt = a.d.gnttab
    e = gt._entry(REF)
    a.mem.write(e, struct.pack("<HHHHQ", G.GTF_permit_access | G.GTF_sub_page, b.domid,
                               128, 64, mfn))
    mine = b.free_mfn()
    fmt = G.COPY[b.w]
    rc, back = b.gnttab(G.GNTTABOP_copy, fmt, [
        (REF, a.domid, 128, mine, DOMID_SELF, 0, 64, G.GNTCOPY_source_gref, 0),
        (REF, a.domid, 100, mine, DOMID_SELF, 0, 64, G.GNTCOPY_source_gref, 0)])
    assert [r[-1] for r in back] == [G.GNTST_okay, G.GNTST_general_error]
    assert b.map_grant(b.window(), HOST, REF, a.domid)[0] == G.GNTST_general_error


def test_backend_mapping(pair):
    a, _ = pair
    mfn = shared_page(a)
    gt = a.d.gnttab
    a.grant(REF, gnttab.BACKEND_DOMID, mfn)
    bm = gt.map_for_backend(REF, readonly=False)
    assert bytes(bm.view[:8]) == b"A's data"
    bm.view[:4] = b"blk!"
    assert bytes(a.mem.page(mfn)[:4]) == b"blk!"
    assert gt.flags_of(REF) & G.GTF_writing and not a.end_grant(REF)
    assert a.mmuext([(0, mfn, 0)])[0] == -Errno.EINVAL
    assert mm.audit(a.d.host) == []
    gt.unmap_for_backend(bm)
    assert a.end_grant(REF)
    with pytest.raises(gnttab.GrantError, match="ref 10"):
        gt.map_for_backend(REF, readonly=True)                      # revoked
    with pytest.raises(gnttab.GrantError):
        gt.unmap_for_backend(bm)
    a.grant(REF, gnttab.BACKEND_DOMID, mfn, G.GTF_permit_access | G.GTF_readonly)
    ro = gt.map_for_backend(REF, readonly=True)
    with pytest.raises(TypeError):
        ro.view[0] = 1
    gt.unmap_for_backend(ro)


def test_destroying_the_mapper_releases_its_grants(pair):
    a, b = pair
    base = counts(a.d)
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    assert b.map_grant(b.window(), HOST, REF, a.domid)[0] == G.GNTST_okay
    assert b.map_grant(0, G.GNTMAP_device_map | RO, REF, a.domid)[0] == G.GNTST_okay
    host = a.d.host
    host.destroy_domain(b.d)
    assert a.d.gnttab.flags_of(REF) == G.GTF_permit_access and a.end_grant(REF)
    a.mem.write(mfn << 12, bytes(PAGE_SIZE))
    assert counts(a.d) == base


def test_a_granted_frame_outlives_its_dead_owner_while_mapped(pair):
    a, b = pair
    mfn = shared_page(a)
    a.grant(REF, b.domid, mfn)
    st, h, _ = b.map_grant(b.window(), HOST, REF, a.domid)
    host = a.d.host
    dead = a.domid
    host.destroy_domain(a.d)
    assert host.mem.owner[mfn] == dead                              # kept, not reused
    assert b.read(b.window(), 8) == b"A's data"
    assert b.unmap_grant(b.window(), h) == G.GNTST_okay
    assert host.mem.owner[mfn] == DOMID_FREE                        # freed with the last ref
