"""`xenpy shutdown DOM` against a running `xenpy host`: the toolstack writes
control/shutdown and the shutdown guest powers itself off (xl's PV shutdown protocol)."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


class Host:
    """A `xenpy host --deterministic` subprocess on sockets in a private directory."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.control = str(tmp / "c.sock")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("XENSTORED_") and k != "XENPY_CONTROL"}
        self.env["PYTHONPATH"] = str(ROOT)
        self.env["XENPY_CONTROL"] = self.control
        self.stderr = open(tmp / "host.stderr", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xenpy.cli", "-v", "host", "--deterministic", "--memory",
             "64", "--control", self.control, "--xenstored-socket", str(tmp / "xs.sock")],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
            env=self.env, cwd=str(tmp))
        self._wait_running()

    def _wait_running(self) -> None:
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + TIMEOUT
        while b"running" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                pytest.fail(f"xenpy host did not come up: {buf!r}\n{self.log()}")
            if select.select([fd], [], [], left)[0]:
                buf += os.read(fd, 4096)

    def log(self) -> str:
        return (self.dir / "host.stderr").read_text(errors="replace")

    def xenpy(self, *argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "xenpy.cli", *argv], env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL, cwd=str(self.dir))
        assert done.returncode == 0, (argv, done.stdout, done.stderr, self.log())
        return done.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture
def host(guest_build: Path) -> Iterator[Host]:
    tmp = Path(tempfile.mkdtemp(prefix="xg4", dir="/tmp"))      # sun_path is 108 bytes
    h = Host(tmp)
    try:
        yield h
    finally:
        h.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("width", ["x86_32", "x86_64"])
def test_xenpy_shutdown_powers_the_guest_off(host, guest_build, width):
    cfg = host.dir / "sd.cfg"
    cfg.write_text(f'name = "sd"\nkernel = "{guest_build / f"shutdown-{width}.elf"}"\n'
                   'memory = 8\non_poweroff = "preserve"\n')
    host.xenpy("create", str(cfg))
    host.xenpy("shutdown", "--wait", "sd")
    rows = {line.split()[0]: line.split() for line in host.xenpy("list").splitlines()[1:]}
    assert rows["sd"][4] == "---s--", rows          # shut down, preserved
    assert "sd shut down (poweroff)" in host.log()
