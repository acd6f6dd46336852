"""The smp guest: a second vCPU brought up with VCPUOP_initialise/up, shared memory, down.

Its checks include error returns (-EINVAL, -EEXIST, -ENOENT) seen by the guest itself:
on 64-bit these come back through the C syscall hook, whose int64 result once lost
every negative value (the guest saw the hypercall number instead).
"""
from __future__ import annotations

import pytest

from xenpy.hv import domctl
from xenpy.toolstack import save_restore as sr

from .conftest import WIDTHS


@pytest.mark.parametrize("deterministic", [True, False], ids=["virtual-clock", "wall-clock"])
@pytest.mark.parametrize("width", WIDTHS)
def test_second_vcpu_up_and_down(new_host, guest_build, width, deterministic):
    _, factory = new_host(deterministic)
    run = factory(guest_build / f"smp-{width}.elf", memory_mib=8, vcpus=2, cmdline="n=20000")
    assert run.run(timeout=60), run.console
    assert run.lines[-1] == "smp: PASS (6 checks)", run.console
    v1 = run.domain.vcpus[1]
    assert v1.initialised and not v1.online and v1.run_ns > 0


@pytest.mark.parametrize("when", ["before-up", "both-running"])
@pytest.mark.parametrize("width", WIDTHS)
def test_a_two_vcpu_domain_saves_and_restores(new_host, guest_build, tmp_path, width, when):
    """Before vCPU 1 is up, libxc sends no context for it and the restored one stays down
    until the guest brings it up; with both running, both contexts move."""
    a, fa = new_host()
    b, _ = new_host()
    run = fa(guest_build / f"smp-{width}.elf", memory_mib=8, vcpus=2, cmdline="n=20000")
    d = run.domain
    v1 = d.vcpus[1]
    if when == "before-up":
        a.run([d], timeout=5, until=lambda: a.slices > 2)
        assert not v1.initialised
    else:
        a.run([d], timeout=30, until=lambda: v1.online and v1.run_ns > 0)
        assert v1.online and b"smp: start: ok" in d.console_log
    domctl.pause(d)
    sr.save_domain(d, tmp_path / "smp")
    d2 = sr.restore_domain(b, tmp_path / "smp")
    assert d2.vcpus[1].initialised == v1.initialised and d2.vcpus[1].online == v1.online
    domctl.unpause(d2)
    assert b.run([d2], timeout=60)
    assert "smp: PASS (6 checks)" in d2.console_log.decode(), d2.console_log.decode()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_last_vcpu_going_down_powers_the_domain_off(new_host, guest_build, width):
    """Xen's do_vcpu_op: "Last vcpu going down?" -> domain_shutdown(poweroff)."""
    from xenpy.abi import vcpu as VO
    from xenpy.hv import vcpu_op
    host, factory = new_host()
    run = factory(guest_build / f"hello-{width}.elf", memory_mib=8, vcpus=2)
    d = run.domain
    assert vcpu_op.do_vcpu_op(d.vcpus[0], VO.VCPUOP_down, 0, 0) == 0   # as on itself
    assert d.vcpus[0].online is True and d.shutdown_reason.name == "poweroff"
    assert run.run(timeout=10)
