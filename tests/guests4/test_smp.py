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


def test_a_64bit_context_whose_iretq_faults_never_reaches_the_guest_at_ring_0(
        domain_factory, bundled_guests):
    """VCPUOP_initialise with a user-mode context whose CS the firmware's ring-0 iretq
    refuses (#GP): the guest's #GP handler must not run with the hypervisor's CS (it once
    did, at CPL 0, and could rewrite the host-wide M2P). The domain crashes instead."""
    import struct
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    from xenpy.abi.xen import HYPERCALL_NR, PAGE_SIZE
    from xenpy.cli import resolve_kernel
    from xenpy.hv import hypercall as hc
    from xenpy.toolstack.builder import plan_layout
    from xenpy.toolstack.elf import load_xen_elf

    def call(v, name, *a):
        return hc.dispatch(v, HYPERCALL_NR[name], tuple(x & (2**64 - 1) for x in a)
                           + (0,) * (6 - len(a)))
    run = domain_factory("hello-x86_64", memory_mib=8, vcpus=2, name="att")
    victim = domain_factory("hello-x86_64", memory_mib=8, name="vic").domain
    d = run.domain
    v0, v1 = d.vcpus
    top = plan_layout(load_xen_elf(resolve_kernel("hello-x86_64")), d.max_pages, d.width).virt_end
    code, ctxpage, stack = top - PAGE_SIZE, top - 4 * PAGE_SIZE, top - 2 * PAGE_SIZE
    out = code + 0x800
    vmfn = victim.p2m[5]
    m2p_before = d.mem.m2p(vmfn)
    payload = f"""mov ax, cs; movabs rbx, {out}; mov [rbx], ax
        movabs rsi, {0xFFFF800000000000 + 8 * vmfn}; mov qword ptr [rsi], 0x41414141
        l: jmp l"""
    pcode = code + 0x100
    v0.gmem.write(pcode, bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(payload, pcode)[0]))
    v0.gmem.write(code, b"\xeb\xfe")                       # vCPU 0 just spins
    v0.gmem.write(v0.cpu.reg("rsp"), code.to_bytes(8, "little"))
    ctx = domctl.vcpu_guest_context(d.width).from_buffer_copy(domctl.getvcpucontext(v0))
    ctx.flags = domctl.VGCF_online                         # user mode
    ctx.ctrlreg[1] = ctx.ctrlreg[3]
    ctx.user_regs.rip = code
    ctx.user_regs.cs = 0xe02b                              # a data selector: iretq #GPs
    ctx.kernel_sp = stack + PAGE_SIZE
    ctx.trap_ctxt[13].vector, ctx.trap_ctxt[13].cs, ctx.trap_ctxt[13].address = 13, 0xe033, pcode
    v0.gmem.write(ctxpage, bytes(ctx))
    assert call(v0, "vcpu_op", 0, 1, ctxpage) == 0         # VCPUOP_initialise
    assert call(v0, "vcpu_op", 1, 1, 0) == 0               # VCPUOP_up
    run.run(2)
    assert struct.unpack("<H", v0.gmem.read(out, 2))[0] == 0      # the handler never ran
    assert d.mem.m2p(vmfn) == m2p_before
    assert d.shutdown_reason.name == "crash"



@pytest.mark.parametrize("field", ["no-user-table", "fs_base"])
def test_a_bad_64bit_context_is_refused(domain_factory, bundled_guests, field):
    """As Xen's arch_set_info_guest: user mode needs a user page table, and segment
    bases must be canonical."""
    run = domain_factory("hello-x86_64", memory_mib=8, vcpus=2)
    v0, v1 = run.domain.vcpus
    ctx = domctl.vcpu_guest_context(run.domain.width).from_buffer_copy(domctl.getvcpucontext(v0))
    if field == "no-user-table":
        ctx.flags, ctx.ctrlreg[1] = domctl.VGCF_online, 0
    else:
        ctx.fs_base = 1 << 63
    with pytest.raises(domctl.DomctlError):
        domctl.setvcpucontext(v1, bytes(ctx))
