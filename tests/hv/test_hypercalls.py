"""Hostile hypercalls: a guest calling with bad pointers, counts, sub-ops and numbers.

Each test boots an *attacker* and a *victim* domain on one host, then calls
``dispatch(vcpu, nr, args)`` directly for the attacker, as its ``int $0x82`` would.
Every call must come back as an errno (never a Python exception), and afterwards the
victim's memory, frame-table entries and M2P entries must be exactly as they were.
"""
from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass

import pytest

from xenpy.abi import event_channel as E
from xenpy.abi import grant_table as G
from xenpy.abi import memory as M
from xenpy.abi import sched as S
from xenpy.abi import version as V
from xenpy.abi.errno import Errno
from xenpy.abi.xen import (CONSOLEIO_write, DOMID_SELF, HYPERCALL_NR, MMU_MACHPHYS_UPDATE,
                           MMU_NORMAL_PT_UPDATE, MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE,
                           MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L3_TABLE,
                           MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE,
                           PAGE_SIZE, Width, _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW)
from xenpy.hv import hypercall as hc
from xenpy.hv.layout import FIRMWARE_VA, FIRST_HV_L2_SLOT, GDT_VA
from xenpy.hv.machine import PageType
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf

from . import kernels

NR = HYPERCALL_NR
UNMAPPED = 0x10000000
HV_M2P = 0xF5800000
HV_HOLE = 0xFFFFF000          # inside the hypervisor area, mapped by nothing
PTE_RW = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED


@dataclass
class Arena:
    host: object
    attacker: object
    victim: object
    lay: object

    @property
    def v(self):
        return self.attacker.vcpus[0]

    @property
    def scratch(self) -> int:
        """A writable, unused page of the attacker (the mapping's slack)."""
        return self.lay.virt_end - PAGE_SIZE

    @property
    def pt_base(self) -> int:
        return self.lay.va(self.lay.pt_pfns.start)

    def call(self, name_or_nr: str | int, *args: int) -> int | None:
        nr = NR[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
        full = tuple(a & 0xFFFFFFFF for a in args) + (0,) * (6 - len(args))
        res = hc.dispatch(self.v, nr, full)
        assert res is None or isinstance(res, int), res
        if isinstance(res, int) and res >= 1 << 31:
            res -= 1 << 32
        return res

    def write(self, va: int, data: bytes) -> None:
        self.v.gmem.write(va, data)

    def l1e_maddr(self, va: int) -> int:
        from xenpy.hv.mm import guest_l1e_maddr
        return guest_l1e_maddr(self.v, va)


def fingerprint(d) -> tuple:
    """Everything of ``d`` another domain must not be able to change."""
    mem = d.mem
    frames = list(d.p2m) + [d.shared_info_mfn]
    h = hashlib.sha256()
    for mfn in frames:
        h.update(mem.page(mfn))
    table = [(mem.owner[m], mem.type[m], mem.type_count[m], mem.pinned[m], mem.m2p(m))
             for m in frames]
    return h.hexdigest(), table


@pytest.fixture
def arena(domain_factory, xen_host):
    attacker = domain_factory("hello", memory_mib=8, name="attacker").domain
    victim = domain_factory("hello", memory_mib=8, name="victim").domain
    image = load_xen_elf(kernels.BUILD / "hello-x86_32.elf")
    a = Arena(xen_host, attacker, victim, plan_layout(image, 8 * 256, Width.X86_32))
    before = fingerprint(victim)
    fw_mfn = a.v.gmem.translate(FIRMWARE_VA) >> 12
    firmware = bytes(xen_host.mem.page(fw_mfn))
    yield a
    assert fingerprint(victim) == before, "the attacker changed the victim domain"
    assert bytes(xen_host.mem.page(fw_mfn)) == firmware


BAD_READ = [0, UNMAPPED, HV_HOLE, 0xFFFFFFFC]
BAD_WRITE = BAD_READ + [HV_M2P, FIRMWARE_VA, GDT_VA]


# --- bad pointers ----------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [V.XENVER_extraversion, V.XENVER_compile_info,
                                 V.XENVER_capabilities, V.XENVER_changeset,
                                 V.XENVER_platform_parameters, V.XENVER_guest_handle])
def test_xen_version_bad_buffers(arena, cmd):
    for ptr in BAD_WRITE + [arena.pt_base]:
        assert arena.call("xen_version", cmd, ptr) == -Errno.EFAULT, hex(ptr)


def test_xen_version_get_features_bad_buffers(arena):
    for ptr in BAD_READ:
        assert arena.call("xen_version", V.XENVER_get_features, ptr) == -Errno.EFAULT
    # readable but not writable: submap_idx 0 is read, the answer cannot be written back
    arena.write(arena.scratch, bytes(8))
    assert arena.call("xen_version", V.XENVER_get_features, arena.scratch) == 0
    assert arena.call("xen_version", V.XENVER_get_features, arena.scratch + PAGE_SIZE - 4) \
        == -Errno.EFAULT


def test_copy_out_straddling_the_mapping_end_writes_nothing(arena):
    end = arena.lay.virt_end
    arena.write(end - 64, b"\xAA" * 64)
    assert arena.call("xen_version", V.XENVER_capabilities, end - 64) == -Errno.EFAULT
    assert arena.v.gmem.read(end - 64, 64) == b"\xAA" * 64


def test_console_io_bad_buffers_and_sizes(arena):
    for ptr in BAD_READ:
        assert arena.call("console_io", CONSOLEIO_write, 16, ptr) == -Errno.EFAULT, hex(ptr)
    assert arena.call("console_io", CONSOLEIO_write, 0xFFFFFFFF, arena.scratch) < 0
    assert arena.call("console_io", CONSOLEIO_write, 2 * PAGE_SIZE, arena.scratch) == \
        -Errno.EFAULT                                     # runs off the mapping's end


def test_sched_op_bad_arguments(arena):
    assert arena.call("sched_op", S.SCHEDOP_shutdown, UNMAPPED) == -Errno.EFAULT
    arena.write(arena.scratch, struct.pack("<I", 99))
    assert arena.call("sched_op", S.SCHEDOP_shutdown, arena.scratch) == -Errno.EINVAL
    assert arena.attacker.shutdown_reason is None
    arena.write(arena.scratch, struct.pack("<IIQ", UNMAPPED, 1, 0))
    assert arena.call("sched_op", S.SCHEDOP_poll, arena.scratch) == -Errno.EFAULT
    arena.write(arena.scratch, struct.pack("<IIQ", arena.scratch + 64, 0xFFFFFFFF, 0))
    assert arena.call("sched_op", S.SCHEDOP_poll, arena.scratch) == -Errno.EINVAL
    assert arena.call("sched_op", S.SCHEDOP_remote_shutdown, arena.scratch) < 0
    assert arena.victim.shutdown_reason is None


def test_event_channel_bad_ports(arena):
    for port in (0, 4095, 4096, 0x7FFFFFFF, 0xFFFFFFFF):
        arena.write(arena.scratch, struct.pack("<I", port))
        assert arena.call("event_channel_op", E.EVTCHNOP_send, arena.scratch) == -Errno.EINVAL
        assert arena.call("event_channel_op", E.EVTCHNOP_unmask, arena.scratch) == -Errno.EINVAL
    assert arena.call("event_channel_op", E.EVTCHNOP_send, UNMAPPED) == -Errno.EFAULT


def test_memory_op_bad_arguments(arena):
    assert arena.call("memory_op", M.XENMEM_current_reservation, UNMAPPED) == -Errno.EFAULT
    arena.write(arena.scratch, struct.pack("<II", 1, UNMAPPED))
    assert arena.call("memory_op", M.XENMEM_memory_map, arena.scratch) == -Errno.EFAULT
    assert arena.call("memory_op", M.XENMEM_machphys_mapping, HV_M2P) == -Errno.EFAULT
    arena.write(arena.scratch, struct.pack("<H", arena.victim.domid))
    assert arena.call("memory_op", M.XENMEM_current_reservation, arena.scratch) < 0


def test_grant_table_huge_counts(arena):
    for count in (513, 0x7FFFFFFF, 0xFFFFFFFF):
        assert arena.call("grant_table_op", G.GNTTABOP_query_size, arena.scratch, count) < 0


# --- unknown sub-ops and hypercalls -------------------------------------------------------------
@pytest.mark.parametrize("name,cmd", [
    ("sched_op", 99), ("event_channel_op", 99), ("memory_op", 63), ("grant_table_op", 99),
    ("xen_version", 99), ("mmuext_op", None), ("console_io", 99), ("vm_assist", None),
])
def test_unknown_sub_ops_are_enosys(arena, name, cmd):
    if name == "mmuext_op":
        arena.write(arena.scratch, struct.pack("<III", 99, 0, 0))
        assert arena.call(name, arena.scratch, 1, 0, DOMID_SELF) == -Errno.ENOSYS
    elif name == "vm_assist":
        assert arena.call(name, 99, 2) == -Errno.ENOSYS          # unknown command
    else:
        assert arena.call(name, cmd, arena.scratch, 1) == -Errno.ENOSYS


@pytest.mark.parametrize("nr", [11, 43, 47, 63, 64, 1000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_unknown_hypercall_numbers_are_enosys_logged_once(arena, nr, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert arena.call(nr, 1, 2, 3) == -Errno.ENOSYS
    hits = [r for r in caplog.records if str(nr) in r.getMessage()]
    assert len(hits) == 1, [r.getMessage() for r in caplog.records]


# --- everything, with hostile arguments ---------------------------------------------------------
def registered(width: Width) -> list:
    table = hc.TABLE[width] if isinstance(hc.TABLE, dict) else hc.TABLE
    return [h for h in table if h is not None and width in h.abis]


def test_every_hypercall_survives_hostile_arguments(arena):
    """No Python exception escapes any handler; the victim stays untouched (fixture)."""
    values = [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, UNMAPPED, HV_M2P, FIRMWARE_VA,
              GDT_VA, HV_HOLE, arena.pt_base, arena.scratch, arena.victim.p2m[0]]
    arena.write(arena.scratch, bytes([0xFF]) * PAGE_SIZE)
    names = []
    for h in registered(Width.X86_32):
        names.append(h.name)
        for val in values:
            arena.call(h.nr, *[val] * 6)
        for cmd in range(24):
            for ptr in (UNMAPPED, HV_M2P, arena.pt_base, arena.scratch):
                arena.call(h.nr, cmd, ptr, 1, ptr, 0, 0)
                arena.call(h.nr, ptr, cmd, 0, DOMID_SELF, 0, 0)
    assert len(names) >= 20 and "mmu_update" in names


# --- memory management: isolation rules -----------------------------------------------------------
def frame_table(d) -> list[tuple[int, int, int]]:
    mem = d.mem
    return [(mem.type[m], mem.type_count[m], mem.pinned[m]) for m in d.p2m]


def uvm(arena, va: int, pte: int) -> int:
    return arena.call("update_va_mapping", va, pte & 0xFFFFFFFF, pte >> 32, 0)


#: How Xen refuses an L1 entry for a frame the guest does not own: get_page_from_l1e's
#: could_not_pin is -EBUSY (another domain's or Xen's frame), an mfn that is not RAM is
#: -EPERM (no I/O-memory access), older paths say -EINVAL.
REFUSED = {-Errno.EBUSY, -Errno.EPERM, -Errno.EINVAL}


def test_cannot_map_a_frame_it_does_not_own(arena):
    slot = arena.l1e_maddr(arena.scratch)
    before = arena.attacker.mem.read_u64(slot)
    for mfn in (arena.victim.p2m[5], arena.victim.shared_info_mfn,
                arena.v.gmem.translate(FIRMWARE_VA) >> 12, arena.host.mem.nr_frames + 7):
        assert uvm(arena, arena.scratch, (mfn << 12) | PTE_RW) in REFUSED, hex(mfn)
        assert uvm(arena, arena.scratch, (mfn << 12) | _PAGE_PRESENT) in REFUSED, hex(mfn)
        arena.write(arena.scratch, struct.pack("<QQ", slot | MMU_NORMAL_PT_UPDATE,
                                               (mfn << 12) | PTE_RW))
        assert arena.call("mmu_update", arena.scratch, 1, 0, DOMID_SELF) in REFUSED
        assert arena.attacker.mem.read_u64(slot) == before


def test_cannot_write_or_remap_another_domains_frames(arena):
    victim_mfn = arena.victim.p2m[0]
    arena.write(arena.scratch, struct.pack("<QQ", (victim_mfn << 12) | MMU_NORMAL_PT_UPDATE, 7))
    assert arena.call("mmu_update", arena.scratch, 1, 0, DOMID_SELF) == -Errno.EINVAL
    arena.write(arena.scratch, struct.pack("<QQ", (victim_mfn << 12) | MMU_MACHPHYS_UPDATE, 3))
    assert arena.call("mmu_update", arena.scratch, 1, 0, DOMID_SELF) == -Errno.EINVAL
    assert arena.call("mmu_update", arena.scratch, 1, 0, arena.victim.domid) < 0
    for cmd, a1, a2 in [(MMUEXT_PIN_L1_TABLE, victim_mfn, 0),
                        (MMUEXT_NEW_BASEPTR, victim_mfn, 0),
                        (MMUEXT_CLEAR_PAGE, victim_mfn, 0),
                        (MMUEXT_COPY_PAGE, arena.attacker.p2m[300], victim_mfn)]:
        arena.write(arena.scratch, struct.pack("<III", cmd, a1, a2))
        assert arena.call("mmuext_op", arena.scratch, 1, 0, DOMID_SELF) == -Errno.EINVAL, cmd


def test_cannot_map_a_page_table_page_writable(arena):
    table = frame_table(arena.attacker)
    for pfn in arena.lay.pt_pfns:
        mfn = arena.attacker.p2m[pfn]
        assert uvm(arena, arena.scratch, (mfn << 12) | PTE_RW) in REFUSED
    # ... nor cleared or copied over with mmuext
    l3 = arena.attacker.p2m[arena.lay.pt_pfns.start]
    for cmd, a1, a2 in [(MMUEXT_CLEAR_PAGE, l3, 0),
                        (MMUEXT_COPY_PAGE, l3, arena.attacker.p2m[0])]:
        arena.write(arena.scratch, struct.pack("<III", cmd, a1, a2))
        assert arena.call("mmuext_op", arena.scratch, 1, 0, DOMID_SELF) == -Errno.EINVAL
    assert frame_table(arena.attacker) == table


def test_cannot_replace_the_l3_slot_holding_the_hypervisor_l2(arena):
    """Xen's mod_l3_entry refuses any update of slot 3 of a 32-bit guest's L3
    ("Disallow updates to final L3 slot"): it holds the L2 with Xen's mappings."""
    d = arena.attacker
    l3 = arena.v.gmem.cr3 >> 12
    before = d.mem.read_u64((l3 << 12) + 8 * 3)
    arena.write(arena.scratch, struct.pack("<QQ", (l3 << 12) + 8 * 3 | MMU_NORMAL_PT_UPDATE, 0))
    assert arena.call("mmu_update", arena.scratch, 1, 0, DOMID_SELF) == -Errno.EINVAL
    assert d.mem.read_u64((l3 << 12) + 8 * 3) == before
    assert arena.v.gmem.translate(FIRMWARE_VA)          # Xen's mappings still there


def test_cannot_write_the_hypervisor_l2_slots(arena):
    d = arena.attacker
    l3 = arena.v.gmem.cr3
    l2 = (d.mem.read_u64(l3 + 8 * 3) & 0x000FFFFFFFFFF000) >> 12
    assert l2 in d.xen_l2s
    own = d.p2m[0]
    before = bytes(d.mem.page(l2))
    for slot in (FIRST_HV_L2_SLOT, 511):
        arena.write(arena.scratch, struct.pack("<QQ", (l2 << 12) + 8 * slot
                                               | MMU_NORMAL_PT_UPDATE, (own << 12) | PTE_RW))
        assert arena.call("mmu_update", arena.scratch, 1, 0, DOMID_SELF) < 0
    for va in (HV_M2P, FIRMWARE_VA, GDT_VA, HV_HOLE):
        assert uvm(arena, va, (own << 12) | PTE_RW) < 0, hex(va)
    assert bytes(d.mem.page(l2)) == before


def test_type_counts_return_to_baseline_after_map_and_unmap(arena):
    d = arena.attacker
    table = frame_table(d)
    old = d.mem.read_u64(arena.l1e_maddr(arena.scratch))
    for pfn in (0, arena.lay.start_info_pfn, 300):           # kernel, start_info, free memory
        assert uvm(arena, arena.scratch, (d.p2m[pfn] << 12) | PTE_RW) == 0
        assert d.mem.type[d.p2m[pfn]] == PageType.writable
        assert arena.v.gmem.translate(arena.scratch) == d.p2m[pfn] << 12
    pt = d.p2m[arena.lay.pt_pfns.stop - 1]                    # a page table, read-only: fine
    assert uvm(arena, arena.scratch, (pt << 12) | _PAGE_PRESENT | _PAGE_ACCESSED) == 0
    assert uvm(arena, arena.scratch, 0) == 0                    # unmap
    assert arena.call("xen_version", V.XENVER_extraversion, arena.scratch) == -Errno.EFAULT
    assert uvm(arena, arena.scratch, old) == 0                  # and put it back
    assert frame_table(d) == table


def test_pin_and_unpin_restore_counts(arena):
    d = arena.attacker
    table = frame_table(d)
    page = d.p2m[1500]                        # zeroed, beyond the initial mapping: an empty L1
    for cmd in (MMUEXT_PIN_L1_TABLE, MMUEXT_UNPIN_TABLE):
        arena.write(arena.scratch, struct.pack("<III", cmd, page, 0))
        assert arena.call("mmuext_op", arena.scratch, 1, 0, DOMID_SELF) == 0
    # an L3 whose entry points at another domain's frame does not validate
    arena.write(arena.scratch, struct.pack("<III", MMUEXT_PIN_L3_TABLE, page, 0))
    d.mem.write_u64(page << 12, (arena.victim.p2m[0] << 12) | _PAGE_PRESENT)
    assert arena.call("mmuext_op", arena.scratch, 1, 0, DOMID_SELF) == -Errno.EINVAL
    d.mem.write_u64(page << 12, 0)
    assert frame_table(d) == table


def test_huge_counts_are_bounded(arena):
    done = arena.scratch + 2048
    assert arena.call("mmu_update", UNMAPPED, 0x7FFFFFFF, done, DOMID_SELF) == -Errno.EFAULT
    assert arena.call("mmuext_op", UNMAPPED, 0xFFFFFFFF, done, DOMID_SELF) == -Errno.EFAULT
    assert arena.call("multicall", arena.scratch, 0xFFFFFFFF) < 0
    assert arena.call("mmuext_op", arena.scratch, 0x7FFFFFFF, UNMAPPED, DOMID_SELF) < 0


@pytest.mark.parametrize("name,entry", [
    ("mmuext_op", struct.pack("<III", MMUEXT_TLB_FLUSH_LOCAL, 0, 0)),
    ("mmu_update", None),                                         # a no-op rewrite, below
], ids=["mmuext_op", "mmu_update"])
def test_progress_count_is_written_when_a_batch_faults(arena, name, entry):
    """Xen's do_mmu_update / do_mmuext_op copy `done` to pdone even when copying an
    element in fails with -EFAULT (the `out:` path), so the guest knows how far the batch
    got.  (The count stays small enough for Xen's up-front guest_handle_okay range check.)"""
    if entry is None:                 # rewrite the scratch page's own PTE with its value
        slot = arena.l1e_maddr(arena.scratch)
        entry = struct.pack("<QQ", slot | MMU_NORMAL_PT_UPDATE,
                            arena.attacker.mem.read_u64(slot))
    n = PAGE_SIZE // len(entry)
    arena.write(arena.scratch, entry * n)            # the batch runs off the mapping's end
    pdone = arena.scratch - 4
    arena.write(pdone, struct.pack("<I", 0xFFFFFFFF))
    assert arena.call(name, arena.scratch, n + 1, pdone, DOMID_SELF) == -Errno.EFAULT
    assert arena.v.gmem.read_u32(pdone) == n


def test_random_hypercalls_never_raise(arena):
    """Hypothesis: any number and any six words give an errno or a result, never a
    Python exception, and (checked by the fixture) never touch the victim."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    rows = registered(Width.X86_32)
    interesting = st.sampled_from([0, 1, 2, 0x7FF0, 0xFFFFFFFF, 0x7FFFFFFF, UNMAPPED, HV_M2P,
                                   FIRMWARE_VA, GDT_VA, HV_HOLE, arena.pt_base,
                                   arena.scratch, arena.scratch + PAGE_SIZE - 4,
                                   arena.victim.p2m[0], arena.attacker.p2m[1500]])
    word = st.one_of(interesting, st.integers(0, 0xFFFFFFFF), st.integers(0, 64))
    skip = {"iret"}            # pops a frame from the current ESP: covered elsewhere
    # written by machine address: a generated update_va_mapping may unmap the scratch VA
    scratch_maddr = arena.attacker.p2m[(arena.scratch - arena.lay.virt_base) >> 12] << 12

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(row=st.sampled_from([h for h in rows if h.name not in skip]),
           args=st.lists(word, min_size=6, max_size=6),
           scratch=st.binary(min_size=0, max_size=64))
    def one(row, args, scratch):
        arena.attacker.mem.write(scratch_maddr, scratch)
        arena.call(row.nr, *args)

    one()


# --- grant tables: nothing was granted to the attacker ------------------------------------------
GNTTAB_COPY = struct.Struct("<IHH IHH HHh 2x")       # struct gnttab_copy (x86_32): 24 bytes
GNTTAB_MAP = struct.Struct("<QIIHhIQ")              # struct gnttab_map_grant_ref: 32 bytes
GNTTAB_XFER = struct.Struct("<IH2xIh2x")            # struct gnttab_transfer: 16 bytes


def test_gnttab_copy_cannot_reach_frames_it_does_not_own(arena):
    """A non-gref copy names a frame of DOMID_SELF: another domain's mfn must not be
    accepted there, in either direction (Xen: GNTST_bad_page / permission_denied)."""
    own = arena.attacker.p2m[1500]
    victim_mfn = arena.victim.p2m[arena.lay.start_info_pfn]       # holds the victim's magic
    arena.attacker.mem.write(own << 12, b"\xA5" * 64)
    cases = [((victim_mfn, DOMID_SELF, 0), (own, DOMID_SELF, 0)),     # read the victim
             ((own, DOMID_SELF, 0), (victim_mfn, DOMID_SELF, 0)),     # write the victim
             ((victim_mfn, arena.victim.domid, 0), (own, DOMID_SELF, 0)),
             ((own, DOMID_SELF, 0), (victim_mfn, arena.victim.domid, 0))]
    for src, dst in cases:
        arena.write(arena.scratch, GNTTAB_COPY.pack(*src, *dst, 32, 0, 0))
        rc = arena.call("grant_table_op", G.GNTTABOP_copy, arena.scratch, 1)
        status = GNTTAB_COPY.unpack(arena.v.gmem.read(arena.scratch, 24))[8]
        assert rc < 0 or status < 0, (src, dst)
    assert bytes(arena.attacker.mem.page(own)[:64]) == b"\xA5" * 64


def test_gnttab_map_and_transfer_without_a_grant(arena):
    v_dom = arena.victim.domid
    for ref in (0, 1, 7, 8, 511, 0xFFFFFFFF):
        arena.write(arena.scratch, GNTTAB_MAP.pack(arena.scratch - PAGE_SIZE,
                                                   G.GNTMAP_host_map, ref, v_dom, 0, 0, 0))
        rc = arena.call("grant_table_op", G.GNTTABOP_map_grant_ref, arena.scratch, 1)
        status = GNTTAB_MAP.unpack(arena.v.gmem.read(arena.scratch, 32))[4]
        assert rc < 0 or status < 0, ref
    own = arena.attacker.p2m[1500]
    arena.write(arena.scratch, GNTTAB_XFER.pack(own, v_dom, 0, 0))
    rc = arena.call("grant_table_op", G.GNTTABOP_transfer, arena.scratch, 1)
    status = GNTTAB_XFER.unpack(arena.v.gmem.read(arena.scratch, 16))[3]
    assert rc < 0 or status < 0
    # (Xen steals the page before it looks at the entry and frees it on failure, so the
    # attacker may lose it; the victim must not gain it)
    assert not arena.victim.owns(own) and own not in arena.victim.p2m


@pytest.mark.parametrize("event_pending", [False, True], ids=["quiet", "event-pending"])
@pytest.mark.parametrize("width", [32, 64])
def test_a_hostile_vcpu_context_never_runs_at_ring_0(domain_factory, width, event_pending):
    """VCPUOP_initialise and restore take a context from outside: CR4 is the host's
    (a context turning PAE off once crashed Unicorn) and an RPL-0 selector gets the
    guest kernel's RPL, so the hypervisor's own ring-0 code segment cannot be entered."""
    from xenpy.hv import domctl, firmware
    from xenpy.hv.host import PV_CR4
    from xenpy.hv.layout import SEL_RING0_CS as CS32
    from xenpy.hv.layout64 import SEL_RING0_CS64 as CS64
    g = domain_factory(f"hello-x86_{width}" if width == 64 else "hello", vcpus=2)
    d = g.domain
    v0, v1 = d.vcpus
    C = domctl.vcpu_guest_context(d.width)
    ctx = C.from_buffer_copy(domctl.getvcpucontext(v0))
    ctx.user_regs.cs = CS32 if width == 32 else CS64
    ctx.ctrlreg[4] = 0
    domctl.setvcpucontext(v1, bytes(ctx))
    assert v1.cpu.reg("cr4") == PV_CR4
    assert firmware.pending_iret(v1)[1] == ctx.user_regs.cs | (1 if width == 32 else 3)
    v0.online, v1.online = False, True          # run only the hostile vCPU
    if event_pending:              # the upcall path enters the context first (it once spun)
        v1.vcpu_info.evtchn_upcall_pending = 1
        v1.vcpu_info.evtchn_upcall_mask = 0
        assert v1.vcpu_info_pending()
    assert g.run(timeout=30)                    # ended, not stuck in the faulting iret
    assert d.shutdown_reason.name == "crash"    # its iret to a DPL-0 segment faulted (#GP)


@pytest.mark.parametrize("width", [32, 64])
def test_a_vcpu_context_with_bad_data_selectors_does_not_stop_the_host(domain_factory, width):
    """A selector the CPU refuses (beyond the GDT) is loaded as null instead of raising
    out of the scheduler loop (a guest's VCPUOP_initialise could kill the host)."""
    from xenpy.hv import domctl
    g = domain_factory(f"hello-x86_{width}" if width == 64 else "hello", vcpus=2)
    d = g.domain
    v0, v1 = d.vcpus
    ctx = domctl.vcpu_guest_context(d.width).from_buffer_copy(domctl.getvcpucontext(v0))
    ctx.user_regs.ds = ctx.user_regs.es = ctx.user_regs.fs = ctx.user_regs.gs = 0x7FF8
    domctl.setvcpucontext(v1, bytes(ctx), defer_registers=True)
    v0.online, v1.online = False, True          # run only the new vCPU
    assert g.run(timeout=30)                    # the host loop did not raise
    assert v1.cpu.reg("ds") == 0 and v1.pending_registers is None


@pytest.mark.parametrize("ring", ["console", "store"])
def test_cannot_give_back_a_ring_page_the_host_writes(arena, ring):
    """The console and xenstore rings are written by host backends: a guest that unmaps
    and decreases one would have the host write into whoever gets the frame next."""
    from xenpy.abi import memory as M
    a = arena
    d = a.attacker
    mfn = d.console_mfn if ring == "console" else d.store_mfn
    va = a.lay.va(a.lay.console_pfn if ring == "console" else a.lay.xenstore_pfn)
    assert a.call("update_va_mapping", va, 0, 0, 2) == 0          # unmapped by the guest
    sc = a.scratch
    a.write(sc, struct.pack("<IIIIH2x", sc + 64, 1, 0, 0, DOMID_SELF))
    a.write(sc + 64, struct.pack("<I", mfn))
    assert a.call("memory_op", M.XENMEM_decrease_reservation, sc) == 0   # none given back
    assert d.owns(mfn) and d.mem.m2p(mfn) is not None


def test_a_v2_grant_status_frame_can_never_be_a_page_table(arena):
    """The hypervisor writes grant status words into it: typed as an L1 it would let the
    guest forge PTEs through the hypervisor's writes."""
    from xenpy.hv import grant_table, mm
    from xenpy.hv.machine import PageType
    d = arena.attacker
    gt = grant_table.table(d)
    grant_table.grow(gt, 1)
    assert grant_table.set_version(d, 2) == 0 and gt.status
    for mfn in gt.status:
        with pytest.raises(mm.PageError):
            mm.get_page_type(d, mfn, PageType.l1)


def test_exchange_reports_progress_and_is_bounded(arena):
    """XENMEM_exchange whose output list feeds the frames it gets back in as the next
    inputs would loop 2^32 times in one call: it stops after EXCHANGE_MAX_PER_CALL with
    -EAGAIN, nr_exchanged saying how far it got (also on a fault part-way)."""
    from xenpy.abi import memory as M
    from xenpy.hv import memory as MM
    a = arena
    d = a.attacker
    mem = d.mem
    mfn = next(m for m in d.p2m if m >= 0 and mem.ref_count[m] == 1 and not mem.type_count[m]
               and not d.hypervisor_held(m))
    sc = a.scratch
    ext = sc + 256
    nr = MM.EXCHANGE_MAX_PER_CALL + 10
    a.write(sc, struct.pack("<IIIIH2x", ext, nr, 0, 0, DOMID_SELF)
            + struct.pack("<IIIIH2x", ext + 4, nr, 0, 0, DOMID_SELF) + struct.pack("<I", 0))
    a.write(ext, struct.pack("<I", mfn))
    pages = d.nr_pages
    rc = a.call("memory_op", M.XENMEM_exchange, sc)
    done = struct.unpack("<I", a.v.gmem.read(sc + 40, 4))[0]
    # the chain runs off the scratch page (a fault) or into the per-call bound
    assert (rc, done > 0) in ((-Errno.EAGAIN, True), (-Errno.EFAULT, True)), (rc, done)
    assert done <= MM.EXCHANGE_MAX_PER_CALL and d.nr_pages == pages
