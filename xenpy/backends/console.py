"""The console backend (xenconsoled): drains each domain's PV console ring.

The guest writes into ``out[]`` and signals its console event channel; we copy the
bytes out, advance ``out_cons`` and signal back (kernels may wait for the ring to
drain).  Input goes the other way through ``in[]``.  The indices are the guest's and
are not trusted: a producer more than a ring's size ahead marks the console broken,
as xenconsoled does, and nothing is read from it again.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..abi.io.console import XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface
from ..abi.xen import PAGE_SHIFT

if TYPE_CHECKING:
    from ..hv.domain import Domain

log = logging.getLogger("xenpy.console")

#: console input queued for a guest that does not read it (xenconsoled reads its tty only
#: when the ring has room; here the control socket pushes, so the queue is bounded)
MAX_PENDING_INPUT = 1 << 20
Sink = Callable[[bytes], None]


@dataclass
class ConsoleMetrics:
    out_bytes: int = 0
    in_bytes: int = 0
    kicks: int = 0


@dataclass
class DomainConsole:
    domain: "Domain"
    ring: XenconsInterface
    sink: Sink
    broken: bool = False
    pending_input: bytearray = field(default_factory=bytearray)
    metrics: ConsoleMetrics = field(default_factory=ConsoleMetrics)
    lock: threading.Lock = field(default_factory=threading.Lock)   # input arrives from threads

    def kick(self) -> None:
        """The guest signalled: drain out[], then refill in[] from pending input."""
        self.metrics.kicks += 1
        if self.broken:
            return
        r = self.ring
        cons, prod = r.out_cons, r.out_prod
        if (prod - cons) & 0xFFFFFFFF > XENCONS_OUT_SIZE:
            self.broken = True
            log.warning("d%d: console ring indices out of range (cons %d prod %d); "
                        "ignoring its console", self.domain.domid, cons, prod)
            return
        n = (prod - cons) & 0xFFFFFFFF
        if n:
            buf = self._out_view()
            start = cons % XENCONS_OUT_SIZE
            first = min(n, XENCONS_OUT_SIZE - start)
            data = bytes(buf[start:start + first]) + bytes(buf[:n - first])
            r.out_cons = prod
            self.metrics.out_bytes += n
            self.sink(data)
        with self.lock:
            self._fill_input()
        self.domain.evtchn.set_pending(self.domain.console_port)

    def _out_view(self) -> memoryview:
        base = self.domain.console_mfn << PAGE_SHIFT
        off = XenconsInterface.out.offset
        return self.domain.mem.view[base + off:base + off + XENCONS_OUT_SIZE]

    def _in_view(self) -> memoryview:
        base = self.domain.console_mfn << PAGE_SHIFT
        off = XenconsInterface.in_.offset
        return self.domain.mem.view[base + off:base + off + XENCONS_IN_SIZE]

    def feed(self, data: bytes) -> None:
        """Queue keyboard input for the guest (at most MAX_PENDING_INPUT bytes wait:
        the rest is dropped, as a full tty buffer would)."""
        with self.lock:
            room = MAX_PENDING_INPUT - len(self.pending_input)
            if len(data) > room:
                log.warning("d%d console: input not read by the guest; dropping %d bytes",
                            self.domain.domid, len(data) - max(room, 0))
                data = data[:max(room, 0)]
            self.pending_input += data
            filled = self._fill_input()
        if filled:
            self.domain.evtchn.set_pending(self.domain.console_port)

    def _fill_input(self) -> bool:
        if self.broken or not self.pending_input:
            return False
        r = self.ring
        cons, prod = r.in_cons, r.in_prod
        used = (prod - cons) & 0xFFFFFFFF
        if used > XENCONS_IN_SIZE:
            self.broken = True
            return False
        room = XENCONS_IN_SIZE - used
        n = min(room, len(self.pending_input))
        if not n:
            return False
        buf = self._in_view()
        for i in range(n):
            buf[(prod + i) % XENCONS_IN_SIZE] = self.pending_input[i]
        del self.pending_input[:n]
        r.in_prod = (prod + n) & 0xFFFFFFFF
        self.metrics.in_bytes += n
        return True


class ConsoleBackend:
    """xenconsoled for every domain of a host."""

    def __init__(self) -> None:
        self.consoles: dict[int, DomainConsole] = {}

    def connect(self, d: "Domain", sink: Sink) -> DomainConsole:
        ring = XenconsInterface.from_buffer(d.mem.buf, d.console_mfn << PAGE_SHIFT)
        c = DomainConsole(d, ring, sink)
        self.consoles[d.domid] = c
        return c

    def disconnect(self, domid: int) -> None:
        self.consoles.pop(domid, None)
