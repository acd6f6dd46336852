"""The `xenpy host` subcommand and the xl-like commands that act on a running host.

`xenpy host` runs in the foreground; `create`, `list`, `console`, `pause`, `unpause`,
`shutdown` and `destroy` find it through --control, $XENPY_CONTROL or the default path
(control.default_control_path) and talk to it over the control protocol (control.py).
Output imitates xl's where xl has a fixed format (`list`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

from ..errors import ConfigError
from .control import (CONTROL_ENV, ControlClient, ControlError, ErrorReply, Event,
                      HostNotRunning, NEED_DATA, decode_bytes, default_control_path,
                      default_xenstored_path, encode_bytes)
from .disk import absolute_spec
from .xlcfg import DomainConfig, parse_xl_config

#: xenconsole's escape character: Ctrl-] detaches.
CONSOLE_ESCAPE = b"\x1d"
#: xl list's header and its per-domain format (xl_info.c list_domains).
LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
#: xl's fifth State letter: libxl_shutdown_reason -> letter ("-rscw"), crash is 'c'.
SHUTDOWN_REASON_LETTERS = "-rscw"


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the host commands to `xenpy`'s subcommand parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", metavar="PATH",
                        help=f"the host's control socket (default: ${CONTROL_ENV} or "
                             f"{default_control_path()})")

    p = sub.add_parser("host", parents=[common],
                       help="run a host in the foreground (xenstored, consoles, a control socket)")
    p.add_argument("--xenstored-socket", metavar="PATH",
                   help=f"xenstored's socket for tools (default {default_xenstored_path()})")
    p.add_argument("--memory", type=int, default=256, metavar="MiB", help="host memory")
    p.add_argument("--deterministic", action="store_true",
                   help="virtual time from executed instructions, reproducible interleaving")
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="accept live migrations on this TCP address (port 0: any free port)")
    p.set_defaults(func=cmd_host)

    p = sub.add_parser("create", parents=[common], help="create a domain from an xl.cfg file")
    p.add_argument("config", help="xl.cfg file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="extra config lines, appended to the file as xl does")
    p.add_argument("-p", "--paused", action="store_true", help="leave the domain paused")
    p.add_argument("-c", "--console", action="store_true", help="attach to its console")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("list", parents=[common], help="list domains (xl list)")
    p.add_argument("domains", nargs="*", metavar="DOM", help="only these (name or id)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("console", parents=[common],
                       help="stream a domain's console; stdin is its input, Ctrl-] detaches")
    p.add_argument("dom", metavar="DOM")
    p.set_defaults(func=cmd_console)

    for name, what in (("pause", "pause a domain"), ("unpause", "unpause a domain"),
                       ("destroy", "destroy a domain at once")):
        p = sub.add_parser(name, parents=[common], help=what)
        p.add_argument("dom", metavar="DOM")
        p.set_defaults(func=cmd_simple, op=name)

    from .migrate import register_cli as register_migration_commands
    register_migration_commands(sub, common)

    p = sub.add_parser("gdb", parents=[common],
                       help="serve a running domain to gdb (attaching stops it; detach resumes)")
    p.add_argument("dom", metavar="DOM")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any)")
    p.set_defaults(func=cmd_gdb)

    p = sub.add_parser("trace", parents=[common],
                       help="print a running domain's hypercalls, one line each (as strace)")
    p.add_argument("dom", metavar="DOM")
    p.add_argument("--names", metavar="NAMES", help="only these hypercalls (comma-separated)")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("block-attach", parents=[common],
                       help="hot-plug a disk into a running domain (xl block-attach)")
    p.add_argument("dom", metavar="DOM")
    p.add_argument("spec", nargs="+", metavar="DISKSPEC",
                   help="an xl disk spec, e.g. format=raw, vdev=xvdb, access=rw, target=IMG")
    p.set_defaults(func=cmd_block_attach)

    p = sub.add_parser("block-detach", parents=[common],
                       help="unplug a disk from a domain (xl block-detach)")
    p.add_argument("dom", metavar="DOM")
    p.add_argument("vdev", metavar="VDEV", help="xvdb, or the device number")
    p.set_defaults(func=cmd_block_detach)

    p = sub.add_parser("block-list", parents=[common], help="list a domain's disks (xl block-list)")
    p.add_argument("dom", metavar="DOM")
    p.set_defaults(func=cmd_block_list)

    p = sub.add_parser("shutdown", parents=[common],
                       help="ask a domain to power off (control/shutdown), as xl shutdown")
    p.add_argument("dom", metavar="DOM")
    p.add_argument("-w", "--wait", action="store_true", help="wait until it has shut down")
    p.add_argument("-F", "--force", action="store_true",
                   help="destroy it if it has not shut down within --timeout")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="with --force: seconds the guest gets (default 10)")
    p.set_defaults(func=cmd_shutdown)


def _client(args: argparse.Namespace, timeout: float | None = 60.0) -> ControlClient:
    return ControlClient(args.control or default_control_path(), timeout=timeout)


# --- xenpy host ----------------------------------------------------------------------------

def cmd_host(args: argparse.Namespace) -> int:
    from ..hv.host import Host
    from .hostd import HostDaemon
    if args.memory < 16:
        raise ConfigError(f"--memory: at least 16 MiB, found {args.memory}")
    control = os.path.abspath(args.control or default_control_path())
    xs_path = os.path.abspath(args.xenstored_socket or default_xenstored_path())
    host = Host(memory_mib=args.memory, deterministic=args.deterministic)
    daemon = HostDaemon(host, control, xs_path)
    daemon.start()
    if getattr(args, "listen", None):
        print(f"XENPY_MIGRATION={daemon.migration.listen(args.listen)}", flush=True)
    previous = {sig: signal.signal(sig, lambda _s, _f: daemon.stop())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"{CONTROL_ENV}={control}")
        print(f"XENSTORED_PATH={xs_path}")
        print(f"xenpy host: running (pid {os.getpid()}); Ctrl-C or SIGTERM stops it", flush=True)
        daemon.serve_forever()
    finally:
        daemon.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("xenpy host: stopped", flush=True)
    return 0


# --- xenpy create --------------------------------------------------------------------------

def read_config(path: str, overrides: list[str]) -> DomainConfig:
    """xl create's config: the file plus KEY=VALUE lines, kernel resolved to a file
    (relative to the config's directory, else a bundled guest's name)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    for kv in overrides:
        if "=" not in kv:
            raise ConfigError(f"override {kv!r}: expected KEY=VALUE (xl.cfg syntax)")
        text += "\n" + kv
    cfg = parse_xl_config(text, source=path)
    for key, value in (("ramdisk", cfg.ramdisk), ("vif", cfg.vifs)):
        if value:
            raise ConfigError(f"{path}: {key}: not supported by xenpy yet; remove the setting")
    try:                   # xl resolves relative disk targets against the caller's cwd
        disks = tuple(absolute_spec(spec, os.getcwd()) for spec in cfg.disks)
    except ConfigError as e:
        raise ConfigError(f"{path}: disk: {e}") from None
    cfg = replace(cfg, disks=disks)
    kernel = Path(cfg.kernel)
    if not kernel.is_absolute():
        near = Path(path).resolve().parent / kernel
        if near.exists():
            kernel = near
        else:
            from ..cli import resolve_kernel
            kernel = resolve_kernel(cfg.kernel).resolve()
    if not kernel.is_file():
        raise ConfigError(f"{path}: kernel: no such file {str(kernel)!r}")
    return replace(cfg, kernel=str(kernel))


def cmd_create(args: argparse.Namespace) -> int:
    cfg = read_config(args.config, args.overrides)
    with _client(args) as c:
        res = c.call("create", name=cfg.name, kernel=cfg.kernel, memory=cfg.memory,
                     vcpus=cfg.vcpus, cmdline=cfg.cmdline, on_poweroff=cfg.on_poweroff,
                     on_reboot=cfg.on_reboot, on_crash=cfg.on_crash, paused=args.paused,
                     console=args.console, disks=list(cfg.disks))
        if args.console:
            return _console_loop(c, int(res["domid"]))
    return 0


# --- xenpy list ----------------------------------------------------------------------------

def format_state(row: Mapping[str, Any]) -> str:
    """xl's six State letters: r b p s, the shutdown reason's letter, d."""
    reason = row.get("shutdown_reason")
    letter = "-"
    if row.get("shutdown") and isinstance(reason, int):
        letter = SHUTDOWN_REASON_LETTERS[reason] if 0 <= reason < len(SHUTDOWN_REASON_LETTERS) \
            else "?"
    return "".join((
        "r" if row.get("running") else "-",
        "b" if row.get("blocked") else "-",
        "p" if row.get("paused") else "-",
        "s" if row.get("shutdown") else "-",
        letter,
        "d" if row.get("dying") else "-",
    ))


def format_list_row(row: Mapping[str, Any]) -> str:
    """printf("%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f") of xl list."""
    return (f"{row['name']:<40} {row['domid']:>5} {row['mem_mib']:>5} {row['vcpus']:>5}     "
            f"{format_state(row)}  {float(row['cpu_time']):>8.1f}")


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = list(c.call("list")["domains"])
    if args.domains:
        picked = []
        for ident in args.domains:
            match = [r for r in rows if (str(r["domid"]) == ident if ident.isdigit()
                                         else r["name"] == ident)]
            if not match:
                raise ControlError(f"domain {ident!r}: no such domain")
            picked += match
        rows = picked
    print(LIST_HEADER)
    for row in rows:
        print(format_list_row(row))
    return 0


# --- simple verbs --------------------------------------------------------------------------

def cmd_simple(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.call(args.op, dom=args.dom)
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    if args.timeout < 0:
        raise ConfigError(f"--timeout: expected seconds >= 0, found {args.timeout}")
    with _client(args, timeout=None if args.wait else 60.0) as c:
        c.call("shutdown", dom=args.dom, force=args.force, timeout=args.timeout, wait=args.wait)
    return 0


# --- block devices -------------------------------------------------------------------------

def cmd_block_attach(args: argparse.Namespace) -> int:
    spec = absolute_spec(" ".join(args.spec), os.getcwd())
    with _client(args) as c:
        c.call("block_attach", dom=args.dom, spec=spec)
    return 0


def cmd_block_detach(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.call("block_detach", dom=args.dom, vdev=args.vdev)
    return 0


BLOCK_LIST_HEADER = "Vdev  BE  handle state evt-ch ring-ref BE-path"


def cmd_block_list(args: argparse.Namespace) -> int:
    """xl block-list's columns (handle is the frontend's state here, as xl shows it)."""
    with _client(args) as c:
        res = c.call("block_list", dom=args.dom)
    print(BLOCK_LIST_HEADER)
    for row in res["disks"]:
        print(f"{row['vdev']:<5} {row['be']:<3} {row['frontend_state']:<6} {row['state']:<5} "
              f"{row['evtchn']:<6} {row['ring_ref']:<8} {row['be_path']}")
    return 0


# --- xenpy console -------------------------------------------------------------------------

def cmd_console(args: argparse.Namespace) -> int:
    c = _client(args)
    try:
        res = c.call("console", dom=args.dom)
        out = sys.stdout.buffer
        out.write(decode_bytes(res["log"], "console log"))
        out.flush()
        if not res.get("live"):
            return 0
        return _console_loop(c, int(res["domid"]))
    finally:
        c.close()


def cmd_gdb(args: argparse.Namespace) -> int:
    c = _client(args)
    try:
        res = c.call("gdb", dom=args.dom, port=args.port)
    finally:
        c.close()
    print(f"xenpy: gdb stub for {res['name']} (d{res['domid']}): "
          f"target remote {res['address']}:{res['port']}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """Stream the trace until the domain goes away (0) or Ctrl-C (130)."""
    c = _client(args)
    try:
        c.call("trace", dom=args.dom, names=args.names, json=args.json)
        c.sock.settimeout(None)
        while True:
            while c.events:
                ev = c.events.popleft()
                if ev.kind == "trace":
                    print(ev.data.get("line", ""), flush=True)
                elif ev.kind == "gone":
                    return 0
            data = c.sock.recv(65536)
            c.proto.receive_data(data)
            while True:
                msg = c.proto.next_event()
                if msg is None:
                    raise HostNotRunning(f"the xenpy host at {c.path} went away")
                if msg is NEED_DATA:
                    break
                if isinstance(msg, Event):
                    c.events.append(msg)
    finally:
        c.close()


@contextlib.contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    """xenconsole's raw mode (keys go to the guest as typed), keeping output newlines."""
    if fd is None or not os.isatty(fd):
        yield
        return
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[1] |= termios.OPOST | termios.ONLCR
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _console_loop(c: ControlClient, domid: int, stdin: BinaryIO | None = None) -> int:
    """Copy console events to stdout and stdin to the guest until the domain is gone
    (0), Ctrl-] (0) or the host goes away (HostNotRunning)."""
    out = sys.stdout.buffer
    try:
        in_fd: int | None = (stdin or sys.stdin).fileno()
    except (ValueError, OSError, AttributeError):
        in_fd = None
    c.sock.settimeout(None)

    def handle(ev: Event) -> bool:
        if ev.kind == "console" and ev.data.get("domid") == domid:
            out.write(decode_bytes(ev.data.get("data"), "console data"))
            out.flush()
        elif ev.kind == "gone" and ev.data.get("domid") == domid:
            return True
        return False

    while c.events:
        if handle(c.events.popleft()):
            return 0
    with _raw_terminal(in_fd):
        while True:
            watch = [c.sock] + ([in_fd] if in_fd is not None else [])
            ready, _, _ = select.select(watch, [], [])
            if c.sock in ready:
                data = c.sock.recv(65536)
                c.proto.receive_data(data)
                while True:
                    msg = c.proto.next_event()
                    if msg is None:
                        raise HostNotRunning(f"the xenpy host at {c.path} went away")
                    if msg is NEED_DATA:
                        break
                    if isinstance(msg, Event) and handle(msg):
                        return 0
                    if isinstance(msg, ErrorReply):
                        print(f"xenpy: console input: {msg.message}", file=sys.stderr)
            if in_fd is not None and in_fd in ready:
                keys = os.read(in_fd, 4096)
                if not keys:
                    in_fd = None                   # input ended: keep streaming output
                    continue
                cut = keys.find(CONSOLE_ESCAPE)
                if cut >= 0:
                    keys = keys[:cut]
                if keys:
                    c.send_request("console_input", domid=domid, data=encode_bytes(keys))
                if cut >= 0:
                    return 0
