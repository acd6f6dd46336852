#!/usr/bin/env python3
"""Sanity-check built xenpy-test kernels against the layout Xen's libelf expects.

For each ELF: the Xen notes are present in a PT_NOTE segment with the values
head.S promises, VIRT_BASE == PADDR_OFFSET (so p_paddr == p_vaddr places every
segment at its p_vaddr), ENTRY == e_entry, the hypercall page is page aligned
inside an executable PT_LOAD, and every `call`/`jmp` into the hypercall page
(found with objdump) lands on a 32-byte stub boundary.  Exit status 1 on any
problem.  Usage: check_elf.py build/*.elf
"""
import re
import struct
import subprocess
import sys

NOTE_NAMES = {1: "ENTRY", 2: "HYPERCALL_PAGE", 3: "VIRT_BASE", 4: "PADDR_OFFSET",
              5: "XEN_VERSION", 6: "GUEST_OS", 8: "LOADER", 9: "PAE_MODE", 10: "FEATURES"}
NUMERIC = {1, 2, 3, 4}


def phdrs(data):
    if data[4] == 2:
        phoff, = struct.unpack_from("<Q", data, 0x20)
        entsize, num = struct.unpack_from("<HH", data, 0x36)
        entry, = struct.unpack_from("<Q", data, 0x18)
        fmt, order = "<IIQQQQQQ", ("type", "flags", "off", "vaddr", "paddr", "filesz", "memsz", "align")
    else:
        phoff, = struct.unpack_from("<I", data, 0x1c)
        entsize, num = struct.unpack_from("<HH", data, 0x2a)
        entry, = struct.unpack_from("<I", data, 0x18)
        fmt, order = "<IIIIIIII", ("type", "off", "vaddr", "paddr", "filesz", "memsz", "flags", "align")
    return entry, [dict(zip(order, struct.unpack_from(fmt, data, phoff + i * entsize)))
                   for i in range(num)]


def notes(data, ph):
    out, p, end = {}, ph["off"], ph["off"] + ph["filesz"]
    while p + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, p)
        p += 12
        name = data[p:p + namesz]
        p += (namesz + 3) & ~3
        desc = data[p:p + descsz]
        p += (descsz + 3) & ~3
        if name == b"Xen\0":
            out[ntype] = int.from_bytes(desc, "little") if ntype in NUMERIC else desc
    return out


def check(path):
    errors = []
    data = open(path, "rb").read()
    is64 = data[4] == 2
    entry, hdrs = phdrs(data)
    loads = [h for h in hdrs if h["type"] == 1]
    note_hdrs = [h for h in hdrs if h["type"] == 4]
    if not note_hdrs:
        return [f"{path}: no PT_NOTE segment"]
    n = {}
    for h in note_hdrs:
        n.update(notes(data, h))
    vbase = 0xFFFFFFFF80000000 if is64 else 0xC0000000
    want = {5: b"xen-3.0\0", 6: b"xenpy-test\0", 8: b"generic\0", 10: b"\0", 3: vbase, 4: vbase}
    if not is64:
        want[9] = b"yes\0"
    for k, v in want.items():
        if n.get(k) != v:
            errors.append(f"{path}: note {NOTE_NAMES[k]} is {n.get(k)!r}, expected {v!r}")
    if n.get(1) != entry:
        errors.append(f"{path}: ENTRY note {n.get(1)} != e_entry {entry:#x}")
    hp = n.get(2)
    if hp is None or hp % 4096:
        errors.append(f"{path}: HYPERCALL_PAGE {hp!r} missing or not page aligned")
    elif not any(h["vaddr"] <= hp < h["vaddr"] + h["filesz"] and h["flags"] & 1 for h in loads):
        errors.append(f"{path}: hypercall page {hp:#x} not in an executable PT_LOAD")
    for h in loads:
        if h["paddr"] != h["vaddr"]:
            errors.append(f"{path}: PT_LOAD p_paddr {h['paddr']:#x} != p_vaddr {h['vaddr']:#x}")
        if h["vaddr"] < vbase:
            errors.append(f"{path}: PT_LOAD at {h['vaddr']:#x} below VIRT_BASE")
    if hp is not None:
        dis = subprocess.run(["objdump", "-d", path], capture_output=True, text=True, check=True).stdout
        for m in re.finditer(r"(call|jmp)\s+[0-9a-f]+ <hypercall_page\+0x([0-9a-f]+)>", dis):
            off = int(m.group(2), 16)
            if off % 32:
                errors.append(f"{path}: {m.group(0)} is not on a 32-byte stub")
    return errors


def main(argv):
    errors = [e for p in argv[1:] for e in check(p)]
    for e in errors:
        print(e)
    print(f"checked {len(argv) - 1} ELF(s): {'FAIL' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
