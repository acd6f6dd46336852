"""`xenpy host --listen`, `xenpy save`, `xenpy restore` and `xenpy migrate` end to end:
two `xenpy host` processes, a memtouch guest that checks its own memory (a failed check
crashes it, and the host destroys crashed domains)."""
from __future__ import annotations

import json
import re

import pytest

from hostd.conftest import ROOT, HostProc, wait_for
from xenpy.toolstack.control import decode_bytes

KERNEL = ROOT / "guests" / "build" / "memtouch-x86_64.elf"


@pytest.fixture
def hosts(tmp_path):
    procs = []
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
        procs.append(HostProc(tmp_path / n, ["--deterministic", "--listen", "127.0.0.1:0"]))
    yield procs
    for p in procs:
        p.stop()


def _progress(h: HostProc, name: str, what: str) -> int:
    """The last "<what> N ok" a guest printed (memtouch: pass, blkloop: round)."""
    log = decode_bytes(h.call("console", dom=name)["log"], "log").decode()
    assert "FAIL" not in log, log
    found = re.findall(rf"{what} (\d+) ok", log)
    return int(found[-1]) if found else 0


def _passes(h: HostProc, name: str) -> int:
    return _progress(h, name, "pass")


def _rounds(h: HostProc, name: str) -> int:
    return _progress(h, name, "round")


def test_cli_migrate_save_and_restore(hosts, tmp_path):
    a, b = hosts
    assert re.fullmatch(r"127\.0\.0\.1:\d+", b.banner["XENPY_MIGRATION"])
    cfg = tmp_path / "mt.cfg"
    cfg.write_text(f'name = "mt"\nkernel = "{KERNEL}"\nmemory = 32\n'
                   'extra = "ws=256 passes=0 report=20"\n')
    a.xenpy("create", str(cfg))
    wait_for(lambda: _passes(a, "mt") >= 20, "memtouch running on A")
    out = a.xenpy("migrate", "mt", b.banner["XENPY_MIGRATION"], "--json", timeout=120)
    stats = json.loads(out.stdout)
    assert stats["rounds"][0]["pages_sent"] > 8000 and stats["downtime_s"] > 0
    assert "round 1" in out.stderr                # the progress bar
    assert "mt" not in a.rows()
    wait_for(lambda: _passes(b, "mt") >= 40, "memtouch continuing on B")
    save = tmp_path / "mt.save"
    b.xenpy("save", "mt", str(save))
    assert "mt" not in b.rows() and save.stat().st_size > 32 << 20
    a.xenpy("restore", str(save))
    n = _passes(a, "mt")
    wait_for(lambda: _passes(a, "mt") >= n + 40, "memtouch continuing after restore")
    bad = tmp_path / "bad.save"
    bad.write_bytes(save.read_bytes()[:4096])
    proc = a.xenpy("restore", str(bad), check=False)
    assert proc.returncode != 0 and "truncated" in proc.stderr


def test_cli_a_domain_with_a_disk_migrates_saves_and_restores(hosts, tmp_path):
    """Shared storage: both hosts open the same image; blkloop checks every block."""
    a, b = hosts
    img = tmp_path / "shared.img"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    cfg = tmp_path / "bl.cfg"
    cfg.write_text(f'name = "bl"\nkernel = "{ROOT / "guests" / "build" / "blkloop-x86_64.elf"}"\n'
                   f'memory = 16\nextra = "rounds=0 report=10"\n'
                   f'disk = ["format=raw, vdev=xvda, access=rw, target={img}"]\n')
    a.xenpy("create", str(cfg))
    wait_for(lambda: _rounds(a, "bl") >= 20, "blkloop running on A")
    out = a.xenpy("migrate", "bl", b.banner["XENPY_MIGRATION"], "--verify-unlogged", "--json",
                  timeout=120)
    assert json.loads(out.stdout)["unlogged_pages"] == 0
    assert "bl" not in a.rows()
    wait_for(lambda: _rounds(b, "bl") >= 40, "blkloop continuing on B")
    listed = b.xenpy("block-list", "bl").stdout
    assert "xvda" in listed or "51712" in listed, listed
    save = tmp_path / "bl.save"
    b.xenpy("save", "bl", str(save))
    a.xenpy("restore", str(save))
    n = _rounds(a, "bl")
    wait_for(lambda: _rounds(a, "bl") >= n + 20, "blkloop continuing after restore")


def test_cli_restored_domain_keeps_its_config_and_console(hosts, tmp_path):
    """The xl header of a save file carries the domain's config (as xl's does): the
    restored domain restarts on reboot with it, and its console streams."""
    a, _ = hosts
    cfg = tmp_path / "sd.cfg"
    cfg.write_text(f'name = "sd"\nkernel = "{ROOT / "guests" / "build" / "shutdown-x86_64.elf"}"\n'
                   'memory = 16\non_reboot = "restart"\n')
    a.xenpy("create", str(cfg))
    wait_for(lambda: b"shutdown: ready" in decode_bytes(a.call("console", dom="sd")["log"], "log"),
             "the shutdown guest ready")
    save = tmp_path / "sd.save"
    a.xenpy("save", "sd", str(save))
    assert "sd" not in a.rows()
    a.xenpy("restore", str(save))
    old = a.rows()["sd"]["domid"]
    a.tool("xenstore-write", f"/local/domain/{old}/control/shutdown", "reboot")
    wait_for(lambda: "sd" in a.rows() and a.rows()["sd"]["domid"] != old,
             "the restored domain to restart from its saved config")
    wait_for(lambda: b"shutdown: ready" in decode_bytes(a.call("console", dom="sd")["log"], "log"),
             "the restarted guest ready")
