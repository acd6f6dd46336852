"""Truncated and corrupted streams only ever raise StreamError (never another exception)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpy.errors import StreamError
from xenpy.toolstack.stream import (NEED_DATA, PageData, StreamReader, XlHeader, encode, libxc,
                                    parse_stream, write_record)

_SETTINGS = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


def _boundaries(items: tuple[object, ...]) -> list[int]:
    out, pos = [], 0
    for item in items:
        out.append(pos)
        pos += len(encode(item))
    return out


def test_truncation_at_every_record_boundary(pv_image) -> None:
    boundaries = _boundaries(pv_image.items)
    assert len(boundaries) == len(pv_image.items) >= 20
    cuts = boundaries + [b + d for b in boundaries[1:] for d in (-1, 1, 4, 8, 9)]
    for cut in sorted(c for c in set(cuts) if c < len(pv_image.data)):
        prefix = pv_image.data[:cut]
        with pytest.raises(StreamError) as info:
            parse_stream(prefix)
        start = max(b for b in boundaries if b <= cut)  # the item the cut falls in
        assert f"at offset {start:#x}: Expected " in str(info.value)
        assert "(stream truncated)" in str(info.value)
        # without end of input the same prefix is simply incomplete, not an error
        # (receive_data(b"") would *mean* end of input, so feed nothing for cut 0)
        reader = StreamReader()
        if prefix:
            reader.receive_data(prefix)
        while (item := reader.next_record()) is not NEED_DATA:
            assert item in pv_image.items


@_SETTINGS
@given(data=st.data())
def test_truncation_anywhere(pv_image, data) -> None:
    cut = data.draw(st.integers(0, len(pv_image.data) - 1))
    with pytest.raises(StreamError, match="stream truncated"):
        parse_stream(pv_image.data[:cut])


def _structural_offsets(items: tuple[object, ...]) -> list[int]:
    """Offsets of header and record-header bytes, where corruption is most interesting."""
    out = []
    for start, item in zip(_boundaries(items), items):
        size = len(encode(item))
        span = 48 + 64 if isinstance(item, XlHeader) else min(size, 48)
        out += range(start, start + span)
    return out


@_SETTINGS
@given(data=st.data())
def test_random_corruption_raises_only_stream_error(pv_image, data) -> None:
    buf = bytearray(pv_image.data)
    hot = _structural_offsets(pv_image.items)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.one_of(st.sampled_from(hot), st.integers(0, len(buf) - 1)))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        items = parse_stream(bytes(buf))
    except StreamError as exc:
        assert "Expected" in str(exc)
    else:
        assert len(items) == len(pv_image.items)  # damage that stays valid (page contents...)


@_SETTINGS
@given(garbage=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_garbage_after_valid_headers(pv_image, garbage: bytes, chunk: int) -> None:
    """Any bytes in place of the records: StreamError, however the input is chunked."""
    prefix_len = _boundaries(pv_image.items)[5]  # xl, libxl, LIBXC_CONTEXT, image, domain hdr
    data = pv_image.data[:prefix_len] + garbage
    reader = StreamReader()
    with pytest.raises(StreamError):
        for i in range(0, len(data), chunk):
            reader.receive_data(data[i:i + chunk])
            while (item := reader.next_record()) is not NEED_DATA:
                pass
        reader.receive_data(b"")
        while True:
            reader.next_record()


_TYPES = sorted(libxc.VALID_PAGE_TYPES)


@settings(max_examples=100, deadline=None)
@given(entries=st.lists(st.tuples(st.integers(0, (1 << 52) - 1), st.sampled_from(_TYPES)),
                        min_size=1, max_size=12))
def test_page_data_round_trip(entries: list[tuple[int, int]]) -> None:
    pages = tuple(struct.pack("<Q", pfn) * 512 for pfn, t in entries
                  if libxc.page_type_has_data(t))
    rec = PageData(tuple(p for p, _ in entries), tuple(t for _, t in entries), pages)
    wire = write_record(rec)
    (length,) = struct.unpack_from("<I", wire, 4)
    assert PageData.decode_body(wire[8:8 + length]) == rec
