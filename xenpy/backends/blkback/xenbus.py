"""blkback's side of the xenbus handshake (Linux's xen-blkback/xenbus.c), and the service
that finds devices: it watches ``/local/domain/0/backend/vbd`` as a dom0 driver does.

The toolstack (toolstack/disk.py) creates the backend and frontend directories, writing
the backend's ``state`` = Initialising last.  Then, for each device:

=====================  =====================================================================
event                  blkback
=====================  =====================================================================
device appears         open ``params`` (``mode`` r → O_RDONLY), publish
                       feature-max-indirect-segments and max-ring-page-order → InitWait
frontend Initialised   map ``ring-ref`` / ``ring-ref<N>`` (+ ``ring-page-order``), bind
or Connected           ``event-channel``, honour ``protocol``; publish sectors, info,
                       sector-size, feature-flush-cache, feature-barrier, feature-discard
                       (+ discard-granularity/-alignment/-secure), feature-persistent
                       → Connected.  Persistent grants are used when the frontend wrote
                       feature-persistent = 1.  A bad ring description → ``error``
                       node, Closing.
frontend Closing       → Closing
frontend Closed        disconnect (wait for in-flight I/O, unmap, unbind) → Closed
frontend Initialising  after Closed: → InitWait (the frontend reconnects)
frontend gone          disconnect, forget the device
domain destroyed       (@releaseDomain) disconnect, remove the backend directory
toolstack: online=0,   (block-detach) if the frontend never connected or is closed:
state=Closing          disconnect → Closed at once; otherwise wait for the frontend
=====================  =====================================================================

Watch events are handled on the scheduler thread (``HostCalls``) because connecting maps
grants.  ``poll()`` drains them synchronously for tests that drive the host by hand.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...abi.io import blkif as B
from ...abi.io.xenbus import XenbusState as S
from ...abi.io.xs_wire import XSD_SOCKMSG, XsdSockmsgType
from ...errors import XenpyError
from ...hv import grant_table as gnttab
from .backend import BlkifRing, HostCalls, bind_backend_port
from .image import Image
from ...toolstack.disk import remove_disk_nodes

if TYPE_CHECKING:
    from ...hv.host import Host

log = logging.getLogger("xenpy.blkback")

BACKEND_ROOT = "/local/domain/0/backend/vbd"


def _decimal(raw: str) -> bool:
    """Only ASCII digits (str.isdigit also takes '²', which int() refuses), at most 10."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 10


class ConnectError(XenpyError):
    """The frontend described its ring badly (names the key)."""


@dataclass(frozen=True)
class DeviceInfo:
    """What ``block-list`` shows for one device."""
    domid: int
    devid: int
    vdev: str
    target: str
    mode: str
    state: S
    frontend_state: S
    broken: str | None


class VbdBackend:
    """One virtual block device's backend: the state machine of the table above."""

    def __init__(self, bb: "BlkBack", domid: int, devid: int) -> None:
        self.bb = bb
        self.domid, self.devid = domid, devid
        self.be = f"{BACKEND_ROOT}/{domid}/{devid}"
        self.fe = bb.read(f"{self.be}/frontend") or f"/local/domain/{domid}/device/vbd/{devid}"
        self.state = S.Initialising
        self.image: Image | None = None
        self.ring: BlkifRing | None = None

    # --- xenstore helpers -------------------------------------------------------------------
    def _w(self, key: str, value: object) -> None:
        self.bb.xs.write(f"{self.be}/{key}", str(value))

    def switch(self, st: S) -> None:
        self.state = st
        self._w("state", int(st))

    def fatal(self, why: str) -> None:
        """xenbus_dev_fatal: an error node for the toolstack, then Closing."""
        log.warning("vbd d%d/%d: %s", self.domid, self.devid, why)
        self._w("error", why)
        self.switch(S.Closing)

    # --- lifecycle ------------------------------------------------------------------------
    def probe(self) -> None:
        params = self.bb.read(f"{self.be}/params")
        mode = self.bb.read(f"{self.be}/mode") or "w"
        try:
            if not params:
                raise ConnectError(f"{self.be}/params: expected a path, got nothing")
            self.image = Image(params, readonly=mode != "w")
        except XenpyError as e:
            self._w("hotplug-error", str(e))
            self.fatal(str(e))
            return
        self._w("feature-max-indirect-segments", B.MAX_INDIRECT_SEGMENTS)
        self._w("max-ring-page-order", B.MAX_RING_PAGE_ORDER)
        self._w("physical-device", "0:0")
        self.switch(S.InitWait)

    def frontend_changed(self) -> None:
        fst = S.parse(self.bb.read_raw(f"{self.fe}/state"))
        if fst in (S.Initialised, S.Connected):
            if self.state in (S.InitWait, S.Initialised) and self.image is not None:
                try:
                    self.connect_ring()
                except ConnectError as e:
                    self.fatal(str(e))
                    return
                self.connect()
        elif fst == S.Initialising:
            if self.state == S.Closed and self.online:
                log.info("vbd d%d/%d: prepare for reconnect", self.domid, self.devid)
                self.switch(S.InitWait)
        elif fst == S.Closing:
            if self.state != S.Closed:
                self.switch(S.Closing)
        elif fst == S.Closed:
            self.disconnect()
            if self.state != S.Closed:
                self.switch(S.Closed)
        elif fst == S.Unknown and self.state != S.Initialising:
            self.disconnect()
            if self.bb.read(f"{self.be}/state") is not None and self.state != S.Closed:
                self.switch(S.Closed)

    def backend_changed(self) -> None:
        """The toolstack's request to detach: online=0 and state=Closing."""
        st = S.parse(self.bb.read_raw(f"{self.be}/state"))
        if st == S.Closing and st != self.state and not self.online:
            fst = S.parse(self.bb.read_raw(f"{self.fe}/state"))
            self.state = S.Closing
            if fst in (S.Unknown, S.Initialising, S.InitWait, S.Closed) or \
                    self.domid not in self.bb.host.domains:
                self.disconnect()
                self.switch(S.Closed)

    @property
    def online(self) -> bool:
        return self.bb.read(f"{self.be}/online") != "0"

    def connect_ring(self) -> None:
        """connect_ring(): map the frontend's ring pages and bind its event channel."""
        d = self.bb.host.domains.get(self.domid)
        if d is None:
            raise ConnectError(f"domain {self.domid} is gone")
        proto = self.bb.read(f"{self.fe}/protocol") or B.native_layout(d.width).name
        layout = B.LAYOUTS.get(proto)
        if layout is None:
            raise ConnectError(f"{self.fe}/protocol: expected one of {sorted(B.LAYOUTS)}, "
                               f"got {proto!r}")
        order_raw = self.bb.read(f"{self.fe}/ring-page-order")
        if order_raw is None:
            refs_keys = ["ring-ref"]
        else:
            if not _decimal(order_raw) or int(order_raw) > B.MAX_RING_PAGE_ORDER:
                raise ConnectError(f"{self.fe}/ring-page-order: expected 0..{B.MAX_RING_PAGE_ORDER}"
                                   f", got {order_raw!r}")
            refs_keys = [f"ring-ref{i}" for i in range(1 << int(order_raw))]
        refs = [self._read_uint(k) for k in refs_keys]
        port = self._read_uint("event-channel")
        gt = gnttab.table(d)
        maps = []
        try:
            for ref in refs:
                maps.append(gt.map_for_backend(ref, readonly=False))
        except gnttab.GrantError as e:
            for bm in maps:
                gt.unmap_for_backend(bm)
            raise ConnectError(f"{self.fe}/ring-ref: {e}") from None
        ring = BlkifRing(d, self.bb.calls, self.image, layout, maps, port,  # type: ignore[arg-type]
                         readonly=self.image.info.readonly,  # type: ignore[union-attr]
                         persistent=self.bb.read(f"{self.fe}/feature-persistent") == "1")
        if not bind_backend_port(d, port, ring.notify):
            ring.disconnect()
            raise ConnectError(f"{self.fe}/event-channel: expected an unbound port of "
                               f"d{self.domid} for d0, got {port}")
        self.ring = ring

    def _read_uint(self, key: str) -> int:
        raw = self.bb.read(f"{self.fe}/{key}")
        if raw is None or not _decimal(raw) or int(raw) >= 1 << 32:
            raise ConnectError(f"{self.fe}/{key}: expected an unsigned 32-bit number, got {raw!r}")
        return int(raw)

    def connect(self) -> None:
        """connect(): what the frontend reads once we are Connected."""
        img = self.image
        assert img is not None
        self._w("feature-flush-cache", 1)
        self._w("feature-barrier", 1)
        self._w("feature-discard", 0 if img.info.readonly else 1)
        self._w("discard-granularity", 4096)
        self._w("discard-alignment", 0)
        self._w("discard-secure", 0)
        self._w("feature-persistent", 1)
        self._w("sectors", img.size >> B.SECTOR_SHIFT)
        self._w("info", B.VDISK_READONLY if img.info.readonly else 0)
        self._w("sector-size", 512)
        self._w("physical-sector-size", img.info.sector_size)
        self.switch(S.Connected)
        if self.ring is not None:
            self.ring.kick()           # requests queued before we connected

    def disconnect(self) -> None:
        if self.ring is not None:
            self.ring.disconnect()
            self.ring = None

    def remove(self) -> None:
        self.disconnect()
        if self.image is not None:
            self.image.close()
            self.image = None

    def info(self) -> DeviceInfo:
        return DeviceInfo(self.domid, self.devid, self.bb.read(f"{self.be}/dev") or "",
                          self.image.info.path if self.image else
                          (self.bb.read(f"{self.be}/params") or ""),
                          self.bb.read(f"{self.be}/mode") or "", self.state,
                          S.parse(self.bb.read_raw(f"{self.fe}/state")),
                          self.ring.broken if self.ring else None)


class BlkBack:
    """The host's blkback driver: watches the vbd backend tree and runs its devices."""

    def __init__(self, host: "Host") -> None:
        self.host = host
        self.xs = host.xenstored
        self.calls = HostCalls(host)
        self.devices: dict[tuple[int, int], VbdBackend] = {}
        self._conn = self.xs.tool_connection()
        self._conn.wakeup = lambda: self.calls.call_soon(self.poll)
        self._req_id = 0
        self._watch(BACKEND_ROOT, "vbd")
        self._watch("@releaseDomain", "release")

    # --- xenstore as a dom0 driver ----------------------------------------------------------
    def read_raw(self, path: str) -> bytes | None:
        try:
            return self.xs.read(path)
        except XenpyError:
            return None
        except KeyError:
            return None

    def read(self, path: str) -> str | None:
        raw = self.read_raw(path)
        return None if raw is None else raw.decode("latin-1")

    def _send(self, op: XsdSockmsgType, *strings: str) -> None:
        payload = b"".join(s.encode() + b"\0" for s in strings)
        self._req_id += 1
        self._conn.receive_data(XSD_SOCKMSG.pack(op, self._req_id, 0, len(payload)) + payload)

    def _watch(self, path: str, token: str) -> None:
        self._send(XsdSockmsgType.XS_WATCH, path, token)

    def _unwatch(self, path: str, token: str) -> None:
        self._send(XsdSockmsgType.XS_UNWATCH, path, token)

    def poll(self) -> None:
        """Handle every queued watch event (scheduler thread, or a test's own thread)."""
        while (msg := self._conn.pop_message()) is not None:
            if msg.type != XsdSockmsgType.XS_WATCH_EVENT:
                continue
            path, token = msg.payload.split(b"\0")[:2]
            self._event(path.decode("latin-1"), token.decode("latin-1"))
        self.calls.run_pending()

    def settle(self, timeout: float = 10.0) -> None:
        """For tests and tools driving the host by hand (no scheduler loop): handle
        events and queued work, and wait for in-flight I/O, until nothing is left."""
        while True:
            self.poll()
            busy = [dev.ring.worker for dev in self.devices.values()
                    if dev.ring is not None and dev.ring.worker is not None
                    and dev.ring.worker.inflight]
            if not busy and not self.calls.pending:
                return
            for w in busy:
                if not w.wait_idle(timeout):
                    raise TimeoutError(f"blkback I/O still in flight after {timeout} s")

    def _event(self, path: str, token: str) -> None:
        if token == "release":               # a domain died: its devices go with it
            for key, dev in list(self.devices.items()):
                d = self.host.domains.get(dev.domid)
                if d is None or d.dying:
                    dev.remove()
                    self._forget(key)
                    remove_disk_nodes(self.xs, *key)
            return
        if token.startswith("fe/"):
            _, domid, devid = token.split("/")
            dev = self.devices.get((int(domid), int(devid)))
            if dev is not None:
                dev.frontend_changed()
                self._maybe_finish(dev)
            return
        rest = path[len(BACKEND_ROOT):].strip("/").split("/")
        if len(rest) < 2 or not (rest[0].isdigit() and rest[1].isdigit()):
            return
        key = (int(rest[0]), int(rest[1]))
        dev = self.devices.get(key)
        if dev is None:
            st = self.read(f"{BACKEND_ROOT}/{key[0]}/{key[1]}/state")
            if st == str(int(S.Initialising)) and key[0] in self.host.domains:
                dev = VbdBackend(self, *key)
                self.devices[key] = dev
                dev.probe()
                self._watch(f"{dev.fe}/state", f"fe/{key[0]}/{key[1]}")
            return
        if self.read(dev.be) is None and not self.xs.exists(dev.be):
            dev.remove()
            self._forget(key)
            return
        dev.backend_changed()
        self._maybe_finish(dev)

    def _maybe_finish(self, dev: VbdBackend) -> None:
        """A detached device reached Closed: the toolstack's last step (remove the
        directories), done here so block-detach needs no waiting loop."""
        if dev.state == S.Closed and not dev.online:
            dev.remove()
            self._forget((dev.domid, dev.devid))
            remove_disk_nodes(self.xs, dev.domid, dev.devid)

    def _forget(self, key: tuple[int, int]) -> None:
        dev = self.devices.pop(key, None)
        if dev is not None:
            self._unwatch(f"{dev.fe}/state", f"fe/{key[0]}/{key[1]}")

    def list(self, domid: int) -> list[DeviceInfo]:
        return [dev.info() for (dom, _), dev in sorted(self.devices.items()) if dom == domid]

    def ring(self, domid: int, devid: int) -> BlkifRing | None:
        dev = self.devices.get((domid, devid))
        return dev.ring if dev else None

    def close(self) -> None:
        for key, dev in list(self.devices.items()):
            dev.remove()
            self.devices.pop(key, None)     # remove() may have run queued work forgetting it
        self.xs.drop_connection(self._conn)
