"""pingpong: two domains find each other through XenStore and exchange n events over
an interdomain event channel, in every width pairing; two runs on deterministic hosts
print byte-identical consoles."""
from __future__ import annotations

import pytest

from .conftest import WIDTHS


def start_pair(boot_fn, ping_width: str, pong_width: str, n: int):
    ping = boot_fn("pingpong", ping_width, f"role=ping n={n}")
    pong = boot_fn("pingpong", pong_width, f"role=pong peer={ping.domain.domid} n={n}")
    return ping, pong


def check_pair(ping, pong, n: int) -> None:
    a, b = ping.domain, pong.domain
    assert f"pingpong: ping d{a.domid}, pong is d{b.domid}, port " in ping.console
    assert f"pingpong: pong d{b.domid}, ping is d{a.domid}, remote port " in pong.console
    for run in (ping, pong):
        assert run.lines[-1] == f"pingpong: PASS {n}", run.console
        assert run.shutdown_reason.name == "poweroff"


@pytest.mark.parametrize("ping_width, pong_width",
                         [(w1, w2) for w1 in WIDTHS for w2 in WIDTHS])
def test_pingpong(boot, xen_host, ping_width, pong_width):
    n = 60
    ping, pong = start_pair(boot, ping_width, pong_width, n)
    assert xen_host.run([ping.domain, pong.domain], timeout=30), "pingpong did not finish"
    check_pair(ping, pong, n)
    # The rendezvous went through the ping side's own subtree, with its permissions.
    home = f"/local/domain/{ping.domain.domid}/data"
    assert xen_host.xenstored.read(f"{home}/pingpong-peer") == str(pong.domain.domid).encode()
    assert xen_host.xenstored.get_perms(f"{home}/pingpong-port") == [
        f"n{ping.domain.domid}", f"r{pong.domain.domid}"]


def test_pong_started_first(boot, xen_host):
    """The pong side may come up before ping has published anything: it waits on
    watches.  (Domain ids are handed out in order, so ping's is known in advance.)"""
    pong = boot("pingpong", "x86_64", "role=pong peer=2 n=5")
    assert not pong.run(timeout=0.5), "pong should wait for its peer"
    ping = boot("pingpong", "x86_32", "role=ping n=5")
    assert ping.domain.domid == 2
    assert xen_host.run([ping.domain, pong.domain], timeout=30)
    check_pair(ping, pong, 5)


def test_pong_without_peer_fails(boot):
    run = boot("pingpong", "x86_64", "role=pong n=3")
    assert run.run(timeout=30)
    assert run.lines[-1] == "pingpong: FAIL (role=pong needs peer=<ping's domid>)"
    assert run.shutdown_reason.name == "crash"


def test_deterministic_consoles(new_host):
    """Same guests, same deterministic host setup: the same bytes on both consoles."""
    consoles = []
    for _ in range(2):
        host, factory = new_host(deterministic=True)
        from .conftest import GUESTS
        build = GUESTS / "build"
        ping = factory(build / "pingpong-x86_32.elf", memory_mib=8, cmdline="role=ping n=40")
        pong = factory(build / "pingpong-x86_64.elf", memory_mib=8,
                       cmdline=f"role=pong peer={ping.domain.domid} n=40")
        assert host.run([ping.domain, pong.domain], timeout=30)
        check_pair(ping, pong, 40)
        consoles.append((bytes(ping.domain.console_log), bytes(pong.domain.console_log),
                         host.clock.now()))
    assert consoles[0] == consoles[1]
