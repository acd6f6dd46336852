"""RSP framing: byte-by-byte feeding, checksums and naks, escaping, run-length, no-ack."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenpy.debug.gdbstub import rsp
from xenpy.errors import RemoteProtocolError


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


def events_bytewise(conn: rsp.RspConnection, data: bytes) -> list[object]:
    events: list[object] = []
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
        while (ev := conn.next_event()) is not rsp.NEED_DATA:
            events.append(ev)
    return events


def test_packets_fed_byte_by_byte_are_acked_in_order() -> None:
    conn = rsp.RspConnection()
    events = events_bytewise(conn, frame(b"qSupported:swbreak+") + b"+" + frame(b"g") + b"\x03")
    assert events == [rsp.Packet(b"qSupported:swbreak+"), rsp.Packet(b"g"), rsp.Interrupt()]
    assert conn.data_to_send() == b"++"


def test_bad_checksum_gets_nak_and_no_packet() -> None:
    conn = rsp.RspConnection()
    good = frame(b"m1000,4")
    bad = good[:-2] + b"%02x" % ((int(good[-2:], 16) + 1) & 0xFF)
    events = events_bytewise(conn, bad + b"$g#zz" + good)
    assert isinstance(events[0], rsp.ChecksumError) and events[0].expected != events[0].computed
    assert isinstance(events[1], rsp.ChecksumError) and events[1].expected is None
    assert events[2] == rsp.Packet(b"m1000,4")
    assert conn.data_to_send() == b"--+"


def test_nak_from_peer_retransmits_last_packet_until_acked() -> None:
    conn = rsp.RspConnection()
    sent = conn.send(b"OK")
    assert sent == b"$OK#9a"
    conn.receive_data(b"-")
    assert conn.next_event() is rsp.NEED_DATA
    assert conn.data_to_send() == sent
    conn.receive_data(b"+-")
    assert conn.next_event() is rsp.NEED_DATA
    assert conn.data_to_send() == b""  # acked: nothing left to retransmit


def test_no_ack_mode_stops_acking_and_ignores_checksums() -> None:
    conn = rsp.RspConnection()
    conn.receive_data(frame(b"QStartNoAckMode"))
    assert conn.next_event() == rsp.Packet(b"QStartNoAckMode")
    conn.send(b"OK")
    conn.start_no_ack()
    conn.receive_data(b"+$g#00-")
    assert conn.next_event() == rsp.Packet(b"g")
    assert conn.next_event() is rsp.NEED_DATA
    assert conn.data_to_send() == b""
    assert conn.send(b"OK") == b"$OK#9a"


def test_truncated_packet_resyncs_on_next_dollar() -> None:
    conn = rsp.RspConnection()
    conn.receive_data(b"$m10" + frame(b"?"))
    assert conn.next_event() == rsp.Packet(b"?")


def test_garbage_between_packets_is_skipped() -> None:
    conn = rsp.RspConnection()
    assert events_bytewise(conn, b"xyz\n" + frame(b"c")) == [rsp.Packet(b"c")]


def test_unterminated_packet_is_bounded() -> None:
    conn = rsp.RspConnection(max_payload=64)
    conn.receive_data(b"$" + b"a" * 200)
    with pytest.raises(RemoteProtocolError, match="packet length"):
        conn.next_event()


def test_escape_special_bytes() -> None:
    data = bytes([0x23, 0x24, 0x7D, 0x2A, 0x41])
    escaped = rsp.escape(data)
    assert escaped == b"}\x03}\x04}]}\nA"
    assert rsp.unescape(escaped) == data
    with pytest.raises(RemoteProtocolError, match="escape"):
        rsp.unescape(b"ab}")


def test_run_length_encoding_on_send() -> None:
    conn = rsp.RspConnection()
    out = conn.send(b"0" * 32 + b"1")
    body = out[1:out.index(b"#")]
    assert body == b"0*" + bytes([31 + 29]) + b"1"
    # Six and seven repeats would give '#' and '$': never emitted.
    for n in range(1, 120):
        body = rsp.rle_encode(b"x" * n)
        assert b"#" not in body and b"$" not in body
        assert rsp.rle_decode(body) == b"x" * n


@given(st.binary(max_size=300))
def test_escape_round_trip(data: bytes) -> None:
    escaped = rsp.escape(data)
    assert not (set(escaped) & set(b"#$*"))
    assert rsp.unescape(escaped) == data


@given(st.binary(max_size=300))
def test_framed_packets_round_trip_through_a_connection(data: bytes) -> None:
    """Whatever the stub sends (escaped), a peer connection decodes back."""
    sender, receiver = rsp.RspConnection(max_payload=4096), rsp.RspConnection(max_payload=4096)
    wire = sender.send(rsp.escape(data))
    events = events_bytewise(receiver, wire)
    assert len(events) == 1 and isinstance(events[0], rsp.Packet)
    assert rsp.unescape(events[0].data) == data
