"""LlamaIndex memory block over Chrysalis's collective memory.

``from llama_index.memory.chrysalis import ChrysalisMemoryBlock``; see
docs/llamaindex.md.
"""

from llama_index.memory.chrysalis.base import ChrysalisMemoryBlock

__all__ = ["ChrysalisMemoryBlock"]
