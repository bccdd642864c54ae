"""Integrity check of a store: SQLite's own check of the file, every op row against
its CID and its columns, every signature against its writer's pinned key, and every
materialised document against a replay of the log.

Behind :meth:`AgentMemory.verify` and ``chrysalis verify``. Each problem names
what it is about (``op row 17 (cid 3fa2…): ...``, ``document ...: ...``) and what
is wrong; :attr:`VerifyReport.damaged_ops` lists the damaged op rows as data.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from pydantic import BaseModel, Field

from chrysalis_memory.errors import MalformedOpError, StoreError
from chrysalis_memory.model.ops import Op, decode_op
from chrysalis_memory.model.state import fold
from chrysalis_memory.store.damage import (
    SCHEMA_ROWS_SQL,
    DamagedOp,
    damaged_op,
    row_problem,
    schema_problem,
)
from chrysalis_memory.store.sqlite import OpStore
from chrysalis_memory.verifier import SignatureVerifier


class VerifyReport(BaseModel):
    """The result of :meth:`AgentMemory.verify`."""

    ok: bool
    ops_checked: int
    documents_checked: int
    problems: list[str] = Field(default_factory=list)
    damaged_ops: list[dict[str, Any]] = Field(default_factory=list)
    """Every damaged op row: ``rowid``, ``cid`` (as recorded) and ``problem``."""
    seconds: float


async def verify_store(store: OpStore, verifier: SignatureVerifier) -> VerifyReport:
    """The integrity check behind :meth:`AgentMemory.verify` and ``chrysalis verify``."""
    started = time.perf_counter()
    try:
        problems = [
            f"SQLite's integrity check: {problem}"
            for problem in await store.integrity_problems(full=True)
        ]
    except StoreError as exc:  # so damaged that the check itself cannot read the file
        problems = [f"SQLite's integrity check: cannot read the file: {exc.__cause__ or exc}"]
    try:
        schema = schema_problem(await store.db.execute_fetchall(SCHEMA_ROWS_SQL))
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        schema = f"it cannot be read ({exc})"
    if schema is not None:
        problems.append(f"the schema: {schema}")
    keys = await store.all_writer_keys()
    ops: list[Op] = []
    rowids: list[int] = []
    damaged: list[DamagedOp] = []
    checked = 0
    try:
        async for rows in store.iter_op_rows():
            for row in rows:
                checked += 1
                problem = row_problem(row)
                op: Op | None = None
                if problem is None:
                    try:
                        op = decode_op(row[7])
                    except MalformedOpError as exc:  # stored so: never by this code
                        problem = f"its bytes match its CID but are not a valid op: {exc}"
                if op is None:
                    damaged.append(damaged_op(row, problem or "unknown"))
                    continue
                if keys.get(op.writer) != op.key:
                    problems.append(
                        f"op row {row[0]} (cid {op.cid[:16]}…): signed by a key that is not "
                        f"{op.writer!r}'s pinned key"
                    )
                ops.append(op)
                rowids.append(int(row[0]))
    except StoreError as exc:
        problems.append(f"the op log cannot be read after row {checked}: {exc}")
    problems.extend(str(d) for d in damaged)
    for error in await verifier.invalid(ops):
        index = error.index or 0
        problems.append(f"op row {rowids[index]} (cid {ops[index].cid[:16]}…): {error}")
    replayed = fold(ops)
    try:
        stored = await store.stored_states()
    except StoreError as exc:
        problems.append(f"the documents cannot be read: {exc}")
        stored = {}
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
        ops_checked=checked,
        documents_checked=len(stored),
        problems=problems,
        damaged_ops=[{"rowid": d.rowid, "cid": d.cid, "problem": d.problem} for d in damaged],
        seconds=round(time.perf_counter() - started, 3),
    )
