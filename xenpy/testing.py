"""pytest fixtures for testing guest kernels on xenpy.

Enable with ``pytest_plugins = ["xenpy.testing"]`` in a conftest.py (or ``-p xenpy.testing``)::

    def test_my_kernel(domain_factory):
        guest = domain_factory("build/mykernel.elf", memory_mib=16, cmdline="debug")
        assert guest.run(timeout=10), "still running"
        assert "my kernel: ok" in guest.console
        assert guest.shutdown_reason == Shutdown.poweroff

``xen_host`` is a fresh :class:`~xenpy.hv.host.Host` per test, closed afterwards
(``@pytest.mark.xen_host(memory_mib=N)`` sizes its machine memory).
``domain_factory`` boots a kernel (a path, or the name of a guest bundled in
guests/build) on that host and returns a :class:`GuestRun`.  When a test fails, the
console of every domain it booted — with its shutdown reason or crash message and the
hypervisor console — is added to the test report, since a guest's own output is
usually the best explanation of why it did not do what the test expected.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

if TYPE_CHECKING:       # imported lazily: loading the plugin must never fail a test session
    from .abi.sched import Shutdown
    from .hv.domain import Domain
    from .hv.host import Host

#: The GuestRuns a test booted, for the failure report (a key, not state).
_RUNS = pytest.StashKey[list["GuestRun"]]()

DEFAULT_HOST_MIB = 128


class GuestRun:
    """One booted domain, seen as a test sees it: run it, read its console, type into it."""

    def __init__(self, host: "Host", domain: "Domain") -> None:
        self.host = host
        self.domain = domain

    @property
    def console(self) -> str:
        """Everything the guest wrote on its PV console ring and console_io, so far."""
        return bytes(self.domain.console_log).decode("utf-8", errors="replace")

    @property
    def lines(self) -> list[str]:
        return self.console.splitlines()

    @property
    def shutdown_reason(self) -> "Shutdown | None":
        return self.domain.shutdown_reason

    def run(self, timeout: float = 10.0,
            until: Callable[[], bool] | None = None) -> bool:
        """Run until the domain shuts down or ``until()`` holds (True), or ``timeout`` (False)."""
        return self.host.run([self.domain], timeout=timeout, until=until)

    def run_until_output(self, text: str, timeout: float = 10.0) -> bool:
        """Run until ``text`` appears on the console (True); False on timeout or shutdown."""
        self.run(timeout, until=lambda: text in self.console)
        return text in self.console

    def feed(self, data: bytes) -> None:
        """Type ``data`` on the guest's PV console (xenconsoled's input side)."""
        self.host.consoles.consoles[self.domain.domid].feed(data)

    def report(self) -> str:
        """The console and state of the domain, as put in a failed test's report."""
        d = self.domain
        state = d.shutdown_reason.name if d.shutdown_reason is not None else "running"
        head = f"d{d.domid} {d.name}: {state}"
        if d.crash_message:
            head += f" ({d.crash_message})"
        hv = b"".join(self.host.hv_console).decode("utf-8", errors="replace")
        return f"{head}\n--- console ---\n{self.console}" + (
            f"\n--- hypervisor console ---\n{hv}" if hv else "")


class DomainFactory:
    """Boots kernels on one host; each call returns a :class:`GuestRun`."""

    def __init__(self, host: "Host", runs: list[GuestRun]) -> None:
        self.host = host
        self.runs = runs

    def __call__(self, kernel: str | Path, *, memory_mib: int = 16, cmdline: str = "",
                 vcpus: int = 1, name: str | None = None) -> GuestRun:
        from .cli import resolve_kernel
        from .toolstack.domain import DomainSpec, boot_domain
        path = resolve_kernel(str(kernel))
        spec = DomainSpec(name=name or f"{path.stem}-{len(self.runs) + 1}", kernel=path,
                          memory_mib=memory_mib, vcpus=vcpus, cmdline=cmdline)
        run = GuestRun(self.host, boot_domain(self.host, spec))
        self.runs.append(run)
        return run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "xen_host(memory_mib=N): machine memory of the test's xen_host "
                   f"(default {DEFAULT_HOST_MIB} MiB)")


@pytest.fixture
def xen_host(request: pytest.FixtureRequest) -> Iterator["Host"]:
    """A Host, closed after the test; size it with ``@pytest.mark.xen_host(memory_mib=N)``."""
    from .hv.host import Host
    marker = request.node.get_closest_marker("xen_host")
    mib = marker.kwargs.get("memory_mib", DEFAULT_HOST_MIB) if marker else DEFAULT_HOST_MIB
    host = Host(memory_mib=mib)
    try:
        yield host
    finally:
        host.close()
        host.mem.close()
    assert host.soon_call_failures == 0, "a host-side backend raised (see the log)"


@pytest.fixture
def domain_factory(request: pytest.FixtureRequest, xen_host: "Host") -> DomainFactory:
    """Boot kernels on ``xen_host``; their consoles go into the report if the test fails."""
    runs: list[GuestRun] = []
    request.node.stash[_RUNS] = runs
    return DomainFactory(xen_host, runs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for run in item.stash.get(_RUNS, []):
            d = run.domain
            report.sections.append((f"xen console d{d.domid} ({d.name})", run.report()))
    return report
