"""The XenStore database: nodes, permissions, transactions and quotas, as Xen's C xenstored.

The tree is a flat dict from canonical absolute path to an immutable ``Node`` (value,
permissions, ordered child names, generation).  A parent lists its children by name,
so "a node exists" and "its parent lists it" change together, in one operation.

Invariants (each a rule of tools/xenstore/xenstored_core.c):
- "/" always exists; every node's parent exists and names it.
- A node's first permission entry is its owner and the default for every domain not
  listed after it.  Privileged callers (dom0) and the owner get READ|WRITE|OWNER.
- Missing parents are created implicitly, each inheriting the permissions of its own
  parent; a node created by an unprivileged domain is owned by that domain.
- When an operation fails, the caller learns only what its permissions on the
  nearest existing ancestor allow (``errno_from_parents``): ENOENT becomes EACCES.
- Quotas (entries per domain, node size, permissions per node, nodes accessed per
  transaction) apply to unprivileged domains only, with Xen's default values.
- A transaction keeps its own versions of the nodes it wrote and remembers the
  generation of every node it looked at, when it first did (absent = ``None``).
  Commit fails with EAGAIN if any of them changed meanwhile; otherwise the nodes it
  wrote are copied back with fresh generations.  Watch events wait for commit.

Errors for the client are ``XsError`` carrying the errno *name* of xs_wire.h; the
daemon turns them into XS_ERROR replies, and the dom0 helpers let them propagate.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from xenpy.abi.io.xs_wire import XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX
from xenpy.errors import XenpyError

_U32 = 0xFFFFFFFF


class XsError(XenpyError):
    """A XenStore request failed; ``name`` is the errno name sent in XS_ERROR."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name


class Perm(enum.IntFlag):
    """enum xs_perm_type (tools/xenstore/include/xenstore_lib.h)."""

    NONE = 0
    READ = 1
    WRITE = 2
    OWNER = 4


_PERM_LETTERS = {"n": Perm.NONE, "r": Perm.READ, "w": Perm.WRITE, "b": Perm.READ | Perm.WRITE}
_LETTER_OF = {v: k for k, v in _PERM_LETTERS.items()}


def c_strtoul(text: str) -> int:
    """C strtoul(text, NULL, 0) truncated to unsigned int: Xen parses domids this way,
    so "r0x10" is domain 16 and "rjunk" is domain 0."""
    m = re.match(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return 0
    digits = m.group(2)
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    else:
        value = int(digits, 8 if digits.startswith("0") else 10)
    return (-value if m.group(1) == "-" else value) & _U32


def c_atoi(text: str) -> int:
    """C atoi() as an unsigned int (domids and ports in requests)."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) & _U32 if m else 0


@dataclass(frozen=True, slots=True)
class NodePerm:
    """struct xs_permissions: one domain's access to a node."""

    domid: int
    perm: Perm

    @classmethod
    def parse(cls, text: str) -> NodePerm:
        """xs_strings_to_perms() for one entry: 'n0', 'r1', 'w2', 'b3'."""
        if not text or text[0] not in _PERM_LETTERS:
            raise XsError("EINVAL", f"permission {text!r}: Expected n, r, w or b and a domid")
        return cls(c_strtoul(text[1:]), _PERM_LETTERS[text[0]])

    def __str__(self) -> str:
        return f"{_LETTER_OF[self.perm & (Perm.READ | Perm.WRITE)]}{self.domid}"


Perms = tuple[NodePerm, ...]

#: sizeof(struct xs_tdb_record_hdr) and sizeof(struct xs_permissions) in C xenstored:
#: the node size quota counts the record as xenstored stores it.
_RECORD_HDR_SIZE = 24
_PERM_SIZE = 8


@dataclass(frozen=True, slots=True)
class Node:
    """One node: its value, permissions, ordered child names and generation count."""

    value: bytes
    perms: Perms
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def childlen(self) -> int:
        return sum(len(c) + 1 for c in self.children)

    @property
    def size(self) -> int:
        """Bytes of the stored record (what quota_max_entry_size limits)."""
        return _RECORD_HDR_SIZE + _PERM_SIZE * len(self.perms) + len(self.value) + self.childlen


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a domain (``privileged`` for dom0 and dom0 tools) and its target."""

    domid: int
    privileged: bool
    target: int | None = None

    @property
    def home(self) -> str:
        """The base of relative paths (get_implicit_path)."""
        return f"/local/domain/{self.domid}"


DOM0_TOOLS = Caller(0, True)


@dataclass(frozen=True, slots=True)
class Quotas:
    """Xen's default limits (xenstored_core.c); they bind unprivileged domains only."""

    nb_entry_per_domain: int = 1000
    nb_watch_per_domain: int = 128
    max_entry_size: int = 2048
    max_transaction: int = 10
    nb_perms_per_node: int = 5
    trans_nodes: int = 1024
    max_path_len: int = XENSTORE_REL_PATH_MAX
    req_outstanding: int = 20
    memory_per_domain_hard: int = 2 * 1024 * 1024 + 512 * 1024


@dataclass(frozen=True, slots=True)
class Change:
    """A modified node to fire watches for.

    ``exact`` events match only watches on that very path (children removed with a
    subtree); ``visible`` lists the permission sets any of which lets a watcher with
    READ see the event (the node's old and new permissions, its parent's).
    """

    path: str
    exact: bool
    visible: tuple[Perms, ...]


def perm_for(caller: Caller, perms: Perms) -> Perm:
    """perm_for_conn(): what ``caller`` may do on a node with these permissions."""
    everything = Perm.READ | Perm.WRITE | Perm.OWNER
    if caller.privileged or perms[0].domid == caller.domid or (
            caller.target is not None and perms[0].domid == caller.target):
        return everything
    for entry in perms[1:]:
        if entry.domid == caller.domid or (caller.target is not None and entry.domid == caller.target):
            return entry.perm
    return perms[0].perm


_VALID_CHARS = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL_PREFIX = re.compile(r"/local/domain/\d{1,5}/")


def canonicalize(caller: Caller, path: str) -> str:
    """A relative path is taken relative to the caller's /local/domain/<domid>."""
    if path.startswith(("/", "@")):
        return path
    return f"{caller.home}/{path}"


def is_valid_nodename(path: str, max_path_len: int = XENSTORE_REL_PATH_MAX) -> bool:
    """is_valid_nodename(): absolute, no '//' or trailing '/', allowed characters, and at
    most ``max_path_len`` bytes below /local/domain/<domid>/ (or in all, elsewhere)."""
    if not path.startswith("/") or (path.endswith("/") and path != "/") or "//" in path:
        return False
    m = _LOCAL_PREFIX.match(path)
    local_off = m.end() if m else 0
    if len(path) > local_off + max_path_len:
        return False
    return _VALID_CHARS.match(path) is not None


def parent_of(path: str) -> str:
    """get_parent(): '/a/b' -> '/a', '/a' -> '/'."""
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def is_child(child: str, parent: str) -> bool:
    """Is ``child`` ``parent`` or below it? Everything is below '/' (even @specials)."""
    if parent == "/":
        return True
    return child == parent or child.startswith(parent + "/")


class Transaction:
    """A transaction: its own versions of the nodes it wrote, and what it looked at.

    Like Xen 4.17 (which copies a node into the transaction on first access), a node
    is read from the live tree the first time the transaction touches it; its
    generation then is remembered, and commit requires it unchanged.
    """

    def __init__(self, tx_id: int, store: Store, caller: Caller) -> None:
        self.id = tx_id
        self.caller = caller
        #: nodes written (a Node) or deleted (None) by this transaction
        self.local: dict[str, Node | None] = {}
        self.accessed: dict[str, int | None] = {}
        self.changes: list[Change] = []
        self.entry_delta: dict[int, int] = {}
        self._store = store

    # The _Db interface shared with _Direct.
    def get(self, path: str) -> Node | None:
        self._access(path)
        if path in self.local:
            return self.local[path]
        return self._store.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self._access(path)
        self.local[path] = node

    def delete(self, path: str) -> None:
        self._access(path)
        self.local[path] = None

    def entries(self, domid: int) -> int:
        return self._store.entries.get(domid, 0) + self.entry_delta.get(domid, 0)

    def add_entries(self, domid: int, delta: int) -> None:
        self.entry_delta[domid] = self.entry_delta.get(domid, 0) + delta

    def changed(self, change: Change) -> None:
        self.changes.append(change)

    def _access(self, path: str) -> None:
        if path in self.accessed:
            return
        if not self.caller.privileged and len(self.accessed) >= self._store.quotas.trans_nodes:
            raise XsError("ENOSPC", f"transaction {self.id}: more than "
                          f"{self._store.quotas.trans_nodes} nodes accessed")
        node = self._store.nodes.get(path)
        self.accessed[path] = node.generation if node is not None else None


class _Direct:
    """The _Db interface on the live tree: changes apply (and fire) at once."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.changes: list[Change] = []

    def get(self, path: str) -> Node | None:
        return self._store.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self._store.put(path, node)

    def delete(self, path: str) -> None:
        self._store.nodes.pop(path, None)

    def entries(self, domid: int) -> int:
        return self._store.entries.get(domid, 0)

    def add_entries(self, domid: int, delta: int) -> None:
        self._store.entries[domid] = self._store.entries.get(domid, 0) + delta

    def changed(self, change: Change) -> None:
        self.changes.append(change)


_Db = Transaction | _Direct


class Store:
    """The tree and the operations on it; every operation names its caller.

    Mutating operations return the ``Change`` list to fire now (empty inside a
    transaction: those fire from ``commit``).  Paths given here are already
    canonical; ``check_path`` validates them.
    """

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas if quotas is not None else Quotas()
        self.generation = 0
        none0: Perms = (NodePerm(0, Perm.NONE),)
        # setup_structure(): the three nodes xenstored creates, owned by dom0.
        self.nodes: dict[str, Node] = {
            "/": Node(b"", none0, ("tool",)),
            "/tool": Node(b"", none0, ("xenstored",)),
            "/tool/xenstored": Node(b"", none0),
        }
        self.entries: dict[int, int] = {0: 3}

    def put(self, path: str, node: Node) -> None:
        self.generation += 1
        self.nodes[path] = replace(node, generation=self.generation)

    def _db(self, tx: Transaction | None) -> _Db:
        return tx if tx is not None else _Direct(self)

    @staticmethod
    def _done(db: _Db) -> list[Change]:
        return db.changes if isinstance(db, _Direct) else []

    def check_path(self, caller: Caller, path: str) -> str:
        """Canonicalize and validate a node path from ``caller`` (EINVAL if bad)."""
        full = canonicalize(caller, path)
        if not is_valid_nodename(full, self.quotas.max_path_len):
            raise XsError("EINVAL", f"path {path!r}: not a valid node name")
        return full

    # -- permission checks -------------------------------------------------------

    def _ask_parents(self, db: _Db, caller: Caller, path: str) -> Perm:
        while path != "/":
            path = parent_of(path)
            node = db.get(path)
            if node is not None:
                return perm_for(caller, node.perms)
        return Perm.NONE  # no root: cannot happen

    def _get_node(self, db: _Db, caller: Caller, path: str, perm: Perm) -> Node:
        """get_node(): the node if ``caller`` has ``perm`` on it, else ENOENT/EACCES
        as far as its permissions on the parents let it know."""
        node = db.get(path)
        if node is not None and perm_for(caller, node.perms) & perm == perm:
            return node
        errname = "EACCES" if node is not None else "ENOENT"
        if not self._ask_parents(db, caller, path) & perm:
            errname = "EACCES"
        raise XsError(errname, path)

    def _check_size(self, caller: Caller, path: str, node: Node) -> None:
        if not caller.privileged and node.size >= self.quotas.max_entry_size:
            raise XsError("ENOSPC", f"{path}: node of {node.size} bytes, quota "
                          f"{self.quotas.max_entry_size}")

    # -- reads ---------------------------------------------------------------------

    def read(self, caller: Caller, path: str, tx: Transaction | None = None) -> bytes:
        return self._get_node(self._db(tx), caller, path, Perm.READ).value

    def directory(self, caller: Caller, path: str, tx: Transaction | None = None) -> tuple[str, ...]:
        return self._get_node(self._db(tx), caller, path, Perm.READ).children

    def directory_part(self, caller: Caller, path: str, offset: int,
                       tx: Transaction | None = None) -> bytes:
        """send_directory_part(): '<gencnt>\\0' then children from byte ``offset``, with
        an extra empty string once the list is complete."""
        node = self._get_node(self._db(tx), caller, path, Perm.READ)
        gen = f"{node.generation}".encode() + b"\0"
        children = b"".join(c.encode("latin-1") + b"\0" for c in node.children)
        if offset >= len(children):
            return gen + b"\0"
        maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        length = 0
        pos = offset
        while True:
            nul = children.index(b"\0", pos)
            name_len = nul - pos
            if length + name_len >= maxlen:
                break
            length += name_len + 1
            pos = nul + 1
            if offset + length == len(children):
                break
        chunk = children[offset:offset + length]
        if offset + length == len(children):
            chunk += b"\0"
        return gen + chunk

    def get_perms(self, caller: Caller, path: str, tx: Transaction | None = None) -> Perms:
        return self._get_node(self._db(tx), caller, path, Perm.READ).perms

    # -- writes --------------------------------------------------------------------

    def write(self, caller: Caller, path: str, value: bytes,
              tx: Transaction | None = None) -> list[Change]:
        db = self._db(tx)
        try:
            node = self._get_node(db, caller, path, Perm.WRITE)
        except XsError as err:
            if err.name != "ENOENT":
                raise
            self._create(db, caller, path, value)
        else:
            new = replace(node, value=value)
            self._check_size(caller, path, new)
            db.put(path, new)
            parent = db.get(parent_of(path)) if path != "/" else None
            db.changed(Change(path, False, (new.perms,) + ((parent.perms,) if parent else ())))
        return self._done(db)

    def mkdir(self, caller: Caller, path: str, tx: Transaction | None = None) -> list[Change]:
        db = self._db(tx)
        try:
            self._get_node(db, caller, path, Perm.WRITE)
        except XsError as err:
            if err.name != "ENOENT":
                raise
            self._create(db, caller, path, b"")
        return self._done(db)

    def _create(self, db: _Db, caller: Caller, path: str, value: bytes) -> None:
        """create_node(): ``path`` and any missing ancestors, checked before applied."""
        missing = [path]
        parent_path = parent_of(path)
        parent = db.get(parent_path)
        while parent is None:
            missing.append(parent_path)
            parent_path = parent_of(parent_path)
            parent = db.get(parent_path)
        updates: list[tuple[str, Node]] = []
        new_parent = replace(parent, children=(*parent.children, basename(missing[-1])))
        updates.append((parent_path, new_parent))
        perms = parent.perms
        count = db.entries(caller.domid)
        for i, name in enumerate(reversed(missing)):
            if not caller.privileged:
                perms = (NodePerm(caller.domid, perms[0].perm),) + perms[1:]
                if count + i >= self.quotas.nb_entry_per_domain:
                    raise XsError("ENOSPC", f"domain {caller.domid}: more than "
                                  f"{self.quotas.nb_entry_per_domain} nodes")
            is_leaf = name == path
            below = () if is_leaf else (basename(missing[len(missing) - 2 - i]),)
            updates.append((name, Node(value if is_leaf else b"", perms, below)))
        for name, node in updates:
            self._check_size(caller, name, node)
        for name, node in updates:
            db.put(name, node)
        for _, node in updates[1:]:
            db.add_entries(node.perms[0].domid, 1)
        leaf = updates[-1][1]
        holder = updates[-2][1]
        db.changed(Change(path, False, (leaf.perms, holder.perms)))

    def rm(self, caller: Caller, path: str, tx: Transaction | None = None) -> list[Change]:
        db = self._db(tx)
        try:
            node = self._get_node(db, caller, path, Perm.WRITE)
        except XsError as err:
            # Removing what does not exist is fine if its parent exists.
            if err.name == "ENOENT" and db.get(parent_of(path)) is not None:
                return self._done(db)
            raise
        if path == "/":
            raise XsError("EINVAL", "cannot remove /")
        parent_path = parent_of(path)
        parent = db.get(parent_path)
        if parent is None:
            raise XsError("EINVAL", f"{path}: parent vanished")
        # Post-order walk: children are deleted (and fire exact events) before parents.
        order: list[tuple[str, Node, Perms]] = []
        stack: list[tuple[str, Node, Perms, bool]] = [(path, node, parent.perms, False)]
        while stack:
            p, n, pperms, expanded = stack.pop()
            if expanded:
                order.append((p, n, pperms))
                continue
            stack.append((p, n, pperms, True))
            for name in reversed(n.children):
                cp = child_path(p, name)
                child = db.get(cp)
                if child is not None:
                    stack.append((cp, child, n.perms, False))
        for p, n, pperms in order:
            db.delete(p)
            db.add_entries(n.perms[0].domid, -1)
            db.changed(Change(p, p != path, (n.perms, pperms)))
        name = basename(path)
        db.put(parent_path, replace(parent, children=tuple(c for c in parent.children if c != name)))
        return self._done(db)

    def set_perms(self, caller: Caller, path: str, perms: Perms,
                  tx: Transaction | None = None) -> list[Change]:
        if not caller.privileged and len(perms) > self.quotas.nb_perms_per_node:
            raise XsError("ENOSPC", f"{len(perms)} permissions, quota {self.quotas.nb_perms_per_node}")
        if not perms:
            raise XsError("EINVAL", "no permissions given")
        db = self._db(tx)
        node = self._get_node(db, caller, path, Perm.WRITE | Perm.OWNER)
        if not caller.privileged and perms[0].domid != node.perms[0].domid:
            raise XsError("EPERM", f"{path}: only dom0 may change the owner")
        new = replace(node, perms=perms)
        self._check_size(caller, path, new)
        db.put(path, new)
        if perms[0].domid != node.perms[0].domid:
            db.add_entries(node.perms[0].domid, -1)
            db.add_entries(perms[0].domid, 1)
        parent = db.get(parent_of(path)) if path != "/" else None
        db.changed(Change(path, False, (node.perms, perms) + ((parent.perms,) if parent else ())))
        return self._done(db)

    # -- transactions --------------------------------------------------------------

    def start(self, tx_id: int, caller: Caller) -> Transaction:
        return Transaction(tx_id, self, caller)

    def commit(self, tx: Transaction) -> list[Change]:
        """Apply ``tx`` (EAGAIN if anything it looked at changed since it started)."""
        for path, gen in tx.accessed.items():
            cur = self.nodes.get(path)
            if (cur.generation if cur is not None else None) != gen:
                raise XsError("EAGAIN", f"transaction {tx.id}: {path} changed")
        for domid, delta in tx.entry_delta.items():
            if (domid != 0 and delta > 0 and
                    self.entries.get(domid, 0) + delta >= self.quotas.nb_entry_per_domain):
                raise XsError("ENOSPC", f"domain {domid}: node quota")
        for path, node in tx.local.items():
            if node is None:
                self.nodes.pop(path, None)
            else:
                self.put(path, node)
        for domid, delta in tx.entry_delta.items():
            self.entries[domid] = self.entries.get(domid, 0) + delta
        return tx.changes

