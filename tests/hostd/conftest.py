"""A `xenpy host` subprocess per test, on sockets in a short temporary directory.

Everything waits on a condition with a deadline, never on a fixed sleep.  When a test
fails, the host's stderr (its log) is attached to the report.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from xenpy.toolstack.control import ControlClient

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
T = TypeVar("T")

#: One `xl list` row: "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f".
ROW = re.compile(r"^(?P<name>.{40}) (?P<id>[ \d]{5}) (?P<mem>[ \d]{5}) (?P<vcpus>[ \d]{5})     "
                 r"(?P<state>[r-][b-][p-][s-][-rscw][d-])  (?P<time>[ \d]{6}\.\d)$")


def wait_for(pred: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    """Poll ``pred`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class HostProc:
    """A running `xenpy host` and helpers to drive it."""

    def __init__(self, tmp: Path, extra: list[str] | None = None,
                 default_paths: bool = False) -> None:
        """Sockets in ``tmp``: named on the command line, or (``default_paths``) found
        by the host and the commands through $XDG_RUNTIME_DIR alone."""
        self.dir = tmp
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("XENSTORED_") and k != "XENPY_CONTROL"}
        self.env["PYTHONPATH"] = str(ROOT)
        argv = [sys.executable, "-m", "xenpy.cli", "-v", "host", "--memory", "160", *(extra or [])]
        if default_paths:
            self.env["XDG_RUNTIME_DIR"] = str(tmp)
            self.control = str(tmp / "xenpy" / "control.sock")
            self.xenstored = str(tmp / "xenpy" / "xenstored.sock")
        else:
            self.control = str(tmp / "control.sock")
            self.xenstored = str(tmp / "xs.sock")
            self.env["XENPY_CONTROL"] = self.control
            argv += ["--control", self.control, "--xenstored-socket", self.xenstored]
        self.stderr_path = tmp / "host.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=str(tmp))
        self.banner = self._read_banner()
        self.env["XENSTORED_PATH"] = self.banner.get("XENSTORED_PATH", self.xenstored)

    def _read_banner(self) -> dict[str, str]:
        """The lines the host prints before serving: KEY=PATH lines, then 'running'."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + TIMEOUT
        while b"running" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                pytest.fail(f"xenpy host did not come up: stdout {buf!r}\n{self.log()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                buf += chunk
        return dict(line.split("=", 1) for line in buf.decode().splitlines() if "=" in line)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def xenpy(self, *argv: str, check: bool = True, input: str | None = None,
              timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "xenpy.cli", *argv], env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              cwd=str(self.dir))
        if check:
            assert proc.returncode == 0, (argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def tool(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A xenstore-utils command against the host's xenstored."""
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, (argv, proc.returncode, proc.stderr)
        return proc

    def call(self, op: str, **args: Any) -> Any:
        with ControlClient(self.control, timeout=TIMEOUT) as c:
            return c.call(op, **args)

    def rows(self) -> dict[str, dict[str, Any]]:
        """`xl list`'s data by name, straight from the control protocol (full precision)."""
        return {r["name"]: r for r in self.call("list")["domains"]}

    def listed(self) -> dict[str, dict[str, str]]:
        """`xenpy list` parsed by name, checking xl's exact column layout on the way."""
        out = self.xenpy("list").stdout.splitlines()
        assert out[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
        rows = {}
        for line in out[1:]:
            m = ROW.match(line)
            assert m is not None, f"not an xl list row: {line!r}"
            rows[m["name"].rstrip()] = {k: v.strip() for k, v in m.groupdict().items()}
        return rows

    def state(self, name: str) -> str | None:
        row = self.listed().get(name)
        return None if row is None else row["state"]

    def cfg(self, name: str, guest: str, **settings: str | int) -> Path:
        """An xl.cfg for a bundled guest (settings are quoted when they are strings)."""
        lines = [f'name = "{name}"',
                 f'kernel = "{ROOT / "guests" / "build" / f"{guest}-x86_32.elf"}"',
                 "memory = 16"]
        for k, v in settings.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
        path = self.dir / f"{name}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def create(self, name: str, guest: str, **settings: str | int) -> int:
        """Create through `xenpy create`; the new domain's id (-1 if already gone)."""
        self.xenpy("create", str(self.cfg(name, guest, **settings)))
        row = self.rows().get(name)
        return -1 if row is None else int(row["domid"])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"xenpy host ignored signal {sig}\n{self.log()}")
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def host(request: pytest.FixtureRequest, bundled_guests: Path) -> Iterator[HostProc]:
    tmp = Path(tempfile.mkdtemp(prefix="xh", dir="/tmp"))    # sun_path is 108 bytes
    h = HostProc(tmp)
    try:
        yield h
    finally:
        h.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- xenpy host log ---\n{h.log()}")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep          # type: ignore[attr-defined]


needs_xenstore_utils = pytest.mark.skipif(
    shutil.which("xenstore-read") is None,
    reason="needs Debian's xenstore-utils (apt-get install xenstore-utils)")
