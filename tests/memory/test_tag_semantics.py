"""Tags are an observed-remove set through the facade: an add wins over a
concurrent remove, including a re-add of a tag the memory already has.

The property plays scripts of ``tag``/``untag`` calls and one-way syncs on two
real replicas (SQLite files, ops shipped with ``history``/``merge_ops``) and
compares the outcome with a reference OR-Set in which every ``tag`` call is an
add event and every ``untag`` removes the add events its replica has seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chrysalis_memory import AgentMemory

TAGS = ("k", "j")
REPLICAS = ("a", "b")

Step = tuple[str, str, Any]
"""("tag" | "untag", replica, tags) or ("send", from_replica, to_replica)."""

tag_steps = st.tuples(
    st.sampled_from(("tag", "untag")),
    st.sampled_from(REPLICAS),
    st.lists(st.sampled_from(TAGS), min_size=1, max_size=2),  # duplicates in one call too
)
send_steps = st.sampled_from([("send", "a", "b"), ("send", "b", "a")])
scripts = st.lists(tag_steps | send_steps, max_size=14)


@dataclass
class ModelReplica:
    """A reference OR-Set replica: add events seen and add events removed, per tag."""

    adds: dict[str, set[int]] = field(default_factory=lambda: {t: set() for t in TAGS})
    removed: dict[str, set[int]] = field(default_factory=lambda: {t: set() for t in TAGS})

    def live(self) -> list[str]:
        return sorted(t for t in TAGS if self.adds[t] - self.removed[t])

    def receive(self, other: ModelReplica) -> None:
        for t in TAGS:
            self.adds[t] |= other.adds[t]
            self.removed[t] |= other.removed[t]


@pytest.fixture
def replicas(
    tmp_path: Path,
) -> Iterator[tuple[asyncio.AbstractEventLoop, dict[str, AgentMemory]]]:
    """Two open replicas shared by every example (each example uses a new memory)."""
    loop = asyncio.new_event_loop()
    memories: dict[str, AgentMemory] = {}
    try:
        for name in REPLICAS:
            memory = AgentMemory(agent_id=f"agent-{name}", data_dir=tmp_path, embedder="hashing")
            memories[name] = loop.run_until_complete(memory.open())
        yield loop, memories
    finally:
        for memory in memories.values():
            loop.run_until_complete(memory.close())
        loop.close()


async def play(
    memories: dict[str, AgentMemory], initial: list[str], script: list[Step]
) -> tuple[dict[str, list[str]], dict[str, list[str]], set[str]]:
    """Run ``script``; returns the tags each replica shows, what the model says,
    and the tags some replica (re)added after it last sent its ops."""
    a, b = memories["a"], memories["b"]
    mid = await a.learn("a memory to tag", tags=initial)
    await b.merge_ops(await a.history(mid))
    model = {name: ModelReplica() for name in REPLICAS}
    events = iter(range(1_000_000))
    for t in initial:
        event = next(events)
        for replica in model.values():
            replica.adds[t].add(event)
    readded_unsent: dict[str, set[str]] = {name: set() for name in REPLICAS}

    async def send(source: str, target: str) -> None:
        await memories[target].merge_ops(await memories[source].history(mid))
        model[target].receive(model[source])
        readded_unsent[source].clear()

    for step in script:
        if step[0] == "send":
            await send(step[1], step[2])
            continue
        action, name, tags = step
        replica = model[name]
        if action == "tag":
            await memories[name].tag(mid, *tags)
            for t in set(tags):
                replica.adds[t].add(next(events))
                readded_unsent[name].add(t)
        else:
            await memories[name].untag(mid, *tags)
            for t in set(tags):
                replica.removed[t] |= replica.adds[t]  # observed-remove
                readded_unsent[name].discard(t)
    survivors = readded_unsent["a"] | readded_unsent["b"]
    await send("a", "b")
    await send("b", "a")
    shown = {}
    for name, memory in memories.items():
        doc = await memory.get(mid)
        assert doc is not None
        shown[name] = doc.tags
    return shown, {name: r.live() for name, r in model.items()}, survivors


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # shared on purpose
)
@given(
    # Often start with every tag present, so that re-adds are common.
    initial=st.just(list(TAGS)) | st.lists(st.sampled_from(TAGS), max_size=2),
    script=scripts,
)
@example(initial=["k"], script=[("tag", "a", ["k"]), ("untag", "b", ["k"])])  # issue 12
def test_a_tag_added_after_the_last_sync_survives_a_concurrent_untag(
    replicas: tuple[asyncio.AbstractEventLoop, dict[str, AgentMemory]],
    initial: list[str],
    script: list[Step],
) -> None:
    loop, memories = replicas
    shown, expected, survivors = loop.run_until_complete(play(memories, initial, script))
    assert shown["a"] == shown["b"]  # converged
    assert set(survivors) <= set(shown["a"])  # add wins over every concurrent remove
    assert shown["a"] == expected["a"] == expected["b"]  # exactly the OR-Set's answer


async def test_a_re_tag_wins_over_a_concurrent_untag(tmp_path: Path) -> None:
    """The smallest case the property finds, spelled out."""
    async with (
        AgentMemory(agent_id="agent-a", data_dir=tmp_path) as a,
        AgentMemory(agent_id="agent-b", data_dir=tmp_path) as b,
    ):
        mid = await a.learn("fact", tags=["k"])
        await b.merge_ops(await a.export_ops())
        retagged = await a.tag(mid, "k")  # A says "k" again...
        assert retagged.version == 2  # ...which is an add of its own
        await b.untag(mid, "k")  # ...while B, not having seen it, removes "k"
        await a.merge_ops(await b.export_ops())
        await b.merge_ops(await a.export_ops())
        for replica in (a, b):
            doc = await replica.get(mid)
            assert doc is not None
            assert doc.tags == ["k"]
