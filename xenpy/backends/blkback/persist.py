"""blkback across save/restore and live migration: the ``vbd`` section of the xenpy
extension record (toolstack/save_restore.py).

Xen's own answer is cooperative: the guest suspends and its frontends reconnect when it
resumes.  A xenpy save is transparent (the guest takes no part and its grant table, event
channels and XenStore subtree move with it), so the backend's half moves the same way:

* **quiesce** (source, domain paused, before the last copy of its pages): every request
  blkback has taken from the domain's rings is finished and answered — the responses are
  in the ring page, which is copied after this — and the image is fdatasync'd, so a
  backend opening the same image on another host reads what the guest was told is
  written.  Requests the guest published but blkback had not taken yet stay in the ring
  and move with it.
* **save_devices**: each device's disk, as an xl disk spec (the toolstack's view).
* **check_devices** (destination, before anything is built): the section is well formed
  and every disk can be opened here — a disk only migrates on storage both hosts see, and
  a restore that cannot reopen it fails before commitment, so the source keeps running.
* **restore_devices**: the toolstack's backend directory again, for the new domid (the
  frontend directory came back with the guest's XenStore subtree; its ``backend`` node is
  re-pointed).  blkback then finds the device as on hot-plug: InitWait; the frontend is
  already Connected, so it maps the ring grants (re-pointed at the new frames by the
  grant-table restore), binds the event channel the guest still holds, attaches at the
  ring's rsp_prod and takes whatever is pending.  A device that does not come back
  Connected fails the restore.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...abi.io.xenbus import XenbusState as S
from ...errors import ConfigError, StreamError
from ...toolstack.disk import (DiskSpec, attach_disk, backend_path, blkback_for, canonical_spec,
                               frontend_path, parse_disk_spec, write_backend_nodes)

if TYPE_CHECKING:
    from ...hv.domain import Domain
    from ...hv.host import Host

BACKEND_KEYS = ("params", "mode", "type", "dev", "device-type")


def quiesce(host: "Host", domid: int, timeout: float = 30.0) -> None:
    """Drain every connected ring of ``domid`` (scheduler thread, domain paused)."""
    bb = host.blkback
    if bb is None:
        return
    for (dom, _), dev in sorted(bb.devices.items()):
        if dom == domid and dev.ring is not None:
            dev.ring.drain(timeout)


def save_devices(host: "Host", domid: int) -> list[dict[str, object]]:
    """[{"devid", "spec"}] for each vbd of ``domid`` still online, from the backend
    directories the toolstack wrote (what libxl keeps in its domain config)."""
    xs = host.xenstored
    root = backend_path(domid, 0).rsplit("/", 1)[0]
    if not xs.exists(root):
        return []
    out: list[dict[str, object]] = []
    for name in sorted(xs.directory(root), key=lambda n: (len(n), n)):
        be = f"{root}/{name}"
        node = {k: _read(host, f"{be}/{k}") for k in (*BACKEND_KEYS, "online")}
        if not name.isdigit() or node["online"] == "0" or not node["params"] or not node["dev"]:
            continue
        disk = DiskSpec(node["params"], node["dev"], int(name), readonly=node["mode"] != "w",
                        kind=node["type"] or "file", cdrom=node["device-type"] == "cdrom")
        out.append({"devid": disk.devid, "spec": canonical_spec(disk)})
    return out


def check_devices(section: object) -> list[DiskSpec]:
    """The saved devices, each one's disk openable here as it was (StreamError if not)."""
    if section is None:
        return []
    if not isinstance(section, list):
        raise StreamError(f"xenpy extension vbd: expected a list, got {type(section).__name__}")
    disks: list[DiskSpec] = []
    for entry in section:
        if not isinstance(entry, dict) or not isinstance(entry.get("spec"), str) or \
                not isinstance(entry.get("devid"), int):
            raise StreamError(f"xenpy extension vbd: expected {{devid, spec}}, got {entry!r}")
        try:
            disk = parse_disk_spec(entry["spec"])
        except ConfigError as e:
            raise StreamError(f"xenpy extension vbd: {e}") from None
        if disk.devid != entry["devid"]:
            raise StreamError(f"xenpy extension vbd {disk.vdev}: devid {entry['devid']} does "
                              f"not match the vdev ({disk.devid})")
        mode = os.R_OK if disk.readonly else os.R_OK | os.W_OK
        if not os.access(disk.target, mode):
            raise StreamError(f"disk {disk.vdev}: target {disk.target!r} cannot be opened "
                              f"{'read-only' if disk.readonly else 'read-write'} on this host "
                              "(a domain's disks move only on storage both hosts share)")
        disks.append(disk)
    return disks


def restore_devices(host: "Host", d: "Domain", disks: list[DiskSpec]) -> None:
    """Bring the backends of a restored (still paused) domain back; see the module doc."""
    if not disks:
        return
    bb = blkback_for(host)
    xs = host.xenstored
    for disk in disks:
        fe = frontend_path(d.domid, disk.devid)
        if xs.exists(fe):
            xs.write(f"{fe}/backend", backend_path(d.domid, disk.devid))
            xs.write(f"{fe}/backend-id", "0")
            write_backend_nodes(xs, d.domid, disk)
        else:                                   # the guest had removed it: plug it afresh
            attach_disk(xs, d.domid, disk)
    bb.poll()
    for disk in disks:
        dev = bb.devices.get((d.domid, disk.devid))
        fstate = S.parse(xs.read(f"{frontend_path(d.domid, disk.devid)}/state")
                         if xs.exists(frontend_path(d.domid, disk.devid)) else None)
        if dev is None or dev.state == S.Closing or \
                (fstate == S.Connected and dev.ring is None):
            why = _read(host, f"{backend_path(d.domid, disk.devid)}/error")
            raise StreamError(f"disk {disk.vdev}: the backend did not reconnect to the "
                              f"restored frontend ({why or 'no error node'})")


def _read(host: "Host", path: str) -> str | None:
    xs = host.xenstored
    return xs.read(path).decode("latin-1") if xs.exists(path) else None
