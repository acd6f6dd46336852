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
struct xp_entry {
    void *read_batch; void *write_reg;
    int ids[10]; uint64_t vals[10]; void *ptrs[10]; int n;
    int ret_id; uint64_t ret; int write_ret; int vector; void *handle;
};
uintptr_t xp_block_hook_ptr(void);
uintptr_t xp_write_hook_ptr(void);
uintptr_t xp_intr_hook_ptr(void);
uintptr_t xp_syscall_hook_ptr(void);
extern "Python" int64_t xp_py_hypercall(void *, uint64_t, uint64_t, uint64_t, uint64_t,
                                        uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
extern "Python" void xp_py_intr(void *, uint32_t);
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

/* The hypercall entry: read the ABI's registers, call Python, write the result. */
struct xp_entry {
    void *read_batch; void *write_reg;
    int ids[10]; uint64_t vals[10]; void *ptrs[10]; int n;
    int ret_id; uint64_t ret; int write_ret; int vector; void *handle;
};
typedef int (*xp_read_batch_fn)(void *uc, int *ids, void **vals, int count);
typedef int (*xp_write_fn)(void *uc, int id, const void *value);
static int64_t xp_py_hypercall(void *, uint64_t, uint64_t, uint64_t, uint64_t,
                               uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
static void xp_py_intr(void *, uint32_t);
#define XP_NO_RESULT INT64_MIN

/* The registers go to Python as arguments and the result comes back as the return
   value: cheaper than cdata indexing on the Python side. */
static void xp_enter(void *uc, struct xp_entry *e)
{
    uint64_t *r = e->vals;
    ((xp_read_batch_fn)e->read_batch)(uc, e->ids, e->ptrs, e->n);
    int64_t res = xp_py_hypercall(e->handle, r[0], r[1], r[2], r[3], r[4], r[5], r[6],
                                  r[7], r[8]);
    if (res != XP_NO_RESULT) {
        e->ret = (uint64_t)res;
        ((xp_write_fn)e->write_reg)(uc, e->ret_id, &e->ret);
    }
}

static void xp_intr_hook(void *uc, uint32_t intno, void *user)
{
    struct xp_entry *e = (struct xp_entry *)user;
    if ((int)intno == e->vector)
        xp_enter(uc, e);
    else
        xp_py_intr(e->handle, intno);
}

static void xp_syscall_hook(void *uc, void *user)
{
    xp_enter(uc, (struct xp_entry *)user);
}

uintptr_t xp_intr_hook_ptr(void) { return (uintptr_t)xp_intr_hook; }
uintptr_t xp_syscall_hook_ptr(void) { return (uintptr_t)xp_syscall_hook; }
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


@cache
def externs_ready() -> bool:
    _install_externs()
    return True


_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
_READ_BATCH = ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p).value
_WRITE_REG = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value


class HypercallEntry:
    """The C side of a vCPU's hypercall entry (``int $0x82`` or ``syscall``).

    The C hook reads the ABI's registers with one uc_reg_read_batch and calls
    ``on_hypercall(r0, ..., r8)`` with them (up to 9; unused ones are 0); a return value
    other than NO_RESULT is written to the return register.  Every other interrupt goes
    to ``on_interrupt(vector)``.  Python
    exceptions are kept in ``error`` and stop the CPU (re-raised by X86Cpu.run).
    """

    def __init__(self, cpu, reg_ids: list[int], ret_id: int, vector: int | None,
                 on_hypercall, on_interrupt) -> None:
        ffi, lib = load()
        externs_ready()
        self._ffi = ffi
        self.cpu = cpu
        e = ffi.new("struct xp_entry *")
        e.read_batch = ffi.cast("void *", _READ_BATCH)
        e.write_reg = ffi.cast("void *", _WRITE_REG)
        if len(reg_ids) > 9:
            raise ValueError("at most 9 registers")
        e.n = len(reg_ids)
        for i, rid in enumerate(reg_ids):
            e.ids[i] = rid
            e.ptrs[i] = ffi.addressof(e.vals, i)
        e.ret_id = ret_id
        e.vector = -1 if vector is None else vector
        self._handle = ffi.new_handle(self)
        e.handle = self._handle
        self.e = e
        self.vals = e.vals
        self.on_hypercall = on_hypercall
        self.on_interrupt = on_interrupt
        user = ctypes.c_void_p(int(ffi.cast("uintptr_t", e)))
        h = cpu.handle
        hh = ctypes.c_size_t()
        if vector is not None:
            fn = lib.xp_intr_hook_ptr()
            err = uclib.uc_hook_add(h, ctypes.byref(hh), uc.UC_HOOK_INTR, ctypes.c_void_p(fn),
                                    user, ctypes.c_uint64(1), ctypes.c_uint64(0))
        else:
            from unicorn import x86_const
            fn = lib.xp_syscall_hook_ptr()
            err = uclib.uc_hook_add(h, ctypes.byref(hh), uc.UC_HOOK_INSN, ctypes.c_void_p(fn),
                                    user, ctypes.c_uint64(1), ctypes.c_uint64(0),
                                    ctypes.c_int(x86_const.UC_X86_INS_SYSCALL))
            cpu.on_interrupt(on_interrupt)
        if err != uc.UC_ERR_OK:
            raise RuntimeError(f"hypercall entry hook: {uc.UcError(err)}")
        cpu.keep_hook(hh.value, self)



NO_RESULT = -(1 << 63)
"""on_hypercall's return value when nothing is to be written back."""


def _fail(self_: "HypercallEntry", exc: BaseException) -> None:
    cpu = self_.cpu
    if cpu.hook_error is None:
        cpu.hook_error = exc
    cpu.stop()


def _install_externs() -> None:
    ffi, lib = load()

    @ffi.def_extern(onerror=lambda et, ev, tb: NO_RESULT)
    def xp_py_hypercall(handle, r0, r1, r2, r3, r4, r5, r6, r7, r8):
        entry = ffi.from_handle(handle)
        with entry.cpu.hook_lock:
            try:
                return entry.on_hypercall(r0, r1, r2, r3, r4, r5, r6, r7, r8)
            except BaseException as exc:      # noqa: BLE001 - re-raised by X86Cpu.run
                _fail(entry, exc)
                return NO_RESULT

    @ffi.def_extern(onerror=lambda et, ev, tb: None)
    def xp_py_intr(handle, intno):
        entry = ffi.from_handle(handle)
        with entry.cpu.hook_lock:
            try:
                entry.on_interrupt(intno)
            except BaseException as exc:      # noqa: BLE001
                _fail(entry, exc)


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
