"""xl disk specifications (docs/misc/xl-disk-configuration.txt) and the XenStore nodes
libxl writes to hot-plug a virtual block device.

Accepted forms::

    format=raw, vdev=xvda, access=rw, target=/images/disk.img
    /images/disk.img,raw,xvda,rw            (positional: target, format, vdev, access)
    file:/images/disk.img,xvda,w            (legacy: a prefix says file or phy)
    phy:/dev/loop2,xvdb,r

``target=`` swallows the rest of the spec (it may contain commas), as in xl.  Only the
raw format exists here; qcow and friends are refused with a clear error.

Attach writes the frontend directory, then the backend directory with ``state`` =
Initialising last, so blkback (watching the backend tree) sees a complete device.
Detach writes ``online`` = 0 and ``state`` = Closing, as libxl__device_destroy does;
blkback closes the device with the frontend and removes both directories when Closed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable

from ..abi.io.xenbus import XenbusState
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..backends.blkback import BlkBack
    from ..backends.xenstored import Xenstored
    from ..hv.host import Host

FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
ACCESS = {"r": True, "ro": True, "w": False, "rw": False}
LEGACY_PREFIXES = {"phy:": "phy", "file:": "file", "tap:aio:": "file", "aio:": "file",
                   "tap2:aio:": "file"}
XVD_MAJOR, SD_MAJOR = 202, 8
IDE_MAJORS = (3, 22, 33, 34)

_VDEV = re.compile(r"^(xvd|sd|hd)([a-z]+)(\d*)$")


@dataclass(frozen=True)
class DiskSpec:
    target: str
    vdev: str
    devid: int
    readonly: bool = False
    format: str = "raw"
    kind: str = "file"               # "file" or "phy" (the backend's type node)
    cdrom: bool = False


def _letters(s: str) -> int:
    n = 0
    for c in s:
        n = n * 26 + (ord(c) - ord("a") + 1)
    return n - 1


def vdev_to_devid(vdev: str) -> int:
    """libxl__device_disk_dev_number: xvda → 51712 (202<<8), sdb → 2064, 51728 → 51728."""
    if vdev.isdigit():
        return int(vdev)
    m = _VDEV.match(vdev)
    if m is None:
        raise ConfigError(f"disk vdev: expected xvdX, sdX, hdX or a number, got {vdev!r}")
    kind, letters, part_s = m.groups()
    disk, part = _letters(letters), int(part_s or 0)
    if kind == "xvd":
        if disk < 16 and part < 16:
            return (XVD_MAJOR << 8) | (disk << 4) | part
        if part < 256:
            return (1 << 28) | (disk << 8) | part
    elif kind == "sd" and disk < 16 and part < 16:
        return (SD_MAJOR << 8) | (disk << 4) | part
    elif kind == "hd" and disk < 8 and part < 64:
        return (IDE_MAJORS[disk // 2] << 8) | ((disk % 2) << 6) | part
    raise ConfigError(f"disk vdev {vdev!r}: disk or partition number out of range")


def parse_disk_spec(spec: str) -> DiskSpec:
    """One xl disk spec string (see the module docstring)."""
    fields: dict[str, str] = {}
    positional: list[str] = []
    cdrom = False
    rest = spec.strip()
    while rest:
        if rest.startswith("target="):
            fields["target"] = rest[len("target="):]
            break
        tok, _, rest = rest.partition(",")
        tok, rest = tok.strip(), rest.strip()
        if not tok:
            continue
        key, eq, val = tok.partition("=")
        if eq:
            key = key.strip()
            key = {"mode": "access"}.get(key, key)
            if key not in ("format", "vdev", "access", "devtype", "backendtype", "script",
                           "backend", "discard", "no-discard"):
                raise ConfigError(f"disk spec {spec!r}: unknown key {key!r}")
            fields[key] = val.strip()
        elif tok == "cdrom":
            cdrom = True
        else:
            positional.append(tok)
    for tok in positional:
        if "target" not in fields:
            fields["target"] = tok
        elif tok in FORMATS and "format" not in fields:
            fields["format"] = tok
        elif tok in ACCESS or tok in ("w!",):
            fields["access"] = tok.rstrip("!")
        elif "vdev" not in fields:
            fields["vdev"] = tok
        else:
            raise ConfigError(f"disk spec {spec!r}: unexpected positional parameter {tok!r}")
    target = fields.get("target", "")
    kind = "file"
    for prefix, k in LEGACY_PREFIXES.items():
        if target.startswith(prefix):
            target, kind = target[len(prefix):], k
            break
    if not target:
        raise ConfigError(f"disk spec {spec!r}: expected a target (a path), got none")
    if target.startswith("/dev/"):
        kind = "phy"
    fmt = fields.get("format", "raw")
    if fmt != "raw":
        raise ConfigError(f"disk spec {spec!r}: format: expected raw, got {fmt!r}")
    if "vdev" not in fields:
        raise ConfigError(f"disk spec {spec!r}: expected a vdev (xvda...), got none")
    access = fields.get("access", "rw")
    if access not in ACCESS:
        raise ConfigError(f"disk spec {spec!r}: access: expected r, ro, w or rw, got {access!r}")
    cdrom = cdrom or fields.get("devtype") == "cdrom"
    return DiskSpec(target, fields["vdev"], vdev_to_devid(fields["vdev"]),
                    ACCESS[access] or cdrom, fmt, kind, cdrom)


def backend_path(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vbd/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vbd/{devid}"


def attach_disk(xs: "Xenstored", domid: int, disk: DiskSpec) -> None:
    """libxl__device_disk_add: the frontend and backend directories, perms as libxl."""
    be, fe = backend_path(domid, disk.devid), frontend_path(domid, disk.devid)
    if xs.exists(be) or xs.exists(fe):
        raise ConfigError(f"disk {disk.vdev}: d{domid} already has a device {disk.devid}")
    fe_perms = [f"n{domid}", "r0"]           # the guest owns, the backend reads
    xs.mkdir(fe, fe_perms)
    for k, v in (("backend", be), ("backend-id", "0"), ("virtual-device", str(disk.devid)),
                 ("device-type", "cdrom" if disk.cdrom else "disk"),
                 ("state", str(int(XenbusState.Initialising)))):
        xs.write(f"{fe}/{k}", v, fe_perms)
    write_backend_nodes(xs, domid, disk)


def write_backend_nodes(xs: "Xenstored", domid: int, disk: DiskSpec) -> None:
    """The backend half of ``attach_disk`` (also what a restore writes for a frontend
    that came back with its domain), ``state`` = Initialising last."""
    be, fe = backend_path(domid, disk.devid), frontend_path(domid, disk.devid)
    be_perms = ["n0", f"r{domid}"]           # dom0 owns, the guest reads
    xs.mkdir(be, be_perms)
    for k, v in (("frontend", fe), ("frontend-id", str(domid)), ("online", "1"),
                 ("removable", "0"), ("bootable", "1"), ("dev", disk.vdev),
                 ("type", disk.kind), ("mode", "r" if disk.readonly else "w"),
                 ("device-type", "cdrom" if disk.cdrom else "disk"), ("params", disk.target),
                 ("discard-enable", "1"), ("state", str(int(XenbusState.Initialising)))):
        xs.write(f"{be}/{k}", v, be_perms)


def detach_disk(xs: "Xenstored", domid: int, vdev: str) -> int:
    """libxl__device_destroy's first step; returns the devid.  blkback finishes it."""
    devid = vdev_to_devid(vdev)
    be = backend_path(domid, devid)
    if not xs.exists(be):
        raise ConfigError(f"block-detach: d{domid} has no disk {vdev!r}")
    xs.write(f"{be}/online", "0")
    xs.write(f"{be}/state", str(int(XenbusState.Closing)))
    return devid


def remove_disk_nodes(xs: "Xenstored", domid: int, devid: int) -> None:
    for p in (frontend_path(domid, devid), backend_path(domid, devid)):
        if xs.exists(p):
            xs.rm(p)


def canonical_spec(disk: DiskSpec) -> str:
    """The spec in xl's key=value form (target last, so it may hold commas)."""
    parts = [f"format={disk.format}", f"vdev={disk.vdev}",
             f"access={'r' if disk.readonly else 'rw'}"]
    if disk.cdrom:
        parts.append("devtype=cdrom")
    target = f"phy:{disk.target}" if disk.kind == "phy" and not disk.target.startswith("/dev/") \
        else disk.target
    return ", ".join(parts + [f"target={target}"])


def absolute_spec(spec: str, base: str) -> str:
    """``spec`` with a relative target made absolute against ``base`` (the caller's cwd,
    as xl resolves it), in canonical form — what a client sends to a host daemon."""
    disk = parse_disk_spec(spec)
    return canonical_spec(replace(disk, target=os.path.join(base, disk.target)))


def blkback_for(host: "Host") -> "BlkBack":
    """The host's blkback, started on first use (a dom0 driver loaded on demand)."""
    from ..backends.blkback import BlkBack
    if host.blkback is None:
        host.blkback = BlkBack(host)
    return host.blkback


def attach_disks(host: "Host", domid: int, specs: Iterable[str]) -> list[DiskSpec]:
    """Parse every spec, check the targets exist, then hot-plug each (xl's order)."""
    disks = [parse_disk_spec(s) for s in specs]
    seen: set[int] = set()
    for disk in disks:
        if not os.path.exists(disk.target):
            raise ConfigError(f"disk {disk.vdev}: target {disk.target!r}: no such file or device")
        if disk.devid in seen:
            raise ConfigError(f"disk {disk.vdev}: vdev given twice")
        seen.add(disk.devid)
    if disks:
        bb = blkback_for(host)
        for disk in disks:
            attach_disk(bb.xs, domid, disk)
        bb.poll()
    return disks


def list_disks(host: "Host", domid: int) -> list[dict[str, object]]:
    """block-list's rows: Vdev, BE, handle, state, evt-ch, ring-ref, BE-path."""
    bb = getattr(host, "blkback", None)
    if bb is None:
        return []
    rows: list[dict[str, object]] = []
    for info in bb.list(domid):
        fe = frontend_path(domid, info.devid)
        rows.append({"vdev": info.devid, "name": info.vdev, "be": 0, "state": int(info.state),
                     "frontend_state": int(info.frontend_state),
                     "evtchn": bb.read(f"{fe}/event-channel") or "-1",
                     "ring_ref": bb.read(f"{fe}/ring-ref") or bb.read(f"{fe}/ring-ref0") or "-1",
                     "be_path": backend_path(domid, info.devid), "target": info.target,
                     "mode": info.mode, "broken": info.broken})
    return rows
