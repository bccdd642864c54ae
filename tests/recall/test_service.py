"""RecallService builds its index once, whoever asks first and however many ask."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chrysalis_memory.recall.embedders import HashingEmbedder
from chrysalis_memory.recall.service import RecallService
from chrysalis_memory.store import ListQuery, OpStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OpStore]:
    store = OpStore(tmp_path / "memory.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def index_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "chrysalis-recall-index"]


async def test_concurrent_first_searches_build_one_index(store: OpStore, tmp_path: Path) -> None:
    service = RecallService(store, embedder=HashingEmbedder(), vector_dir=tmp_path / "vectors")
    try:
        indexes = await asyncio.gather(*(service.index() for _ in range(20)))
        assert len({id(index) for index in indexes}) == 1
        assert len(index_tasks()) == 1  # no orphaned background indexer
    finally:
        await service.close()
    assert index_tasks() == []


async def test_first_searches_cancelled_mid_build_leave_nothing_broken(
    store: OpStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The vector cache's opening is held at a gate, so the waiters are cancelled
    # while the build is surely under way, whatever the speed of the machine.
    from chrysalis_memory.recall.vectors import ChromaVectorCache

    real_open = ChromaVectorCache.open
    opened: list[object] = []
    opening, gate = asyncio.Event(), asyncio.Event()

    async def gated_open(self: ChromaVectorCache) -> None:
        opened.append(self)
        opening.set()
        await gate.wait()
        await real_open(self)

    monkeypatch.setattr(ChromaVectorCache, "open", gated_open)
    service = RecallService(store, embedder=HashingEmbedder(), vector_dir=tmp_path / "vectors")
    try:
        waiters = [
            asyncio.create_task(service.search("anything", 5, "hybrid", ListQuery()))
            for _ in range(5)
        ]
        await opening.wait()
        for waiter in waiters:
            waiter.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        gate.set()
        assert await service.search("anything", 5, "hybrid", ListQuery()) == []
        assert len(opened) == 1  # the one build went on and was used
        assert len(index_tasks()) == 1
    finally:
        gate.set()
        await service.close()
    assert index_tasks() == []
