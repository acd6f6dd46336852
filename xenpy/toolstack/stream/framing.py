"""Framing shared by the libxc and libxl stream layers.

Both layers (docs/specs/libxc-migration-stream.pandoc, libxl-migration-stream.pandoc)
frame a record the same way: a ``{u32 type; u32 body_length}`` header, the body, then
zero padding up to the next 8-octet boundary.  Apart from the two identifying headers
(libxl's and libxc's image header, both big-endian), everything is little-endian:
xenpy only runs on x86, and Xen's verifier refuses to check a stream that is not in
the host's byte order anyway.

Every record class is a frozen dataclass that validates itself in ``__post_init__``,
so a record that exists is a record that may be written: the writer never needs a
second copy of the rules, and the reader gets them by constructing what it parsed.
Validation failures are ``StreamError`` with "Expected X, got Y" messages; the reader
prefixes them with the record's name and stream offset.
"""
from __future__ import annotations

import struct
from typing import ClassVar, Protocol, Self

from xenpy.errors import StreamError

#: struct libxl__sr_rec_hdr / struct rec_hdr: type, body_length
RECORD_HEADER = struct.Struct("<II")
#: records are padded to an 8-octet boundary (REC_ALIGN_ORDER = 3)
RECORD_ALIGN = 8


def padded_length(length: int) -> int:
    """Body length rounded up to the record alignment."""
    return (length + RECORD_ALIGN - 1) & ~(RECORD_ALIGN - 1)


def frame(rec_type: int, body: bytes) -> bytes:
    """Header + body + zero padding: one complete record on the wire."""
    pad = padded_length(len(body)) - len(body)
    return RECORD_HEADER.pack(rec_type, len(body)) + body + b"\0" * pad


class Record(Protocol):
    """What the libxc and libxl record classes have in common."""

    REC_TYPE: ClassVar[int]
    NAME: ClassVar[str]
    #: largest body the reader accepts before it buffers anything (a hostile
    #: length field must not make us wait for, or allocate, gigabytes)
    MAX_LENGTH: ClassVar[int]

    def encode_body(self) -> bytes: ...

    @classmethod
    def decode_body(cls, body: bytes) -> Self: ...


def check_uint(field: str, value: object, bits: int) -> None:
    """Reject a field that does not fit its on-wire unsigned width."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise StreamError(f"{field}: Expected an integer, got {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise StreamError(f"{field}: Expected 0 <= value < 2**{bits}, got {value:#x}")


def check_bytes(field: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise StreamError(f"{field}: Expected bytes, got {type(value).__name__}")


def check_exact_length(field: str, body: bytes, expected: int) -> None:
    if len(body) != expected:
        raise StreamError(f"{field}: Expected length {expected}, got {len(body)}")


def check_empty(name: str, body: bytes) -> None:
    if body:
        raise StreamError(f"{name} body: Expected length 0, got {len(body)}")


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``StreamReader.next_record()``: feed more bytes with ``receive_data``
NEED_DATA = _Sentinel("NEED_DATA")
#: ``StreamReader.next_record()``: the outermost END record was already returned
DONE = _Sentinel("DONE")
