"""Cross-check every layout and constant of xenpy/abi against Xen's real public headers.

The C probe is *generated from the Python definitions*: every ctypes structure found in
xenpy/abi (module level, and the per-width ones built by ``layouts()``) gets a
``sizeof``/``offsetof`` line per field, recursively, and every integer constant (module
level, IntEnum members, and the HYPERCALLS / XEN_ELFNOTE_DESC / XEN_ELF_FEATURE_NAMES
tables) gets a ``printf`` of the matching C name.  The program is compiled with
``gcc -m32`` and ``gcc -m64`` against /usr/include/xen and the output compared field by
field, so a field or constant added later is covered without touching this file.

A Python constant with no C counterpart in either width must be listed in
NOT_IN_HEADERS with the reason, so a misspelt name cannot silently escape the check.
"""
from __future__ import annotations

import ctypes
import enum
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

import xenpy.abi
from xenpy.abi.xen import Width, layouts

GCC = shutil.which("gcc")
XEN_INCLUDE = Path("/usr/include/xen")
INTERFACE = "0x00040d00"      # what guests/Makefile builds with

pytestmark = pytest.mark.skipif(GCC is None or not (XEN_INCLUDE / "xen.h").exists(),
                                reason="needs gcc (with -m32 multilib) and libxen-dev")

#: Python structure name -> C type, where snake_case(CamelName) is not the C name.
C_STRUCT_NAME: dict[str, str] = {}

#: Fields xenpy spells out that the C struct leaves as implicit padding.
PY_ONLY_FIELDS = {
    ("VcpuInfo", "pad0"): "C has implicit padding after evtchn_upcall_mask",
}

#: C expressions for Python constants whose header counterpart has another shape.
ALIASES: dict[str, str] = {
    "XEN_GUEST_HANDLE_LEN": "sizeof(xen_domain_handle_t)",      # XENVER_guest_handle's arg
    "XEN_COMMANDLINE_INFO_LEN": "sizeof(xen_commandline_t)",    # XENVER_commandline's arg
    "XENMEMF_address_bits_mask": "XENMEMF_get_address_bits(~0u)",
}

#: Python constants that are not (or not under this name) in the public headers.
NOT_IN_HEADERS: dict[str, str] = {
    r"_PAGE_\w+": "page-table bits live in Xen's internal page.h",
    r"PAGE_(SHIFT|SIZE)": "x86 page size, not a public-header macro",
    r"TRAP_\w+": "x86 exception vectors (Xen's internal processor.h)",
    r"TI_(DPL_MASK|FLAG_IF)": "trap_info.flags bits, documented in arch-x86/xen.h prose",
    r"NR_HYPERCALLS": "size of xenpy's dispatch table (Xen's NR_hypercalls is internal)",
    r"HYPERCALL_(PAGE_STUBS|STUB_SIZE|VECTOR)": "hypercall-page layout, not a macro",
    r"EINTR|ERESTART": "errno.h defines these only #ifdef __XEN__ (internal)",
    r"EVTCHNOP_reset_cont": "event_channel.h defines it only #ifdef __XEN__",
    r"XENFEAT_grant_map_identity": "deprecated: commented out in features.h (was 12)",
    r"INVALID_M2P_ENTRY": "Xen's internal mm.h (the M2P value of an unassigned frame)",
    r"XENCONS_(IN|OUT)_SIZE": "the sizes of xencons_interface's arrays (checked by layout)",
    r"E820_RAM": "E820 type, from the e820 spec, not a Xen header",
}


def c_struct_name(py_name: str) -> str:
    if py_name in C_STRUCT_NAME:
        return C_STRUCT_NAME[py_name]
    return "struct " + re.sub(r"(?<!^)(?=[A-Z])", "_", py_name).lower()


def abi_modules() -> list:
    mods = []
    for info in pkgutil.walk_packages(xenpy.abi.__path__, "xenpy.abi."):
        mods.append(importlib.import_module(info.name))
    return mods


def header_of(mod) -> str | None:
    rel = mod.__name__.removeprefix("xenpy.abi.").replace(".", "/")
    path = XEN_INCLUDE / f"{rel}.h"
    return f"xen/{rel}.h" if path.exists() else None


# --- structures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    path: str            # C member designator, e.g. "console.domU.mfn" or "vcpu_info[0].time"
    offset: int
    size: int
    signed: bool | None  # None: not a scalar integer


_SIGNED = {ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64, ctypes.c_byte,
           ctypes.c_short, ctypes.c_int, ctypes.c_long, ctypes.c_longlong}
_UNSIGNED = {ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_ubyte,
             ctypes.c_ushort, ctypes.c_uint, ctypes.c_ulong, ctypes.c_ulonglong}


def walk_fields(cls: type, prefix: str = "", base: int = 0) -> list[Field]:
    """Every field of ``cls``, nested ones too, with offsets from the outermost struct."""
    out: list[Field] = []
    for entry in cls._fields_:
        name, typ = entry[0], entry[1]
        if (cls.__name__, name) in PY_ONLY_FIELDS:
            continue
        desc = getattr(cls, name)
        cname = name.rstrip("_")             # `in_` in Python is `in` in C
        path = f"{prefix}{cname}"
        off = base + desc.offset
        signed = True if typ in _SIGNED else False if typ in _UNSIGNED else None
        out.append(Field(path, off, ctypes.sizeof(typ), signed))
        if issubclass(typ, (ctypes.Structure, ctypes.Union)):
            out += walk_fields(typ, path + ".", off)
        elif issubclass(typ, ctypes.Array) and issubclass(typ._type_, (ctypes.Structure,
                                                                         ctypes.Union)):
            stride = ctypes.sizeof(typ._type_)
            out.append(Field(f"{path}[1]", off + stride, stride, None))
            out += walk_fields(typ._type_, f"{path}[0].", off)
    return out


def structures(width: Width) -> dict[str, type]:
    """Every ABI structure a guest of ``width`` sees, by Python name."""
    found: dict[str, type] = {}
    for mod in abi_modules():
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, ctypes.Structure)
                    and obj.__module__ == mod.__name__ and hasattr(obj, "_fields_")):
                found[name] = obj
    lay = layouts(width)
    for f in fields(lay):
        obj = getattr(lay, f.name)
        if isinstance(obj, type) and issubclass(obj, ctypes.Structure):
            found[f.name] = obj
    return found


# --- constants ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Const:
    name: str                       # the Python name, for messages
    value: int
    candidates: tuple[str, ...]     # C expressions to try, first declared wins
    widths: frozenset[Width] = frozenset(Width)


def constants() -> list[Const]:
    out: dict[str, Const] = {}

    def add(c: Const) -> None:
        out.setdefault(c.name, c)

    for mod in abi_modules():
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, enum.IntEnum) and \
                    obj.__module__ == mod.__name__ and obj is not Width:
                prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", obj.__name__).upper()
                for m in obj:
                    add(Const(f"{obj.__name__}.{m.name}", int(m),
                              (f"XEN_{m.name}", f"{prefix}_{m.name}", m.name)))
            elif isinstance(obj, int) and not isinstance(obj, bool) and \
                    re.fullmatch(r"_?[A-Z][A-Za-z0-9_]*", name):
                if name.endswith("_X86_64"):
                    add(Const(name, int(obj), ("__" + name.removesuffix("_X86_64"),),
                              frozenset({Width.X86_64})))
                elif m := re.fullmatch(r"XENVER_(\w+)_LEN", name):
                    # version.h sizes are typedefs: XEN_<X>[_INFO]_LEN = sizeof(xen_<x>[_info]_t)
                    t = m.group(1).lower()
                    add(Const(name, int(obj), (name, f"sizeof(xen_{t}_t)",
                                               f"sizeof(xen_{t}_info_t)",
                                               *([ALIASES[name]] if name in ALIASES else []))))
                elif m := re.fullmatch(r"(\w+)_SIZE", name):
                    # a struct size: sizeof(<x>_t) or sizeof(struct <x>)
                    t = m.group(1).lower()
                    add(Const(name, int(obj), (name, f"sizeof({t}_t)", f"sizeof(struct {t})",
                                               *([ALIASES[name]] if name in ALIASES else []))))
                else:
                    add(Const(name, int(obj), (name, *([ALIASES[name]] if name in ALIASES
                                                       else []))))
    from xenpy.abi import elfnote, xen
    for nr, hname in xen.HYPERCALLS.items():
        add(Const(f"HYPERCALLS[{nr}]", nr, (f"__HYPERVISOR_{hname}",)))
    for nr, (nname, _) in elfnote.XEN_ELFNOTE_DESC.items():
        add(Const(f"XEN_ELFNOTE_DESC[{nr}]", nr, (f"XEN_ELFNOTE_{nname}",)))
    for bit, fname in elfnote.XEN_ELF_FEATURE_NAMES.items():
        add(Const(f"XEN_ELF_FEATURE_NAMES[{bit}]", bit, (f"XENFEAT_{fname}",)))
    return list(out.values())


# --- the C program ------------------------------------------------------------------------------
BASE_HEADERS = ["xen/xen.h", "xen/features.h", "xen/errno.h", "xen/io/console.h",
                "xen/io/xs_wire.h"]


def includes() -> str:
    hdrs = list(BASE_HEADERS)
    for mod in abi_modules():
        h = header_of(mod)
        if h and h not in hdrs:
            hdrs.append(h)
    std = "#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n"
    return std + "".join(f"#include <{h}>\n" for h in hdrs)


def struct_program(width: Width) -> tuple[str, dict[tuple[str, str], tuple]]:
    lines, expect = [], {}
    for py, cls in sorted(structures(width).items()):
        ct = c_struct_name(py)
        lines.append(f'printf("S {py} %zu\\n", sizeof({ct}));')
        expect[(py, "")] = (ctypes.sizeof(cls),)
        for f in walk_fields(cls):
            m = f"((({ct} *)0)->{f.path})"
            sign = f", (int)((__typeof__({m}))-1 < 0)" if f.signed is not None else ", -1"
            lines.append(f'printf("F {py} {f.path} %zu %zu %d\\n", offsetof({ct}, {f.path}), '
                         f'sizeof({m}){sign});')
            expect[(py, f.path)] = (f.offset, f.size, -1 if f.signed is None else int(f.signed))
    body = "\n    ".join(lines)
    return f"{includes()}\nint main(void)\n{{\n    {body}\n    return 0;\n}}\n", expect


def const_program(consts: list[tuple[str, str]]) -> str:
    lines = [f'printf("C {key} %llu %zu\\n", (unsigned long long)({expr}), sizeof({expr}));'
             for key, expr in consts]
    body = "\n    ".join(lines)
    return f"{includes()}\nint main(void)\n{{\n    {body}\n    return 0;\n}}\n"


def compile_and_run(src: str, width: Width, tmp: Path, tag: str, extra: tuple[str, ...] = ()
                    ) -> subprocess.CompletedProcess:
    c = tmp / f"{tag}{width * 8}.c"
    exe = tmp / f"{tag}{width * 8}"
    c.write_text(src)
    cc = subprocess.run([GCC, f"-m{width * 8}", "-I/usr/include", "-w", "-fmax-errors=0",
                         *extra, str(c), "-o", str(exe)], capture_output=True, text=True,
                        env={**os.environ, "LC_ALL": "C"})
    if cc.returncode != 0:
        return cc
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True)


@pytest.mark.parametrize("width", list(Width), ids=lambda w: f"x86_{w * 8}")
def test_struct_layouts_match_headers(width, tmp_path):
    src, expect = struct_program(width)
    run = compile_and_run(src, width, tmp_path, "structs",
                          (f"-D__XEN_INTERFACE_VERSION__={INTERFACE}",))
    assert run.returncode == 0, f"the generated probe does not compile:\n{run.stderr[:4000]}"
    got = {}
    for line in run.stdout.splitlines():
        kind, py, *rest = line.split()
        if kind == "S":
            got[(py, "")] = (int(rest[0]),)
        else:
            got[(py, rest[0])] = tuple(int(x) for x in rest[1:])
    assert got.keys() == expect.keys()
    bad = [f"{py}.{path or '<sizeof>'}: xenpy {expect[(py, path)]}, C {got[(py, path)]}"
           for (py, path) in expect if expect[(py, path)] != got[(py, path)]]
    assert not bad, "(offset, size, signed) differ from the headers:\n" + "\n".join(bad)
    assert len(expect) > 100            # the walk really covered the structures


def probe_constants(width: Width, tmp: Path) -> dict[str, int]:
    """Compile the constant probe, dropping C names gcc reports undeclared; key -> value."""
    candidates = [(f"{c.name}|{i}", expr) for c in constants() if width in c.widths
                  for i, expr in enumerate(c.candidates)]
    defines = ("-D__XEN_TOOLS__",)     # domctl/sysctl-only constants; implies the latest ABI
    for _ in range(3):
        run = compile_and_run(const_program(candidates), width, tmp, "consts", defines)
        if run.returncode == 0:
            break
        missing = set(re.findall(r"'([A-Za-z_]\w*)' undeclared", run.stderr))
        missing |= set(re.findall(r"incomplete type 'struct (\w+)'", run.stderr))
        assert missing, f"the constant probe does not compile:\n{run.stderr[:4000]}"
        candidates = [(k, e) for k, e in candidates if missing.isdisjoint(re.findall(r"\w+", e))]
    else:
        pytest.fail(f"the constant probe does not compile:\n{run.stderr[:4000]}")
    values: dict[str, int] = {}
    for line in sorted(run.stdout.splitlines(), key=lambda s: s.split()[1]):
        _, key, val, size = line.split()
        name, _, _idx = key.rpartition("|")
        if name not in values:              # the first declared candidate wins
            bits = 8 * int(size)
            values[name] = (int(val) & ((1 << bits) - 1), bits)
    return values


def test_constants_match_headers(tmp_path):
    consts = constants()
    by_name = {c.name: c for c in consts}
    seen: set[str] = set()
    bad = []
    for width in Width:
        for name, (cval, bits) in probe_constants(width, tmp_path).items():
            seen.add(name)
            py = by_name[name].value
            if not -(1 << (bits - 1)) <= py < (1 << bits) or py % (1 << bits) != cval:
                bad.append(f"{name} = {py:#x} in xenpy, {cval:#x} in the x86_{width * 8} headers")
    assert not bad, "constants differ from the headers:\n" + "\n".join(bad)
    unknown = [n for n in by_name if n not in seen
               and not any(re.fullmatch(p, n.rpartition(".")[2]) for p in NOT_IN_HEADERS)]
    assert not unknown, ("no C macro or enum of this name in /usr/include/xen (fix the name, or "
                         "list it in NOT_IN_HEADERS with the reason): " + ", ".join(unknown))
    assert len(seen) > 200


def test_allowlists_are_not_stale():
    """Every NOT_IN_HEADERS pattern and padding exception still matches something."""
    names = [c.name.rpartition(".")[2] for c in constants()]
    stale = [p for p in NOT_IN_HEADERS if not any(re.fullmatch(p, n) for n in names)]
    assert not stale, f"NOT_IN_HEADERS patterns that match no constant: {stale}"
    for (py, fname) in PY_ONLY_FIELDS:
        cls = structures(Width.X86_32).get(py)
        assert cls is not None and fname in [f[0] for f in cls._fields_], (py, fname)
