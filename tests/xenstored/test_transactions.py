"""Transactions: isolation, commit, abort, conflicts (EAGAIN), ids and misuse."""
from __future__ import annotations

from xenpy.abi.io.xs_wire import XsdSockmsgType as T
from xenpy.backends.xenstored import Xenstored

from .conftest import ToolClient


def test_commit_applies_and_isolates(daemon: Xenstored, dom0: ToolClient) -> None:
    dom0.write("/t/a", "old")
    tx = dom0.start()
    assert tx != 0
    dom0.write("/t/a", "new", tx=tx)
    dom0.write("/t/b/c", "created", tx=tx)
    assert dom0.read("/t/a", tx=tx) == b"new"
    assert dom0.read("/t/a") == b"old"                    # invisible outside
    assert dom0.err(T.XS_READ, "/t/b/c") == "ENOENT"
    assert dom0.end(tx) == b"OK\0"
    assert dom0.read("/t/a") == b"new"
    assert dom0.read("/t/b/c") == b"created"
    assert dom0.ls("/t") == ["a", "b"]


def test_abort_discards(dom0: ToolClient) -> None:
    dom0.write("/t/a", "old")
    tx = dom0.start()
    dom0.write("/t/a", "new", tx=tx)
    dom0.ok(T.XS_RM, "/t", tx=tx)
    assert dom0.end(tx, commit=False) == b"OK\0"
    assert dom0.read("/t/a") == b"old"
    # the transaction is gone
    assert dom0.err(T.XS_READ, "/t/a", tx=tx) == "ENOENT"


def test_conflict_gives_eagain(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    dom0.write("/c/x", "0")
    other = ToolClient(daemon.tool_connection())
    tx = dom0.start()
    assert dom0.read("/c/x", tx=tx) == b"0"
    other.write("/c/x", "1")                     # intervening write to a node we read
    dom0.write("/c/y", "mine", tx=tx)
    assert dom0.err(T.XS_TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert dom0.read("/c/x") == b"1"
    assert dom0.err(T.XS_READ, "/c/y") == "ENOENT"
    # retry, as xs clients do
    tx = dom0.start()
    value = int(dom0.read("/c/x", tx=tx))
    dom0.write("/c/x", str(value + 1), tx=tx)
    assert dom0.end(tx) == b"OK\0"
    assert dom0.read("/c/x") == b"2"


def test_unrelated_write_does_not_conflict(daemon: Xenstored, dom0: ToolClient) -> None:
    dom0.write("/c/x", "0")
    dom0.write("/d/z", "0")
    other = ToolClient(daemon.tool_connection())
    tx = dom0.start()
    dom0.read("/c/x", tx=tx)
    dom0.write("/c/x", "tx", tx=tx)
    other.write("/d/z", "1")
    assert dom0.end(tx) == b"OK\0"
    assert dom0.read("/c/x") == b"tx"


def test_conflict_on_created_node(daemon: Xenstored, dom0: ToolClient) -> None:
    other = ToolClient(daemon.tool_connection())
    tx = dom0.start()
    dom0.write("/n/x", "tx", tx=tx)
    other.write("/n/x", "outside")
    assert dom0.err(T.XS_TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert dom0.read("/n/x") == b"outside"


def test_transaction_misuse(dom0: ToolClient) -> None:
    assert dom0.err(T.XS_TRANSACTION_END, "T") == "ENOENT"        # tx_id 0
    assert dom0.err(T.XS_READ, "/tool", tx=12345) == "ENOENT"      # unknown tx
    tx = dom0.start()
    assert dom0.err(T.XS_TRANSACTION_START, "", tx=tx) == "EBUSY"  # no nesting
    assert dom0.err(T.XS_TRANSACTION_END, "X", tx=tx) == "EINVAL"
    assert dom0.err(T.XS_TRANSACTION_END, raw=b"T", tx=tx) == "EINVAL"
    assert dom0.end(tx) == b"OK\0"


def test_ids_are_distinct_and_per_connection(daemon: Xenstored, dom0: ToolClient) -> None:
    ids = {dom0.start() for _ in range(5)}
    assert len(ids) == 5 and 0 not in ids
    other = ToolClient(daemon.tool_connection())
    foreign = next(iter(ids))
    assert other.err(T.XS_READ, "/tool", tx=foreign) == "ENOENT"


def test_watch_fires_on_commit_only(daemon: Xenstored, dom0: ToolClient) -> None:
    watcher = ToolClient(daemon.tool_connection())
    watcher.ok(T.XS_WATCH, "/w", "tok")
    assert watcher.take_events() == [("/w", "tok")]
    tx = dom0.start()
    dom0.write("/w/a", "1", tx=tx)
    assert watcher.take_events() == []
    dom0.end(tx)
    assert watcher.take_events() == [("/w/a", "tok")]
    tx = dom0.start()
    dom0.write("/w/b", "1", tx=tx)
    dom0.end(tx, commit=False)
    assert watcher.take_events() == []


def test_domain_transaction_over_ring(daemon: Xenstored, guest) -> None:
    daemon.mkdir("/local/domain/4", perms=["n4"])
    g = guest(4)
    tx = g.start()
    g.write("device/vif/0/state", "1", tx=tx)
    assert g.end(tx) == b"OK\0"
    assert daemon.read("/local/domain/4/device/vif/0/state") == b"1"
