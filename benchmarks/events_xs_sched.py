"""Interdomain events, XenStore over its Unix socket, and scheduler fairness.

Three sections, each with a baseline measured in the same run (see _common.py for why):

1. **Event round trip.**  Two `pingpong` guests on one real-time Host exchange n events over
   an interdomain channel.  The timed span runs from pong's "pong d.." console line (printed
   just before its "ready" event) to ping's "PASS" line (just after the last reply), so the
   XenStore rendezvous and boot are not counted.  Baseline: the null-hypercall cost from the
   `nullhc` guest, so ``rtt / hypercall`` says how many hypercall-equivalents one round trip
   (two notifies, two event deliveries, two wake-ups and switches) costs.
2. **XenStore ops/s.**  A raw xs_wire client on ``host.serve_xenstore(path)`` does N XS_WRITE
   and N XS_READ round trips (one request in flight).  Baseline: the same operations through
   the in-process dom0 API (``host.xenstored.write/read``).
3. **Scheduler fairness.**  Two CPU-bound `spin` guests with weights 256 and 512 run for a
   while; the share ratio is ``run_ns(512) / run_ns(256)`` (goal 2.0 within 5 %), on a
   real-time Host (~3 wall seconds) and on a deterministic Host (~0.5 s of virtual time).

Nothing asserts on timings; the script exits 1 only when a guest fails.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (BenchError, emit_json, guest_path, median,  # noqa: E402
                     run_under_xenpy, spread, table)

from xenpy.abi.io.xs_wire import XsdSockmsgType  # noqa: E402
from xenpy.abi.sched import Shutdown  # noqa: E402
from xenpy.backends.xenstored.protocol import (NEED_DATA, Message,  # noqa: E402
                                               XsWireConnection, join_strings)
from xenpy.hv.domain import Domain  # noqa: E402
from xenpy.hv.host import Host  # noqa: E402
from xenpy.toolstack.domain import DomainSpec, boot_domain  # noqa: E402

GUEST_MIB = 16


# --- 1. interdomain event round trip ----------------------------------------------------------
class ConsoleTimes:
    """A domain's console writes with a perf_counter stamp each, to time a marker's arrival."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []

    def sink(self, data: bytes) -> None:
        self.chunks.append((time.perf_counter(), data))

    @property
    def output(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def time_of(self, marker: bytes) -> float:
        """When the write that completed ``marker`` arrived."""
        seen = b""
        for t, c in self.chunks:
            seen += c
            if marker in seen:
                return t
        raise BenchError(f"console never printed {marker!r}; got {self.output[-300:]!r}")


def pingpong_once(n: int, timeout: float) -> float:
    """One ping/pong pair on a fresh real-time Host; seconds per round trip."""
    host = Host(memory_mib=2 * GUEST_MIB + 96)
    try:
        kernel = guest_path("pingpong")
        ping = boot_domain(host, DomainSpec("ping", kernel, GUEST_MIB, cmdline=f"role=ping n={n}"))
        pong = boot_domain(host, DomainSpec("pong", kernel, GUEST_MIB,
                                            cmdline=f"role=pong peer={ping.domid} n={n}"))
        logs = {d.domid: ConsoleTimes() for d in (ping, pong)}
        for d in (ping, pong):
            d.console_sink = logs[d.domid].sink
        if not host.run([ping, pong], timeout=timeout):
            raise BenchError(f"pingpong n={n}: still running after {timeout} s")
        for d in (ping, pong):
            out = logs[d.domid].output
            if d.shutdown_reason != Shutdown.poweroff or f"pingpong: PASS {n}".encode() not in out:
                raise BenchError(f"pingpong {d.name}: {d.shutdown_reason} ({d.crash_message}); "
                                 f"console: {out[-300:]!r}")
        t0 = logs[pong.domid].time_of(f"pingpong: pong d{pong.domid},".encode())
        t1 = logs[ping.domid].time_of(f"pingpong: PASS {n}".encode())
        return (t1 - t0) / n
    finally:
        host.close()


def nullhc_once(n: int) -> float:
    """Seconds per null hypercall (first to last console byte of the nullhc guest)."""
    run = run_under_xenpy("nullhc", f"n={n}")
    if f"nullhc: done {n}".encode() not in run.output:
        raise BenchError(f"nullhc: wrong output {run.output[-200:]!r}")
    return (run.last_byte - run.first_byte) / n


def bench_events(n: int, n_hc: int, repeat: int) -> dict:
    rtt: list[float] = []
    hc: list[float] = []
    for _ in range(repeat):                       # alternate, so load changes hit both
        rtt.append(pingpong_once(n, timeout=max(60.0, n * 0.01)))
        hc.append(nullhc_once(n_hc))
    rtt_us, hc_us = median(rtt) * 1e6, median(hc) * 1e6
    rows = [
        [f"pingpong round trip (n={n})", rtt_us, 1e6 / rtt_us, 2e6 / rtt_us, spread(rtt)],
        [f"null hypercall (nullhc n={n_hc})", hc_us, 1e6 / hc_us, "-", spread(hc)],
    ]
    print("\n== 1. interdomain event round trip (real-time Host, 2 guests) ==")
    print(table(["", "µs", "per s", "events/s", "spread"], rows))
    print(f"round trip = {rtt_us / hc_us:.1f} null hypercalls")
    return {"evt_rtt_us": rtt_us, "evt_roundtrips_per_s": 1e6 / rtt_us,
            "evt_events_per_s": 2e6 / rtt_us, "nullhc_us": hc_us,
            "evt_rtt_in_hypercalls": rtt_us / hc_us}


# --- 2. XenStore over the Unix socket -----------------------------------------------------------
class RawXsClient:
    """The smallest blocking xs_wire client: one request, wait for its reply."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.wire = XsWireConnection()
        self.req_id = 0

    def request(self, mtype: XsdSockmsgType, payload: bytes) -> bytes:
        self.req_id += 1
        self.sock.sendall(self.wire.send(Message(int(mtype), self.req_id, 0, payload)))
        while True:
            ev = self.wire.next_event()
            if ev is not NEED_DATA:
                break
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("xenstored closed the socket")
            self.wire.receive_data(data)
        assert isinstance(ev, Message)
        if ev.type == XsdSockmsgType.XS_ERROR or ev.type != mtype or ev.req_id != self.req_id:
            raise BenchError(f"{mtype.name}: reply type {ev.type} req_id {ev.req_id} "
                             f"payload {ev.payload!r}")
        return ev.payload

    def close(self) -> None:
        self.sock.close()


def xs_once(n: int) -> dict[str, float]:
    """ops/s of n writes and n reads, over the socket and in process, on one Host."""
    host = Host(memory_mib=64)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            client = RawXsClient(host.serve_xenstore(os.path.join(tmp, "xenstored.sock")))
            try:
                value = b"0123456789abcdef"
                t0 = time.perf_counter()
                for i in range(n):
                    client.request(XsdSockmsgType.XS_WRITE,
                                   join_strings(f"/bench/sock/k{i % 64}", value, terminate=False))
                t1 = time.perf_counter()
                for i in range(n):
                    got = client.request(XsdSockmsgType.XS_READ,
                                         join_strings(f"/bench/sock/k{i % 64}"))
                    if got != value:
                        raise BenchError(f"XS_READ returned {got!r}, expected {value!r}")
                t2 = time.perf_counter()
            finally:
                client.close()
            xs = host.xenstored
            t3 = time.perf_counter()
            for i in range(n):
                xs.write(f"/bench/api/k{i % 64}", value)
            t4 = time.perf_counter()
            for i in range(n):
                if xs.read(f"/bench/api/k{i % 64}") != value:
                    raise BenchError("xenstored.read returned a wrong value")
            t5 = time.perf_counter()
        finally:
            host.close()
    return {"sock_write": n / (t1 - t0), "sock_read": n / (t2 - t1),
            "api_write": n / (t4 - t3), "api_read": n / (t5 - t4)}


def bench_xs(n: int, repeat: int) -> dict:
    runs = [xs_once(n) for _ in range(repeat)]
    med = {k: median([r[k] for r in runs]) for k in runs[0]}
    sp = {k: spread([r[k] for r in runs]) for k in runs[0]}
    rows = [[op, med[f"sock_{op}"], sp[f"sock_{op}"], med[f"api_{op}"], sp[f"api_{op}"],
             med[f"sock_{op}"] / med[f"api_{op}"]] for op in ("write", "read")]
    print(f"\n== 2. XenStore ops/s (n={n} each, one request in flight) ==")
    print(table(["op", "socket ops/s", "spread", "in-process ops/s", "spread", "socket/api"], rows))
    return {"xs_sock_write_per_s": med["sock_write"], "xs_sock_read_per_s": med["sock_read"],
            "xs_api_write_per_s": med["api_write"], "xs_api_read_per_s": med["api_read"],
            "xs_write_ratio": med["sock_write"] / med["api_write"],
            "xs_read_ratio": med["sock_read"] / med["api_read"]}


# --- 3. scheduler fairness ----------------------------------------------------------------------
def two_spinners(host: Host) -> tuple[Domain, Domain]:
    kernel = guest_path("spin")
    doms = []
    for name, weight in (("spin-w256", 256), ("spin-w512", 512)):
        d = boot_domain(host, DomainSpec(name, kernel, GUEST_MIB, cmdline="n=4000000000"))
        d.sched.weight = weight
        doms.append(d)
    return doms[0], doms[1]


def check_spinning(doms: tuple[Domain, Domain]) -> None:
    for d in doms:
        if d.shutdown_reason is not None:
            raise BenchError(f"{d.name}: shut down early with {d.shutdown_reason} "
                             f"({d.crash_message}); console: {bytes(d.console_log)[-300:]!r}")


def fairness_realtime(seconds: float) -> dict[str, float]:
    host = Host(memory_mib=2 * GUEST_MIB + 96)
    try:
        a, b = two_spinners(host)
        t0 = time.perf_counter()
        host.run([a, b], timeout=seconds)
        wall = time.perf_counter() - t0
        check_spinning((a, b))
        ra, rb = a.vcpus[0].run_ns, b.vcpus[0].run_ns
        return {"run_ns_256": ra, "run_ns_512": rb, "ratio": rb / max(1, ra),
                "slices": host.slices, "span": wall}
    finally:
        host.close()


def fairness_deterministic(virtual_ns: int, timeout: float) -> dict[str, float]:
    host = Host(memory_mib=2 * GUEST_MIB + 96, deterministic=True)
    try:
        a, b = two_spinners(host)
        start = host.clock.now()
        t0 = time.perf_counter()
        if not host.run([a, b], timeout=timeout, until=lambda: host.clock.now() - start >= virtual_ns):
            raise BenchError(f"deterministic fairness: virtual clock reached only "
                             f"{(host.clock.now() - start) / 1e9:.3f} s in {timeout} wall s")
        wall = time.perf_counter() - t0
        check_spinning((a, b))
        ra, rb = a.vcpus[0].run_ns, b.vcpus[0].run_ns
        return {"run_ns_256": ra, "run_ns_512": rb, "ratio": rb / max(1, ra),
                "slices": host.slices, "span": wall, "virtual": host.clock.now() - start}
    finally:
        host.close()


def bench_sched(seconds: float, virtual_ns: int) -> dict:
    rt = fairness_realtime(seconds)
    det = fairness_deterministic(virtual_ns, timeout=max(120.0, virtual_ns / 1e7))
    rows = []
    for name, r in (("real-time", rt), ("deterministic", det)):
        rows.append([name, r["run_ns_256"] / 1e6, r["run_ns_512"] / 1e6, r["ratio"],
                     f"{100 * (r['ratio'] - 2.0) / 2.0:+.1f}%", r["slices"], r["span"]])
    print(f"\n== 3. scheduler fairness: spin w=256 vs spin w=512 (real-time {seconds} s, "
          f"deterministic {virtual_ns / 1e9:g} virtual s) ==")
    print(table(["host", "ms w256", "ms w512", "share ratio", "vs 2.0", "slices", "wall s"], rows))
    return {"sched_rt_ratio": rt["ratio"], "sched_rt_ms_256": rt["run_ns_256"] / 1e6,
            "sched_rt_ms_512": rt["run_ns_512"] / 1e6, "sched_det_ratio": det["ratio"],
            "sched_det_ms_256": det["run_ns_256"] / 1e6, "sched_det_ms_512": det["run_ns_512"] / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="pingpong round trips (default 2000)")
    ap.add_argument("--hc", type=int, default=100_000, help="nullhc calls (default 1e5)")
    ap.add_argument("--xs", type=int, default=5000, help="XenStore ops of each kind (default 5000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row, median (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="real-time fairness run (3 s)")
    ap.add_argument("--virtual", type=float, default=0.5, help="deterministic run, virtual s")
    ap.add_argument("--quick", action="store_true", help="small sizes: check the script runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.hc, args.xs, args.repeat, args.seconds, args.virtual = \
            200, 20_000, 500, 1, 1.0, 0.05
    record: dict = {"bench": "events_xs_sched"}
    try:
        record.update(bench_events(args.n, args.hc, args.repeat))
        record.update(bench_xs(args.xs, args.repeat))
        record.update(bench_sched(args.seconds, int(args.virtual * 1e9)))
    except BenchError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        record["error"] = str(e)
        emit_json(record)
        return 1
    emit_json(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
