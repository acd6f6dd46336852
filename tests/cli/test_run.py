"""`xenpy run`: exit codes, console on stdout, one-line errors for bad input."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xenpy import ROOT

BUILD = ROOT / "guests" / "build"
EXIT_OK, EXIT_CRASH, EXIT_TIMEOUT, EXIT_ERROR = 0, 1, 2, 3


def xenpy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "xenpy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def assert_one_line_error(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == EXIT_ERROR, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("xenpy: ")
    for w in words:
        assert w in lines[0], lines[0]


def test_run_hello_streams_console_and_exits_0():
    run = xenpy("run", "hello", "--memory", "16", "--cmdline", "from the cli")
    assert run.returncode == EXIT_OK, run.stderr
    out = run.stdout.splitlines()
    assert out[0] == "Hello from xenpy-test (xen-3.0-x86_32p)"
    assert "cmdline: from the cli" in out
    assert out[-1] == "hello: PASS"
    assert run.stderr == ""


def test_run_kernel_by_path():
    run = xenpy("run", str(BUILD / "hello-x86_32.elf"), "--memory", "8")
    assert run.returncode == EXIT_OK, run.stderr
    assert run.stdout.splitlines()[-1] == "hello: PASS"


def test_run_crash_exits_1():
    run = xenpy("run", "crash", "--memory", "8")
    assert run.returncode == EXIT_CRASH
    assert run.stdout.splitlines()[-1] == "crash: about to crash"
    assert "crash" in run.stderr and "Traceback" not in run.stderr


def test_run_spin_times_out_with_exit_2():
    run = xenpy("run", "spin", "--memory", "8", "--cmdline", "n=2000000000", "--timeout", "1")
    assert run.returncode == EXIT_TIMEOUT, run.stderr
    assert run.stdout.splitlines() == ["spin: n=2000000000"]
    assert "timeout" in run.stderr and "Traceback" not in run.stderr


def test_missing_file(tmp_path):
    assert_one_line_error(xenpy("run", str(tmp_path / "nope.elf")), "nope.elf")


@pytest.mark.parametrize("content", [
    pytest.param(bytes(range(256)) * 16, id="binary-garbage"),
    pytest.param(b"\x7fELF" + b"\x01" * 60, id="elf-magic-garbage"),
    pytest.param(b"", id="empty"),
])
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(content)
    assert_one_line_error(xenpy("run", str(bad)), "bad.elf")


def load_kernels_helper():
    spec = importlib.util.spec_from_file_location(
        "xenpy_test_kernels", Path(__file__).resolve().parent.parent / "hv" / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_elf_without_xen_notes(tmp_path):
    kernels = load_kernels_helper()
    plain = kernels.write(tmp_path, "plain.elf", kernels.without_xen_notes(kernels.hello32()))
    assert_one_line_error(xenpy("run", str(plain)), "plain.elf")


def test_xl_cfg(tmp_path):
    cfg = tmp_path / "guest.cfg"
    rel = os.path.relpath(BUILD / "hello-x86_32.elf", tmp_path)
    cfg.write_text(f'name = "cfg-guest"\nkernel = "{rel}"\nmemory = 16\n'
                   f'cmdline = "set by xl.cfg"\n')
    run = xenpy("run", str(cfg))
    assert run.returncode == EXIT_OK, run.stderr
    out = run.stdout.splitlines()
    assert "cmdline: set by xl.cfg" in out
    assert f"nr_pages: {16 * 256}" in out
    assert out[-1] == "hello: PASS"


def test_xl_cfg_without_kernel(tmp_path):
    cfg = tmp_path / "nokernel.cfg"
    cfg.write_text('name = "x"\nmemory = 16\n')
    assert_one_line_error(xenpy("run", str(cfg)), "kernel")


def test_run_with_vcpus():
    run = xenpy("run", "smp-x86_64", "--vcpus", "2", "--cmdline", "n=1000")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "smp: PASS (6 checks)"
    one = xenpy("run", "smp-x86_64", "--cmdline", "n=1000")      # vCPU 1 does not exist
    assert one.returncode != 0 and "smp: start: FAIL" in one.stdout
