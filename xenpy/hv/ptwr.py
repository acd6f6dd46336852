"""Writable page tables: emulate a guest kernel's store into its own read-only L1 (Xen's
pv/ro-page-fault.c).

A PV kernel maps its page tables read-only (the frame table would refuse anything
else), yet Linux writes PTEs with plain stores.  Xen lets it: the store faults (#PF,
present + write), the hypervisor decodes the instruction, checks the new entry exactly
as mod_l1_entry would, applies it and steps past the instruction.  Anything it cannot
handle — another instruction, a misaligned or page-crossing store, an entry that fails
validation — is X86EMUL_UNHANDLEABLE and the #PF goes to the guest.

Handled stores (capstone decodes them): ``mov`` of a register or immediate, ``stos``
(without ``rep``), ``xchg``, ``cmpxchg`` (4 or 8 bytes) and ``cmpxchg8b``.  A 4-byte
store on a PAE guest writes half of an 8-byte entry: the other half comes from the
table, and an invalid *upper*-half write only clears _PAGE_PRESENT (Xen assumes the
guest writes the halves in the wrong order).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import capstone
from capstone import x86_const as X

from ..abi.xen import PAGE_SHIFT, VMASST_TYPE_writable_pagetables, Width, _PAGE_PRESENT, _PAGE_RW
from ..abi.xen import _PAGE_USER
from .guest_access import MADDR_MASK, PFEC_present, PFEC_write, GuestFault
from .machine import PageType
from .mm import PageError, flush_tlbs, get_entry, guest_l1e_maddr, put_entry

if TYPE_CHECKING:
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.ptwr")

PFEC_reserved_bit = 8
PFEC_insn_fetch = 16
EFLAGS_ZF = 1 << 6
EFLAGS_DF = 1 << 10
MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=2)
def _decoder(width: Width) -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86,
                     capstone.CS_MODE_32 if width == Width.X86_32 else capstone.CS_MODE_64)
    md.detail = True
    return md


class Unhandleable(Exception):
    """X86EMUL_UNHANDLEABLE: the fault goes to the guest."""


def _reg(v: "Vcpu", name: str) -> tuple[str, int]:
    """(Unicorn name of the full register, width in bytes) of a capstone register name."""
    if v.domain.width == Width.X86_32:
        if name in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"):
            return name, 4
        raise Unhandleable(f"register {name}")
    if name.startswith("r") and name[1:].isdigit():
        return name, 8
    if name.startswith("r") and name[1:-1].isdigit() and name[-1] == "d":
        return name[:-1], 4
    if name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"):
        return name, 8
    if name in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"):
        return "r" + name[1:], 4
    raise Unhandleable(f"register {name}")


def _read_reg(v: "Vcpu", name: str) -> tuple[int, int]:
    full, size = _reg(v, name)
    return v.cpu.reg(full) & ((1 << (8 * size)) - 1), size


def _write_reg(v: "Vcpu", name: str, value: int) -> None:
    full, size = _reg(v, name)
    v.cpu.set_reg(full, value & ((1 << (8 * size)) - 1))   # a 32-bit write zero-extends


def ptwr_do_page_fault(v: "Vcpu", addr: int, error_code: int, ip: int) -> bool:
    """pv_ro_page_fault for a kernel write fault at ``addr``; True when emulated."""
    d = v.domain
    if not d.vm_assist >> VMASST_TYPE_writable_pagetables & 1:
        return False
    if error_code & (PFEC_reserved_bit | PFEC_insn_fetch) or \
            (error_code & (PFEC_write | PFEC_present)) != (PFEC_write | PFEC_present):
        return False
    mem = d.mem
    try:
        pte = mem.read_u64(guest_l1e_maddr(v, addr))
    except PageError:
        return False
    if pte & (_PAGE_PRESENT | _PAGE_RW) != _PAGE_PRESENT:
        return False
    table = (pte & MADDR_MASK) >> PAGE_SHIFT
    if not d.owns(table) or mem.type[table] != PageType.l1 or not mem.type_count[table]:
        return False
    try:
        _emulate(v, addr, table, ip)
    except (Unhandleable, GuestFault) as e:
        d.log_once(f"ptwr {e}", "ptwr emulation at %#x (cr2 %#x) failed: %s", ip, addr, e)
        return False
    v.ptwr_emulations = getattr(v, "ptwr_emulations", 0) + 1
    return True


@dataclass(frozen=True)
class Operand:
    type: int               # capstone X86_OP_REG / X86_OP_IMM / X86_OP_MEM
    reg: str                # register name (REG operands)
    imm: int
    size: int


@dataclass(frozen=True)
class Decoded:
    """What ptwr needs of one instruction (decoded once per distinct byte string)."""
    mnemonic: str
    size: int
    rep: bool
    ops: tuple[Operand, ...]


@functools.lru_cache(maxsize=1024)
def decode(width: Width, code: bytes) -> Decoded | None:
    """Decode the first instruction of ``code`` (a pure function of its bytes: cached)."""
    insn = next(_decoder(width).disasm(code, 0, 1), None)
    if insn is None:
        return None
    ops = tuple(Operand(o.type, insn.reg_name(o.reg) if o.type == X.X86_OP_REG else "",
                        o.imm if o.type == X.X86_OP_IMM else 0, o.size)
                for o in insn.operands)
    return Decoded(insn.mnemonic.removeprefix("lock "), insn.size,
                   insn.prefix[0] in (X.X86_PREFIX_REP, X.X86_PREFIX_REPNE), ops)


def _emulate(v: "Vcpu", cr2: int, table: int, ip: int) -> None:
    d = v.domain
    code = v.gmem.read(ip, 15) if _page_room(ip) >= 15 else _read_code(v, ip)
    insn = decode(d.width, code)
    if insn is None:
        raise Unhandleable("undecodable instruction")
    if insn.rep:
        raise Unhandleable(f"{insn.mnemonic} with a rep prefix")
    ops = insn.ops
    m = insn.mnemonic
    ip_next = ip + insn.size
    if m == "mov" and len(ops) == 2 and ops[0].type == X.X86_OP_MEM:
        size = ops[0].size
        val = _read_reg(v, ops[1].reg)[0] if ops[1].type == X.X86_OP_REG \
            else ops[1].imm & ((1 << (8 * size)) - 1)
        _update(v, cr2, table, None, val, size)
    elif m in ("stosd", "stosq"):
        size = 4 if m == "stosd" else 8
        acc = "eax" if size == 4 else "rax"
        _update(v, cr2, table, None, _read_reg(v, acc)[0], size)
        di = "edi" if d.width == Width.X86_32 else "rdi"
        step = -size if v.cpu.reg("eflags") & EFLAGS_DF else size
        v.cpu.set_reg(di, (v.cpu.reg(di) + step) & (0xFFFFFFFF if d.width == 4 else MASK64))
    elif m == "xchg" and len(ops) == 2 and X.X86_OP_MEM in (ops[0].type, ops[1].type):
        reg = ops[1] if ops[0].type == X.X86_OP_MEM else ops[0]
        val, size = _read_reg(v, reg.reg)
        old = _update(v, cr2, table, None, val, size)
        _write_reg(v, reg.reg, old)
    elif m == "cmpxchg" and len(ops) == 2 and ops[0].type == X.X86_OP_MEM:
        val, size = _read_reg(v, ops[1].reg)
        acc = "eax" if size == 4 else "rax"
        expected = _read_reg(v, acc)[0]
        ok, cur = _cmpxchg(v, cr2, table, expected, val, size)
        if not ok:
            _write_reg(v, acc, cur)
        _set_zf(v, ok)
    elif m == "cmpxchg8b" and ops and ops[0].type == X.X86_OP_MEM:
        expected = (v.cpu.reg("edx") & 0xFFFFFFFF) << 32 | (v.cpu.reg("eax") & 0xFFFFFFFF)
        val = (v.cpu.reg("ecx") & 0xFFFFFFFF) << 32 | (v.cpu.reg("ebx") & 0xFFFFFFFF)
        ok, cur = _cmpxchg(v, cr2, table, expected, val, 8)
        if not ok:
            v.cpu.set_regs(eax=cur & 0xFFFFFFFF, edx=cur >> 32)
        _set_zf(v, ok)
    else:
        raise Unhandleable(f"instruction {m}")
    if d.width == Width.X86_32:
        v.cpu.set_reg("eip", ip_next)
    else:
        from .traps64 import set_ip
        set_ip(v, ip_next)
    flush_tlbs(d)


def _page_room(ip: int) -> int:
    return 4096 - (ip & 4095)


def _read_code(v: "Vcpu", ip: int) -> bytes:
    """Up to 15 bytes at ``ip``, stopping at an unmapped page (the decoder needs less)."""
    first = v.gmem.read(ip, _page_room(ip))
    try:
        return first + v.gmem.read(ip + len(first), 15 - len(first))
    except GuestFault:
        return first


def _set_zf(v: "Vcpu", zf: bool) -> None:
    name = "eflags"
    fl = v.cpu.reg(name)
    v.cpu.set_reg(name, fl | EFLAGS_ZF if zf else fl & ~EFLAGS_ZF)


def _widen(v: "Vcpu", addr: int, table: int, val: int, size: int) -> tuple[int, int, int]:
    """Turn a sub-word store into a full 8-byte entry: (slot maddr, new entry, offset bits)."""
    if size not in (4, 8) or addr & (size - 1):
        raise Unhandleable(f"{size}-byte store at {addr:#x}")
    slot = (table << PAGE_SHIFT) + (addr & 0xFF8)
    if size == 8:
        return slot, val, 0
    offset = (addr & 7) * 8
    full = v.domain.mem.read_u64(slot) & ~(0xFFFFFFFF << offset)
    return slot, full | (val & 0xFFFFFFFF) << offset, offset


def _check_new(v: "Vcpu", new: int, size: int, addr: int, cmpxchg: bool) -> int:
    """get_page_from_l1e on the new entry; the PAE upper-half fix-up; the user bit."""
    d = v.domain
    if not new & _PAGE_PRESENT:
        return new
    if d.width == Width.X86_64:
        new |= _PAGE_USER
    try:
        get_entry(d, PageType.l1, new)
    except PageError as e:
        if d.width == Width.X86_32 and size == 4 and addr & 4 and not cmpxchg:
            return new & ~_PAGE_PRESENT
        raise Unhandleable(str(e)) from None
    return new


def _update(v: "Vcpu", addr: int, table: int, _old: None, val: int, size: int) -> int:
    """ptwr_emulated_update for a plain store; returns the old value of the stored bytes."""
    mem = v.domain.mem
    slot, new, offset = _widen(v, addr, table, val, size)
    new = _check_new(v, new, size, addr, cmpxchg=False)
    old = mem.read_u64(slot)
    mem.write_u64(slot, new)
    if old & _PAGE_PRESENT:
        put_entry(v.domain, PageType.l1, old)
    return (old >> offset) & ((1 << (8 * size)) - 1)


def _cmpxchg(v: "Vcpu", addr: int, table: int, expected: int, val: int,
             size: int) -> tuple[bool, int]:
    """ptwr_emulated_cmpxchg: (swapped, current value of the stored bytes)."""
    mem = v.domain.mem
    slot, new, offset = _widen(v, addr, table, val, size)
    mask = (1 << (8 * size)) - 1
    old = mem.read_u64(slot)
    cur = (old >> offset) & mask
    if cur != expected & mask:
        return False, cur
    new = _check_new(v, new, size, addr, cmpxchg=True)
    mem.write_u64(slot, new)
    if old & _PAGE_PRESENT:
        put_entry(v.domain, PageType.l1, old)
    return True, cur
