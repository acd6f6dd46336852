"""GdbStub command handling, sans-IO: bytes in, bytes out, against a FakeTarget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .fake_target import FakeTarget
from xenpy.debug.gdbstub import rsp
from xenpy.debug.gdbstub.stub import GdbStub
from xenpy.debug.gdbstub.target import BpKind, Resume, StopEvent
from xenpy.debug.gdbstub.xml import target_description
from xenpy.errors import ConfigError


class Peer:
    """The gdb end: frames requests, decodes replies, acks like gdb does."""

    def __init__(self, stub: GdbStub) -> None:
        self.stub = stub
        self.conn = rsp.RspConnection(max_payload=0x10000)

    def ask(self, payload: bytes) -> list[bytes]:
        wire = b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)
        return self.decode(self.stub.receive_data(wire))

    def decode(self, out: bytes) -> list[bytes]:
        self.conn.receive_data(out.lstrip(b"+"))
        replies = []
        while (ev := self.conn.next_event()) is not rsp.NEED_DATA:
            assert isinstance(ev, rsp.Packet), ev
            replies.append(ev.data)
        self.conn.data_to_send()
        return replies


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def peer(target: FakeTarget) -> Peer:
    return Peer(GdbStub(target))


def test_qsupported_advertises_features(peer: Peer) -> None:
    [reply] = peer.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+")
    features = reply.split(b";")
    assert b"PacketSize=4000" in features
    for f in (b"qXfer:features:read+", b"swbreak+", b"hwbreak+", b"QStartNoAckMode+", b"vContSupported+"):
        assert f in features


def test_ack_then_no_ack_mode(peer: Peer, target: FakeTarget) -> None:
    out = peer.stub.receive_data(b"$QStartNoAckMode#b0")
    assert out == b"+$OK#9a"
    out = peer.stub.receive_data(b"+$qAttached#8f")
    assert out == b"$1#31"  # no '+' any more


def test_bad_checksum_is_nakked_not_raised(peer: Peer) -> None:
    assert peer.stub.receive_data(b"$g#00") == b"-"


def test_unknown_packets_get_empty_reply(peer: Peer) -> None:
    assert peer.ask(b"vMustReplyEmpty") == [b""]
    assert peer.ask(b"qTStatus") == [b""]
    assert peer.ask(b"!") == [b""]
    assert peer.ask(b"Z9,1000,1") == [b""]


def test_threads(peer: Peer) -> None:
    assert peer.ask(b"qfThreadInfo") == [b"m1,2"]
    assert peer.ask(b"qsThreadInfo") == [b"l"]
    assert peer.ask(b"qC") == [b"QC1"]
    assert peer.ask(b"Hg2") == [b"OK"]
    assert peer.ask(b"qC") == [b"QC2"]
    assert peer.ask(b"Hg7") == [b"E03"]
    assert peer.ask(b"Hc-1") == [b"OK"]
    assert peer.ask(b"T2") == [b"OK"]
    assert peer.ask(b"T3") == [b"E03"]
    assert bytes.fromhex(peer.ask(b"qThreadExtraInfo,2")[0].decode()) == b"vcpu 1"


def test_registers_follow_the_xml_layout(peer: Peer, target: FakeTarget) -> None:
    tdesc = target_description("i386")
    target.regs[0] = {"eax": 0x11223344, "eip": 0x1000, "cr3": 0xABC000}
    [g] = peer.ask(b"g")
    assert g.startswith(b"44332211")  # eax first, little-endian
    assert g[16:24] == b"xxxxxxxx"  # esp unknown -> unavailable
    assert len(g) == 2 * sum(r.size for r in tdesc.registers)
    eip = tdesc.number("eip")
    assert peer.ask(b"p%x" % eip) == [b"00100000"]
    assert peer.ask(b"p%x" % tdesc.number("cr3")) == [b"00c0ab00"]
    assert peer.ask(b"P%x=78563412" % eip) == [b"OK"]
    assert target.regs[0]["eip"] == 0x12345678
    assert peer.ask(b"P%x=1234" % eip) == [b"E16"]  # wrong width
    assert peer.ask(b"p%x" % len(tdesc.registers)) == [b"E16"]
    # G writes every register that is not 'xx'; Hg selects the vcpu.
    assert peer.ask(b"Hg2") == [b"OK"]
    assert peer.ask(b"G" + b"01000000" + b"xx" * 4) == [b"OK"]
    assert target.regs[1] == {"eax": 1}


def test_memory_read_write_and_faults(peer: Peer, target: FakeTarget) -> None:
    target.map(0xFF8, bytes(range(8)))  # ends at a page boundary
    assert peer.ask(b"mff8,8") == [b"0001020304050607"]
    assert peer.ask(b"mff8,10") == [b"0001020304050607"]  # partial: the mapped prefix
    assert peer.ask(b"m2000,4") == [b"E0e"]
    assert peer.ask(b"Mff8,2:aabb") == [b"OK"]
    assert peer.ask(b"mff8,2") == [b"aabb"]
    assert peer.ask(b"M2000,1:00") == [b"E0e"]
    assert peer.ask(b"Mff8,2:aa") == [b"E16"]
    escaped = rsp.escape(b"#$")
    assert peer.ask(b"Xffa,2:" + escaped) == [b"OK"]
    assert target.read_memory(0, 0xFFA, 2) == b"#$"
    assert peer.ask(b"Xffa,0:") == [b"OK"]
    assert peer.ask(b"mzz,4") == [b"E16"]


def test_breakpoints_are_passed_through_and_cleaned_up(peer: Peer, target: FakeTarget) -> None:
    assert peer.ask(b"Z0,1000,1") == [b"OK"]
    assert peer.ask(b"Z2,3000,4") == [b"OK"]
    assert peer.ask(b"Z3,3000,4") == [b""]  # target says unsupported
    assert peer.ask(b"z2,3000,4") == [b"OK"]
    assert ("insert", BpKind.SOFTWARE, 0x1000, 1) in target.calls
    target.calls.clear()
    peer.stub.disconnect()
    assert target.calls == [("remove", BpKind.SOFTWARE, 0x1000, 1), ("detach",)]


def test_target_xml_in_chunks(peer: Peer) -> None:
    doc = b""
    offset = 0
    while True:
        [reply] = peer.ask(b"qXfer:features:read:target.xml:%x,%x" % (offset, 0x100))
        data = rsp.unescape(reply[1:])
        doc += data
        offset += len(data)
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m"
    assert doc.decode() == target_description("i386").xml
    assert b"<architecture>i386</architecture>" in doc
    assert b'name="cr3"' in doc and b'name="eflags"' in doc and b'name="gs"' in doc
    assert peer.ask(b"qXfer:features:read:other.xml:0,100") == [b"E00"]


def test_x86_64_description() -> None:
    tdesc = target_description("i386:x86-64")
    names = [r.name for r in tdesc.registers]
    assert names[:3] == ["rax", "rbx", "rcx"] and "fs_base" in names and "cr4" in names
    assert tdesc.pc_name == "rip"
    with pytest.raises(ConfigError, match="arch"):
        target_description("arm")


def test_vcont_and_stop_replies(peer: Peer, target: FakeTarget) -> None:
    assert peer.ask(b"vCont?") == [b"vCont;c;C;s;S;t"]
    assert peer.ask(b"vCont;s:2;c") == []
    assert target.calls[-1] == ("resume", Resume(step=frozenset({1}), cont=frozenset({0})))
    assert peer.stub.running
    assert peer.ask(b"vCont;c") == [b"E16"]  # already running
    out = peer.stub.stopped(StopEvent(vcpu=1, reason="step"))
    assert peer.decode(out) == [b"T05thread:2;"]
    assert not peer.stub.running
    assert peer.ask(b"qC") == [b"QC2"]  # the stopping thread becomes current
    assert peer.ask(b"?") == [b"T05thread:2;"]
    peer.ask(b"c")
    out = peer.stub.stopped(StopEvent(vcpu=0, reason="watch", address=0x3000))
    assert peer.decode(out) == [b"T05thread:1;watch:3000;"]
    peer.ask(b"s")
    assert target.calls[-1] == ("resume", Resume(step=frozenset({0})))
    out = peer.stub.stopped(StopEvent(vcpu=0, reason="swbreak"))
    assert peer.decode(out) == [b"T05thread:1;swbreak:;"]
    assert peer.ask(b"vCont;x") == [b"E16"]
    assert peer.ask(b"vCont;c:9") == [b"E03"]


def test_interrupt_only_while_running(peer: Peer, target: FakeTarget) -> None:
    peer.stub.receive_data(b"\x03")
    assert ("interrupt",) not in target.calls
    peer.ask(b"vCont;c")
    peer.stub.receive_data(b"\x03")
    assert target.calls[-1] == ("interrupt",)
    out = peer.stub.stopped(target.stops.get_nowait())
    assert peer.decode(out) == [b"T02thread:1;"]


@pytest.mark.parametrize(
    ("event", "reply"),
    [
        (StopEvent(vcpu=0, reason="exited", exit_status=3), b"W03"),
        (StopEvent(vcpu=0, signal=9, reason="exited"), b"X09"),
    ],
)
def test_exit_replies_end_the_session(peer: Peer, event: StopEvent, reply: bytes) -> None:
    peer.ask(b"c")
    assert peer.decode(peer.stub.stopped(event)) == [reply]
    assert peer.stub.closed


def test_monitor_output_as_o_packets(peer: Peer, target: FakeTarget) -> None:
    replies = peer.ask(b"qRcmd," + b"catch hypercall".hex().encode())
    assert target.calls[-1] == ("monitor", "catch hypercall")
    assert replies[-1] == b"OK"
    text = b"".join(bytes.fromhex(r[1:].decode()) for r in replies[:-1])
    assert text == b"you said catch hypercall\n"
    assert peer.ask(b"qRcmd,zz") == [b"E16"]


def test_detach_and_kill(target: FakeTarget) -> None:
    peer = Peer(GdbStub(target))
    assert peer.ask(b"D") == [b"OK"]
    assert target.calls[-1] == ("detach",) and peer.stub.closed
    peer = Peer(GdbStub(target))
    assert peer.ask(b"k") == []
    assert target.calls[-1] == ("kill",) and peer.stub.closed


_PACKETS = st.sampled_from(
    [b"g", b"G", b"p", b"P", b"m", b"M", b"X", b"Z", b"z", b"H", b"T", b"c", b"s", b"C", b"S", b"v", b"q", b"Q", b"?"]
)


@given(head=_PACKETS, body=st.binary(max_size=40))
@settings(max_examples=300, deadline=None)
def test_random_packets_get_a_reply_never_a_crash(head: bytes, body: bytes) -> None:
    target = FakeTarget()
    target.map(0x1000, b"\x90" * 16)
    stub = GdbStub(target)
    payload = rsp.escape(head + body)
    out = stub.receive_data(b"$" + payload + b"#%02x" % (sum(payload) & 0xFF))
    assert out.startswith(b"+")
    if stub.running:
        assert out == b"+"  # a resume answers later, with the stop reply
    else:
        assert out.startswith(b"+$") or stub.closed


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_random_bytes_never_crash_the_stub(data: bytes) -> None:
    stub = GdbStub(FakeTarget())
    for i in range(0, len(data), 7):
        assert isinstance(stub.receive_data(data[i:i + 7]), bytes)
