"""The xs guest: its own subtree over the store ring - read, write, watch, directory,
transactions - and EACCES on everybody else's."""
from __future__ import annotations

import pytest

from .conftest import WIDTHS

CHECKS = ["identity", "write", "watch", "directory", "mkdir-rm", "tx-commit", "tx-abort",
          "tx-conflict", "eacces", "unwatch"]


@pytest.mark.parametrize("width", WIDTHS)
def test_xs_guest(boot, xen_host, width):
    # Another domain whose nodes the xs guest must not reach: the shutdown guest waits
    # for a request, so it is still alive while xs runs.
    other = boot("shutdown", width)
    assert other.run_until_output("shutdown: ready")
    run = boot("xs", width, f"other={other.domain.domid}")
    assert run.run(timeout=30), "xs did not shut down"
    d = run.domain
    assert f"xs: name={d.name} domid={d.domid}" in run.lines
    for name in CHECKS:
        assert f"xs: {name}: ok" in run.lines, run.console
    assert run.lines[-1] == "xs: PASS"
    assert run.shutdown_reason.name == "poweroff"
    # What the guest wrote is in the store, as the toolstack sees it.
    home = f"/local/domain/{d.domid}"
    assert xen_host.xenstored.read(f"{home}/data/greeting") == b"hello from xs"
    assert xen_host.xenstored.read(f"{home}/data/tx") == b"committed"
    assert xen_host.xenstored.read(f"{home}/data/count") == b"43"      # the conflict lost
    assert not xen_host.xenstored.exists(f"{home}/data/aborted")
    assert not xen_host.xenstored.exists(f"/local/domain/{other.domain.domid}/data/intruder")
    assert other.domain.shutdown_reason is None


def test_eacces_check_detects_readable_nodes(boot):
    """Pointed at its own domid, the EACCES check must fail: it is not vacuous."""
    run = boot("xs", "x86_32", "other=1")
    assert run.run(timeout=30)
    assert run.domain.domid == 1
    assert any(line.startswith("xs: eacces: FAIL (") and "read other's name E?" in line
               for line in run.lines), run.console
    assert run.lines[-1] == "xs: FAIL (1 of 10 failed)"


def test_dom0_perms_grant_access(boot, xen_host):
    """When dom0 gives the xs guest read access to another domain's name, the guest
    sees it (the check fails): permissions, not paths, decide."""
    other = boot("shutdown", "x86_64")
    assert other.run_until_output("shutdown: ready")
    o = other.domain.domid
    run = boot("xs", "x86_64", f"other={o}")
    xen_host.xenstored.set_perms(f"/local/domain/{o}/name", [f"n0", f"r{run.domain.domid}"])
    assert run.run(timeout=30)
    assert any(line.startswith("xs: eacces: FAIL (") for line in run.lines), run.console
    assert run.lines[-1] == "xs: FAIL (1 of 10 failed)"
