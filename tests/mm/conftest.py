"""Domains built from the bundled guests, driven hypercall by hypercall."""
import pytest

from .world import boot


@pytest.fixture(autouse=True)
def _guests_built(bundled_guests):
    return bundled_guests


@pytest.fixture
def pair(domain_factory, width):
    """(attacker, victim): two domains of the same width on one host."""
    a = boot(domain_factory, width=width, name="a")
    b = boot(domain_factory, width=width, name="b")
    return a, b
