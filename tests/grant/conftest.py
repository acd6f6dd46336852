"""Two domains of one width that share pages through grants (see tests/mm/world.py)."""
import pytest

from mm.world import boot


@pytest.fixture(autouse=True)
def _guests_built(bundled_guests):
    return bundled_guests


@pytest.fixture
def pair(domain_factory, width):
    """(A, B): A has a one-frame grant table; B maps what A grants."""
    a = boot(domain_factory, width=width, name="a")
    b = boot(domain_factory, width=width, name="b")
    a.setup_grant_table(1)
    return a, b
