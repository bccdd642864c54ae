"""Damaging real SQLite files the way a disk, a copy or a restore does: bit flips.

Offsets come from a seeded RNG, so a failure replays. The database must be closed
and checkpointed (an ``OpStore`` empties its WAL on close), so that every op's bytes
are in the main file.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

PAGE_TYPES = {2, 5, 10, 13}  # SQLite's b-tree page kinds


def _closed_file(db: Path) -> bytearray:
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"{wal} holds pages: close the store"
    return bytearray(db.read_bytes())


def op_spans(db: Path) -> dict[int, tuple[str, int, int]]:
    """Where each op's bytes lie in the file: ``{rowid: (cid, offset, length)}``, for
    the ops stored in one piece (all but ops so large they spill onto overflow pages)."""
    data = bytes(_closed_file(db))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seqno, cid, body FROM ops").fetchall()
    conn.close()
    spans = {}
    for rowid, cid, body in rows:
        offset = data.find(body)
        if offset >= 0 and data.find(body, offset + 1) < 0:
            spans[rowid] = (cid, offset, len(body))
    return spans


def flip_op_bytes(db: Path, flips: int = 20, seed: int = 0) -> dict[int, str]:
    """Flip one bit in each of ``flips`` random bytes of random ops' bytes (seeded);
    returns the damaged ops, ``{rowid: cid}`` (an op flipped back to what it was is
    not damaged, and is not returned)."""
    spans = op_spans(db)
    assert spans, f"no op bytes found in {db}"
    data = _closed_file(db)
    original = bytes(data)
    rng = random.Random(seed)
    rowids = sorted(spans)
    for _ in range(flips):
        rowid = rng.choice(rowids)
        _, offset, length = spans[rowid]
        data[offset + rng.randrange(length)] ^= 1 << rng.randrange(8)
    db.write_bytes(data)
    return {
        rowid: cid
        for rowid, (cid, offset, length) in spans.items()
        if data[offset : offset + length] != original[offset : offset + length]
    }


def flip_anywhere(db: Path, flips: int = 20, seed: int = 0) -> list[int]:
    """Flip one bit in each of ``flips`` bytes at random offsets of the whole file
    (seeded); returns the offsets."""
    data = _closed_file(db)
    rng = random.Random(seed)
    offsets = [rng.randrange(len(data)) for _ in range(flips)]
    for offset in offsets:
        data[offset] ^= 1 << rng.randrange(8)
    db.write_bytes(data)
    return offsets


def flip_page_types(db: Path, pages: int = 3, seed: int = 0) -> list[int]:
    """Damage the structure: flip a bit of the page-type byte of ``pages`` random
    b-tree pages holding ops (seeded). Returns the page numbers."""
    spans = op_spans(db)
    data = _closed_file(db)
    size = int.from_bytes(data[16:18], "big") or 65536
    holding_ops = sorted({offset // size + 1 for _, offset, _ in spans.values()} - {1})
    assert holding_ops, f"no page of {db} holds op bytes (the database is too small)"
    rng = random.Random(seed)
    chosen = rng.sample(holding_ops, min(pages, len(holding_ops)))
    for page in chosen:
        start = (page - 1) * size
        assert data[start] in PAGE_TYPES, f"page {page} is not a b-tree page"
        data[start] ^= 1 << rng.randrange(8)
    db.write_bytes(data)
    return chosen
