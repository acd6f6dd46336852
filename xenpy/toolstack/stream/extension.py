"""Where xenpy's own domain state travels in a Xen-format save file.

Real Xen does not save event channels, the grant table, the domain's XenStore
subtree or the console ring position: the PV guest re-establishes them on resume
and libxl rebuilds XenStore from the domain config.  xenpy wants to carry them, yet
every file it writes must still be accepted by Xen's ``verify-stream-v2`` (and,
ideally, be restorable by a real ``xl restore``).  The candidates, checked against
Xen 4.17's verifier and libxl/xl:

==============================  ==========  =============================================
carrier                         verifier    real xl/libxl restore of a PV domain
==============================  ==========  =============================================
new libxc/libxl record type     rejects     rejects ("unrecognised record")
libxc optional record (bit 31)  rejects     -
libxl EMULATOR_XENSTORE_DATA    rejects*    rejects (no device model)
libxl EMULATOR_CONTEXT          accepts     rejects (no device model)
extra key in the JSON config    accepts     libxl's JSON parser may reject unknown keys
**tail of the xl optional data**  accepts   ignores it: xl.h says "skip, or skip tail,
                                                if not understood"; xl reads the config
                                                length and config, then frees the rest
==============================  ==========  =============================================

(*) a python3 bytes-vs-str comparison makes 4.17's verifier reject any data in it.

So the canonical carrier is the **tail of the xl header's optional data**, after the
``u32 config_len`` and the JSON config.  For a live migration, where the final state
is only known once the guest is suspended (long after the header was sent), the same
encoded blob may instead travel in a libxl EMULATOR_CONTEXT record with
``emulator_id == EMULATOR_UNKNOWN`` and ``index == XENPY_EMULATOR_INDEX``, written
just before the libxl END: the verifier accepts it, only xenpy restores such a stream.

Encoding (little-endian, no padding)::

    0   magic        8 octets  b"XenpyExt"
    8   version      u32       1
    12  nr_sections  u32       <= MAX_SECTIONS
    16  section[]:   u16 name_len, u16 reserved (0), u32 data_len, name, data

Section names are short ASCII identifiers, unique within the blob; their data is
owned by the subsystem that names it (canonical JSON by convention, see
``with_json``/``json_section``; never pickle).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from xenpy.errors import StreamError

from .framing import check_bytes
from .libxl import EMULATOR_UNKNOWN, EmulatorContext

MAGIC = b"XenpyExt"
VERSION = 1
HEADER = struct.Struct("<8sII")
SECTION = struct.Struct("<HHI")
MAX_SECTIONS = 64
MAX_SIZE = 16 << 20
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

#: the section names xenpy's subsystems use
SECTION_EVTCHN = "evtchn"
SECTION_GNTTAB = "gnttab"
SECTION_XENSTORE = "xenstore"
SECTION_CONSOLE = "console"

#: EMULATOR_CONTEXT index marking the xenpy extension ("xenp" in little-endian ASCII)
XENPY_EMULATOR_INDEX = int.from_bytes(b"xenp", "little")


@dataclass(frozen=True, slots=True)
class XenpyExtension:
    """Named opaque sections of xenpy-only domain state."""

    NAME: ClassVar[str] = "xenpy extension"

    sections: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.sections, tuple) or len(self.sections) > MAX_SECTIONS:
            raise StreamError(f"sections: Expected a tuple of at most {MAX_SECTIONS}, "
                              f"got {self.sections!r:.60}")
        seen: set[str] = set()
        size = HEADER.size
        for i, pair in enumerate(self.sections):
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise StreamError(f"sections[{i}]: Expected (name, bytes), got {pair!r:.60}")
            name, data = pair
            if not NAME_RE.fullmatch(name):
                raise StreamError(f"sections[{i}] name: Expected {NAME_RE.pattern}, got {name!r:.70}")
            if name in seen:
                raise StreamError(f"sections[{i}] name: Expected a unique name, got {name!r} again")
            seen.add(name)
            check_bytes(f"section {name!r}", data)
            size += SECTION.size + len(name) + len(data)
        if size > MAX_SIZE:
            raise StreamError(f"size: Expected at most {MAX_SIZE} bytes, got {size}")

    def get(self, name: str) -> bytes | None:
        return dict(self.sections).get(name)

    def with_section(self, name: str, data: bytes) -> Self:
        """A copy with ``name`` set to ``data`` (replacing an existing section)."""
        rest = tuple(p for p in self.sections if p[0] != name)
        return type(self)(rest + ((name, data),))

    def with_json(self, name: str, value: object) -> Self:
        """A copy with ``name`` holding ``value`` as canonical JSON."""
        try:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise StreamError(f"section {name!r}: Expected JSON-serialisable data, got {exc}") from None
        return self.with_section(name, text.encode())

    def json_section(self, name: str) -> object:
        """The JSON value of section ``name`` (None if absent)."""
        data = self.get(name)
        if data is None:
            return None
        try:
            return json.loads(data.decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise StreamError(f"section {name!r}: Expected JSON, got {data[:40]!r} ({exc})") from None

    def encode(self) -> bytes:
        out = [HEADER.pack(MAGIC, VERSION, len(self.sections))]
        for name, data in self.sections:
            raw = name.encode("ascii")
            out += [SECTION.pack(len(raw), 0, len(data)), raw, data]
        return b"".join(out)

    @classmethod
    def decode(cls, blob: bytes) -> Self:
        if len(blob) > MAX_SIZE:
            raise StreamError(f"size: Expected at most {MAX_SIZE} bytes, got {len(blob)}")
        if len(blob) < HEADER.size:
            raise StreamError(f"header: Expected {HEADER.size} bytes, got {len(blob)}")
        magic, version, count = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise StreamError(f"magic: Expected {MAGIC!r}, got {magic!r}")
        if version != VERSION:
            raise StreamError(f"version: Expected {VERSION}, got {version}")
        if count > MAX_SECTIONS:
            raise StreamError(f"nr_sections: Expected at most {MAX_SECTIONS}, got {count}")
        pos = HEADER.size
        sections = []
        for i in range(count):
            if len(blob) - pos < SECTION.size:
                raise StreamError(f"section[{i}] header at +{pos}: Expected {SECTION.size} bytes, "
                                  f"got {len(blob) - pos}")
            name_len, res, data_len = SECTION.unpack_from(blob, pos)
            pos += SECTION.size
            if res:
                raise StreamError(f"section[{i}] reserved: Expected 0, got {res:#x}")
            if len(blob) - pos < name_len + data_len:
                raise StreamError(f"section[{i}] at +{pos}: Expected {name_len + data_len} bytes, "
                                  f"got {len(blob) - pos}")
            try:
                name = blob[pos:pos + name_len].decode("ascii")
            except UnicodeDecodeError:
                raise StreamError(f"section[{i}] name: Expected ASCII, "
                                  f"got {blob[pos:pos + name_len]!r:.70}") from None
            pos += name_len
            sections.append((name, bytes(blob[pos:pos + data_len])))
            pos += data_len
        if pos != len(blob):
            raise StreamError(f"length: Expected {pos} bytes, got {len(blob)} (trailing data)")
        return cls(tuple(sections))

    def to_record(self) -> EmulatorContext:
        """The EMULATOR_CONTEXT record that carries this extension in a libxl stream."""
        return EmulatorContext(EMULATOR_UNKNOWN, XENPY_EMULATOR_INDEX, self.encode())

    @classmethod
    def from_record(cls, record: EmulatorContext) -> Self | None:
        """The extension in ``record``, or None if it is a real emulator's context."""
        if record.emulator_id != EMULATOR_UNKNOWN or record.index != XENPY_EMULATOR_INDEX:
            return None
        return cls.decode(record.blob)
