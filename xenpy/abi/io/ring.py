"""xen/io/ring.h: the shared-ring index arithmetic, as a hostile-peer-aware backend uses it.

A shared ring page starts with ``struct <name>_sring``: four free-running 32-bit indices
(req_prod, req_event, rsp_prod, rsp_event), 4 bytes of private padding and 44 of padding,
then the entries (a union of request and response, so both share one slot size).
Indices wrap at 2**32; a slot is ``index & (nr_ents - 1)``.  The number of entries is
``__RING_SIZE``: the largest power of two that fits after the header.

A backend must never trust the frontend's ``req_prod``: if ``req_prod - req_cons`` (mod
2**32) exceeds the ring size the frontend is broken (Xen's RING_REQUEST_PROD_OVERFLOW).
"""
from __future__ import annotations

import struct

from ..xen import PAGE_SIZE

RING_IDX_MASK = 0xFFFF_FFFF
SRING_HEADER_SIZE = 64          # 4 indices + pvt (4) + __pad (44)
OFF_REQ_PROD, OFF_REQ_EVENT, OFF_RSP_PROD, OFF_RSP_EVENT = 0, 4, 8, 12
_U32 = struct.Struct("<I")


def ring_size(entry_size: int, nr_pages: int = 1) -> int:
    """__RING_SIZE: entries that fit in ``nr_pages`` pages, rounded down to a power of 2."""
    n = (nr_pages * PAGE_SIZE - SRING_HEADER_SIZE) // entry_size
    return 1 << (n.bit_length() - 1) if n else 0


def idx_sub(a: int, b: int) -> int:
    """a - b on RING_IDX (uint32) arithmetic."""
    return (a - b) & RING_IDX_MASK


def idx_add(a: int, n: int) -> int:
    return (a + n) & RING_IDX_MASK


def request_prod_overflow(req_prod: int, req_cons: int, nr_ents: int) -> bool:
    """RING_REQUEST_PROD_OVERFLOW: the frontend claims more requests than slots."""
    return idx_sub(req_prod, req_cons) > nr_ents


def get_u32(buf: memoryview, off: int) -> int:
    return _U32.unpack_from(buf, off)[0]


def put_u32(buf: memoryview, off: int, val: int) -> None:
    _U32.pack_into(buf, off, val & RING_IDX_MASK)


def final_check_for_requests(buf: memoryview, req_cons: int) -> bool:
    """RING_FINAL_CHECK_FOR_REQUESTS: set req_event = req_cons + 1, then recheck, so a
    request the frontend pushes meanwhile is never missed."""
    if idx_sub(get_u32(buf, OFF_REQ_PROD), req_cons):
        return True
    put_u32(buf, OFF_REQ_EVENT, req_cons + 1)
    return bool(idx_sub(get_u32(buf, OFF_REQ_PROD), req_cons))


def push_responses_and_check_notify(buf: memoryview, rsp_prod_pvt: int) -> bool:
    """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish rsp_prod; notify only if the
    frontend's rsp_event lies in (old, new]."""
    old = get_u32(buf, OFF_RSP_PROD)
    put_u32(buf, OFF_RSP_PROD, rsp_prod_pvt)
    event = get_u32(buf, OFF_RSP_EVENT)
    return idx_sub(rsp_prod_pvt, event) < idx_sub(rsp_prod_pvt, old)
