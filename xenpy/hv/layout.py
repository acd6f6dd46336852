"""The hypervisor's part of every 32-bit PAE guest address space.

Xen reserves 0xF5800000-0xFFFFFFFF of a PAE guest (HYPERVISOR_VIRT_START_PAE): the
L2 table under L3 slot 3 carries hypervisor entries in slots 428-511, which the guest
can neither see change nor modify.  We put there:

* the read-only compat M2P at MACH2PHYS_VIRT_START (slots 428-435, as Xen);
* FIRMWARE_VA: the firmware pages (iret trampoline, call-gate entry; one user page);
* GDT_VA: each vCPU's 64 KiB GDT (pages 0-13 map the guest's frames, 14-15 Xen's
  reserved entries), read-only;
* TSS_VA: each vCPU's TSS (only ss1/esp1 matter: the call gate's stack switch).

Global L1 tables (M2P, firmware) are shared by every domain; the GDT/TSS L1s are
per domain.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..abi.xen import (FIRST_RESERVED_GDT_PAGE, FLAT_RING1_CS, FLAT_RING1_DS, FLAT_RING3_CS,
                       FLAT_RING3_DS, MACH2PHYS_VIRT_START_PAE, PAGE_SHIFT, PAGE_SIZE,
                       XEN_LEGACY_MAX_VCPUS, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT,
                       _PAGE_RW, _PAGE_USER, Width)
from . import descriptor as desc
from .firmware import Firmware, build_firmware
from .machine import MachineMemory

L2_SLOT3_BASE = 0xC0000000
FIRST_HV_L2_SLOT = (MACH2PHYS_VIRT_START_PAE - L2_SLOT3_BASE) >> 21      # 428
FIRMWARE_VA = 0xFF000000
GDT_VA = 0xFF200000
TSS_VA = 0xFF400000
GDT_SIZE = 16 * PAGE_SIZE

# Xen's reserved GDT entries (page 14), as selectors.
SEL_RING0_CS = 0xE008
SEL_RING0_DS = 0xE010
SEL_TSS = 0xE038
SEL_CALL_GATE = 0xE040
SEL_LDT = 0xE048
LDT_TYPE = 0x2                     # system descriptor type: LDT
LDT_PAGES = 16                     # 64 KiB: the most an LDT can hold (8192 entries)
LDT_FIRST_PAGE = 32                # in the TSS L1, after the vCPUs' TSS pages
L2_HV_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER
L1_RO = _PAGE_PRESENT | _PAGE_ACCESSED
L1_RO_USER = L1_RO | _PAGE_USER


def _slot(va: int) -> int:
    return (va - L2_SLOT3_BASE) >> 21


@dataclass
class HostLayout32:
    """Hypervisor frames shared by all 32-bit domains on a host."""
    firmware: Firmware
    zero_mfn: int
    hv_l2_entries: dict[int, int]       # L2 slot -> entry, for the global slots

    @classmethod
    def create(cls, mem: MachineMemory) -> "HostLayout32":
        fw = build_firmware("pv32", Width.X86_32,
                            (("supervisor", FIRMWARE_VA), ("user", FIRMWARE_VA + PAGE_SIZE)))
        sup, user, fw_l1, zero = mem.alloc_xen_frames(4)
        mem.write(sup << PAGE_SHIFT, bytes(fw.pages["supervisor"]))
        mem.write(user << PAGE_SHIFT, bytes(fw.pages["user"]))
        mem.write_u64((fw_l1 << PAGE_SHIFT), (sup << PAGE_SHIFT) | L1_RO)
        mem.write_u64((fw_l1 << PAGE_SHIFT) + 8, (user << PAGE_SHIFT) | L1_RO_USER)
        entries = {_slot(FIRMWARE_VA): (fw_l1 << PAGE_SHIFT) | L2_HV_PROT}
        # The compat M2P, read-only, one L1 per 2 MiB of table.
        m2p = mem.m2p32
        n_l1 = (len(m2p) + 511) // 512
        for i, l1 in enumerate(mem.alloc_xen_frames(n_l1)):
            for j, mfn in enumerate(m2p[i * 512:(i + 1) * 512]):
                mem.write_u64((l1 << PAGE_SHIFT) + 8 * j, (mfn << PAGE_SHIFT) | L1_RO)
            entries[FIRST_HV_L2_SLOT + i] = (l1 << PAGE_SHIFT) | L2_HV_PROT
        return cls(fw, zero, entries)


@dataclass
class DomainLayout32:
    """Per-domain hypervisor frames: the GDT/TSS L1s and each vCPU's reserved GDT page."""
    host: HostLayout32
    gdt_l1: int
    tss_l1: int
    frames: list[int]                   # every frame to free with the domain
    gdt_reserved: list[int]             # per vCPU: the frame with GDT entries 0xe000-0xefff
    tss: list[int]                      # per vCPU TSS frame

    @classmethod
    def create(cls, mem: MachineMemory, host: HostLayout32, nr_vcpus: int) -> "DomainLayout32":
        if not 1 <= nr_vcpus <= XEN_LEGACY_MAX_VCPUS:
            raise ValueError(f"vcpus: expected 1..{XEN_LEGACY_MAX_VCPUS}, got {nr_vcpus}")
        gdt_l1, tss_l1 = mem.alloc_xen_frames(2)
        reserved = mem.alloc_xen_frames(nr_vcpus)
        tss = mem.alloc_xen_frames(nr_vcpus)
        self = cls(host, gdt_l1, tss_l1, [gdt_l1, tss_l1, *reserved, *tss], reserved, tss)
        for v in range(nr_vcpus):
            self._init_vcpu(mem, v)
        return self

    def _init_vcpu(self, mem: MachineMemory, v: int) -> None:
        base = self.gdt_reserved[v] << PAGE_SHIFT
        tss_va = TSS_VA + v * PAGE_SIZE
        entries = {
            SEL_RING0_CS: desc.segment(0, 0xFFFFF, desc.CODE_RX, 0),
            SEL_RING0_DS: desc.segment(0, 0xFFFFF, desc.DATA_RW, 0),
            FLAT_RING1_CS: desc.segment(0, 0xFFFFF, desc.CODE_RX, 1),
            FLAT_RING1_DS: desc.segment(0, 0xFFFFF, desc.DATA_RW, 1),
            FLAT_RING3_CS: desc.segment(0, 0xFFFFF, desc.CODE_RX, 3),
            FLAT_RING3_DS: desc.segment(0, 0xFFFFF, desc.DATA_RW, 3),
            SEL_TSS: desc.segment(tss_va, 0x67, desc.TSS32, 0, s=False, db=False, g=False),
            SEL_CALL_GATE: desc.call_gate32(FLAT_RING1_CS,
                                            self.host.firmware.symbols["gate_entry"], 3),
        }
        for sel, raw in entries.items():
            mem.write(base + (sel & 0xFF8) , raw)
        gdt_page0 = v * 16
        zero = self.host.zero_mfn
        for p in range(16):
            mfn = base >> PAGE_SHIFT if p == FIRST_RESERVED_GDT_PAGE else zero
            mem.write_u64((self.gdt_l1 << PAGE_SHIFT) + 8 * (gdt_page0 + p),
                          (mfn << PAGE_SHIFT) | L1_RO)
        mem.write_u64((self.tss_l1 << PAGE_SHIFT) + 8 * v, (self.tss[v] << PAGE_SHIFT) | L1_RO)

    def set_guest_gdt_frames(self, mem: MachineMemory, v: int, mfns: list[int]) -> None:
        """Map the guest's GDT frames into pages 0-13 of vCPU v's GDT (read-only)."""
        for p in range(FIRST_RESERVED_GDT_PAGE):
            mfn = mfns[p] if p < len(mfns) else self.host.zero_mfn
            mem.write_u64((self.gdt_l1 << PAGE_SHIFT) + 8 * (v * 16 + p),
                          (mfn << PAGE_SHIFT) | L1_RO)

    def set_ldt(self, mem: MachineMemory, v: int, mfns: list[int]) -> tuple[int, bytes]:
        """Map vCPU v's LDT frames read-only at ldt_va(v); return (selector, descriptor)
        of the LDT descriptor to load (0 when there is no LDT)."""
        l1 = (self.tss_l1 << PAGE_SHIFT) + 8 * (LDT_FIRST_PAGE + v * LDT_PAGES)
        for p in range(LDT_PAGES):
            mem.write_u64(l1 + 8 * p, (mfns[p] << PAGE_SHIFT) | L1_RO if p < len(mfns) else 0)
        base = self.gdt_reserved[v] << PAGE_SHIFT
        if not mfns:
            mem.write(base + (SEL_LDT & 0xFF8), bytes(8))
            return 0, bytes(8)
        raw = desc.segment(self.ldt_va(v), len(mfns) * PAGE_SIZE - 1, LDT_TYPE, 0, s=False,
                           db=False, g=False)
        mem.write(base + (SEL_LDT & 0xFF8), raw)
        return SEL_LDT, raw

    @staticmethod
    def ldt_va(v: int) -> int:
        return TSS_VA + (LDT_FIRST_PAGE + v * LDT_PAGES) * PAGE_SIZE

    def set_ring1_stack(self, mem: MachineMemory, v: int, ss: int, esp: int) -> None:
        """TSS.ss1:esp1 — where the call gate switches the stack (the guest's stack_switch)."""
        base = self.tss[v] << PAGE_SHIFT
        struct.pack_into("<II", mem.buf, base + 12, esp & 0xFFFFFFFF, ss & 0xFFFF)

    def l2_entries(self) -> dict[int, int]:
        """Every hypervisor slot of an L3-slot-3 L2 table (absent slots are zero)."""
        entries = {s: 0 for s in range(FIRST_HV_L2_SLOT, 512)}
        entries.update(self.host.hv_l2_entries)
        entries[_slot(GDT_VA)] = (self.gdt_l1 << PAGE_SHIFT) | L2_HV_PROT
        entries[_slot(TSS_VA)] = (self.tss_l1 << PAGE_SHIFT) | L2_HV_PROT
        return entries

    def install(self, mem: MachineMemory, l2_mfn: int) -> None:
        """Fill the hypervisor slots of a guest's L3-slot-3 L2 (Xen: PGT_pae_xen_l2)."""
        base = l2_mfn << PAGE_SHIFT
        for slot, entry in self.l2_entries().items():
            mem.write_u64(base + 8 * slot, entry)

    @staticmethod
    def gdt_va(v: int) -> int:
        return GDT_VA + v * GDT_SIZE

    @staticmethod
    def tss_va(v: int) -> int:
        return TSS_VA + v * PAGE_SIZE
