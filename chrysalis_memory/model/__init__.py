"""The data model: ops, CRDT document state, and document views. Pure, no I/O."""

from chrysalis_memory.model.accretion import accrete, merge_write_storm
from chrysalis_memory.model.document import (
    DocumentType,
    EmbeddingDocument,
    MemoryDocument,
    MemoryType,
    RecallHit,
    SyncStatus,
)
from chrysalis_memory.model.ops import (
    EmbeddingPatch,
    MemoryPatch,
    Op,
    OpAuthor,
    Signer,
    decode_op,
    verify_signature,
)
from chrysalis_memory.model.state import (
    DocState,
    EmbeddingState,
    MemoryState,
    fold,
)

__all__ = [
    "DocState",
    "DocumentType",
    "EmbeddingDocument",
    "EmbeddingPatch",
    "EmbeddingState",
    "MemoryDocument",
    "MemoryPatch",
    "MemoryState",
    "MemoryType",
    "Op",
    "OpAuthor",
    "RecallHit",
    "Signer",
    "SyncStatus",
    "accrete",
    "decode_op",
    "fold",
    "merge_write_storm",
    "verify_signature",
]
