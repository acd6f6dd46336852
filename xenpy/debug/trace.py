"""The hypercall trace: one line per hypercall, as strace prints syscalls.

    0.001234 d1v0 xen_version(XENVER_version, NULL) = 0x40011

Columns: seconds since the trace began, domain and vCPU, the call with decoded
arguments (decode.py), and the result (an errno name when negative; ``?`` for calls
that do not return, such as iret).  With ``json=True`` each call is one JSON object per
line instead (raw and decoded arguments, result, errno), for scripts.

The tracer is a HypercallObserver: ``attach(host)`` and ``detach(host)`` work on any
Host, running or not, which is what a future ``xenpy trace DOM`` needs.  Arguments are
decoded in ``before`` (what the guest passed, before the call overwrote any OUT field)
and printed in ``after``, when the result is known; a call a debugger deferred is
decoded again when it really runs.  Calls nested in a multicall are indented.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TextIO

from ..abi.errno import Errno
from .decode import DecodedCall, decode_call, errno_result, hypercall_number

if TYPE_CHECKING:
    from ..hv.host import Host
    from ..hv.vcpu import Vcpu


def parse_names(spec: str | None) -> frozenset[int] | None:
    """``--trace=NAMES``: comma-separated names or numbers; None or empty means all."""
    if spec is None or not spec.strip():
        return None
    return frozenset(hypercall_number(w) for w in spec.split(",") if w.strip())


class HypercallTrace:
    """Writes one line (or JSON object) per finished hypercall to ``out``."""

    def __init__(self, out: TextIO, *, names: Iterable[int] | None = None,
                 domids: Iterable[int] | None = None, json_lines: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.names = None if names is None else frozenset(names)
        self.domids = None if domids is None else frozenset(domids)
        self.json_lines = json_lines
        self.clock = clock
        self.start = clock()
        self._stack: dict[tuple[int, int], list[tuple[int, tuple[int, ...], DecodedCall | None]]] = {}
        self._lock = threading.Lock()

    # ---- attaching ----------------------------------------------------------------------------
    def attach(self, host: "Host") -> None:
        if self not in host.hypercall_observers:
            host.hypercall_observers.append(self)

    def detach(self, host: "Host") -> None:
        if self in host.hypercall_observers:
            host.hypercall_observers.remove(self)

    # ---- HypercallObserver ----------------------------------------------------------------------
    def _wanted(self, v: "Vcpu", nr: int) -> bool:
        return ((self.domids is None or v.domain.domid in self.domids)
                and (self.names is None or nr in self.names))

    def before(self, v: "Vcpu", nr: int, args: tuple[int, ...]) -> bool:
        if self.domids is not None and v.domain.domid not in self.domids:
            return False
        stack = self._stack.setdefault((v.domain.domid, v.vcpu_id), [])
        if stack and stack[-1][0] == nr and stack[-1][1] == args:
            stack.pop()     # the same call again: a debugger deferred it, it never returned
        stack.append((nr, args, decode_call(v, nr, args) if self._wanted(v, nr) else None))
        return False

    def after(self, v: "Vcpu", nr: int, args: tuple[int, ...], result: int | None) -> None:
        if self.domids is not None and v.domain.domid not in self.domids:
            return
        stack = self._stack.get((v.domain.domid, v.vcpu_id))
        if not stack:
            return
        while len(stack) > 1 and stack[-1][0] != nr:
            stack.pop()     # a deferred call that was not issued again
        _, _, call = stack.pop()
        if call is not None:
            self.emit(v, call, result, depth=len(stack))

    # ---- output ---------------------------------------------------------------------------------
    def emit(self, v: "Vcpu", call: DecodedCall, result: int | None, depth: int = 0) -> None:
        t = self.clock() - self.start
        d = v.domain
        if self.json_lines:
            errno = None
            if result is not None and result < 0:
                try:
                    errno = Errno(-result).name
                except ValueError:
                    errno = None
            line = json.dumps({
                "time": round(t, 6), "domid": d.domid, "domain": d.name, "vcpu": v.vcpu_id,
                "nr": call.nr, "name": call.name, "args": list(call.raw),
                "decoded": list(call.args), "result": result, "errno": errno, "depth": depth,
            })
        else:
            line = (f"{t:12.6f} d{d.domid}v{v.vcpu_id} {'  ' * depth}{call}"
                    f" = {errno_result(result, d.width)}")
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

