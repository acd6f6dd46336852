"""grant_table_op: the grant table's size and version (v1 frames allocated on demand)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi import grant_table as G
from ..abi.errno import Errno
from ..abi.xen import DOMID_SELF, PAGE_SHIFT, Width
from .hypercall import hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu

MAX_GRANT_FRAMES = 64       # libxl's default max_grant_frames


@hypercall("grant_table_op", 3)
def do_grant_table_op(v: "Vcpu", cmd: int, uop: int, count: int) -> int:
    d = v.domain
    g = v.gmem
    if count > 512:
        return -Errno.EINVAL
    if cmd == G.GNTTABOP_query_size:
        # struct gnttab_query_size { domid_t dom; uint32 nr_frames; uint32 max_nr_frames; int16 status; }
        for i in range(count):
            a = uop + 16 * i
            dom = struct.unpack("<H", g.read(a, 2))[0]
            status = G.GNTST_okay if dom in (DOMID_SELF, d.domid) else G.GNTST_bad_domain
            g.write(a + 4, struct.pack("<IIh", len(d.grant_frames), MAX_GRANT_FRAMES, status))
        return 0
    if cmd == G.GNTTABOP_setup_table:
        # struct gnttab_setup_table { domid_t dom; uint32 nr_frames; int16 status; handle frame_list; }
        w = d.width
        size = 16 if w == Width.X86_32 else 24
        for i in range(count):
            a = uop + size * i
            if w == Width.X86_32:
                dom, nr, _st, flist = struct.unpack("<H2xIh2xI", g.read(a, 16))
            else:
                dom, nr, _st, flist = struct.unpack("<H2xIh6xQ", g.read(a, 24))
            if dom not in (DOMID_SELF, d.domid):
                status = G.GNTST_bad_domain
            elif nr > MAX_GRANT_FRAMES:
                status = G.GNTST_general_error
            else:
                while len(d.grant_frames) < nr:
                    mfn = d.mem.alloc_frames(d.domid, 1)[0]
                    d.grant_frames.append(mfn)
                for j in range(nr):
                    g.write_ulong(flist + w * j, d.grant_frames[j])
                status = G.GNTST_okay
            g.write(a + 8, struct.pack("<h", status))
        return 0
    if cmd == G.GNTTABOP_set_version:
        ver = g.read_u32(uop)
        if ver not in (1, 2):
            return -Errno.EINVAL
        if ver == 2:
            return -Errno.ENOSYS      # v2 arrives with the grant-table issue
        d.grant_version = ver
        return 0
    if cmd == G.GNTTABOP_get_version:
        g.write(uop + 4, struct.pack("<I", getattr(d, "grant_version", 1)))
        return 0
    d.log_once(f"gnttab {cmd}", "grant_table_op %d not implemented yet", cmd)
    return -Errno.ENOSYS
