"""LlamaIndex vector store over Chrysalis's collective memory.

``from llama_index.vector_stores.chrysalis import ChrysalisVectorStore``; see
docs/llamaindex.md.
"""

from llama_index.vector_stores.chrysalis.base import NODE_TAG, ChrysalisVectorStore
from llama_index.vector_stores.chrysalis.embedding import ChrysalisEmbedding, LlamaIndexEmbedder

__all__ = ["NODE_TAG", "ChrysalisEmbedding", "ChrysalisVectorStore", "LlamaIndexEmbedder"]
