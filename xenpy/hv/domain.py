"""A domain: its memory (p2m), shared_info, vCPUs, event channels and lifecycle."""
from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Callable

from ..abi.sched import Shutdown
from ..abi.xen import PAGE_SHIFT, Width, layouts
from .event_channel import EventChannels

if TYPE_CHECKING:
    from .host import Host
    from .vcpu import Vcpu

log = logging.getLogger("xenpy.domain")


class DomainState(enum.Enum):
    """xl's view of a domain (the State column of `xl list`)."""
    running = "r"
    blocked = "b"
    paused = "p"
    shutdown = "s"
    crashed = "c"
    dying = "d"


class Domain:
    """One guest.  Created empty by Host.create_domain, filled by the domain builder."""

    def __init__(self, host: "Host", domid: int, name: str, width: Width, max_pages: int) -> None:
        self.host = host
        self.mem = host.mem
        self.domid = domid
        self.name = name
        self.width = width
        self.abi = layouts(width)
        self.max_pages = max_pages
        self.p2m: list[int] = []                  # pfn -> mfn
        self.vcpus: list["Vcpu"] = []
        self.evtchn = EventChannels(self)
        self.shared_info_mfn = -1
        self.shared_info = None
        self.hv_layout = None                     # DomainLayout32 (set by the host)
        self.shutdown_reason: Shutdown | None = None
        self.shutdown_code = 0
        self.crash_message = ""
        self.paused = False
        self.dying = False
        self.vm_assist = 0
        self.start_info_va = 0
        self.console_mfn = -1
        self.console_port = 0
        self.store_mfn = -1
        self.store_port = 0
        self.cmdline = ""
        from ..toolstack.xsdomain import new_uuid
        self.uuid = new_uuid()
        #: the toolstack's libxl-style domain config (saved in the xl header, as xl does)
        self.xl_config: dict | None = None
        self.time_offset_ns = 0          # system time - host clock (see hv/time.py)
        self.on_shutdown: list[Callable[["Domain"], None]] = []
        #: host-side backends holding work while the domain is paused (blkback)
        self.on_unpause: list[Callable[[], None]] = []
        self._logged: set[str] = set()
        self.cpu_time = 0.0                       # seconds of host time spent running
        self.xen_frames: list[int] = []           # per-domain hypervisor frames (freed with it)
        self.xen_l2s: set[int] = set()            # L2s under PAE L3 slot 3 (PGT_pae_xen_l2)
        self.special_frames: set[int] = set()     # hypervisor pages shared with it (mm.py)
        self.unplaced: set[int] = set()           # RAM frames at no tracked pfn (memory.py)
        self.grant_frames: list[int] = []         # grant-table frames (grant_table.py)
        self.gnttab = None                        # grant_table.GrantTable, made on first use
        from .schedule import SchedParams
        self.sched = SchedParams()
        self.log_dirty = None                     # domctl.LogDirty while migrating
        self.vruntime = 0
        self.period_used_ns = 0

    # --- memory ------------------------------------------------------------------------------
    def populate(self, nr_pages: int) -> None:
        """Allocate the domain's initial memory and record it in the M2P."""
        mfns = self.mem.alloc_frames(self.domid, nr_pages)
        base = len(self.p2m)
        self.p2m.extend(mfns)
        for i, mfn in enumerate(mfns):
            self.mem.set_m2p(mfn, base + i)

    @property
    def nr_pages(self) -> int:
        return sum(1 for m in self.p2m if m >= 0) + len(self.unplaced)

    def hypervisor_held(self, mfn: int) -> bool:
        """Frames the hypervisor or a host backend writes on the domain's behalf:
        shared_info, grant and v2 status frames, the console and xenstore rings.  The guest
        may not give them back, exchange or transfer them (the host would go on writing
        into a frame someone else then owns)."""
        return mfn in self.special_frames or mfn in (self.console_mfn, self.store_mfn) or \
            (self.gnttab is not None and mfn in self.gnttab.status)

    def owns(self, mfn: int) -> bool:
        return 0 <= mfn < self.mem.nr_frames and self.mem.owner[mfn] == self.domid

    def pfn_to_maddr(self, pfn: int) -> int:
        return self.p2m[pfn] << PAGE_SHIFT

    def set_shared_info(self, mfn: int) -> None:
        self.shared_info_mfn = mfn
        self.shared_info = self.abi.SharedInfo.from_buffer(self.mem.buf, mfn << PAGE_SHIFT)

    def vcpu_info(self, vcpu_id: int):
        return self.shared_info.vcpu_info[vcpu_id]

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def state(self) -> DomainState:
        if self.dying:
            return DomainState.dying
        if self.shutdown_reason is not None:
            return (DomainState.crashed if self.shutdown_reason == Shutdown.crash
                    else DomainState.shutdown)
        if self.paused:
            return DomainState.paused
        if self.vcpus and all(v.blocked for v in self.vcpus):
            return DomainState.blocked
        return DomainState.running

    @property
    def finished(self) -> bool:
        """Shut down or being destroyed: it will not run again."""
        return self.dying or self.shutdown_reason is not None

    @property
    def runnable(self) -> bool:
        return not (self.dying or self.paused or self.shutdown_reason is not None)

    def shutdown(self, reason: Shutdown, code: int = 0) -> None:
        if self.shutdown_reason is not None:
            return
        self.shutdown_reason = reason
        self.shutdown_code = code
        log.info("d%d shut down: %s", self.domid, reason.name)
        for v in self.vcpus:
            v.cpu.stop()
        self.host.domain_shutdown(self)
        for cb in list(self.on_shutdown):
            cb(self)

    def crash(self, message: str) -> None:
        """domain_crash(): the guest did something it cannot recover from."""
        if self.shutdown_reason is None:
            self.crash_message = message
            log.warning("d%d crashed: %s", self.domid, message)
        self.shutdown(Shutdown.crash)

    def log_once(self, key: str, fmt: str, *args) -> None:
        """Log a guest misbehaviour once per domain (Xen's gprintk ratelimit)."""
        if key not in self._logged:
            self._logged.add(key)
            log.warning("d%d " + fmt, self.domid, *args)

    def release(self) -> None:
        """Free everything (domain destroy).  Safe to call twice."""
        if self.dying:
            return
        self.dying = True
        self.evtchn.close_all()
        for v in self.vcpus:
            for t in (v.singleshot, v.periodic):
                if t is not None:
                    t.cancelled = True
            v.close()
        self.shared_info = None
        from .mm import relinquish_resources
        relinquish_resources(self)                # grants first: they hold references
        frames = [m for m in self.p2m if m >= 0]
        if self.shared_info_mfn >= 0:
            frames.append(self.shared_info_mfn)
        self.mem.free_frames_of(frames + self.xen_frames)
        self.p2m = []
        self.xen_frames = []
