"""libxl migration stream v2 (docs/specs/libxl-migration-stream.pandoc).

The libxl stream wraps the libxc stream: a 16-octet header ("LibxlFmt", version 2),
then records.  LIBXC_CONTEXT has an empty body and is immediately followed by a whole
libxc stream (image header ... END); the libxl layer resumes after the libxc END.
A PV save written by libxl is: header, LIBXC_CONTEXT, <libxc stream>, END.

EMULATOR_* records belong to HVM device models.  Two facts about them matter to
xenpy (see xlheader.py for where xenpy's own state travels instead):

* Xen 4.17's verifier (python3) compares ``bytes[-1]`` with the *str* ``'\\x00'``, so
  it rejects every EMULATOR_XENSTORE_DATA record that has any key/value data;
* libxl's restore rejects both emulator records for a domain without a device
  model, i.e. for every PV domain.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from xenpy.errors import StreamError

from .framing import Record, check_bytes, check_empty, check_uint

HDR = struct.Struct(">QII")  # ident, version, options (big-endian, like libxc's image header)
HDR_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
HDR_VERSION = 2
HDR_OPT_BIG_ENDIAN = 1 << 0
HDR_OPT_LEGACY = 1 << 1
HDR_OPT_RESZ_MASK = 0xFFFC  # as Xen's verifier: bits 2-15 reserved

REC_TYPE_END = 0x00000000
REC_TYPE_LIBXC_CONTEXT = 0x00000001
REC_TYPE_EMULATOR_XENSTORE_DATA = 0x00000002
REC_TYPE_EMULATOR_CONTEXT = 0x00000003
REC_TYPE_CHECKPOINT_END = 0x00000004
REC_TYPE_CHECKPOINT_STATE = 0x00000005

EMULATOR_HDR = struct.Struct("<II")  # struct libxl__sr_emulator_hdr: id, index
EMULATOR_UNKNOWN = 0x00000000
EMULATOR_QEMU_TRADITIONAL = 0x00000001
EMULATOR_QEMU_UPSTREAM = 0x00000002
EMULATOR_IDS = {EMULATOR_UNKNOWN: "unknown", EMULATOR_QEMU_TRADITIONAL: "qemu-traditional",
                EMULATOR_QEMU_UPSTREAM: "qemu-upstream"}

CHECKPOINT_STATE = struct.Struct("<I")  # struct libxl_sr_checkpoint_state: id
CHECKPOINT_NEW = 0x00000000
CHECKPOINT_SVM_SUSPENDED = 0x00000001
CHECKPOINT_SVM_READY = 0x00000002
CHECKPOINT_SVM_RESUMED = 0x00000003

#: cap on emulator blobs (a qemu save is a few MiB at most for a small guest)
EMULATOR_BLOB_MAX = 64 << 20
XENSTORE_DATA_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class LibxlHeader:
    """The libxl stream header.  ``legacy``: converted from a pre-v2 stream."""

    NAME: ClassVar[str] = "libxl header"
    SIZE: ClassVar[int] = HDR.size

    legacy: bool = False

    def encode(self) -> bytes:
        return HDR.pack(HDR_IDENT, HDR_VERSION, HDR_OPT_LEGACY if self.legacy else 0)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        ident, version, options = HDR.unpack(data)
        if ident != HDR_IDENT:
            raise StreamError(f"ident: Expected {HDR_IDENT:#x} ('LibxlFmt'), got {ident:#x}")
        if version != HDR_VERSION:
            raise StreamError(f"version: Expected {HDR_VERSION}, got {version}")
        if options & ~(HDR_OPT_BIG_ENDIAN | HDR_OPT_LEGACY):
            raise StreamError(f"options: Expected reserved bits 2-31 clear, got {options:#x}")
        if options & HDR_OPT_BIG_ENDIAN:
            raise StreamError("options: Expected little-endian (bit 0 clear), got big-endian")
        return cls(bool(options & HDR_OPT_LEGACY))


class _EmptyRecord:
    __slots__ = ()
    REC_TYPE: ClassVar[int]
    NAME: ClassVar[str]
    MAX_LENGTH: ClassVar[int] = 0

    def encode_body(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        check_empty(cls.NAME, body)
        return cls()


@dataclass(frozen=True, slots=True)
class LibxlEnd(_EmptyRecord):
    """END: the last record of the libxl stream (and so of the whole save file)."""

    REC_TYPE: ClassVar[int] = REC_TYPE_END
    NAME: ClassVar[str] = "END"


@dataclass(frozen=True, slots=True)
class LibxcContext(_EmptyRecord):
    """LIBXC_CONTEXT: a libxc stream follows immediately."""

    REC_TYPE: ClassVar[int] = REC_TYPE_LIBXC_CONTEXT
    NAME: ClassVar[str] = "LIBXC_CONTEXT"


@dataclass(frozen=True, slots=True)
class CheckpointEnd(_EmptyRecord):
    """CHECKPOINT_END: end of the libxl part of a checkpoint; libxc records resume."""

    REC_TYPE: ClassVar[int] = REC_TYPE_CHECKPOINT_END
    NAME: ClassVar[str] = "CHECKPOINT_END"


def _check_emulator(emulator_id: int, index: int) -> None:
    if emulator_id not in EMULATOR_IDS:
        raise StreamError(f"emulator id: Expected one of {sorted(EMULATOR_IDS)}, "
                          f"got {emulator_id!r}")
    check_uint("emulator index", index, 32)


@dataclass(frozen=True, slots=True)
class EmulatorXenstoreData:
    """EMULATOR_XENSTORE_DATA: an emulator's XenStore keys, relative to its own path.

    The body is ``key\\0value\\0`` pairs.  Xen 4.17's verifier rejects any
    non-empty ``entries`` (a python3 bug), so write entries only xenpy reads back.
    """

    REC_TYPE: ClassVar[int] = REC_TYPE_EMULATOR_XENSTORE_DATA
    NAME: ClassVar[str] = "EMULATOR_XENSTORE_DATA"
    MAX_LENGTH: ClassVar[int] = EMULATOR_HDR.size + XENSTORE_DATA_MAX

    emulator_id: int
    index: int
    entries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_emulator(self.emulator_id, self.index)
        if not isinstance(self.entries, tuple):
            raise StreamError(f"entries: Expected a tuple, got {type(self.entries).__name__}")
        for i, pair in enumerate(self.entries):
            if not (isinstance(pair, tuple) and len(pair) == 2
                    and all(isinstance(s, str) for s in pair)):
                raise StreamError(f"entries[{i}]: Expected (key, value) strings, got {pair!r:.60}")
            if not pair[0] or any("\0" in s for s in pair):
                raise StreamError(f"entries[{i}]: Expected a non-empty key and no NULs, "
                                  f"got {pair!r:.60}")

    def encode_body(self) -> bytes:
        data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in self.entries)
        return EMULATOR_HDR.pack(self.emulator_id, self.index) + data

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < EMULATOR_HDR.size:
            raise StreamError(f"body: Expected at least {EMULATOR_HDR.size} bytes, got {len(body)}")
        emulator_id, index = EMULATOR_HDR.unpack_from(body)
        data = body[EMULATOR_HDR.size:]
        entries: tuple[tuple[str, str], ...] = ()
        if data:
            if data[-1] != 0:
                raise StreamError(f"data: Expected a NUL terminator, got {data[-1]:#04x}")
            parts = data[:-1].split(b"\0")
            if len(parts) % 2:
                raise StreamError(f"data: Expected an even number of strings, got {len(parts)}")
            try:
                strings = [p.decode() for p in parts]
            except UnicodeDecodeError as exc:
                raise StreamError(f"data: Expected UTF-8 strings, got {exc.object[:40]!r}") from None
            entries = tuple(zip(strings[0::2], strings[1::2]))
        return cls(emulator_id, index, entries)


@dataclass(frozen=True, slots=True)
class EmulatorContext:
    """EMULATOR_CONTEXT: an emulator's opaque save blob."""

    REC_TYPE: ClassVar[int] = REC_TYPE_EMULATOR_CONTEXT
    NAME: ClassVar[str] = "EMULATOR_CONTEXT"
    MAX_LENGTH: ClassVar[int] = EMULATOR_HDR.size + EMULATOR_BLOB_MAX

    emulator_id: int
    index: int
    blob: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_emulator(self.emulator_id, self.index)
        check_bytes("blob", self.blob)
        if len(self.blob) > EMULATOR_BLOB_MAX:
            raise StreamError(f"blob: Expected at most {EMULATOR_BLOB_MAX} bytes, "
                              f"got {len(self.blob)}")

    def encode_body(self) -> bytes:
        return EMULATOR_HDR.pack(self.emulator_id, self.index) + self.blob

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < EMULATOR_HDR.size:
            raise StreamError(f"body: Expected at least {EMULATOR_HDR.size} bytes, got {len(body)}")
        emulator_id, index = EMULATOR_HDR.unpack_from(body)
        return cls(emulator_id, index, bytes(body[EMULATOR_HDR.size:]))


@dataclass(frozen=True, slots=True)
class CheckpointState:
    """CHECKPOINT_STATE (COLO): a struct libxl_sr_checkpoint_state."""

    REC_TYPE: ClassVar[int] = REC_TYPE_CHECKPOINT_STATE
    NAME: ClassVar[str] = "CHECKPOINT_STATE"
    MAX_LENGTH: ClassVar[int] = CHECKPOINT_STATE.size

    state_id: int

    def __post_init__(self) -> None:
        if self.state_id not in (CHECKPOINT_NEW, CHECKPOINT_SVM_SUSPENDED,
                                 CHECKPOINT_SVM_READY, CHECKPOINT_SVM_RESUMED):
            raise StreamError(f"id: Expected CHECKPOINT_NEW..CHECKPOINT_SVM_RESUMED (0-3), "
                              f"got {self.state_id!r}")

    def encode_body(self) -> bytes:
        return CHECKPOINT_STATE.pack(self.state_id)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) != CHECKPOINT_STATE.size:
            raise StreamError(f"body: Expected length {CHECKPOINT_STATE.size}, got {len(body)}")
        return cls(CHECKPOINT_STATE.unpack(body)[0])


LibxlRecord = (LibxlEnd | LibxcContext | EmulatorXenstoreData | EmulatorContext
               | CheckpointEnd | CheckpointState)

#: type -> record class: the reader's decode table
RECORDS: dict[int, type[Record]] = {cls.REC_TYPE: cls for cls in (
    LibxlEnd, LibxcContext, EmulatorXenstoreData, EmulatorContext, CheckpointEnd,
    CheckpointState)}
