"""blkif layouts against Xen's public headers, compiled for both widths."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from xenpy.abi.io import blkif as B
from xenpy.abi.io import ring as R

PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#define xen_mb()  __sync_synchronize()
#define xen_rmb() __sync_synchronize()
#define xen_wmb() __sync_synchronize()
#include <xen/io/blkif.h>
#include <xen/io/xenbus.h>
#define P(name, v) printf("%s %lu\n", name, (unsigned long)(v))
int main(void)
{
    P("req.size", sizeof(struct blkif_request));
    P("req.id", offsetof(struct blkif_request, id));
    P("req.sector", offsetof(struct blkif_request, sector_number));
    P("req.seg", offsetof(struct blkif_request, seg));
    P("seg.size", sizeof(struct blkif_request_segment));
    P("discard.nr", offsetof(struct blkif_request_discard, nr_sectors));
    P("ind.id", offsetof(struct blkif_request_indirect, id));
    P("ind.handle", offsetof(struct blkif_request_indirect, handle));
    P("ind.grefs", offsetof(struct blkif_request_indirect, indirect_grefs));
    P("rsp.size", sizeof(struct blkif_response));
    P("rsp.op", offsetof(struct blkif_response, operation));
    P("rsp.status", offsetof(struct blkif_response, status));
    P("entry", sizeof(union blkif_sring_entry));
    P("sring.ring", offsetof(struct blkif_sring, ring));
    P("ring1", __CONST_RING_SIZE(blkif, 4096));
    P("ring4", __CONST_RING_SIZE(blkif, 4 * 4096));
    P("op.indirect", BLKIF_OP_INDIRECT);
    P("max.segs", BLKIF_MAX_SEGMENTS_PER_REQUEST);
    P("closing", XenbusStateClosing);
    return 0;
}
"""


def probe(tmp_path, bits: int) -> dict[str, int]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check the ABI against Xen's headers")
    src, exe = tmp_path / "probe.c", tmp_path / f"probe{bits}"
    src.write_text(PROBE)
    cc = subprocess.run(["gcc", f"-m{bits}", "-D__XEN_INTERFACE_VERSION__=0x00040d00",
                         "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        pytest.fail(f"compiling the probe failed:\n{cc.stderr}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("bits, layout", [(32, B.LAYOUT_32), (64, B.LAYOUT_64)])
def test_layout_matches_headers(tmp_path, bits, layout):
    c = probe(tmp_path, bits)
    ptr = 4 if bits == 32 else 8
    assert c["req.seg"] == layout.seg_offset == layout.request.size
    assert c["req.size"] == layout.seg_offset + B.BLKIF_MAX_SEGMENTS_PER_REQUEST * B.SEGMENT.size
    assert c["seg.size"] == B.SEGMENT.size
    assert (c["req.id"], c["req.sector"]) == (ptr, ptr + 8)
    assert c["discard.nr"] + 8 == layout.discard.size
    assert c["ind.grefs"] + 32 == layout.indirect.size
    assert c["ind.handle"] == c["ind.grefs"] - 4
    assert c["rsp.size"] == layout.response.size
    assert (c["rsp.op"], c["rsp.status"]) == (8, 10)
    assert c["entry"] == layout.entry_size
    assert c["sring.ring"] == R.SRING_HEADER_SIZE
    assert c["ring1"] == R.ring_size(layout.entry_size, 1)
    assert c["ring4"] == R.ring_size(layout.entry_size, 4)
    assert c["op.indirect"] == B.BLKIF_OP_INDIRECT
    assert c["max.segs"] == B.BLKIF_MAX_SEGMENTS_PER_REQUEST
    assert c["closing"] == 5
