"""The PV domain builder: libxenguest's layout, the boot state, and its rejections."""
from __future__ import annotations

import os
import struct

import pytest

from xenpy.abi.elfnote import XEN_ELFNOTE_PAE_MODE
from xenpy.abi.xen import (FLAT_RING1_CS, FLAT_RING1_DS, MACH2PHYS_VIRT_START_PAE, PAGE_SIZE,
                           Width)
from xenpy.errors import BuildError, ElfError, XenpyError
from xenpy.hv.guest_access import GuestFault, walk
from xenpy.hv.machine import PageType
from xenpy.toolstack.builder import ALIGN, SLACK, build_pv_domain, plan_layout
from xenpy.toolstack.domain import DomainSpec, boot_domain
from xenpy.toolstack.elf import load_xen_elf

from . import kernels

MIB_PAGES = 256


@pytest.fixture
def hello_image():
    return load_xen_elf(kernels.BUILD / "hello-x86_32.elf")


# --- plan_layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("memory_mib", [8, 16, 64, 512])
def test_layout_order_alignment_and_slack(hello_image, memory_mib):
    nr = memory_mib * MIB_PAGES
    lay = plan_layout(hello_image, nr, Width.X86_32)
    img = hello_image
    assert lay.virt_base == img.virt_base
    assert lay.kernel_pfns.start == (img.virt_kstart - img.virt_base) // PAGE_SIZE
    assert lay.kernel_pfns.stop == -(-(img.virt_kend - img.virt_base) // PAGE_SIZE)
    # libxenguest order: kernel, p2m, start_info, xenstore, console, page tables, boot stack
    assert lay.p2m_pfns.start == lay.kernel_pfns.stop
    assert len(lay.p2m_pfns) == -(-nr * 4 // PAGE_SIZE)
    assert (lay.start_info_pfn, lay.xenstore_pfn, lay.console_pfn) == \
        (lay.p2m_pfns.stop, lay.p2m_pfns.stop + 1, lay.p2m_pfns.stop + 2)
    assert lay.pt_pfns.start == lay.console_pfn + 1
    assert lay.bootstack_pfn == lay.pt_pfns.stop
    # PAE: one L3, at least the L2 for slot 3 plus the L2(s) and L1s of the mapping
    end = lay.va(lay.bootstack_pfn + 1)
    n_l2 = len({va >> 30 for va in range(lay.virt_base, lay.virt_end, 1 << 21)} | {3})
    n_l1 = len(range(lay.virt_base, lay.virt_end, 1 << 21))
    assert len(lay.pt_pfns) == 1 + n_l2 + n_l1
    # the mapping ends 4 MiB-aligned with at least 512 KiB of slack, and no more than needed
    assert lay.virt_end % ALIGN == 0
    assert lay.virt_end - end >= SLACK
    assert lay.virt_end - ALIGN < end + SLACK
    assert (lay.virt_end - lay.virt_base) // PAGE_SIZE <= nr


def test_layout_refuses_memory_below_the_mapping(hello_image):
    with pytest.raises(BuildError, match="MiB"):
        plan_layout(hello_image, 2 * MIB_PAGES, Width.X86_32)


def test_layout_refuses_to_reach_the_hypervisor_hole(hello_image):
    # 900 GiB needs a 900 MiB p2m list: from 0xC0000000 that runs into 0xF5800000
    with pytest.raises(BuildError, match="hypervisor"):
        plan_layout(hello_image, 900 * 1024 * MIB_PAGES, Width.X86_32)


# --- the built domain --------------------------------------------------------------------------
@pytest.fixture
def booted(domain_factory, hello_image):
    g = domain_factory("hello", memory_mib=16, cmdline="console=hvc0 n=1")
    return g, plan_layout(hello_image, 16 * MIB_PAGES, Width.X86_32)


def start_info(d):
    v = d.vcpus[0]
    return v.gmem.read_struct(d.start_info_va, d.abi.StartInfo)


def test_start_info_fields(booted):
    g, lay = booted
    d = g.domain
    si = start_info(d)
    assert d.start_info_va == lay.va(lay.start_info_pfn)
    assert si.magic == b"xen-3.0-x86_32p"
    assert si.nr_pages == 16 * MIB_PAGES == d.nr_pages
    assert si.shared_info == d.shared_info_mfn * PAGE_SIZE
    assert si.flags == 0                                     # a domU: not privileged
    assert si.store_mfn == d.p2m[lay.xenstore_pfn] == d.store_mfn
    assert si.console.domU.mfn == d.p2m[lay.console_pfn] == d.console_mfn
    assert si.store_evtchn == d.store_port and si.console.domU.evtchn == d.console_port
    assert si.store_evtchn != si.console.domU.evtchn and si.store_evtchn > 0
    assert si.pt_base == lay.va(lay.pt_pfns.start)
    assert si.nr_pt_frames == len(lay.pt_pfns)
    assert si.mfn_list == lay.va(lay.p2m_pfns.start)
    assert si.first_p2m_pfn == lay.p2m_pfns.start
    assert si.nr_p2m_frames == len(lay.p2m_pfns)
    assert si.cmd_line == b"console=hvc0 n=1"
    # the console page starts zeroed, and the store rings and indices too (xenstored may
    # already have advertised server_features after them)
    assert bytes(d.mem.page(si.console.domU.mfn)) == bytes(PAGE_SIZE)
    assert bytes(d.mem.page(si.store_mfn)[:2 * 1024 + 16]) == bytes(2 * 1024 + 16)


def test_p2m_and_m2p_agree(booted):
    g, lay = booted
    d = g.domain
    v = d.vcpus[0]
    si = start_info(d)
    guest_p2m = struct.unpack(f"<{si.nr_pages}I", v.gmem.read(si.mfn_list, 4 * si.nr_pages))
    assert list(guest_p2m) == d.p2m
    assert len(set(d.p2m)) == len(d.p2m)
    for pfn, mfn in enumerate(d.p2m):
        assert d.mem.owner[mfn] == d.domid
        assert d.mem.m2p(mfn) == pfn
    # ... and the guest sees the same through the read-only M2P at MACH2PHYS_VIRT_START
    for pfn in (0, lay.start_info_pfn, lay.console_pfn, len(d.p2m) - 1):
        mfn = d.p2m[pfn]
        assert v.gmem.read_u32(MACH2PHYS_VIRT_START_PAE + 4 * mfn) == pfn
    with pytest.raises(GuestFault):
        v.gmem.write_u32(MACH2PHYS_VIRT_START_PAE + 4 * d.p2m[0], 0)


def test_initial_mapping_and_page_table_pages_read_only(booted):
    g, lay = booted
    d = g.domain
    v = d.vcpus[0]
    cr3 = v.gmem.cr3
    mapped = (lay.virt_end - lay.virt_base) // PAGE_SIZE
    for pfn in range(mapped):
        va = lay.va(pfn)
        assert walk(d.mem, Width.X86_32, cr3, va) == d.p2m[pfn] * PAGE_SIZE
        if pfn in lay.pt_pfns:
            with pytest.raises(GuestFault):
                walk(d.mem, Width.X86_32, cr3, va, write=True)
        else:
            walk(d.mem, Width.X86_32, cr3, va, write=True)
    with pytest.raises(GuestFault):                       # nothing beyond the mapping
        walk(d.mem, Width.X86_32, cr3, lay.virt_end)
    # the page tables are typed and referenced; the L3 is pinned and is CR3
    types = [d.mem.type[d.p2m[p]] for p in lay.pt_pfns]
    assert types[0] == PageType.l3 and d.mem.pinned[d.p2m[lay.pt_pfns.start]]
    assert cr3 == d.p2m[lay.pt_pfns.start] * PAGE_SIZE
    assert set(types[1:]) == {PageType.l2, PageType.l1}
    assert all(d.mem.type_count[d.p2m[p]] > 0 for p in lay.pt_pfns)
    assert d.mem.type[d.p2m[lay.start_info_pfn]] == PageType.writable


def test_events_masked_at_boot(booted):
    d = booted[0].domain
    for i in range(len(d.shared_info.vcpu_info)):
        assert d.shared_info.vcpu_info[i].evtchn_upcall_mask == 1
    assert d.shared_info.vcpu_info[0].evtchn_upcall_pending == 0


def test_boot_registers(booted, hello_image):
    """Run the firmware's iret to the kernel entry: Xen's initial ring-1 state."""
    g, lay = booted
    v = g.domain.vcpus[0]
    v.cpu.uc.emu_start(v.cpu.reg("eip"), 0xFFFFFFF0, count=1)      # the iretd, only
    r = {n: v.cpu.reg(n) for n in ("eip", "esp", "esi", "eflags")}
    r |= {n: v.cpu.reg(n) & 0xFFFF for n in ("cs", "ss", "ds", "es")}
    assert r["eip"] == hello_image.entry
    assert r["cs"] == FLAT_RING1_CS
    assert r["ss"] == r["ds"] == r["es"] == FLAT_RING1_DS
    assert r["esi"] == g.domain.start_info_va
    assert r["esp"] == lay.va(lay.bootstack_pfn) + PAGE_SIZE
    assert r["eflags"] & 0x3000 == 0                       # IOPL 0
    assert v.kernel_ss == FLAT_RING1_DS and v.kernel_sp == r["esp"]


def test_hypercall_page_is_filled(booted, hello_image):
    v = booted[0].domain.vcpus[0]
    page = v.gmem.read(hello_image.hypercall_page, PAGE_SIZE)
    assert page != b"\xcc" * PAGE_SIZE                     # the image ships it as int3s
    assert b"\xcd\x82" in page                             # int $0x82 stubs


# --- rejections ---------------------------------------------------------------------------------
def assert_clean(host, free):
    assert not host.domains
    assert host.mem.free_frames == free


def boot(host, path, memory_mib=16):
    return boot_domain(host, DomainSpec(name="bad", kernel=path, memory_mib=memory_mib))


def test_kernel_larger_than_memory(xen_host, tmp_path):
    free = xen_host.mem.free_frames
    big = kernels.write(tmp_path, "big.elf", kernels.with_bss(kernels.hello32(), 24 << 20))
    with pytest.raises(BuildError, match="memory"):
        boot(xen_host, big, memory_mib=16)
    assert_clean(xen_host, free)
    # ... and the same kernel fits once memory is raised
    d = boot(xen_host, big, memory_mib=32)
    assert d.domid in xen_host.domains


def test_memory_below_minimum(xen_host):
    with pytest.raises(BuildError, match="memory"):
        boot(xen_host, kernels.BUILD / "hello-x86_32.elf", memory_mib=2)
    assert not xen_host.domains


def test_non_pae_32bit_kernel_refused(xen_host, tmp_path):
    free = xen_host.mem.free_frames
    nonpae = kernels.with_note(kernels.hello32(), XEN_ELFNOTE_PAE_MODE, b"no\0\0")
    with pytest.raises(BuildError, match="xen-3.0-x86_32'"):
        boot(xen_host, kernels.write(tmp_path, "nonpae.elf", nonpae))
    assert_clean(xen_host, free)


def test_guest_type_width_mismatch_refused(xen_host):
    free = xen_host.mem.free_frames
    image64 = load_xen_elf(kernels.BUILD / "hello-x86_64.elf")
    d = xen_host.create_domain("mismatch", Width.X86_32, 16)
    with pytest.raises(BuildError, match="x86_64"):
        build_pv_domain(xen_host, d, image64)
    xen_host.destroy_domain(d)
    assert_clean(xen_host, free)


def test_cmdline_too_long_refused(xen_host):
    with pytest.raises(BuildError, match="cmdline"):
        boot_domain(xen_host, DomainSpec(name="c", kernel=kernels.BUILD / "hello-x86_32.elf",
                                         memory_mib=8, cmdline="x" * 1024))
    assert not xen_host.domains


@pytest.mark.parametrize("make", [
    pytest.param(lambda: os.urandom(4096), id="garbage"),
    pytest.param(lambda: b"", id="empty"),
    pytest.param(lambda: kernels.hello32()[:40], id="truncated-header"),
    pytest.param(lambda: kernels.hello32()[:0x1800], id="truncated-segment"),
    pytest.param(lambda: kernels.without_xen_notes(kernels.hello32()), id="no-xen-notes"),
])
def test_bad_elf_files_raise_elf_error(xen_host, tmp_path, make):
    free = xen_host.mem.free_frames
    path = kernels.write(tmp_path, "bad.elf", make())
    with pytest.raises(ElfError) as exc:
        boot(xen_host, path)
    assert isinstance(exc.value, XenpyError) and str(exc.value)
    assert "\n" not in str(exc.value)
    assert_clean(xen_host, free)


def test_no_notes_error_says_so(xen_host, tmp_path):
    path = kernels.write(tmp_path, "plain.elf", kernels.without_xen_notes(kernels.hello32()))
    with pytest.raises(ElfError, match="(?i)note|xen"):
        boot(xen_host, path)
