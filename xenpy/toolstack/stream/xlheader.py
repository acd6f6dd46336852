"""xl's save-file header (tools/xl/xl.h, xl_saverestore.c, xl_vmcontrol.c).

``xl save`` and ``xl migrate`` put this in front of the libxl stream::

    char     magic[32]          "Xen saved domain, xl format\\n \\0 \\r"
    uint32_t byteorder          0x01020304 in the domain's byte order
    uint32_t mandatory_flags    JSON (1) | STREAMv2 (2); unknown => reject
    uint32_t optional_flags     unknown => reject (none are defined)
    uint32_t optional_data_len  then that many octets of optional data:
        uint32_t config_len     the JSON libxl_domain_config, NUL included
        char     config[config_len]
        ...tail                 "skip, or skip tail, if not understood"

xenpy appends its own state as that tail (see extension.py for why there).
The optional data is capped so a corrupt length cannot make the reader wait for,
or allocate, gigabytes.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from xenpy.errors import StreamError

from .extension import XenpyExtension

SAVEFILE_MAGIC = b"Xen saved domain, xl format\n \0 \r"
SAVEFILE_BYTEORDER_VALUE = 0x01020304
XL_MANDATORY_FLAG_JSON = 1 << 0
XL_MANDATORY_FLAG_STREAMv2 = 1 << 1
XL_MANDATORY_FLAG_ALL = XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMv2

FIXED = struct.Struct("<32sIIII")
CONFIG_LEN = struct.Struct("<I")
#: cap on the optional data: a domain config is a few KiB, xenpy's tail a few MiB
OPTIONAL_DATA_MAX = 32 << 20


@dataclass(frozen=True, slots=True)
class XlHeader:
    """The xl header: the domain's JSON config and xenpy's optional extension."""

    NAME: ClassVar[str] = "xl header"
    FIXED_SIZE: ClassVar[int] = FIXED.size

    config_json: str | None = None
    extension: XenpyExtension | None = None

    def __post_init__(self) -> None:
        if self.config_json is not None:
            if not isinstance(self.config_json, str) or "\0" in self.config_json:
                raise StreamError(f"config: Expected a JSON string without NULs, "
                                  f"got {self.config_json!r:.60}")
            _parse_config(self.config_json)
        if self.extension is not None and not isinstance(self.extension, XenpyExtension):
            raise StreamError(f"extension: Expected XenpyExtension, "
                              f"got {type(self.extension).__name__}")

    @classmethod
    def from_config(cls, config: dict[str, Any], extension: XenpyExtension | None = None) -> Self:
        """Build from a libxl_domain_config-shaped dict."""
        try:
            text = json.dumps(config, indent=4, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise StreamError(f"config: Expected JSON-serialisable data, got {exc}") from None
        return cls(text, extension)

    def config(self) -> dict[str, Any] | None:
        """The parsed domain config."""
        return None if self.config_json is None else _parse_config(self.config_json)

    @property
    def mandatory_flags(self) -> int:
        return XL_MANDATORY_FLAG_STREAMv2 | (XL_MANDATORY_FLAG_JSON if self.config_json else 0)

    def encode(self) -> bytes:
        config = self.config_json.encode() + b"\0" if self.config_json else b""
        optdata = CONFIG_LEN.pack(len(config)) + config
        if self.extension is not None:
            optdata += self.extension.encode()
        if len(optdata) > OPTIONAL_DATA_MAX:
            raise StreamError(f"optional_data_len: Expected at most {OPTIONAL_DATA_MAX}, "
                              f"got {len(optdata)}")
        return FIXED.pack(SAVEFILE_MAGIC, SAVEFILE_BYTEORDER_VALUE, self.mandatory_flags,
                          0, len(optdata)) + optdata

    @staticmethod
    def optional_data_length(fixed: bytes) -> int:
        """Validate the fixed 48 octets; return how many optional octets follow."""
        magic, byteorder, mandatory, optional, optlen = FIXED.unpack(fixed)
        if magic != SAVEFILE_MAGIC:
            raise StreamError(f"magic: Expected {SAVEFILE_MAGIC!r}, got {magic!r}")
        if byteorder != SAVEFILE_BYTEORDER_VALUE:
            raise StreamError(f"byteorder: Expected {SAVEFILE_BYTEORDER_VALUE:#010x} "
                              f"(little-endian), got {byteorder:#010x}")
        if mandatory & ~XL_MANDATORY_FLAG_ALL:
            raise StreamError(f"mandatory_flags: Expected only JSON|STREAMv2 (0x3), "
                              f"got {mandatory:#x}")
        if not mandatory & XL_MANDATORY_FLAG_STREAMv2:
            raise StreamError(f"mandatory_flags: Expected STREAMv2 (0x2) set (legacy streams "
                              f"are unsupported), got {mandatory:#x}")
        if optional:
            raise StreamError(f"optional_flags: Expected 0, got {optional:#x}")
        if optlen > OPTIONAL_DATA_MAX:
            raise StreamError(f"optional_data_len: Expected at most {OPTIONAL_DATA_MAX}, "
                              f"got {optlen}")
        return int(optlen)

    @classmethod
    def decode(cls, fixed: bytes, optdata: bytes) -> Self:
        mandatory = FIXED.unpack(fixed)[2]
        cls.optional_data_length(fixed)
        if not optdata:
            if mandatory & XL_MANDATORY_FLAG_JSON:
                raise StreamError("optional data: Expected a JSON config (JSON flag set), got none")
            return cls()
        if len(optdata) < CONFIG_LEN.size:
            raise StreamError(f"config_len: Expected {CONFIG_LEN.size} bytes, got {len(optdata)}")
        (config_len,) = CONFIG_LEN.unpack_from(optdata)
        if config_len > len(optdata) - CONFIG_LEN.size:
            raise StreamError(f"config_len: Expected at most {len(optdata) - CONFIG_LEN.size}, "
                              f"got {config_len}")
        config = optdata[CONFIG_LEN.size:CONFIG_LEN.size + config_len]
        tail = optdata[CONFIG_LEN.size + config_len:]
        has_json = bool(mandatory & XL_MANDATORY_FLAG_JSON)
        if has_json != bool(config_len):
            raise StreamError(f"mandatory_flags: Expected JSON flag {'set' if config_len else 'clear'}"
                              f" for config_len {config_len}, got {mandatory:#x}")
        config_json = None
        if config:
            if config[-1] != 0 or 0 in config[:-1]:
                raise StreamError("config: Expected one NUL, at the end of the JSON, "
                                  f"got {config[-16:]!r}")
            try:
                config_json = config[:-1].decode()
            except UnicodeDecodeError as exc:
                raise StreamError(f"config: Expected UTF-8 JSON, got {exc}") from None
        extension = XenpyExtension.decode(tail) if tail else None
        return cls(config_json, extension)


def _parse_config(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StreamError(f"config: Expected JSON, got {text[:40]!r} ({exc})") from None
    if not isinstance(value, dict):
        raise StreamError(f"config: Expected a JSON object, got {type(value).__name__}")
    return value
