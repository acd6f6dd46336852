"""Save/restore and live migration of real guests (memtouch checks its own memory).

Hosts run deterministically (virtual clock): the real-time tick preempts vCPUs from
another thread, which is not what these tests are about.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from xenpy.abi.xen import Width
from xenpy.errors import StreamError
from xenpy.hv import domctl
from xenpy.hv.host import Host
from xenpy.toolstack import save_restore as sr
from xenpy.toolstack.domain import DomainSpec, boot_domain
from xenpy.toolstack.migrate import (HostClient, MigrationError, MigrationHost, Policy,
                                     migrate_domain)

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guests" / "build"
VERIFY = os.environ.get("XEN_VERIFY_STREAM") or "/opt/xen-verify/bin/verify-stream-v2"
WIDTHS = [("x86_32", Width.X86_32), ("x86_64", Width.X86_64)]


def memtouch(width: str) -> Path:
    path = GUEST / f"memtouch-{width}.elf"
    if not path.exists():
        subprocess.run(["make", "-C", str(REPO / "guests"), f"build/memtouch-{width}.elf"],
                       check=True, capture_output=True)
    return path


def _boot(host: Host, width: str, cmdline: str, name: str = "mt"):
    return boot_domain(host, DomainSpec(name, memtouch(width), 32, cmdline=cmdline))


# --- vcpu_guest_context layout against the real header ---------------------------------------------
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("bits", [32, 64])
def test_vcpu_guest_context_matches_xen_h(tmp_path, bits):
    C = domctl.vcpu_guest_context(Width.X86_32 if bits == 32 else Width.X86_64)
    names = [f[0] for f in C._fields_]
    regs = [f[0] for f in C._fields_[2][1]._fields_ if not f[0].startswith("_")]
    lines = ['printf("size %zu\\n", sizeof(struct vcpu_guest_context));']
    for n in names:
        lines.append(f'printf("{n} %zu\\n", offsetof(struct vcpu_guest_context, {n}));')
    for n in regs:
        lines.append(f'printf("user_regs.{n} %zu\\n", offsetof(struct vcpu_guest_context, user_regs.{n}));')
    src = tmp_path / "probe.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <xen/xen.h>\n"
                   "int main(void){" + "\n".join(lines) + "return 0;}\n")
    exe = tmp_path / "probe"
    subprocess.run(["gcc", f"-m{bits}", "-D__XEN_INTERFACE_VERSION__=0x00040d00", str(src), "-o",
                    str(exe)], check=True)
    got = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                       check=True).stdout.splitlines())
    assert int(got["size"]) == ctypes.sizeof(C) == (2800 if bits == 32 else 5168)
    for n in names:
        assert int(got[n]) == getattr(C, n).offset, n
    R = C._fields_[2][1]
    for n in regs:
        assert int(got[f"user_regs.{n}"]) == C.user_regs.offset + getattr(R, n).offset, n


# --- save / restore --------------------------------------------------------------------------------
@pytest.mark.parametrize("width,_w", WIDTHS)
def test_save_restore_round_trip_on_a_host_with_other_free_frames(tmp_path, width, _w):
    a = Host(96, deterministic=True)
    d = _boot(a, width, "ws=256 passes=5")
    a.run([d], timeout=60, until=lambda: b"pass 2 ok" in d.console_log)
    assert b"pass 2 ok" in d.console_log and b"pass 3" not in d.console_log
    domctl.pause(d)
    a.xenstored.write(f"/local/domain/{d.domid}/data/probe", "kept", [f"n{d.domid}"])
    ports = {p: (ch.state.name, ch.remote_domid) for p, ch in enumerate(d.evtchn.ports)
             if p and ch.state.name != "free"}
    path = tmp_path / "mt.save"
    sr.save_domain(d, path)
    old_p2m = list(d.p2m)
    b = Host(128, deterministic=True)
    filler = b.create_domain("filler", _w, 4)         # so the restored domid differs too
    filler.paused = True
    filler.populate(777)                       # B's free frames differ from A's
    d2 = sr.restore_domain(b, path)
    assert d2.name == "mt" and d2.paused
    assert d2.p2m != old_p2m
    assert d2.domid != d.domid
    assert b.xenstored.read(f"/local/domain/{d2.domid}/data/probe") == b"kept"
    assert b.xenstored.get_perms(f"/local/domain/{d2.domid}/data/probe") == [f"n{d2.domid}"]
    assert {p: (ch.state.name, ch.remote_domid) for p, ch in enumerate(d2.evtchn.ports)
            if p and ch.state.name != "free"} == ports       # same ports, same states
    assert d2.store_port == d.store_port and d2.console_port == d.console_port
    from xenpy.hv.mm import audit
    assert audit(b) == []
    domctl.unpause(d2)
    assert b.run([d2], timeout=60)
    out = d2.console_log.decode()
    assert "memtouch: pass 3 ok" in out and "memtouch: PASS 5 passes" in out, out
    assert "FAIL" not in out and d2.shutdown_reason.name == "poweroff"
    if os.access(VERIFY, os.X_OK):
        proc = subprocess.run([VERIFY, "-f", "xl", "-i", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("width,_w", WIDTHS)
def test_a_restored_domain_saved_again_before_it_ran_continues(tmp_path, width, _w):
    """A restored vCPU has not entered its context yet (the firmware's ring-0 iret holds
    it, in a hypervisor page that does not move): getvcpucontext reports that frame."""
    hosts = [Host(64, deterministic=True) for _ in range(3)]
    d = _boot(hosts[0], width, "ws=64 passes=4")
    hosts[0].run([d], timeout=60, until=lambda: b"pass 1 ok" in d.console_log)
    for i in (1, 2):
        domctl.pause(d)
        sr.save_domain(d, tmp_path / f"s{i}")
        d = sr.restore_domain(hosts[i], tmp_path / f"s{i}")      # paused, never run
    domctl.unpause(d)
    assert hosts[2].run([d], timeout=60)
    out = d.console_log.decode()
    assert "memtouch: PASS 4 passes" in out and d.shutdown_reason.name == "poweroff", out


@pytest.mark.parametrize("width,_w", WIDTHS)
def test_xenstore_watches_move_with_the_domain(tmp_path, width, _w):
    """The shutdown guest set its control/shutdown watch before the save and never
    again: after the restore (another domid) a shutdown request still reaches it."""
    a, b = Host(64, deterministic=True), Host(64, deterministic=True)
    b.destroy_domain(b.create_domain("warm", _w, 4))
    filler = b.create_domain("filler", _w, 4)          # the restored domid differs
    filler.paused = True
    d = boot_domain(a, DomainSpec("sd", GUEST / f"shutdown-{width}.elf", 16))
    a.run([d], timeout=60, until=lambda: b"shutdown: ready" in d.console_log)
    domctl.pause(d)
    sr.save_domain(d, tmp_path / "sd")
    d2 = sr.restore_domain(b, tmp_path / "sd")
    assert d2.domid != d.domid
    domctl.unpause(d2)
    b.run([d2], timeout=1, until=lambda: False)        # it waits on its watch
    assert not d2.finished
    b.xenstored.write(f"/local/domain/{d2.domid}/control/shutdown", "poweroff")
    assert b.run([d2], timeout=60)
    assert d2.shutdown_reason.name == "poweroff", d2.console_log.decode()
    assert b"shutdown: poweroff" in d2.console_log


@pytest.mark.parametrize("width,_w", WIDTHS)
def test_system_time_and_timers_continue_on_a_host_whose_clock_is_behind(tmp_path, width, _w):
    """The timer guest blocks between VIRQ_TIMER ticks of a periodic timer and checks
    its system time never goes backwards.  Restored on a fresh host (clock near 0),
    its time goes on from the saved value and its periodic timer keeps ticking."""
    a = Host(64, deterministic=True)
    d = boot_domain(a, DomainSpec("tm", GUEST / f"timer-{width}.elf", 16,
                                  cmdline="m=30 period_us=5000"))
    a.run([d], timeout=60, until=lambda: a.clock.now() > 60_000_000)
    assert not d.finished
    saved_time = a.clock.now()
    domctl.pause(d)
    sr.save_domain(d, tmp_path / "tm")
    b = Host(64, deterministic=True)
    d2 = sr.restore_domain(b, tmp_path / "tm")
    assert b.clock.now() < saved_time
    domctl.unpause(d2)
    assert b.run([d2], timeout=60)
    out = d2.console_log.decode()
    assert "timer: PASS 30 ticks" in out and d2.shutdown_reason.name == "poweroff", out


def test_a_xenstore_request_left_in_the_ring_is_answered_from_the_restored_store(tmp_path):
    """The guest published a request but had not notified when it was saved: the new
    host serves it only once the domain's own nodes are back."""
    import struct
    a = Host(64, deterministic=True)
    d = _boot(a, "x86_64", "ws=64 passes=50")
    a.run([d], timeout=60, until=lambda: b"pass 1 ok" in d.console_log)
    domctl.pause(d)
    a.xenstored.write(f"/local/domain/{d.domid}/data/probe", "kept", [f"n{d.domid}"])
    page = a.mem.view[d.store_mfn << 12:(d.store_mfn << 12) + 4096]
    msg = struct.pack("<IIII", 2, 77, 0, 11) + b"data/probe\0"         # XS_READ, id 77
    prod = struct.unpack_from("<I", page, 2052)[0]
    for i, byte in enumerate(msg):
        page[(prod + i) % 1024] = byte
    struct.pack_into("<I", page, 2052, prod + len(msg))
    rsp0 = struct.unpack_from("<I", page, 2060)[0]
    sr.save_domain(d, tmp_path / "s")
    b = Host(64, deterministic=True)
    b.create_domain("filler", Width.X86_64, 4).paused = True        # another domid
    d2 = sr.restore_domain(b, tmp_path / "s")
    page2 = b.mem.view[d2.store_mfn << 12:(d2.store_mfn << 12) + 4096]
    rsp = bytes(page2[1024 + i % 1024] for i in range(rsp0, struct.unpack_from("<I", page2, 2060)[0]))
    mtype, rid, _, length = struct.unpack_from("<IIII", rsp)
    assert (mtype, rid, rsp[16:16 + length]) == (2, 77, b"kept")


@pytest.mark.parametrize("section,value,match", [
    ("vcpus", [5], "well-formed"),
    ("vcpus", [{"singleshot": "abc"}], "well-formed"),
    ("vcpus", [{"periodic": 1}], "period of 0 or >= 1 ms"),
    ("vcpus", [{"iopl": 9}], "iopl 0..3"),
    ("gnttab", {"version": 7, "frames": ["00" * 4096]}, "version 1 or 2"),
    ("gnttab", {"version": 1, "frames": [5]}, "well-formed"),
    ("xenstore_watches", [["/local/domain/1/\u20ac", "00", None]], "xenstore_watches"),
    ("xenstore_watches", [["no//path", "00", None]], "xenstore_watches"),
    ("xenstore_watches", [["/x", "00", None]] * 2000, "at most"),
    ("xenstore_io", 5, "xenstore_io"),
    ("xenstore_transactions", {"open": [0]}, "xenstore_transactions"),
    ("vbd", [{"devid": 51712, "spec": "format=qcow2, vdev=xvda, target=/x"}], "vbd"),
])
def test_a_malformed_extension_section_is_a_stream_error(section, value, match):
    """Every section of the xenpy extension is checked: a corrupt one is a StreamError
    naming it, never another exception, and nothing of the domain is left behind."""
    from xenpy.toolstack.stream import XenpyExtension
    from xenpy.toolstack.stream.libxl import EmulatorContext
    a = Host(64, deterministic=True)
    d = _boot(a, "x86_64", "ws=64 passes=50")
    a.run([d], timeout=60, until=lambda: b"pass 1 ok" in d.console_log)
    domctl.pause(d)
    items = []
    for it in sr.save_items(d):
        ext = XenpyExtension.from_record(it) if isinstance(it, EmulatorContext) else None
        items.append(ext.with_json(section, value).to_record() if ext is not None else it)
    b = Host(64, deterministic=True)
    b.destroy_domain(b.create_domain("warm", Width.X86_64, 4))
    free = b.mem.free_frames
    with pytest.raises(StreamError, match=match):
        sr.restore_items(b, items)
    assert b.domains == {} and b.mem.free_frames == free


def test_corrupt_or_truncated_save_files_are_refused_naming_the_record(tmp_path):
    a = Host(96, deterministic=True)
    d = _boot(a, "x86_64", "ws=64 passes=3")
    a.run([d], timeout=60, until=lambda: b"pass 1 ok" in d.console_log)
    domctl.pause(d)
    path = tmp_path / "good"
    sr.save_domain(d, path)
    data = path.read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(data[: len(data) // 2])
    b = Host(96, deterministic=True)
    b.destroy_domain(b.create_domain("warm", Width.X86_64, 4))   # builds the host's 64-bit layout
    free = b.mem.free_frames
    with pytest.raises(StreamError, match="truncated"):
        sr.restore_domain(b, bad)
    assert b.domains == {} and b.mem.free_frames == free      # partial domain discarded
    corrupt = bytearray(data)
    # a PAGE_DATA header: flip its reserved field
    i = data.find(b"\x01\x00\x00\x00", 300)
    corrupt[i + 12] ^= 0xFF
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(StreamError) as ei:
        sr.restore_domain(b, bad)
    msg = str(ei.value)
    assert "at offset" in msg and "Expected" in msg and ("header" in msg or "record" in msg.lower()
                                                          or "PAGE_DATA" in msg), msg
    assert b.domains == {} and b.mem.free_frames == free


# --- live migration --------------------------------------------------------------------------------
def _spawn(memory: int) -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen([sys.executable, "-m", "xenpy.toolstack.migrate", "serve", "--memory",
                          str(memory), "--deterministic"], stdout=subprocess.PIPE, cwd=REPO)
    return p, json.loads(p.stdout.readline())


@pytest.fixture
def two_hosts():
    procs = [_spawn(96), _spawn(128)]
    clients = [HostClient(info["control"]) for _, info in procs]
    yield [(c, info) for c, (_, info) in zip(clients, procs)]
    for c in clients:
        try:
            c.call("quit")
        except (OSError, Exception):       # noqa: BLE001 - teardown of a possibly dead host
            pass
        c.close()
    for p, _ in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.mark.parametrize("width", ["x86_32", "x86_64"])
def test_live_migration_back_and_forth_between_two_host_processes(two_hosts, width):
    (A, a), (B, b) = two_hosts
    A.call("boot", name="mt", kernel=str(memtouch(width)), memory=32,
           cmdline="ws=512 passes=0 report=5")
    A.wait_console("mt", "pass 5 ok")
    hops = [(A, B, b), (B, A, a), (A, B, b)]
    for src, dst, dst_info in hops:
        seen = _last_pass(src.call("console", name="mt")["console"])
        stats = src.call("migrate", name="mt", to=dst_info["migration"])["stats"]
        assert stats["rounds"] and stats["rounds"][0]["pages_sent"] > 8000
        assert 0 < stats["downtime_s"] <= stats["total_time_s"]
        assert stats["pages_sent"] >= stats["nr_pages"] - stats["rounds"][0]["pages_skipped"]
        assert "mt" not in [x["name"] for x in src.call("list")["domains"]]
        first = _first_pass(dst.wait_console("mt", " ok\n"))
        assert first > seen                        # it went on from where it was
        out = dst.wait_console("mt", f"pass {first + 10} ok")
        assert "FAIL" not in out
    assert B.call("console", name="mt")["state"] in ("running", "blocked")


def _first_pass(console: str) -> int:
    import re
    return int(re.search(r"pass (\d+) ok", console).group(1))


def _last_pass(console: str) -> int:
    import re
    return max(int(m) for m in re.findall(r"pass (\d+) ok", console))


class _Proxy:
    """A TCP proxy that can cut the connection after N bytes or flip a byte."""

    def __init__(self, target: str, cut_after: int | None = None, flip_at: int | None = None):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.srv.getsockname()[1]
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.cut_after, self.flip_at = cut_after, flip_at
        self.record = bytearray()
        self.finished = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self._pump()
        except OSError:
            pass                                   # the other end went away first
        finally:
            self.finished.set()

    def _pump(self) -> None:
        c, _ = self.srv.accept()
        s = socket.create_connection(self.target)
        threading.Thread(target=self._back, args=(s, c), daemon=True).start()
        n = 0
        while True:
            data = c.recv(65536)
            if not data:
                break
            if self.flip_at is not None and n <= self.flip_at < n + len(data):
                b = bytearray(data)
                b[self.flip_at - n] ^= 0xFF
                data = bytes(b)
            if self.cut_after is not None and n + len(data) >= self.cut_after:
                s.sendall(data[: self.cut_after - n])
                break
            s.sendall(data)
            self.record += data
            n += len(data)
        for sock in (c, s):
            try:
                sock.shutdown(socket.SHUT_RDWR)     # wakes the other thread's recv, too
            except OSError:
                pass
            sock.close()

    def _back(self, s, c) -> None:
        try:
            while data := s.recv(4096):
                c.sendall(data)
        except OSError:
            pass


@pytest.fixture
def inproc_hosts():
    hosts = [MigrationHost(Host(96, deterministic=True)), MigrationHost(Host(96, deterministic=True))]
    for h in hosts:
        for w in (Width.X86_32, Width.X86_64):       # the host-wide layouts exist from now on
            h.host.destroy_domain(h.host.create_domain("warm", w, 4))
        threading.Thread(target=h.serve, daemon=True).start()
    yield hosts
    for h in hosts:
        h._done.set()
        h.runner.stop()


@pytest.mark.parametrize("fault", ["cut_early", "cut_in_precopy", "corrupt", "no_memory"])
def test_failure_before_commitment_leaves_the_guest_running_on_the_source(inproc_hosts, fault):
    ha, hb = inproc_hosts
    A = HostClient(ha.control_addr)
    A.call("boot", name="mt", kernel=str(memtouch("x86_64")), memory=32, cmdline="ws=256 passes=0")
    A.wait_console("mt", "pass 1 ok")
    target = hb.migration_addr
    if fault == "cut_early":
        target = _Proxy(target, cut_after=100).addr
    elif fault == "cut_in_precopy":
        target = _Proxy(target, cut_after=8 << 20).addr
    elif fault == "corrupt":
        target = _Proxy(target, flip_at=5).addr    # the xl magic (page contents carry no checksum)
    elif fault == "no_memory":
        hog = hb.host.create_domain("hog", Width.X86_64, 4)
        hog.paused = True
        hog.populate(hb.host.mem.free_frames - 1000)
    free_b = hb.host.mem.free_frames
    with pytest.raises(Exception) as ei:
        A.call("migrate", name="mt", to=target)
    assert "keeps running here" in str(ei.value)
    st = A.call("console", name="mt")
    assert st["state"] in ("running", "blocked")
    n = _last_pass(st["console"])
    A.wait_console("mt", f"pass {n + 2} ok")       # still making progress, checks passing
    import time
    end = time.monotonic() + 30
    while "mt" in [d.name for d in hb.host.domains.values()] and time.monotonic() < end:
        time.sleep(0.01)                           # the receiver notices the cut on its own
    hb.runner.call(lambda: None)
    assert "mt" not in [d.name for d in hb.host.domains.values()]
    assert hb.host.mem.free_frames == free_b       # partial domain discarded
    A.close()


def test_policy_is_replaceable_and_stats_are_json(inproc_hosts, tmp_path):
    ha, hb = inproc_hosts
    d = ha.runner.call(lambda: _boot(ha.host, "x86_32", "ws=1024 passes=0"))
    A = HostClient(ha.control_addr)
    A.wait_console("mt", "pass 1 ok")
    A.close()

    class OneRound(Policy):
        def stop_reason(self, rounds, remaining, sent, nr_pages):
            return "script says one round"

    proxy = _Proxy(hb.migration_addr)
    with socket.create_connection(("127.0.0.1", int(proxy.addr.rsplit(":", 1)[1]))) as s:
        stats = migrate_domain(ha.runner, d, s, OneRound())
    n = _last_pass(d.console_log.decode())
    assert stats.stop_reason == "script says one round" and len(stats.rounds) == 1
    j = json.loads(stats.to_json())
    assert j["downtime_s"] > 0 and j["rounds"][0]["round"] == 1
    B = HostClient(hb.control_addr)
    B.wait_console("mt", f"pass {n + 3} ok")
    B.close()
    assert MigrationError.__mro__[1].__name__ == "XenpyError"
    assert proxy.finished.wait(30)
    if os.access(VERIFY, os.X_OK):                 # the migration stream is a valid save file
        path = tmp_path / "stream.xl"
        path.write_bytes(bytes(proxy.record))
        proc = subprocess.run([VERIFY, "-f", "xl", "-i", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
