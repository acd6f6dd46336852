"""set_gdt and update_descriptor (Xen's pv/descriptor-tables.c)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.xen import FIRST_RESERVED_GDT_ENTRY, PAGE_SHIFT, Width
from .descriptor import check_descriptor
from .hypercall import hypercall
from .machine import PageType
from .mm import PageError, get_page_type, put_page_type

if TYPE_CHECKING:
    from .vcpu import Vcpu


@hypercall("set_gdt", 2)
def do_set_gdt(v: "Vcpu", frame_list: int, entries: int) -> int:
    d = v.domain
    if entries > FIRST_RESERVED_GDT_ENTRY:
        return -Errno.EINVAL
    nr = (entries + 511) // 512
    mfns = [v.gmem.read_ulong(frame_list + d.width * i) for i in range(nr)]
    taken = []
    try:
        for mfn in mfns:
            if not d.owns(mfn):
                raise PageError(Errno.EINVAL, f"bad GDT frame {mfn:#x}")
            get_page_type(d, mfn, PageType.seg_desc)
            taken.append(mfn)
    except PageError:
        for mfn in taken:
            put_page_type(d, mfn)
        return -Errno.EINVAL
    for mfn in v.gdt_frames:
        put_page_type(d, mfn)
    v.gdt_frames, v.gdt_ents = mfns, entries
    d.hv_layout.set_guest_gdt_frames(d.mem, v.vcpu_id, mfns)
    v.cpu.flush_tlb()
    return 0


def update_descriptor(v: "Vcpu", ma: int, desc: int) -> int:
    """Write one descriptor at machine address ``ma`` after check_descriptor."""
    d = v.domain
    mfn = ma >> PAGE_SHIFT
    if ma & 7 or not d.owns(mfn):
        return -Errno.EINVAL
    fixed = check_descriptor(struct.pack("<Q", desc), 1 if d.width == Width.X86_32 else 3)
    if fixed is None:
        return -Errno.EINVAL
    if d.mem.type[mfn] == PageType.seg_desc and d.mem.type_count[mfn]:
        d.mem.write(ma, fixed)
        return 0
    try:
        get_page_type(d, mfn, PageType.writable)
    except PageError:
        return -Errno.EINVAL
    d.mem.write(ma, fixed)
    put_page_type(d, mfn)
    return 0


@hypercall("update_descriptor", 4, abis=(Width.X86_32,))
def do_update_descriptor32(v: "Vcpu", ma_lo: int, ma_hi: int, d_lo: int, d_hi: int) -> int:
    return update_descriptor(v, (ma_hi << 32) | ma_lo, (d_hi << 32) | d_lo)


@hypercall("update_descriptor", 2, abis=(Width.X86_64,))
def do_update_descriptor64(v: "Vcpu", ma: int, desc: int) -> int:
    return update_descriptor(v, ma, desc)
