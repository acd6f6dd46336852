"""A Target over a bare Unicorn instance: 32-bit flat protected mode, one vCPU,
identity-mapped memory.  `int 0x80` ends the guest with exit status EAX.  It runs the
guest on its own thread, the way a hypervisor vCPU thread would."""

from __future__ import annotations

import queue
import threading

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn import x86_const as X

from xenpy.debug.gdbstub.target import SIGINT, SIGSEGV, SIGTRAP, BpKind, MemoryAccessError, Resume, StopEvent
from xenpy.debug.gdbstub.uc_debug import UcDebug

MEM_SIZE = 0x200000
UNTIL = 0xFFFFFFFF

_REGS = {
    "eax": X.UC_X86_REG_EAX, "ecx": X.UC_X86_REG_ECX, "edx": X.UC_X86_REG_EDX, "ebx": X.UC_X86_REG_EBX,
    "esp": X.UC_X86_REG_ESP, "ebp": X.UC_X86_REG_EBP, "esi": X.UC_X86_REG_ESI, "edi": X.UC_X86_REG_EDI,
    "eip": X.UC_X86_REG_EIP, "eflags": X.UC_X86_REG_EFLAGS,
    "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES,
    "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
    "fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW, "ftag": X.UC_X86_REG_FPTAG,
    "mxcsr": X.UC_X86_REG_MXCSR,
    "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4,
    **{f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(8)},
}
_FP = {f"st{i}": getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)}


class UnicornTarget:
    arch = "i386"

    def __init__(self, code: bytes, base: int = 0x1000, stack: int = 0x80000) -> None:
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.mem_map(0, MEM_SIZE)
        self.uc.mem_write(base, code)
        self.uc.reg_write(X.UC_X86_REG_EIP, base)
        self.uc.reg_write(X.UC_X86_REG_ESP, stack)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.dbg = UcDebug(self.uc, lambda va: va if 0 <= va < MEM_SIZE else None)
        self._commands: queue.Queue[Resume | None] = queue.Queue()
        self._stops: queue.Queue[StopEvent] = queue.Queue()
        self._exit_status: int | None = None
        self.resumes = 0  # how many resumes the runner has started (tests poll it)
        self.detached = threading.Event()
        self.killed = threading.Event()
        self.exited = threading.Event()
        self.monitor_log: list[str] = []
        self._runner = threading.Thread(target=self._run, name="uc-vcpu0", daemon=True)
        self._runner.start()

    # ---- Target protocol ------------------------------------------------------------
    def threads(self) -> list[int]:
        return [0]

    def read_registers(self, vcpu: int) -> dict[str, int]:
        values = {name: self.uc.reg_read(reg) for name, reg in _REGS.items()}
        for name, reg in _FP.items():
            mantissa, exponent = self.uc.reg_read(reg)
            values[name] = mantissa | (exponent << 64)
        return values

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        if name in _REGS:
            self.uc.reg_write(_REGS[name], value)
        # x87 registers are read-only here: the test guest has no FPU state to edit.

    def read_memory(self, vcpu: int, vaddr: int, size: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(vaddr, size))
        except UcError:
            raise MemoryAccessError(vaddr, size) from None

    def write_memory(self, vcpu: int, vaddr: int, data: bytes) -> None:
        try:
            self.uc.mem_write(vaddr, data)
        except UcError:
            raise MemoryAccessError(vaddr, len(data)) from None
        self.uc.ctl_remove_cache(vaddr, vaddr + len(data))  # the stub may patch code

    def resume(self, action: Resume) -> None:
        self.dbg.discard_interrupt()
        self._commands.put(action)

    def wait_stop(self, timeout: float | None) -> StopEvent | None:
        try:
            return self._stops.get(timeout=timeout)
        except queue.Empty:
            return None

    def interrupt(self) -> None:
        self.dbg.interrupt()

    def insert_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        return self.dbg.insert(kind, addr, length)

    def remove_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        return self.dbg.remove(kind, addr, length)

    def monitor(self, command: str) -> str:
        self.monitor_log.append(command)
        if command.startswith("echo "):
            return command[len("echo "):] + "\n"
        return f"unknown monitor command {command!r}\n"

    def kill(self) -> None:
        self.killed.set()
        self._commands.put(None)

    def detach(self) -> None:
        self.dbg.clear()
        self.detached.set()
        self._commands.put(Resume(cont=frozenset({0})))  # run on without a debugger

    def close(self) -> None:
        """Test teardown: stop the runner whatever it is doing."""
        self._commands.put(None)
        while self._runner.is_alive():
            self.dbg.interrupt()
            self._runner.join(0.05)

    # ---- the vCPU thread --------------------------------------------------------------
    def _on_interrupt(self, uc: Uc, intno: int, _: object) -> None:
        if intno == 0x80:
            self._exit_status = uc.reg_read(X.UC_X86_REG_EAX)
        uc.emu_stop()

    def _run(self) -> None:
        while True:
            action = self._commands.get()
            if action is None:
                return
            self.resumes += 1
            event = self._run_until_stop(0 in action.step)
            if event is None:
                return
            if event.reason == "exited":
                self.exited.set()
            if not self.detached.is_set():
                self._stops.put(event)
            elif event.reason != "exited" and self._commands.empty():
                self._commands.put(Resume(cont=frozenset({0})))

    def _run_until_stop(self, step: bool) -> StopEvent | None:
        while True:
            fault = False
            if self.dbg.before_run(step):
                try:
                    self.uc.emu_start(self.uc.reg_read(X.UC_X86_REG_EIP), UNTIL)
                except UcError:
                    fault = True
            hit = self.dbg.after_run()
            if hit is not None:
                if hit.reason == "interrupt":
                    return StopEvent(vcpu=0, signal=SIGINT)
                return StopEvent(vcpu=0, signal=SIGTRAP, reason=hit.reason, address=hit.address)  # type: ignore[arg-type]
            if self._exit_status is not None:
                return StopEvent(vcpu=0, reason="exited", exit_status=self._exit_status)
            if fault:
                return StopEvent(vcpu=0, signal=SIGSEGV)
