"""Fixtures for xenstored: an in-memory tools client and fake guests with ring pages."""
from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from xenpy.abi.io.xs_wire import XENSTORE_RING_SIZE, XsdSockmsgType as T, XenstoreDomainInterface
from xenpy.backends.xenstored import Xenstored
from xenpy.backends.xenstored.connection import Connection
from xenpy.backends.xenstored.protocol import NEED_DATA, Message, XsWireConnection, join_strings

U32 = struct.Struct("<I")
REQ = XenstoreDomainInterface.req.offset
RSP = XenstoreDomainInterface.rsp.offset
REQ_CONS = XenstoreDomainInterface.req_cons.offset
REQ_PROD = XenstoreDomainInterface.req_prod.offset
RSP_CONS = XenstoreDomainInterface.rsp_cons.offset
RSP_PROD = XenstoreDomainInterface.rsp_prod.offset
CONNECTION = XenstoreDomainInterface.connection.offset
ERROR = XenstoreDomainInterface.error.offset
FEATURES = XenstoreDomainInterface.server_features.offset


class XsRequestError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class ClientBase:
    """Request/reply over some transport; watch events are collected in ``events``."""

    def __init__(self) -> None:
        self.parser = XsWireConnection()
        self.events: list[tuple[str, str]] = []
        self.req_id = 0

    def _send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def _recv_bytes(self) -> bytes:
        raise NotImplementedError

    def request(self, msg_type: int, *args: str | bytes, tx: int = 0,
                raw: bytes | None = None) -> Message | None:
        """Send one request; return its reply (None if none came), stash events."""
        payload = raw if raw is not None else join_strings(*args)
        self.req_id += 1
        self._send_bytes(XsWireConnection().send(Message(msg_type, self.req_id, tx, payload)))
        return self.collect()

    def collect(self) -> Message | None:
        self.parser.receive_data(self._recv_bytes())
        reply = None
        while (m := self.parser.next_event()) is not NEED_DATA:
            assert isinstance(m, Message)
            if m.type == T.XS_WATCH_EVENT:
                path, token = m.payload.split(b"\0")[:2]
                assert m.payload.endswith(b"\0")
                self.events.append((path.decode(), token.decode()))
            else:
                assert reply is None, "two replies to one request"
                reply = m
        return reply

    def ok(self, msg_type: int, *args: str | bytes, tx: int = 0, raw: bytes | None = None) -> bytes:
        reply = self.request(msg_type, *args, tx=tx, raw=raw)
        assert reply is not None
        if reply.type == T.XS_ERROR:
            raise XsRequestError(reply.payload.rstrip(b"\0").decode())
        assert reply.type == msg_type
        assert reply.req_id == self.req_id and reply.tx_id == tx
        return reply.payload

    def err(self, msg_type: int, *args: str | bytes, tx: int = 0, raw: bytes | None = None) -> str:
        reply = self.request(msg_type, *args, tx=tx, raw=raw)
        assert reply is not None and reply.type == T.XS_ERROR, reply
        assert reply.payload.endswith(b"\0")
        return reply.payload[:-1].decode()

    # conveniences
    def read(self, path: str, tx: int = 0) -> bytes:
        return self.ok(T.XS_READ, path, tx=tx)

    def write(self, path: str, value: str | bytes, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        path_b = path.encode()
        assert self.ok(T.XS_WRITE, raw=path_b + b"\0" + data, tx=tx) == b"OK\0"

    def ls(self, path: str, tx: int = 0) -> list[str]:
        return [s.decode() for s in self.ok(T.XS_DIRECTORY, path, tx=tx).split(b"\0")[:-1]]

    def start(self) -> int:
        payload = self.ok(T.XS_TRANSACTION_START, "")
        assert payload.endswith(b"\0")
        return int(payload[:-1])

    def end(self, tx: int, commit: bool = True) -> bytes:
        return self.ok(T.XS_TRANSACTION_END, "T" if commit else "F", tx=tx)

    def take_events(self) -> list[tuple[str, str]]:
        self.collect()
        events, self.events = self.events, []
        return events


class ToolClient(ClientBase):
    """A dom0 tools client on an in-process Connection."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def _send_bytes(self, data: bytes) -> None:
        self.conn.receive_data(data)

    def _recv_bytes(self) -> bytes:
        return self.conn.data_to_send()


class FakeGuest(ClientBase):
    """A guest's side of the xenstore page: a 4096-byte bytearray and two rings."""

    def __init__(self, daemon: Xenstored, domid: int, introduce: bool = True) -> None:
        super().__init__()
        self.daemon = daemon
        self.domid = domid
        self.page = bytearray(4096)
        self.notified = 0
        self.chunk: int | None = None  # feed requests this many bytes per kick
        if introduce:
            daemon.introduce_domain(domid, memoryview(self.page), self.notify)

    def notify(self) -> None:
        self.notified += 1

    def get(self, off: int) -> int:
        return U32.unpack_from(self.page, off)[0]

    def put(self, off: int, value: int) -> None:
        U32.pack_into(self.page, off, value & 0xFFFFFFFF)

    def push(self, data: bytes) -> int:
        """Write as much of ``data`` as fits in req (wrapping); returns bytes written."""
        cons, prod = self.get(REQ_CONS), self.get(REQ_PROD)
        room = XENSTORE_RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
        n = min(room, len(data))
        for i in range(n):
            self.page[REQ + ((prod + i) % XENSTORE_RING_SIZE)] = data[i]
        self.put(REQ_PROD, prod + n)
        return n

    def pull(self) -> bytes:
        cons, prod = self.get(RSP_CONS), self.get(RSP_PROD)
        n = (prod - cons) & 0xFFFFFFFF
        assert n <= XENSTORE_RING_SIZE
        out = bytes(self.page[RSP + ((cons + i) % XENSTORE_RING_SIZE)] for i in range(n))
        self.put(RSP_CONS, cons + n)
        return out

    def _send_bytes(self, data: bytes) -> None:
        step = self.chunk or len(data)
        pos = 0
        while pos < len(data):
            pos += self.push(data[pos:pos + step])
            self.daemon.ring_kick(self.domid)
            self.parser.receive_data(self.pull())

    def _recv_bytes(self) -> bytes:
        self.daemon.ring_kick(self.domid)
        return self.pull()


@pytest.fixture
def daemon() -> Xenstored:
    return Xenstored()


@pytest.fixture
def dom0(daemon: Xenstored) -> ToolClient:
    return ToolClient(daemon.tool_connection())


@pytest.fixture
def guest(daemon: Xenstored) -> Callable[..., FakeGuest]:
    def make(domid: int, introduce: bool = True) -> FakeGuest:
        return FakeGuest(daemon, domid, introduce)
    return make


def make_home(daemon: Xenstored, domid: int) -> None:
    """What libxl does before introducing a domain: a home it owns."""
    daemon.mkdir(f"/local/domain/{domid}", perms=[f"n{domid}"])
