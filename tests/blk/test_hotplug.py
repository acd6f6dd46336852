"""Hot-plug as xl does it: attach writes both directories, detach sets online=0 and
state=Closing; blkback closes with the frontend and removes the directories."""
from __future__ import annotations

import pytest

from xenpy.abi.io import blkif as B
from xenpy.abi.io.xenbus import XenbusState as S
from xenpy.errors import ConfigError
from xenpy.toolstack.disk import attach_disk, detach_disk, parse_disk_spec

from .frontend import FakeFront, boot_front


def test_detach_connected_device(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"format=raw, vdev=xvdb, access=rw, target={image}")
    f.attach()
    f.connect()
    ref = f.grant_data(0)
    assert f.do(f.rw(B.BLKIF_OP_READ, 0, [(ref, 0, 0)])) == [0]
    assert detach_disk(blkback.xs, g.domid, "xvdb") == f.disk.devid
    blkback.poll()
    assert f.be_state() == S.Closing                   # waits for the frontend
    assert blkback.ring(g.domid, f.disk.devid) is not None
    f.set_state(S.Closing)                             # blkfront_closing
    f.set_state(S.Closed)
    assert not blkback.xs.exists(f.be) and not blkback.xs.exists(f.fe)
    assert blkback.list(g.domid) == []
    assert g.end_grant(f.ring_ref0) and g.end_grant(ref)
    # attach again: a fresh device
    f.attach()
    assert f.be_state() == S.InitWait


def test_detach_unconnected_device(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"file:{image},xvdc,r")
    f.attach()
    assert [d.vdev for d in blkback.list(g.domid)] == ["xvdc"]
    detach_disk(blkback.xs, g.domid, "xvdc")
    blkback.poll()
    assert not blkback.xs.exists(f.be) and blkback.list(g.domid) == []
    with pytest.raises(ConfigError, match="no disk"):
        detach_disk(blkback.xs, g.domid, "xvdc")


def test_attach_twice_refused(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    attach_disk(blkback.xs, g.domid, parse_disk_spec(f"{image},xvda,w"))
    with pytest.raises(ConfigError, match="already has"):
        attach_disk(blkback.xs, g.domid, parse_disk_spec(f"{image},xvda,w"))


def test_domain_destroyed_while_connected(domain_factory, blkback, image, width):
    g = boot_front(domain_factory, width)
    f = FakeFront(g, blkback, f"file:{image},xvda,w")
    f.attach()
    f.connect()
    f.data(0)[:512] = b"d" * 512
    f.push(f.rw(B.BLKIF_OP_WRITE, 0, [(f.grant_data(0), 0, 0)]))
    blkback.host.destroy_domain(g.d)
    blkback.settle()
    assert blkback.list(g.domid) == []
    assert not blkback.xs.exists(f.be)                 # the backend directory went too
