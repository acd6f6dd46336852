"""TCP adapter for GdbStub: sockets and threads only, no protocol logic.

One gdb at a time.  The connection thread reads the socket and feeds the stub; while
the guest runs, a waiter thread blocks in `Target.wait_stop(None)` and sends the stop
reply, so Ctrl-C from gdb reaches `Target.interrupt()` without any polling.  A lock
serialises the stub and socket writes between the two threads.  If gdb vanishes while
the guest runs, the guest is interrupted, its stop is discarded, and the stub detaches.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from xenpy.debug.gdbstub.stub import GdbStub
from xenpy.debug.gdbstub.target import Target
from xenpy.debug.gdbstub.xml import target_description
from xenpy.errors import ProtocolError

log = logging.getLogger("xenpy.debug.gdbstub")


class GdbServer:
    """Listen on host:port (port 0 picks a free one; see `address`).

    `on_connect` runs before each session (a hypervisor target stops the guest there, as
    gdb expects a stopped target); `idle` is set while no gdb is connected."""

    def __init__(self, target: Target, host: str = "127.0.0.1", port: int = 0,
                 on_connect: Callable[[], None] | None = None) -> None:
        target_description(target.arch)  # a bad arch is a ConfigError now, not per connection
        self.target = target
        self.on_connect = on_connect
        self._listener = socket.create_server((host, port))
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._conn: socket.socket | None = None
        self.connected = threading.Event()  # set once the first gdb has connected
        self.idle = threading.Event()
        self.idle.set()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        """Serve connections one after another in a daemon thread."""
        self._thread = threading.Thread(target=self._accept_loop, name="gdbstub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        for sock in (self._listener, self._conn):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._listener.close()
        if self._thread is not None:
            self._thread.join()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            log.info("gdb connected from %s", peer)
            self.idle.clear()
            self._conn = sock
            try:
                with sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if self.on_connect is not None:
                        self.on_connect()
                    self.connected.set()
                    serve_connection(self.target, sock)
            finally:
                self._conn = None
                self.idle.set()

    def __enter__(self) -> GdbServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_connection(target: Target, sock: socket.socket) -> None:
    """Run one gdb session on a connected socket until gdb detaches, kills or leaves."""
    stub = GdbStub(target)
    lock = threading.Lock()
    gone = threading.Event()  # gdb left: the waiter must not reply
    waiter: threading.Thread | None = None

    def wait_for_stop() -> None:
        event = target.wait_stop(None)
        with lock:
            if event is None or gone.is_set():
                return
            out = stub.stopped(event)
            try:
                sock.sendall(out)
            except OSError:
                log.info("gdb went away before the stop reply")

    try:
        while not stub.closed:
            data = sock.recv(65536)
            if not data:
                break
            with lock:
                was_running = stub.running
                try:
                    out = stub.receive_data(data)
                except ProtocolError as exc:
                    log.warning("dropping gdb connection: %s", exc)
                    break
                sock.sendall(out)
                if stub.running and not was_running:
                    waiter = threading.Thread(target=wait_for_stop, name="gdbstub-wait", daemon=True)
                    waiter.start()
    except OSError as exc:
        log.info("gdb connection error: %s", exc)
    finally:
        with lock:
            gone.set()
            if stub.running:
                target.interrupt()
        if waiter is not None:
            waiter.join()
        stub.disconnect()
