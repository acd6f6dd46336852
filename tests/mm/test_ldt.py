"""MMUEXT_SET_LDT: the guest's LDT is validated, mapped for the CPU and usable."""
from __future__ import annotations

import struct

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks

from xenpy.abi.errno import Errno
from xenpy.abi.sched import Shutdown
from xenpy.abi.xen import (DOMID_SELF, HYPERCALL_NR, MMUEXT_SET_LDT, PAGE_SIZE, _PAGE_ACCESSED,
                           _PAGE_PRESENT)
from xenpy.cli import resolve_kernel
from xenpy.hv import descriptor as desc
from xenpy.hv import hypercall as hc
from xenpy.hv.mm import guest_l1e_maddr
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf


def _booted(domain_factory, kernel):
    run = domain_factory(kernel, memory_mib=8)
    d = run.domain
    v = d.vcpus[0]
    image = load_xen_elf(resolve_kernel(kernel))
    top = plan_layout(image, d.max_pages, d.width).virt_end
    return run, d, v, top - 3 * PAGE_SIZE, top - 2 * PAGE_SIZE, top - PAGE_SIZE


def _call(v, name, *args):
    mask = (1 << (8 * v.domain.width)) - 1
    res = hc.dispatch(v, HYPERCALL_NR[name], tuple(a & mask for a in args) + (0,) * (6 - len(args)))
    return res - (1 << (8 * v.domain.width)) if res >= 1 << (8 * v.domain.width - 1) else res


def _set_ldt(v, ldt_va: int, ents: int, scratch: int) -> int:
    # the LDT page must be mapped read-only first (a descriptor page is never writable)
    slot = guest_l1e_maddr(v, ldt_va)
    pte = v.domain.mem.read_u64(slot)
    ro = (pte & ~0x2) | _PAGE_PRESENT | _PAGE_ACCESSED
    if v.domain.width == 4:
        assert _call(v, "update_va_mapping", ldt_va, ro & 0xFFFFFFFF, ro >> 32, 2) == 0
        op = struct.pack("<III", MMUEXT_SET_LDT, ldt_va, ents)
    else:
        assert _call(v, "update_va_mapping", ldt_va, ro, 2) == 0
        op = struct.pack("<IxxxxQQ", MMUEXT_SET_LDT, ldt_va, ents)
    v.gmem.write(scratch, op)
    return _call(v, "mmuext_op", scratch, 1, 0, DOMID_SELF)


def _ldt_loader(domain_factory, kernel):
    """A booted guest with a 2-entry LDT (entry 1: a flat data segment) whose first
    instructions load that selector, then power off: (run, d, v, ldt va, selector)."""
    run, d, v, code, ldt, scratch = _booted(domain_factory, kernel)
    w64 = d.width == 8
    dpl = 3 if w64 else 1
    v.gmem.write(ldt + 8, desc.segment(0, 0xFFFFF, desc.DATA_RW, dpl))
    assert _set_ldt(v, ldt, 2, scratch) == 0
    sel = (1 << 3) | 4 | dpl                          # LDT entry 1, TI=1
    ks = Ks(KS_ARCH_X86, KS_MODE_64 if w64 else KS_MODE_32)
    reason = scratch + 0x100
    v.gmem.write(reason, struct.pack("<I", Shutdown.poweroff))
    if w64:
        asm = f"mov eax, {sel}; mov fs, ax; mov edi, 2; mov rsi, {reason}; mov eax, 29; syscall"
    else:
        asm = f"mov eax, {sel}; mov ds, ax; mov ebx, 2; mov ecx, {reason}; mov eax, 29; int 0x82"
    v.gmem.write(code, bytes(ks.asm(asm, code)[0]))
    sp = v.cpu.reg("rsp" if w64 else "esp")
    v.gmem.write(sp, code.to_bytes(d.width, "little"))    # boot iret frame -> our code
    return run, d, v, ldt, sel


@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_guest_loads_a_selector_from_its_ldt(domain_factory, kernel):
    run, d, v, _ldt, sel = _ldt_loader(domain_factory, kernel)
    w64 = d.width == 8
    assert run.run(10)
    assert run.shutdown_reason == Shutdown.poweroff, run.domain.crash_message
    assert v.cpu.reg("fs" if w64 else "ds") == sel


@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_an_ldt_with_a_call_gate_is_refused(domain_factory, kernel):
    _run, d, v, _code, ldt, scratch = _booted(domain_factory, kernel)
    v.gmem.write(ldt + 8, desc.call_gate32(0xE008, 0x1000, 3))     # a gate to ring 0
    assert _set_ldt(v, ldt, 2, scratch) == -Errno.EINVAL
    assert v.ldt == (0, 0)


@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_an_ldt_frame_cannot_be_mapped_writable(domain_factory, kernel):
    _run, d, v, _code, ldt, scratch = _booted(domain_factory, kernel)
    v.gmem.write(ldt + 8, desc.segment(0, 0xFFFFF, desc.DATA_RW, 3))
    assert _set_ldt(v, ldt, 2, scratch) == 0
    slot = guest_l1e_maddr(v, ldt)
    rw = d.mem.read_u64(slot) | 0x2
    if d.width == 4:
        res = _call(v, "update_va_mapping", ldt, rw & 0xFFFFFFFF, rw >> 32, 2)
    else:
        res = _call(v, "update_va_mapping", ldt, rw, 2)
    assert res < 0


@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_the_ldt_moves_with_a_saved_domain(domain_factory, kernel, tmp_path):
    """setvcpucontext loads the context's LDT (typed, mapped, LDTR), so a restored guest
    can still load a selector from it."""
    from xenpy.hv import domctl
    from xenpy.hv.host import Host
    from xenpy.toolstack import save_restore as sr
    run, d, v, ldt, sel = _ldt_loader(domain_factory, kernel)
    w64 = d.width == 8
    domctl.pause(d)
    sr.save_domain(d, tmp_path / "ldt")
    b = Host(64)
    try:
        d2 = sr.restore_domain(b, tmp_path / "ldt")
        v2 = d2.vcpus[0]
        assert v2.ldt == (ldt, 2) and len(v2.ldt_frames) == 1
        domctl.unpause(d2)
        assert b.run([d2], timeout=10)
        assert d2.shutdown_reason == Shutdown.poweroff, d2.crash_message
        assert v2.cpu.reg("fs" if w64 else "ds") == sel
    finally:
        b.close()
        b.mem.close()
