"""Sans-IO framing of the xs_wire protocol (xen/io/xs_wire.h), in the manner of h11.

A byte stream in either direction is a sequence of ``struct xsd_sockmsg`` headers,
each followed by exactly ``len`` payload bytes.  ``XsWireConnection`` does no I/O:
the caller feeds it bytes with ``receive_data`` and pulls ``Message`` events with
``next_event`` (``NEED_DATA`` until a whole message is buffered); ``send`` turns a
``Message`` into bytes for the caller to write.  The same class serves both ends: the
daemon parses requests, a client (and the tests) parses replies.

Invariants:
- The buffer never holds more than one header, one maximal payload and the bytes
  fed by one ``receive_data`` call beyond that: a header whose ``len`` exceeds
  XENSTORE_PAYLOAD_MAX is a ``RemoteProtocolError`` as soon as the header is
  complete, before we wait for (or buffer) its payload.  After that the connection
  is in the ERROR state for good: the stream is out of sync and cannot be trusted,
  which is why Xen drops such a connection.
- The message type is *not* checked here: an unknown type is a well-framed message
  that the daemon answers with an error; framing and semantics stay separate.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from xenpy.abi.io.xs_wire import XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG, XSD_SOCKMSG_SIZE
from xenpy.errors import LocalProtocolError, RemoteProtocolError

_U32 = 1 << 32


class Need(enum.Enum):
    """``next_event`` has no complete message yet."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = Need.NEED_DATA


class State(enum.Enum):
    """Where the parser stands: healthy, or out of sync after a protocol error."""

    OK = "OK"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Message:
    """One struct xsd_sockmsg and its payload."""

    type: int
    req_id: int = 0
    tx_id: int = 0
    payload: bytes = b""


def join_strings(*strings: str | bytes, terminate: bool = True) -> bytes:
    """NUL-separated payload; every string NUL-terminated unless ``terminate`` is False
    for the last one (READ replies and WRITE values carry no trailing NUL)."""
    parts = [s.encode() if isinstance(s, str) else bytes(s) for s in strings]
    if terminate:
        return b"".join(p + b"\0" for p in parts)
    return b"\0".join(parts)


def split_strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload (bytes after the last NUL are dropped),
    as Xen's get_strings() sees them."""
    parts = payload.split(b"\0")
    return parts[:-1]


class XsWireConnection:
    """One direction-agnostic xs_wire framer: bytes in, ``Message`` events out."""

    def __init__(self, max_payload: int = XENSTORE_PAYLOAD_MAX) -> None:
        self.max_payload = max_payload
        self.state = State.OK
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer. Data after a protocol error is discarded."""
        if self.state is State.OK:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)

    def pending(self) -> bytes:
        """Those bytes (a message still being received)."""
        return bytes(self._buf)

    def next_event(self) -> Message | Need:
        """The next complete message, or NEED_DATA.

        Raises ``RemoteProtocolError`` (and enters ERROR) on an over-long payload.
        """
        if self.state is State.ERROR:
            raise RemoteProtocolError("xs_wire stream: Expected a usable connection, "
                                      "got one already broken by a protocol error")
        if len(self._buf) < XSD_SOCKMSG_SIZE:
            return NEED_DATA
        msg_type, req_id, tx_id, length = XSD_SOCKMSG.unpack_from(self._buf)
        if length > self.max_payload:
            self.state = State.ERROR
            self._buf.clear()
            raise RemoteProtocolError(
                f"xsd_sockmsg.len: Expected at most {self.max_payload} "
                f"(XENSTORE_PAYLOAD_MAX), got {length}")
        end = XSD_SOCKMSG_SIZE + length
        if len(self._buf) < end:
            return NEED_DATA
        payload = bytes(self._buf[XSD_SOCKMSG_SIZE:end])
        del self._buf[:end]
        return Message(msg_type, req_id, tx_id, payload)

    def send(self, msg: Message) -> bytes:
        """The bytes of one message; refuses what the peer would have to reject."""
        if len(msg.payload) > self.max_payload:
            raise LocalProtocolError(
                f"xsd_sockmsg.len: Expected at most {self.max_payload} "
                f"(XENSTORE_PAYLOAD_MAX), got {len(msg.payload)}")
        for field in ("type", "req_id", "tx_id"):
            value = getattr(msg, field)
            if not 0 <= value < _U32:
                raise LocalProtocolError(
                    f"xsd_sockmsg.{field}: Expected a uint32, got {value}")
        return XSD_SOCKMSG.pack(msg.type, msg.req_id, msg.tx_id, len(msg.payload)) + msg.payload
