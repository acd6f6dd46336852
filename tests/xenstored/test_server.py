"""The Unix-socket adapter with a raw xs_wire client (no xenstore-utils needed)."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from xenpy.abi.io.xs_wire import XSD_SOCKMSG, XsdSockmsgType as T
from xenpy.backends.xenstored import UnixSocketServer, Xenstored
from xenpy.backends.xenstored.protocol import NEED_DATA, Message, XsWireConnection
from xenpy.errors import ConfigError


class RawClient:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.parser = XsWireConnection()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_message(self) -> Message:
        while (m := self.parser.next_event()) is NEED_DATA:
            data = self.sock.recv(4096)
            assert data, "connection closed"
            self.parser.receive_data(data)
        assert isinstance(m, Message)
        return m

    def call(self, msg_type: int, payload: bytes, req_id: int = 1) -> Message:
        self.send(XsWireConnection().send(Message(msg_type, req_id, 0, payload)))
        return self.recv_message()


@pytest.fixture
def server() -> Iterator[tuple[Xenstored, UnixSocketServer]]:
    d = Xenstored()
    tmp = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    srv = UnixSocketServer(d, os.path.join(tmp, "socket"))
    srv.start()
    try:
        yield d, srv
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_request_reply(server) -> None:
    d, srv = server
    c = RawClient(srv.path)
    assert c.call(T.XS_WRITE, b"/s\0v", req_id=5) == Message(T.XS_WRITE, 5, 0, b"OK\0")
    assert c.call(T.XS_READ, b"/s\0", req_id=6) == Message(T.XS_READ, 6, 0, b"v")
    assert d.read("/s") == b"v"


def test_byte_by_byte_over_the_socket(server) -> None:
    _, srv = server
    c = RawClient(srv.path)
    for b in XsWireConnection().send(Message(T.XS_WRITE, 9, 0, b"/bb\0slow")):
        c.send(bytes([b]))
    assert c.recv_message() == Message(T.XS_WRITE, 9, 0, b"OK\0")


def test_unknown_type_gets_enosys_and_the_connection_lives(server) -> None:
    _, srv = server
    c = RawClient(srv.path)
    assert c.call(1234, b"x\0") == Message(T.XS_ERROR, 1, 0, b"ENOSYS\0")
    assert c.call(T.XS_READ, b"/tool\0").type == T.XS_READ


def test_overlong_message_closes_only_that_client(server) -> None:
    _, srv = server
    bad, good = RawClient(srv.path), RawClient(srv.path)
    bad.send(XSD_SOCKMSG.pack(T.XS_WRITE, 1, 0, 4097))
    assert bad.sock.recv(100) == b""           # closed by the daemon
    assert good.call(T.XS_READ, b"/tool\0").type == T.XS_READ


def test_watch_event_between_clients(server) -> None:
    _, srv = server
    watcher, writer = RawClient(srv.path), RawClient(srv.path)
    assert watcher.call(T.XS_WATCH, b"/ev\0tk\0").payload == b"OK\0"
    assert watcher.recv_message() == Message(T.XS_WATCH_EVENT, 0, 0, b"/ev\0tk\0")
    writer.call(T.XS_WRITE, b"/ev/x\0" + b"1")
    assert watcher.recv_message() == Message(T.XS_WATCH_EVENT, 0, 0, b"/ev/x\0tk\0")


def test_disconnect_drops_watches(server) -> None:
    d, srv = server
    c = RawClient(srv.path)
    c.call(T.XS_WATCH, b"/gone\0t\0")
    c.sock.close()
    other = RawClient(srv.path)
    other.call(T.XS_READ, b"/tool\0")          # the server has seen the close by now
    assert all(not conn.watches for conn in d._connections)


def test_stop_removes_the_socket_and_double_start_is_refused(server) -> None:
    _, srv = server
    with pytest.raises(ConfigError, match="already started"):
        srv.start()
    path = srv.path
    srv.stop()
    assert not os.path.exists(path)
    srv.stop()                                  # idempotent


def test_bind_failure_is_a_config_error() -> None:
    srv = UnixSocketServer(Xenstored(), "/nonexistent-dir/socket")
    with pytest.raises(ConfigError, match="cannot bind"):
        srv.start()


def test_a_client_that_never_reads_is_closed_not_buffered_forever(server, monkeypatch) -> None:
    from xenpy.backends.xenstored import server as srv_mod
    monkeypatch.setattr(srv_mod, "MAX_CLIENT_BACKLOG", 1 << 20)
    daemon, srv = server
    daemon.write("/big", b"A" * 4000)
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = XSD_SOCKMSG.pack(T.XS_READ, 1, 0, 5) + b"/big\0"  # ~4 KB replies
    closed = False
    try:
        for _ in range(40):                                 # up to ~30 MB of replies
            s.sendall(req * 200)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        s.settimeout(0.5)
        try:
            closed = s.recv(1 << 20) == b"" or closed
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
        if sum(len(c.out) for c in srv._clients.values()) == 0 and not srv._clients:
            closed = True
    s.close()
    assert closed and all(len(c.out) <= 2 << 20 for c in srv._clients.values())
