"""Event channels, Xen's 2-level ABI: per-domain ports, pending/mask bits in shared_info.

A port is in one state at a time (Xen's ECS_*), kept as a tagged record.  Backends
that live in the hypervisor process (console, xenstored) are "dom0" peers: their end
of an interdomain channel is a Python callback instead of a port of another guest.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..abi.errno import Errno
from ..abi.event_channel import (EVTCHNSTAT_closed, EVTCHNSTAT_interdomain,
                                 EVTCHNSTAT_ipi, EVTCHNSTAT_unbound, EVTCHNSTAT_virq)

if TYPE_CHECKING:
    from .domain import Domain


class ECS(enum.IntEnum):
    free = EVTCHNSTAT_closed
    unbound = EVTCHNSTAT_unbound
    interdomain = EVTCHNSTAT_interdomain
    virq = EVTCHNSTAT_virq
    ipi = EVTCHNSTAT_ipi


@dataclass
class Channel:
    state: ECS = ECS.free
    vcpu: int = 0
    remote_domid: int = 0                 # unbound: who may bind; interdomain: the peer
    remote_port: int = 0
    virq: int = -1
    backend: Callable[[], None] | None = field(default=None, repr=False)


class EventChannels:
    """The port table of one domain."""

    MAX_PORTS = 4096            # 2-level ABI on 32-bit: 32*32 ... we allow the 64-bit bound

    def __init__(self, domain: "Domain") -> None:
        self.d = domain
        self.ports: list[Channel] = [Channel()]   # port 0 is never used

    def _alloc(self) -> int:
        for p in range(1, len(self.ports)):
            if self.ports[p].state == ECS.free:
                return p
        limit = self.d.width * 8 * self.d.width * 8
        if len(self.ports) >= limit:
            raise OverflowError
        self.ports.append(Channel())
        return len(self.ports) - 1

    def get(self, port: int) -> Channel | None:
        if 0 < port < len(self.ports):
            return self.ports[port]
        return None

    def bind_backend(self, callback: Callable[[], None]) -> int:
        """A port connected to a hypervisor-side backend (console, xenstored)."""
        p = self._alloc()
        self.ports[p] = Channel(ECS.interdomain, remote_domid=0, backend=callback)
        return p

    def send(self, port: int) -> int:
        ch = self.get(port)
        if ch is None or ch.state == ECS.free:
            return -Errno.EINVAL
        if ch.state == ECS.interdomain:
            if ch.backend is not None:
                ch.backend()
            else:
                peer = self.d.host.domains.get(ch.remote_domid)
                if peer is not None:
                    peer.evtchn.set_pending(ch.remote_port)
            return 0
        if ch.state == ECS.ipi:
            self.set_pending(port)
            return 0
        if ch.state == ECS.unbound:
            return 0               # Xen: sending on an unbound port is silently dropped
        return -Errno.EINVAL

    def set_pending(self, port: int) -> None:
        """evtchn_2l_set_pending: pending bit, then selector and upcall_pending if unmasked."""
        si = self.d.shared_info
        ch = self.get(port)
        if si is None or ch is None:
            return
        bits = self.d.width * 8
        word, bit = divmod(port, bits)
        if si.evtchn_pending[word] >> bit & 1:
            return
        si.evtchn_pending[word] |= 1 << bit
        if si.evtchn_mask[word] >> bit & 1:
            return
        vi = self.d.vcpu_info(ch.vcpu)
        if vi.evtchn_pending_sel >> word & 1:
            return
        vi.evtchn_pending_sel |= 1 << word
        vi.evtchn_upcall_pending = 1
        if ch.vcpu < len(self.d.vcpus):
            self.d.vcpus[ch.vcpu].kick()

    def status(self, port: int) -> tuple[int, Channel] | None:
        ch = self.get(port)
        return None if ch is None else (int(ch.state), ch)


# --- the event_channel_op hypercall ------------------------------------------------------------
from ..abi import event_channel as E            # noqa: E402
from .hypercall import hypercall                # noqa: E402


@hypercall("event_channel_op", 2)
def do_event_channel_op(v, cmd: int, arg: int) -> int:
    d = v.domain
    ev = d.evtchn
    g = v.gmem
    if cmd == E.EVTCHNOP_send:
        return ev.send(g.read_u32(arg))
    if cmd == E.EVTCHNOP_status:
        # struct evtchn_status { domid_t dom; evtchn_port_t port; uint32 status; uint32 vcpu; union u }
        import struct
        dom, port = struct.unpack("<H2xI", g.read(arg, 8))
        if dom not in (0x7FF0, d.domid):
            return -Errno.ESRCH
        st = ev.status(port)
        if st is None:
            return -Errno.EINVAL
        status, ch = st
        if ch.state == ECS.unbound:
            u = struct.pack("<H6x", ch.remote_domid)
        elif ch.state == ECS.interdomain:
            u = struct.pack("<HxxI", ch.remote_domid, ch.remote_port)
        elif ch.state == ECS.virq:
            u = struct.pack("<I4x", ch.virq)
        else:
            u = bytes(8)
        g.write(arg + 8, struct.pack("<II", status, ch.vcpu) + u)
        return 0
    if cmd == E.EVTCHNOP_unmask:
        port = g.read_u32(arg)
        ch = ev.get(port)
        if ch is None:
            return -Errno.EINVAL
        si = d.shared_info
        bits = d.width * 8
        word, bit = divmod(port, bits)
        si.evtchn_mask[word] &= ~(1 << bit)
        if si.evtchn_pending[word] >> bit & 1:
            vi = d.vcpu_info(ch.vcpu)
            if not vi.evtchn_pending_sel >> word & 1:
                vi.evtchn_pending_sel |= 1 << word
                vi.evtchn_upcall_pending = 1
        return 0
    if cmd in (E.EVTCHNOP_init_control, E.EVTCHNOP_expand_array, E.EVTCHNOP_set_priority):
        return -Errno.ENOSYS               # no FIFO ABI: guests fall back to 2-level
    d.log_once(f"evtchn {cmd}", "event_channel_op %d not implemented yet", cmd)
    return -Errno.ENOSYS
