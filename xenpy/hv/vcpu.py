"""A virtual CPU: a Unicorn instance plus the PV state Xen keeps per vCPU.

The run loop hands the CPU to Unicorn until a hook needs the hypervisor to do
something that cannot happen inside a hook (shut down, block, yield, give up the
time slice); hooks call ``cpu.stop()`` and set a flag the loop reads.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..abi.xen import Width
from ..cpu.x86 import X86Cpu
from . import traps, traps64
from .guest_access import GuestMemory

if TYPE_CHECKING:
    from .domain import Domain

log = logging.getLogger("xenpy.vcpu")

UNTIL32 = 0xFFFFFFF0      # never executed: emu_start's stop address


@dataclass
class TrapEntry:
    flags: int = 0
    cs: int = 0
    address: int = 0


@dataclass
class PendingUserEvent:
    """An event to bounce to the kernel once the call gate has brought us to ring 1."""
    vector: int
    error_code: int | None
    eip: int
    cs: int
    eflags: int
    esp: int
    ss: int
    ti: TrapEntry


class Vcpu:
    def __init__(self, domain: "Domain", vcpu_id: int) -> None:
        self.domain = domain
        self.vcpu_id = vcpu_id
        mem = domain.mem
        self.cpu = X86Cpu(domain.width, mem.ptr, mem.size)
        self.gmem = GuestMemory(mem, domain.width)
        self.trap_table = [TrapEntry() for _ in range(256)]
        self.kernel_ss = 0
        self.kernel_sp = 0
        self.event_callback = (0, 0)       # (cs, eip)
        self.failsafe_callback = (0, 0)
        self.iopl = 0                      # virtual IOPL (physdev set_iopl / iret)
        self.cr0_ts = False
        self.gdt_frames: list[int] = []
        self.gdt_ents = 0
        self.pending_user: PendingUserEvent | None = None
        self.blocked = False
        self.yielded = False
        self.online = vcpu_id == 0
        self.initialised = vcpu_id == 0    # has a context (boot, VCPUOP_initialise, restore)
        self.pending_registers = None      # (ctx, kernel) of a deferred setvcpucontext
        self.instructions = 0
        self.debugreg = [0] * 8
        self.in_hypercall = False
        # x86-64 PV: kernel/user mode, their page tables, the syscall entry point
        self.kernel_mode = True
        self.guest_table = 0
        self.guest_table_user = 0
        self.syscall_callback = 0
        self.syscall_mask_events = False
        self.in_syscall_hook = False
        self.nmi_callback = 0
        self.ldt = (0, 0)
        self.poll_ports = False
        self.poll_timer = None
        self.debug_stop = False            # a debugger observer stopped the vCPU
        self.debug_hold = False            # a debugger holds the vCPU stopped
        self.singleshot = None             # time.Timer
        self.periodic = None
        self.periodic_period = 0
        self.run_ns = 0
        self._budget = None
        self._vi_flags = None
        self.preempt_pending = False       # the scheduler asked for the CPU back
        self.async_stopped = False         # stopped from another thread (PC may be stale)
        self.denied_io = None              # register snapshot of a port I/O to fault (#GP)
        self._wake = threading.Event()
        if domain.width == Width.X86_32:
            traps.install_hooks(self)
        else:
            traps64.install_hooks(self)

    def vcpu_info_pending(self) -> bool:
        """An upcall is due: events pending and not masked (checked on every guest exit).

        Reads the two flag bytes of vcpu_info straight from machine memory: this runs
        after every hypercall."""
        f = self._vi_flags
        if f is None:
            base = (self.domain.shared_info_mfn << 12) + 64 * self.vcpu_id
            f = self._vi_flags = self.domain.mem.view[base:base + 2]
        return bool(f[0]) and not f[1]

    @property
    def vcpu_info(self):
        return self.domain.vcpu_info(self.vcpu_id)

    # --- address space -----------------------------------------------------------------------
    def set_cr3(self, maddr: int) -> None:
        self.gmem.cr3 = maddr
        self.cpu.set_reg("cr3", maddr)        # also flushes Unicorn's TLB

    # --- scheduling --------------------------------------------------------------------------
    def kick(self) -> None:
        """An event arrived: wake a blocked vCPU (Xen's vcpu_unblock)."""
        if self.blocked:
            self.blocked = False
            self.poll_ports = False
            if self.poll_timer is not None:
                self.poll_timer.cancelled = True
                self.poll_timer = None
            self._wake.set()

    def hook_exit(self) -> None:
        """End of every hypervisor entry: give the CPU back if the scheduler asked."""
        if self.preempt_pending:
            self.preempt_pending = False
            self.domain.host.preempted(self)

    def block(self) -> None:
        """SCHEDOP_block: stop running until an event is pending (checked by the caller)."""
        self.blocked = True
        self._wake.clear()
        self.cpu.stop()

    def wait_unblocked(self, timeout: float | None) -> bool:
        return self._wake.wait(timeout)

    def run_slice(self) -> None:
        """Run guest code until a hook stops the CPU."""
        eip = self.cpu.reg("eip" if self.domain.width == Width.X86_32 else "rip")
        self.cpu.run(eip, UNTIL32 if self.domain.width == Width.X86_32 else 0xFFFFFFFFFFFFFFF0)

    @property
    def existing_budget(self):
        return self._budget

    def block_budget(self):
        """The C block counter used for deterministic slices (created on first use)."""
        if self._budget is None:
            from ..cpu.chooks import BlockBudget
            self._budget = BlockBudget(self.cpu.handle)
            # Blocks translated before the hook existed would never call it.
            self.cpu.uc.ctl_flush_tb()
        return self._budget

    def close(self) -> None:
        self.cpu.stop()
        self.cpu.close()
