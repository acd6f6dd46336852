"""Each request type through a dom0 tools connection, with its errors."""
from __future__ import annotations

import pytest

from xenpy.abi.io.xs_wire import XsdSockmsgType as T
from xenpy.backends.xenstored import Xenstored, XsError

from .conftest import FakeGuest, ToolClient


def test_initial_tree(dom0: ToolClient) -> None:
    assert dom0.ls("/") == ["tool"]
    assert dom0.ls("/tool") == ["xenstored"]
    assert dom0.ok(T.XS_GET_PERMS, "/") == b"n0\0"


def test_write_read_and_implicit_parents(dom0: ToolClient) -> None:
    dom0.write("/a/b/c", "hello")
    assert dom0.read("/a/b/c") == b"hello"
    assert dom0.read("/a/b") == b""
    assert dom0.ls("/") == ["tool", "a"]
    assert dom0.ls("/a") == ["b"]


def test_write_binary_value_and_overwrite(dom0: ToolClient) -> None:
    dom0.write("/v", b"\x00\x01\xff")
    assert dom0.read("/v") == b"\x00\x01\xff"
    dom0.write("/v", b"")
    assert dom0.read("/v") == b""


def test_read_missing_is_enoent(dom0: ToolClient) -> None:
    assert dom0.err(T.XS_READ, "/nope") == "ENOENT"
    assert dom0.err(T.XS_DIRECTORY, "/nope") == "ENOENT"
    assert dom0.err(T.XS_GET_PERMS, "/nope") == "ENOENT"


@pytest.mark.parametrize("path", ["/a//b", "/a/", "", "/a b", "/a\x7f", "/a*b", "/é"])
def test_invalid_paths_are_einval(dom0: ToolClient, path: str) -> None:
    assert dom0.err(T.XS_READ, raw=path.encode("latin-1") + b"\0") == "EINVAL"
    assert dom0.err(T.XS_WRITE, raw=path.encode("latin-1") + b"\0v") == "EINVAL"


def test_relative_path_of_tools_is_under_domain_0(dom0: ToolClient) -> None:
    dom0.write("rel/x", "1")
    assert dom0.read("/local/domain/0/rel/x") == b"1"
    assert dom0.read("rel/x") == b"1"


def test_path_length_limits(dom0: ToolClient) -> None:
    ok = "/" + "a" * 2047
    dom0.write(ok, "1")
    assert dom0.err(T.XS_READ, "/" + "a" * 2048) == "EINVAL"
    local = "/local/domain/5/" + "b" * 2048       # 2048 below the domain's home is fine
    dom0.write(local, "1")
    assert dom0.err(T.XS_WRITE, raw=b"/local/domain/5/" + b"b" * 2049 + b"\0x") == "EINVAL"


def test_missing_nul_and_extra_args_are_einval(dom0: ToolClient) -> None:
    assert dom0.err(T.XS_READ, raw=b"/tool") == "EINVAL"
    assert dom0.err(T.XS_READ, raw=b"/tool\0/x\0") == "EINVAL"
    assert dom0.err(T.XS_READ, raw=b"") == "EINVAL"
    assert dom0.err(T.XS_WRITE, raw=b"/novalue") == "EINVAL"
    assert dom0.err(T.XS_MKDIR, raw=b"/x") == "EINVAL"


def test_mkdir(dom0: ToolClient) -> None:
    dom0.write("/m", "keep")
    assert dom0.ok(T.XS_MKDIR, "/m") == b"OK\0"
    assert dom0.read("/m") == b"keep"
    assert dom0.ok(T.XS_MKDIR, "/m/n/o") == b"OK\0"
    assert dom0.read("/m/n/o") == b""


def test_rm(dom0: ToolClient) -> None:
    dom0.write("/r/a/b", "1")
    dom0.write("/r/c", "2")
    assert dom0.ok(T.XS_RM, "/r/a") == b"OK\0"
    assert dom0.ls("/r") == ["c"]
    assert dom0.err(T.XS_READ, "/r/a/b") == "ENOENT"
    # Removing what is not there is fine while the parent exists...
    assert dom0.ok(T.XS_RM, "/r/a") == b"OK\0"
    # ...and ENOENT when the parent is missing too.
    assert dom0.err(T.XS_RM, "/r/a/b") == "ENOENT"
    assert dom0.err(T.XS_RM, "/") == "EINVAL"


def test_rm_keeps_entry_accounting(daemon: Xenstored, dom0: ToolClient) -> None:
    before = dict(daemon.store.entries)
    dom0.write("/acc/a/b/c", "1")
    assert daemon.store.entries[0] == before[0] + 4
    dom0.ok(T.XS_RM, "/acc")
    assert daemon.store.entries == before


def test_get_set_perms(dom0: ToolClient) -> None:
    dom0.write("/p", "1")
    assert dom0.ok(T.XS_SET_PERMS, "/p", "b1", "r2", "w3", "n4") == b"OK\0"
    assert dom0.ok(T.XS_GET_PERMS, "/p") == b"b1\0r2\0w3\0n4\0"
    assert dom0.err(T.XS_SET_PERMS, "/p", "x1") == "EINVAL"
    assert dom0.err(T.XS_SET_PERMS, "/p") == "EINVAL"
    assert dom0.err(T.XS_SET_PERMS, "/missing", "n0") == "ENOENT"
    dom0.write("/p/child", "c")
    assert dom0.ok(T.XS_GET_PERMS, "/p/child") == b"b1\0r2\0w3\0n4\0"  # inherited


def test_directory_part(dom0: ToolClient) -> None:
    names = [f"child{i:04d}" for i in range(500)]      # ~5000 bytes: too big for DIRECTORY
    for n in names:
        dom0.ok(T.XS_MKDIR, f"/big/{n}")
    assert dom0.err(T.XS_DIRECTORY, "/big") == "E2BIG"
    got: list[bytes] = []
    offset = 0
    gens = set()
    while True:
        reply = dom0.ok(T.XS_DIRECTORY_PART, "/big", str(offset))
        gen, _, rest = reply.partition(b"\0")
        gens.add(gen)
        assert len(reply) <= 4096
        parts = rest.split(b"\0")
        if rest.endswith(b"\0\0") or rest == b"\0":
            got.extend(p for p in parts if p)
            break
        chunk = [p for p in parts[:-1]]
        got.extend(chunk)
        offset += sum(len(c) + 1 for c in chunk)
    assert [g.decode() for g in got] == names
    assert len(gens) == 1
    assert dom0.err(T.XS_DIRECTORY_PART, "/big") == "EINVAL"


def test_unknown_and_reply_only_types(dom0: ToolClient) -> None:
    assert dom0.err(99, "x") == "ENOSYS"
    assert dom0.err(T.XS_WATCH_EVENT, "x") == "ENOSYS"
    assert dom0.err(T.XS_ERROR, "x") == "ENOSYS"
    assert dom0.err(20, "x") == "ENOSYS"   # XS_RESTRICT, removed


def test_error_reply_echoes_ids(dom0: ToolClient) -> None:
    reply = dom0.request(T.XS_READ, "/nope")
    assert reply is not None and reply.type == T.XS_ERROR
    assert reply.req_id == dom0.req_id and reply.payload == b"ENOENT\0"


def test_domain_queries(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    assert dom0.ok(T.XS_GET_DOMAIN_PATH, "7") == b"/local/domain/7\0"
    assert dom0.ok(T.XS_IS_DOMAIN_INTRODUCED, "7") == b"F\0"
    assert dom0.ok(T.XS_IS_DOMAIN_INTRODUCED, "0") == b"T\0"
    guest(7)
    assert dom0.ok(T.XS_IS_DOMAIN_INTRODUCED, "7") == b"T\0"
    assert dom0.ok(T.XS_RESUME, "7") == b"OK\0"
    assert dom0.err(T.XS_RESUME, "8") == "ENOENT"
    assert dom0.err(T.XS_RELEASE, "0") == "EINVAL"
    assert dom0.ok(T.XS_RELEASE, "7") == b"OK\0"
    assert dom0.ok(T.XS_IS_DOMAIN_INTRODUCED, "7") == b"F\0"
    assert dom0.err(T.XS_RELEASE, "7") == "ENOENT"


def test_introduce_over_the_wire_uses_the_ring_mapper() -> None:
    pages: dict[int, bytearray] = {}
    calls = []

    def map_ring(domid: int, mfn: int, port: int):
        calls.append((domid, mfn, port))
        pages[domid] = bytearray(4096)
        return memoryview(pages[domid]), lambda: None

    d = Xenstored(map_ring=map_ring)
    tools = ToolClient(d.tool_connection())
    tools.ok(T.XS_WATCH, "@introduceDomain", "tok")
    assert tools.take_events() == [("@introduceDomain", "tok")]
    assert tools.ok(T.XS_INTRODUCE, "3", "1234", "5") == b"OK\0"
    assert calls == [(3, 1234, 5)]
    assert tools.take_events() == [("@introduceDomain", "tok")]
    assert d.is_domain_introduced(3)
    # Re-introduction over the wire resets the domain's connection (domain_conn_reset).
    guest = FakeGuest(d, 3, introduce=False)
    guest.page = pages[3]
    guest.ok(T.XS_WATCH, "/", "g")
    assert guest.take_events() == [("/", "g")]
    assert tools.ok(T.XS_INTRODUCE, "3", "1234", "5") == b"OK\0"
    assert len(calls) == 1 and tools.take_events() == []
    assert guest.get(0x800) == guest.get(0x804) == 0     # req_cons, req_prod
    guest.parser = guest.parser.__class__()
    tools.write("/after", "1")
    assert guest.take_events() == []
    assert tools.err(T.XS_INTRODUCE, "3", "1234", "0") == "EINVAL"
    assert tools.err(T.XS_INTRODUCE, "0", "1", "5") == "EINVAL"
    assert tools.err(T.XS_INTRODUCE, "3", "1") == "EINVAL"
    # without a mapper a standalone daemon cannot introduce anyone
    assert ToolClient(Xenstored().tool_connection()).err(T.XS_INTRODUCE, "3", "1", "5") == "ENOSYS"


def test_control(dom0: ToolClient) -> None:
    assert b"print" in dom0.ok(T.XS_CONTROL, "help")
    assert dom0.err(T.XS_CONTROL, "bogus") == "EINVAL"


def test_dom0_helpers(daemon: Xenstored) -> None:
    daemon.write("/h/x", "v", perms=["n0", "r3"])
    assert daemon.read("/h/x") == b"v"
    assert daemon.get_perms("/h/x") == ["n0", "r3"]
    assert daemon.directory("/h") == ["x"]
    assert daemon.exists("/h/x") and not daemon.exists("/h/y")
    daemon.mkdir("/h/d", perms=["b5"])
    assert daemon.get_perms("/h/d") == ["b5"]
    daemon.rm("/h")
    with pytest.raises(XsError) as info:
        daemon.read("/h/x")
    assert info.value.name == "ENOENT"
    with pytest.raises(XsError) as info:
        daemon.write("bad//path", "x")
    assert info.value.name == "EINVAL"
    assert daemon.get_perms("@releaseDomain") == ["n0"]
