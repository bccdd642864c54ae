"""What the pydantic-based components (memory, retriever) share: the fields that
name the agent memory, and recall with the options every component offers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from chrysalis_memory import AgentMemory, AgentMemoryConfig, BlockingAgentMemory, RecallHit
from chrysalis_memory.errors import InvalidArgumentError
from langchain_chrysalis._documents import split_filter
from langchain_chrysalis._runtime import MemoryHandle
from langchain_chrysalis.embeddings import as_embedder

RecallMode = Literal["hybrid", "vector", "keyword"]
Scope = Literal["local", "collective"]


class MemoryFields(BaseModel):
    """The agent memory a component uses: ``memory=`` (an ``AgentMemory`` or
    ``BlockingAgentMemory`` to share) or the configuration (``config`` and the
    keywords ``agent_id``, ``data_dir``, ``hub_url``, ``hub_token``; none of them:
    ``AgentMemoryConfig.from_env()``, a local store). ``embedding`` (LangChain
    embeddings) embeds memories and queries when the component opens the
    memory itself."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: AgentMemory | BlockingAgentMemory | None = Field(default=None, exclude=True, repr=False)
    agent_id: str | None = None
    data_dir: str | Path | None = None
    hub_url: str | None = None
    hub_token: SecretStr | None = Field(default=None, repr=False)
    config: AgentMemoryConfig | None = Field(default=None, repr=False)
    embedding: Embeddings | None = Field(default=None, exclude=True, repr=False)

    _handle: MemoryHandle = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._handle = MemoryHandle(
            self.memory,
            config=self.config,
            agent_id=self.agent_id,
            data_dir=self.data_dir,
            hub_url=self.hub_url,
            hub_token=None if self.hub_token is None else self.hub_token.get_secret_value(),
            embedder=None if self.embedding is None else as_embedder(self.embedding),
        )

    @property
    def agent_memory(self) -> AgentMemory:
        """The ``AgentMemory`` behind this component (to share it with another one:
        ``memory=component.agent_memory``)."""
        return self._handle.memory

    def close(self) -> None:
        """Let go of the agent's memory (closed when no component uses it any more)."""
        self._handle.close()

    async def aclose(self) -> None:
        await self._handle.aclose()

    def _query_vector_sync(self, query: str, mode: RecallMode) -> list[float] | None:
        """The query's embedding by ``embedding`` (its query side), if one was given."""
        if self.embedding is None or mode == "keyword" or not query.strip():
            return None
        return [float(x) for x in self.embedding.embed_query(query)]

    async def _query_vector(self, query: str, mode: RecallMode) -> list[float] | None:
        if self.embedding is None or mode == "keyword" or not query.strip():
            return None
        return [float(x) for x in await self.embedding.aembed_query(query)]


async def recall(
    mem: AgentMemory,
    query: str,
    vector: list[float] | None,
    *,
    k: int,
    mode: RecallMode,
    scope: Scope,
    filter: dict[str, Any] | None,
    record_access: bool,
) -> list[RecallHit]:
    """Recall with the components' options; a blank query finds nothing."""
    if not query.strip():
        return []
    filters, conditions = split_filter(filter)
    if conditions:
        raise InvalidArgumentError(
            f"unknown filter keys {sorted(conditions)}: use tags, memory_type, source, "
            "since or until"
        )
    extra: dict[str, Any] = {} if vector is None else {"vector": vector}
    return await mem.recall(
        query,
        k,
        mode=mode,
        scope=scope,
        record_access=record_access,
        **filters,
        **extra,
    )
