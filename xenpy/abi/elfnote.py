"""Xen ELF note numbers: xen/include/public/elfnote.h.

A PV kernel tells the domain builder how to load it through notes of owner
"Xen" in a PT_NOTE segment (or, for pre-3.0.4 kernels, through a
``__xen_guest`` section string).  Each note's number and whether its payload
is a string or a number are fixed by the public header and by libelf's
``note_desc`` table (libelf-dominfo.c); both are mirrored here so that the
loader (``xenpy.toolstack.elf``) and anything that dumps notes agree.
"""

from types import MappingProxyType
from typing import Final, Mapping

XEN_ELFNOTE_INFO: Final = 0
XEN_ELFNOTE_ENTRY: Final = 1
XEN_ELFNOTE_HYPERCALL_PAGE: Final = 2
XEN_ELFNOTE_VIRT_BASE: Final = 3
XEN_ELFNOTE_PADDR_OFFSET: Final = 4
XEN_ELFNOTE_XEN_VERSION: Final = 5
XEN_ELFNOTE_GUEST_OS: Final = 6
XEN_ELFNOTE_GUEST_VERSION: Final = 7
XEN_ELFNOTE_LOADER: Final = 8
XEN_ELFNOTE_PAE_MODE: Final = 9
XEN_ELFNOTE_FEATURES: Final = 10
XEN_ELFNOTE_BSD_SYMTAB: Final = 11
XEN_ELFNOTE_HV_START_LOW: Final = 12
XEN_ELFNOTE_L1_MFN_VALID: Final = 13
XEN_ELFNOTE_SUSPEND_CANCEL: Final = 14
XEN_ELFNOTE_INIT_P2M: Final = 15
XEN_ELFNOTE_MOD_START_PFN: Final = 16
XEN_ELFNOTE_SUPPORTED_FEATURES: Final = 17
XEN_ELFNOTE_PHYS32_ENTRY: Final = 18
XEN_ELFNOTE_MAX: Final = XEN_ELFNOTE_PHYS32_ENTRY

# Notes found in Xen crash dumps (not in kernels); named for completeness.
XEN_ELFNOTE_CRASH_INFO: Final = 0x1000001
XEN_ELFNOTE_CRASH_REGS: Final = 0x1000002
XEN_ELFNOTE_DUMPCORE_NONE: Final = 0x2000000
XEN_ELFNOTE_DUMPCORE_HEADER: Final = 0x2000001
XEN_ELFNOTE_DUMPCORE_XEN_VERSION: Final = 0x2000002
XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION: Final = 0x2000003

#: Owner name of every note this module describes.
XEN_ELFNOTE_OWNER: Final = b"Xen"

#: libelf's ``note_desc``: note number -> (name, payload is a string).  A note
#: whose number is missing here is unknown to libelf and ignored by it.
XEN_ELFNOTE_DESC: Final[Mapping[int, tuple[str, bool]]] = MappingProxyType({
    XEN_ELFNOTE_ENTRY: ("ENTRY", False),
    XEN_ELFNOTE_HYPERCALL_PAGE: ("HYPERCALL_PAGE", False),
    XEN_ELFNOTE_VIRT_BASE: ("VIRT_BASE", False),
    XEN_ELFNOTE_INIT_P2M: ("INIT_P2M", False),
    XEN_ELFNOTE_PADDR_OFFSET: ("PADDR_OFFSET", False),
    XEN_ELFNOTE_HV_START_LOW: ("HV_START_LOW", False),
    XEN_ELFNOTE_XEN_VERSION: ("XEN_VERSION", True),
    XEN_ELFNOTE_GUEST_OS: ("GUEST_OS", True),
    XEN_ELFNOTE_GUEST_VERSION: ("GUEST_VERSION", True),
    XEN_ELFNOTE_LOADER: ("LOADER", True),
    XEN_ELFNOTE_PAE_MODE: ("PAE_MODE", True),
    XEN_ELFNOTE_FEATURES: ("FEATURES", True),
    XEN_ELFNOTE_SUPPORTED_FEATURES: ("SUPPORTED_FEATURES", False),
    XEN_ELFNOTE_BSD_SYMTAB: ("BSD_SYMTAB", True),
    XEN_ELFNOTE_L1_MFN_VALID: ("L1_MFN_VALID", False),
    XEN_ELFNOTE_SUSPEND_CANCEL: ("SUSPEND_CANCEL", False),
    XEN_ELFNOTE_MOD_START_PFN: ("MOD_START_PFN", False),
    XEN_ELFNOTE_PHYS32_ENTRY: ("PHYS32_ENTRY", False),
})

#: libelf's ``elf_xen_feature_names``: the feature names a FEATURES note may
#: use, by XENFEAT_* bit number (xen/include/public/features.h).  libelf knows
#: only these; an unknown name is ignored unless it is required ("!name").
XEN_ELF_FEATURE_NAMES: Final[Mapping[int, str]] = MappingProxyType({
    0: "writable_page_tables",
    1: "writable_descriptor_tables",
    2: "auto_translated_physmap",
    3: "supervisor_mode_kernel",
    4: "pae_pgdir_above_4gb",
    8: "hvm_callback_vector",
    11: "dom0",
})
