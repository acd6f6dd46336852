"""A gdb remote-serial-protocol stub: sans-IO framing (rsp), command handling (stub),
the Target protocol the hypervisor implements (target), target descriptions (xml),
a TCP adapter (server) and reusable Unicorn breakpoint/step machinery (uc_debug)."""

from xenpy.debug.gdbstub.rsp import RspConnection
from xenpy.debug.gdbstub.server import GdbServer
from xenpy.debug.gdbstub.stub import GdbStub
from xenpy.debug.gdbstub.target import BpKind, MemoryAccessError, Resume, StopEvent, Target

__all__ = [
    "BpKind", "GdbServer", "GdbStub", "MemoryAccessError", "Resume", "RspConnection",
    "StopEvent", "Target",
]
