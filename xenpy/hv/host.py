"""The Host: machine memory, the domains, the scheduler loop and the dom0 services.

Everything hangs off a Host (no module state): tests create one per test.  The dom0
services a real Xen host runs in its control domain — xenconsoled, xenstored — are
Python objects here that reach guests only through shared pages and event channels.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Iterable

import unicorn as uc

from ..abi.xen import FLAT_RING1_CS, FLAT_RING1_DS, PAGE_SIZE, Width
from ..cpu.x86 import MSR_EFER
from ..backends.console import ConsoleBackend
from . import (callback, console, descriptor_tables, domctl, emul_priv_op, event_channel, firmware, grant_table,  # noqa: F401
               iret, memory, mm, multicall, physdev, sched, time as _time_hc, traps,
               traps64, vcpu_op, version)
from .domain import Domain
from .layout import SEL_RING0_CS, SEL_RING0_DS, SEL_TSS, DomainLayout32, HostLayout32
from .layout64 import DomainLayout64, HostLayout64
from .machine import MachineMemory
from .schedule import QUANTUM, REALTIME_SLICE_BLOCKS, SLICE_BLOCKS, Scheduler
from .vcpu import Vcpu

log = logging.getLogger("xenpy.host")
CONSOLE_LOG_MAX = 1 << 20          # bytes of console output kept per domain (xl: console/limit)

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_TSD, CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 2, 1 << 5, 1 << 9, 1 << 10
#: every PV vCPU's CR4: paging as PAE (also long mode), rdtsc trapping (emulated TSC), SSE
PV_CR4 = CR4_TSD | CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT


def enable_paging(v: Vcpu, cr3: int, efer: int | None = None) -> None:
    """The control registers every PV vCPU starts with (PAE/long-mode paging, WP, rdtsc
    trapping for the emulated TSC) and its GDT, which lives in the hypervisor's area."""
    cpu = v.cpu
    cpu.set_reg("cr4", PV_CR4)
    v.set_cr3(cr3)
    if efer is not None:
        cpu.write_msr(MSR_EFER, efer)
    cpu.set_reg("cr0", CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
    cpu.set_gdtr(v.domain.hv_layout.gdt_va(v.vcpu_id), 0xFFFF)


class Host:
    def __init__(self, memory_mib: int = 256, deterministic: bool = False) -> None:
        from .time import RealClock, TimerQueue, VirtualClock
        self.mem = MachineMemory(memory_mib)
        self.clock = VirtualClock() if deterministic else RealClock()
        self.wallclock_base_ns = 0 if deterministic else time.time_ns()
        self.timers = TimerQueue()
        self.scheduler = Scheduler(deterministic,
                                   SLICE_BLOCKS if deterministic else REALTIME_SLICE_BLOCKS)
        self.layout32 = HostLayout32.create(self.mem)
        self.layout64: HostLayout64 | None = None      # built with the first 64-bit domain
        self.domains: dict[int, Domain] = {}
        self.consoles = ConsoleBackend()
        from ..backends.xenstored import Xenstored
        self.xenstored = Xenstored()
        self.xs_server = None                      # a Unix socket for tools: serve_xenstore()
        self._next_domid = 1
        self._current: Vcpu | None = None
        self._preempted = False
        self._wakeup = threading.Event()
        self.slices = 0                            # vCPU slices run (statistics)
        self._wake_requested = False
        self._deadline: float | None = None
        self._slice_started = 0.0
        self._until_given = False
        self.debuggers = 0                         # attached gdb targets (see debug/target.py)
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self.soon_call_failures = 0          # backend bugs survived (run_soon_calls)
        self.blkback = None                        # started on first use (toolstack/disk.py)
        self._ticker: threading.Thread | None = None
        self._ticking = False
        self.hv_console: list[bytes] = []
        self.hypercall_observers: list = []       # trace and debugger (hypercall.HypercallObserver)

    # --- domains -----------------------------------------------------------------------------
    def create_domain(self, name: str, width: Width, memory_mib: int, vcpus: int = 1) -> Domain:
        if any(d.name == name for d in self.domains.values()):
            raise ValueError(f"a domain named {name!r} already exists")
        domid = self._next_domid
        self._next_domid += 1
        d = Domain(self, domid, name, width, memory_mib << (20 - 12))
        if width == Width.X86_32:
            d.hv_layout = DomainLayout32.create(self.mem, self.layout32, vcpus)
        else:
            if self.layout64 is None:
                self.layout64 = HostLayout64.create(self.mem)
            d.hv_layout = DomainLayout64.create(self.mem, self.layout64, vcpus)
        d.xen_frames.extend(d.hv_layout.frames)
        d.grant_frames = []
        d.console_sink = None
        d.console_log = bytearray()
        self.domains[domid] = d
        for i in range(vcpus):
            d.vcpus.append(Vcpu(d, i))
        return d

    def destroy_domain(self, d: Domain) -> None:
        from ..toolstack.xsdomain import remove_domain_nodes
        self.consoles.disconnect(d.domid)
        if self.xenstored.is_domain_introduced(d.domid):
            self.xenstored.release_domain(d.domid)
        remove_domain_nodes(self.xenstored, d)
        d.release()
        d.xen_frames = []
        self.mem.free_frames_of(list(d.grant_frames))
        self.domains.pop(d.domid, None)

    def boot_vcpu(self, v: Vcpu, *, entry: int, stack: int, start_info: int, cr3: int) -> None:
        """Xen's initial vCPU state: ring 1, flat selectors, ESI = start_info, events masked.

        Unicorn starts at CPL 0 and a hook cannot lower the CPL, so the vCPU begins in
        the firmware's iretd with a frame that lands on the kernel entry in ring 1.
        """
        if v.domain.width == Width.X86_64:
            traps64.initial_state(v, entry=entry, stack=stack, start_info=start_info, cr3=cr3)
            return
        cpu = v.cpu
        lay = v.domain.hv_layout
        enable_paging(v, cr3)
        cpu.set_regs(cs=SEL_RING0_CS, ss=SEL_RING0_DS, ds=FLAT_RING1_DS, es=FLAT_RING1_DS,
                     fs=FLAT_RING1_DS, gs=FLAT_RING1_DS)
        cpu.set_tr(SEL_TSS, lay.tss_va(v.vcpu_id), 0x67)
        lay.set_ring1_stack(self.mem, v.vcpu_id, FLAT_RING1_DS, stack)
        frame = [entry, FLAT_RING1_CS, 0x200, stack, FLAT_RING1_DS]
        sp = stack - 4 * len(frame)
        v.gmem.write(sp, b"".join(x.to_bytes(4, "little") for x in frame))
        cpu.set_regs(eax=0, ebx=0, ecx=0, edx=0, esi=start_info, edi=0, ebp=0, esp=sp,
                     eip=v.fw_iret)
        v.online = True

    # --- dom0 services -----------------------------------------------------------------------
    def connect_console(self, d: Domain) -> int:
        con = self.consoles.connect(d, lambda data: self._console_out(d, data))
        return d.evtchn.bind_backend(con.kick)

    def connect_store(self, d: Domain) -> int:
        """The store event channel; the domain is introduced once its nodes exist."""
        return d.evtchn.bind_backend(lambda: self.xenstored.ring_kick(d.domid))

    def introduce_domain(self, d: Domain, serve: bool = True) -> None:
        """What xl does after building: write /local/domain/N, then XS_INTRODUCE
        (``serve=False``: see Xenstored.introduce_domain)."""
        from ..toolstack.xsdomain import write_domain_nodes
        write_domain_nodes(self.xenstored, d)
        base = d.store_mfn << 12
        port = d.store_port
        self.xenstored.introduce_domain(d.domid, self.mem.view[base:base + PAGE_SIZE],
                                        lambda: d.evtchn.set_pending(port), serve=serve)

    def serve_xenstore(self, path: str) -> str:
        """Let tools (xenstore-ls, ...) reach xenstored at ``path`` (XENSTORED_PATH)."""
        from ..backends.xenstored import UnixSocketServer
        if self.xs_server is None:
            self.xs_server = UnixSocketServer(self.xenstored, path)
            self.xs_server.start()
        return self.xs_server.path

    def console_write(self, d: Domain, data: bytes, hypervisor: bool = False) -> None:
        """console_io output: Xen prefixes each guest line with (dN) on its own console."""
        self.hv_console.append(data)
        self._console_out(d, data)

    def _console_out(self, d: Domain, data: bytes) -> None:
        d.console_log += data
        if len(d.console_log) > 2 * CONSOLE_LOG_MAX:       # keep the last CONSOLE_LOG_MAX
            del d.console_log[:-CONSOLE_LOG_MAX]
        if d.console_sink is not None:
            d.console_sink(data)
        self._wakeup.set()

    # --- scheduling --------------------------------------------------------------------------
    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the scheduler thread (backends' worker threads use this)."""
        self._soon.append(fn)
        self.wake()

    @property
    def calls_pending(self) -> bool:
        return bool(self._soon)

    def run_soon_calls(self) -> None:
        """Run the queued calls.  One that raises is a bug in a host-side backend: it is
        logged with its traceback and counted (``soon_call_failures``), and the host —
        every other domain — carries on, as Xen survives a dom0 driver's bug."""
        while self._soon:
            fn = self._soon.popleft()
            try:
                fn()
            except Exception:
                self.soon_call_failures += 1
                log.exception("host-side call %s failed", getattr(fn, "__qualname__", fn))

    def wake(self) -> None:
        """Get the scheduler loop's attention (a control request, console input...):
        wake it if idle, have the running vCPU give the CPU back soon otherwise."""
        self._wake_requested = True
        self._wakeup.set()

    def domain_shutdown(self, d: Domain) -> None:
        """A domain shut down: tell XenStore watchers (@releaseDomain), as Xen's
        xenstored does on VIRQ_DOM_EXC."""
        if self.xenstored.is_domain_introduced(d.domid):
            self.xenstored.domain_shutdown(d.domid)
        self._wakeup.set()

    def notify_event(self, d: Domain) -> None:
        """Something happened for ``d`` (an event, a timer): wake the loop; if one of its
        vCPUs is running outside a hypercall, stop it so the upcall is delivered now."""
        self._wakeup.set()
        cur = self._current
        if cur is not None and cur.domain is d and not (cur.in_hypercall or cur.in_syscall_hook):
            cur.preempt_pending = True     # delivered when it next enters the hypervisor

    def _tick(self) -> None:
        """Real-time preemption, without ever stopping a vCPU from this thread.

        A uc_emu_stop from another thread makes Unicorn abandon the running block without
        re-syncing the PC from it (cpu_tb_exec skips synchronize_from_tb when stop_request
        is set): the vCPU resumes at a stale PC and re-executes code.  Stops made inside a
        hook are safe (the hook synced the PC).  So the ticker only sets a flag: the vCPU
        gives the CPU back at its next hook (Vcpu.hook_exit), and a slice that must end
        anyway carries a C block budget (see _run_vcpu).  The one asynchronous stop left
        is the run's deadline, after which the vCPU is not resumed without a warning."""
        while self._ticking:
            time.sleep(QUANTUM)
            if self.scheduler.deterministic:
                continue
            v = self._current
            if v is None:
                continue
            if self._cpu_wanted(v):
                v.preempt_pending = True
            if self._deadline is not None and time.monotonic() >= self._deadline + QUANTUM:
                with v.cpu.hook_lock:
                    if self._current is v:
                        v.async_stopped = True
                        self._preempted = True
                        v.cpu.stop()

    def _cpu_wanted(self, v: Vcpu) -> bool:
        """Does anything but ``v`` need the scheduler (ticker thread, read-only)?"""
        if self._wake_requested or self._soon:
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return True
        nxt = self.timers.peek_deadline()
        if nxt is not None and nxt <= self.clock.now():
            return True
        try:
            for d in list(self.domains.values()):
                if d.runnable and not self.scheduler.capped(d):
                    for w in d.vcpus:
                        if w is not v and w.online and not w.blocked and not w.debug_hold:
                            return True
            return self.scheduler.capped(v.domain)
        except RuntimeError:               # the dict changed under us: just ask
            return True

    def preempted(self, v: Vcpu) -> None:
        """Called by ``v`` itself from a hook when its time slice is over."""
        self._preempted = True
        v.cpu.stop()

    def _needs_budget(self, v: Vcpu) -> bool:
        """Must this slice end by itself?  Yes when anything else may need the CPU: other
        domains, a timer of v's, a daemon's until(), the deterministic clock.  A lone vCPU
        runs without the per-block hook, at full speed."""
        if self.scheduler.deterministic or self._until_given or self.debuggers or \
                v.singleshot or v.periodic:
            return True
        return any(d is not v.domain and not d.finished for d in self.domains.values()) or \
            len([w for w in v.domain.vcpus if w.online]) > 1

    def run(self, domains: Iterable[Domain] | None = None, timeout: float | None = None,
            until: Callable[[], bool] | None = None) -> bool:
        """Run every domain of the host until all of ``domains`` (default: all) have
        shut down (True), ``until()`` holds (True), or ``timeout`` wall seconds (False)."""
        targets = list(domains) if domains is not None else list(self.domains.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        self._deadline = deadline
        self._until_given = until is not None
        self._ticking = True
        self._ticker = threading.Thread(target=self._tick, name="xenpy-tick", daemon=True)
        self._ticker.start()
        try:
            while True:
                self._wake_requested = False
                if until is not None and until():
                    return True
                if targets and all(d.finished for d in targets):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._schedule_once(deadline)
        finally:
            self._ticking = False
            self._current = None
            self._deadline = None

    def _schedule_once(self, deadline: float | None) -> None:
        """Fire due timers, then run one slice of the chosen vCPU, or idle."""
        from . import time as xtime
        self.run_soon_calls()
        clock = self.clock
        now = clock.now()
        for t in self.timers.expire(now):
            xtime.fire(t)
        domains = [d for d in self.domains.values() if d.runnable]
        self.scheduler.new_period(now, domains)
        ready = [v for d in domains if not self.scheduler.capped(d)
                 for v in d.vcpus if v.online and not v.blocked and not v.debug_hold]
        if not ready:
            self._idle(deadline, domains)
            return
        self.slices += 1
        self._run_vcpu(self.scheduler.pick(ready))

    def _idle(self, deadline: float | None, domains: list[Domain]) -> None:
        """Nothing to run: sleep until an event, the next timer or the next cap period."""
        nxt = self.timers.next_deadline()
        if any(self.scheduler.capped(d) for d in domains):
            period_end = self.scheduler.period_start + 30_000_000
            nxt = period_end if nxt is None else min(nxt, period_end)
        if self.clock.deterministic and nxt is not None:
            self.clock.advance(nxt - self.clock.now())      # skip idle virtual time
            return
        wait = 0.05
        if nxt is not None:
            wait = min(wait, max(0.0, (nxt - self.clock.now()) / 1e9))
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        self._wakeup.clear()
        self._wakeup.wait(wait)

    def _run_vcpu(self, v: Vcpu) -> None:
        from . import time as xtime
        d = v.domain
        v.yielded = False
        v.debug_stop = False
        if v.pending_registers is not None:        # brought up by VCPUOP_initialise
            try:
                domctl.load_pending(v)
            except domctl.DomctlError as e:
                d.crash(f"vcpu{v.vcpu_id}: its context cannot be loaded: {e}")
                return
        xtime.update_vcpu_time(v)
        # a context handed over through the firmware's ring-0 iret (boot, a restored
        # vCPU) is entered first: the upcall's frame belongs on the guest's stack
        if v.vcpu_info_pending() and not v.pending_user:
            try:
                entered = firmware.enter_guest_context(v)
            except uc.UcError as e:
                d.crash(f"the CPU stopped: {e} entering vcpu{v.vcpu_id}'s context")
                return
            if not (d.runnable and v.online):      # its iret faulted and crashed it
                return
            if entered:
                (traps64 if d.width == Width.X86_64 else traps).deliver_event(v)
        if v.async_stopped:
            log.warning("d%d v%d resumes after an asynchronous stop: its state may be "
                        "inconsistent (Unicorn does not re-sync the PC)", d.domid, v.vcpu_id)
            v.async_stopped = False
        budget = v.existing_budget
        if self._needs_budget(v):
            budget = v.block_budget()
            budget.arm(self.scheduler.slice_blocks)
        elif budget is not None:
            budget.arm(0)                  # the hook stays (see block_budget), unarmed
        before = budget.blocks if budget is not None else 0
        with v.cpu.hook_lock:              # see _preempt
            self._preempted = False
            v.preempt_pending = False
            self._current = v
            self._slice_started = time.monotonic()
        t0 = time.perf_counter_ns()
        try:
            v.run_slice()
        except uc.UcError as e:
            ip = v.cpu.reg("eip" if d.width == Width.X86_32 else "rip")
            d.crash(f"the CPU stopped: {e} at {ip:#x}")
        finally:
            with v.cpu.hook_lock:
                self._current = None
            elapsed = time.perf_counter_ns() - t0
            d.cpu_time += elapsed / 1e9
        if budget is not None and budget.expired:
            self._preempted = True
        if self.scheduler.deterministic:
            ran = budget.blocks - before
            self.clock.advance(ran * xtime.NS_PER_BLOCK)
            self.scheduler.charge(v, ran * xtime.NS_PER_BLOCK)
        else:
            self.scheduler.charge(v, elapsed)
        if v.debug_stop:
            return
        if v.denied_io is not None:
            emul_priv_op.finish_denied_io(v)
            return
        if not (v.cpu.stop_requested or self._preempted or not d.runnable):
            ip = v.cpu.reg("eip" if d.width == Width.X86_32 else "rip")
            d.crash(f"the CPU stopped unexpectedly at {ip:#x} (triple fault?)")

    def close(self) -> None:
        if self.blkback is not None:
            self.blkback.close()
            self.blkback = None
        for d in list(self.domains.values()):
            self.destroy_domain(d)
        if self.xs_server is not None:
            self.xs_server.stop()
            self.xs_server = None
