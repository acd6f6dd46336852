"""The xenbus handshake as Linux's blkback does it: states, keys, perms, teardown, reconnect."""
from __future__ import annotations

import pytest

from xenpy.abi.io import blkif as B
from xenpy.abi.io.xenbus import XenbusState as S
from xenpy.hv.event_channel import ECS

from .frontend import FakeFront, boot_front


def test_handshake_keys_and_states(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"format=raw, vdev=xvda, access=rw, target={image}")
    f.attach()
    assert f.be_state() == S.InitWait
    assert f.be_key("feature-max-indirect-segments") == str(B.MAX_INDIRECT_SEGMENTS)
    assert f.be_key("max-ring-page-order") == str(B.MAX_RING_PAGE_ORDER)
    assert f.be_key("sectors") is None                 # published at connect, as Linux
    # perms as libxl writes them
    assert blkback.xs.get_perms(f.be) == ["n0", f"r{g.domid}"]
    assert blkback.xs.get_perms(f.fe) == [f"n{g.domid}", "r0"]
    assert blkback.read(f"{f.fe}/backend") == f.be
    assert blkback.read(f"{f.fe}/virtual-device") == "51712"
    f.connect()
    assert f.be_state() == S.Connected
    assert f.be_key("sectors") == str((4 << 20) // 512)
    assert f.be_key("sector-size") == "512"
    assert f.be_key("info") == "0"
    assert f.be_key("feature-flush-cache") == "1"
    assert f.be_key("feature-discard") == "1"
    assert f.be_key("discard-granularity") == "4096"
    assert f.be_key("feature-persistent") == "1"
    ch = g.d.evtchn.get(f.port)
    assert ch.state == ECS.interdomain and ch.backend is not None
    ring = blkback.ring(g.domid, f.disk.devid)
    assert ring.layout is f.layout and ring.nr_ents == 32
    # the frontend closes: Closing, then Closed; the ring and port are released
    f.set_state(S.Closing)
    assert f.be_state() == S.Closing
    f.set_state(S.Closed)
    assert f.be_state() == S.Closed
    assert blkback.ring(g.domid, f.disk.devid) is None
    assert g.d.evtchn.get(f.port).state == ECS.unbound
    assert g.end_grant(8)                        # the ring grant is no longer mapped
    # ... and reconnects
    f.set_state(S.Initialising)
    assert f.be_state() == S.InitWait
    f.connect()
    assert f.be_state() == S.Connected
    data = f.data(0)
    data[:512] = b"x" * 512
    assert f.do(f.rw(B.BLKIF_OP_WRITE, 0, [(f.grant_data(0), 0, 0)])) == [0]


def test_multipage_ring(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"{image},raw,xvdb,rw", order=2)
    f.attach()
    f.connect()
    assert f.be_state() == S.Connected
    ring = blkback.ring(g.domid, f.disk.devid)
    assert len(ring.ring_maps) == 4 and ring.nr_ents == f.nr_ents == 128
    ref = f.grant_data(0)
    # walk the whole ring more than once: slots straddle page boundaries
    for i in range(0, 300, 30):
        f.data(0)[:512] = bytes([i % 251]) * 512
        assert f.do(*[f.rw(B.BLKIF_OP_WRITE, i + k, [(ref, 0, 0)]) for k in range(30)]) \
            == [0] * 30
    with open(image, "rb") as fh:
        fh.seek(299 * 512)
        assert fh.read(512) == bytes([270 % 251]) * 512


def test_protocol_other_width(domain_factory, blkback, image, width):
    """A frontend may declare the other ABI (a 32-bit userspace driver on a 64-bit kernel)."""
    g = boot_front(domain_factory, width)
    other = B.XEN_IO_PROTO_ABI_X86_64 if width == 32 else B.XEN_IO_PROTO_ABI_X86_32
    f = FakeFront(g, blkback, f"file:{image},xvda,w", protocol=other)
    f.attach()
    f.connect()
    f.data(1)[:1024] = b"ab" * 512
    assert f.do(f.rw(B.BLKIF_OP_WRITE, 10, [(f.grant_data(1), 0, 1)])) == [0]
    assert image.read_bytes()[10 * 512:12 * 512] == b"ab" * 512


def test_bad_ring_description_is_fatal(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"file:{image},xvda,w")
    f.attach()
    f.connect(publish=False)                     # Initialised without ring-ref
    assert f.be_state() == S.Closing
    assert "ring-ref" in f.be_key("error")


def test_missing_image(domain_factory, blkback, tmp_path, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"file:{tmp_path / 'nope.img'},xvda,w")
    f.attach()
    assert f.be_state() == S.Closing
    assert "nope.img" in f.be_key("hotplug-error")



@pytest.mark.parametrize("key, value, complaint", [
    ("event-channel", "99999", "event-channel"),
    ("event-channel", "seven", "event-channel"),
    ("protocol", "arm-abi", "protocol"),
    ("ring-ref", "4000", "ring-ref"),               # a grant ref never granted
    ("ring-page-order", "9", "ring-page-order"),
    # str.isdigit() takes superscript digits, int() does not: once a ValueError escaped
    ("ring-ref", b"\xb2", "ring-ref"),
    ("event-channel", b"\xb9", "event-channel"),
    ("ring-page-order", b"\xb2", "ring-page-order"),
])
def test_hostile_ring_descriptions(domain_factory, blkback, image, width, key, value, complaint):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"file:{image},xvda,w", order=1 if key == "ring-page-order" else 0)
    f.attach()
    orig = f.xs.write

    def write(path, val, *a):
        orig(path, value if path == f"{f.fe}/{key}" else val, *a)
    f.xs.write = write
    try:
        f.connect()
    finally:
        f.xs.write = orig
    assert f.be_state() == S.Closing
    assert complaint in f.be_key("error")
    assert blkback.ring(g.domid, f.disk.devid) is None
    assert g.end_grant(8)                          # nothing left mapped
