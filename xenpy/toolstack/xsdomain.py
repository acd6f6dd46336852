"""The XenStore nodes the toolstack writes for a domain (libxl__domain_make and friends).

/local/domain/N is readable by the domain and owned by dom0; the subtrees a guest
writes itself (control, data, device, error, drivers, feature, attr) are owned by it.
"""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends.xenstored import Xenstored
    from ..hv.domain import Domain


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def write_domain_nodes(xs: "Xenstored", d: "Domain") -> None:
    n = d.domid
    path = domain_path(n)
    ro = ["n0", f"r{n}"]          # dom0 owns, the guest reads
    rw = [f"n{n}"]                # the guest owns
    vm = f"/vm/{d.uuid}"
    xs.mkdir(vm, ["n0", f"r{n}"])
    xs.write(f"{vm}/name", d.name, ["n0", f"r{n}"])
    xs.write(f"{vm}/uuid", d.uuid, ["n0", f"r{n}"])
    xs.mkdir(path, ro)
    xs.write(f"{path}/name", d.name, ro)
    xs.write(f"{path}/domid", str(n), ro)
    xs.write(f"{path}/vm", vm, ro)
    xs.write(f"{path}/memory/static-max", str(d.max_pages * 4), ro)
    xs.write(f"{path}/memory/target", str(d.max_pages * 4), rw)
    for i in range(len(d.vcpus)):
        xs.write(f"{path}/cpu/{i}/availability", "online", ro)
    xs.write(f"{path}/store/ring-ref", str(d.store_mfn), ro)
    xs.write(f"{path}/store/port", str(d.store_port), ro)
    xs.write(f"{path}/console/ring-ref", str(d.console_mfn), ro)
    xs.write(f"{path}/console/port", str(d.console_port), ro)
    xs.write(f"{path}/console/type", "xenconsoled", ro)
    xs.write(f"{path}/console/limit", "1048576", ro)
    for sub in ("control", "data", "device", "error", "drivers", "feature", "attr"):
        xs.mkdir(f"{path}/{sub}", rw)
    xs.write(f"{path}/control/shutdown", "", rw)
    xs.write(f"{path}/control/platform-feature-multiprocessor-suspend", "1", ro)


def remove_domain_nodes(xs: "Xenstored", d: "Domain") -> None:
    for p in (domain_path(d.domid), f"/vm/{d.uuid}"):
        if xs.exists(p):
            xs.rm(p)


def new_uuid() -> str:
    return str(uuid.uuid4())
