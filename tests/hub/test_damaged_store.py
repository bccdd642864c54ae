"""A hub or an agent whose database file was damaged (issue 13, item 4): real
SQLite files, bits flipped at seeded random offsets. The hub either refuses to
start, naming the file and ``chrysalis verify``, or starts, says it is degraded
and never serves a damaged op: an agent syncing from it gets every intact op and
nothing else, and its own verify() is clean."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import StoreCorruptError
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.model.ops import Op
from chrysalis_memory.store import OpStore
from chrysalis_memory.store.verify import verify_store
from chrysalis_memory.verifier import SignatureVerifier
from tests.hub.conftest import OpenAgent, StartHub, http_get
from tests.storage_damage import flip_anywhere, flip_op_bytes, flip_page_types


async def _filled_hub(start_hub: StartHub, open_agent: OpenAgent, memories: int = 40) -> Hub:
    """A hub holding ``memories`` shared memories of each of two agents (and their
    embeddings), stopped, with its database closed: ready to be damaged."""
    hub = await start_hub()
    agents = [await open_agent(name, hub) for name in ("agent-a", "agent-b")]
    for i in range(memories):
        for mem in agents:
            await mem.learn(
                f"{mem.agent_id} noted fact {i}: the mill stands by the river",
                memory_id=f"{mem.agent_id}-{i}",
                importance=0.9,  # shared (promoted), not short-term
                tags=["mill"],
            )
    for mem in agents:
        await mem.sync_now()
        await mem.close()
    await hub.close()
    return hub


def _cids(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT cid, seqno FROM ops").fetchall()
    conn.close()
    return dict(rows)


def _spy_on_pages(hub: Hub) -> list[Op]:
    """Every op the hub puts in a page it serves."""
    served: list[Op] = []
    page: Callable[[int, int], Awaitable[tuple[list[Op], int, bool]]] = hub.page

    async def spy(after: int, limit: int) -> tuple[list[Op], int, bool]:
        ops, cursor, more = await page(after, limit)
        served.extend(ops)
        return ops, cursor, more

    hub.page = spy  # type: ignore[method-assign]
    return served


async def _verify_file(db: Path) -> tuple[bool, list[str], list[dict[str, object]]]:
    store = OpStore(db, read_only=True)
    verifier = SignatureVerifier()
    await store.open()
    try:
        report = await verify_store(store, verifier)
    finally:
        verifier.close()
        await store.close()
    return report.ok, report.problems, report.damaged_ops


async def test_a_hub_with_damaged_op_bytes_serves_only_intact_ops_and_says_degraded(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await _filled_hub(start_hub, open_agent)
    db = hub.config.db_path
    held = _cids(db)
    damaged = flip_op_bytes(db, flips=20, seed=4)
    assert len(damaged) >= 10  # 20 flips over 160 ops: a few share an op
    intact = {cid for cid in held if cid not in set(damaged.values())}

    hub = await start_hub()  # starts: the file's structure is sound, only ops are damaged
    served = _spy_on_pages(hub)
    reader = await open_agent("agent-c", hub)
    await reader.sync_now()
    got = {op.cid for op in await reader.export_ops()}
    assert got == intact  # every intact op, and no damaged one
    assert {op.cid for op in served} <= intact
    assert (await reader.verify()).ok

    status, body = await http_get(hub, "/health")
    health = json.loads(body)
    # Degraded, but serving every intact op: not taken out of a load balancer's pool.
    assert status == 200 and health["status"] == "degraded"
    assert health["damage"]["damaged_ops"] == len(damaged)
    assert any("damaged and not served" in p for p in health["problems"])
    assert {d.rowid for d in hub.store.damage.ops} == set(damaged)
    assert await reader.state_root() == await hub.store.state_root()

    # verify names every damaged row: its number, its CID, what is wrong.
    await hub.close()
    ok, problems, rows = await _verify_file(db)
    assert not ok
    assert {(r["rowid"], r["cid"]) for r in rows} == set(damaged.items())
    for rowid, cid in damaged.items():
        assert any(p.startswith(f"op row {rowid} (cid {cid[:16]}…): ") for p in problems)
    assert all("altered or damaged" in str(r["problem"]) for r in rows)


async def test_a_hub_whose_file_structure_is_damaged_refuses_to_start(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await _filled_hub(start_hub, open_agent)
    db = hub.config.db_path
    flip_page_types(db, pages=3, seed=1)
    with pytest.raises(StoreCorruptError) as refused:
        await start_hub()
    message = str(refused.value)
    assert refused.value.path == db
    assert f"{db} is damaged" in message
    assert f"chrysalis verify --db {db}" in message
    ok, problems, _ = await _verify_file(db)
    assert not ok and any(p.startswith("SQLite's integrity check: ") for p in problems)


@pytest.mark.parametrize("seed", range(6))
async def test_a_hub_with_random_bit_flips_anywhere_never_serves_a_damaged_op(
    start_hub: StartHub, open_agent: OpenAgent, seed: int
) -> None:
    hub = await _filled_hub(start_hub, open_agent, memories=15)
    db = hub.config.db_path
    held = set(_cids(db))
    flip_anywhere(db, flips=20, seed=seed)
    refused: StoreCorruptError | None = None
    try:
        hub = await start_hub()
    except StoreCorruptError as error:
        refused = error
    if refused is not None:  # found at open: the file's structure is damaged
        assert f"{db} is damaged" in str(refused) and "chrysalis verify" in str(refused)
        return
    served = _spy_on_pages(hub)
    reader = await open_agent(f"reader-{seed}", hub)
    await reader.sync_now()
    got = {op.cid for op in await reader.export_ops()}
    assert {op.cid for op in served} <= held
    assert got <= held
    damaged = {d.cid for d in hub.store.damage.ops}
    assert got == {op.cid for op in served}
    assert not got & damaged
    assert (await reader.verify()).ok
    if hub.store.damage:
        assert hub.health()["status"] == "degraded"


async def test_an_agent_with_damaged_op_bytes_opens_and_never_pushes_them(
    start_hub: StartHub, open_agent: OpenAgent, tmp_path: Path
) -> None:
    writer = await open_agent("agent-a")  # offline: every op stays pending
    for i in range(60):
        await writer.learn(f"fact {i} about the mill", memory_id=f"m{i}", importance=0.9)
    db = writer.store.path
    assert db is not None
    await writer.close()
    held = _cids(db)
    damaged = flip_op_bytes(db, flips=20, seed=7)
    assert len(damaged) >= 10

    hub = await start_hub()
    writer = await open_agent("agent-a", hub)  # opens: only ops are damaged
    intact = set(held) - set(damaged.values())
    await writer.sync_now()
    assert {op.cid async for _, op, _ in hub.store.iter_ops()} == intact
    assert {op.cid for op in await writer.export_ops()} == intact
    assert {d.rowid for d in writer.store.damage.ops} == set(damaged)
    report = await writer.verify()
    assert not report.ok
    assert {(r["rowid"], r["cid"]) for r in report.damaged_ops} == set(damaged.items())


async def test_an_agent_whose_file_structure_is_damaged_refuses_to_open(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as mem:
        for i in range(60):
            await mem.learn(f"fact {i} about the mill", memory_id=f"m{i}")
    db = tmp_path / "agent-a" / "memory.db"
    flip_page_types(db, pages=2, seed=3)
    with pytest.raises(StoreCorruptError) as refused:
        await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()
    assert f"{db} is damaged" in str(refused.value)
    assert f"chrysalis verify --db {db}" in str(refused.value)
    # The failed open let go of the data directory: trying again says the same.
    with pytest.raises(StoreCorruptError):
        await AgentMemory(agent_id="agent-a", data_dir=tmp_path).open()


async def test_a_hub_whose_schema_text_is_damaged_refuses_to_start(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    # One bit of the ops table's definition: its body column is now "cody". SQLite's
    # checks pass (the text is still valid SQL), and every read of an op would fail.
    hub = await _filled_hub(start_hub, open_agent, memories=2)
    db = hub.config.db_path
    data = bytearray(db.read_bytes())
    at = data.find(b"body        BLOB NOT NULL")
    assert at > 0 and data.find(b"body        BLOB NOT NULL", at + 1) < 0
    data[at] ^= 0x01
    db.write_bytes(data)
    with pytest.raises(StoreCorruptError) as refused:
        await start_hub()
    assert f"{db} is damaged: the definition of its table 'ops'" in str(refused.value)
    ok, problems, _ = await _verify_file(db)
    assert not ok and "the schema: the definition of its table 'ops'" in "\n".join(problems)
