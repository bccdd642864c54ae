"""Public recall accessors the framework adapters build on, and re-learning a
forgotten memory."""

from __future__ import annotations

import pytest

from chrysalis_memory.errors import UnknownMemoryError
from chrysalis_memory.recall.embedders import HashingEmbedder
from tests.memory.conftest import OpenMemory


async def test_learning_a_forgotten_id_brings_it_back(open_memory: OpenMemory) -> None:
    mem = await open_memory("agent-a", embedder="hashing")
    mid = await mem.learn("first life", memory_id="note-1", importance=0.9)
    await mem.forget(mid)
    assert await mem.get(mid) is None
    assert await mem.recall("first life", record_access=False) == []
    await mem.learn("second life", memory_id="note-1", importance=0.9)
    doc = await mem.get(mid)
    assert doc is not None and doc.content == "second life" and not doc.forgotten
    hits = await mem.recall("second life", record_access=False)
    assert [h.memory.id for h in hits] == [mid]
    # A replica that saw the forget and the re-learn in any order agrees.
    other = await open_memory("agent-b", embedder="hashing")
    await other.merge_ops(reversed(await mem.export_ops()))
    assert await other.state_root() == await mem.state_root()
    assert (await other.get(mid)).content == "second life"  # type: ignore[union-attr]


async def test_flush_index_embedding_model_and_embedding(open_memory: OpenMemory) -> None:
    mem = await open_memory("agent-a", embedder="hashing")
    mid = await mem.learn("The capital of France is Paris.", importance=0.9)
    assert await mem.embedding_model() == HashingEmbedder().model
    assert await mem.flush_index() > 0
    assert await mem.flush_index() == 0  # nothing new
    vector = await mem.embedding(mid)
    (expected,) = await HashingEmbedder().embed(["The capital of France is Paris."])
    assert vector == pytest.approx(expected, abs=1e-6)
    await mem.update(mid, content="The capital of Italy is Rome.")
    assert await mem.embedding(mid) is None  # the new content is not embedded yet
    await mem.flush_index()
    assert await mem.embedding(mid) is not None
    with pytest.raises(UnknownMemoryError):
        await mem.embedding("no-such-memory")
