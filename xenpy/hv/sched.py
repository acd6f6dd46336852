"""sched_op: yield, block, poll, shutdown (xen/sched.h)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi.errno import Errno
from ..abi.sched import (SCHEDOP_block, SCHEDOP_poll, SCHEDOP_remote_shutdown,
                         SCHEDOP_shutdown, SCHEDOP_shutdown_code, SCHEDOP_yield,
                         SCHEDOP_watchdog, Shutdown)
from .hypercall import hypercall
from .time import guest_now, to_host

if TYPE_CHECKING:
    from .vcpu import Vcpu


def _shutdown(v: "Vcpu", reason: int) -> int:
    try:
        why = Shutdown(reason)
    except ValueError:
        return -Errno.EINVAL
    v.domain.shutdown(why, v.domain.shutdown_code)
    return 0


@hypercall("sched_op", 2)
def do_sched_op(v: "Vcpu", cmd: int, arg: int) -> int:
    if cmd == SCHEDOP_yield:
        v.yielded = True
        v.cpu.stop()
        return 0
    if cmd == SCHEDOP_block:
        # Xen: enable events, then block unless one is already pending.
        v.vcpu_info.evtchn_upcall_mask = 0
        if not v.vcpu_info.evtchn_upcall_pending:
            v.block()
        return 0
    if cmd == SCHEDOP_shutdown:
        return _shutdown(v, v.gmem.read_u32(arg))
    if cmd == SCHEDOP_shutdown_code:
        v.domain.shutdown_code = v.gmem.read_u32(arg)
        return 0
    if cmd == SCHEDOP_poll:
        # struct sched_poll { XEN_GUEST_HANDLE(evtchn_port_t) ports; unsigned nr_ports; u64 timeout; }
        w = v.domain.width
        if w == 4:
            ports, nr, timeout = struct.unpack("<IIQ", v.gmem.read(arg, 16))
        else:
            ports, nr, timeout = struct.unpack("<QI4xQ", v.gmem.read(arg, 24))
        if nr > 128:
            return -Errno.EINVAL
        si = v.domain.shared_info
        bits = w * 8
        for i in range(nr):
            p = v.gmem.read_u32(ports + 4 * i)
            if p >= len(v.domain.evtchn.ports):
                return -Errno.EINVAL
            if si.evtchn_pending[p // bits] >> (p % bits) & 1:
                return 0
        if timeout and timeout <= guest_now(v.domain):
            return 0
        v.poll_ports = True
        if timeout:
            v.poll_timer = v.domain.host.timers.add(v, to_host(v.domain, timeout), "wake")
        v.block()
        return 0
    if cmd == SCHEDOP_remote_shutdown:
        return -Errno.EPERM        # only a privileged domain may shut another down
    if cmd == SCHEDOP_watchdog:
        return -Errno.ENOSYS
    return -Errno.ENOSYS


@hypercall("sched_op_compat", 2)
def do_sched_op_compat(v: "Vcpu", cmd: int, arg: int) -> int:
    """The pre-3.0.2 form: shutdown's reason is passed by value."""
    if cmd == SCHEDOP_shutdown:
        return _shutdown(v, arg)
    if cmd in (SCHEDOP_yield, SCHEDOP_block):
        return do_sched_op(v, cmd, 0)
    return -Errno.ENOSYS
