"""Fixtures for the LangChain adapter tests: real agent stores under tmp_path, an
offline embedder, and a real hub on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from langchain_chrysalis import ChrysalisEmbeddings

from chrysalis_memory.config import HubConfig
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.recall.embedders import HashingEmbedder

StartHub = Callable[..., Awaitable[Hub]]

# The classic chains are deprecated upstream (LangChain 1.0) but remain what
# ChrysalisMemory plugs into.
DEPRECATED_CHAINS = "ignore::langchain_core._api.deprecation.LangChainDeprecationWarning"


@pytest.fixture
def embedding() -> ChrysalisEmbeddings:
    """Meaningful offline embeddings (the hashing embedder): no model, no network."""
    return ChrysalisEmbeddings(HashingEmbedder(512))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "agents"


@pytest.fixture
async def start_hub(tmp_path: Path) -> AsyncIterator[StartHub]:
    """Start hubs on free loopback ports (closed at the end of the test)."""
    async with AsyncExitStack() as stack:

        async def factory(**fields: Any) -> Hub:
            fields.setdefault("data_dir", tmp_path / "hub")
            fields.setdefault("websocket_port", 0)
            fields.setdefault("http_port", 0)
            fields.setdefault("embedder", "hashing")
            hub = Hub(HubConfig(**fields), embedder=HashingEmbedder(512))
            return await stack.enter_async_context(hub)

        yield factory
