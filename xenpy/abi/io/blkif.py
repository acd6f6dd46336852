"""xen/io/blkif.h: the block-device ring protocol (requests, responses, XenStore keys).

The request layout depends on the frontend's ABI ("protocol" key: x86_32-abi packs
uint64_t on 4 bytes, x86_64-abi on 8), so every struct here exists once per ABI;
``Layout`` picks one.  Slots are the union of request and response: 108 bytes on
x86_32, 112 on x86_64, so one page holds 32 entries either way.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..xen import Width

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_DISCARD_SECURE = 1 << 0

BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi"
XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi"

#: Segments are described in 512-byte units whatever the disk's sector-size.
SECTOR_SHIFT = 9
SECTOR_SIZE = 1 << SECTOR_SHIFT
#: struct blkif_request_segment: gref, first_sect, last_sect, pad (8 bytes either ABI).
SEGMENT = struct.Struct("<IBBH")
#: indirect pages hold this many segments each
SEGS_PER_INDIRECT_FRAME = 4096 // SEGMENT.size
#: what this blkback offers as feature-max-indirect-segments (Linux blkback's default)
MAX_INDIRECT_SEGMENTS = 256
#: max-ring-page-order offered (Linux blkback's xen_blkif_max_ring_order default is 4)
MAX_RING_PAGE_ORDER = 4


@dataclass(frozen=True)
class Layout:
    """The blkif structs of one ABI, as ``struct`` formats."""
    name: str
    request: struct.Struct          # op, nr_segments, handle, id, sector (then 11 segments)
    discard: struct.Struct          # op, flag, handle, id, sector, nr_sectors
    indirect: struct.Struct         # op, indirect_op, nr_segments, id, sector, handle, grefs[8]
    response: struct.Struct         # id, op, status
    seg_offset: int                 # offset of seg[0] in blkif_request
    entry_size: int                 # sizeof(union blkif_sring_entry)


LAYOUT_32 = Layout(XEN_IO_PROTO_ABI_X86_32,
                   struct.Struct("<BBHQQ"), struct.Struct("<BBHQQQ"),
                   struct.Struct("<BBHQQH2x8I"), struct.Struct("<QBxh"),
                   20, 108)
LAYOUT_64 = Layout(XEN_IO_PROTO_ABI_X86_64,
                   struct.Struct("<BBH4xQQ"), struct.Struct("<BBH4xQQQ"),
                   struct.Struct("<BBH4xQQH2x8I"), struct.Struct("<QBxh4x"),
                   24, 112)
LAYOUTS = {LAYOUT_32.name: LAYOUT_32, LAYOUT_64.name: LAYOUT_64}


def native_layout(width: Width) -> Layout:
    return LAYOUT_64 if width == Width.X86_64 else LAYOUT_32
