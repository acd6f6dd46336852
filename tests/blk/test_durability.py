"""Data acknowledged after a flush is in the image after the host process is SIGKILLed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_flushed_data_survives_sigkill(tmp_path, width):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    seed = 0x41
    p = subprocess.Popen([sys.executable, str(HERE / "durable_host.py"), str(image),
                          str(width), str(seed)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=HERE.parent.parent)
    try:
        line = p.stdout.readline()
        assert line == "ACKED\n", line + p.stderr.read() if not line else line
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    data = image.read_bytes()
    expect = b"".join(bytes([(seed + i) & 0xFF]) * 4096 for i in range(8))
    assert data[16 * 512:16 * 512 + len(expect)] == expect
    assert data[:16 * 512] == bytes(16 * 512)


def test_guest_flush_survives_sigkill(tmp_path, width, bundled_guests):
    """The blktest guest writes, flushes and says FLUSHED; the host is killed right then."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    cfg = tmp_path / "d.cfg"
    cfg.write_text(f'name = "d"\nkernel = "{bundled_guests}/blktest-x86_{width}.elf"\n'
                   f'memory = 16\nextra = "seed=21"\ndisk = [ "{image},xvda,w" ]\n')
    p = subprocess.Popen([sys.executable, "-m", "xenpy.cli", "run", str(cfg), "--deterministic",
                          "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, cwd=HERE.parent.parent)
    try:
        seen = b""
        while b"blktest: FLUSHED seed=21\n" not in seen:
            chunk = os.read(p.stdout.fileno(), 4096)
            assert chunk, seen + p.stderr.read()
            seen += chunk
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # blktest's first write: 64 KiB at sector 0, fill(seed)
    expect = bytes((21 * 31 + i * 7 + (i >> 9)) & 0xFF for i in range(64 << 10))
    assert image.read_bytes()[:64 << 10] == expect
