"""Fixtures for AgentMemory tests: real SQLite files in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from chrysalis_memory import AgentMemory

OpenMemory = Callable[..., Any]


@pytest.fixture
async def open_memory(tmp_path: Path) -> AsyncIterator[OpenMemory]:
    """Open AgentMemory replicas under ``tmp_path``; all are closed at the end."""
    async with AsyncExitStack() as stack:

        async def factory(agent_id: str = "agent-a", **fields: Any) -> AgentMemory:
            fields.setdefault("data_dir", tmp_path)
            return await stack.enter_async_context(AgentMemory(agent_id=agent_id, **fields))

        yield factory


@pytest.fixture
async def mem(open_memory: OpenMemory) -> AgentMemory:
    memory: AgentMemory = await open_memory("agent-a")
    return memory
