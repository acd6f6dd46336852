"""libxc migration stream v2/v3 (docs/specs/libxc-migration-stream.pandoc).

The libxc stream carries the domain itself: an image header (big-endian, "XENF",
version 2 or 3), a domain header (x86 PV, page shift 12, Xen version), then records
until END (or CHECKPOINT in a checkpointed stream, which hands the stream back to
the libxl layer).

Each record here mirrors a body in the spec and Xen's own verifier
(tools/python/xen/migration/libxc.py, which is what must accept our files):

* exact struct formats, reserved fields zero, padding to 8 octets (framing.py);
* PAGE_DATA: ``count`` u64 pfn words whose top nibble is the XEN_DOMCTL_PFINFO_*
  type (public/domctl.h) shifted up by 32; only NOTAB and L1..L4 (pinned or not)
  pages carry 4096 octets of data, BROKEN / XALLOC / XTAB carry none;
* the record-local rules live in ``__post_init__``; the rules that need earlier
  records (guest width, stream version, domain type) live in sequence.py.

Record types that Xen itself deprecated or that its verifier refuses (TOOLSTACK,
CHECKPOINT_DIRTY_PFN_LIST) are not implemented: the reader rejects them by name.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Self

from xenpy.abi.xen import PAGE_SHIFT, PAGE_SIZE
from xenpy.errors import StreamError

from .framing import Record, check_bytes, check_empty, check_exact_length, check_uint

# --- image header ------------------------------------------------------------------------------
IHDR = struct.Struct(">QIIHHI")  # marker, id, version, options, reserved16, reserved32
IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_IDENT = 0x58454E46  # "XENF"
IHDR_VERSIONS = (2, 3)
IHDR_OPT_BIG_ENDIAN = 1 << 0
IHDR_OPT_RESZ_MASK = 0xFFFE

# --- domain header -----------------------------------------------------------------------------
DHDR = struct.Struct("<IHHII")  # type, page_shift, reserved, xen_major, xen_minor
DHDR_TYPE_X86_PV = 0x00000001
DHDR_TYPE_X86_HVM = 0x00000002
#: the types Xen's verifier knows (PVH and ARM are reserved in 4.17's verifier)
DHDR_TYPES = {DHDR_TYPE_X86_PV: "x86 PV", DHDR_TYPE_X86_HVM: "x86 HVM"}

# --- record types ------------------------------------------------------------------------------
REC_TYPE_END = 0x00000000
REC_TYPE_PAGE_DATA = 0x00000001
REC_TYPE_X86_PV_INFO = 0x00000002
REC_TYPE_X86_PV_P2M_FRAMES = 0x00000003
REC_TYPE_X86_PV_VCPU_BASIC = 0x00000004
REC_TYPE_X86_PV_VCPU_EXTENDED = 0x00000005
REC_TYPE_X86_PV_VCPU_XSAVE = 0x00000006
REC_TYPE_SHARED_INFO = 0x00000007
REC_TYPE_X86_TSC_INFO = 0x00000008
REC_TYPE_HVM_CONTEXT = 0x00000009
REC_TYPE_HVM_PARAMS = 0x0000000A
REC_TYPE_TOOLSTACK = 0x0000000B
REC_TYPE_X86_PV_VCPU_MSRS = 0x0000000C
REC_TYPE_VERIFY = 0x0000000D
REC_TYPE_CHECKPOINT = 0x0000000E
REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST = 0x0000000F
REC_TYPE_STATIC_DATA_END = 0x00000010
REC_TYPE_X86_CPUID_POLICY = 0x00000011
REC_TYPE_X86_MSR_POLICY = 0x00000012

#: types the spec defines but xenpy refuses, with the reason given to the user
UNSUPPORTED_TYPES = {
    REC_TYPE_TOOLSTACK: "TOOLSTACK (deprecated by Xen; its verifier rejects it)",
    REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: "CHECKPOINT_DIRTY_PFN_LIST (COLO only; unsupported)",
}

# --- XEN_DOMCTL_PFINFO_* (public/domctl.h), as the 32-bit values of the header ----------------
XEN_DOMCTL_PFINFO_LTAB_SHIFT = 28
XEN_DOMCTL_PFINFO_NOTAB = 0x0 << 28
XEN_DOMCTL_PFINFO_L1TAB = 0x1 << 28
XEN_DOMCTL_PFINFO_L2TAB = 0x2 << 28
XEN_DOMCTL_PFINFO_L3TAB = 0x3 << 28
XEN_DOMCTL_PFINFO_L4TAB = 0x4 << 28
XEN_DOMCTL_PFINFO_LTABTYPE_MASK = 0x7 << 28
XEN_DOMCTL_PFINFO_LPINTAB = 0x1 << 31
XEN_DOMCTL_PFINFO_XTAB = 0xF << 28
XEN_DOMCTL_PFINFO_XALLOC = 0xE << 28
XEN_DOMCTL_PFINFO_BROKEN = 0xD << 28
XEN_DOMCTL_PFINFO_LTAB_MASK = 0xF << 28

#: the stream stores the PFINFO type in bits 63-60 of each pfn word: shifted by 32
PAGE_DATA_TYPE_SHIFT = 32
PAGE_DATA_PFN_MASK = (1 << 52) - 1
PAGE_DATA_RESERVED_MASK = ((1 << 60) - 1) & ~PAGE_DATA_PFN_MASK

#: page types that carry page contents in the record
DATA_PAGE_TYPES = frozenset(
    t | pin
    for t in (XEN_DOMCTL_PFINFO_NOTAB, XEN_DOMCTL_PFINFO_L1TAB, XEN_DOMCTL_PFINFO_L2TAB,
              XEN_DOMCTL_PFINFO_L3TAB, XEN_DOMCTL_PFINFO_L4TAB)
    for pin in (0, XEN_DOMCTL_PFINFO_LPINTAB)
) - {XEN_DOMCTL_PFINFO_LPINTAB}  # a "pinned NOTAB" (0x8) is reserved
VALID_PAGE_TYPES = DATA_PAGE_TYPES | {
    XEN_DOMCTL_PFINFO_BROKEN, XEN_DOMCTL_PFINFO_XALLOC, XEN_DOMCTL_PFINFO_XTAB}

#: libxc's MAX_BATCH_SIZE: the saver never sends more pages in one PAGE_DATA
PAGE_DATA_MAX_COUNT = 1024

# --- struct sizes the restorer checks (public/arch-x86/xen-x86_{32,64}.h) ---------------------
#: sizeof(vcpu_guest_context_x86_32_t) / _x86_64_t; libxc refuses any other basic size
VCPU_GUEST_CONTEXT_SIZE = {4: 2800, 8: 5168}
#: sizeof(struct xen_domctl_ext_vcpucontext) upper bound ("up to 128 bytes")
EXT_VCPUCONTEXT_MAX = 128
#: cap on the opaque per-vCPU and HVM blobs (an XSAVE area is ~11 KiB with AMX)
BLOB_MAX = 1 << 20

PV_INFO = struct.Struct("<BBHI")           # guest_width, pt_levels, reserved16, reserved32
P2M_FRAMES_HDR = struct.Struct("<II")      # p2m_start_pfn, p2m_end_pfn (then u64 pfns)
VCPU_HDR = struct.Struct("<II")            # vcpu_id, reserved
VCPU_MSR = struct.Struct("<IIQ")           # struct xen_domctl_vcpu_msr: index, reserved, value
TSC_INFO = struct.Struct("<IIQII")         # mode, khz, nsec, incarnation, reserved
PAGE_DATA_HDR = struct.Struct("<II")       # count, reserved
HVM_PARAMS_HDR = struct.Struct("<II")      # count, reserved
HVM_PARAM = struct.Struct("<QQ")           # index, value
CPUID_LEAF = struct.Struct("<IIIIII")      # xen_cpuid_leaf_t: leaf, subleaf, a, b, c, d
MSR_ENTRY = struct.Struct("<IIQ")          # xen_msr_entry_t: idx, flags (MBZ), val


def page_type_has_data(page_type: int) -> bool:
    """Whether a PAGE_DATA entry of this XEN_DOMCTL_PFINFO_* type carries contents."""
    return page_type in DATA_PAGE_TYPES


def page_type_name(page_type: int) -> str:
    base = {XEN_DOMCTL_PFINFO_NOTAB: "NOTAB", XEN_DOMCTL_PFINFO_L1TAB: "L1TAB",
            XEN_DOMCTL_PFINFO_L2TAB: "L2TAB", XEN_DOMCTL_PFINFO_L3TAB: "L3TAB",
            XEN_DOMCTL_PFINFO_L4TAB: "L4TAB", XEN_DOMCTL_PFINFO_BROKEN: "BROKEN",
            XEN_DOMCTL_PFINFO_XALLOC: "XALLOC", XEN_DOMCTL_PFINFO_XTAB: "XTAB"}
    if page_type in base:
        return base[page_type]
    if page_type in DATA_PAGE_TYPES:
        return base[page_type & ~XEN_DOMCTL_PFINFO_LPINTAB] + "|LPINTAB"
    return f"{page_type:#x}"


# --- headers -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageHeader:
    """The libxc image header: identifies the stream and its spec version."""

    NAME: ClassVar[str] = "libxc image header"
    SIZE: ClassVar[int] = IHDR.size

    version: int = 3

    def __post_init__(self) -> None:
        if self.version not in IHDR_VERSIONS:
            raise StreamError(f"version: Expected 2 or 3, got {self.version!r}")

    def encode(self) -> bytes:
        return IHDR.pack(IHDR_MARKER, IHDR_IDENT, self.version, 0, 0, 0)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        marker, ident, version, options, res16, res32 = IHDR.unpack(data)
        if marker != IHDR_MARKER:
            raise StreamError(f"marker: Expected {IHDR_MARKER:#x}, got {marker:#x}")
        if ident != IHDR_IDENT:
            raise StreamError(f"id: Expected {IHDR_IDENT:#x} ('XENF'), got {ident:#x}")
        if options & IHDR_OPT_RESZ_MASK:
            raise StreamError(f"options: Expected reserved bits 1-15 clear, got {options:#x}")
        if options & IHDR_OPT_BIG_ENDIAN:
            raise StreamError("options: Expected little-endian (bit 0 clear), got big-endian")
        if res16 or res32:
            raise StreamError(f"reserved: Expected 0, got {res16:#x}:{res32:#x}")
        return cls(version)


@dataclass(frozen=True, slots=True)
class DomainHeader:
    """The libxc domain header: guest type, page size and the saving Xen's version."""

    NAME: ClassVar[str] = "libxc domain header"
    SIZE: ClassVar[int] = DHDR.size

    guest_type: int = DHDR_TYPE_X86_PV
    xen_major: int = 4
    xen_minor: int = 17
    page_shift: int = PAGE_SHIFT

    def __post_init__(self) -> None:
        if self.guest_type not in DHDR_TYPES:
            raise StreamError(f"type: Expected x86 PV (1) or x86 HVM (2), got {self.guest_type!r}")
        if self.page_shift != PAGE_SHIFT:
            raise StreamError(f"page_shift: Expected {PAGE_SHIFT}, got {self.page_shift!r}")
        check_uint("xen_major", self.xen_major, 32)
        check_uint("xen_minor", self.xen_minor, 32)

    def encode(self) -> bytes:
        return DHDR.pack(self.guest_type, self.page_shift, 0, self.xen_major, self.xen_minor)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        gtype, page_shift, res, major, minor = DHDR.unpack(data)
        if res:
            raise StreamError(f"reserved: Expected 0, got {res:#x}")
        return cls(gtype, major, minor, page_shift)


# --- records -----------------------------------------------------------------------------------
class _EmptyRecord:
    """Records whose body is empty (END, VERIFY, CHECKPOINT, STATIC_DATA_END)."""

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
class End(_EmptyRecord):
    """END: the last record of the libxc stream."""

    REC_TYPE: ClassVar[int] = REC_TYPE_END
    NAME: ClassVar[str] = "END"


@dataclass(frozen=True, slots=True)
class Verify(_EmptyRecord):
    """VERIFY: every page was sent; what follows is re-sent for checking."""

    REC_TYPE: ClassVar[int] = REC_TYPE_VERIFY
    NAME: ClassVar[str] = "VERIFY"


@dataclass(frozen=True, slots=True)
class Checkpoint(_EmptyRecord):
    """CHECKPOINT: the records so far are a consistent state; hand back to libxl."""

    REC_TYPE: ClassVar[int] = REC_TYPE_CHECKPOINT
    NAME: ClassVar[str] = "CHECKPOINT"


@dataclass(frozen=True, slots=True)
class StaticDataEnd(_EmptyRecord):
    """STATIC_DATA_END (v3): no more CPUID/MSR policy records follow."""

    REC_TYPE: ClassVar[int] = REC_TYPE_STATIC_DATA_END
    NAME: ClassVar[str] = "STATIC_DATA_END"


@dataclass(frozen=True, slots=True)
class PageData:
    """PAGE_DATA: a batch of pfns with their XEN_DOMCTL_PFINFO_* types.

    ``pages`` holds one 4096-octet page for each entry whose type carries data
    (``page_type_has_data``), in pfn order; BROKEN, XALLOC and XTAB entries have
    none.  ``items()`` pairs them back up.
    """

    REC_TYPE: ClassVar[int] = REC_TYPE_PAGE_DATA
    NAME: ClassVar[str] = "PAGE_DATA"
    MAX_LENGTH: ClassVar[int] = PAGE_DATA_HDR.size + PAGE_DATA_MAX_COUNT * (8 + PAGE_SIZE)

    pfns: tuple[int, ...]
    types: tuple[int, ...]
    pages: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pfns, tuple) or not isinstance(self.types, tuple) \
                or not isinstance(self.pages, tuple):
            raise StreamError("pfns/types/pages: Expected tuples, got "
                              f"{type(self.pfns).__name__}/{type(self.types).__name__}/"
                              f"{type(self.pages).__name__}")
        if not 1 <= len(self.pfns) <= PAGE_DATA_MAX_COUNT:
            raise StreamError(f"count: Expected 1..{PAGE_DATA_MAX_COUNT}, got {len(self.pfns)}")
        if len(self.types) != len(self.pfns):
            raise StreamError(f"types: Expected {len(self.pfns)} entries (one per pfn), "
                              f"got {len(self.types)}")
        with_data = 0
        for i, (pfn, ptype) in enumerate(zip(self.pfns, self.types)):
            check_uint(f"pfn[{i}]", pfn, 52)
            if ptype not in VALID_PAGE_TYPES:
                raise StreamError(f"type of pfn[{i}]: Expected an XEN_DOMCTL_PFINFO_* type, "
                                  f"got {ptype!r:.20}")
            with_data += ptype in DATA_PAGE_TYPES
        if len(self.pages) != with_data:
            raise StreamError(f"pages: Expected {with_data} (one per pfn with data), "
                              f"got {len(self.pages)}")
        for i, page in enumerate(self.pages):
            check_bytes(f"pages[{i}]", page)
            check_exact_length(f"pages[{i}]", page, PAGE_SIZE)

    def items(self) -> Iterator[tuple[int, int, bytes | None]]:
        """(pfn, type, contents or None) for every entry."""
        pages = iter(self.pages)
        for pfn, ptype in zip(self.pfns, self.types):
            yield pfn, ptype, next(pages) if ptype in DATA_PAGE_TYPES else None

    def encode_body(self) -> bytes:
        words = [pfn | (t << PAGE_DATA_TYPE_SHIFT) for pfn, t in zip(self.pfns, self.types)]
        return b"".join((PAGE_DATA_HDR.pack(len(words), 0),
                         struct.pack(f"<{len(words)}Q", *words), *self.pages))

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < PAGE_DATA_HDR.size:
            raise StreamError(f"body: Expected at least {PAGE_DATA_HDR.size} bytes, got {len(body)}")
        count, res = PAGE_DATA_HDR.unpack_from(body)
        if res:
            raise StreamError(f"reserved: Expected 0, got {res:#x}")
        if not 1 <= count <= PAGE_DATA_MAX_COUNT:
            raise StreamError(f"count: Expected 1..{PAGE_DATA_MAX_COUNT}, got {count}")
        end_pfns = PAGE_DATA_HDR.size + 8 * count
        if len(body) < end_pfns:
            raise StreamError(f"pfn array: Expected {8 * count} bytes, "
                              f"got {len(body) - PAGE_DATA_HDR.size}")
        words = struct.unpack_from(f"<{count}Q", body, PAGE_DATA_HDR.size)
        pfns, types = [], []
        for i, word in enumerate(words):
            if word & PAGE_DATA_RESERVED_MASK:
                raise StreamError(f"pfn[{i}] bits 52-59: Expected 0, got {word:#018x}")
            ptype = (word >> PAGE_DATA_TYPE_SHIFT) & XEN_DOMCTL_PFINFO_LTAB_MASK
            if ptype not in VALID_PAGE_TYPES:
                raise StreamError(f"pfn[{i}] type: Expected an XEN_DOMCTL_PFINFO_* type, "
                                  f"got {ptype >> XEN_DOMCTL_PFINFO_LTAB_SHIFT:#x}")
            pfns.append(word & PAGE_DATA_PFN_MASK)
            types.append(ptype)
        nr_pages = sum(t in DATA_PAGE_TYPES for t in types)
        expected = end_pfns + nr_pages * PAGE_SIZE
        if len(body) != expected:
            raise StreamError(f"length: Expected {PAGE_DATA_HDR.size} + {8 * count} + "
                              f"{nr_pages * PAGE_SIZE} = {expected}, got {len(body)}")
        pages = tuple(body[end_pfns + i * PAGE_SIZE:end_pfns + (i + 1) * PAGE_SIZE]
                      for i in range(nr_pages))
        return cls(tuple(pfns), tuple(types), pages)


@dataclass(frozen=True, slots=True)
class X86PvInfo:
    """X86_PV_INFO: guest width (4 or 8 octets) and page-table levels (3 or 4).

    A 64-bit Xen only runs 32-bit PV guests in PAE mode, so width 4 pairs with 3
    levels and width 8 with 4 (libxc's restore refuses any other combination).
    """

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_PV_INFO
    NAME: ClassVar[str] = "X86_PV_INFO"
    MAX_LENGTH: ClassVar[int] = PV_INFO.size

    guest_width: int
    pt_levels: int

    def __post_init__(self) -> None:
        if self.guest_width not in (4, 8):
            raise StreamError(f"guest_width: Expected 4 or 8, got {self.guest_width!r}")
        if self.pt_levels not in (3, 4):
            raise StreamError(f"pt_levels: Expected 3 or 4, got {self.pt_levels!r}")
        expected = 3 if self.guest_width == 4 else 4
        if self.pt_levels != expected:
            raise StreamError(f"pt_levels: Expected {expected} for guest_width "
                              f"{self.guest_width}, got {self.pt_levels}")

    def encode_body(self) -> bytes:
        return PV_INFO.pack(self.guest_width, self.pt_levels, 0, 0)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        check_exact_length("body", body, PV_INFO.size)
        width, levels, res16, res32 = PV_INFO.unpack(body)
        if res16 or res32:
            raise StreamError(f"reserved: Expected 0, got {res16:#x}:{res32:#x}")
        return cls(width, levels)


@dataclass(frozen=True, slots=True)
class X86PvP2mFrames:
    """X86_PV_P2M_FRAMES: the pfns of the guest's p2m frames covering start..end pfn.

    The number of frames depends on the guest width (a frame holds 4096/width
    entries); the sequencer checks it once X86_PV_INFO has been seen.
    """

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_PV_P2M_FRAMES
    NAME: ClassVar[str] = "X86_PV_P2M_FRAMES"
    MAX_LENGTH: ClassVar[int] = P2M_FRAMES_HDR.size + 8 * (1 << 20)

    start_pfn: int
    end_pfn: int
    frames: tuple[int, ...]

    def __post_init__(self) -> None:
        check_uint("p2m_start_pfn", self.start_pfn, 32)
        check_uint("p2m_end_pfn", self.end_pfn, 32)
        if self.end_pfn < self.start_pfn:
            raise StreamError(f"p2m_end_pfn: Expected >= p2m_start_pfn {self.start_pfn:#x}, "
                              f"got {self.end_pfn:#x}")
        if not isinstance(self.frames, tuple) or not self.frames:
            raise StreamError(f"p2m_pfn: Expected a non-empty tuple, got {self.frames!r:.40}")
        if len(self.frames) > (self.MAX_LENGTH - P2M_FRAMES_HDR.size) // 8:
            raise StreamError(f"p2m_pfn: Expected at most {(self.MAX_LENGTH - 8) // 8} frames, "
                              f"got {len(self.frames)}")
        for i, frame_pfn in enumerate(self.frames):
            check_uint(f"p2m_pfn[{i}]", frame_pfn, 64)

    def expected_frames(self, guest_width: int) -> int:
        """Frames libxc expects for this pfn range at this guest width."""
        fpp = PAGE_SIZE // guest_width
        return self.end_pfn // fpp + 1 - self.start_pfn // fpp

    def encode_body(self) -> bytes:
        return P2M_FRAMES_HDR.pack(self.start_pfn, self.end_pfn) + \
            struct.pack(f"<{len(self.frames)}Q", *self.frames)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < P2M_FRAMES_HDR.size + 8 or len(body) % 8:
            raise StreamError(f"length: Expected a multiple of 8 and at least 16, got {len(body)}")
        start, end = P2M_FRAMES_HDR.unpack_from(body)
        n = (len(body) - P2M_FRAMES_HDR.size) // 8
        return cls(start, end, struct.unpack_from(f"<{n}Q", body, P2M_FRAMES_HDR.size))


class _VcpuBlob:
    """X86_PV_VCPU_{BASIC,EXTENDED,XSAVE}: a vcpu_id, a reserved word, an opaque blob."""

    __slots__ = ()
    REC_TYPE: ClassVar[int]
    NAME: ClassVar[str]
    MAX_CONTEXT: ClassVar[int] = BLOB_MAX
    vcpu_id: int
    context: bytes

    def __post_init__(self) -> None:
        check_uint("vcpu_id", self.vcpu_id, 32)
        check_bytes("context", self.context)
        if len(self.context) > self.MAX_CONTEXT:
            raise StreamError(f"context: Expected at most {self.MAX_CONTEXT} bytes, "
                              f"got {len(self.context)}")

    def encode_body(self) -> bytes:
        return VCPU_HDR.pack(self.vcpu_id, 0) + self.context

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < VCPU_HDR.size:
            raise StreamError(f"body: Expected at least {VCPU_HDR.size} bytes, got {len(body)}")
        vcpu_id, res = VCPU_HDR.unpack_from(body)
        if res:
            raise StreamError(f"reserved: Expected 0, got {res:#x}")
        return cls(vcpu_id, body[VCPU_HDR.size:])  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class X86PvVcpuBasic(_VcpuBlob):
    """X86_PV_VCPU_BASIC: a vcpu_guest_context_x86_{32,64}_t (2800 / 5168 octets)."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_PV_VCPU_BASIC
    NAME: ClassVar[str] = "X86_PV_VCPU_BASIC"
    MAX_CONTEXT: ClassVar[int] = max(VCPU_GUEST_CONTEXT_SIZE.values())
    MAX_LENGTH: ClassVar[int] = VCPU_HDR.size + MAX_CONTEXT

    vcpu_id: int
    context: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class X86PvVcpuExtended(_VcpuBlob):
    """X86_PV_VCPU_EXTENDED: a struct xen_domctl_ext_vcpucontext (at most 128 octets)."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_PV_VCPU_EXTENDED
    NAME: ClassVar[str] = "X86_PV_VCPU_EXTENDED"
    MAX_CONTEXT: ClassVar[int] = EXT_VCPUCONTEXT_MAX
    MAX_LENGTH: ClassVar[int] = VCPU_HDR.size + MAX_CONTEXT

    vcpu_id: int
    context: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class X86PvVcpuXsave(_VcpuBlob):
    """X86_PV_VCPU_XSAVE: the XEN_DOMCTL_getvcpuextstate buffer (xcr0, xcr0_accum, area)."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_PV_VCPU_XSAVE
    NAME: ClassVar[str] = "X86_PV_VCPU_XSAVE"
    MAX_LENGTH: ClassVar[int] = VCPU_HDR.size + BLOB_MAX

    vcpu_id: int
    context: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class VcpuMsr:
    """struct xen_domctl_vcpu_msr (the reserved word is always zero)."""

    index: int
    value: int

    def __post_init__(self) -> None:
        check_uint("msr index", self.index, 32)
        check_uint("msr value", self.value, 64)


@dataclass(frozen=True, slots=True)
class X86PvVcpuMsrs:
    """X86_PV_VCPU_MSRS: a vcpu's MSRs as xen_domctl_vcpu_msr entries."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_PV_VCPU_MSRS
    NAME: ClassVar[str] = "X86_PV_VCPU_MSRS"
    MAX_ENTRIES: ClassVar[int] = 1024
    MAX_LENGTH: ClassVar[int] = VCPU_HDR.size + MAX_ENTRIES * VCPU_MSR.size

    vcpu_id: int
    msrs: tuple[VcpuMsr, ...]

    def __post_init__(self) -> None:
        check_uint("vcpu_id", self.vcpu_id, 32)
        if not isinstance(self.msrs, tuple) or len(self.msrs) > self.MAX_ENTRIES:
            raise StreamError(f"msrs: Expected a tuple of at most {self.MAX_ENTRIES}, "
                              f"got {self.msrs!r:.40}")
        for i, msr in enumerate(self.msrs):
            if not isinstance(msr, VcpuMsr):
                raise StreamError(f"msrs[{i}]: Expected VcpuMsr, got {type(msr).__name__}")

    def encode_body(self) -> bytes:
        return VCPU_HDR.pack(self.vcpu_id, 0) + b"".join(
            VCPU_MSR.pack(m.index, 0, m.value) for m in self.msrs)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < VCPU_HDR.size or (len(body) - VCPU_HDR.size) % VCPU_MSR.size:
            raise StreamError(f"length: Expected 8 + a multiple of {VCPU_MSR.size}, "
                              f"got {len(body)}")
        vcpu_id, res = VCPU_HDR.unpack_from(body)
        if res:
            raise StreamError(f"reserved: Expected 0, got {res:#x}")
        msrs = []
        for i, (index, mres, value) in enumerate(VCPU_MSR.iter_unpack(body[VCPU_HDR.size:])):
            if mres:
                raise StreamError(f"msrs[{i}].reserved: Expected 0, got {mres:#x}")
            msrs.append(VcpuMsr(index, value))
        return cls(vcpu_id, tuple(msrs))


@dataclass(frozen=True, slots=True)
class SharedInfo:
    """SHARED_INFO: the guest's shared_info page, exactly one page."""

    REC_TYPE: ClassVar[int] = REC_TYPE_SHARED_INFO
    NAME: ClassVar[str] = "SHARED_INFO"
    MAX_LENGTH: ClassVar[int] = PAGE_SIZE

    page: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_bytes("shared_info", self.page)
        check_exact_length("shared_info", self.page, PAGE_SIZE)

    def encode_body(self) -> bytes:
        return self.page

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class X86TscInfo:
    """X86_TSC_INFO (the spec's TSC_INFO): XEN_DOMCTL_{get,set}tscinfo values."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_TSC_INFO
    NAME: ClassVar[str] = "X86_TSC_INFO"
    MAX_LENGTH: ClassVar[int] = TSC_INFO.size

    mode: int
    khz: int
    nsec: int
    incarnation: int

    def __post_init__(self) -> None:
        check_uint("mode", self.mode, 32)
        check_uint("khz", self.khz, 32)
        check_uint("nsec", self.nsec, 64)
        check_uint("incarnation", self.incarnation, 32)

    def encode_body(self) -> bytes:
        return TSC_INFO.pack(self.mode, self.khz, self.nsec, self.incarnation, 0)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        check_exact_length("body", body, TSC_INFO.size)
        mode, khz, nsec, incarnation, res = TSC_INFO.unpack(body)
        if res:
            raise StreamError(f"reserved: Expected 0, got {res:#x}")
        return cls(mode, khz, nsec, incarnation)


TscInfo = X86TscInfo


@dataclass(frozen=True, slots=True)
class HvmContext:
    """HVM_CONTEXT: the XEN_DOMCTL_gethvmcontext blob (non-empty)."""

    REC_TYPE: ClassVar[int] = REC_TYPE_HVM_CONTEXT
    NAME: ClassVar[str] = "HVM_CONTEXT"
    MAX_LENGTH: ClassVar[int] = BLOB_MAX

    blob: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_bytes("hvm_ctx", self.blob)
        if not 1 <= len(self.blob) <= BLOB_MAX:
            raise StreamError(f"hvm_ctx: Expected 1..{BLOB_MAX} bytes, got {len(self.blob)}")

    def encode_body(self) -> bytes:
        return self.blob

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class HvmParams:
    """HVM_PARAMS: (index, value) pairs of HVMOP_{get,set}_param."""

    REC_TYPE: ClassVar[int] = REC_TYPE_HVM_PARAMS
    NAME: ClassVar[str] = "HVM_PARAMS"
    MAX_ENTRIES: ClassVar[int] = 1024
    MAX_LENGTH: ClassVar[int] = HVM_PARAMS_HDR.size + MAX_ENTRIES * HVM_PARAM.size

    params: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.params, tuple) or len(self.params) > self.MAX_ENTRIES:
            raise StreamError(f"params: Expected a tuple of at most {self.MAX_ENTRIES}, "
                              f"got {self.params!r:.40}")
        for i, pair in enumerate(self.params):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise StreamError(f"params[{i}]: Expected (index, value), got {pair!r:.40}")
            check_uint(f"params[{i}].index", pair[0], 64)
            check_uint(f"params[{i}].value", pair[1], 64)

    def encode_body(self) -> bytes:
        return HVM_PARAMS_HDR.pack(len(self.params), 0) + b"".join(
            HVM_PARAM.pack(i, v) for i, v in self.params)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < HVM_PARAMS_HDR.size:
            raise StreamError(f"body: Expected at least {HVM_PARAMS_HDR.size} bytes, got {len(body)}")
        count, res = HVM_PARAMS_HDR.unpack_from(body)
        if res:
            raise StreamError(f"reserved: Expected 0, got {res:#x}")
        check_exact_length("body", body, HVM_PARAMS_HDR.size + count * HVM_PARAM.size)
        return cls(tuple(HVM_PARAM.iter_unpack(body[HVM_PARAMS_HDR.size:])))


@dataclass(frozen=True, slots=True)
class CpuidLeaf:
    """xen_cpuid_leaf_t."""

    leaf: int
    subleaf: int
    a: int
    b: int
    c: int
    d: int

    def __post_init__(self) -> None:
        for name in ("leaf", "subleaf", "a", "b", "c", "d"):
            check_uint(f"cpuid {name}", getattr(self, name), 32)


@dataclass(frozen=True, slots=True)
class X86CpuidPolicy:
    """X86_CPUID_POLICY (v3 static data): the domain's CPUID leaves."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_CPUID_POLICY
    NAME: ClassVar[str] = "X86_CPUID_POLICY"
    MAX_ENTRIES: ClassVar[int] = 4096
    MAX_LENGTH: ClassVar[int] = MAX_ENTRIES * CPUID_LEAF.size

    leaves: tuple[CpuidLeaf, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.leaves, tuple) or not 1 <= len(self.leaves) <= self.MAX_ENTRIES:
            raise StreamError(f"leaves: Expected a tuple of 1..{self.MAX_ENTRIES}, "
                              f"got {self.leaves!r:.40}")
        for i, leaf in enumerate(self.leaves):
            if not isinstance(leaf, CpuidLeaf):
                raise StreamError(f"leaves[{i}]: Expected CpuidLeaf, got {type(leaf).__name__}")

    def encode_body(self) -> bytes:
        return b"".join(CPUID_LEAF.pack(x.leaf, x.subleaf, x.a, x.b, x.c, x.d)
                        for x in self.leaves)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if not body or len(body) % CPUID_LEAF.size:
            raise StreamError(f"length: Expected a non-zero multiple of {CPUID_LEAF.size}, "
                              f"got {len(body)}")
        return cls(tuple(CpuidLeaf(*f) for f in CPUID_LEAF.iter_unpack(body)))


@dataclass(frozen=True, slots=True)
class MsrEntry:
    """xen_msr_entry_t (flags are reserved, must be zero)."""

    idx: int
    val: int

    def __post_init__(self) -> None:
        check_uint("msr idx", self.idx, 32)
        check_uint("msr val", self.val, 64)


@dataclass(frozen=True, slots=True)
class X86MsrPolicy:
    """X86_MSR_POLICY (v3 static data): the domain's MSR policy entries."""

    REC_TYPE: ClassVar[int] = REC_TYPE_X86_MSR_POLICY
    NAME: ClassVar[str] = "X86_MSR_POLICY"
    MAX_ENTRIES: ClassVar[int] = 4096
    MAX_LENGTH: ClassVar[int] = MAX_ENTRIES * MSR_ENTRY.size

    entries: tuple[MsrEntry, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple) or not 1 <= len(self.entries) <= self.MAX_ENTRIES:
            raise StreamError(f"entries: Expected a tuple of 1..{self.MAX_ENTRIES}, "
                              f"got {self.entries!r:.40}")
        for i, entry in enumerate(self.entries):
            if not isinstance(entry, MsrEntry):
                raise StreamError(f"entries[{i}]: Expected MsrEntry, got {type(entry).__name__}")

    def encode_body(self) -> bytes:
        return b"".join(MSR_ENTRY.pack(e.idx, 0, e.val) for e in self.entries)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if not body or len(body) % MSR_ENTRY.size:
            raise StreamError(f"length: Expected a non-zero multiple of {MSR_ENTRY.size}, "
                              f"got {len(body)}")
        entries = []
        for i, (idx, flags, val) in enumerate(MSR_ENTRY.iter_unpack(body)):
            if flags:
                raise StreamError(f"entries[{i}].flags: Expected 0, got {flags:#x}")
            entries.append(MsrEntry(idx, val))
        return cls(tuple(entries))


LibxcRecord = (End | PageData | X86PvInfo | X86PvP2mFrames | X86PvVcpuBasic | X86PvVcpuExtended
               | X86PvVcpuXsave | X86PvVcpuMsrs | SharedInfo | X86TscInfo | HvmContext
               | HvmParams | Verify | Checkpoint | StaticDataEnd | X86CpuidPolicy | X86MsrPolicy)

#: type -> record class: the reader's decode table
RECORDS: dict[int, type[Record]] = {cls.REC_TYPE: cls for cls in (
    End, PageData, X86PvInfo, X86PvP2mFrames, X86PvVcpuBasic, X86PvVcpuExtended,
    X86PvVcpuXsave, X86PvVcpuMsrs, SharedInfo, X86TscInfo, HvmContext, HvmParams, Verify,
    Checkpoint, StaticDataEnd, X86CpuidPolicy, X86MsrPolicy)}
