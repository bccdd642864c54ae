"""Embeddings both ways between LangChain and Chrysalis.

* :class:`LangChainEmbedder` makes any LangChain ``Embeddings`` a Chrysalis
  ``Embedder`` (``model``, ``dimensions``, async batch ``embed``), so that an
  ``AgentMemory`` embeds the memories it stores with the user's model:
  ``AgentMemory(..., embedder=LangChainEmbedder(OpenAIEmbeddings()))``. The
  adapters do this themselves when they are given ``embedding=``.
* :class:`ChrysalisEmbeddings` makes a Chrysalis embedder (by default the
  offline :class:`~chrysalis_memory.recall.embedders.HashingEmbedder`) a
  LangChain ``Embeddings``, e.g. for a LangGraph store's index or to run the
  examples with no model at all.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any, Final

from langchain_core.embeddings import Embeddings

from chrysalis_memory.blocking import LoopThread
from chrysalis_memory.errors import EmbedderError, InvalidArgumentError
from chrysalis_memory.recall.embedders import Embedder, HashingEmbedder

__all__ = ["ChrysalisEmbeddings", "LangChainEmbedder", "as_embedder"]

_PROBE: Final = "dimensions probe"
_MAX_MODEL_CHARS: Final = 200
_NAME_ATTRIBUTES: Final = ("model", "model_name", "deployment", "model_id")


class LangChainEmbedder:
    """A LangChain ``Embeddings`` seen as a Chrysalis ``Embedder``.

    ``model`` names the vectors: embeddings are cached and replicated under
    it, so it must change whenever the vectors would. By default it is built
    from the class and its model attribute plus the dimensions, e.g.
    ``langchain:OpenAIEmbeddings:text-embedding-3-small@1536``; pass ``model=``
    to choose it. ``dimensions`` is learnt by embedding a probe text once
    (:meth:`probe`), unless given.

    Memories are embedded with ``aembed_documents``; queries that the adapters
    embed themselves go through ``aembed_query`` (see :meth:`embed_query`).
    """

    def __init__(
        self,
        embeddings: Embeddings,
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> None:
        if not isinstance(embeddings, Embeddings):
            raise InvalidArgumentError(
                f"embeddings must be a LangChain Embeddings, got {type(embeddings).__name__}"
            )
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise InvalidArgumentError("model must be a non-empty string")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise InvalidArgumentError(f"dimensions must be a positive integer, got {dimensions!r}")
        self.embeddings = embeddings
        self._model = model
        self._dimensions = dimensions

    def __repr__(self) -> str:
        return f"LangChainEmbedder({self.embeddings!r})"

    @property
    def model(self) -> str:
        if self._model is not None:
            return self._model
        return f"{_base_name(self.embeddings)}@{self.dimensions}"

    @property
    def dimensions(self) -> int:
        if self._dimensions is None:
            # Only reached when nobody awaited probe() first (the adapters always do):
            # one blocking call, once.
            self._learn(self.embeddings.embed_query(_PROBE))
        assert self._dimensions is not None
        return self._dimensions

    async def probe(self) -> int:
        """Learn the dimensions (one query embedded), if they are not known yet."""
        if self._dimensions is None:
            self._learn(await self.embeddings.aembed_query(_PROBE))
        assert self._dimensions is not None
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = list(texts)
        if not items:
            return []
        vectors = await self.embeddings.aembed_documents(items)
        if len(vectors) != len(items):
            raise EmbedderError(
                f"{type(self.embeddings).__name__} returned {len(vectors)} vectors "
                f"for {len(items)} texts"
            )
        return [self._learn(vector) for vector in vectors]

    async def embed_query(self, text: str) -> list[float]:
        """The embedding of a search query (``aembed_query``: some models embed
        queries differently from documents)."""
        return self._learn(await self.embeddings.aembed_query(text))

    async def aclose(self) -> None:
        """Nothing to release: the LangChain embeddings belong to the caller."""

    def _learn(self, vector: Sequence[float]) -> list[float]:
        values = [float(x) for x in vector]
        if not values or not all(math.isfinite(x) for x in values):
            raise EmbedderError(
                f"{type(self.embeddings).__name__} returned an empty or non-finite vector"
            )
        if self._dimensions is None:
            self._dimensions = len(values)
        elif len(values) != self._dimensions:
            raise EmbedderError(
                f"{type(self.embeddings).__name__} returned a vector of {len(values)} "
                f"dimensions, expected {self._dimensions}"
            )
        return values


def _base_name(embeddings: Embeddings) -> str:
    name = f"langchain:{type(embeddings).__name__}"
    for attribute in _NAME_ATTRIBUTES:
        value = getattr(embeddings, attribute, None)
        if isinstance(value, str) and value:
            name = f"{name}:{value}"
            break
    return re.sub(r"\s+", "-", name)[:_MAX_MODEL_CHARS]


class ChrysalisEmbeddings(Embeddings):
    """A Chrysalis embedder as LangChain ``Embeddings`` (default: the offline
    hashing embedder, which needs no model and no network)."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder: Embedder = HashingEmbedder() if embedder is None else embedder
        self._loop: LoopThread | None = None

    def __repr__(self) -> str:
        return f"ChrysalisEmbeddings({self.embedder!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        embed_sync = getattr(self.embedder, "embed_sync", None)
        if callable(embed_sync):
            result: list[list[float]] = embed_sync(texts)
            return result
        return self._runner().run(self.embedder.embed(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if callable(getattr(self.embedder, "embed_sync", None)):
            return await self.embedder.embed(texts)
        future = asyncio.run_coroutine_threadsafe(self.embedder.embed(texts), self._runner().loop)
        return await asyncio.wrap_future(future)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]

    def _runner(self) -> LoopThread:
        # An embedder holding connections (Ollama) stays on one event loop of its own.
        if self._loop is None:
            self._loop = LoopThread("chrysalis-embeddings")
        return self._loop

    def close(self) -> None:
        """Stop the private event loop, if one was started (embedders with no
        synchronous path, such as Ollama's)."""
        if self._loop is not None:
            self._loop.run(self.embedder.aclose())
            self._loop.stop()
            self._loop = None


def as_embedder(embedding: Embeddings | Embedder | Any) -> Embedder:
    """A Chrysalis embedder for ``embedding``: unwrapped if it wraps one already
    (so that its cached embeddings are shared with plain agents), adapted otherwise."""
    if isinstance(embedding, ChrysalisEmbeddings):
        return embedding.embedder
    if isinstance(embedding, Embeddings):
        return LangChainEmbedder(embedding)
    if isinstance(embedding, Embedder):
        return embedding
    raise InvalidArgumentError(
        f"expected LangChain Embeddings or a Chrysalis embedder, got {type(embedding).__name__}"
    )
