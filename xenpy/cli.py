"""The `xenpy` command, in the spirit of `xl`.

Errors a user can fix (a bad file, a bad option) print one line naming the problem
and exit non-zero; only a bug in xenpy prints a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import ROOT
from .abi.sched import Shutdown
from .errors import XenpyError

EXIT_OK, EXIT_CRASH, EXIT_TIMEOUT, EXIT_ERROR = 0, 1, 2, 3
BUNDLED = ROOT / "guests" / "build"


def resolve_kernel(name: str) -> Path:
    """A path, or the name of a bundled guest (`hello` → guests/build/hello-x86_32.elf)."""
    p = Path(name)
    if p.exists():
        return p
    for cand in (BUNDLED / f"{name}-x86_32.elf", BUNDLED / f"{name}.elf"):
        if cand.exists():
            return cand
    known = sorted({f.name.rsplit("-", 1)[0] for f in BUNDLED.glob("*.elf")}) if BUNDLED.exists() else []
    hint = f" (bundled guests: {', '.join(known)})" if known else \
        " (no bundled guests built: run `make -C guests`)"
    raise XenpyError(f"{name}: no such kernel file or bundled guest{hint}")


def cmd_run(args: argparse.Namespace) -> int:
    from .toolstack.domain import boot_domain, DomainSpec
    from .toolstack.xlcfg import load_xl_config
    from .hv.host import Host

    target = Path(args.kernel)
    if target.suffix == ".cfg" or (target.exists() and _looks_like_cfg(target)):
        cfg = load_xl_config(target)
        spec = DomainSpec(name=cfg.name, kernel=Path(cfg.kernel), memory_mib=cfg.memory,
                          vcpus=cfg.vcpus, cmdline=cfg.cmdline)
        disks = cfg.disks
    else:
        kernel = resolve_kernel(args.kernel)
        spec = DomainSpec(name=kernel.stem, kernel=kernel, memory_mib=32, cmdline="")
        disks = ()
    if args.memory is not None:
        spec.memory_mib = args.memory
    if args.cmdline is not None:
        spec.cmdline = args.cmdline
    if args.vcpus is not None:
        spec.vcpus = args.vcpus
    out = sys.stdout.buffer
    host = Host(memory_mib=max(args.host_memory, spec.memory_mib + 64),
                deterministic=args.deterministic)
    debug = None
    try:
        d = boot_domain(host, spec)
        if disks:
            from .toolstack.disk import attach_disks
            attach_disks(host, d.domid, disks)
        d.console_sink = lambda data: (out.write(data), out.flush())
        if not args.deterministic:
            _forward_stdin(host, d)
        if args.gdb is not None or args.trace is not None:
            from .debug.session import DebugSession
            debug = DebugSession.start(host, d, gdb_port=args.gdb, trace=args.trace,
                                       json_lines=args.json)
        finished = host.run([d], timeout=args.timeout)
        if not finished:
            print(f"xenpy: timeout: domain {d.name} still running after {args.timeout} s",
                  file=sys.stderr)
            return EXIT_TIMEOUT
        if d.shutdown_reason == Shutdown.poweroff:
            return EXIT_OK
        why = d.crash_message or (d.shutdown_reason.name if d.shutdown_reason else "?")
        print(f"xenpy: domain {d.name} {d.shutdown_reason.name}: {why}", file=sys.stderr)
        return EXIT_CRASH
    finally:
        if debug is not None:
            debug.close()
        host.close()


def _forward_stdin(host, d) -> None:
    """Keyboard (or piped) input becomes the guest's console input, as `xl console`."""
    import threading

    def pump() -> None:
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
        if fd < 0:
            return
        while not d.finished:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            con = host.consoles.consoles.get(d.domid)
            if con is None:
                return
            con.feed(data)
            host.wake()

    threading.Thread(target=pump, name="xenpy-stdin", daemon=True).start()


def _looks_like_cfg(p: Path) -> bool:
    try:
        return not p.read_bytes()[:4] == b"\x7fELF"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xenpy", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="boot a guest and stream its console")
    run.add_argument("kernel", help="kernel ELF, xl.cfg file, or bundled guest name")
    run.add_argument("--memory", type=int, help="guest memory in MiB")
    run.add_argument("--cmdline", help="guest command line")
    run.add_argument("--vcpus", type=int, help="vCPUs (the guest brings up all but vCPU 0)")
    run.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
    run.add_argument("--host-memory", type=int, default=128, help="host memory in MiB")
    run.add_argument("--deterministic", action="store_true",
                     help="virtual time and instruction-budget slices: identical runs")
    run.add_argument("--gdb", type=int, metavar="PORT",
                     help="wait for gdb on 127.0.0.1:PORT (0: a free port) before the first instruction")
    run.add_argument("--trace", metavar="NAMES",
                     help="--trace[=NAMES]: print each hypercall to stderr, as strace "
                          "(NAMES: comma-separated; none: all)")
    run.add_argument("--json", action="store_true", help="with --trace: one JSON object per line")
    run.set_defaults(func=cmd_run)
    from .toolstack.cli_host import register as register_host_commands
    register_host_commands(sub)
    # A bare --trace means "all": written as --trace= so it never swallows the kernel argument.
    argv = ["--trace=" if a == "--trace" else a for a in (sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose,
                        format="xenpy: %(name)s: %(message)s")
    try:
        return args.func(args)
    except XenpyError as e:
        print(f"xenpy: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
