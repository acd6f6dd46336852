"""The event/xenbus guests (pingpong, timer, xs, shutdown), built once per session.

``xen_host`` is overridden here: the guests run on a deterministic Host (the
instruction-driven clock and C block-budget slices).  On the real-time clock,
guests that take event upcalls crash now and then - see test_realtime.py, which
keeps that hypervisor bug visible - so the functional tests stay on the clock
that is reliable and reproducible.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from xenpy.hv.host import Host
from xenpy.testing import DomainFactory, GuestRun

GUESTS = Path(__file__).resolve().parents[2] / "guests"
WIDTHS = ["x86_32", "x86_64"]
HOST_MIB = 64


@pytest.fixture(scope="session")
def guest_build() -> Path:
    """guests/build after `make -C guests` (incremental, so cheap when up to date)."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.fail("building the guests needs make and gcc (with -m32 multilib)")
    done = subprocess.run(["make", "-C", str(GUESTS)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"`make -C guests` failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return GUESTS / "build"


@pytest.fixture
def xen_host() -> Iterator[Host]:
    """A deterministic Host per test (overrides xenpy.testing's), closed afterwards."""
    host = Host(memory_mib=HOST_MIB, deterministic=True)
    try:
        yield host
    finally:
        host.close()
        host.mem.close()


@pytest.fixture
def boot(domain_factory: DomainFactory, guest_build: Path):
    """boot(guest, width, cmdline) -> GuestRun on the test's xen_host."""
    def _boot(guest: str, width: str, cmdline: str = "") -> GuestRun:
        return domain_factory(guest_build / f"{guest}-{width}.elf", memory_mib=8,
                              cmdline=cmdline)
    return _boot


@pytest.fixture
def new_host() -> Iterator:
    """new_host(deterministic) -> (Host, DomainFactory) for tests that need several
    hosts; every host is closed afterwards."""
    hosts: list[Host] = []

    def _new(deterministic: bool = True) -> tuple[Host, DomainFactory]:
        host = Host(memory_mib=HOST_MIB, deterministic=deterministic)
        hosts.append(host)
        return host, DomainFactory(host, [])
    yield _new
    for h in hosts:
        h.close()
        h.mem.close()
