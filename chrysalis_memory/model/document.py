"""The documents users see: spec §4.1's schema as pydantic models.

These are read-only *views* of a replica's CRDT state (``model.state``); they
serialise with ``_id`` as in the spec. Change memories through
:class:`~chrysalis_memory.AgentMemory`, never by editing a view.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SyncStatus(str, Enum):
    """Where this replica's writes to a memory stand on their way to the hub (spec §2.4).

    It is this replica's bookkeeping, not part of the memory: it is not
    replicated, and replicas of one memory may show different statuses. A
    memory's status is that of its least synced op here:

    * ``local``: short-term (importance below ``promotion_threshold``), kept on
      this agent only; it becomes ``pending`` when the memory is promoted.
    * ``pending``: shared, and waiting for the hub to acknowledge it. With no
      hub configured (no ``hub_url``) that is what it waits for: it stays
      ``pending``, and is pushed, with nothing else to do, once the agent is
      opened with a ``hub_url`` and ``hub_token``. Gossip does not change it.
    * ``retry``: a push failed or the hub refused it; pushed again later.
    * ``synced``: nothing left for this replica to push: the hub acknowledged
      its ops, or they are other agents' ops received from the hub or by
      gossip (their writers push them).

    docs/concepts.md ("Sync status") has the details.
    """

    LOCAL = "local"
    """Short-term: kept on this agent only (below the promotion threshold)."""
    PENDING = "pending"
    """Shared, waiting for the hub to acknowledge it (or for a hub to be configured)."""
    RETRY = "retry"
    """A push failed or was refused; it will be retried with backoff."""
    SYNCED = "synced"
    """Nothing left to push from here: acknowledged by the hub, or another agent's op."""


class MemoryType(str, Enum):
    EPISODIC = "episodic"
    SEMANTIC = "semantic"
    PROCEDURAL = "procedural"


class DocumentType(str, Enum):
    BEAD = "bead"
    MEMORY = "memory"
    EMBEDDING_REF = "embedding_ref"
    METADATA = "metadata"


_VIEW_CONFIG = ConfigDict(
    frozen=True,
    populate_by_name=True,
    serialize_by_alias=True,
    use_enum_values=False,
)


class MemoryDocument(BaseModel):
    """One memory, as this replica currently knows it."""

    model_config = _VIEW_CONFIG

    id: str = Field(alias="_id", description="Stable id (a UUID unless the caller chose one).")
    type: DocumentType = DocumentType.MEMORY
    content: str
    embedding_ref: str | None = None
    memory_type: MemoryType
    tags: list[str] = Field(default_factory=list, description="Sorted; an OR-Set.")
    importance: float = Field(ge=0.0, le=1.0, description="Only ever increases.")
    confidence: float = Field(ge=0.0, le=1.0, description="Only ever increases.")
    access_count: int = Field(ge=0, description="Sum over agents of their accesses.")
    source_instance: str = Field(description="The agent that created it.")
    created_at: float = Field(description="Unix time of the winning creation.")
    updated_at: float = Field(description="Unix time of the latest op.")
    version: int = Field(ge=0, description="Number of distinct ops folded into it.")
    sync_status: SyncStatus = Field(
        default=SyncStatus.PENDING,
        description="This replica's push state (see SyncStatus): pending means waiting for "
        "the hub, or for a hub_url to be configured.",
    )
    related_memories: list[str] = Field(default_factory=list)
    parent_memories: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    forgotten: bool = False


class EmbeddingDocument(BaseModel):
    """A vector embedding with provenance (spec §4.1)."""

    model_config = _VIEW_CONFIG

    id: str = Field(alias="_id")
    type: DocumentType = DocumentType.EMBEDDING_REF
    text_hash: str = Field(description="SHA-256 (hex) of the embedded text.")
    vector: list[float]
    dimensions: int
    model: str
    zep_id: str | None = Field(
        default=None, description="Id in an external vector store, when one is used."
    )
    created_at: float
    sync_status: SyncStatus = SyncStatus.PENDING


class RecallHit(BaseModel):
    """One result of :meth:`~chrysalis_memory.AgentMemory.recall`."""

    model_config = ConfigDict(frozen=True)

    memory: MemoryDocument
    score: float = Field(
        description="The ranking score: 0.5 relevance + 0.3 confidence + 0.2 usage (spec §5.4)."
    )
    similarity: float = Field(
        description="Cosine similarity of the memory's embedding to the query's (0 if unknown)."
    )
    relevance: float = Field(
        description="Fused keyword and vector relevance in [0, 1] (1: first in every ranking)."
    )
