"""Every blkif operation against a real image file, and read-only enforcement."""
from __future__ import annotations

import os

import pytest

from xenpy.abi.io import blkif as B
from xenpy.abi.io.xenbus import XenbusState as S

from .frontend import FakeFront, boot_front

OK, ERR, NOTSUPP = B.BLKIF_RSP_OKAY, B.BLKIF_RSP_ERROR, B.BLKIF_RSP_EOPNOTSUPP


@pytest.fixture
def front(domain_factory, blkback, image, width):
    f = FakeFront(boot_front(domain_factory, width), blkback, f"file:{image},xvda,w")
    f.attach()
    f.connect()
    assert f.be_state() == S.Connected
    return f


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def test_write_then_read_back(front, image):
    refs = [front.grant_data(i) for i in range(3)]
    for i in range(3):
        front.data(i)[:] = pattern(i, 4096)
    # sectors 2..7 of page 0, all of page 1, sectors 0..3 of page 2: 6 + 8 + 4 sectors
    assert front.do(front.rw(B.BLKIF_OP_WRITE, 100,
                             [(refs[0], 2, 7), (refs[1], 0, 7), (refs[2], 0, 3)])) == [OK]
    expect = pattern(0, 4096)[1024:] + pattern(1, 4096) + pattern(2, 4096)[:2048]
    assert image.read_bytes()[100 * 512:100 * 512 + len(expect)] == expect
    for i in range(3, 6):
        front.data(i)[:] = bytes(4096)
    rrefs = [front.grant_data(i) for i in range(3, 6)]
    assert front.do(front.rw(B.BLKIF_OP_READ, 100,
                             [(rrefs[0], 0, 7), (rrefs[1], 0, 7), (rrefs[2], 0, 1)])) == [OK]
    got = bytes(front.data(3)) + bytes(front.data(4)) + bytes(front.data(5)[:1024])
    assert got == expect
    assert front.pending()                              # the backend notified us
    # the backend released the data grants: the guest can revoke them
    assert all(front.g.end_grant(r) for r in refs + rrefs)


def test_response_echoes_id_and_op(front):
    ref = front.grant_data(0)
    front.push(front.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)], rid=0xDEADBEEF_CAFE0001))
    assert front.complete() == [(0xDEADBEEF_CAFE0001, B.BLKIF_OP_READ, OK)]


def test_flush_and_barrier(front, image, monkeypatch):
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    assert front.do(front.rw(B.BLKIF_OP_FLUSH_DISKCACHE, 0, [])) == [OK]
    assert len(synced) == 1
    front.data(0)[:512] = b"B" * 512
    ref = front.grant_data(0)
    assert front.do(front.rw(B.BLKIF_OP_WRITE_BARRIER, 7, [(ref, 0, 0)])) == [OK]
    assert len(synced) == 3                            # before and after the barrier write
    assert image.read_bytes()[7 * 512:8 * 512] == b"B" * 512


def test_discard_punches_holes(front, image):
    ref = front.grant_data(0)
    front.data(0)[:] = b"\xff" * 4096
    reqs = [front.rw(B.BLKIF_OP_WRITE, s, [(ref, 0, 7)]) for s in range(0, 2048, 8)]
    for i in range(0, len(reqs), 16):
        assert front.do(*reqs[i:i + 16]) == [OK] * len(reqs[i:i + 16])
    blocks_full = os.stat(image).st_blocks
    assert front.do(front.discard(0, 2048)) == [OK]
    assert os.stat(image).st_blocks < blocks_full
    assert image.read_bytes()[:1 << 20] == bytes(1 << 20)
    assert os.path.getsize(image) == 4 << 20             # KEEP_SIZE


def test_indirect(front, image):
    """BLKIF_OP_INDIRECT: 40 segments described in one granted indirect page."""
    nseg = 40
    ind = front.grant_data(47, readonly=True)
    refs = [front.grant_data(i) for i in range(nseg)]
    table = bytearray(4096)
    for i, r in enumerate(refs):
        B.SEGMENT.pack_into(table, i * 8, r, 0, 7, 0)
        front.data(i)[:] = pattern(i + 50, 4096)
    front.data(47)[:] = table
    assert front.do(front.indirect(B.BLKIF_OP_WRITE, 64, nseg, [ind])) == [OK]
    expect = b"".join(pattern(i + 50, 4096) for i in range(nseg))
    assert image.read_bytes()[64 * 512:64 * 512 + len(expect)] == expect
    for i in range(nseg):
        front.data(i)[:] = bytes(4096)
    front.push(front.indirect(B.BLKIF_OP_READ, 64, nseg, [ind], rid=77))
    assert front.complete() == [(77, B.BLKIF_OP_READ, OK)]
    assert b"".join(bytes(front.data(i)) for i in range(nseg)) == expect


def test_read_only_disk(domain_factory, blkback, image, width):
    image.write_bytes(b"R" * (4 << 20))
    f = FakeFront(boot_front(domain_factory, width), blkback, f"phy:{image},xvdb,r")
    f.attach()
    f.connect()
    assert f.be_key("info") == str(B.VDISK_READONLY)
    assert f.be_key("feature-discard") == "0"
    ref = f.grant_data(0)
    f.data(0)[:] = b"W" * 4096
    assert f.do(f.rw(B.BLKIF_OP_WRITE, 0, [(ref, 0, 7)]),
                f.discard(0, 8),
                f.rw(B.BLKIF_OP_WRITE_BARRIER, 0, [(ref, 0, 0)]),
                f.indirect(B.BLKIF_OP_WRITE, 0, 1, [f.grant_data(1)])) == [ERR] * 4
    assert f.do(f.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 7)])) == [OK]
    assert bytes(f.data(0)) == b"R" * 4096
    assert image.read_bytes() == b"R" * (4 << 20)
    ring = blkback.ring(f.domid, f.disk.devid)
    assert ring.image.info.readonly
    with pytest.raises(OSError):
        os.write(ring.image.fd, b"x")                   # opened O_RDONLY


def test_several_disks(domain_factory, blkback, tmp_path, width):
    g = boot_front(domain_factory, width)
    fronts = []
    for i, vdev in enumerate(("xvda", "xvdb", "xvdc")):
        p = tmp_path / f"{vdev}.img"
        p.write_bytes(bytes(1 << 20))
        f = FakeFront(g, blkback, f"file:{p},{vdev},w", index=i)
        f.attach()
        f.connect()
        assert f.be_state() == S.Connected
        fronts.append((f, p))
    for i, (f, p) in enumerate(fronts):
        f.data(0)[:512] = bytes([i + 1]) * 512
        assert f.do(f.rw(B.BLKIF_OP_WRITE, 5, [(f.grant_data(0), 0, 0)])) == [OK]
    for i, (f, p) in enumerate(fronts):
        assert p.read_bytes()[5 * 512:6 * 512] == bytes([i + 1]) * 512
    assert [d.vdev for d in blkback.list(g.domid)] == ["xvda", "xvdb", "xvdc"]
    assert {d.state for d in blkback.list(g.domid)} == {S.Connected}


def test_persistent_grants(domain_factory, blkback, image, width):
    """feature-persistent on both sides: grants stay mapped across requests, so the
    frontend cannot revoke them, until the device disconnects."""
    f = FakeFront(boot_front(domain_factory, width), blkback, f"file:{image},xvda,w")
    f.persistent = True
    f.attach()
    f.connect()
    ring = blkback.ring(f.domid, f.disk.devid)
    assert ring.persistent
    refs = [f.grant_data(i) for i in range(4)]
    for i in range(4):
        f.data(i)[:] = pattern(i + 9, 4096)
    assert f.do(f.rw(B.BLKIF_OP_WRITE, 8, [(r, 0, 7) for r in refs])) == [OK]
    assert sorted(ring.pgrants) == refs
    assert not f.g.end_grant(refs[0])                   # still mapped: cannot revoke
    for i in range(4):
        f.data(i)[:] = bytes(4096)
    assert f.do(f.rw(B.BLKIF_OP_READ, 8, [(r, 0, 7) for r in refs])) == [OK]
    assert b"".join(bytes(f.data(i)) for i in range(4)) == b"".join(
        pattern(i + 9, 4096) for i in range(4))
    assert len(ring.pgrants) == 4                       # reused, not mapped again
    ro = f.grant_data(5, readonly=True)                 # cannot be persistent (read-only)
    assert f.do(f.rw(B.BLKIF_OP_WRITE, 0, [(ro, 0, 0)])) == [OK]
    assert ro not in ring.pgrants and f.g.end_grant(ro)
    f.set_state(S.Closing)
    f.set_state(S.Closed)
    assert all(f.g.end_grant(r) for r in refs)          # unmapped at disconnect
