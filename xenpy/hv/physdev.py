"""physdev_op: the virtual IOPL (the only physdev operation a plain domU needs)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.physdev import PHYSDEVOP_set_iopl
from .hypercall import hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu


@hypercall("physdev_op", 2)
def do_physdev_op(v: "Vcpu", cmd: int, arg: int) -> int:
    if cmd == PHYSDEVOP_set_iopl:
        iopl = v.gmem.read_u32(arg)
        if iopl > 3:
            return -Errno.EINVAL
        v.iopl = iopl
        return 0
    v.domain.log_once(f"physdev {cmd}", "physdev_op %d not available to a domU", cmd)
    return -Errno.ENOSYS
