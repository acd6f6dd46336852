"""multicall: a batch of hypercalls, each result written back into its entry."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.xen import HYPERCALL_NR, Width
from .hypercall import DEFER, _call, dispatch, hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu

MAX_MULTICALL = 1024


@hypercall("multicall", 2)
def do_multicall(v: "Vcpu", calls: int, nr_calls: int) -> int:
    """struct multicall_entry { ulong op, result; ulong args[6]; } — no nesting, no iret."""
    w = v.domain.width
    fmt = "<8I" if w == Width.X86_32 else "<8Q"
    size = 8 * w
    if nr_calls > MAX_MULTICALL:
        return -Errno.EINVAL
    for i in range(nr_calls):
        a = calls + size * i
        op, _res, *args = struct.unpack(fmt, v.gmem.read(a, size))
        if op in (HYPERCALL_NR["multicall"], HYPERCALL_NR["iret"]):
            res = -Errno.EINVAL
        else:
            res = dispatch(v, op, tuple(args))
            if res is DEFER:              # no stopping half-way through a batch
                res = _call(v, op, tuple(args))
            res = 0 if res is None else res
        v.gmem.write_ulong(a + w, res)
    return 0
