"""The PV domain builder: what libxenguest (xg_dom_x86.c, xg_dom_core.c) does for a domU.

Pseudo-physical frames are allocated in libxenguest's order and every one of them is
mapped at ``VA = (pfn << 12) + virt_base``:

1. the kernel image (frames below it, from virt_base, are padding: mapped and populated);
2. the p2m list ("phys2mach": one entry per page, 4 or 8 bytes);
3. start_info, the xenstore page, the console page (both zeroed);
4. the initial page tables (PAE: the L3, then the L2s — always one for L3 slot 3, whose
   upper part holds the hypervisor's mappings — then the L1s; x86-64: L4, L3s, L2s, L1s),
   themselves mapped read-only;
5. one boot-stack page;
6. padding, so that the mapping ends 4 MiB-aligned with at least 512 KiB of slack.

The builder then writes the hypercall page, fills start_info and shared_info, binds
the store and console event channels to their backends, pins the top-level table and
sets the boot vCPU's registers as Xen does.  What Xen would reject (no room, a kernel
beyond the hypervisor hole, a PAE mismatch) raises BuildError.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..abi.xen import (FLAT_RING1_DS, FLAT_RING3_SS64, HYPERVISOR_VIRT_END_X86_64,
                       HYPERVISOR_VIRT_START_PAE, HYPERVISOR_VIRT_START_X86_64, PAGE_SHIFT,
                       PAGE_SIZE, Width, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW,
                       _PAGE_USER)
from ..errors import BuildError
from .elf import XenElfImage

if TYPE_CHECKING:
    from ..hv.domain import Domain
    from ..hv.host import Host

L1_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
UPPER_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER
PAE_L3_PROT = _PAGE_PRESENT
SLACK = 512 * 1024
ALIGN = 4 << 20

SUPPORTED_TYPES = {"xen-3.0-x86_32p": Width.X86_32, "xen-3.0-x86_64": Width.X86_64}
HV_HOLE_64 = (HYPERVISOR_VIRT_START_X86_64, HYPERVISOR_VIRT_END_X86_64)


@dataclass(frozen=True)
class DomainLayout:
    """Where the builder put things: pfns, and the virtual addresses start_info names."""
    virt_base: int
    kernel_pfns: range
    p2m_pfns: range
    start_info_pfn: int
    xenstore_pfn: int
    console_pfn: int
    pt_pfns: range
    bootstack_pfn: int
    virt_end: int

    def va(self, pfn: int) -> int:
        return self.virt_base + (pfn << PAGE_SHIFT)


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _levels(width: Width) -> list[int]:
    """Entry shifts of the page-table levels, top first."""
    return [30, 21, 12] if width == Width.X86_32 else [39, 30, 21, 12]


def _tables_needed(width: Width, start: int, end: int) -> list[list[int]]:
    """Per level (top first), the sorted keys (va >> (shift+9)) of the tables to allocate."""
    out = []
    for shift in _levels(width):
        span = shift + 9
        keys = sorted({va >> span for va in range(start & ~((1 << span) - 1), end, 1 << span)})
        if width == Width.X86_32 and shift == 21 and 3 not in keys:
            keys.append(3)          # Xen needs the L2 under L3 slot 3 for its own mappings
        out.append(keys if shift != _levels(width)[0] else [0])
    return out


def plan_layout(image: XenElfImage, nr_pages: int, width: Width) -> DomainLayout:
    """libxenguest's allocation order and sizes; BuildError when it does not fit."""
    vb = image.virt_base
    if image.virt_kstart < vb:
        raise BuildError(f"kernel starts at {image.virt_kstart:#x}, below VIRT_BASE {vb:#x}")
    k0 = (image.virt_kstart - vb) >> PAGE_SHIFT
    k1 = _round_up(image.virt_kend - vb, PAGE_SIZE) >> PAGE_SHIFT
    p2m_pages = _round_up(nr_pages * width, PAGE_SIZE) >> PAGE_SHIFT
    p2m = range(k1, k1 + p2m_pages)
    si, xs, con = p2m.stop, p2m.stop + 1, p2m.stop + 2
    pt_start = con + 1
    nr_pt = 1
    for _ in range(16):                     # the size of the tables depends on what they map
        end_pfn = pt_start + nr_pt + 1      # + boot stack
        virt_end = _round_up(vb + (end_pfn << PAGE_SHIFT) + SLACK, ALIGN)
        need = sum(len(k) for k in _tables_needed(width, vb, virt_end))
        if need == nr_pt:
            break
        nr_pt = need
    else:
        raise BuildError("page-table layout did not converge")
    if width == Width.X86_32 and virt_end > HYPERVISOR_VIRT_START_PAE:
        raise BuildError(f"the initial mapping ends at {virt_end:#x}, inside the hypervisor "
                         f"hole at {HYPERVISOR_VIRT_START_PAE:#x}: use less memory or a lower "
                         "VIRT_BASE")
    if width == Width.X86_64 and vb < HV_HOLE_64[1] and virt_end > HV_HOLE_64[0]:
        raise BuildError(f"the kernel mapping {vb:#x}-{virt_end:#x} overlaps Xen's reserved "
                         f"range {HV_HOLE_64[0]:#x}-{HV_HOLE_64[1]:#x}")
    mapped = (virt_end - vb) >> PAGE_SHIFT
    if mapped > nr_pages:
        raise BuildError(f"the kernel and boot structures need {mapped} pages "
                         f"({mapped * PAGE_SIZE >> 20} MiB with 4 MiB alignment) but the domain "
                         f"has {nr_pages} ({nr_pages * PAGE_SIZE >> 20} MiB): raise memory=")
    return DomainLayout(vb, range(k0, k1), p2m, si, xs, con, range(pt_start, pt_start + nr_pt),
                        pt_start + nr_pt, virt_end)


def build_pv_domain(host: "Host", d: "Domain", image: XenElfImage, cmdline: str = "") -> DomainLayout:
    """Lay out, load and start-up-configure ``d`` (already created with its vCPUs)."""
    from ..hv import mm
    from ..hv.firmware import hypercall_page

    width = d.width
    if image.guest_type not in SUPPORTED_TYPES:
        raise BuildError(f"guest type {image.guest_type!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_TYPES)})")
    if SUPPORTED_TYPES[image.guest_type] != width:
        raise BuildError(f"guest type {image.guest_type} does not match a {width * 8}-bit domain")
    if len(cmdline.encode()) >= 1024:
        raise BuildError("cmdline: at most 1023 bytes")
    nr_pages = d.max_pages
    lay = plan_layout(image, nr_pages, width)
    d.populate(nr_pages)
    mem = d.mem

    def maddr(pfn: int) -> int:
        return d.p2m[pfn] << PAGE_SHIFT

    def write_va(va: int, data: bytes) -> None:
        off = 0
        while off < len(data):
            pfn = (va + off - lay.virt_base) >> PAGE_SHIFT
            in_page = (va + off) & (PAGE_SIZE - 1)
            n = min(len(data) - off, PAGE_SIZE - in_page)
            mem.write(maddr(pfn) + in_page, data[off:off + n])
            off += n

    # 1. kernel segments (memory is zeroed, so bss needs nothing)
    for seg in image.segments:
        va = image.load_address(seg)
        if va < lay.virt_base or va + seg.memsz > lay.va(lay.kernel_pfns.stop):
            raise BuildError(f"ELF segment at {va:#x} lies outside the kernel image")
        write_va(va, seg.data)
    if image.hypercall_page is not None:
        write_va(image.hypercall_page, hypercall_page(width))
    # 2. p2m list
    fmt = "<I" if width == Width.X86_32 else "<Q"
    write_va(lay.va(lay.p2m_pfns.start), b"".join(struct.pack(fmt, m) for m in d.p2m))
    # 4. page tables: allocate the pfns per level, top first
    keys = _tables_needed(width, lay.virt_base, lay.virt_end)
    shifts = _levels(width)
    tables: list[dict[int, int]] = []
    next_pfn = lay.pt_pfns.start
    for level_keys in keys:
        tables.append({k: next_pfn + i for i, k in enumerate(level_keys)})
        next_pfn += len(level_keys)
    pt_range = range(lay.pt_pfns.start, next_pfn)
    for depth, shift in enumerate(shifts[:-1]):
        child_span = shifts[depth + 1] + 9
        for key, child_pfn in tables[depth + 1].items():
            parent_key = key >> (shift + 9 - child_span) if depth else 0
            parent = tables[depth][parent_key if depth else 0]
            index = (key << child_span >> shift) & 511
            prot = PAE_L3_PROT if (width == Width.X86_32 and depth == 0) else UPPER_PROT
            mem.write_u64(maddr(parent) + 8 * index, maddr(child_pfn) | prot)
    l1s = tables[-1]
    for pfn in range((lay.virt_end - lay.virt_base) >> PAGE_SHIFT):
        va = lay.va(pfn)
        prot = L1_PROT & ~_PAGE_RW if pfn in pt_range else L1_PROT
        mem.write_u64(maddr(l1s[va >> 21]) + 8 * ((va >> 12) & 511), maddr(pfn) | prot)
    top_mfn = d.p2m[lay.pt_pfns.start]
    # shared_info: a hypervisor page the domain may map
    si_mfn = mem.alloc_frames(d.domid, 1)[0]
    d.set_shared_info(si_mfn)
    for i in range(len(d.shared_info.vcpu_info)):
        d.shared_info.vcpu_info[i].evtchn_upcall_mask = 1
    # event channels to the store and console backends (libxl: store first)
    d.store_mfn, d.console_mfn = d.p2m[lay.xenstore_pfn], d.p2m[lay.console_pfn]
    d.store_port = host.connect_store(d)
    d.console_port = host.connect_console(d)
    # 3. start_info
    SI = d.abi.StartInfo
    si = SI()
    si.magic = image.guest_type.encode()
    si.nr_pages = nr_pages
    si.shared_info = si_mfn << PAGE_SHIFT
    si.flags = 0
    si.store_mfn = d.store_mfn
    si.store_evtchn = d.store_port
    si.console.domU.mfn = d.console_mfn
    si.console.domU.evtchn = d.console_port
    si.pt_base = lay.va(lay.pt_pfns.start)
    si.nr_pt_frames = len(lay.pt_pfns)
    si.mfn_list = lay.va(lay.p2m_pfns.start)
    si.cmd_line = cmdline.encode()
    si.first_p2m_pfn = lay.p2m_pfns.start
    si.nr_p2m_frames = len(lay.p2m_pfns)
    write_va(lay.va(lay.start_info_pfn), bytes(si))
    d.start_info_va = lay.va(lay.start_info_pfn)
    d.cmdline = cmdline
    from ..hv.time import update_wallclock
    update_wallclock(d)
    host.introduce_domain(d)
    # pin the top-level table and point vCPU 0 at it
    mm.pin_initial_tables(d, top_mfn)
    v = d.vcpus[0]
    v.guest_table = top_mfn
    v.kernel_ss = FLAT_RING1_DS if width == Width.X86_32 else FLAT_RING3_SS64
    v.kernel_sp = lay.va(lay.bootstack_pfn) + PAGE_SIZE
    host.boot_vcpu(v, entry=image.entry, stack=v.kernel_sp, start_info=d.start_info_va,
                   cr3=top_mfn << PAGE_SHIFT)
    return lay
