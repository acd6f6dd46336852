"""Live-migration benchmark: downtime and total time, and the cost of dirty logging.

Two hosts in one process (each with its own scheduler thread) migrate a memtouch guest
over loopback TCP with Xen's stopping rules (30 rounds, < 50 pages, 3x memory):

* 64 MiB and 256 MiB guests with writable working sets of 0, 1 and 16 MiB, dirtied at a
  moderate rate (2000 pages/s; ws=0 is an idle guest);
* the "diabolical" guest of Clark et al.: 16 MiB rewritten as fast as the CPU can, i.e.
  faster than the pre-copy can send it, so the policy has to give up;
* the same 1 MiB case with the unlogged-write safety net on (off by default): it
  re-checks every page's crc after the pause, so its cost grows with memory;
* guest store throughput (memtouch passes over 4 MiB per wall second) with log-dirty on
  and off, measured in the same run on the same host, alternating, several times.

Hosts are deterministic (virtual time): the real-time tick preempts vCPUs from another
thread.  Prints a table and one JSON line.  Nothing here asserts on timings.

    .venv/bin/python benchmarks/migration.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import threading
import time
from pathlib import Path

from xenpy.hv import domctl
from xenpy.hv.host import Host
from xenpy.toolstack.domain import DomainSpec, boot_domain
from xenpy.toolstack.migrate import MigrationHost, Policy, migrate_domain

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "guests" / "build" / "memtouch-x86_64.elf"
CLARK_MS = {"Quake 3 server": 60, "SPECweb99": 210, "Apache (static)": 165}


def _passes(d) -> int:
    found = re.findall(rb"pass (\d+) ok", bytes(d.console_log))
    return int(found[-1]) if found else 0


def _wait(pred, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError("timed out")
        time.sleep(0.01)


def one_migration(guest_mib: int, ws_kib: int, rate: int, verify: bool = False,
                  limit: bool = False) -> dict:
    hosts = [MigrationHost(Host(guest_mib * 2 + 64, deterministic=True)) for _ in range(2)]
    for h in hosts:
        threading.Thread(target=h.serve, daemon=True).start()
    a, b = hosts
    try:
        cmd = f"ws={ws_kib} rate={rate} passes=0"
        d = a.runner.call(lambda: boot_domain(a.host, DomainSpec("mt", KERNEL, guest_mib, cmdline=cmd)))
        _wait(lambda: b"memtouch: ws=" in d.console_log)
        time.sleep(0.3)                       # let the working set warm up
        with socket.create_connection(("127.0.0.1", int(b.migration_addr.rsplit(":", 1)[1]))) as s:
            stats = migrate_domain(a.runner, d, s, Policy(verify_unlogged=verify, rate_limit=limit))
        d2 = next(x for x in b.host.domains.values() if x.name == "mt")
        before = _passes(d2)
        _wait(lambda: _passes(d2) > before or (ws_kib == 0 and d2.state.name in ("running", "blocked")))
        if b"FAIL" in d2.console_log or d2.finished:
            raise RuntimeError(f"guest failed after migration: {d2.console_log[-300:]!r}")
        return {"guest_mib": guest_mib, "ws_kib": ws_kib, "rate_pps": rate, "verify": verify, "rate_limit": limit,
                "rounds": len(stats.rounds), "stop": stats.stop_reason,
                "pages_sent": stats.pages_sent, "last_round_pages": stats.last_round_pages,
                "unlogged_pages": stats.unlogged_pages,
                "downtime_ms": round(stats.downtime_s * 1000, 1),
                "total_s": round(stats.total_time_s, 3)}
    finally:
        for h in hosts:
            h._done.set()
            h.runner.stop()


def store_throughput(seconds: float, reps: int) -> dict:
    """memtouch passes over 4 MiB per wall second, log-dirty off vs on (alternating)."""
    host = Host(128, deterministic=True)
    d = boot_domain(host, DomainSpec("st", KERNEL, 64, cmdline="ws=4096 rate=0 passes=0"))
    host.run([d], timeout=60, until=lambda: _passes(d) >= 1)
    res = {"off": [], "on": []}
    for _ in range(reps):
        for mode in ("off", "on"):
            ld = domctl.log_dirty_enable(d) if mode == "on" else None
            p0, t0 = _passes(d), time.monotonic()
            host.run([d], timeout=seconds)
            res[mode].append((_passes(d) - p0) / (time.monotonic() - t0))
            if ld is not None:
                ld.clean()
                domctl.log_dirty_disable(d)
    off, on = statistics.median(res["off"]), statistics.median(res["on"])
    return {"passes_per_s_off": round(off, 2), "passes_per_s_on": round(on, 2),
            "MB_per_s_off": round(off * 4 * 2, 1), "MB_per_s_on": round(on * 4 * 2, 1),
            "cost_pct": round(100 * (1 - on / off), 1) if off else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="64 MiB only, one throughput rep")
    args = ap.parse_args()
    cases = [(m, ws, 2000 if ws else 0) for m in ((64,) if args.quick else (64, 256))
             for ws in (0, 1024, 16384)]
    rows = [one_migration(*c) for c in cases]
    # diabolical: rewrite 16 MiB flat out, against Xen 2005's rate limit (100 Mbit/s, then
    # dirty rate + 50, at most 500): the guest dirties faster than the link may send
    rows.append(one_migration(64, 16384, 0, limit=True))
    # the unlogged-write safety net (Policy.verify_unlogged, off by default) costs downtime
    rows += [one_migration(m, 1024, 2000, verify=True) for m in ((64,) if args.quick else (64, 256))]
    print(f"{'guest':>6} {'ws':>7} {'rate':>6} {'rounds':>6} {'sent':>7} {'last':>6} "
          f"{'unlog':>5} {'down ms':>8} {'total s':>8} net  stop")
    for r in rows:
        print(f"{r['guest_mib']:>4}Mi {r['ws_kib']:>5}Ki {r['rate_pps'] or 'max':>6} "
              f"{r['rounds']:>6} {r['pages_sent']:>7} {r['last_round_pages']:>6} "
              f"{r['unlogged_pages']:>5} {r['downtime_ms']:>8} {r['total_s']:>8} "
              f"{'on ' if r['verify'] else 'off'}  {r['stop']}"
              + ("  [rate-limited]" if r["rate_limit"] else ""))
    tp = store_throughput(2.0, 1 if args.quick else 3)
    print(f"store throughput (4 MiB working set, read+write): log-dirty off "
          f"{tp['MB_per_s_off']} MB/s, on {tp['MB_per_s_on']} MB/s: cost {tp['cost_pct']}% "
          "(goal <= 30%)")
    print("Clark et al. 2005 downtimes (ms): " + ", ".join(f"{k} {v}" for k, v in CLARK_MS.items()))
    print(json.dumps({"bench": "migration", "migrations": rows, "store_throughput": tp}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
