"""xenstored's Unix socket for dom0 tools: a thin selectors loop around ``Connection``.

Debian's xenstore-utils (libxenstore's xs_open) connect to the socket named by
``XENSTORED_PATH`` (default ``$XENSTORED_RUNDIR/socket``); if that path is a socket
they speak xs_wire over it.  Each accepted client becomes a dom0 tools
``Connection``; bytes read are fed to it and its output is written back.  Watch
events produced by other threads (a guest's ring kick) reach a client through its
``wakeup``, which pokes this loop through a socketpair.

The loop never blocks on a client: sockets are non-blocking and unwritten output is
kept per client until the socket is writable again.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from xenpy.backends.xenstored.connection import Connection
from xenpy.backends.xenstored.daemon import Xenstored
from xenpy.errors import ConfigError

log = logging.getLogger("xenpy.xenstored")

_RECV_SIZE = 65536
#: replies queued for a tools client that does not read them, before it is closed
MAX_CLIENT_BACKLOG = 16 << 20


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    conn: Connection
    out: bytearray = field(default_factory=bytearray)


class UnixSocketServer:
    """Serve ``daemon`` on a Unix stream socket at ``path`` from a background thread."""

    def __init__(self, daemon: Xenstored, path: str | os.PathLike[str]) -> None:
        self.daemon = daemon
        self.path = os.fspath(path)
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._clients: dict[socket.socket, _Client] = {}

    def start(self) -> None:
        """Bind, listen and start serving (an existing socket file is replaced)."""
        if self._thread is not None:
            raise ConfigError(f"xenstored socket {self.path}: already started")
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
        except OSError as err:
            listener.close()
            raise ConfigError(f"xenstored socket {self.path}: cannot bind: {err.strerror}") from err
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="xenstored-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every client and remove the socket file."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join()
        self._thread = None
        assert self._sel is not None and self._listener is not None
        for client in list(self._clients.values()):
            self._drop(client)
        self._sel.close()
        self._listener.close()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> UnixSocketServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        if self._wake_w is None:
            return
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wakeup is already pending
        except OSError:
            pass  # stopped meanwhile

    def _run(self) -> None:
        assert self._sel is not None
        while not self._stopping.is_set():
            for key, mask in self._sel.select():
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    client = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(client)
                    if mask & selectors.EVENT_WRITE and client.sock in self._clients:
                        self._write(client)
            for client in list(self._clients.values()):
                self._pull(client)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as e:          # out of descriptors: keep serving those we have
            log.warning("xenstored: cannot accept a client: %s", e)
            time.sleep(0.05)          # the listener stays readable: do not spin on it
            return
        sock.setblocking(False)
        conn = self.daemon.tool_connection()
        client = _Client(sock, conn)
        conn.wakeup = self._wake
        self._clients[sock] = client
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.conn.receive_data(data)
        if client.conn.closed:
            log.warning("xenstored: closing a tools client that broke xs_wire framing")
            self._drop(client)

    def _pull(self, client: _Client) -> None:
        data = client.conn.data_to_send()
        if data:
            client.out += data
            self._write(client)
            if len(client.out) > MAX_CLIENT_BACKLOG:
                log.warning("xenstored: a tools client stopped reading (%d bytes queued); "
                            "closing it", len(client.out))
                self._drop(client)

    def _write(self, client: _Client) -> None:
        assert self._sel is not None
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop(client)
                return
            del client.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        self._sel.modify(client.sock, events, client)

    def _drop(self, client: _Client) -> None:
        assert self._sel is not None
        if self._clients.pop(client.sock, None) is None:
            return
        self._sel.unregister(client.sock)
        client.sock.close()
        client.conn.close()
