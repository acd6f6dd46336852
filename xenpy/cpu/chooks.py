"""Hooks in C (cffi): the per-block and per-store paths Python is too slow for.

* a block hook that counts retired basic blocks and stops the CPU when a budget is
  reached — deterministic time slices (Unicorn's ``count=`` is a per-instruction hook,
  ~20x slower; unicorn-notes §4 (viii));
* a memory-write hook that sets bits in a dirty-page bitmap — migration's log-dirty
  (a Python write hook costs 16x; this one ~30%, unicorn-notes §4 (vii)).

The module is compiled once per source version into a cache directory and loaded from
there; it calls uc_emu_stop through a pointer taken from the loaded libunicorn, so it
does not link against Unicorn itself.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import sys
import sysconfig
from functools import cache
from pathlib import Path

import unicorn as uc
from unicorn.unicorn_py3.unicorn import uclib

CDEF = """
struct xp_budget { uint64_t blocks; uint64_t limit; void *stop; int stopped; };
struct xp_dirty { uint8_t *bitmap; uint64_t base; uint64_t npages; uint64_t count; };
uintptr_t xp_block_hook_ptr(void);
uintptr_t xp_write_hook_ptr(void);
"""

SOURCE = r"""
#include <stdint.h>
struct xp_budget { uint64_t blocks; uint64_t limit; void *stop; int stopped; };
struct xp_dirty { uint8_t *bitmap; uint64_t base; uint64_t npages; uint64_t count; };
typedef int (*xp_stop_fn)(void *uc);

static void xp_block_hook(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct xp_budget *b = (struct xp_budget *)user;
    b->blocks++;
    if (b->limit && b->blocks >= b->limit && !b->stopped) {
        b->stopped = 1;
        ((xp_stop_fn)b->stop)(uc);
    }
}

static void xp_write_hook(void *uc, int type, uint64_t address, int size, int64_t value,
                          void *user)
{
    struct xp_dirty *d = (struct xp_dirty *)user;
    if (address < d->base || size <= 0)
        return;
    uint64_t first = (address - d->base) >> 12;
    uint64_t last = (address + (uint64_t)size - 1 - d->base) >> 12;
    for (uint64_t p = first; p <= last && p < d->npages; p++) {
        uint8_t m = (uint8_t)(1u << (p & 7));
        if (!(d->bitmap[p >> 3] & m)) {
            d->bitmap[p >> 3] |= m;
            d->count++;
        }
    }
}

uintptr_t xp_block_hook_ptr(void) { return (uintptr_t)xp_block_hook; }
uintptr_t xp_write_hook_ptr(void) { return (uintptr_t)xp_write_hook; }
"""


def _cache_dir() -> Path:
    base = os.environ.get("XENPY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "xenpy")
    return Path(base)


@cache
def load():
    """Compile (once) and import the C hook module; returns (ffi, lib)."""
    tag = hashlib.sha256((SOURCE + CDEF + sys.version).encode()).hexdigest()[:16]
    name = f"_xenpy_chooks_{tag}"
    outdir = _cache_dir() / "chooks"
    outdir.mkdir(parents=True, exist_ok=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    path = outdir / f"{name}{suffix}"
    if not path.exists():
        from cffi import FFI
        ffi = FFI()
        ffi.cdef(CDEF)
        ffi.set_source(name, SOURCE)
        ffi.compile(tmpdir=str(outdir), target=f"{name}{suffix}", verbose=False)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value


class BlockBudget:
    """Count a CPU's retired blocks; optionally stop it after ``limit`` more."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        ffi, lib = load()
        self._ffi = ffi
        self.s = ffi.new("struct xp_budget *")
        self.s.stop = ffi.cast("void *", _STOP)
        hh = ctypes.c_size_t()
        err = uclib.uc_hook_add(handle, ctypes.byref(hh), uc.UC_HOOK_BLOCK,
                                ctypes.c_void_p(lib.xp_block_hook_ptr()),
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", self.s))),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err != uc.UC_ERR_OK:
            raise RuntimeError(f"block hook: {uc.UcError(err)}")
        self.hook = hh.value

    @property
    def blocks(self) -> int:
        return self.s.blocks

    def arm(self, budget: int) -> None:
        """Stop after ``budget`` more blocks (0: never)."""
        self.s.stopped = 0
        self.s.limit = self.s.blocks + budget if budget else 0

    @property
    def expired(self) -> bool:
        return bool(self.s.stopped)


class DirtyLog:
    """Xen's log-dirty for one CPU's writes to [base, base + npages pages)."""

    def __init__(self, handle: ctypes.c_void_p, base: int, npages: int) -> None:
        ffi, lib = load()
        self._ffi = ffi
        self.bitmap = ffi.new("uint8_t[]", (npages + 7) // 8)
        self.s = ffi.new("struct xp_dirty *")
        self.s.bitmap = self.bitmap
        self.s.base = base
        self.s.npages = npages
        hh = ctypes.c_size_t()
        err = uclib.uc_hook_add(handle, ctypes.byref(hh), uc.UC_HOOK_MEM_WRITE,
                                ctypes.c_void_p(lib.xp_write_hook_ptr()),
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", self.s))),
                                ctypes.c_uint64(base),
                                ctypes.c_uint64(base + npages * 4096 - 1))
        if err != uc.UC_ERR_OK:
            raise RuntimeError(f"write hook: {uc.UcError(err)}")
        self.hook = hh.value
        self._handle = handle

    def peek(self) -> list[int]:
        """The dirty page indices (relative to base), without clearing."""
        buf = bytes(self._ffi.buffer(self.bitmap))
        out = []
        for i, byte in enumerate(buf):
            if byte:
                for b in range(8):
                    if byte >> b & 1:
                        out.append(i * 8 + b)
        return out

    def clean(self) -> list[int]:
        """Return and clear the dirty pages (Xen's XEN_DOMCTL_SHADOW_OP_CLEAN)."""
        pages = self.peek()
        self._ffi.memmove(self.bitmap, bytes(len(self._ffi.buffer(self.bitmap))),
                          len(self._ffi.buffer(self.bitmap)))
        self.s.count = 0
        return pages

    def mark(self, page: int) -> None:
        """A write the hook cannot see (a backend, the hypervisor)."""
        if 0 <= page < self.s.npages:
            self.bitmap[page >> 3] |= 1 << (page & 7)

    def close(self) -> None:
        uclib.uc_hook_del(self._handle, self.hook)
