"""xen/io/console.h: struct xencons_interface, the PV console ring page."""
import ctypes

XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048


class XenconsInterface(ctypes.LittleEndianStructure):
    """struct xencons_interface (indices are free-running uint32, masked by the ring size)."""
    _fields_ = [
        ("in_", ctypes.c_char * XENCONS_IN_SIZE), ("out", ctypes.c_char * XENCONS_OUT_SIZE),
        ("in_cons", ctypes.c_uint32), ("in_prod", ctypes.c_uint32),
        ("out_cons", ctypes.c_uint32), ("out_prod", ctypes.c_uint32),
    ]
