"""Fixtures for the save/migration stream tests: synthetic PV domain images and Xen's verifier.

The images are small but shaped like what libxc saves for a real PV guest: a page-table
hierarchy (L4..L1 for 64-bit, L3..L1 for 32-bit PAE) whose entries point at the next level,
the p2m frame, ordinary pages, the non-data page types (XTAB, XALLOC, BROKEN), one vCPU's
context, shared info and TSC info.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xenpy.toolstack.stream import (
    CpuidLeaf, DomainHeader, End, ImageHeader, LibxcContext, LibxlEnd, LibxlHeader, MsrEntry,
    PageData, SharedInfo, StaticDataEnd, StreamWriter, VcpuMsr, X86CpuidPolicy, X86MsrPolicy,
    X86PvInfo, X86PvP2mFrames, X86PvVcpuBasic, X86PvVcpuExtended, X86PvVcpuMsrs,
    X86PvVcpuXsave, X86TscInfo, XenpyExtension, XlHeader)
from xenpy.toolstack.stream import libxc

REPO = Path(__file__).resolve().parents[2]
PAGE = 4096
_PRESENT_RW = 0x3


@dataclass(frozen=True)
class Image:
    """A synthetic domain: its items in order and the file bytes the writer made."""

    width: int
    items: tuple[object, ...] = field(repr=False)
    data: bytes = field(repr=False)


def _table(entries: dict[int, int]) -> bytes:
    """A page-table page; PAE and long-mode entries are both 64-bit."""
    page = bytearray(PAGE)
    for index, pfn in entries.items():
        struct.pack_into("<Q", page, index * 8, (pfn << 12) | _PRESENT_RW)
    return bytes(page)


def _filled(tag: int) -> bytes:
    return bytes((tag + i) & 0xFF for i in range(PAGE))


def pv_items(width: int, extension: XenpyExtension | None = None,
             emulator_extension: XenpyExtension | None = None, version: int = 3) -> list[object]:
    """Every header and record of a synthetic PV guest's save file."""
    L = libxc
    if width == 8:
        # pfn 0: L4 (pinned) -> 1: L3 -> 2: L2 -> 3: L1 -> 4, 5 data; 6: p2m frame
        tables = [(0, L.XEN_DOMCTL_PFINFO_L4TAB | L.XEN_DOMCTL_PFINFO_LPINTAB, _table({0: 1})),
                  (1, L.XEN_DOMCTL_PFINFO_L3TAB, _table({0: 2})),
                  (2, L.XEN_DOMCTL_PFINFO_L2TAB, _table({0: 3})),
                  (3, L.XEN_DOMCTL_PFINFO_L1TAB, _table({4: 4, 5: 5, 6: 6}))]
        levels = 4
    else:
        # PAE: pfn 0: L3 (pinned) -> 1: L2 -> 2: L1 (pinned) -> 4, 5 data; 6: p2m frame
        tables = [(0, L.XEN_DOMCTL_PFINFO_L3TAB | L.XEN_DOMCTL_PFINFO_LPINTAB, _table({0: 1})),
                  (1, L.XEN_DOMCTL_PFINFO_L2TAB, _table({0: 2})),
                  (2, L.XEN_DOMCTL_PFINFO_L1TAB | L.XEN_DOMCTL_PFINFO_LPINTAB,
                   _table({4: 4, 5: 5, 6: 6})),
                  (3, L.XEN_DOMCTL_PFINFO_NOTAB, _filled(3))]
        levels = 3
    nr_pfns = 10
    p2m = bytearray(PAGE)
    for pfn in range(nr_pfns):
        struct.pack_into("<Q" if width == 8 else "<I", p2m, pfn * width, 0x1000 + pfn)
    data_pages = tables + [(4, L.XEN_DOMCTL_PFINFO_NOTAB, _filled(4)),
                           (5, L.XEN_DOMCTL_PFINFO_NOTAB, _filled(5)),
                           (6, L.XEN_DOMCTL_PFINFO_NOTAB, bytes(p2m))]
    batch1 = PageData(tuple(p for p, _, _ in data_pages[:4]), tuple(t for _, t, _ in data_pages[:4]),
                      tuple(c for _, _, c in data_pages[:4]))
    rest = data_pages[4:] + [(7, L.XEN_DOMCTL_PFINFO_XTAB, None),
                             (8, L.XEN_DOMCTL_PFINFO_XALLOC, None),
                             (9, L.XEN_DOMCTL_PFINFO_BROKEN, None)]
    batch2 = PageData(tuple(p for p, _, _ in rest), tuple(t for _, t, _ in rest),
                      tuple(c for _, _, c in rest if c is not None))
    context = bytes((i * 7) & 0xFF for i in range(libxc.VCPU_GUEST_CONTEXT_SIZE[width]))
    shared = bytearray(PAGE)
    shared[0:2] = b"\x01\x00"  # vcpu_info[0].evtchn_upcall_pending
    config = {"c_info": {"type": "pv", "name": f"synthetic{width * 8}"},
              "b_info": {"max_vcpus": 1, "max_memkb": nr_pfns * 4}}
    items: list[object] = [
        XlHeader.from_config(config, extension),
        LibxlHeader(),
        LibxcContext(),
        ImageHeader(version),
        DomainHeader(libxc.DHDR_TYPE_X86_PV, 4, 17),
        X86PvInfo(width, levels),
    ]
    if version >= 3:
        items += [X86CpuidPolicy((CpuidLeaf(0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
                                  CpuidLeaf(1, 0xFFFFFFFF, 0x306C3, 0, 0x80202001, 0x178BFBFF))),
                  X86MsrPolicy((MsrEntry(0xCE, 0),)),
                  StaticDataEnd()]
    items += [
        X86PvP2mFrames(0, nr_pfns - 1, (6,)),
        batch1,
        batch2,
        X86TscInfo(0, 2_000_000, 123_456_789, 1),
        SharedInfo(bytes(shared)),
        X86PvVcpuBasic(0, context),
        X86PvVcpuExtended(0, bytes(range(40))),
        X86PvVcpuXsave(0, struct.pack("<QQ", 0x7, 0x7) + bytes(512 + 64)),
        X86PvVcpuMsrs(0, (VcpuMsr(0xC0000103, 0),)),
        End(),
    ]
    if emulator_extension is not None:
        items.append(emulator_extension.to_record())
    items.append(LibxlEnd())
    return items


def build_image(width: int, **kwargs: object) -> Image:
    items = pv_items(width, **kwargs)  # type: ignore[arg-type]
    writer = StreamWriter("xl")
    data = b"".join(writer.send(item) for item in items)
    assert writer.done
    return Image(width, tuple(items), data)


@pytest.fixture(params=[4, 8], ids=["pv32pae", "pv64"])
def pv_image(request: pytest.FixtureRequest) -> Image:
    return build_image(request.param)


@pytest.fixture(scope="session")
def verify_stream() -> str:
    """Path to a runnable verify-stream-v2: $XEN_VERIFY_STREAM, else tools/get-verify-stream."""
    path = os.environ.get("XEN_VERIFY_STREAM")
    if not path:
        if shutil.which("apt-get") is None:
            pytest.fail("verify-stream-v2 needs XEN_VERIFY_STREAM or apt-get (tools/get-verify-stream)")
        proc = subprocess.run([str(REPO / "tools" / "get-verify-stream")], capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"tools/get-verify-stream failed: {proc.stderr}"
        path = proc.stdout.strip().splitlines()[-1]
    assert os.access(path, os.X_OK), f"verifier {path!r} is not executable"
    return path


class Verifier:
    """Runs verify-stream-v2 on bytes written to a temporary file."""

    def __init__(self, path: str, tmp_path: Path) -> None:
        self.path = path
        self._tmp = tmp_path
        self._n = 0

    def __call__(self, data: bytes, fmt: str = "xl") -> subprocess.CompletedProcess[str]:
        self._n += 1
        image = self._tmp / f"image{self._n}.{fmt}"
        image.write_bytes(data)
        return subprocess.run([self.path, "-v", "-f", fmt, "-i", str(image)], capture_output=True,
                              text=True, timeout=60, check=False)


@pytest.fixture
def verifier(verify_stream: str, tmp_path: Path) -> Verifier:
    return Verifier(verify_stream, tmp_path)


@pytest.fixture(scope="session")
def image_builder():
    """build_image(width, extension=..., emulator_extension=..., version=...) -> Image."""
    return build_image
