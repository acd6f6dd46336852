"""Tests for xenpy.toolstack.elf: libelf's rules, defaults and rejections.

Fixtures are ELF files written byte by byte with `struct` (`make_elf`), so each
test states exactly the headers and notes it exercises; one test also links a
real kernel with gcc/ld to check the parser against toolchain output.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpy.abi import elfnote as en
from xenpy.errors import ElfError
from xenpy.toolstack.elf import EM_386, EM_X86_64, load_xen_elf, parse_xen_elf

PT_LOAD, PT_NOTE = 1, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOTE = 1, 2, 3, 7
PF_RWX = 7


def note(n_type: int, desc: bytes, owner: bytes = b"Xen") -> bytes:
    """One ELF note with 4-byte aligned name and descriptor."""
    name = owner + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), n_type) + pad(name) + pad(desc)


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


@dataclass
class Load:
    vaddr: int
    paddr: int
    data: bytes
    memsz: int | None = None
    flags: int = PF_RWX
    p_type: int = PT_LOAD


@dataclass
class Spec:
    """Everything `make_elf` writes; tests tweak one field of a valid default."""

    bits: int = 32
    machine: int | None = None
    entry: int = 0xC0100000
    loads: list[Load] = field(default_factory=lambda: [
        Load(0xC0100000, 0x100000, b"\x90" * 0x2000, 0x3000)])
    notes: bytes | None = None                 # raw PT_NOTE contents
    note_offset_zero: bool = False
    section_notes: bytes | None = None          # an SHT_NOTE section
    xen_guest: bytes | None = None              # a __xen_guest section
    symbols: list[tuple[str, int, int]] | None = None   # (name, value, bind)


def default_notes(bits: int = 32, **override: bytes | None) -> bytes:
    num = u32 if bits == 32 else u64
    fields: dict[str, tuple[int, bytes | None]] = {
        "GUEST_OS": (en.XEN_ELFNOTE_GUEST_OS, s("linux")),
        "XEN_VERSION": (en.XEN_ELFNOTE_XEN_VERSION, s("xen-3.0")),
        "VIRT_BASE": (en.XEN_ELFNOTE_VIRT_BASE, num(0xC0000000)),
        "HYPERCALL_PAGE": (en.XEN_ELFNOTE_HYPERCALL_PAGE, num(0xC0101000)),
        "PAE_MODE": (en.XEN_ELFNOTE_PAE_MODE, s("yes")),
        "FEATURES": (en.XEN_ELFNOTE_FEATURES, s("writable_descriptor_tables|!pae_pgdir_above_4gb")),
    }
    out = b""
    for key, (n_type, desc) in fields.items():
        desc = override.pop(key, desc)
        if desc is not None:
            out += note(n_type, desc)
    assert not override, override
    return out


def make_elf(spec: Spec) -> bytes:
    """Lay out: ELF header, program headers, notes, segments, sections, shdrs."""
    is64 = spec.bits == 64
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    notes = default_notes(spec.bits) if spec.notes is None else spec.notes
    phdrs = [(ld.p_type, ld) for ld in spec.loads]
    if notes:
        phdrs.append((PT_NOTE, None))
    off = ehsize + phentsize * len(phdrs)
    body = bytearray()

    def place(blob: bytes, align: int = 16) -> int:
        nonlocal off
        pad = -off % align
        body.extend(b"\0" * pad)
        off += pad
        start = off
        body.extend(blob)
        off += len(blob)
        return start

    note_off = place(notes, 4) if notes else 0
    load_offs = [place(ld.data) for ld in spec.loads]

    # Sections: [null, shstrtab, extra...]
    sections: list[tuple[str, int, bytes, int]] = []    # name, type, data, link
    if spec.section_notes is not None:
        sections.append((".note.xen", SHT_NOTE, spec.section_notes, 0))
    if spec.xen_guest is not None:
        sections.append(("__xen_guest", SHT_PROGBITS, spec.xen_guest, 0))
    if spec.symbols is not None:
        strtab = b"\0"
        syms = [b"\0" * (24 if is64 else 16)]
        for name, value, bind in spec.symbols:
            st_name = len(strtab)
            strtab += s(name)
            info = (bind << 4) | 2                       # STT_FUNC
            if is64:
                syms.append(struct.pack("<IBBHQQ", st_name, info, 0, 1, value, 0))
            else:
                syms.append(struct.pack("<IIIBBH", st_name, value, 0, info, 0, 1))
        link = 2 + len(sections) + 1                     # index of .strtab
        sections.append((".symtab", SHT_SYMTAB, b"".join(syms), link))
        sections.append((".strtab", SHT_STRTAB, strtab, 0))
    shdr_blobs = []
    if sections:
        names = b"\0.shstrtab\0"
        name_offs = []
        for name, *_ in sections:
            name_offs.append(len(names))
            names += s(name)
        all_secs = [(1, SHT_STRTAB, names, 0)] + [
            (no, t, d, ln) for no, (_, t, d, ln) in zip(name_offs, sections)]
        shdr_blobs.append(b"\0" * shentsize)
        for name_off, sh_type, data, link in all_secs:
            data_off = place(data, 8)
            if is64:
                shdr_blobs.append(struct.pack("<IIQQQQIIQQ", name_off, sh_type, 0, 0,
                                              data_off, len(data), link, 0, 1, 0))
            else:
                shdr_blobs.append(struct.pack("<IIIIIIIIII", name_off, sh_type, 0, 0,
                                              data_off, len(data), link, 0, 1, 0))
    shoff = place(b"".join(shdr_blobs), 8) if shdr_blobs else 0
    shnum = len(shdr_blobs)

    machine = spec.machine if spec.machine is not None else (EM_X86_64 if is64 else EM_386)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9
    if is64:
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, spec.entry, ehsize,
                                   shoff, 0, ehsize, phentsize, len(phdrs), shentsize,
                                   shnum, 1 if shnum else 0)
    else:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, spec.entry, ehsize,
                                   shoff, 0, ehsize, phentsize, len(phdrs), shentsize,
                                   shnum, 1 if shnum else 0)
    ph = b""
    for i, (p_type, ld) in enumerate(phdrs):
        if ld is None:
            o, v, p, fs, ms, fl = (0 if spec.note_offset_zero else note_off), 0, 0, \
                len(notes), len(notes), 4
        else:
            o, v, p, fs = load_offs[i], ld.vaddr, ld.paddr, len(ld.data)
            ms = len(ld.data) if ld.memsz is None else ld.memsz
            fl = ld.flags
        if is64:
            ph += struct.pack("<IIQQQQQQ", p_type, fl, o, v, p, fs, ms, 0x1000)
        else:
            ph += struct.pack("<IIIIIIII", p_type, o, v, p, fs, ms, fl, 0x1000)
    return ehdr + ph + bytes(body)


def spec64(**kw) -> Spec:
    base = dict(bits=64, entry=0xFFFFFFFF80001000,
                loads=[Load(0xFFFFFFFF80000000, 0x0, b"\xcc" * 0x3000, 0x4000)],
                notes=default_notes(64, VIRT_BASE=u64(0xFFFFFFFF80000000),
                                    HYPERCALL_PAGE=u64(0xFFFFFFFF80002000)))
    base.update(kw)
    return Spec(**base)


def reject(spec_or_bytes: Spec | bytes, field: str) -> ElfError:
    data = make_elf(spec_or_bytes) if isinstance(spec_or_bytes, Spec) else spec_or_bytes
    with pytest.raises(ElfError) as info:
        parse_xen_elf(data)
    assert field in str(info.value), str(info.value)
    return info.value


# ---------------------------------------------------------------------------
# Valid images


def test_pae_32bit_image_from_notes():
    img = parse_xen_elf(make_elf(Spec()))
    assert (img.elf_class, img.machine) == (32, EM_386)
    assert img.guest_type == "xen-3.0-x86_32p"
    assert img.virt_base == 0xC0000000
    assert img.paddr_offset == 0                       # notes: default 0
    assert (img.virt_kstart, img.virt_kend) == (0xC0100000, 0xC0103000)
    assert img.entry == 0xC0100000                     # e_entry, no ENTRY note
    assert img.hypercall_page == 0xC0101000
    assert img.pae_mode == "yes"
    assert img.features_supported == {"writable_descriptor_tables", "pae_pgdir_above_4gb"}
    assert img.features_required == {"pae_pgdir_above_4gb"}
    assert img.notes[en.XEN_ELFNOTE_GUEST_OS] == "linux"
    assert img.notes[en.XEN_ELFNOTE_VIRT_BASE] == 0xC0000000
    seg, = img.segments
    assert (seg.vaddr, seg.paddr, seg.filesz, seg.memsz) == (0xC0100000, 0x100000, 0x2000, 0x3000)
    assert seg.data == b"\x90" * 0x2000
    assert img.load_address(seg) == 0xC0100000
    assert img.symbols == {}


def test_64bit_image():
    img = parse_xen_elf(make_elf(spec64()))
    assert (img.elf_class, img.machine, img.guest_type) == (64, EM_X86_64, "xen-3.0-x86_64")
    assert img.virt_kstart == 0xFFFFFFFF80000000
    assert img.virt_kend == 0xFFFFFFFF80004000
    assert img.entry == 0xFFFFFFFF80001000
    assert img.hypercall_page == 0xFFFFFFFF80002000


def test_non_pae_32bit_guest_type():
    img = parse_xen_elf(make_elf(Spec(notes=default_notes(PAE_MODE=None))))
    assert img.guest_type == "xen-3.0-x86_32" and img.pae_mode is None
    img = parse_xen_elf(make_elf(Spec(notes=default_notes(PAE_MODE=s("no")))))
    assert img.guest_type == "xen-3.0-x86_32" and img.pae_mode == "no"


@pytest.mark.parametrize("mode,guest", [
    ("yes", "xen-3.0-x86_32p"), ("bimodal", "xen-3.0-x86_32p"),
    # libelf compares the note with "yes" exactly: the legacy spelling is not PAE.
    ("yes[extended-cr3]", "xen-3.0-x86_32"),
])
def test_pae_mode_note_values(mode, guest):
    img = parse_xen_elf(make_elf(Spec(notes=default_notes(PAE_MODE=s(mode)))))
    assert img.guest_type == guest and img.pae_mode == mode


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_numeric_note_widths(width):
    small = note(en.XEN_ELFNOTE_SUSPEND_CANCEL, (0x10).to_bytes(width, "little"))
    img = parse_xen_elf(make_elf(Spec(notes=default_notes() + small)))
    assert img.notes[en.XEN_ELFNOTE_SUSPEND_CANCEL] == 0x10
    if width >= 4:                                 # wide enough for an address
        entry = note(en.XEN_ELFNOTE_ENTRY, (0xC0100010).to_bytes(width, "little"))
        img = parse_xen_elf(make_elf(Spec(notes=default_notes() + entry)))
        assert img.entry == 0xC0100010 == img.notes[en.XEN_ELFNOTE_ENTRY]


def test_every_note_type_is_decoded():
    extra = b"".join([
        note(en.XEN_ELFNOTE_ENTRY, u32(0xC0100004)),
        note(en.XEN_ELFNOTE_PADDR_OFFSET, u32(0)),
        note(en.XEN_ELFNOTE_GUEST_VERSION, s("2.6")),
        note(en.XEN_ELFNOTE_LOADER, s("generic")),
        note(en.XEN_ELFNOTE_BSD_SYMTAB, s("no")),
        note(en.XEN_ELFNOTE_HV_START_LOW, u32(0xF5800000)),
        note(en.XEN_ELFNOTE_L1_MFN_VALID, u32(1) + u32(1)),
        note(en.XEN_ELFNOTE_SUSPEND_CANCEL, u32(1)),
        note(en.XEN_ELFNOTE_INIT_P2M, u32(0xD0000000)),
        note(en.XEN_ELFNOTE_MOD_START_PFN, u32(1)),
        note(en.XEN_ELFNOTE_SUPPORTED_FEATURES, u32(1 << 2)),
        note(en.XEN_ELFNOTE_PHYS32_ENTRY, u32(0x100000)),
        note(99, b"opaque"),                             # unknown to libelf
        note(en.XEN_ELFNOTE_ENTRY, u32(0), owner=b"GNU"),   # other owner: ignored
    ])
    img = parse_xen_elf(make_elf(Spec(notes=default_notes() + extra)))
    n = img.notes
    assert img.entry == 0xC0100004 == n[en.XEN_ELFNOTE_ENTRY]
    assert n[en.XEN_ELFNOTE_PADDR_OFFSET] == 0
    assert n[en.XEN_ELFNOTE_GUEST_VERSION] == "2.6"
    assert n[en.XEN_ELFNOTE_LOADER] == "generic"
    assert n[en.XEN_ELFNOTE_BSD_SYMTAB] == "no"
    assert n[en.XEN_ELFNOTE_HV_START_LOW] == 0xF5800000
    assert n[en.XEN_ELFNOTE_L1_MFN_VALID] == 0x100000001
    assert n[en.XEN_ELFNOTE_SUSPEND_CANCEL] == 1
    assert n[en.XEN_ELFNOTE_INIT_P2M] == 0xD0000000
    assert n[en.XEN_ELFNOTE_MOD_START_PFN] == 1
    assert n[en.XEN_ELFNOTE_PHYS32_ENTRY] == 0x100000
    assert n[99] == b"opaque"
    assert "auto_translated_physmap" in img.features_supported
    assert "auto_translated_physmap" not in img.features_required


def test_l1_mfn_valid_pair_of_quads_kept_raw():
    raw = u64(1) + u64(1)                                # as 64-bit Linux emits it
    spec = spec64()
    spec.notes += note(en.XEN_ELFNOTE_L1_MFN_VALID, raw)
    assert parse_xen_elf(make_elf(spec)).notes[en.XEN_ELFNOTE_L1_MFN_VALID] == raw


def test_last_duplicate_note_wins():
    extra = (note(en.XEN_ELFNOTE_ENTRY, u32(0xC0100008))
             + note(en.XEN_ELFNOTE_ENTRY, u32(0xC010000C)))
    assert parse_xen_elf(make_elf(Spec(notes=default_notes() + extra))).entry == 0xC010000C


def test_loader_generic_is_enough_without_guest_os():
    notes = default_notes(GUEST_OS=None) + note(en.XEN_ELFNOTE_LOADER, s("generic"))
    assert parse_xen_elf(make_elf(Spec(notes=notes))).notes[en.XEN_ELFNOTE_LOADER] == "generic"


def test_virt_base_defaults_to_zero_and_paddr_offset_applies():
    notes = default_notes(VIRT_BASE=None, HYPERCALL_PAGE=u32(0x101000))
    img = parse_xen_elf(make_elf(Spec(notes=notes, entry=0x100000)))
    assert img.virt_base == 0 and img.paddr_offset == 0
    assert (img.virt_kstart, img.virt_kend) == (0x100000, 0x103000)
    assert img.load_address(img.segments[0]) == 0x100000

    notes = default_notes() + note(en.XEN_ELFNOTE_PADDR_OFFSET, u32(0x40000000))
    loads = [Load(0xC0100000, 0x40100000, b"\0" * 0x2000)]
    img = parse_xen_elf(make_elf(Spec(notes=notes, loads=loads)))
    assert img.paddr_offset == 0x40000000
    assert img.virt_kstart == 0xC0100000
    assert img.load_address(img.segments[0]) == 0xC0100000


def test_kernel_extent_spans_all_loadable_segments_by_paddr():
    loads = [Load(0xC0100000, 0x100000, b"a" * 0x1000),
             Load(0xC0200000, 0x200000, b"b" * 0x10, 0x2000, flags=6),
             Load(0xC0900000, 0x900000, b"", 0x1000, flags=0),       # no R/W/X: ignored
             Load(0, 0, b"", 0, p_type=6)]                           # PT_PHDR: ignored
    img = parse_xen_elf(make_elf(Spec(loads=loads)))
    assert (img.virt_kstart, img.virt_kend) == (0xC0100000, 0xC0202000)
    assert [sg.paddr for sg in img.segments] == [0x100000, 0x200000]


def test_notes_fall_back_to_sht_note_section():
    spec = Spec(notes=b"", section_notes=default_notes())
    assert parse_xen_elf(make_elf(spec)).virt_base == 0xC0000000


def test_pt_note_with_zero_offset_is_skipped_like_libelf():
    spec = Spec(note_offset_zero=True, section_notes=default_notes(VIRT_BASE=u32(0xC0000000)))
    assert parse_xen_elf(make_elf(spec)).virt_base == 0xC0000000
    reject(Spec(note_offset_zero=True), "not a Xen-ELF binary")


def test_symbols_from_symtab_globals_win():
    syms = [("local_thing", 0xC0100100, 0), ("startup_xen", 0xC0100000, 1),
            ("dup", 0xC0100200, 0), ("dup", 0xC0100300, 1)]
    img = parse_xen_elf(make_elf(Spec(symbols=syms)))
    assert img.symbols == {"local_thing": 0xC0100100, "startup_xen": 0xC0100000,
                           "dup": 0xC0100300}
    img = parse_xen_elf(make_elf(spec64(symbols=[("hypercall_page", 0xFFFFFFFF80002000, 1)])))
    assert img.symbols == {"hypercall_page": 0xFFFFFFFF80002000}


def test_load_xen_elf_reads_file_and_names_it(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf(Spec()))
    assert load_xen_elf(path).virt_base == 0xC0000000
    with pytest.raises(ElfError, match="cannot read"):
        load_xen_elf(tmp_path / "missing")
    path.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ElfError, match=r"vmlinux.*magic"):
        load_xen_elf(path)


# ---------------------------------------------------------------------------
# The legacy __xen_guest section

LEGACY = (b"GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,"
          b"ELF_PADDR_OFFSET=0xC0000000,HYPERCALL_PAGE=0x101,LOADER=generic,"
          b"PAE=yes[extended-cr3],FEATURES=writable_page_tables\0")


def legacy_spec(guest: bytes = LEGACY, **kw) -> Spec:
    base = dict(notes=b"", xen_guest=guest,
                loads=[Load(0xC0100000, 0xC0100000, b"\x90" * 0x2000)])
    base.update(kw)
    return Spec(**base)


def test_legacy_xen_guest_section():
    img = parse_xen_elf(make_elf(legacy_spec()))
    assert img.virt_base == 0xC0000000 and img.paddr_offset == 0xC0000000
    assert (img.virt_kstart, img.virt_kend) == (0xC0100000, 0xC0102000)
    assert img.hypercall_page == 0xC0101000          # page number + virt_base
    assert img.pae_mode == "yes[extended-cr3]" and img.guest_type == "xen-3.0-x86_32p"
    assert img.features_supported == {"writable_page_tables"}
    assert img.notes == {}


def test_legacy_paddr_offset_defaults_to_virt_base():
    guest = b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,PAE=yes\0"
    img = parse_xen_elf(make_elf(legacy_spec(guest)))
    assert img.paddr_offset == 0xC0000000 and img.virt_kstart == 0xC0100000
    assert img.guest_type == "xen-3.0-x86_32p"        # "yes..." = XEN_PAE_YES


def test_legacy_virt_entry_and_hypercall_without_virt_base():
    guest = b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_ENTRY=0xC0100010,HYPERCALL_PAGE=0xC0101\0"
    img = parse_xen_elf(make_elf(legacy_spec(guest)))
    assert img.virt_base == 0 and img.paddr_offset == 0
    assert img.entry == 0xC0100010
    assert img.hypercall_page == 0xC0101000          # no virt_base to add


def test_legacy_string_is_read_to_its_nul_like_libelf():
    data = bytearray(make_elf(legacy_spec()))
    shoff = struct.unpack_from("<I", data, 32)[0]
    struct.pack_into("<I", data, shoff + 2 * 40 + 20, 10)     # __xen_guest sh_size = 10
    assert parse_xen_elf(bytes(data)).hypercall_page == 0xC0101000
    no_nul = make_elf(legacy_spec(b"GUEST_OS=linux,XEN_VER=xen-3.0"))
    assert parse_xen_elf(no_nul).virt_base == 0                # NUL from the next bytes


def test_notes_take_precedence_over_xen_guest():
    img = parse_xen_elf(make_elf(Spec(xen_guest=b"GUEST_OS=bsd,XEN_VER=xen-2.0\0")))
    assert img.paddr_offset == 0 and img.notes


@pytest.mark.parametrize("guest,field", [
    (b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC000zz\0", "VIRT_BASE"),
    (b"GUEST_OS=linux,XEN_VER=xen-3.0,HYPERCALL_PAGE=-1\0", "HYPERCALL_PAGE"),
    (b"GUEST_OS=netbsd,XEN_VER=xen-3.0\0", "GUEST_OS"),
    (b"GUEST_OS=linux,XEN_VER=xen-2.0\0", "XEN_VERSION"),
    (b"GUEST_OS=linux,XEN_VER=xen-3.0,FEATURES=!flying\0", "FEATURES"),
    (b"GUEST_OS=linux,XEN_VER=xen-3.0,BSD_SYMTAB\0", "BSD_SYMTAB"),
    (b"GUEST_OS=linux,XEN_VER=xen-3.0," + b"X" * 40 + b"=1\0", "__xen_guest"),
])
def test_legacy_rejections(guest, field):
    reject(legacy_spec(guest), field)


# ---------------------------------------------------------------------------
# Rejections


def test_not_a_xen_elf():
    reject(Spec(notes=b""), "not a Xen-ELF binary")
    reject(Spec(notes=note(en.XEN_ELFNOTE_ENTRY, u32(0), owner=b"GNU")), "not a Xen-ELF")


@pytest.mark.parametrize("override,field", [
    ({"GUEST_OS": None}, "GUEST_OS"),
    ({"GUEST_OS": s("netbsd")}, "GUEST_OS"),
    ({"XEN_VERSION": None}, "XEN_VERSION"),
    ({"XEN_VERSION": s("xen-2.0")}, "XEN_VERSION"),
    ({"FEATURES": s("!no_such_feature")}, "FEATURES"),
    ({"FEATURES": s("!dom0")}, "dom0"),
    ({"HYPERCALL_PAGE": u32(0xC0200000)}, "HYPERCALL_PAGE"),
    ({"HYPERCALL_PAGE": u32(0xC0103000)}, "HYPERCALL_PAGE"),     # == kend: outside
    ({"HYPERCALL_PAGE": b"\0\0\0"}, "HYPERCALL_PAGE"),          # 3-byte number
    ({"GUEST_OS": b"linux"}, "GUEST_OS"),                        # no NUL
])
def test_note_rejections(override, field):
    reject(Spec(notes=default_notes(**override)), field)


def test_entry_outside_image():
    reject(Spec(entry=0xC00FFFFF), "ENTRY")
    reject(Spec(entry=0xC0103001), "ENTRY")
    parse_xen_elf(make_elf(Spec(entry=0xC0103000)))            # == kend: libelf allows it
    reject(Spec(notes=default_notes() + note(en.XEN_ELFNOTE_ENTRY, u32(0x100000))), "ENTRY")


def test_virt_base_above_kernel_start():
    # paddr 0x100000 - PADDR_OFFSET 0x200000 puts the image below VIRT_BASE.
    notes = default_notes(HYPERCALL_PAGE=None) + note(en.XEN_ELFNOTE_PADDR_OFFSET, u32(0x200000))
    reject(Spec(notes=notes, entry=0xBFF00000), "VIRT_BASE")


def test_init_p2m_inside_image_and_paddr_offset_without_virt_base():
    reject(Spec(notes=default_notes() + note(en.XEN_ELFNOTE_INIT_P2M, u32(0xC0101000))), "INIT_P2M")
    notes = default_notes(VIRT_BASE=None, HYPERCALL_PAGE=None) + \
        note(en.XEN_ELFNOTE_PADDR_OFFSET, u32(0))
    reject(Spec(notes=notes, entry=0x100000), "PADDR_OFFSET")


def test_bsd_symtab_yes_is_refused():
    reject(Spec(notes=default_notes() + note(en.XEN_ELFNOTE_BSD_SYMTAB, s("yes"))), "BSD_SYMTAB")


@pytest.mark.parametrize("mode", ["no", "maybe"])
def test_pae_mode_contradicting_elf64(mode):
    spec = spec64()
    spec.notes = default_notes(64, VIRT_BASE=u64(0xFFFFFFFF80000000),
                               HYPERCALL_PAGE=u64(0xFFFFFFFF80002000), PAE_MODE=s(mode))
    reject(spec, "PAE_MODE")


def test_64bit_kernel_with_pae_yes_is_fine():
    assert parse_xen_elf(make_elf(spec64())).pae_mode == "yes"    # Linux emits it


@pytest.mark.parametrize("offset,value,field", [
    (4, 3, "EI_CLASS"),
    (5, 2, "EI_DATA"),
    (6, 0, "EI_VERSION"),
])
def test_ident_rejections(offset, value, field):
    data = bytearray(make_elf(Spec()))
    data[offset] = value
    reject(bytes(data), field)


def test_header_field_rejections():
    good = make_elf(Spec())

    def patch(fmt: str, off: int, value: int) -> bytes:
        d = bytearray(good)
        struct.pack_into(fmt, d, off, value)
        return bytes(d)

    reject(b"MZ\x90\x00" + good[4:], "magic")
    reject(patch("<H", 18, 40), "e_machine")                        # EM_ARM
    reject(patch("<H", 18, EM_X86_64), "e_machine")                 # class mismatch
    reject(patch("<I", 20, 0), "e_version")
    reject(patch("<I", 28, len(good)), "program header table")      # e_phoff
    reject(patch("<H", 44, 0), "e_phnum")
    reject(patch("<H", 44, 1000), "program header table")
    reject(patch("<H", 42, 33), "e_phentsize")


def test_section_header_table_outside_file():
    good = make_elf(Spec(symbols=[("a", 0xC0100000, 1)]))
    d = bytearray(good)
    struct.pack_into("<I", d, 32, len(good) - 8)                     # e_shoff
    reject(bytes(d), "section header table")


def test_segment_rejections():
    reject(Spec(loads=[Load(0xC0100000, 0x100000, b"x" * 0x20, 0x10)]), "p_filesz")
    reject(Spec(loads=[Load(0xFFFFF000, 0x100000, b"x", 0x2000)], entry=0xC0100000), "p_vaddr")
    reject(Spec(loads=[Load(0xC0100000, 0xFFFFF000, b"x", 0x2000)]), "p_paddr")
    reject(Spec(loads=[Load(0, 0, b"", 0, p_type=6)]), "PT_LOAD")
    data = bytearray(make_elf(Spec()))
    struct.pack_into("<I", data, 52 + 16, 0x10000000)                  # p_filesz
    struct.pack_into("<I", data, 52 + 20, 0x10000000)                  # p_memsz
    reject(bytes(data), "p_offset, p_filesz")


def test_kernel_beyond_32bit_space_after_offset():
    notes = default_notes() + note(en.XEN_ELFNOTE_PADDR_OFFSET, u32(0))
    loads = [Load(0xC0100000, 0x7FF00000, b"x" * 0x1000, 0x200000)]
    reject(Spec(notes=notes, loads=loads, entry=0xC0100000), "VIRT_BASE/PADDR_OFFSET")


def test_note_area_rejections():
    reject(Spec(notes=default_notes() + b"\x01\0\0\0\x00"), "truncated note header")
    bad = struct.pack("<III", 4, 0x100, en.XEN_ELFNOTE_ENTRY) + b"Xen\0"
    reject(Spec(notes=default_notes() + bad), "runs past the end")
    too_many = note(0x77, b"", owner=b"N") * (65537)
    reject(Spec(notes=default_notes() + too_many), "notes")


# ---------------------------------------------------------------------------
# The constants


needs_headers = pytest.mark.skipif(not os.path.exists("/usr/include/xen/elfnote.h"),
                                   reason="Xen public headers (Debian libxen-dev) not installed")


@needs_headers
def test_elfnote_constants_match_the_public_header():
    header = open("/usr/include/xen/elfnote.h").read()
    defined = dict(re.findall(r"#define\s+(XEN_ELFNOTE_\w+)\s+(\w+)", header))
    assert defined, "no XEN_ELFNOTE_* found in elfnote.h"
    ours = {k: v for k, v in vars(en).items() if k.startswith("XEN_ELFNOTE_")
            and isinstance(v, int)}
    for name, text in defined.items():
        value = int(defined.get(text, text), 0)
        assert ours.pop(name) == value, name
    assert not ours, f"not in elfnote.h: {sorted(ours)}"
    for n_type, (name, _) in en.XEN_ELFNOTE_DESC.items():
        assert getattr(en, "XEN_ELFNOTE_" + name) == n_type


@needs_headers
def test_feature_names_match_features_h():
    header = open("/usr/include/xen/features.h").read()
    defined = {int(v): k for k, v in re.findall(r"#define\s+XENFEAT_(\w+)\s+(\d+)\b", header)
               if k != "NR_SUBMAPS"}
    for bit, name in en.XEN_ELF_FEATURE_NAMES.items():
        assert defined[bit] == name


# ---------------------------------------------------------------------------
# A kernel linked by the real toolchain

KERNEL_S = r"""
#include <xen/elfnote.h>
#define ELFNOTE(name, type, desc)           \
    .pushsection .note.name, "a", @note;    \
    .balign 4;                              \
    .long 2f - 1f;                          \
    .long 4484f - 3f;                       \
    .long type;                             \
1:  .asciz #name;                           \
2:  .balign 4;                              \
3:  desc;                                   \
4484: .balign 4;                            \
    .popsection
#ifdef __x86_64__
#define WORD .quad
#else
#define WORD .long
#endif
    .text
    .globl startup_xen
startup_xen:
    hlt
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc
    ELFNOTE(Xen, XEN_ELFNOTE_GUEST_OS, .asciz "linux")
    ELFNOTE(Xen, XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
    ELFNOTE(Xen, XEN_ELFNOTE_VIRT_BASE, WORD VIRT_BASE)
    ELFNOTE(Xen, XEN_ELFNOTE_ENTRY, WORD startup_xen)
    ELFNOTE(Xen, XEN_ELFNOTE_HYPERCALL_PAGE, WORD hypercall_page)
    ELFNOTE(Xen, XEN_ELFNOTE_PAE_MODE, .asciz "yes")
    ELFNOTE(Xen, XEN_ELFNOTE_FEATURES, .asciz "!writable_page_tables|pae_pgdir_above_4gb")
    ELFNOTE(Xen, XEN_ELFNOTE_L1_MFN_VALID, WORD 1; WORD 1)
"""

LDS = """
ENTRY(startup_xen)
SECTIONS {
  . = VIRT_BASE + 0x100000;
  .text : AT(ADDR(.text) - VIRT_BASE) { *(.text) }
  .note : AT(ADDR(.note) - VIRT_BASE) { *(.note.*) }
  /DISCARD/ : { *(.note.gnu.property) }
}
PHDRS { text PT_LOAD FLAGS(7); note PT_NOTE; }
"""


@needs_headers
@pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("ld")), reason="needs gcc and ld")
@pytest.mark.parametrize("bits,virt_base", [(32, 0xC0000000), (64, 0xFFFFFFFF80000000)])
def test_real_toolchain_kernel(tmp_path, bits, virt_base):
    src = tmp_path / "head.S"
    src.write_text(KERNEL_S)
    lds = tmp_path / "k.lds"
    lds.write_text(LDS.replace("VIRT_BASE", hex(virt_base))
                   .replace("{ *(.text) }", "{ *(.text) } :text")
                   .replace("{ *(.note.*) }", "{ *(.note.*) } :text :note"))
    obj, out = tmp_path / "head.o", tmp_path / "vmlinux"
    subprocess.run(["gcc", f"-m{bits}", f"-DVIRT_BASE={virt_base:#x}", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386" if bits == 32 else "elf_x86_64", "-T", str(lds),
                    "-z", "max-page-size=0x1000", str(obj), "-o", str(out)],
                   check=True, capture_output=True)
    img = load_xen_elf(out)
    assert img.elf_class == bits
    assert img.virt_base == virt_base and img.paddr_offset == 0
    assert img.virt_kstart == virt_base + 0x100000
    assert img.entry == img.symbols["startup_xen"] == virt_base + 0x100000
    assert img.hypercall_page == img.symbols["hypercall_page"] == virt_base + 0x101000
    assert img.features_required == {"writable_page_tables"}
    assert img.guest_type == ("xen-3.0-x86_32p" if bits == 32 else "xen-3.0-x86_64")
    assert img.load_address(img.segments[0]) == img.segments[0].vaddr


# ---------------------------------------------------------------------------
# Robustness: only ElfError may escape


def test_every_truncation_raises_elf_error():
    good = make_elf(Spec(symbols=[("startup_xen", 0xC0100000, 1)]))
    parse_xen_elf(good)
    for n in range(len(good)):
        with pytest.raises(ElfError):
            parse_xen_elf(good[:n])


_GOOD = (make_elf(Spec(symbols=[("a", 0xC0100000, 1)])),
         make_elf(spec64(symbols=[("b", 0xFFFFFFFF80000000, 1)])),
         make_elf(legacy_spec()))


def _parse_or_elf_error(data: bytes) -> None:
    try:
        parse_xen_elf(data)
    except ElfError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_elf_error(data):
    _parse_or_elf_error(b"\x7fELF" + data)
    _parse_or_elf_error(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(_GOOD))),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10**6))
def test_mutations_of_valid_images_only_raise_elf_error(index, edits, cut):
    data = bytearray(_GOOD[index])
    for pos, byte in edits:
        data[pos % len(data)] = byte
    _parse_or_elf_error(bytes(data))
    _parse_or_elf_error(bytes(data[: cut % (len(data) + 1)]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(_GOOD))), st.integers(0, 200), st.sampled_from([1, 2, 4, 8]),
       st.integers(0, 2**64 - 1))
def test_header_sized_field_mutations_only_raise_elf_error(index, pos, width, value):
    """Aligned whole-field overwrites reach the size/offset checks random bytes miss."""
    data = bytearray(_GOOD[index])
    pos = pos - pos % width
    if pos + width <= len(data):
        data[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    _parse_or_elf_error(bytes(data))


# ---------------------------------------------------------------------------
# Differential testing against Xen's own libelf (libxenguest, Debian
# libxenmisc4.17): whenever xenpy accepts an image, libelf's elf_xen_parse must
# accept it too and compute the same addresses.  xenpy may refuse more (it
# checks bounds libelf leaves to luck), never less.


class XenElfnote(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("name", ctypes.c_void_p), ("data", ctypes.c_uint64)]


class ElfDomParms(ctypes.Structure):
    """struct elf_dom_parms of Xen 4.17's libelf.h (not a public header)."""

    _fields_ = [
        ("guest_info", ctypes.c_uint64), ("elf_note_start", ctypes.c_uint64),
        ("elf_note_end", ctypes.c_uint64), ("elf_notes", XenElfnote * (en.XEN_ELFNOTE_MAX + 1)),
        ("guest_os", ctypes.c_char * 16), ("guest_ver", ctypes.c_char * 16),
        ("xen_ver", ctypes.c_char * 16), ("loader", ctypes.c_char * 16),
        ("pae", ctypes.c_int), ("bsd_symtab", ctypes.c_bool), ("unmapped_initrd", ctypes.c_bool),
        ("virt_base", ctypes.c_uint64), ("virt_entry", ctypes.c_uint64),
        ("virt_hypercall", ctypes.c_uint64), ("virt_hv_start_low", ctypes.c_uint64),
        ("p2m_base", ctypes.c_uint64), ("elf_paddr_offset", ctypes.c_uint64),
        ("f_supported", ctypes.c_uint32), ("f_required", ctypes.c_uint32),
        ("phys_entry", ctypes.c_uint32),
        ("virt_kstart", ctypes.c_uint64), ("virt_kend", ctypes.c_uint64),
    ]


def _load_libelf() -> ctypes.CDLL | None:
    for name in ("libxenguest.so.4.17", ctypes.util.find_library("xenguest")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.elf_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.elf_parse_binary.argtypes = [ctypes.c_void_p]
        lib.elf_xen_parse.argtypes = [ctypes.c_void_p, ctypes.POINTER(ElfDomParms), ctypes.c_bool]
        return lib
    return None


LIBELF = _load_libelf()
needs_libelf = pytest.mark.skipif(LIBELF is None,
                                  reason="libxenguest 4.17 (Debian libxenmisc4.17) not installed")
UNSET = 2**64 - 1


def libelf_parse(data: bytes) -> ElfDomParms | None:
    """libelf's verdict as libxenguest acts on it: elf_init, elf_xen_parse == 0."""
    image = ctypes.create_string_buffer(data, len(data))
    elf = ctypes.create_string_buffer(4096)         # struct elf_binary is < 300 bytes
    if LIBELF.elf_init(elf, image, len(data)) != 0:
        return None
    LIBELF.elf_parse_binary(elf)
    parms = ElfDomParms()
    if LIBELF.elf_xen_parse(elf, ctypes.byref(parms), False) != 0:
        return None
    return parms


def assert_agrees_with_libelf(data: bytes) -> None:
    try:
        img = parse_xen_elf(data)
    except ElfError:
        return
    ref = libelf_parse(data)
    assert ref is not None, "xenpy accepts an image libelf refuses"
    hypercall = UNSET if img.hypercall_page is None else img.hypercall_page
    assert (img.virt_base, img.paddr_offset, img.entry, hypercall, img.virt_kstart,
            img.virt_kend) == (ref.virt_base, ref.elf_paddr_offset, ref.virt_entry,
                               ref.virt_hypercall, ref.virt_kstart, ref.virt_kend)
    pae_guest = "xen-3.0-x86_32p" if ref.pae else "xen-3.0-x86_32"     # XEN_PAE_NO == 0
    assert img.guest_type == ("xen-3.0-x86_64" if img.machine == EM_X86_64 else pae_guest)
    for bit, name in en.XEN_ELF_FEATURE_NAMES.items():
        assert (name in img.features_supported) == bool(ref.f_supported >> bit & 1), name
        assert (name in img.features_required) == bool(ref.f_required >> bit & 1), name


@needs_libelf
def test_libelf_binding_reads_a_known_image():
    """Guards the ctypes layout above: wrong offsets would read garbage here."""
    ref = libelf_parse(make_elf(Spec()))
    assert ref is not None
    assert (ref.guest_os, ref.xen_ver) == (b"linux", b"xen-3.0")
    assert (ref.virt_base, ref.virt_kstart, ref.virt_kend) == (0xC0000000, 0xC0100000, 0xC0103000)
    assert ref.virt_hypercall == 0xC0101000 and ref.p2m_base == UNSET
    assert libelf_parse(make_elf(Spec(notes=b""))) is None


_VARIANTS = _GOOD + (
    make_elf(Spec(notes=default_notes(PAE_MODE=s("bimodal")))),
    make_elf(Spec(notes=default_notes(PAE_MODE=None, FEATURES=s("dom0|!writable_page_tables")))),
    make_elf(Spec(notes=default_notes() + note(en.XEN_ELFNOTE_PADDR_OFFSET, u32(0x40000000)),
                  loads=[Load(0xC0100000, 0x40100000, b"\0" * 0x2000)])),
    make_elf(Spec(notes=b"", section_notes=default_notes())),
    make_elf(legacy_spec(b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,PAE=yes\0")),
    make_elf(legacy_spec(b"LOADER=generic,XEN_VER=xen-3.0,VIRT_ENTRY=0xC0100010,"
                         b"HYPERCALL_PAGE=0xC0101\0")),
)


@needs_libelf
@pytest.mark.parametrize("index", range(len(_VARIANTS)))
def test_valid_variants_agree_with_libelf(index):
    parse_xen_elf(_VARIANTS[index])                  # each one must be accepted...
    assert_agrees_with_libelf(_VARIANTS[index])      # ...exactly as libelf reads it


@needs_libelf
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(_VARIANTS))),
       st.lists(st.tuples(st.booleans(), st.integers(0, 700), st.sampled_from([1, 2, 4, 8]),
                          st.integers(0, 2**64 - 1)), min_size=1, max_size=4))
def test_mutated_images_agree_with_libelf(index, edits):
    """Edits land near either end, where the headers, notes and sections are."""
    good = _VARIANTS[index]
    data = bytearray(good)
    for from_end, offset, width, value in edits:
        pos = (len(data) - 1 - offset if from_end else offset) % len(data)
        pos &= ~(width - 1)
        data[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    assert_agrees_with_libelf(bytes(data[:len(good)]))
