"""memory_op: reservation queries and the pseudo-physical memory map (xen/memory.h)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi import memory as M
from ..abi.errno import Errno
from ..abi.xen import DOMID_SELF, MACH2PHYS_VIRT_END_PAE, MACH2PHYS_VIRT_START_PAE, Width
from .hypercall import hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu


@hypercall("memory_op", 2)
def do_memory_op(v: "Vcpu", cmd: int, arg: int) -> int:
    d = v.domain
    g = v.gmem
    cmd &= 0x3F                              # the upper bits carry a continuation index
    if cmd in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation):
        domid = struct.unpack("<H", g.read(arg, 2))[0]
        if domid not in (DOMID_SELF, d.domid):
            return -Errno.EPERM
        return d.nr_pages if cmd == M.XENMEM_current_reservation else d.max_pages
    if cmd == M.XENMEM_maximum_ram_page:
        return d.mem.nr_frames - 1
    if cmd == M.XENMEM_maximum_gpfn:
        return len(d.p2m) - 1
    if cmd == M.XENMEM_memory_map:
        # struct xen_memory_map { unsigned int nr_entries; XEN_GUEST_HANDLE(void) buffer; }
        w = d.width
        nr, buf = struct.unpack("<II" if w == 4 else "<I4xQ", g.read(arg, 8 if w == 4 else 16))
        if nr < 1:
            return -Errno.EINVAL
        # A PV domU without a configured map sees one RAM region (Xen: d->arch.e820 else -ENOSYS);
        # libxl gives PV guests an E820 of their RAM.
        g.write(buf, struct.pack("<QQI", 0, len(d.p2m) << 12, M.E820_RAM))
        g.write_u32(arg, 1)
        return 0
    if cmd == M.XENMEM_machphys_mapping:
        # struct xen_machphys_mapping { xen_ulong_t v_start, v_end, max_mfn; }
        if d.width == Width.X86_32:
            g.write(arg, struct.pack("<III", MACH2PHYS_VIRT_START_PAE, MACH2PHYS_VIRT_END_PAE,
                                     d.mem.nr_frames - 1))
        else:
            from ..abi.xen import MACH2PHYS_VIRT_END_X86_64, MACH2PHYS_VIRT_START_X86_64
            g.write(arg, struct.pack("<QQQ", MACH2PHYS_VIRT_START_X86_64,
                                     MACH2PHYS_VIRT_END_X86_64, d.mem.nr_frames - 1))
        return 0
    d.log_once(f"memory_op {cmd}", "memory_op %d not implemented yet", cmd)
    return -Errno.ENOSYS
