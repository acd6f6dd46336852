"""copy_from_guest / copy_to_guest: every guest pointer goes through here.

Addresses are guest *virtual*; we walk the guest's own page tables (PAE: L3→L2→L1;
x86-64: L4→L3→L2→L1) in the host buffer and check the access rights the guest
itself would need, so a hypercall can never be used to read or write memory the
guest could not touch.  A failed walk raises :class:`GuestFault`, which the hypercall
layer turns into -EFAULT (Xen's copy_from_guest failing), never a traceback.
"""
from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from ..abi.xen import _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_USER, PAGE_SIZE, Width

if TYPE_CHECKING:
    from .machine import MachineMemory

MADDR_MASK = 0x000FFFFFFFFFF000

# #PF error-code bits
PFEC_present = 1
PFEC_write = 2
PFEC_user = 4


class GuestFault(Exception):
    """A guest virtual address could not be accessed as asked (internal signal)."""

    def __init__(self, va: int, error_code: int) -> None:
        super().__init__(f"guest fault at {va:#x} (ec={error_code:#x})")
        self.va = va
        self.error_code = error_code


def walk(mem: "MachineMemory", width: Width, cr3: int, va: int, write: bool = False,
         user: bool = False) -> int:
    """Translate ``va`` to a machine address as the MMU would; raise GuestFault."""
    buf = mem.buf
    limit = mem.size
    ec = (PFEC_write if write else 0) | (PFEC_user if user else 0)
    if width == Width.X86_32:
        va &= 0xFFFFFFFF
        pdpte = struct.unpack_from("<Q", buf, (cr3 & 0xFFFFFFE0) + 8 * (va >> 30))[0]
        if not pdpte & _PAGE_PRESENT:
            raise GuestFault(va, ec)
        levels = [(va >> 21) & 511, (va >> 12) & 511]
        table = pdpte & MADDR_MASK
    else:
        if not (va < 0x0000800000000000 or va >= 0xFFFF800000000000):
            raise GuestFault(va, ec)        # non-canonical
        levels = [(va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511]
        table = cr3 & MADDR_MASK
    for depth, index in enumerate(levels):
        if table >= limit:
            raise GuestFault(va, ec)
        entry = struct.unpack_from("<Q", buf, table + 8 * index)[0]
        if not entry & _PAGE_PRESENT:
            raise GuestFault(va, ec)
        if (write and not entry & _PAGE_RW) or (user and not entry & _PAGE_USER):
            raise GuestFault(va, ec | PFEC_present)
        if entry & _PAGE_PSE and depth < len(levels) - 1:
            raise GuestFault(va, ec | PFEC_present)   # PV guests have no superpages
        table = entry & MADDR_MASK
    maddr = table | (va & (PAGE_SIZE - 1))
    if maddr >= limit:
        raise GuestFault(va, ec | PFEC_present)
    return maddr


class GuestMemory:
    """Guest-virtual access for one vCPU's current address space."""

    def __init__(self, mem: "MachineMemory", width: Width) -> None:
        self.mem = mem
        self.width = width
        self.cr3 = 0
        self.user = False        # check user-mode rights (accesses on behalf of user code)

    def translate(self, va: int, write: bool = False) -> int:
        return walk(self.mem, self.width, self.cr3, va, write, self.user)

    def read(self, va: int, size: int) -> bytes:
        if size < 0 or size > 1 << 24:
            raise GuestFault(va, 0)
        out = bytearray()
        while size:
            chunk = min(size, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            m = self.translate(va)
            out += self.mem.view[m:m + chunk]
            va += chunk
            size -= chunk
        return bytes(out)

    def write(self, va: int, data: bytes) -> None:
        # Translate every page first: a write that faults half-way leaves memory untouched.
        pieces = []
        off = 0
        while off < len(data):
            chunk = min(len(data) - off, PAGE_SIZE - ((va + off) & (PAGE_SIZE - 1)))
            pieces.append((self.translate(va + off, write=True), off, chunk))
            off += chunk
        mem = self.mem
        for m, o, n in pieces:
            mem.view[m:m + n] = data[o:o + n]
            if mem.write_observer is not None:
                mem.note_write(m, n)

    def read_u32(self, va: int) -> int:
        return struct.unpack("<I", self.read(va, 4))[0]

    def read_u64(self, va: int) -> int:
        return struct.unpack("<Q", self.read(va, 8))[0]

    def read_ulong(self, va: int) -> int:
        return struct.unpack("<I" if self.width == 4 else "<Q", self.read(va, self.width))[0]

    def write_u32(self, va: int, v: int) -> None:
        self.write(va, struct.pack("<I", v & 0xFFFFFFFF))

    def write_ulong(self, va: int, v: int) -> None:
        self.write(va, v.to_bytes(self.width, "little", signed=False) if v >= 0
                   else (v & ((1 << (8 * self.width)) - 1)).to_bytes(self.width, "little"))

    def read_struct(self, va: int, ctype):
        """copy_from_guest of one ctypes structure (a private copy: read once, check local)."""
        return ctype.from_buffer_copy(self.read(va, ctypes.sizeof(ctype)))

    def write_struct(self, va: int, obj) -> None:
        self.write(va, bytes(obj))

    def read_cstring(self, va: int, maxlen: int) -> bytes:
        out = bytearray()
        while len(out) < maxlen:
            chunk = self.read(va + len(out), min(maxlen - len(out),
                                                  PAGE_SIZE - ((va + len(out)) & (PAGE_SIZE - 1))))
            nul = chunk.find(b"\0")
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
        return bytes(out)
