"""A hostile frontend gets nowhere: error responses, or the ring marked broken; the host
never crashes and never touches bytes outside the image."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from xenpy.abi.io import blkif as B
from xenpy.abi.io.xenbus import XenbusState as S
from xenpy.backends.blkback import protocol as P

from .frontend import FakeFront, boot_front

OK, ERR, NOTSUPP = B.BLKIF_RSP_OKAY, B.BLKIF_RSP_ERROR, B.BLKIF_RSP_EOPNOTSUPP
SECTORS = (4 << 20) // 512


@pytest.fixture
def front(domain_factory, blkback, image, width):
    f = FakeFront(boot_front(domain_factory, width), blkback, f"file:{image},xvda,w")
    f.attach()
    f.connect()
    return f


def test_bad_grant_refs(front, image):
    ref = front.grant_data(0)
    front.g.grant(front.data_ref0 + 1, 5, front.data_mfns[1])          # granted to d5
    ro = front.grant_data(2, readonly=True)
    assert front.do(
        front.rw(B.BLKIF_OP_WRITE, 0, [(ref, 0, 0), (front.data_ref0 + 9, 0, 0)]),  # not granted
        front.rw(B.BLKIF_OP_READ, 0, [(front.data_ref0 + 1, 0, 0)]),
        front.rw(B.BLKIF_OP_READ, 0, [(ro, 0, 0)]),          # a read writes the guest page
        front.rw(B.BLKIF_OP_READ, 0, [(0xFFFF_FFF0, 0, 0)]),
    ) == [ERR] * 4
    assert image.read_bytes() == bytes(4 << 20)                  # nothing was written
    assert front.do(front.rw(B.BLKIF_OP_WRITE, 0, [(ro, 0, 0)])) == [OK]
    assert front.g.end_grant(ref) and front.g.end_grant(ro)     # nothing left mapped


def test_sectors_past_the_end(front, image):
    ref = front.grant_data(0)
    front.data(0)[:] = b"Z" * 4096
    assert front.do(
        front.rw(B.BLKIF_OP_WRITE, SECTORS, [(ref, 0, 0)]),
        front.rw(B.BLKIF_OP_WRITE, SECTORS - 4, [(ref, 0, 7)]),
        front.rw(B.BLKIF_OP_READ, (1 << 64) - 1, [(ref, 0, 0)]),
        front.discard(SECTORS - 1, 2),
        front.discard(1, (1 << 64) - 1),
    ) == [ERR] * 5
    assert front.do(front.rw(B.BLKIF_OP_WRITE, SECTORS - 8, [(ref, 0, 7)])) == [OK]
    assert os.path.getsize(image) == 4 << 20
    assert image.read_bytes()[-4096:] == b"Z" * 4096


def test_unknown_ops_and_bad_segments(front):
    ref = front.grant_data(0)
    too_many = front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)] * 11)
    too_many = too_many[:1] + bytes([12]) + too_many[2:]
    assert front.do(
        front.rw(B.BLKIF_OP_RESERVED_1, 0, [(ref, 0, 0)]),
        front.rw(99, 0, []),
        too_many,
        front.rw(B.BLKIF_OP_READ, 0, []),                    # no segments
        front.rw(B.BLKIF_OP_READ, 0, [(ref, 3, 2)]),          # first > last
        front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 8)]),          # past the page
        front.indirect(B.BLKIF_OP_READ, 0, B.MAX_INDIRECT_SEGMENTS + 1, [ref]),
        front.indirect(B.BLKIF_OP_FLUSH_DISKCACHE, 0, 1, [ref]),
        front.indirect(B.BLKIF_OP_READ, 0, 1, [front.data_ref0 + 30]),   # indirect page not granted
    ) == [NOTSUPP, NOTSUPP] + [ERR] * 7
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)])) == [OK]   # still serving


def test_bogus_ring_index_marks_frontend_broken(front, blkback):
    ref = front.grant_data(0)
    front.req_prod = 1000                      # prod - cons > ring size
    front.push(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)]))
    assert front.complete() == []
    ring = blkback.ring(front.domid, front.disk.devid)
    assert ring.broken and "exceeds the ring size" in ring.broken
    assert blkback.list(front.domid)[0].broken == ring.broken
    front.push(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)]))
    assert front.complete() == []              # ignored from now on
    # a broken frontend still closes cleanly, and may reconnect with a fresh ring
    front.set_state(S.Closing)
    front.set_state(S.Closed)
    assert blkback.ring(front.domid, front.disk.devid) is None
    front.set_state(S.Initialising)
    front.connect()
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)])) == [OK]


def test_indices_wrap_at_2_32(front):
    """A ring whose free-running indices cross 2**32 (the backend attaches at rsp_prod)."""
    front.set_state(S.Closing)
    front.set_state(S.Closed)
    front.set_state(S.Initialising)
    start = 0xFFFF_FFF0
    front.connect(start=start)
    ref = front.grant_data(0)
    for _ in range(3):
        assert front.do(*[front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)]) for _ in range(10)]) \
            == [OK] * 10
    assert front.req_prod == (start + 30) & 0xFFFF_FFFF < start


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=112, max_size=112), st.sampled_from([B.LAYOUT_32, B.LAYOUT_64]))
def test_parser_never_raises(raw, layout):
    req = P.parse_request(raw[:layout.entry_size], layout)
    assert isinstance(req, (P.ReadWrite, P.Discard, P.Indirect, P.Unsupported, P.Invalid))
    if isinstance(req, (P.ReadWrite, P.Discard)):
        why = P.check_bounds(req, SECTORS, readonly=False)
        if why is None:
            assert req.sector + req.nr_sectors <= SECTORS


def test_random_slots_through_the_ring(front, image):
    """Garbage requests (with some real grant refs mixed in): one response each, image size
    unchanged, no exception."""
    rng = random.Random(1234)
    refs = [front.grant_data(i) for i in range(8)]
    for _ in range(20):
        batch = []
        for _ in range(16):
            raw = bytearray(rng.randbytes(front.layout.entry_size))
            raw[0] = rng.choice([0, 1, 2, 3, 5, 6, 7, 200])
            if rng.random() < 0.5:
                for k in range(min(raw[1], 11)):
                    B.SEGMENT.pack_into(raw, front.layout.seg_offset + 8 * k,
                                        rng.choice(refs), rng.randrange(8), rng.randrange(9), 0)
                front.layout.request.pack_into(raw, 0, raw[0], raw[1] % 12, 0, 0,
                                               rng.randrange(SECTORS + 16))
            batch.append(bytes(raw))
        front.push(*batch)
        assert len(front.complete()) == 16
    assert os.path.getsize(image) == 4 << 20
    assert all(front.g.end_grant(r) for r in refs)
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(front.grant_data(0), 0, 0)])) == [OK]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 9), st.integers(0, 9)),
                min_size=1, max_size=B.MAX_INDIRECT_SEGMENTS),
       st.booleans())
def test_segment_parsing_matches_the_definition(segs, whole):
    """The batched segment parser (one unpack, a whole-page shortcut) decides exactly as a
    segment-by-segment reading of blkif.h: 0 <= first_sect <= last_sect < 8, else refused
    naming the first bad segment."""
    if whole:
        segs = [(g, 0, 7) for g, _, _ in segs]
    raw = b"".join(B.SEGMENT.pack(g, f, la, 0) for g, f, la in segs)
    req = P.parse_indirect_segments(P.Indirect(1, B.BLKIF_OP_READ, 0, len(segs), (5,)), [raw])
    bad = next((i for i, (_, f, la) in enumerate(segs) if not f <= la < 8), None)
    if bad is None:
        assert isinstance(req, P.ReadWrite)
        assert list(req.segments) == segs
        assert req.nr_sectors == sum(la - f + 1 for _, f, la in segs)
    else:
        assert isinstance(req, P.Invalid) and f"segment {bad}:" in req.reason


def test_a_blkback_bug_fails_one_request_not_the_host(front, monkeypatch, caplog):
    """An exception inside blkback (a bug, not the frontend's fault) answers that request
    with an error and is logged; the ring, the guest and the host go on."""
    from xenpy.backends.blkback.backend import BlkifRing
    ref = front.grant_data(0)
    real = BlkifRing._dispatch
    calls = []

    def buggy(self, req):
        calls.append(req)
        if len(calls) == 1:
            raise RuntimeError("simulated blkback bug")
        return real(self, req)
    monkeypatch.setattr(BlkifRing, "_dispatch", buggy)
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)])) == [ERR]
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)])) == [OK]
    ring = front.bb.ring(front.g.domid, front.disk.devid)
    assert ring.stats.internal_errors == 1 and ring.broken is None
    assert "simulated blkback bug" in caplog.text
