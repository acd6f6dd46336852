"""gdb Remote Serial Protocol framing, sans-IO (h11 style).

Wire format: ``$payload#cc`` where cc is the modulo-256 sum of the payload bytes in two
lower-case hex digits.  Outside a packet the peer may send ``+`` (ack), ``-`` (nak: send
your last packet again) or the byte 0x03 (Ctrl-C).  Until QStartNoAckMode succeeds every
good packet is answered with ``+`` and every corrupted one with ``-``; afterwards neither
side acks and stray ``+``/``-`` are ignored.

Invariants kept here:
- `receive_data` only buffers; `next_event` parses at most one event and never raises
  for a bad checksum (it queues a nak and reports `ChecksumError`).  The only exception
  is RemoteProtocolError when an unterminated packet outgrows the buffer bound.
- Bytes to write (acks, naks, retransmissions) accumulate until `data_to_send` or `send`
  drains them, so acks always precede the reply that follows them.
- Payloads handed out have run-length encoding expanded; binary escaping (``}`` x^0x20)
  is per-command and left to the caller (`unescape`, `escape`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xenpy.errors import LocalProtocolError, RemoteProtocolError

INTERRUPT_BYTE: Final = 0x03
ESCAPE_BYTE: Final = 0x7D  # '}'
# Bytes that must be escaped in binary data: '#', '$', '}', '*' (run-length marker).
_MUST_ESCAPE: Final = frozenset(b"#$}*")
# A run-length count is one printable char n+29; '#'(6) and '$'(7) are forbidden and
# the largest is '~' (126 - 29 = 97 repeats).
_RLE_MIN: Final = 4
_RLE_MAX: Final = 97 + 1
_RLE_FORBIDDEN: Final = frozenset((6, 7))


class _NeedData:
    """Sentinel type: `next_event` needs more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Packet:
    """A well-formed packet; `data` is the payload with run-length encoding expanded."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The peer sent 0x03 (Ctrl-C) outside a packet."""


@dataclass(frozen=True, slots=True)
class ChecksumError:
    """A packet arrived corrupted; a nak was queued (in ack mode) and it was dropped."""

    expected: int | None  # the checksum the peer sent (None if not hex)
    computed: int


Event = Packet | Interrupt | ChecksumError


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary-escape data for a packet (qXfer replies, X payloads)."""
    out = bytearray()
    for b in data:
        if b in _MUST_ESCAPE:
            out += bytes((ESCAPE_BYTE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo `escape` (X packet payloads)."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE_BYTE:
            nxt = next(it, None)
            if nxt is None:
                raise RemoteProtocolError("binary data: expected a byte after '}' escape, got end of packet")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def rle_encode(data: bytes) -> bytes:
    """Run-length encode a payload: ``X*n`` repeats X a further n-29 times."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        j = i + 1
        while j < n and data[j] == b and j - i < _RLE_MAX:
            j += 1
        run = j - i
        if run < _RLE_MIN or b in b"*#$":
            out += data[i:j]
        else:
            extra = run - 1
            while extra in _RLE_FORBIDDEN:
                extra -= 1
            out.append(b)
            out.append(ord("*"))
            out.append(extra + 29)
            j = i + 1 + extra
        i = j
    return bytes(out)


def rle_decode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == ord("*"):
            if not out or i + 1 >= n:
                raise RemoteProtocolError(f"run-length: expected a char and a count around '*' at offset {i}, got {data!r}")
            count = data[i + 1] - 29
            if count < 0:
                raise RemoteProtocolError(f"run-length: expected a count char >= 29, got {data[i + 1]} at offset {i + 1}")
            out += bytes((out[-1],)) * count
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


class RspConnection:
    """One end of an RSP link (the stub end), without any I/O."""

    def __init__(self, max_payload: int = 0x4000) -> None:
        if max_payload < 16:
            raise LocalProtocolError(f"max_payload: expected >= 16, got {max_payload}")
        self.max_payload = max_payload
        self._buf = bytearray()
        self._out = bytearray()
        self._ack_mode = True
        self._last_sent: bytes | None = None

    @property
    def ack_mode(self) -> bool:
        return self._ack_mode

    def start_no_ack(self) -> None:
        """Call after sending the OK to QStartNoAckMode."""
        self._ack_mode = False
        self._last_sent = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send(self, payload: bytes, *, rle: bool = True) -> bytes:
        """Frame a payload; returns pending acks followed by the packet."""
        body = rle_encode(payload) if rle else payload
        if b"#" in body or b"$" in body:
            raise LocalProtocolError(f"packet payload: expected no raw '#' or '$' (escape binary data), got {payload[:40]!r}")
        frame = b"$" + body + b"#" + b"%02x" % checksum(body)
        if self._ack_mode:
            self._last_sent = frame
        self._out += frame
        return self.data_to_send()

    def next_event(self) -> Event | _NeedData:
        buf = self._buf
        while buf:
            b = buf[0]
            if b == ord("$"):
                return self._maybe_packet()
            del buf[0]
            if b == INTERRUPT_BYTE:
                return Interrupt()
            if b == ord("-") and self._ack_mode and self._last_sent is not None:
                self._out += self._last_sent
            elif b == ord("+"):
                self._last_sent = None
            # Anything else between packets is line noise: skip it.
        return NEED_DATA

    def _maybe_packet(self) -> Event | _NeedData:
        buf = self._buf
        end = buf.find(b"#")
        if end < 0 or len(buf) < end + 3:
            # Framing overhead plus the payload bound, doubled for escapes.
            if len(buf) > 2 * self.max_payload + 4:
                del buf[:]
                raise RemoteProtocolError(f"packet length: expected at most {self.max_payload} bytes, got more without '#'")
            return NEED_DATA
        # A '$' inside means the previous packet was truncated: resync on the last one.
        restart = buf.rfind(b"$", 1, end)
        if restart > 0:
            del buf[:restart]
            return self._maybe_packet()
        body = bytes(buf[1:end])
        sent = bytes(buf[end + 1:end + 3])
        del buf[:end + 3]
        computed = checksum(body)
        try:
            expected: int | None = int(sent, 16)
        except ValueError:
            expected = None
        if expected != computed and self._ack_mode:
            self._out += b"-"
            return ChecksumError(expected, computed)
        if self._ack_mode:
            self._out += b"+"
        # In no-ack mode the checksum carries no meaning (gdb may not compute it).
        return Packet(rle_decode(body))
