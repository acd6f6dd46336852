#!/usr/bin/env python3
"""Guest speed with gdb attached (no breakpoints) against no gdb, in the same run.

The `spin` guest's loop is timed from its first console write ("spin: n=N", printed just
before the loop) to its last ("spin: done X"), so boot, gdb's connection and shutdown
are not counted.  The "gdb" runs attach the real gdb (`gdb -batch -ex continue`) to a
DomainTarget served by GdbServer, exactly what `xenpy run --gdb` sets up; the guest
waits for gdb's continue before its first instruction.  Runs alternate (none, gdb,
none, ...) so drifting machine load hits both alike.  Goal: speed ratio >= 0.95
(no per-instruction hook exists while no breakpoint or step needs one).

Prints a table and one JSON line: {"benchmark": "gdb_overhead", "ratio": ...}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xenpy.debug.gdbstub.server import GdbServer  # noqa: E402
from xenpy.debug.target import DomainTarget  # noqa: E402
from xenpy.hv.host import Host  # noqa: E402
from xenpy.toolstack.domain import DomainSpec, boot_domain  # noqa: E402

GOAL = 0.95


def one_run(n: int, with_gdb: bool, gdb: str | None) -> float:
    """Seconds of the guest's loop."""
    host = Host(memory_mib=128)
    marks: dict[str, float] = {}
    proc = None
    server = None
    try:
        d = boot_domain(host, DomainSpec("spin", ROOT / "guests/build/spin-x86_32.elf",
                                         cmdline=f"n={n}"))
        text = bytearray()

        def sink(data: bytes) -> None:
            text.extend(data)
            now = time.perf_counter()
            if b"spin: n=" in text:
                marks.setdefault("start", now)
            if b"spin: done" in text:
                marks.setdefault("end", now)
        d.console_sink = sink
        if with_gdb:
            assert gdb is not None
            target = DomainTarget(d)
            target.attach()
            server = GdbServer(target, on_connect=target.attach)
            server.start()
            port = server.address[1]
            proc = subprocess.Popen([gdb, "-batch", "-nx", "-ex", "set architecture i386",
                                     "-ex", f"target remote 127.0.0.1:{port}", "-ex", "continue"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not host.run([d], timeout=300):
            raise RuntimeError("spin did not finish in 300 s")
        if "start" not in marks or "end" not in marks:
            raise RuntimeError(f"spin printed no loop markers: {bytes(text)!r}")
        return marks["end"] - marks["start"]
    finally:
        if proc is not None:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        if server is not None:
            server.close()
        host.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400_000_000, help="loop iterations")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind")
    args = parser.parse_args()
    gdb = shutil.which("gdb")
    if gdb is None:
        print("gdb_overhead: gdb is not installed (Debian package gdb)", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {"none": [], "gdb": []}
    one_run(1000, False, gdb)                       # warm-up: imports, calibration
    for _ in range(args.rounds):
        times["none"].append(one_run(args.n, False, gdb))
        times["gdb"].append(one_run(args.n, True, gdb))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["none"] / med["gdb"]
    print(f"{'mode':<6} {'median s':>9}  runs")
    for k, v in times.items():
        print(f"{k:<6} {med[k]:>9.4f}  " + " ".join(f"{x:.4f}" for x in v))
    verdict = "ok" if ratio >= GOAL else "BELOW GOAL"
    print(f"speed with gdb attached / without: {ratio:.3f} (goal >= {GOAL}) {verdict}")
    print(json.dumps({"benchmark": "gdb_overhead", "n": args.n, "rounds": args.rounds,
                      "seconds_none": med["none"], "seconds_gdb": med["gdb"], "ratio": round(ratio, 4),
                      "goal": GOAL, "ok": ratio >= GOAL}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
