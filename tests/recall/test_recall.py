"""AgentMemory.recall: hybrid search over real SQLite FTS5 and a real Chroma cache."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from chrysalis_memory import AgentMemory, RecallHit, SyncStatus
from chrysalis_memory.errors import InvalidArgumentError
from chrysalis_memory.recall.embedders import HashingEmbedder
from tests.waiting import wait_until

FACTS = {
    "paris": "The capital of France is Paris.",
    "backup": "The staging database is restored every night at 02:00 UTC.",
    "style": "The user prefers concise explanations with code examples.",
    "retry": "Retry flaky HTTP calls with exponential backoff and jitter.",
    "acme": "Customer ACME-4471 renews its contract in March.",
}

Open = Callable[..., Any]


@pytest.fixture
async def open_agent(tmp_path: Path) -> AsyncIterator[Open]:
    async with AsyncExitStack() as stack:

        async def factory(agent_id: str = "agent-a", **fields: Any) -> AgentMemory:
            fields.setdefault("data_dir", tmp_path)
            fields.setdefault("embedder", "hashing")
            memory = AgentMemory(agent_id=agent_id, **fields)
            return await stack.enter_async_context(memory)

        yield factory


async def learn_facts(mem: AgentMemory, **kwargs: Any) -> dict[str, str]:
    return {
        key: await mem.learn(text, importance=0.9, memory_type="semantic", tags=[key], **kwargs)
        for key, text in FACTS.items()
    }


async def test_recall_finds_a_paraphrase_first(open_agent: Open) -> None:
    mem = await open_agent()
    ids = await learn_facts(mem)
    hits = await mem.recall("When is the staging DB restored each night?", k=3)
    assert [type(h) for h in hits] == [RecallHit] * 3
    assert hits[0].memory.id == ids["backup"]
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert 0 < hits[0].relevance <= 1
    assert hits[0].similarity > hits[-1].similarity
    assert "chrysalis-hashing-v1-2048" in mem.embedder_choice


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
async def test_every_mode_finds_an_exact_match(open_agent: Open, mode: str) -> None:
    mem = await open_agent()
    ids = await learn_facts(mem)
    hits = await mem.recall("ACME-4471 contract renewal", k=2, mode=mode)  # type: ignore[arg-type]
    assert hits[0].memory.id == ids["acme"]


async def test_recall_sees_what_was_just_learned(open_agent: Open) -> None:
    mem = await open_agent()
    await learn_facts(mem)
    await mem.recall("warm up the index")
    fresh = await mem.learn("The office cat is called Biscuit.", importance=0.9)
    hits = await mem.recall("what is the cat's name", k=1)
    assert hits[0].memory.id == fresh


async def test_filters_restrict_results(open_agent: Open) -> None:
    mem = await open_agent()
    ids = await learn_facts(mem)
    other = await mem.learn(
        "The staging database password rotates monthly.", memory_type="procedural", tags=["ops"]
    )
    query = "staging database"
    assert {h.memory.id for h in await mem.recall(query, k=10, tags=["backup"])} == {ids["backup"]}
    assert {h.memory.id for h in await mem.recall(query, k=10, memory_type="procedural")} == {other}
    assert await mem.recall(query, k=10, source="someone-else") == []
    assert await mem.recall(query, k=10, since=time.time() + 60) == []
    hits = await mem.recall(query, k=10, until=time.time() + 60, source="agent-a")
    assert {ids["backup"], other} <= {h.memory.id for h in hits}


async def test_forgotten_and_rewritten_memories(open_agent: Open) -> None:
    mem = await open_agent()
    ids = await learn_facts(mem)
    await mem.forget(ids["paris"])
    await mem.update(ids["retry"], content="Never retry payment calls automatically.")
    assert ids["paris"] not in {h.memory.id for h in await mem.recall("capital of France", k=10)}
    hits = await mem.recall("retry payment calls", k=1)
    assert hits[0].memory.id == ids["retry"]
    assert hits[0].memory.content.startswith("Never retry")


async def test_recall_counts_accesses(open_agent: Open) -> None:
    mem = await open_agent()
    ids = await learn_facts(mem)
    first = await mem.recall("capital of France", k=1)
    assert first[0].memory.access_count == 1
    await mem.recall("capital of France", k=1)
    doc = await mem.get(ids["paris"])
    assert doc is not None
    assert doc.access_count == 2
    await mem.recall("capital of France", k=1, record_access=False)
    doc = await mem.get(ids["paris"])
    assert doc is not None
    assert doc.access_count == 2
    assert (await mem.verify()).ok


async def test_the_same_text_is_embedded_once(open_agent: Open) -> None:
    mem = await open_agent()
    await mem.learn("Identical text.", importance=0.9)
    await mem.learn("Identical text.", importance=0.9)
    await mem.recall("identical")
    embeddings = [op for op in await mem.export_ops() if op.doc_type == "embedding"]
    assert len(embeddings) == 1


async def test_embeddings_travel_with_memories(open_agent: Open) -> None:
    a = await open_agent("agent-a")
    b = await open_agent("agent-b")
    ids = await learn_facts(a)
    await a.recall("anything")  # a embeds its memories
    await b.merge_ops(await a.export_ops())
    hits = await b.recall("When is the staging DB restored each night?", k=1)
    assert hits[0].memory.id == ids["backup"]
    own = [op for op in await b.export_ops() if op.writer == "agent-b"]
    assert [op.doc_type for op in own] == ["memory"]  # only the access count: no re-embedding


async def test_a_replica_with_another_embedder_embeds_received_text(open_agent: Open) -> None:
    a = await open_agent("agent-a")
    b = await open_agent("agent-b", embedder=HashingEmbedder(dimensions=256))
    ids = await learn_facts(a)
    await a.recall("anything")
    await b.merge_ops(await a.export_ops())
    hits = await b.recall("When is the staging DB restored each night?", k=1)
    assert hits[0].memory.id == ids["backup"]
    made = {
        op.patch.model
        for op in await b.export_ops()
        if op.doc_type == "embedding" and op.writer == "agent-b"
    }  # type: ignore[union-attr]
    assert made == {"chrysalis-hashing-v1-256"}


async def test_short_term_embeddings_stay_local_until_promoted(open_agent: Open) -> None:
    mem = await open_agent()
    mid = await mem.learn("A passing thought about lunch.", importance=0.2)
    await mem.recall("lunch", record_access=False)
    counts = await mem.store.counts()
    assert counts["ops_pending"] == 0  # the memory and its embedding are both local
    await mem.reinforce(mid, importance=0.9)
    await mem.recall("lunch", record_access=False)
    counts = await mem.store.counts()
    assert counts["ops_local"] == 0
    doc = await mem.get(mid)
    assert doc is not None
    assert doc.sync_status is SyncStatus.PENDING


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": ""}, "query must not be empty"),
        ({"query": "   "}, "query must not be empty"),
        ({"query": 42}, "query must be a string"),
        ({"query": "x", "k": 0}, "k must be a whole number from 1 to 1000"),
        ({"query": "x", "k": -3}, "k must be a whole number"),
        ({"query": "x", "k": 2.5}, "k must be a whole number"),
        ({"query": "x", "mode": "psychic"}, "mode must be hybrid, vector or keyword"),
        ({"query": "x", "memory_type": "dream"}, "memory_type must be one of"),
    ],
)
async def test_bad_recall_arguments(open_agent: Open, kwargs: dict[str, Any], message: str) -> None:
    mem = await open_agent()
    with pytest.raises(InvalidArgumentError, match=message):
        await mem.recall(**kwargs)


async def test_index_survives_restart_and_reindex(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path, embedder="hashing") as mem:
        ids = await learn_facts(mem)
        await mem.recall("warm up")
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path, embedder="hashing") as mem:
        hits = await mem.recall("capital of France", k=1)
        assert hits[0].memory.id == ids["paris"]
        progress: list[tuple[int, int]] = []
        indexed = await mem.reindex(lambda done, total: progress.append((done, total)))
        assert indexed > 0
        assert progress[-1][0] == progress[-1][1]
        hits = await mem.recall("capital of France", k=1)
        assert hits[0].memory.id == ids["paris"]


async def test_deleted_vector_cache_is_rebuilt(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path, embedder="hashing") as mem:
        ids = await learn_facts(mem)
        await mem.recall("warm up")
    import shutil

    shutil.rmtree(tmp_path / "agent-a" / "vectors")
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path, embedder="hashing") as mem:
        hits = await mem.recall("When is the staging DB restored each night?", k=1, mode="vector")
        assert hits[0].memory.id == ids["backup"]


async def test_background_indexing_catches_up(
    open_agent: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chrysalis_memory.recall.indexer as indexer

    monkeypatch.setattr(indexer, "IDLE_DELAY_S", 0.05)
    mem = await open_agent()
    await mem.recall("start the index")
    await learn_facts(mem)
    index = await mem._recall_index()

    async def caught_up() -> bool:
        return await index.lag() == 0

    await wait_until(caught_up, what="the background indexer catching up")


async def test_vector_cache_deleted_while_running_is_rebuilt(tmp_path: Path) -> None:
    import shutil

    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path, embedder="hashing") as mem:
        ids = await learn_facts(mem)
        await mem.recall("warm up")
        shutil.rmtree(tmp_path / "agent-a" / "vectors")
        hits = await mem.recall("When is the staging DB restored each night?", k=1, mode="vector")
        assert hits[0].memory.id == ids["backup"]
        assert (tmp_path / "agent-a" / "vectors").is_dir()


async def test_the_keyword_index_size_kept_in_memory_matches_a_count(open_agent: Open) -> None:
    mem = await open_agent()
    ids = await learn_facts(mem)
    await mem.recall("capital of France")  # the size is known from here on
    await mem.forget(ids["paris"])
    await mem.update(ids["retry"], content="Never retry payment calls automatically.")
    await mem.learn("One more fact about the office cat.", importance=0.9)
    await mem.recall("office cat")
    assert mem.store._text_rows == await mem.store.text_index_size() == len(FACTS)
