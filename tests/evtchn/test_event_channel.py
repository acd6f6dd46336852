"""Event channels (Xen's 2-level ABI): every operation, its errors, and delivery."""
from __future__ import annotations

import struct

from xenpy.abi import event_channel as E
from xenpy.abi.errno import Errno
from xenpy.abi.xen import DOMID_SELF

EV = "event_channel_op"


def alloc_unbound(g, remote: int) -> int:
    arg = g.write(0, struct.pack("<HHI", DOMID_SELF, remote, 0))
    rc = g.call(EV, E.EVTCHNOP_alloc_unbound, arg)
    return rc if rc < 0 else g.u32(4)


def bind_interdomain(g, remote_dom: int, remote_port: int) -> int:
    arg = g.write(0, struct.pack("<HxxII", remote_dom, remote_port, 0))
    rc = g.call(EV, E.EVTCHNOP_bind_interdomain, arg)
    return rc if rc < 0 else g.u32(8)


def bind_virq(g, virq: int, vcpu: int = 0) -> int:
    arg = g.write(0, struct.pack("<III", virq, vcpu, 0))
    rc = g.call(EV, E.EVTCHNOP_bind_virq, arg)
    return rc if rc < 0 else g.u32(8)


def port_op(g, cmd: int, port: int) -> int:
    return g.call(EV, cmd, g.write(0, struct.pack("<I", port)))


def status(g, port: int, dom: int = DOMID_SELF) -> tuple[int, ...] | int:
    arg = g.write(0, struct.pack("<HxxI", dom, port) + bytes(16))
    rc = g.call(EV, E.EVTCHNOP_status, arg)
    return rc if rc < 0 else struct.unpack("<IIII", g.read(8, 16))


def test_interdomain_connect_send_close(pair):
    a, b = pair
    pa = alloc_unbound(a, b.d.domid)
    assert pa > 0
    assert status(a, pa)[0] == E.EVTCHNSTAT_unbound
    assert status(a, pa)[2] & 0xFFFF == b.d.domid
    pb = bind_interdomain(b, a.d.domid, pa)
    assert pb > 0
    st = status(a, pa)
    assert st[0] == E.EVTCHNSTAT_interdomain and st[2] & 0xFFFF == b.d.domid and st[3] == pb
    a.d.shared_info.evtchn_pending[0] = 0
    assert port_op(b, E.EVTCHNOP_send, pb) == 0
    assert a.pending(pa)
    assert port_op(a, E.EVTCHNOP_send, pa) == 0
    assert b.pending(pb)
    # closing one end leaves the other unbound (to the closer), and sends are dropped
    assert port_op(b, E.EVTCHNOP_close, pb) == 0
    assert status(a, pa)[0] == E.EVTCHNSTAT_unbound
    assert status(b, pb)[0] == E.EVTCHNSTAT_closed
    assert port_op(a, E.EVTCHNOP_send, pa) == 0
    assert port_op(b, E.EVTCHNOP_send, pb) == -Errno.EINVAL


def test_bind_interdomain_misuse(pair):
    a, b = pair
    pa = alloc_unbound(a, b.d.domid)
    assert bind_interdomain(b, a.d.domid, 999) == -Errno.EINVAL           # bad port
    assert bind_interdomain(b, 0x7FF3, pa) == -Errno.ESRCH                 # no such domain
    other = alloc_unbound(a, a.d.domid)                                    # offered to A itself
    assert bind_interdomain(b, a.d.domid, other) == -Errno.EINVAL          # not offered to B
    assert bind_interdomain(b, a.d.domid, pa) > 0
    assert bind_interdomain(b, a.d.domid, pa) == -Errno.EINVAL             # double bind
    arg = a.write(0, struct.pack("<HHI", b.d.domid, a.d.domid, 0))
    assert a.call(EV, E.EVTCHNOP_alloc_unbound, arg) == -Errno.EPERM       # on B's behalf


def test_loopback_channel_within_one_domain(pair):
    a, _ = pair
    p1 = alloc_unbound(a, DOMID_SELF)
    p2 = bind_interdomain(a, DOMID_SELF, p1)
    assert p2 > 0 and p2 != p1
    a.d.shared_info.evtchn_pending[0] = 0
    assert port_op(a, E.EVTCHNOP_send, p2) == 0
    assert a.pending(p1) and not a.pending(p2)


def test_virq_binding_rules(pair):
    a, _ = pair
    p = bind_virq(a, E.VIRQ_TIMER)
    assert p > 0
    assert status(a, p)[:1] == (E.EVTCHNSTAT_virq,) and status(a, p)[2] == E.VIRQ_TIMER
    assert bind_virq(a, E.VIRQ_TIMER) == -Errno.EEXIST
    assert bind_virq(a, 9999) == -Errno.EINVAL
    assert bind_virq(a, E.VIRQ_DEBUG, vcpu=5) == -Errno.ENOENT
    assert bind_virq(a, E.VIRQ_CONSOLE, vcpu=1) == -Errno.EINVAL
    assert port_op(a, E.EVTCHNOP_send, p) == -Errno.EINVAL       # VIRQs are Xen's to raise
    arg = a.write(0, struct.pack("<II", p, 0))
    assert a.call(EV, E.EVTCHNOP_bind_vcpu, arg) == -Errno.EINVAL  # per-vCPU VIRQ stays put


def test_ipi_and_bind_vcpu(pair):
    a, _ = pair
    arg = a.write(0, struct.pack("<II", 0, 0))
    assert a.call(EV, E.EVTCHNOP_bind_ipi, arg) == 0
    p = a.u32(4)
    a.d.shared_info.evtchn_pending[0] = 0
    assert port_op(a, E.EVTCHNOP_send, p) == 0
    assert a.pending(p)
    arg = a.write(0, struct.pack("<II", 7, 0))             # struct evtchn_bind_ipi {vcpu, port}
    assert a.call(EV, E.EVTCHNOP_bind_ipi, arg) == -Errno.ENOENT
    u = alloc_unbound(a, DOMID_SELF)
    assert a.call(EV, E.EVTCHNOP_bind_vcpu, a.write(0, struct.pack("<II", u, 0))) == 0
    assert a.call(EV, E.EVTCHNOP_bind_vcpu, a.write(0, struct.pack("<II", u, 3))) == -Errno.ENOENT


def test_bad_ports_everywhere(pair):
    a, _ = pair
    for port in (0, 4095, 1 << 20, 0xFFFFFFFF):
        for cmd in (E.EVTCHNOP_send, E.EVTCHNOP_close, E.EVTCHNOP_unmask):
            assert port_op(a, cmd, port) == -Errno.EINVAL, (cmd, port)
        assert status(a, port) == -Errno.EINVAL
    assert status(a, 1, dom=a.d.domid + 1) == -Errno.ESRCH


def test_toolstack_channels_cannot_be_closed_by_the_guest(pair):
    a, _ = pair
    assert port_op(a, E.EVTCHNOP_close, a.d.console_port) == -Errno.EINVAL
    assert port_op(a, E.EVTCHNOP_close, a.d.store_port) == -Errno.EINVAL


def test_masking_and_unmask_delivery(pair):
    """A masked port gets its pending bit but no upcall; unmask then raises the upcall."""
    a, b = pair
    pa = alloc_unbound(a, b.d.domid)
    pb = bind_interdomain(b, a.d.domid, pa)
    si = a.d.shared_info
    vi = a.d.vcpu_info(0)
    bits = a.d.width * 8
    si.evtchn_pending[0] = 0
    vi.evtchn_upcall_pending = 0
    vi.evtchn_pending_sel = 0
    si.evtchn_mask[pa // bits] |= 1 << (pa % bits)
    assert port_op(b, E.EVTCHNOP_send, pb) == 0
    assert a.pending(pa) and not vi.evtchn_upcall_pending
    assert port_op(a, E.EVTCHNOP_unmask, pa) == 0
    assert vi.evtchn_upcall_pending and vi.evtchn_pending_sel & 1


def test_reset_closes_guest_ports(pair):
    a, b = pair
    pa = alloc_unbound(a, b.d.domid)
    pb = bind_interdomain(b, a.d.domid, pa)
    assert a.call(EV, E.EVTCHNOP_reset, a.write(0, struct.pack("<H", DOMID_SELF))) == 0
    assert status(a, pa)[0] == E.EVTCHNSTAT_closed
    assert status(b, pb)[0] == E.EVTCHNSTAT_unbound
    assert status(a, a.d.console_port)[0] == E.EVTCHNSTAT_interdomain


def test_fifo_is_unavailable(pair):
    a, _ = pair
    for cmd in (E.EVTCHNOP_init_control, E.EVTCHNOP_expand_array, E.EVTCHNOP_set_priority):
        assert a.call(EV, cmd, a.scratch) == -Errno.ENOSYS


def test_destroying_a_domain_unbinds_its_peers(pair, xen_host):
    a, b = pair
    pa = alloc_unbound(a, b.d.domid)
    pb = bind_interdomain(b, a.d.domid, pa)
    xen_host.destroy_domain(a.d)
    assert status(b, pb)[0] == E.EVTCHNSTAT_unbound
    assert port_op(b, E.EVTCHNOP_send, pb) == 0          # dropped, not a crash
