"""The grant-table and memory_op layouts xenpy uses, checked against Xen's public headers.

A C probe compiled with gcc -m32 and -m64 against /usr/include/xen prints sizeof and
offsetof of every field; each must match the struct format in xenpy/abi.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from xenpy.abi import grant_table as G
from xenpy.abi import memory as M

HEADERS = Path("/usr/include/xen/grant_table.h")

# (C type, xenpy format or {width: format}, C field names in format order, padding skipped)
LAYOUTS = [
    ("struct gnttab_map_grant_ref", G.MAP_GRANT_REF,
     ["host_addr", "flags", "ref", "dom", "status", "handle", "dev_bus_addr"]),
    ("struct gnttab_unmap_grant_ref", G.UNMAP_GRANT_REF,
     ["host_addr", "dev_bus_addr", "handle", "status"]),
    ("struct gnttab_unmap_and_replace", G.UNMAP_AND_REPLACE,
     ["host_addr", "new_addr", "handle", "status"]),
    ("struct gnttab_setup_table", G.SETUP_TABLE, ["dom", "nr_frames", "status", "frame_list"]),
    ("struct gnttab_query_size", G.QUERY_SIZE, ["dom", "nr_frames", "max_nr_frames", "status"]),
    ("struct gnttab_dump_table", G.DUMP_TABLE, ["dom", "status"]),
    ("struct gnttab_transfer", G.TRANSFER, ["mfn", "domid", "ref", "status"]),
    ("struct gnttab_copy", G.COPY, ["source.u", "source.domid", "source.offset", "dest.u",
                                    "dest.domid", "dest.offset", "len", "flags", "status"]),
    ("struct gnttab_set_version", G.SET_VERSION, ["version"]),
    ("struct gnttab_get_status_frames", G.GET_STATUS_FRAMES,
     ["nr_frames", "dom", "status", "frame_list"]),
    ("struct gnttab_get_version", G.GET_VERSION, ["dom", "version"]),
    ("struct gnttab_swap_grant_ref", G.SWAP_GRANT_REF, ["ref_a", "ref_b", "status"]),
    ("struct gnttab_cache_flush", G.CACHE_FLUSH, ["a", "offset", "length", "op"]),
    ("struct xen_memory_reservation", M.MEMORY_RESERVATION,
     ["extent_start", "nr_extents", "extent_order", "mem_flags", "domid"]),
    ("struct xen_add_to_physmap", M.ADD_TO_PHYSMAP, ["domid", "size", "space", "idx", "gpfn"]),
    ("struct xen_memory_map", M.MEMORY_MAP, ["nr_entries", "buffer"]),
    ("struct xen_machphys_mapping", M.MACHPHYS_MAPPING, ["v_start", "v_end", "max_mfn"]),
    ("grant_entry_v1_t", "<HHI", ["flags", "domid", "frame"]),
    ("grant_entry_v2_t", "<HHIQ", ["hdr.flags", "hdr.domid", "full_page.pad0",
                                   "full_page.frame"]),
]


def offsets(fmt: str) -> tuple[list[int], int]:
    """Field offsets of a little-endian, unaligned ('<') struct format, and its size."""
    out = []
    pos = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt.lstrip("<")):
        n = int(count or 1)
        if code == "x":
            pos += n
            continue
        for _ in range(n):
            out.append(pos)
            pos += struct.calcsize("<" + code)
    return out, pos


def probe(width: int) -> dict[str, tuple[int, list[int]]]:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <stdint.h>",
             "#include <xen/xen.h>", "#include <xen/grant_table.h>", "#include <xen/memory.h>",
             "int main(void) {"]
    for ctype, _fmt, fields in LAYOUTS:
        offs = " ".join(f"%zu" for _ in fields)
        args = ", ".join(f"offsetof({ctype}, {f})" for f in fields)
        lines.append(f'printf("{ctype}|%zu|{offs}\\n", sizeof({ctype}), {args});')
    lines += ["return 0; }"]
    return lines


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("abi")


@pytest.mark.parametrize("width", [4, 8], ids=["pv32", "pv64"])
def test_layouts_match_the_headers(tmp, width):
    if shutil.which("gcc") is None or not HEADERS.exists():
        pytest.fail("gcc and libxen-dev (/usr/include/xen) are needed for the ABI probe")
    src = tmp / f"probe{width}.c"
    exe = tmp / f"probe{width}"
    src.write_text("\n".join(probe(width)))
    cc = subprocess.run(["gcc", "-m32" if width == 4 else "-m64",
                         "-D__XEN_INTERFACE_VERSION__=0x00040d00", "-o", str(exe), str(src)],
                        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    seen = {}
    for line in out.splitlines():
        name, size, offs = line.split("|")
        seen[name] = (int(size), [int(x) for x in offs.split()])
    for ctype, fmt, _fields in LAYOUTS:
        f = fmt[width] if isinstance(fmt, dict) else fmt
        offs, size = offsets(f)
        assert seen[ctype] == (size, offs), (ctype, f)
    # the offsets the hypercall code writes results at
    assert offsets(G.MAP_GRANT_REF)[0][4] == 18
    assert offsets(M.MEMORY_RESERVATION[width])[1] * 2 == M.EXCHANGE_DONE_OFFSET[width]
