"""Sans-IO blkif request parsing: ring slot bytes in, typed requests out.

The frontend owns the ring page and may change a slot while we look at it, so a slot is
copied once (``bytes``) and everything is decided on that copy (Xen's RING_COPY_REQUEST).
``parse_request`` never raises on guest data: anything wrong becomes ``Invalid`` (answered
BLKIF_RSP_ERROR) and an unknown operation ``Unsupported`` (BLKIF_RSP_EOPNOTSUPP), as
Linux's blkback dispatch_rw_block_io does.  Checks against the disk (sectors past the
end, writes to a read-only disk) happen in ``check_bounds`` once the geometry is known;
indirect requests are resolved in two steps because their segment lists live in
granted pages the caller has to map first (``parse_indirect_segments``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from operator import itemgetter

from ...abi.io import blkif as B

SECTORS_PER_PAGE = 4096 >> B.SECTOR_SHIFT

#: SEGMENTS[n] unpacks n consecutive blkif_request_segments in one call (the hot path:
#: a 64 KiB request has 16, and one unpack beats 16)
SEGMENTS = tuple(struct.Struct("<" + B.SEGMENT.format.lstrip("<") * n)
                 for n in range(B.MAX_INDIRECT_SEGMENTS + 1))


#: struct blkif_request_segment as (gref, first_sect, last_sect): sectors [first_sect,
#: last_sect] of one granted page.  A plain tuple: a request carries up to 256 of them and
#: building them is the hot path of every 64 KiB request.
Segment = tuple[int, int, int]
_FIRST, _LAST = itemgetter(1), itemgetter(2)

_DATA_OPS = frozenset((B.BLKIF_OP_READ, B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER,
                       B.BLKIF_OP_FLUSH_DISKCACHE))
_WRITE_OPS = frozenset((B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE))
_FLUSH_OPS = frozenset((B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE))


@dataclass(frozen=True, slots=True)
class ReadWrite:
    """READ, WRITE, WRITE_BARRIER or FLUSH_DISKCACHE (the last two may carry data)."""
    id: int
    op: int                     # the operation echoed in the response
    sector: int
    segments: tuple[Segment, ...]

    @property
    def writes(self) -> bool:
        return self.op in _WRITE_OPS

    @property
    def flushes(self) -> bool:
        return self.op in _FLUSH_OPS

    @property
    def nr_sectors(self) -> int:
        segs = self.segments
        return sum(map(_LAST, segs)) - sum(map(_FIRST, segs)) + len(segs)


@dataclass(frozen=True, slots=True)
class Discard:
    id: int
    sector: int
    nr_sectors: int
    secure: bool
    op: int = B.BLKIF_OP_DISCARD


@dataclass(frozen=True, slots=True)
class Indirect:
    """BLKIF_OP_INDIRECT before its segment pages are mapped."""
    id: int
    indirect_op: int
    sector: int
    nr_segments: int
    indirect_grefs: tuple[int, ...]       # only the pages nr_segments needs
    op: int = B.BLKIF_OP_INDIRECT


@dataclass(frozen=True, slots=True)
class Unsupported:
    id: int
    op: int


@dataclass(frozen=True, slots=True)
class Invalid:
    id: int
    op: int
    reason: str


Request = ReadWrite | Discard | Indirect | Unsupported | Invalid


def _segments(raw: bytes, off: int, n: int) -> tuple[Segment, ...] | str:
    flat = SEGMENTS[n].unpack_from(raw, off)
    firsts, lasts = flat[1::4], flat[2::4]
    if firsts.count(0) == n and lasts.count(SECTORS_PER_PAGE - 1) == n:
        pass                                      # whole pages: the usual case
    elif max(lasts) >= SECTORS_PER_PAGE or any(map(int.__gt__, firsts, lasts)):
        i = next(i for i in range(n) if not firsts[i] <= lasts[i] < SECTORS_PER_PAGE)
        return f"segment {i}: expected 0 <= first_sect <= last_sect < {SECTORS_PER_PAGE}, " \
               f"got {firsts[i]}..{lasts[i]}"
    return tuple(zip(flat[0::4], firsts, lasts))


def parse_request(slot: bytes, layout: B.Layout, max_indirect: int = B.MAX_INDIRECT_SEGMENTS
                  ) -> Request:
    """One ring slot (``layout.entry_size`` bytes) as a typed request."""
    op = slot[0]
    if op in _DATA_OPS:
        _, nseg, _handle, rid, sector = layout.request.unpack_from(slot)
        if nseg > B.BLKIF_MAX_SEGMENTS_PER_REQUEST:
            return Invalid(rid, op, f"nr_segments: expected <= "
                                    f"{B.BLKIF_MAX_SEGMENTS_PER_REQUEST}, got {nseg}")
        if nseg == 0 and op in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE):
            return Invalid(rid, op, "nr_segments: expected >= 1 for a read or write, got 0")
        segs = _segments(slot, layout.seg_offset, nseg)
        if isinstance(segs, str):
            return Invalid(rid, op, segs)
        return ReadWrite(rid, op, sector, segs)
    if op == B.BLKIF_OP_DISCARD:
        _, flag, _handle, rid, sector, nr = layout.discard.unpack_from(slot)
        return Discard(rid, sector, nr, bool(flag & B.BLKIF_DISCARD_SECURE))
    if op == B.BLKIF_OP_INDIRECT:
        _, iop, nseg, rid, sector, _handle, *grefs = layout.indirect.unpack_from(slot)
        if iop not in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE):
            return Invalid(rid, op, f"indirect_op: expected READ or WRITE, got {iop}")
        if not 0 < nseg <= max_indirect:
            return Invalid(rid, op, f"nr_segments: expected 1..{max_indirect}, got {nseg}")
        pages = -(-nseg // B.SEGS_PER_INDIRECT_FRAME)
        return Indirect(rid, iop, sector, nseg, tuple(grefs[:pages]))
    return Unsupported(layout.request.unpack_from(slot)[3], op)


def parse_indirect_segments(req: Indirect, pages: list[bytes]) -> ReadWrite | Invalid:
    """The segment list of an indirect request, from copies of its mapped pages."""
    raw = b"".join(pages)
    segs = _segments(raw, 0, req.nr_segments)
    if isinstance(segs, str):
        return Invalid(req.id, req.op, f"indirect {segs}")
    return ReadWrite(req.id, req.indirect_op, req.sector, segs)


def check_bounds(req: ReadWrite | Discard, sectors: int, readonly: bool) -> str | None:
    """Why the request may not run on a disk of ``sectors`` 512-byte sectors, or None."""
    if isinstance(req, Discard):
        if readonly:
            return "discard on a read-only disk"
        n = req.nr_sectors
    else:
        if req.writes and req.segments and readonly:
            return "write to a read-only disk"
        n = req.nr_sectors
    if req.sector >= (1 << 64) or req.sector + n > sectors:
        return f"sectors [{req.sector}, +{n}) past the end of the disk ({sectors} sectors)"
    return None


def response(layout: B.Layout, rid: int, op: int, status: int) -> bytes:
    return layout.response.pack(rid & 0xFFFF_FFFF_FFFF_FFFF, op & 0xFF, status)


def response_into(layout: B.Layout, buf: memoryview, off: int, rid: int, op: int,
                  status: int) -> None:
    """``response`` written straight into the ring page (no intermediate bytes)."""
    layout.response.pack_into(buf, off, rid & 0xFFFF_FFFF_FFFF_FFFF, op & 0xFF, status)
