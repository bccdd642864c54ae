"""Recall: turning text into vectors and finding memories again.

This package holds the embedders (:mod:`chrysalis_memory.recall.embedders`).
"""

from __future__ import annotations

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
