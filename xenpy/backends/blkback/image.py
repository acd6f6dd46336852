"""The storage behind a virtual disk: a raw image file (sparse) or a host block device.

All I/O is positioned (preadv/pwritev on the guest's pages, no intermediate copy) and
bounded by the caller (protocol.py checks every request against ``sectors`` before it
gets here; ``Image`` checks again, so a bug upstream cannot touch bytes outside the
image).  ``flush`` is fdatasync: data acknowledged after a FLUSH_DISKCACHE or
WRITE_BARRIER is on stable storage.  ``discard`` punches a hole
(fallocate(PUNCH_HOLE|KEEP_SIZE)) in a file and issues BLKDISCARD on a block device.

Every method may run on an I/O worker thread: it touches only its fd.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from ...errors import ConfigError

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKGETSIZE64 = 0x80081272
BLKDISCARD = 0x1277
BLKSSZGET = 0x1268


class ImageError(OSError):
    """An I/O on the image failed (becomes BLKIF_RSP_ERROR)."""


def _libc_fallocate():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _libc_fallocate()


@dataclass(frozen=True)
class ImageInfo:
    path: str
    size: int                  # bytes
    sector_size: int           # logical sector size (512 for files)
    is_device: bool
    readonly: bool


class Image:
    """An open disk image. ``readonly`` opens it O_RDONLY, so even a bug cannot write."""

    def __init__(self, path: str, readonly: bool) -> None:
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            how = "read-only" if readonly else "read-write"
            raise ConfigError(f"disk target {path!r}: cannot open {how}: {e.strerror}") from None
        st = os.fstat(self.fd)
        is_dev = stat.S_ISBLK(st.st_mode)
        if is_dev:
            size = struct.unpack("<Q", fcntl.ioctl(self.fd, BLKGETSIZE64, b"\0" * 8))[0]
            ssz = struct.unpack("<i", fcntl.ioctl(self.fd, BLKSSZGET, b"\0" * 4))[0]
        elif stat.S_ISREG(st.st_mode):
            size, ssz = st.st_size, 512
        else:
            os.close(self.fd)
            raise ConfigError(f"disk target {path!r}: expected a regular file or a block "
                              f"device, got mode {st.st_mode:#o}")
        self.info = ImageInfo(path, size, ssz, is_dev, readonly)
        self.closed = False
        # RWF_NOWAIT works for this fd (cleared at the first EOPNOTSUPP): see readv_nowait
        self.nowait_read = self.nowait_write = hasattr(os, "RWF_NOWAIT")

    @property
    def size(self) -> int:
        return self.info.size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.info.size:
            raise ImageError(errno.EINVAL, f"I/O [{offset}, +{length}) outside the image "
                                           f"of {self.info.size} bytes")

    def readv(self, offset: int, bufs: list[memoryview]) -> None:
        """Fill ``bufs`` from ``offset`` (a short read past EOF of a file reads zeros)."""
        total = sum(len(b) for b in bufs)
        self._check(offset, total)
        done = os.preadv(self.fd, bufs, offset)
        while done < total:                        # short read: retry the remainder
            rest, skip = [], done
            for b in bufs:
                if skip >= len(b):
                    skip -= len(b)
                    continue
                rest.append(b[skip:])
                skip = 0
            n = os.preadv(self.fd, rest, offset + done)
            if n == 0:
                for b in rest:
                    b[:] = bytes(len(b))
                return
            done += n

    def readv_nowait(self, offset: int, bufs: list[memoryview], total: int) -> bool:
        """Fill ``bufs`` (``total`` bytes) from ``offset`` only if that cannot block:
        preadv2(RWF_NOWAIT) succeeds only when every byte is in the page cache.  False
        (nothing promised about ``bufs``) means "do it on the worker": data not cached,
        a short read, a kernel or file without RWF_NOWAIT.  Safe on the scheduler thread."""
        if not self.nowait_read or offset + total > self.info.size:
            return False
        try:
            return os.preadv(self.fd, bufs, offset, os.RWF_NOWAIT) == total
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.nowait_read = False        # never supported here: stop asking
            return False

    def writev_nowait(self, offset: int, bufs: list[memoryview], total: int) -> bool:
        """``writev`` only if it cannot block (pwritev2(RWF_NOWAIT); buffered writes
        support it on few filesystems, e.g. not on ext4 before Linux 6.x): as readv_nowait.
        A partial write is not undone: the worker simply writes the whole range again."""
        if not self.nowait_write or self.info.readonly or offset + total > self.info.size:
            return False
        try:
            return os.pwritev(self.fd, bufs, offset, os.RWF_NOWAIT) == total
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.nowait_write = False
            return False

    def writev(self, offset: int, bufs: list[memoryview]) -> None:
        if self.info.readonly:
            raise ImageError(errno.EROFS, f"{self.info.path}: read-only")
        total = sum(len(b) for b in bufs)
        self._check(offset, total)
        done = 0
        while done < total:
            rest, skip = [], done
            for b in bufs:
                if skip >= len(b):
                    skip -= len(b)
                    continue
                rest.append(b[skip:])
                skip = 0
            done += os.pwritev(self.fd, rest, offset + done)

    def flush(self) -> None:
        """FLUSH_DISKCACHE: everything written so far reaches stable storage."""
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        if self.info.readonly:
            raise ImageError(errno.EROFS, f"{self.info.path}: read-only")
        self._check(offset, length)
        if length == 0:
            return
        if self.info.is_device:
            fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("<QQ", offset, length))
            return
        if _FALLOCATE(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
            err = ctypes.get_errno()
            raise ImageError(err, f"{self.info.path}: punching a hole: {os.strerror(err)}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
