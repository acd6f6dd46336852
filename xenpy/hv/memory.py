"""memory_op: reservations, ballooning and the memory map (Xen's common/memory.c).

A PV guest names frames by MFN (its "gmfn" is the machine frame) and keeps its own p2m,
so the hypervisor hands out and takes back machine frames and records each in the M2P;
xenpy also keeps a p2m per domain (``Domain.p2m``, -1 for a hole) so it can count the
domain's pages and check ownership.  Frames the domain uses but does not own as RAM —
shared_info, grant-table and grant-status frames — can never be given back or
exchanged (Xen's is_xen_heap_page checks).

``decrease_reservation`` drops the allocation reference (guest_remove_page): a frame
still mapped or typed stays allocated, owned by the domain but no longer counted, until
its last reference goes — so a guest can never free a frame something still uses.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi import memory as M
from ..abi.errno import Errno
from ..abi.xen import (DOMID_SELF, MACH2PHYS_VIRT_END_PAE, MACH2PHYS_VIRT_END_X86_64,
                       MACH2PHYS_VIRT_START_PAE, MACH2PHYS_VIRT_START_X86_64, PAGE_SHIFT, Width)
from . import grant_table, mm
from .guest_access import GuestFault
from .hypercall import hypercall
from .machine import OutOfMemory

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

#: PV guests get order-0 extents only (no superpage support for PV in xenpy).
MAX_ORDER = 0
#: Xen's memop continuation: the upper bits of cmd carry the start extent.
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1


def is_special(d: "Domain", mfn: int) -> bool:
    """A frame the guest may not give back or exchange (Domain.hypervisor_held)."""
    return d.hypervisor_held(mfn)


def _target(v: "Vcpu", domid: int) -> "Domain | None":
    """Only the caller itself (a domU has no privilege over others)."""
    return v.domain if domid in (DOMID_SELF, v.domain.domid) else None


def _read_reservation(v: "Vcpu", arg: int) -> tuple[int, int, int, int, int]:
    fmt = M.MEMORY_RESERVATION[v.domain.width]
    return struct.unpack(fmt, v.gmem.read(arg, struct.calcsize(fmt)))


def increase_reservation(d: "Domain", n: int) -> list[int]:
    """Allocate ``n`` frames (within max_pages); placed at no pfn until a MACHPHYS_UPDATE."""
    if d.nr_pages + n > d.max_pages:
        raise OutOfMemory(f"d{d.domid} at max_pages {d.max_pages}")
    mfns = d.mem.alloc_frames(d.domid, n)
    d.unplaced.update(mfns)
    return mfns


def populate_physmap(d: "Domain", gpfn: int) -> int:
    """One frame at ``gpfn``: allocate it, record it in the M2P and the p2m."""
    if d.nr_pages + 1 > d.max_pages:
        raise OutOfMemory(f"d{d.domid} at max_pages {d.max_pages}")
    if gpfn >= max(len(d.p2m), d.max_pages) + 1024:
        raise OutOfMemory(f"gpfn {gpfn:#x} beyond the domain's physmap")
    mfn = d.mem.alloc_frames(d.domid, 1)[0]
    d.unplaced.add(mfn)
    mm.set_gpfn_from_mfn(d, mfn, gpfn)
    return mfn


def guest_remove_page(d: "Domain", mfn: int) -> bool:
    """Give back one frame of RAM: drop its allocation reference (and its p2m/M2P entry)."""
    mem = d.mem
    if not d.owns(mfn) or is_special(d, mfn):
        return False
    pfn = mm._p2m_index(d, mfn)
    if pfn is not None:
        d.p2m[pfn] = -1
    elif mfn in d.unplaced:
        d.unplaced.discard(mfn)
    else:
        return False                 # already given back, still referenced
    if mem.pinned[mfn]:
        mem.pinned[mfn] = 0          # Xen unpins a pinned page the guest gives back
        mm.put_page_and_type(d, mfn)
    mem.set_m2p(mfn, None)
    mm.put_page(d, mfn)              # the allocation reference: frees it if nothing else holds it
    return True


@hypercall("memory_op", 2)
def do_memory_op(v: "Vcpu", cmd: int, arg: int) -> int:
    d = v.domain
    g = v.gmem
    w = d.width
    start = (cmd & 0xFFFFFFFF) >> MEMOP_EXTENT_SHIFT
    op = cmd & MEMOP_CMD_MASK
    if op in (M.XENMEM_increase_reservation, M.XENMEM_decrease_reservation,
              M.XENMEM_populate_physmap):
        ext, nr, order, flags, domid = _read_reservation(v, arg)
        t = _target(v, domid)
        if t is None:
            return -Errno.ESRCH if domid not in d.host.domains else -Errno.EPERM
        if order > MAX_ORDER:
            return 0 if start >= nr else start     # Xen: no extents done
        done = start
        while done < nr:
            if op == M.XENMEM_decrease_reservation:
                if not guest_remove_page(t, g.read_ulong(ext + w * done)):
                    break
            elif op == M.XENMEM_increase_reservation:
                try:
                    mfn = increase_reservation(t, 1)[0]
                except OutOfMemory:
                    break
                if ext:
                    g.write_ulong(ext + w * done, mfn)
            else:
                gpfn = g.read_ulong(ext + w * done)
                try:
                    mfn = populate_physmap(t, gpfn)
                except OutOfMemory:
                    break
                g.write_ulong(ext + w * done, mfn)
            done += 1
        return done
    if op == M.XENMEM_exchange:
        return _exchange(v, arg)
    if op in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation):
        domid = struct.unpack("<H", g.read(arg, 2))[0]
        t = _target(v, domid)
        if t is None:
            return -Errno.ESRCH if domid not in d.host.domains else -Errno.EPERM
        return t.nr_pages if op == M.XENMEM_current_reservation else t.max_pages
    if op == M.XENMEM_maximum_ram_page:
        return d.mem.nr_frames - 1
    if op == M.XENMEM_maximum_gpfn:
        domid = struct.unpack("<H", g.read(arg, 2))[0]
        if _target(v, domid) is None:
            return -Errno.EPERM
        return len(d.p2m) - 1
    if op == M.XENMEM_memory_map:
        fmt = M.MEMORY_MAP[w]
        nr, buf = struct.unpack(fmt, g.read(arg, struct.calcsize(fmt)))
        if nr < 1:
            return -Errno.EINVAL
        # A PV domU sees one RAM region: libxl gives PV guests an E820 of their RAM.
        g.write(buf, struct.pack(M.E820_ENTRY, 0, d.max_pages << PAGE_SHIFT, M.E820_RAM))
        g.write_u32(arg, 1)
        return 0
    if op == M.XENMEM_machphys_mapping:
        if w == Width.X86_32:
            vals = (MACH2PHYS_VIRT_START_PAE, MACH2PHYS_VIRT_END_PAE)
        else:
            vals = (MACH2PHYS_VIRT_START_X86_64, MACH2PHYS_VIRT_END_X86_64)
        last = min(d.mem.nr_frames, (vals[1] - vals[0]) // w) - 1
        g.write(arg, struct.pack(M.MACHPHYS_MAPPING[w], vals[0], vals[1], last))
        return 0
    if op == M.XENMEM_machphys_mfn_list:
        return _machphys_mfn_list(v, arg)
    if op == M.XENMEM_add_to_physmap:
        fmt = M.ADD_TO_PHYSMAP[w]
        domid, _size, space, idx, gpfn = struct.unpack(fmt, g.read(arg, struct.calcsize(fmt)))
        if _target(v, domid) is None:
            return -Errno.ESRCH if domid not in d.host.domains else -Errno.EPERM
        return add_to_physmap(d, space, idx, gpfn)
    d.log_once(f"memory_op {op}", "memory_op %d not implemented", op)
    return -Errno.ENOSYS


def _machphys_mfn_list(v: "Vcpu", arg: int) -> int:
    """XENMEM_machphys_mfn_list: the frames holding the M2P, one per 2 MiB (extents of 512)."""
    d = v.domain
    w = d.width
    fmt = "<II" if w == 4 else "<I4xQ"
    maxn, buf = struct.unpack(fmt, v.gmem.read(arg, struct.calcsize(fmt)))
    m2p = d.mem.m2p32 if w == Width.X86_32 else d.mem.m2p64
    mfns = m2p[::512][:maxn]
    for i, mfn in enumerate(mfns):
        v.gmem.write_ulong(buf + w * i, mfn)
    v.gmem.write_u32(arg, len(mfns))
    return 0


def add_to_physmap(d: "Domain", space: int, idx: int, gpfn: int) -> int:
    """XENMEM_add_to_physmap for shared_info and grant-table frames.

    Xen serves this for translated guests, whose physmap it owns; a PV guest maps these
    frames by MFN instead.  xenpy accepts it from PV guests too, recording the frame at
    ``gpfn`` in the M2P and returning 0, so the same guest code works on both."""
    if space == M.XENMAPSPACE_shared_info:
        if idx != 0 or d.shared_info_mfn < 0:
            return -Errno.EINVAL
        mfn = d.shared_info_mfn
    elif space == M.XENMAPSPACE_grant_table:
        gt = grant_table.table(d)
        if idx & M.XENMAPIDX_grant_table_status:
            i = idx & ~M.XENMAPIDX_grant_table_status
            if gt.version != 2 or i >= len(gt.status):
                return -Errno.EINVAL
            mfn = gt.status[i]
        else:
            if not grant_table.grow(gt, max(len(gt.shared), idx + 1)):
                return -Errno.EINVAL
            mfn = gt.shared[idx]
    elif space in (M.XENMAPSPACE_gmfn, M.XENMAPSPACE_gmfn_range):
        return -Errno.EACCES          # moving RAM within the physmap: translated guests only
    else:
        return -Errno.ENOSYS
    d.mem.set_m2p(mfn, gpfn)
    return 0


#: extents one XENMEM_exchange call handles (Xen preempts with a continuation; a guest
#: that lists the frames it gets back as the next inputs could otherwise loop 2^32 times)
EXCHANGE_MAX_PER_CALL = 1 << 14


def _exchange(v: "Vcpu", arg: int) -> int:
    """XENMEM_exchange: give back ``in`` extents, receive as many ``out`` extents."""
    d = v.domain
    w = d.width
    g = v.gmem
    fmt = M.MEMORY_RESERVATION[w]
    rsize = struct.calcsize(fmt)
    in_ext, in_nr, in_order, _f1, in_dom = struct.unpack(fmt, g.read(arg, rsize))
    out_ext, out_nr, out_order, _f2, out_dom = struct.unpack(fmt, g.read(arg + rsize, rsize))
    done_at = arg + M.EXCHANGE_DONE_OFFSET[w]
    exchanged = g.read_ulong(done_at)
    if in_nr != out_nr or in_order > MAX_ORDER or out_order > MAX_ORDER or exchanged > in_nr:
        return -Errno.EINVAL
    if _target(v, in_dom) is None or _target(v, out_dom) is None:
        return -Errno.EPERM
    rc = 0
    budget = EXCHANGE_MAX_PER_CALL       # new frames can be fed back in: bound one call
    try:
        while exchanged < in_nr:
            budget -= 1
            if budget < 0:
                rc = -Errno.EAGAIN           # progress is in nr_exchanged: call again
                break
            mfn = g.read_ulong(in_ext + w * exchanged)
            gpfn = g.read_ulong(out_ext + w * exchanged)
            mem = d.mem
            if not d.owns(mfn) or is_special(d, mfn) or mem.ref_count[mfn] != 1 or \
                    mem.type_count[mfn] or (mm._p2m_index(d, mfn) is None and mfn not in d.unplaced):
                rc = -Errno.EINVAL   # steal_page fails: the frame is in use
                break
            try:
                new = mem.alloc_frames(d.domid, 1)[0]
            except OutOfMemory:
                rc = -Errno.ENOMEM
                break
            guest_remove_page(d, mfn)
            d.unplaced.add(new)
            mm.set_gpfn_from_mfn(d, new, gpfn)
            exchanged += 1               # done: a fault reporting it still counts it
            g.write_ulong(out_ext + w * (exchanged - 1), new)
    except GuestFault:
        rc = -Errno.EFAULT           # the extents exchanged so far are still reported
    g.write_ulong(done_at, exchanged)
    return rc
