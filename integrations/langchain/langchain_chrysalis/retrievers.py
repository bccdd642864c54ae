"""``ChrysalisRetriever``: recall from an agent's collective memory as a LangChain retriever."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

from chrysalis_memory import AgentMemory, RecallHit
from chrysalis_memory.errors import InvalidArgumentError
from langchain_chrysalis._component import MemoryFields, RecallMode, Scope, recall
from langchain_chrysalis._documents import describe, to_document

__all__ = ["ChrysalisRetriever"]

_OPTIONS = frozenset({"k", "mode", "scope", "filter", "record_access"})


class ChrysalisRetriever(MemoryFields, BaseRetriever):
    """Documents recalled from a Chrysalis agent's memory: what it learned and
    what every other agent shared with it.

    Recall is hybrid by default (vector and keyword search fused, then ranked by
    relevance, confidence and use across agents; see docs/recall.md). Each
    document's ``metadata`` is the memory's own, plus ``metadata["chrysalis"]``:
    its memory id, score, similarity, relevance, tags, memory type, importance,
    confidence, access count, source agent and times.

    Setup::

        from langchain_chrysalis import ChrysalisRetriever

        retriever = ChrysalisRetriever(agent_id="agent-a", data_dir="./data", k=4)
        docs = retriever.invoke("when is the staging DB restored?")
        docs = retriever.invoke("staging", k=2, filter={"tags": ["ops"]})

    Options (fields, and keyword arguments of ``invoke`` that override them):
    ``k``; ``mode`` (``hybrid``, ``vector``, ``keyword``); ``scope``
    (``local``, or ``collective`` to also search the hub's collective index);
    ``filter`` (``tags`` (all of them), ``memory_type``, ``source``, ``since``,
    ``until``); ``record_access`` (count each hit as a use, the default: it
    ranks memories that help higher for every agent).
    """

    k: int = Field(default=4, ge=1, le=1000)
    mode: RecallMode = "hybrid"
    scope: Scope = "local"
    filter: dict[str, Any] | None = None
    record_access: bool = True

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - _OPTIONS
        if unknown:
            raise InvalidArgumentError(
                f"unknown retriever options {sorted(unknown)}; use {sorted(_OPTIONS)}"
            )
        options = {
            "k": self.k,
            "mode": self.mode,
            "scope": self.scope,
            "filter": self.filter,
            "record_access": self.record_access,
        }
        options.update(kwargs)
        if kwargs.get("filter") is not None and self.filter:
            options["filter"] = {**self.filter, **kwargs["filter"]}
        return options

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        options = self._options(kwargs)
        vector = self._query_vector_sync(query, options["mode"])
        hits = self._handle.run(lambda mem: self._recall(mem, query, vector, options))
        return [_document(hit) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        options = self._options(kwargs)
        vector = await self._query_vector(query, options["mode"])
        hits = await self._handle.arun(lambda mem: self._recall(mem, query, vector, options))
        return [_document(hit) for hit in hits]

    @staticmethod
    async def _recall(
        mem: AgentMemory, query: str, vector: list[float] | None, options: dict[str, Any]
    ) -> list[RecallHit]:
        return await recall(mem, query, vector, **options)


def _document(hit: RecallHit) -> Document:
    document = to_document(hit.memory)
    document.metadata["chrysalis"] = describe(hit)
    return document
