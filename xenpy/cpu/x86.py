"""One vCPU = one Unicorn instance.  The only module that touches Unicorn.

Hot paths (hypercall dispatch, fault acknowledgement, register access) go through
the raw C API with preallocated ctypes objects: the Python binding's wrappers cost
3-4x more per call (shared/unicorn-notes.md §4).  Hooks are registered raw as well,
so a hypercall costs one Python frame, not three; an exception raised in a hook is
kept and re-raised from :meth:`X86Cpu.run` after Unicorn has stopped.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Callable

import unicorn as uc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from ..abi.xen import Width
from .calibrate import calibrate

_VOIDP = ctypes.c_void_p
_INTR_CB = ctypes.CFUNCTYPE(None, _VOIDP, ctypes.c_uint32, _VOIDP)
_INVALID_CB = ctypes.CFUNCTYPE(ctypes.c_bool, _VOIDP, _VOIDP)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, _VOIDP, ctypes.c_uint32, ctypes.c_int, _VOIDP)
_OUT_CB = ctypes.CFUNCTYPE(None, _VOIDP, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, _VOIDP)
_CPUID_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, _VOIDP, _VOIDP)   # returns "skip Unicorn's cpuid"
_SYSCALL_CB = ctypes.CFUNCTYPE(None, _VOIDP, _VOIDP)

# Register ids, named without the E/R prefix so hypervisor code is width-neutral.
R = x86
REGS32 = {
    "eax": R.UC_X86_REG_EAX, "ebx": R.UC_X86_REG_EBX, "ecx": R.UC_X86_REG_ECX,
    "edx": R.UC_X86_REG_EDX, "esi": R.UC_X86_REG_ESI, "edi": R.UC_X86_REG_EDI,
    "ebp": R.UC_X86_REG_EBP, "esp": R.UC_X86_REG_ESP, "eip": R.UC_X86_REG_EIP,
    "eflags": R.UC_X86_REG_EFLAGS, "cs": R.UC_X86_REG_CS, "ss": R.UC_X86_REG_SS,
    "ds": R.UC_X86_REG_DS, "es": R.UC_X86_REG_ES, "fs": R.UC_X86_REG_FS, "gs": R.UC_X86_REG_GS,
    "cr0": R.UC_X86_REG_CR0, "cr2": R.UC_X86_REG_CR2, "cr3": R.UC_X86_REG_CR3,
    "cr4": R.UC_X86_REG_CR4,
}
REGS64 = dict(REGS32, **{
    "rax": R.UC_X86_REG_RAX, "rbx": R.UC_X86_REG_RBX, "rcx": R.UC_X86_REG_RCX,
    "rdx": R.UC_X86_REG_RDX, "rsi": R.UC_X86_REG_RSI, "rdi": R.UC_X86_REG_RDI,
    "rbp": R.UC_X86_REG_RBP, "rsp": R.UC_X86_REG_RSP, "rip": R.UC_X86_REG_RIP,
    "rflags": R.UC_X86_REG_RFLAGS, "r8": R.UC_X86_REG_R8, "r9": R.UC_X86_REG_R9,
    "r10": R.UC_X86_REG_R10, "r11": R.UC_X86_REG_R11, "r12": R.UC_X86_REG_R12,
    "r13": R.UC_X86_REG_R13, "r14": R.UC_X86_REG_R14, "r15": R.UC_X86_REG_R15,
})

#: Architectural MSRs the hypervisor reads and writes (long mode, segment bases).
MSR_EFER = 0xC0000080
MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102

#: Hypercall ABI: number register, then argument registers (xen.h).
HYPERCALL_REGS = {
    Width.X86_32: ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"),
    Width.X86_64: ("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9"),
}


class UnicornFailure(RuntimeError):
    """Unicorn refused an operation xenpy relies on (a bug in xenpy, not the guest)."""


class BatchRegs:
    """A fixed list of registers read or written with one C call."""

    def __init__(self, handle: ctypes.c_void_p, ids: list[int]) -> None:
        n = len(ids)
        self._h = handle
        self._n = n
        self._ids = (ctypes.c_int32 * n)(*ids)
        self.vals = (ctypes.c_uint64 * n)()
        self._ptrs = (ctypes.c_void_p * n)(
            *[ctypes.addressof(self.vals) + 8 * i for i in range(n)])

    def read(self) -> ctypes.Array:
        uclib.uc_reg_read_batch(self._h, self._ids, self._ptrs, self._n)
        return self.vals

    def write(self) -> None:
        uclib.uc_reg_write_batch(self._h, self._ids, self._ptrs, self._n)


class X86Cpu:
    """A Unicorn x86 CPU on the host's machine memory, with raw fast paths."""

    def __init__(self, width: Width, mem_ptr: int, mem_size: int) -> None:
        self.width = width
        self.mode = uc.UC_MODE_32 if width == Width.X86_32 else uc.UC_MODE_64
        self.uc = uc.Uc(uc.UC_ARCH_X86, self.mode)
        # The raw engine handle: the binding has no public accessor for it.
        self._h = self.uc._uch
        self.uc.mem_map_ptr(0, mem_size, uc.UC_PROT_ALL, mem_ptr)
        self.regs = REGS32 if width == Width.X86_32 else REGS64
        offs = calibrate(self.mode)
        self._ctx = ctypes.c_void_p()
        if uclib.uc_context_alloc(self._h, ctypes.byref(self._ctx)) != uc.UC_ERR_OK:
            raise UnicornFailure("uc_context_alloc failed")
        base = self._ctx.value
        self._ctx_err = ctypes.c_int32.from_address(base + offs.error_code)
        self._ctx_old = ctypes.c_int32.from_address(base + offs.old_exception)
        self._one = ctypes.c_uint64()
        self._callbacks: list = []      # keep ctypes thunks alive
        self._hooks: list[int] = []
        self.hook_error: BaseException | None = None
        # Hooks and stops from other threads exclude each other: an asynchronous
        # uc_emu_stop landing while a hook rewrites the PC corrupts the vCPU (unicorn
        # issues #1355/#1356).  Re-entrant: hooks may stop their own CPU.
        self.hook_lock = threading.RLock()
        self.stop_requested = False     # a stop of ours ended the last run (see run())
        self.hypercall_regs = BatchRegs(self._h, [self.regs[r] for r in HYPERCALL_REGS[width]])

    @property
    def handle(self) -> ctypes.c_void_p:
        """The raw uc_engine handle, for hooks written in C (chooks.py)."""
        return self._h

    # --- registers ---------------------------------------------------------------------------
    def reg(self, name: str) -> int:
        one = self._one
        one.value = 0           # segment registers fill only their low 16 bits
        uclib.uc_reg_read(self._h, self.regs[name], ctypes.byref(one))
        return one.value

    def set_reg(self, name: str, value: int) -> None:
        self._one.value = value & 0xFFFFFFFFFFFFFFFF
        err = uclib.uc_reg_write(self._h, self.regs[name], ctypes.byref(self._one))
        if err != uc.UC_ERR_OK:
            raise UnicornFailure(f"writing {name}={value:#x}: {uc.UcError(err)}")

    def set_regs(self, **values: int) -> None:
        for name, value in values.items():
            self.set_reg(name, value)

    def batch(self, names: list[str]) -> BatchRegs:
        return BatchRegs(self._h, [self.regs[n] for n in names])

    def set_gdtr(self, base: int, limit: int) -> None:
        self.uc.reg_write(x86.UC_X86_REG_GDTR, (0, base, limit, 0))

    def set_tr(self, selector: int, base: int, limit: int) -> None:
        # flags are raw descriptor bits 8-23: 0x89 there aborts the process (notes §8).
        self.uc.reg_write(x86.UC_X86_REG_TR, (selector, base, limit, 0x8900))

    def set_ldtr(self, selector: int, base: int, limit: int) -> None:
        """Load LDTR (flags are raw descriptor bits 8-23: present, type 2 = LDT)."""
        self.uc.reg_write(x86.UC_X86_REG_LDTR, (selector, base, limit,
                                                0x8200 if selector else 0))

    def read_msr(self, msr: int) -> int:
        return self.uc.msr_read(msr)

    def write_msr(self, msr: int, value: int) -> None:
        self.uc.msr_write(msr, value)

    # --- faults ------------------------------------------------------------------------------
    def ack_fault(self) -> int:
        """Return the pending fault's error code and clear old_exception (issue #1883)."""
        uclib.uc_context_save(self._h, self._ctx)
        err = self._ctx_err.value
        self._ctx_old.value = -1
        uclib.uc_context_restore(self._h, self._ctx)
        return err & 0xFFFFFFFF

    def pending_exception(self) -> int:
        """The vector Unicorn recorded as in-flight (old_exception), -1 if none."""
        uclib.uc_context_save(self._h, self._ctx)
        return self._ctx_old.value

    # --- hooks -------------------------------------------------------------------------------
    def _guard(self, fn: Callable, default=None) -> Callable:
        lock = self.hook_lock

        def guarded(*args):
            with lock:
                try:
                    return fn(*args)
                except BaseException as exc:     # noqa: BLE001 - re-raised from run()
                    if self.hook_error is None:
                        self.hook_error = exc
                    uclib.uc_emu_stop(self._h)
                    return default
        return guarded

    def _add(self, htype: int, thunk, begin: int = 1, end: int = 0, *extra: int) -> int:
        h = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._h, ctypes.byref(h), htype, ctypes.cast(thunk, _VOIDP), None,
                                ctypes.c_uint64(begin), ctypes.c_uint64(end),
                                *[ctypes.c_int(e) for e in extra])
        if err != uc.UC_ERR_OK:
            raise UnicornFailure(f"uc_hook_add({htype}): {uc.UcError(err)}")
        self._callbacks.append(thunk)
        self._hooks.append(h.value)
        return h.value

    def on_interrupt(self, fn: Callable[[int], None]) -> None:
        """fn(vector) for every exception and `int N` (Unicorn never uses the IDT)."""
        g = self._guard(fn)
        self._add(uc.UC_HOOK_INTR, _INTR_CB(lambda _h, intno, _u: g(intno)))

    def on_invalid_opcode(self, fn: Callable[[], bool]) -> None:
        """fn() for #UD (which never reaches the interrupt hook); must move EIP on."""
        g = self._guard(fn, False)
        self._add(uc.UC_HOOK_INSN_INVALID, _INVALID_CB(lambda _h, _u: bool(g())))

    def on_port_in(self, fn: Callable[[int, int], int]) -> None:
        g = self._guard(fn, 0xFFFFFFFF)
        self._add(uc.UC_HOOK_INSN, _IN_CB(lambda _h, port, size, _u: g(port, size)), 1, 0,
                  x86.UC_X86_INS_IN)

    def on_port_out(self, fn: Callable[[int, int, int], None]) -> None:
        g = self._guard(fn)
        self._add(uc.UC_HOOK_INSN, _OUT_CB(lambda _h, port, size, val, _u: g(port, size, val)),
                  1, 0, x86.UC_X86_INS_OUT)

    def on_cpuid(self, fn: Callable[[], bool]) -> None:
        """fn() returns True when it produced the result itself (skip Unicorn's CPUID)."""
        g = self._guard(fn, 0)
        self._add(uc.UC_HOOK_INSN, _CPUID_CB(lambda _h, _u: int(bool(g()))), 1, 0,
                  x86.UC_X86_INS_CPUID)

    def on_syscall(self, fn: Callable[[], None]) -> None:
        g = self._guard(fn)
        self._add(uc.UC_HOOK_INSN, _SYSCALL_CB(lambda _h, _u: g()), 1, 0,
                  x86.UC_X86_INS_SYSCALL)

    def keep_hook(self, handle: int, owner: object) -> None:
        """Record a hook registered elsewhere (C hooks) so close() removes it."""
        self._hooks.append(handle)
        self._callbacks.append(owner)

    def add_hook(self, htype: int, callback: Callable, begin: int = 1, end: int = 0) -> int:
        """A hook through the binding (for rare, non-hot hooks such as the debugger's)."""
        return self.uc.hook_add(htype, callback, begin=begin, end=end)

    def del_hook(self, handle: int) -> None:
        self.uc.hook_del(handle)

    # --- execution ---------------------------------------------------------------------------
    def run(self, begin: int, until: int) -> None:
        """Run guest code from ``begin``; return when a hook stops it (or Unicorn does)."""
        # A stop request can end emulation after a fault was raised but before its hook
        # ran; the faulting instruction then runs again, and a stale old_exception would
        # turn that fault into #DF (issue #1883).  Start every slice with it clear.
        uclib.uc_context_save(self._h, self._ctx)
        if self._ctx_old.value != -1:
            self._ctx_old.value = -1
            uclib.uc_context_restore(self._h, self._ctx)
        with self.hook_lock:
            self.stop_requested = False
        err = uclib.uc_emu_start(self._h, begin, until, 0, 0)
        exc, self.hook_error = self.hook_error, None
        if exc is not None:
            raise exc
        if err != uc.UC_ERR_OK:
            raise uc.UcError(err)

    def stop(self) -> None:
        """Ask the CPU to stop at the next block boundary.  Thread-safe: it waits for a
        running hook of this CPU to finish first."""
        with self.hook_lock:
            self.stop_requested = True
            uclib.uc_emu_stop(self._h)

    def flush_tlb(self) -> None:
        """Drop cached translations after the hypervisor edited page tables."""
        self.uc.ctl(uc.UC_CTL_TLB_FLUSH, uc.UC_CTL_IO_WRITE)

    def invalidate_code(self, start: int, end: int) -> None:
        """Forget translated code for the *virtual* range [start, end) (translated through
        this CPU's current page tables): writes from outside this CPU's own guest stores
        never invalidate Unicorn's translations (notes §5)."""
        self.uc.ctl_remove_cache(start, end)

    def close(self) -> None:
        for h in self._hooks:
            uclib.uc_hook_del(self._h, h)
        self._hooks.clear()
        if self._ctx.value:
            uclib.uc_context_free(self._ctx)
            self._ctx = ctypes.c_void_p()
