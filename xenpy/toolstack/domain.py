"""Create and boot a domain from a spec: the toolstack's `xl create` in one call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuildError
from .builder import SUPPORTED_TYPES, build_pv_domain
from .elf import load_xen_elf

if TYPE_CHECKING:
    from ..hv.domain import Domain
    from ..hv.host import Host


@dataclass
class DomainSpec:
    name: str
    kernel: Path
    memory_mib: int = 32
    vcpus: int = 1
    cmdline: str = ""


def boot_domain(host: "Host", spec: DomainSpec) -> "Domain":
    """Load the kernel, create the domain, build it; undo everything on failure."""
    image = load_xen_elf(spec.kernel)
    width = SUPPORTED_TYPES.get(image.guest_type)
    if width is None:
        raise BuildError(f"{spec.kernel}: guest type {image.guest_type!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_TYPES)})")
    if spec.memory_mib < 4:
        raise BuildError(f"memory: at least 4 MiB, got {spec.memory_mib}")
    d = host.create_domain(spec.name, width, spec.memory_mib, spec.vcpus)
    try:
        build_pv_domain(host, d, image, spec.cmdline)
    except BaseException:
        host.destroy_domain(d)
        raise
    return d
