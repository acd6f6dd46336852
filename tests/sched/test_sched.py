"""The scheduler and virtual time: determinism, weights, caps, blocked domains, timers."""
from __future__ import annotations

import struct

import pytest

from xenpy.abi import event_channel as E
from xenpy.abi import vcpu as VO
from xenpy.abi.xen import HYPERCALL_NR, PAGE_SIZE
from xenpy.cli import resolve_kernel
from xenpy.hv import hypercall as hc
from xenpy.hv.host import Host
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.domain import DomainSpec, boot_domain
from xenpy.toolstack.elf import load_xen_elf


def boot(host: Host, kernel: str, name: str, cmdline: str = "", mib: int = 8):
    return boot_domain(host, DomainSpec(name=name, kernel=resolve_kernel(kernel),
                                        memory_mib=mib, cmdline=cmdline))


def traced_run(deterministic: bool = True) -> list[tuple[int, int, bytes]]:
    """Two guests sharing the CPU; the global order of their console output, timestamped."""
    host = Host(memory_mib=64, deterministic=deterministic)
    trace: list[tuple[int, int, bytes]] = []
    try:
        doms = [boot(host, "nullhc", "a", "n=20000"), boot(host, "spin", "b", "n=300000"),
                boot(host, "nullhc-x86_64", "c", "n=15000")]
        for d in doms:
            d.console_sink = (lambda dd: lambda data: trace.append(
                (dd.domid, host.clock.now(), data)))(d)
        assert host.run(doms, timeout=120)
        assert all(d.shutdown_reason is not None and d.shutdown_reason.name == "poweroff"
                   for d in doms)
        return trace
    finally:
        host.close()
        host.mem.close()


def test_deterministic_mode_repeats_exactly():
    first, second = traced_run(), traced_run()
    assert first == second
    # the guests really interleaved: output of the three domains is mixed, not sequential
    order = [domid for domid, _, _ in first]
    assert len(set(order)) == 3
    assert order != sorted(order)


def spin_share(weights: tuple[int, int], caps: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Virtual CPU time two never-ending spinners get in a fixed span of virtual time."""
    host = Host(memory_mib=64, deterministic=True)
    try:
        a = boot(host, "spin", "a", "n=4000000000")
        b = boot(host, "spin", "b", "n=4000000000")
        a.sched.weight, b.sched.weight = weights
        a.sched.cap, b.sched.cap = caps
        span = 400_000_000           # 0.4 s of virtual time
        host.run([a, b], timeout=120, until=lambda: host.clock.now() >= span)
        return a.vcpus[0].run_ns, b.vcpus[0].run_ns
    finally:
        host.close()
        host.mem.close()


def test_weights_divide_the_cpu_proportionally():
    ta, tb = spin_share((256, 512))
    assert tb / ta == pytest.approx(2.0, rel=0.05)
    ta, tb = spin_share((300, 300))
    assert tb / ta == pytest.approx(1.0, rel=0.05)


def test_cap_limits_a_domain_even_when_the_cpu_is_free():
    ta, tb = spin_share((256, 256), caps=(25, 0))
    total = ta + tb
    assert ta / total == pytest.approx(0.25, abs=0.04)
    assert tb > 2.5 * ta


def test_a_blocked_domain_is_not_scheduled():
    host = Host(memory_mib=64)
    try:
        echo = boot(host, "echo", "echo")
        busy = boot(host, "spin", "busy", "n=3000000")
        assert host.run([busy], timeout=60)
        assert b"echo: ready" in echo.console_log
        waited = echo.vcpus[0].run_ns
        slices = host.slices
        # the echo guest waits for input in SCHEDOP_poll (10 ms timeouts): running the
        # host for 0.3 s more gives it a few short wake-ups, and the host sleeps between them
        host.run([echo], timeout=0.3)
        assert echo.vcpus[0].run_ns - waited < 20_000_000
        assert host.slices - slices < 100
    finally:
        host.close()
        host.mem.close()


class Direct:
    """Issue hypercalls for a booted (not running) domain."""

    def __init__(self, d) -> None:
        self.d = d
        self.v = d.vcpus[0]
        image = load_xen_elf(resolve_kernel("hello" if d.width == 4 else "hello-x86_64"))
        self.scratch = plan_layout(image, d.max_pages, d.width).virt_end - PAGE_SIZE

    def call(self, name: str, *args: int) -> int:
        mask = (1 << (8 * self.d.width)) - 1
        res = hc.dispatch(self.v, HYPERCALL_NR[name],
                          tuple(a & mask for a in args) + (0,) * (6 - len(args)))
        return res - (1 << (8 * self.d.width)) if res >= 1 << (8 * self.d.width - 1) else res


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_timers_fire_virq_timer(kernel, deterministic):
    """A single-shot timer (set_timer_op) and a periodic one (VCPUOP) raise VIRQ_TIMER."""
    host = Host(memory_mib=64, deterministic=deterministic)
    try:
        d = boot(host, kernel, "t")
        g = Direct(d)
        g.v.gmem.write(g.scratch, struct.pack("<III", E.VIRQ_TIMER, 0, 0))
        assert g.call("event_channel_op", E.EVTCHNOP_bind_virq, g.scratch) == 0
        port = g.v.gmem.read_u32(g.scratch + 8)
        bits = d.width * 8
        now = host.clock.now()
        if d.width == 4:
            deadline = now + 2_000_000
            assert g.call("set_timer_op", deadline & 0xFFFFFFFF, deadline >> 32) == 0
        else:
            assert g.call("set_timer_op", now + 2_000_000) == 0
        assert not d.shared_info.evtchn_pending[port // bits] >> (port % bits) & 1
        busy = boot(host, "spin", "busy", "n=2000000000")
        host.run([d, busy], timeout=30,
                 until=lambda: d.shared_info.evtchn_pending[port // bits] >> (port % bits) & 1)
        assert host.clock.now() >= now + 2_000_000
        # periodic: three more ticks
        d.shared_info.evtchn_pending[port // bits] = 0
        g.v.gmem.write(g.scratch, struct.pack("<Q", 5_000_000))
        assert g.call("vcpu_op", VO.VCPUOP_set_periodic_timer, 0, g.scratch) == 0
        ticks = []

        def tick() -> bool:
            if d.shared_info.evtchn_pending[port // bits] >> (port % bits) & 1:
                ticks.append(host.clock.now())
                d.shared_info.evtchn_pending[port // bits] = 0
            return len(ticks) >= 3
        host.run([d, busy], timeout=30, until=tick)
        assert len(ticks) == 3
        if deterministic:       # observed within a slice (0.2 ms) of firing
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert all(4_500_000 <= g_ <= 5_500_000 for g_ in gaps), gaps
        g.v.gmem.write(g.scratch, struct.pack("<Q", 10))
        assert g.call("vcpu_op", VO.VCPUOP_set_periodic_timer, 0, g.scratch) < 0   # < 1 ms
    finally:
        host.close()
        host.mem.close()


def test_vcpu_time_info_versioning():
    host = Host(memory_mib=64, deterministic=True)
    try:
        d = boot(host, "spin", "s", "n=100000")
        assert host.run([d], timeout=30)
        t = d.vcpu_info(0).time
        assert t.version % 2 == 0 and t.version > 0
        assert t.tsc_to_system_mul == 1 << 31 and t.tsc_shift == 1
        assert 0 < t.system_time <= host.clock.now()
    finally:
        host.close()
        host.mem.close()
