"""Integrity check of a store: every op against its CID, its signature and its
writer's pinned key, and every materialised document against a replay of the log.

Behind :meth:`AgentMemory.verify` and ``chrysalis verify``.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from chrysalis_memory.errors import MalformedOpError
from chrysalis_memory.model.ops import Op, decode_op
from chrysalis_memory.model.state import fold
from chrysalis_memory.store.sqlite import OpStore
from chrysalis_memory.verifier import SignatureVerifier


class VerifyReport(BaseModel):
    """The result of :meth:`AgentMemory.verify`."""

    ok: bool
    ops_checked: int
    documents_checked: int
    problems: list[str] = Field(default_factory=list)
    seconds: float


async def verify_store(store: OpStore, verifier: SignatureVerifier) -> VerifyReport:
    """The integrity check behind :meth:`AgentMemory.verify` and ``chrysalis verify``."""
    started = time.perf_counter()
    problems = await store.integrity_problems()
    keys = await store.all_writer_keys()
    ops: list[Op] = []
    async for rows in store.iter_stored():
        for cid, body, writer in rows:
            try:
                op = decode_op(body)
            except MalformedOpError as exc:
                problems.append(f"op {cid}: cannot be decoded: {exc}")
                continue
            if op.cid != cid:
                problems.append(f"op {cid}: its content hashes to {op.cid}: it was altered")
                continue
            if keys.get(writer) != op.key:
                problems.append(f"op {cid}: signed by a key that is not {writer!r}'s pinned key")
            ops.append(op)
    problems.extend(str(error) for error in await verifier.invalid(ops))
    replayed = fold(ops)
    stored = await store.stored_states()
    for doc_id in sorted(set(replayed) | set(stored)):
        replay = replayed.get(doc_id)
        if doc_id not in stored:
            problems.append(f"document {doc_id}: in the op log but not materialised")
        elif replay is None:
            problems.append(f"document {doc_id}: materialised but has no ops")
        elif replay.encode() != stored[doc_id][1]:
            problems.append(f"document {doc_id}: materialised state differs from a replay")
    return VerifyReport(
        ok=not problems,
        ops_checked=len(ops),
        documents_checked=len(stored),
        problems=problems,
        seconds=round(time.perf_counter() - started, 3),
    )
