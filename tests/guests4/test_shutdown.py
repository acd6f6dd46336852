"""shutdown: the guest watches control/shutdown and obeys the toolstack's request, the
way `xenpy shutdown` (and xl) ask a PV guest to go."""
from __future__ import annotations

import pytest

from .conftest import WIDTHS


def ready(run) -> str:
    assert run.run_until_output("shutdown: ready"), run.console
    return f"/local/domain/{run.domain.domid}/control"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("request_, reason", [("poweroff", "poweroff"), ("halt", "poweroff"),
                                              ("reboot", "reboot"), ("crash", "crash")])
def test_shutdown_request(boot, xen_host, width, request_, reason):
    run = boot("shutdown", width)
    control = ready(run)
    xs = xen_host.xenstored
    assert xs.read(f"{control}/feature-poweroff") == b"1"
    assert xs.read(f"{control}/feature-reboot") == b"1"
    assert run.shutdown_reason is None
    xs.write(f"{control}/shutdown", request_)
    assert run.run(timeout=30), "the guest ignored the request"
    assert run.lines[-1] == f"shutdown: {request_}"
    assert run.shutdown_reason.name == reason
    assert xs.read(f"{control}/shutdown") == b""          # acknowledged


def test_unknown_request_is_ignored(boot, xen_host):
    run = boot("shutdown", "x86_32")
    control = ready(run)
    xen_host.xenstored.write(f"{control}/shutdown", "dance")
    assert run.run_until_output('shutdown: ignoring unknown request "dance"')
    assert run.shutdown_reason is None
    xen_host.xenstored.write(f"{control}/shutdown", "poweroff")
    assert run.run(timeout=30)
    assert run.shutdown_reason.name == "poweroff"


def test_other_domains_keep_running(boot, xen_host):
    """A request to one domain leaves the other alone."""
    a, b = boot("shutdown", "x86_64"), boot("shutdown", "x86_32")
    ready(a)
    control_b = ready(b)
    xen_host.xenstored.write(control_b + "/shutdown", "poweroff")
    assert b.run(timeout=30)
    assert b.shutdown_reason.name == "poweroff"
    assert a.shutdown_reason is None
    assert not a.domain.finished
