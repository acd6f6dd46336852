"""Xen's save/migration stream: xl header, libxl stream v2, libxc stream v2/v3.

Layout of a save file (what ``xl save`` writes and ``verify-stream-v2 -f xl`` checks)::

    xl header (xlheader.py: magic, flags, JSON config, xenpy extension tail)
    libxl header, LIBXC_CONTEXT                                   (libxl.py)
        libxc image header, domain header, records ..., END         (libxc.py)
    [libxl EMULATOR_CONTEXT carrying a xenpy extension], libxl END

``StreamWriter.send(item) -> bytes`` and ``StreamReader.receive_data(bytes)`` /
``next_record() -> item | NEED_DATA | DONE`` are sans-IO; ``sequence.py`` holds the
ordering rules both share; ``extension.py`` says where xenpy's own state travels.
"""
from .extension import (SECTION_CONSOLE, SECTION_EVTCHN, SECTION_GNTTAB, SECTION_XENSTORE,
                        XENPY_EMULATOR_INDEX, XenpyExtension)
from .framing import DONE, NEED_DATA
from .libxc import (Checkpoint, CpuidLeaf, DomainHeader, End, HvmContext, HvmParams,
                    ImageHeader, MsrEntry, PageData, SharedInfo, StaticDataEnd, TscInfo,
                    VcpuMsr, Verify, X86CpuidPolicy, X86MsrPolicy, X86PvInfo, X86PvP2mFrames,
                    X86PvVcpuBasic, X86PvVcpuExtended, X86PvVcpuMsrs, X86PvVcpuXsave,
                    X86TscInfo, page_type_has_data)
from .libxl import (CheckpointEnd, CheckpointState, EmulatorContext, EmulatorXenstoreData,
                    LibxcContext, LibxlEnd, LibxlHeader)
from .reader import StreamItem, StreamReader, iter_stream, parse_stream
from .sequence import Expect
from .writer import StreamWriter, encode, write_record
from .xlheader import XlHeader

__all__ = [
    "Checkpoint", "CheckpointEnd", "CheckpointState", "CpuidLeaf", "DONE", "DomainHeader",
    "EmulatorContext", "EmulatorXenstoreData", "End", "Expect", "HvmContext", "HvmParams",
    "ImageHeader", "LibxcContext", "LibxlEnd", "LibxlHeader", "MsrEntry", "NEED_DATA",
    "PageData", "SECTION_CONSOLE", "SECTION_EVTCHN", "SECTION_GNTTAB", "SECTION_XENSTORE",
    "SharedInfo", "StaticDataEnd", "StreamItem", "StreamReader", "StreamWriter", "TscInfo", "VcpuMsr",
    "Verify", "X86CpuidPolicy", "X86MsrPolicy", "X86PvInfo", "X86PvP2mFrames", "X86PvVcpuBasic",
    "X86PvVcpuExtended", "X86PvVcpuMsrs", "X86PvVcpuXsave", "X86TscInfo", "XENPY_EMULATOR_INDEX",
    "XenpyExtension", "XlHeader", "encode", "iter_stream", "page_type_has_data", "parse_stream",
    "write_record",
]
