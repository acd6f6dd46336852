"""copy_from_guest / copy_to_guest: the page walk checks what the guest's MMU would."""
from __future__ import annotations

import pytest

from xenpy.abi.xen import PAGE_SIZE, Width, _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW
from xenpy.hv.guest_access import PFEC_present, PFEC_user, PFEC_write, GuestFault, walk
from xenpy.hv.mm import guest_l1e_maddr
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf

from . import kernels


@pytest.fixture
def guest(domain_factory):
    g = domain_factory("hello", memory_mib=8)
    lay = plan_layout(load_xen_elf(kernels.BUILD / "hello-x86_32.elf"), 8 * 256, Width.X86_32)
    return g.domain, g.domain.vcpus[0], lay


def fault(fn, *args, **kw) -> GuestFault:
    with pytest.raises(GuestFault) as exc:
        fn(*args, **kw)
    return exc.value


def test_unmapped_address(guest):
    d, v, lay = guest
    for va in (0, 0x10000000, lay.virt_end, 0xFFFFF000):
        f = fault(v.gmem.read, va, 4)
        assert f.va == va and not f.error_code & PFEC_present
    assert fault(v.gmem.write, lay.virt_end, b"x").error_code & PFEC_write


def test_non_present_pte(guest):
    d, v, lay = guest
    va = lay.virt_end - PAGE_SIZE
    slot = guest_l1e_maddr(v, va)
    d.mem.write_u64(slot, d.mem.read_u64(slot) & ~_PAGE_PRESENT)
    assert fault(v.gmem.read, va, 1).error_code == 0


def test_user_access_to_supervisor_pages(guest):
    d, v, lay = guest
    va = lay.va(0)
    v.gmem.read(va, 4)                                     # the kernel may
    f = fault(walk, d.mem, Width.X86_32, v.gmem.cr3, va, user=True)
    assert f.error_code == PFEC_user | PFEC_present
    v.gmem.user = True
    try:
        assert fault(v.gmem.read, va, 4).error_code & PFEC_user
    finally:
        v.gmem.user = False


def test_read_only_pages_refuse_writes(guest):
    d, v, lay = guest
    pt = lay.va(lay.pt_pfns.start)
    v.gmem.read(pt, 8)
    f = fault(v.gmem.write, pt, b"\0" * 8)
    assert f.error_code == PFEC_write | PFEC_present


def test_write_straddling_a_read_only_page_changes_nothing(guest):
    d, v, lay = guest
    pt = lay.va(lay.pt_pfns.start)
    before = v.gmem.read(pt - 8, 16)
    fault(v.gmem.write, pt - 8, b"\xEE" * 16)
    assert v.gmem.read(pt - 8, 16) == before


def test_entries_beyond_machine_memory_fault(guest):
    """A corrupt entry (the hypervisor's bug, not the guest's) still faults, not IndexError."""
    d, v, lay = guest
    va = lay.virt_end - PAGE_SIZE
    slot = guest_l1e_maddr(v, va)
    d.mem.write_u64(slot, ((d.mem.nr_frames + 5) << 12) | _PAGE_PRESENT | _PAGE_RW
                    | _PAGE_ACCESSED)
    fault(v.gmem.read, va, 4)
    fault(v.gmem.write, va, b"x")


def test_sizes_and_strings(guest):
    d, v, lay = guest
    va = lay.virt_end - PAGE_SIZE
    fault(v.gmem.read, va, -1)
    fault(v.gmem.read, va, 1 << 30)
    v.gmem.write(va, b"abc\0def")
    assert v.gmem.read_cstring(va, 100) == b"abc"
    assert v.gmem.read_cstring(va, 2) == b"ab"
    v.gmem.write(lay.virt_end - 4, b"wxyz")                 # no NUL before the end
    fault(v.gmem.read_cstring, lay.virt_end - 4, 100)
