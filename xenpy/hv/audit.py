"""Audit of the frame table (Xen's old audit.c): recount, from first principles, every
reference and type use the page tables, pins, base pointers, descriptor tables and grant
mappings of the live domains hold, and compare with the frame table.

A debugging and testing aid (tests and the mm benchmark run it after random hypercall
sequences): the hypervisor never calls it on a guest's behalf.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi.xen import PAGE_SHIFT, Width, _PAGE_PRESENT, _PAGE_RW
from .guest_access import MADDR_MASK
from .machine import PageType
from .mm import PT_TYPES, _entries, guest_slots

if TYPE_CHECKING:
    from .host import Host


def audit(host: "Host") -> list[str]:
    """Recount every reference from first principles (Xen's audit.c) and compare with the
    frame table; also check the isolation invariants.  Returns the problems found."""
    from . import grant_table
    mem = host.mem
    n = mem.nr_frames
    refs = [0] * n
    types: dict[int, tuple[int, int]] = {}      # mfn -> (type, count)
    problems: list[str] = []

    def use(mfn: int, type_: int) -> None:
        t, c = types.get(mfn, (type_, 0))
        if t != type_:
            problems.append(f"mfn {mfn:#x} used as {PageType.NAMES[t]} and "
                            f"{PageType.NAMES[type_]}")
        types[mfn] = (t, c + 1)

    for d in host.domains.values():
        if d.dying:
            continue
        for pfn, mfn in enumerate(d.p2m):
            if mfn >= 0:
                refs[mfn] += 1
        for mfn in d.unplaced:
            refs[mfn] += 1
        for mfn in d.special_frames:        # shared_info, grant and v2 status frames
            refs[mfn] += 1
            use(mfn, PageType.writable)
        for v in d.vcpus:
            for mfn in (v.guest_table, v.guest_table_user):
                if mfn:
                    refs[mfn] += 1
                    use(mfn, PageType.l3 if d.width == Width.X86_32 else PageType.l4)
            for mfn in v.gdt_frames:
                use(mfn, PageType.seg_desc)
            for mfn in getattr(v, "ldt_frames", ()):
                refs[mfn] += 1
                use(mfn, PageType.seg_desc)
        for mfn in range(n):
            if mem.owner[mfn] != d.domid:
                continue
            if mem.pinned[mfn]:
                refs[mfn] += 1
                use(mfn, mem.type[mfn])
            t = mem.type[mfn]
            if t in PT_TYPES and mem.type_count[mfn]:
                entries = _entries(d, mfn)
                for r in guest_slots(d, t, mfn):
                    for i in r:
                        e = entries[i]
                        if not e & _PAGE_PRESENT:
                            continue
                        target = (e & MADDR_MASK) >> PAGE_SHIFT
                        refs[target] += 1
                        if t == PageType.l1:
                            if e & _PAGE_RW:
                                use(target, PageType.writable)
                        else:
                            use(target, t - 1)
        for m in grant_table.maptrack_refs(d):
            refs[m.mfn] += 1
            if m.writable:
                use(m.mfn, PageType.writable)
    for mfn in range(n):
        if mem.owner[mfn] in host.domains and not host.domains[mem.owner[mfn]].dying:
            if refs[mfn] != mem.ref_count[mfn]:
                problems.append(f"mfn {mfn:#x}: ref_count {mem.ref_count[mfn]}, "
                                f"counted {refs[mfn]}")
            t, c = types.get(mfn, (PageType.none, 0))
            if c != mem.type_count[mfn] or (c and t != mem.type[mfn]):
                problems.append(f"mfn {mfn:#x}: type {PageType.NAMES[mem.type[mfn]]}x"
                                f"{mem.type_count[mfn]}, counted {PageType.NAMES[t]}x{c}")
    return problems
