"""Ops merged while local writes are under way: the stored documents stay equal
to a replay of the op log (found by the demo's own verify step)."""

from __future__ import annotations

import asyncio

from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import text_hash
from chrysalis_memory.recall.embedders import HashingEmbedder
from chrysalis_memory.recall.indexer import NewEmbedding
from tests.memory.conftest import OpenMemory


async def test_local_writes_racing_a_merge_lose_nothing(open_memory: OpenMemory) -> None:
    a = await open_memory("agent-a", embedder="hashing")
    b = await open_memory("agent-b", embedder="hashing")
    mid = await a.learn("shared note", importance=0.9)
    await b.merge_ops(await a.export_ops())
    for i in range(20):
        await b.reinforce(mid, evidence=[f"from b {i}"])
    from_b = [op for op in await b.export_ops() if op.writer == "agent-b"]
    # A writes to the same memory while B's ops for it are merged.
    await asyncio.gather(*(a.record_access(mid) for _ in range(5)), a.merge_ops(from_b))
    report = await a.verify()
    assert report.ok, report.problems
    doc = await a.get(mid)
    assert doc is not None
    assert {f"from b {i}" for i in range(20)} <= set(doc.evidence)
    assert doc.access_count == 5


async def test_an_embedding_made_here_keeps_one_received_for_the_same_text(
    open_memory: OpenMemory,
) -> None:
    a = await open_memory("agent-a", embedder="hashing")
    b = await open_memory("agent-b", embedder="hashing")
    text = "The staging database is restored every night."
    await b.learn(text, importance=0.9)
    await b.flush_index()  # B embeds the text and records it as an op
    mid = await a.learn(text, importance=0.9)
    embedded_by_b = [op for op in await b.export_ops() if op.doc.startswith("emb:")]
    assert embedded_by_b
    # The race, made deterministic: A's indexer decided to embed the text, and
    # B's embedding op for it arrives before A records its own.
    (vector,) = await HashingEmbedder().embed([text])
    await a.merge_ops(embedded_by_b)
    await a._write_embeddings([NewEmbedding(text_hash(text), vector, SyncStatus.PENDING)])
    report = await a.verify()
    assert report.ok, report.problems
    assert await a.embedding(mid) is not None
