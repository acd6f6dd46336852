"""The gdb Target over a real domain: its vCPUs are gdb's threads.

Who runs what.  The Host's scheduler loop owns the CPUs; the debugger never calls
emu_start itself.  Attaching wraps each vCPU's ``run_slice`` (an instance attribute, so
an unattached domain runs the class method and pays nothing) with UcDebug's
``before_run``/``after_run``, and holds a stopped domain by setting ``v.debug_hold`` on
every vCPU: the scheduler skips those.  ``v.debug_stop`` tells the
scheduler that the slice it just ran was stopped by the debugger, not by a fault.  gdb's thread (the stub's server) only flips that
state under ``_cond`` and waits; registers and memory are read while no vCPU of the
domain is inside a slice (``wait_stop`` returns only then).

Invariants (all under ``_cond``):
- ``_running`` False  <=> every vCPU has ``debug_hold`` set and none enters a slice.
- A stop is reported once per resume (``_report``): the first vCPU to stop stops all
  (gdb's all-stop mode), later ones are ignored.
- Ctrl-C with no vCPU inside a slice (all blocked or offline) is answered at once, so
  an idle guest can still be interrupted.
- The domain's shutdown (any path: a hypercall, a crash, kill) reports "exited".

Without breakpoints no per-instruction hook exists: the wrapper costs one lock round
per time slice.  Single-step, breakpoints and watchpoints are UcDebug's (see there).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from ..abi.sched import Shutdown
from ..abi.xen import PAGE_SHIFT, PAGE_SIZE, Width
from ..hv.guest_access import GuestFault, walk
from ..hv.machine import PageType
from .gdbstub.target import (SIGINT, SIGTRAP, BpKind, MemoryAccessError, Resume,
                             StopEvent)
from .gdbstub.uc_debug import UcDebug
from .gdbstub.xml import ARCH_I386, ARCH_X86_64

if TYPE_CHECKING:
    from ..hv.domain import Domain
    from ..hv.vcpu import Vcpu
    from .catch import Catchpoints

log = logging.getLogger("xenpy.debug")

#: frame types a debugger write must not touch: the hypervisor validated their contents
_GUARDED_TYPES = frozenset({PageType.l1, PageType.l2, PageType.l3, PageType.l4,
                            PageType.seg_desc})

SIGABRT = 6     # a crashed domain: gdb shows "terminated with signal SIGABRT"

_COMMON = {
    "eflags": X.UC_X86_REG_EFLAGS,
    "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS,
    "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
    "fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW, "ftag": X.UC_X86_REG_FPTAG,
    "mxcsr": X.UC_X86_REG_MXCSR,
    "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3,
    "cr4": X.UC_X86_REG_CR4,
}
#: gdb register name -> Unicorn register id, per guest width (names as in gdbstub/xml.py)
REGISTERS: dict[Width, dict[str, int]] = {
    Width.X86_32: {
        **{n: getattr(X, f"UC_X86_REG_{n.upper()}")
           for n in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip")},
        **_COMMON,
        **{f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(8)},
    },
    Width.X86_64: {
        **{n: getattr(X, f"UC_X86_REG_{n.upper()}")
           for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip")},
        **{f"r{i}": getattr(X, f"UC_X86_REG_R{i}") for i in range(8, 16)},
        **_COMMON,
        "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE,
        **{f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)},
    },
}
_X87 = {f"st{i}": getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)}


def pc_name(width: Width) -> str:
    return "eip" if width == Width.X86_32 else "rip"


@dataclass(slots=True)
class _VcpuDebug:
    """One vCPU's debug state: its UcDebug and the class's run_slice it wraps."""
    v: "Vcpu"
    dbg: UcDebug
    orig_run: Callable[[], None]


class DomainTarget:
    """gdb's Target (gdbstub/target.py) over one domain's vCPUs (see module docstring)."""

    def __init__(self, domain: "Domain") -> None:
        self.domain = domain
        self.width = domain.width
        self.arch = ARCH_I386 if domain.width == Width.X86_32 else ARCH_X86_64
        self._regs = REGISTERS[domain.width]
        self._pc = pc_name(domain.width)
        self._cond = threading.Condition()
        self._vcpus: list[_VcpuDebug] = []
        self._attached = False
        self._running = True
        self._resume = Resume()
        self._in_slice: set[int] = set()
        self._interrupt = False
        self._stop: StopEvent | None = None
        self._exited: StopEvent | None = None
        self._caught: dict[int, StopEvent] = {}     # set by catchpoints during a slice
        self.catch: Catchpoints | None = None        # created on first use (catch.py)

    # ---- attaching ----------------------------------------------------------------------
    def attach(self) -> None:
        """Wrap the vCPUs and stop the domain (idempotent): a new gdb finds it stopped."""
        with self._cond:
            if not self._attached:
                self._attached = True
                self.domain.on_shutdown.append(self._on_shutdown)
                # While a debugger is attached every slice carries the block budget, so an
                # interrupt never has to stop a vCPU from another thread (which loses the
                # PC in Unicorn): it asks, and the slice ends at its next hook or budget.
                self.domain.host.debuggers += 1
                for v in self.domain.vcpus:
                    dbg = UcDebug(v.cpu.uc, self._translator(v), mode64=self.width == Width.X86_64,
                                  stop=self._asker(v))
                    vd = _VcpuDebug(v, dbg, v.run_slice)
                    self._vcpus.append(vd)
                    v.run_slice = self._make_runner(vd)    # type: ignore[method-assign]
            self._running = False
            for vd in self._vcpus:
                vd.v.debug_hold = True
            busy = [vd for vd in self._vcpus if vd.v.vcpu_id in self._in_slice]
        for vd in busy:
            vd.dbg.interrupt()
        with self._cond:
            self._cond.wait_for(lambda: not self._in_slice)
            self._stop = None
            self._interrupt = False

    @staticmethod
    def _asker(v: "Vcpu"):
        def ask() -> None:
            v.preempt_pending = True
        return ask

    def _release(self) -> None:
        """Undo attach: unwrap the vCPUs and let the domain run without a debugger."""
        with self._cond:
            if not self._attached:
                return
            self._attached = False
            self.domain.host.debuggers -= 1
            if self._on_shutdown in self.domain.on_shutdown:
                self.domain.on_shutdown.remove(self._on_shutdown)
            if self.catch is not None:
                self.catch.clear()
            for vd in self._vcpus:
                vd.dbg.clear()
                vd.dbg.discard_interrupt()
                if "run_slice" in vars(vd.v):
                    del vd.v.run_slice
                vd.v.debug_hold = False
            self._vcpus = []
            self._running = True
            self._caught.clear()
        wake_scheduler(self.domain)

    # ---- Target: threads, registers, memory --------------------------------------------------
    def threads(self) -> list[int]:
        return [v.vcpu_id for v in self.domain.vcpus]

    def vcpu(self, vcpu: int) -> "Vcpu":
        if not 0 <= vcpu < len(self.domain.vcpus):
            raise MemoryAccessError(0, 0, f"no vCPU {vcpu}")
        return self.domain.vcpus[vcpu]

    def read_registers(self, vcpu: int) -> dict[str, int]:
        uc = self.vcpu(vcpu).cpu.uc
        values = {name: uc.reg_read(reg) for name, reg in self._regs.items()}
        for name, reg in _X87.items():
            mantissa, exponent = uc.reg_read(reg)
            values[name] = mantissa | (exponent << 64)
        return values

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        reg = self._regs.get(name)
        if reg is None:
            return          # x87 stack registers and the like: read-only here
        v = self.vcpu(vcpu)
        uc = v.cpu.uc
        if uc.reg_read(reg) == value:
            return          # gdb's G packet rewrites every register: leave equal ones alone
        if name in ("cs", "ss"):
            # Unicorn cannot change the privilege level from outside (unicorn-notes §0).
            log.warning("gdb: refusing to change %s of d%d vCPU %d", name, self.domain.domid, vcpu)
            return
        if name == "cr3":
            # the page tables are the guest's validated ones: pointing a vCPU at any other
            # frames would let gdb read and write memory that is not this domain's
            log.warning("gdb: refusing to change cr3 of d%d vCPU %d", self.domain.domid, vcpu)
            return
        uc.reg_write(reg, value)

    def pc(self, vcpu: int) -> int:
        return self.vcpu(vcpu).cpu.reg(self._pc)

    def translate(self, vcpu: int, vaddr: int) -> int:
        """Guest virtual -> machine address through the vCPU's current page tables."""
        v = self.vcpu(vcpu)
        try:
            return walk(v.gmem.mem, self.width, v.gmem.cr3, vaddr)
        except GuestFault:
            raise MemoryAccessError(vaddr, 1) from None

    def _pieces(self, vcpu: int, vaddr: int, size: int, write: bool = False
                ) -> list[tuple[int, int, int]]:
        """(machine address, offset, length) per page; all translated before any access.
        Reads go wherever the guest's own (validated) page tables lead; writes only to
        the domain's own frames that are not page tables or descriptor tables (a gdb
        write bypasses the hypervisor's checks, so it must not reach what they guard)."""
        if size < 0 or vaddr < 0 or vaddr + size > (1 << (8 * self.width)):
            raise MemoryAccessError(vaddr, size, "an address outside the guest's range")
        d, mem = self.domain, self.domain.mem
        out, off = [], 0
        while off < size:
            n = min(size - off, PAGE_SIZE - (vaddr + off) % PAGE_SIZE)
            m = self.translate(vcpu, vaddr + off)
            mfn = m >> PAGE_SHIFT
            if write and (not d.owns(mfn) or d.hypervisor_held(mfn) or
                          (mem.type_count[mfn] and mem.type[mfn] in _GUARDED_TYPES)):
                raise MemoryAccessError(vaddr + off, n, "a frame gdb may not write (not the "
                                        "domain's, a page table or a hypervisor page)")
            out.append((m, off, n))
            off += n
        return out

    def read_memory(self, vcpu: int, vaddr: int, size: int) -> bytes:
        view = self.domain.mem.view
        return b"".join(bytes(view[m:m + n]) for m, _, n in self._pieces(vcpu, vaddr, size))

    def write_memory(self, vcpu: int, vaddr: int, data: bytes) -> None:
        """A debugger write ignores the page's RW bit (gdb patches code); the written
        range's translated code is dropped on every vCPU of the domain."""
        view = self.domain.mem.view
        for m, off, n in self._pieces(vcpu, vaddr, len(data), write=True):
            view[m:m + n] = data[off:off + n]
        for v in self.domain.vcpus:
            v.cpu.invalidate_code(vaddr, vaddr + len(data))

    # ---- Target: breakpoints ---------------------------------------------------------------
    def insert_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        for vd in self._vcpus:
            vd.dbg.insert(kind, addr, length)
        return True

    def remove_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        for vd in self._vcpus:
            vd.dbg.remove(kind, addr, length)
        return True

    # ---- Target: run control ----------------------------------------------------------------
    def resume(self, action: Resume) -> None:
        with self._cond:
            for vd in self._vcpus:
                vd.dbg.discard_interrupt()
            self._interrupt = False
            self._stop = None
            self._resume = action
            if self._exited is not None:
                self._stop = self._exited
                self._cond.notify_all()
                return
            if self.catch is not None:
                self.catch.resuming(action.vcpus)
            self._caught.clear()
            self._running = True
            for vd in self._vcpus:
                vd.v.debug_hold = vd.v.vcpu_id not in action.vcpus
        wake_scheduler(self.domain)

    def wait_stop(self, timeout: float | None) -> StopEvent | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._stop is not None and not self._in_slice,
                                       timeout):
                return None
            return self._stop

    def interrupt(self) -> None:
        with self._cond:
            if not self._running or self._stop is not None:
                return
            self._interrupt = True
            if not self._in_slice:
                first = min(self._resume.vcpus, default=0)
                self._report(StopEvent(vcpu=first, signal=SIGINT))
                return
            busy = [vd for vd in self._vcpus if vd.v.vcpu_id in self._in_slice]
        for vd in busy:
            vd.dbg.interrupt()

    def kill(self) -> None:
        self.domain.crash("killed by the debugger")
        self._release()

    def detach(self) -> None:
        self._release()

    def monitor(self, command: str) -> str:
        from .catch import monitor_command
        return monitor_command(self, command)

    # ---- hooks for catch.py (host thread, inside a slice) -----------------------------------------
    def caught(self, v: "Vcpu", event: StopEvent) -> None:
        """A catchpoint stopped ``v`` (the vCPU has stopped, or stops at the block's end)."""
        with self._cond:
            self._caught.setdefault(v.vcpu_id, event)

    @property
    def current_vcpu(self) -> int:
        """The vCPU of the last stop (what gdb shows), 0 before any."""
        with self._cond:
            return self._stop.vcpu if self._stop is not None and self._stop.reason != "exited" else 0

    @property
    def stopped(self) -> bool:
        with self._cond:
            return not self._running

    # ---- the run-slice wrapper (host thread) ------------------------------------------------
    def _make_runner(self, vd: _VcpuDebug) -> Callable[[], None]:
        def run_slice() -> None:
            self._run_slice(vd)
        return run_slice

    def _run_slice(self, vd: _VcpuDebug) -> None:
        v, vid = vd.v, vd.v.vcpu_id
        with self._cond:
            if not self._running or vid not in self._resume.vcpus:
                v.debug_hold = v.debug_stop = True
                return
            if self._interrupt:
                self._report(StopEvent(vcpu=vid, signal=SIGINT))
                return
            step = vid in self._resume.step
            self._in_slice.add(vid)
        event: StopEvent | None = None
        try:
            while True:
                try:
                    if vd.dbg.before_run(step):
                        vd.orig_run()
                finally:
                    hit = vd.dbg.after_run()
                if hit is not None:
                    event = (StopEvent(vcpu=vid, signal=SIGINT) if hit.reason == "interrupt" else
                             StopEvent(vcpu=vid, signal=SIGTRAP, reason=hit.reason,  # type: ignore[arg-type]
                                       address=hit.address))
                    break
                if not vd.dbg.needs_rerun or not self.domain.runnable:
                    break
        finally:
            with self._cond:
                self._in_slice.discard(vid)
                if event is None:
                    event = self._caught.pop(vid, None)
                if event is None and self._interrupt:
                    event = StopEvent(vcpu=vid, signal=SIGINT)
                if event is not None:
                    v.debug_stop = True      # the scheduler must not take this for a fault
                    self._report(event)
                self._cond.notify_all()

    def _report(self, event: StopEvent) -> None:
        """Stop the domain with ``event`` (the first stop of this resume wins); holds _cond."""
        if not self._running:
            return
        self._running = False
        self._stop = event
        for vd in self._vcpus:
            vd.v.debug_hold = True
            if vd.v.vcpu_id in self._in_slice:
                vd.v.debug_stop = True
                vd.v.cpu.stop()
        self._cond.notify_all()

    def _on_shutdown(self, d: "Domain") -> None:
        reason = d.shutdown_reason
        if reason in (Shutdown.crash, Shutdown.watchdog):
            event = StopEvent(vcpu=0, reason="exited", signal=SIGABRT)
        else:
            event = StopEvent(vcpu=0, reason="exited", exit_status=int(reason or 0))
        with self._cond:
            self._exited = event
            if self._running:
                self._report(event)
            self._cond.notify_all()

    def _translator(self, v: "Vcpu") -> Callable[[int], int | None]:
        def translate(vaddr: int) -> int | None:
            try:
                return walk(v.gmem.mem, self.width, v.gmem.cr3, vaddr)
            except GuestFault:
                return None
        return translate


def wake_scheduler(d: "Domain") -> None:
    """Let the Host's loop notice a vCPU that became runnable (it polls otherwise)."""
    d.host.notify_event(d)
