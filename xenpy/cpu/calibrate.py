"""Find where Unicorn keeps ``error_code`` and ``old_exception`` in a saved context.

Unicorn never runs QEMU's interrupt-delivery code, so a fault's error code is only
visible in CPUX86State, and ``old_exception`` is never reset (unicorn issue #1883):
the second fault becomes #DF and the third silently ends emulation.  The hypervisor
therefore acknowledges every fault by rewriting both fields in a saved context.
Their offsets are not part of Unicorn's API, so we *measure* them at start-up (see
shared/unicorn-notes.md §1) and refuse to run if the measurement is ambiguous.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import cache

import unicorn as uc
from unicorn import x86_const as x86

from ..errors import CalibrationError


@dataclass(frozen=True)
class ContextOffsets:
    """Byte offsets of env->error_code and env->old_exception in a uc_context blob."""
    error_code: int
    old_exception: int
    size: int


_CODE = 0x2000
_GDT = 0x1000
_DATA = 0x3000


def _blob(u: uc.Uc) -> bytes:
    ctx = u.context_save()
    return ctypes.string_at(ctx.context, ctx.size)


def _run_fault(u: uc.Uc, pristine, at: int, code: bytes, setup: dict[int, int]) -> bytes:
    """Run ``code`` at its own address ``at`` (Unicorn would reuse a stale translation)."""
    u.context_restore(pristine)
    u.mem_write(at, code + b"\xf4" * 16)
    for reg, val in setup.items():
        u.reg_write(reg, val)
    captured: list[bytes] = []

    def on_intr(uc_: uc.Uc, intno: int, _user) -> None:
        captured.append(_blob(uc_))
        uc_.emu_stop()

    def on_invalid(uc_: uc.Uc, _user) -> bool:
        captured.append(_blob(uc_))
        uc_.emu_stop()
        return True

    h1 = u.hook_add(uc.UC_HOOK_INTR, on_intr)
    h2 = u.hook_add(uc.UC_HOOK_INSN_INVALID, on_invalid)
    try:
        u.emu_start(at, at + len(code) + 16)
    finally:
        u.hook_del(h1)
        u.hook_del(h2)
    if not captured:
        raise CalibrationError(f"calibration fault {code.hex()} did not reach a hook")
    return captured[0]


def _ints(blob: bytes) -> tuple[int, ...]:
    return struct.unpack_from(f"<{len(blob) // 4}i", blob)


@cache
def calibrate(mode: int = uc.UC_MODE_32) -> ContextOffsets:
    """Measure the two offsets for ``mode``; raise CalibrationError if not unique."""
    u = uc.Uc(uc.UC_ARCH_X86, mode)
    u.mem_map(0, 0x10000)
    # null, flat code, flat data: selectors 0x1238/0x2460 lie past the limit (0x17).
    gdt = bytes(8) + bytes.fromhex("ffff0000009acf00") + bytes.fromhex("ffff00000092cf00")
    u.mem_write(_GDT, gdt)
    u.reg_write(x86.UC_X86_REG_GDTR, (0, _GDT, len(gdt) - 1, 0))
    u.mem_write(_DATA, struct.pack("<HH", 0x1238, 0x2460))
    u.reg_write(x86.UC_X86_REG_ESP, 0x8000)
    pristine = u.context_save()
    base = _ints(ctypes.string_at(pristine.context, pristine.size))
    ebx = x86.UC_X86_REG_RBX if mode == uc.UC_MODE_64 else x86.UC_X86_REG_EBX
    ecx = x86.UC_X86_REG_RCX if mode == uc.UC_MODE_64 else x86.UC_X86_REG_ECX
    mov_ds = bytes.fromhex("8e1b")              # mov ds, word [ebx]
    gp1 = _ints(_run_fault(u, pristine, _CODE, mov_ds, {ebx: _DATA}))
    gp2 = _ints(_run_fault(u, pristine, _CODE + 0x100, mov_ds, {ebx: _DATA + 2}))
    de = _ints(_run_fault(u, pristine, _CODE + 0x200, bytes.fromhex("f7f1"), {ecx: 0}))   # div ecx
    ud = _ints(_run_fault(u, pristine, _CODE + 0x300, bytes.fromhex("0f0b"), {}))          # ud2
    n = min(map(len, (base, gp1, gp2, de, ud)))
    err = [i for i in range(n) if gp1[i] == 0x1238 and gp2[i] == 0x2460 and de[i] == 0]
    old = [i for i in range(n)
           if base[i] == -1 and gp1[i] == 13 and gp2[i] == 13 and de[i] == 0 and ud[i] == -1]
    if len(err) != 1 or len(old) != 1:
        raise CalibrationError(
            f"cannot locate error_code/old_exception in Unicorn {uc.__version__}'s context "
            f"(candidates: {err} / {old}); xenpy needs unicorn 2.1.x")
    return ContextOffsets(err[0] * 4, old[0] * 4, len(base) * 4)
