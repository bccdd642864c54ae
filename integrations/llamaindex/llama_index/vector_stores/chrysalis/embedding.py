"""A LlamaIndex embed model as a Chrysalis embedder.

:class:`ChrysalisVectorStore` searches with LlamaIndex's query embeddings, so
the memory behind it must index memories in the same space: its embedder is a
:class:`LlamaIndexEmbedder` wrapping the same embed model. Nodes arrive with
their embeddings already made (by LlamaIndex, usually over the text *and* the
metadata); the store *pins* each node's embedding to the node's text before it
learns it, so that the memory indexes exactly the node's vector rather than
embedding the text again. Texts nobody pinned (memories written by other
agents or other tools) are embedded with the embed model.

Embeddings are stored and replicated under :attr:`LlamaIndexEmbedder.model`,
``llamaindex/<class>/<model name>/<dimensions>``: agents using the same embed
model reuse each other's vectors instead of embedding again.

:class:`ChrysalisEmbedding` goes the other way: Chrysalis's own embedders (the
offline hashing one by default) as a LlamaIndex embed model. Its vectors are
stored under the Chrysalis embedder's name, so they are shared with every agent
using that embedder, LlamaIndex or not.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from chrysalis_memory.blocking import LoopThread
from chrysalis_memory.errors import EmbedderError
from chrysalis_memory.recall.embedders import Embedder, HashingEmbedder

__all__ = ["ChrysalisEmbedding", "LlamaIndexEmbedder"]

MAX_PINS: Final = 8192
"""Pinned vectors waiting to be indexed, at most (the oldest are dropped: their texts
are then embedded by the embed model instead)."""

_DIMENSIONS_PROBE: Final = "dimensions"


class _Pins:
    """Vectors waiting for their texts to be indexed: (embedder identity, text) -> vector.

    One table per process, so that the store's embedder and an ``AgentMemory``
    made with another ``LlamaIndexEmbedder`` of the same model share pins.
    """

    def __init__(self) -> None:
        self._vectors: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, identity: str, text: str, vector: list[float]) -> None:
        with self._lock:
            self._vectors[(identity, text)] = vector
            self._vectors.move_to_end((identity, text))
            while len(self._vectors) > MAX_PINS:
                self._vectors.popitem(last=False)

    def take(self, identity: str, text: str) -> list[float] | None:
        with self._lock:
            return self._vectors.pop((identity, text), None)

    def discard(self, identity: str, texts: Sequence[str]) -> None:
        with self._lock:
            for text in texts:
                self._vectors.pop((identity, text), None)

    def __len__(self) -> int:
        return len(self._vectors)


PINS: Final = _Pins()
_DIMENSIONS: dict[str, int] = {}
"""Dimensions of each embed model seen in this process (by identity)."""


class LlamaIndexEmbedder:
    """Chrysalis's :class:`~chrysalis_memory.recall.embedders.Embedder` protocol over a
    LlamaIndex ``BaseEmbedding``.

    Pass it to an ``AgentMemory`` you share with a :class:`ChrysalisVectorStore`::

        memory = AgentMemory(agent_id="agent-a", embedder=LlamaIndexEmbedder(embed_model))
        store = ChrysalisVectorStore(memory=memory, embed_model=embed_model)

    ``embed_model`` defaults to ``Settings.embed_model``, read at first use.
    ``dimensions`` is found by embedding a probe text unless given (or seen in a
    pinned vector first). ``model`` overrides the name vectors are stored under.
    """

    def __init__(
        self,
        embed_model: BaseEmbedding | None = None,
        *,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> None:
        self._embed_model = embed_model
        self._dimensions = dimensions
        self._model = model

    # --- identity -------------------------------------------------------------------

    @property
    def embed_model(self) -> BaseEmbedding:
        """The LlamaIndex embed model (``Settings.embed_model`` unless one was given)."""
        if self._embed_model is None:
            from llama_index.core.settings import Settings

            self._embed_model = Settings.embed_model
        return self._embed_model

    @property
    def identity(self) -> str:
        """The model's name without its dimensions (known before any embedding)."""
        if self._model is not None:
            return self._model
        embed_model = self.embed_model
        if isinstance(embed_model, ChrysalisEmbedding):
            # Chrysalis's own vectors: stored under the same name as every agent's.
            return embed_model.embedder.model
        return f"llamaindex/{embed_model.class_name()}/{embed_model.model_name}"

    @property
    def model(self) -> str:
        if self._model is not None or isinstance(self.embed_model, ChrysalisEmbedding):
            return self.identity
        return f"{self.identity}/{self.dimensions}"

    @property
    def dimensions(self) -> int:
        if self._known_dimensions() is None:
            # Recall asked before anything told us: probe (once, synchronously).
            self._learn_dimensions(self.embed_model.get_text_embedding(_DIMENSIONS_PROBE))
        assert self._dimensions is not None
        return self._dimensions

    @property
    def knows_dimensions(self) -> bool:
        return self._known_dimensions() is not None

    async def prepare(self) -> None:
        """Find the dimensions now (asynchronously), if nothing told them yet."""
        embed_model = self.embed_model
        if self._known_dimensions() is None and isinstance(embed_model, ChrysalisEmbedding):
            self._dimensions = _DIMENSIONS.setdefault(
                self.identity, embed_model.embedder.dimensions
            )
        if self._known_dimensions() is None:
            vector = await self.embed_model.aget_text_embedding(_DIMENSIONS_PROBE)
            self._learn_dimensions(vector)

    def _known_dimensions(self) -> int | None:
        """Ours, or those another embedder of the same model learnt in this process."""
        if self._dimensions is None:
            self._dimensions = _DIMENSIONS.get(self.identity)
        return self._dimensions

    def _learn_dimensions(self, vector: Sequence[float]) -> None:
        if not vector:
            raise EmbedderError(f"{self.identity} returned an empty embedding")
        if self._known_dimensions() is None:
            self._dimensions = _DIMENSIONS.setdefault(self.identity, len(vector))

    # --- pins -----------------------------------------------------------------------

    def pin(self, text: str, vector: Sequence[float]) -> None:
        """Index ``text`` with ``vector`` (made elsewhere) instead of embedding it."""
        self._learn_dimensions(vector)
        self._check(vector)
        PINS.put(self.identity, text, [float(x) for x in vector])

    def unpin(self, texts: Sequence[str]) -> None:
        """Drop pins that were not used (their texts already had an embedding)."""
        PINS.discard(self.identity, texts)

    def _check(self, vector: Sequence[float]) -> None:
        if self._known_dimensions() is not None and len(vector) != self._dimensions:
            raise EmbedderError(
                f"{self.identity} embeds in {self._dimensions} dimensions; got a vector of "
                f"{len(vector)}: use one embed model for the store and its index"
            )

    # --- the Embedder protocol ------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        identity = self.identity
        found: list[list[float] | None] = [PINS.take(identity, text) for text in texts]
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing:
            made = await self.embed_model.aget_text_embedding_batch([texts[i] for i in missing])
            if len(made) != len(missing):
                raise EmbedderError(
                    f"{identity} returned {len(made)} embeddings for {len(missing)} texts"
                )
            for i, new in zip(missing, made, strict=True):
                self._learn_dimensions(new)
                found[i] = [float(x) for x in new]
        result: list[list[float]] = []
        for vector in found:
            assert vector is not None
            self._check(vector)
            result.append(vector)
        return result

    async def aclose(self) -> None:
        """Nothing to release: the embed model belongs to the caller."""

    def __repr__(self) -> str:
        known = self._dimensions if self._dimensions is not None else "?"
        name = self._model or (
            "Settings.embed_model" if self._embed_model is None else self.identity
        )
        return f"LlamaIndexEmbedder({name}, dimensions={known})"


class ChrysalisEmbedding(BaseEmbedding):
    """Chrysalis's embedders as a LlamaIndex embed model: offline hashing by default.

    ``ChrysalisEmbedding()`` embeds with :class:`~chrysalis_memory.recall.embedders.HashingEmbedder`
    (no model files, no network); pass ``embedder=`` for another one (an
    ``OllamaEmbedder``, ...). A :class:`ChrysalisVectorStore` given this embed
    model stores vectors under the embedder's own name, the one every Chrysalis
    agent (and the hub) uses for it: they share the same embeddings.
    """

    _embedder: Embedder = PrivateAttr()
    _loop: LoopThread | None = PrivateAttr(default=None)

    def __init__(self, embedder: Embedder | None = None, **kwargs: Any) -> None:
        chosen = embedder if embedder is not None else HashingEmbedder()
        kwargs.setdefault("model_name", chosen.model)
        super().__init__(**kwargs)
        self._embedder = chosen

    @classmethod
    def class_name(cls) -> str:
        return "ChrysalisEmbedding"

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    # Queries and texts are embedded alike (Chrysalis embedders make no difference).

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._aget_text_embeddings([query]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aget_text_embeddings([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        embed_sync = getattr(self._embedder, "embed_sync", None)
        if callable(embed_sync):
            vectors: list[list[float]] = embed_sync(texts)
            return vectors
        return self._runner().run(self._embedder.embed(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if callable(getattr(self._embedder, "embed_sync", None)):
            return self._get_text_embeddings(texts)
        # An embedder with connections keeps them on one loop: its own.
        future = asyncio.run_coroutine_threadsafe(self._embedder.embed(texts), self._runner().loop)
        return await asyncio.wrap_future(future)

    def _runner(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread("chrysalis-embedding")
        return self._loop
