"""gdb reaches only what the debugged domain could: no writes to the hypervisor's or
another domain's frames or to validated tables, no cr3 change, and a bad packet is an
error reply, never the end of the stub (which would leave the domain held)."""
from __future__ import annotations

from xenpy.debug.gdbstub import rsp
from xenpy.debug.gdbstub.stub import GdbStub
from xenpy.debug.target import DomainTarget
from xenpy.hv import mm
from xenpy.hv.layout import FIRMWARE_VA


def pkt(s: bytes) -> bytes:
    return b"$" + s + b"#%02x" % rsp.checksum(s)


def _stub(domain_factory):
    att = domain_factory("hello", memory_mib=8, name="att").domain
    vic = domain_factory("hello", memory_mib=8, name="vic").domain
    t = DomainTarget(att)
    t.attach()
    s = GdbStub(t)
    s.receive_data(b"+" + pkt(b"QStartNoAckMode"))
    return att, vic, t, s


def test_gdb_cannot_write_hypervisor_frames_or_change_cr3(domain_factory, xen_host):
    att, vic, t, s = _stub(domain_factory)
    v = att.vcpus[0]
    fw_mfn = v.gmem.translate(FIRMWARE_VA) >> 12
    fw_before = bytes(xen_host.mem.page(fw_mfn))
    assert s.receive_data(pkt(b"M%x,4:cccccccc" % FIRMWARE_VA)).startswith(b"$E")
    assert bytes(xen_host.mem.page(fw_mfn)) == fw_before
    cr3 = v.gmem.cr3
    num = s.tdesc.number("cr3")
    val = vic.vcpus[0].gmem.cr3.to_bytes(s.tdesc.registers[num].size, "little").hex().encode()
    s.receive_data(pkt(b"P%x=%s" % (num, val)))
    assert v.gmem.cr3 == cr3 and v.cpu.reg("cr3") == cr3
    assert s.receive_data(pkt(b"m%x,4" % 0xC0000000)).startswith(b"$")   # own memory reads
    from xenpy.toolstack.save_restore import DomainSaver
    pt_base = DomainSaver(att).start_info().pt_base            # the (validated) top table
    table = bytes(v.gmem.read(pt_base, 8))
    assert s.receive_data(pkt(b"M%x,8:%s" % (pt_base, b"ff" * 8))).startswith(b"$E")
    assert bytes(v.gmem.read(pt_base, 8)) == table
    assert mm.audit(xen_host) == []
    t.detach()


def test_a_bad_breakpoint_packet_is_an_error_reply(domain_factory, xen_host):
    att, vic, t, s = _stub(domain_factory)
    assert s.receive_data(pkt(b"Z0,-1,1")).startswith(b"$E")
    assert s.receive_data(pkt(b"Z0,ffffffffffffffffff,1")).startswith(b"$E")
    assert s.receive_data(pkt(b"Z0,c0001000,1")) == pkt(b"OK")          # still serving
    assert s.receive_data(pkt(b"z0,c0001000,1")) == pkt(b"OK")
    t.detach()
