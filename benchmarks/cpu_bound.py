#!/usr/bin/env python3
"""CPU-bound guest code: the `spin` guest's LCG loop under xenpy vs the same bytes on bare Unicorn.

xenpy runs the guest as `xenpy run spin --cmdline n=N` would (ring 1, PAE paging, the
hypervisor's hooks installed, the 10 ms preemption ticker running).  Its loop time is the
time from the guest's first console write ("spin: n=N", printed just before the loop) to
its last ("spin: done X", just after), so boot and shutdown are not counted.

The baseline loads the same ELF's PT_LOAD segments into a bare Unicorn (flat 32-bit, no
paging, no hooks) and calls ``main`` (found through the ELF symbols; the loop is inlined
there) with ``xg_cmdline_ulong`` and ``xg_printf`` stubbed.  Both answers are checked
against the LCG computed in Python.  A second baseline is the same bare Unicorn with
xenpy's hook set installed but empty (none fires in the loop): it shows what merely having
hooks costs.  Runs alternate (bare, hooked, xenpy, bare, ...) so drifting machine load hits
all alike.  Goal: ratio xenpy/bare >= 0.95.

``--no-preempt`` (diagnosis only) sets the scheduler's QUANTUM to an hour, so the run has
no 10 ms preemption stops: the difference is what time slicing costs.
``--deterministic`` runs xenpy with ``Host(deterministic=True)`` (block-budget slices).
``--width 64`` runs the 64-bit guest (``spin-x86_64.elf``); its bare baseline is a
Unicorn in long mode with minimal 4-level page tables mapping the high-half image, and
the hooked baseline adds the empty SYSCALL hook xenpy installs for 64-bit guests.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

import capstone
from _common import (
    BareGuest,
    BareGuest64,
    BenchError,
    add_empty_xenpy_hooks,
    emit_json,
    bare_guest,
    guest_path,
    median,
    run_under_xenpy,
    spread,
    table,
)

A, C, M = 1664525, 1013904223, 1 << 32


def lcg(n: int) -> int:
    """x(n) for x(0)=1, x(i+1) = A*x(i) + C mod 2^32, by squaring the affine map (O(log n))."""
    ra, rc = 1, 0            # accumulated map x -> ra*x + rc
    a, c = A, C              # map for the current power of two
    while n:
        if n & 1:
            ra, rc = (a * ra) % M, (a * rc + c) % M
        a, c = (a * a) % M, (a * c + c) % M
        n >>= 1
    return (ra + rc) % M


def loop_instructions(bare: BareGuest | BareGuest64) -> int:
    """Instructions per iteration: the body of main's backward conditional branch."""
    main = bare.main
    code = bare.read_virt(main, 256)
    mode = capstone.CS_MODE_64 if isinstance(bare, BareGuest64) else capstone.CS_MODE_32
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    insns = list(md.disasm(code, main))
    for i, ins in enumerate(insns):
        if ins.mnemonic.startswith("j") and ins.mnemonic != "jmp" and ins.op_str.startswith("0x"):
            target = int(ins.op_str, 16)
            if target < ins.address:
                return sum(1 for x in insns[:i + 1] if x.address >= target)
        if ins.mnemonic == "ret":
            break
    raise BenchError("no backward branch in spin's main: cannot count the loop's instructions")


def disable_preemption() -> None:
    """Set the wall-clock quantum to an hour wherever xenpy keeps it (diagnosis only)."""
    found = False
    for name in ("xenpy.hv.schedule", "xenpy.hv.host"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if isinstance(getattr(mod, "QUANTUM", None), float):
            mod.QUANTUM = 3600.0
            found = True
    if not found:
        raise BenchError("--no-preempt: no float QUANTUM in xenpy.hv.schedule or xenpy.hv.host")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000_000, help="loop iterations (default 1e8)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each (median reported)")
    ap.add_argument("--no-preempt", action="store_true",
                    help="diagnosis: run xenpy without its 10 ms preemption ticker")
    ap.add_argument("--deterministic", action="store_true",
                    help="run xenpy with Host(deterministic=True)")
    ap.add_argument("--width", type=int, choices=(32, 64), default=32,
                    help="guest width: 32 (PAE, default) or 64")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")
    if args.no_preempt:
        disable_preemption()
    host_options = {"deterministic": True} if args.deterministic else {}
    n = args.n
    if not 0 < n < 1 << 32:
        ap.error(f"-n: expected 1..2^32-1, got {n}")
    want = lcg(n)

    width = args.width
    bare = bare_guest(guest_path("spin", width), n, width)
    hooked = bare_guest(guest_path("spin", width), n, width)
    keep = add_empty_xenpy_hooks(hooked.uc, width)   # noqa: F841 - thunks must stay alive
    ipi = loop_instructions(bare)
    bare.call_main()                              # warm-up: translation, first page touches
    hooked.call_main()
    bare_t: list[float] = []
    hook_t: list[float] = []
    xen_t: list[float] = []
    xen_total: list[float] = []
    xen_boot: list[float] = []
    for _ in range(args.repeat):
        bare_t.append(bare.call_main())
        fmt, got = bare.last_printf()
        if "done" not in fmt or got != want:
            raise BenchError(f"bare spin: expected 'done' {want:08x}, got {fmt!r} {got:08x}")
        hook_t.append(hooked.call_main())
        if hooked.last_printf()[1] != want:
            raise BenchError(f"hooked bare spin: expected {want:08x}, got {hooked.last_printf()}")
        r = run_under_xenpy("spin", cmdline=f"n={n}", width=width, **host_options)
        out = r.output.decode("ascii", "replace")
        m = re.search(r"spin: done ([0-9a-f]{8})", out)
        if m is None or int(m.group(1), 16) != want:
            raise BenchError(f"xenpy spin: expected 'spin: done {want:08x}', got {out[-200:]!r}")
        xen_t.append(r.last_byte - r.first_byte)
        xen_total.append(r.t_end - r.t_start)
        xen_boot.append(r.t_booted - r.t_start)

    bt, ht, xt = median(bare_t), median(hook_t), median(xen_t)

    def mips(t: float) -> float:
        return n * ipi / t / 1e6

    ratio = bt / xt                              # speed ratio: xenpy rate / bare rate
    print(f"cpu_bound: spin guest{' (64-bit)' if width == 64 else ''}, n={n:,} iterations x {ipi} instructions, "
          f"{args.repeat} runs each (median; spread = (max-min)/median)"
          f"{'; xenpy WITHOUT preemption' if args.no_preempt else ''}"
          f"{'; xenpy deterministic' if args.deterministic else ''}\n")
    print(table(["what", "median s", "M iter/s", "MIPS", "spread"], [
        ["bare Unicorn, main()", bt, n / bt / 1e6, mips(bt), spread(bare_t)],
        ["bare Unicorn + xenpy's hooks (empty)", ht, n / ht / 1e6, mips(ht), spread(hook_t)],
        ["xenpy, first->last console byte", xt, n / xt / 1e6, mips(xt), spread(xen_t)],
        ["xenpy, Host()+boot+run+close", median(xen_total), n / median(xen_total) / 1e6,
         mips(median(xen_total)), spread(xen_total)],
        ["xenpy, Host()+boot_domain() only", median(xen_boot), "", "", spread(xen_boot)],
    ]))
    print(f"\nratio xenpy/bare (loop rate) = {ratio:.3f}   (goal >= 0.95: "
          f"{'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"ratio bare+hooks/bare = {bt / ht:.3f}; xenpy/(bare+hooks) = {ht / xt:.3f}")
    emit_json({"bench": "cpu_bound", **({"width": 64} if width == 64 else {}), "n": n, "insns_per_iter": ipi, "repeat": args.repeat,
               "preempt": not args.no_preempt, "deterministic": args.deterministic,
               "bare_s": bt, "bare_hooks_s": ht, "xenpy_loop_s": xt,
               "xenpy_total_s": median(xen_total), "bare_mips": mips(bt), "xenpy_mips": mips(xt),
               "ratio": ratio, "ratio_vs_hooked": ht / xt})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"cpu_bound: {e}", file=sys.stderr)
        sys.exit(1)
