"""Time: the system clock guests read, their timers, and rdtsc (Xen's common/time.c, arch time).

A guest computes "now" from its vcpu_time_info (system_time at tsc_timestamp, scaled by
tsc_to_system_mul/tsc_shift) and rdtsc.  xenpy virtualises rdtsc (CR4.TSD: every rdtsc
traps and is emulated, as Xen's emulated-TSC mode) so that both pieces come from one
clock of ours, which is either

* RealClock: host monotonic time since the host started, or
* VirtualClock: advanced only by guest execution (basic blocks retired, counted by a C
  block hook), so that runs are deterministic: same guests, same output.

The TSC runs at 1 GHz (1 tick = 1 ns): tsc_to_system_mul = 2^31 with tsc_shift = 1.

A domain's system time is that clock plus ``Domain.time_offset_ns`` (0 for a domain
built here).  A restored or migrated-in domain gets the offset that continues its time
from where it was saved: its guest takes no part in the move (no resume hook re-reads
the clock), so its time must not jump and its absolute timer deadlines stay valid.
Timer deadlines are kept in host time; ``guest_now``/``to_host`` convert.
"""
from __future__ import annotations

import heapq
import itertools
import time as _time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.event_channel import VIRQ_TIMER
from ..abi import vcpu as VO
from ..abi.xen import Width
from .hypercall import hypercall

if TYPE_CHECKING:
    from .domain import Domain
    from .vcpu import Vcpu

TSC_KHZ = 1_000_000
TSC_MUL, TSC_SHIFT = 1 << 31, 1
NS_PER_BLOCK = 10               # virtual time per retired basic block


class RealClock:
    deterministic = False

    def __init__(self) -> None:
        self._t0 = _time.monotonic_ns()

    def now(self) -> int:
        return _time.monotonic_ns() - self._t0

    def advance(self, ns: int) -> None:
        """Only meaningful for the virtual clock; real time advances by itself."""


class VirtualClock:
    """Nanoseconds derived from retired guest blocks (plus idle skips)."""
    deterministic = True

    def __init__(self) -> None:
        self.ns = 0

    def now(self) -> int:
        return self.ns

    def advance(self, ns: int) -> None:
        self.ns += max(0, ns)


@dataclass(order=True)
class Timer:
    deadline: int
    seq: int
    vcpu: "Vcpu" = field(compare=False)
    kind: str = field(compare=False)          # "singleshot" or "periodic"
    cancelled: bool = field(default=False, compare=False)


class TimerQueue:
    """All guests' timers, ordered by deadline."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()

    def add(self, v: "Vcpu", deadline: int, kind: str) -> Timer:
        t = Timer(deadline, next(self._seq), v, kind)
        heapq.heappush(self._heap, t)
        return t

    def next_deadline(self) -> int | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].deadline if self._heap else None

    def peek_deadline(self) -> int | None:
        """The earliest deadline, cancelled timers included (safe from another thread)."""
        heap = self._heap
        try:
            return heap[0].deadline if heap else None
        except IndexError:
            return None

    def expire(self, now: int) -> list[Timer]:
        out = []
        while self._heap and self._heap[0].deadline <= now:
            t = heapq.heappop(self._heap)
            if not t.cancelled:
                out.append(t)
        return out


def guest_now(d: "Domain") -> int:
    """The domain's system time (ns)."""
    return d.host.clock.now() + d.time_offset_ns


def to_host(d: "Domain", deadline: int) -> int:
    """A deadline in the domain's system time, on the host's clock."""
    return deadline - d.time_offset_ns


def update_vcpu_time(v: "Vcpu") -> None:
    """update_vcpu_system_time: the version protocol (odd while we write)."""
    now = guest_now(v.domain)
    t = v.vcpu_info.time
    t.version = (t.version + 1) | 1
    t.tsc_timestamp = now            # the TSC is the clock at 1 GHz
    t.system_time = now
    t.tsc_to_system_mul = TSC_MUL
    t.tsc_shift = TSC_SHIFT
    t.flags = 0
    t.version += 1


def update_wallclock(d) -> None:
    """shared_info's wallclock: the UTC time at system time 0 (seconds, nanoseconds)."""
    si = d.shared_info
    host = d.host
    boot = host.wallclock_base_ns - d.time_offset_ns
    si.wc_version = (si.wc_version + 1) | 1
    si.wc_sec = (boot // 1_000_000_000) & 0xFFFFFFFF
    si.wc_nsec = boot % 1_000_000_000
    if d.width == 8:
        si.wc_sec_hi = boot // 1_000_000_000 >> 32
    else:
        si.arch.wc_sec_hi = boot // 1_000_000_000 >> 32
    si.wc_version += 1


def rdtsc(v: "Vcpu") -> int:
    return guest_now(v.domain)


def fire(t: Timer) -> None:
    """A timer expired: VIRQ_TIMER to its vCPU; re-arm a periodic one."""
    v = t.vcpu
    if v.domain.dying:
        return
    if t.kind == "wake":                     # a SCHEDOP_poll timeout
        v.poll_timer = None
        v.kick()
        return
    if t.kind == "singleshot":
        v.singleshot = None
    else:
        period = v.periodic_period
        if period:     # Xen: the next event is a period after this one was delivered
            now = v.domain.host.clock.now()
            v.periodic = v.domain.host.timers.add(v, now + period, "periodic")
    v.domain.evtchn.send_virq(VIRQ_TIMER, v.vcpu_id)
    v.kick()


def set_singleshot(v: "Vcpu", deadline: int | None) -> None:
    """Arm (or with 0/None cancel) the vCPU's single-shot timer; ``deadline`` in the
    domain's system time."""
    if v.singleshot is not None:
        v.singleshot.cancelled = True
        v.singleshot = None
    if deadline:
        v.singleshot = v.domain.host.timers.add(v, to_host(v.domain, deadline), "singleshot")
        v.domain.host.notify_event(v.domain)


@hypercall("set_timer_op", 1, abis=(Width.X86_64,))
def do_set_timer_op64(v: "Vcpu", timeout: int) -> int:
    set_singleshot(v, timeout)
    return 0


@hypercall("set_timer_op", 2, abis=(Width.X86_32,))
def do_set_timer_op32(v: "Vcpu", lo: int, hi: int) -> int:
    """32-bit ABI: the 64-bit absolute system time in two registers (0 = cancel)."""
    set_singleshot(v, (hi << 32) | lo)
    return 0


def timer_op(v: "Vcpu", cmd: int, target: "Vcpu", arg: int) -> int | None:
    """The VCPUOP_* timer and runstate sub-ops (vcpu_op.py dispatches); None: not ours."""
    d = v.domain
    g = v.gmem
    if cmd == VO.VCPUOP_set_singleshot_timer:
        # struct vcpu_set_singleshot_timer { uint64 timeout_abs_ns; uint32 flags; }
        deadline = g.read_u64(arg)
        flags = g.read_u32(arg + 8)
        if flags & 1 and deadline < guest_now(d):         # VCPU_SSHOTTMR_future
            return -Errno.ETIME
        set_singleshot(target, deadline)
        return 0
    if cmd == VO.VCPUOP_stop_singleshot_timer:
        set_singleshot(target, None)
        return 0
    if cmd == VO.VCPUOP_set_periodic_timer:
        period = g.read_u64(arg)
        if period < 1_000_000:                             # Xen: at least 1 ms
            return -Errno.EINVAL
        stop_periodic(target)
        target.periodic_period = period
        target.periodic = d.host.timers.add(target, d.host.clock.now() + period, "periodic")
        d.host.notify_event(d)
        return 0
    if cmd == VO.VCPUOP_stop_periodic_timer:
        stop_periodic(target)
        return 0
    if cmd == VO.VCPUOP_get_runstate_info:
        # struct vcpu_runstate_info { int state; uint64 state_entry_time; uint64 time[4]; }
        now = guest_now(d)
        g.write(arg, (0).to_bytes(8, "little") + now.to_bytes(8, "little")
                + int(target.run_ns).to_bytes(8, "little") + bytes(24))
        return 0
    return None


def stop_periodic(v: "Vcpu") -> None:
    if v.periodic is not None:
        v.periodic.cancelled = True
        v.periodic = None
    v.periodic_period = 0
