"""End to end: Debian's xenstore-utils (libxenstore 4.17) against our Unix socket.

libxenstore's xs_open() connects to $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket;
when that path is a socket it speaks xs_wire over it, wrapping most commands in a
transaction (retried on EAGAIN).  Every test asserts the tools' output.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import pytest

from xenpy.backends.xenstored import UnixSocketServer, Xenstored

from .conftest import FakeGuest

pytestmark = pytest.mark.skipif(shutil.which("xenstore-read") is None,
                                reason="needs Debian's xenstore-utils (apt-get install xenstore-utils)")

TIMEOUT = 30


@pytest.fixture
def served() -> Iterator[tuple[Xenstored, dict[str, str]]]:
    d = Xenstored()
    tmp = tempfile.mkdtemp(prefix="xs", dir="/tmp")   # a short path: sun_path is 108 bytes
    path = os.path.join(tmp, "socket")
    server = UnixSocketServer(d, path)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENSTORED_")}
    env["XENSTORED_PATH"] = path
    try:
        yield d, env
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run(env: dict[str, str], *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, (argv, proc.returncode, proc.stderr)
    return proc


def test_write_read(served) -> None:
    d, env = served
    run(env, "xenstore-write", "/vm/name", "guest1", "/vm/memory", "256")
    assert d.read("/vm/name") == b"guest1"
    assert run(env, "xenstore-read", "/vm/name").stdout == "guest1\n"
    assert run(env, "xenstore-read", "/vm/name", "/vm/memory").stdout == "guest1\n256\n"
    missing = run(env, "xenstore-read", "/vm/nothing", check=False)
    assert missing.returncode == 1
    assert "couldn't read path /vm/nothing" in missing.stderr


def test_exists(served) -> None:
    d, env = served
    d.write("/here", "1")
    assert run(env, "xenstore-exists", "/here", check=False).returncode == 0
    assert run(env, "xenstore-exists", "/not/here", check=False).returncode == 1


def test_ls_and_list(served) -> None:
    d, env = served
    d.write("/top/a", "1")
    d.write("/top/b/c", "deep")
    d.mkdir("/top/empty")
    assert run(env, "xenstore-ls", "/top").stdout == 'a = "1"\nb = ""\n c = "deep"\nempty = ""\n'
    assert run(env, "xenstore-list", "/top").stdout == "a\nb\nempty\n"
    full = run(env, "xenstore-ls", "-f", "/top").stdout.splitlines()
    assert full == ['/top/a = "1"', '/top/b = ""', '/top/b/c = "deep"', '/top/empty = ""']


def test_rm(served) -> None:
    d, env = served
    d.write("/gone/x/y", "1")
    d.write("/gone/keep", "1")
    run(env, "xenstore-rm", "/gone/x")
    assert d.directory("/gone") == ["keep"]
    run(env, "xenstore-rm", "-t", "/gone/keep")   # -t: also remove emptied parents
    assert not d.exists("/gone")


def test_chmod_and_ls_perms(served) -> None:
    d, env = served
    d.write("/perm/node", "v")
    run(env, "xenstore-chmod", "/perm/node", "n0", "r1", "b2")
    assert d.get_perms("/perm/node") == ["n0", "r1", "b2"]
    out = run(env, "xenstore-ls", "-p", "/perm").stdout
    assert out.startswith('node = "v"') and out.rstrip().endswith("(n0,r1,b2)")
    run(env, "xenstore-chmod", "-r", "/perm", "b5")
    assert d.get_perms("/perm") == ["b5"] and d.get_perms("/perm/node") == ["b5"]


def test_watch_initial_event(served) -> None:
    _, env = served
    assert run(env, "xenstore-watch", "-n", "1", "/w").stdout == "/w\n"
    assert run(env, "xenstore-watch", "-n", "1", "@introduceDomain").stdout == "@introduceDomain\n"


def _start_watch(env: dict[str, str], path: str, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["xenstore-watch", "-n", str(count), path], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    # A hung tool must fail the test, not hang it: kill it after TIMEOUT whatever happens.
    killer = threading.Timer(TIMEOUT, proc.kill)
    killer.daemon = True
    killer.start()
    assert proc.stdout is not None
    assert proc.stdout.readline() == f"{path}\n"    # the initial event: the watch is set
    return proc


def test_watch_sees_tool_writes(served) -> None:
    _, env = served
    proc = _start_watch(env, "/w", 3)
    run(env, "xenstore-write", "/w/a", "1")
    run(env, "xenstore-rm", "/w")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out == "/w/a\n/w\n"


def test_watch_sees_guest_ring_writes(served) -> None:
    """An event produced by a ring kick reaches a socket client (cross-thread wakeup)."""
    d, env = served
    d.mkdir("/local/domain/1", perms=["n1"])
    proc = _start_watch(env, "/local/domain/1", 2)
    guest = FakeGuest(d, 1)
    guest.write("data/state", "4")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out == "/local/domain/1/data/state\n"
    assert run(env, "xenstore-read", "/local/domain/1/data/state").stdout == "4\n"


def test_watch_release_domain(served) -> None:
    d, env = served
    proc = _start_watch(env, "@releaseDomain", 2)
    guest = FakeGuest(d, 3)
    d.release_domain(guest.domid)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out == "@releaseDomain\n"


def test_rundir_variable_names_the_socket_directory(served) -> None:
    d, env = served
    d.write("/via", "rundir")
    rundir_env = {k: v for k, v in env.items() if k != "XENSTORED_PATH"}
    rundir_env["XENSTORED_RUNDIR"] = os.path.dirname(env["XENSTORED_PATH"])
    assert run(rundir_env, "xenstore-read", "/via").stdout == "rundir\n"


def test_tools_see_permission_errors_of_the_store(served) -> None:
    d, env = served
    # dom0 tools are privileged: even a node denied to everyone is readable...
    d.write("/locked", "x", perms=["n7"])
    assert run(env, "xenstore-read", "/locked").stdout == "x\n"
    # ...but a malformed path is refused by the daemon (EINVAL).
    bad = run(env, "xenstore-read", "/bad path", check=False)
    assert bad.returncode == 1
