"""The control protocol's framing, without sockets (fed byte by byte where it matters)."""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, strategies as st

from xenpy.errors import LocalProtocolError, RemoteProtocolError
from xenpy.toolstack.cli_host import format_list_row, format_state
from xenpy.toolstack.control import (NEED_DATA, ControlConnection, ErrorReply, Event, Reply,
                                     decode_bytes, encode_bytes)


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def test_round_trip_each_message_kind_byte_by_byte() -> None:
    a, b = ControlConnection(), ControlConnection()
    msgs = [a.new_request("list"), a.new_request("pause", dom="spin"),
            Reply(2, {"domid": 3}), ErrorReply(1, "domain 'x': no domain with that name"),
            Event("console", {"domid": 1, "data": encode_bytes(b"\x00\xffhi\n")})]
    wire = b"".join(a.send(m) for m in msgs)
    got = []
    for i in range(len(wire)):
        b.receive_data(wire[i:i + 1])
        while (m := b.next_event()) is not NEED_DATA:
            got.append(m)
    assert got == msgs
    assert [m.id for m in msgs[:2]] == [1, 2]          # fresh ids per connection
    assert decode_bytes(got[-1].data["data"], "data") == b"\x00\xffhi\n"


def test_clean_end_of_stream_and_truncated_frame() -> None:
    c = ControlConnection()
    c.receive_data(b"")
    assert c.next_event() is None
    c = ControlConnection()
    c.receive_data(frame({"event": "gone", "data": {}})[:-1])
    assert c.next_event() is NEED_DATA
    c.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="ended inside a frame"):
        c.next_event()


def test_oversized_frame_is_refused_before_buffering() -> None:
    c = ControlConnection(max_frame=100)
    with pytest.raises(RemoteProtocolError, match="at most 100, found 101"):
        c.receive_data(struct.pack(">I", 101))
    with pytest.raises(LocalProtocolError, match="at most 100 bytes"):
        ControlConnection(max_frame=100).send(Event("console", {"data": "x" * 200}))


@pytest.mark.parametrize("obj, msg", [
    ([1, 2], "expected a JSON object, found list"),
    ({"req": "1", "op": "list", "args": {}}, "'req' should be int, found str"),
    ({"req": True, "op": "list", "args": {}}, "'req' should be int, found bool"),
    ({"req": 1, "op": "list"}, "'args' should be dict, found NoneType"),
    ({"rep": 1, "error": 5}, "'error' should be str"),
    ({"hello": 1}, "expected one of the keys req, rep, event"),
])
def test_malformed_messages_name_the_field(obj: object, msg: str) -> None:
    c = ControlConnection()
    c.receive_data(frame(obj))
    with pytest.raises(RemoteProtocolError, match=msg):
        c.next_event()


def test_bad_json_and_bad_base64() -> None:
    c = ControlConnection()
    c.receive_data(struct.pack(">I", 3) + b"{x}")
    with pytest.raises(RemoteProtocolError, match="expected UTF-8 JSON"):
        c.next_event()
    with pytest.raises(RemoteProtocolError, match="expected base64"):
        decode_bytes("not base64!", "data")
    with pytest.raises(RemoteProtocolError, match="expected a base64 string, found int"):
        decode_bytes(5, "data")


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8),
                                max_size=3), max_size=5),
       st.lists(st.integers(1, 40), min_size=1, max_size=10))
def test_any_split_of_the_stream_gives_the_same_messages(bodies, cuts) -> None:
    a, b = ControlConnection(), ControlConnection()
    msgs = [a.new_request("op", **{"v": body}) for body in bodies]
    wire = b"".join(a.send(m) for m in msgs)
    got, pos, i = [], 0, 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        b.receive_data(wire[pos:pos + n])
        pos += n
        i += 1
        while (m := b.next_event()) is not NEED_DATA:
            got.append(m)
    assert got == msgs


def test_xl_list_row_layout() -> None:
    row = {"name": "spin", "domid": 7, "mem_mib": 16, "vcpus": 1, "running": False,
           "blocked": False, "paused": False, "shutdown": True, "shutdown_reason": 3,
           "dying": False, "cpu_time": 12.34}
    assert format_state(row) == "---sc-"
    assert format_list_row(row) == f"{'spin':<40}     7    16     1     ---sc-      12.3"
    assert format_state({**row, "shutdown_reason": 0}) == "---s--"
    assert format_state({**row, "shutdown": False, "paused": True, "blocked": True}) == "-bp---"


def test_a_nesting_bomb_is_a_protocol_error() -> None:
    """json.loads of 100k '[' raises RecursionError: it once killed the control thread."""
    c = ControlConnection()
    body = b"[" * 100_000
    c.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError, match="UTF-8 JSON"):
        c.next_event()
