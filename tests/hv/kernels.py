"""Bad kernels made from the bundled hello-x86_32.elf by patching a few bytes.

Patching a real, working image (rather than writing a synthetic ELF) keeps each bad
kernel one defect away from a good one, so a rejection can only be for that defect.
"""
from __future__ import annotations

import struct
from pathlib import Path

from xenpy import ROOT

BUILD = ROOT / "guests" / "build"
PT_LOAD, PT_NOTE = 1, 4
PHDR32 = struct.Struct("<IIIIIIII")     # type offset vaddr paddr filesz memsz flags align


def hello32() -> bytes:
    return (BUILD / "hello-x86_32.elf").read_bytes()


def phdrs(data: bytes) -> list[tuple[int, tuple[int, ...]]]:
    """(file offset of the header, fields) of every ELF32 program header."""
    phoff, = struct.unpack_from("<I", data, 28)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    return [(phoff + i * phentsize, PHDR32.unpack_from(data, phoff + i * phentsize))
            for i in range(phnum)]


def notes(data: bytes) -> list[tuple[int, int, int]]:
    """(offset of the name, offset of the descriptor, type) of the notes in PT_NOTE."""
    out = []
    for _, (ptype, off, _va, _pa, filesz, *_rest) in phdrs(data):
        if ptype != PT_NOTE:
            continue
        pos = off
        while pos < off + filesz:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = pos + 12
            desc = name + (namesz + 3) // 4 * 4
            out.append((name, desc, ntype))
            pos = desc + (descsz + 3) // 4 * 4
    return out


def with_note(data: bytes, ntype: int, desc: bytes) -> bytes:
    """Replace the descriptor of note ``ntype`` by ``desc`` (same length)."""
    buf = bytearray(data)
    for _, d, t in notes(data):
        if t == ntype:
            buf[d:d + len(desc)] = desc
            return bytes(buf)
    raise AssertionError(f"no note of type {ntype}")


def without_xen_notes(data: bytes) -> bytes:
    """Rename every note's owner from "Xen" to "Xyz": an ordinary ELF to libelf."""
    buf = bytearray(data)
    for name, _, _ in notes(data):
        assert buf[name:name + 4] == b"Xen\0"
        buf[name:name + 4] = b"Xyz\0"
    return bytes(buf)


def with_bss(data: bytes, memsz: int) -> bytes:
    """Grow the data PT_LOAD (the .bss) to ``memsz`` bytes."""
    buf = bytearray(data)
    loads = [(at, f) for at, f in phdrs(data) if f[0] == PT_LOAD]
    at, f = loads[-1]
    PHDR32.pack_into(buf, at, *f[:5], memsz, *f[6:])
    return bytes(buf)


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p
