"""An agent with no hub keeps its shared memories `pending` (docs/concepts.md,
"Sync status"): opened later with a hub, it pushes them with nothing else to do."""

from __future__ import annotations

from pathlib import Path

from chrysalis_memory import AgentMemory
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.recall.embedders import HashingEmbedder
from tests.hub.conftest import OpenAgent, StartHub
from tests.waiting import wait_until


async def test_pending_without_a_hub_means_pushed_once_there_is_one(
    tmp_path: Path, start_hub: StartHub, open_agent: OpenAgent
) -> None:
    data_dir = tmp_path / "agents"
    async with AgentMemory(agent_id="agent-a", data_dir=data_dir, embedder=HashingEmbedder()) as a:
        shared = await a.learn("shared with the collective", importance=0.9)
        private = await a.learn("short-term", importance=0.1)
        assert a.sync_state() is None  # no hub: nothing to ask
        shown = {mid: (await a.get(mid)).sync_status for mid in (shared, private)}  # type: ignore[union-attr]
        assert shown == {shared: SyncStatus.PENDING, private: SyncStatus.LOCAL}

    hub = await start_hub()
    a = await open_agent("agent-a", hub, data_dir=data_dir)  # the same store, now with a hub

    async def pushed() -> bool:
        doc = await a.get(shared)
        return doc is not None and doc.sync_status is SyncStatus.SYNCED

    await wait_until(pushed, timeout=20, what="the pending memory to be pushed")  # no sync_now
    assert hub.head >= 1
    assert (await a.get(private)).sync_status is SyncStatus.LOCAL  # type: ignore[union-attr]
