"""xen/io/xs_wire.h: the XenStore wire protocol and the guest's xenstore ring page.

Every message, over a Unix socket or a shared ring, is a ``struct xsd_sockmsg``
header followed by ``len`` payload bytes (NUL-separated strings, mostly).  Errors
travel as their errno *name* ("ENOENT"), so the names below are the protocol; the
numbers are Xen's errno values (equal to Linux's for every entry of the table).
"""
import ctypes
import enum
import struct

from xenpy.abi.errno import Errno


class XsdSockmsgType(enum.IntEnum):
    """enum xsd_sockmsg_type."""

    XS_CONTROL = 0
    XS_DIRECTORY = 1
    XS_READ = 2
    XS_GET_PERMS = 3
    XS_WATCH = 4
    XS_UNWATCH = 5
    XS_TRANSACTION_START = 6
    XS_TRANSACTION_END = 7
    XS_INTRODUCE = 8
    XS_RELEASE = 9
    XS_GET_DOMAIN_PATH = 10
    XS_WRITE = 11
    XS_MKDIR = 12
    XS_RM = 13
    XS_SET_PERMS = 14
    XS_WATCH_EVENT = 15
    XS_ERROR = 16
    XS_IS_DOMAIN_INTRODUCED = 17
    XS_RESUME = 18
    XS_SET_TARGET = 19
    # 20 was XS_RESTRICT, removed.
    XS_RESET_WATCHES = 21
    XS_DIRECTORY_PART = 22
    XS_INVALID = 0xFFFF


XS_DEBUG = XsdSockmsgType.XS_CONTROL
XS_TYPE_COUNT = 23  # number of valid types (XS_DIRECTORY_PART + 1)

XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"

#: xsd_errors[], in the header's order: a name not found maps to the first (EINVAL).
XSD_ERRORS: tuple[Errno, ...] = (
    Errno.EINVAL, Errno.EACCES, Errno.EEXIST, Errno.EISDIR, Errno.ENOENT, Errno.ENOMEM,
    Errno.ENOSPC, Errno.EIO, Errno.ENOTEMPTY, Errno.ENOSYS, Errno.EROFS, Errno.EBUSY,
    Errno.EAGAIN, Errno.EISCONN, Errno.E2BIG, Errno.EPERM,
)

#: struct xsd_sockmsg {uint32 type, req_id, tx_id, len}, little-endian on x86.
XSD_SOCKMSG = struct.Struct("<IIII")
XSD_SOCKMSG_SIZE = XSD_SOCKMSG.size


class XsWatchType(enum.IntEnum):
    """enum xs_watch_type: index of the strings in a WATCH_EVENT payload."""

    XS_WATCH_PATH = 0
    XS_WATCH_TOKEN = 1


XENSTORE_RING_SIZE = 1024


def MASK_XENSTORE_IDX(idx: int) -> int:
    """Offset in a ring of a free-running XENSTORE_RING_IDX (the header's macro name)."""
    return idx & (XENSTORE_RING_SIZE - 1)


class XenstoreDomainInterface(ctypes.LittleEndianStructure):
    """struct xenstore_domain_interface: the guest's xenstore page (first 2076 bytes)."""

    _fields_ = [
        ("req", ctypes.c_char * XENSTORE_RING_SIZE),
        ("rsp", ctypes.c_char * XENSTORE_RING_SIZE),
        ("req_cons", ctypes.c_uint32), ("req_prod", ctypes.c_uint32),
        ("rsp_cons", ctypes.c_uint32), ("rsp_prod", ctypes.c_uint32),
        ("server_features", ctypes.c_uint32),
        ("connection", ctypes.c_uint32),
        ("error", ctypes.c_uint32),
    ]


XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2

XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3
