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


def guest_path(name: str) -> Path:
    p = GUESTS / f"{name}-x86_32.elf"
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
                    memory_mib: int = 32, **host_options: object) -> XenpyRun:
    """Boot ``guest`` in a fresh Host as `xenpy run` does and run it to poweroff.

    ``host_options`` go to ``Host()`` (e.g. ``deterministic=True``)."""
    t0 = time.perf_counter()
    try:
        host = Host(memory_mib=max(128, memory_mib + 64), **host_options)
    except TypeError as e:
        raise BenchError(f"Host() does not take {sorted(host_options)}: {e}") from None
    try:
        d = boot_domain(host, DomainSpec(name=guest, kernel=guest_path(guest),
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


_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)


_INVALID_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                          ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                           ctypes.c_void_p)
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)


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


def add_empty_xenpy_hooks(u: uc.Uc) -> list[object]:
    """The hook set xenpy installs on every vCPU (INTR, INSN_INVALID, IN, OUT, CPUID), all
    empty: separates what merely having hooks costs Unicorn from what xenpy does."""
    return [
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
