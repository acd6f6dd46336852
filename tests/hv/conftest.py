"""Every test here boots the bundled guests: build them first if needed."""
import pytest


@pytest.fixture(autouse=True)
def _guests_built(bundled_guests):
    return bundled_guests
