"""Machine memory: one host buffer of frames, the frame table and the M2P.

Every vCPU maps the whole buffer as ONE Unicorn region at machine address 0
(region count is what makes Unicorn slow, unicorn-notes §9), so guest page tables
hold machine frame numbers exactly as under Xen's direct paging.  Isolation is not
Unicorn's job: it comes from the hypervisor validating every page-table entry a guest
installs (mm.py) against the frame table kept here.

The frame table follows Xen's ``struct page_info`` in spirit: an owner, a type (what
the frame is being used as: a page table of some level, a descriptor table, or
writable memory), a type count (how many uses of that type exist) and a general
reference count.  A frame changes type only when its type count is zero, so a frame
is never both a page table and mapped writable.
"""
from __future__ import annotations

import mmap
import struct
from array import array
from dataclasses import dataclass

from ..abi.xen import DOMID_XEN, PAGE_SHIFT, PAGE_SIZE
from ..errors import XenpyError

#: Owner value of a free frame.
DOMID_FREE = 0xFFFF


class PageType:
    """Xen's PGT_* frame types (the value stored in the frame table)."""
    none = 0
    l1 = 1
    l2 = 2
    l3 = 3
    l4 = 4
    seg_desc = 5
    writable = 6
    NAMES = ("none", "l1", "l2", "l3", "l4", "seg_desc", "writable")


class OutOfMemory(XenpyError):
    """The host has no free machine frames left."""


@dataclass
class FrameInfo:
    """A read-only snapshot of one frame-table entry (for tests and debugging)."""
    mfn: int
    owner: int
    type: int
    type_count: int
    ref_count: int
    pinned: bool


class MachineMemory:
    """The host's machine frames, their frame table, and the 32- and 64-bit M2P tables."""

    def __init__(self, size_mib: int) -> None:
        if size_mib < 16 or size_mib > 4096:
            raise XenpyError(f"host memory: expected 16..4096 MiB, got {size_mib}")
        self.nr_frames = size_mib << (20 - PAGE_SHIFT)
        #: mfn -> None, called for every write the host makes through this object while a
        #: domain is in log-dirty mode (hv/domctl.py); None otherwise (no cost).
        self.write_observer = None
        self.size = self.nr_frames << PAGE_SHIFT
        self.buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.buf)
        import ctypes
        self.ptr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        n = self.nr_frames
        self.owner = array("H", [DOMID_FREE]) * n
        self.type = bytearray(n)
        self.type_count = array("I", [0]) * n
        self.ref_count = array("I", [0]) * n
        self.pinned = bytearray(n)
        # Free frames are handed out from the top down, so a domain's machine frames
        # are neither contiguous with its pseudo-physical ones nor identity-mapped.
        self._free = list(range(n))
        self._free_set_dirty = False
        # M2P tables, filled as frames are assigned: compat (4-byte) and native (8-byte).
        self.m2p32 = self.alloc_xen_frames((n * 4 + PAGE_SIZE - 1) // PAGE_SIZE)
        self.m2p64 = self.alloc_xen_frames((n * 8 + PAGE_SIZE - 1) // PAGE_SIZE)
        for mfn in self.m2p32:
            self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT] = b"\xff" * PAGE_SIZE
        for mfn in self.m2p64:
            self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT] = b"\xff" * PAGE_SIZE
        self._m2p32_base = [m << PAGE_SHIFT for m in self.m2p32]
        self._m2p64_base = [m << PAGE_SHIFT for m in self.m2p64]

    # --- allocation ----------------------------------------------------------------------------
    @property
    def free_frames(self) -> int:
        return len(self._free)

    def alloc_frames(self, owner: int, count: int) -> list[int]:
        """Give ``count`` zeroed frames to ``owner``; all or nothing."""
        if count > len(self._free):
            raise OutOfMemory(f"need {count} frames, {len(self._free)} free "
                              f"({len(self._free) * PAGE_SIZE >> 20} MiB); "
                              "give the host more memory (--host-memory)")
        frames = [self._free.pop() for _ in range(count)]
        for mfn in frames:
            self.owner[mfn] = owner
            self.type[mfn] = PageType.none
            self.type_count[mfn] = 0
            self.ref_count[mfn] = 1        # the allocation reference (Xen's PGC_allocated)
            self.pinned[mfn] = 0
        return frames

    def alloc_xen_frames(self, count: int) -> list[int]:
        """Frames owned by the hypervisor itself (M2P, GDTs, hypervisor page tables)."""
        frames = self.alloc_frames(DOMID_XEN, count)
        return frames

    def free_frames_of(self, mfns: list[int]) -> None:
        """Scrub and release frames (a destroyed domain's, a ballooned-out page)."""
        zero = bytes(PAGE_SIZE)
        for mfn in mfns:
            if self.owner[mfn] == DOMID_FREE:
                continue                   # already free: releasing twice must be harmless
            self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT] = zero
            self.owner[mfn] = DOMID_FREE
            self.type[mfn] = PageType.none
            self.type_count[mfn] = 0
            self.ref_count[mfn] = 0
            self.pinned[mfn] = 0
            self.set_m2p(mfn, None)
            self._free.append(mfn)

    def info(self, mfn: int) -> FrameInfo:
        return FrameInfo(mfn, self.owner[mfn], self.type[mfn], self.type_count[mfn],
                         self.ref_count[mfn], bool(self.pinned[mfn]))

    def valid_mfn(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames

    # --- M2P -----------------------------------------------------------------------------------
    def set_m2p(self, mfn: int, pfn: int | None) -> None:
        """Record machine→pseudo-physical in both M2P tables (None = invalid)."""
        v32 = 0xFFFFFFFF if pfn is None else pfn & 0xFFFFFFFF
        v64 = 0xFFFFFFFFFFFFFFFF if pfn is None else pfn
        a32 = self._m2p32_base[(mfn * 4) >> PAGE_SHIFT] + ((mfn * 4) & (PAGE_SIZE - 1))
        a64 = self._m2p64_base[(mfn * 8) >> PAGE_SHIFT] + ((mfn * 8) & (PAGE_SIZE - 1))
        struct.pack_into("<I", self.buf, a32, v32)
        struct.pack_into("<Q", self.buf, a64, v64)

    def m2p(self, mfn: int) -> int | None:
        a64 = self._m2p64_base[(mfn * 8) >> PAGE_SHIFT] + ((mfn * 8) & (PAGE_SIZE - 1))
        v = struct.unpack_from("<Q", self.buf, a64)[0]
        return None if v == 0xFFFFFFFFFFFFFFFF else v

    # --- raw access ----------------------------------------------------------------------------
    def page(self, mfn: int) -> memoryview:
        return self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT]

    def read(self, maddr: int, size: int) -> bytes:
        return bytes(self.view[maddr:maddr + size])

    def note_write(self, maddr: int, size: int = 1) -> None:
        """A host-side write into machine memory (log-dirty sees only guest stores)."""
        obs = self.write_observer
        if obs is not None:
            for mfn in range(maddr >> PAGE_SHIFT, ((maddr + max(size, 1) - 1) >> PAGE_SHIFT) + 1):
                obs(mfn)

    def write(self, maddr: int, data: bytes) -> None:
        self.view[maddr:maddr + len(data)] = data
        if self.write_observer is not None:
            self.note_write(maddr, len(data))

    def read_u32(self, maddr: int) -> int:
        return struct.unpack_from("<I", self.buf, maddr)[0]

    def read_u64(self, maddr: int) -> int:
        return struct.unpack_from("<Q", self.buf, maddr)[0]

    def write_u32(self, maddr: int, value: int) -> None:
        struct.pack_into("<I", self.buf, maddr, value & 0xFFFFFFFF)
        if self.write_observer is not None:
            self.note_write(maddr, 4)

    def write_u64(self, maddr: int, value: int) -> None:
        struct.pack_into("<Q", self.buf, maddr, value & 0xFFFFFFFFFFFFFFFF)
        if self.write_observer is not None:
            self.note_write(maddr, 8)

    def close(self) -> None:
        self.view.release()
        try:
            self.buf.close()
        except BufferError:
            pass   # a ctypes view (a Unicorn mapping) still refers to it; freed at exit
