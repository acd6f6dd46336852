"""A guest's xenstore connection over its struct xenstore_domain_interface page.

The page holds two 1024-byte rings: ``req`` (guest -> xenstored, we advance
``req_cons``) and ``rsp`` (xenstored -> guest, we advance ``rsp_prod``).  Indices are
free-running uint32 masked by the ring size.  The guest writes the page concurrently
and may be hostile, so (as domain.c's readchn/writechn):
- each index pair is read once per step and checked (``prod - cons <= ring size``);
  a bad pair marks the connection broken (``error = XENSTORE_ERROR_RINGIDX``) and it
  is ignored from then on: no exception escapes to the vCPU that kicked us;
- a request longer than XENSTORE_PAYLOAD_MAX breaks it too (``XENSTORE_ERROR_PROTO``);
- we stop consuming requests while ``quota_req_outstanding`` replies wait for room in
  ``rsp``, so a guest that never reads replies cannot grow our queue.
We advertise XENSTORE_SERVER_FEATURE_RECONNECTION|ERROR: a guest that sets
``connection = XENSTORE_RECONNECT`` gets its watches, transactions and indices reset.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from xenpy.abi.io.xs_wire import (
    XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION, MASK_XENSTORE_IDX, XenstoreDomainInterface,
)
from xenpy.backends.xenstored.connection import Connection
from xenpy.errors import ConfigError, RemoteProtocolError

if TYPE_CHECKING:
    from xenpy.backends.xenstored.daemon import Xenstored

log = logging.getLogger("xenpy.xenstored")

_U32 = struct.Struct("<I")
_REQ = XenstoreDomainInterface.req.offset
_RSP = XenstoreDomainInterface.rsp.offset
_REQ_CONS = XenstoreDomainInterface.req_cons.offset
_REQ_PROD = XenstoreDomainInterface.req_prod.offset
_RSP_CONS = XenstoreDomainInterface.rsp_cons.offset
_RSP_PROD = XenstoreDomainInterface.rsp_prod.offset
_FEATURES = XenstoreDomainInterface.server_features.offset
_CONNECTION = XenstoreDomainInterface.connection.offset
_ERROR = XenstoreDomainInterface.error.offset
_PAGE_SIZE = 4096


class RingConnection(Connection):
    """A domain's connection: requests from ``req``, replies and events into ``rsp``."""

    def __init__(self, daemon: Xenstored, domid: int, ring: memoryview,
                 notify: Callable[[], None]) -> None:
        super().__init__(daemon, domid, is_domain=True)
        if not isinstance(ring, memoryview) or ring.readonly or ring.nbytes < _PAGE_SIZE:
            raise ConfigError(f"xenstore ring of domain {domid}: Expected a writable "
                              f"{_PAGE_SIZE}-byte memoryview, got {ring!r}")
        self.ring = ring.cast("B") if ring.format != "B" else ring
        self.notify = notify
        #: set once the guest broke the protocol: the connection is then ignored
        self.broken = False
        self._partial = b""      # bytes of the message being written to rsp
        self._signal = False     # the guest must be notified after this step
        self._put(_FEATURES, XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR)

    def _get(self, off: int) -> int:
        return _U32.unpack_from(self.ring, off)[0]

    def _put(self, off: int, value: int) -> None:
        _U32.pack_into(self.ring, off, value & 0xFFFFFFFF)

    def _break(self, error: int, why: str) -> None:
        log.warning("xenstore ring of domain %d: %s; ignoring it", self.domid, why)
        self.broken = True
        self._put(_ERROR, error)
        self._daemon.forget_state(self)
        self._signal = True

    def reset(self) -> None:
        super().reset()
        self._partial = b""

    def reset_indices(self) -> None:
        """domain_conn_reset(): both rings empty from index 0, no error, served again."""
        for off in (_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD):
            self._put(off, 0)
        self._put(_ERROR, XENSTORE_ERROR_NONE)
        self.broken = False
        self.reset()
        self._signal = True

    def io_state(self) -> tuple[bytes, bytes]:
        """(request bytes taken from ``req`` that are not a whole message yet, reply and
        event bytes not yet in ``rsp``): all a connection holds outside the ring page."""
        out = self._partial + b"".join(self.parser.send(m) for m in self._out)
        return self.parser.pending(), out

    def load_io_state(self, inbound: bytes, outbound: bytes) -> None:
        """Take over a saved connection's ``io_state`` (before the first kick)."""
        self.parser.receive_data(inbound)
        self._partial = outbound

    def kick(self) -> None:
        """Process the rings after the guest signalled (daemon lock held)."""
        if self._get(_CONNECTION) == XENSTORE_RECONNECT:
            # Also the way out of a broken connection (docs/misc/xenstore-ring.txt).
            self._daemon.forget_state(self)
            self.reset_indices()
            self._put(_CONNECTION, XENSTORE_CONNECTED)
            return
        if self.broken:
            return
        self._write_out()
        while not self.broken and self.pending_replies() < self._daemon.store.quotas.req_outstanding:
            data = self._read_in()
            if not data:
                break
            self.parser.receive_data(data)
            try:
                self._daemon.process_buffered(self)
            except RemoteProtocolError as err:
                self._break(XENSTORE_ERROR_PROTO, str(err))
                return
            self._write_out()

    def _read_in(self) -> bytes:
        cons, prod = self._get(_REQ_CONS), self._get(_REQ_PROD)
        avail = (prod - cons) & 0xFFFFFFFF
        if avail > XENSTORE_RING_SIZE:
            self._break(XENSTORE_ERROR_RINGIDX, f"req_prod {prod:#x} - req_cons {cons:#x} "
                        f"exceeds the ring size {XENSTORE_RING_SIZE}")
            return b""
        if not avail:
            return b""
        start = MASK_XENSTORE_IDX(cons)
        first = min(avail, XENSTORE_RING_SIZE - start)
        data = bytes(self.ring[_REQ + start:_REQ + start + first])
        if avail > first:
            data += bytes(self.ring[_REQ:_REQ + avail - first])
        self._put(_REQ_CONS, cons + avail)
        self._signal = True
        return data

    def _write_out(self) -> None:
        while True:
            if not self._partial:
                msg = self.pop_message()
                if msg is None:
                    return
                self._partial = self.parser.send(msg)
            cons, prod = self._get(_RSP_CONS), self._get(_RSP_PROD)
            used = (prod - cons) & 0xFFFFFFFF
            if used > XENSTORE_RING_SIZE:
                self._break(XENSTORE_ERROR_RINGIDX, f"rsp_prod {prod:#x} - rsp_cons {cons:#x} "
                            f"exceeds the ring size {XENSTORE_RING_SIZE}")
                return
            room = XENSTORE_RING_SIZE - used
            if not room:
                return
            chunk = self._partial[:room]
            start = MASK_XENSTORE_IDX(prod)
            first = min(len(chunk), XENSTORE_RING_SIZE - start)
            self.ring[_RSP + start:_RSP + start + first] = chunk[:first]
            if len(chunk) > first:
                self.ring[_RSP:_RSP + len(chunk) - first] = chunk[first:]
            self._put(_RSP_PROD, prod + len(chunk))
            self._partial = self._partial[len(chunk):]
            self._signal = True

    def flush(self) -> Callable[[], None] | None:
        if not self.broken:
            self._write_out()
        signal, self._signal = self._signal, False
        return self.notify if signal else None
