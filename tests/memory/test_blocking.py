"""BlockingAgentMemory: the same behaviour without await, also inside a running loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from chrysalis_memory import AgentMemory, BlockingAgentMemory
from chrysalis_memory.errors import ClosedError, UnknownMemoryError


def test_blocking_api_round_trip(tmp_path: Path) -> None:
    with BlockingAgentMemory(agent_id="agent-a", data_dir=tmp_path, embedder="hashing") as mem:
        mid = mem.learn("plain code can use it", importance=0.9, tags=["sync"])
        mem.tag(mid, "extra")
        doc = mem.reinforce(mid, confidence=0.99)
        assert doc.tags == ["extra", "sync"]
        assert doc.confidence == 0.99
        assert [d.id for d in mem.list(tags=["sync"])] == [mid]
        assert [op.seq for op in mem.history(mid)] == [1, 2, 3]
        hits = mem.recall("what can plain code use", k=1)
        assert hits[0].memory.id == mid
        assert mem.verify().ok
        with pytest.raises(UnknownMemoryError):
            mem.update("ghost", content="x")
        root = mem.state_root()

    async def reopen() -> str:
        async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as again:
            return await again.state_root()

    assert asyncio.run(reopen()) == root  # the same store, whichever API wrote it


async def test_blocking_calls_work_inside_a_running_event_loop(tmp_path: Path) -> None:
    # As in Jupyter: the caller's loop is running; the memory uses its own.
    with BlockingAgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        mid = mem.learn("from inside a loop")
        doc = mem.get(mid)
        assert doc is not None
        assert doc.content == "from inside a loop"


def test_blocking_memory_must_be_opened(tmp_path: Path) -> None:
    mem = BlockingAgentMemory(agent_id="agent-unopened", data_dir=tmp_path)

    def loop_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "chrysalis-agent-unopened"]

    for moment in ("before open", "after close"):
        with pytest.raises(ClosedError) as raised:
            mem.learn("too early or too late")
        message = str(raised.value)
        # Advice for this class, not for AgentMemory's `async with`.
        assert "with BlockingAgentMemory(" in message, moment
        assert "async with" not in message, moment
        assert ".open()" in message, moment
        assert loop_threads() == [], moment  # and no event loop thread left running
        mem.open()
        mem.close()


def test_two_blocking_replicas_converge(tmp_path: Path) -> None:
    with (
        BlockingAgentMemory(agent_id="a", data_dir=tmp_path) as a,
        BlockingAgentMemory(agent_id="b", data_dir=tmp_path) as b,
    ):
        mid = a.learn("shared", importance=0.9)
        assert b.merge_ops(a.export_ops()) == 1
        b.record_access(mid)
        a.merge_ops(b.export_ops())
        assert a.state_root() == b.state_root()
