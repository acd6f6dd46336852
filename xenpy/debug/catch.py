"""Catchpoints (hypercalls, traps) and the `monitor` commands of the domain debugger.

A hypercall catchpoint is a HypercallObserver whose ``before`` defers the call: the
vCPU stops *on* the hypercall instruction (``int $0x82`` / ``syscall``) with nothing
done, and gdb reports SIGTRAP there.  The next resume lets exactly that call through
(same vCPU, same instruction address), and ``after`` records its result, so stepping
over the instruction and asking ``monitor hypercall`` shows ``... = result``.  Calls
nested in a multicall are never deferred: multicall cannot resume half-way.

A trap catchpoint is a UC_HOOK_INTR hook added after the hypervisor's own, so it sees
the vector once the hypervisor has handled it (bounced it to the guest's handler, or
emulated it).  The vCPU stops on the first instruction of the guest's handler for that
vector (a one-shot code hook there, since the bounce may still pass through Xen's iret
trampoline), or at once when the guest has no handler registered.  Neither kind exists while
no catchpoint is set, so an unwatched domain pays nothing.
"""
from __future__ import annotations

import shlex
import struct
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_INTR

from ..abi.xen import HYPERCALLS, PAGE_SIZE, Width
from ..errors import ConfigError
from .decode import DecodedCall, decode_call, errno_result, hypercall_number, pte_flags
from .gdbstub.target import SIGTRAP, StopEvent

if TYPE_CHECKING:
    from ..hv.vcpu import Vcpu
    from .target import DomainTarget

TRAP_NAMES = {0: "divide_error", 1: "debug", 2: "nmi", 3: "int3", 4: "overflow", 5: "bounds",
              6: "invalid_op", 7: "no_device", 8: "double_fault", 10: "invalid_tss",
              11: "no_segment", 12: "stack_error", 13: "gp_fault", 14: "page_fault",
              16: "copro_error", 17: "alignment_check", 18: "machine_check", 19: "simd_error"}


@dataclass(frozen=True, slots=True)
class CaughtCall:
    """The hypercall a catchpoint stopped at; result is set once it has run."""

    vcpu: int
    pc: int
    call: DecodedCall
    result: int | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class CaughtTrap:
    vcpu: int
    vector: int
    pc: int       # where the vCPU stopped: the guest's handler (or the emulated next insn)


class Catchpoints:
    """The catchpoints of one DomainTarget (see module docstring)."""

    def __init__(self, target: "DomainTarget") -> None:
        self.target = target
        self.domain = target.domain
        self.hypercalls: set[int] | None = None        # None: no hypercall catchpoint
        self.all_hypercalls = False
        self.traps: set[int] = set()
        self._lock = threading.Lock()
        self._depth: dict[int, int] = {}                # per vCPU: nesting of dispatch
        self._pending: dict[int, CaughtCall] = {}       # deferred, waiting for a resume
        self._passing: dict[int, int] = {}              # vCPU -> pc allowed through once
        self.last: dict[int, CaughtCall] = {}           # per vCPU: the last caught call
        self.last_trap: CaughtTrap | None = None
        self._trap_hooks: dict[int, int] = {}           # vCPU -> hook handle
        self._handler_hooks: dict[int, int] = {}        # vCPU -> one-shot hook on a handler
        self._observing = False

    # ---- configuration (gdb thread, domain stopped) ------------------------------------------
    def catch_hypercalls(self, numbers: set[int] | None) -> None:
        """Catch these hypercall numbers (None: all of them)."""
        if numbers is None:
            self.all_hypercalls = True
            self.hypercalls = set()
        else:
            self.hypercalls = (self.hypercalls or set()) | numbers
        self._observe(True)

    def catch_traps(self, vectors: set[int]) -> None:
        self.traps |= vectors
        for v in self.domain.vcpus:
            if v.vcpu_id not in self._trap_hooks:
                self._trap_hooks[v.vcpu_id] = v.cpu.add_hook(UC_HOOK_INTR, self._make_trap_hook(v))

    def clear(self) -> None:
        """Delete every catchpoint (monitor catch delete, detach)."""
        self.hypercalls = None
        self.all_hypercalls = False
        self._observe(False)
        self.traps.clear()
        for vid, handle in self._trap_hooks.items():
            if vid < len(self.domain.vcpus):
                self.domain.vcpus[vid].cpu.del_hook(handle)
        self._trap_hooks.clear()
        for vid, handle in self._handler_hooks.items():
            if vid < len(self.domain.vcpus):
                self.domain.vcpus[vid].cpu.del_hook(handle)
        self._handler_hooks.clear()
        self._pending.clear()
        self._passing.clear()

    def _observe(self, on: bool) -> None:
        observers = self.domain.host.hypercall_observers
        if on and not self._observing:
            observers.append(self)
        elif not on and self._observing and self in observers:
            observers.remove(self)
        self._observing = on

    def resuming(self, vcpus: frozenset[int]) -> None:
        """gdb resumes: a vCPU stopped on a caught call may now run that call, once."""
        with self._lock:
            for vid in vcpus:
                caught = self._pending.pop(vid, None)
                if caught is not None:
                    self._passing[vid] = caught.pc

    # ---- HypercallObserver (host thread) -------------------------------------------------------
    def before(self, v: "Vcpu", nr: int, args: tuple[int, ...]) -> bool:
        if v.domain is not self.domain:
            return False
        vid = v.vcpu_id
        depth = self._depth.get(vid, 0)
        self._depth[vid] = depth + 1
        if depth or not (self.all_hypercalls or (self.hypercalls and nr in self.hypercalls)):
            return False
        pc = self.target.pc(vid)
        if self.domain.width == Width.X86_32:
            pc -= 2       # the hook runs after `int $0x82`; report the instruction itself
        with self._lock:
            if self._passing.get(vid) == pc:
                del self._passing[vid]
                self.last[vid] = CaughtCall(vid, pc, decode_call(v, nr, args))
                return False
            self._passing.pop(vid, None)
            caught = CaughtCall(vid, pc, decode_call(v, nr, args))
            self._pending[vid] = caught
            self.last[vid] = caught
        self._depth[vid] = depth
        self.target.caught(v, StopEvent(vcpu=vid, signal=SIGTRAP))
        return True

    def after(self, v: "Vcpu", nr: int, args: tuple[int, ...], result: int | None) -> None:
        if v.domain is not self.domain:
            return
        vid = v.vcpu_id
        depth = self._depth.get(vid, 1) - 1
        self._depth[vid] = max(0, depth)
        if depth:
            return
        with self._lock:
            last = self.last.get(vid)
            if last is not None and not last.done and last.call.nr == nr and vid not in self._pending:
                self.last[vid] = replace(last, result=result, done=True)

    # ---- trap hook (host thread, inside emu_start) -------------------------------------------
    def _make_trap_hook(self, v: "Vcpu"):
        def on_interrupt(uc: object, vector: int, _user: object) -> None:
            if vector not in self.traps or not self.domain.runnable:
                return
            handler = v.trap_table[vector].address if 0 <= vector < len(v.trap_table) else 0
            if handler and self.target.pc(v.vcpu_id) != handler:
                self._stop_at_handler(v, vector, handler)
                return
            self._trap_caught(v, vector)
            v.cpu.stop()
        return on_interrupt

    def _stop_at_handler(self, v: "Vcpu", vector: int, handler: int) -> None:
        """The bounce may still go through Xen's iret trampoline: stop on the handler's
        first instruction with a one-shot code hook (a breakpoint gdb did not set)."""
        vid = v.vcpu_id
        old = self._handler_hooks.pop(vid, None)
        if old is not None:
            v.cpu.del_hook(old)

        def on_handler(uc: object, address: int, size: int, _user: object) -> None:
            handle = self._handler_hooks.pop(vid, None)
            if handle is not None:
                v.cpu.del_hook(handle)
            self._trap_caught(v, vector)
            v.cpu.stop()
        self._handler_hooks[vid] = v.cpu.add_hook(UC_HOOK_CODE, on_handler, handler, handler)
        v.cpu.invalidate_code(handler, handler + 1)   # the hook lives in translated code

    def _trap_caught(self, v: "Vcpu", vector: int) -> None:
        self.last_trap = CaughtTrap(v.vcpu_id, vector, self.target.pc(v.vcpu_id))
        self.target.caught(v, StopEvent(vcpu=v.vcpu_id, signal=SIGTRAP))

    # ---- reports ------------------------------------------------------------------------------
    def describe(self, vcpu: int | None) -> str:
        calls = [self.last[vcpu]] if vcpu is not None and vcpu in self.last else list(self.last.values())
        if not calls:
            return "no hypercall caught yet (monitor catch hypercall [NAME|NR ...])\n"
        width = self.domain.width
        lines = []
        for c in calls:
            state = (f" = {errno_result(c.result, width)}" if c.done else
                     "  (pending: not run yet; step or continue to run it)")
            lines.append(f"vcpu {c.vcpu} at {c.pc:#x}: {c.call}{state}\n")
        return "".join(lines)

    def listing(self) -> str:
        lines = []
        if self.all_hypercalls:
            lines.append("catch hypercall: all\n")
        elif self.hypercalls:
            names = ", ".join(HYPERCALLS.get(n, str(n)) for n in sorted(self.hypercalls))
            lines.append(f"catch hypercall: {names}\n")
        if self.traps:
            lines.append(f"catch trap: {', '.join(str(t) for t in sorted(self.traps))}\n")
        return "".join(lines) or "no catchpoints\n"


# ---- monitor commands -----------------------------------------------------------------------
HELP = """\
monitor catch hypercall [NAME|NR ...]   stop before these hypercalls run (none: all)
monitor catch trap VECTOR ...           stop when the guest takes these traps
monitor catch list | delete             show or delete the catchpoints
monitor hypercall                       the caught hypercall, decoded (and its result)
monitor trap                            the last trap caught
monitor info domains                    the host's domains
monitor info evtchn                     this domain's event channels
monitor info grants                     this domain's active grant entries
monitor info pagewalk VA                the page-table walk of VA on the current vCPU
"""


def monitor_command(target: "DomainTarget", command: str) -> str:
    """Run one `monitor` command for gdb; bad input raises ConfigError (shown to the user)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"monitor command: expected shell-like words, got {command!r} ({exc})") from None
    if not words or words[0] == "help":
        return HELP
    head, rest = words[0], words[1:]
    if head == "catch":
        return _catch(target, rest)
    if head == "hypercall":
        return _catchpoints(target).describe(None)
    if head == "trap":
        t = _catchpoints(target).last_trap
        if t is None:
            return "no trap caught yet (monitor catch trap VECTOR ...)\n"
        name = TRAP_NAMES.get(t.vector, "software interrupt" if t.vector >= 32 else "reserved")
        return f"vcpu {t.vcpu}: trap {t.vector} ({name}), stopped at {t.pc:#x}\n"
    if head == "info" and rest:
        what, args = rest[0], rest[1:]
        if what == "domains":
            return info_domains(target)
        if what == "evtchn":
            return info_evtchn(target)
        if what == "grants":
            return info_grants(target)
        if what == "pagewalk":
            if len(args) != 1:
                raise ConfigError("monitor info pagewalk: expected one virtual address, got "
                                  f"{len(args)} arguments")
            return info_pagewalk(target, _int(args[0], "virtual address"))
    raise ConfigError(f"monitor: expected one of catch, hypercall, trap, info, help; got {command!r}\n{HELP}")


def _catchpoints(target: "DomainTarget") -> Catchpoints:
    if target.catch is None:
        target.catch = Catchpoints(target)
    return target.catch


def _int(word: str, what: str) -> int:
    try:
        return int(word, 0)
    except ValueError:
        raise ConfigError(f"{what}: expected a number (0x... for hex), got {word!r}") from None


def _catch(target: "DomainTarget", args: list[str]) -> str:
    cp = _catchpoints(target)
    if not args or args[0] == "list":
        return cp.listing()
    kind, rest = args[0], args[1:]
    if kind == "hypercall":
        numbers = {hypercall_number(w) for w in rest} if rest else None
        cp.catch_hypercalls(numbers)
        return cp.listing()
    if kind == "trap":
        if not rest:
            raise ConfigError("monitor catch trap: expected at least one vector (0-255)")
        vectors = {_int(w, "trap vector") for w in rest}
        bad = sorted(x for x in vectors if not 0 <= x <= 255)
        if bad:
            raise ConfigError(f"trap vector: expected 0-255, got {bad[0]}")
        cp.catch_traps(vectors)
        return cp.listing()
    if kind == "delete":
        cp.clear()
        return "no catchpoints\n"
    raise ConfigError(f"monitor catch: expected hypercall, trap, list or delete; got {kind!r}")


def info_domains(target: "DomainTarget") -> str:
    host = target.domain.host
    lines = [f"{'id':>3} {'name':<16} {'width':<6} {'state':<8} {'vcpus':>5} {'pages':>7} {'cpu_s':>8}\n"]
    for d in list(host.domains.values()):
        mark = "*" if d is target.domain else " "
        bits = "x86_32" if d.width == Width.X86_32 else "x86_64"
        lines.append(f"{d.domid:>3}{mark}{d.name:<16} {bits:<6} {d.state.name:<8} {len(d.vcpus):>5} "
                     f"{d.nr_pages:>7} {d.cpu_time:>8.3f}\n")
    return "".join(lines)


def info_evtchn(target: "DomainTarget") -> str:
    d = target.domain
    ports = getattr(d.evtchn, "ports", [])
    si = d.shared_info
    bits = 8 * d.width
    lines = [f"{'port':>4} {'state':<12} {'vcpu':>4} detail{'':<20} pending masked\n"]
    for port, ch in enumerate(ports):
        if port == 0 or getattr(ch.state, "value", 0) == 0:
            continue
        state = getattr(ch.state, "name", str(ch.state))
        if state == "interdomain":
            backend = " (backend)" if getattr(ch, "backend", None) is not None else ""
            detail = f"remote d{ch.remote_domid}:{ch.remote_port}{backend}"
        elif state == "unbound":
            detail = f"for d{ch.remote_domid}"
        elif state == "virq":
            from .decode import VIRQ, name_of
            detail = name_of(VIRQ, ch.virq)
        else:
            detail = ""
        pending = masked = "?"
        if si is not None:
            pending = str(int(bool(si.evtchn_pending[port // bits] >> (port % bits) & 1)))
            masked = str(int(bool(si.evtchn_mask[port // bits] >> (port % bits) & 1)))
        lines.append(f"{port:>4} {state:<12} {ch.vcpu:>4} {detail:<26} {pending:>7} {masked:>6}\n")
    return "".join(lines) if len(lines) > 1 else "no event channels\n"


GTF_type_mask = 3       # grant_table.h: GTF_permit_access = 1, GTF_accept_transfer = 2
GTF_readonly = 1 << 2


def info_grants(target: "DomainTarget") -> str:
    """The v1 grant entries in use: struct grant_entry_v1 { u16 flags; domid_t domid; u32 frame; }."""
    d = target.domain
    frames = list(getattr(d, "grant_frames", []) or [])
    view = d.mem.view
    lines = []
    for i, mfn in enumerate(frames):
        base = mfn * PAGE_SIZE
        for j in range(PAGE_SIZE // 8):
            flags, domid, frame = struct.unpack_from("<HHI", view, base + 8 * j)
            if flags & GTF_type_mask:
                ref = i * (PAGE_SIZE // 8) + j
                ro = " readonly" if flags & GTF_readonly else ""
                lines.append(f"ref {ref}: flags={flags:#x}{ro} domid={domid} frame={frame:#x}\n")
    if not lines:
        return f"no grant entries in use ({len(frames)} grant frames)\n"
    return "".join(lines)


def info_pagewalk(target: "DomainTarget", va: int) -> str:
    """Each level's entry for ``va`` on the current vCPU (the one gdb last stopped in)."""
    v = target.vcpu(target.current_vcpu)
    mem, cr3 = v.gmem.mem, v.gmem.cr3
    buf = mem.buf
    if target.width == Width.X86_32:
        va &= 0xFFFFFFFF
        names = ["L3 (PDPT)", "L2", "L1"]
        indexes = [va >> 30, (va >> 21) & 511, (va >> 12) & 511]
        table = cr3 & 0xFFFFFFE0
    else:
        names = ["L4", "L3", "L2", "L1"]
        indexes = [(va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511]
        table = cr3 & 0x000FFFFFFFFFF000
    lines = [f"va {va:#x}, cr3 {cr3:#x}\n"]
    for name, index in zip(names, indexes):
        addr = table + 8 * index
        if addr + 8 > mem.size:
            lines.append(f"{name}[{index}]: table {table:#x} outside machine memory\n")
            return "".join(lines)
        entry = struct.unpack_from("<Q", buf, addr)[0]
        lines.append(f"{name}[{index}] @ {addr:#x} = {entry:#018x} ({pte_flags(entry)})\n")
        if not entry & 1:
            lines.append("not present\n")
            return "".join(lines)
        table = entry & 0x000FFFFFFFFFF000
    lines.append(f"-> machine address {table | (va & 0xFFF):#x}\n")
    return "".join(lines)

