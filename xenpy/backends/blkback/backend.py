"""blkback's data path: one shared ring per connected frontend, blocking I/O on a worker.

Threads.  Everything that touches hypervisor state — mapping and unmapping grants,
reading requests, writing responses, raising the event — runs on the scheduler thread
(the frontend's event-channel kick and ``HostCalls`` callbacks land there).  File I/O
that may block (data not in the page cache, fdatasync, hole punching) runs on the
device's worker thread, so a slow disk never stalls a vCPU.  A finished job is handed
back with ``HostCalls.call_soon``, which runs it on the scheduler thread at its next
iteration; the mapped views stay valid until then because only that thread unmaps.

Fast path.  A READ (or WRITE, where the filesystem allows it) that cannot block —
preadv2/pwritev2 with RWF_NOWAIT succeeds in full — is done inline on the scheduler
thread while the worker has nothing of this ring, and answered at once: page-cache hits
then cost no thread handoff (two wake-ups, far more than the copy).  Anything else
(EAGAIN, a short transfer, barriers, flushes, discards) goes to the worker as before,
and so does everything behind a request that went there, so requests still run in order.
An inline READ marks the guest pages it filled for log-dirty, as a completion does, and
the responses of one kick are published together (one event per batch).  Whole-page
segments of persistent grants use the grant's own page view (``_pviews``): no slice.

Requests of one ring run in order (one worker per ring), so WRITE_BARRIER and
FLUSH_DISKCACHE order against earlier writes for free.  The frontend's event only queues
a kick: requests are taken when the scheduler next runs host work, so a burst becomes one
batch (one thread handoff each way, which costs far more than a page-cache read).

Persistent grants (feature-persistent on both ends): a segment's grant is mapped once,
writable, and kept until disconnect (at most MAX_PERSISTENT_GRANTS per ring); the
frontend cannot revoke it meanwhile (GTF_reading/GTF_writing stay set), which is what
makes caching by grant reference safe.  Grants that cannot be mapped writable (granted
read-only) fall back to a per-request mapping.

Hostile frontends.  Every slot is copied once and parsed (protocol.py); grant failures,
sectors past the end, unknown ops, too many segments become error responses; a ring
whose ``req_prod - req_cons`` exceeds its size marks the frontend broken (no more
requests are taken, as Linux's blkback does).  ``Image`` re-checks every range.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ...abi.io import blkif as B
from ...abi.io import ring as R
from ...abi.xen import PAGE_SHIFT
from ...hv import grant_table as gnttab
from . import protocol as P
from .image import Image

if TYPE_CHECKING:
    from ...hv.domain import Domain
    from ...hv.host import Host

log = logging.getLogger("xenpy.blkback")

#: persistent grants kept per ring (Linux blkback's xen_blkif_max_pgrants default)
MAX_PERSISTENT_GRANTS = 1056


class HostCalls:
    """Run callables on the host's scheduler thread, from any thread (Host.call_soon);
    ``run_pending()`` drains them when no scheduler loop runs (unit tests)."""

    def __init__(self, host: "Host") -> None:
        self.host = host

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.host.call_soon(fn)

    @property
    def pending(self) -> bool:
        return self.host.calls_pending

    def run_pending(self) -> None:
        self.host.run_soon_calls()


@dataclass
class Job:
    """One request, its grants mapped, waiting for (or back from) the worker."""
    req: P.ReadWrite | P.Discard
    maps: list[gnttab.BackendMap]
    bufs: list[memoryview]
    status: int = B.BLKIF_RSP_OKAY
    mfns: list[int] = field(default_factory=list)     # the guest frames of the data
    #: the views of ``bufs`` made for this request, released before unmapping (the rest
    #: are whole persistent-grant pages, which stay valid until disconnect)
    slices: list[memoryview] = field(default_factory=list)


class Worker:
    """The I/O thread of one ring: runs batches of jobs in order, returns each batch via
    ``done`` (one thread handoff per batch each way: a handoff costs far more than a
    page-cache read)."""

    def __init__(self, name: str, image: Image, done: Callable[[list[Job]], None]) -> None:
        self.image = image
        self._done = done
        self._q: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self.inflight = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        with self._idle:
            self.inflight += len(jobs)
        self._q.put(jobs)

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self.inflight == 0, timeout)

    def _run(self) -> None:
        while (jobs := self._q.get()) is not None:
            for job in jobs:
                try:
                    self.execute(job)
                except OSError as e:
                    log.debug("blkback I/O error on %s: %s", self.image.info.path, e)
                    job.status = B.BLKIF_RSP_ERROR
            self._done(jobs)
            with self._idle:
                self.inflight -= len(jobs)
                self._idle.notify_all()

    def execute(self, job: Job) -> None:
        req, img = job.req, self.image
        if isinstance(req, P.Discard):
            img.discard(req.sector << B.SECTOR_SHIFT, req.nr_sectors << B.SECTOR_SHIFT)
            return
        if req.op == B.BLKIF_OP_WRITE_BARRIER:
            img.flush()                       # everything before the barrier is stable
        if job.bufs:
            if req.writes:
                img.writev(req.sector << B.SECTOR_SHIFT, job.bufs)
            else:
                img.readv(req.sector << B.SECTOR_SHIFT, job.bufs)
        if req.flushes:
            img.flush()


def bind_backend_port(d: "Domain", port: int, callback: Callable[[], None]) -> bool:
    return d.evtchn.bind_backend_port(port, callback)


def unbind_backend_port(d: "Domain", port: int) -> None:
    d.evtchn.unbind_backend_port(port)


@dataclass
class RingStats:
    requests: int = 0
    errors: int = 0
    unsupported: int = 0
    inline: int = 0            # done on the scheduler thread (RWF_NOWAIT succeeded)
    internal_errors: int = 0   # requests failed by a blkback bug (logged)


@dataclass
class BlkifRing:
    """A connected frontend: its mapped ring pages, event channel, disk and worker."""
    d: "Domain"
    calls: HostCalls
    image: Image
    layout: B.Layout
    ring_maps: list[gnttab.BackendMap]
    port: int
    readonly: bool
    req_cons: int = 0
    rsp_prod_pvt: int = 0
    broken: str | None = None
    connected: bool = True
    stats: RingStats = field(default_factory=RingStats)
    worker: Worker | None = None
    #: feature-persistent negotiated: grants stay mapped (writable) until disconnect,
    #: keyed by grant ref, up to MAX_PERSISTENT_GRANTS (Linux's max_pgrants)
    persistent: bool = False
    pgrants: dict[int, gnttab.BackendMap] = field(default_factory=dict)
    _pending: int = 0
    #: of each persistent grant: its page's view and frame (the fast path of _dispatch)
    _pviews: dict[int, memoryview] = field(default_factory=dict)
    _pmfns: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nr_ents = R.ring_size(self.layout.entry_size, len(self.ring_maps))
        self.sectors = self.image.size >> B.SECTOR_SHIFT
        self.worker = Worker(f"blkback-d{self.d.domid}", self.image,
                             lambda jobs: self.calls.call_soon(lambda: self._complete(jobs)))
        self._batch: list[Job] = []
        self._kick_queued = False
        # attach where the frontend's ring stands (BACK_RING_ATTACH at rsp_prod)
        self.rsp_prod_pvt = R.get_u32(self.ring_maps[0].view, R.OFF_RSP_PROD)
        self.req_cons = self.rsp_prod_pvt
        self.d.on_unpause.append(self.kick)

    # --- ring memory (entries may straddle pages on a multi-page ring) -------------------
    def _slot_off(self, idx: int) -> int:
        return R.SRING_HEADER_SIZE + (idx & (self.nr_ents - 1)) * self.layout.entry_size

    def _read(self, off: int, n: int) -> bytes:
        page, o = divmod(off, 4096)
        if o + n <= 4096:                     # the usual case: the slot is on one page
            return bytes(self.ring_maps[page].view[o:o + n])
        out = bytearray()
        while n:
            page, o = divmod(off, 4096)
            k = min(n, 4096 - o)
            out += self.ring_maps[page].view[o:o + k]
            off, n = off + k, n - k
        return bytes(out)

    def _write(self, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            page, o = divmod(off + pos, 4096)
            k = min(len(data) - pos, 4096 - o)
            self.ring_maps[page].view[o:o + k] = data[pos:pos + k]
            pos += k

    # --- requests (scheduler thread) ------------------------------------------------------
    def notify(self) -> None:
        """The frontend's event: take its requests once it stops running (like blkback's
        thread being woken), so a burst of requests becomes one batch for the worker."""
        if not self._kick_queued:
            self._kick_queued = True
            self.calls.call_soon(self._queued_kick)

    def _queued_kick(self) -> None:
        self._kick_queued = False
        self.kick()

    def kick(self) -> None:
        """Take every request the frontend published — not while its domain is paused:
        a domain being restored or migrated in must not touch the (shared) disk before
        it is committed to run here; ``d.on_unpause`` kicks again."""
        if not self.connected or self.broken or self.d.paused:
            return
        hdr = self.ring_maps[0].view
        try:
            self._take_requests(hdr)
        finally:
            self._flush()

    def _flush(self) -> None:
        """Hand the requests taken so far to the worker, publish error responses."""
        if self._batch:
            assert self.worker is not None
            batch, self._batch = self._batch, []
            self.worker.submit(batch)
        self._push()

    def _take_requests(self, hdr: memoryview) -> None:
        while True:
            rp = R.get_u32(hdr, R.OFF_REQ_PROD)
            if R.request_prod_overflow(rp, self.req_cons, self.nr_ents):
                self.broken = (f"req_prod {rp} - req_cons {self.req_cons} exceeds the ring "
                               f"size {self.nr_ents}")
                log.warning("d%d blkback: frontend broken: %s", self.d.domid, self.broken)
                return
            while self.req_cons != rp:
                if R.idx_sub(self.req_cons, self.rsp_prod_pvt) >= self.nr_ents:
                    return               # RING_REQUEST_CONS_OVERFLOW: wait for responses
                slot = self._read(self._slot_off(self.req_cons), self.layout.entry_size)
                self.req_cons = R.idx_add(self.req_cons, 1)
                req = P.parse_request(slot, self.layout)
                try:
                    self._dispatch(req)
                except Exception:          # a blkback bug: fail this request, go on
                    self.stats.internal_errors += 1
                    log.exception("d%d blkback: request %d failed inside blkback",
                                  self.d.domid, req.id)
                    self._respond(req.id, req.op, B.BLKIF_RSP_ERROR)
            if not R.final_check_for_requests(hdr, self.req_cons):
                return

    def _dispatch(self, req: P.Request) -> None:
        self.stats.requests += 1
        if isinstance(req, P.Unsupported):
            log.debug("d%d blkback: unsupported operation %d", self.d.domid, req.op)
            self.stats.unsupported += 1
            self._respond(req.id, req.op, B.BLKIF_RSP_EOPNOTSUPP)
            return
        if isinstance(req, P.Indirect):
            req = self._resolve_indirect(req)
        if isinstance(req, P.Invalid):
            self._fail(req.id, req.op, req.reason)
            return
        why = P.check_bounds(req, self.sectors, self.readonly)
        if why is not None:
            self._fail(req.id, req.op, why)
            return
        maps: list[gnttab.BackendMap] = []
        bufs: list[memoryview] = []
        mfns: list[int] = []
        slices: list[memoryview] = []
        if isinstance(req, P.ReadWrite):
            writes = req.writes
            segs = req.segments
            nbytes = 0
            if segs and self._pviews:      # all whole persistent pages (usual): no loop
                grefs, firsts, lasts = zip(*segs)
                if firsts.count(0) == len(segs) and \
                        lasts.count(P.SECTORS_PER_PAGE - 1) == len(segs):
                    try:
                        bufs = list(map(self._pviews.__getitem__, grefs))
                        mfns = list(map(self._pmfns.__getitem__, grefs))
                        nbytes = len(grefs) << PAGE_SHIFT
                        segs = ()
                    except KeyError:       # a grant used for the first time
                        bufs, mfns = [], []
            pgrants = self.pgrants if self.persistent else {}
            try:
                for gref, first, last in segs:
                    nbytes += (last - first + 1) << B.SECTOR_SHIFT
                    bm = pgrants.get(gref)
                    if bm is not None and first == 0 and last == P.SECTORS_PER_PAGE - 1:
                        bufs.append(bm.view)          # a whole persistent page: no slice
                    else:
                        if bm is None:
                            bm = self._map_segment(gref, writes, maps)
                        view = bm.view[first << B.SECTOR_SHIFT:(last + 1) << B.SECTOR_SHIFT]
                        bufs.append(view)
                        slices.append(view)
                    mfns.append(bm.mfn)
            except gnttab.GrantError as e:
                self._unmap(maps, slices)
                self._fail(req.id, req.op, str(e))
                return
            if not self._pending and self._inline(req, bufs, nbytes, mfns):
                self._unmap(maps, slices)
                self._respond(req.id, req.op, B.BLKIF_RSP_OKAY)
                return
        self._pending += 1
        self._batch.append(Job(req, maps, bufs, mfns=mfns, slices=slices))

    def _inline(self, req: P.ReadWrite, bufs: list[memoryview], nbytes: int, mfns: list[int]
                ) -> bool:
        """Do a plain READ/WRITE of ``nbytes`` now if it cannot block (see the module
        docstring); False: it goes to the worker.  Only called with nothing of ours on
        the worker."""
        if req.op == B.BLKIF_OP_READ:
            if not self.image.readv_nowait(req.sector << B.SECTOR_SHIFT, bufs, nbytes):
                return False
            mark = self.d.mem.write_observer
            if mark is not None:
                for mfn in mfns:              # the READ filled these guest pages
                    mark(mfn)
        elif req.op != B.BLKIF_OP_WRITE or not self.image.writev_nowait(
                req.sector << B.SECTOR_SHIFT, bufs, nbytes):
            return False
        self.stats.inline += 1
        return True

    def _map_segment(self, gref: int, readonly: bool, maps: list[gnttab.BackendMap]
                     ) -> gnttab.BackendMap:
        """A mapping of ``gref``: the persistent one, a new persistent one (writable,
        as Linux maps them), or one for this request only (appended to ``maps``)."""
        if self.persistent:
            bm = self.pgrants.get(gref)
            if bm is not None:
                return bm
            if len(self.pgrants) < MAX_PERSISTENT_GRANTS:
                try:
                    bm = gnttab.table(self.d).map_for_backend(gref, readonly=False)
                except gnttab.GrantError:
                    pass                  # e.g. granted read-only: map it per request
                else:
                    self.pgrants[gref] = bm
                    self._pviews[gref] = bm.view
                    self._pmfns[gref] = bm.mfn
                    return bm
        bm = gnttab.table(self.d).map_for_backend(gref, readonly=readonly)
        maps.append(bm)
        return bm

    def _resolve_indirect(self, req: P.Indirect) -> P.ReadWrite | P.Invalid:
        pages = []
        left = req.nr_segments * B.SEGMENT.size       # copy only the segments used
        for gref in req.indirect_grefs:
            view = self._pviews.get(gref)
            if view is not None:                  # a persistent grant (the usual case)
                pages.append(bytes(view[:min(left, 4096)]))
                left -= 4096
                continue
            maps: list[gnttab.BackendMap] = []
            try:
                bm = self._map_segment(gref, True, maps)
            except gnttab.GrantError as e:
                return P.Invalid(req.id, req.op, f"indirect page: {e}")
            pages.append(bytes(bm.view[:min(left, 4096)]))
            left -= 4096
            self._unmap(maps, [])
        return P.parse_indirect_segments(req, pages)

    def _fail(self, rid: int, op: int, why: str) -> None:
        log.debug("d%d blkback: request %#x op %d refused: %s", self.d.domid, rid, op, why)
        self.stats.errors += 1
        self._respond(rid, op, B.BLKIF_RSP_ERROR)

    def _unmap(self, maps: list[gnttab.BackendMap], bufs: list[memoryview]) -> None:
        for b in bufs:
            b.release()
        for bm in maps:
            if bm.live:
                gnttab.table(self.d).unmap_for_backend(bm)

    def _complete(self, jobs: list[Job]) -> None:
        """Back from the worker (scheduler thread): unmap, respond, look for more."""
        mark = self.d.mem.write_observer
        for job in jobs:
            if mark is not None and isinstance(job.req, P.ReadWrite) and not job.req.writes:
                for mfn in job.mfns:          # a READ filled these guest pages
                    mark(mfn)
            self._pending -= 1
            self._unmap(job.maps, job.slices)
            if job.status != B.BLKIF_RSP_OKAY:
                self.stats.errors += 1
            if self.connected:
                self._respond(job.req.id, job.req.op, job.status)
        if self.connected:
            self._push()
            self.kick()                          # requests held back by a full ring

    def _respond(self, rid: int, op: int, status: int) -> None:
        """Write a response slot; ``_push`` publishes it."""
        off = self._slot_off(self.rsp_prod_pvt)
        page, o = divmod(off, 4096)
        if o + self.layout.response.size <= 4096:     # the usual case: on one page
            P.response_into(self.layout, self.ring_maps[page].view, o, rid, op, status)
        else:
            self._write(off, P.response(self.layout, rid, op, status))
        self.rsp_prod_pvt = R.idx_add(self.rsp_prod_pvt, 1)

    def _push(self) -> None:
        if R.get_u32(self.ring_maps[0].view, R.OFF_RSP_PROD) == self.rsp_prod_pvt:
            return
        mark = self.d.mem.write_observer
        if mark is not None:
            for bm in self.ring_maps:          # responses are host writes into guest pages
                mark(bm.mfn)
        if R.push_responses_and_check_notify(self.ring_maps[0].view, self.rsp_prod_pvt):
            self.d.evtchn.set_pending(self.port)

    # --- save / migration ----------------------------------------------------------------
    def drain(self, timeout: float = 30.0) -> None:
        """Finish and answer every request taken so far (scheduler thread, the domain
        paused so no new ones come): afterwards req_cons == rsp_prod, which is all a
        backend on another host needs to attach to this ring (BACK_RING_ATTACH).  The
        image is then made stable, so that host reads what the guest was told is written."""
        deadline = time.monotonic() + timeout
        while self.connected and (self._pending or self._kick_queued):
            assert self.worker is not None
            if not self.worker.wait_idle(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"d{self.d.domid} blkback: I/O still in flight after "
                                   f"{timeout} s")
            self.calls.run_pending()           # the completions: responses pushed
        if not self.readonly:
            self.image.flush()

    # --- teardown -------------------------------------------------------------------------
    def disconnect(self) -> None:
        """Wait for in-flight I/O, then unmap the ring and unbind the event channel."""
        if not self.connected:
            return
        self.connected = False
        if self.kick in self.d.on_unpause:
            self.d.on_unpause.remove(self.kick)
        assert self.worker is not None
        self.worker.stop()
        self.calls.run_pending()                 # their grants are unmapped there
        unbind_backend_port(self.d, self.port)
        gt = gnttab.table(self.d)
        for bm in [*self.pgrants.values(), *self.ring_maps]:
            if bm.live:
                gt.unmap_for_backend(bm)
        self.pgrants.clear()
        self._pviews.clear()
        self._pmfns.clear()
