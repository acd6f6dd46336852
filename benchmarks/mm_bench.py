#!/usr/bin/env python3
"""Memory management and grants: page-table updates/s, ptwr writes/s, grant round trips/s,
and >= 10^5 random hypercalls checked against the frame-table invariants.

All rows drive the hypervisor side directly on booted (not running) 32-bit domains —
``dispatch(vcpu, nr, args)`` as the guest's ``int $0x82`` would, and for ptwr the #PF
handler with a decoded ``mov`` — so they measure xenpy's validation, not Unicorn.
Each rate has a baseline measured in the same run:

* ``mmu_update`` of 256 PTEs per batch (map/unmap a frame, full validation) against the
  same batch writing a frame that is not a page table (no validation);
* ptwr-emulated PTE stores (decode, validate, apply) against ``update_va_mapping`` of the
  same PTE (the hypercall a kernel would otherwise make);
* grant map + unmap round trips against mapping and unmapping an own frame with two
  ``update_va_mapping`` calls.

``--fuzz-calls`` (default 100000) random calls from tests/mm/fuzz.py, in sequences of
``--seq`` calls on fresh domains: the frame table is recounted every ``--audit-every``
calls and at the end of each sequence, which is then undone (counts back to baseline)
and the actor destroyed (the other domain's counts back to baseline).  Any violation
raises: the numbers are meaningless if an invariant broke.
"""
from __future__ import annotations

import argparse
import logging
import struct
import sys
import time
from pathlib import Path

from _common import BenchError, emit_json, median, spread, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mm.fuzz import Fuzzer, World, sample_ops  # noqa: E402
from mm.world import PTE_RW  # noqa: E402

from xenpy.abi import grant_table as G  # noqa: E402
from xenpy.abi.xen import (MMU_NORMAL_PT_UPDATE, VMASST_CMD_enable,  # noqa: E402
                           VMASST_TYPE_writable_pagetables)
from xenpy.hv import mm  # noqa: E402
from xenpy.hv.guest_access import PFEC_present, PFEC_write  # noqa: E402

BATCH = 256


def rate(fn, n: int, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        out.append(n / (time.perf_counter() - t0))
    return out


def bench_mmu_update(w: World, n: int, repeat: int) -> tuple[list[float], list[float]]:
    a = w.a
    slot = a.l1e(a.window())
    own = a.free_mfn()
    old = a.mem.read_u64(slot)
    reqs = b"".join(struct.pack("<QQ", slot | MMU_NORMAL_PT_UPDATE,
                                (own << 12) | PTE_RW if i % 2 == 0 else old)
                    for i in range(BATCH))
    plain = a.free_mfn(1)
    plain_reqs = b"".join(struct.pack("<QQ", (plain << 12) + 8 * i, i) for i in range(BATCH))

    def run(data: bytes):
        def go(total: int) -> None:
            a.write(a.scratch, data)
            pdone = a.out
            for _ in range(total // BATCH):
                if a.call("mmu_update", a.scratch, BATCH, pdone, 0x7FF0) != 0:
                    raise BenchError("mmu_update failed")
        return go
    return rate(run(reqs), n, repeat), rate(run(plain_reqs), n, repeat)


def bench_ptwr(w: World, n: int, repeat: int) -> tuple[list[float], list[float]]:
    a = w.a
    a.call("vm_assist", VMASST_CMD_enable, VMASST_TYPE_writable_pagetables)
    slot = a.l1e(a.window(0))
    pte_va = a.lay.va(a.mem.m2p(slot >> 12)) + (slot & 0xFFF)
    code_va = a.window(1)
    a.write(code_va, b"\x89\x02" + b"\x90" * 14)            # mov [edx], eax
    vals = [(a.free_mfn() << 12) | PTE_RW, a.mem.read_u64(slot)]
    cpu = a.v.cpu
    v = a.v

    def ptwr(total: int) -> None:
        for i in range(total):
            cpu.set_regs(edx=pte_va, eax=vals[i & 1] & 0xFFFFFFFF)
            if not mm.ptwr_do_page_fault(v, pte_va, PFEC_present | PFEC_write, code_va):
                raise BenchError("ptwr emulation refused a valid PTE")

    def uvm(total: int) -> None:
        for i in range(total):
            if a.uvm(a.window(0), vals[i & 1]) != 0:
                raise BenchError("update_va_mapping failed")
    return rate(ptwr, n, repeat), rate(uvm, n, repeat)


def bench_grants(w: World, n: int, repeat: int) -> tuple[list[float], list[float]]:
    a, b = w.a, w.b
    b.setup_grant_table(1)
    b.grant(7, a.domid, b.free_mfn())
    va = a.window()
    old = a.mem.read_u64(a.l1e(va))
    own = (a.free_mfn() << 12) | PTE_RW

    def grants(total: int) -> None:
        for _ in range(total):
            st, h, _ = a.map_grant(va, G.GNTMAP_host_map, 7, b.domid)
            if st != G.GNTST_okay or a.unmap_grant(va, h) != G.GNTST_okay:
                raise BenchError(f"grant round trip failed ({st})")
            a.uvm(va, old)

    def uvms(total: int) -> None:
        for _ in range(total):
            if a.uvm(va, own) or a.uvm(va, old):
                raise BenchError("update_va_mapping failed")
    return rate(grants, n, repeat), rate(uvms, n, repeat)


def fuzz(calls: int, seq: int, audit_every: int, seed: int) -> tuple[int, float, int]:
    """(calls made, seconds, sequences); raises on any invariant violation."""
    done = 0
    seqs = 0
    t0 = time.perf_counter()
    while done < calls:
        width = 32 if seqs % 2 == 0 else 64
        with World(width) as w:
            f = Fuzzer(w.a, w.b)
            for i, op in enumerate(sample_ops(seq, seed + seqs)):
                f.op(*op)
                if (i + 1) % audit_every == 0:
                    f.check()
            f.check()
            f.undo()
            f.destroy_actor()
            done += f.calls
        seqs += 1
    return done, time.perf_counter() - t0, seqs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="operations per timed row")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fuzz-calls", type=int, default=100_000)
    ap.add_argument("--seq", type=int, default=500, help="calls per random sequence")
    ap.add_argument("--audit-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.disable(logging.WARNING)      # the fuzzer's refused calls are logged as warnings
    n = max(BATCH, args.n // BATCH * BATCH)
    with World(32) as w:
        mmu, mmu_base = bench_mmu_update(w, n, args.repeat)
    with World(32) as w:
        ptwr, ptwr_base = bench_ptwr(w, args.n, args.repeat)
    with World(32) as w:
        gnt, gnt_base = bench_grants(w, max(1, args.n // 4), args.repeat)
    rows = [
        ["PTE updates/s (mmu_update x256)", median(mmu), spread(mmu),
         "plain-frame writes/s", median(mmu_base), median(mmu) / median(mmu_base)],
        ["ptwr-emulated PTE stores/s", median(ptwr), spread(ptwr),
         "update_va_mapping/s", median(ptwr_base), median(ptwr) / median(ptwr_base)],
        ["grant map+unmap round trips/s", median(gnt), spread(gnt),
         "own map+unmap (2x uvm)/s", median(gnt_base), median(gnt) / median(gnt_base)],
    ]
    print(table(["row", "rate", "spread", "baseline", "baseline rate", "ratio"], rows))
    calls, secs, seqs = fuzz(args.fuzz_calls, args.seq, args.audit_every, args.seed)
    print(f"\nrandom calls: {calls} in {seqs} sequences, {calls / secs:,.0f}/s with audits; "
          "invariant violations: 0")
    emit_json({"bench": "mm", "pte_updates_per_s": median(mmu),
               "pte_plain_writes_per_s": median(mmu_base),
               "ptwr_per_s": median(ptwr), "uvm_per_s": median(ptwr_base),
               "grant_roundtrips_per_s": median(gnt), "own_roundtrips_per_s": median(gnt_base),
               "fuzz_calls": calls, "fuzz_calls_per_s": calls / secs, "violations": 0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
