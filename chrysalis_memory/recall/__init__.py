"""Recall: turning text into vectors and finding memories again.

The embedders live in :mod:`chrysalis_memory.recall.embedders`; they are
re-exported here lazily, so that importing the package (as ``AgentMemory``
does) does not load the Ollama client until an embedder is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chrysalis_memory.recall.embedders import (
        DEFAULT_HASHING_DIMENSIONS,
        DEFAULT_OLLAMA_HOST,
        DEFAULT_OLLAMA_MODEL,
        EMBEDDER_KINDS,
        Embedder,
        EmbedderKind,
        HashingEmbedder,
        OllamaEmbedder,
        parse_embedder_kind,
        resolve_ollama_host,
        select_embedder,
    )

__all__ = [
    "DEFAULT_HASHING_DIMENSIONS",
    "DEFAULT_OLLAMA_HOST",
    "DEFAULT_OLLAMA_MODEL",
    "EMBEDDER_KINDS",
    "Embedder",
    "EmbedderKind",
    "HashingEmbedder",
    "OllamaEmbedder",
    "parse_embedder_kind",
    "resolve_ollama_host",
    "select_embedder",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("chrysalis_memory.recall.embedders"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
