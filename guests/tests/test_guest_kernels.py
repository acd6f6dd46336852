"""Boot every xenpy-test guest on xenpy, in both widths, and check what it prints.

Run with the xenpy.testing plugin:  pytest -p xenpy.testing guests/tests
(the guests are built first with `make -C guests`).  The expected values are computed
here, not copied from a run: the spin checksum by the same LCG, nullhc's count from
the command line, echo's line from what the test types.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GUESTS = Path(__file__).resolve().parent.parent
WIDTHS = ["x86_32", "x86_64"]
MAGIC = {"x86_32": "xen-3.0-x86_32p", "x86_64": "xen-3.0-x86_64"}


@pytest.fixture(scope="session")
def build() -> Path:
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.fail("building the guests needs make and gcc (with -m32 multilib)")
    done = subprocess.run(["make", "-C", str(GUESTS)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"`make -C guests` failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return GUESTS / "build"


def boot(domain_factory, build: Path, guest: str, width: str, cmdline: str = ""):
    run = domain_factory(build / f"{guest}-{width}.elf", memory_mib=16, cmdline=cmdline)
    return run


def lcg(n: int) -> int:
    x = 1
    for _ in range(n):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
    return x


@pytest.mark.parametrize("width", WIDTHS)
def test_hello(domain_factory, build, width):
    run = boot(domain_factory, build, "hello", width, "console=hvc0 answer=42")
    assert run.run(timeout=30), "hello did not shut down"
    lines = run.lines
    assert f"Hello from xenpy-test ({MAGIC[width]})" in lines
    assert "cmdline: console=hvc0 answer=42" in lines
    assert "nr_pages: 4096" in lines                      # 16 MiB
    assert any(line.startswith("xen_version: ") and line[13:].replace(".", "").isdigit()
               for line in lines), lines
    assert "hello: console_io works" in run.console      # console_io goes to the log as well
    assert lines[-1] == "hello: PASS"
    assert run.shutdown_reason.name == "poweroff"


@pytest.mark.parametrize("width", WIDTHS)
def test_traps(domain_factory, build, width):
    run = boot(domain_factory, build, "traps", width)
    assert run.run(timeout=30), "traps did not shut down"
    assert not [line for line in run.lines if "FAIL" in line], run.lines
    assert len([line for line in run.lines if re.fullmatch(r"traps: .+: ok", line)]) == 15
    assert run.lines[-1] == "traps: PASS (15 checks)"
    assert run.shutdown_reason.name == "poweroff"


@pytest.mark.parametrize("width", WIDTHS)
def test_crash(domain_factory, build, width):
    run = boot(domain_factory, build, "crash", width)
    assert run.run(timeout=30)
    assert run.lines[-1] == "crash: about to crash"
    assert run.shutdown_reason.name == "crash"


@pytest.mark.parametrize("width", WIDTHS)
def test_echo(domain_factory, build, width):
    run = boot(domain_factory, build, "echo", width)
    assert run.run_until_output("echo: ready\n", timeout=30)
    assert run.shutdown_reason is None                   # blocked in SCHEDOP_poll, not done
    run.feed(b"typed at the console\r")
    assert run.run(timeout=30)
    assert run.lines[-1] == "echo: typed at the console"
    assert run.shutdown_reason.name == "poweroff"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n", [0, 1, 12345])
def test_spin(domain_factory, build, width, n):
    run = boot(domain_factory, build, "spin", width, f"n={n}")
    assert run.run(timeout=30)
    assert run.lines[-1] == f"spin: done {lcg(n):08x}"


@pytest.mark.parametrize("width", WIDTHS)
def test_nullhc(domain_factory, build, width):
    run = boot(domain_factory, build, "nullhc", width, "n=2500")
    assert run.run(timeout=30)
    assert run.lines[-1] == "nullhc: done 2500"


def test_check_elf_accepts_build_and_rejects_bad_note(build, tmp_path):
    tool = GUESTS / "tools" / "check_elf.py"
    elfs = sorted(str(p) for p in build.glob("*.elf"))
    ok = subprocess.run([sys.executable, str(tool), *elfs], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    data = bytearray((build / "hello-x86_32.elf").read_bytes())
    i = data.index(b"xenpy-test\0")
    data[i:i + 6] = b"linux-"                             # GUEST_OS note no longer ours
    bad = tmp_path / "bad.elf"
    bad.write_bytes(bytes(data))
    res = subprocess.run([sys.executable, str(tool), str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "GUEST_OS" in res.stdout
