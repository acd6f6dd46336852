"""blkback: the block-device backend (Xen's blkif) living in the host, as dom0's would."""
from .xenbus import BlkBack, VbdBackend

__all__ = ["BlkBack", "VbdBackend"]
