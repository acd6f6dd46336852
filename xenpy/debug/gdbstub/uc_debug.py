"""Breakpoints, watchpoints, single-step and Ctrl-C on a unicorn.Uc, for any Target.

Costs nothing while unused: no per-instruction hook exists unless a step is in flight.
- Breakpoints (software and hardware alike) are UC_HOOK_CODE hooks bounded to
  [addr, addr].  Code hooks are compiled into translated blocks, so inserting or removing
  one drops the cached translation of that address (`ctl_remove_cache`).
- Single-step arms an unbounded UC_HOOK_CODE hook (after flushing the translation
  cache) that stops at the *second* instruction it sees: `emu_start(count=1)` can run
  more than one instruction (unicorn issue #1606).
- Watchpoints are UC_HOOK_MEM_READ/WRITE hooks over the watched *physical* range (memory
  hooks see physical addresses, code hooks virtual ones; `translate` maps a guest virtual
  address to a physical one).  `emu_stop` inside a memory hook aborts the instruction
  half-way: the store has landed but EIP and other registers are rolled back to the
  instruction.  So a hit restores the old bytes, then the instruction is re-run as a
  single step with watch hooks muted, and only then is the hit reported: gdb sees
  trap-after-write semantics, like x86 debug registers.
- `interrupt()` may come from any thread.  `emu_stop` issued before `emu_start` has
  begun is lost (emu_start clears the request), so it is repeated until the run loop
  acknowledges through `after_run`.

Run-loop contract (the vCPU loop owns emu_start):
    if dbg.before_run(step):  uc.emu_start(pc, until)  (errors handled by the caller)
    hit = dbg.after_run()     # a DebugHit to report, or None: keep running (re-step)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, Uc, UcError
from unicorn.x86_const import UC_X86_REG_EIP, UC_X86_REG_RIP

from xenpy.debug.gdbstub.target import BpKind, MemoryAccessError

PAGE_SIZE = 0x1000
_MAX_ACCESS = 64  # widest single access (AVX-512 store); hooks start this far before the range
_INTERRUPT_RETRY_S = 0.002

Translate = Callable[[int], "int | None"]


@dataclass(frozen=True, slots=True)
class DebugHit:
    """Why the run stopped for the debugger: reason is a StopEvent reason or "interrupt"."""

    reason: str
    address: int | None = None  # data address (virtual) for watch/rwatch/awatch


@dataclass(frozen=True, slots=True)
class _WatchChunk:
    vaddr: int
    paddr: int
    size: int


@dataclass(slots=True)
class _Watch:
    kind: BpKind
    vaddr: int
    length: int
    chunks: tuple[_WatchChunk, ...]
    handles: list[int]


@dataclass(frozen=True, slots=True)
class _Abort:
    """A watch hit whose instruction was rolled back; restore and re-step it."""

    hit: DebugHit
    pc: int
    paddr: int
    old: bytes  # bytes at paddr before the aborted store (empty for reads)


class UcDebug:
    """Debug machinery for one Uc (one vCPU)."""

    def __init__(self, uc: Uc, translate: Translate, *, mode64: bool = False,
                 stop: Callable[[], None] | None = None) -> None:
        self.uc = uc
        # How another thread stops this CPU (a hypervisor serialises it with its hooks).
        self._stop_async = stop or uc.emu_stop
        self.translate = translate
        self._pc_reg = UC_X86_REG_RIP if mode64 else UC_X86_REG_EIP
        self._code: dict[int, tuple[int, set[BpKind]]] = {}
        self._watches: dict[tuple[BpKind, int, int], _Watch] = {}
        self._cond = threading.Condition()
        self._in_emu = False
        self._interrupt_requested = False
        # Per-run state (set in before_run, read by hooks on the emulating thread).
        self._hit: DebugHit | None = None
        self._abort: _Abort | None = None
        self._fixup: _Abort | None = None
        self._skip_pc: int | None = None
        self._step_hook: int | None = None
        self._step_count = 0
        self._step_pc = 0

    # ---- breakpoints ----------------------------------------------------------------
    @property
    def breakpoints(self) -> dict[int, frozenset[BpKind]]:
        return {addr: frozenset(kinds) for addr, (_, kinds) in self._code.items()}

    def insert(self, kind: BpKind, addr: int, length: int) -> bool:
        """Insert a Z0..Z4 point; raises MemoryAccessError if a watched byte is unmapped."""
        if kind.is_watchpoint:
            return self._insert_watch(kind, addr, length)
        if addr in self._code:
            self._code[addr][1].add(kind)
            return True
        handle = self.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, begin=addr, end=addr)
        self._code[addr] = (handle, {kind})
        self.uc.ctl_remove_cache(addr, addr + 1)
        return True

    def remove(self, kind: BpKind, addr: int, length: int) -> bool:
        if kind.is_watchpoint:
            watch = self._watches.pop((kind, addr, length), None)
            if watch is not None:
                for handle in watch.handles:
                    self.uc.hook_del(handle)
            return True
        entry = self._code.get(addr)
        if entry is None:
            return True
        entry[1].discard(kind)
        if not entry[1]:
            del self._code[addr]
            self.uc.hook_del(entry[0])
            self.uc.ctl_remove_cache(addr, addr + 1)
        return True

    def clear(self) -> None:
        """Remove every breakpoint and watchpoint (detach)."""
        for addr in list(self._code):
            for kind in list(self._code[addr][1]):
                self.remove(kind, addr, 1)
        for kind, addr, length in list(self._watches):
            self.remove(kind, addr, length)
        self._fixup = None

    def _insert_watch(self, kind: BpKind, addr: int, length: int) -> bool:
        if length <= 0:
            raise MemoryAccessError(addr, length, "an empty range")
        chunks: list[_WatchChunk] = []
        cur, end = addr, addr + length
        while cur < end:
            n = min(end - cur, PAGE_SIZE - cur % PAGE_SIZE)
            paddr = self.translate(cur)
            if paddr is None:
                raise MemoryAccessError(cur, n)
            chunks.append(_WatchChunk(cur, paddr, n))
            cur += n
        types = {BpKind.WRITE: UC_HOOK_MEM_WRITE, BpKind.READ: UC_HOOK_MEM_READ}.get(
            kind, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE
        )
        watch = _Watch(kind, addr, length, tuple(chunks), [])
        for chunk in chunks:
            watch.handles.append(
                self.uc.hook_add(
                    types,
                    self._on_memory,
                    user_data=(watch, chunk),
                    begin=max(0, chunk.paddr - _MAX_ACCESS + 1),
                    end=chunk.paddr + chunk.size - 1,
                )
            )
        self._watches[(kind, addr, length)] = watch
        return True

    # ---- run control ----------------------------------------------------------------
    def before_run(self, step: bool) -> bool:
        """Arm for one emu_start; False means an interrupt is pending (do not run)."""
        with self._cond:
            self._in_emu = True
            if self._interrupt_requested:
                return False
        pc = self.uc.reg_read(self._pc_reg)
        self._hit = None
        self._abort = None
        self._skip_pc = pc if pc in self._code else None
        if step or self._fixup is not None:
            self._step_count = 0
            self._step_pc = pc
            self._step_hook = self.uc.hook_add(UC_HOOK_CODE, self._on_step, begin=1, end=0)
            self.uc.ctl_flush_tb()  # cached blocks carry no call to the new hook
        return True

    def after_run(self) -> DebugHit | None:
        """Disarm after emu_start; returns the hit to report, or None to keep running."""
        with self._cond:
            self._in_emu = False
            interrupted = self._interrupt_requested
            self._interrupt_requested = False
            self._cond.notify_all()
        stepped = self._step_hook is not None
        step_done = False
        if stepped:
            assert self._step_hook is not None
            self.uc.hook_del(self._step_hook)
            self._step_hook = None
            self.uc.ctl_flush_tb()  # drop the instrumented blocks: full speed again
            pc = self.uc.reg_read(self._pc_reg)
            step_done = self._step_count >= 2 or (self._step_count >= 1 and pc != self._step_pc)
        hit, abort = self._hit, self._abort
        self._hit = self._abort = None
        self._skip_pc = None
        if abort is not None:
            if self.uc.reg_read(self._pc_reg) == abort.pc:
                if abort.old:
                    self.uc.mem_write(abort.paddr, abort.old)
                self._fixup = abort
                return DebugHit("interrupt") if interrupted else None
            return abort.hit  # the instruction completed after all
        if self._fixup is not None and step_done:
            fixed, self._fixup = self._fixup, None
            return fixed.hit
        if hit is not None:
            return hit
        if step_done and self._fixup is None:
            return DebugHit("step")
        return DebugHit("interrupt") if interrupted else None

    @property
    def needs_rerun(self) -> bool:
        """A watched access was rolled back: run again at once (one step) to finish it."""
        return self._fixup is not None

    def interrupt(self) -> None:
        """Stop the run as soon as possible (any thread); after_run reports "interrupt"."""
        with self._cond:
            self._interrupt_requested = True
            while self._in_emu and self._interrupt_requested:
                self._stop_async()
                self._cond.wait(_INTERRUPT_RETRY_S)

    def discard_interrupt(self) -> None:
        """Forget an interrupt that raced with a stop (call when resuming from a stop)."""
        with self._cond:
            self._interrupt_requested = False

    # ---- hooks (run on the emulating thread) ----------------------------------------
    def _on_breakpoint(self, uc: Uc, address: int, size: int, _: object) -> None:
        if self._hit is not None or self._abort is not None:
            return
        if address == self._skip_pc:
            self._skip_pc = None  # resuming from this breakpoint: run its instruction
            return
        if self._step_hook is not None and self._step_count >= 1:
            return  # a step ends here: the step hook reports it
        entry = self._code.get(address)
        if entry is None:
            return
        kind = BpKind.SOFTWARE if BpKind.SOFTWARE in entry[1] else BpKind.HARDWARE
        self._hit = DebugHit(kind.stop_reason)
        uc.emu_stop()

    def _on_step(self, uc: Uc, address: int, size: int, _: object) -> None:
        self._step_count += 1
        if self._step_count >= 2:
            uc.emu_stop()

    def _on_memory(
        self, uc: Uc, access: int, paddr: int, size: int, value: int, user_data: tuple[_Watch, _WatchChunk]
    ) -> None:
        if self._fixup is not None or self._abort is not None or self._hit is not None:
            return
        watch, chunk = user_data
        lo, hi = max(paddr, chunk.paddr), min(paddr + size, chunk.paddr + chunk.size)
        if lo >= hi:
            return  # the access ends before the watched range starts
        vaddr = chunk.vaddr + (lo - chunk.paddr)
        hit = DebugHit(watch.kind.stop_reason, vaddr)
        old = b""
        if access == UC_MEM_WRITE:
            try:
                old = bytes(uc.mem_read(paddr, size))
            except UcError:
                old = b""
        self._abort = _Abort(hit, uc.reg_read(self._pc_reg), paddr, old)
        uc.emu_stop()
