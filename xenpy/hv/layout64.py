"""The hypervisor's part of every 64-bit PV guest address space.

Xen owns L4 slots 256-271 (0xFFFF800000000000-0xFFFF87FFFFFFFFFF) of every 64-bit PV
guest; the guest can neither map nor change them.  We use:

* slot 256: the read-only M2P (8-byte entries) at MACH2PHYS_VIRT_START, as Xen;
* slot 257: per domain, the firmware page (the boot iretq) and each vCPU's 64 KiB GDT
  (pages 0-13 the guest's frames, 14-15 Xen's reserved entries).

The guest kernel runs at CPL 3, so everything it must read carries _PAGE_USER; nothing
here is writable.  Xen's flat selectors for 64-bit PV guests live in the reserved
GDT page: FLAT_RING3_CS32 0xe023, FLAT_RING3_DS32/SS 0xe02b, FLAT_RING3_CS64 0xe033.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..abi.xen import (FIRST_RESERVED_GDT_PAGE, FLAT_RING3_CS32, FLAT_RING3_CS64,
                       FLAT_RING3_DS32, PAGE_SHIFT, PAGE_SIZE, XEN_LEGACY_MAX_VCPUS,
                       _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, Width)
from . import descriptor as desc
from .firmware import Firmware, build_firmware
from .machine import MachineMemory

FIRST_XEN_L4_SLOT = 256
LAST_XEN_L4_SLOT = 271
HV_SLOT = 257
HV_VA = 0xFFFF000000000000 | (HV_SLOT << 39)          # 0xFFFF808000000000
FIRMWARE_VA = HV_VA
GDT_VA = HV_VA + 0x10000                               # L1 index 16 onwards
GDT_SIZE = 16 * PAGE_SIZE
SEL_RING0_CS64 = 0xE008
SEL_RING0_DS = 0xE010
SEL_LDT64 = 0xE040                 # 16-byte system descriptor (0xe040-0xe04f)
LDT_PAGES = 16
LDT_VA = HV_VA + 0x200000          # its own L1 under L2 slot 1 (the GDTs fill the first)
UPPER = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER
L1_RO_USER = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_USER


@dataclass
class HostLayout64:
    firmware: Firmware
    zero_mfn: int
    m2p_l3: int

    @classmethod
    def create(cls, mem: MachineMemory) -> "HostLayout64":
        fw = build_firmware("pv64", Width.X86_64, (("supervisor", FIRMWARE_VA),))
        zero, l3, l2 = mem.alloc_xen_frames(3)
        m2p = mem.m2p64
        l1s = mem.alloc_xen_frames((len(m2p) + 511) // 512)
        if len(l1s) > 512:
            raise ValueError("host memory too large for one M2P L2")
        mem.write_u64(l3 << PAGE_SHIFT, (l2 << PAGE_SHIFT) | UPPER)
        for i, l1 in enumerate(l1s):
            mem.write_u64((l2 << PAGE_SHIFT) + 8 * i, (l1 << PAGE_SHIFT) | UPPER)
            for j, mfn in enumerate(m2p[i * 512:(i + 1) * 512]):
                mem.write_u64((l1 << PAGE_SHIFT) + 8 * j, (mfn << PAGE_SHIFT) | L1_RO_USER)
        return cls(fw, zero, l3)


@dataclass
class DomainLayout64:
    host: HostLayout64
    l3: int
    l1: int
    frames: list[int]
    gdt_reserved: list[int]
    fw_mfn: int
    ldt_l1: int

    @classmethod
    def create(cls, mem: MachineMemory, host: HostLayout64, nr_vcpus: int) -> "DomainLayout64":
        if not 1 <= nr_vcpus <= min(XEN_LEGACY_MAX_VCPUS, 31):
            raise ValueError(f"vcpus: expected 1..31, got {nr_vcpus}")
        l3, l2, l1, fw, ldt_l1 = mem.alloc_xen_frames(5)
        reserved = mem.alloc_xen_frames(nr_vcpus)
        mem.write_u64(l3 << PAGE_SHIFT, (l2 << PAGE_SHIFT) | UPPER)
        mem.write_u64(l2 << PAGE_SHIFT, (l1 << PAGE_SHIFT) | UPPER)
        mem.write_u64((l2 << PAGE_SHIFT) + 8, (ldt_l1 << PAGE_SHIFT) | UPPER)
        mem.write(fw << PAGE_SHIFT, bytes(host.firmware.pages["supervisor"]))
        mem.write_u64(l1 << PAGE_SHIFT, (fw << PAGE_SHIFT) | L1_RO_USER)
        self = cls(host, l3, l1, [l3, l2, l1, fw, ldt_l1, *reserved], reserved, fw, ldt_l1)
        for v in range(nr_vcpus):
            base = reserved[v] << PAGE_SHIFT
            entries = {
                SEL_RING0_CS64: desc.segment(0, 0xFFFFF, desc.CODE_RX, 0, db=False, long=True),
                SEL_RING0_DS: desc.segment(0, 0xFFFFF, desc.DATA_RW, 0),
                FLAT_RING3_CS32: desc.segment(0, 0xFFFFF, desc.CODE_RX, 3),
                FLAT_RING3_DS32: desc.segment(0, 0xFFFFF, desc.DATA_RW, 3),
                FLAT_RING3_CS64: desc.segment(0, 0xFFFFF, desc.CODE_RX, 3, db=False, long=True),
            }
            for sel, raw in entries.items():
                mem.write(base + (sel & 0xFF8), raw)
            self.set_guest_gdt_frames(mem, v, [])
        return self

    def _gdt_slot(self, v: int, page: int) -> int:
        return (self.l1 << PAGE_SHIFT) + 8 * (((GDT_VA - HV_VA) >> PAGE_SHIFT) + v * 16 + page)

    def set_guest_gdt_frames(self, mem: MachineMemory, v: int, mfns: list[int]) -> None:
        for p in range(16):
            if p == FIRST_RESERVED_GDT_PAGE:
                mfn = self.gdt_reserved[v]
            elif p < FIRST_RESERVED_GDT_PAGE and p < len(mfns):
                mfn = mfns[p]
            else:
                mfn = self.host.zero_mfn
            mem.write_u64(self._gdt_slot(v, p), (mfn << PAGE_SHIFT) | L1_RO_USER)

    def set_ldt(self, mem: MachineMemory, v: int, mfns: list[int]) -> tuple[int, bytes]:
        """Map vCPU v's LDT frames read-only at ldt_va(v); return (selector, 16-byte LDT
        descriptor) to load (0 when there is no LDT)."""
        first = v * LDT_PAGES
        for p in range(LDT_PAGES):
            mem.write_u64((self.ldt_l1 << PAGE_SHIFT) + 8 * (first + p),
                          (mfns[p] << PAGE_SHIFT) | L1_RO_USER if p < len(mfns) else 0)
        base = self.gdt_reserved[v] << PAGE_SHIFT
        if not mfns:
            mem.write(base + (SEL_LDT64 & 0xFF8), bytes(16))
            return 0, bytes(16)
        va = self.ldt_va(v)
        raw = desc.segment(va & 0xFFFFFFFF, len(mfns) * PAGE_SIZE - 1, 0x2, 0, s=False,
                           db=False, g=False) + (va >> 32).to_bytes(8, "little")
        mem.write(base + (SEL_LDT64 & 0xFF8), raw)
        return SEL_LDT64, raw

    @staticmethod
    def ldt_va(v: int) -> int:
        return LDT_VA + v * LDT_PAGES * PAGE_SIZE

    def l4_entries(self) -> dict[int, int]:
        entries = {s: 0 for s in range(FIRST_XEN_L4_SLOT, LAST_XEN_L4_SLOT + 1)}
        entries[FIRST_XEN_L4_SLOT] = (self.host.m2p_l3 << PAGE_SHIFT) | UPPER
        entries[HV_SLOT] = (self.l3 << PAGE_SHIFT) | UPPER
        return entries

    def install(self, mem: MachineMemory, l4_mfn: int) -> None:
        """init_xen_l4_slots: fill Xen's slots of a guest L4."""
        base = l4_mfn << PAGE_SHIFT
        for slot, entry in self.l4_entries().items():
            mem.write_u64(base + 8 * slot, entry)

    @staticmethod
    def gdt_va(v: int) -> int:
        return GDT_VA + v * GDT_SIZE

    def set_ring1_stack(self, mem: MachineMemory, v: int, ss: int, sp: int) -> None:
        """No-op: a 64-bit PV kernel's stack switch is done by the hypervisor, not a TSS."""
