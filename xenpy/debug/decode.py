"""Hypercall arguments as a person reads them: sub-op names, flags, structs behind pointers.

Shared by the trace (trace.py) and `monitor hypercall` (catch.py).  Decoding reads guest
memory through the vCPU's page tables *before* the call runs (what the guest asked
for), never writes, and never fails: a pointer that does not translate is shown as
``0x...<unreadable>``.  Every name comes from the ABI modules (xenpy/abi/*): a reverse
table per prefix is built once at import, the constants themselves stay defined there.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

from ..abi import callback as abi_callback
from ..abi import event_channel as abi_evtchn
from ..abi import grant_table as abi_gnttab
from ..abi import memory as abi_memory
from ..abi import physdev as abi_physdev
from ..abi import sched as abi_sched
from ..abi import vcpu as abi_vcpu
from ..abi import version as abi_version
from ..abi import xen as abi_xen
from ..abi.errno import Errno
from ..abi.sched import Shutdown
from ..abi.xen import HYPERCALLS, Width
from ..hv.guest_access import GuestFault

if TYPE_CHECKING:
    from ..hv.vcpu import Vcpu

MAX_STRING = 48       # characters of a guest string shown before "..."
MAX_ELEMENTS = 4      # array elements shown before "..."


def _names(module: ModuleType, prefix: str) -> Mapping[int, str]:
    """value -> NAME for the module's constants starting with ``prefix`` (first wins)."""
    out: dict[int, str] = {}
    for name, value in vars(module).items():
        if name.startswith(prefix) and isinstance(value, int) and not isinstance(value, bool):
            out.setdefault(value, name)
    return MappingProxyType(out)


SCHEDOP = _names(abi_sched, "SCHEDOP_")
EVTCHNOP = _names(abi_evtchn, "EVTCHNOP_")
VIRQ = _names(abi_evtchn, "VIRQ_")
XENMEM = _names(abi_memory, "XENMEM_")
GNTTABOP = _names(abi_gnttab, "GNTTABOP_")
VCPUOP = _names(abi_vcpu, "VCPUOP_")
PHYSDEVOP = _names(abi_physdev, "PHYSDEVOP_")
XENVER = _names(abi_version, "XENVER_")
CALLBACKOP = _names(abi_callback, "CALLBACKOP_")
CALLBACKTYPE = _names(abi_callback, "CALLBACKTYPE_")
CONSOLEIO = _names(abi_xen, "CONSOLEIO_")
VMASST_CMD = _names(abi_xen, "VMASST_CMD_")
VMASST_TYPE = _names(abi_xen, "VMASST_TYPE_")
MMU_OP = _names(abi_xen, "MMU_")
MMUEXT = _names(abi_xen, "MMUEXT_")
DOMID = MappingProxyType({v: k for k, v in vars(abi_xen).items()
                          if k.startswith("DOMID_") and k != "DOMID_FIRST_RESERVED"
                          and isinstance(v, int)})


def name_of(table: Mapping[int, str], value: int) -> str:
    return table.get(value, str(value))


def errno_result(result: int | None, width: Width) -> str:
    """A hypercall's result as strace shows a syscall's: -EINVAL, a count, or an address."""
    if result is None:
        return "?"
    if result < 0:
        try:
            return f"-{Errno(-result).name}"
        except ValueError:
            return str(result)
    return str(result) if result < 0x10000 else hex(result)


def domid_name(domid: int) -> str:
    return DOMID.get(domid, str(domid))


def uvmf_flags(flags: int) -> str:
    kind = {abi_xen.UVMF_NONE: "UVMF_NONE", abi_xen.UVMF_TLB_FLUSH: "UVMF_TLB_FLUSH",
            abi_xen.UVMF_INVLPG: "UVMF_INVLPG"}.get(flags & abi_xen.UVMF_FLUSHTYPE_MASK, "?")
    scope = "UVMF_ALL" if flags & abi_xen.UVMF_ALL else "UVMF_LOCAL"
    rest = flags & ~(abi_xen.UVMF_FLUSHTYPE_MASK | abi_xen.UVMF_ALL)
    if rest and flags & abi_xen.UVMF_FLUSHTYPE_MASK == abi_xen.UVMF_INVLPG:
        return f"{kind}|{scope}"      # UVMF_MULTI: the cpumask pointer in the upper bits
    return f"{kind}|{scope}" + (f"|{rest:#x}" if rest else "")


def pte_flags(pte: int) -> str:
    bits = [(abi_xen._PAGE_PRESENT, "P"), (abi_xen._PAGE_RW, "RW"), (abi_xen._PAGE_USER, "U"),
            (abi_xen._PAGE_ACCESSED, "A"), (abi_xen._PAGE_DIRTY, "D"), (abi_xen._PAGE_PSE, "PSE"),
            (abi_xen._PAGE_GLOBAL, "G"), (abi_xen._PAGE_NX, "NX")]
    names = [n for bit, n in bits if pte & bit]
    return f"{pte & 0x000FFFFFFFFFF000:#x}|{'|'.join(names) or '0'}"


class _Reader:
    """Guest reads that never raise: None when the pointer does not translate."""

    def __init__(self, v: "Vcpu") -> None:
        self.v = v
        self.w = v.domain.width

    def read(self, va: int, size: int) -> bytes | None:
        try:
            return self.v.gmem.read(va, size)
        except GuestFault:
            return None

    def unpack(self, fmt: str, va: int) -> tuple[int, ...] | None:
        data = self.read(va, struct.calcsize(fmt))
        return None if data is None else struct.unpack(fmt, data)

    def ptr(self, va: int) -> str:
        return "NULL" if va == 0 else f"{va:#x}"

    def bad(self, va: int) -> str:
        return f"{va:#x}<unreadable>"

    def string(self, va: int, length: int) -> str:
        data = self.read(va, min(length, MAX_STRING))
        if data is None:
            return self.bad(va)
        text = data.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')
        return f'"{text}"' + ("..." if length > MAX_STRING else "")

    @property
    def ul(self) -> str:
        return "I" if self.w == Width.X86_32 else "Q"


Args = tuple[int, ...]
Decoder = Callable[[_Reader, Args], list[str]]


def _struct(r: _Reader, va: int, fmt: str, render: Callable[..., str]) -> str:
    """``{...}`` of the struct at ``va``, or the bare pointer when unreadable."""
    if va == 0:
        return "NULL"
    vals = r.unpack(fmt, va)
    return r.bad(va) if vals is None else "{" + render(*vals) + "}"


def _sched_op(r: _Reader, a: Args) -> list[str]:
    cmd, arg = a[0], a[1]
    out = [name_of(SCHEDOP, cmd)]
    if cmd in (abi_sched.SCHEDOP_shutdown, abi_sched.SCHEDOP_shutdown_code):
        out.append(_struct(r, arg, "<I", lambda reason: f"reason={_shutdown_name(reason)}"))
    elif cmd == abi_sched.SCHEDOP_remote_shutdown:
        out.append(_struct(r, arg, "<HxxI", lambda dom, reason:
                           f"domain_id={domid_name(dom)}, reason={_shutdown_name(reason)}"))
    elif cmd == abi_sched.SCHEDOP_poll:
        fmt = "<IIQ" if r.w == Width.X86_32 else "<QI4xQ"

        def poll(ports: int, nr: int, timeout: int) -> str:
            vals = r.unpack(f"<{min(nr, MAX_ELEMENTS)}I", ports) if nr else ()
            shown = "?" if vals is None else ", ".join(str(p) for p in vals)
            more = ", ..." if nr > MAX_ELEMENTS else ""
            return f"ports=[{shown}{more}], nr_ports={nr}, timeout={timeout}"
        out.append(_struct(r, arg, fmt, poll))
    elif cmd not in (abi_sched.SCHEDOP_yield, abi_sched.SCHEDOP_block):
        out.append(r.ptr(arg))
    return out


def _shutdown_name(reason: int) -> str:
    try:
        return f"SHUTDOWN_{Shutdown(reason).name}"
    except ValueError:
        return str(reason)


def _evtchn_op(r: _Reader, a: Args) -> list[str]:
    cmd, arg = a[0], a[1]
    u16 = "H"
    layouts: dict[int, tuple[str, Callable[..., str]]] = {
        abi_evtchn.EVTCHNOP_send: ("<I", lambda p: f"port={p}"),
        abi_evtchn.EVTCHNOP_unmask: ("<I", lambda p: f"port={p}"),
        abi_evtchn.EVTCHNOP_close: ("<I", lambda p: f"port={p}"),
        abi_evtchn.EVTCHNOP_alloc_unbound: (f"<{u16}{u16}I", lambda d, rd, _p:
                                            f"dom={domid_name(d)}, remote_dom={domid_name(rd)}"),
        abi_evtchn.EVTCHNOP_bind_interdomain: (f"<{u16}xxI", lambda rd, rp:
                                               f"remote_dom={domid_name(rd)}, remote_port={rp}"),
        abi_evtchn.EVTCHNOP_bind_virq: ("<II", lambda virq, vcpu:
                                        f"virq={name_of(VIRQ, virq)}, vcpu={vcpu}"),
        abi_evtchn.EVTCHNOP_bind_ipi: ("<I", lambda vcpu: f"vcpu={vcpu}"),
        abi_evtchn.EVTCHNOP_bind_vcpu: ("<II", lambda p, vcpu: f"port={p}, vcpu={vcpu}"),
        abi_evtchn.EVTCHNOP_status: (f"<{u16}xxI", lambda d, p: f"dom={domid_name(d)}, port={p}"),
    }
    out = [name_of(EVTCHNOP, cmd)]
    if cmd in layouts:
        fmt, render = layouts[cmd]
        out.append(_struct(r, arg, fmt, render))
    else:
        out.append(r.ptr(arg))
    return out


def _memory_op(r: _Reader, a: Args) -> list[str]:
    cmd, arg = a[0] & 0xF, a[1]     # the upper bits carry the continuation start extent
    out = [name_of(XENMEM, cmd)]
    reservation = (abi_memory.XENMEM_increase_reservation, abi_memory.XENMEM_decrease_reservation,
                   abi_memory.XENMEM_populate_physmap)
    if cmd in reservation:
        fmt = "<IIIIH" if r.w == Width.X86_32 else "<QQIIH"
        out.append(_struct(r, arg, fmt, lambda start, nr, order, flags, dom:
                           f"extent_start={r.ptr(start)}, nr_extents={nr}, extent_order={order}, "
                           f"mem_flags={flags:#x}, domid={domid_name(dom)}"))
    elif cmd in (abi_memory.XENMEM_current_reservation, abi_memory.XENMEM_maximum_reservation):
        out.append(_struct(r, arg, "<H", lambda dom: f"domid={domid_name(dom)}"))
    else:
        out.append(r.ptr(arg))
    return out


def _console_io(r: _Reader, a: Args) -> list[str]:
    cmd, count, buf = a[0], a[1], a[2]
    text = r.string(buf, count) if cmd == abi_xen.CONSOLEIO_write else r.ptr(buf)
    return [name_of(CONSOLEIO, cmd), str(count), text]


def _xen_version(r: _Reader, a: Args) -> list[str]:
    return [name_of(XENVER, a[0]), r.ptr(a[1])]


def _grant_table_op(r: _Reader, a: Args) -> list[str]:
    return [name_of(GNTTABOP, a[0]), r.ptr(a[1]), str(a[2])]


def _vcpu_op(r: _Reader, a: Args) -> list[str]:
    return [name_of(VCPUOP, a[0]), str(a[1]), r.ptr(a[2])]


def _physdev_op(r: _Reader, a: Args) -> list[str]:
    cmd, arg = a[0], a[1]
    if cmd == abi_physdev.PHYSDEVOP_set_iopl:
        return [name_of(PHYSDEVOP, cmd), _struct(r, arg, "<I", lambda iopl: f"iopl={iopl}")]
    return [name_of(PHYSDEVOP, cmd), r.ptr(arg)]


def _callback_op(r: _Reader, a: Args) -> list[str]:
    cmd, arg = a[0], a[1]
    if cmd == abi_callback.CALLBACKOP_register:
        fmt = "<HHII" if r.w == Width.X86_32 else "<HH4xQ"

        def render(ctype: int, flags: int, *addr: int) -> str:
            where = f"{addr[0]:#x}:{addr[1]:#x}" if len(addr) == 2 else f"{addr[0]:#x}"
            fl = "CALLBACKF_mask_events" if flags & abi_callback.CALLBACKF_mask_events else str(flags)
            return f"type={name_of(CALLBACKTYPE, ctype)}, flags={fl}, address={where}"
        return [name_of(CALLBACKOP, cmd), _struct(r, arg, fmt, render)]
    if cmd == abi_callback.CALLBACKOP_unregister:
        return [name_of(CALLBACKOP, cmd),
                _struct(r, arg, "<H", lambda t: f"type={name_of(CALLBACKTYPE, t)}")]
    return [name_of(CALLBACKOP, cmd), r.ptr(arg)]


def _vm_assist(r: _Reader, a: Args) -> list[str]:
    return [name_of(VMASST_CMD, a[0]), name_of(VMASST_TYPE, a[1])]


def _update_va_mapping(r: _Reader, a: Args) -> list[str]:
    if r.w == Width.X86_32:
        va, pte, flags = a[0], a[1] | (a[2] << 32), a[3]
    else:
        va, pte, flags = a[0], a[1], a[2]
    return [f"{va:#x}", pte_flags(pte), uvmf_flags(flags)]


def _mmu_update(r: _Reader, a: Args) -> list[str]:
    reqs, count, done, dom = a[0], a[1], a[2], a[3]
    shown = []
    for i in range(min(count, MAX_ELEMENTS)):
        vals = r.unpack("<QQ", reqs + 16 * i)
        if vals is None:
            shown.append(r.bad(reqs + 16 * i))
            break
        ptr, val = vals
        shown.append(f"{{ptr={ptr & ~7:#x}|{name_of(MMU_OP, ptr & 7)}, val={pte_flags(val)}}}")
    more = ", ..." if count > MAX_ELEMENTS else ""
    return [f"[{', '.join(shown)}{more}]", str(count), r.ptr(done), domid_name(dom)]


def _mmuext_op(r: _Reader, a: Args) -> list[str]:
    ops, count, done, dom = a[0], a[1], a[2], a[3]
    size, fmt = (12, "<III") if r.w == Width.X86_32 else (24, "<I4xQQ")
    shown = []
    for i in range(min(count, MAX_ELEMENTS)):
        vals = r.unpack(fmt, ops + size * i)
        if vals is None:
            shown.append(r.bad(ops + size * i))
            break
        cmd, arg1, arg2 = vals
        name = name_of(MMUEXT, cmd)
        if cmd in (abi_xen.MMUEXT_INVLPG_LOCAL, abi_xen.MMUEXT_INVLPG_MULTI, abi_xen.MMUEXT_INVLPG_ALL,
                   abi_xen.MMUEXT_SET_LDT):
            body = f"linear_addr={arg1:#x}" + (f", nr_ents={arg2}" if cmd == abi_xen.MMUEXT_SET_LDT else "")
        elif cmd in (abi_xen.MMUEXT_TLB_FLUSH_LOCAL, abi_xen.MMUEXT_TLB_FLUSH_ALL,
                     abi_xen.MMUEXT_TLB_FLUSH_MULTI, abi_xen.MMUEXT_FLUSH_CACHE):
            body = ""
        else:
            body = f"mfn={arg1:#x}"
        shown.append("{" + name + (f", {body}" if body else "") + "}")
    more = ", ..." if count > MAX_ELEMENTS else ""
    return [f"[{', '.join(shown)}{more}]", str(count), r.ptr(done), domid_name(dom)]


def _set_trap_table(r: _Reader, a: Args) -> list[str]:
    table = a[0]
    if table == 0:
        return ["NULL"]
    size, fmt = (8, "<BBHI") if r.w == Width.X86_32 else (16, "<BBH4xQ")
    n = 0
    vectors = []
    while n < 256:
        vals = r.unpack(fmt, table + size * n)
        if vals is None:
            return [r.bad(table)]
        if vals[3] == 0:
            break
        vectors.append(vals[0])
        n += 1
    shown = ", ".join(str(x) for x in vectors[:8]) + (", ..." if len(vectors) > 8 else "")
    return [f"[{n} entries: vectors {shown}]" if n else "[]"]


def _set_timer_op(r: _Reader, a: Args) -> list[str]:
    timeout = a[0] | (a[1] << 32) if r.w == Width.X86_32 else a[0]
    return [str(timeout)]


def _event_channel_op_compat(r: _Reader, a: Args) -> list[str]:
    head = r.unpack("<I", a[0])
    if head is None:
        return [r.bad(a[0])]
    return _evtchn_op(r, (head[0], a[0] + 4))


DECODERS: Mapping[str, Decoder] = MappingProxyType({
    "sched_op": _sched_op,
    "sched_op_compat": lambda r, a: [name_of(SCHEDOP, a[0]), hex(a[1])],
    "event_channel_op": _evtchn_op,
    "event_channel_op_compat": _event_channel_op_compat,
    "memory_op": _memory_op,
    "console_io": _console_io,
    "xen_version": _xen_version,
    "grant_table_op": _grant_table_op,
    "vcpu_op": _vcpu_op,
    "physdev_op": _physdev_op,
    "callback_op": _callback_op,
    "vm_assist": _vm_assist,
    "update_va_mapping": _update_va_mapping,
    "mmu_update": _mmu_update,
    "mmuext_op": _mmuext_op,
    "set_trap_table": _set_trap_table,
    "set_timer_op": _set_timer_op,
    "iret": lambda r, a: [],
    "stack_switch": lambda r, a: [f"{a[0]:#x}", f"{a[1]:#x}"],
    "fpu_taskswitch": lambda r, a: [str(a[0])],
    "multicall": lambda r, a: [r.ptr(a[0]), str(a[1])],
})

#: how many arguments each hypercall shows when no decoder knows it better
NARGS: Mapping[str, int] = MappingProxyType({
    "set_callbacks": 4, "set_gdt": 2, "update_descriptor": 4, "set_segment_base": 2,
    "set_debugreg": 2, "get_debugreg": 1,
})


@dataclass(frozen=True, slots=True)
class DecodedCall:
    """One hypercall as shown to a person: ``name(args...)``."""

    nr: int
    name: str
    args: tuple[str, ...]
    raw: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(self.args)})"


def decode_call(v: "Vcpu", nr: int, args: tuple[int, ...]) -> DecodedCall:
    """Decode hypercall ``nr`` with register ``args`` as ``v`` issued it (before it runs)."""
    name = HYPERCALLS.get(nr, f"hypercall_{nr}")
    mask = (1 << (8 * v.domain.width)) - 1
    raw = tuple(a & mask for a in args)
    decoder = DECODERS.get(name)
    if decoder is not None:
        shown = tuple(decoder(_Reader(v), raw))
    else:
        shown = tuple(hex(a) for a in raw[:NARGS.get(name, 2)])
    return DecodedCall(nr, name, shown, raw)


def hypercall_number(word: str) -> int:
    """A hypercall given by name (``sched_op``, ``__HYPERVISOR_sched_op``) or number."""
    from ..errors import ConfigError
    text = word.strip()
    text = text.removeprefix("__HYPERVISOR_")
    if text.isdigit():
        return int(text)
    nr = abi_xen.HYPERCALL_NR.get(text)
    if nr is None:
        raise ConfigError(f"hypercall: expected a name such as sched_op or a number, got {word!r}")
    return nr
