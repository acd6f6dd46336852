"""`xenpy host`: a Host that stays up, with a control socket for the xl-like commands.

Two threads share the work, and the split is the invariant everything rests on:

* the **scheduler thread** (the caller of ``serve_forever``, normally the main thread)
  runs ``Host.run``.  It alone touches domains, guest memory and Unicorn.  Control
  requests are executed in ``Host.run``'s ``until()`` callback, which runs between two
  slices, so a command never races a running vCPU.  Shutdown actions (xl's
  on_poweroff / on_reboot / on_crash) run there too, after the slice in which the guest
  shut down has ended — never from inside the guest's hypercall.
* the **control thread** owns the sockets: it accepts clients, parses frames
  (``control.ControlConnection``) and queues requests for the scheduler thread, and it
  writes whatever the scheduler thread queued for each client (replies, console
  output).  Output buffers are shared under one lock; a client that lets its buffer grow
  past ``MAX_CLIENT_BACKLOG`` (a console nobody reads) is disconnected rather than
  letting the host's memory grow.

xenstored serves tools from its own socket thread (``Host.serve_xenstore``); the daemon
is thread-safe, so `xenstore-*` work against the host while guests run.
"""
from __future__ import annotations

import logging
import os
import queue
import selectors
import socket
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..abi.sched import Shutdown
from ..errors import ConfigError, ProtocolError, XenpyError
from .control import (ControlConnection, ControlError, ErrorReply, Event, Reply, Request,
                      decode_bytes, encode_bytes)
from .disk import attach_disks, blkback_for, detach_disk, list_disks, parse_disk_spec
from .domain import DomainSpec, boot_domain
from .xsdomain import domain_path

if TYPE_CHECKING:
    from ..hv.domain import Domain
    from ..hv.host import Host

log = logging.getLogger("xenpy.hostd")

#: Bytes of unsent output a client may accumulate before it is disconnected.
MAX_CLIENT_BACKLOG = 16 << 20
#: The on_* actions the host carries out (xl's vocabulary minus soft-reset).
SUPPORTED_ACTIONS = frozenset({"destroy", "preserve", "restart", "rename-restart",
                               "coredump-destroy", "coredump-restart"})
_RECV_SIZE = 65536
#: Console bytes replayed to a client that attaches (xenconsoled's default buffer limit).
CONSOLE_REPLAY = 1 << 20


@dataclass(frozen=True)
class DomainPlan:
    """What `create` was asked for: enough to build the domain again on restart."""
    spec: DomainSpec
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    disks: tuple[str, ...] = ()           # xl disk specs, attached at every (re)boot

    def action(self, reason: Shutdown | None) -> str:
        """xl's choice for a shutdown reason (watchdog as crash; suspend keeps the domain)."""
        if reason == Shutdown.poweroff:
            return self.on_poweroff
        if reason == Shutdown.reboot:
            return self.on_reboot
        if reason in (Shutdown.crash, Shutdown.watchdog):
            return self.on_crash
        return "preserve"


    def xl_config(self) -> dict:
        """libxl_domain_config's JSON (the subset xenpy uses), which xl saves in the
        header of a save file so that `xl restore` brings the domain back with it."""
        spec = self.spec
        disks = []
        for text in self.disks:
            disk = parse_disk_spec(text)
            disks.append({"pdev_path": disk.target, "vdev": disk.vdev, "format": disk.format,
                          "readwrite": 0 if disk.readonly else 1, "is_cdrom": int(disk.cdrom),
                          "xenpy_spec": text})
        return {"c_info": {"type": "pv", "name": spec.name},
                "b_info": {"max_vcpus": spec.vcpus, "max_memkb": spec.memory_mib * 1024,
                           "target_memkb": spec.memory_mib * 1024,
                           "type.pv": {"kernel": str(spec.kernel), "cmdline": spec.cmdline}},
                "disks": disks, "on_poweroff": self.on_poweroff, "on_reboot": self.on_reboot,
                "on_crash": self.on_crash}

    @classmethod
    def from_xl_config(cls, cfg: object, name: str) -> "DomainPlan | None":
        """The plan a restored domain restarts with, or None when its config (from the
        save file) names no kernel this host has."""
        try:
            b = cfg["b_info"]                                     # type: ignore[index]
            kernel = Path(b["type.pv"]["kernel"])
            plan = cls(DomainSpec(name, kernel, int(b["target_memkb"]) // 1024,
                                  int(b["max_vcpus"]), str(b["type.pv"].get("cmdline", ""))),
                       *(str(cfg.get(k, d)) for k, d in (("on_poweroff", "destroy"),  # type: ignore[union-attr]
                                                          ("on_reboot", "restart"),
                                                          ("on_crash", "destroy"))),
                       disks=tuple(str(x["xenpy_spec"]) for x in cfg.get("disks", [])))  # type: ignore[union-attr]
            for text in plan.disks:
                parse_disk_spec(text)
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError):
            return None
        return plan if kernel.is_file() else None


@dataclass(eq=False)
class _Client:
    """One control connection (the control thread's; ``out`` is shared under a lock)."""
    sock: socket.socket
    proto: ControlConnection = field(default_factory=ControlConnection)
    out: bytearray = field(default_factory=bytearray)
    closed: bool = False


class ControlServer:
    """The control socket: a selectors loop in its own thread.

    Requests go to ``submit(client, request)``; ``queue_message`` (any thread) queues
    output; ``disconnected(client)`` is called when a client goes away.
    """

    def __init__(self, path: str, submit: Callable[[_Client, Request], None],
                 disconnected: Callable[[_Client], None]) -> None:
        self.path = path
        self._submit = submit
        self._disconnected = disconnected
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, _Client] = {}
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
        except OSError as e:
            listener.close()
            raise ConfigError(f"control socket {self.path}: cannot bind: {e.strerror}") from None
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="xenpy-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush what can be flushed without blocking, close everything, remove the socket."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join()
        self._thread = None
        for client in list(self._clients.values()):
            self._write(client)
            self._drop(client)
        self._sel.close()
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def queue_message(self, client: _Client, msg: Reply | ErrorReply | Event) -> None:
        if client.closed:
            return
        data = client.proto.send(msg)
        with self._lock:
            if len(client.out) + len(data) > MAX_CLIENT_BACKLOG:
                log.warning("control: a client stopped reading (%d bytes queued); "
                            "disconnecting it", len(client.out))
                client.closed = True
            else:
                client.out += data
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass                      # a wakeup is already pending, or we are stopping

    def _run(self) -> None:
        while not self._stopping.is_set():
            for key, mask in self._sel.select():
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                elif key.data.sock in self._clients:
                    if mask & selectors.EVENT_READ:
                        try:
                            self._read(key.data)
                        except Exception:     # one client's failure is that client's only
                            log.exception("control: dropping a client after an error")
                            self._drop(key.data)
            for client in list(self._clients.values()):
                self._write(client)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as e:          # out of descriptors: keep serving those we have
            log.warning("control: cannot accept a client: %s", e)
            time.sleep(0.05)          # the listener stays readable: do not spin on it
            return
        sock.setblocking(False)
        client = _Client(sock)
        self._clients[sock] = client
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            client.proto.receive_data(data)
            while True:
                msg = client.proto.next_event()
                if msg is None:                       # clean end of stream
                    self._drop(client)
                    return
                if not isinstance(msg, Request):
                    if isinstance(msg, (Reply, ErrorReply, Event)):
                        raise ProtocolError(f"a client sent a {type(msg).__name__}; "
                                            f"clients send requests only")
                    return                            # NEED_DATA
                self._submit(client, msg)
        except ProtocolError as e:
            log.warning("control: dropping a client: %s", e)
            self._drop(client)

    def _write(self, client: _Client) -> None:
        if client.closed:                     # overflowed (queue_message): drop, unsent output too
            self._drop(client)
            return
        with self._lock:
            pending = bytes(client.out)
        sent = 0
        if pending:
            try:
                sent = client.sock.send(pending)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop(client)
                return
            with self._lock:
                del client.out[:sent]
        if client.sock in self._clients:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
            self._sel.modify(client.sock, events, client)

    def _drop(self, client: _Client) -> None:
        if self._clients.pop(client.sock, None) is None:
            return
        client.closed = True
        self._sel.unregister(client.sock)
        client.sock.close()
        self._disconnected(client)


def _arg(args: Mapping[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    value = args.get(key, default)
    if value is ...:
        raise ControlError(f"request: missing argument {key!r}")
    if value is default and default is not ...:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ControlError(f"request: argument {key!r} should be {kind.__name__}, "
                           f"found {type(value).__name__}")
    return value


class HostDaemon:
    """A Host, its xenstored socket and a control socket, run until ``stop()``."""

    def __init__(self, host: "Host", control_path: str, xenstored_path: str) -> None:
        self.host = host
        self.control_path = control_path
        self.xenstored_path = xenstored_path
        self.server = ControlServer(control_path, self._submit, self._disconnected)
        self._inbox: queue.SimpleQueue[tuple[_Client, Request | None]] = queue.SimpleQueue()
        self._stopping = False
        self._plans: dict[int, DomainPlan] = {}
        self._consoles: dict[int, set[_Client]] = {}
        self._traces: dict[_Client, tuple[int, Any]] = {}    # client -> (domid, HypercallTrace)
        self._gdb: dict[int, tuple[Any, Any]] = {}           # domid -> (DomainTarget, GdbServer)
        self._waiters: dict[int, list[tuple[_Client, int]]] = {}
        self._shutdowns: deque[int] = deque()
        self._force: dict[int, float] = {}            # domid -> monotonic destroy deadline
        self._ops: dict[str, Callable[[_Client, Request], Mapping[str, Any] | None]] = {
            "info": self._op_info,
            "list": self._op_list,
            "create": self._op_create,
            "destroy": self._op_destroy,
            "pause": self._op_pause,
            "unpause": self._op_unpause,
            "shutdown": self._op_shutdown,
            "console": self._op_console,
            "console_input": self._op_console_input,
            "trace": self._op_trace,
            "gdb": self._op_gdb,
            "block_attach": self._op_block_attach,
            "block_detach": self._op_block_detach,
            "block_list": self._op_block_list,
        }
        from .migrate import HostdMigration           # save / restore / migrate (issue 6)
        self.migration = HostdMigration(self)
        self._ops.update(self.migration.ops())

    # --- lifecycle (scheduler thread) --------------------------------------------------------
    def start(self) -> None:
        """Claim both socket paths (refusing a live host's), then start serving."""
        for what, path in (("control", self.control_path), ("xenstored", self.xenstored_path)):
            _claim_socket_path(what, path)
        try:
            self.host.serve_xenstore(self.xenstored_path)
            xs = self.host.xenstored          # what xencommons writes for dom0
            xs.write(f"{domain_path(0)}/name", "Domain-0")
            xs.write(f"{domain_path(0)}/domid", "0")
            self.server.start()
        except XenpyError:
            self.host.close()
            raise

    def serve_forever(self) -> None:
        """Run the host until ``stop()``; the calling thread becomes the scheduler thread."""
        self.migration.attach()
        self.host.run(domains=[], until=self._service)

    def stop(self) -> None:
        """Ask ``serve_forever`` to return at its next iteration (at most an idle wait,
        50 ms, later).  Only a flag is set: safe from a signal handler, which may run
        while the main thread holds the Host's wakeup lock."""
        self._stopping = True

    def close(self) -> None:
        """Destroy every domain and remove both sockets."""
        for domid in list(self._gdb):
            self._stop_gdb(domid)
        self.migration.close()
        try:
            for d in list(self.host.domains.values()):
                self._guarded(f"destroying d{d.domid} at exit", self._destroy, d)
            self.host.close()
        finally:
            self.server.stop()

    def _wake_host(self) -> None:
        self.host.wake()

    # --- control thread entry points -----------------------------------------------------------
    def _submit(self, client: _Client, req: Request) -> None:
        self._inbox.put((client, req))
        self._wake_host()

    def _disconnected(self, client: _Client) -> None:
        self._inbox.put((client, None))
        self._wake_host()

    # --- the scheduler thread's service loop ---------------------------------------------------
    def _service(self) -> bool:
        """Host.run's until(): requests, shutdown actions and forced destroys."""
        self.migration.poll()
        if self._stopping:
            return True
        while not self._inbox.empty():
            client, req = self._inbox.get_nowait()
            if req is None:
                self._forget_client(client)
            else:
                self._execute(client, req)
        while self._shutdowns:
            domid = self._shutdowns.popleft()
            self._guarded(f"the shutdown action of d{domid}", self._domain_shut_down, domid)
        if self._force:
            now = time.monotonic()
            for domid, deadline in list(self._force.items()):
                d = self.host.domains.get(domid)
                if d is None or d.finished:
                    del self._force[domid]
                elif now >= deadline:
                    del self._force[domid]
                    log.info("d%d ignored the shutdown request: destroying it", domid)
                    self._guarded(f"destroying d{domid}", self._destroy, d)
        return False

    @staticmethod
    def _guarded(what: str, fn: Callable[..., None], *args: Any) -> None:
        """Run a host-side action; a bug in it is logged, and the host stays up."""
        try:
            fn(*args)
        except Exception:                    # noqa: BLE001 - the host must outlive one bad domain
            log.exception("%s failed", what)

    def _execute(self, client: _Client, req: Request) -> None:
        op = self._ops.get(req.op)
        try:
            if op is None:
                raise ControlError(f"request: unknown operation {req.op!r} "
                                   f"(known: {', '.join(sorted(self._ops))})")
            result = op(client, req)
        except XenpyError as e:
            self.server.queue_message(client, ErrorReply(req.id, str(e)))
            return
        except ValueError as e:
            self.server.queue_message(client, ErrorReply(req.id, str(e)))
            return
        except Exception as e:               # noqa: BLE001 - a bug must not take the host down
            log.exception("control: %s failed", req.op)
            self.server.queue_message(client, ErrorReply(req.id, f"internal error in {req.op}: {e!r}"))
            return
        if result is not None:                # None: the reply is deferred (shutdown --wait)
            try:
                self.server.queue_message(client, Reply(req.id, result))
            except ProtocolError as e:
                self.server.queue_message(client, ErrorReply(req.id, f"{req.op}: {e}"))

    def _forget_client(self, client: _Client) -> None:
        for subs in self._consoles.values():
            subs.discard(client)
        self._stop_trace(client)
        for waiters in self._waiters.values():
            waiters[:] = [w for w in waiters if w[0] is not client]

    # --- domains -----------------------------------------------------------------------------
    def find_domain(self, ident: str) -> "Domain":
        """xl's domain qualifier: all digits is an id, anything else a name."""
        if ident.isdigit():
            d = self.host.domains.get(int(ident))
            if d is None:
                raise ControlError(f"domain {ident}: no domain with that id")
            return d
        for d in self.host.domains.values():
            if d.name == ident:
                return d
        raise ControlError(f"domain {ident!r}: no domain with that name")

    def _boot(self, plan: DomainPlan) -> "Domain":
        d = boot_domain(self.host, plan.spec)
        try:
            attach_disks(self.host, d.domid, plan.disks)
        except XenpyError:
            self.host.destroy_domain(d)
            raise
        self.adopt(d, plan)
        log.info("d%d %s created", d.domid, d.name)
        return d

    def adopt(self, d: "Domain", plan: DomainPlan | None = None) -> None:
        """Serve ``d``: stream its console, carry out its shutdown actions, and restart
        it with ``plan`` — for a restored or migrated-in domain, the config its save
        stream carried (as `xl restore` does), when this host has its kernel."""
        d.console_sink = lambda data, d=d: self._console_output(d, data)
        d.on_shutdown.append(self._on_shutdown)
        plan = plan or DomainPlan.from_xl_config(d.xl_config, d.name)
        if plan is not None:
            self._plans[d.domid] = plan
            d.xl_config = plan.xl_config()
        if d.finished:
            self._on_shutdown(d)

    def forget(self, d: "Domain", reason: str) -> None:
        """``d`` was destroyed by someone else (saved, migrated away): end its consoles
        and waiters and drop its plan."""
        self._domain_gone(d.domid, reason)
        self._plans.pop(d.domid, None)
        self._force.pop(d.domid, None)
        self._consoles.pop(d.domid, None)

    def _on_shutdown(self, d: "Domain") -> None:
        # Called inside the guest's hypercall: only note it, act between slices.
        self._shutdowns.append(d.domid)
        self._wake_host()

    def _domain_shut_down(self, domid: int) -> None:
        d = self.host.domains.get(domid)
        if d is None or d.dying:
            return
        plan = self._plans.get(domid, DomainPlan(DomainSpec(d.name, Path())))
        action = plan.action(d.shutdown_reason)
        reason = d.shutdown_reason.name if d.shutdown_reason is not None else "?"
        log.info("d%d %s shut down (%s): %s", domid, d.name, reason, action)
        self._domain_gone(domid, reason)
        if action == "preserve":
            return
        if action == "rename-restart":
            self._rename(d, f"{d.name}-{domid}")
        else:
            self._destroy(d)
        if action in ("restart", "rename-restart", "coredump-restart"):
            try:
                self._boot(plan)
            except XenpyError as e:
                log.error("restarting %s failed: %s", plan.spec.name, e)

    def _rename(self, d: "Domain", name: str) -> None:
        d.name = name
        self.host.xenstored.write(f"{domain_path(d.domid)}/name", name)

    def _destroy(self, d: "Domain") -> None:
        self.forget(d, "destroyed")
        self.host.destroy_domain(d)
        log.info("d%d destroyed", d.domid)

    def _domain_gone(self, domid: int, reason: str) -> None:
        """The domain will not run again: end its consoles and traces, answer its waiters."""
        for client in self._consoles.pop(domid, set()):
            self.server.queue_message(client, Event("gone", {"domid": domid, "reason": reason}))
        self._stop_gdb(domid)
        for client, (tdomid, _) in list(self._traces.items()):
            if tdomid == domid:
                self._stop_trace(client)
                self.server.queue_message(client, Event("gone", {"domid": domid,
                                                                 "reason": reason}))
        for client, rid in self._waiters.pop(domid, []):
            self.server.queue_message(client, Reply(rid, {"domid": domid, "reason": reason}))

    def _console_output(self, d: "Domain", data: bytes) -> None:
        subs = self._consoles.get(d.domid)
        if subs:
            ev = Event("console", {"domid": d.domid, "data": encode_bytes(data)})
            for client in list(subs):
                if client.closed:
                    subs.discard(client)
                else:
                    self.server.queue_message(client, ev)

    # --- operations (scheduler thread) ---------------------------------------------------------
    def _op_info(self, client: _Client, req: Request) -> Mapping[str, Any]:
        return {"control": self.control_path, "xenstored": self.xenstored_path,
                "pid": os.getpid(), "deterministic": self.host.clock.deterministic,
                "memory_mib": self.host.mem.nr_frames >> 8}

    def _op_list(self, client: _Client, req: Request) -> Mapping[str, Any]:
        mem = self.host.mem
        rows = [{"name": "Domain-0", "domid": 0, "mem_mib": mem.free_frames >> 8, "vcpus": 1,
                 "running": True, "blocked": False, "paused": False, "shutdown": False,
                 "shutdown_reason": None, "dying": False, "cpu_time": time.process_time()}]
        for d in sorted(self.host.domains.values(), key=lambda x: x.domid):
            rows.append(domain_row(d))
        return {"domains": rows}

    def _op_create(self, client: _Client, req: Request) -> Mapping[str, Any]:
        a = req.args
        name = _arg(a, "name", str)
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            act = _arg(a, key, str, "destroy" if key != "on_reboot" else "restart")
            if act not in SUPPORTED_ACTIONS:
                raise ConfigError(f"{key}: expected one of {', '.join(sorted(SUPPORTED_ACTIONS))}, "
                                  f"found {act!r}")
        if any(d.name == name for d in self.host.domains.values()):
            other = next(d.domid for d in self.host.domains.values() if d.name == name)
            raise ControlError(f"name {name!r}: already used by domain {other}")
        spec = DomainSpec(name=name, kernel=Path(_arg(a, "kernel", str)),
                          memory_mib=_arg(a, "memory", int, 32), vcpus=_arg(a, "vcpus", int, 1),
                          cmdline=_arg(a, "cmdline", str, ""))
        disks = _arg(a, "disks", list, [])
        if not all(isinstance(x, str) for x in disks):
            raise ControlError("disks: expected a list of xl disk spec strings")
        plan = DomainPlan(spec, _arg(a, "on_poweroff", str, "destroy"),
                          _arg(a, "on_reboot", str, "restart"), _arg(a, "on_crash", str, "destroy"),
                          tuple(disks))
        d = self._boot(plan)
        d.paused = _arg(a, "paused", bool, False)
        if _arg(a, "console", bool, False):
            self._consoles.setdefault(d.domid, set()).add(client)
        return {"domid": d.domid, "name": d.name}

    def _op_destroy(self, client: _Client, req: Request) -> Mapping[str, Any]:
        d = self.find_domain(_arg(req.args, "dom", str))
        domid = d.domid
        self._destroy(d)
        return {"domid": domid}

    def _op_pause(self, client: _Client, req: Request) -> Mapping[str, Any]:
        d = self._live(_arg(req.args, "dom", str), "paused")
        d.paused = True
        return {"domid": d.domid}

    def _op_unpause(self, client: _Client, req: Request) -> Mapping[str, Any]:
        d = self._live(_arg(req.args, "dom", str), "unpaused")
        d.paused = False
        return {"domid": d.domid}

    def _op_block_attach(self, client: _Client, req: Request) -> Mapping[str, Any]:
        """xl block-attach: hot-plug a disk; blkback and the frontend do the rest."""
        d = self._live(_arg(req.args, "dom", str), "given a disk")
        spec = _arg(req.args, "spec", str)
        [disk] = attach_disks(self.host, d.domid, [spec])
        plan = self._plans.get(d.domid)
        if plan is not None:
            self._plans[d.domid] = replace(plan, disks=plan.disks + (spec,))
            d.xl_config = self._plans[d.domid].xl_config()
        return {"domid": d.domid, "vdev": disk.vdev, "devid": disk.devid}

    def _op_block_detach(self, client: _Client, req: Request) -> Mapping[str, Any]:
        """xl block-detach: online=0, state=Closing; blkback closes with the frontend."""
        d = self.find_domain(_arg(req.args, "dom", str))
        vdev = _arg(req.args, "vdev", str)
        devid = detach_disk(self.host.xenstored, d.domid, vdev)
        plan = self._plans.get(d.domid)
        if plan is not None:
            keep = tuple(x for x in plan.disks if parse_disk_spec(x).devid != devid)
            self._plans[d.domid] = replace(plan, disks=keep)
            d.xl_config = self._plans[d.domid].xl_config()
        blkback_for(self.host).poll()
        return {"domid": d.domid, "devid": devid}

    def _op_block_list(self, client: _Client, req: Request) -> Mapping[str, Any]:
        d = self.find_domain(_arg(req.args, "dom", str))
        return {"domid": d.domid, "disks": list_disks(self.host, d.domid)}

    def _live(self, ident: str, verb: str) -> "Domain":
        d = self.find_domain(ident)
        if d.finished:
            raise ControlError(f"domain {d.name} ({d.domid}) has shut down and cannot be {verb}")
        return d

    def _op_shutdown(self, client: _Client, req: Request) -> Mapping[str, Any] | None:
        """xl shutdown for a PV guest: ask through control/shutdown; optionally destroy a
        guest that has not acted within ``timeout`` seconds, and reply once it is gone."""
        d = self._live(_arg(req.args, "dom", str), "shut down")
        reason = _arg(req.args, "reason", str, "poweroff")
        if reason not in ("poweroff", "reboot"):
            raise ControlError(f"reason: expected poweroff or reboot, found {reason!r}")
        self.host.xenstored.write(f"{domain_path(d.domid)}/control/shutdown", reason)
        if _arg(req.args, "force", bool, False):
            timeout = _arg(req.args, "timeout", float, 10.0)
            self._force[d.domid] = time.monotonic() + max(0.0, timeout)
        if _arg(req.args, "wait", bool, False):
            self._waiters.setdefault(d.domid, []).append((client, req.id))
            return None
        return {"domid": d.domid}

    def _op_console(self, client: _Client, req: Request) -> Mapping[str, Any]:
        """Attach: everything printed so far, then live output as events (atomic here,
        because output is only produced by this thread)."""
        d = self.find_domain(_arg(req.args, "dom", str))
        live = not d.finished
        if live:
            self._consoles.setdefault(d.domid, set()).add(client)
        return {"domid": d.domid, "name": d.name,
                "log": encode_bytes(bytes(d.console_log[-CONSOLE_REPLAY:])), "live": live}

    def _op_console_input(self, client: _Client, req: Request) -> Mapping[str, Any]:
        domid = _arg(req.args, "domid", int)
        data = decode_bytes(req.args.get("data"), "console_input data")
        d = self.host.domains.get(domid)
        con = self.host.consoles.consoles.get(domid)
        if d is None or con is None or d.finished:
            raise ControlError(f"domain {domid}: no running domain with a console")
        con.feed(data)
        return {"queued": len(data)}


    def _op_trace(self, client: _Client, req: Request) -> Mapping[str, Any]:
        """`xenpy trace DOM`: one event per hypercall of the domain, until it goes away
        or the client disconnects."""
        from ..debug.trace import HypercallTrace, parse_names
        d = self._live(_arg(req.args, "dom", str), "trace")
        names = parse_names(req.args.get("names")) if req.args.get("names") else None
        server = self.server
        domid = d.domid

        class _Lines:
            """A text stream whose lines become trace events for the client."""

            def write(self, text: str) -> None:
                for line in text.splitlines():
                    server.queue_message(client, Event("trace", {"domid": domid, "line": line}))

            def flush(self) -> None:
                pass

        self._stop_trace(client)
        tracer = HypercallTrace(_Lines(), names=names, domids=[domid],
                                json_lines=bool(req.args.get("json")))
        tracer.attach(self.host)
        self._traces[client] = (domid, tracer)
        return {"domid": domid, "name": d.name}

    def _op_gdb(self, client: _Client, req: Request) -> Mapping[str, Any]:
        """`xenpy gdb DOM`: a gdb stub for a running domain; gdb's connection stops it
        (DomainTarget.attach), detaching lets it run on.  One stub per domain."""
        from ..debug.gdbstub.server import GdbServer
        from ..debug.target import DomainTarget
        d = self._live(_arg(req.args, "dom", str), "debug")
        if d.domid not in self._gdb:
            target = DomainTarget(d)
            server = GdbServer(target, "127.0.0.1", int(req.args.get("port") or 0),
                               on_connect=target.attach)
            server.start()
            self._gdb[d.domid] = (target, server)
        addr, port = self._gdb[d.domid][1].address
        return {"domid": d.domid, "name": d.name, "address": addr, "port": port}

    def _stop_gdb(self, domid: int) -> None:
        entry = self._gdb.pop(domid, None)
        if entry is not None:
            target, server = entry
            server.close()
            target.detach()

    def _stop_trace(self, client: _Client) -> None:
        entry = self._traces.pop(client, None)
        if entry is not None:
            entry[1].detach(self.host)


def domain_row(d: "Domain") -> dict[str, Any]:
    """One `xl list` row's data (libxl_dominfo): xl's flags are independent bits."""
    finished = d.finished
    blocked = bool(d.vcpus) and all(v.blocked for v in d.vcpus) and not finished
    return {"name": d.name, "domid": d.domid, "mem_mib": d.nr_pages >> 8,
            "vcpus": sum(1 for v in d.vcpus if v.online),
            "running": not (finished or d.paused or blocked),
            "blocked": blocked, "paused": d.paused,
            "shutdown": d.shutdown_reason is not None,
            "shutdown_reason": None if d.shutdown_reason is None else int(d.shutdown_reason),
            "dying": d.dying, "cpu_time": d.cpu_time}


def _claim_socket_path(what: str, path: str) -> None:
    """Refuse a path where a live server answers; remove a stale socket file."""
    if len(os.fsencode(path)) >= 108:
        raise ConfigError(f"{what} socket {path}: at most 107 bytes for a Unix socket path, "
                          f"found {len(os.fsencode(path))}")
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} socket {path}: cannot create {parent}: {e.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{what} socket {path}: exists and is not a socket; "
                          f"refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        try:
            os.unlink(path)                   # stale: nobody listens
        except OSError as e:
            raise ConfigError(f"{what} socket {path}: cannot remove the stale file: "
                              f"{e.strerror}") from None
        return
    finally:
        probe.close()
    raise ConfigError(f"{what} socket {path}: another server is listening there "
                      f"(is a xenpy host already running?)")
