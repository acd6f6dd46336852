"""The Host: machine memory, the domains, the scheduler loop and the dom0 services.

Everything hangs off a Host (no module state): tests create one per test.  The dom0
services a real Xen host runs in its control domain — xenconsoled, xenstored — are
Python objects here that reach guests only through shared pages and event channels.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import unicorn as uc

from ..abi.xen import FLAT_RING1_CS, FLAT_RING1_DS, PAGE_SIZE, Width
from ..backends.console import ConsoleBackend
from . import (callback, console, descriptor_tables, event_channel, grant_table,  # noqa: F401
               iret, memory, mm, multicall, physdev, sched, traps64, version)
from .domain import Domain
from .layout import SEL_RING0_CS, SEL_RING0_DS, SEL_TSS, DomainLayout32, HostLayout32
from .layout64 import DomainLayout64, HostLayout64
from .machine import MachineMemory
from .vcpu import Vcpu

log = logging.getLogger("xenpy.host")

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
QUANTUM = 0.01          # seconds of guest time before another runnable vCPU gets the CPU


class Host:
    def __init__(self, memory_mib: int = 256) -> None:
        self.mem = MachineMemory(memory_mib)
        self.layout32 = HostLayout32.create(self.mem)
        self.layout64: HostLayout64 | None = None      # built with the first 64-bit domain
        self.domains: dict[int, Domain] = {}
        self.consoles = ConsoleBackend()
        self.xenstored = None                      # set by enable_xenstore()
        self._next_domid = 1
        self._current: Vcpu | None = None
        self._preempted = False
        self._wakeup = threading.Event()
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
        self.consoles.disconnect(d.domid)
        if self.xenstored is not None:
            self.xenstored.release_domain(d.domid)
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
        cpu.set_reg("cr4", CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT)
        v.set_cr3(cr3)
        cpu.set_reg("cr0", CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
        cpu.set_gdtr(lay.gdt_va(v.vcpu_id), 0xFFFF)
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
        def kick() -> None:
            if self.xenstored is not None:
                self.xenstored.ring_kick(d.domid)
        port = d.evtchn.bind_backend(kick)
        if self.xenstored is not None:
            base = d.store_mfn << 12
            self.xenstored.introduce_domain(d.domid, self.mem.view[base:base + PAGE_SIZE],
                                            lambda: d.evtchn.set_pending(port))
        return port

    def console_write(self, d: Domain, data: bytes, hypervisor: bool = False) -> None:
        """console_io output: Xen prefixes each guest line with (dN) on its own console."""
        self.hv_console.append(data)
        self._console_out(d, data)

    def _console_out(self, d: Domain, data: bytes) -> None:
        d.console_log += data
        if d.console_sink is not None:
            d.console_sink(data)
        self._wakeup.set()

    # --- scheduling --------------------------------------------------------------------------
    def _tick(self) -> None:
        while self._ticking:
            time.sleep(QUANTUM)
            v = self._current
            if v is not None:
                self._preempted = True
                v.cpu.stop()

    def run(self, domains: Iterable[Domain] | None = None, timeout: float | None = None,
            until: Callable[[], bool] | None = None) -> bool:
        """Run guests until every one of ``domains`` has shut down (True) or ``timeout``."""
        targets = list(domains) if domains is not None else list(self.domains.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ticking = True
        self._ticker = threading.Thread(target=self._tick, name="xenpy-tick", daemon=True)
        self._ticker.start()
        try:
            while True:
                if until is not None and until():
                    return True
                live = [d for d in targets if d.runnable]
                if not live:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                ready = [v for d in live for v in d.vcpus if v.online and not v.blocked]
                if not ready:
                    self._wakeup.clear()
                    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                    self._wakeup.wait(min(wait, 0.05) if wait is not None else 0.05)
                    for d in live:
                        for v in d.vcpus:
                            if v.blocked and v.vcpu_info.evtchn_upcall_pending:
                                v.kick()
                    continue
                for v in ready:
                    self._run_vcpu(v)
        finally:
            self._ticking = False
            self._current = None

    def _run_vcpu(self, v: Vcpu) -> None:
        d = v.domain
        self._preempted = False
        v.yielded = False
        self._current = v
        t0 = time.perf_counter()
        try:
            v.run_slice()
        except uc.UcError as e:
            ip = v.cpu.reg("eip" if d.width == Width.X86_32 else "rip")
            d.crash(f"the CPU stopped: {e} at {ip:#x}")
        finally:
            self._current = None
            d.cpu_time += time.perf_counter() - t0
        if v.debug_stop:
            return
        if not (self._preempted or v.yielded or v.blocked or not d.runnable):
            ip = v.cpu.reg("eip" if d.width == Width.X86_32 else "rip")
            d.crash(f"the CPU stopped unexpectedly at {ip:#x} (triple fault?)")

    def close(self) -> None:
        for d in list(self.domains.values()):
            self.destroy_domain(d)
