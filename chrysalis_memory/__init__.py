"""Chrysalis: collective, conflict-free memory for AI agents.

Every agent keeps a local replica (an SQLite op log) that works offline;
every field of every memory is a CRDT, so replicas merge without locks or
coordination and converge to the same state.

The names below are imported on first use, so that importing a light part of
the package (the ``chrysalis`` command line, ``chrysalis_memory.errors``) does
not import pydantic, SQLite, Chroma and the network stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chrysalis_memory.blocking import BlockingAgentMemory
    from chrysalis_memory.config import AgentMemoryConfig, GossipConfig, HubConfig
    from chrysalis_memory.errors import ChrysalisError
    from chrysalis_memory.memory import AgentMemory
    from chrysalis_memory.model import (
        DocumentType,
        EmbeddingDocument,
        MemoryDocument,
        MemoryType,
        Op,
        RecallHit,
        SyncStatus,
    )
    from chrysalis_memory.store.verify import VerifyReport

__version__ = "0.1.0"

# Each public name, and the module it lives in.
_LAZY: dict[str, str] = {
    "AgentMemory": "chrysalis_memory.memory",
    "AgentMemoryConfig": "chrysalis_memory.config",
    "BlockingAgentMemory": "chrysalis_memory.blocking",
    "ChrysalisError": "chrysalis_memory.errors",
    "DocumentType": "chrysalis_memory.model",
    "EmbeddingDocument": "chrysalis_memory.model",
    "GossipConfig": "chrysalis_memory.config",
    "HubConfig": "chrysalis_memory.config",
    "MemoryDocument": "chrysalis_memory.model",
    "MemoryType": "chrysalis_memory.model",
    "Op": "chrysalis_memory.model",
    "RecallHit": "chrysalis_memory.model",
    "SyncStatus": "chrysalis_memory.model",
    "VerifyReport": "chrysalis_memory.store.verify",
}

__all__ = [
    "AgentMemory",
    "AgentMemoryConfig",
    "BlockingAgentMemory",
    "ChrysalisError",
    "DocumentType",
    "EmbeddingDocument",
    "GossipConfig",
    "HubConfig",
    "MemoryDocument",
    "MemoryType",
    "Op",
    "RecallHit",
    "SyncStatus",
    "VerifyReport",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
