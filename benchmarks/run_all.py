#!/usr/bin/env python3
"""Run every benchmark, one subprocess each, and print a summary plus one combined JSON line.

Each benchmark's own output is passed through; its last line (a JSON object) is collected.
``--quick`` uses small sizes (a smoke test of the scripts, not numbers to compare).
``--json-out FILE`` appends the combined line to FILE (e.g. one line per commit).
Exit status is non-zero if any benchmark failed (a wrong guest result, not a slow one).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (script, its arguments, its --quick arguments); ``--core`` runs the first three only
BENCHES = [
    ("cpu_bound.py", [], ["-n", "10000000", "--repeat", "3"]),
    ("hypercall_rate.py", ["--breakdown", "--lean-path"],
     ["-n", "50000", "--repeat", "3", "--lean-path"]),
    ("first_byte.py", [], ["--repeat", "3"]),
    ("events_xs_sched.py", [], ["--quick"]),
    ("blk_bench.py", [], ["--mib", "4", "--ops", "256", "--runs", "1"]),
    ("mm_bench.py", [], ["-n", "2000", "--repeat", "1", "--fuzz-calls", "5000"]),
    ("migration.py", [], ["--quick"]),
]
CORE = 3


def git_commit() -> str | None:
    """The commit being measured (read-only git query), if this is a git checkout."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                           capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: check the scripts run")
    ap.add_argument("--json-out", type=Path, help="append the combined JSON line to this file")
    ap.add_argument("--core", action="store_true",
                    help="only the core three (CPU-bound, hypercall rate, first byte)")
    args = ap.parse_args(argv)

    results: dict[str, dict] = {}
    failed: list[str] = []
    for script, extra, quick in BENCHES[:CORE] if args.core else BENCHES:
        cmd = [sys.executable, str(HERE / script)] + (quick if args.quick else extra)
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        sys.stdout.write(p.stdout)
        lines = p.stdout.strip().splitlines()
        try:
            record = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            record = None
        if p.returncode != 0 or not isinstance(record, dict):
            failed.append(script)
            print(f"=== {script}: FAILED (exit {p.returncode})", flush=True)
            continue
        record["wall_s"] = round(time.perf_counter() - t0, 2)
        results[record.get("bench", script)] = record

    print("\n=== summary")
    rows = []
    if "cpu_bound" in results:
        r = results["cpu_bound"]
        rows.append(f"cpu_bound       xenpy/bare loop rate {r['ratio']:.3f} (goal >= 0.95); "
                    f"xenpy {r['xenpy_mips']:.0f} MIPS, bare {r['bare_mips']:.0f} MIPS")
    if "hypercall_rate" in results:
        r = results["hypercall_rate"]
        rows.append(f"hypercall_rate  {r['xenpy_per_s']:,.0f} null hypercalls/s (goal >= 500,000); "
                    f"{r['xenpy_us_per_call']:.2f} us/call, empty-hook baseline "
                    f"{1e6 / r['bare_raw_per_s']:.2f} us")
    if "first_byte" in results:
        r = results["first_byte"]
        rows.append(f"first_byte      `xenpy run hello`: first byte {r['subprocess_first_byte_s']:.3f} s,"
                    f" exit {r['subprocess_exit_s']:.3f} s (goal < 1 s)")
    if "blk" in results:
        r = results["blk"]
        rows.append(f"blk             seq write/read {r['seq_write_ratio']:.2f}/{r['seq_read_ratio']:.2f}"
                    f" of Python, random {r['rand_write_ratio']:.2f}/{r['rand_read_ratio']:.2f}"
                    " (goal >= 0.8 sequential)")
    print("\n".join(rows) if rows else "(no results)")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    combined = {"bench": "all", "commit": git_commit(), "quick": args.quick,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "results": results, "failed": failed}
    line = json.dumps(combined)
    if args.json_out is not None:
        with args.json_out.open("a") as f:
            f.write(line + "\n")
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
