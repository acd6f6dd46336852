"""console_io: the hypervisor's own console, which Xen lets domUs write in debug builds."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.xen import CONSOLEIO_read, CONSOLEIO_write
from .hypercall import hypercall

if TYPE_CHECKING:
    from .vcpu import Vcpu

MAX_WRITE = 1 << 16


@hypercall("console_io", 3)
def do_console_io(v: "Vcpu", cmd: int, count: int, buf: int) -> int:
    if cmd == CONSOLEIO_write:
        if count > MAX_WRITE:
            return -Errno.EINVAL
        data = v.gmem.read(buf, count)
        v.domain.host.console_write(v.domain, data, hypervisor=True)
        return 0
    if cmd == CONSOLEIO_read:
        return 0                          # no input on the hypervisor console for domUs
    return -Errno.ENOSYS
