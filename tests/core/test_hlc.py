"""The hybrid logical clock never goes backwards, whatever the wall clock does.

ARCHITECTURE §5: wall-clock time alone loses writes under skew. The HLC must be
strictly monotonic across ``now()`` calls while the physical clock skews,
stalls and jumps backwards; after ``observe(r)`` the next ``now()`` is above
``r``; and it tracks physical time whenever physical time is ahead.
"""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.crdt import HLC, HybridClock
from chrysalis_memory.crdt.hlc import system_ms

from .strategies import LAWS, ManualClock, hlcs

# A physical clock that moves by small steps (forwards, stalls, backwards) or
# jumps (NTP corrections, suspend/resume) in either direction.
physical_moves = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([0, 0, 0]),
    st.integers(-100_000, 100_000),
)
events = st.lists(
    st.one_of(
        st.tuples(st.just("now"), physical_moves),
        st.tuples(st.just("observe"), hlcs),
    ),
    min_size=1,
    max_size=60,
)


@LAWS
@given(start=st.integers(0, 10**6), script=events)
def test_hlc_is_strictly_monotonic_and_above_everything_observed(
    start: int, script: list[tuple[str, object]]
) -> None:
    physical = ManualClock(start)
    clock = HybridClock(physical=physical)
    issued: list[HLC] = []
    seen: list[HLC] = []  # every timestamp issued or observed
    max_physical = -1
    for kind, arg in script:
        if kind == "observe":
            assert isinstance(arg, HLC)
            clock.observe(arg)
            seen.append(arg)
            assert clock.last >= arg
            continue
        assert isinstance(arg, int)
        physical.ms = max(0, physical.ms + arg)
        max_physical = max(max_physical, physical.ms)
        stamp = clock.now()
        assert isinstance(stamp, HLC)
        if issued:
            assert stamp > issued[-1], "now() went backwards or repeated"
        assert all(stamp > s for s in seen), "now() is not above a timestamp already seen"
        # Never behind the wall clock, and never further ahead than the largest
        # wall time seen (physical or remote): it only runs ahead by counting.
        assert stamp.wall_ms >= physical.ms
        assert stamp.wall_ms == max([max_physical] + [s.wall_ms for s in seen])
        assert clock.last == stamp
        issued.append(stamp)
        seen.append(stamp)


@LAWS
@given(
    start=st.integers(0, 10**6),
    steps=st.lists(st.integers(1, 1000), min_size=1, max_size=30),
    remote=hlcs,
)
def test_hlc_follows_physical_time_when_it_moves_forward(
    start: int, steps: list[int], remote: HLC
) -> None:
    physical = ManualClock(start)
    clock = HybridClock(physical=physical)
    clock.observe(HLC(min(remote.wall_ms, start), remote.counter))  # a remote from the past
    for step in steps:
        physical.ms += step
        assert clock.now() == HLC(physical.ms, 0)


@LAWS
@given(remote=hlcs, lag=st.integers(0, 10**6))
def test_after_observing_a_remote_stamp_now_is_greater(remote: HLC, lag: int) -> None:
    """A local write made after seeing a remote one wins over it, even if the
    local wall clock is behind the remote writer's."""
    clock = HybridClock(physical=ManualClock(max(0, remote.wall_ms - lag)))
    clock.observe(remote)
    after = clock.now()
    assert after > remote
    clock.observe(HLC(0, 0))  # observing the past changes nothing
    assert clock.now() > after


def test_stalled_clock_counts_up_and_resets_when_time_moves() -> None:
    physical = ManualClock(1000)
    clock = HybridClock(physical=physical)
    assert [clock.now() for _ in range(3)] == [HLC(1000, 0), HLC(1000, 1), HLC(1000, 2)]
    physical.ms = 900  # the wall clock is set back by 100 ms
    assert clock.now() == HLC(1000, 3)
    physical.ms = 1001
    assert clock.now() == HLC(1001, 0)


def test_observe_far_future_then_local_clock_catches_up() -> None:
    physical = ManualClock(1000)
    clock = HybridClock(physical=physical)
    clock.observe(HLC(5000, 7))  # a peer whose clock runs ahead
    assert clock.now() == HLC(5000, 8)
    physical.ms = 6000
    assert clock.now() == HLC(6000, 0)


def test_clock_restored_from_last_never_repeats_a_stamp() -> None:
    """After a restart the clock resumes above the last stamp it issued."""
    before = HybridClock(physical=ManualClock(2000))
    last = before.now()
    after = HybridClock(physical=ManualClock(1500), last=last)  # wall clock went back
    assert after.now() > last


def test_default_physical_clock_is_wall_time_in_ms() -> None:
    low = time.time_ns() // 1_000_000
    reading = system_ms()
    stamp = HybridClock().now()
    high = time.time_ns() // 1_000_000
    assert low <= reading <= high
    assert low <= stamp.wall_ms <= high
