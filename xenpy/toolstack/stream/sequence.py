"""The order of headers and records in a save file, shared by reader and writer.

A record is valid on its own (its dataclass checked that); whether it may appear
*here* depends on what came before, and that is this module's job:

* layering: xl header -> libxl header -> libxl records; LIBXC_CONTEXT switches to
  the libxc image header, domain header and records until the libxc END, which
  switches back; the libxl END ends the stream;
* checkpointed streams (Remus/COLO): a libxc CHECKPOINT hands the stream to the
  libxl layer, whose CHECKPOINT_END hands it back to libxc records (no new
  headers), as libxl_stream_read.c does; in a plain save file both are errors;
* libxc rules that need earlier records, as libxc's restore enforces them:
  X86_PV_INFO once and before any P2M/PAGE_DATA/vCPU record, the number of p2m
  frames for the guest width, no L4 page tables in a 3-level guest, a BASIC vCPU
  context of sizeof(vcpu_guest_context) for the width, PV-only and HVM-only
  records, v3-only static data (CPUID/MSR policy) before STATIC_DATA_END.

``accept`` raises StreamError; the writer turns that into LocalProtocolError.
"""
from __future__ import annotations

import enum
from typing import Literal

from xenpy.errors import StreamError

from . import libxc, libxl
from .xlheader import XlHeader

StreamFormat = Literal["xl", "libxl", "libxc"]


class Expect(enum.Enum):
    """What the stream holds next."""

    XL_HEADER = "xl header"
    LIBXL_HEADER = "libxl header"
    LIBXL_RECORD = "libxl record"
    IMAGE_HEADER = "libxc image header"
    DOMAIN_HEADER = "libxc domain header"
    LIBXC_RECORD = "libxc record"
    DONE = "end of stream"


_START = {"xl": Expect.XL_HEADER, "libxl": Expect.LIBXL_HEADER, "libxc": Expect.IMAGE_HEADER}

_HEADER_CLASSES = {Expect.XL_HEADER: XlHeader, Expect.LIBXL_HEADER: libxl.LibxlHeader,
                   Expect.IMAGE_HEADER: libxc.ImageHeader, Expect.DOMAIN_HEADER: libxc.DomainHeader}

_PV_ONLY = (libxc.X86PvInfo, libxc.X86PvP2mFrames, libxc.X86PvVcpuBasic, libxc.X86PvVcpuExtended,
            libxc.X86PvVcpuXsave, libxc.X86PvVcpuMsrs, libxc.SharedInfo)
_NEEDS_PV_INFO = (libxc.X86PvP2mFrames, libxc.PageData, libxc.X86PvVcpuBasic,
                  libxc.X86PvVcpuExtended, libxc.X86PvVcpuXsave, libxc.X86PvVcpuMsrs)
_HVM_ONLY = (libxc.HvmContext, libxc.HvmParams)
_STATIC_DATA = (libxc.X86CpuidPolicy, libxc.X86MsrPolicy)


def _name(item: object) -> str:
    return getattr(item, "NAME", type(item).__name__)


def _qualified(item: object) -> str:
    """The name with its layer: both layers have an END."""
    if type(item) in libxc.RECORDS.values():
        return f"libxc {_name(item)}"
    if type(item) in libxl.RECORDS.values():
        return f"libxl {_name(item)}"
    return _name(item)


class Sequencer:
    """Tracks the position in the stream and checks each header/record against it."""

    def __init__(self, fmt: StreamFormat = "xl", checkpointed: bool = False) -> None:
        if fmt not in _START:
            raise StreamError(f"format: Expected one of {sorted(_START)}, got {fmt!r}")
        self.fmt = fmt
        self.checkpointed = checkpointed
        self.state = _START[fmt]
        self.in_checkpoint = False
        self.libxc_started = False
        self.libxc_done = False
        self.version = 0
        self.guest_type = 0
        self.pv_info: libxc.X86PvInfo | None = None
        self.static_data_end = False

    def accept(self, item: object) -> None:
        """Check ``item`` may come next and advance; StreamError if it may not."""
        state = self.state
        if state is Expect.DONE:
            raise StreamError(f"Expected end of stream, got {_qualified(item)}")
        if state in _HEADER_CLASSES:
            if not isinstance(item, _HEADER_CLASSES[state]):
                raise StreamError(f"Expected {state.value}, got {_qualified(item)}")
            self._header(item)
        elif state is Expect.LIBXL_RECORD:
            if type(item) not in libxl.RECORDS.values():
                raise StreamError(f"Expected a libxl record, got {_qualified(item)}")
            self._libxl(item)
        else:
            if type(item) not in libxc.RECORDS.values():
                raise StreamError(f"Expected a libxc record, got {_qualified(item)}")
            self._libxc(item)

    def _header(self, item: object) -> None:
        match item:
            case XlHeader():
                self.state = Expect.LIBXL_HEADER
            case libxl.LibxlHeader():
                self.state = Expect.LIBXL_RECORD
            case libxc.ImageHeader(version=version):
                self.version = version
                self.libxc_started = True
                self.state = Expect.DOMAIN_HEADER
            case libxc.DomainHeader(guest_type=guest_type):
                self.guest_type = guest_type
                self.state = Expect.LIBXC_RECORD

    def _libxl(self, rec: object) -> None:
        match rec:
            case libxl.LibxcContext():
                if self.libxc_started:
                    raise StreamError("Expected one LIBXC_CONTEXT per stream, got a second")
                self.state = Expect.IMAGE_HEADER
            case libxl.LibxlEnd():
                if not self.libxc_done:
                    raise StreamError("Expected a complete libxc stream (LIBXC_CONTEXT ... END) "
                                      "before the libxl END, got none" if not self.libxc_started
                                      else "Expected CHECKPOINT_END, got libxl END")
                self.state = Expect.DONE
            case libxl.CheckpointEnd():
                if not self.in_checkpoint:
                    raise StreamError("Expected CHECKPOINT_END only after a libxc CHECKPOINT, "
                                      "got one outside a checkpoint")
                self.in_checkpoint = False
                self.state = Expect.LIBXC_RECORD
            case libxl.CheckpointState():
                if not self.checkpointed:
                    raise StreamError("Expected CHECKPOINT_STATE only in a checkpointed stream, "
                                      "got one in a plain stream")

    def _libxc(self, rec: object) -> None:
        pv = self.guest_type == libxc.DHDR_TYPE_X86_PV
        kind = libxc.DHDR_TYPES[self.guest_type]
        if isinstance(rec, _PV_ONLY) and not pv:
            raise StreamError(f"Expected no {_name(rec)} in an {kind} stream, got one")
        if isinstance(rec, _HVM_ONLY) and pv:
            raise StreamError(f"Expected no {_name(rec)} in an {kind} stream, got one")
        if isinstance(rec, _NEEDS_PV_INFO) and pv and self.pv_info is None:
            raise StreamError(f"Expected X86_PV_INFO before {_name(rec)}, got none")
        if isinstance(rec, _STATIC_DATA + (libxc.StaticDataEnd,)):
            if self.version < 3:
                raise StreamError(f"Expected no {_name(rec)} in a v{self.version} stream "
                                  "(static data needs v3), got one")
            if self.static_data_end:
                raise StreamError(f"Expected {_name(rec)} before STATIC_DATA_END, got it after")
        match rec:
            case libxc.End():
                if self.fmt == "libxc":
                    self.state = Expect.DONE
                else:
                    self.libxc_done = True
                    self.state = Expect.LIBXL_RECORD
            case libxc.Checkpoint():
                if not self.checkpointed:
                    raise StreamError("Expected CHECKPOINT only in a checkpointed stream, "
                                      "got one in a plain stream")
                if self.fmt != "libxc":
                    self.in_checkpoint = True
                    self.state = Expect.LIBXL_RECORD
            case libxc.StaticDataEnd():
                self.static_data_end = True
            case libxc.X86PvInfo():
                if self.pv_info is not None:
                    raise StreamError("Expected one X86_PV_INFO, got a second")
                self.pv_info = rec
            case libxc.X86PvP2mFrames() if self.pv_info is not None:
                want = rec.expected_frames(self.pv_info.guest_width)
                if len(rec.frames) != want:
                    raise StreamError(f"p2m_pfn: Expected {want} frames for pfns "
                                      f"{rec.start_pfn:#x}-{rec.end_pfn:#x} at guest width "
                                      f"{self.pv_info.guest_width}, got {len(rec.frames)}")
            case libxc.PageData() if self.pv_info is not None and self.pv_info.pt_levels == 3:
                for i, ptype in enumerate(rec.types):
                    if ptype & ~libxc.XEN_DOMCTL_PFINFO_LPINTAB == libxc.XEN_DOMCTL_PFINFO_L4TAB:
                        raise StreamError(f"pfn[{i}] type: Expected no L4TAB in a 3-level guest, "
                                          f"got {libxc.page_type_name(ptype)}")
            case libxc.X86PvVcpuBasic() if self.pv_info is not None:
                want = libxc.VCPU_GUEST_CONTEXT_SIZE[self.pv_info.guest_width]
                if len(rec.context) != want:
                    raise StreamError(f"vcpu{rec.vcpu_id} context: Expected {want} bytes "
                                      f"(vcpu_guest_context for width {self.pv_info.guest_width}), "
                                      f"got {len(rec.context)}")
