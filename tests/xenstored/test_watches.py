"""Watches: tokens, the initial event, subtree matching, rm, perms, relative paths, specials."""
from __future__ import annotations

from xenpy.abi.io.xs_wire import XsdSockmsgType as T
from xenpy.backends.xenstored import Xenstored

from .conftest import ToolClient


def test_initial_event_follows_the_reply(dom0: ToolClient) -> None:
    reply = dom0.request(T.XS_WATCH, "/x", "tok1")
    assert reply is not None and reply.type == T.XS_WATCH and reply.payload == b"OK\0"
    assert dom0.take_events() == [("/x", "tok1")]


def test_events_for_node_and_children_only(daemon: Xenstored, dom0: ToolClient) -> None:
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/a/b", "T")
    w.take_events()
    dom0.write("/a/b/c", "1")
    dom0.write("/a/bc", "1")      # a sibling sharing the prefix: no event
    dom0.write("/a", "1")         # the parent: no event
    dom0.write("/a/b", "2")
    assert w.take_events() == [("/a/b/c", "T"), ("/a/b", "T")]


def test_two_tokens_two_events_and_unwatch(daemon: Xenstored, dom0: ToolClient) -> None:
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/k", "one")
    w.ok(T.XS_WATCH, "/k", "two")
    assert w.err(T.XS_WATCH, "/k", "one") == "EEXIST"
    w.take_events()
    dom0.write("/k", "v")
    assert sorted(w.take_events()) == [("/k", "one"), ("/k", "two")]
    assert w.ok(T.XS_UNWATCH, "/k", "one") == b"OK\0"
    assert w.err(T.XS_UNWATCH, "/k", "one") == "ENOENT"
    dom0.write("/k", "w")
    assert w.take_events() == [("/k", "two")]


def test_watch_argument_errors(dom0: ToolClient) -> None:
    assert dom0.err(T.XS_WATCH, "/only-path") == "EINVAL"
    assert dom0.err(T.XS_WATCH, "/bad//path", "t") == "EINVAL"
    assert dom0.err(T.XS_WATCH, "/a", "t", "extra") == "EINVAL"
    assert dom0.err(T.XS_WATCH, "@" + "x" * 2048, "t") == "EINVAL"


def test_rm_fires_for_the_node_and_each_watched_descendant(daemon: Xenstored, dom0: ToolClient) -> None:
    dom0.write("/r/a/b/c", "1")
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/r", "root")
    w.ok(T.XS_WATCH, "/r/a/b/c", "leaf")
    w.ok(T.XS_WATCH, "/r/a/b/zz", "absent")
    w.take_events()
    dom0.ok(T.XS_RM, "/r/a")
    assert w.take_events() == [("/r/a/b/c", "leaf"), ("/r/a", "root")]


def test_watch_on_missing_node_fires_on_creation(daemon: Xenstored, dom0: ToolClient) -> None:
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/later/node", "t")
    w.take_events()
    dom0.write("/later/node", "x")
    assert w.take_events() == [("/later/node", "t")]


def test_set_perms_and_mkdir_fire(daemon: Xenstored, dom0: ToolClient) -> None:
    dom0.write("/p", "1")
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/p", "t")
    w.take_events()
    dom0.ok(T.XS_SET_PERMS, "/p", "n0", "r1")
    dom0.ok(T.XS_MKDIR, "/p/d")
    dom0.ok(T.XS_MKDIR, "/p/d")      # exists: no event
    assert w.take_events() == [("/p", "t"), ("/p/d", "t")]


def test_relative_watch_reports_relative_paths(daemon: Xenstored, guest) -> None:
    daemon.mkdir("/local/domain/3", perms=["n3"])
    g = guest(3)
    g.ok(T.XS_WATCH, "device", "dev")
    g.ok(T.XS_WATCH, "/local/domain/3/control", "abs")
    assert g.take_events() == [("device", "dev"), ("/local/domain/3/control", "abs")]
    daemon.write("/local/domain/3/device/vbd/0", "x")
    daemon.write("/local/domain/3/control/shutdown", "poweroff")
    assert g.take_events() == [("device/vbd/0", "dev"), ("/local/domain/3/control/shutdown", "abs")]


def test_watch_events_respect_read_permission(daemon: Xenstored, guest) -> None:
    daemon.mkdir("/local/domain/1", perms=["n1"])
    daemon.mkdir("/local/domain/2", perms=["n2"])
    a, b = guest(1), guest(2)
    b.ok(T.XS_WATCH, "/local/domain/1", "spy")
    b.take_events()
    a.write("secret", "x")
    assert b.take_events() == []
    a.ok(T.XS_WATCH, "secret", "own")
    a.take_events()
    a.write("secret", "y")
    assert a.take_events() == [("secret", "own")]


def test_introduce_and_release_events(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    dom0.ok(T.XS_WATCH, "@introduceDomain", "in")
    dom0.ok(T.XS_WATCH, "@releaseDomain", "out")
    assert dom0.take_events() == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
    g = guest(5)
    assert dom0.take_events() == [("@introduceDomain", "in")]
    daemon.introduce_domain(5, memoryview(g.page), g.notify)   # re-introduction: no event
    assert dom0.take_events() == []
    daemon.domain_shutdown(5)
    daemon.domain_shutdown(5)                                   # only once until RESUME
    assert dom0.take_events() == [("@releaseDomain", "out")]
    dom0.ok(T.XS_RESUME, "5")
    daemon.domain_shutdown(5)
    assert dom0.take_events() == [("@releaseDomain", "out")]
    daemon.release_domain(5)
    assert dom0.take_events() == [("@releaseDomain", "out")]
    assert not daemon.is_domain_introduced(5)


def test_special_events_need_permission(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    watcher = guest(1)
    watcher.ok(T.XS_WATCH, "@releaseDomain", "rel")
    assert watcher.take_events() == [("@releaseDomain", "rel")]   # the initial one always
    guest(2)
    daemon.release_domain(2)
    assert watcher.take_events() == []
    daemon.set_perms("@releaseDomain", ["n0", "r1"])
    guest(3)
    daemon.release_domain(3)
    assert watcher.take_events() == [("@releaseDomain", "rel")]


def test_root_watch_sees_everything_including_specials(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    dom0.ok(T.XS_WATCH, "/", "all")
    dom0.take_events()
    dom0.write("/z", "1")
    guest(9)
    assert dom0.take_events() == [("/z", "all"), ("@introduceDomain", "all")]


def test_release_removes_the_domains_watches(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    g = guest(6)
    daemon.write("/pub", "x", perms=["r0"])
    g.ok(T.XS_WATCH, "/pub", "t")
    g.take_events()
    daemon.release_domain(6)
    dom0.write("/pub", "y")
    daemon.introduce_domain(6, memoryview(g.page), g.notify)   # a fresh connection
    dom0.write("/pub", "z")
    assert g.take_events() == []


def test_reset_watches(daemon: Xenstored, dom0: ToolClient) -> None:
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/q", "t")
    tx = w.start()
    w.take_events()
    assert w.ok(T.XS_RESET_WATCHES, "") == b"OK\0"
    dom0.write("/q", "1")
    assert w.take_events() == []
    assert w.err(T.XS_READ, "/q", tx=tx) == "ENOENT"


def test_duplicate_pending_events_are_merged(daemon: Xenstored, dom0: ToolClient) -> None:
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/dup", "t")
    w.take_events()
    for i in range(5):
        daemon.write("/dup", str(i))
    assert w.take_events() == [("/dup", "t")]


def test_closed_connection_gets_no_events(daemon: Xenstored, dom0: ToolClient) -> None:
    w = ToolClient(daemon.tool_connection())
    w.ok(T.XS_WATCH, "/gone", "t")
    w.conn.close()
    dom0.write("/gone", "1")
    assert w.conn.closed
    assert w.conn.data_to_send() == b""
    w.conn.receive_data(b"\0" * 20)           # ignored after close
    assert w.conn.data_to_send() == b""
