"""The Xen PV kernel loader's parsing half: libelf and xg_dom_elfloader.c.

A PV kernel is an ordinary x86 ELF executable plus a description of how Xen
must load it.  This module turns the file's bytes into a `XenElfImage` the
domain builder can lay out without looking at ELF again, applying the same
rules, defaults and rejections as Xen's libelf (libelf-dominfo.c,
libelf-loader.c) and libxenguest's ELF loader (xg_dom_elfloader.c):

* The description comes from notes of owner "Xen" in PT_NOTE segments; if
  there are none, from SHT_NOTE sections; if still none, from the legacy
  ``__xen_guest`` section string.  Without any of them the file is not a Xen
  kernel.  Notes are 4-byte aligned for ELF32 and ELF64 alike; a string note
  is NUL-terminated, a numeric note is 1, 2, 4 or 8 little-endian bytes.
* The kernel occupies the *physical* extent of its loadable segments
  (PT_LOAD with any of R/W/X set), shifted by ``virt_base - paddr_offset``.
  libelf places each segment at ``paddr + virt_offset``, not at ``p_vaddr``;
  `XenElfImage.load_address` does that sum for the builder.
* Defaults: ``virt_base`` 0; ``paddr_offset`` 0 for notes but ``virt_base``
  for a legacy ``__xen_guest`` image (old kernels linked with paddr ==
  vaddr); ``entry`` is ``e_entry``.  A legacy ``HYPERCALL_PAGE`` is a page
  number relative to ``virt_base``, a note's is an address.
* Rejections follow ``elf_xen_note_check`` and ``elf_xen_addr_calc_check``:
  neither LOADER "generic" nor GUEST_OS "linux"; XEN_VERSION not "xen-3.0";
  PADDR_OFFSET without VIRT_BASE; entry outside the image; VIRT_BASE above the
  image; INIT_P2M inside it; an unknown *required* feature; a kernel that
  requires ``dom0`` (xenpy builds domUs only).  xenpy adds a few checks libelf
  leaves to luck: every header, segment and note lies inside the file, the
  hypercall page lies inside the image, a PAE_MODE note does not contradict
  the ELF class, and addresses do not wrap.

Parsing is total: any byte string either yields an image or raises
`ElfError` naming the offending field; no other exception escapes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from xenpy.abi import elfnote as en
from xenpy.errors import ElfError

# --- ELF constants (System V gABI; not part of Xen's public headers) -------
_ELFMAG = b"\x7fELF"
_ELFCLASS32 = 1
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_EV_CURRENT = 1
EM_386 = 3
EM_X86_64 = 62
_PT_LOAD = 1
_PT_NOTE = 4
_PF_X, _PF_W, _PF_R = 1, 2, 4
_SHT_SYMTAB = 2
_SHT_STRTAB = 3
_SHT_NOTE = 7
_SHT_NOBITS = 8
_SHN_UNDEF = 0
_STT_SECTION = 3
_STT_FILE = 4
_STB_LOCAL = 0

# libelf-private.h limits.
_ELF_MAX_STRING_LENGTH = 4096
_ELF_MAX_TOTAL_NOTE_COUNT = 65536

_XEN_VERSION = "xen-3.0"
_PAGE_SHIFT = 12

# libelf's parms->pae values.
_PAE_NO, _PAE_YES, _PAE_EXTCR3, _PAE_BIMODAL = 0, 1, 2, 3

_NHDR = struct.Struct("<III")


@dataclass(frozen=True)
class _Layout:
    """Struct formats of one ELF class, so the parser is written once."""

    bits: int
    ehdr: struct.Struct          # everything after e_ident
    phdr: struct.Struct
    shdr: struct.Struct
    sym: struct.Struct


_LAYOUT32 = _Layout(
    bits=32,
    # e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize
    # e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
    ehdr=struct.Struct("<HHIIIIIHHHHHH"),
    # p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
    phdr=struct.Struct("<IIIIIIII"),
    # sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info
    # sh_addralign sh_entsize
    shdr=struct.Struct("<IIIIIIIIII"),
    # st_name st_value st_size st_info st_other st_shndx
    sym=struct.Struct("<IIIBBH"),
)
_LAYOUT64 = _Layout(
    bits=64,
    ehdr=struct.Struct("<HHIQQQIHHHHHH"),
    # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
    phdr=struct.Struct("<IIQQQQQQ"),
    shdr=struct.Struct("<IIQQQQIIQQ"),
    # st_name st_info st_other st_shndx st_value st_size
    sym=struct.Struct("<IBBHQQ"),
)
_EI_NIDENT = 16


@dataclass(frozen=True)
class ElfSegment:
    """One loadable PT_LOAD program header and its file bytes.

    ``data`` holds the ``filesz`` bytes from the file; the remaining
    ``memsz - filesz`` bytes are zero.  Place it with
    `XenElfImage.load_address`, which is what libelf uses (``paddr``-based).
    """

    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    data: bytes


@dataclass(frozen=True)
class XenElfImage:
    """What the domain builder needs from a Xen PV kernel (struct elf_dom_parms)."""

    elf_class: int
    machine: int
    guest_type: str
    entry: int
    virt_base: int
    paddr_offset: int
    virt_kstart: int
    virt_kend: int
    hypercall_page: int | None
    pae_mode: str | None
    features_supported: frozenset[str]
    features_required: frozenset[str]
    notes: Mapping[int, int | str | bytes]
    segments: tuple[ElfSegment, ...]
    symbols: Mapping[str, int]

    @property
    def virt_offset(self) -> int:
        """Add to a physical ELF address to get its guest virtual address."""
        return (self.virt_base - self.paddr_offset) % (1 << 64)

    def load_address(self, segment: ElfSegment) -> int:
        """Guest virtual address of `segment`'s first byte, as libelf places it."""
        return (segment.paddr + self.virt_offset) % (1 << 64)


# --------------------------------------------------------------------------
# Low-level readers


def _need(data: bytes, offset: int, size: int, what: str) -> None:
    """Raise unless ``data[offset:offset+size]`` lies entirely inside the file."""
    if offset < 0 or size < 0 or offset + size > len(data):
        raise ElfError(
            f"{what}: expected bytes {offset:#x}..{offset + size:#x} inside the "
            f"file, but the file is only {len(data):#x} bytes long"
        )


@dataclass(frozen=True)
class _Ehdr:
    layout: _Layout
    machine: int
    entry: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True)
class _Phdr:
    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class _Shdr:
    index: int
    name: int
    type: int
    offset: int
    size: int
    link: int


def _parse_ehdr(data: bytes) -> _Ehdr:
    if len(data) < _EI_NIDENT and _ELFMAG.startswith(data[:4]):
        raise ElfError(f"e_ident: truncated: the file is {len(data)} bytes, "
                       f"an ELF identification needs {_EI_NIDENT}")
    if data[:4] != _ELFMAG:
        raise ElfError(
            f"e_ident magic: expected {_ELFMAG!r}, found {bytes(data[:4])!r}: "
            "not an ELF file"
        )
    ei_class, ei_data, ei_version = data[4], data[5], data[6]
    if ei_class == _ELFCLASS32:
        layout = _LAYOUT32
    elif ei_class == _ELFCLASS64:
        layout = _LAYOUT64
    else:
        raise ElfError(
            f"e_ident[EI_CLASS]: expected 1 (ELFCLASS32) or 2 (ELFCLASS64), "
            f"found {ei_class}"
        )
    if ei_data != _ELFDATA2LSB:
        raise ElfError(
            f"e_ident[EI_DATA]: expected 1 (ELFDATA2LSB, little-endian x86), "
            f"found {ei_data}"
        )
    if ei_version != _EV_CURRENT:
        raise ElfError(f"e_ident[EI_VERSION]: expected 1 (EV_CURRENT), found {ei_version}")
    _need(data, _EI_NIDENT, layout.ehdr.size, "ELF header")
    (_type, machine, version, entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, shstrndx) = layout.ehdr.unpack_from(data, _EI_NIDENT)
    if version != _EV_CURRENT:
        raise ElfError(f"e_version: expected 1 (EV_CURRENT), found {version}")
    if machine not in (EM_386, EM_X86_64):
        raise ElfError(
            f"e_machine: expected {EM_386} (EM_386) or {EM_X86_64} (EM_X86_64), "
            f"found {machine}"
        )
    expected_machine = EM_386 if layout.bits == 32 else EM_X86_64
    if machine != expected_machine:
        raise ElfError(
            f"e_machine: ELFCLASS{layout.bits} requires {expected_machine}, "
            f"found {machine}"
        )
    if phnum == 0:
        raise ElfError("e_phnum: expected at least one program header, found 0")
    if phentsize != layout.phdr.size:
        raise ElfError(
            f"e_phentsize: expected {layout.phdr.size} for ELFCLASS{layout.bits}, "
            f"found {phentsize}"
        )
    _need(data, phoff, phentsize * phnum, "program header table (e_phoff, e_phnum)")
    if shnum != 0 and shentsize != layout.shdr.size:
        raise ElfError(
            f"e_shentsize: expected {layout.shdr.size} for "
            f"ELFCLASS{layout.bits}, found {shentsize}"
        )
    # libelf's elf_init checks e_shoff even when there are no sections.
    _need(data, shoff, shentsize * shnum, "section header table (e_shoff, e_shnum)")
    return _Ehdr(layout, machine, entry, phoff, shoff, phentsize, phnum,
                 shentsize, shnum, shstrndx)


def _parse_phdrs(data: bytes, eh: _Ehdr) -> list[_Phdr]:
    out = []
    for i in range(eh.phnum):
        fields = eh.layout.phdr.unpack_from(data, eh.phoff + i * eh.phentsize)
        if eh.layout.bits == 32:
            p_type, off, vaddr, paddr, filesz, memsz, flags, _align = fields
        else:
            p_type, flags, off, vaddr, paddr, filesz, memsz, _align = fields
        out.append(_Phdr(i, p_type, flags, off, vaddr, paddr, filesz, memsz))
    return out


def _parse_shdrs(data: bytes, eh: _Ehdr) -> list[_Shdr]:
    out = []
    for i in range(eh.shnum):
        (name, sh_type, _flags, _addr, off, size, link, _info, _align,
         _entsize) = eh.layout.shdr.unpack_from(data, eh.shoff + i * eh.shentsize)
        out.append(_Shdr(i, name, sh_type, off, size, link))
    return out


def _section_bytes(data: bytes, sh: _Shdr, what: str) -> bytes:
    if sh.type == _SHT_NOBITS:
        return b""
    _need(data, sh.offset, sh.size, f"{what} (section {sh.index}: sh_offset, sh_size)")
    return data[sh.offset:sh.offset + sh.size]


def _cstring(table: bytes, offset: int, what: str) -> str:
    """NUL-terminated string at `offset` of a string table."""
    if offset >= len(table) and offset != 0:
        raise ElfError(f"{what}: name offset {offset:#x} outside its string table "
                       f"of {len(table):#x} bytes")
    end = table.find(b"\0", offset)
    if end < 0:
        raise ElfError(f"{what}: name at {offset:#x} is not NUL-terminated")
    return table[offset:end].decode("latin-1")


def _section_name(data: bytes, eh: _Ehdr, shdrs: list[_Shdr], sh: _Shdr) -> str | None:
    if eh.shstrndx == _SHN_UNDEF or eh.shstrndx >= len(shdrs):
        return None
    strtab = _section_bytes(data, shdrs[eh.shstrndx], "section name table (e_shstrndx)")
    if sh.name >= len(strtab):
        return None
    end = strtab.find(b"\0", sh.name)
    if end < 0:
        return None
    return strtab[sh.name:end].decode("latin-1")


# --------------------------------------------------------------------------
# Notes


@dataclass
class _Parms:
    """Mutable scratch mirroring libelf's struct elf_dom_parms while parsing."""

    virt_base: int | None = None
    entry: int | None = None
    hypercall: int | None = None
    p2m_base: int | None = None
    paddr_offset: int | None = None
    loader: str = ""
    guest_os: str = ""
    xen_ver: str = ""
    pae: int = _PAE_NO
    pae_mode: str | None = None
    bsd_symtab: bool = False
    supported: int = 0
    required: int = 0
    legacy: bool = False


def _note_number(desc: bytes, name: str) -> int:
    if len(desc) not in (1, 2, 4, 8):
        raise ElfError(
            f"Xen note {name}: expected a 1, 2, 4 or 8 byte number, "
            f"found {len(desc)} bytes"
        )
    return int.from_bytes(desc, "little")


def _note_string(desc: bytes, name: str) -> str:
    end = desc.find(b"\0")
    if end < 0:
        raise ElfError(f"Xen note {name}: expected a NUL-terminated string, "
                       f"found {len(desc)} bytes without NUL")
    if end > _ELF_MAX_STRING_LENGTH:
        raise ElfError(f"Xen note {name}: string longer than "
                       f"{_ELF_MAX_STRING_LENGTH} bytes ({end})")
    return desc[:end].decode("latin-1")


def _parse_features(text: str, parms: _Parms, field: str) -> None:
    """elf_xen_parse_features: '|'-separated names, '!' marks a required one."""
    by_name = {name: bit for bit, name in en.XEN_ELF_FEATURE_NAMES.items()}
    for item in text.split("|"):
        if not item:
            continue
        required = item.startswith("!")
        name = item[1:] if required else item
        bit = by_name.get(name)
        if bit is None:
            if required:
                raise ElfError(
                    f"{field}: the kernel requires feature {name!r}, which Xen "
                    f"does not know (known: {', '.join(sorted(by_name))})"
                )
            continue                      # libelf ignores unknown optional ones
        parms.supported |= 1 << bit
        if required:
            parms.required |= 1 << bit


def _apply_note(parms: _Parms, notes: dict[int, int | str | bytes],
                n_type: int, desc: bytes) -> None:
    """elf_xen_parse_note: record one Xen note and its effect on parms."""
    entry = en.XEN_ELFNOTE_DESC.get(n_type)
    if entry is None:
        notes[n_type] = desc              # unknown to libelf: kept, no effect
        return
    name, is_str = entry
    if is_str:
        s = _note_string(desc, name)
        notes[n_type] = s
        if n_type == en.XEN_ELFNOTE_LOADER:
            parms.loader = s
        elif n_type == en.XEN_ELFNOTE_GUEST_OS:
            parms.guest_os = s
        elif n_type == en.XEN_ELFNOTE_XEN_VERSION:
            parms.xen_ver = s
        elif n_type == en.XEN_ELFNOTE_PAE_MODE:
            parms.pae_mode = s
            if s == "yes":
                parms.pae = _PAE_EXTCR3
            if "bimodal" in s:
                parms.pae = _PAE_BIMODAL
        elif n_type == en.XEN_ELFNOTE_BSD_SYMTAB:
            if s == "yes":
                parms.bsd_symtab = True
        elif n_type == en.XEN_ELFNOTE_FEATURES:
            _parse_features(s, parms, "Xen note FEATURES")
        return
    if n_type == en.XEN_ELFNOTE_L1_MFN_VALID and len(desc) not in (1, 2, 4, 8):
        notes[n_type] = desc              # Linux emits (mask, value) pairs
        return
    if n_type == en.XEN_ELFNOTE_SUPPORTED_FEATURES:
        if len(desc) % 4:
            raise ElfError(f"Xen note SUPPORTED_FEATURES: expected a multiple of "
                           f"4 bytes, found {len(desc)}")
        # XENFEAT_NR_SUBMAPS is 1: only the first 32-bit word is a known map.
        word = int.from_bytes(desc[:4], "little") if desc else 0
        parms.supported |= word
        notes[n_type] = int.from_bytes(desc, "little") if len(desc) in (4, 8) else desc
        return
    value = _note_number(desc, name)
    notes[n_type] = value
    if n_type == en.XEN_ELFNOTE_VIRT_BASE:
        parms.virt_base = value
    elif n_type == en.XEN_ELFNOTE_ENTRY:
        parms.entry = value
    elif n_type == en.XEN_ELFNOTE_INIT_P2M:
        parms.p2m_base = value
    elif n_type == en.XEN_ELFNOTE_PADDR_OFFSET:
        parms.paddr_offset = value
    elif n_type == en.XEN_ELFNOTE_HYPERCALL_PAGE:
        parms.hypercall = value


def _parse_notes(data: bytes, start: int, size: int, where: str,
                 parms: _Parms, notes: dict[int, int | str | bytes],
                 count: list[int]) -> int:
    """Walk one note area (elf_xen_parse_notes); return how many Xen notes it had."""
    _need(data, start, size, f"{where}: note area")
    end = start + size
    pos = start
    found = 0
    while pos < end:
        if end - pos < _NHDR.size:
            if any(data[pos:end]):
                raise ElfError(f"{where}: truncated note header at file offset "
                               f"{pos:#x} ({end - pos} bytes left, need 12)")
            break                         # zero padding after the last note
        count[0] += 1
        if count[0] > _ELF_MAX_TOTAL_NOTE_COUNT:
            raise ElfError(f"{where}: more than {_ELF_MAX_TOTAL_NOTE_COUNT} ELF notes")
        namesz, descsz, n_type = _NHDR.unpack_from(data, pos)
        name_off = pos + _NHDR.size
        desc_off = name_off + ((namesz + 3) & ~3)
        nxt = desc_off + ((descsz + 3) & ~3)
        if desc_off + descsz > end or name_off + namesz > end:
            raise ElfError(
                f"{where}: note at file offset {pos:#x} (namesz {namesz}, "
                f"descsz {descsz}) runs past the end of its area at {end:#x}"
            )
        owner = data[name_off:name_off + namesz].split(b"\0", 1)[0]
        if owner == en.XEN_ELFNOTE_OWNER:
            _apply_note(parms, notes, n_type, data[desc_off:desc_off + descsz])
            found += 1
        pos = nxt
    return found


# --------------------------------------------------------------------------
# The legacy __xen_guest string


def _strtoull(text: str, key: str) -> int:
    """A C integer literal as strtoull(s, NULL, 0) reads it, but whole or error."""
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            value = int(t[2:], 16)
        elif len(t) > 1 and t.startswith("0"):
            value = int(t[1:], 8)
        else:
            value = int(t, 10)
    except ValueError:
        raise ElfError(f"__xen_guest {key}: expected a C integer "
                       f"(decimal, 0x hex or 0 octal), found {text!r}") from None
    if value < 0 or value >= 1 << 64:
        raise ElfError(f"__xen_guest {key}: {text!r} does not fit in 64 bits")
    return value


def _parse_guest_info(text: str, parms: _Parms) -> None:
    """elf_xen_parse_guest_info: "NAME=VALUE,NAME=VALUE,..." """
    for item in text.split(","):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if len(name) > 31 or len(value) > 127:
            raise ElfError(f"__xen_guest: item {item[:40]!r}... exceeds libelf's "
                           "31-byte name / 127-byte value limits")
        if name == "LOADER":
            parms.loader = value
        elif name == "GUEST_OS":
            parms.guest_os = value
        elif name == "XEN_VER":
            parms.xen_ver = value
        elif name == "PAE":
            parms.pae_mode = value
            if value == "yes[extended-cr3]":
                parms.pae = _PAE_EXTCR3
            elif value.startswith("yes"):
                parms.pae = _PAE_YES
        elif name == "BSD_SYMTAB":
            parms.bsd_symtab = True
        elif name == "VIRT_BASE":
            parms.virt_base = _strtoull(value, name)
        elif name == "VIRT_ENTRY":
            parms.entry = _strtoull(value, name)
        elif name == "ELF_PADDR_OFFSET":
            parms.paddr_offset = _strtoull(value, name)
        elif name == "HYPERCALL_PAGE":
            parms.hypercall = (_strtoull(value, name) << _PAGE_SHIFT) % (1 << 64)
        elif name == "FEATURES":
            _parse_features(value, parms, "__xen_guest FEATURES")
    if parms.virt_base is not None and parms.hypercall is not None:
        parms.hypercall = (parms.hypercall + parms.virt_base) % (1 << 64)


# --------------------------------------------------------------------------
# Symbols


def _parse_symbols(data: bytes, eh: _Ehdr, shdrs: list[_Shdr]) -> dict[str, int]:
    """Defined symbols of .symtab (first SHT_SYMTAB); globals win over locals."""
    for sh in shdrs[1:]:
        if sh.type != _SHT_SYMTAB:
            continue
        if sh.link == _SHN_UNDEF or sh.link >= len(shdrs):
            raise ElfError(f"symbol table (section {sh.index}): sh_link {sh.link} "
                           f"does not name a section (there are {len(shdrs)})")
        strsh = shdrs[sh.link]
        if strsh.type != _SHT_STRTAB:
            raise ElfError(f"symbol table (section {sh.index}): sh_link {sh.link} "
                           f"is section type {strsh.type}, expected SHT_STRTAB (3)")
        table = _section_bytes(data, sh, "symbol table")
        strtab = _section_bytes(data, strsh, "symbol string table")
        fmt = eh.layout.sym
        symbols: dict[str, int] = {}
        is_global: dict[str, bool] = {}
        for i in range(len(table) // fmt.size):
            fields = fmt.unpack_from(table, i * fmt.size)
            if eh.layout.bits == 32:
                st_name, value, _size, info, _other, shndx = fields
            else:
                st_name, info, _other, shndx, value, _size = fields
            if st_name == 0 or shndx == _SHN_UNDEF:
                continue
            if (info & 0xF) in (_STT_SECTION, _STT_FILE):
                continue
            name = _cstring(strtab, st_name, f"symbol {i}")
            glob = (info >> 4) != _STB_LOCAL
            if name not in symbols or (glob and not is_global[name]):
                symbols[name] = value
                is_global[name] = glob
        return symbols
    return {}


# --------------------------------------------------------------------------
# Putting it together (elf_xen_parse)


def _guest_type(machine: int, pae: int) -> str:
    """xc_dom_guest_type, for a hypervisor whose caps include x86_32p."""
    if machine == EM_X86_64:
        return "xen-3.0-x86_64"
    if pae in (_PAE_YES, _PAE_EXTCR3, _PAE_BIMODAL):
        return "xen-3.0-x86_32p"
    return "xen-3.0-x86_32"


def parse_xen_elf(data: bytes) -> XenElfImage:
    """Parse and check a Xen PV kernel image; raise `ElfError` on anything bad."""
    data = bytes(data)
    eh = _parse_ehdr(data)
    phdrs = _parse_phdrs(data, eh)
    shdrs = _parse_shdrs(data, eh)
    mask = (1 << eh.layout.bits) - 1
    if eh.entry > mask:
        raise ElfError(f"e_entry: {eh.entry:#x} exceeds the {eh.layout.bits}-bit address space")

    # Loadable segments and the physical extent (elf_parse_binary).
    segments: list[ElfSegment] = []
    pstart, pend = None, 0
    for ph in phdrs:
        if ph.type != _PT_LOAD or not ph.flags & (_PF_R | _PF_W | _PF_X):
            continue
        what = f"program header {ph.index} (PT_LOAD)"
        if ph.filesz > ph.memsz:
            raise ElfError(f"{what}: p_filesz {ph.filesz:#x} exceeds p_memsz {ph.memsz:#x}")
        _need(data, ph.offset, ph.filesz, f"{what}: p_offset, p_filesz")
        for field, addr in (("p_vaddr", ph.vaddr), ("p_paddr", ph.paddr)):
            if addr + ph.memsz > mask + 1:
                raise ElfError(
                    f"{what}: {field} {addr:#x} + p_memsz {ph.memsz:#x} wraps past "
                    f"the end of the {eh.layout.bits}-bit address space"
                )
        segments.append(ElfSegment(ph.vaddr, ph.paddr, ph.filesz, ph.memsz, ph.flags,
                                   data[ph.offset:ph.offset + ph.filesz]))
        pstart = ph.paddr if pstart is None else min(pstart, ph.paddr)
        pend = max(pend, ph.paddr + ph.memsz)
    if pstart is None:
        raise ElfError("program headers: expected at least one PT_LOAD segment "
                       "with R, W or X set, found none")

    # Xen notes: PT_NOTE segments, then SHT_NOTE sections, then __xen_guest.
    parms = _Parms()
    notes: dict[int, int | str | bytes] = {}
    count = [0]
    xen_notes = 0
    for ph in phdrs:
        if ph.type != _PT_NOTE or ph.offset == 0:   # binutils bug: see libelf
            continue
        xen_notes += _parse_notes(data, ph.offset, ph.filesz,
                                  f"program header {ph.index} (PT_NOTE)",
                                  parms, notes, count)
    if xen_notes == 0:
        for sh in shdrs[1:]:
            if sh.type != _SHT_NOTE:
                continue
            xen_notes += _parse_notes(data, sh.offset, sh.size,
                                      f"section {sh.index} (SHT_NOTE)",
                                      parms, notes, count)
    if xen_notes == 0:
        guest = next((sh for sh in shdrs[1:]
                      if _section_name(data, eh, shdrs, sh) == "__xen_guest"), None)
        if guest is None:
            raise ElfError(
                "Xen notes: not a Xen-ELF binary: found no ELF note of owner "
                "'Xen' and no '__xen_guest' section"
            )
        # libelf reads the string from the section start up to its NUL,
        # ignoring sh_size; so does xenpy, so that both see the same string.
        _need(data, guest.offset, 1, f"__xen_guest section (section {guest.index}: sh_offset)")
        end = data.find(b"\0", guest.offset)
        if end < 0:
            raise ElfError("__xen_guest section: the string is not NUL-terminated "
                           "before the end of the file")
        _parse_guest_info(data[guest.offset:end].decode("latin-1"), parms)
        parms.legacy = True

    # elf_xen_note_check.
    if not (parms.loader.startswith("generic") or parms.guest_os.startswith("linux")):
        raise ElfError(
            "LOADER/GUEST_OS: Xen only loads images built for the generic loader "
            f"or Linux images; expected LOADER 'generic' or GUEST_OS 'linux', "
            f"found LOADER {parms.loader!r} and GUEST_OS {parms.guest_os!r}"
        )
    if not parms.xen_ver.startswith(_XEN_VERSION):
        raise ElfError(f"XEN_VERSION: expected {_XEN_VERSION!r}, found {parms.xen_ver!r}")

    # Requirements libxenguest and xenpy add.
    if parms.required & (1 << 11):
        raise ElfError("FEATURES: the kernel requires 'dom0' and does not support "
                       "unprivileged (domU) operation")
    if parms.bsd_symtab:
        raise ElfError("BSD_SYMTAB: 'yes' asks the loader to append the symbol "
                       "table to the image, which xenpy does not implement")
    if (eh.layout.bits == 64 and parms.pae_mode is not None
            and not (parms.pae_mode.startswith("yes") or "bimodal" in parms.pae_mode)):
        raise ElfError(
            f"PAE_MODE: {parms.pae_mode!r} contradicts ELFCLASS64: an x86_64 "
            "kernel always runs with PAE (4-level) paging; expected 'yes' or "
            "no PAE_MODE note"
        )

    # elf_xen_addr_calc_check.
    if parms.paddr_offset is not None and parms.virt_base is None:
        raise ElfError("PADDR_OFFSET: set while VIRT_BASE is unset; "
                       "set VIRT_BASE too or drop PADDR_OFFSET")
    virt_base = 0 if parms.virt_base is None else parms.virt_base
    if parms.paddr_offset is not None:
        paddr_offset = parms.paddr_offset
    else:
        paddr_offset = virt_base if parms.legacy else 0
    wrap = 1 << 64
    virt_offset = (virt_base - paddr_offset) % wrap
    kstart = (pstart + virt_offset) % wrap
    kend = (pend + virt_offset) % wrap
    entry = eh.entry if parms.entry is None else parms.entry
    if kstart > kend or kend > mask + 1:
        raise ElfError(
            f"VIRT_BASE/PADDR_OFFSET: the image's physical extent "
            f"{pstart:#x}..{pend:#x} shifted by {virt_offset:#x} gives "
            f"{kstart:#x}..{kend:#x}, outside the {eh.layout.bits}-bit address space"
        )
    if not kstart <= entry <= kend:
        raise ElfError(
            f"ENTRY: entry point {entry:#x} lies outside the kernel image "
            f"{kstart:#x}..{kend:#x}"
        )
    if virt_base > kstart:
        raise ElfError(
            f"VIRT_BASE: {virt_base:#x} lies above the kernel image start {kstart:#x}"
        )
    if parms.p2m_base is not None and kstart <= parms.p2m_base < kend:
        raise ElfError(
            f"INIT_P2M: P->M table base {parms.p2m_base:#x} lies inside the kernel "
            f"image {kstart:#x}..{kend:#x}"
        )
    if parms.hypercall is not None and not kstart <= parms.hypercall < kend:
        raise ElfError(
            f"HYPERCALL_PAGE: {parms.hypercall:#x} lies outside the kernel image "
            f"{kstart:#x}..{kend:#x}"
        )

    supported = frozenset(name for bit, name in en.XEN_ELF_FEATURE_NAMES.items()
                          if parms.supported >> bit & 1)
    required = frozenset(name for bit, name in en.XEN_ELF_FEATURE_NAMES.items()
                         if parms.required >> bit & 1)
    return XenElfImage(
        elf_class=eh.layout.bits,
        machine=eh.machine,
        guest_type=_guest_type(eh.machine, parms.pae),
        entry=entry,
        virt_base=virt_base,
        paddr_offset=paddr_offset,
        virt_kstart=kstart,
        virt_kend=kend,
        hypercall_page=parms.hypercall,
        pae_mode=parms.pae_mode,
        features_supported=supported,
        features_required=required,
        notes=MappingProxyType(notes),
        segments=tuple(segments),
        symbols=MappingProxyType(_parse_symbols(data, eh, shdrs)),
    )


def load_xen_elf(path: str | os.PathLike[str]) -> XenElfImage:
    """Read and parse a kernel file; an unreadable file is an `ElfError` too."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ElfError(f"kernel {os.fspath(path)!r}: cannot read: {e.strerror}") from e
    try:
        return parse_xen_elf(data)
    except ElfError as e:
        raise ElfError(f"kernel {os.fspath(path)!r}: {e}") from e
