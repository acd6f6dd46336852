"""The xenstored core: requests from connections, applied to the store, answered.

This is xenstored_core.c's process_message() and the request handlers of its
_core, _watch, _transaction and _domain files.  One table maps each message type to
its handler and flags (XS_FLAG_NOTID: the header's tx_id is ignored; XS_FLAG_PRIV:
dom0 only, else EACCES); an unknown type gets ENOSYS.  A handler returns the reply
payload or raises ``XsError``, which becomes an XS_ERROR reply with the errno name,
so nothing a client sends can raise out of the daemon.

Ordering follows Xen: watch events caused by a request are queued before its reply;
the initial event of a new watch right after the WATCH reply.

Threads: every entry point takes one re-entrant lock (``critical``).  Callbacks that
leave the daemon (a guest's event channel ``notify``, the socket server's wakeup) are
collected while locked and run after the lock is released, so a callback may call
back into the daemon without deadlock.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from xenpy.abi.io.xs_wire import XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XsdSockmsgType as T
from xenpy.abi.xen import DOMID_FIRST_RESERVED, DOMID_SELF
from xenpy.backends.xenstored.connection import Connection, Watch
from xenpy.backends.xenstored.protocol import NEED_DATA, Message, split_strings
from xenpy.backends.xenstored.ring import RingConnection
from xenpy.backends.xenstored.store import (
    DOM0_TOOLS, Change, NodePerm, Perm, Perms, Quotas, Store, Transaction, XsError,
    c_atoi, canonicalize, is_child, is_valid_nodename, perm_for,
)
from xenpy.errors import RemoteProtocolError

log = logging.getLogger("xenpy.xenstored")

_NOTID = 1  # XS_FLAG_NOTID
_PRIV = 2   # XS_FLAG_PRIV
_OK = b"OK\0"
_SPECIALS = ("@introduceDomain", "@releaseDomain")

#: map_ring(domid, mfn, port) -> (ring page, notify): how a wire XS_INTRODUCE reaches
#: the guest's page; given by the hypervisor, absent for a standalone daemon.
RingMapper = Callable[[int, int, int], tuple[memoryview, Callable[[], None]]]


def _latin1(raw: bytes) -> str:
    return raw.decode("latin-1")


def _onearg(msg: Message) -> str:
    """onearg(): the payload must be exactly one NUL-terminated string."""
    payload = msg.payload
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XsError("EINVAL", "Expected one NUL-terminated argument")
    return _latin1(payload[:-1])


def _perm_strings(perms: Perms) -> bytes:
    return b"".join(str(p).encode() + b"\0" for p in perms)


class Xenstored:
    """The XenStore daemon: one store, the tools' connections and each domain's ring."""

    def __init__(self, quotas: Quotas | None = None, map_ring: RingMapper | None = None) -> None:
        self.store = Store(quotas)
        self._map_ring = map_ring
        self._lock = threading.RLock()
        self._depth = 0
        self._dirty: set[Connection] = set()
        self._connections: list[Connection] = []
        self._domains: dict[int, RingConnection] = {}
        self._shutdown: set[int] = set()
        self._preload: dict[int, tuple[bytes, bytes]] = {}   # restored domains (see preload_io_state)
        none0: Perms = (NodePerm(0, Perm.NONE),)
        self._special_perms: dict[str, Perms] = {name: none0 for name in _SPECIALS}
        self._handlers: dict[int, tuple[Callable[[Connection, Message, Transaction | None], bytes], int]] = {
            T.XS_CONTROL: (self._do_control, _PRIV),
            T.XS_DIRECTORY: (self._do_directory, 0),
            T.XS_READ: (self._do_read, 0),
            T.XS_GET_PERMS: (self._do_get_perms, 0),
            T.XS_WATCH: (self._do_watch, _NOTID),
            T.XS_UNWATCH: (self._do_unwatch, _NOTID),
            T.XS_TRANSACTION_START: (self._do_transaction_start, 0),
            T.XS_TRANSACTION_END: (self._do_transaction_end, 0),
            T.XS_INTRODUCE: (self._do_introduce, _PRIV | _NOTID),
            T.XS_RELEASE: (self._do_release, _PRIV | _NOTID),
            T.XS_GET_DOMAIN_PATH: (self._do_get_domain_path, _NOTID),
            T.XS_WRITE: (self._do_write, 0),
            T.XS_MKDIR: (self._do_mkdir, 0),
            T.XS_RM: (self._do_rm, 0),
            T.XS_SET_PERMS: (self._do_set_perms, 0),
            T.XS_IS_DOMAIN_INTRODUCED: (self._do_is_domain_introduced, _PRIV | _NOTID),
            T.XS_RESUME: (self._do_resume, _PRIV | _NOTID),
            T.XS_SET_TARGET: (self._do_set_target, _PRIV | _NOTID),
            T.XS_RESET_WATCHES: (self._do_reset_watches, _NOTID),
            T.XS_DIRECTORY_PART: (self._do_directory_part, 0),
        }
        self._after_reply: list[tuple[Connection, bytes, bytes]] = []

    # -- locking and output ------------------------------------------------------------

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """Hold the daemon lock; on the outermost exit push output to transports and
        run their callbacks once the lock is released."""
        callbacks: list[Callable[[], None]] = []
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    dirty, self._dirty = self._dirty, set()
                    for conn in dirty:
                        cb = conn.flush()
                        if cb is not None:
                            callbacks.append(cb)
        for cb in callbacks:
            cb()

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.add(conn)

    # -- connections -----------------------------------------------------------------

    def tool_connection(self) -> Connection:
        """A new dom0 tools connection (sans-IO), as accepted on xenstored's socket."""
        with self.critical():
            conn = Connection(self, 0)
            self._connections.append(conn)
            return conn

    def drop_connection(self, conn: Connection) -> None:
        with self.critical():
            self.forget_state(conn)
            conn.reset()
            conn.closed = True
            self._dirty.discard(conn)
            if conn in self._connections:
                self._connections.remove(conn)

    def forget_state(self, conn: Connection) -> None:
        """ignore_connection(): drop watches and transactions of a dead connection."""
        conn.watches.clear()
        conn.transactions.clear()
        conn.doomed_tx.clear()

    def feed(self, conn: Connection, data: bytes) -> None:
        with self.critical():
            if conn.closed:
                return
            conn.parser.receive_data(data)
            try:
                self.process_buffered(conn)
            except RemoteProtocolError as err:
                log.warning("xenstored: dropping a tools connection: %s", err)
                self.drop_connection(conn)

    def process_buffered(self, conn: Connection) -> None:
        """Process every complete request in ``conn``'s parser (lock held)."""
        while True:
            msg = conn.parser.next_event()
            if msg is NEED_DATA:
                return
            assert isinstance(msg, Message)
            self.process_message(conn, msg)

    # -- the hypervisor's interface ---------------------------------------------------

    def introduce_domain(self, domid: int, ring: memoryview, notify: Callable[[], None],
                         serve: bool = True) -> None:
        """Start serving ``domid`` on its xenstore page; fires @introduceDomain.

        Introducing an already introduced domain only rebinds its page and notify
        (Xen rebinds the event channel), and fires nothing.  ``serve=False``: do not
        read requests already in the ring yet (a restore first puts back the domain's
        nodes, watches and transactions, then ``ring_kick``s).
        """
        self._introduce(domid, ring, notify, reset=False, serve=serve)

    def _introduce(self, domid: int, ring: memoryview, notify: Callable[[], None], *,
                   reset: bool, serve: bool = True) -> None:
        with self.critical():
            old = self._domains.get(domid)
            conn = RingConnection(self, domid, ring, notify)
            preload = self._preload.pop(domid, None)
            if preload is not None:
                conn.load_io_state(*preload)
            if old is not None:
                conn.watches, conn.transactions = old.watches, old.transactions
                conn.doomed_tx = old.doomed_tx
                conn.target = old.target
                self._connections.remove(old)
                self._dirty.discard(old)
            self._domains[domid] = conn
            self._connections.append(conn)
            self._shutdown.discard(domid)
            if reset:
                # domain_conn_reset(): a domain introduced over the wire starts afresh.
                self.forget_state(conn)
                conn.reset_indices()
            if old is None:
                self._fire([Change("@introduceDomain", False, ())])
            # Requests the guest queued before it was introduced are served now.
            if serve:
                conn.kick()
            self.mark_dirty(conn)

    def ring_kick(self, domid: int) -> None:
        """The guest signalled its store event channel: serve its ring."""
        with self.critical():
            conn = self._domains.get(domid)
            if conn is None:
                log.debug("xenstored: kick from unknown domain %d", domid)
                return
            conn.kick()
            self.mark_dirty(conn)

    def release_domain(self, domid: int) -> None:
        """Stop serving ``domid``: drop its connection state; fires @releaseDomain."""
        with self.critical():
            self._preload.pop(domid, None)
            conn = self._domains.pop(domid, None)
            if conn is None:
                log.debug("xenstored: release of unknown domain %d", domid)
                return
            self.drop_connection(conn)
            self._shutdown.discard(domid)
            for other in self._domains.values():
                if other.target == domid:
                    other.target = None
            self._fire([Change("@releaseDomain", False, ())])

    def domain_shutdown(self, domid: int) -> None:
        """The domain shut down or crashed: fire @releaseDomain once (until RESUME)."""
        with self.critical():
            if domid in self._domains and domid not in self._shutdown:
                self._shutdown.add(domid)
                self._fire([Change("@releaseDomain", False, ())])

    def domain_io_state(self, domid: int) -> tuple[bytes, bytes]:
        """A domain connection's bytes in flight outside its ring page (saved with it)."""
        with self.critical():
            conn = self._domains.get(domid)
            return conn.io_state() if conn is not None else (b"", b"")

    def preload_io_state(self, domid: int, inbound: bytes, outbound: bytes) -> None:
        """The saved ``domain_io_state`` for a restored domain, taken over when it is
        introduced — before its ring is first read, so a half-read request completes."""
        with self.critical():
            self._preload[domid] = (bytes(inbound), bytes(outbound))

    def domain_transactions(self, domid: int) -> tuple[list[int], int]:
        """(open transaction ids, next id) of a domain's connection (saved with it)."""
        with self.critical():
            conn = self._domains.get(domid)
            if conn is None:
                return [], 1
            return sorted(conn.transactions), conn.next_tx_id

    def restore_transactions(self, domid: int, ids: Sequence[int], next_id: int) -> None:
        """A restored domain's open transactions, by their ids: their snapshot stayed
        on the old host, so each starts afresh here and its commit fails with EAGAIN —
        a conflict, which every xenbus client retries (as after a live update)."""
        with self.critical():
            conn = self._domains[domid]
            for tx_id in ids:
                conn.transactions[tx_id] = self.store.start(tx_id, conn.caller)
                conn.doomed_tx.add(tx_id)
            conn.next_tx_id = next_id & 0xFFFFFFFF or 1

    def domain_watches(self, domid: int) -> list[Watch]:
        """The watches a domain set on its ring (saved with the domain)."""
        with self.critical():
            conn = self._domains.get(domid)
            return list(conn.watches) if conn is not None else []

    def restore_watches(self, domid: int, watches: Sequence[Watch]) -> None:
        """Give an introduced (restored) domain its watches back — what Linux's xenbus
        re-registers on resume — each fired once, as on registration, so a guest
        waiting on one re-checks the node it waits for."""
        with self.critical():
            conn = self._domains[domid]
            for w in watches:
                if any(x.node == w.node and x.token == w.token for x in conn.watches):
                    continue
                conn.watches.append(w)
                conn.queue_event(w.event_path(w.node).encode("latin-1"), w.token)
            self.mark_dirty(conn)

    def is_domain_introduced(self, domid: int) -> bool:
        with self.critical():
            return domid in self._domains

    # -- dom0 helpers ------------------------------------------------------------------

    def _tools(self, op: Callable[..., list[Change]], *args: object) -> None:
        with self.critical():
            self._fire(op(DOM0_TOOLS, *args))

    def read(self, path: str) -> bytes:
        with self.critical():
            return self.store.read(DOM0_TOOLS, self.store.check_path(DOM0_TOOLS, path))

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
        except XsError as err:
            if err.name == "ENOENT":
                return False
            raise
        return True

    def write(self, path: str, value: bytes | str, perms: Sequence[str | NodePerm] | None = None) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        with self.critical():
            full = self.store.check_path(DOM0_TOOLS, path)
            self._tools(self.store.write, full, data)
            if perms is not None:
                self.set_perms(full, perms)

    def mkdir(self, path: str, perms: Sequence[str | NodePerm] | None = None) -> None:
        with self.critical():
            full = self.store.check_path(DOM0_TOOLS, path)
            self._tools(self.store.mkdir, full)
            if perms is not None:
                self.set_perms(full, perms)

    def rm(self, path: str) -> None:
        with self.critical():
            self._tools(self.store.rm, self.store.check_path(DOM0_TOOLS, path))

    def directory(self, path: str) -> list[str]:
        with self.critical():
            return list(self.store.directory(DOM0_TOOLS, self.store.check_path(DOM0_TOOLS, path)))

    def get_perms(self, path: str) -> list[str]:
        with self.critical():
            if path in self._special_perms:
                return [str(p) for p in self._special_perms[path]]
            perms = self.store.get_perms(DOM0_TOOLS, self.store.check_path(DOM0_TOOLS, path))
            return [str(p) for p in perms]

    def set_perms(self, path: str, perms: Sequence[str | NodePerm]) -> None:
        parsed = tuple(p if isinstance(p, NodePerm) else NodePerm.parse(p) for p in perms)
        with self.critical():
            if path in self._special_perms:
                if not parsed:
                    raise XsError("EINVAL", "no permissions given")
                self._special_perms[path] = parsed
                return
            self._tools(self.store.set_perms, self.store.check_path(DOM0_TOOLS, path), parsed)

    # -- watches -------------------------------------------------------------------------

    def _fire(self, changes: Sequence[Change]) -> None:
        """fire_watches(): queue a WATCH_EVENT for every watch each change matches."""
        for change in changes:
            path = change.path
            for conn in self._connections:
                if not conn.watches:
                    continue
                caller = conn.caller
                if path.startswith("@"):
                    special = self._special_perms.get(path)
                    if special is None or not perm_for(caller, special) & Perm.READ:
                        continue
                elif not any(perm_for(caller, perms) & Perm.READ for perms in change.visible):
                    continue
                for watch in conn.watches:
                    if watch.node == path if change.exact else is_child(path, watch.node):
                        conn.queue_event(watch.event_path(path).encode("latin-1"), watch.token)

    # -- requests --------------------------------------------------------------------------

    def process_message(self, conn: Connection, msg: Message) -> None:
        """process_message(): dispatch one request and queue its reply."""
        outer, self._after_reply = self._after_reply, []   # INTRODUCE may nest a kick
        try:
            reply = self._dispatch(conn, msg)
            conn.queue(reply)
            if reply.type != T.XS_ERROR:
                for target, path, token in self._after_reply:
                    target.queue_event(path, token)
        finally:
            self._after_reply = outer

    def _dispatch(self, conn: Connection, msg: Message) -> Message:
        entry = self._handlers.get(msg.type)
        try:
            if entry is None:
                raise XsError("ENOSYS", f"unknown message type {msg.type}")
            handler, flags = entry
            if flags & _PRIV and not conn.caller.privileged:
                raise XsError("EACCES", "privileged operation")
            tx = None
            if not flags & _NOTID and msg.tx_id != 0:
                tx = conn.transactions.get(msg.tx_id)
                if tx is None:
                    raise XsError("ENOENT", f"no transaction {msg.tx_id}")
            payload = handler(conn, msg, tx)
            if len(payload) > XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG", f"reply of {len(payload)} bytes")
        except XsError as err:
            log.debug("xenstored: domain %d request %d failed: %s", conn.domid, msg.type, err)
            return Message(T.XS_ERROR, msg.req_id, msg.tx_id, err.name.encode() + b"\0")
        return Message(msg.type, msg.req_id, msg.tx_id, payload)

    def _path(self, conn: Connection, raw: str) -> str:
        return self.store.check_path(conn.caller, raw)

    def _do_read(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        return self.store.read(conn.caller, self._path(conn, _onearg(msg)), tx)

    def _do_directory(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        children = self.store.directory(conn.caller, self._path(conn, _onearg(msg)), tx)
        return b"".join(c.encode("latin-1") + b"\0" for c in children)

    def _do_directory_part(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        if msg.payload.count(b"\0") != 2:
            raise XsError("EINVAL", "Expected a path and an offset")
        raw_path, raw_off = split_strings(msg.payload)[:2]
        path = self._path(conn, _latin1(raw_path))
        return self.store.directory_part(conn.caller, path, c_atoi(_latin1(raw_off)), tx)

    def _do_get_perms(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        name = _onearg(msg)
        if name.startswith("@"):
            special = self._special_perms.get(name)
            if special is None:
                raise XsError("EINVAL", f"{name}: no such special node")
            if not perm_for(conn.caller, special) & Perm.READ:
                raise XsError("EACCES", name)
            return _perm_strings(special)
        return _perm_strings(self.store.get_perms(conn.caller, self._path(conn, name), tx))

    def _do_write(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        nul = msg.payload.find(b"\0")
        if nul < 0:
            raise XsError("EINVAL", "Expected a NUL-terminated path")
        path = self._path(conn, _latin1(msg.payload[:nul]))
        self._fire(self.store.write(conn.caller, path, msg.payload[nul + 1:], tx))
        return _OK

    def _do_mkdir(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        self._fire(self.store.mkdir(conn.caller, self._path(conn, _onearg(msg)), tx))
        return _OK

    def _do_rm(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        self._fire(self.store.rm(conn.caller, self._path(conn, _onearg(msg)), tx))
        return _OK

    def _do_set_perms(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        count = msg.payload.count(b"\0")
        if count < 2:
            raise XsError("EINVAL", "Expected a path and at least one permission")
        caller = conn.caller
        if not caller.privileged and count - 1 > self.store.quotas.nb_perms_per_node:
            raise XsError("ENOSPC", "too many permissions")
        strings = [_latin1(s) for s in split_strings(msg.payload)]
        perms = tuple(NodePerm.parse(s) for s in strings[1:])
        name = strings[0]
        if name.startswith("@"):
            special = self._special_perms.get(name)
            if special is None:
                raise XsError("EINVAL", f"{name}: no such special node")
            if perm_for(caller, special) & (Perm.WRITE | Perm.OWNER) != Perm.WRITE | Perm.OWNER:
                raise XsError("EACCES", name)
            self._special_perms[name] = perms
            return _OK
        self._fire(self.store.set_perms(caller, self._path(conn, name), perms, tx))
        return _OK

    def _do_watch(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        strings = split_strings(msg.payload)
        if len(strings) != 2:
            raise XsError("EINVAL", "Expected a path and a token")
        raw, token = _latin1(strings[0]), strings[1]
        if raw.startswith("@"):
            relative_to = None
            if len(raw) > XENSTORE_REL_PATH_MAX:
                raise XsError("EINVAL", "special watch path too long")
            path = raw
        else:
            relative_to = None if raw.startswith("/") else conn.caller.home
            path = canonicalize(conn.caller, raw)
            if not is_valid_nodename(path, self.store.quotas.max_path_len):
                raise XsError("EINVAL", f"watch path {raw!r}")
        if any(w.node == path and w.token == token for w in conn.watches):
            raise XsError("EEXIST", f"watch {raw!r} already set with this token")
        if not conn.caller.privileged and len(conn.watches) > self.store.quotas.nb_watch_per_domain:
            raise XsError("E2BIG", "watch quota")
        watch = Watch(path, token, relative_to)
        conn.watches.append(watch)
        # We fire once up front, after the reply: simplifies clients and restart.
        self._after_reply.append((conn, watch.event_path(path).encode("latin-1"), token))
        return _OK

    def _do_unwatch(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        strings = split_strings(msg.payload)
        if len(strings) != 2:
            raise XsError("EINVAL", "Expected a path and a token")
        path = canonicalize(conn.caller, _latin1(strings[0]))
        for watch in conn.watches:
            if watch.node == path and watch.token == strings[1]:
                conn.watches.remove(watch)
                return _OK
        raise XsError("ENOENT", "no such watch")

    def _do_reset_watches(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        self.forget_state(conn)
        return _OK

    def _do_transaction_start(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        if tx is not None:
            raise XsError("EBUSY", "nested transactions are not supported")
        if not conn.caller.privileged and len(conn.transactions) > self.store.quotas.max_transaction:
            raise XsError("ENOSPC", "transaction quota")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.transactions[tx_id] = self.store.start(tx_id, conn.caller)
        return f"{tx_id}".encode() + b"\0"

    def _do_transaction_end(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        arg = _onearg(msg)
        if arg not in ("T", "F"):
            raise XsError("EINVAL", f"Expected T or F, got {arg!r}")
        if tx is None:
            raise XsError("ENOENT", "no transaction")
        del conn.transactions[tx.id]
        if arg == "T":
            if tx.id in conn.doomed_tx:
                conn.doomed_tx.discard(tx.id)
                raise XsError("EAGAIN", "the transaction was open when the domain was saved")
            self._fire(self.store.commit(tx))
        conn.doomed_tx.discard(tx.id)
        return _OK

    def _do_introduce(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        strings = [_latin1(s) for s in split_strings(msg.payload)]
        if len(strings) < 3:
            raise XsError("EINVAL", "Expected domid, mfn and event channel")
        domid, port = c_atoi(strings[0]), c_atoi(strings[2])
        if port == 0 or port >= 1 << 31 or domid == 0 or domid >= DOMID_FIRST_RESERVED:
            raise XsError("EINVAL", f"domid {strings[0]!r} / port {strings[2]!r}")
        known = self._domains.get(domid)
        if known is not None:
            ring, notify = known.ring, known.notify
        elif self._map_ring is None:
            raise XsError("ENOSYS", "this xenstored cannot map guest rings")
        else:
            mfn = int(strings[1]) if strings[1].lstrip("-").isdigit() else 0
            ring, notify = self._map_ring(domid, mfn, port)
        self._introduce(domid, ring, notify, reset=True)
        return _OK

    def _domain_arg(self, msg: Message) -> int:
        domid = c_atoi(_onearg(msg))
        if domid == 0:
            raise XsError("EINVAL", "domain 0")
        if domid not in self._domains:
            raise XsError("ENOENT", f"domain {domid} not introduced")
        return domid

    def _do_release(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        self.release_domain(self._domain_arg(msg))
        return _OK

    def _do_resume(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        self._shutdown.discard(self._domain_arg(msg))
        return _OK

    def _do_get_domain_path(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        return f"/local/domain/{c_atoi(_onearg(msg))}".encode() + b"\0"

    def _do_is_domain_introduced(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        domid = c_atoi(_onearg(msg))
        known = domid in (0, DOMID_SELF) or domid in self._domains
        return b"T\0" if known else b"F\0"

    def _do_set_target(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        strings = [_latin1(s) for s in split_strings(msg.payload)]
        if len(strings) < 2:
            raise XsError("EINVAL", "Expected domid and target domid")
        domid, target = c_atoi(strings[0]), c_atoi(strings[1])
        for d in (domid, target):
            if d not in self._domains:
                raise XsError("ENOENT", f"domain {d} not introduced")
        self._domains[domid].target = target
        return _OK

    def _do_control(self, conn: Connection, msg: Message, tx: Transaction | None) -> bytes:
        strings = [_latin1(s) for s in split_strings(msg.payload)]
        if not strings:
            raise XsError("EINVAL", "Expected a control command")
        if strings[0] == "help":
            return b"help\nprint\n\0"
        if strings[0] == "print" and len(strings) > 1:
            log.info("xenstored: %s", strings[1])
            return _OK
        raise XsError("EINVAL", f"unknown control command {strings[0]!r}")
