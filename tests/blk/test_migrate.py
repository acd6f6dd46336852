"""A domain with a disk survives save/restore and live migration (shared storage).

The blkloop guest keeps writes in flight and checks every block it reads back; the host
then checks the image itself (each 64 KiB slot is self-describing).  Hosts are
deterministic so a save lands at a reproducible point of the guest's I/O.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from xenpy.abi.io.xenbus import XenbusState as S
from xenpy.errors import StreamError
from xenpy.hv import domctl
from xenpy.hv.host import Host
from xenpy.toolstack import save_restore as sr
from xenpy.toolstack.disk import attach_disks, blkback_for, frontend_path
from xenpy.toolstack.domain import DomainSpec, boot_domain
from xenpy.toolstack.migrate import HostRunner, Policy, migrate_domain, receive_domain

REPO = Path(__file__).resolve().parents[2]
SLOTS, SLOT = 32, 64 << 10
MAGIC = 0xB10C1009


def _mix(s: int, g: int, i: int) -> int:
    """xg_hash3 of the guest library (guests/lib/include/xg.h)."""
    m = 0xFFFFFFFF
    x = ((s * 0x9E3779B1) & m) ^ ((g * 0x85EBCA77) & m) ^ ((i * 0xC2B2AE3D) & m)
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & m
    x ^= x >> 12
    return x


def check_image(path: Path, last_round: int) -> int:
    """Every slot of the image is a whole block some round wrote (or never written);
    returns the newest generation found."""
    data = path.read_bytes()
    newest = 0
    for s in range(SLOTS):
        block = data[s * SLOT:(s + 1) * SLOT]
        words = struct.unpack(f"<{SLOT // 4}I", block)
        if not any(words):
            continue
        assert words[:2] == (MAGIC, s), f"slot {s}: header {words[:3]}"
        g = words[2]
        assert 0 < g <= last_round, f"slot {s}: generation {g}"
        bad = [i for i in range(3, len(words)) if words[i] != _mix(s, g, i)]
        assert not bad, f"slot {s} gen {g}: {len(bad)} words differ, first {bad[0]}"
        newest = max(newest, g)
    return newest


def _wait(cond, d, timeout: float = 60.0) -> None:
    """Until ``cond()`` (a host runs in another thread); fails if ``d`` ends first."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert not d.finished, d.console_log.decode()[-2000:]
        assert time.monotonic() < deadline, f"gave up after {timeout} s"
        threading.Event().wait(0.02)


@pytest.fixture
def disk(tmp_path) -> Path:
    p = tmp_path / "shared.img"
    with open(p, "wb") as f:
        f.truncate(4 << 20)
    return p


def _boot(host: Host, width: int, disk: Path, cmdline: str):
    d = boot_domain(host, DomainSpec("bl", REPO / "guests" / "build" / f"blkloop-x86_{width}.elf",
                                     16, cmdline=cmdline))
    attach_disks(host, d.domid, [f"format=raw, vdev=xvda, access=rw, target={disk}"])
    return d


def _close(*hosts: Host) -> None:
    for h in hosts:
        if h.blkback is not None:
            h.blkback.close()
        h.close()
        h.mem.close()


@pytest.mark.parametrize("persistent", [1, 0], ids=["persistent", "grant-per-request"])
def test_save_restore_with_a_disk_mid_io(tmp_path, disk, width, persistent):
    a = Host(96, deterministic=True)
    b = Host(96, deterministic=True)
    try:
        d = _boot(a, width, disk, f"rounds=120 report=10 persistent={persistent}")
        def mid_io() -> bool:  # after round 40, requests in the worker, events unmasked
            ring = a.blkback.ring(d.domid, 51712)
            return b"round 40 ok" in d.console_log and ring is not None and \
                ring._pending > 0 and not d.vcpus[0].vcpu_info.evtchn_upcall_mask
        a.run([d], timeout=60, until=mid_io)
        assert mid_io() and b"PASS" not in d.console_log
        domctl.pause(d)
        ring = a.blkback.ring(d.domid, 51712)
        path = tmp_path / "bl.save"
        sr.save_domain(d, path)
        assert not ring._pending          # every request taken was answered before the copy
        a.destroy_domain(d)
        a.blkback.poll()
        filler = b.create_domain("filler", d.width, 4)   # other domid, other frames
        filler.paused = True
        filler.populate(333)
        d2 = sr.restore_domain(b, path)
        assert d2.domid != d.domid
        bb = b.blkback
        assert bb is not None
        dev = bb.devices[(d2.domid, 51712)]
        assert dev.state == S.Connected and dev.ring is not None
        assert b.xenstored.read(f"{frontend_path(d2.domid, 51712)}/backend").decode() == dev.be
        dev.ring.kick()                 # paused: not committed to run here, no disk I/O yet
        assert dev.ring.stats.requests == 0
        # an event pending before the restored vCPU first runs lands on the guest's stack
        d2.evtchn.set_pending(dev.ring.port)
        assert d2.vcpus[0].vcpu_info_pending()
        domctl.unpause(d2)
        assert b.run([d2], timeout=120)
        out = d2.console_log.decode()
        assert "blkloop: PASS 120 rounds" in out and "FAIL" not in out, out[-2000:]
        assert check_image(disk, 120) == 120
        from xenpy.hv.mm import audit
        assert audit(b) == []
    finally:
        _close(a, b)


def test_restore_refuses_a_disk_this_host_cannot_open(tmp_path, disk):
    a = Host(96, deterministic=True)
    b = Host(96, deterministic=True)
    try:
        d = _boot(a, 64, disk, "rounds=0")
        a.run([d], timeout=60, until=lambda: b"round 10 ok" in d.console_log)
        domctl.pause(d)
        path = tmp_path / "bl.save"
        sr.save_domain(d, path)
        disk.rename(tmp_path / "moved.img")
        b.destroy_domain(b.create_domain("warm", d.width, 4))   # builds the host's layout
        free = b.mem.free_frames
        with pytest.raises(StreamError, match="cannot be opened read-write on this host"):
            sr.restore_domain(b, path)
        assert b.domains == {} and b.mem.free_frames == free
        # the source is untouched and carries on
        domctl.unpause(d)
        (tmp_path / "moved.img").rename(disk)
        a.run([d], timeout=60, until=lambda: b"round 30 ok" in d.console_log)
        assert b"round 30 ok" in d.console_log and b"FAIL" not in d.console_log
    finally:
        _close(a, b)


def test_live_migration_with_a_disk(tmp_path, disk, width):
    a = Host(96, deterministic=True)
    b = Host(96, deterministic=True)
    ra, rb = HostRunner(a).start(), HostRunner(b).start()
    try:
        d = ra.call(lambda: _boot(a, width, disk, "rounds=0 report=10"))
        ra.call(lambda: domctl.unpause(d) if d.paused else None)
        _wait(lambda: b"round 20 ok" in d.console_log, d)
        srv = socket.create_server(("127.0.0.1", 0))
        got: dict = {}

        def receiver():
            conn, _ = srv.accept()
            with conn:
                got["d"] = receive_domain(rb, conn)
        t = threading.Thread(target=receiver)
        t.start()
        with socket.create_connection(srv.getsockname()) as s:
            stats = migrate_domain(ra, d, s, Policy(max_rounds=4, verify_unlogged=True))
        t.join(30)
        d2 = got["d"]
        before = d2.console_log.count(b" ok\n")
        _wait(lambda: d2.console_log.count(b" ok\n") >= before + 3, d2)
        log = (d.console_log + d2.console_log).decode()
        assert "FAIL" not in log, log[-2000:]
        assert stats.downtime_s > 0
        assert stats.unlogged_pages == 0, "a host-side write was not dirty-logged"
    finally:
        ra.stop()
        rb.stop()
        _close(a, b)


def test_a_guest_picks_up_a_disk_hot_plugged_after_boot(disk, width):
    """blkloop hotplug=1 boots without a disk and watches device/vbd, as a xenbus
    frontend driver probes: block-attach (attach_disks) on the running domain is enough."""
    h = Host(64, deterministic=True)
    try:
        d = boot_domain(h, DomainSpec("hp", REPO / "guests" / "build" / f"blkloop-x86_{width}.elf",
                                      16, cmdline="hotplug=1 rounds=16 report=8"))
        h.run([d], timeout=60, until=lambda: b"waiting for a disk" in d.console_log)
        h.run([d], timeout=1, until=lambda: False)          # it stays waiting
        assert b"hot-plugged" not in d.console_log and not d.finished
        attach_disks(h, d.domid, [f"format=raw, vdev=xvdb, access=rw, target={disk}"])
        assert h.run([d], timeout=60)
        out = d.console_log.decode()
        assert "blkloop: hot-plugged devid=51728" in out and "blkloop: PASS 16 rounds" in out, out
        assert check_image(disk, 16) == 16
    finally:
        _close(h)
