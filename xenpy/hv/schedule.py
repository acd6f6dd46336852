"""The scheduler: which vCPU runs next, and for how long (the idea of Xen's credit scheduler).

Proportional share: every domain has a weight (Xen's default 256) and accrues virtual
runtime = time run x 256 / weight; the runnable vCPU with the least virtual runtime
runs next, so CPU time divides in proportion to the weights.  A cap (percent of one
CPU, 0 = none) parks a domain for the rest of a 30 ms accounting period once it has
used its share.  A blocked vCPU is never picked and costs nothing: the host sleeps.

Two modes:
* real time — when anything else may need the CPU a slice carries the block budget too
  (time is still wall time), and the ticker asks the vCPU to give the CPU back at its
  next hook; a lone vCPU runs hook-free (see Host._tick for why stops are never
  asynchronous);
* deterministic — a slice is a budget of basic blocks counted by a C block hook, and
  the clock is virtual (time.VirtualClock), so two runs of the same guests give the
  same interleaving and the same output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

DEFAULT_WEIGHT = 256
PERIOD_NS = 30_000_000
SLICE_BLOCKS = 20_000               # deterministic slices (0.2 ms of virtual time)
REALTIME_SLICE_BLOCKS = 200_000     # the bound on a real-time slice (~10 ms of guest code)
QUANTUM = 0.01


@dataclass
class SchedParams:
    """Per-domain parameters, as `xl sched-credit -d DOM -w WEIGHT -c CAP`."""
    weight: int = DEFAULT_WEIGHT
    cap: int = 0


class Scheduler:
    def __init__(self, deterministic: bool = False, slice_blocks: int = SLICE_BLOCKS) -> None:
        self.deterministic = deterministic
        self.slice_blocks = slice_blocks
        self.period_start = 0

    def new_period(self, now: int, domains: list["Domain"]) -> None:
        if now - self.period_start >= PERIOD_NS:
            self.period_start = now - (now - self.period_start) % PERIOD_NS
            for d in domains:
                d.period_used_ns = 0

    def capped(self, d: "Domain") -> bool:
        cap = d.sched.cap
        return bool(cap) and d.period_used_ns * 100 >= cap * PERIOD_NS

    def pick(self, ready: list["Vcpu"]) -> "Vcpu":
        """The domain furthest behind its share; within it, the vCPU that has run least
        (so a domain's vCPUs share its time), one that just yielded going last."""
        return min(ready, key=lambda v: (v.domain.vruntime, v.domain.domid, v.yielded,
                                         v.run_ns, v.vcpu_id))

    def charge(self, v: "Vcpu", ns: int) -> None:
        d = v.domain
        d.vruntime += ns * DEFAULT_WEIGHT // max(1, d.sched.weight)
        d.period_used_ns += ns
        v.run_ns += ns
