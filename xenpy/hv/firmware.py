"""Assemble firmware/*.s (code xenpy runs inside the emulated CPU) and the hypercall page."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import cache

from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks

from .. import ROOT
from ..abi.xen import (HYPERCALL_PAGE_STUBS, HYPERCALL_STUB_SIZE, HYPERCALL_VECTOR,
                       HYPERCALL_NR, PAGE_SIZE, Width)

_IRET = HYPERCALL_NR["iret"]


@dataclass
class Firmware:
    """Assembled firmware: page contents by page name, and routine addresses."""
    pages: dict[str, bytearray] = field(default_factory=dict)
    symbols: dict[str, int] = field(default_factory=dict)


def _parse(text: str) -> list[tuple[str, str, list[str]]]:
    """[(page, routine, lines)] from the firmware source."""
    out: list[tuple[str, str, list[str]]] = []
    page = None
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("@page"):
            page = line.split()[1]
        elif re.fullmatch(r"[A-Za-z_]\w*:", line):
            if page is None:
                raise ValueError(f"firmware routine {line} outside an @page")
            out.append((page, line[:-1], []))
        else:
            out[-1][2].append(line)
    return out


@cache
def build_firmware(name: str, width: Width, page_vas: tuple[tuple[str, int], ...]) -> Firmware:
    """Assemble firmware/<name>.s for pages placed at the given virtual addresses."""
    ks = Ks(KS_ARCH_X86, KS_MODE_32 if width == Width.X86_32 else KS_MODE_64)
    routines = _parse((ROOT / "firmware" / f"{name}.s").read_text())
    vas = dict(page_vas)
    fw = Firmware({p: bytearray(b"\xcc" * PAGE_SIZE) for p in vas})
    # Lay out: 16 bytes per routine is enough for these stubs; checked below.
    cursor = {p: 0 for p in vas}
    for page, routine, _ in routines:
        fw.symbols[routine] = vas[page] + cursor[page]
        cursor[page] += 16
    for page, routine, lines in routines:
        src = "; ".join(re.sub(r"\{(\w+)\}", lambda m: hex(fw.symbols[m.group(1)]), ln)
                        for ln in lines)
        code = bytes(_asm(ks, src, fw.symbols[routine]))
        if len(code) > 16:
            raise ValueError(f"firmware routine {routine} is {len(code)} bytes (max 16)")
        off = fw.symbols[routine] - vas[page]
        fw.pages[page][off:off + len(code)] = code
    return fw


def _asm(ks: Ks, src: str, addr: int) -> bytes:
    data = bytearray()
    for stmt in src.split("; "):
        if stmt.startswith((".long", ".word")):
            size = 4 if stmt.startswith(".long") else 2
            data += int(stmt.split()[1], 0).to_bytes(size, "little")
        else:
            enc, _ = ks.asm(stmt, addr + len(data))
            data += bytes(enc)
    return bytes(data)


@cache
def hypercall_page(width: Width) -> bytes:
    """The page Xen writes for XEN_DOMCTL_hypercall_init (pv_ring{1,3}_init_hypercall_page).

    One 32-byte stub per hypercall number; the iret stub pushes the return-value
    register and does not return.  Filler bytes are int3, as Xen's memset leaves them.
    """
    ks = Ks(KS_ARCH_X86, KS_MODE_32 if width == Width.X86_32 else KS_MODE_64)
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for nr in range(HYPERCALL_PAGE_STUBS):
        if width == Width.X86_32:
            src = (f"push eax; mov eax, {nr}; int {HYPERCALL_VECTOR:#x}" if nr == _IRET else
                   f"mov eax, {nr}; int {HYPERCALL_VECTOR:#x}; ret")
        else:
            src = (f"push rcx; push r11; push rax; mov eax, {nr}; syscall" if nr == _IRET else
                   f"push rcx; push r11; mov eax, {nr}; syscall; pop r11; pop rcx; ret")
        code = bytes(ks.asm(src)[0])
        page[nr * HYPERCALL_STUB_SIZE:nr * HYPERCALL_STUB_SIZE + len(code)] = code
    return bytes(page)


def pending_iret(v) -> tuple[int, int, int, int, int] | None:
    """(ip, cs, flags, sp, ss) when the vCPU sits at the firmware's ring-0 iret — how the
    boot and XEN_DOMCTL_setvcpucontext hand a context over, the frame lying in the
    hypervisor area where only this host can see it — else None.  Until that iret runs,
    the frame *is* the guest-visible context: what getvcpucontext must report and where
    an event must be delivered."""
    cpu = v.cpu
    wide = v.domain.width == Width.X86_64
    if cpu.reg("cs") & 3 or cpu.reg("rip" if wide else "eip") != v.fw_iret:
        return None
    from .guest_access import GuestFault
    size = 8 if wide else 4
    try:
        raw = v.gmem.read(cpu.reg("rsp" if wide else "esp"), 5 * size)
    except GuestFault:
        return None
    ip, cs, flags, sp, ss = struct.unpack("<5Q" if wide else "<5I", raw)
    return ip, cs & 0xFFFF, flags, sp, ss & 0xFFFF


def enter_guest_context(v) -> bool:
    """True when the vCPU is at its guest context — after executing the firmware's
    ring-0 iret first if one is pending (it is the next instruction; the run stops where
    it lands, before any guest code).  False if it could not get there."""
    frame = pending_iret(v)
    if frame is None:
        return True
    wide = v.domain.width == Width.X86_64
    budget = v.block_budget()
    budget.arm(4)            # the iret is one block; a faulting one must not run on
    try:
        v.cpu.run(v.fw_iret, frame[0])
    finally:
        budget.arm(0)
    return v.cpu.reg("rip" if wide else "eip") == frame[0] and v.cpu.reg("cs") & 3 != 0
