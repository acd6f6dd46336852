"""Hypothesis drives random mmu_update / mmuext_op / update_va_mapping / ptwr / grant
sequences; after every call the frame table must recount exactly (no frame both
writable and a page table, no lost or extra reference), no call may raise, and undoing
the sequence (or destroying the actor) brings the counts back to the baseline.
The benchmark (benchmarks/mm_bench.py) runs the same engine for >= 10^5 calls."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzz import N_KINDS, Fuzzer, World

OPS = st.lists(st.tuples(st.integers(0, N_KINDS - 1), st.integers(0, 255),
                         st.integers(0, 255), st.integers(0, 7)), min_size=1, max_size=50)


@pytest.mark.parametrize("width", [32, 64], ids=["pv32", "pv64"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_random_sequences_keep_the_invariants(bundled_guests, width, ops):
    with World(width) as w:
        f = Fuzzer(w.a, w.b)
        for op in ops:
            f.op(*op)
            f.check()
        f.undo()
        f.destroy_actor()
