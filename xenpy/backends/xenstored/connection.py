"""A client of xenstored: its framer, output queue, watches and transactions.

A ``Connection`` is sans-IO: bytes come in through ``receive_data`` and the replies
and watch events go out through ``data_to_send``; whoever owns the transport (the
Unix-socket server, the toolstack in-process, or ``RingConnection`` for a guest's
ring page) moves the bytes.  The daemon's lock guards every method, because watch
events for one connection are produced by requests on another, possibly on another
thread (a vCPU kicking its ring while the socket thread serves tools).

Output is a queue of ``Message`` objects, serialised only when taken: a watch event
identical to one still queued is dropped (as Xen's send_event does), and an
unprivileged connection's queue is bounded by its memory quota, so a guest that never
reads its events cannot make the daemon grow without bound.
"""
from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenpy.abi.io.xs_wire import XSD_SOCKMSG_SIZE, XENSTORE_PAYLOAD_MAX, XsdSockmsgType
from xenpy.backends.xenstored.protocol import Message, XsWireConnection
from xenpy.backends.xenstored.store import Caller, Transaction

if TYPE_CHECKING:
    from xenpy.backends.xenstored.daemon import Xenstored


@dataclass(frozen=True, slots=True)
class Watch:
    """struct watch: a canonical path (or @special), a token, and the prefix to strip
    from event paths when the watch was registered with a relative path."""

    node: str
    token: bytes
    relative_to: str | None = None

    def event_path(self, path: str) -> str:
        """get_watch_path(): the path as the watcher named it."""
        if self.relative_to is not None and path.startswith(self.relative_to):
            path = path[len(self.relative_to):]
            if path.startswith("/"):
                path = path[1:]
        return path


class Connection:
    """One xs_wire client of the daemon (a dom0 tool, or a guest through its ring)."""

    def __init__(self, daemon: Xenstored, domid: int = 0, *, is_domain: bool = False) -> None:
        self._daemon = daemon
        self.domid = domid
        #: a guest ring (subject to quotas unless dom0) rather than a socket/tool client
        self.is_domain = is_domain
        self.target: int | None = None
        self.parser = XsWireConnection()
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.doomed_tx: set[int] = set()    # restored open transactions: commit is EAGAIN
        self.next_tx_id = 1
        self.closed = False
        #: called (outside the daemon lock) when output was queued from elsewhere
        self.wakeup: Callable[[], None] | None = None
        self._out: collections.deque[Message] = collections.deque()
        self._out_bytes = 0

    @property
    def caller(self) -> Caller:
        privileged = not self.is_domain or self.domid == 0
        return Caller(self.domid, privileged, self.target)

    # -- the transport side --------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed request bytes; complete requests are processed at once.

        A framing error (payload longer than XENSTORE_PAYLOAD_MAX) closes the
        connection, as Xen does: check ``closed`` afterwards.
        """
        self._daemon.feed(self, data)

    def data_to_send(self) -> bytes:
        """Every queued reply and watch event, serialised."""
        with self._daemon.critical():
            out = b"".join(self.parser.send(m) for m in self._out)
            self._out.clear()
            self._out_bytes = 0
            return out

    def close(self) -> None:
        """The client went away: drop its watches and transactions."""
        self._daemon.drop_connection(self)

    # -- the daemon side (called under the daemon lock) ------------------------------

    def queue(self, msg: Message) -> None:
        self._out.append(msg)
        self._out_bytes += XSD_SOCKMSG_SIZE + len(msg.payload)
        self._daemon.mark_dirty(self)

    def queue_event(self, path: bytes, token: bytes) -> None:
        """send_event(): one WATCH_EVENT, unless over-long, a duplicate or over quota."""
        payload = path + b"\0" + token + b"\0"
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            return
        if not path.startswith(b"@"):
            for pending in self._out:
                if pending.type == XsdSockmsgType.XS_WATCH_EVENT and pending.payload == payload:
                    return
        if (not self.caller.privileged and self._out_bytes + XSD_SOCKMSG_SIZE + len(payload)
                > self._daemon.store.quotas.memory_per_domain_hard):
            return
        self.queue(Message(XsdSockmsgType.XS_WATCH_EVENT, 0, 0, payload))

    def pending_replies(self) -> int:
        """Queued replies (not watch events): the flow-control count for rings."""
        return sum(1 for m in self._out if m.type != XsdSockmsgType.XS_WATCH_EVENT)

    def pop_message(self) -> Message | None:
        if not self._out:
            return None
        msg = self._out.popleft()
        self._out_bytes -= XSD_SOCKMSG_SIZE + len(msg.payload)
        return msg

    def reset(self) -> None:
        """Forget watches, transactions and buffered I/O (reconnect, re-introduce)."""
        self.watches.clear()
        self.transactions.clear()
        self.doomed_tx.clear()
        self._out.clear()
        self._out_bytes = 0
        self.parser = XsWireConnection()

    def flush(self) -> Callable[[], None] | None:
        """Move output to the transport; returns the callback to run after the lock
        is released (the socket server's wakeup here; the event channel for rings)."""
        return self.wakeup if self._out else None
