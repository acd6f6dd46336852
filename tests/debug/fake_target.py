"""An in-memory Target that records calls: for stub tests that need no CPU."""

from __future__ import annotations

import queue

from xenpy.debug.gdbstub.target import BpKind, MemoryAccessError, Resume, StopEvent


class FakeTarget:
    def __init__(self, arch: str = "i386", vcpus: int = 2) -> None:
        self.arch = arch
        self.vcpus = list(range(vcpus))
        self.regs: dict[int, dict[str, int]] = {v: {} for v in self.vcpus}
        self.memory: dict[int, int] = {}  # vaddr -> byte; absent = unmapped
        self.calls: list[tuple[object, ...]] = []
        self.stops: queue.Queue[StopEvent] = queue.Queue()
        self.supported = {BpKind.SOFTWARE, BpKind.HARDWARE, BpKind.WRITE}

    def map(self, vaddr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.memory[vaddr + i] = b

    def threads(self) -> list[int]:
        return list(self.vcpus)

    def read_registers(self, vcpu: int) -> dict[str, int]:
        return dict(self.regs[vcpu])

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        self.calls.append(("write_register", vcpu, name, value))
        self.regs[vcpu][name] = value

    def read_memory(self, vcpu: int, vaddr: int, size: int) -> bytes:
        try:
            return bytes(self.memory[a] for a in range(vaddr, vaddr + size))
        except KeyError:
            raise MemoryAccessError(vaddr, size) from None

    def write_memory(self, vcpu: int, vaddr: int, data: bytes) -> None:
        if any(a not in self.memory for a in range(vaddr, vaddr + len(data))):
            raise MemoryAccessError(vaddr, len(data))
        self.map(vaddr, data)
        self.calls.append(("write_memory", vcpu, vaddr, data))

    def resume(self, action: Resume) -> None:
        self.calls.append(("resume", action))

    def wait_stop(self, timeout: float | None) -> StopEvent | None:
        try:
            return self.stops.get(timeout=timeout)
        except queue.Empty:
            return None

    def interrupt(self) -> None:
        self.calls.append(("interrupt",))
        self.stops.put(StopEvent(vcpu=0, signal=2))

    def insert_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        if kind not in self.supported:
            return False
        self.calls.append(("insert", kind, addr, length))
        return True

    def remove_breakpoint(self, kind: BpKind, addr: int, length: int) -> bool:
        self.calls.append(("remove", kind, addr, length))
        return True

    def monitor(self, command: str) -> str:
        self.calls.append(("monitor", command))
        return f"you said {command}\n"

    def kill(self) -> None:
        self.calls.append(("kill",))

    def detach(self) -> None:
        self.calls.append(("detach",))
