#!/usr/bin/env python3
"""Block I/O through blkfront/blkback against the same pattern done directly by Python.

The blkbench guest runs four passes on an image file attached as xvda: sequential 64 KiB
writes (then a flush), sequential 64 KiB reads, random 4 KiB writes (then a flush) and
random 4 KiB reads (up to 16 requests in flight: blkfront's queue).  The host times
each pass by wall clock between the guest's "begin"/"end" console markers, so the
guest's clock does not matter.  The host runs on wall-clock time by default, as
``xenpy run`` does; ``--deterministic`` gives the virtual-time host of the tests (the
numbers barely differ: the same guest code and the same data path).
The baseline does the same passes in this process on a second image file with
os.pwrite/os.preadv and the same os.fdatasync after each write pass (the guest flushes
then too), using the guest's xorshift sequence for the random offsets; both images are
written in full beforehand, so both sides read from the page cache.
Ratio = xenpy throughput / Python throughput (goal >= 0.8 sequential).

Why the goal is out of reach (measured on the 2-core dev machine, wall-clock host,
32-bit): a 64 KiB page-cache read costs Python ~6 us, nearly all of it the preadv copy.
Through xenpy the same copy (5.5 us, now inline on the scheduler thread) is one part of
~27 us per request: ~7 us of guest time (blkfront's ~47 basic blocks per request under
Unicorn, plus the per-batch upcall, iret, evtchn_send and SCHEDOP_block: 3 hypercalls
per 16 requests), ~12 us of blkback's Python (slot copy, indirect page, 16 segments,
bounds, response) and ~2.4 us of scheduler loop.  The guest's share alone is more than
Python's whole read, so even a free backend would stay below 0.5.  Writes still go to
the worker thread (buffered RWF_NOWAIT writes are refused by ext4), and both sides'
write passes are dominated by the same fdatasync.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from _common import BenchError, emit_json, guest_path, median, table

from xenpy.abi.sched import Shutdown
from xenpy.hv.host import Host
from xenpy.toolstack.disk import attach_disks
from xenpy.toolstack.domain import DomainSpec, boot_domain

GOAL_SEQ = 0.8
RESULT = re.compile(rb"blkbench: RESULT seq_write_ns=(\d+) seq_read_ns=(\d+) rand_write_ns=(\d+) "
                    rb"rand_read_ns=(\d+) seq_bytes=(\d+) rand_ops=(\d+) errors=(\d+)")
MARK = re.compile(rb"blkbench: (?:begin|end) \w+")
PASSES = ("seq_write", "seq_read", "rand_write", "rand_read")


def make_image(path: Path, size: int) -> None:
    """Allocated (not sparse), so both sides write over real blocks."""
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def xorshift(state: int):
    while True:
        state ^= (state << 13) & 0xFFFF_FFFF_FFFF_FFFF
        state ^= state >> 7
        state ^= (state << 17) & 0xFFFF_FFFF_FFFF_FFFF
        yield state


def run_guest(image: Path, mib: int, ops: int, width: int, deterministic: bool = False
              ) -> dict[str, float]:
    """One blkbench run on a fresh host: seconds per pass (between the console markers)."""
    host = Host(memory_mib=128, deterministic=deterministic)
    try:
        d = boot_domain(host, DomainSpec(name="blkbench", kernel=guest_path("blkbench").with_name(
            f"blkbench-x86_{width}.elf"), memory_mib=24,
            cmdline=f"mib={mib} ops={ops} qd=8"))
        attach_disks(host, d.domid, [f"format=raw, vdev=xvda, access=rw, target={image}"])
        out = bytearray()
        stamps: dict[bytes, float] = {}

        def sink(data: bytes) -> None:
            now = time.perf_counter()
            out.extend(data)
            for m in MARK.finditer(bytes(out)):
                stamps.setdefault(m[0], now)
        d.console_sink = sink
        if not host.run([d], timeout=600):
            raise BenchError("blkbench did not finish in 600 s")
        m = RESULT.search(bytes(out))
        if d.shutdown_reason != Shutdown.poweroff or m is None or int(m[7]):
            raise BenchError(f"blkbench failed: {d.crash_message or ''} {bytes(out[-400:])!r}")
        return {p: stamps[b"blkbench: end " + p.encode()] - stamps[b"blkbench: begin " + p.encode()]
                for p in PASSES}
    finally:
        host.close()


def run_python(image: Path, mib: int, ops: int) -> dict[str, float]:
    size = mib << 20
    fd = os.open(image, os.O_RDWR)
    buf64 = bytearray(64 << 10)
    buf4 = bytearray(4096)
    res = {}
    try:
        t = time.perf_counter()
        for off in range(0, size, len(buf64)):
            os.pwrite(fd, buf64, off)
        os.fdatasync(fd)
        res["seq_write"] = time.perf_counter() - t
        t = time.perf_counter()
        for off in range(0, size, len(buf64)):
            os.preadv(fd, [buf64], off)
        res["seq_read"] = time.perf_counter() - t
        pages = size // 4096
        for name, write in (("rand_write", True), ("rand_read", False)):
            rng = xorshift(88172645463325252)
            t = time.perf_counter()
            for _ in range(ops):
                off = (next(rng) % pages) * 4096
                if write:
                    os.pwrite(fd, buf4, off)
                else:
                    os.preadv(fd, [buf4], off)
            if write:
                os.fdatasync(fd)
            res[name] = time.perf_counter() - t
    finally:
        os.close(fd)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=16, help="MiB per sequential pass")
    ap.add_argument("--ops", type=int, default=2048, help="random 4 KiB operations per pass")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--width", type=int, choices=(32, 64), default=32)
    clock = ap.add_mutually_exclusive_group()
    clock.add_argument("--deterministic", action="store_true",
                       help="a deterministic (virtual-time) host instead of a wall-clock one")
    clock.add_argument("--wall-clock", action="store_true",
                       help="a wall-clock host (the default; kept for old command lines)")
    args = ap.parse_args()
    xen: dict[str, list[float]] = {p: [] for p in PASSES}
    py: dict[str, list[float]] = {p: [] for p in PASSES}
    with tempfile.TemporaryDirectory(prefix="blkbench-", dir=os.environ.get("TMPDIR")) as tmp:
        img_x, img_p = Path(tmp) / "xen.img", Path(tmp) / "py.img"
        make_image(img_x, args.mib << 20)
        make_image(img_p, args.mib << 20)
        for _ in range(args.runs):
            for p, v in run_guest(img_x, args.mib, args.ops, args.width,
                                  args.deterministic).items():
                xen[p].append(v)
            for p, v in run_python(img_p, args.mib, args.ops).items():
                py[p].append(v)
    seq_bytes, rows = args.mib << 20, []
    record: dict[str, object] = {"bench": "blk", "width": args.width, "mib": args.mib,
                                 "ops": args.ops, "deterministic": args.deterministic}
    for p in PASSES:
        tx, tp = median(xen[p]), median(py[p])
        if p.startswith("seq"):
            unit, fx, fp = "MiB/s", seq_bytes / tx / (1 << 20), seq_bytes / tp / (1 << 20)
        else:
            unit, fx, fp = "IOPS", args.ops / tx, args.ops / tp
        ratio = fx / fp
        rows.append([p, unit, round(fx, 1), round(fp, 1), round(ratio, 3)])
        record[f"{p}_xenpy"] = fx
        record[f"{p}_python"] = fp
        record[f"{p}_ratio"] = ratio
    print(table(["pass", "unit", "xenpy", "python", "ratio"], rows))
    seq = min(float(record["seq_write_ratio"]), float(record["seq_read_ratio"]))
    print(f"sequential ratio {seq:.3f} (goal >= {GOAL_SEQ})")
    record["goal_seq"] = GOAL_SEQ
    record["meets_goal"] = seq >= GOAL_SEQ
    emit_json(record)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"blk_bench: {e}", file=sys.stderr)
        sys.exit(1)
