"""Reconnection delays: exponential, capped, fully jittered."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.sync.client import Backoff


@given(failures=st.integers(min_value=0, max_value=10_000), draw=st.floats(0, 1))
def test_a_delay_is_within_zero_and_the_capped_exponential(failures: int, draw: float) -> None:
    backoff = Backoff(base_s=0.2, cap_s=30.0)
    delay = backoff.delay(failures, rand=lambda: draw)
    assert 0 <= delay <= min(30.0, 0.2 * 2 ** min(failures, 30))
    assert delay == pytest.approx(draw * min(30.0, 0.2 * 2 ** min(failures, 30)))


def test_agents_cut_off_together_do_not_come_back_together() -> None:
    backoff = Backoff()
    rng = random.Random(7)
    delays = [backoff.delay(6, rand=rng.random) for _ in range(200)]
    assert len({round(d, 3) for d in delays}) > 150  # spread out, not synchronised
    assert max(delays) <= 12.8 and min(delays) >= 0
