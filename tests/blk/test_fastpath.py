"""blkback's fast path: page-cache hits done inline on the scheduler thread (RWF_NOWAIT),
everything else on the worker, in order, with the same dirty marking and drain()."""
from __future__ import annotations

import errno
import os

import pytest

from xenpy.abi.io import blkif as B
from xenpy.abi.io import ring as R
from xenpy.abi.io.xenbus import XenbusState as S
from xenpy.backends.blkback import image as image_mod

from .frontend import FakeFront, boot_front

OK = B.BLKIF_RSP_OKAY
needs_nowait = pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT")


def _front(domain_factory, blkback, image, width, persistent):
    f = FakeFront(boot_front(domain_factory, width), blkback, f"file:{image},xvda,w")
    f.persistent = persistent
    f.attach()
    f.connect()
    assert f.be_state() == S.Connected
    return f


@pytest.fixture(params=[False, True], ids=["per-request", "persistent"])
def front(request, domain_factory, blkback, image, width):
    return _front(domain_factory, blkback, image, width, request.param)


def ring_of(f):
    return f.bb.devices[(f.domid, f.disk.devid)].ring


def rsp_prod(f) -> int:
    return R.get_u32(f.page(0), R.OFF_RSP_PROD)


def fill(image, sector: int, data: bytes) -> None:
    """Write into the image from the host (lands in the page cache)."""
    with open(image, "r+b") as fh:
        fh.seek(sector * 512)
        fh.write(data)


@needs_nowait
def test_cached_read_is_answered_inline_and_marks_pages(front, image, monkeypatch):
    marked: list[int] = []
    monkeypatch.setattr(front.g.d.mem, "write_observer", marked.append)
    fill(image, 64, b"\x5a" * 4096 + b"\xa5" * 4096)
    refs = [front.grant_data(i) for i in range(2)]
    ring = ring_of(front)
    before = rsp_prod(front)
    front.push(front.rw(B.BLKIF_OP_READ, 64, [(refs[0], 0, 7), (refs[1], 0, 7)]), notify=False)
    ring.kick()
    # answered within kick(): no worker round trip, nothing left in flight
    assert rsp_prod(front) == before + 1
    assert ring.worker.inflight == 0 and ring.stats.inline == 1
    assert bytes(front.data(0)) == b"\x5a" * 4096 and bytes(front.data(1)) == b"\xa5" * 4096
    assert front.complete() == [(front.next_id - 1, B.BLKIF_OP_READ, OK)]
    # both data pages (the READ filled them) and the ring page (the response) are dirty
    assert {front.data_mfns[0], front.data_mfns[1], front.ring_mfns[0]} <= set(marked)


def test_uncached_read_goes_to_the_worker(front, image, monkeypatch):
    """EAGAIN from preadv2(RWF_NOWAIT) (data not in the page cache): the worker reads it."""
    real = os.preadv
    nowait_calls = []

    def preadv(fd, bufs, offset, flags=0):
        if flags & getattr(os, "RWF_NOWAIT", 0):
            nowait_calls.append(offset)
            raise BlockingIOError(errno.EAGAIN, "would block")
        return real(fd, bufs, offset, flags)
    monkeypatch.setattr(image_mod.os, "preadv", preadv)
    fill(image, 8, b"\x33" * 4096)
    ref = front.grant_data(0)
    ring = ring_of(front)
    before = rsp_prod(front)
    front.push(front.rw(B.BLKIF_OP_READ, 8, [(ref, 0, 7)]), notify=False)
    ring.kick()
    if hasattr(os, "RWF_NOWAIT"):
        assert nowait_calls == [8 * 512]
    assert ring.stats.inline == 0
    assert front.complete() == [(front.next_id - 1, B.BLKIF_OP_READ, OK)]
    assert rsp_prod(front) == before + 1
    assert bytes(front.data(0)) == b"\x33" * 4096
    if hasattr(os, "RWF_NOWAIT"):
        assert ring.image.nowait_read                   # EAGAIN does not disable it


def test_unsupported_nowait_is_asked_once(front, image, monkeypatch):
    """A kernel/file without RWF_NOWAIT (EOPNOTSUPP): everything goes to the worker."""
    real = os.preadv
    calls = []

    def preadv(fd, bufs, offset, flags=0):
        if flags:
            calls.append(flags)
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real(fd, bufs, offset)
    monkeypatch.setattr(image_mod.os, "preadv", preadv)
    ref = front.grant_data(0)
    fill(image, 0, b"\x11" * 4096)
    for _ in range(3):
        assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 7)])) == [OK]
        assert bytes(front.data(0)) == b"\x11" * 4096
    assert len(calls) <= 1 and ring_of(front).stats.inline == 0


def test_read_behind_a_write_sees_it(front, image):
    """Requests run in order: a READ queued behind a WRITE that went to the worker is not
    answered from the cache before the WRITE (inline only when nothing is in flight)."""
    w, r = front.grant_data(0), front.grant_data(1)
    front.data(0)[:] = b"\x77" * 4096
    front.data(1)[:] = bytes(4096)
    fill(image, 16, b"\x01" * 4096)                   # the old data, cached
    front.push(front.rw(B.BLKIF_OP_WRITE, 16, [(w, 0, 7)]),
               front.rw(B.BLKIF_OP_FLUSH_DISKCACHE, 0, []),
               front.rw(B.BLKIF_OP_READ, 16, [(r, 0, 7)]), notify=False)
    ring_of(front).kick()
    rsps = front.complete()
    assert [st for _, _, st in rsps] == [OK, OK, OK]
    assert [op for _, op, _ in rsps] == [B.BLKIF_OP_WRITE, B.BLKIF_OP_FLUSH_DISKCACHE,
                                        B.BLKIF_OP_READ]
    assert bytes(front.data(1)) == b"\x77" * 4096
    assert image.read_bytes()[16 * 512:17 * 512] == b"\x77" * 512


def test_partial_pages_and_many_segments(front, image):
    """Segments that are not whole pages take the slow path of the same dispatch."""
    data = bytes((i * 13) & 0xFF for i in range(11 * 4096))
    fill(image, 200, data)
    refs = [front.grant_data(i) for i in range(11)]
    segs = [(refs[0], 3, 7)] + [(g, 0, 7) for g in refs[1:10]] + [(refs[10], 0, 2)]
    assert front.do(front.rw(B.BLKIF_OP_READ, 200, segs)) == [OK]
    got = bytes(front.data(0)[3 * 512:]) + b"".join(bytes(front.data(i)) for i in range(1, 10)) \
        + bytes(front.data(10)[:3 * 512])
    assert got == data[:len(got)]


def test_indirect_read_inline(front, image):
    nseg = 16
    data = bytes((i * 7 + 1) & 0xFF for i in range(nseg * 4096))
    fill(image, 0, data)
    refs = [front.grant_data(i) for i in range(nseg)]
    ind = front.grant_data(nseg)
    seglist = b"".join(B.SEGMENT.pack(g, 0, 7, 0) for g in refs)
    front.data(nseg)[:len(seglist)] = seglist
    for _ in range(2):                      # the second time with the grants persistent
        for i in range(nseg):
            front.data(i)[:] = bytes(4096)
        assert front.do(front.indirect(B.BLKIF_OP_READ, 0, nseg, [ind])) == [OK]
        assert b"".join(bytes(front.data(i)) for i in range(nseg)) == data


def test_drain_answers_everything_taken(front, image):
    """drain(): afterwards req_cons == rsp_prod, inline and worker requests alike."""
    refs = [front.grant_data(i) for i in range(4)]
    for i in range(4):
        front.data(i)[:] = bytes([i + 1]) * 4096
    front.push(front.rw(B.BLKIF_OP_READ, 0, [(refs[0], 0, 7)]),
               front.rw(B.BLKIF_OP_WRITE, 8, [(refs[1], 0, 7)]),
               front.rw(B.BLKIF_OP_READ, 16, [(refs[2], 0, 7)]),
               front.rw(B.BLKIF_OP_WRITE, 24, [(refs[3], 0, 7)]))   # notify: a queued kick
    ring = ring_of(front)
    ring.drain(timeout=10)
    assert ring.req_cons == rsp_prod(front) == front.req_prod
    assert image.read_bytes()[24 * 512:25 * 512] == b"\x04" * 512


def test_dataless_requests_when_idle(front, image):
    """FLUSH_DISKCACHE and WRITE_BARRIER without data, with nothing in flight (after a
    read answered inline): they go to the worker (fdatasync may block), answered OKAY."""
    ref = front.grant_data(0)
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 7)])) == [OK]
    assert front.do(front.rw(B.BLKIF_OP_FLUSH_DISKCACHE, 0, [])) == [OK]
    assert front.do(front.rw(B.BLKIF_OP_WRITE_BARRIER, 0, [])) == [OK]
    assert front.do(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 7)])) == [OK]
