"""disk = [...] in `xenpy run` and `xenpy create`; block-attach/-list/-detach on a host."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hostd.conftest import HostProc, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _image(path: Path, size: int = 4 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_xenpy_run_with_disk(tmp_path, width, bundled_guests):
    _image(tmp_path / "t.img")
    cfg = tmp_path / "blk.cfg"
    cfg.write_text(f'name = "blk"\nkernel = "{bundled_guests}/blktest-x86_{width}.elf"\n'
                   'memory = 16\nextra = "seed=5"\n'
                   "disk = [ 'format=raw, vdev=xvda, access=rw, target=t.img' ]\n")
    p = subprocess.run([sys.executable, "-m", "xenpy.cli", "run", str(cfg), "--deterministic",
                        "--timeout", "60"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert p.returncode == 0 and "blktest: PASS (" in p.stdout, p.stdout + p.stderr
    data = (tmp_path / "t.img").read_bytes()
    assert data[1000 * 512:1000 * 512 + 4] == bytes(((6 * 31 + i * 7) & 0xFF) for i in range(4))


def test_xenpy_run_refuses_missing_target(tmp_path, bundled_guests):
    cfg = tmp_path / "blk.cfg"
    cfg.write_text(f'name = "blk"\nkernel = "{bundled_guests}/blktest-x86_32.elf"\n'
                   "memory = 16\ndisk = [ 'nope.img,xvda,w' ]\n")
    p = subprocess.run([sys.executable, "-m", "xenpy.cli", "run", str(cfg), "--timeout", "30"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode != 0 and "nope.img" in p.stderr and "Traceback" not in p.stderr


@pytest.fixture
def dhost(tmp_path, bundled_guests):
    h = HostProc(tmp_path, extra=["--deterministic"])
    yield h
    h.stop()


def test_create_with_disk_and_hotplug(dhost, tmp_path):
    _image(tmp_path / "a.img")
    _image(tmp_path / "b.img", 1 << 20)
    dhost.xenpy("create", str(dhost.cfg("blk", "blktest", on_poweroff="preserve",
                                        extra="seed=9")),
                "disk=['a.img,xvda,w']")
    wait_for(lambda: "blktest: PASS (" in dhost.xenpy("console", "blk").stdout,
             "blktest to pass in the daemon")
    # hot-plug into a running guest without blkfront (echo): the backend waits in InitWait
    dhost.create("idle", "echo")
    dhost.xenpy("block-attach", "idle", "format=raw,", "vdev=xvdb,", "access=rw,",
                "target=b.img")
    out = dhost.xenpy("block-list", "idle").stdout.splitlines()
    assert out[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    fields = out[1].split()
    assert fields[0] == "51728" and fields[3] == "2"            # InitWait
    assert fields[-1].endswith("/backend/vbd/2/51728") or "/backend/vbd/" in fields[-1]
    bad = dhost.xenpy("block-attach", "idle", "b.img,xvdb,w", check=False)
    assert bad.returncode != 0 and "already has" in bad.stderr
    dhost.xenpy("block-detach", "idle", "xvdb")
    wait_for(lambda: len(dhost.xenpy("block-list", "idle").stdout.splitlines()) == 1,
             "the detached disk to disappear")
    bad = dhost.xenpy("block-detach", "idle", "xvdb", check=False)
    assert bad.returncode != 0 and "no disk" in bad.stderr
