"""A blkfront written in Python for tests: it plays the guest's part of the handshake and
the ring, writing into the domain's own memory and grant table, so blkback sees exactly
what a guest kernel would produce — including what a hostile one would."""
from __future__ import annotations


from mm.world import boot
from xenpy.abi import grant_table as G
from xenpy.abi.io import blkif as B
from xenpy.abi.io import ring as R
from xenpy.abi.io.xenbus import XenbusState as S
from xenpy.abi.xen import DOMID_SELF, PAGE_SIZE
from xenpy.toolstack.disk import attach_disk, backend_path, frontend_path, parse_disk_spec

RING_REF0 = 8            # grant refs: rings from here, data pages from DATA_REF0
DATA_REF0 = 64
NR_DATA = 48


def boot_front(domain_factory, width: int):
    g = boot(domain_factory, width=width, name=f"front{width}", mib=8)
    g.setup_grant_table(1)
    return g


class FakeFront:
    def __init__(self, g, bb, spec: str, order: int = 0, protocol: str | None = None,
                 index: int = 0) -> None:
        """``index`` separates the grant refs and frames of several devices of one guest."""
        self.g, self.bb = g, bb
        self.xs = bb.xs
        self.disk = parse_disk_spec(spec)
        self.domid = g.domid
        self.fe = frontend_path(self.domid, self.disk.devid)
        self.be = backend_path(self.domid, self.disk.devid)
        self.layout = B.LAYOUTS[protocol] if protocol else B.native_layout(g.d.width)
        self.order = order
        self.nr_pages = 1 << order
        self.nr_ents = R.ring_size(self.layout.entry_size, self.nr_pages)
        self.ring_ref0 = RING_REF0 + 4 * index
        self.data_ref0 = DATA_REF0 + NR_DATA * index
        base = 64 * index
        self.ring_mfns = [g.free_mfn(base + i) for i in range(self.nr_pages)]
        self.data_mfns = [g.free_mfn(base + 16 + i) for i in range(NR_DATA)]
        self.req_prod = 0
        self.rsp_cons = 0
        self.port = 0
        self.next_id = 1
        self.persistent = False

    # --- xenstore ----------------------------------------------------------------------------
    def attach(self) -> None:
        attach_disk(self.xs, self.domid, self.disk)
        self.bb.poll()

    def be_state(self) -> S:
        return S.parse(self.bb.read_raw(f"{self.be}/state"))

    def be_key(self, key: str) -> str | None:
        return self.bb.read(f"{self.be}/{key}")

    def set_state(self, st: S) -> None:
        self.xs.write(f"{self.fe}/state", str(int(st)))
        self.bb.poll()

    def connect(self, *, publish: bool = True, start: int = 0) -> None:
        """blkfront's talk_to_blkback: grant the ring, an unbound port, the keys, Initialised."""
        for i, mfn in enumerate(self.ring_mfns):
            self.g.mem.write(mfn << 12, bytes(PAGE_SIZE))
            self.g.grant(self.ring_ref0 + i, 0, mfn)
        for off in (R.OFF_REQ_PROD, R.OFF_RSP_PROD):
            R.put_u32(self.page(0), off, start)
        R.put_u32(self.page(0), R.OFF_RSP_EVENT, start + 1)
        R.put_u32(self.page(0), R.OFF_REQ_EVENT, start + 1)
        self.req_prod = self.rsp_cons = start
        self.port = self.g.d.evtchn.alloc_unbound(DOMID_SELF, 0)
        assert self.port > 0
        if publish:
            if self.order:
                self.xs.write(f"{self.fe}/ring-page-order", str(self.order))
                for i in range(self.nr_pages):
                    self.xs.write(f"{self.fe}/ring-ref{i}", str(self.ring_ref0 + i))
            else:
                self.xs.write(f"{self.fe}/ring-ref", str(self.ring_ref0))
            self.xs.write(f"{self.fe}/event-channel", str(self.port))
            self.xs.write(f"{self.fe}/feature-persistent", "1" if self.persistent else "0")
            self.xs.write(f"{self.fe}/protocol", self.layout.name)
        self.set_state(S.Initialised)

    # --- memory ------------------------------------------------------------------------------
    def page(self, i: int) -> memoryview:
        return self.g.mem.page(self.ring_mfns[i])

    def ring_write(self, off: int, data: bytes) -> None:
        for k, byte in enumerate(data):
            page, o = divmod(off + k, PAGE_SIZE)
            self.page(page)[o] = byte

    def ring_read(self, off: int, n: int) -> bytes:
        return bytes(self.page((off + k) // PAGE_SIZE)[(off + k) % PAGE_SIZE] for k in range(n))

    def slot(self, idx: int) -> int:
        return R.SRING_HEADER_SIZE + (idx % self.nr_ents) * self.layout.entry_size

    def data(self, i: int) -> memoryview:
        return self.g.mem.page(self.data_mfns[i])

    def grant_data(self, i: int, readonly: bool = False) -> int:
        flags = G.GTF_permit_access | (G.GTF_readonly if readonly else 0)
        self.g.grant(self.data_ref0 + i, 0, self.data_mfns[i], flags)
        return self.data_ref0 + i

    # --- requests ----------------------------------------------------------------------------
    def rw(self, op: int, sector: int, segs: list[tuple[int, int, int]], rid: int | None = None
           ) -> bytes:
        rid = self._id(rid)
        raw = bytearray(self.layout.entry_size)
        self.layout.request.pack_into(raw, 0, op, len(segs), self.disk.devid, rid, sector)
        for i, (gref, first, last) in enumerate(segs):
            B.SEGMENT.pack_into(raw, self.layout.seg_offset + i * 8, gref, first, last, 0)
        return bytes(raw)

    def discard(self, sector: int, nr: int, rid: int | None = None) -> bytes:
        raw = bytearray(self.layout.entry_size)
        self.layout.discard.pack_into(raw, 0, B.BLKIF_OP_DISCARD, 0, self.disk.devid,
                                      self._id(rid), sector, nr)
        return bytes(raw)

    def indirect(self, op: int, sector: int, nseg: int, grefs: list[int], rid: int | None = None
                 ) -> bytes:
        raw = bytearray(self.layout.entry_size)
        g8 = (grefs + [0] * 8)[:8]
        self.layout.indirect.pack_into(raw, 0, B.BLKIF_OP_INDIRECT, op, nseg, self._id(rid),
                                       sector, self.disk.devid, *g8)
        return bytes(raw)

    def _id(self, rid: int | None) -> int:
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        return rid

    def push(self, *reqs: bytes, notify: bool = True) -> None:
        for raw in reqs:
            self.ring_write(self.slot(self.req_prod), raw)
            self.req_prod = (self.req_prod + 1) & 0xFFFF_FFFF
        R.put_u32(self.page(0), R.OFF_REQ_PROD, self.req_prod)
        if notify:
            assert self.g.d.evtchn.send(self.port) == 0

    def complete(self) -> list[tuple[int, int, int]]:
        """Let the backend finish its I/O, then take every response (id, op, status)."""
        self.bb.settle()
        out = []
        rp = R.get_u32(self.page(0), R.OFF_RSP_PROD)
        while self.rsp_cons != rp:
            out.append(self.layout.response.unpack(
                self.ring_read(self.slot(self.rsp_cons), self.layout.response.size)))
            self.rsp_cons = (self.rsp_cons + 1) & 0xFFFF_FFFF
        R.put_u32(self.page(0), R.OFF_RSP_EVENT, self.rsp_cons + 1)
        return out

    def do(self, *reqs: bytes) -> list[int]:
        """Push, complete, and return the statuses in request order."""
        self.push(*reqs)
        rsps = self.complete()
        assert len(rsps) == len(reqs), rsps
        return [st for _, _, st in rsps]

    def pending(self) -> bool:
        """Is the frontend's event pending (did the backend notify)?"""
        word, bit = divmod(self.port, self.g.d.width * 8)
        return bool(self.g.d.shared_info.evtchn_pending[word] >> bit & 1)
