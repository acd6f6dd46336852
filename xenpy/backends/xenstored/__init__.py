"""xenstored: the XenStore daemon with Xen's semantics (see daemon.py and store.py)."""
from xenpy.backends.xenstored.connection import Connection
from xenpy.backends.xenstored.daemon import Xenstored
from xenpy.backends.xenstored.server import UnixSocketServer
from xenpy.backends.xenstored.store import Quotas, XsError

__all__ = ["Connection", "Quotas", "UnixSocketServer", "XsError", "Xenstored"]
