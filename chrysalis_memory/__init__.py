"""Chrysalis: collective, conflict-free memory for AI agents.

Every agent keeps a local replica (an SQLite op log) that works offline;
every field of every memory is a CRDT, so replicas merge without locks or
coordination and converge to the same state.
"""

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
