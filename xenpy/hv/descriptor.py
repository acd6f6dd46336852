"""x86 segment descriptors: building Xen's reserved GDT entries and checking guest ones.

check_descriptor follows Xen's rule for PV guests: a guest may install code and data
segments (their DPL is raised to at least the guest kernel's ring) and nothing that
could reach ring 0 — no call/task/interrupt gates, TSS or LDT descriptors.
"""
from __future__ import annotations

import struct

ACCESSED = 1 << 8        # in the descriptor's high dword (type bit 0)


def segment(base: int, limit: int, type_: int, dpl: int, *, s: bool = True, db: bool = True,
            g: bool = True, long: bool = False) -> bytes:
    """An 8-byte code/data/system descriptor."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | (type_ << 8) | (int(s) << 12) | (dpl << 13) | (1 << 15)
          | (((limit >> 16) & 0xF) << 16) | (int(long) << 21) | (int(db) << 22) | (int(g) << 23)
          | (base & 0xFF000000))
    return struct.pack("<II", lo, hi)


def call_gate32(selector: int, offset: int, dpl: int) -> bytes:
    lo = (offset & 0xFFFF) | (selector << 16)
    hi = (offset & 0xFFFF0000) | (1 << 15) | (dpl << 13) | (0xC << 8)
    return struct.pack("<II", lo, hi)


CODE_RX = 0xB      # execute/read, accessed
DATA_RW = 0x3      # read/write, accessed
TSS32 = 0x9        # available 32-bit TSS


def check_descriptor(raw: bytes, guest_kernel_rpl: int) -> bytes | None:
    """Return the descriptor as Xen would install it, or None if it must be refused."""
    lo, hi = struct.unpack("<II", raw)
    if not hi & (1 << 15) and not (lo | hi):
        return raw                      # an all-zero (not present) descriptor is fine
    if not hi & (1 << 12):
        return None                     # system descriptor: gates, TSS, LDT — refused
    if hi & (1 << 11) and hi & (1 << 10):
        return None                     # conforming code could run at the caller's ring 0
    if (hi >> 13) & 3 < guest_kernel_rpl:
        hi = (hi & ~(3 << 13)) | (guest_kernel_rpl << 13)
    # Pre-set the accessed bit: the GDT/LDT is mapped read-only, so the CPU must never
    # need to write it back.
    hi |= ACCESSED
    return struct.pack("<II", lo, hi)
