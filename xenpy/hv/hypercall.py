"""The hypercall table: one row per hypercall, filled by a decorator in each subsystem.

As Xen's hypercall-defs.c, the table is data: number → (handler, argument count,
the ABIs it exists for).  Dispatch reads the argument registers of the guest's ABI,
calls the handler with plain ints, and writes the result back.  A handler returns
0/positive or a negative errno; a bad guest pointer inside it raises GuestFault,
which becomes -EFAULT here.  An unimplemented number is -ENOSYS, logged once per
domain, as Xen does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from ..abi.errno import Errno
from ..abi.xen import HYPERCALL_NR, HYPERCALLS, NR_HYPERCALLS, Width
from .guest_access import GuestFault

if TYPE_CHECKING:
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.hypercall")


@dataclass(frozen=True)
class Hypercall:
    nr: int
    name: str
    fn: Callable[..., int]
    nargs: int
    abis: frozenset[Width]


TABLE: dict[Width, list[Hypercall | None]] = {w: [None] * NR_HYPERCALLS for w in Width}
"""One column per guest ABI, built at import time from the @hypercall rows."""


def hypercall(name: str, nargs: int, abis: tuple[Width, ...] = (Width.X86_32, Width.X86_64)):
    """Register ``fn(vcpu, *args) -> int`` as the handler of hypercall ``name``."""
    nr = HYPERCALL_NR[name]

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        row = Hypercall(nr, name, fn, nargs, frozenset(abis))
        for abi in abis:
            if TABLE[abi][nr] is not None:
                raise RuntimeError(f"hypercall {name} registered twice for {abi.name}")
            TABLE[abi][nr] = row
        return fn
    return register


class HypercallObserver(Protocol):
    """Watches hypercalls (the trace, gdb catchpoints).  ``before`` returning True defers
    the call: the vCPU stops *at* the hypercall instruction, which runs again on resume."""

    def before(self, v: "Vcpu", nr: int, args: tuple[int, ...]) -> bool: ...

    def after(self, v: "Vcpu", nr: int, args: tuple[int, ...], result: int | None) -> None: ...


#: Returned by dispatch when an observer deferred the call.
DEFER = object()


class Continue(Exception):
    """Raised by a handler that changed the vCPU's registers itself (iret): no result."""


def dispatch(v: "Vcpu", nr: int, args: tuple[int, ...]):
    """Run hypercall ``nr`` for ``v``; the result to put in eax/rax (None: leave it;
    DEFER: an observer wants the vCPU stopped before the call)."""
    observers = v.domain.host.hypercall_observers
    if not observers:
        return _call(v, nr, args)
    deferred = False
    for o in observers:
        deferred |= bool(o.before(v, nr, args))
    if deferred:
        return DEFER
    res = _call(v, nr, args)
    for o in observers:
        o.after(v, nr, args, res)
    return res


def fast_dispatcher(v: "Vcpu") -> Callable[[int, int, int, int, int, int, int], object]:
    """dispatch() specialised for one vCPU: the hot path of every hypercall.

    Looks the row up in the vCPU's ABI column and calls the handler with exactly its
    argument count, without building tuples; falls back to dispatch() when observers
    (trace, debugger) are attached or the number is unknown."""
    table = TABLE[v.domain.width]
    observers = v.domain.host.hypercall_observers
    efault = -Errno.EFAULT

    def fast(nr: int, a1: int, a2: int, a3: int, a4: int, a5: int, a6: int):
        row = table[nr] if nr < NR_HYPERCALLS else None
        if row is None or observers:
            return dispatch(v, nr, (a1, a2, a3, a4, a5, a6))
        n = row.nargs
        try:
            if n == 2:
                return row.fn(v, a1, a2)
            if n == 1:
                return row.fn(v, a1)
            if n == 3:
                return row.fn(v, a1, a2, a3)
            if n == 4:
                return row.fn(v, a1, a2, a3, a4)
            return row.fn(v, *(a1, a2, a3, a4, a5, a6)[:n])
        except GuestFault as f:
            log.debug("d%d %s: bad guest pointer %#x", v.domain.domid, row.name, f.va)
            return efault
        except Continue:
            return None
    return fast


def _call(v: "Vcpu", nr: int, args: tuple[int, ...]) -> int | None:
    hc = TABLE[v.domain.width][nr] if 0 <= nr < NR_HYPERCALLS else None
    if hc is None:
        v.domain.log_once(f"hypercall {nr}", "unimplemented hypercall %d (%s)", nr,
                          HYPERCALLS.get(nr, "unknown"))
        return -Errno.ENOSYS
    try:
        return hc.fn(v, *args[:hc.nargs])
    except GuestFault as f:
        log.debug("d%d %s: bad guest pointer %#x", v.domain.domid, hc.name, f.va)
        return -Errno.EFAULT
    except Continue:
        return None
