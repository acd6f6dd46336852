"""Save and restore a PV domain in Xen's own stream format (`xl save` / `xl restore`).

A save file is xl header + libxl stream + libxc stream (stream/), with xenpy's extra
state in an EMULATOR_CONTEXT record before the libxl END (stream/extension.py), so
every file passes Xen's verify-stream-v2.  The invariants:

* **Canonical page tables.**  A guest's tables hold machine frames.  The stream holds
  pseudo-physical ones: each present entry of a page typed L1..L4 is rewritten mfn ->
  pfn through the M2P (libxc's normalise_pagetable); Xen's own slots (PAE L2 under L3
  slot 3, L4 256-271) are zeroed, restore re-installs them while validating.  An L1
  entry mapping a hypervisor page the domain was given (shared_info, grant frames) has
  no pfn: it is saved non-present and listed in the ``pte_fixups`` section, which
  restore re-points at the new frame.  A mapping of another domain's frame cannot move
  with the domain and makes the save fail (XenpyError naming the slot).
* **Restore builds, then validates.**  Restore allocates fresh machine frames (any
  free ones, so the new frames differ from the old), writes the pages, rewrites every
  table pfn -> new mfn, then pins the tables the stream marks pinned and takes the CR3
  and GDT references through mm's get_page_type — a stream whose tables do not
  validate is refused exactly as a guest's MMUEXT_PIN would be.  The guest's p2m list
  (X86_PV_P2M_FRAMES) and start_info's frame numbers are rewritten for the new host,
  as libxc does.  Any failure destroys the partial domain.
* **The domain continues exactly where it was**: vCPU registers (domctl contexts), the
  shared_info page (event pending/mask bits, vcpu_info), event-channel ports with the
  same numbers, the grant table, its XenStore subtree (re-rooted at the new domid) and
  the console ring (its indices live in the ring page; pending input travels too).
* **Grants name machine frames**, so the grant table is canonicalised like a page table
  (each permit_access entry's frame mfn -> pfn, back to the new mfn on restore) and
  carries no GTF_reading/GTF_writing: no mapping moves with the domain.
* **Disks** (``vbd`` section, backends/blkback/persist.py): blkback's in-flight requests
  are answered before the last copy of the pages and the image flushed; the destination
  reopens the same image (shared storage, checked before anything is built) and its
  blkback re-attaches to the ring where it stands.  A port whose dom0 end was a host
  backend is restored unbound to dom0 until that backend binds it again.

``DomainSaver`` produces the pieces a live migration sends in rounds (migrate.py);
``save_domain``/``restore_domain`` are the one-shot file versions.
"""
from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from ..abi.xen import PAGE_SHIFT, PAGE_SIZE, Width, _PAGE_PRESENT
from ..errors import StreamError, XenpyError
from ..hv import domctl
from ..hv.time import guest_now
from ..hv.guest_access import MADDR_MASK
from ..hv.machine import PageType
from ..backends.xenstored.connection import Watch
from ..backends.xenstored.store import is_valid_nodename
from .stream import (DONE, NEED_DATA, DomainHeader, End, ImageHeader, LibxcContext, LibxlEnd,
                     LibxlHeader, PageData, SharedInfo, StreamReader, StreamWriter,
                     X86PvInfo, X86PvP2mFrames, X86PvVcpuBasic, X86TscInfo, XenpyExtension,
                     XlHeader)
from .stream import libxc
from .stream.libxl import EmulatorContext
from ..backends.blkback import persist as blkback_persist

if TYPE_CHECKING:
    from ..hv.domain import Domain
    from ..hv.host import Host

log = logging.getLogger("xenpy.save")

_PT_PFINFO = {PageType.l1: libxc.XEN_DOMCTL_PFINFO_L1TAB, PageType.l2: libxc.XEN_DOMCTL_PFINFO_L2TAB,
              PageType.l3: libxc.XEN_DOMCTL_PFINFO_L3TAB, PageType.l4: libxc.XEN_DOMCTL_PFINFO_L4TAB}
_PFINFO_PT = {v: k for k, v in _PT_PFINFO.items()}
BATCH = libxc.PAGE_DATA_MAX_COUNT
#: XenStore nodes the toolstack rewrites on restore (they name frames, ports, the domid)
_XS_TOOLSTACK_KEYS = frozenset({"domid", "name", "vm", "store/ring-ref", "store/port",
                                "console/ring-ref", "console/port"})
SECTION_DOMAIN = "domain"
SECTION_VCPUS = "vcpus"
SECTION_FIXUPS = "pte_fixups"
SECTION_VBD = "vbd"
SECTION_WATCHES = "xenstore_watches"
WATCHES_MAX = 1024                     # a guest's watches a restore takes (xenstored's quota is lower)
SECTION_XS_IO = "xenstore_io"          # [request bytes half read, replies not yet in the ring]
SECTION_XS_TX = "xenstore_transactions"  # {"open": [ids], "next": id}


class SaveError(XenpyError):
    """The domain cannot be saved (a foreign mapping, not paused, ...)."""


def _pt_type(mem, mfn: int) -> int:
    """The XEN_DOMCTL_PFINFO type of a frame (what XEN_DOMCTL_getpageframeinfo3 says)."""
    t = mem.type[mfn]
    if t in _PT_PFINFO and mem.type_count[mfn]:
        return _PT_PFINFO[t] | (libxc.XEN_DOMCTL_PFINFO_LPINTAB if mem.pinned[mfn] else 0)
    return libxc.XEN_DOMCTL_PFINFO_NOTAB


def _guest_slots(d: "Domain", level: int, mfn: int) -> list[range]:
    from ..hv.mm import guest_slots
    return list(guest_slots(d, level, mfn))


@dataclass(frozen=True)
class Fixup:
    """An L1 entry that maps a hypervisor page of the domain, saved non-present."""
    table_pfn: int
    index: int
    kind: str            # "shared_info" | "gnttab:<n>"
    flags: int


class DomainSaver:
    """Reads a domain's pages and state as stream records (the saving half of libxc)."""

    def __init__(self, d: "Domain") -> None:
        self.d = d
        self.mem = d.mem
        self.sent_crc: dict[int, int] = {}

    # --- pages ---------------------------------------------------------------------------------
    def special_frames(self) -> dict[int, str]:
        d = self.d
        out = {d.shared_info_mfn: "shared_info"}
        for i, mfn in enumerate(d.grant_frames):
            out[mfn] = f"gnttab:{i}"
        return out

    def canonical_page(self, pfn: int, mfn: int, ptype: int,
                       fixups: list[Fixup] | None = None) -> bytes:
        """The page's contents; a page table with its entries made pseudo-physical."""
        mem = self.mem
        raw = bytes(mem.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT])
        level = _PFINFO_PT.get(ptype & ~libxc.XEN_DOMCTL_PFINFO_LPINTAB)
        if level is None:
            return raw
        d = self.d
        entries = struct.unpack("<512Q", raw)
        out = [0] * 512
        special = self.special_frames() if level == PageType.l1 else {}
        owner, domid, p2m, m2p = mem.owner, d.domid, d.p2m, mem.m2p
        for r in _guest_slots(d, level, mfn):
            for i in r:
                e = entries[i]
                if not e & _PAGE_PRESENT:
                    out[i] = e
                    continue
                target = (e & MADDR_MASK) >> PAGE_SHIFT
                tpfn = m2p(target) if owner[target] == domid else None
                if tpfn is not None and tpfn < len(p2m) and p2m[tpfn] == target:
                    out[i] = (e & ~MADDR_MASK) | (tpfn << PAGE_SHIFT)
                elif target in special:
                    out[i] = (e & ~MADDR_MASK) & ~_PAGE_PRESENT
                    if fixups is not None:
                        fixups.append(Fixup(pfn, i, special[target], e & ~MADDR_MASK))
                else:
                    raise SaveError(f"d{d.domid}: L{level} table pfn {pfn:#x} slot {i} maps "
                                    f"mfn {target:#x}, which is not the domain's memory (a "
                                    "foreign or grant mapping cannot be saved; unmap it first)")
        return struct.pack("<512Q", *out)

    def page_records(self, pfns: Iterable[int], track: bool = True) -> Iterator[PageData]:
        """PAGE_DATA records (at most 1024 pages each) for ``pfns``, in order."""
        d, mem = self.d, self.mem
        batch_p: list[int] = []
        batch_t: list[int] = []
        batch_c: list[bytes] = []
        for pfn in pfns:
            mfn = d.p2m[pfn] if pfn < len(d.p2m) else -1
            if mfn < 0:
                batch_p.append(pfn)
                batch_t.append(libxc.XEN_DOMCTL_PFINFO_XTAB)
            else:
                ptype = _pt_type(mem, mfn)
                page = self.canonical_page(pfn, mfn, ptype)
                if track:
                    self.sent_crc[pfn] = zlib.crc32(mem.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT])
                batch_p.append(pfn)
                batch_t.append(ptype)
                batch_c.append(page)
            if len(batch_p) == BATCH:
                yield PageData(tuple(batch_p), tuple(batch_t), tuple(batch_c))
                batch_p, batch_t, batch_c = [], [], []
        if batch_p:
            yield PageData(tuple(batch_p), tuple(batch_t), tuple(batch_c))

    def changed_since_sent(self, pfns: Iterable[int]) -> set[int]:
        """Pages whose contents differ from what was last sent: catches host-side writes
        nobody reported with domctl.mark_dirty (the final round's safety net)."""
        d, mem = self.d, self.mem
        crc = self.sent_crc
        out = set()
        view = mem.view
        for pfn in pfns:
            mfn = d.p2m[pfn]
            if mfn >= 0 and crc.get(pfn) != zlib.crc32(view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT]):
                out.add(pfn)
        return out

    def page_table_pfns(self) -> set[int]:
        """Pages typed as page tables: the hypervisor writes them (mmu_update, ptwr)."""
        d, mem = self.d, self.mem
        return {pfn for pfn, mfn in enumerate(d.p2m)
                if mfn >= 0 and mem.type[mfn] in _PT_PFINFO and mem.type_count[mfn]}

    # --- headers and the final state -----------------------------------------------------------
    def start_info(self):
        d = self.d
        v = d.vcpus[0]
        return d.abi.StartInfo.from_buffer_copy(v.gmem.read(d.start_info_va, ctypes_sizeof(d.abi.StartInfo)))

    def header_items(self, config: dict | None = None) -> list[object]:
        d = self.d
        si = self.start_info()
        levels = 3 if d.width == Width.X86_32 else 4
        p2m_frames = tuple(range(si.first_p2m_pfn, si.first_p2m_pfn + si.nr_p2m_frames))
        p2m = X86PvP2mFrames(0, len(d.p2m) - 1, p2m_frames)
        want = p2m.expected_frames(d.width)
        if len(p2m_frames) != want:          # a p2m list not where start_info says: recompute
            raise SaveError(f"d{d.domid}: start_info names {len(p2m_frames)} p2m frames, "
                            f"{want} expected for {len(d.p2m)} pages")
        cfg = dict(config or d.xl_config or {
            "b_info": {"max_vcpus": len(d.vcpus), "max_memkb": d.max_pages * 4,
                       "target_memkb": d.max_pages * 4, "type.pv": {"cmdline": d.cmdline}}})
        cfg["c_info"] = {**cfg.get("c_info", {}), "type": "pv", "name": d.name, "uuid": d.uuid}
        return [XlHeader.from_config(cfg), LibxlHeader(), LibxcContext(), ImageHeader(3),
                DomainHeader(libxc.DHDR_TYPE_X86_PV, 4, 17), X86PvInfo(int(d.width), levels),
                libxc.StaticDataEnd(), p2m]

    def final_items(self) -> list[object]:
        """Everything after the pages (domain paused): TSC, shared_info, vCPUs, END and the
        xenpy extension, then the libxl END."""
        d = self.d
        # xenstored (other threads) may write the store ring at any time: its page and
        # the connection's bytes in flight are taken together, under the daemon's lock
        with d.host.xenstored.critical():
            store_pfn = self._own_pfn(d.store_mfn)
            items: list[object] = list(self.page_records([store_pfn], track=False)) \
                if store_pfn is not None else []
            items += [X86TscInfo(0, 1_000_000, guest_now(d) & (2**64 - 1), 0),
                      SharedInfo(bytes(d.mem.page(d.shared_info_mfn)))]
            for v in d.vcpus:           # as libxc: a vCPU never given a context has none
                if v.initialised:
                    items.append(X86PvVcpuBasic(v.vcpu_id, self.canonical_context(v)))
            items.append(End())
            items.append(self.extension().to_record())
        items.append(LibxlEnd())
        return items

    def canonical_context(self, v) -> bytes:
        """getvcpucontext with frames made pseudo-physical (libxc's x86_pv_vcpu_basic)."""
        d = self.d
        C = domctl.vcpu_guest_context(d.width)
        ctx = C.from_buffer_copy(domctl.getvcpucontext(v))

        def pfn_of(mfn: int, what: str) -> int:
            pfn = self.mem.m2p(mfn)
            if pfn is None or pfn >= len(d.p2m) or d.p2m[pfn] != mfn:
                raise SaveError(f"d{d.domid} vcpu{v.vcpu_id} {what}: mfn {mfn:#x} has no pfn")
            return pfn
        for i in range((ctx.gdt_ents + 511) // 512):
            ctx.gdt_frames[i] = pfn_of(ctx.gdt_frames[i], f"gdt_frames[{i}]")
        for r in ((3, 1) if d.width == Width.X86_64 else (3,)):
            if ctx.ctrlreg[r]:
                mfn = domctl.xen_cr3_to_pfn(d.width, ctx.ctrlreg[r])
                ctx.ctrlreg[r] = domctl.xen_pfn_to_cr3(d.width, pfn_of(mfn, f"ctrlreg[{r}]"))
        return bytes(ctx)

    def _own_pfn(self, mfn: int) -> int | None:
        """mfn -> pfn for a frame of this domain's p2m, else None."""
        d = self.d
        pfn = self.mem.m2p(mfn)
        return pfn if pfn is not None and pfn < len(d.p2m) and d.p2m[pfn] == mfn else None

    def fixups(self) -> list[Fixup]:
        d, mem = self.d, self.mem
        out: list[Fixup] = []
        for pfn, mfn in enumerate(d.p2m):
            if mfn >= 0 and mem.type[mfn] == PageType.l1 and mem.type_count[mfn]:
                self.canonical_page(pfn, mfn, libxc.XEN_DOMCTL_PFINFO_L1TAB, out)
        return out

    def extension(self) -> XenpyExtension:
        d = self.d
        host = d.host
        si = self.start_info()
        pfn_of = d.mem.m2p
        domain = {"name": d.name, "uuid": d.uuid, "old_domid": d.domid, "width": int(d.width), "max_pages": d.max_pages,
                  "vcpus": len(d.vcpus), "cmdline": d.cmdline, "vm_assist": d.vm_assist,
                  "start_info_va": d.start_info_va,
                  "start_info_pfn": pfn_of(d.vcpus[0].gmem.translate(d.start_info_va) >> PAGE_SHIFT),
                  "store_pfn": pfn_of(d.store_mfn), "console_pfn": pfn_of(d.console_mfn),
                  "store_port": d.store_port, "console_port": d.console_port,
                  "nr_pt_frames": si.nr_pt_frames}
        ports = []
        for p, ch in enumerate(d.evtchn.ports):
            if p == 0 or ch.state.name == "free":
                continue
            kind = ("console" if p == d.console_port else "store" if p == d.store_port
                    else "host") if ch.backend is not None else None
            ports.append({"port": p, "state": ch.state.name, "vcpu": ch.vcpu,
                          "remote_domid": ch.remote_domid, "remote_port": ch.remote_port,
                          "virq": ch.virq, "backend": kind})
        con = host.consoles.consoles.get(d.domid)
        console = {"pending_input": bytes(con.pending_input).hex() if con else ""}
        xs = []
        root = f"/local/domain/{d.domid}"
        if host.xenstored.exists(root):
            stack = [""]
            while stack:
                rel = stack.pop()
                path = root + ("/" + rel if rel else "")
                if rel and rel not in _XS_TOOLSTACK_KEYS:
                    xs.append([rel, host.xenstored.read(path).hex(), host.xenstored.get_perms(path)])
                stack.extend(f"{rel}/{c}" if rel else c for c in host.xenstored.directory(path))
        watches = [[w.node, w.token.hex(), w.relative_to]
                   for w in host.xenstored.domain_watches(d.domid)]
        xs_io = [b.hex() for b in host.xenstored.domain_io_state(d.domid)]
        xs_tx = host.xenstored.domain_transactions(d.domid)
        gnt = {}
        if d.gnttab is not None:
            gnt = {"version": d.gnttab.version,
                   "frames": [f.hex() for f in d.gnttab.saved_frames(self._own_pfn)]}
        vcpus = [{"iopl": v.iopl, "nmi_callback": v.nmi_callback,
                  "pending_user": None if v.pending_user is None else _pending_user(v.pending_user),
                  "singleshot": _guest_deadline(v.singleshot), "periodic": v.periodic_period}
                 for v in d.vcpus]
        fix = [[f.table_pfn, f.index, f.kind, f.flags] for f in self.fixups()]
        return (XenpyExtension()
                .with_json(SECTION_DOMAIN, domain).with_json("evtchn", ports)
                .with_json("console", console).with_json("xenstore", xs)
                .with_json(SECTION_WATCHES, watches).with_json(SECTION_XS_IO, xs_io)
                .with_json(SECTION_XS_TX, {"open": xs_tx[0], "next": xs_tx[1]})
                .with_json("gnttab", gnt).with_json(SECTION_VCPUS, vcpus)
                .with_json(SECTION_VBD, blkback_persist.save_devices(host, d.domid))
                .with_json(SECTION_FIXUPS, fix))


def ctypes_sizeof(t) -> int:
    import ctypes
    return ctypes.sizeof(t)


def _pending_user(ev) -> dict:
    return {"vector": ev.vector, "error_code": ev.error_code, "eip": ev.eip, "cs": ev.cs,
            "eflags": ev.eflags, "esp": ev.esp, "ss": ev.ss,
            "ti": [ev.ti.flags, ev.ti.cs, ev.ti.address]}


def save_items(d: "Domain") -> Iterator[object]:
    """Every header and record of a save file for ``d`` (which must be paused)."""
    if not d.paused:
        raise SaveError(f"d{d.domid} must be paused to be saved")
    blkback_persist.quiesce(d.host, d.domid)
    saver = DomainSaver(d)
    yield from saver.header_items()
    yield from saver.page_records(range(len(d.p2m)), track=False)
    yield from saver.final_items()


def save_domain(d: "Domain", path: str | Path) -> int:
    """`xl save`: write ``d`` (paused) to ``path``; returns the bytes written."""
    writer = StreamWriter("xl")
    n = 0
    with open(path, "wb") as f:
        for item in save_items(d):
            data = writer.send(item)
            f.write(data)
            n += len(data)
    return n


# --- restore ---------------------------------------------------------------------------------------
class DomainRestorer:
    """Consumes stream items and builds the domain (the restoring half of libxc).

    ``feed(item)`` for each item in order; ``reserve`` happens at X86_PV_P2M_FRAMES (the
    first moment the size is known), ``finish`` after the libxl END builds the tables,
    vCPUs and backends.  ``abort`` (or any exception from ``finish``) destroys the partial
    domain.  All of it must run in the host's scheduler thread or on a quiet host.
    """

    def __init__(self, host: "Host", name: str | None = None) -> None:
        self.host = host
        self.name = name
        self.d: "Domain | None" = None
        self.config: dict | None = None
        self.tsc_nsec: int | None = None         # the domain's system time when saved
        self.pv_info: X86PvInfo | None = None
        self.p2m_frames: X86PvP2mFrames | None = None
        self.types: dict[int, int] = {}
        self.pt_pfns: set[int] = set()           # pfns whose last type is a page table
        self.shared_info: bytes | None = None
        self.contexts: dict[int, bytes] = {}
        self.ext: XenpyExtension | None = None
        self.done = False
        self.pages_received = 0

    def feed(self, item: object) -> None:
        match item:
            case XlHeader():
                self.config = item.config()
            case X86PvInfo():
                self.pv_info = item
            case X86PvP2mFrames():
                self.p2m_frames = item
                self.reserve(item.end_pfn + 1)
            case PageData():
                self.write_pages(item)
            case SharedInfo():
                self.shared_info = item.page
            case X86PvVcpuBasic():
                self.contexts[item.vcpu_id] = item.context
            case X86TscInfo():
                self.tsc_nsec = item.nsec
            case EmulatorContext():
                ext = XenpyExtension.from_record(item)
                if ext is not None:
                    self.ext = ext
            case LibxlEnd():
                self.done = True

    def reserve(self, nr_pages: int) -> None:
        """Stage 1 (reservation): create the domain, paused, with fresh machine frames."""
        if self.d is not None:
            raise StreamError("X86_PV_P2M_FRAMES: Expected one, got a second")
        if self.pv_info is None:
            raise StreamError("X86_PV_P2M_FRAMES: Expected X86_PV_INFO first, got none")
        cfg = self.config or {}
        c_info = cfg.get("c_info", {}) if isinstance(cfg, dict) else {}
        b_info = cfg.get("b_info", {}) if isinstance(cfg, dict) else {}
        name = self.name or str(c_info.get("name") or "restored")
        vcpus = int(b_info.get("max_vcpus", 1))
        width = Width(self.pv_info.guest_width)
        host = self.host
        base = name
        n = 1
        while any(x.name == name for x in host.domains.values()):
            n += 1
            name = f"{base}-{n}"
        if nr_pages > host.mem.free_frames:
            from ..hv.machine import OutOfMemory
            raise OutOfMemory(f"restore needs {nr_pages} frames, the host has "
                              f"{host.mem.free_frames} free")
        d = host.create_domain(name, width, 1, vcpus)
        d.paused = True
        self.d = d
        d.max_pages = nr_pages
        d.populate(nr_pages)

    def write_pages(self, rec: PageData) -> None:
        d = self.d
        if d is None:
            raise StreamError("PAGE_DATA: Expected X86_PV_P2M_FRAMES before page data, got none")
        buf = d.mem.buf
        for pfn, ptype, page in rec.items():
            if pfn >= len(d.p2m):
                raise StreamError(f"PAGE_DATA pfn {pfn:#x}: Expected < {len(d.p2m):#x} "
                                  "(X86_PV_P2M_FRAMES' end_pfn + 1)")
            self.types[pfn] = ptype
            if ptype & libxc.XEN_DOMCTL_PFINFO_LTABTYPE_MASK:
                self.pt_pfns.add(pfn)
            else:
                self.pt_pfns.discard(pfn)
            if page is not None:
                a = d.p2m[pfn] << PAGE_SHIFT
                buf[a:a + PAGE_SIZE] = page
                self.pages_received += 1

    def abort(self) -> None:
        if self.d is not None:
            self.host.destroy_domain(self.d)
            self.d = None

    def finish(self) -> "Domain":
        """Stages 4-5 on this side: localise, validate, load vCPUs, reconnect backends."""
        try:
            return self._finish()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # a section of the xenpy extension with the wrong shape or types
            self.abort()
            raise StreamError(f"xenpy extension: Expected well-formed sections, got "
                              f"{type(e).__name__}: {e}") from None
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> "Domain":
        from ..hv import mm
        from ..hv.event_channel import ECS, Channel
        from ..hv.time import set_singleshot, update_wallclock
        d = self.d
        host = self.host
        if d is None or not self.done:
            raise StreamError("stream: Expected a complete stream ending in libxl END, got "
                              "a truncated one")
        if self.ext is None:
            raise StreamError("EMULATOR_CONTEXT: Expected the xenpy extension record, got none")
        if self.shared_info is None:
            raise StreamError("SHARED_INFO: Expected one, got none")
        info = self.ext.json_section(SECTION_DOMAIN)
        if not isinstance(info, dict):
            raise StreamError("xenpy extension: Expected a 'domain' section, got none")
        vbds = blkback_persist.check_devices(self.ext.json_section(SECTION_VBD))
        if 0 not in self.contexts:           # the others may never have been brought up
            raise StreamError("X86_PV_VCPU_BASIC: Expected vcpu0's context, got none")
        mem = d.mem
        saved_name = str(info.get("name", d.name))
        if self.name is None and not any(x.name == saved_name for x in host.domains.values()):
            d.name = saved_name
        d.uuid = str(info.get("uuid", d.uuid))
        d.xl_config = self.config
        d.cmdline = str(info.get("cmdline", ""))
        d.vm_assist = int(info.get("vm_assist", 0))
        d.start_info_va = int(info["start_info_va"])
        # shared_info: a fresh hypervisor page with the saved contents
        si_mfn = mem.alloc_frames(d.domid, 1)[0]
        mem.write(si_mfn << PAGE_SHIFT, self.shared_info)
        d.set_shared_info(si_mfn)
        mm.share_xen_page_with_guest(d, si_mfn)
        # grant table frames
        gnt = self.ext.json_section("gnttab") or {}
        if gnt.get("frames"):
            from ..hv import grant_table
            gt = grant_table.table(d)
            gt.version = int(gnt.get("version", 1))
            if gt.version not in (1, 2) or not isinstance(gnt["frames"], list) or \
                    not grant_table.grow(gt, len(gnt["frames"])):
                raise StreamError(f"xenpy extension gnttab: Expected version 1 or 2 and at "
                                  f"most {grant_table.MAX_GRANT_FRAMES} frames, got version "
                                  f"{gt.version}, {len(gnt['frames'])} frames")
            p2m_ = d.p2m
            try:
                gt.load_frames([bytes.fromhex(h) for h in gnt["frames"]],
                               lambda pfn: p2m_[pfn] if pfn < len(p2m_) else None)
            except (ValueError, grant_table.GrantError) as e:
                raise StreamError(f"xenpy extension gnttab frames: {e}") from None
        special = {"shared_info": si_mfn}
        special.update({f"gnttab:{i}": m for i, m in enumerate(d.grant_frames)})
        # localise page tables: pfn -> new mfn
        p2m = d.p2m
        for pfn in self.pt_pfns:
            ptype = self.types[pfn]
            level = _PFINFO_PT.get(ptype & ~libxc.XEN_DOMCTL_PFINFO_LPINTAB)
            if level is None:
                continue
            a = p2m[pfn] << PAGE_SHIFT
            entries = list(struct.unpack_from("<512Q", mem.buf, a))
            for i, e in enumerate(entries):
                if e & _PAGE_PRESENT:
                    tpfn = (e & MADDR_MASK) >> PAGE_SHIFT
                    if tpfn >= len(p2m):
                        raise StreamError(f"PAGE_DATA L{level} table pfn {pfn:#x} slot {i}: "
                                          f"Expected a pfn < {len(p2m):#x}, got {tpfn:#x}")
                    entries[i] = (e & ~MADDR_MASK) | (p2m[tpfn] << PAGE_SHIFT)
            struct.pack_into("<512Q", mem.buf, a, *entries)
        for table_pfn, index, kind, flags in self.ext.json_section(SECTION_FIXUPS) or []:
            if kind not in special or table_pfn >= len(p2m):
                raise StreamError(f"pte_fixups: Expected a known page, got {kind!r} at "
                                  f"pfn {table_pfn:#x}")
            mem.write_u64((p2m[table_pfn] << PAGE_SHIFT) + 8 * index,
                          (special[kind] << PAGE_SHIFT) | flags)
        # the guest's p2m list and start_info name machine frames: rewrite them
        width = int(d.width)
        fmt = "<I" if width == 4 else "<Q"
        per = PAGE_SIZE // width
        for k, fpfn in enumerate(self.p2m_frames.frames):
            chunk = p2m[k * per:(k + 1) * per]
            mem.write(p2m[fpfn] << PAGE_SHIFT, struct.pack(f"<{len(chunk)}{fmt[1]}", *chunk))
        d.store_mfn = p2m[int(info["store_pfn"])]
        d.console_mfn = p2m[int(info["console_pfn"])]
        si_addr = (p2m[int(info["start_info_pfn"])] << PAGE_SHIFT) | (d.start_info_va & (PAGE_SIZE - 1))
        SI = d.abi.StartInfo
        si = SI.from_buffer(mem.buf, si_addr)
        si.shared_info = si_mfn << PAGE_SHIFT
        si.store_mfn = d.store_mfn
        si.console.domU.mfn = d.console_mfn
        del si
        # pin and validate, then the vCPUs (their CR3 and GDT references)
        for pfn, ptype in sorted(((p, self.types[p]) for p in self.pt_pfns),
                                 key=lambda kv: -(kv[1] & 0x7 << 28)):
            if ptype & libxc.XEN_DOMCTL_PFINFO_LPINTAB:
                level = _PFINFO_PT[ptype & ~libxc.XEN_DOMCTL_PFINFO_LPINTAB]
                try:
                    mm.get_page_and_type(d, p2m[pfn], level)
                except mm.PageError as e:
                    raise StreamError(f"PAGE_DATA pinned L{level} table pfn {pfn:#x}: Expected "
                                      f"a table that validates, got {e}") from None
                mem.pinned[p2m[pfn]] = 1
        for vid, ctx in sorted(self.contexts.items()):
            if vid >= len(d.vcpus):
                raise StreamError(f"X86_PV_VCPU_BASIC vcpu_id: Expected < {len(d.vcpus)}, got {vid}")
            domctl.setvcpucontext(d.vcpus[vid], self._localise_context(ctx))
        # its system time goes on from where it was saved (hv/time.py), timers with it
        if self.tsc_nsec is not None:
            d.time_offset_ns = self.tsc_nsec - host.clock.now()
        for v, extra in zip(d.vcpus, self.ext.json_section(SECTION_VCPUS) or []):
            v.iopl = int(extra.get("iopl", 0))
            v.nmi_callback = int(extra.get("nmi_callback", 0))
            shot, period = int(extra.get("singleshot") or 0), int(extra.get("periodic") or 0)
            if not 0 <= v.iopl <= 3 or shot < 0 or period and not 1_000_000 <= period < 1 << 63:
                raise StreamError(f"vcpus[{v.vcpu_id}]: Expected iopl 0..3, a deadline >= 0 "
                                  f"and a period of 0 or >= 1 ms, got {extra!r}")
            if shot:
                set_singleshot(v, shot)
            if period:
                v.periodic_period = period
                v.periodic = host.timers.add(v, host.clock.now() + v.periodic_period, "periodic")
            pu = extra.get("pending_user")
            if pu:
                from ..hv.vcpu import PendingUserEvent, TrapEntry
                v.pending_user = PendingUserEvent(pu["vector"], pu["error_code"], pu["eip"],
                                                  pu["cs"], pu["eflags"], pu["esp"], pu["ss"],
                                                  TrapEntry(*pu["ti"]))
        # event channels, with the same port numbers; backends reconnected
        saved = self.ext.json_section("evtchn") or []
        ev = d.evtchn
        for entry in saved:
            p = int(entry["port"])
            if not 0 < p < 4096:
                raise StreamError(f"evtchn port: Expected 1..4095, got {p}")
            while len(ev.ports) <= p:
                ev.ports.append(Channel())
        for entry in saved:
            kind = entry.get("backend")
            if kind in ("console", "store"):
                continue
            if kind:      # a host backend's port: unbound to dom0 until it binds again
                ev.ports[int(entry["port"])] = Channel(ECS.unbound, int(entry["vcpu"]),
                                                       remote_domid=0)
                continue
            ev.ports[int(entry["port"])] = Channel(ECS[entry["state"]], int(entry["vcpu"]),
                                                   int(entry["remote_domid"]),
                                                   int(entry["remote_port"]), int(entry["virq"]))
        d.store_port = self._rebind(host.connect_store(d), int(info["store_port"]))
        d.console_port = self._rebind(host.connect_console(d), int(info["console_port"]))
        con = self.ext.json_section("console") or {}
        if con.get("pending_input"):
            host.consoles.consoles[d.domid].pending_input += bytes.fromhex(con["pending_input"])
        # XenStore: the toolstack's nodes, then the saved subtree re-rooted at the new domid
        update_wallclock(d)
        xs_io = self.ext.json_section(SECTION_XS_IO) or ["", ""]
        try:
            inbound, outbound = (bytes.fromhex(x) for x in xs_io)
        except (TypeError, ValueError):
            raise StreamError(f"xenstore_io: Expected two hex strings, got {xs_io!r}") from None
        host.xenstored.preload_io_state(d.domid, inbound, outbound)
        host.introduce_domain(d, serve=False)      # its ring is read once all is back
        root = f"/local/domain/{d.domid}"
        for rel, hexval, perms in self.ext.json_section("xenstore") or []:
            perms = [_reown(p, int(info.get("old_domid", -1)), d.domid) for p in perms]
            host.xenstored.write(f"{root}/{rel}", bytes.fromhex(hexval), perms)
        host.xenstored.restore_watches(d.domid, self._watches(int(info.get("old_domid", -1))))
        xs_tx = self.ext.json_section(SECTION_XS_TX) or {"open": [], "next": 1}
        try:
            ids = [int(t) for t in xs_tx["open"]]
            if len(ids) > 1024 or not all(0 < t < 1 << 32 for t in ids):
                raise ValueError
            host.xenstored.restore_transactions(d.domid, ids, int(xs_tx["next"]))
        except (KeyError, TypeError, ValueError):
            raise StreamError(f"xenstore_transactions: Expected {{open, next}}, "
                              f"got {xs_tx!r}") from None
        host.xenstored.ring_kick(d.domid)            # requests the guest left in the ring
        blkback_persist.restore_devices(host, d, vbds)
        return d

    def _watches(self, old: int) -> list[Watch]:
        """The saved watches, paths naming the old domid re-rooted at the new one."""
        assert self.d is not None and self.ext is not None
        out = []
        entries = self.ext.json_section(SECTION_WATCHES) or []
        if len(entries) > WATCHES_MAX:
            raise StreamError(f"xenstore_watches: Expected at most {WATCHES_MAX}, got "
                              f"{len(entries)}")
        for entry in entries:
            try:
                node, token, rel = entry
                watch = Watch(_reroot(str(node), old, self.d.domid), bytes.fromhex(token),
                              None if rel is None else _reroot(str(rel), old, self.d.domid))
                node_ok = (watch.node.startswith("@") and len(watch.node) < 64) or \
                    is_valid_nodename(watch.node)
                watch.node.encode("latin-1")
                if not node_ok or len(watch.token) > 1024:
                    raise ValueError
            except (TypeError, ValueError):
                raise StreamError(f"xenstore_watches: Expected [node, token hex, "
                                  f"relative_to], got {entry!r}") from None
            out.append(watch)
        return out

    def _rebind(self, new_port: int, port: int) -> int:
        """Move a backend channel just bound at ``new_port`` to the saved ``port``."""
        from ..hv.event_channel import Channel
        ev = self.d.evtchn
        if new_port != port:
            while len(ev.ports) <= port:
                ev.ports.append(Channel())
            ch = ev.ports[new_port]
            ch.remote_port = port
            ev.ports[port] = ch
            ev.ports[new_port] = Channel()
        return port

    def _localise_context(self, data: bytes) -> bytes:
        d = self.d
        C = domctl.vcpu_guest_context(d.width)
        if len(data) != ctypes_sizeof(C):
            raise StreamError(f"X86_PV_VCPU_BASIC: Expected {ctypes_sizeof(C)} bytes, got {len(data)}")
        ctx = C.from_buffer_copy(data)

        def mfn_of(pfn: int, what: str) -> int:
            if pfn >= len(d.p2m):
                raise StreamError(f"X86_PV_VCPU_BASIC {what}: Expected a pfn < "
                                  f"{len(d.p2m):#x}, got {pfn:#x}")
            return d.p2m[pfn]
        for i in range((ctx.gdt_ents + 511) // 512):
            ctx.gdt_frames[i] = mfn_of(ctx.gdt_frames[i], f"gdt_frames[{i}]")
        for r in ((3, 1) if d.width == Width.X86_64 else (3,)):
            if ctx.ctrlreg[r]:
                pfn = domctl.xen_cr3_to_pfn(d.width, ctx.ctrlreg[r])
                ctx.ctrlreg[r] = domctl.xen_pfn_to_cr3(d.width, mfn_of(pfn, f"ctrlreg[{r}]"))
        return bytes(ctx)


def _guest_deadline(t) -> int | None:
    """A live timer's deadline in its domain's system time."""
    if t is None or t.cancelled:
        return None
    return t.deadline + t.vcpu.domain.time_offset_ns


def _reroot(path: str, old: int, new: int) -> str:
    """/local/domain/<old>/... and a backend's .../<type>/<old>/... name ``new``."""
    home = f"/local/domain/{old}"
    if path == home or path.startswith(home + "/"):
        return f"/local/domain/{new}" + path[len(home):]
    return re.sub(rf"^(/local/domain/0/backend/[^/]+/){old}(?=/|$)", rf"\g<1>{new}", path)


def _reown(perm: str, old: int, new: int) -> str:
    """A XenStore permission naming the domain's old id names its new one."""
    if len(perm) > 1 and perm[1:].isdigit() and int(perm[1:]) == old:
        return perm[0] + str(new)
    return perm


def restore_items(host: "Host", items: Iterable[object], name: str | None = None) -> "Domain":
    r = DomainRestorer(host, name)
    try:
        for item in items:
            r.feed(item)
    except BaseException:
        r.abort()
        raise
    return r.finish()


def read_save_file(path: str | Path) -> Iterator[object]:
    """The items of a save file; a corrupt or truncated file raises StreamError naming
    the record and its offset."""
    reader = StreamReader("xl")
    with open(path, "rb") as f:
        while True:
            item = reader.next_record()
            if item is DONE:
                if f.read(1):
                    raise StreamError(f"{path}: Expected end of file after libxl END, got more data")
                return
            if item is NEED_DATA:
                chunk = f.read(1 << 20)
                if not chunk:
                    raise StreamError(f"{path}: truncated at offset {reader.offset} while "
                                      f"expecting {reader.expecting.value}")
                reader.receive_data(chunk)
                continue
            yield item


def restore_domain(host: "Host", path: str | Path, name: str | None = None) -> "Domain":
    """`xl restore`: build a paused domain from ``path``; unpause it to let it run."""
    return restore_items(host, read_save_file(path), name)
