"""Test doubles and helpers for the LlamaIndex adapter tests."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field

_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "how",
        "i", "in", "is", "it", "of", "on", "or", "the", "this", "to", "was", "what", "when",
        "where", "which", "who", "why", "will", "with",
    }
)  # fmt: skip


class WordEmbedding(BaseEmbedding):
    """Bag of words hashed into ``dims`` buckets, normalised: texts sharing words are
    close. Records every text it embeds (queries apart), to count embedding calls."""

    dims: int = 64
    embedded: list[str] = Field(default_factory=list)

    def __init__(self, **data: Any) -> None:
        data.setdefault("model_name", "word-buckets")
        super().__init__(**data)

    @classmethod
    def class_name(cls) -> str:
        return "WordEmbedding"

    def vector(self, text: str) -> list[float]:
        values = [0.0] * self.dims
        for word in _WORD.findall(text.lower()):
            if word not in _STOPWORDS:
                bucket = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % self.dims
                values[bucket] += 1.0
        if not any(values):
            values[0] = 1.0
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self.vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        self.embedded.append(text)
        return self.vector(text)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
