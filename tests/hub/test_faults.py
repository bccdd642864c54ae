"""Faults inside the hub are handled, not fatal: a state file it cannot save, a
store that cannot take a push, a damaged row (never served). Real hub, real SQLite, raw
websocket clients; faults are made for real (a directory where a file must go,
SQLite's own page limit, a row overwritten under the store)."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.hub.server import WATERMARK_FILE, Hub
from chrysalis_memory.model import MemoryPatch, OpAuthor
from chrysalis_memory.model.ops import Creation, Op
from chrysalis_memory.sync import Acked, OpsReceived, ServerError, Welcome
from tests.hub.conftest import OpenAgent, StartHub, http_get, raw_agent
from tests.sync.helpers import make_ops, signer_for
from tests.waiting import wait_until


async def health(hub: Hub) -> tuple[int, dict[str, object]]:
    status, body = await http_get(hub, "/health")
    return status, json.loads(body)


def big_ops(writer: str, n: int, size: int = 20_000) -> list[Op]:
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000))
    author = OpAuthor(writer, signer_for(writer), HybridClock(physical=lambda: next(ticks)))
    return [
        author.make(f"{writer}-big{i}", MemoryPatch(create=Creation(), content=f"{i} " * size))
        for i in range(n)
    ]


def block_state_file(hub: Hub) -> None:
    """``hub.state`` is written to a temporary file first: a directory in its way
    makes every save fail with an OSError, as a full disk would."""
    (hub.config.data_dir / WATERMARK_FILE).with_suffix(".tmp").mkdir()


def unblock_state_file(hub: Hub) -> None:
    (hub.config.data_dir / WATERMARK_FILE).with_suffix(".tmp").rmdir()


async def test_a_state_file_that_cannot_be_saved_stops_no_housekeeping(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await start_hub()
    a = await open_agent("agent-a", hub)
    await a.learn("written before the disk filled up", importance=0.9)
    await a.sync_now()
    block_state_file(hub)

    async def degraded() -> bool:
        status, state = await health(hub)
        problems = state.get("problems") or []
        return status == 503 and state["status"] == "degraded" and "hub.state" in str(problems)

    await wait_until(degraded, timeout=10, what="/health saying hub.state cannot be saved")
    # The same background task ends revoked sessions: it must still be running.
    hub.tokens.revoke("agent-a")

    async def cut_off() -> bool:
        state = a.sync_state()
        return not hub._sessions and state is not None and state.connection != "connected"

    await wait_until(cut_off, timeout=10, what="the revoked agent's session ended")
    unblock_state_file(hub)

    async def recovered() -> bool:
        status, state = await health(hub)
        return status == 200 and state["status"] == "ok" and state["problems"] == []

    await wait_until(recovered, timeout=10, what="/health ok once the file can be saved")
    saved = json.loads((hub.config.data_dir / WATERMARK_FILE).read_text())
    assert saved == {"hub_id": hub.hub_id, "head": hub.head}


async def test_stopping_while_the_state_file_cannot_be_saved_raises_nothing(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    block_state_file(hub)

    async def failed_once() -> bool:
        saver = hub._saver
        return (await health(hub))[0] == 503 or saver is None or saver.done()

    await wait_until(failed_once, timeout=10, what="a failed save")
    await hub.close()  # neither the failed saves nor the one at close escape


async def test_a_push_the_store_cannot_take_is_answered_internal_and_the_session_goes_on(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    token = hub.tokens.create("agent-a")
    ops = big_ops("agent-a", 20)
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, hub, "agent-a", token, signer_for("agent-a").public_key)
        await raw.send(raw.protocol.hello(0))
        assert isinstance((await raw.receive())[0], Welcome)
        # SQLite's own limit: the database may not grow by a page ("database or disk is full").
        (pages,) = await (await hub.store.db.execute("PRAGMA page_count")).fetchone()  # type: ignore[misc]
        await hub.store.db.execute(f"PRAGMA max_page_count = {pages}")
        batch, frame = raw.protocol.push(ops)
        await raw.send(frame)
        answer = await raw.answer()
        assert isinstance(answer, ServerError)
        assert (answer.code, answer.fatal, answer.batch) == ("internal", False, batch)
        assert "push it again later" in answer.message
        status, state = await health(hub)
        assert status == 503 and state["status"] == "degraded"
        assert any("cannot store ops" in p for p in state["problems"])  # type: ignore[attr-defined]
        assert hub.head == 0

        await hub.store.db.execute("PRAGMA max_page_count = 1073741823")
        batch, frame = raw.protocol.push(ops)  # the same connection, the same ops
        await raw.send(frame)
        ack = await raw.answer()
        assert isinstance(ack, Acked) and ack.batch == batch and len(ack.accepted) == 20
    assert hub.head == 20

    async def recovered() -> bool:
        return (await health(hub))[1]["status"] == "ok"

    await wait_until(recovered, timeout=10, what="/health ok once the store takes ops again")


async def test_a_row_damaged_under_a_running_hub_is_never_served_and_health_says_so(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    token = hub.tokens.create("agent-a")
    reader = hub.tokens.create("agent-b")
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, hub, "agent-a", token, signer_for("agent-a").public_key)
        await raw.send(raw.protocol.hello(0))
        await raw.receive()
        pushed = make_ops("agent-a", 3)
        _, frame = raw.protocol.push(pushed)
        await raw.send(frame)
        assert isinstance(await raw.answer(), Acked)
    # Bit rot under the store: the append-only trigger is no protection against that.
    db = hub.store.db
    await db.execute("DROP TRIGGER ops_append_only_update")
    await db.execute("UPDATE ops SET body = ? WHERE seqno = 2", (b'{"not": "an op"}',))
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, hub, "agent-b", reader, signer_for("agent-b").public_key)
        await raw.send(raw.protocol.hello(0))
        await raw.receive()
        await raw.send(raw.protocol.pull(0, 100))
        (page,) = await raw.receive()
        # The damaged op is left out (the store re-derives each op's CID as it reads
        # it to serve), the others are served, and the cursor moves past all three.
        assert isinstance(page, OpsReceived)
        assert [op.cid for op in page.ops] == [pushed[0].cid, pushed[2].cid]
        assert page.cursor == 3 and not page.more
    status, state = await health(hub)
    assert status == 200 and state["status"] == "degraded"  # it still serves the rest
    assert state["damage"]["ops"][0]["rowid"] == 2  # type: ignore[index]
    assert any("damaged" in p for p in state["problems"])  # type: ignore[attr-defined]
