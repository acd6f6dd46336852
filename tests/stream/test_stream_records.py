"""Every record and header type: exact wire layout, round trip, field validation."""
from __future__ import annotations

import struct

import pytest

from xenpy.errors import StreamError
from xenpy.toolstack.stream import (
    Checkpoint, CheckpointEnd, CheckpointState, CpuidLeaf, DomainHeader, EmulatorContext,
    EmulatorXenstoreData, End, HvmContext, HvmParams, ImageHeader, LibxcContext, LibxlEnd,
    LibxlHeader, MsrEntry, PageData, SharedInfo, StaticDataEnd, VcpuMsr, Verify, X86CpuidPolicy,
    X86MsrPolicy, X86PvInfo, X86PvP2mFrames, X86PvVcpuBasic, X86PvVcpuExtended, X86PvVcpuMsrs,
    X86PvVcpuXsave, X86TscInfo, XenpyExtension, XlHeader, write_record)
from xenpy.toolstack.stream import libxc, libxl

PAGE = 4096
L = libxc

RECORDS = [
    End(), Verify(), Checkpoint(), StaticDataEnd(),
    PageData((0, 1, 2, 3, 4, 5, 6, 7, 0xF_FFFF_FFFF_FFFF),
             (L.XEN_DOMCTL_PFINFO_NOTAB, L.XEN_DOMCTL_PFINFO_L1TAB,
              L.XEN_DOMCTL_PFINFO_L2TAB | L.XEN_DOMCTL_PFINFO_LPINTAB, L.XEN_DOMCTL_PFINFO_L3TAB,
              L.XEN_DOMCTL_PFINFO_L4TAB | L.XEN_DOMCTL_PFINFO_LPINTAB, L.XEN_DOMCTL_PFINFO_XTAB,
              L.XEN_DOMCTL_PFINFO_XALLOC, L.XEN_DOMCTL_PFINFO_BROKEN, L.XEN_DOMCTL_PFINFO_NOTAB),
             tuple(bytes([i]) * PAGE for i in range(6))),
    X86PvInfo(4, 3), X86PvInfo(8, 4),
    X86PvP2mFrames(0, 1023, (17,)), X86PvP2mFrames(512, 2047, (1, 2, 3)),
    X86PvVcpuBasic(0, bytes(range(256)) * 10 + b"\x01" * 240),
    X86PvVcpuExtended(1, b"\xAA" * 128), X86PvVcpuXsave(2, b"\x07" + b"\0" * 1000),
    X86PvVcpuMsrs(3, (VcpuMsr(0xC0000103, 0xDEADBEEF), VcpuMsr(0x10, 1 << 63))),
    X86PvVcpuMsrs(4, ()),
    SharedInfo(bytes(range(256)) * 16),
    X86TscInfo(1, 3_000_000, (1 << 64) - 1, 7),
    HvmContext(b"\x01\x02\x03"), HvmParams(((1, 0xFEFFF), (17, 0xFEFFE))), HvmParams(()),
    X86CpuidPolicy((CpuidLeaf(0, 0xFFFFFFFF, 1, 2, 3, 4), CpuidLeaf(7, 0, 5, 6, 7, 8))),
    X86MsrPolicy((MsrEntry(0xCE, 1 << 40), MsrEntry(0x10A, 3))),
    LibxlEnd(), LibxcContext(), CheckpointEnd(), CheckpointState(libxl.CHECKPOINT_SVM_READY),
    EmulatorXenstoreData(libxl.EMULATOR_QEMU_UPSTREAM, 0, (("physmap/1", "x"), ("k", ""))),
    EmulatorXenstoreData(libxl.EMULATOR_UNKNOWN, 3),
    EmulatorContext(libxl.EMULATOR_QEMU_TRADITIONAL, 0, b"QEVM" + bytes(61)),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_record_round_trip(record: object) -> None:
    wire = write_record(record)  # type: ignore[arg-type]
    rec_type, length = struct.unpack_from("<II", wire)
    assert rec_type == record.REC_TYPE  # type: ignore[attr-defined]
    assert len(wire) % 8 == 0 and len(wire) - 8 - length in range(8)
    assert not any(wire[8 + length:]), "padding must be zero"
    decoded = type(record).decode_body(wire[8:8 + length])  # type: ignore[attr-defined]
    assert decoded == record
    assert write_record(decoded) == wire


@pytest.mark.parametrize("header", [
    ImageHeader(2), ImageHeader(3), DomainHeader(), DomainHeader(L.DHDR_TYPE_X86_HVM, 4, 19),
    LibxlHeader(), LibxlHeader(legacy=True),
], ids=repr)
def test_fixed_header_round_trip(header: object) -> None:
    wire = header.encode()  # type: ignore[attr-defined]
    assert len(wire) == type(header).SIZE  # type: ignore[attr-defined]
    assert type(header).decode(wire) == header  # type: ignore[attr-defined]


def test_wire_layouts_match_the_spec() -> None:
    assert ImageHeader(3).encode() == bytes.fromhex(
        "ffffffffffffffff" "58454e46" "00000003" "0000" "0000" "00000000")
    assert DomainHeader(L.DHDR_TYPE_X86_PV, 4, 17).encode() == bytes.fromhex(
        "01000000" "0c00" "0000" "04000000" "11000000")
    assert LibxlHeader().encode() == b"LibxlFmt" + bytes.fromhex("00000002" "00000000")
    assert write_record(X86PvInfo(8, 4)) == bytes.fromhex("0200000008000000" "0804000000000000")
    assert write_record(End()) == bytes(8)
    page_data = write_record(PageData((5,), (L.XEN_DOMCTL_PFINFO_L1TAB | L.XEN_DOMCTL_PFINFO_LPINTAB,),
                                      (b"\x11" * PAGE,)))
    assert struct.unpack_from("<IIIIQ", page_data) == (1, 8 + 8 + PAGE, 1, 0, 5 | (0x9 << 60))
    # XTAB/XALLOC/BROKEN carry no page: count 3, three words, no data
    assert write_record(PageData((1, 2, 3), (L.XEN_DOMCTL_PFINFO_XTAB, L.XEN_DOMCTL_PFINFO_XALLOC,
                                             L.XEN_DOMCTL_PFINFO_BROKEN), ())) == \
        struct.pack("<IIIIQQQ", 1, 32, 3, 0, 1 | 0xF << 60, 2 | 0xE << 60, 3 | 0xD << 60)
    assert write_record(X86TscInfo(1, 2, 3, 4)) == struct.pack("<IIIIQII", 8, 24, 1, 2, 3, 4, 0)
    assert write_record(EmulatorXenstoreData(0, 1, (("a", "bc"),))) == \
        struct.pack("<IIII", 2, 13, 0, 1) + b"a\0bc\0" + bytes(3)


def test_page_data_items_pairs_pages_with_data_types() -> None:
    rec = RECORDS[4]
    assert isinstance(rec, PageData)
    items = list(rec.items())
    assert [p for p, _, _ in items] == list(rec.pfns)
    assert [c for _, _, c in items if c is not None] == list(rec.pages)
    assert [p for p, _, c in items if c is None] == [5, 6, 7]
    assert L.page_type_name(rec.types[2]) == "L2TAB|LPINTAB"


def test_xl_header_round_trip_with_config_and_extension() -> None:
    ext = XenpyExtension().with_json("evtchn", [{"port": 1, "state": "interdomain"}]) \
        .with_section("console", b"\x00\x10\x00\x00")
    header = XlHeader.from_config({"c_info": {"name": "d"}}, ext)
    wire = header.encode()
    assert wire.startswith(b"Xen saved domain, xl format\n \0 \r")
    magic, order, mandatory, optional, optlen = struct.unpack_from("<32sIIII", wire)
    assert (order, mandatory, optional, optlen) == (0x01020304, 3, 0, len(wire) - 48)
    (config_len,) = struct.unpack_from("<I", wire, 48)
    assert wire[52 + config_len - 1] == 0  # xl stores the JSON with its NUL
    assert wire[52 + config_len:].startswith(b"XenpyExt")
    decoded = XlHeader.decode(wire[:48], wire[48:])
    assert decoded == header
    assert decoded.config() == {"c_info": {"name": "d"}}
    assert decoded.extension is not None
    assert decoded.extension.json_section("evtchn") == [{"port": 1, "state": "interdomain"}]
    assert decoded.extension.get("console") == b"\x00\x10\x00\x00"
    bare = XlHeader()
    assert bare.mandatory_flags == 2
    assert XlHeader.decode(bare.encode()[:48], bare.encode()[48:]) == bare


def test_extension_in_an_emulator_context_record() -> None:
    ext = XenpyExtension((("gnttab", b"\x01\x02"),))
    rec = ext.to_record()
    assert XenpyExtension.from_record(EmulatorContext.decode_body(rec.encode_body())) == ext
    assert XenpyExtension.from_record(EmulatorContext(libxl.EMULATOR_QEMU_UPSTREAM, 0, b"")) is None


@pytest.mark.parametrize("make, expected", [
    (lambda: X86PvInfo(5, 3), "guest_width: Expected 4 or 8, got 5"),
    (lambda: X86PvInfo(4, 4), "pt_levels: Expected 3 for guest_width 4, got 4"),
    (lambda: PageData((1,), (0,), ()), "pages: Expected 1 (one per pfn with data), got 0"),
    (lambda: PageData((1,), (5 << 28,), ()), "Expected an XEN_DOMCTL_PFINFO_* type"),
    (lambda: PageData((1,), (L.XEN_DOMCTL_PFINFO_LPINTAB,), (bytes(PAGE),)), "XEN_DOMCTL_PFINFO"),
    (lambda: PageData((1 << 52,), (0,), (bytes(PAGE),)), "pfn[0]: Expected 0 <= value < 2**52"),
    (lambda: PageData((), (), ()), "count: Expected 1..1024, got 0"),
    (lambda: PageData((1,), (0,), (b"x",)), "pages[0]: Expected length 4096, got 1"),
    (lambda: SharedInfo(b"x"), "shared_info: Expected length 4096, got 1"),
    (lambda: ImageHeader(4), "version: Expected 2 or 3, got 4"),
    (lambda: DomainHeader(page_shift=13), "page_shift: Expected 12, got 13"),
    (lambda: DomainHeader(guest_type=7), "type: Expected x86 PV (1) or x86 HVM (2), got 7"),
    (lambda: X86PvVcpuExtended(0, bytes(129)), "context: Expected at most 128 bytes, got 129"),
    (lambda: X86PvP2mFrames(10, 9, (1,)), "p2m_end_pfn: Expected >= p2m_start_pfn"),
    (lambda: X86TscInfo(0, 1 << 32, 0, 0), "khz: Expected 0 <= value < 2**32"),
    (lambda: X86MsrPolicy(()), "entries: Expected a tuple of 1..4096"),
    (lambda: EmulatorContext(9, 0, b""), "emulator id: Expected one of [0, 1, 2], got 9"),
    (lambda: EmulatorXenstoreData(0, 0, (("a\0b", "c"),)), "no NULs"),
    (lambda: CheckpointState(4), "id: Expected CHECKPOINT_NEW..CHECKPOINT_SVM_RESUMED"),
    (lambda: XlHeader("[1, 2]"), "config: Expected a JSON object, got list"),
    (lambda: XenpyExtension((("Bad Name", b""),)), "name: Expected"),
    (lambda: XenpyExtension((("a", b""), ("a", b""))), "Expected a unique name"),
])
def test_invalid_records_cannot_be_built(make, expected: str) -> None:
    with pytest.raises(StreamError, match=None) as info:
        make()
    assert expected in str(info.value)


@pytest.mark.parametrize("cls, body, expected", [
    (PageData, struct.pack("<IIQ", 1, 0, 1 | 0xFF << 52), "pfn[0] bits 52-59: Expected 0"),
    (PageData, struct.pack("<IIQ", 1, 0, 1 | 0x6 << 60), "pfn[0] type: Expected an XEN_DOMCTL"),
    (PageData, struct.pack("<IIQ", 1, 0, 1), "length: Expected 8 + 8 + 4096 = 4112, got 16"),
    (PageData, struct.pack("<II", 2, 0) + bytes(8), "pfn array: Expected 16 bytes, got 8"),
    (PageData, struct.pack("<IIQ", 1, 5, 1 | 0xF << 60), "reserved: Expected 0, got 0x5"),
    (PageData, struct.pack("<II", 100000, 0), "count: Expected 1..1024, got 100000"),
    (X86PvInfo, bytes([8, 4, 1, 0, 0, 0, 0, 0]), "reserved: Expected 0, got 0x1:0x0"),
    (X86PvInfo, bytes([8, 4, 0, 0]), "body: Expected length 8, got 4"),
    (X86PvP2mFrames, struct.pack("<II", 0, 1), "length: Expected a multiple of 8 and at least 16"),
    (X86PvVcpuBasic, struct.pack("<II", 0, 1), "reserved: Expected 0, got 0x1"),
    (X86PvVcpuMsrs, struct.pack("<IIIIQ", 0, 0, 0x10, 1, 0), "msrs[0].reserved: Expected 0"),
    (X86PvVcpuMsrs, struct.pack("<IIQ", 0, 0, 0), "length: Expected 8 + a multiple of 16"),
    (X86TscInfo, struct.pack("<IIQII", 0, 0, 0, 0, 9), "reserved: Expected 0, got 0x9"),
    (X86MsrPolicy, struct.pack("<IIQ", 0xCE, 1, 0), "entries[0].flags: Expected 0, got 0x1"),
    (HvmParams, struct.pack("<IIQQ", 2, 0, 1, 1), "body: Expected length 40, got 24"),
    (End, b"\0" * 8, "END body: Expected length 0, got 8"),
    (EmulatorXenstoreData, struct.pack("<II", 0, 0) + b"a\0b", "data: Expected a NUL terminator"),
    (EmulatorXenstoreData, struct.pack("<II", 0, 0) + b"a\0", "Expected an even number of strings"),
    (EmulatorContext, b"\0" * 4, "body: Expected at least 8 bytes, got 4"),
])
def test_corrupt_bodies_are_rejected(cls: type, body: bytes, expected: str) -> None:
    with pytest.raises(StreamError) as info:
        cls.decode_body(body)  # type: ignore[attr-defined]
    assert expected in str(info.value)


@pytest.mark.parametrize("wire, expected", [
    (b"\xfe" + b"\xff" * 7 + bytes(16), "marker: Expected 0xffffffffffffffff"),
    (b"\xff" * 8 + b"XENG" + bytes(12), "id: Expected 0x58454e46"),
    (b"\xff" * 8 + b"XENF" + struct.pack(">IHHI", 3, 1, 0, 0), "Expected little-endian"),
    (b"\xff" * 8 + b"XENF" + struct.pack(">IHHI", 3, 2, 0, 0), "options: Expected reserved bits"),
    (b"\xff" * 8 + b"XENF" + struct.pack(">IHHI", 3, 0, 0, 1), "reserved: Expected 0"),
    (b"\xff" * 8 + b"XENF" + struct.pack(">IHHI", 1, 0, 0, 0), "version: Expected 2 or 3, got 1"),
])
def test_corrupt_image_headers_are_rejected(wire: bytes, expected: str) -> None:
    with pytest.raises(StreamError) as info:
        ImageHeader.decode(wire)
    assert expected in str(info.value)


def test_corrupt_xl_and_libxl_headers_are_rejected() -> None:
    good = XlHeader.from_config({"a": 1}).encode()
    with pytest.raises(StreamError, match="magic: Expected"):
        XlHeader.optional_data_length(b"Y" + good[1:48])
    with pytest.raises(StreamError, match="byteorder: Expected 0x01020304"):
        XlHeader.optional_data_length(good[:32] + struct.pack(">I", 0x01020304) + good[36:48])
    with pytest.raises(StreamError, match=r"mandatory_flags: Expected only JSON\|STREAMv2"):
        XlHeader.optional_data_length(good[:36] + struct.pack("<I", 7) + good[40:48])
    with pytest.raises(StreamError, match="Expected STREAMv2"):
        XlHeader.optional_data_length(good[:36] + struct.pack("<I", 1) + good[40:48])
    with pytest.raises(StreamError, match="optional_data_len: Expected at most"):
        XlHeader.optional_data_length(good[:44] + struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(StreamError, match="config_len: Expected at most"):
        XlHeader.decode(good[:48], struct.pack("<I", 99) + good[52:])
    with pytest.raises(StreamError, match="magic: Expected b'XenpyExt'"):
        XlHeader.decode(good[:48], good[48:] + b"a garbage tail, long enough")
    with pytest.raises(StreamError, match="ident: Expected"):
        LibxlHeader.decode(b"LibxlFmX" + bytes(8))
    with pytest.raises(StreamError, match="version: Expected 2, got 3"):
        LibxlHeader.decode(b"LibxlFmt" + struct.pack(">II", 3, 0))
    with pytest.raises(StreamError, match="options: Expected reserved bits 2-31 clear"):
        LibxlHeader.decode(b"LibxlFmt" + struct.pack(">II", 2, 4))


def test_extension_decode_rejects_damage() -> None:
    blob = XenpyExtension((("xenstore", b"abc"), ("evtchn", b"[]"))).encode()
    assert XenpyExtension.decode(blob).get("xenstore") == b"abc"
    with pytest.raises(StreamError, match="Expected 3 bytes, got 2|Expected .* bytes"):
        XenpyExtension.decode(blob[:-1])
    with pytest.raises(StreamError, match="trailing data"):
        XenpyExtension.decode(blob + b"!")
    with pytest.raises(StreamError, match="version: Expected 1, got 2"):
        XenpyExtension.decode(blob[:8] + struct.pack("<I", 2) + blob[12:])
    with pytest.raises(StreamError, match="section 'evtchn': Expected JSON"):
        XenpyExtension((("evtchn", b"{"),)).json_section("evtchn")
