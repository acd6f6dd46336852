"""Sans-IO reader for xl save files and migration streams.

Feed bytes with ``receive_data`` (``b""`` means end of input) and pull typed
headers and records with ``next_record``, which returns ``NEED_DATA`` until a whole
item is buffered, and ``DONE`` after the outermost END.  No I/O happens here, so
the same reader serves a file, a pipe and a migration socket.

Hostile input is expected: every record's length is checked against its type's
cap *before* its body is buffered, padding must be zero, and every failure is a
StreamError naming the item, its stream offset and "Expected X, got Y".
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Callable, Iterator, cast

from xenpy.errors import StreamError

from . import libxc, libxl
from .framing import DONE, NEED_DATA, RECORD_HEADER, _Sentinel, padded_length
from .sequence import Expect, Sequencer, StreamFormat
from .xlheader import XlHeader

#: what ``next_record`` returns besides the NEED_DATA / DONE sentinels
StreamItem = (XlHeader | libxl.LibxlHeader | libxc.ImageHeader | libxc.DomainHeader
              | libxl.LibxlRecord | libxc.LibxcRecord)

_FIXED_SIZES = {Expect.XL_HEADER: XlHeader.FIXED_SIZE, Expect.LIBXL_HEADER: libxl.LibxlHeader.SIZE,
                Expect.IMAGE_HEADER: libxc.ImageHeader.SIZE,
                Expect.DOMAIN_HEADER: libxc.DomainHeader.SIZE}
_HEADER_DECODERS: dict[Expect, Callable[[bytes], StreamItem]] = {
    Expect.LIBXL_HEADER: libxl.LibxlHeader.decode, Expect.IMAGE_HEADER: libxc.ImageHeader.decode,
    Expect.DOMAIN_HEADER: libxc.DomainHeader.decode}
_LAYERS = {Expect.LIBXL_RECORD: ("libxl", libxl.RECORDS, {}),
           Expect.LIBXC_RECORD: ("libxc", libxc.RECORDS, libxc.UNSUPPORTED_TYPES)}

#: compact the buffer once this much consumed data sits in front of it
_COMPACT_AT = 1 << 20


class StreamReader:
    """Turns the bytes of a save file/stream into headers and records."""

    def __init__(self, fmt: StreamFormat = "xl", checkpointed: bool = False) -> None:
        self._seq = Sequencer(fmt, checkpointed)
        self._buf = bytearray()
        self._pos = 0          # first unconsumed byte in _buf
        self._offset = 0       # stream offset of _buf[_pos]
        self._eof = False

    @property
    def expecting(self) -> Expect:
        return self._seq.state

    @property
    def offset(self) -> int:
        """Stream offset of the next unread byte."""
        return self._offset

    def receive_data(self, data: bytes) -> None:
        """Buffer more input; ``b""`` marks the end of input."""
        if self._eof:
            if data:
                raise StreamError(f"input at offset {self._offset + self._available():#x}: "
                                  f"Expected no data after end of input, got {len(data)} bytes")
            return
        if not data:
            self._eof = True
        else:
            self._buf += data

    def next_record(self) -> StreamItem | _Sentinel:
        """The next header/record, NEED_DATA, or DONE after the final END."""
        state = self._seq.state
        if state is Expect.DONE:
            if self._available():
                raise StreamError(f"end of stream at offset {self._offset:#x}: Expected no more "
                                  f"data, got {self._available()}+ bytes")
            return DONE
        if state in _LAYERS:
            return self._record(state)
        return self._header(state)

    # --- internals ---------------------------------------------------------------------------
    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _peek(self, what: str, start: int, n: int) -> bytes | None:
        """Bytes [start, start+n) past the read position, None if not buffered yet."""
        have = self._available() - start
        if have >= n:
            return bytes(self._buf[self._pos + start:self._pos + start + n])
        if self._eof:
            raise StreamError(f"{what} at offset {self._offset:#x}: Expected {n} bytes, got "
                              f"{max(have, 0)} (stream truncated)")
        return None

    def _consume(self, n: int) -> None:
        self._pos += n
        self._offset += n
        if self._pos >= _COMPACT_AT and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0

    def _accept(self, what: str, item: object) -> None:
        try:
            self._seq.accept(item)
        except StreamError as exc:
            raise StreamError(f"{what} at offset {self._offset:#x}: {exc}") from None

    def _header(self, state: Expect) -> StreamItem | _Sentinel:
        what = state.value
        fixed = self._peek(what, 0, _FIXED_SIZES[state])
        if fixed is None:
            return NEED_DATA
        try:
            if state is Expect.XL_HEADER:
                optlen = XlHeader.optional_data_length(fixed)
                optdata = self._peek(f"{what} optional data", len(fixed), optlen)
                if optdata is None:
                    return NEED_DATA
                item: StreamItem = XlHeader.decode(fixed, optdata)
                size = len(fixed) + optlen
            else:
                item = _HEADER_DECODERS[state](fixed)
                size = len(fixed)
        except StreamError as exc:
            raise StreamError(f"{what} at offset {self._offset:#x}: {exc}") from None
        self._accept(what, item)
        self._consume(size)
        return item

    def _record(self, state: Expect) -> StreamItem | _Sentinel:
        layer, table, unsupported = _LAYERS[state]
        raw = self._peek(f"{layer} record header", 0, RECORD_HEADER.size)
        if raw is None:
            return NEED_DATA
        rec_type, length = RECORD_HEADER.unpack(raw)
        cls = table.get(rec_type)
        if cls is None:
            expected = unsupported.get(rec_type)
            got = f"unsupported {expected}" if expected else f"type {rec_type:#010x}"
            raise StreamError(f"{layer} record at offset {self._offset:#x}: Expected a known "
                              f"{layer} record type, got {got}")
        what = f"{layer} {cls.NAME} record"
        if length > cls.MAX_LENGTH:
            raise StreamError(f"{what} at offset {self._offset:#x}: Expected body_length <= "
                              f"{cls.MAX_LENGTH}, got {length}")
        padded = padded_length(length)
        body = self._peek(what, RECORD_HEADER.size, padded)
        if body is None:
            return NEED_DATA
        if any(body[length:]):
            raise StreamError(f"{what} at offset {self._offset:#x}: Expected zero padding, "
                              f"got {body[length:].hex()}")
        try:
            record = cast(StreamItem, cls.decode_body(body[:length]))
        except StreamError as exc:
            raise StreamError(f"{what} at offset {self._offset:#x}: {exc}") from None
        except struct.error as exc:  # a decoder bug, but still never a traceback for bad input
            raise StreamError(f"{what} at offset {self._offset:#x}: malformed body ({exc})") from None
        self._accept(what, record)
        self._consume(RECORD_HEADER.size + padded)
        return record


def iter_stream(source: BinaryIO, fmt: StreamFormat = "xl", checkpointed: bool = False,
                chunk_size: int = 1 << 20) -> Iterator[StreamItem]:
    """Yield every header and record of a stream read from a binary file object."""
    reader = StreamReader(fmt, checkpointed)
    while True:
        item = reader.next_record()
        if item is DONE:
            return
        if isinstance(item, _Sentinel):  # NEED_DATA
            reader.receive_data(source.read(chunk_size))
            continue
        yield item


def parse_stream(data: bytes, fmt: StreamFormat = "xl",
                 checkpointed: bool = False) -> list[StreamItem]:
    """Every header and record of a complete stream held in memory."""
    reader = StreamReader(fmt, checkpointed)
    if data:
        reader.receive_data(data)
    reader.receive_data(b"")
    items: list[StreamItem] = []
    while not isinstance(item := reader.next_record(), _Sentinel):
        items.append(item)
    return items
