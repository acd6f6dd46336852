"""Log-dirty sees the writes the host makes into guest memory, not only guest stores."""
from __future__ import annotations

from xenpy.abi import version as V
from xenpy.abi.xen import HYPERCALL_NR, PAGE_SIZE
from xenpy.cli import resolve_kernel
from xenpy.hv import domctl, hypercall as hc
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf


def test_hypercall_copy_out_and_rings_are_logged(domain_factory):
    run = domain_factory("hello", memory_mib=8)
    d = run.domain
    v = d.vcpus[0]
    image = load_xen_elf(resolve_kernel("hello"))
    buf = plan_layout(image, d.max_pages, d.width).virt_end - PAGE_SIZE
    pfn = (buf - image.virt_base) >> 12
    ld = domctl.log_dirty_enable(d)
    try:
        ld.clean()
        assert pfn not in ld.peek()
        # the hypervisor writes XENVER_extraversion into the guest's buffer
        assert hc.dispatch(v, HYPERCALL_NR["xen_version"],
                           (V.XENVER_extraversion, buf, 0, 0, 0, 0)) == 0
        dirty = ld.peek()
        assert pfn in dirty
        # the console and store rings go in every round (written through ring views)
        con_pfn, store_pfn = d.mem.m2p(d.console_mfn), d.mem.m2p(d.store_mfn)
        assert {con_pfn, store_pfn} <= ld.clean()
        assert pfn not in ld.peek()
    finally:
        domctl.log_dirty_disable(d)
    assert d.mem.write_observer is None
