"""Shared pieces of the benchmarks: guest runs under xenpy, the same code on bare Unicorn,
statistics and output.

Every benchmark compares xenpy against a baseline measured in the same process and the
same run, because this machine (2 cores, shared) is noisy: absolute numbers move by up to
2x between runs, ratios much less.  Each script prints a table for people and ends with
one JSON line (``{"bench": ..., ...}``) for comparing commits.  Nothing here asserts on
timings; a wrong guest result (not a slow one) is an error.
"""
from __future__ import annotations

import ctypes
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keystone
import unicorn as uc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from xenpy import ROOT
from xenpy.abi.sched import Shutdown
from xenpy.abi.xen import PAGE_SIZE, Width
from xenpy.hv.firmware import hypercall_page
from xenpy.hv.host import Host
from xenpy.toolstack.domain import DomainSpec, boot_domain
from xenpy.toolstack.elf import XenElfImage, load_xen_elf

GUESTS = ROOT / "guests" / "build"


class BenchError(RuntimeError):
    """A guest gave a wrong result or did not finish: the numbers would be meaningless."""


def guest_path(name: str, width: int = 32) -> Path:
    """The built guest ``name`` for a 32-bit (PAE) or 64-bit guest ABI."""
    if width not in (32, 64):
        raise BenchError(f"width: expected 32 or 64, got {width}")
    p = GUESTS / f"{name}-x86_{width}.elf"
    if not p.exists():
        raise BenchError(f"{p}: guest not built (run `make -C guests`)")
    return p


# --- xenpy ------------------------------------------------------------------------------------
@dataclass
class XenpyRun:
    """One guest run under xenpy, with a timestamp (perf_counter) for each console write."""
    t_start: float                       # before Host()
    t_booted: float                      # after boot_domain()
    t_end: float                         # host.run() returned
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    cpu_time: float = 0.0                # the domain's accumulated run_slice time

    @property
    def output(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    @property
    def first_byte(self) -> float:
        return self.chunks[0][0]

    @property
    def last_byte(self) -> float:
        return self.chunks[-1][0]


def run_under_xenpy(guest: str, cmdline: str = "", timeout: float = 600.0,
                    memory_mib: int = 32, width: int = 32, **host_options: object) -> XenpyRun:
    """Boot ``guest`` in a fresh Host as `xenpy run` does and run it to poweroff.

    ``host_options`` go to ``Host()`` (e.g. ``deterministic=True``)."""
    t0 = time.perf_counter()
    try:
        host = Host(memory_mib=max(128, memory_mib + 64), **host_options)
    except TypeError as e:
        raise BenchError(f"Host() does not take {sorted(host_options)}: {e}") from None
    try:
        d = boot_domain(host, DomainSpec(name=guest, kernel=guest_path(guest, width),
                                         memory_mib=memory_mib, cmdline=cmdline))
        t1 = time.perf_counter()
        run = XenpyRun(t0, t1, 0.0)
        d.console_sink = lambda data: run.chunks.append((time.perf_counter(), data))
        finished = host.run([d], timeout=timeout)
        run.t_end = time.perf_counter()
        run.cpu_time = d.cpu_time
        if not finished:
            raise BenchError(f"{guest}: still running after {timeout} s")
        if d.shutdown_reason != Shutdown.poweroff:
            raise BenchError(f"{guest}: shut down with {d.shutdown_reason} "
                             f"({d.crash_message}); console: {run.output[-300:]!r}")
        if not run.chunks:
            raise BenchError(f"{guest}: no console output")
        return run
    finally:
        host.close()


# --- bare Unicorn -----------------------------------------------------------------------------
STACK_TOP = 0x00100000          # flat scratch area below the image: stack, stub results
RESULT_FMT = 0x00001000         # where the printf stub stores its format pointer
RESULT_ARG = 0x00001004         # ... and its first vararg
SENTINEL = 0x00002000           # main's return address; emu_start stops there


class BareGuest:
    """A guest ELF's PT_LOAD segments in a bare Unicorn, flat 32-bit protected mode, CPL 0.

    No paging, no GDT, no hypervisor: the baseline for "the same code".  Library calls that
    would need a hypervisor are replaced by stubs written over their first bytes:
    ``xg_cmdline_ulong`` returns ``n`` and ``xg_printf`` records its format pointer and
    first argument (so the caller can check the guest's answer).  The hypercall page gets
    the bytes xenpy's builder writes (``mov eax, nr; int 0x82; ret``).
    """

    def __init__(self, path: Path, n: int) -> None:
        self.image: XenElfImage = load_xen_elf(path)
        if self.image.guest_type != "xen-3.0-x86_32p":
            raise BenchError(f"{path}: expected a 32-bit PAE guest, got {self.image.guest_type}")
        self.uc = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_32)
        self.uc.mem_map(0, STACK_TOP, uc.UC_PROT_ALL)
        segs = [(self.image.load_address(s), s) for s in self.image.segments]
        lo = min(a for a, _ in segs) & ~(PAGE_SIZE - 1)
        hi = -(-max(a + s.memsz for a, s in segs) // PAGE_SIZE) * PAGE_SIZE
        self.uc.mem_map(lo, hi - lo, uc.UC_PROT_ALL)
        for addr, s in segs:
            self.uc.mem_write(addr, s.data + bytes(s.memsz - s.filesz))
        if self.image.hypercall_page is not None:
            self.uc.mem_write(self.image.hypercall_page, hypercall_page(Width.X86_32))
        sym = self.image.symbols
        self.main = sym["main"]
        # xg_cmdline_ulong: mov eax, n; ret
        self.uc.mem_write(sym["xg_cmdline_ulong"], b"\xb8" + n.to_bytes(4, "little") + b"\xc3")
        # xg_printf: mov eax,[esp+4]; mov [RESULT_FMT],eax; mov eax,[esp+8];
        #            mov [RESULT_ARG],eax; xor eax,eax; ret
        self.uc.mem_write(sym["xg_printf"],
                          b"\x8b\x44\x24\x04" + b"\xa3" + RESULT_FMT.to_bytes(4, "little")
                          + b"\x8b\x44\x24\x08" + b"\xa3" + RESULT_ARG.to_bytes(4, "little")
                          + b"\x31\xc0\xc3")
        self.uc.mem_write(SENTINEL, b"\xf4")           # hlt, never executed

    def call_main(self) -> float:
        """Call main() with a fresh stack; return its wall time in seconds."""
        sp = STACK_TOP - 64
        self.uc.mem_write(sp, SENTINEL.to_bytes(4, "little"))
        self.uc.reg_write(x86.UC_X86_REG_ESP, sp)
        self.uc.reg_write(x86.UC_X86_REG_EAX, 0)
        t0 = time.perf_counter()
        self.uc.emu_start(self.main, SENTINEL)
        t = time.perf_counter() - t0
        eip = self.uc.reg_read(x86.UC_X86_REG_EIP)
        if eip != SENTINEL:
            raise BenchError(f"bare run stopped at eip {eip:#x}, not main's return")
        return t

    def last_printf(self) -> tuple[str, int]:
        """The format string and first argument of the last xg_printf call."""
        fmt_ptr = int.from_bytes(self.uc.mem_read(RESULT_FMT, 4), "little")
        arg = int.from_bytes(self.uc.mem_read(RESULT_ARG, 4), "little")
        fmt = bytes(self.uc.mem_read(fmt_ptr, 64)).split(b"\0")[0].decode("ascii", "replace")
        return fmt, arg

    def read_virt(self, addr: int, size: int) -> bytes:
        """Guest memory at a virtual address (flat: virtual = physical)."""
        return bytes(self.uc.mem_read(addr, size))


# 64-bit: long mode needs paging, so the bare guest gets minimal 4-level tables of 2 MiB
# pages.  The low 2 MiB are identity-mapped (stack, stub results, sentinel, the tables);
# the image's high-half virtual range is mapped to physical IMAGE_PHYS upwards.
LARGE_PAGE = 2 << 20
TABLES = 0x00003000             # PML4, low PDPT, low PD, high PDPT, high PD: 5 pages
IMAGE_PHYS = 0x00400000         # where the image's first 2 MiB page lives
RESULT_FMT64 = 0x00001010       # 64-bit printf stub: format pointer (8 bytes)
RESULT_ARG64 = 0x00001018       # ... and its first vararg (rsi)
_PTE_P, _PTE_RW, _PTE_PS = 0x1, 0x2, 0x80
_CR0_PG, _CR4_PAE = 0x80000000, 0x20


class BareGuest64:
    """A 64-bit guest ELF in a bare Unicorn (UC_MODE_64, CPL 0, 4-level paging of 2 MiB pages).

    The same interface and stubs as :class:`BareGuest`, assembled with keystone:
    ``xg_cmdline_ulong`` is ``mov rax, n; ret``; ``xg_printf`` stores rdi (format) and rsi
    (first vararg).  The hypercall page gets xenpy's 64-bit bytes (``push rcx; push r11;
    mov eax, nr; syscall; pop r11; pop rcx; ret``).
    """

    def __init__(self, path: Path, n: int) -> None:
        self.image: XenElfImage = load_xen_elf(path)
        if self.image.guest_type != "xen-3.0-x86_64":
            raise BenchError(f"{path}: expected a 64-bit guest, got {self.image.guest_type}")
        self.uc = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        self.uc.mem_map(0, LARGE_PAGE, uc.UC_PROT_ALL)
        segs = [(self.image.load_address(s), s) for s in self.image.segments]
        self.virt_base = min(a for a, _ in segs) & ~(LARGE_PAGE - 1)
        top = max(a + s.memsz for a, s in segs)
        pages = -(-(top - self.virt_base) // LARGE_PAGE)
        if (self.virt_base >> 30) != ((self.virt_base + pages * LARGE_PAGE - 1) >> 30):
            raise BenchError(f"{path}: image {self.virt_base:#x}..{top:#x} crosses a 1 GiB "
                             f"boundary; the bare loader maps one page directory only")
        if pages > 64:
            raise BenchError(f"{path}: image is {top - self.virt_base:#x} bytes; expected "
                             f"at most {64 * LARGE_PAGE:#x}")
        self.uc.mem_map(IMAGE_PHYS, pages * LARGE_PAGE, uc.UC_PROT_ALL)
        self._build_tables(pages)
        for addr, s in segs:
            self.uc.mem_write(self._phys(addr), s.data + bytes(s.memsz - s.filesz))
        if self.image.hypercall_page is not None:
            self.uc.mem_write(self._phys(self.image.hypercall_page),
                              hypercall_page(Width.X86_64))
        sym = self.image.symbols
        self.main = sym["main"]
        ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)

        def asm(text: str) -> bytes:
            code, _ = ks.asm(text)
            return bytes(code)

        self.uc.mem_write(self._phys(sym["xg_cmdline_ulong"]), asm(f"mov rax, {n:#x}; ret"))
        # An absolute address through a register: keystone would encode [imm] RIP-relative.
        self.uc.mem_write(self._phys(sym["xg_printf"]),
                          asm(f"mov rax, {RESULT_FMT64:#x}; mov [rax], rdi; "
                              f"mov [rax + {RESULT_ARG64 - RESULT_FMT64}], rsi; "
                              f"xor eax, eax; ret"))
        self.uc.mem_write(SENTINEL, b"\xf4")           # hlt, never executed

    def _build_tables(self, pages: int) -> None:
        pml4, pdpt_lo, pd_lo, pdpt_hi, pd_hi = (TABLES + i * PAGE_SIZE for i in range(5))
        v = self.virt_base
        link = _PTE_P | _PTE_RW
        entries = [
            (pml4, 0, pdpt_lo | link), (pdpt_lo, 0, pd_lo | link),
            (pd_lo, 0, 0 | link | _PTE_PS),
            (pml4, (v >> 39) & 511, pdpt_hi | link),
            (pdpt_hi, (v >> 30) & 511, pd_hi | link),
        ] + [(pd_hi, ((v >> 21) & 511) + i, (IMAGE_PHYS + i * LARGE_PAGE) | link | _PTE_PS)
             for i in range(pages)]
        for table, index, value in entries:
            self.uc.mem_write(table + 8 * index, value.to_bytes(8, "little"))
        self.uc.reg_write(x86.UC_X86_REG_CR3, pml4)
        self.uc.reg_write(x86.UC_X86_REG_CR4, self.uc.reg_read(x86.UC_X86_REG_CR4) | _CR4_PAE)
        self.uc.reg_write(x86.UC_X86_REG_CR0, self.uc.reg_read(x86.UC_X86_REG_CR0) | _CR0_PG)

    def _phys(self, virt: int) -> int:
        """Physical address of a virtual one: identity below 2 MiB, else in the image."""
        if virt < LARGE_PAGE:
            return virt
        off = virt - self.virt_base
        if off < 0:
            raise BenchError(f"virtual address {virt:#x} is outside the bare 64-bit mapping")
        return IMAGE_PHYS + off

    def read_virt(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(self._phys(addr), size))

    def call_main(self) -> float:
        """Call main() with a fresh stack; return its wall time in seconds."""
        sp = STACK_TOP - 72                          # rsp % 16 == 8 at entry, as after a call
        self.uc.mem_write(sp, SENTINEL.to_bytes(8, "little"))
        self.uc.reg_write(x86.UC_X86_REG_RSP, sp)
        self.uc.reg_write(x86.UC_X86_REG_RAX, 0)
        t0 = time.perf_counter()
        self.uc.emu_start(self.main, SENTINEL)
        t = time.perf_counter() - t0
        rip = self.uc.reg_read(x86.UC_X86_REG_RIP)
        if rip != SENTINEL:
            raise BenchError(f"bare 64-bit run stopped at rip {rip:#x}, not main's return")
        return t

    def last_printf(self) -> tuple[str, int]:
        """The format string and first argument of the last xg_printf call."""
        fmt_ptr = int.from_bytes(self.uc.mem_read(RESULT_FMT64, 8), "little")
        arg = int.from_bytes(self.uc.mem_read(RESULT_ARG64, 8), "little")
        fmt = self.read_virt(fmt_ptr, 64).split(b"\0")[0].decode("ascii", "replace")
        return fmt, arg


def bare_guest(path: Path, n: int, width: int = 32) -> BareGuest | BareGuest64:
    """The bare-Unicorn loader for a guest of ``width`` bits."""
    return BareGuest64(path, n) if width == 64 else BareGuest(path, n)


_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)


_INVALID_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                          ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                           ctypes.c_void_p)
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)
_SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


def _raw_hook(u: uc.Uc, htype: int, thunk: object, *extra: int) -> object:
    """Register a ctypes thunk through the C API (as xenpy/cpu/x86.py does); return the
    thunk, which the caller must keep alive."""
    h = ctypes.c_size_t()
    err = uclib.uc_hook_add(u._uch, ctypes.byref(h), htype, ctypes.cast(thunk, ctypes.c_void_p),
                            None, ctypes.c_uint64(1), ctypes.c_uint64(0),
                            *[ctypes.c_int(e) for e in extra])
    if err != uc.UC_ERR_OK:
        raise BenchError(f"uc_hook_add({htype}): {uc.UcError(err)}")
    return thunk


def add_raw_intr_hook(u: uc.Uc, fn: Callable[[int], None]) -> object:
    """A UC_HOOK_INTR hook calling ``fn(vector)``, registered raw; keep the result alive."""
    return _raw_hook(u, uc.UC_HOOK_INTR, _INTR_CB(lambda _h, intno, _u: fn(intno)))


def add_raw_syscall_hook(u: uc.Uc, fn: Callable[[], None]) -> object:
    """A UC_HOOK_INSN hook for SYSCALL calling ``fn()``, registered raw; keep the result alive.

    Unicorn adds 2 to RIP after the hook (even if the hook wrote RIP), so an empty hook
    resumes after the ``syscall``."""
    return _raw_hook(u, uc.UC_HOOK_INSN, _SYSCALL_CB(lambda _h, _u: fn()),
                     x86.UC_X86_INS_SYSCALL)


def add_empty_xenpy_hooks(u: uc.Uc, width: int = 32) -> list[object]:
    """The hook set xenpy installs on every vCPU (INTR, INSN_INVALID, IN, OUT, CPUID, and
    SYSCALL for 64-bit guests), all empty: separates what merely having hooks costs Unicorn
    from what xenpy does."""
    return ([add_raw_syscall_hook(u, lambda: None)] if width == 64 else []) + [
        add_raw_intr_hook(u, lambda _v: None),
        _raw_hook(u, uc.UC_HOOK_INSN_INVALID, _INVALID_CB(lambda _h, _u: False)),
        _raw_hook(u, uc.UC_HOOK_INSN, _IN_CB(lambda _h, _p, _s, _u: 0), x86.UC_X86_INS_IN),
        _raw_hook(u, uc.UC_HOOK_INSN, _OUT_CB(lambda _h, _p, _s, _v, _u: None),
                  x86.UC_X86_INS_OUT),
        _raw_hook(u, uc.UC_HOOK_INSN, _INSN_CB(lambda _h, _u: 0), x86.UC_X86_INS_CPUID),
    ]


# --- statistics and output --------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """min-max as a percentage of the median: how noisy a row was."""
    m = statistics.median(xs)
    return f"{100 * (max(xs) - min(xs)) / m:.0f}%" if m else "-"


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1000 else f"{c:,.0f}"
    return str(c)


def emit_json(record: dict) -> None:
    """The last line of every benchmark: one JSON object, rounded for diffing."""
    out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
    print(json.dumps(out, sort_keys=False), flush=True)
