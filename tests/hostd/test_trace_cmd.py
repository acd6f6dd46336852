"""`xenpy trace DOM`: the hypercall trace of a domain on a running host."""
from __future__ import annotations

import json
import subprocess
import sys

from .conftest import TIMEOUT


def test_trace_streams_a_running_domains_hypercalls(host):
    host.create("busy", "nullhc", cmdline="n=400000000")
    proc = subprocess.Popen([sys.executable, "-m", "xenpy.cli", "trace", "busy", "--names",
                             "xen_version"], env=host.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    for line in lines:
        assert "xen_version(XENVER_version" in line and line.rstrip().endswith("= 0x40011"), lines
    # the tracer went away with the client; the guest keeps running, untraced
    state = host.state("busy")
    assert state is not None and "s" not in state and "c" not in state, state


def test_trace_json_ends_when_the_domain_goes(host):
    host.create("short", "nullhc", cmdline="n=3000")
    proc = host.xenpy("trace", "short", "--json", timeout=TIMEOUT, check=False)
    # nullhc may already have finished: then the host refuses with a one-line error
    if proc.returncode != 0:
        assert "short" in proc.stderr and "Traceback" not in proc.stderr
        return
    records = [json.loads(x) for x in proc.stdout.splitlines()]
    assert records and all(r["domain"] == "short" for r in records)
    assert records[-1]["name"] == "sched_op"


def test_trace_of_an_unknown_domain_is_a_clear_error(host):
    proc = host.xenpy("trace", "nosuch", check=False)
    assert proc.returncode == 3 and "nosuch" in proc.stderr and "Traceback" not in proc.stderr
