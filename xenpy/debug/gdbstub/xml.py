"""Target descriptions (gdb's target.xml) for i386 and x86-64.

gdb's i386 support insists on the org.gnu.gdb.i386.core feature with the x87
registers in it and on org.gnu.gdb.i386.sse; register *order* in the XML defines the
g/G packet layout and p/P numbering, so `TargetDescription.registers` is the single
source of both.  Control registers travel in an extra feature (org.xenpy.gdb.i386.cr)
in the "system" group, so `info registers cr3` works and `info registers` stays short.
Values are little-endian, as the g packet of an x86 target is.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpy.errors import ConfigError

ARCH_I386 = "i386"
ARCH_X86_64 = "i386:x86-64"


@dataclass(frozen=True, slots=True)
class RegisterDef:
    name: str
    bitsize: int
    type: str
    feature: str
    group: str | None = None

    @property
    def size(self) -> int:
        return self.bitsize // 8


@dataclass(frozen=True, slots=True)
class TargetDescription:
    arch: str
    registers: tuple[RegisterDef, ...]
    xml: str

    def number(self, name: str) -> int:
        for i, reg in enumerate(self.registers):
            if reg.name == name:
                return i
        raise KeyError(name)

    @property
    def pc_name(self) -> str:
        return "rip" if self.arch == ARCH_X86_64 else "eip"


_EFLAGS_TYPE = """    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/>
      <field name="" start="1" end="1"/>
      <field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/>
      <field name="ZF" start="6" end="6"/>
      <field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/>
      <field name="IF" start="9" end="9"/>
      <field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/>
      <field name="NT" start="14" end="14"/>
      <field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/>
      <field name="AC" start="18" end="18"/>
      <field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/>
      <field name="ID" start="21" end="21"/>
    </flags>
"""

_SSE_TYPES = """    <vector id="v8bf16" type="bfloat16" count="8"/>
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v8_bfloat16" type="v8bf16"/>
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/>
      <field name="DE" start="1" end="1"/>
      <field name="ZE" start="2" end="2"/>
      <field name="OE" start="3" end="3"/>
      <field name="UE" start="4" end="4"/>
      <field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/>
      <field name="IM" start="7" end="7"/>
      <field name="DM" start="8" end="8"/>
      <field name="ZM" start="9" end="9"/>
      <field name="OM" start="10" end="10"/>
      <field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/>
      <field name="FZ" start="15" end="15"/>
    </flags>
"""

_CORE = "org.gnu.gdb.i386.core"
_SSE = "org.gnu.gdb.i386.sse"
_SEGMENTS = "org.gnu.gdb.i386.segments"
_CR = "org.xenpy.gdb.i386.cr"

_X87 = tuple(RegisterDef(f"st{i}", 80, "i387_ext", _CORE) for i in range(8)) + tuple(
    RegisterDef(name, 32, "int", _CORE, "float")
    for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
)
_SEGS = tuple(RegisterDef(s, 32, "int32", _CORE) for s in ("cs", "ss", "ds", "es", "fs", "gs"))


def _i386_registers() -> tuple[RegisterDef, ...]:
    gprs = tuple(
        RegisterDef(n, 32, {"esp": "data_ptr", "ebp": "data_ptr"}.get(n, "int32"), _CORE)
        for n in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
    )
    return (
        gprs
        + (RegisterDef("eip", 32, "code_ptr", _CORE), RegisterDef("eflags", 32, "i386_eflags", _CORE))
        + _SEGS
        + _X87
        + tuple(RegisterDef(f"xmm{i}", 128, "vec128", _SSE) for i in range(8))
        + (RegisterDef("mxcsr", 32, "i386_mxcsr", _SSE, "vector"),)
        + tuple(RegisterDef(f"cr{i}", 32, "int32", _CR, "system") for i in (0, 2, 3, 4))
    )


def _x86_64_registers() -> tuple[RegisterDef, ...]:
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(f"r{i}" for i in range(8, 16))
    gprs = tuple(
        RegisterDef(n, 64, {"rsp": "data_ptr", "rbp": "data_ptr"}.get(n, "int64"), _CORE) for n in names
    )
    return (
        gprs
        + (RegisterDef("rip", 64, "code_ptr", _CORE), RegisterDef("eflags", 32, "i386_eflags", _CORE))
        + _SEGS
        + _X87
        + tuple(RegisterDef(f"xmm{i}", 128, "vec128", _SSE) for i in range(16))
        + (RegisterDef("mxcsr", 32, "i386_mxcsr", _SSE, "vector"),)
        + (RegisterDef("fs_base", 64, "int", _SEGMENTS), RegisterDef("gs_base", 64, "int", _SEGMENTS))
        + tuple(RegisterDef(f"cr{i}", 64, "int64", _CR, "system") for i in (0, 2, 3, 4))
    )


def _render(arch: str, regs: tuple[RegisterDef, ...]) -> str:
    types = {_CORE: _EFLAGS_TYPE, _SSE: _SSE_TYPES}
    lines = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        "<target>",
        f"  <architecture>{arch}</architecture>",
    ]
    features: list[str] = []
    for reg in regs:
        if reg.feature not in features:
            features.append(reg.feature)
    for feature in features:
        lines.append(f'  <feature name="{feature}">')
        if feature in types:
            lines.append(types[feature].rstrip("\n"))
        for reg in regs:
            if reg.feature != feature:
                continue
            group = f' group="{reg.group}"' if reg.group else ""
            lines.append(f'    <reg name="{reg.name}" bitsize="{reg.bitsize}" type="{reg.type}"{group}/>')
        lines.append("  </feature>")
    lines.append("</target>")
    return "\n".join(lines) + "\n"


def target_description(arch: str) -> TargetDescription:
    """The description for a Target's `arch` ("i386" or "i386:x86-64")."""
    if arch == ARCH_I386:
        regs = _i386_registers()
    elif arch == ARCH_X86_64:
        regs = _x86_64_registers()
    else:
        raise ConfigError(f"gdb target arch: expected {ARCH_I386!r} or {ARCH_X86_64!r}, got {arch!r}")
    return TargetDescription(arch, regs, _render(arch, regs))
