"""Xen's own checker, verify-stream-v2 (Debian xen-utils-4.17), must accept what we write.

The verifier is found through $XEN_VERIFY_STREAM or tools/get-verify-stream (which
downloads and unpacks the Debian package without installing Xen).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenpy.errors import StreamError
from xenpy.toolstack.stream import (XENPY_EMULATOR_INDEX, End, StreamWriter, XenpyExtension, encode,
                                    parse_stream)

REPO = Path(__file__).resolve().parents[2]


def _expected_lines(width: int) -> list[str]:
    bits, levels = (32, 3) if width == 4 else (64, 4)
    return ["Processed xl header", "Libxl Header: little endian",
            "Libxl Record: Libxc context, length 0",
            "Libxc Image Header: Version 3, little endian",
            "Domain Header: x86 PV from Xen 4.17",
            f"  {bits}bit guest, {levels} levels of pagetables",
            "Libxc Record: Static data end, length 0",
            "  Start pfn 0x0, End 0x9",
            "Squashed 2 Page Data records together",
            "  Mode 0, 2000000 kHz, 123456789 ns, incarnation 1",
            "Libxc Record: Shared info, length 4096",
            f"  vcpu0 basic context, {2800 if width == 4 else 5168} bytes",
            "  vcpu0 extended context, 40 bytes",
            "  vcpu0 msrs context, 16 bytes",
            "Libxc Record: End, length 0",
            "Libxl Record: End, length 0"]


def test_verifier_accepts_synthetic_pv_domains(pv_image, verifier) -> None:
    proc = verifier(pv_image.data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    for line in _expected_lines(pv_image.width):
        assert line in lines
    assert lines[-1] == "Libxl Record: End, length 0"


def test_verifier_accepts_the_xenpy_extension_in_both_carriers(image_builder, verifier) -> None:
    ext = XenpyExtension().with_json("evtchn", [{"port": p, "state": "unbound"} for p in range(64)])
    late = XenpyExtension().with_json("console", {"in_cons": 1, "out_prod": 2})
    proc = verifier(image_builder(8, extension=ext, emulator_extension=late).data)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"Libxl Record: Emulator context, length {8 + len(late.encode())}" in lines
    assert f"  Index {XENPY_EMULATOR_INDEX}, type Unknown" in lines


def test_verifier_accepts_a_v2_stream_and_bare_layers(image_builder, verifier) -> None:
    image = image_builder(4, version=2)
    proc = verifier(image.data)
    assert proc.returncode == 0, proc.stderr
    assert "Libxc Image Header: Version 2, little endian" in proc.stdout
    items = list(image.items)
    libxl_only = StreamWriter("libxl").send_all(items[1:])
    assert verifier(libxl_only, fmt="libxl").returncode == 0
    libxc_only = StreamWriter("libxc").send_all(items[3:items.index(End()) + 1])
    proc = verifier(libxc_only, fmt="libxc")
    assert proc.returncode == 0, proc.stderr
    assert "Libxc Record: End, length 0" in proc.stdout


def test_verifier_and_reader_both_reject_the_same_damage(image_builder, verifier) -> None:
    """Proves the acceptance test can fail: a reserved pfn bit upsets Xen and us alike."""
    image = image_builder(8)
    offset = sum(len(encode(x)) for x in image.items[:image.items.index(next(
        x for x in image.items if type(x).__name__ == "PageData"))])
    data = bytearray(image.data)
    data[offset + 16 + 6] |= 0x10  # bits 52-59 of pfn[0]
    proc = verifier(bytes(data))
    assert proc.returncode == 1
    assert "Reserved bits set in pfn[0]" in proc.stderr
    with pytest.raises(StreamError, match=rf"PAGE_DATA record at offset {offset:#x}: pfn\[0\] "
                                          r"bits 52-59: Expected 0"):
        parse_stream(bytes(data))


def test_get_verify_stream_is_idempotent(verify_stream: str) -> None:
    proc = subprocess.run([str(REPO / "tools" / "get-verify-stream")], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert Path(path).is_file()
    help_text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60,
                               check=False)
    assert help_text.returncode == 0 and "--format" in help_text.stdout
