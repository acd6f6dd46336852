"""Session-wide test setup: the xenpy.testing fixtures, and the bundled guests built once."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["xenpy.testing", "pytester"]

GUESTS = Path(__file__).resolve().parent.parent / "guests"


@pytest.fixture(scope="session")
def bundled_guests() -> Path:
    """guests/build, running `make -C guests` first if no guest is built yet."""
    build = GUESTS / "build"
    if not any(build.glob("*-x86_32.elf")):
        if shutil.which("make") is None:
            pytest.fail("guests/build is missing and `make` is not installed")
        done = subprocess.run(["make", "-C", str(GUESTS)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"`make -C guests` failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return build


@pytest.fixture(params=[32, 64], ids=["pv32", "pv64"])
def width(request) -> int:
    """Each guest width in turn (directories with other width values override it)."""
    return request.param
