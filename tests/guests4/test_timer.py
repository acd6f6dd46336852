"""The timer guest: periodic VIRQ_TIMER ticks through event upcalls and SCHEDOP_block."""
from __future__ import annotations

import re

import pytest

from .conftest import WIDTHS

SUMMARY = re.compile(r"timer: (\d+) ticks in (\d+) ns, (\d+) upcalls")


def check_timer_run(run, m: int, period_ns: int) -> None:
    assert run.lines[-1] == f"timer: PASS {m} ticks", run.console
    assert run.shutdown_reason.name == "poweroff"
    found = [SUMMARY.fullmatch(line) for line in run.lines]
    summary = next(s for s in found if s)
    ticks, elapsed, upcalls = (int(g) for g in summary.groups())
    assert ticks >= m
    assert elapsed >= m * period_ns
    assert upcalls >= 1


@pytest.mark.parametrize("width", WIDTHS)
def test_periodic_ticks(boot, width):
    run = boot("timer", width, "m=8 period_us=2000")
    assert run.run(timeout=30), "timer did not shut down"
    assert "timer: m=8 period_ns=2000000" in run.lines
    check_timer_run(run, 8, 2_000_000)


@pytest.mark.parametrize("width", WIDTHS)
def test_long_period_skips_idle_time(boot, width):
    """50 ms ticks: on the virtual clock an idle (blocked) guest's time is skipped, so
    the run is quick in wall time while the guest sees 5 * 50 ms pass."""
    run = boot("timer", width, "m=5 period_us=50000")
    assert run.run(timeout=30), "timer did not shut down"
    check_timer_run(run, 5, 50_000_000)


def test_bad_parameters_fail(boot):
    run = boot("timer", "x86_64", "m=0")
    assert run.run(timeout=30)
    assert run.lines[-1] == "timer: FAIL (m and period_us must be positive)"
    assert run.shutdown_reason.name == "crash"
