"""Fixtures for driving the real gdb against GdbServer."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xenpy.debug.gdbstub.server import GdbServer
from xenpy.debug.gdbstub.target import Target

GDB = shutil.which("gdb")
GDB_TIMEOUT_S = 30


def poll(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for `condition` with a deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class GdbRunner:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[GdbServer] = []

    def serve(self, target: Target) -> int:
        server = GdbServer(target)
        server.start()
        self.servers.append(server)
        return server.address[1]

    def start(
        self, port: int, script: str, *, arch: str = "i386", debug_remote: bool = False, settings: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        assert GDB is not None
        path = self.tmp_path / f"script{len(self.servers)}.gdb"
        path.write_text(script)
        args = [GDB, "-batch", "-nx", "-ex", f"set architecture {arch}"]
        if debug_remote:
            args += ["-ex", "set debug remote 1"]
        for setting in settings:
            args += ["-ex", setting]
        args += ["-ex", f"target remote 127.0.0.1:{port}", "-x", str(path)]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, target: Target, script: str, *, allow_error: bool = False, **kwargs: object) -> str:
        """Run a gdb script to its end; allow_error lets its *last* command fail."""
        proc = self.start(self.serve(target), script, **kwargs)  # type: ignore[arg-type]
        return finish(proc, allow_error=allow_error)

    def close(self) -> None:
        for server in self.servers:
            server.close()


def finish(proc: subprocess.Popen[str], *, allow_error: bool = False) -> str:
    try:
        out, _ = proc.communicate(timeout=GDB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"gdb hung; output so far:\n{out}") from None
    if not allow_error:
        assert proc.returncode == 0, f"gdb failed ({proc.returncode}):\n{out}"
        assert "Error in sourced command file" not in out, out
    return out


@pytest.fixture
def gdb(tmp_path: Path) -> Iterator[GdbRunner]:
    if GDB is None:
        pytest.skip("gdb is not installed (Debian package gdb)")
    runner = GdbRunner(tmp_path)
    yield runner
    runner.close()
