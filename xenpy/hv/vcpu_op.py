"""vcpu_op: bringing a domain's other vCPUs up and down, and their timers (Xen's
common/domain.c do_vcpu_op, arch_initialise_vcpu).

A PV kernel boots on vCPU 0; every other vCPU exists from domain creation but is down
until the kernel gives it a context with VCPUOP_initialise (once: a second call is
-EEXIST) and starts it with VCPUOP_up.  The context is a ``vcpu_guest_context`` with
machine frames, checked and referenced exactly as XEN_DOMCTL_setvcpucontext does
(domctl.setvcpucontext: top-level table pinned as L3/L4, GDT frames as descriptor
pages, selectors forced to the guest kernel's RPL).  VCPUOP_down takes a vCPU out of
scheduling; on itself it stops at once, and a later VCPUOP_up continues it after the
hypercall.  The last vCPU going down powers the domain off, as in Xen.
"""
from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

from ..abi import vcpu as VO
from ..abi.errno import Errno
from ..abi.sched import Shutdown
from . import domctl
from .hypercall import hypercall
from .time import timer_op

if TYPE_CHECKING:
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.vcpu_op")


@hypercall("vcpu_op", 3)
def do_vcpu_op(v: "Vcpu", cmd: int, vcpuid: int, arg: int) -> int:
    d = v.domain
    if not 0 <= vcpuid < len(d.vcpus):
        return -Errno.ENOENT
    target = d.vcpus[vcpuid]
    if cmd == VO.VCPUOP_is_up:
        return int(target.online)
    if cmd == VO.VCPUOP_initialise:
        return initialise(v, target, arg)
    if cmd == VO.VCPUOP_up:
        if not target.initialised:
            return -Errno.EINVAL
        if not target.online:
            target.online = True
            d.host.notify_event(d)
        return 0
    if cmd == VO.VCPUOP_down:
        if not any(w.online for w in d.vcpus if w is not target):
            d.shutdown(Shutdown.poweroff)     # Xen: the last vCPU going down powers off
            return 0
        target.online = False
        if target is v:
            v.cpu.stop()                      # it gives the CPU back after this hypercall
        return 0
    res = timer_op(v, cmd, target, arg)
    if res is not None:
        return res
    d.log_once(f"vcpu_op {cmd}", "vcpu_op %d not implemented", cmd)
    return -Errno.ENOSYS


def initialise(v: "Vcpu", target: "Vcpu", arg: int) -> int:
    """VCPUOP_initialise: ``arg`` points at the new vCPU's vcpu_guest_context."""
    if target.initialised:
        return -Errno.EEXIST
    size = ctypes.sizeof(domctl.vcpu_guest_context(v.domain.width))
    data = v.gmem.read(arg, size)
    try:
        domctl.setvcpucontext(target, data, defer_registers=True)
    except domctl.DomctlError as e:
        log.info("d%d vcpu_op initialise vcpu%d refused: %s", v.domain.domid,
                 target.vcpu_id, e)
        return -Errno.EINVAL
    target.online = False                     # up is a separate step, as in Xen
    return 0
