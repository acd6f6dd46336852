"""grant_table_op: sharing pages between domains on purpose (Xen's common/grant_table.c).

A domain *grants* access to one of its frames by filling an entry of its shared grant
table (v1: flags, domid, frame; v2: a 16-byte union plus a separate status word).  The
grantee maps the frame with GNTTABOP_map_grant_ref: the hypervisor checks the entry
(type GTF_permit_access, the grantee's domid, GTF_readonly against the request), pins
it — setting GTF_reading, and GTF_writing for a writable mapping, which is how the
granter knows it cannot revoke the grant yet — and installs the *granter's* frame in
the grantee's page table: a real shared mapping, no copy.

References, as in Xen: each mapping handle (maptrack entry) holds a general reference
on the frame and, when writable, its writable type; the grant PTE holds the references
any L1 entry holds (mm.install_grant_pte).  So a granted frame can never become a page
table of its owner while someone maps it writable, and it stays allocated while mapped
— even after its owner dies (relinquish keeps such frames until the last unmap).
Unmap zaps the PTE, drops the references and unpins; a second unmap of the same handle
is GNTST_bad_handle.  A domain's mappings are dropped when it is destroyed.

Foreign frames enter page tables only this way: mmu_update, update_va_mapping and
ptwr all refuse an L1 entry naming a frame the domain does not own (-EBUSY).

``map_for_backend`` gives host-side backends (blkback, netback) the same kind of
mapping into the host: a memoryview of the granted frame, pinned until released.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..abi import grant_table as G
from ..abi.errno import Errno
from ..abi.xen import (DOMID_SELF, PAGE_SHIFT, PAGE_SIZE, Width, _PAGE_ACCESSED, _PAGE_DIRTY,
                       _PAGE_PRESENT, _PAGE_RW, _PAGE_USER)
from ..errors import XenpyError
from . import mm
from .guest_access import MADDR_MASK
from .hypercall import hypercall
from .machine import PageType

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.grant_table")

MAX_GRANT_FRAMES = 64       # libxl's default max_grant_frames
MAX_MAPTRACK = 1024 * 16    # libxl's default max_maptrack_frames (1024) x entries per frame
GNTTAB_NR_RESERVED_ENTRIES = 8
#: The domid host-side backends map grants as (they stand for the control domain).
BACKEND_DOMID = 0
MAX_BATCH = 512


class GrantError(XenpyError):
    """A host-side backend asked for a grant the guest did not give (names the entry)."""


@dataclass
class Active:
    """struct active_grant_entry: the pins on one grant reference."""
    frame: int
    pin_ro: int = 0
    pin_rw: int = 0

    @property
    def pinned(self) -> bool:
        return bool(self.pin_ro or self.pin_rw)


@dataclass
class MapTrack:
    """struct grant_mapping: one mapping handle of the mapping domain (or of a backend)."""
    granter: "GrantTable"
    ref: int
    mfn: int
    flags: int                 # GNTMAP_host_map / GNTMAP_device_map / GNTMAP_readonly
    host_addr: int = 0
    pte_maddr: int = -1        # where the grant PTE was written (host mappings)

    @property
    def writable(self) -> bool:
        return not self.flags & G.GNTMAP_readonly


@dataclass
class BackendMap:
    """A grant mapped into the host for a backend: ``view`` is the granted frame."""
    granter: "GrantTable"
    ref: int
    mfn: int
    writable: bool
    view: memoryview
    live: bool = True

    @property
    def flags(self) -> int:
        return 0 if self.writable else G.GNTMAP_readonly


@dataclass
class GrantTable:
    """One domain's grant table: shared (and v2 status) frames, pins and maptrack."""
    d: "Domain"
    version: int = 1
    status: list[int] = field(default_factory=list)
    active: dict[int, Active] = field(default_factory=dict)
    maptrack: list[MapTrack | None] = field(default_factory=list)
    free_handles: list[int] = field(default_factory=list)
    backend_maps: list[BackendMap] = field(default_factory=list)
    dead: bool = False

    # --- geometry ------------------------------------------------------------------------------
    @property
    def shared(self) -> list[int]:
        return self.d.grant_frames

    @property
    def per_frame(self) -> int:
        return PAGE_SIZE // (G.GRANT_ENTRY_V1_SIZE if self.version == 1 else G.GRANT_ENTRY_V2_SIZE)

    @property
    def nr_entries(self) -> int:
        return len(self.shared) * self.per_frame

    def nr_status_frames(self, entries: int | None = None) -> int:
        n = self.nr_entries if entries is None else entries
        return (n * G.GRANT_STATUS_SIZE + PAGE_SIZE - 1) // PAGE_SIZE

    def _entry(self, ref: int) -> int:
        size = PAGE_SIZE // self.per_frame
        return (self.shared[ref // self.per_frame] << PAGE_SHIFT) + (ref % self.per_frame) * size

    def _status_addr(self, ref: int) -> int:
        per = PAGE_SIZE // G.GRANT_STATUS_SIZE
        return (self.status[ref // per] << PAGE_SHIFT) + (ref % per) * G.GRANT_STATUS_SIZE

    # --- entries -------------------------------------------------------------------------------
    def header(self, ref: int) -> tuple[int, int]:
        """(flags, domid) of entry ``ref`` as the guest wrote it."""
        return struct.unpack_from("<HH", self.d.mem.buf, self._entry(ref))

    def frame(self, ref: int) -> int:
        a = self._entry(ref)
        if self.version == 1:
            return struct.unpack_from("<I", self.d.mem.buf, a + 4)[0]
        return struct.unpack_from("<Q", self.d.mem.buf, a + 8)[0]

    def sub_page(self, ref: int) -> tuple[int, int]:
        """v2 sub_page: (page_off, length)."""
        return struct.unpack_from("<HH", self.d.mem.buf, self._entry(ref) + 4)

    def _set_status(self, ref: int, act: Active) -> None:
        """GTF_reading while pinned, GTF_writing while pinned writable (v1 flags, v2 status)."""
        bits = (G.GTF_reading if act.pinned else 0) | (G.GTF_writing if act.pin_rw else 0)
        mem = self.d.mem
        if self.version == 1:
            a = self._entry(ref)
            flags = struct.unpack_from("<H", mem.buf, a)[0]
            struct.pack_into("<H", mem.buf, a,
                             (flags & ~(G.GTF_reading | G.GTF_writing)) | bits)
        else:
            struct.pack_into("<H", mem.buf, self._status_addr(ref), bits)

    # --- save / restore -----------------------------------------------------------------------
    def _frame_field(self) -> tuple[int, str]:
        """(offset, struct format) of an entry's frame: v1 frame u32, v2 full_page.frame u64."""
        return (4, "<I") if self.version == 1 else (8, "<Q")

    def saved_frames(self, pfn_of: Callable[[int], int | None]) -> list[bytes]:
        """The shared frames as a save stream carries them: a PV guest grants *machine*
        frames, which do not exist on the restoring host, so each permit_access entry's
        frame becomes the granter's pfn (INVALID_PFN when it is not the domain's own),
        and GTF_reading/GTF_writing are cleared: no mapping moves with the domain — the
        backends on the new host map again."""
        out = []
        off, fmt = self._frame_field()
        invalid = (1 << (8 * struct.calcsize(fmt))) - 1
        size = PAGE_SIZE // self.per_frame
        for mfn in self.shared:
            page = bytearray(self.d.mem.page(mfn))
            for e in range(0, PAGE_SIZE, size):
                flags = struct.unpack_from("<H", page, e)[0]
                if self.version == 1:
                    struct.pack_into("<H", page, e, flags & ~(G.GTF_reading | G.GTF_writing))
                if flags & G.GTF_type_mask != G.GTF_permit_access:
                    continue
                frame = struct.unpack_from(fmt, page, e + off)[0]
                pfn = pfn_of(frame) if self.d.owns(frame) else None
                struct.pack_into(fmt, page, e + off, invalid if pfn is None else pfn)
            out.append(bytes(page))
        return out

    def load_frames(self, frames: list[bytes], mfn_of: Callable[[int], int | None]) -> None:
        """Inverse of ``saved_frames`` on the restoring host (the table already grown to
        ``len(frames)``): pfns become this host's frames; an unknown pfn stays invalid,
        so mapping that entry fails with GNTST_bad_page rather than reaching a stranger's
        frame."""
        off, fmt = self._frame_field()
        invalid = (1 << (8 * struct.calcsize(fmt))) - 1
        size = PAGE_SIZE // self.per_frame
        for mfn, data in zip(self.shared, frames):
            if len(data) != PAGE_SIZE:
                raise GrantError(f"grant frame: expected {PAGE_SIZE} bytes, got {len(data)}")
            page = bytearray(data)
            for e in range(0, PAGE_SIZE, size):
                if struct.unpack_from("<H", page, e)[0] & G.GTF_type_mask != G.GTF_permit_access:
                    continue
                pfn = struct.unpack_from(fmt, page, e + off)[0]
                new = mfn_of(pfn) if pfn != invalid else None
                struct.pack_into(fmt, page, e + off, invalid if new is None else new)
            self.d.mem.write(mfn << PAGE_SHIFT, bytes(page))

    def flags_of(self, ref: int) -> int:
        """What the granter sees: the v1 flags, or v2 flags | status."""
        flags = self.header(ref)[0]
        if self.version == 2:
            flags |= struct.unpack_from("<H", self.d.mem.buf, self._status_addr(ref))[0]
        return flags

    # --- pins ----------------------------------------------------------------------------------
    def acquire(self, ref: int, grantee: int, readonly: bool, sub: tuple[int, int] | None = None
                ) -> tuple[int, int]:
        """Check entry ``ref`` for ``grantee`` and pin it: (GNTST_okay, mfn) or (GNTST_*, 0)."""
        if self.dead or ref >= self.nr_entries:
            return G.GNTST_bad_gntref, 0
        flags, domid = self.header(ref)
        mask = G.GTF_type_mask | G.GTF_sub_page
        if not readonly:
            mask |= G.GTF_readonly
        ok_sub = False
        if self.version == 2 and sub is not None and \
                flags & (G.GTF_type_mask | G.GTF_sub_page) == G.GTF_permit_access | G.GTF_sub_page:
            off, length = self.sub_page(ref)
            ok_sub = off <= sub[0] and sub[0] + sub[1] <= off + length <= PAGE_SIZE
            mask &= ~G.GTF_sub_page
        if flags & mask != G.GTF_permit_access or domid != grantee or \
                (flags & G.GTF_sub_page and not ok_sub):
            log.debug("d%d grant %d: bad flags %#x or dom %d (want d%d)", self.d.domid, ref,
                      flags, domid, grantee)
            return G.GNTST_general_error, 0
        act = self.active.get(ref)
        if act is None or not act.pinned:
            mfn = self.frame(ref)
            if not self.d.owns(mfn) or mfn in self.d.special_frames or mfn in self.status:
                return G.GNTST_bad_page, 0
            act = Active(mfn)
            self.active[ref] = act
        if readonly:
            act.pin_ro += 1
        else:
            act.pin_rw += 1
        self._set_status(ref, act)
        return G.GNTST_okay, act.frame

    def release(self, ref: int, readonly: bool) -> None:
        act = self.active[ref]
        if readonly:
            act.pin_ro -= 1
        else:
            act.pin_rw -= 1
        if not self.dead:
            self._set_status(ref, act)
        if not act.pinned:
            del self.active[ref]

    # --- host-side backends ----------------------------------------------------------------------
    def map_for_backend(self, gref: int, readonly: bool) -> BackendMap:
        """Map grant ``gref`` of this domain into the host (for a backend acting as dom0).
        Raises GrantError when the guest did not grant it to dom0 as asked."""
        st, mfn = self.acquire(gref, BACKEND_DOMID, readonly)
        if st != G.GNTST_okay:
            raise GrantError(f"d{self.d.domid} grant ref {gref}: expected a "
                             f"{'read-only' if readonly else 'writable'} grant to d0, "
                             f"got status {st}")
        mem = self.d.mem
        mem.ref_count[mfn] += 1
        if not readonly:
            try:
                mm.get_page_type(self.d, mfn, PageType.writable)
            except mm.PageError as e:
                mem.ref_count[mfn] -= 1
                self.release(gref, readonly)
                raise GrantError(f"d{self.d.domid} grant ref {gref}: frame {mfn:#x} cannot "
                                 f"be written: {e}") from None
        view = mem.page(mfn)
        if readonly:
            view = view.toreadonly()
        bm = BackendMap(self, gref, mfn, not readonly, view)
        self.backend_maps.append(bm)
        return bm

    def unmap_for_backend(self, bm: BackendMap) -> None:
        """Release a ``map_for_backend`` mapping (the view must no longer be used)."""
        if not bm.live:
            raise GrantError(f"grant ref {bm.ref}: backend mapping already released")
        bm.live = False
        bm.view.release()
        self.backend_maps.remove(bm)
        _drop_map_refs(self.d, bm.mfn, bm.writable)
        if bm.ref in self.active:
            self.release(bm.ref, not bm.writable)


def table(d: "Domain") -> GrantTable:
    """The domain's grant table, created on first use."""
    if d.gnttab is None:
        d.gnttab = GrantTable(d)
    return d.gnttab


def _drop_map_refs(d: "Domain", mfn: int, writable: bool) -> None:
    if writable:
        mm.put_page_type(d, mfn)
    mm.put_page(d, mfn)


def _lookup(v: "Vcpu", domid: int) -> "Domain | None":
    if domid == DOMID_SELF:
        return v.domain
    d = v.domain.host.domains.get(domid)
    return None if d is None or d.dying else d


# --- table management ----------------------------------------------------------------------------
def grow(gt: GrantTable, nr_frames: int) -> bool:
    """gnttab_grow_table: shared frames (and v2 status frames) up to ``nr_frames``."""
    d = gt.d
    if nr_frames > MAX_GRANT_FRAMES:
        return False
    while len(gt.shared) < nr_frames:
        mfn = d.mem.alloc_frames(d.domid, 1)[0]
        mm.share_xen_page_with_guest(d, mfn)
        gt.shared.append(mfn)
    if gt.version == 2:
        _grow_status(gt)
    return True


def _grow_status(gt: GrantTable) -> None:
    d = gt.d
    while len(gt.status) < gt.nr_status_frames():
        mfn = d.mem.alloc_frames(d.domid, 1)[0]
        mm.share_xen_page_with_guest(d, mfn)   # the hypervisor writes it: never a page table
        gt.status.append(mfn)


def maptrack_refs(d: "Domain") -> list:
    """Every mapping that holds references: ``d``'s own handles and the backend mappings of
    ``d``'s grants (for mm.audit)."""
    out: list = [m for m in (d.gnttab.maptrack if d.gnttab else []) if m is not None]
    if d.gnttab is not None:
        out += d.gnttab.backend_maps
    return out


def status_frames(d: "Domain") -> list[int]:
    return list(d.gnttab.status) if d.gnttab is not None else []


def release_domain(d: "Domain") -> dict[int, tuple[int, int]]:
    """Domain destroy: unmap every grant ``d`` maps; mark its table dead.  Returns, for each
    of ``d``'s frames that others still map, the (references, writable uses) they hold."""
    gt = d.gnttab
    if gt is not None:
        for handle, m in enumerate(gt.maptrack):
            if m is not None:
                _unmap_all(d, handle, m)
        gt.maptrack.clear()
        gt.free_handles.clear()
        gt.dead = True
    keep: dict[int, tuple[int, int]] = {}

    def hold(mfn: int, refs: int, rw: int) -> None:
        r, w = keep.get(mfn, (0, 0))
        keep[mfn] = (r + refs, w + rw)

    for other in d.host.domains.values():
        if other is d or other.gnttab is None:
            continue
        for m in other.gnttab.maptrack:
            if m is not None and m.granter is gt:
                pte = 1 if m.pte_maddr >= 0 and _pte_maps(other, m.pte_maddr, m.mfn) else 0
                hold(m.mfn, 1 + pte, int(m.writable) * (1 + pte))
    if gt is not None:
        for bm in gt.backend_maps:
            hold(bm.mfn, 1, int(bm.writable))
    return keep


def _pte_maps(d: "Domain", slot: int, mfn: int) -> bool:
    mem = d.mem
    table_ = slot >> PAGE_SHIFT
    if not d.owns(table_) or mem.type[table_] != PageType.l1 or not mem.type_count[table_]:
        return False
    e = mem.read_u64(slot)
    return bool(e & _PAGE_PRESENT) and (e & MADDR_MASK) >> PAGE_SHIFT == mfn


def _unmap_all(d: "Domain", handle: int, m: MapTrack) -> None:
    if m.pte_maddr >= 0:
        mm.clear_grant_pte(d, m.pte_maddr, m.mfn)
    _drop_map_refs(d, m.mfn, m.writable)
    if m.ref in m.granter.active:
        m.granter.release(m.ref, not m.writable)


# --- map / unmap ---------------------------------------------------------------------------------
def _grant_pte(d: "Domain", mfn: int, flags: int) -> int:
    pte = (mfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY
    if not flags & G.GNTMAP_readonly:
        pte |= _PAGE_RW
    if flags & G.GNTMAP_application_map or d.width == Width.X86_64:
        pte |= _PAGE_USER
    return pte


def _pte_slot(v: "Vcpu", host_addr: int, flags: int) -> int:
    """The machine address of the PTE a host mapping writes; -1 when there is none."""
    d = v.domain
    if flags & G.GNTMAP_contains_pte:
        slot = host_addr
        if slot & 7 or not d.owns(slot >> PAGE_SHIFT):
            return -1
        return slot
    if not mm.guest_va_ok(d, host_addr) or host_addr & (PAGE_SIZE - 1):
        return -1
    try:
        return mm.guest_l1e_maddr(v, host_addr)
    except mm.PageError:
        return -1


def map_grant_ref(v: "Vcpu", host_addr: int, flags: int, ref: int, dom: int
                  ) -> tuple[int, int, int]:
    """One GNTTABOP_map_grant_ref: (status, handle, dev_bus_addr)."""
    ld = v.domain
    if not flags & (G.GNTMAP_device_map | G.GNTMAP_host_map):
        return G.GNTST_bad_gntref, 0, 0
    rd = _lookup(v, dom)
    if rd is None:
        return G.GNTST_bad_domain, 0, 0
    rgt = table(rd)
    lgt = table(ld)
    if ref >= rgt.nr_entries:
        return G.GNTST_bad_gntref, 0, 0
    if not lgt.free_handles and len(lgt.maptrack) >= MAX_MAPTRACK:
        return G.GNTST_no_device_space, 0, 0
    slot = -1
    if flags & G.GNTMAP_host_map:
        slot = _pte_slot(v, host_addr, flags)
        if slot < 0:
            return G.GNTST_general_error, 0, 0
    readonly = bool(flags & G.GNTMAP_readonly)
    st, mfn = rgt.acquire(ref, ld.domid, readonly)
    if st != G.GNTST_okay:
        return st, 0, 0
    mem = ld.mem
    mem.ref_count[mfn] += 1
    try:
        if not readonly:
            mm.get_page_type(ld, mfn, PageType.writable, foreign_ok=True)
    except mm.PageError:
        mem.ref_count[mfn] -= 1
        rgt.release(ref, readonly)
        return G.GNTST_general_error, 0, 0
    if slot >= 0:
        try:
            mm.install_grant_pte(ld, slot, _grant_pte(ld, mfn, flags))
        except mm.PageError:
            _drop_map_refs(ld, mfn, not readonly)
            rgt.release(ref, readonly)
            return G.GNTST_general_error, 0, 0
        mm.flush_tlbs(ld)
    m = MapTrack(rgt, ref, mfn, flags & (G.GNTMAP_host_map | G.GNTMAP_device_map |
                                         G.GNTMAP_readonly), host_addr, slot)
    if lgt.free_handles:
        handle = lgt.free_handles.pop()
        lgt.maptrack[handle] = m
    else:
        handle = len(lgt.maptrack)
        lgt.maptrack.append(m)
    dev = mfn << PAGE_SHIFT if flags & G.GNTMAP_device_map else 0
    return G.GNTST_okay, handle, dev


def _get_map(ld: "Domain", handle: int) -> MapTrack | None:
    gt = ld.gnttab
    if gt is None or not 0 <= handle < len(gt.maptrack):
        return None
    return gt.maptrack[handle]


def _finish(ld: "Domain", handle: int, m: MapTrack, done: int) -> None:
    """Drop what this unmap completed; free the handle when nothing of it is left."""
    m.flags &= ~done
    if m.flags & (G.GNTMAP_host_map | G.GNTMAP_device_map):
        return
    ld.gnttab.maptrack[handle] = None
    ld.gnttab.free_handles.append(handle)
    _drop_map_refs(ld, m.mfn, m.writable)
    if m.ref in m.granter.active:
        m.granter.release(m.ref, not m.writable)


def unmap_grant_ref(v: "Vcpu", host_addr: int, dev_bus_addr: int, handle: int) -> int:
    """One GNTTABOP_unmap_grant_ref (Xen's unmap_common): its status."""
    ld = v.domain
    m = _get_map(ld, handle)
    if m is None:
        return G.GNTST_bad_handle
    done = 0
    if dev_bus_addr and m.flags & G.GNTMAP_device_map:
        if dev_bus_addr != m.mfn << PAGE_SHIFT:
            return G.GNTST_bad_dev_addr
        done |= G.GNTMAP_device_map
    if host_addr and m.flags & G.GNTMAP_host_map:
        if host_addr != m.host_addr or not mm.clear_grant_pte(ld, m.pte_maddr, m.mfn):
            log.debug("d%d unmap handle %d: PTE for %#x does not map frame %#x", ld.domid,
                      handle, host_addr, m.mfn)
            return G.GNTST_general_error
        mm.flush_tlbs(ld)
        done |= G.GNTMAP_host_map
    _finish(ld, handle, m, done)
    return G.GNTST_okay


def unmap_and_replace(v: "Vcpu", host_addr: int, new_addr: int, handle: int) -> int:
    """GNTTABOP_unmap_and_replace: the PTE at ``new_addr`` moves to ``host_addr``."""
    ld = v.domain
    m = _get_map(ld, handle)
    if m is None:
        return G.GNTST_bad_handle
    if not m.flags & G.GNTMAP_host_map or host_addr != m.host_addr or \
            not _pte_maps(ld, m.pte_maddr, m.mfn):
        return G.GNTST_general_error
    moved = 0
    if new_addr:
        nslot = _pte_slot(v, new_addr, 0)
        if nslot < 0 or nslot == m.pte_maddr:
            return G.GNTST_general_error
        moved = ld.mem.read_u64(nslot)
        ld.mem.write_u64(nslot, 0)           # its references move with the entry
    old = ld.mem.read_u64(m.pte_maddr)
    ld.mem.write_u64(m.pte_maddr, moved)
    mm.put_entry(ld, PageType.l1, old)
    mm.flush_tlbs(ld)
    _finish(ld, handle, m, G.GNTMAP_host_map)
    return G.GNTST_okay


# --- copy / transfer -----------------------------------------------------------------------------
def _copy_buf(v: "Vcpu", is_gref: bool, ref_or_mfn: int, domid: int, off: int, length: int,
              readonly: bool):
    """gnttab_copy_claim_buf: (status, mfn, release) for one side of a copy."""
    if not is_gref and domid != DOMID_SELF:
        return G.GNTST_permission_denied, 0, None
    d = _lookup(v, domid)
    if d is None:
        return G.GNTST_bad_domain, 0, None
    mem = d.mem
    if is_gref:
        gt = table(d)
        st, mfn = gt.acquire(ref_or_mfn, v.domain.domid, readonly, (off, length))
        if st != G.GNTST_okay:
            return st, 0, None

        def release() -> None:
            gt.release(ref_or_mfn, readonly)
    else:
        mfn = ref_or_mfn
        if not d.owns(mfn) or d.hypervisor_held(mfn):
            return G.GNTST_bad_page, 0, None

        def release() -> None:
            pass
    if not readonly:
        if mem.type_count[mfn] and mem.type[mfn] != PageType.writable:
            release()
            return G.GNTST_general_error, 0, None
    return G.GNTST_okay, mfn, release


def gnttab_copy(v: "Vcpu", src: tuple[int, int, int], dst: tuple[int, int, int], length: int,
                flags: int) -> int:
    """One struct gnttab_copy: its status."""
    if flags & ~(G.GNTCOPY_source_gref | G.GNTCOPY_dest_gref):
        return G.GNTST_bad_copy_arg
    if src[2] + length > PAGE_SIZE or dst[2] + length > PAGE_SIZE:
        return G.GNTST_bad_copy_arg
    st, smfn, srel = _copy_buf(v, bool(flags & G.GNTCOPY_source_gref), src[0], src[1], src[2],
                               length, True)
    if st != G.GNTST_okay:
        return st
    st, dmfn, drel = _copy_buf(v, bool(flags & G.GNTCOPY_dest_gref), dst[0], dst[1], dst[2],
                               length, False)
    if st != G.GNTST_okay:
        srel()
        return st
    mem = v.domain.mem
    s = (smfn << PAGE_SHIFT) + src[2]
    t = (dmfn << PAGE_SHIFT) + dst[2]
    mem.view[t:t + length] = bytes(mem.view[s:s + length])
    drel()
    srel()
    return G.GNTST_okay


def gnttab_transfer(v: "Vcpu", mfn: int, domid: int, ref: int) -> int:
    """One struct gnttab_transfer: give page ``mfn`` to ``domid`` through its entry ``ref``."""
    d = v.domain
    mem = d.mem
    if not d.owns(mfn) or d.hypervisor_held(mfn):
        return G.GNTST_bad_page
    if mem.ref_count[mfn] != 1 or mem.type_count[mfn] or mem.pinned[mfn]:
        return G.GNTST_bad_page                 # steal_page: mapped or typed pages stay
    # steal_page: from here on the page is no longer the caller's
    pfn = mm._p2m_index(d, mfn)
    if pfn is not None:
        d.p2m[pfn] = -1
    d.unplaced.discard(mfn)
    mem.set_m2p(mfn, None)
    e = _lookup(v, domid)
    status = G.GNTST_okay
    if e is None or e is d:
        status = G.GNTST_bad_domain
    elif e.nr_pages >= e.max_pages:
        status = G.GNTST_general_error
    else:
        egt = table(e)
        if ref >= egt.nr_entries:
            status = G.GNTST_bad_gntref
        else:
            flags, edom = egt.header(ref)
            if flags & G.GTF_type_mask != G.GTF_accept_transfer or edom != d.domid:
                status = G.GNTST_general_error
    if status != G.GNTST_okay:
        mem.free_frames_of([mfn])               # as Xen: a failed transfer frees the page
        return status
    a = egt._entry(ref)
    gpfn = egt.frame(ref)
    mem.owner[mfn] = e.domid
    e.unplaced.add(mfn)                         # the allocation reference is now e's
    mm.set_gpfn_from_mfn(e, mfn, gpfn)
    if egt.version == 1:
        struct.pack_into("<I", mem.buf, a + 4, mfn & 0xFFFFFFFF)
    else:
        struct.pack_into("<Q", mem.buf, a + 8, mfn)
    flags = struct.unpack_from("<H", mem.buf, a)[0]
    struct.pack_into("<H", mem.buf, a, flags | G.GTF_transfer_committed | G.GTF_transfer_completed)
    return G.GNTST_okay


# --- set_version / status frames -----------------------------------------------------------------
def set_version(d: "Domain", version: int) -> int:
    gt = table(d)
    if version not in (1, 2):
        return -Errno.EINVAL
    if version == gt.version:
        return 0
    if gt.active or any(bm.live for bm in gt.backend_maps):
        return -Errno.EBUSY
    keep = min(GNTTAB_NR_RESERVED_ENTRIES, gt.nr_entries)
    saved = [(gt.header(r), gt.frame(r)) for r in range(keep)]
    mem = d.mem
    if version == 1:
        for mfn in gt.status:
            if mem.ref_count[mfn] != 1:
                return -Errno.EBUSY             # the guest still maps a status frame
        d.special_frames.difference_update(gt.status)
        mem.free_frames_of(list(gt.status))
        gt.status.clear()
    for mfn in gt.shared:
        mem.page(mfn)[:] = bytes(PAGE_SIZE)
    gt.version = version
    if version == 2:
        _grow_status(gt)
    for r, ((flags, domid), frame) in enumerate(saved):
        a = gt._entry(r)
        struct.pack_into("<HH", mem.buf, a, flags & ~(G.GTF_reading | G.GTF_writing), domid)
        if version == 1:
            struct.pack_into("<I", mem.buf, a + 4, frame & 0xFFFFFFFF)
        else:
            struct.pack_into("<Q", mem.buf, a + 8, frame)
    return 0


# --- the hypercall -------------------------------------------------------------------------------
def _query_target(v: "Vcpu", dom: int) -> int:
    """GNTST for naming ``dom`` in a table query: self is fine, others need privilege."""
    if dom in (DOMID_SELF, v.domain.domid):
        return G.GNTST_okay
    return G.GNTST_bad_domain if _lookup(v, dom) is None else G.GNTST_permission_denied


def _elements(g, uop: int, count: int, fmt: str):
    """The batch layer: copy element ``i`` of a guest's uop array in once (a bad pointer is
    GuestFault, i.e. -EFAULT) and yield (its address, its fields); the caller does the work
    and writes that element's status back."""
    size = struct.calcsize(fmt)
    for i in range(count):
        a = uop + size * i
        yield a, struct.unpack(fmt, g.read(a, size))


@hypercall("grant_table_op", 3)
def do_grant_table_op(v: "Vcpu", cmd: int, uop: int, count: int) -> int:
    d = v.domain
    g = v.gmem
    w = d.width
    count &= 0xFFFFFFFF
    if count > MAX_BATCH and cmd != G.GNTTABOP_cache_flush:
        return -Errno.EINVAL
    if cmd == G.GNTTABOP_map_grant_ref:
        for a, (host_addr, flags, ref, dom, _st, _h, _dev) in _elements(g, uop, count,
                                                                        G.MAP_GRANT_REF):
            st, handle, dev = map_grant_ref(v, host_addr, flags, ref, dom)
            g.write(a + 18, struct.pack("<hIQ", st, handle, dev))
        return 0
    if cmd == G.GNTTABOP_unmap_grant_ref:
        for a, (host_addr, dev, handle, _st) in _elements(g, uop, count, G.UNMAP_GRANT_REF):
            g.write(a + 20, struct.pack("<h", unmap_grant_ref(v, host_addr, dev, handle)))
        return 0
    if cmd == G.GNTTABOP_unmap_and_replace:
        for a, (host_addr, new_addr, handle, _st) in _elements(g, uop, count,
                                                               G.UNMAP_AND_REPLACE):
            g.write(a + 20, struct.pack("<h", unmap_and_replace(v, host_addr, new_addr, handle)))
        return 0
    if cmd == G.GNTTABOP_setup_table:
        for a, (dom, nr, _st, flist) in _elements(g, uop, count, G.SETUP_TABLE[w]):
            status = _query_target(v, dom)
            if status == G.GNTST_okay and not grow(table(d), nr):
                status = G.GNTST_general_error
            if status == G.GNTST_okay:
                for j in range(nr):
                    g.write_ulong(flist + w * j, d.grant_frames[j])
            g.write(a + 8, struct.pack("<h", status))
        return 0
    if cmd == G.GNTTABOP_query_size:
        size = struct.calcsize(G.QUERY_SIZE)
        for i in range(count):
            a = uop + size * i
            dom = struct.unpack("<H", g.read(a, 2))[0]
            status = _query_target(v, dom)
            g.write(a + 4, struct.pack("<IIh", len(d.grant_frames), MAX_GRANT_FRAMES, status))
        return 0
    if cmd == G.GNTTABOP_dump_table:
        for i in range(count):
            a = uop + 4 * i
            dom = struct.unpack("<H", g.read(a, 2))[0]
            status = _query_target(v, dom)
            if status == G.GNTST_okay:
                gt = table(d)
                log.info("d%d grant table v%d: %d entries, %d active, %d maptrack", d.domid,
                         gt.version, gt.nr_entries, len(gt.active),
                         sum(m is not None for m in gt.maptrack))
                for ref, act in sorted(gt.active.items()):
                    log.info("  ref %d: frame %#x pins ro %d rw %d", ref, act.frame,
                             act.pin_ro, act.pin_rw)
            g.write(a + 2, struct.pack("<h", status))
        return 0
    if cmd == G.GNTTABOP_transfer:
        for a, (mfn, domid, ref, _st) in _elements(g, uop, count, G.TRANSFER[w]):
            st = gnttab_transfer(v, mfn, domid, ref)
            g.write(a + (12 if w == 4 else 16), struct.pack("<h", st))
        return 0
    if cmd == G.GNTTABOP_copy:
        size = struct.calcsize(G.COPY[w])
        for a, (su, sdom, soff, du, ddom, doff, length, flags, _st) in _elements(
                g, uop, count, G.COPY[w]):
            st = gnttab_copy(v, (su, sdom, soff), (du, ddom, doff), length, flags)
            g.write(a + size - 4, struct.pack("<h", st))
        return 0
    if cmd == G.GNTTABOP_set_version:
        ver = g.read_u32(uop)
        rc = set_version(d, ver)
        g.write_u32(uop, table(d).version)
        return rc
    if cmd == G.GNTTABOP_get_version:
        dom = struct.unpack("<H", g.read(uop, 2))[0]
        if _query_target(v, dom) != G.GNTST_okay:
            return -Errno.EPERM if _lookup(v, dom) else -Errno.ESRCH
        g.write(uop + 4, struct.pack("<I", table(d).version))
        return 0
    if cmd == G.GNTTABOP_get_status_frames:
        fmt = G.GET_STATUS_FRAMES[w]
        nr, dom, _st, flist = struct.unpack(fmt, g.read(uop, struct.calcsize(fmt)))
        status = _query_target(v, dom)
        gt = table(d)
        if status == G.GNTST_okay and (gt.version != 2 or nr > len(gt.status)):
            status = G.GNTST_general_error
        if status == G.GNTST_okay:
            g.write(flist, struct.pack(f"<{nr}Q", *gt.status[:nr]))
        g.write(uop + 6, struct.pack("<h", status))
        return 0
    if cmd == G.GNTTABOP_swap_grant_ref:
        gt = table(d)
        for a, (ra, rb, _st) in _elements(g, uop, count, G.SWAP_GRANT_REF):
            if ra >= gt.nr_entries or rb >= gt.nr_entries:
                st = G.GNTST_bad_gntref
            elif ra in gt.active or rb in gt.active:
                st = G.GNTST_eagain
            else:
                esz = PAGE_SIZE // gt.per_frame
                ea, eb = gt._entry(ra), gt._entry(rb)
                xa, xb = d.mem.read(ea, esz), d.mem.read(eb, esz)
                d.mem.write(ea, xb)
                d.mem.write(eb, xa)
                st = G.GNTST_okay
            g.write(a + 8, struct.pack("<h", st))
        return 0
    if cmd == G.GNTTABOP_cache_flush:
        if count > MAX_BATCH:
            return -Errno.EINVAL
        size = struct.calcsize(G.CACHE_FLUSH)
        for i in range(count):
            rc = _cache_flush(v, *struct.unpack(G.CACHE_FLUSH, g.read(uop + size * i, size)))
            if rc:
                return rc
        return 0
    d.log_once(f"gnttab {cmd}", "grant_table_op %d not implemented", cmd)
    return -Errno.ENOSYS


def _cache_flush(v: "Vcpu", addr: int, offset: int, length: int, op: int) -> int:
    """GNTTABOP_cache_flush: checks as Xen; x86 caches are coherent, so nothing to do."""
    if op & ~(G.GNTTAB_CACHE_INVAL | G.GNTTAB_CACHE_CLEAN | G.GNTTAB_CACHE_SOURCE_GREF):
        return -Errno.EOPNOTSUPP
    if offset + length > PAGE_SIZE:
        return -Errno.EINVAL
    if not length or not op & (G.GNTTAB_CACHE_INVAL | G.GNTTAB_CACHE_CLEAN):
        return 0
    d = v.domain
    if op & G.GNTTAB_CACHE_SOURCE_GREF:
        if (addr & 0xFFFFFFFF) >= table(d).nr_entries:
            return -Errno.EINVAL
        return 0
    mfn = addr >> PAGE_SHIFT
    mapped = any(m.mfn == mfn for m in maptrack_refs(d) if isinstance(m, MapTrack))
    if not (d.owns(mfn) or mapped):
        return -Errno.EPERM
    return 0
