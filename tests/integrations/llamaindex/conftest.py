"""Fixtures for the LlamaIndex adapters: real agent stores in tmp_path, a real hub on
loopback, and a deterministic embed model (no model downloads, no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from llama_index.vector_stores.chrysalis import ChrysalisVectorStore, LlamaIndexEmbedder

from chrysalis_memory import AgentMemory
from chrysalis_memory.config import HubConfig
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.recall.embedders import HashingEmbedder

from .support import WordEmbedding

MakeStore = Callable[..., ChrysalisVectorStore]


@pytest.fixture(autouse=True)
def _no_chrysalis_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapters read CHRYSALIS_* for what they are not given: start from nothing, with
    the offline embedder for memories that pick their own."""
    import os

    for name in list(os.environ):
        if name.startswith(("CHRYSALIS_", "FIREPROOF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHRYSALIS_EMBEDDER", "hashing")


@pytest.fixture
def embed_model() -> WordEmbedding:
    return WordEmbedding()


@pytest.fixture
async def make_store(tmp_path: Path, embed_model: WordEmbedding) -> AsyncIterator[MakeStore]:
    """Stores of agents under ``tmp_path`` (``agent-a`` unless told), closed at the end."""
    stores: list[ChrysalisVectorStore] = []

    def factory(**kwargs: Any) -> ChrysalisVectorStore:
        if "memory" not in kwargs and "config" not in kwargs:
            kwargs.setdefault("agent_id", "agent-a")
            kwargs.setdefault("data_dir", tmp_path / "agents")
        if kwargs.get("embeddings", "node") == "node":
            kwargs.setdefault("embed_model", embed_model)
        store = ChrysalisVectorStore(**kwargs)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.aclose()


@pytest.fixture
async def memory(tmp_path: Path, embed_model: WordEmbedding) -> AsyncIterator[AgentMemory]:
    """Agent a's memory, open on the test's loop, indexing in the embed model's space."""
    async with AgentMemory(
        agent_id="agent-a",
        data_dir=tmp_path / "agents",
        embedder=LlamaIndexEmbedder(embed_model),
    ) as opened:
        yield opened


@pytest.fixture
async def store(make_store: MakeStore, memory: AgentMemory) -> ChrysalisVectorStore:
    return make_store(memory=memory)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A real hub on a loopback port (as in tests/hub/conftest.py)."""
    config = HubConfig(data_dir=tmp_path / "hub", websocket_port=0, http_port=0)
    async with Hub(config, embedder=HashingEmbedder()) as running:
        yield running


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits
