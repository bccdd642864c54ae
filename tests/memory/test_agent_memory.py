"""The AgentMemory API (ARCHITECTURE §4) on a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chrysalis_memory import AgentMemory, MemoryDocument, MemoryType, SyncStatus
from chrysalis_memory.errors import UnknownMemoryError
from tests.memory.conftest import OpenMemory


async def test_learn_then_get_returns_every_field(mem: AgentMemory) -> None:
    before = time.time()
    mid = await mem.learn(
        "The capital of France is Paris.",
        importance=0.9,
        confidence=0.7,
        memory_type="semantic",
        tags=["geo", "europe"],
        evidence=["atlas"],
        related=["other-1"],
        parents=["parent-1"],
        metadata={"source": "wiki", "page": 12},
    )
    doc = await mem.get(mid)
    assert isinstance(doc, MemoryDocument)
    assert doc.id == mid
    assert doc.content == "The capital of France is Paris."
    assert doc.memory_type is MemoryType.SEMANTIC
    assert doc.tags == ["europe", "geo"]
    assert (doc.importance, doc.confidence) == (0.9, 0.7)
    assert doc.evidence == ["atlas"]
    assert doc.related_memories == ["other-1"]
    assert doc.parent_memories == ["parent-1"]
    assert doc.metadata == {"source": "wiki", "page": 12}
    assert doc.source_instance == "agent-a"
    assert doc.access_count == 0
    assert doc.version == 1
    assert before - 1 <= doc.created_at <= time.time() + 1
    assert doc.updated_at == doc.created_at
    assert doc.forgotten is False


async def test_document_serialises_with_underscore_id(mem: AgentMemory) -> None:
    mid = await mem.learn("fact")
    doc = await mem.get(mid)
    assert doc is not None
    dumped = doc.model_dump(mode="json")
    assert dumped["_id"] == mid
    assert "id" not in dumped
    assert MemoryDocument.model_validate(dumped) == doc


async def test_get_unknown_id_is_none(mem: AgentMemory) -> None:
    assert await mem.get("no-such-memory") is None


async def test_update_is_last_writer_wins_and_bumps_version(mem: AgentMemory) -> None:
    mid = await mem.learn("draft")
    await mem.update(mid, content="final", memory_type="procedural", metadata={"k": 1})
    doc = await mem.update(mid, metadata={"j": 2})
    assert doc.content == "final"
    assert doc.memory_type is MemoryType.PROCEDURAL
    assert doc.metadata == {"j": 2, "k": 1}
    assert doc.version == 3
    assert doc.updated_at >= doc.created_at


async def test_tag_and_untag(mem: AgentMemory) -> None:
    mid = await mem.learn("fact", tags=["a"])
    await mem.tag(mid, "b", "c")
    doc = await mem.untag(mid, "a", "c")
    assert doc.tags == ["b"]


async def test_tagging_an_existing_tag_writes_an_add_and_untagging_a_missing_one_nothing(
    mem: AgentMemory,
) -> None:
    mid = await mem.learn("fact", tags=["a"])
    doc = await mem.tag(mid, "a")  # a fresh add, so it wins over a concurrent untag
    assert (doc.tags, doc.version) == (["a"], 2)
    doc = await mem.untag(mid, "never-there")
    assert doc.version == 2


async def test_reinforce_only_increases(mem: AgentMemory) -> None:
    mid = await mem.learn("fact", importance=0.6, confidence=0.6)
    doc = await mem.reinforce(mid, importance=0.8, evidence=["seen twice"])
    assert (doc.importance, doc.confidence, doc.evidence) == (0.8, 0.6, ["seen twice"])
    doc = await mem.reinforce(mid, importance=0.1, confidence=0.2)
    assert (doc.importance, doc.confidence) == (0.8, 0.6)
    assert doc.version == 2  # the lower values changed nothing, so no op was written


async def test_link_related_and_parents(mem: AgentMemory) -> None:
    a = await mem.learn("a")
    b = await mem.learn("b")
    c = await mem.learn("c")
    await mem.link(a, b)
    doc = await mem.link(a, c, relation="parent")
    assert doc.related_memories == [b]
    assert doc.parent_memories == [c]


async def test_record_access_counts_up(mem: AgentMemory) -> None:
    mid = await mem.learn("fact")
    await mem.record_access(mid)
    doc = await mem.record_access(mid, 3)
    assert doc.access_count == 4


async def test_forget_hides_but_keeps(mem: AgentMemory) -> None:
    mid = await mem.learn("secret", tags=["x"])
    await mem.forget(mid)
    assert await mem.get(mid) is None
    assert await mem.list() == []
    kept = await mem.get(mid, include_forgotten=True)
    assert kept is not None and kept.forgotten and kept.content == "secret"
    assert len(await mem.history(mid)) == 2
    with pytest.raises(UnknownMemoryError, match="forgotten"):
        await mem.update(mid, content="again")
    await mem.forget(mid)  # forgetting twice is a no-op
    assert len(await mem.history(mid)) == 2


async def test_list_filters(mem: AgentMemory) -> None:
    a = await mem.learn("a", memory_type="semantic", tags=["x", "y"])
    b = await mem.learn("b", memory_type="episodic", tags=["x"])
    c = await mem.learn("c", memory_type="semantic", tags=["y"])
    assert [d.id for d in await mem.list()] == [c, b, a]  # newest first
    assert {d.id for d in await mem.list(memory_type="semantic")} == {a, c}
    assert {d.id for d in await mem.list(tags=["x"])} == {a, b}
    assert {d.id for d in await mem.list(tags=["x", "y"])} == {a}
    assert [d.id for d in await mem.list(limit=1)] == [c]
    assert [d.id for d in await mem.list(limit=1, offset=1)] == [b]
    assert {d.id for d in await mem.list(source="agent-a")} == {a, b, c}
    assert await mem.list(source="someone-else") == []
    assert len(await mem.list(since=time.time() - 60, until=time.time() + 60)) == 3
    assert await mem.list(since=time.time() + 60) == []


async def test_history_is_oldest_first_and_unknown_raises(mem: AgentMemory) -> None:
    mid = await mem.learn("v1")
    await mem.update(mid, content="v2")
    await mem.tag(mid, "t")
    history = await mem.history(mid)
    assert [op.seq for op in history] == [1, 2, 3]
    assert [op.writer for op in history] == ["agent-a"] * 3
    assert history[1].parents == (history[0].cid,)  # the Merkle clock links each op to its heads
    with pytest.raises(UnknownMemoryError):
        await mem.history("nope")


async def test_learn_with_existing_id_merges(mem: AgentMemory) -> None:
    mid = await mem.learn("first", memory_id="fixed-id", tags=["a"], importance=0.4)
    again = await mem.learn("second", memory_id="fixed-id", tags=["b"], importance=0.3)
    assert again == mid == "fixed-id"
    doc = await mem.get(mid)
    assert doc is not None
    assert doc.content == "second"
    assert doc.tags == ["a", "b"]
    assert doc.importance == 0.4


async def test_two_replicas_converge(open_memory: OpenMemory) -> None:
    a = await open_memory("agent-a")
    b = await open_memory("agent-b")
    mid = await a.learn("shared fact", importance=0.9, tags=["t"])
    assert await b.merge_ops(await a.export_ops()) == 1
    await a.update(mid, content="edited by a")
    await b.update(mid, content="edited by b")
    await b.untag(mid, "t")
    await a.tag(mid, "u")
    await a.record_access(mid)
    await b.record_access(mid, 2)
    await b.merge_ops(await a.export_ops())
    await a.merge_ops(await b.export_ops())
    doc_a, doc_b = await a.get(mid), await b.get(mid)
    assert doc_a is not None and doc_b is not None
    assert doc_a.model_dump(exclude={"sync_status"}) == doc_b.model_dump(exclude={"sync_status"})
    assert doc_a.access_count == 3  # concurrent accesses add up
    assert doc_a.tags == ["u"]  # b removed the tag it had observed; a's new tag survives
    assert doc_a.content == "edited by b"  # b's write came later (its clock saw a's)
    assert await a.state_root() == await b.state_root()
    assert (await a.verify()).ok and (await b.verify()).ok


async def test_merge_is_idempotent_and_reports_new_ops(open_memory: OpenMemory) -> None:
    a = await open_memory("agent-a")
    b = await open_memory("agent-b")
    await a.learn("one")
    await a.learn("two")
    ops = await a.export_ops()
    assert await b.merge_ops(ops) == 2
    assert await b.merge_ops(ops) == 0
    assert await b.merge_ops([op.encoded for op in ops] + [ops[0].to_dict()]) == 0
    assert await b.merge_ops([]) == 0


async def test_received_ops_advance_the_local_clock(open_memory: OpenMemory) -> None:
    a = await open_memory("agent-a")
    b = await open_memory("agent-b")
    mid = await a.learn("x")
    await b.merge_ops(await a.export_ops())
    await b.update(mid, content="after seeing a")
    history = await b.history(mid)
    assert history[-1].hlc > history[0].hlc
    assert history[-1].parents == (history[0].cid,)


async def test_state_survives_reopen(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        mid = await mem.learn("durable", tags=["t"])
        await mem.update(mid, content="durable v2")
        root = await mem.state_root()
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        doc = await mem.get(mid)
        assert doc is not None and doc.content == "durable v2"
        assert await mem.state_root() == root
        await mem.tag(mid, "more")
        assert [op.seq for op in await mem.history(mid)] == [1, 2, 3]  # numbering resumes


async def test_in_memory_store_writes_nothing_to_disk(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="scratch", data_dir=tmp_path, store_enabled=False) as mem:
        mid = await mem.learn("ephemeral")
        assert await mem.get(mid) is not None
        assert (await mem.verify()).ok
    assert list(tmp_path.iterdir()) == []


async def test_promotion_keeps_short_term_memories_local(mem: AgentMemory) -> None:
    low = await mem.learn("a passing thought", importance=0.3)
    high = await mem.learn("an important fact", importance=0.9)
    low_doc, high_doc = await mem.get(low), await mem.get(high)
    assert low_doc is not None and high_doc is not None
    assert low_doc.sync_status is SyncStatus.LOCAL
    assert high_doc.sync_status is SyncStatus.PENDING
    await mem.update(low, content="still a passing thought")
    promoted = await mem.reinforce(low, importance=0.8)
    assert promoted.sync_status is SyncStatus.PENDING
    counts = await mem.store.counts()
    assert counts["ops_local"] == 0  # the whole history was queued on promotion
    assert counts["ops_pending"] == 4  # two learns, the update, the reinforce


async def test_promotion_disabled_shares_everything(open_memory: OpenMemory) -> None:
    mem = await open_memory("agent-p", promotion_enabled=False)
    mid = await mem.learn("minor", importance=0.1)
    doc = await mem.get(mid)
    assert doc is not None and doc.sync_status is SyncStatus.PENDING


async def test_sync_status_moves_to_synced(mem: AgentMemory) -> None:
    mid = await mem.learn("fact", importance=0.9)
    cids = [op.cid for op in await mem.history(mid)]
    await mem.store.set_status(cids, SyncStatus.RETRY)
    doc = await mem.get(mid)
    assert doc is not None and doc.sync_status is SyncStatus.RETRY
    assert await mem.store.sync_attempts(cids) == {cids[0]: 1}
    await mem.store.set_status(cids, SyncStatus.SYNCED)
    doc = await mem.get(mid)
    assert doc is not None and doc.sync_status is SyncStatus.SYNCED
    await mem.update(mid, content="changed")
    doc = await mem.get(mid)
    assert doc is not None and doc.sync_status is SyncStatus.PENDING


async def test_concurrent_writes_in_one_process_keep_sequence_order(mem: AgentMemory) -> None:
    import asyncio

    ids = await asyncio.gather(*(mem.learn(f"fact {i}") for i in range(50)))
    mid = ids[0]
    await asyncio.gather(*(mem.record_access(mid) for _ in range(20)))
    doc = await mem.get(mid)
    assert doc is not None and doc.access_count == 20
    seqs = sorted(op.seq for op in await mem.export_ops())
    assert seqs == list(range(1, 71))
    assert (await mem.verify()).ok
