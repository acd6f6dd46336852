"""`xenpy run --trace`: golden output for the test guests, JSON lines, the name filter.

The time column and addresses in the arguments (machine frames are the host
allocator's choice, guest addresses the guest build's) are normalised; names, decoded
structs, small values and results must match the golden file exactly.  After a
deliberate change, regenerate with XENPY_UPDATE_GOLDEN=1 and review the diff.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .domain_gdb import REPO, elf

GOLDEN = Path(__file__).absolute().parent / "golden"
TIMEOUT_S = 30


def xenpy_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xenpy.cli", "run", "--timeout", "20", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)


def normalise(stderr: str) -> str:
    out = []
    for line in stderr.splitlines():
        if not re.match(r"^\s*\d+\.\d{6} d\d+v\d+ ", line):
            continue        # not a trace line (the crash report, warnings)
        line = re.sub(r"^\s*\d+\.\d{6} ", "TIME ", line)
        call, sep, result = line.rpartition(") = ")
        call = re.sub(r"0x[0-9a-f]{5,}", "ADDR", call)
        out.append(call + sep + result)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("guest,width,rc", [("hello", 32, 0), ("hello", 64, 0), ("crash", 32, 1),
                                            ("crash", 64, 1)])
def test_trace_matches_golden(bundled_guests, guest: str, width: int, rc: int) -> None:
    done = xenpy_run("--trace", str(elf(guest, width)))
    assert done.returncode == rc, done.stderr
    got = normalise(done.stderr)
    path = GOLDEN / f"trace-{guest}-x86_{width}.txt"
    if os.environ.get("XENPY_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
    assert got == path.read_text(), f"trace differs from {path}:\n{got}"


def test_trace_lines_have_a_monotonic_time_column(bundled_guests) -> None:
    done = xenpy_run("--trace", str(elf("hello", 32)))
    times = [float(m.group(1)) for m in re.finditer(r"^\s*(\d+\.\d{6}) d1v0 ", done.stderr, re.M)]
    assert len(times) > 5 and times == sorted(times)


def test_json_lines(bundled_guests) -> None:
    done = xenpy_run("--trace", "--json", str(elf("crash", 64)))
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert records, done.stderr
    last = records[-1]
    assert last["name"] == "sched_op" and last["nr"] == 29 and last["vcpu"] == 0
    assert last["decoded"][:2] == ["SCHEDOP_shutdown", "{reason=SHUTDOWN_crash}"]
    assert last["args"][0] == 2 and last["result"] == 0 and last["errno"] is None
    assert all(r["domid"] == 1 and isinstance(r["time"], float) for r in records)


def test_filter_by_name_and_number(bundled_guests) -> None:
    done = xenpy_run("--trace=sched_op,17", str(elf("hello", 32)))
    names = re.findall(r"^\s*\d+\.\d{6} d1v0 (\w+)\(", done.stderr, re.M)
    assert names == ["xen_version", "sched_op"], done.stderr


def test_unknown_name_is_a_clear_error(bundled_guests) -> None:
    done = xenpy_run("--trace=sched_op,bogus_op", str(elf("hello", 32)))
    assert done.returncode == 3
    assert "expected a name such as sched_op or a number, got 'bogus_op'" in done.stderr
    assert "Traceback" not in done.stderr
