"""The hub's agent registry: what each agent pushed and saw, and its lag."""

from __future__ import annotations

from chrysalis_memory.hub.registry import Registry
from tests.sync.helpers import make_ops


def test_pushes_and_sightings_are_recorded_and_lag_is_the_distance_to_the_head() -> None:
    registry = Registry()
    registry.connected("agent-a", cursor=3)
    registry.connected("agent-b", cursor=0)
    ops = make_ops("agent-a", 4)
    registry.stored(ops)
    registry.saw("agent-a", 7)
    registry.saw("agent-a", 5)  # an older position never moves it back
    a = registry.get("agent-a")
    assert (a.pushed_ops, a.pushed_seq, a.pushed_cid, a.seen) == (4, 4, ops[-1].cid, 7)
    assert registry.lag(head=10) == {"agent-a": 3, "agent-b": 10}
    registry.disconnected("agent-b")
    assert registry.lag(head=10) == {"agent-a": 3}  # only connected agents lag


def test_a_dump_loads_back_with_nobody_connected() -> None:
    registry = Registry()
    registry.connected("agent-a", cursor=2)
    registry.stored(make_ops("agent-a", 2))
    assert registry.dirty
    text = registry.dump()
    assert not registry.dirty
    loaded = Registry.load(text)
    clock = loaded.get("agent-a")
    assert (clock.pushed_ops, clock.pushed_seq, clock.seen, clock.connections) == (2, 2, 2, 0)
    assert len(Registry.load(None)) == 0


def test_a_damaged_saved_registry_loads_empty_instead_of_stopping_the_hub() -> None:
    registry = Registry()
    registry.stored(make_ops("agent-a", 2))
    text = registry.dump()
    for damaged in (text[:-3] + "\x07" + text[-2:], '{"agent_id": 1}', "[1, 2]", '[{"x": 1}]'):
        assert len(Registry.load(damaged)) == 0
