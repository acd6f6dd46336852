"""`xenpy gdb DOM`: attach the real gdb to a domain that is already running."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import TIMEOUT, wait_for

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None,
                                reason="gdb is not installed (Debian package gdb)")


def _port(out: str) -> int:
    m = re.search(r"target remote 127\.0\.0\.1:(\d+)", out)
    assert m, out
    return int(m.group(1))


def test_gdb_attaches_to_a_running_domain_and_detaches(host):
    host.create("busy", "spin", cmdline="n=4000000000")
    port = _port(host.xenpy("gdb", "busy").stdout)
    assert _port(host.xenpy("gdb", "busy").stdout) == port       # one stub per domain
    cmds = ["set pagination off", "set architecture i386", f"target remote 127.0.0.1:{port}",
            "info registers eip cs", "detach"]
    argv = ["gdb", "-batch", "-nx"] + [a for c in cmds for a in ("-ex", c)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    m = re.search(r"eip\s+0x([0-9a-f]+)", out)
    assert m, out
    assert 0xC0000000 <= int(m.group(1), 16) < 0xF5800000, out    # stopped in the guest kernel
    assert re.search(r"cs\s+0xe019", out), out                      # ring-1 kernel code
    # detached: the guest runs on
    wait_for(lambda: host.state("busy") not in (None, "--p---"), "busy to run again")
    assert "s" not in (host.state("busy") or "s")


def test_gdb_for_an_unknown_domain_is_a_clear_error(host):
    proc = host.xenpy("gdb", "nosuch", check=False)
    assert proc.returncode == 3 and "nosuch" in proc.stderr and "Traceback" not in proc.stderr
