"""xenpy.testing as a user sees it: the fixtures, and the console in a failure report."""
from __future__ import annotations

import pytest

USER_TEST = '''
from xenpy.abi.sched import Shutdown

def test_passes(domain_factory):
    g = domain_factory("hello", memory_mib=8, cmdline="from-user-test")
    assert g.run(timeout=20)
    assert g.shutdown_reason == Shutdown.poweroff
    assert "cmdline: from-user-test" in g.lines

def test_fails(domain_factory):
    g = domain_factory("crash", memory_mib=8)
    g.run(timeout=20)
    assert g.shutdown_reason == Shutdown.poweroff
'''


def test_console_is_dumped_into_the_failure_report(pytester: pytest.Pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_inprocess("-p", "xenpy.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "xen console d1 (crash-x86_32-1)" in out
    assert "crash: about to crash" in out
    assert "d1 crash-x86_32-1: crash" in out
    assert "from-user-test" not in out            # a passing test's console stays quiet


def test_guest_run_api(domain_factory, xen_host):
    g = domain_factory("echo", memory_mib=8, name="typist")
    assert g.domain.name == "typist" and g.host is xen_host
    assert g.run_until_output("echo: ready", timeout=20)
    g.feed(b"typed\r")
    assert g.run(timeout=20)
    assert g.lines[-1] == "echo: typed"
    assert "d1 typist: poweroff" in g.report()


def test_unknown_kernel_name_is_a_clear_error(domain_factory):
    from xenpy.errors import XenpyError
    with pytest.raises(XenpyError, match="no-such-guest"):
        domain_factory("no-such-guest")


@pytest.mark.xen_host(memory_mib=48)
def test_host_size_marker(xen_host, domain_factory):
    assert xen_host.mem.nr_frames == 48 * 256
    g = domain_factory("hello", memory_mib=16)
    assert g.run(timeout=20) and g.lines[-1] == "hello: PASS"
