"""A booted-but-not-running world of PV domains, driven through the hypercall table.

Each :class:`Guest` is a domain built from a bundled kernel; tests call hypercalls for
its vCPU 0 with ``dispatch(vcpu, nr, args)``, exactly as its ``int $0x82``/``syscall``
would, with argument structures placed in a writable scratch page of the guest.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from xenpy.abi import grant_table as G
from xenpy.abi.xen import (DOMID_SELF, HYPERCALL_NR, MMU_NORMAL_PT_UPDATE, PAGE_SIZE, Width,
                           _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW)
from xenpy.hv import hypercall as hc
from xenpy.hv import mm
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf

PTE_RW = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
PTE_RO = _PAGE_PRESENT | _PAGE_ACCESSED


@dataclass
class Guest:
    run: object            # xenpy.testing.GuestRun
    lay: object            # builder DomainLayout

    @property
    def d(self):
        return self.run.domain

    @property
    def v(self):
        return self.d.vcpus[0]

    @property
    def w(self) -> int:
        return int(self.d.width)

    @property
    def domid(self) -> int:
        return self.d.domid

    @property
    def mem(self):
        return self.d.mem

    # --- addresses ---------------------------------------------------------------------------
    @property
    def scratch(self) -> int:
        """A writable, unused page of the guest (in the mapping's slack): hypercall args."""
        return self.lay.virt_end - PAGE_SIZE

    @property
    def out(self) -> int:
        """A second scratch page (results, frame lists)."""
        return self.lay.virt_end - 2 * PAGE_SIZE

    def window(self, i: int = 0) -> int:
        """A mapped slack page the tests remap freely."""
        return self.lay.virt_end - (8 + i) * PAGE_SIZE

    def free_pfn(self, i: int = 0) -> int:
        """A pfn beyond the initial mapping: zeroed, unmapped, untyped."""
        return (self.lay.virt_end - self.lay.virt_base) // PAGE_SIZE + 16 + i

    def free_mfn(self, i: int = 0) -> int:
        return self.d.p2m[self.free_pfn(i)]

    @property
    def top(self) -> int:
        return self.v.guest_table

    def l1e(self, va: int) -> int:
        return mm.guest_l1e_maddr(self.v, va)

    def pt_mfns(self) -> list[int]:
        return [self.d.p2m[p] for p in self.lay.pt_pfns]

    # --- memory ------------------------------------------------------------------------------
    def write(self, va: int, data: bytes) -> None:
        self.v.gmem.write(va, data)

    def read(self, va: int, n: int) -> bytes:
        return self.v.gmem.read(va, n)

    def ulongs(self, va: int, n: int) -> list[int]:
        return list(struct.unpack(f"<{n}{'I' if self.w == 4 else 'Q'}", self.read(va, n * self.w)))

    def put_ulongs(self, va: int, vals: list[int]) -> None:
        self.write(va, struct.pack(f"<{len(vals)}{'I' if self.w == 4 else 'Q'}", *vals))

    # --- hypercalls --------------------------------------------------------------------------
    def call(self, name: str, *args: int) -> int | None:
        mask = (1 << (8 * self.w)) - 1
        full = tuple(a & mask for a in args) + (0,) * (6 - len(args))
        res = hc.dispatch(self.v, HYPERCALL_NR[name], full)
        assert res is None or isinstance(res, int), res
        if isinstance(res, int) and res > mask >> 1:
            res -= mask + 1
        return res

    def mmu_update(self, reqs: list[tuple[int, int]], dom: int = DOMID_SELF) -> tuple[int, int]:
        self.write(self.scratch, b"".join(struct.pack("<QQ", p, v) for p, v in reqs))
        pdone = self.out + PAGE_SIZE - 8
        self.write(pdone, b"\xff" * 4)
        rc = self.call("mmu_update", self.scratch, len(reqs), pdone, dom)
        return rc, struct.unpack("<I", self.read(pdone, 4))[0]

    def pt_update(self, va_or_maddr: int, val: int, *, maddr: bool = False,
                  cmd: int = MMU_NORMAL_PT_UPDATE) -> int:
        ptr = va_or_maddr if maddr else self.l1e(va_or_maddr)
        return self.mmu_update([(ptr | cmd, val)])[0]

    def mmuext(self, ops: list[tuple[int, int, int]], dom: int = DOMID_SELF) -> tuple[int, int]:
        fmt = "<III" if self.w == 4 else "<I4xQQ"
        self.write(self.scratch, b"".join(struct.pack(fmt, *op) for op in ops))
        pdone = self.out + PAGE_SIZE - 8
        rc = self.call("mmuext_op", self.scratch, len(ops), pdone, dom)
        return rc, struct.unpack("<I", self.read(pdone, 4))[0]

    def uvm(self, va: int, pte: int, flags: int = 0) -> int:
        if self.w == 4:
            return self.call("update_va_mapping", va, pte & 0xFFFFFFFF, pte >> 32, flags)
        return self.call("update_va_mapping", va, pte, flags)

    def gnttab(self, cmd: int, fmt: str, items: list[tuple], count: int | None = None
               ) -> tuple[int, list[tuple]]:
        """grant_table_op on packed ``items``; returns (rc, the items as written back)."""
        size = struct.calcsize(fmt)
        self.write(self.scratch, b"".join(struct.pack(fmt, *it) for it in items))
        rc = self.call("grant_table_op", cmd, self.scratch,
                       len(items) if count is None else count)
        back = [struct.unpack(fmt, self.read(self.scratch + i * size, size))
                for i in range(len(items))]
        return rc, back

    def setup_grant_table(self, nr: int = 1) -> list[int]:
        fmt = G.SETUP_TABLE[self.w]
        rc, [(dom, n, st, fl)] = self.gnttab(G.GNTTABOP_setup_table, fmt,
                                             [(DOMID_SELF, nr, 0, self.out)])
        assert rc == 0 and st == G.GNTST_okay, (rc, st)
        return self.ulongs(self.out, nr)

    def grant(self, ref: int, domid: int, mfn: int, flags: int = G.GTF_permit_access) -> None:
        """Fill entry ``ref`` of our own table (v1 or v2), as a guest does."""
        gt = self.d.gnttab
        a = gt._entry(ref)
        if gt.version == 1:
            self.mem.write(a, struct.pack("<HHI", 0, domid, mfn))
        else:
            self.mem.write(a, struct.pack("<HHIQ", 0, domid, 0, mfn))
        self.mem.write(a, struct.pack("<H", flags))

    def end_grant(self, ref: int) -> bool:
        """gnttab_end_foreign_access_ref: revoke unless GTF_reading/GTF_writing is set."""
        gt = self.d.gnttab
        if gt.flags_of(ref) & (G.GTF_reading | G.GTF_writing):
            return False
        self.mem.write(gt._entry(ref), struct.pack("<H", 0))
        return True

    def map_grant(self, host_addr: int, flags: int, ref: int, dom: int) -> tuple[int, int, int]:
        rc, [(_, _, _, _, st, handle, dev)] = self.gnttab(
            G.GNTTABOP_map_grant_ref, G.MAP_GRANT_REF, [(host_addr, flags, ref, dom, 0, 0, 0)])
        assert rc == 0
        return st, handle, dev

    def unmap_grant(self, host_addr: int, handle: int, dev: int = 0) -> int:
        rc, [(_, _, _, st)] = self.gnttab(G.GNTTABOP_unmap_grant_ref, G.UNMAP_GRANT_REF,
                                          [(host_addr, dev, handle, 0)])
        assert rc == 0
        return st


def fingerprint(d) -> tuple:
    """Everything of ``d`` another domain must not be able to change."""
    mem = d.mem
    frames = [m for m in d.p2m if m >= 0] + [d.shared_info_mfn] + list(d.grant_frames)
    h = hashlib.sha256()
    for mfn in frames:
        h.update(mem.page(mfn))
    table = [(mem.owner[m], mem.type[m], mem.type_count[m], mem.ref_count[m], mem.pinned[m],
              mem.m2p(m)) for m in frames]
    return h.hexdigest(), table


def counts(d) -> list[tuple]:
    """The frame-table entries of ``d``'s RAM (type, type count, references, pinned)."""
    mem = d.mem
    return [(mem.type[m], mem.type_count[m], mem.ref_count[m], mem.pinned[m])
            for m in d.p2m if m >= 0]


def boot(factory, kernel: str = "hello", width: int = 32, mib: int = 8, name: str | None = None,
         cmdline: str = "") -> Guest:
    """Build (not run) ``kernel`` as a ``width``-bit domain of ``mib`` MiB."""
    from xenpy.cli import resolve_kernel
    path = resolve_kernel(f"{kernel}-x86_{width}")
    run = factory(path, memory_mib=mib, name=name, cmdline=cmdline)
    lay = plan_layout(load_xen_elf(path), mib * 256, Width(width // 8))
    return Guest(run, lay)
