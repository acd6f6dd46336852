"""Event channels, Xen's 2-level ABI: per-domain ports, pending/mask bits in shared_info.

A port is in one state at a time (Xen's ECS_*), kept as a tagged record.  Backends
that live in the hypervisor process (console, xenstored) are "dom0" peers: their end
of an interdomain channel is a Python callback instead of a port of another guest.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..abi import event_channel as E
from ..abi.errno import Errno
from ..abi.event_channel import (EVTCHNSTAT_closed, EVTCHNSTAT_interdomain,
                                 EVTCHNSTAT_ipi, EVTCHNSTAT_unbound, EVTCHNSTAT_virq)
from .hypercall import hypercall

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

    def _new_port(self, ch: Channel) -> int:
        """Install ``ch`` on a free port: the port, or -ENOSPC when the table is full."""
        try:
            p = self._alloc()
        except OverflowError:
            return -Errno.ENOSPC
        self.ports[p] = ch
        return p

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
        if isinstance(port, int) and 0 < port < len(self.ports):
            return self.ports[port]
        return None

    def bind_backend(self, callback: Callable[[], None]) -> int:
        """A port connected to a hypervisor-side backend (console, xenstored): dom0's end
        is a Python callback rather than a port of another guest."""
        p = self._alloc()
        self.ports[p] = Channel(ECS.interdomain, remote_domid=0, remote_port=p, backend=callback)
        return p

    def bind_backend_port(self, port: int, callback: Callable[[], None]) -> bool:
        """dom0's EVTCHNOP_bind_interdomain to a port the guest offered to dom0, with the
        host standing in for dom0: the peer end becomes ``callback``."""
        ch = self.get(port)
        if ch is None or ch.state != ECS.unbound or ch.remote_domid != 0:
            return False
        self.ports[port] = Channel(ECS.interdomain, vcpu=ch.vcpu, remote_domid=0,
                                   remote_port=port, backend=callback)
        return True

    def unbind_backend_port(self, port: int) -> None:
        """dom0 closed its end: the guest's port is unbound again (and the guest's to close)."""
        ch = self.get(port)
        if ch is not None and ch.state == ECS.interdomain and ch.backend is not None:
            self.ports[port] = Channel(ECS.unbound, vcpu=ch.vcpu, remote_domid=0)

    # --- the operations (0 / port on success, -errno otherwise) -----------------------------
    def _peer(self, domid: int) -> "Domain | None":
        from ..abi.xen import DOMID_SELF
        if domid in (DOMID_SELF, self.d.domid):
            return self.d
        return self.d.host.domains.get(domid)

    def alloc_unbound(self, dom: int, remote_dom: int) -> int:
        from ..abi.xen import DOMID_SELF
        if dom not in (DOMID_SELF, self.d.domid):
            return -Errno.EPERM           # only a privileged domain allocates for another
        remote = self.d.domid if remote_dom == DOMID_SELF else remote_dom
        return self._new_port(Channel(ECS.unbound, remote_domid=remote))

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        rd = self._peer(remote_dom)
        if rd is None or rd.dying:
            return -Errno.ESRCH
        rch = rd.evtchn.get(remote_port)
        if rch is None:
            return -Errno.EINVAL
        if rch.state != ECS.unbound or rch.remote_domid != self.d.domid:
            return -Errno.EINVAL
        try:
            p = self._alloc()
        except OverflowError:
            return -Errno.ENOSPC
        if rd is self.d and p == remote_port:
            return -Errno.EINVAL
        self.ports[p] = Channel(ECS.interdomain, remote_domid=rd.domid, remote_port=remote_port)
        rch.state = ECS.interdomain
        rch.remote_domid, rch.remote_port = self.d.domid, p
        # Xen: the binding end gets an event, so a waiting peer notices the connection.
        self.set_pending(p)
        return p

    def bind_virq(self, virq: int, vcpu: int) -> int:
        from ..abi.event_channel import NR_VIRQS, VIRQ_CONSOLE, VIRQ_DOM_EXC
        if not 0 <= virq < NR_VIRQS:
            return -Errno.EINVAL
        if virq in (VIRQ_CONSOLE, VIRQ_DOM_EXC) and vcpu != 0:
            return -Errno.EINVAL          # global VIRQs bind on vCPU 0
        if not 0 <= vcpu < len(self.d.vcpus):
            return -Errno.ENOENT
        if any(c.state == ECS.virq and c.virq == virq and c.vcpu == vcpu for c in self.ports):
            return -Errno.EEXIST
        return self._new_port(Channel(ECS.virq, vcpu=vcpu, virq=virq))

    def bind_ipi(self, vcpu: int) -> int:
        if not 0 <= vcpu < len(self.d.vcpus):
            return -Errno.ENOENT
        return self._new_port(Channel(ECS.ipi, vcpu=vcpu))

    def bind_vcpu(self, port: int, vcpu: int) -> int:
        from ..abi.event_channel import VIRQ_CONSOLE, VIRQ_DOM_EXC
        ch = self.get(port)
        if ch is None or ch.state == ECS.free:
            return -Errno.EINVAL
        if not 0 <= vcpu < len(self.d.vcpus):
            return -Errno.ENOENT
        if ch.state == ECS.virq and ch.virq not in (VIRQ_CONSOLE, VIRQ_DOM_EXC):
            return -Errno.EINVAL          # per-vCPU VIRQs stay where they were bound
        if ch.state == ECS.ipi:
            return -Errno.EINVAL
        ch.vcpu = vcpu
        return 0

    def close(self, port: int) -> int:
        ch = self.get(port)
        if ch is None or ch.state == ECS.free:
            return -Errno.EINVAL
        if ch.backend is not None:
            return -Errno.EINVAL          # the toolstack's channels are not the guest's to close
        if ch.state == ECS.interdomain:
            peer = self.d.host.domains.get(ch.remote_domid)
            if peer is not None:
                rch = peer.evtchn.get(ch.remote_port)
                if rch is not None and rch.state == ECS.interdomain:
                    rch.state = ECS.unbound
                    rch.remote_domid, rch.remote_port = self.d.domid, 0
        self._clear_bits(port)
        self.ports[port] = Channel()
        return 0

    def reset(self) -> None:
        """EVTCHNOP_reset: close every port the guest may close."""
        for p in range(1, len(self.ports)):
            if self.ports[p].state != ECS.free and self.ports[p].backend is None:
                self.close(p)

    def close_all(self) -> None:
        """Domain destruction: disconnect every interdomain peer."""
        for p in range(1, len(self.ports)):
            self.ports[p].backend = None
            if self.ports[p].state != ECS.free:
                self.close(p)

    def send_virq(self, virq: int, vcpu: int = 0) -> bool:
        for p, ch in enumerate(self.ports):
            if ch.state == ECS.virq and ch.virq == virq and (ch.vcpu == vcpu or virq in (2, 3)):
                self.set_pending(p)
                return True
        return False

    def _clear_bits(self, port: int) -> None:
        si = self.d.shared_info
        if si is None:
            return
        word, bit = divmod(port, self.d.width * 8)
        si.evtchn_pending[word] &= ~(1 << bit)
        si.evtchn_mask[word] &= ~(1 << bit)

    def unmask(self, port: int) -> int:
        ch = self.get(port)
        if ch is None:
            return -Errno.EINVAL
        si = self.d.shared_info
        word, bit = divmod(port, self.d.width * 8)
        si.evtchn_mask[word] &= ~(1 << bit)
        if si.evtchn_pending[word] >> bit & 1:
            vi = self.d.vcpu_info(ch.vcpu)
            if not vi.evtchn_pending_sel >> word & 1:
                vi.evtchn_pending_sel |= 1 << word
                vi.evtchn_upcall_pending = 1
                if ch.vcpu < len(self.d.vcpus):
                    self.d.vcpus[ch.vcpu].kick()
        return 0

    def send(self, port: int) -> int:
        """evtchn_send: interdomain to the peer, IPI to ourselves, unbound dropped."""
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
        return -Errno.EINVAL       # VIRQ ports are the hypervisor's to signal

    def set_pending(self, port: int) -> None:
        """evtchn_2l_set_pending: pending bit, then selector and upcall_pending if
        unmasked; pollers of the domain wake either way (evtchn_check_pollers)."""
        si = self.d.shared_info
        ch = self.get(port)
        if si is None or ch is None:
            return
        word, bit = divmod(port, self.d.width * 8)
        if si.evtchn_pending[word] >> bit & 1:
            return
        si.evtchn_pending[word] |= 1 << bit
        if not si.evtchn_mask[word] >> bit & 1:
            vi = self.d.vcpu_info(ch.vcpu)
            if not vi.evtchn_pending_sel >> word & 1:
                vi.evtchn_pending_sel |= 1 << word
                vi.evtchn_upcall_pending = 1
                if ch.vcpu < len(self.d.vcpus):
                    self.d.vcpus[ch.vcpu].kick()
        for v in self.d.vcpus:
            if v.poll_ports:
                v.kick()
        self.d.host.notify_event(self.d)

    def status(self, port: int) -> tuple[int, Channel] | None:
        ch = self.get(port)
        return None if ch is None else (int(ch.state), ch)


# --- the event_channel_op hypercall ------------------------------------------------------------


def _status(ev: EventChannels, dom: int, port: int) -> bytes | int:
    """struct evtchn_status after {dom, port}: status, vcpu, union u (8 bytes)."""
    st = ev.status(port)
    if st is None:
        return -Errno.EINVAL
    status, ch = st
    if ch.state == ECS.unbound:
        u = struct.pack("<H6x", ch.remote_domid)
    elif ch.state == ECS.interdomain:
        u = struct.pack("<H2xI", ch.remote_domid, ch.remote_port)
    elif ch.state == ECS.virq:
        u = struct.pack("<I4x", ch.virq)
    else:
        u = bytes(8)
    return struct.pack("<II", status, ch.vcpu) + u


@hypercall("event_channel_op", 2)
def do_event_channel_op(v, cmd: int, arg: int) -> int:
    """EVTCHNOP_*: copy the op struct in, run the worker, copy results out on success."""
    d = v.domain
    ev = d.evtchn
    g = v.gmem
    if cmd == E.EVTCHNOP_send:
        return ev.send(g.read_u32(arg))
    if cmd == E.EVTCHNOP_alloc_unbound:
        dom, remote = struct.unpack("<HH", g.read(arg, 4))
        r = ev.alloc_unbound(dom, remote)
        return r if r < 0 else (g.write_u32(arg + 4, r), 0)[1]
    if cmd == E.EVTCHNOP_bind_interdomain:
        rdom, rport = struct.unpack("<H2xI", g.read(arg, 8))
        r = ev.bind_interdomain(rdom, rport)
        return r if r < 0 else (g.write_u32(arg + 8, r), 0)[1]
    if cmd == E.EVTCHNOP_bind_virq:
        virq, vcpu = struct.unpack("<II", g.read(arg, 8))
        r = ev.bind_virq(virq, vcpu)
        return r if r < 0 else (g.write_u32(arg + 8, r), 0)[1]
    if cmd == E.EVTCHNOP_bind_ipi:
        r = ev.bind_ipi(g.read_u32(arg))
        return r if r < 0 else (g.write_u32(arg + 4, r), 0)[1]
    if cmd == E.EVTCHNOP_bind_vcpu:
        port, vcpu = struct.unpack("<II", g.read(arg, 8))
        return ev.bind_vcpu(port, vcpu)
    if cmd == E.EVTCHNOP_close:
        return ev.close(g.read_u32(arg))
    if cmd == E.EVTCHNOP_unmask:
        return ev.unmask(g.read_u32(arg))
    if cmd == E.EVTCHNOP_status:
        dom, port = struct.unpack("<H2xI", g.read(arg, 8))
        if dom not in (0x7FF0, d.domid):
            return -Errno.ESRCH           # only a privileged domain may look at another
        out = _status(ev, dom, port)
        if isinstance(out, int):
            return out
        g.write(arg + 8, out)
        return 0
    if cmd == E.EVTCHNOP_reset:
        dom = struct.unpack("<H", g.read(arg, 2))[0]
        if dom not in (0x7FF0, d.domid):
            return -Errno.ESRCH
        ev.reset()
        return 0
    if cmd == E.EVTCHNOP_bind_pirq:
        return -Errno.EPERM               # no physical IRQs for a domU
    if cmd in (E.EVTCHNOP_init_control, E.EVTCHNOP_expand_array, E.EVTCHNOP_set_priority):
        return -Errno.ENOSYS              # FIFO ABI unavailable: guests fall back to 2-level
    d.log_once(f"evtchn {cmd}", "event_channel_op %d unknown", cmd)
    return -Errno.ENOSYS


@hypercall("event_channel_op_compat", 1)
def do_event_channel_op_compat(v, arg: int) -> int:
    """The pre-3.0.2 form: struct evtchn_op { uint32 cmd; union u; } in one argument."""
    cmd = v.gmem.read_u32(arg)
    return do_event_channel_op(v, cmd, arg + 4)
