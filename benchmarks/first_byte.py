#!/usr/bin/env python3
"""Start-up latency: `xenpy run hello` as a user runs it, to its first console byte and to exit.

Each run starts the ``xenpy`` console script next to this interpreter (or ``python -m
xenpy.cli`` if there is none) as a subprocess, reads its stdout unbuffered and records
the time of the first byte and of process exit; the run must print ``hello: PASS`` and
exit 0.  To show where the time goes, the same run is split into interpreter start-up
(``python -c pass``), importing xenpy (``python -c "import xenpy.cli, xenpy.hv.host,
xenpy.toolstack.domain"``) and, in this process, ``Host()``, ``boot_domain()`` and the
time from the start of ``Host.run`` to the first console byte.  Goal: exit < 1 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import BenchError, emit_json, guest_path, median, spread, table

from xenpy.abi.sched import Shutdown
from xenpy.hv.host import Host
from xenpy.toolstack.domain import DomainSpec, boot_domain

GOAL = 1.0
IMPORTS = "import xenpy.cli, xenpy.hv.host, xenpy.toolstack.domain"


def xenpy_command() -> list[str]:
    script = Path(sys.executable).with_name("xenpy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "xenpy.cli"]


def run_subprocess(cmd: list[str], expect: bytes | None) -> tuple[float, float]:
    """(seconds to the first stdout byte, seconds to exit) of one run of ``cmd``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    first = None
    out = bytearray()
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        out += chunk
    err = p.stderr.read() if p.stderr is not None else b""
    rc = p.wait()
    t_exit = time.perf_counter() - t0
    if rc != 0 or (expect is not None and expect not in out):
        raise BenchError(f"{' '.join(cmd)}: exit {rc}, expected {expect!r} in the output; "
                         f"stdout {bytes(out[-200:])!r} stderr {err[-300:]!r}")
    return (first if first is not None else t_exit), t_exit


def in_process() -> dict[str, float]:
    """Host(), boot_domain() and run-to-first-byte of hello, timed in this process."""
    t0 = time.perf_counter()
    host = Host(memory_mib=128)
    try:
        t1 = time.perf_counter()
        d = boot_domain(host, DomainSpec("hello", guest_path("hello"), 32))
        t2 = time.perf_counter()
        first: list[float] = []
        out = bytearray()

        def sink(data: bytes) -> None:
            if not first:
                first.append(time.perf_counter())
            out.extend(data)
        d.console_sink = sink
        if not host.run([d], timeout=30) or d.shutdown_reason != Shutdown.poweroff:
            raise BenchError(f"hello: did not power off ({d.crash_message}); {bytes(out)!r}")
        t3 = time.perf_counter()
        if not first or b"hello: PASS" not in out:
            raise BenchError(f"hello: expected 'hello: PASS', got {bytes(out[-200:])!r}")
    finally:
        host.close()
    t4 = time.perf_counter()
    return {"host": t1 - t0, "boot_domain": t2 - t1, "run_to_first_byte": first[0] - t2,
            "first_byte": first[0] - t0, "run_to_poweroff": t3 - t2, "close": t4 - t3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each (median reported)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")

    cmd = xenpy_command() + ["run", "hello"]
    first_t, exit_t, py_t, imp_t = [], [], [], []
    for _ in range(args.repeat):
        f, e = run_subprocess(cmd, b"hello: PASS")
        first_t.append(f)
        exit_t.append(e)
        py_t.append(run_subprocess([sys.executable, "-c", "pass"], None)[1])
        imp_t.append(run_subprocess([sys.executable, "-c", IMPORTS], None)[1])
    cold = in_process()                         # first in this process: pays lazy set-up
    warm = [in_process() for _ in range(args.repeat)]
    w = {k: median([r[k] for r in warm]) for k in warm[0]}

    print(f"first_byte: `{' '.join(cmd)}`, {args.repeat} runs (median; "
          f"spread = (max-min)/median)\n")
    print(table(["subprocess", "median s", "spread"], [
        ["start -> first stdout byte", median(first_t), spread(first_t)],
        ["start -> exit", median(exit_t), spread(exit_t)],
        ["python -c pass", median(py_t), spread(py_t)],
        ["python -c 'import xenpy (cli, host, domain)'", median(imp_t), spread(imp_t)],
    ]))
    print()
    print(table(["in process (hello)", "first run s", "median of later runs s"], [
        [k, cold[k], w[k]] for k in ("host", "boot_domain", "run_to_first_byte", "first_byte",
                                     "run_to_poweroff", "close")
    ]))
    print(f"\ngoal: exit < {GOAL} s: {'met' if median(exit_t) < GOAL else 'NOT met'}")
    emit_json({"bench": "first_byte", "repeat": args.repeat,
               "subprocess_first_byte_s": median(first_t), "subprocess_exit_s": median(exit_t),
               "python_startup_s": median(py_t), "import_s": median(imp_t),
               "inproc_first_byte_cold_s": cold["first_byte"],
               "inproc_first_byte_s": w["first_byte"], "inproc_host_s": w["host"],
               "inproc_boot_domain_s": w["boot_domain"]})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"first_byte: {e}", file=sys.stderr)
        sys.exit(1)
