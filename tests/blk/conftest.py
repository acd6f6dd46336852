"""blkback tests: a fake blkfront in Python, driving the ring in a real domain's memory."""
import pytest

from xenpy.backends.blkback import BlkBack


@pytest.fixture(autouse=True)
def _guests_built(bundled_guests):
    return bundled_guests


@pytest.fixture
def blkback(xen_host):
    bb = BlkBack(xen_host)
    yield bb
    bb.close()


@pytest.fixture
def image(tmp_path):
    """A 4 MiB sparse raw image."""
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(4 << 20)
    return p
