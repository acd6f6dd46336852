"""Quotas with Xen's defaults: they bind guests, never dom0."""
from __future__ import annotations

from xenpy.abi.io.xs_wire import XsdSockmsgType as T
from xenpy.backends.xenstored import Quotas, Xenstored

from .conftest import FakeGuest, ToolClient


def test_defaults_are_xens() -> None:
    q = Quotas()
    assert (q.nb_entry_per_domain, q.nb_watch_per_domain, q.max_entry_size, q.max_transaction,
            q.nb_perms_per_node, q.trans_nodes, q.max_path_len, q.req_outstanding) == \
        (1000, 128, 2048, 10, 5, 1024, 2048, 20)


def _home(daemon: Xenstored, domid: int) -> None:
    daemon.mkdir(f"/local/domain/{domid}", perms=[f"n{domid}"])


def test_node_size_quota(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    _home(daemon, 1)
    g = guest(1)
    # record = 24-byte header + 8 per permission + data + children; must stay < 2048
    g.write("fits", b"x" * (2048 - 24 - 8 - 1))
    assert g.err(T.XS_WRITE, raw=b"big\0" + b"x" * (2048 - 24 - 8)) == "ENOSPC"
    assert g.err(T.XS_READ, "big") == "ENOENT"           # nothing half-created
    dom0.write("/local/domain/1/big", b"x" * 4000)       # dom0 is not limited
    assert len(dom0.read("/local/domain/1/big")) == 4000


def test_entry_quota(guest) -> None:
    d = Xenstored(Quotas(nb_entry_per_domain=10))
    d.mkdir("/local/domain/1", perms=["n1"])
    g = FakeGuest(d, 1)
    assert d.store.entries[1] == 1             # its home, handed over by dom0
    for i in range(9):
        g.write(f"n{i}", "x")
    assert g.err(T.XS_WRITE, raw=b"n9\0x") == "ENOSPC"
    assert g.err(T.XS_MKDIR, "deep/er") == "ENOSPC"
    g.ok(T.XS_RM, "n0")
    g.write("again", "x")
    assert d.store.entries[1] == 10


def test_entry_quota_with_default_value(daemon: Xenstored, guest) -> None:
    _home(daemon, 2)
    g = guest(2)
    for i in range(99):             # 10 new nodes per request
        g.write("/".join(f"q{i}-{j}" for j in range(10)), "x")
    for i in range(9):
        g.write(f"last{i}", "x")
    assert daemon.store.entries[2] == 1000     # 999 + its home
    assert g.err(T.XS_WRITE, raw=b"one-more\0x") == "ENOSPC"


def test_watch_quota(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    g = guest(1)
    for i in range(129):       # Xen checks "more than 128 already": the 129th still fits
        assert g.ok(T.XS_WATCH, f"/w{i}", "t") == b"OK\0"
    assert g.err(T.XS_WATCH, "/w-too-many", "t") == "E2BIG"
    for i in range(200):
        dom0.ok(T.XS_WATCH, f"/w{i}", "t")


def test_transaction_quota(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    g = guest(1)
    ids = [g.start() for _ in range(11)]
    assert g.err(T.XS_TRANSACTION_START, "") == "ENOSPC"
    g.end(ids[0], commit=False)
    g.start()
    for _ in range(30):
        dom0.start()


def test_permission_count_quota(daemon: Xenstored, guest) -> None:
    _home(daemon, 1)
    g = guest(1)
    g.write("p", "x")
    assert g.ok(T.XS_SET_PERMS, "p", "n1", "r2", "r3", "r4", "r5") == b"OK\0"
    assert g.err(T.XS_SET_PERMS, "p", "n1", "r2", "r3", "r4", "r5", "r6") == "ENOSPC"
    daemon.set_perms("/local/domain/1/p", ["n1"] + [f"r{i}" for i in range(2, 12)])


def test_transaction_node_quota() -> None:
    d = Xenstored(Quotas(trans_nodes=5))
    d.mkdir("/local/domain/1", perms=["n1"])
    g = FakeGuest(d, 1)
    tx = g.start()
    for i in range(4):
        g.write(f"t{i}", "x", tx=tx)   # touches t<i> (+ home, once): 5 nodes
    assert g.err(T.XS_WRITE, raw=b"t4\0x", tx=tx) == "ENOSPC"
    assert g.err(T.XS_READ, "t0", tx=tx + 1) == "ENOENT"


def test_pending_event_memory_is_bounded() -> None:
    d = Xenstored(Quotas(memory_per_domain_hard=4096))
    g = FakeGuest(d, 1)
    d.write("/pub", "x", perms=["r0"])
    g.ok(T.XS_WATCH, "/pub", "t")
    g.take_events()
    # Never read rsp: events pile up in the daemon, but only up to the quota.
    for i in range(500):
        d.write(f"/pub/n{i}", "x")
    conn = d._domains[1]
    queued = 0
    while (m := conn.pop_message()) is not None:
        queued += 16 + len(m.payload)
    assert 0 < queued <= 4096
