"""End to end: two guests share a page through a grant (guests/grant.c).

A grants a page to B; B maps it and writes; A sees the bytes and cannot revoke the
grant while B maps it; B unmaps; A revokes; B's next access to the old address faults
into B.  A also changes its own page tables with plain stores (writable page tables).
"""
from __future__ import annotations

from xenpy.abi.sched import Shutdown
from xenpy.hv import mm

TIMEOUT = 30.0


def test_two_domain_grant_demo(domain_factory, width):
    elf = f"grant-x86_{width}"
    a = domain_factory(elf, memory_mib=8, name="A")
    b = domain_factory(elf, memory_mib=8, name="B",
                       cmdline=f"role=1 peer={a.domain.domid} ref=12")
    _set_cmdline(a, f"role=0 peer={b.domain.domid} ref=12")
    assert a.host.run([a.domain, b.domain], timeout=TIMEOUT), (a.console, b.console)
    assert a.shutdown_reason == Shutdown.poweroff, a.report()
    assert b.shutdown_reason == Shutdown.poweroff, b.report()
    assert a.lines[:2] == ["pt: ptwr store ok", "pt: mmu_update ok"]
    assert "grant_a: saw 'hello from the other domain' (flags 0x19)" in a.lines
    assert "grant_a: revoke refused while mapped" in a.lines
    assert a.lines[-2:] == ["grant_a: revoked after unmap", "grant_a: PASS"]
    assert "grant_b: unmapped; again: status -4" in b.lines          # GNTST_bad_handle
    assert b.lines[-2].startswith("grant_b: #PF at ") and b.lines[-1] == "grant_b: PASS"
    assert a.domain.vcpus[0].ptwr_emulations >= 1


def _set_cmdline(run, cmdline: str) -> None:
    """Rewrite start_info's command line of a domain that has not run yet (A must name
    B's domid, which exists only once B is built)."""
    d = run.domain
    si = d.abi.StartInfo
    off = si.cmd_line.offset
    v = d.vcpus[0]
    data = cmdline.encode().ljust(si.cmd_line.size, b"\0")
    v.gmem.write(d.start_info_va + off, data)
    d.cmdline = cmdline
    assert mm.audit(d.host) == []
