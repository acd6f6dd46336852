"""Helpers for driving `xenpy run --gdb 0` and the real gdb as two processes."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).absolute().parents[2]
GUESTS = REPO / "guests" / "build"
DEADLINE_S = 40.0


def elf(guest: str, width: int) -> Path:
    return GUESTS / f"{guest}-x86_{width}.elf"


@dataclass
class Stream:
    """A pipe read line by line on a thread, so tests can wait for a line with a deadline."""

    pipe: object
    lines: list[str] = field(default_factory=list)
    _q: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.pipe:  # type: ignore[attr-defined]
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = DEADLINE_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            m = re.search(pattern, line)
            if m:
                return m
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; got:\n{''.join(self.lines)}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stream ended before {pattern!r}; got:\n{''.join(self.lines)}")
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def drain(self, timeout: float = DEADLINE_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "".join(self.lines)


class XenpyRun:
    """`xenpy run --gdb 0 KERNEL`: the port is read from its stderr (no fixed port)."""

    def __init__(self, kernel: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xenpy.cli", "run", "--gdb", "0", "--timeout", str(DEADLINE_S),
             *extra, str(kernel)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout = Stream(self.proc.stdout)
        self.stderr = Stream(self.proc.stderr)
        self.port = int(self.stderr.wait_for(r"waiting on 127\.0\.0\.1:(\d+)").group(1))

    def finish(self) -> tuple[int, str, str]:
        try:
            rc = self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return rc, self.stdout.drain(5), self.stderr.drain(5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_gdb(gdb: str, kernel: Path, port: int, script: str, tmp: Path) -> subprocess.Popen[str]:
    path = tmp / "script.gdb"
    path.write_text(script)
    return subprocess.Popen(
        [gdb, "-batch", "-nx", str(kernel), "-ex", f"target remote 127.0.0.1:{port}", "-x", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_gdb(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"gdb hung; output so far:\n{out}") from None
    assert "Error in sourced command file" not in out, out
    return out


def interrupt(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
