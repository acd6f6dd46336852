"""The guest ring: wrap-around, byte-by-byte input, flow control and hostile guests."""
from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpy.abi.io.xs_wire import (
    XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT, XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION,
    XSD_SOCKMSG, XsdSockmsgType as T,
)
from xenpy.backends.xenstored import Xenstored
from xenpy.backends.xenstored.protocol import Message, XsWireConnection
from xenpy.errors import ConfigError

from .conftest import (
    CONNECTION, ERROR, FEATURES, REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, FakeGuest, ToolClient,
)


def _setup(daemon: Xenstored, domid: int = 1) -> FakeGuest:
    daemon.mkdir(f"/local/domain/{domid}", perms=[f"n{domid}"])
    return FakeGuest(daemon, domid)


def test_features_advertised(daemon: Xenstored) -> None:
    g = _setup(daemon)
    assert g.get(FEATURES) == XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR


def test_request_reply_and_notify(daemon: Xenstored) -> None:
    g = _setup(daemon)
    before = g.notified
    g.write("k", "v")
    assert g.read("k") == b"v"
    assert g.notified > before
    assert g.get(REQ_CONS) == g.get(REQ_PROD)


def test_messages_across_the_wrap_byte_by_byte(daemon: Xenstored) -> None:
    g = _setup(daemon)
    # Start every index just before the 2**32 wrap and mid-ring.
    for off in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD):
        g.put(off, 0xFFFFFFFF - 700)
    g.chunk = 1
    value = "v" * 900          # each request and reply crosses the ring's end
    for i in range(4):
        g.write(f"wrap{i}", value)
        assert g.read(f"wrap{i}") == value.encode()
    assert g.get(REQ_PROD) < 0x10000          # the indices did wrap
    assert g.get(REQ_CONS) == g.get(REQ_PROD)


def test_one_kick_with_many_requests(daemon: Xenstored) -> None:
    g = _setup(daemon)
    wire = b"".join(XsWireConnection().send(Message(T.XS_WRITE, i, 0, f"m{i}\0x".encode()))
                    for i in range(30))
    replies = []
    pos = 0
    while pos < len(wire):
        pos += g.push(wire[pos:])
        daemon.ring_kick(1)
        g.parser.receive_data(g.pull())
        while (m := g.parser.next_event()) is not None and isinstance(m, Message):
            replies.append(m)
    assert [m.req_id for m in replies] == list(range(30))
    assert all(m.payload == b"OK\0" for m in replies)


def test_guest_that_never_reads_replies_is_flow_controlled(daemon: Xenstored) -> None:
    g = _setup(daemon)
    one = XsWireConnection().send(Message(T.XS_READ, 1, 0, b"/local/domain/1\0"))
    sent = 0
    for _ in range(200):            # keep pushing, never pull
        n = g.push(one)
        if n < len(one):
            break
        sent += 1
        daemon.ring_kick(1)
    conn = daemon._domains[1]
    assert conn.pending_replies() <= daemon.store.quotas.req_outstanding
    # the guest is now stuck on a full req ring; reading replies unblocks it
    got = 0
    parser = XsWireConnection()
    for _ in range(100):
        parser.receive_data(g.pull())
        daemon.ring_kick(1)
        while isinstance(parser.next_event(), Message):
            got += 1
        if got == sent:
            break
    assert got == sent


@pytest.mark.parametrize("prod_off,cons_off", [(REQ_PROD, REQ_CONS), (RSP_PROD, RSP_CONS)])
def test_bogus_indices_break_the_connection_only(daemon: Xenstored, dom0: ToolClient,
                                                 prod_off: int, cons_off: int) -> None:
    g = _setup(daemon)
    g2 = _setup(daemon, 2)
    g.ok(T.XS_WATCH, "/local/domain/1", "t")
    g.take_events()
    g.put(cons_off, 5)
    g.put(prod_off, 5 + 1025)                  # prod - cons > ring size
    daemon.ring_kick(1)                         # must not raise
    daemon.write("/local/domain/1/x", "1")      # watch event would need the rsp ring
    assert g.get(ERROR) == XENSTORE_ERROR_RINGIDX
    assert daemon._domains[1].broken
    daemon.ring_kick(1)                         # ignored from now on
    g2.write("still", "fine")                   # other domains are unaffected
    assert dom0.read("/local/domain/2/still") == b"fine"
    daemon.release_domain(1)                    # and the broken one can be released


def test_prod_behind_cons_is_bogus_until_reconnect(daemon: Xenstored) -> None:
    g = _setup(daemon)
    g.put(REQ_CONS, 100)
    g.put(REQ_PROD, 50)                         # negative distance = huge unsigned
    daemon.ring_kick(1)
    assert g.get(ERROR) == XENSTORE_ERROR_RINGIDX
    g.put(CONNECTION, XENSTORE_RECONNECT)       # the guest's way back
    daemon.ring_kick(1)
    assert (g.get(ERROR), g.get(CONNECTION)) == (XENSTORE_ERROR_NONE, XENSTORE_CONNECTED)
    assert g.read("/local/domain/1") == b""


def test_overlong_request_is_a_protocol_error(daemon: Xenstored) -> None:
    g = _setup(daemon)
    g.push(XSD_SOCKMSG.pack(T.XS_WRITE, 1, 0, 5000))
    daemon.ring_kick(1)
    assert g.get(ERROR) == XENSTORE_ERROR_PROTO
    assert g.pull() == b""


def test_garbage_types_get_error_replies(daemon: Xenstored) -> None:
    g = _setup(daemon)
    assert g.err(0xFFFF, "x") == "ENOSYS"
    assert g.err(T.XS_READ, raw=b"\xff\xfe") == "EINVAL"
    assert g.read("/local/domain/1") == b""


def test_reconnect_resets_the_connection(daemon: Xenstored) -> None:
    g = _setup(daemon)
    g.ok(T.XS_WATCH, "/local/domain/1", "t")
    tx = g.start()
    g.take_events()
    g.push(b"partial")                          # half a header in flight
    g.put(CONNECTION, XENSTORE_RECONNECT)
    notified = g.notified
    daemon.ring_kick(1)
    assert g.get(CONNECTION) == XENSTORE_CONNECTED
    assert g.get(ERROR) == XENSTORE_ERROR_NONE
    assert [g.get(o) for o in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD)] == [0, 0, 0, 0]
    assert g.notified > notified
    g.parser = XsWireConnection()
    assert g.err(T.XS_READ, "/local/domain/1", tx=tx) == "ENOENT"
    daemon.write("/local/domain/1/after", "1")
    assert g.take_events() == []


def test_introduce_validates_the_page(daemon: Xenstored) -> None:
    with pytest.raises(ConfigError, match="4096-byte"):
        daemon.introduce_domain(3, memoryview(bytearray(100)), lambda: None)
    with pytest.raises(ConfigError):
        daemon.introduce_domain(3, memoryview(bytes(4096)), lambda: None)


def test_requests_queued_before_introduction_are_served(daemon: Xenstored) -> None:
    g = FakeGuest(daemon, 8, introduce=False)
    g.push(XsWireConnection().send(Message(T.XS_GET_DOMAIN_PATH, 77, 0, b"8\0")))
    daemon.introduce_domain(8, memoryview(g.page), g.notify)
    assert g.notified == 1
    g.parser.receive_data(g.pull())
    assert g.parser.next_event() == Message(T.XS_GET_DOMAIN_PATH, 77, 0, b"/local/domain/8\0")


def test_kick_for_unknown_domain_is_ignored(daemon: Xenstored) -> None:
    daemon.ring_kick(42)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=3000), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_hostile_guest_never_crashes_the_daemon(junk: bytes, prod: int, cons: int) -> None:
    d = Xenstored()
    g = FakeGuest(d, 1)
    pos = 0
    while pos < len(junk):
        n = g.push(junk[pos:])
        pos += max(n, 1)
        d.ring_kick(1)
        g.pull()
    g.put(REQ_PROD, prod)
    g.put(RSP_CONS, cons)
    d.ring_kick(1)
    d.write("/x", "still alive")
    assert d.read("/x") == b"still alive"


def test_concurrent_ring_and_tools(daemon: Xenstored) -> None:
    """A vCPU thread kicking its ring while the tools write: the lock keeps it sane."""
    g = _setup(daemon)
    daemon.write("/local/domain/1/shared", "0", perms=["b1"])
    tools = ToolClient(daemon.tool_connection())
    errors: list[BaseException] = []

    def guest_loop() -> None:
        try:
            for i in range(200):
                g.write(f"g{i % 10}", str(i))
        except BaseException as err:  # reported to the main thread
            errors.append(err)

    t = threading.Thread(target=guest_loop)
    t.start()
    for i in range(200):
        tools.write(f"/tools/t{i % 10}", str(i))
    t.join(timeout=30)
    assert not t.is_alive() and not errors
    assert daemon.read("/local/domain/1/g9") == b"199"
    assert daemon.read("/tools/t9") == b"199"


def test_connection_io_state_moves_to_another_daemon(daemon: Xenstored) -> None:
    """What a save carries besides the page: half a request already taken from req, and
    replies that did not fit in rsp.  The new daemon completes both."""
    g = _setup(daemon)
    wire = XsWireConnection().send(Message(T.XS_WRITE, 7, 0, b"k\0v"))
    g.push(wire[:10])                         # half a request, consumed by the daemon
    daemon.ring_kick(1)
    assert g.get(REQ_CONS) == g.get(REQ_PROD)
    daemon._domains[1].queue(Message(T.XS_WATCH_EVENT, 0, 0, b"p\0t\0"))
    g.put(RSP_CONS, g.get(RSP_PROD) - 1024)   # rsp full: the event stays queued
    daemon.ring_kick(1)
    inbound, outbound = daemon.domain_io_state(1)
    assert inbound == wire[:10] and outbound.endswith(b"p\0t\0")
    page = bytes(g.page)
    other = Xenstored()
    other.mkdir("/local/domain/5", perms=["n5"])
    other.preload_io_state(5, inbound, outbound)
    g2 = FakeGuest(other, 5, introduce=False)
    g2.page[:] = page
    g2.put(RSP_CONS, g2.get(RSP_PROD))        # the guest has read the full ring meanwhile
    other.introduce_domain(5, memoryview(g2.page), g2.notify)
    assert g2.pull() == outbound               # the queued event arrives first
    g2.push(wire[10:])                         # the guest finishes its request
    other.ring_kick(5)
    parser = XsWireConnection()
    parser.receive_data(g2.pull())
    reply = parser.next_event()
    assert isinstance(reply, Message) and reply.req_id == 7 and reply.payload == b"OK\0"
    assert other.read("/local/domain/5/k") == b"v"


def test_restored_open_transaction_commits_with_eagain(daemon: Xenstored) -> None:
    """A transaction open when its domain was saved: the restored connection knows its id,
    reads and writes in it work, and its commit is a conflict (EAGAIN), so the guest
    retries; the retry commits."""
    g = _setup(daemon, 3)
    daemon.restore_transactions(3, [5], 9)
    assert g.request(T.XS_WRITE, raw=b"k\0v", tx=5).payload == b"OK\0"
    end = g.request(T.XS_TRANSACTION_END, "T", tx=5)
    assert end.type == T.XS_ERROR and end.payload == b"EAGAIN\0"
    assert not daemon.exists("/local/domain/3/k")
    tx = int(g.request(T.XS_TRANSACTION_START, "").payload.rstrip(b"\0"))
    assert tx == 9
    g.request(T.XS_WRITE, raw=b"k\0v", tx=tx)
    assert g.request(T.XS_TRANSACTION_END, "T", tx=tx).payload == b"OK\0"
    assert daemon.read("/local/domain/3/k") == b"v"
