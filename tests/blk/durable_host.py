"""A host process for the durability test: a frontend writes and flushes through blkback,
prints ACKED once the flush is acknowledged, then waits to be SIGKILLed."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blk.frontend import FakeFront, boot_front  # noqa: E402
from xenpy.abi.io import blkif as B  # noqa: E402
from xenpy.backends.blkback import BlkBack  # noqa: E402
from xenpy.hv.host import Host  # noqa: E402
from xenpy.testing import DomainFactory  # noqa: E402


def main(image: str, width: int, seed: int) -> None:
    host = Host(memory_mib=64)
    bb = BlkBack(host)
    g = boot_front(DomainFactory(host, []), width)
    f = FakeFront(g, bb, f"file:{image},xvda,w")
    f.attach()
    f.connect()
    refs = [f.grant_data(i) for i in range(8)]
    for i in range(8):
        f.data(i)[:] = bytes([(seed + i) & 0xFF]) * 4096
    st = f.do(f.rw(B.BLKIF_OP_WRITE, 16, [(r, 0, 7) for r in refs]),
              f.rw(B.BLKIF_OP_FLUSH_DISKCACHE, 0, []))
    print("ACKED" if st == [0, 0] else f"FAILED {st}", flush=True)
    sys.stdin.read()                     # wait for the kill


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
