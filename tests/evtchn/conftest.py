"""Booted-but-not-running domains whose hypercalls the tests issue directly."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from xenpy.abi.xen import HYPERCALL_NR, PAGE_SIZE
from xenpy.hv import hypercall as hc
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf
from xenpy.cli import resolve_kernel


@dataclass
class Guest:
    """One domain plus a scratch page of its own address space for hypercall arguments."""
    run: object

    @property
    def d(self):
        return self.run.domain

    @property
    def v(self):
        return self.d.vcpus[0]

    @property
    def scratch(self) -> int:
        d = self.d
        image = load_xen_elf(resolve_kernel(f"hello-x86_{d.width * 8}" if d.width == 8 else "hello"))
        lay = plan_layout(image, d.max_pages, d.width)
        return lay.virt_end - PAGE_SIZE

    def call(self, name: str, *args: int) -> int | None:
        mask = (1 << (8 * self.d.width)) - 1
        full = tuple(a & mask for a in args) + (0,) * (6 - len(args))
        res = hc.dispatch(self.v, HYPERCALL_NR[name], full)
        if isinstance(res, int) and res >= 1 << (8 * self.d.width - 1):
            res -= 1 << (8 * self.d.width)
        return res

    def write(self, off: int, data: bytes) -> int:
        self.v.gmem.write(self.scratch + off, data)
        return self.scratch + off

    def read(self, off: int, n: int) -> bytes:
        return self.v.gmem.read(self.scratch + off, n)

    def u32(self, off: int) -> int:
        return struct.unpack("<I", self.read(off, 4))[0]

    def pending(self, port: int) -> bool:
        bits = self.d.width * 8
        return bool(self.d.shared_info.evtchn_pending[port // bits] >> (port % bits) & 1)


@pytest.fixture(params=["x86_32", "x86_64"])
def width(request):
    return request.param


@pytest.fixture
def pair(domain_factory, width):
    """Two domains of the same width, A and B."""
    kernel = "hello" if width == "x86_32" else "hello-x86_64"
    a = Guest(domain_factory(kernel, memory_mib=8, name="A"))
    b = Guest(domain_factory(kernel, memory_mib=8, name="B"))
    return a, b
