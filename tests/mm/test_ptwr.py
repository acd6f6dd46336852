"""Writable page tables: a kernel store into its own read-only L1 is decoded, validated,
applied and stepped over — or, when Xen would not handle it, left to fault in the guest.

The faulting instruction is assembled into the guest, the registers set, and the #PF
handed to ``mm.ptwr_do_page_fault`` as the trap handlers do (the end-to-end path runs
in tests/grant/test_two_domains.py, whose guest writes its PTEs with plain stores).
"""
from __future__ import annotations

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks

from xenpy.abi.xen import (VMASST_CMD_enable, VMASST_TYPE_writable_pagetables, _PAGE_PRESENT,
                           _PAGE_USER)
from xenpy.hv import mm
from xenpy.hv.guest_access import PFEC_present, PFEC_write

from .world import PTE_RW

WRITE_FAULT = PFEC_present | PFEC_write
ZF = 1 << 6


class Site:
    """A target PTE (of window 0) reachable through the guest's read-only mapping of its L1,
    and a code page to run the store from."""

    def __init__(self, g) -> None:
        self.g = g
        g.call("vm_assist", VMASST_CMD_enable, VMASST_TYPE_writable_pagetables)
        self.slot = g.l1e(g.window(0))
        l1 = self.slot >> 12
        self.pte_va = g.lay.va(g.mem.m2p(l1)) + (self.slot & 0xFFF)
        self.code_va = g.window(1)
        self.ks = Ks(KS_ARCH_X86, KS_MODE_32 if g.w == 4 else KS_MODE_64)

    @property
    def pte(self) -> int:
        return self.g.mem.read_u64(self.slot)

    def run(self, asm: str, cr2: int | None = None, ec: int = WRITE_FAULT, **regs: int) -> bool:
        code = bytes(self.ks.asm(asm, self.code_va)[0])
        self.g.write(self.code_va, code.ljust(16, b"\x90"))
        cpu = self.g.v.cpu
        for name, value in regs.items():
            cpu.set_reg(name, value)
        ip = "eip" if self.g.w == 4 else "rip"
        cpu.set_reg(ip, self.code_va)
        self.ip_after = self.code_va + len(code)
        ok = mm.ptwr_do_page_fault(self.g.v, self.pte_va if cr2 is None else cr2, ec, self.code_va)
        self.ip_now = cpu.reg(ip)
        return ok

    def want(self, mfn: int, flags: int = PTE_RW) -> int:
        return (mfn << 12) | flags | (_PAGE_USER if self.g.w == 8 else 0)


@pytest.fixture
def site(pair):
    a, _ = pair
    s = Site(a)
    yield s
    assert mm.audit(a.d.host) == []


def reg(s: Site, name32: str) -> str:
    return name32 if s.g.w == 4 else "r" + name32[1:]


def test_plain_store_of_a_full_entry(site):
    g = site.g
    mfn = g.free_mfn()
    new = (mfn << 12) | PTE_RW
    if g.w == 4:
        assert site.run("mov dword ptr [edx], eax", edx=site.pte_va, eax=new & 0xFFFFFFFF)
        assert site.run("mov dword ptr [edx], eax", edx=site.pte_va + 4, eax=new >> 32,
                        cr2=site.pte_va + 4)
    else:
        assert site.run("mov qword ptr [rdx], rax", rdx=site.pte_va, rax=new)
    assert site.ip_now == site.ip_after
    assert site.pte == site.want(mfn)
    assert g.v.gmem.translate(g.window(0)) == mfn << 12
    assert g.v.ptwr_emulations >= 1


def test_store_of_an_immediate_and_stos(site):
    g = site.g
    mfn = g.free_mfn()
    assert site.run("mov dword ptr [edx], %d" % ((mfn << 12) | PTE_RW) if g.w == 4 else
                    "mov qword ptr [rdx], %d" % ((mfn << 12) | PTE_RW),
                    **{reg(site, "edx"): site.pte_va})
    assert site.pte == site.want(mfn)
    di = reg(site, "edi")
    ax = reg(site, "eax")
    assert site.run("stosd" if g.w == 4 else "stosq", **{di: site.pte_va, ax: 0})
    assert site.pte == 0 and g.v.cpu.reg(di) == site.pte_va + g.w


def test_xchg_returns_the_old_entry(site):
    g = site.g
    old = site.pte
    new = (g.free_mfn() << 12) | PTE_RW
    ax, dx = reg(site, "eax"), reg(site, "edx")
    op = "xchg dword ptr [edx], eax" if g.w == 4 else "xchg qword ptr [rdx], rax"
    mask = 0xFFFFFFFF if g.w == 4 else 2 ** 64 - 1
    assert site.run(op, **{dx: site.pte_va, ax: new & mask})
    assert g.v.cpu.reg(ax) & mask == old & mask


def test_cmpxchg_success_and_failure(site):
    g = site.g
    old = site.pte
    new = (g.free_mfn() << 12) | PTE_RW
    if g.w == 4:
        assert site.run("lock cmpxchg8b qword ptr [esi]", esi=site.pte_va, eax=old & 0xFFFFFFFF,
                        edx=old >> 32, ebx=new & 0xFFFFFFFF, ecx=new >> 32)
        assert site.pte == new and g.v.cpu.reg("eflags") & ZF
        assert site.run("lock cmpxchg8b qword ptr [esi]", esi=site.pte_va, eax=0, edx=0,
                        ebx=0, ecx=0)
        assert not g.v.cpu.reg("eflags") & ZF and g.v.cpu.reg("eax") == new & 0xFFFFFFFF
        assert site.pte == new
    else:
        assert site.run("lock cmpxchg qword ptr [rdx], rcx", rdx=site.pte_va, rax=old, rcx=new)
        assert site.pte == new | _PAGE_USER and g.v.cpu.reg("eflags") & ZF
        assert site.run("lock cmpxchg qword ptr [rdx], rcx", rdx=site.pte_va, rax=1, rcx=0)
        assert not g.v.cpu.reg("eflags") & ZF and g.v.cpu.reg("rax") == new | _PAGE_USER


def test_invalid_entries_are_left_to_fault(pair, site):
    g = site.g
    _, b = pair
    before = site.pte
    ax, dx = reg(site, "eax"), reg(site, "edx")
    op = "mov dword ptr [edx], eax" if g.w == 4 else "mov qword ptr [rdx], rax"
    for bad in ((b.free_mfn() << 12) | PTE_RW,           # another domain's frame
                (g.pt_mfns()[0] << 12) | PTE_RW):        # a page table, writable
        assert not site.run(op, **{dx: site.pte_va, ax: bad & 0xFFFFFFFF if g.w == 4 else bad})
        assert site.pte == before and site.ip_now == site.code_va
    # misaligned, unsupported instruction, a read fault, assists off
    assert not site.run(op, **{dx: site.pte_va + 2, ax: 0}, cr2=site.pte_va + 2)
    assert not site.run("add dword ptr [edx], eax" if g.w == 4 else "add qword ptr [rdx], rax",
                        **{dx: site.pte_va, ax: 0})
    assert not site.run(op, ec=PFEC_present, **{dx: site.pte_va, ax: 0})
    g.d.vm_assist = 0
    assert not site.run(op, **{dx: site.pte_va, ax: 0})
    assert site.pte == before


def test_pae_upper_half_write_that_is_invalid_clears_present(site):
    g = site.g
    if g.w == 8:
        pytest.skip("PAE only")
    mfn = g.free_mfn()
    assert site.run("mov dword ptr [edx], eax", edx=site.pte_va, eax=(mfn << 12) | PTE_RW)
    # bit 52 (reserved) in the upper half: Xen assumes the halves come in the wrong order
    assert site.run("mov dword ptr [edx], eax", edx=site.pte_va + 4, eax=1 << 20,
                    cr2=site.pte_va + 4)
    assert site.pte == ((1 << 52) | (mfn << 12) | PTE_RW) & ~_PAGE_PRESENT
    assert g.mem.type_count[mfn] == 0                     # the old mapping's type went
    # ... the same value in the lower half is simply invalid
    assert site.run("mov dword ptr [edx], eax", edx=site.pte_va + 4, eax=0, cr2=site.pte_va + 4)
    assert not site.run("mov dword ptr [edx], eax", edx=site.pte_va,
                        eax=(g.pt_mfns()[0] << 12) | PTE_RW)
