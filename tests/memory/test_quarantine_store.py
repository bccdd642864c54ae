"""The store's quarantine: ops refused on arrival, kept with their reason, stored
one by one so that a refused op costs no other, in one transaction with the cursor."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.errors import ForgedWriterError, StoreError
from chrysalis_memory.model import MemoryPatch, OpAuthor
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import Creation, Op, Signer
from chrysalis_memory.store import OpStore
from chrysalis_memory.store import sqlite as sqlite_store
from chrysalis_memory.store.sqlite import Refusal
from tests.sync.helpers import make_ops, signer_for


def forged(writer: str, n: int) -> list[Op]:
    """Ops claiming ``writer``, signed with another key than :func:`signer_for`'s."""
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000))
    author = OpAuthor(writer, Signer.generate(), HybridClock(physical=lambda: next(ticks)))
    patch = MemoryPatch(create=Creation(), content="not the real one")
    return [author.make(f"{writer}-forged-{i}", patch) for i in range(n)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OpStore]:
    store = OpStore(tmp_path / "memory.db")
    await store.open()
    yield store
    await store.close()


async def test_a_refused_op_costs_no_other_and_commits_with_the_cursor(store: OpStore) -> None:
    await store.pin_writer_key("w", signer_for("w").public_key)
    good = make_ops("other", 5)
    bad = forged("w", 1)
    page = [*good[:2], *bad, *good[2:]]
    with pytest.raises(ForgedWriterError):
        await store.ingest(page, SyncStatus.SYNCED, meta={"sync_cursor": "6"})
    assert await store.meta("sync_cursor") is None  # all or nothing: nothing
    new, refused = await store.ingest_each(page, SyncStatus.SYNCED, meta={"sync_cursor": "6"})
    assert new == good
    assert [(r.cid, r.writer, r.reason) for r in refused] == [(bad[0].cid, "w", "forged_writer")]
    assert await store.meta("sync_cursor") == "6"
    assert store.quarantine_size == 1
    (entry,) = await store.quarantined()
    assert (entry.cid, entry.writer, entry.body, entry.source) == (
        bad[0].cid,
        "w",
        bad[0].encoded,
        "hub",
    )
    assert entry.reason == "forged_writer" and "pinned to another public key" in entry.detail
    assert entry.attempts == 1 and entry.first_seen_ms == entry.last_seen_ms > 0
    assert await store.quarantine_summary() == {"forged_writer": 1}
    assert (await store.counts())["quarantined"] == 1
    # Refused again: one entry, one more attempt.
    await store.ingest_each(bad, SyncStatus.SYNCED)
    (again,) = await store.quarantined()
    assert again.attempts == 2 and again.last_seen_ms >= entry.last_seen_ms


async def test_an_op_stored_later_leaves_the_quarantine(store: OpStore) -> None:
    op = make_ops("w", 1)[0]
    undecodable = Refusal.undecodable(b"{not an op", "frame is not an op")
    await store.ingest([], SyncStatus.SYNCED, refused=[Refusal(op.cid, "w", op.encoded, "x", "y")])
    await store.ingest([], SyncStatus.SYNCED, refused=[undecodable])
    assert store.quarantine_size == 2
    assert await store.quarantine_summary() == {"malformed": 1, "x": 1}
    await store.ingest([op], SyncStatus.SYNCED)  # however it arrives
    assert [e.cid for e in await store.quarantined()] == [undecodable.cid]
    # Ops already held leave it too when tried again one by one.
    await store.ingest([], SyncStatus.SYNCED, refused=[Refusal(op.cid, "w", op.encoded, "x", "y")])
    new, refused = await store.ingest_each([op], SyncStatus.SYNCED)
    assert new == [] and refused == []
    assert [e.cid for e in await store.quarantined()] == [undecodable.cid]


async def test_a_failed_transaction_leaves_neither_ops_nor_quarantine_nor_cursor(
    store: OpStore,
) -> None:
    ops = make_ops("other", 3)
    refusal = Refusal.undecodable(b"[]", "not an op")
    await store.db.execute(
        "CREATE TRIGGER no_cursor BEFORE INSERT ON meta WHEN NEW.key = 'sync_cursor' "
        "BEGIN SELECT RAISE(ABORT, 'disk full, say'); END"
    )
    for attempt in (store.ingest, store.ingest_each):
        with pytest.raises(StoreError):
            await attempt(ops, SyncStatus.SYNCED, refused=[refusal], meta={"sync_cursor": "4"})
        assert await store.known_cids([op.cid for op in ops]) == set()
        assert store.quarantine_size == 0 and await store.quarantined() == []


async def test_the_hub_replaces_a_pin_only_while_no_op_of_that_writer_is_held(
    store: OpStore,
) -> None:
    old, new = Signer.generate().public_key, signer_for("w").public_key
    assert await store.confirm_writer_key("w", old)  # not pinned: pinned
    assert not await store.confirm_writer_key("w", old)  # the same: nothing changes
    assert await store.confirm_writer_key("w", new)  # no op held: the hub's word wins
    assert (await store.all_writer_keys())["w"] == new
    await store.ingest(make_ops("w", 1), SyncStatus.SYNCED)
    with pytest.raises(ForgedWriterError, match="holds ops it signed with that key"):
        await store.confirm_writer_key("w", old)
    assert (await store.all_writer_keys())["w"] == new


async def test_a_store_from_before_the_quarantine_reads_as_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    store = OpStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE quarantine")
    reader = OpStore(path, read_only=True)  # chrysalis status, on an older agent's store
    await reader.open()
    try:
        assert await reader.quarantine_summary() == {}
        assert (await reader.counts())["quarantined"] == 0
    finally:
        await reader.close()
    await store.open()  # opened to write, it gains the table
    try:
        assert await store.quarantine_summary() == {}
        assert await store.db.execute_fetchall("SELECT COUNT(*) FROM quarantine")
    finally:
        await store.close()


async def test_the_quarantine_keeps_bytes_up_to_its_budget_and_every_refusal_past_it(
    store: OpStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.pin_writer_key("w", signer_for("w").public_key)
    bad = forged("w", 3)
    monkeypatch.setattr(sqlite_store, "MAX_QUARANTINE_BYTES", len(bad[0].encoded) * 3 // 2)
    _, refused = await store.ingest_each(bad, SyncStatus.SYNCED)
    assert len(refused) == 3
    entries = {entry.cid: entry for entry in await store.quarantined()}
    assert set(entries) == {op.cid for op in bad}  # every refusal is recorded
    assert entries[bad[0].cid].body == bad[0].encoded
    for op in bad[1:]:
        assert entries[op.cid].body is None
        assert "bytes not kept" in entries[op.cid].detail
        assert entries[op.cid].reason == "forged_writer"
