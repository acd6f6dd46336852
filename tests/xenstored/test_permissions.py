"""Permissions: owners, per-domain entries, defaults, dom0, and what errors reveal."""
from __future__ import annotations

from xenpy.abi.io.xs_wire import XsdSockmsgType as T
from xenpy.backends.xenstored import Xenstored

from .conftest import ToolClient


def _homes(daemon: Xenstored, *domids: int) -> None:
    for d in domids:
        daemon.mkdir(f"/local/domain/{d}", perms=[f"n{d}"])


def test_domain_cannot_touch_another_domains_nodes(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    _homes(daemon, 1, 2)
    a, b = guest(1), guest(2)
    a.write("secret", "a-only")
    assert a.read("secret") == b"a-only"
    assert a.read("/local/domain/1/secret") == b"a-only"
    assert b.err(T.XS_READ, "/local/domain/1/secret") == "EACCES"
    assert b.err(T.XS_WRITE, raw=b"/local/domain/1/secret\0evil") == "EACCES"
    assert b.err(T.XS_WRITE, raw=b"/local/domain/1/new\0evil") == "EACCES"
    assert b.err(T.XS_RM, "/local/domain/1/secret") == "EACCES"
    assert b.err(T.XS_DIRECTORY, "/local/domain/1") == "EACCES"
    assert b.err(T.XS_SET_PERMS, "/local/domain/1/secret", "b2") == "EACCES"
    assert b.err(T.XS_GET_PERMS, "/local/domain/1/secret") == "EACCES"
    # A missing node under an unreadable parent is EACCES, not ENOENT: no information leaks.
    assert b.err(T.XS_READ, "/local/domain/1/nothing") == "EACCES"
    assert a.err(T.XS_READ, "/local/domain/1/nothing") == "ENOENT"
    # dom0 sees and changes everything.
    assert dom0.read("/local/domain/1/secret") == b"a-only"
    dom0.write("/local/domain/1/secret", "dom0 was here")
    assert a.read("secret") == b"dom0 was here"


def test_domain_creates_nodes_it_owns(daemon: Xenstored, guest) -> None:
    daemon.mkdir("/shared", perms=["n0", "b1"])
    a = guest(1)
    a.write("/shared/x/y", "1")
    assert a.ok(T.XS_GET_PERMS, "/shared/x/y") == b"n1\0b1\0"
    assert a.ok(T.XS_GET_PERMS, "/shared/x") == b"n1\0b1\0"
    assert daemon.get_perms("/shared") == ["n0", "b1"]
    assert daemon.store.entries[1] == 2


def test_read_only_and_default_permissions(daemon: Xenstored, guest) -> None:
    daemon.write("/ro", "public", perms=["r0"])        # owner dom0, everyone may read
    daemon.write("/listed", "x", perms=["n0", "r2"])   # only domain 2 may read
    a, b = guest(1), guest(2)
    assert a.read("/ro") == b"public"
    assert a.err(T.XS_WRITE, raw=b"/ro\0x") == "EACCES"
    assert a.err(T.XS_READ, "/listed") == "EACCES"
    assert b.read("/listed") == b"x"
    daemon.write("/wo", "x", perms=["n0", "w1"])
    a.write("/wo", "written")
    assert a.err(T.XS_READ, "/wo") == "EACCES"
    assert daemon.read("/wo") == b"written"


def test_only_dom0_changes_owner(daemon: Xenstored, guest) -> None:
    _homes(daemon, 1)
    a = guest(1)
    a.write("mine", "1")
    assert a.ok(T.XS_SET_PERMS, "mine", "n1", "r2") == b"OK\0"
    assert a.err(T.XS_SET_PERMS, "mine", "n2") == "EPERM"
    daemon.set_perms("/local/domain/1/mine", ["n2"])
    assert daemon.get_perms("/local/domain/1/mine") == ["n2"]
    assert daemon.store.entries[2] == 1
    assert a.err(T.XS_READ, "mine") == "EACCES"


def test_writer_without_ownership_cannot_set_perms(daemon: Xenstored, guest) -> None:
    daemon.write("/w", "x", perms=["n0", "b1"])
    a = guest(1)
    assert a.err(T.XS_SET_PERMS, "/w", "n0", "b1") == "EACCES"


def test_privileged_operations_refused_to_guests(daemon: Xenstored, guest) -> None:
    a = guest(1)
    for op, args in [(T.XS_INTRODUCE, ("2", "1", "1")), (T.XS_RELEASE, ("2",)),
                     (T.XS_RESUME, ("2",)), (T.XS_SET_TARGET, ("1", "2")),
                     (T.XS_IS_DOMAIN_INTRODUCED, ("1",)), (T.XS_CONTROL, ("help",))]:
        assert a.err(op, *args) == "EACCES", op
    assert a.ok(T.XS_GET_DOMAIN_PATH, "1") == b"/local/domain/1\0"


def test_set_target_grants_the_targets_rights(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    _homes(daemon, 1, 2)
    stubdom, target = guest(1), guest(2)
    target.write("data", "t")
    assert stubdom.err(T.XS_READ, "/local/domain/2/data") == "EACCES"
    assert dom0.ok(T.XS_SET_TARGET, "1", "2") == b"OK\0"
    assert stubdom.read("/local/domain/2/data") == b"t"
    assert dom0.err(T.XS_SET_TARGET, "1", "9") == "ENOENT"


def test_special_node_permissions(daemon: Xenstored, dom0: ToolClient, guest) -> None:
    a = guest(1)
    assert a.err(T.XS_GET_PERMS, "@releaseDomain") == "EACCES"
    assert a.err(T.XS_SET_PERMS, "@releaseDomain", "r1") == "EACCES"
    assert dom0.ok(T.XS_SET_PERMS, "@releaseDomain", "n0", "r1") == b"OK\0"
    assert a.ok(T.XS_GET_PERMS, "@releaseDomain") == b"n0\0r1\0"
    assert dom0.err(T.XS_SET_PERMS, "@bogus", "n0") == "EINVAL"
