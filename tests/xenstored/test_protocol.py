"""xs_wire framing: header layout, split input, over-long payloads, and the ABI module."""
from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenpy.abi.io import xs_wire
from xenpy.backends.xenstored.protocol import (
    NEED_DATA, Message, State, XsWireConnection, join_strings, split_strings,
)
from xenpy.errors import LocalProtocolError, RemoteProtocolError


def test_header_layout_matches_xs_wire_h() -> None:
    raw = XsWireConnection().send(Message(xs_wire.XsdSockmsgType.XS_READ, 7, 9, b"/a\0"))
    assert raw == bytes([2, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 3, 0, 0, 0]) + b"/a\0"
    assert xs_wire.XSD_SOCKMSG_SIZE == 16


def test_ring_page_layout() -> None:
    iface = xs_wire.XenstoreDomainInterface
    assert (iface.req.offset, iface.rsp.offset) == (0, 1024)
    assert [getattr(iface, f).offset for f in
            ("req_cons", "req_prod", "rsp_cons", "rsp_prod", "server_features", "connection", "error")] \
        == [2048, 2052, 2056, 2060, 2064, 2068, 2072]
    assert ctypes.sizeof(iface) == 2076


def test_type_numbers_and_error_table() -> None:
    t = xs_wire.XsdSockmsgType
    assert (t.XS_CONTROL, t.XS_WATCH_EVENT, t.XS_ERROR, t.XS_SET_TARGET) == (0, 15, 16, 19)
    assert (t.XS_RESET_WATCHES, t.XS_DIRECTORY_PART) == (21, 22)
    assert xs_wire.XS_TYPE_COUNT == 23
    names = [e.name for e in xs_wire.XSD_ERRORS]
    assert names[0] == "EINVAL" and names[-1] == "EPERM" and len(names) == 16
    assert "EAGAIN" in names and "E2BIG" in names


def test_byte_by_byte_reassembly() -> None:
    msgs = [Message(2, 1, 0, b"/x\0"), Message(11, 2, 5, b"/y\0value"), Message(6, 3, 0, b"")]
    wire = b"".join(XsWireConnection().send(m) for m in msgs)
    p = XsWireConnection()
    got = []
    for i in range(len(wire)):
        p.receive_data(wire[i:i + 1])
        while (ev := p.next_event()) is not NEED_DATA:
            got.append(ev)
    assert got == msgs
    assert p.buffered == 0


def test_overlong_payload_is_a_remote_error_before_the_payload_arrives() -> None:
    p = XsWireConnection()
    p.receive_data(xs_wire.XSD_SOCKMSG.pack(2, 1, 0, xs_wire.XENSTORE_PAYLOAD_MAX + 1))
    with pytest.raises(RemoteProtocolError, match="XENSTORE_PAYLOAD_MAX"):
        p.next_event()
    assert p.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        p.next_event()


def test_exactly_max_payload_is_accepted() -> None:
    p = XsWireConnection()
    payload = b"a" * xs_wire.XENSTORE_PAYLOAD_MAX
    p.receive_data(XsWireConnection().send(Message(11, 1, 0, payload)))
    ev = p.next_event()
    assert isinstance(ev, Message) and ev.payload == payload


def test_send_refuses_overlong_and_out_of_range() -> None:
    with pytest.raises(LocalProtocolError, match="len"):
        XsWireConnection().send(Message(11, 1, 0, b"x" * 4097))
    with pytest.raises(LocalProtocolError, match="req_id"):
        XsWireConnection().send(Message(11, -1, 0, b""))


def test_strings_helpers() -> None:
    assert join_strings("a", b"b") == b"a\0b\0"
    assert join_strings("p", "v", terminate=False) == b"p\0v"
    assert split_strings(b"a\0b\0tail") == [b"a", b"b"]
    assert split_strings(b"") == []


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.binary(max_size=200)), max_size=8),
       st.lists(st.integers(1, 64), min_size=1, max_size=10))
def test_any_split_round_trips(specs: list, cuts: list[int]) -> None:
    msgs = [Message(*s) for s in specs]
    wire = b"".join(XsWireConnection().send(m) for m in msgs)
    p = XsWireConnection()
    got = []
    pos = i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        p.receive_data(wire[pos:pos + step])
        pos += step
        i += 1
        while (ev := p.next_event()) is not NEED_DATA:
            got.append(ev)
    assert got == msgs


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_remote_protocol_error(data: bytes) -> None:
    p = XsWireConnection()
    p.receive_data(data)
    try:
        while p.next_event() is not NEED_DATA:
            pass
    except RemoteProtocolError:
        assert p.state is State.ERROR
