"""The contract between the gdb stub and whatever runs the guest.

The stub never touches a CPU: it calls a `Target`.  The hypervisor implements one over
its vCPUs; tests implement one over a bare Unicorn instance.  Everything here is plain
data so the stub can be tested without either.

Threads: gdb thread ids are vcpu + 1 (gdb reserves 0 for "any" and -1 for "all").
Addresses given to the Target are guest *virtual* addresses of the vCPU named.
Only `interrupt()` may be called from another thread while `wait_stop()` blocks.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import Literal, Protocol

from xenpy.errors import XenpyError

SIGINT = int(signal.SIGINT)  # 2: gdb shows "Program received signal SIGINT"
SIGTRAP = int(signal.SIGTRAP)  # 5: breakpoints, watchpoints, single-step
SIGSEGV = int(signal.SIGSEGV)  # 11: the guest touched unmapped memory and cannot go on

StopReason = Literal["swbreak", "hwbreak", "watch", "rwatch", "awatch", "step", "exited"]


class MemoryAccessError(XenpyError):
    """A guest virtual address has no mapping (or the access is not allowed)."""

    def __init__(self, vaddr: int, size: int, why: str = "unmapped") -> None:
        super().__init__(f"guest address {vaddr:#x} (+{size}): expected mapped memory, got {why}")
        self.vaddr = vaddr
        self.size = size


class BpKind(enum.IntEnum):
    """The type field of gdb's Z/z packets."""

    SOFTWARE = 0
    HARDWARE = 1
    WRITE = 2
    READ = 3
    ACCESS = 4

    @property
    def is_watchpoint(self) -> bool:
        return self >= BpKind.WRITE

    @property
    def stop_reason(self) -> StopReason:
        """The stop-reply key gdb expects when this kind of breakpoint triggers."""
        return ("swbreak", "hwbreak", "watch", "rwatch", "awatch")[self]


@dataclass(frozen=True, slots=True)
class Resume:
    """What to run: vcpus in `step` execute exactly one instruction, vcpus in `cont`
    run freely, all others stay stopped.  The first vcpu to stop stops everything
    (gdb's all-stop mode)."""

    step: frozenset[int] = frozenset()
    cont: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        both = self.step & self.cont
        if both:
            raise ValueError(f"vcpus {sorted(both)} are both stepped and continued")

    @property
    def vcpus(self) -> frozenset[int]:
        return self.step | self.cont


@dataclass(frozen=True, slots=True)
class StopEvent:
    """Why the guest stopped.

    reason "exited" ends the session: gdb gets W<exit_status> when exit_status is
    set, otherwise X<signal> (the guest was killed by `signal`).  `address` is the
    data address for watch/rwatch/awatch."""

    vcpu: int
    signal: int = SIGTRAP
    reason: StopReason | None = None
    address: int | None = None
    exit_status: int | None = None


class Target(Protocol):
    """What the stub needs from the thing being debugged (see module docstring)."""

    arch: str  # "i386" or "i386:x86-64"

    def threads(self) -> list[int]:
        """vCPU ids, in order."""
        ...

    def read_registers(self, vcpu: int) -> dict[str, int]:
        """Register values by the names used in xml.py; missing names read as unavailable."""
        ...

    def write_register(self, vcpu: int, name: str, value: int) -> None: ...

    def read_memory(self, vcpu: int, vaddr: int, size: int) -> bytes:
        """Raises MemoryAccessError if any byte is unmapped."""
        ...

    def write_memory(self, vcpu: int, vaddr: int, data: bytes) -> None:
        """Raises MemoryAccessError if any byte is unmapped."""
        ...

    def resume(self, action: Resume) -> None:
        """Start the vcpus and return at once; `wait_stop` reports the stop."""
        ...

    def wait_stop(self, timeout: float | None) -> StopEvent | None:
        """Block until the guest has stopped after `resume` (None on timeout)."""
        ...

    def interrupt(self) -> None:
        """Stop all vcpus as soon as possible; thread-safe; wait_stop then reports SIGINT."""
        ...

    def insert_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        """False if this kind is unsupported; MemoryAccessError if addr is unmapped."""
        ...

    def remove_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool: ...

    def monitor(self, command: str) -> str:
        """Run a `monitor` command; the text returned is shown to the gdb user."""
        ...

    def kill(self) -> None: ...

    def detach(self) -> None:
        """Forget all debug state and let the guest run on without a debugger."""
        ...
