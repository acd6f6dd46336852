"""What `xenpy run --gdb PORT --trace[=NAMES] [--json]` sets up around a domain.

Kept out of cli.py so the command stays a thin parser: the session owns the gdb server,
the domain's Target and the trace, and tears them down in the right order (the trace
detaches, a gdb that is still connected hears that the domain has ended).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from .gdbstub.server import GdbServer
from .target import DomainTarget
from .trace import HypercallTrace, parse_names

if TYPE_CHECKING:
    from ..hv.domain import Domain
    from ..hv.host import Host

#: how long a finished run waits for a connected gdb to take the exit report and leave
GDB_GOODBYE_S = 10.0


@dataclass
class DebugSession:
    host: "Host"
    target: DomainTarget | None = None
    server: GdbServer | None = None
    trace: HypercallTrace | None = None

    @classmethod
    def start(cls, host: "Host", d: "Domain", *, gdb_port: int | None = None,
              trace: str | None = None, json_lines: bool = False, gdb_host: str = "127.0.0.1",
              err: TextIO | None = None) -> "DebugSession":
        """Attach what was asked for; with gdb the domain stays stopped until gdb resumes it."""
        err = sys.stderr if err is None else err
        session = cls(host)
        if trace is not None:
            session.trace = HypercallTrace(err, names=parse_names(trace), json_lines=json_lines)
            session.trace.attach(host)
        if gdb_port is not None:
            target = DomainTarget(d)
            target.attach()      # held before its first instruction
            server = GdbServer(target, gdb_host, gdb_port, on_connect=target.attach)
            session.target, session.server = target, server
            addr, port = server.address
            print(f"xenpy: gdb: waiting on {addr}:{port} (in gdb: target remote {addr}:{port})",
                  file=err, flush=True)
            server.start()
        return session

    def close(self) -> None:
        if self.trace is not None:
            self.trace.detach(self.host)
        if self.server is not None:
            if self.server.connected.is_set():
                self.server.idle.wait(GDB_GOODBYE_S)
            self.server.close()
        if self.target is not None:
            self.target.detach()
