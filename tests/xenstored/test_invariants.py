"""Random operation sequences keep the store's invariants (hypothesis).

After every step: each node's parent exists and lists it once, every listed child
exists, and the per-domain entry counts equal the number of nodes each domain owns
(the quota accounting is never off, whatever commits, aborts or conflicts happened).
"""
from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from xenpy.backends.xenstored.store import Caller, NodePerm, Perm, Store, XsError, basename, parent_of

CALLERS = [Caller(0, True), Caller(1, False), Caller(2, False)]
PATHS = ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f", "/local/domain/1/x", "/local/domain/1/x/y",
         "/local/domain/2/z"]

op = st.tuples(
    st.sampled_from(["write", "mkdir", "rm", "set_perms", "start", "commit", "abort"]),
    st.integers(0, len(CALLERS) - 1),
    st.sampled_from(PATHS),
    st.integers(0, 2),       # which open transaction (if any) to use
    st.sampled_from([Perm.NONE, Perm.READ, Perm.WRITE, Perm.READ | Perm.WRITE]),
)


def check_invariants(store: Store) -> None:
    for path, node in store.nodes.items():
        assert len(set(node.children)) == len(node.children), path
        for child in node.children:
            assert (f"/{child}" if path == "/" else f"{path}/{child}") in store.nodes
        if path != "/":
            parent = store.nodes[parent_of(path)]
            assert parent.children.count(basename(path)) == 1, path
    owners = Counter(n.perms[0].domid for n in store.nodes.values())
    counted = {d: c for d, c in store.entries.items() if c}
    assert counted == dict(owners)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=40))
def test_random_operations_keep_invariants(ops: list) -> None:
    store = Store()
    for domid in (1, 2):
        store.mkdir(Caller(0, True), f"/local/domain/{domid}")
        store.set_perms(Caller(0, True), f"/local/domain/{domid}", (NodePerm(domid, Perm.NONE),))
    txs: list[list] = [[], [], []]   # per caller: open transactions
    for name, who, path, which, perm in ops:
        caller = CALLERS[who]
        open_txs = txs[who]
        tx = open_txs[which % len(open_txs)] if open_txs and which else None
        try:
            if name == "write":
                store.write(caller, path, b"v", tx)
            elif name == "mkdir":
                store.mkdir(caller, path, tx)
            elif name == "rm":
                store.rm(caller, path, tx)
            elif name == "set_perms":
                owner = caller.domid if not caller.privileged else who
                store.set_perms(caller, path, (NodePerm(owner, perm), NodePerm(2, Perm.READ)), tx)
            elif name == "start":
                open_txs.append(store.start(len(open_txs) + 1, caller))
            elif name in ("commit", "abort") and open_txs:
                t = open_txs.pop(which % len(open_txs))
                if name == "commit":
                    store.commit(t)
        except XsError as err:
            assert err.name in {"ENOENT", "EACCES", "EAGAIN", "EPERM", "ENOSPC", "EINVAL"}, err
        check_invariants(store)
