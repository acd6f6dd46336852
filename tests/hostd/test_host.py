"""`xenpy host` end to end: the xl-like commands against a host subprocess.

Guests: hello (prints, powers off), spin (a CPU loop; n large enough to outlive the
test), echo (waits for console input in SCHEDOP_poll, so it is mostly blocked), crash.
"""
from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from pathlib import Path

import pytest

from xenpy.toolstack.control import ControlClient, ControlError

from .conftest import TIMEOUT, HostProc, needs_xenstore_utils, wait_for

FOREVER = "n=4000000000"       # spin iterations: minutes of emulation, destroyed long before


def test_host_prints_its_sockets_and_stops_cleanly_on_sigterm(host: HostProc) -> None:
    assert host.banner == {"XENPY_CONTROL": host.control, "XENSTORED_PATH": host.xenstored}
    assert os.path.exists(host.control) and os.path.exists(host.xenstored)
    host.create("spin", "spin", cmdline=FOREVER)
    assert host.stop(signal.SIGTERM) == 0
    assert not os.path.exists(host.control) and not os.path.exists(host.xenstored)
    assert "d1 destroyed" in host.log()


def test_sigint_stops_the_host_too(host: HostProc) -> None:
    assert host.stop(signal.SIGINT) == 0
    assert not os.path.exists(host.control)


def test_a_second_host_on_the_same_socket_is_refused(host: HostProc) -> None:
    proc = host.xenpy("host", "--control", host.control, "--xenstored-socket",
                      host.xenstored + "2", check=False)
    assert proc.returncode == 3
    assert "another server is listening there" in proc.stderr
    assert host.xenpy("list").returncode == 0          # the first one is untouched


@needs_xenstore_utils
def test_default_paths_come_from_xdg_runtime_dir(bundled_guests: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="xh", dir="/tmp"))
    h = HostProc(tmp, default_paths=True)
    try:
        assert h.banner == {"XENPY_CONTROL": h.control, "XENSTORED_PATH": h.xenstored}
        assert "XENPY_CONTROL" not in h.env
        assert list(h.rows()) == ["Domain-0"]
        assert h.xenpy("list").stdout.splitlines()[1].startswith("Domain-0 ")
        assert h.tool("xenstore-read", "/local/domain/0/name").stdout == "Domain-0\n"
    finally:
        assert h.stop() == 0
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_misbehaving_client_does_not_disturb_the_host(host: HostProc) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(host.control)
        s.sendall(struct.pack(">I", 5) + b"{bad}")
        s.settimeout(TIMEOUT)
        assert s.recv(100) == b""                       # dropped
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(host.control)
        s.sendall(struct.pack(">I", 1 << 30))          # a frame too big to buffer
        s.settimeout(TIMEOUT)
        assert s.recv(100) == b""
    with ControlClient(host.control, timeout=TIMEOUT) as c:
        with pytest.raises(ControlError, match="unknown operation 'reboot-the-world'"):
            c.call("reboot-the-world")
        with pytest.raises(ControlError, match="argument 'dom' should be str, found int"):
            c.call("pause", dom=1)
        with pytest.raises(ControlError, match="missing argument 'dom'"):
            c.call("destroy")
        assert c.call("list")["domains"][0]["name"] == "Domain-0"


def test_commands_without_a_host_fail_in_one_line() -> None:
    tmp = tempfile.mkdtemp(prefix="xh", dir="/tmp")
    try:
        env = {k: v for k, v in os.environ.items() if k != "XENPY_CONTROL"}
        env["XENPY_CONTROL"] = os.path.join(tmp, "nobody.sock")
        for argv in (["list"], ["pause", "x"], ["console", "x"]):
            proc = subprocess.run([sys.executable, "-m", "xenpy.cli", *argv], env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            assert proc.returncode == 3
            assert proc.stderr.startswith("xenpy: no xenpy host is running at "), proc.stderr
            assert len(proc.stderr.splitlines()) == 1
    finally:
        os.rmdir(tmp)


def test_list_shows_xl_columns_and_states(host: HostProc) -> None:
    host.create("spin", "spin", cmdline=FOREVER, memory=24)
    host.create("hello", "hello", on_poweroff="preserve")
    host.create("crash", "crash", on_crash="preserve")
    wait_for(lambda: host.state("hello") == "---s--", "hello to be shut down (poweroff)")
    wait_for(lambda: host.state("crash") == "---sc-", "crash to be shut down (crash)")
    rows = host.listed()
    assert list(rows) == ["Domain-0", "spin", "hello", "crash"]
    assert rows["Domain-0"]["id"] == "0"
    assert (rows["spin"]["id"], rows["spin"]["mem"], rows["spin"]["vcpus"]) == ("1", "24", "1")
    assert rows["spin"]["state"] == "r-----"
    host.xenpy("pause", "spin")
    assert host.state("spin") == "--p---"
    assert host.xenpy("list", "spin").stdout.splitlines()[1].startswith("spin ")
    bad = host.xenpy("list", "nosuch", check=False)
    assert bad.returncode == 3 and "nosuch" in bad.stderr


def test_blocked_state_console_input_and_output(host: HostProc) -> None:
    """echo waits in SCHEDOP_poll (state b); `xenpy console` shows what it printed before
    attaching, forwards stdin, streams the reply and exits when the domain is destroyed."""
    host.create("echo", "echo")
    wait_for(lambda: host.state("echo") == "-b----", "echo to block waiting for input")
    con = subprocess.Popen([sys.executable, "-m", "xenpy.cli", "console", "echo"], env=host.env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(TIMEOUT, con.kill)
    killer.start()
    try:
        assert con.stdout is not None and con.stdin is not None
        assert con.stdout.readline() == b"echo: ready\n"      # from the log: printed earlier
        con.stdin.write(b"abc\r")
        con.stdin.flush()
        out, err = con.communicate(timeout=TIMEOUT)
    finally:
        killer.cancel()
    assert con.returncode == 0, err
    assert out == b"echo: abc\n"
    wait_for(lambda: "echo" not in host.rows(), "echo to be destroyed (on_poweroff=destroy)")


def test_console_on_a_terminal_is_raw_and_restored(host: HostProc) -> None:
    """On a tty, keys reach the guest unprocessed (a bare CR, no line buffering), guest
    newlines still start a new line, and the terminal is restored afterwards."""
    host.create("echo", "echo")
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    con = subprocess.Popen([sys.executable, "-m", "xenpy.cli", "console", "echo"], env=host.env,
                           stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    try:
        seen = b""

        def read_until(token: bytes) -> bool:
            nonlocal seen
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 4096)
            return token in seen

        wait_for(lambda: read_until(b"echo: ready\r\n"), "the console log on the tty")
        wait_for(lambda: termios.tcgetattr(slave)[3] & termios.ICANON == 0, "raw mode")
        os.write(master, b"abc\r")
        wait_for(lambda: read_until(b"echo: abc\r\n"), "the echo on the tty")
        assert con.wait(timeout=TIMEOUT) == 0, con.stderr.read() if con.stderr else ""
        assert termios.tcgetattr(slave) == before
    finally:
        if con.poll() is None:
            con.kill()
            con.wait()
        os.close(master)
        os.close(slave)


def test_ctrl_bracket_detaches_the_console(host: HostProc) -> None:
    host.create("echo", "echo")
    proc = host.xenpy("console", "echo", input="\x1d")
    assert proc.stdout.startswith("echo: ready")
    assert host.state("echo") in ("-b----", "r-----")      # still there, input unread


def test_create_with_console_streams_hello_to_the_end(host: HostProc) -> None:
    proc = host.xenpy("create", "-c", str(host.cfg("hello", "hello")))
    lines = proc.stdout.splitlines()
    assert lines[0] == "Hello from xenpy-test (xen-3.0-x86_32p)"
    assert lines[-1] == "hello: PASS"
    assert "hello" not in host.rows()


def test_pause_and_unpause_stop_and_resume_progress(host: HostProc) -> None:
    host.create("a", "spin", cmdline=FOREVER)
    host.create("b", "spin", cmdline=FOREVER)
    wait_for(lambda: host.rows()["a"]["cpu_time"] > 0, "a to run")
    host.xenpy("pause", "a")
    rows = host.rows()
    a0, b0 = rows["a"]["cpu_time"], rows["b"]["cpu_time"]
    # While b makes 0.3 s of progress, paused a makes none at all.
    wait_for(lambda: host.rows()["b"]["cpu_time"] > b0 + 0.3, "b to keep running")
    assert host.rows()["a"]["cpu_time"] == a0
    assert host.rows()["a"]["paused"] is True
    host.xenpy("unpause", "1")                               # by id this time
    wait_for(lambda: host.rows()["a"]["cpu_time"] > a0, "a to resume")
    assert host.state("a") in ("r-----", "------")


def test_pause_errors_name_the_domain(host: HostProc) -> None:
    host.create("hello", "hello", on_poweroff="preserve")
    wait_for(lambda: host.state("hello") == "---s--", "hello to shut down")
    proc = host.xenpy("pause", "hello", check=False)
    assert proc.returncode == 3 and "has shut down and cannot be paused" in proc.stderr
    proc = host.xenpy("unpause", "42", check=False)
    assert proc.returncode == 3 and "domain 42: no domain with that id" in proc.stderr


def test_destroy(host: HostProc) -> None:
    host.create("spin", "spin", cmdline=FOREVER)
    free_before = host.rows()["Domain-0"]["mem_mib"]
    host.xenpy("destroy", "spin")
    assert "spin" not in host.rows()
    assert host.rows()["Domain-0"]["mem_mib"] > free_before     # its memory came back
    proc = host.xenpy("destroy", "spin", check=False)
    assert proc.returncode == 3 and "no domain with that name" in proc.stderr


def test_on_poweroff_destroy_preserve_restart(host: HostProc) -> None:
    host.create("gone", "hello")
    host.create("kept", "hello", on_poweroff="preserve")
    wait_for(lambda: "gone" not in host.rows(), "on_poweroff=destroy to destroy it")
    wait_for(lambda: host.state("kept") == "---s--", "on_poweroff=preserve to keep it")
    assert host.xenpy("console", "kept").stdout.endswith("hello: PASS\n")
    first = host.create("again", "hello", on_poweroff="restart")
    wait_for(lambda: host.rows().get("again", {}).get("domid", first) not in (first, -1),
             "on_poweroff=restart to rebuild it under a new id")
    host.xenpy("destroy", "again")
    assert "again" not in host.rows()


def test_bad_configs_are_refused_with_the_field_named(host: HostProc) -> None:
    cfg = host.cfg("x", "hello", on_crash="soft-reset")
    proc = host.xenpy("create", str(cfg), check=False)
    assert proc.returncode == 3 and "on_crash: expected one of" in proc.stderr
    cfg = host.dir / "nokernel.cfg"
    cfg.write_text('name = "x"\nkernel = "missing.elf"\n')
    proc = host.xenpy("create", str(cfg), check=False)
    assert proc.returncode == 3 and "missing.elf" in proc.stderr
    host.create("dup", "spin", cmdline=FOREVER)
    proc = host.xenpy("create", str(host.cfg("dup", "spin")), check=False)
    assert proc.returncode == 3 and "name 'dup': already used by domain 1" in proc.stderr


def test_create_overrides_and_paused(host: HostProc) -> None:
    cfg = host.cfg("spin", "spin", cmdline="n=1")
    host.xenpy("create", "-p", str(cfg), "memory=20", f'cmdline="{FOREVER}"')
    row = host.listed()["spin"]
    assert (row["state"], row["mem"]) == ("--p---", "20")
    assert host.rows()["spin"]["cpu_time"] == 0.0


@needs_xenstore_utils
def test_shutdown_writes_control_node_then_force_destroys(host: HostProc) -> None:
    domid = host.create("spin", "spin", cmdline=FOREVER)
    node = f"/local/domain/{domid}/control/shutdown"
    assert host.tool("xenstore-read", node).stdout == "\n"
    host.xenpy("shutdown", "spin")
    assert host.tool("xenstore-read", node).stdout == "poweroff\n"
    assert host.state("spin") == "r-----"                   # spin has no xenbus: ignores it
    host.xenpy("shutdown", "--force", "--timeout", "0", "--wait", "spin")
    assert "spin" not in host.rows()
    assert host.tool("xenstore-exists", f"/local/domain/{domid}", check=False).returncode == 1


@needs_xenstore_utils
def test_xenstore_utils_against_the_running_host(host: HostProc) -> None:
    d1 = host.create("spin", "spin", cmdline=FOREVER)
    d2 = host.create("echo", "echo")
    assert host.tool("xenstore-read", f"/local/domain/{d1}/name").stdout == "spin\n"
    ls = host.tool("xenstore-ls", f"/local/domain/{d2}").stdout
    assert 'name = "echo"' in ls.splitlines()
    assert host.tool("xenstore-read", "/local/domain/0/name").stdout == "Domain-0\n"
    # a tools-owned path: write, read, chmod, rm
    host.tool("xenstore-write", "/tool/x", "1")
    assert host.tool("xenstore-read", "/tool/x").stdout == "1\n"
    host.tool("xenstore-chmod", "/tool/x", "n0", f"r{d1}")
    assert host.tool("xenstore-ls", "-p", "/tool").stdout.split()[-1] == f"(n0,r{d1})"
    host.tool("xenstore-rm", "/tool/x")
    assert host.tool("xenstore-read", "/tool/x", check=False).returncode == 1


@needs_xenstore_utils
def test_guest_nodes_are_not_writable_by_another_domain(host: HostProc) -> None:
    d1 = host.create("spin", "spin", cmdline=FOREVER)
    d2 = host.create("echo", "echo")
    for mine, other in ((d1, d2), (d2, d1)):
        perms = host.tool("xenstore-ls", "-p", f"/local/domain/{mine}").stdout
        acls = [line.rsplit("(", 1)[1].rstrip(")") for line in perms.splitlines()]
        assert acls and all(a.split(",")[0] in ("n0", f"n{mine}") for a in acls)
        # nobody but the owner, dom0 and (read-only) the guest itself is named
        named = {p[1:] for a in acls for p in a.split(",")}
        assert named <= {"0", str(mine)}, (mine, named)
        assert str(other) not in named
        assert "(n%d)" % mine in perms                       # e.g. control/: the guest's own
    # dom0 may let d2 read d1's node; the perms then show d2 as a reader, never a writer
    host.tool("xenstore-chmod", f"/local/domain/{d1}/data", f"n{d1}", f"r{d2}")
    line = [l for l in host.tool("xenstore-ls", "-p", f"/local/domain/{d1}").stdout.splitlines()
            if l.startswith("data =")][0]
    assert line.endswith(f"(n{d1},r{d2})")


@needs_xenstore_utils
def test_xenstore_watch_fires_on_write_and_domain_events(host: HostProc) -> None:
    watch = subprocess.Popen(["xenstore-watch", "-n", "2", "/tool/w"], env=host.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    rel = subprocess.Popen(["xenstore-watch", "-n", "2", "@releaseDomain"], env=host.env,
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    killers = [threading.Timer(TIMEOUT, p.kill) for p in (watch, rel)]
    for k in killers:
        k.start()
    try:
        assert watch.stdout is not None and rel.stdout is not None
        assert watch.stdout.readline() == "/tool/w\n"        # the initial event: watch set
        assert rel.stdout.readline() == "@releaseDomain\n"
        host.tool("xenstore-write", "/tool/w", "hi")
        out, err = watch.communicate(timeout=TIMEOUT)
        assert watch.returncode == 0, err
        assert out == "/tool/w\n"
        host.create("hello", "hello")                        # powers off: @releaseDomain
        out, err = rel.communicate(timeout=TIMEOUT)
        assert rel.returncode == 0, err
        assert out == "@releaseDomain\n"
    finally:
        for k in killers:
            k.cancel()
        for p in (watch, rel):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_deterministic_host_runs_guests(bundled_guests: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="xh", dir="/tmp"))
    h = HostProc(tmp, ["--deterministic"])
    try:
        assert h.call("info")["deterministic"] is True
        out = h.xenpy("create", "-c", str(h.cfg("hello", "hello"))).stdout
        assert out.endswith("hello: PASS\n")
    finally:
        assert h.stop() == 0
        shutil.rmtree(tmp, ignore_errors=True)
