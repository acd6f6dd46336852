"""Whole streams: sans-IO reading, layering, ordering rules, caps and error messages."""
from __future__ import annotations

import io
import struct

import pytest

from xenpy.errors import LocalProtocolError, StreamError
from xenpy.toolstack.stream import (
    DONE, NEED_DATA, Checkpoint, CheckpointEnd, CheckpointState, DomainHeader, EmulatorContext,
    End, Expect, HvmParams, ImageHeader, LibxcContext, LibxlEnd, LibxlHeader, PageData,
    SharedInfo, StaticDataEnd, StreamReader, StreamWriter, X86CpuidPolicy, X86PvInfo,
    X86PvP2mFrames, X86PvVcpuBasic, XenpyExtension, XlHeader, encode, iter_stream, libxc,
    parse_stream)
from xenpy.toolstack.stream.libxl import EMULATOR_QEMU_UPSTREAM

PAGE = 4096
L = libxc
PROLOGUE = [XlHeader(), LibxlHeader(), LibxcContext(), ImageHeader(3), DomainHeader()]


def _offsets(items: list[object] | tuple[object, ...]) -> list[int]:
    """Stream offset at which each item starts."""
    out, pos = [], 0
    for item in items:
        out.append(pos)
        pos += len(encode(item))
    return out


def test_parse_returns_exactly_what_was_written(pv_image) -> None:
    assert parse_stream(pv_image.data) == list(pv_image.items)


def test_byte_by_byte_feeding(pv_image) -> None:
    reader = StreamReader()
    got, offsets = [], []
    for i in range(len(pv_image.data)):
        reader.receive_data(pv_image.data[i:i + 1])
        while (item := reader.next_record()) is not NEED_DATA:
            assert item is not DONE or i == len(pv_image.data) - 1
            if item is DONE:
                break
            got.append(item)
            offsets.append(reader.offset)
    assert got == list(pv_image.items)
    assert offsets == _offsets(pv_image.items)[1:] + [len(pv_image.data)]
    assert reader.next_record() is DONE
    reader.receive_data(b"")
    assert reader.next_record() is DONE


def test_iter_stream_reads_a_file_object(pv_image) -> None:
    assert list(iter_stream(io.BytesIO(pv_image.data), chunk_size=999)) == list(pv_image.items)


def test_libxl_and_libxc_formats_parse_on_their_own(pv_image) -> None:
    items = list(pv_image.items)
    libxl_items = items[1:]
    assert parse_stream(StreamWriter("libxl").send_all(libxl_items), "libxl") == libxl_items
    libxc_items = items[3:items.index(End()) + 1]
    assert parse_stream(StreamWriter("libxc").send_all(libxc_items), "libxc") == libxc_items


def test_need_data_until_a_whole_item_is_buffered(pv_image) -> None:
    reader = StreamReader()
    header_len = len(encode(pv_image.items[0]))
    reader.receive_data(pv_image.data[:header_len - 1])
    assert reader.next_record() is NEED_DATA
    assert reader.expecting is Expect.XL_HEADER and reader.offset == 0
    reader.receive_data(pv_image.data[header_len - 1:header_len])
    assert reader.next_record() == pv_image.items[0]
    assert reader.next_record() is NEED_DATA and reader.offset == header_len


def test_trailing_data_after_the_end_is_rejected(pv_image) -> None:
    with pytest.raises(StreamError, match=r"end of stream at offset 0x[0-9a-f]+: Expected no more"):
        parse_stream(pv_image.data + b"\0" * 8)


def test_data_after_end_of_input_is_rejected() -> None:
    reader = StreamReader()
    reader.receive_data(b"")
    with pytest.raises(StreamError, match="Expected no data after end of input"):
        reader.receive_data(b"x")


def test_errors_name_the_record_its_offset_and_the_mismatch(pv_image) -> None:
    items = list(pv_image.items)
    index = next(i for i, x in enumerate(items) if isinstance(x, X86PvInfo))
    offset = _offsets(items)[index]
    data = bytearray(pv_image.data)
    data[offset + 8 + 2] = 0x55  # X86_PV_INFO reserved16
    with pytest.raises(StreamError) as info:
        parse_stream(bytes(data))
    assert str(info.value) == (f"libxc X86_PV_INFO record at offset {offset:#x}: "
                               "reserved: Expected 0, got 0x55:0x0")


def test_record_length_is_capped_before_buffering() -> None:
    prologue = b"".join(encode(x) for x in PROLOGUE)
    reader = StreamReader()
    reader.receive_data(prologue + struct.pack("<II", L.REC_TYPE_PAGE_DATA, 0xFFFFFFF0))
    for _ in PROLOGUE:
        reader.next_record()
    # no EOF, no body: a capped length fails at once instead of waiting for 4 GiB
    with pytest.raises(StreamError, match=r"PAGE_DATA record at offset .*Expected body_length <= "
                                          r"4202504, got 4294967280"):
        reader.next_record()


def test_unknown_and_unsupported_record_types_are_rejected() -> None:
    prologue = b"".join(encode(x) for x in PROLOGUE)
    with pytest.raises(StreamError, match="Expected a known libxc record type, got type 0x80000001"):
        parse_stream(prologue + struct.pack("<II", 0x80000001, 0))
    with pytest.raises(StreamError, match="got unsupported TOOLSTACK"):
        parse_stream(prologue + struct.pack("<II", L.REC_TYPE_TOOLSTACK, 0))
    libxl_prologue = b"".join(encode(x) for x in PROLOGUE[:2])
    with pytest.raises(StreamError, match="Expected a known libxl record type, got type 0x00000009"):
        parse_stream(libxl_prologue + struct.pack("<II", 9, 0))


def test_nonzero_padding_is_rejected() -> None:
    prologue = b"".join(encode(x) for x in PROLOGUE)
    bad = struct.pack("<II", L.REC_TYPE_X86_PV_INFO, 4) + bytes([8, 4, 0, 0, 0, 0, 0, 1])
    with pytest.raises(StreamError, match="X86_PV_INFO record at offset .*Expected zero padding, "
                                          "got 00000001"):
        parse_stream(prologue + bad)


READER_SEES = {
    "Expected xl header, got libxl header": "xl header at offset 0x0: Expected 48 bytes, got 16",
    "Expected a libxl record, got libxc END": "libxl END record at offset 0x44: Expected a complete",
    "Expected end of stream": "Expected no more data, got 8+ bytes",
}
_P2M = X86PvP2mFrames(0, 9, (6,))
_PAGE = PageData((3,), (L.XEN_DOMCTL_PFINFO_NOTAB,), (bytes(PAGE),))


@pytest.mark.parametrize("items, expected", [
    # (the reader sees bytes, not types: where the same bytes mean something else at that
    #  point, it reports what they mean there: the READER_SEES table below)
    ([LibxlHeader()], "Expected xl header, got libxl header"),
    (PROLOGUE[:2] + [End()], "Expected a libxl record, got libxc END"),
    (PROLOGUE[:2] + [LibxlEnd()], "Expected a complete libxc stream"),
    (PROLOGUE[:2] + [CheckpointEnd()], "Expected CHECKPOINT_END only after a libxc CHECKPOINT"),
    (PROLOGUE[:2] + [CheckpointState(0)], "Expected CHECKPOINT_STATE only in a checkpointed"),
    (PROLOGUE + [_PAGE], "Expected X86_PV_INFO before PAGE_DATA, got none"),
    (PROLOGUE + [_P2M], "Expected X86_PV_INFO before X86_PV_P2M_FRAMES, got none"),
    (PROLOGUE + [X86PvInfo(8, 4), X86PvInfo(8, 4)], "Expected one X86_PV_INFO, got a second"),
    (PROLOGUE + [X86PvInfo(8, 4), X86PvP2mFrames(0, 9, (6, 7))],
     "p2m_pfn: Expected 1 frames for pfns 0x0-0x9 at guest width 8, got 2"),
    (PROLOGUE + [X86PvInfo(4, 3), PageData((1,), (L.XEN_DOMCTL_PFINFO_L4TAB,), (bytes(PAGE),))],
     "pfn[0] type: Expected no L4TAB in a 3-level guest, got L4TAB"),
    (PROLOGUE + [X86PvInfo(4, 3), X86PvVcpuBasic(0, bytes(5168))],
     "vcpu0 context: Expected 2800 bytes (vcpu_guest_context for width 4), got 5168"),
    (PROLOGUE + [Checkpoint()], "Expected CHECKPOINT only in a checkpointed stream"),
    (PROLOGUE + [HvmParams(())], "Expected no HVM_PARAMS in an x86 PV stream, got one"),
    (PROLOGUE[:4] + [DomainHeader(L.DHDR_TYPE_X86_HVM), SharedInfo(bytes(PAGE))],
     "Expected no SHARED_INFO in an x86 HVM stream, got one"),
    (PROLOGUE[:3] + [ImageHeader(2), DomainHeader(), StaticDataEnd()],
     "Expected no STATIC_DATA_END in a v2 stream"),
    (PROLOGUE + [StaticDataEnd(), X86CpuidPolicy((L.CpuidLeaf(0, 0, 0, 0, 0, 0),))],
     "Expected X86_CPUID_POLICY before STATIC_DATA_END, got it after"),
    (PROLOGUE + [X86PvInfo(8, 4), End(), LibxcContext()],
     "Expected one LIBXC_CONTEXT per stream, got a second"),
    (PROLOGUE + [X86PvInfo(8, 4), End(), LibxlEnd(), LibxlEnd()], "Expected end of stream"),
])
def test_ordering_rules(items: list[object], expected: str) -> None:
    """The writer refuses to emit a bad order, and the reader refuses to accept one."""
    writer = StreamWriter()
    for item in items[:-1]:
        writer.send(item)
    with pytest.raises(LocalProtocolError) as wrote:
        writer.send(items[-1])
    assert expected in str(wrote.value)
    data = b"".join(encode(x) for x in items)
    with pytest.raises(StreamError) as read:
        parse_stream(data)
    assert READER_SEES.get(expected, expected) in str(read.value)
    assert f"at offset {len(data) - len(encode(items[-1])):#x}" in str(read.value)


def test_checkpointed_stream_round_trip() -> None:
    page = PageData((4,), (L.XEN_DOMCTL_PFINFO_NOTAB,), (b"\x01" * PAGE,))
    items = PROLOGUE + [
        X86PvInfo(8, 4), StaticDataEnd(), X86PvP2mFrames(0, 9, (6,)), page, Checkpoint(),
        EmulatorContext(EMULATOR_QEMU_UPSTREAM, 0, b"blob"), CheckpointState(0), CheckpointEnd(),
        page, Checkpoint(), CheckpointEnd(), End(), LibxlEnd()]
    data = StreamWriter(checkpointed=True).send_all(items)
    assert parse_stream(data, checkpointed=True) == items
    with pytest.raises(StreamError, match="Expected CHECKPOINT only in a checkpointed stream"):
        parse_stream(data)
    with pytest.raises(LocalProtocolError, match="Expected CHECKPOINT_END, got libxl END"):
        StreamWriter(checkpointed=True).send_all(items[:items.index(Checkpoint()) + 1] + [LibxlEnd()])


def test_extension_travels_in_both_carriers(image_builder) -> None:
    ext = XenpyExtension().with_json("evtchn", [{"port": 3, "remote": [0, 5]}]) \
        .with_json("xenstore", {"/local/domain/1/name": "guest"})
    late = XenpyExtension().with_json("console", {"in_cons": 10, "out_prod": 77})
    image = image_builder(8, extension=ext, emulator_extension=late)
    items = parse_stream(image.data)
    assert isinstance(items[0], XlHeader) and items[0].extension == ext
    assert items[0].extension.json_section("xenstore") == {"/local/domain/1/name": "guest"}
    carried = [XenpyExtension.from_record(x) for x in items if isinstance(x, EmulatorContext)]
    assert carried == [late]
