"""The SQLite store: append-only log, ownership, durability and integrity checks."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import (
    ClosedError,
    DataDirLockedError,
    KeyMismatchError,
    StoreError,
)
from chrysalis_memory.store import OpStore
from chrysalis_memory.store.verify import verify_store
from chrysalis_memory.verifier import SignatureVerifier


def _db(tmp_path: Path, agent: str = "agent-a") -> Path:
    return tmp_path / agent / "memory.db"


async def test_op_log_is_append_only(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("fact")
    with sqlite3.connect(_db(tmp_path)) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM ops")
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            db.execute("UPDATE ops SET body = x'00'")
        db.execute("UPDATE ops SET sync_status = 'synced'")  # bookkeeping may change


async def test_one_process_owns_a_data_dir(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path):
        with pytest.raises(DataDirLockedError, match="in use by another AgentMemory"):
            await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()
        async with AgentMemory(agent_id="agent-b", data_dir=tmp_path):
            pass  # another agent in the same root is fine
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path):
        pass  # released on close


async def test_replaced_key_is_refused(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("signed with the original key")
    key = tmp_path / "agent-a" / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.unlink()
    with pytest.raises(KeyMismatchError, match="signed with another key"):
        await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()
    # the failed open released the directory
    key.unlink()
    with pytest.raises(KeyMismatchError):
        await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()


async def test_unreadable_key_says_what_to_do(tmp_path: Path) -> None:
    key = tmp_path / "agent-a" / "keys" / "signing.key"
    key.parent.mkdir(parents=True)
    key.write_text("garbage")
    with pytest.raises(StoreError, match=r"cannot be read.*restore it from a backup"):
        await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()


async def test_read_only_store_works_while_the_agent_runs(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("visible to readers")
        reader = OpStore(_db(tmp_path), read_only=True)
        await reader.open()
        try:
            counts = await reader.counts()
            assert counts["memories_live"] == 1
            assert await reader.state_root() == await mem.state_root()
        finally:
            await reader.close()


async def test_read_only_open_of_missing_store_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        await OpStore(tmp_path / "missing.db", read_only=True).open()


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("full", 2)])
async def test_durability_setting_is_applied(tmp_path: Path, durability: str, level: int) -> None:
    store = OpStore(tmp_path / "x.db", durability=durability)  # type: ignore[arg-type]
    await store.open()
    try:
        rows = list(await store.db.execute_fetchall("PRAGMA synchronous"))
        mode = list(await store.db.execute_fetchall("PRAGMA journal_mode"))
        assert rows[0][0] == level
        assert mode[0][0] == "wal"
    finally:
        await store.close()


async def test_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("fact")
    with sqlite3.connect(_db(tmp_path)) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer Chrysalis"):
        await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()


async def test_verify_detects_a_tampered_op(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("the truth")
    with sqlite3.connect(_db(tmp_path)) as db:
        db.execute("DROP TRIGGER ops_append_only_update")  # what an attacker with the file can do
        db.execute("UPDATE ops SET body = replace(body, 'the truth', 'a lie!!!')")
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        report = await mem.verify()
    assert not report.ok
    assert any("it was altered" in p for p in report.problems)


async def test_verify_detects_a_forged_signature(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("signed")
    with sqlite3.connect(_db(tmp_path)) as db:
        db.execute("DROP TRIGGER ops_append_only_update")
        (cid, body) = db.execute("SELECT cid, body FROM ops").fetchone()
        sig_start = body.index(b'"sig":"') + 7
        forged = (
            body[:sig_start]
            + (b"A" if body[sig_start : sig_start + 1] != b"A" else b"B")
            + body[sig_start + 1 :]
        )
        # recompute the CID so only the signature is wrong
        import hashlib

        db.execute(
            "UPDATE ops SET body = ?, cid = ? WHERE cid = ?",
            (forged, hashlib.sha256(forged).hexdigest(), cid),
        )
    store = OpStore(_db(tmp_path), read_only=True)
    await store.open()
    verifier = SignatureVerifier()
    try:
        report = await verify_store(store, verifier)
    finally:
        verifier.close()
        await store.close()
    assert not report.ok
    assert any("does not verify" in p for p in report.problems)


async def test_verify_detects_a_materialised_state_that_drifted(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("fact", importance=0.9)
    with sqlite3.connect(_db(tmp_path)) as db:
        db.execute("UPDATE docs SET state = replace(state, '0.9', '0.1')")
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        report = await mem.verify()
    assert not report.ok
    assert any("differs from a replay" in p for p in report.problems)


async def test_using_a_closed_memory_says_how_to_open_it(tmp_path: Path) -> None:
    mem = AgentMemory(agent_id="agent-a", data_dir=tmp_path)
    with pytest.raises(ClosedError, match="async with AgentMemory"):
        await mem.learn("too early")
    async with mem:
        pass
    with pytest.raises(ClosedError):
        await mem.get("anything")


async def test_a_directory_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "memory.db").mkdir()
    with pytest.raises(StoreError, match="is a directory, not a database file"):
        await OpStore(tmp_path / "memory.db").open()


async def test_sqlite_failures_become_store_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "memory.db"
    garbage.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError, match=r"while opening .*memory\.db"):
        await OpStore(garbage).open()


# --- damaged storage (issue 13, item 4; more in tests/hub/test_damaged_store.py) -----


def _damage_row(db_path: Path, sql: str, *params: object) -> None:
    """Change an op row behind the store's back, as a disk or a bad restore can."""
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER ops_append_only_update")
        db.execute(sql, params)
    db.close()


async def test_a_damaged_clock_column_is_found_at_open_and_does_not_poison_the_clock(
    tmp_path: Path,
) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        for i in range(3):
            await mem.learn(f"fact {i}", memory_id=f"m{i}")
    far_future = 1 << 45  # a flipped high bit of the stored wall time (year 3085)
    _damage_row(_db(tmp_path), "UPDATE ops SET hlc_ms = hlc_ms | ? WHERE seqno = 2", far_future)
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.learn("written after the damage", memory_id="m3")
        (op,) = await mem.history("m3")
        assert op.hlc.wall_ms < far_future  # the clock resumed from intact rows only
        (damaged,) = mem.store.damage.ops
        assert damaged.rowid == 2 and damaged.problem.startswith("its hlc_ms column says ")
        report = await mem.verify()
    assert not report.ok
    assert any(p.startswith("op row 2 (cid ") and "hlc_ms column" in p for p in report.problems)


async def test_a_cid_that_is_not_utf8_is_found_at_open_and_reads_still_work(
    tmp_path: Path,
) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        for i in range(3):
            await mem.learn(f"fact {i}", memory_id=f"m{i}")
    _damage_row(
        _db(tmp_path),
        "UPDATE ops SET cid = CAST(X'ff' || CAST(substr(cid, 2) AS BLOB) AS TEXT) WHERE seqno = 1",
    )
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        await mem.state_root()  # reads every CID: the damaged one no longer fails it
        assert len(await mem.export_ops()) == 2
        assert [d.rowid for d in mem.store.damage.ops] == [1]
        report = await mem.verify()
    assert [r["rowid"] for r in report.damaged_ops] == [1]


async def test_an_op_damaged_while_the_store_is_open_is_never_handed_on(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        for i in range(3):  # shared (not short-term), so gossip could hand them on
            await mem.learn(f"fact {i}", memory_id=f"m{i}", importance=0.9)
        db = mem.store.db  # bit rot under a running store
        await db.execute("DROP TRIGGER ops_append_only_update")
        await db.execute(
            "UPDATE ops SET body = CAST(replace(CAST(body AS TEXT), 'fact 1', 'fact 7') AS BLOB) "
            "WHERE seqno = 2"
        )
        assert {op.doc for op in await mem.export_ops()} == {"m0", "m2"}
        assert await mem.store.ops_of("m1") == []
        ops = await mem.store.ops_in_ranges({"agent-a": [(1, 3)]})
        assert [op.seq for op in ops] == [1, 3]
        (damaged,) = mem.store.damage.ops
        assert damaged.rowid == 2 and "altered or damaged" in damaged.problem
        summary = mem.store.damage.summary()
        assert summary["damaged_ops"] == 1 and summary["ops"][0]["rowid"] == 2
