"""xen_version: every XENVER_* sub-op, answering as Xen 4.17 does for a PV domU."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi import version as V
from ..abi.xen import HYPERVISOR_VIRT_START_PAE, HYPERVISOR_VIRT_START_X86_64, PAGE_SIZE, Width
from .emul_priv_op import XEN_MAJOR, XEN_MINOR
from .hypercall import hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu

EXTRAVERSION = b".0-xenpy"
CAPABILITIES = b"xen-3.0-x86_64 xen-3.0-x86_32p"
CHANGESET = b"xenpy"


def features(v: "Vcpu") -> int:
    """Submap 0 of XENVER_get_features for a PV domU."""
    f = (1 << V.XENFEAT_writable_page_tables | 1 << V.XENFEAT_writable_descriptor_tables
         | 1 << V.XENFEAT_mmu_pt_update_preserve_ad | 1 << V.XENFEAT_gnttab_map_avail_bits)
    if v.domain.width == Width.X86_32:
        f |= 1 << V.XENFEAT_pae_pgdir_above_4gb
    return f


def _fixed(s: bytes, n: int) -> bytes:
    return s[:n - 1].ljust(n, b"\0")


@hypercall("xen_version", 2)
def do_xen_version(v: "Vcpu", cmd: int, arg: int) -> int:
    g = v.gmem
    if cmd == V.XENVER_version:
        return (XEN_MAJOR << 16) | XEN_MINOR
    if cmd == V.XENVER_extraversion:
        g.write(arg, _fixed(EXTRAVERSION, V.XEN_EXTRAVERSION_LEN))
    elif cmd == V.XENVER_compile_info:
        # struct xen_compile_info: compiler[64], compile_by[16], compile_domain[32], compile_date[32]
        g.write(arg, _fixed(b"python", 64) + _fixed(b"xenpy", 16) + _fixed(b"xenpy", 32)
                + _fixed(b"", 32))
    elif cmd == V.XENVER_capabilities:
        g.write(arg, _fixed(CAPABILITIES, V.XEN_CAPABILITIES_INFO_LEN))
    elif cmd == V.XENVER_changeset:
        g.write(arg, _fixed(CHANGESET, V.XEN_CHANGESET_INFO_LEN))
    elif cmd == V.XENVER_platform_parameters:
        start = (HYPERVISOR_VIRT_START_PAE if v.domain.width == Width.X86_32
                 else HYPERVISOR_VIRT_START_X86_64)
        g.write_ulong(arg, start)
    elif cmd == V.XENVER_get_features:
        # struct xen_feature_info { unsigned int submap_idx; uint32_t submap; }
        idx = g.read_u32(arg)
        if idx >= V.XENFEAT_NR_SUBMAPS:
            return -Errno.EINVAL
        g.write(arg + 4, struct.pack("<I", features(v)))
    elif cmd == V.XENVER_pagesize:
        return PAGE_SIZE
    elif cmd == V.XENVER_guest_handle:
        g.write(arg, bytes(V.XEN_GUEST_HANDLE_LEN))
    elif cmd == V.XENVER_commandline:
        return -Errno.EPERM            # the hypervisor command line is for dom0 only
    elif cmd == V.XENVER_build_id:
        return -Errno.EPERM
    else:
        return -Errno.ENOSYS
    return 0
