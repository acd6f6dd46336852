"""Random sequences of memory-management and grant operations, and their invariants.

Used by tests/mm/test_property.py (hypothesis, a few thousand calls in CI) and by
benchmarks/mm_bench.py (>= 10^5 calls).  An *actor* domain A throws operations at the
hypervisor — update_va_mapping, mmu_update, mmuext_op (pin/unpin, base pointers,
copy/clear, LDT, flushes), machphys updates, writable-page-table stores, grant map,
unmap and copy — over a pool of frames that mixes its own free pages and page tables,
another domain's pages, the M2P and a frame that does not exist.  Domain B grants A a
few pages.  After each call (or every ``audit_every`` calls) the frame table is
recounted from first principles (mm.audit); at the end everything A did is undone and
A's counts must be back at the baseline, and after A is destroyed so must B's.
"""
from __future__ import annotations

from xenpy.abi import grant_table as G
from xenpy.abi.xen import (MMU_MACHPHYS_UPDATE, MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE,
                           MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_SET_LDT,
                           MMUEXT_TLB_FLUSH_ALL, MMUEXT_UNPIN_TABLE, UVMF_ALL, UVMF_INVLPG,
                           UVMF_TLB_FLUSH, VMASST_CMD_enable, VMASST_TYPE_writable_pagetables,
                           _PAGE_PRESENT)
from xenpy.hv import mm
from xenpy.hv.guest_access import PFEC_present, PFEC_write, GuestFault, walk

from .world import PTE_RO, PTE_RW, Guest, counts

N_KINDS = 12
PROTS = (PTE_RW, PTE_RO, 0, PTE_RW | (1 << 52))


class Fuzzer:
    def __init__(self, a: Guest, b: Guest) -> None:
        self.a, self.b = a, b
        a.call("vm_assist", VMASST_CMD_enable, VMASST_TYPE_writable_pagetables)
        b.setup_grant_table(1)
        self.granted = [b.free_mfn(0), b.free_mfn(1), b.free_mfn(2), b.pt_mfns()[-1]]
        for ref, mfn in enumerate(self.granted, start=1):
            b.grant(ref, a.domid, mfn, G.GTF_permit_access | (G.GTF_readonly if ref > 2 else 0))
        b.grant(5, 0x55, b.free_mfn(3))
        self.windows = [a.window(i) for i in range(4)]
        self.win_pte = {va: a.mem.read_u64(a.l1e(va)) for va in self.windows}
        m2p = a.mem.m2p32 if a.w == 4 else a.mem.m2p64
        self.own_free = [a.free_mfn(i) for i in range(6)]
        self.pool = (self.own_free + a.pt_mfns() + [a.top, a.d.shared_info_mfn, b.free_mfn(0),
                                                    b.top, m2p[0], a.mem.nr_frames + 3])
        # every frame a machphys update may move, or displace from free_pfn(0..7)
        self.orig_m2p = {m: a.mem.m2p(m) for m in [a.free_mfn(i) for i in range(8)]
                         + a.pt_mfns()}
        top = a.top
        self.top = top
        self.alt_top = a.free_mfn(7)        # a second address space: a copy of the top table
        self.top_copy = bytes(a.mem.page(top))
        a.mem.write(self.alt_top << 12, self.top_copy)
        guest_slots = [i for r in mm.guest_slots(a.d, a.mem.type[top], top) for i in r]
        self.free_top_slots = [i for i in guest_slots
                               if not a.mem.read_u64((top << 12) + 8 * i) & _PAGE_PRESENT][:3]
        hv = [256, 271] if a.w == 8 else [3]
        self.top_slots = [(top << 12) + 8 * i for i in self.free_top_slots + hv]
        self.pinned: list[int] = []
        self.repin: list[tuple[int, int]] = []
        self.handles: list[int] = []
        self.ldt = False
        self.calls = 0
        self.base_a, self.base_b = counts(a.d), counts(b.d)
        self.b_flags = [b.d.gnttab.flags_of(r) for r in range(8)]

    # --- one operation -------------------------------------------------------------------
    def op(self, kind: int, i: int, j: int, k: int) -> None:
        a = self.a
        pool = self.pool
        win = self.windows[i % 4]
        val = (pool[j % len(pool)] << 12) | PROTS[k % 4]
        self.calls += 1
        if kind == 0:
            flags = (0, UVMF_INVLPG, UVMF_TLB_FLUSH | UVMF_ALL)[k % 3]
            rc = a.uvm(win, val, flags)
        elif kind == 1:
            slots = [a.l1e(w) for w in self.windows] + self.top_slots + \
                [(pool[i % 6] << 12) + 8 * (j % 512)]
            rc = a.pt_update(slots[(i + k) % len(slots)], val, maddr=True)
        elif kind == 2:
            rc = a.mmuext([(MMUEXT_PIN_L1_TABLE + j % 4, pool[i % len(pool)], 0)])[0]
            if rc == 0:
                self.pinned.append(pool[i % len(pool)])
        elif kind == 3:
            mfn = (self.pinned[i % len(self.pinned)] if self.pinned and k % 2
                   else pool[i % len(pool)])
            level = a.mem.type[mfn] if a.mem.valid_mfn(mfn) else 0
            rc = a.mmuext([(MMUEXT_UNPIN_TABLE, mfn, 0)])[0]
            if rc == 0:
                if mfn in self.pinned:
                    self.pinned.remove(mfn)
                else:
                    self.repin.append((level, mfn))       # pinned by the domain builder
        elif kind == 4:
            roots = [self.top, self.alt_top] + pool[len(self.own_free):]
            root = roots[i % len(roots)]
            if root in (self.top, self.alt_top) and not self._maps_kernel(root):
                if a.mem.type_count[root]:
                    return                # it would strand the actor: a kernel would not
                a.mem.write(root << 12, self.top_copy)    # rebuilt, as a kernel would
            rc = a.mmuext([(MMUEXT_NEW_BASEPTR, root, 0)])[0]
        elif kind == 5:
            cmd = MMUEXT_COPY_PAGE if k % 2 else MMUEXT_CLEAR_PAGE
            rc = a.mmuext([(cmd, pool[i % len(pool)], pool[j % len(pool)])])[0]
        elif kind == 6:
            rc = a.mmuext([(MMUEXT_SET_LDT, win if k % 4 else 0, (j % 3) * 16)])[0]
        elif kind == 7:
            flags = (G.GNTMAP_host_map, G.GNTMAP_host_map | G.GNTMAP_readonly,
                     G.GNTMAP_device_map | G.GNTMAP_readonly, 0)[k % 4]
            st, h, _ = a.map_grant(win if flags & G.GNTMAP_host_map else 0, flags, j % 7,
                                   self.b.domid)
            if st == G.GNTST_okay:
                self.handles.append(h)
            rc = 0
        elif kind == 8:
            h = self.handles[j % len(self.handles)] if self.handles and k % 4 else j
            st = a.unmap_grant(win if k % 2 else 0, h,
                               dev=(self.granted[i % 4] << 12) if k % 3 == 0 else 0)
            rc = 0
        elif kind == 9:
            rc = self._ptwr(win, val, 8 if k % 2 else 4)
        elif kind == 10:
            rc, _ = a.gnttab(G.GNTTABOP_copy, G.COPY[a.w], [
                (j % 7, self.b.domid, (k * 512) % 4096, pool[i % len(pool)], 0x7FF0,
                 0, 256, G.GNTCOPY_source_gref if k % 2 else G.GNTCOPY_dest_gref, 0)])
        else:
            mfn = pool[i % len(pool)]
            rc = a.mmu_update([((mfn << 12) | MMU_MACHPHYS_UPDATE, a.free_pfn(j % 8))])[0]
        assert rc is not None and rc <= 0, (kind, rc)

    def _maps_kernel(self, root: int) -> bool:
        try:
            walk(self.a.mem, self.a.d.width, root << 12, self.a.scratch)
            walk(self.a.mem, self.a.d.width, root << 12, self.a.out)
            return True
        except GuestFault:
            return False

    def _ptwr(self, win: int, val: int, size: int) -> int:
        """Emulate a kernel store of ``val`` into the PTE of ``win`` (the #PF path)."""
        a = self.a
        slot = a.l1e(win)
        l1 = slot >> 12
        pfn = a.mem.m2p(l1)
        if pfn is None or not a.lay.virt_base <= a.lay.va(pfn) < a.lay.virt_end:
            return 0
        pte_va = a.lay.va(pfn) + (slot & 0xFFF)
        code = (b"\x89\x02" if size == 4 or a.w == 4 else b"\x48\x89\x02") + b"\x90" * 14
        code_va = self.windows[3]
        try:
            a.write(code_va, code)
        except Exception:           # the code window may be unmapped or read-only right now
            return 0
        cpu = a.v.cpu
        if a.w == 4:
            cpu.set_regs(edx=pte_va, eax=val & 0xFFFFFFFF)
        else:
            cpu.set_regs(rdx=pte_va, rax=val)
        mm.ptwr_do_page_fault(a.v, pte_va, PFEC_present | PFEC_write, code_va)
        return 0

    # --- invariants ----------------------------------------------------------------------
    def check(self) -> None:
        problems = mm.audit(self.a.d.host)
        assert problems == [], problems[:5]

    def undo(self) -> bool:
        """Undo everything A can undo; True when A's counts are back at the baseline
        (False when a grant mapping was implicitly unmapped and stays pinned, as in Xen)."""
        a = self.a
        for h in list(self.handles):
            for addr in [0] + self.windows:
                a.unmap_grant(addr, h, dev=0)
            for dev in self.granted:
                a.unmap_grant(0, h, dev=dev << 12)
        stuck = any(m is not None for m in a.d.gnttab.maptrack) if a.d.gnttab else False
        a.mmuext([(MMUEXT_SET_LDT, 0, 0)])
        for va, pte in self.win_pte.items():
            assert a.uvm(va, pte) == 0
        for mfn in reversed(self.pinned):
            assert a.mmuext([(MMUEXT_UNPIN_TABLE, mfn, 0)])[0] == 0
        self.pinned.clear()
        if not a.mem.type_count[self.top]:
            # the actor unpinned its tables and left them (maybe cleared them): a kernel
            # would rewrite them through a writable mapping before switching back
            a.mem.write(self.top << 12, self.top_copy)
        assert a.mmuext([(MMUEXT_NEW_BASEPTR, self.top, 0)])[0] == 0
        for slot in self.top_slots[:len(self.free_top_slots)]:
            assert a.pt_update(slot, 0, maddr=True) == 0
        for level, mfn in self.repin:
            assert a.mmuext([(MMUEXT_PIN_L1_TABLE + level - 1, mfn, 0)])[0] == 0
        self.repin.clear()
        for mfn, pfn in self.orig_m2p.items():
            assert a.mmu_update([((mfn << 12) | MMU_MACHPHYS_UPDATE, pfn)])[0] == 0
        a.mmuext([(MMUEXT_TLB_FLUSH_ALL, 0, 0)])
        self.check()
        if stuck:
            return False
        assert counts(a.d) == self.base_a
        return True

    def destroy_actor(self) -> None:
        """Domain destroy releases A's grants: B's counts and flags are B's own again."""
        b = self.b
        b.d.host.destroy_domain(self.a.d)
        for mfn in self.granted[:2]:
            b.mem.write(mfn << 12, bytes(4096))           # A's copies may have written there
        assert counts(b.d) == self.base_b
        assert [b.d.gnttab.flags_of(r) for r in range(8)] == self.b_flags
        self.check()


def sample_ops(n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """A deterministic op list (for the benchmark): a 64-bit LCG, no global RNG state."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append(((x >> 60) % N_KINDS, (x >> 40) & 255, (x >> 20) & 255, (x >> 8) & 7))
    return out


class World:
    """A small host with two booted (not running) domains, closed on exit."""

    def __init__(self, width: int, host_mib: int = 48) -> None:
        from xenpy.hv.host import Host
        from xenpy.testing import DomainFactory

        from .world import boot
        self.host = Host(memory_mib=host_mib)
        factory = DomainFactory(self.host, [])
        self.a = boot(factory, width=width, name="actor")
        self.b = boot(factory, width=width, name="other")

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc) -> None:
        self.host.close()
        self.host.mem.close()
