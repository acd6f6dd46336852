#!/usr/bin/env python3
"""Null hypercalls per second: the `nullhc` guest under xenpy vs the same loop with an empty hook.

xenpy runs `nullhc` (n calls of ``xen_version(XENVER_version, NULL)`` through the hypercall
page) and the rate is n / (time from the guest's first console write, just before the
loop, to its last, just after).

The baselines run the same ``main`` of the same ELF on a bare Unicorn (flat 32-bit, the
hypercall page xenpy writes, ``xg_cmdline_ulong``/``xg_printf`` stubbed) with an
``int 0x82`` hook that does nothing: once registered through the C API with a ctypes
thunk (the mechanism xenpy uses, so "xenpy / raw" is xenpy's dispatch overhead) and once
through the Python binding's ``hook_add`` (for reference).  Goal: >= 500k/s.

``--breakdown`` times the Python pieces of xenpy's hypercall path one by one (timeit, on
a booted nullhc domain, no guest running): dispatch (fast and general), the pending-event
check, and for reference a register batch read/write from Python through ctypes.
``--lean-path`` adds two more bare-Unicorn rows whose hook does the least work a
hypercall needs (read 9 registers, look the handler up in a list, call it, write eax,
test a ctypes pending flag): once through the binding's ``argtypes`` as xenpy does, once
through ``PYFUNCTYPE`` prototypes taking ``c_void_p``.  They show what a pure-Python
dispatch could reach on this machine.
``--profile`` runs the guest under cProfile (it inflates small Python functions: read
shares, not absolute times).
``--width 64`` runs the 64-bit ``nullhc`` (hypercalls through ``syscall`` in the hypercall
page); its baselines run the same ``main`` on a bare Unicorn in long mode (minimal 4-level
page tables) with an empty SYSCALL instruction hook.  ``--lean-path`` and ``--breakdown``
are 32-bit only.
"""
from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import pstats
import re
import sys
import timeit

import unicorn as uc
from _common import (
    BareGuest,
    BenchError,
    add_raw_intr_hook,
    add_raw_syscall_hook,
    bare_guest,
    emit_json,
    guest_path,
    median,
    run_under_xenpy,
    spread,
    table,
)
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from xenpy.abi.xen import HYPERCALL_NR

GOAL = 500_000


def bare_rate(n: int, raw: bool, repeat: int, width: int = 32) -> list[float]:
    """Seconds per run of nullhc's main on bare Unicorn with an empty hypercall hook
    (int 0x82 for 32-bit, SYSCALL for 64-bit: Unicorn resumes after the syscall)."""
    bare = bare_guest(guest_path("nullhc", width), n, width)
    def hook(_intno: int) -> None:
        pass

    if width == 64 and raw:
        keep = add_raw_syscall_hook(bare.uc, lambda: None)   # noqa: F841 - keep alive
    elif width == 64:
        bare.uc.hook_add(uc.UC_HOOK_INSN, lambda _uc, _ud: None, None, 1, 0,
                         x86.UC_X86_INS_SYSCALL)
    elif raw:
        keep = add_raw_intr_hook(bare.uc, hook)   # noqa: F841 - the thunk must stay alive
    else:
        bare.uc.hook_add(uc.UC_HOOK_INTR, lambda _uc, intno, _ud: None)
    times = []
    for _ in range(repeat):
        times.append(bare.call_main())
        fmt, arg = bare.last_printf()
        if "done" not in fmt or arg != n:
            raise BenchError(f"bare nullhc: expected 'done' {n}, got {fmt!r} {arg}")
    return times


class _PendingFlags(ctypes.Structure):
    _fields_ = [("evtchn_upcall_pending", ctypes.c_uint8), ("evtchn_upcall_mask", ctypes.c_uint8)]


def lean_rate(n: int, void_p: bool, repeat: int) -> list[float]:
    """Seconds per run of nullhc's main with a minimal Python hypercall path (see --lean-path)."""
    bare = BareGuest(guest_path("nullhc"), n)
    h = ctypes.cast(bare.uc._uch, ctypes.c_void_p).value
    names = ("EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "CS", "EIP")
    ids = (ctypes.c_int32 * 9)(*[getattr(x86, f"UC_X86_REG_{r}") for r in names])
    vals = (ctypes.c_uint64 * 9)()
    ptrs = (ctypes.c_void_p * 9)(*[ctypes.addressof(vals) + 8 * i for i in range(9)])
    out = ctypes.c_uint64()
    flags = _PendingFlags()
    xen_version = HYPERCALL_NR["xen_version"]
    handlers: list[tuple | None] = [None] * 64
    handlers[xen_version] = (lambda _v, cmd, _arg: 0x4000B if cmd == 0 else -38, 2)
    if void_p:
        proto = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int)
        read_batch = proto(ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p).value)
        write_one = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(
            ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value)
        ids_p, ptrs_p, out_p = ctypes.addressof(ids), ctypes.addressof(ptrs), ctypes.addressof(out)
        eax = x86.UC_X86_REG_EAX

        def read() -> None:
            read_batch(h, ids_p, ptrs_p, 9)

        def write() -> None:
            write_one(h, eax, out_p)
    else:
        hh = ctypes.c_void_p(h)
        eax_id = (ctypes.c_int32 * 1)(x86.UC_X86_REG_EAX)
        eax_ptr = (ctypes.c_void_p * 1)(ctypes.addressof(out))

        def read() -> None:
            uclib.uc_reg_read_batch(hh, ids, ptrs, 9)

        def write() -> None:
            uclib.uc_reg_write_batch(hh, eax_id, eax_ptr, 1)

    def hook(vector: int) -> None:
        if vector == 0x82:
            read()
            r = vals
            if r[7] & 3 == 0:                       # the bare guest runs at CPL 0
                fn, nargs = handlers[r[0]]
                out.value = fn(None, *(r[1], r[2], r[3], r[4], r[5], r[6])[:nargs]) & 0xFFFFFFFF
                write()
                if flags.evtchn_upcall_pending and not flags.evtchn_upcall_mask:
                    raise BenchError("no event can be pending here")

    keep = (add_raw_intr_hook(bare.uc, hook), ids, vals, ptrs, out)   # noqa: F841 - alive
    bare.call_main()                                                    # warm-up
    times = []
    for _ in range(repeat):
        times.append(bare.call_main())
        fmt, arg = bare.last_printf()
        if "done" not in fmt or arg != n:
            raise BenchError(f"lean-path nullhc: expected 'done' {n}, got {fmt!r} {arg}")
    return times


def xenpy_run(n: int, width: int = 32) -> float:
    r = run_under_xenpy("nullhc", cmdline=f"n={n}", width=width)
    out = r.output.decode("ascii", "replace")
    if not re.search(rf"nullhc: done {n}\b", out):
        raise BenchError(f"xenpy nullhc: expected 'nullhc: done {n}', got {out[-200:]!r}")
    return r.last_byte - r.first_byte


def profile(n: int, top: int, width: int = 32) -> None:
    prof = cProfile.Profile()
    prof.enable()
    xenpy_run(n, width)
    prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(top)
    print(f"\ncProfile of one xenpy run, n={n:,} (sorted by own time):")
    print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000])


def breakdown() -> list[list[object]]:
    """Microseconds per call of each piece of the hypercall path, on a booted domain.

    Pieces that the running xenpy does not have (its internals move) are left out.
    """
    from xenpy.abi.version import XENVER_version
    from xenpy.hv import hypercall as hc
    from xenpy.hv.host import Host
    from xenpy.toolstack.domain import DomainSpec, boot_domain

    host = Host(memory_mib=128)
    try:
        d = boot_domain(host, DomainSpec("nullhc", guest_path("nullhc"), 32, cmdline="n=1"))
        v = d.vcpus[0]
        nr = HYPERCALL_NR["xen_version"]
        args = (XENVER_version, 0, 0, 0, 0, 0)
        pieces: list[tuple[str, object]] = []
        if hasattr(hc, "fast_dispatcher"):
            fast = hc.fast_dispatcher(v)
            pieces.append(("hypercall.fast_dispatcher(v)(xen_version)",
                           lambda: fast(nr, *args)))
        pieces.append(("hypercall.dispatch(xen_version)", lambda: hc.dispatch(v, nr, args)))
        pieces.append(("Vcpu.vcpu_info_pending()", v.vcpu_info_pending))
        # Reference costs of register access from Python (ctypes through the binding's
        # argtypes, and through a c_void_p prototype), for paths still doing it.
        regs = v.cpu.batch(["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "cs", "eip"])
        eax = v.cpu.batch(["eax"])
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int)
        raw_read = proto(ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p).value)
        h = ctypes.c_void_p(ctypes.cast(v.cpu.uc._uch, ctypes.c_void_p).value)
        ids = ctypes.c_void_p(ctypes.addressof(regs._ids))
        ptrs = ctypes.c_void_p(ctypes.addressof(regs._ptrs))
        pieces += [
            ("ref: ctypes BatchRegs.read() of 9 registers", regs.read),
            ("ref: ctypes BatchRegs.write() of eax", eax.write),
            ("ref: same read, c_void_p prototype", lambda: raw_read(h, ids, ptrs, 9)),
        ]
        n = 100_000
        return [[name, 1e6 * min(timeit.repeat(fn, number=n, repeat=5)) / n]
                for name, fn in pieces]
    finally:
        host.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300_000, help="hypercalls per run (default 3e5)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each (median reported)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the pieces of xenpy's hypercall path")
    ap.add_argument("--lean-path", action="store_true",
                    help="also time a minimal Python hypercall path on bare Unicorn")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of xenpy")
    ap.add_argument("--width", type=int, choices=(32, 64), default=32,
                    help="guest width: 32 (PAE, int 0x82; default) or 64 (syscall)")
    args = ap.parse_args(argv)
    width = args.width
    if width == 64 and (args.lean_path or args.breakdown):
        ap.error("--lean-path and --breakdown: expected --width 32, got --width 64")
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")
    n = args.n
    if not 0 < n < 1 << 32:
        ap.error(f"-n: expected 1..2^32-1, got {n}")

    raw_t: list[float] = []
    bind_t: list[float] = []
    xen_t: list[float] = []
    lean_t: list[float] = []
    lean_vp_t: list[float] = []
    for _ in range(args.repeat):
        raw_t += bare_rate(n, raw=True, repeat=1, width=width)
        bind_t += bare_rate(n, raw=False, repeat=1, width=width)
        xen_t.append(xenpy_run(n, width))
        if args.lean_path:
            lean_t += lean_rate(n, void_p=False, repeat=1)
            lean_vp_t += lean_rate(n, void_p=True, repeat=1)

    r_raw, r_bind, r_xen = n / median(raw_t), n / median(bind_t), n / median(xen_t)

    def us(rate: float) -> float:
        return 1e6 / rate

    print(f"hypercall_rate: nullhc guest{' (64-bit, syscall)' if width == 64 else ''}, "
          f"n={n:,} xen_version calls, {args.repeat} runs each "
          f"(median; spread = (max-min)/median)\n")
    print(table(["what", "calls/s", "us/call", "spread"], [
        ["bare Unicorn, empty raw ctypes hook", r_raw, us(r_raw), spread(raw_t)],
        ["bare Unicorn, empty binding hook", r_bind, us(r_bind), spread(bind_t)],
        ["xenpy (first->last console byte)", r_xen, us(r_xen), spread(xen_t)],
    ] + ([
        ["bare, minimal Python path, binding argtypes", n / median(lean_t),
         us(n / median(lean_t)), spread(lean_t)],
        ["bare, minimal Python path, c_void_p PYFUNCTYPE", n / median(lean_vp_t),
         us(n / median(lean_vp_t)), spread(lean_vp_t)],
    ] if args.lean_path else [])))
    print(f"\nxenpy / raw-hook baseline = {r_xen / r_raw:.3f}; xenpy's dispatch costs "
          f"{us(r_xen) - us(r_raw):.2f} us per call over an empty hook")
    print(f"goal >= {GOAL:,}/s: {'met' if r_xen >= GOAL else 'NOT met'} ({r_xen:,.0f}/s)")
    if args.breakdown:
        print("\nPieces of the hypercall path (timeit, best of 5; they overlap the "
              "measured per-call cost above):")
        print(table(["piece", "us/call"], breakdown()))
    if args.profile:
        profile(n, 25, width)
    emit_json({"bench": "hypercall_rate", **({"width": 64} if width == 64 else {}), "n": n, "repeat": args.repeat,
               "xenpy_per_s": r_xen, "bare_raw_per_s": r_raw, "bare_binding_per_s": r_bind,
               "xenpy_us_per_call": us(r_xen), "overhead_us_per_call": us(r_xen) - us(r_raw),
               "ratio_vs_raw": r_xen / r_raw,
               **({"lean_binding_per_s": n / median(lean_t),
                   "lean_void_p_per_s": n / median(lean_vp_t)} if args.lean_path else {})})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"hypercall_rate: {e}", file=sys.stderr)
        sys.exit(1)
