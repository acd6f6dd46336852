"""Constants and struct layouts of xen/xen.h and xen/arch-x86/*.h.

Each constant is defined here once; names are those of the C header.  Struct
layouts are ctypes structures built per guest width (``Width.X86_32`` uses
4-byte ``unsigned long``, ``Width.X86_64`` 8-byte), cross-checked against the
real headers by tests/abi/test_probe.py.
"""
from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass
from functools import cache


class Width(enum.IntEnum):
    """Guest word size in bytes: selects the 32-bit (PAE) or 64-bit PV ABI."""
    X86_32 = 4
    X86_64 = 8


# --- hypercall numbers (xen.h) ---------------------------------------------------------------
HYPERCALLS: dict[int, str] = {
    0: "set_trap_table", 1: "mmu_update", 2: "set_gdt", 3: "stack_switch", 4: "set_callbacks",
    5: "fpu_taskswitch", 6: "sched_op_compat", 7: "platform_op", 8: "set_debugreg",
    9: "get_debugreg", 10: "update_descriptor", 12: "memory_op", 13: "multicall",
    14: "update_va_mapping", 15: "set_timer_op", 16: "event_channel_op_compat",
    17: "xen_version", 18: "console_io", 19: "physdev_op_compat", 20: "grant_table_op",
    21: "vm_assist", 22: "update_va_mapping_otherdomain", 23: "iret", 24: "vcpu_op",
    25: "set_segment_base", 26: "mmuext_op", 27: "xsm_op", 28: "nmi_op", 29: "sched_op",
    30: "callback_op", 31: "xenoprof_op", 32: "event_channel_op", 33: "physdev_op",
    34: "hvm_op", 35: "sysctl", 36: "domctl", 37: "kexec_op", 38: "tmem_op", 39: "argo_op",
    40: "xenpmu_op", 41: "dm_op", 42: "hypfs_op",
}
HYPERCALL_NR: dict[str, int] = {name: nr for nr, name in HYPERCALLS.items()}
NR_HYPERCALLS = 64          # slots of the dispatch table (Xen's NR_hypercalls)
HYPERCALL_PAGE_STUBS = 128  # 32-byte stubs in the hypercall page
HYPERCALL_STUB_SIZE = 32
HYPERCALL_VECTOR = 0x82     # int $0x82: the 32-bit PV hypercall gate (DPL 1)

# --- selectors (arch-x86/xen-x86_32.h, xen-x86_64.h) -----------------------------------------
FLAT_RING1_CS = 0xE019
FLAT_RING1_DS = 0xE021
FLAT_RING3_CS = 0xE02B
FLAT_RING3_DS = 0xE033
FLAT_RING3_CS32 = 0xE023
FLAT_RING3_CS64 = 0xE033
FLAT_RING3_DS32 = 0xE02B
FLAT_RING3_SS64 = 0xE02B
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_BYTE = FIRST_RESERVED_GDT_PAGE * 4096
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8

# --- virtual layout (arch-x86/xen-x86_32.h, xen-x86_64.h) ------------------------------------
HYPERVISOR_VIRT_START_PAE = 0xF5800000
MACH2PHYS_VIRT_START_PAE = 0xF5800000
MACH2PHYS_VIRT_END_PAE = 0xF6800000
HYPERVISOR_VIRT_START_X86_64 = 0xFFFF800000000000
HYPERVISOR_VIRT_END_X86_64 = 0xFFFF880000000000
MACH2PHYS_VIRT_START_X86_64 = 0xFFFF800000000000
MACH2PHYS_VIRT_END_X86_64 = 0xFFFF804000000000
INVALID_M2P_ENTRY = 0xFFFFFFFFFFFFFFFF

# --- page-table entry bits (Xen's _PAGE_*) ---------------------------------------------------
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_PWT = 0x008
_PAGE_PCD = 0x010
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_GLOBAL = 0x100
_PAGE_NX = 1 << 63

# --- start_info flags, shutdown, vm_assist, console_io, UVMF, MMU ops (xen.h, sched.h) ------
SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1
SIF_MULTIBOOT_MOD = 1 << 2
SIF_MOD_START_PFN = 1 << 3
SIF_VIRT_P2M_4TOOLS = 1 << 4

CONSOLEIO_write = 0
CONSOLEIO_read = 1

VMASST_CMD_enable = 0
VMASST_CMD_disable = 1
VMASST_TYPE_4gb_segments = 0
VMASST_TYPE_4gb_segments_notify = 1
VMASST_TYPE_writable_pagetables = 2
VMASST_TYPE_pae_extended_cr3 = 3
VMASST_TYPE_architectural_iopl = 4
VMASST_TYPE_runstate_update_flag = 5
VMASST_TYPE_m2p_strict = 32

UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_MULTI = 0
UVMF_LOCAL = 0
UVMF_ALL = 1 << 2

MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_PT_UPDATE_NO_TRANSLATE = 3

MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_CLEAR_PAGE = 16
MMUEXT_COPY_PAGE = 17
MMUEXT_FLUSH_CACHE_GLOBAL = 18
MMUEXT_MARK_SUPER = 19
MMUEXT_UNMARK_SUPER = 20

DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF

# trap_info.flags (arch-x86/xen.h): 0-1 privilege level, bit 2 = mask events on entry
TI_DPL_MASK = 3
TI_FLAG_IF = 4

# x86 exception vectors (Xen's TRAP_*)
TRAP_divide_error = 0
TRAP_debug = 1
TRAP_nmi = 2
TRAP_int3 = 3
TRAP_overflow = 4
TRAP_bounds = 5
TRAP_invalid_op = 6
TRAP_no_device = 7
TRAP_double_fault = 8
TRAP_invalid_tss = 10
TRAP_no_segment = 11
TRAP_stack_error = 12
TRAP_gp_fault = 13
TRAP_page_fault = 14
TRAP_copro_error = 16
TRAP_alignment_check = 17
TRAP_machine_check = 18
TRAP_simd_error = 19
#: vectors whose hardware delivery pushes an error code
TRAPS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17})

#: VGCF_in_syscall (xen-x86_64.h: iret from a syscall context leaves rcx/r11)
VGCF_in_syscall = 1 << 8

XEN_LEGACY_MAX_VCPUS = 32
MAX_GUEST_CMDLINE = 1024


# --- struct layouts ---------------------------------------------------------------------------
def _ulong(width: Width) -> type:
    return ctypes.c_uint32 if width == Width.X86_32 else ctypes.c_uint64


class VcpuTimeInfo(ctypes.LittleEndianStructure):
    """struct vcpu_time_info (same on both widths)."""
    _fields_ = [
        ("version", ctypes.c_uint32), ("pad0", ctypes.c_uint32),
        ("tsc_timestamp", ctypes.c_uint64), ("system_time", ctypes.c_uint64),
        ("tsc_to_system_mul", ctypes.c_uint32), ("tsc_shift", ctypes.c_int8),
        ("flags", ctypes.c_uint8), ("pad1", ctypes.c_uint8 * 2),
    ]


@dataclass(frozen=True)
class Layouts:
    """The width-dependent structures of one guest ABI."""
    width: Width
    ulong: type
    StartInfo: type
    ArchVcpuInfo: type
    VcpuInfo: type
    ArchSharedInfo: type
    SharedInfo: type
    TrapInfo: type


@cache
def layouts(width: Width) -> Layouts:
    """Build (once per width) the ctypes structures of xen.h for a guest of ``width``."""
    ul = _ulong(width)
    w32 = width == Width.X86_32

    class ConsoleDomU(ctypes.LittleEndianStructure):
        _fields_ = [("mfn", ul), ("evtchn", ctypes.c_uint32)]

    class ConsoleDom0(ctypes.LittleEndianStructure):
        _fields_ = [("info_off", ctypes.c_uint32), ("info_size", ctypes.c_uint32)]

    class Console(ctypes.Union):
        _fields_ = [("domU", ConsoleDomU), ("dom0", ConsoleDom0)]

    class StartInfo(ctypes.LittleEndianStructure):
        """struct start_info."""
        _fields_ = [
            ("magic", ctypes.c_char * 32), ("nr_pages", ul), ("shared_info", ul),
            ("flags", ctypes.c_uint32), ("store_mfn", ul), ("store_evtchn", ctypes.c_uint32),
            ("console", Console), ("pt_base", ul), ("nr_pt_frames", ul), ("mfn_list", ul),
            ("mod_start", ul), ("mod_len", ul), ("cmd_line", ctypes.c_char * MAX_GUEST_CMDLINE),
            ("first_p2m_pfn", ul), ("nr_p2m_frames", ul),
        ]

    class ArchVcpuInfo(ctypes.LittleEndianStructure):
        """struct arch_vcpu_info."""
        _fields_ = [("cr2", ul), ("pad", ul * (5 if w32 else 1))]

    class VcpuInfo(ctypes.LittleEndianStructure):
        """struct vcpu_info (64 bytes on both widths)."""
        _fields_ = [
            ("evtchn_upcall_pending", ctypes.c_uint8), ("evtchn_upcall_mask", ctypes.c_uint8),
            ("pad0", ctypes.c_uint8 * (2 if w32 else 6)), ("evtchn_pending_sel", ul),
            ("arch", ArchVcpuInfo), ("time", VcpuTimeInfo),
        ]

    arch_fields = [
        ("max_pfn", ul), ("pfn_to_mfn_frame_list_list", ul), ("nmi_reason", ul),
        ("p2m_cr3", ul), ("p2m_vaddr", ul), ("p2m_generation", ul),
    ]
    if w32:
        arch_fields.append(("wc_sec_hi", ctypes.c_uint32))

    class ArchSharedInfo(ctypes.LittleEndianStructure):
        """struct arch_shared_info."""
        _fields_ = arch_fields

    nbits = width * 8
    si_fields = [
        ("vcpu_info", VcpuInfo * XEN_LEGACY_MAX_VCPUS),
        ("evtchn_pending", ul * nbits), ("evtchn_mask", ul * nbits),
        ("wc_version", ctypes.c_uint32), ("wc_sec", ctypes.c_uint32), ("wc_nsec", ctypes.c_uint32),
    ]
    if not w32:
        si_fields.append(("wc_sec_hi", ctypes.c_uint32))
    si_fields.append(("arch", ArchSharedInfo))

    class SharedInfo(ctypes.LittleEndianStructure):
        """struct shared_info."""
        _fields_ = si_fields

    class TrapInfo(ctypes.LittleEndianStructure):
        """struct trap_info: one virtual IDT entry."""
        _fields_ = [("vector", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                    ("cs", ctypes.c_uint16), ("address", ul)]

    return Layouts(width, ul, StartInfo, ArchVcpuInfo, VcpuInfo, ArchSharedInfo, SharedInfo,
                   TrapInfo)
