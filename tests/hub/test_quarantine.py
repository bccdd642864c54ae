"""A refused op never costs other ops (invariant 7): a page from the hub with one op
this agent refuses is stored op by op, the refused op is quarantined with its
reason, the cursor moves only past ops stored or quarantined, sync_now() and
chrysalis status say so, and a quarantined op whose cause goes away is stored.
Real hubs on loopback, real agent stores."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from chrysalis_memory import AgentMemory
from chrysalis_memory.cli.app import app
from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.errors import StoreError
from chrysalis_memory.model import MemoryPatch, OpAuthor
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import Creation, Op, Signer, decode_op
from chrysalis_memory.store import OpStore
from chrysalis_memory.sync.client import Backoff
from tests.hub.conftest import OpenAgent, StartHub, free_port
from tests.waiting import wait_until

GOOD = 150


def impostor_op(writer: str) -> Op:
    """An op claiming ``writer``, signed with a key that is not ``writer``'s."""
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000))
    author = OpAuthor(writer, Signer.generate(), HybridClock(physical=lambda: next(ticks)))
    patch = MemoryPatch(create=Creation(), content="not from w", importance=0.9)
    return author.make("impostor-1", patch)


async def learn_many(agent: AgentMemory, n: int, prefix: str) -> None:
    for i in range(n):
        await agent.learn(f"{prefix} fact number {i}", memory_id=f"{prefix}-{i}", importance=0.9)
    await agent.sync_now()


async def missing(agent: AgentMemory, prefix: str, n: int = GOOD) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n) if await agent.get(f"{prefix}-{i}") is None]


def status(data_dir: Path, agent: str, *options: str) -> str:
    result = CliRunner().invoke(
        app, ["status", "--data-dir", str(data_dir), "--agent-id", agent, *options]
    )
    assert result.exit_code == 0, result.output
    return result.output


async def test_one_refused_op_in_a_page_costs_none_of_the_others(
    start_hub: StartHub, open_agent: OpenAgent, tmp_path: Path
) -> None:
    hub = await start_hub()
    # C first met writer "w" through an impostor's op (merged from a file, say): "w"
    # is pinned, on C, to a key that is not the one the hub bound to the real w.
    c = await open_agent("c")
    await c.merge_ops([impostor_op("w")])
    await c.close()
    w = await open_agent("w", hub)
    await w.learn("written by the real w", memory_id="w-1", importance=0.9)
    await w.sync_now()
    a = await open_agent("a", hub)
    await learn_many(a, GOOD, "a")
    # C's first page holds w's op, which C refuses, and 99 of A's.
    c = await open_agent("c", hub)
    report = await c.sync_now()
    assert await missing(c, "a") == []  # all of A's ops, the refused one's page too
    assert await c.get("w-1") is None
    assert report.cursor == hub.head  # past every op: stored, or quarantined
    assert report.quarantined == 1 and report.quarantine_reasons == {"forged_writer": 1}
    state = c.sync_state()
    assert state is not None and state.cursor == hub.head
    assert (state.quarantined, state.quarantine_reasons) == (1, {"forged_writer": 1})
    (entry,) = await c.store.quarantined()
    (real,) = [op for op in await w.export_ops() if op.doc == "w-1"]
    assert (entry.cid, entry.writer, entry.body) == (real.cid, "w", real.encoded)
    assert entry.reason == "forged_writer" and "pinned to another public key" in entry.detail

    # chrysalis status says so, while C runs.
    agents_dir = tmp_path / "agents"
    shown = await asyncio.to_thread(status, agents_dir, "c")
    assert "  quarantine  1 op refused, kept aside: 1 forged_writer\n" in shown
    data = json.loads(await asyncio.to_thread(status, agents_dir, "c", "--json"))
    (agent,) = data["agents"]
    assert agent["quarantined"] == 1 and agent["quarantine"] == {"forged_writer": 1}

    # A restart keeps all of it: the ops, the cursor and the quarantine.
    await c.close()
    c = await open_agent("c", hub)
    state = c.sync_state()
    assert state is not None and state.quarantined == 1
    again = await c.sync_now()
    assert again.refused == 0 and again.pulled == 0 and again.cursor == hub.head
    assert again.quarantine_reasons == {"forged_writer": 1}
    assert await missing(c, "a") == []
    (entry,) = await c.store.quarantined()
    assert entry.attempts == 2  # tried again at the new session, refused again


async def test_an_op_the_hub_holds_damaged_costs_none_of_the_others(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    port = free_port()  # the same address after the restart
    hub = await start_hub(websocket_port=port)
    a = await open_agent("a", hub)
    await learn_many(a, 50, "a")
    # One op altered on the hub's disk after it was accepted: its signature no
    # longer verifies. (Planted through the hub's own store, hub stopped.)
    await hub.close()
    one = next(op for op in await a.export_ops() if op.doc == "a-0")
    altered = json.loads(one.encoded)
    # Stamped after everything a writes in this test, so that only its signature is
    # wrong (a clock that went back would be refused as backdated first).
    altered["seq"], altered["doc"] = 10_000, "a-altered"
    altered["hlc"] = [one.hlc[0] + 3_600_000, 0]
    damaged = decode_op(altered)
    store = OpStore(hub.config.db_path)
    await store.open()
    try:
        await store.ingest([damaged], SyncStatus.SYNCED)
    finally:
        await store.close()
    hub = await start_hub(websocket_port=port)
    await learn_many(a, 100, "b")
    c = await open_agent("c", hub)
    report = await c.sync_now()
    assert await missing(c, "a", 50) == [] and await missing(c, "b", 100) == []
    assert await c.get("a-altered") is None
    assert report.cursor == hub.head
    assert report.quarantine_reasons == {"bad_signature": 1}
    (entry,) = await c.store.quarantined()
    assert entry.cid == damaged.cid and entry.writer == "a"


async def test_a_quarantined_op_is_stored_once_the_hub_confirms_its_key(
    start_hub: StartHub, open_agent: OpenAgent, tmp_path: Path
) -> None:
    # C learns w's key from a first hub, then moves to another one, where an agent
    # called w joined with a key of its own. C holds nothing of the first w.
    first = await start_hub(data_dir=tmp_path / "hub1")
    w1 = await open_agent("w", first, data_dir=tmp_path / "w1")
    await w1.sync_now()
    c = await open_agent("c", first)
    await c.sync_now()
    await c.close()
    second = await start_hub(data_dir=tmp_path / "hub2")
    c = await open_agent("c", second)
    await c.sync_now()  # another hub: C starts over with it (w is not known there yet)
    # The new w writes while C is connected: its op reaches C live, before any
    # welcome has told C the key the new w is bound to, and C refuses it.
    w2 = await open_agent("w", second, data_dir=tmp_path / "w2")
    await w2.learn("written by the w of the second hub", memory_id="w-2", importance=0.9)
    await w2.sync_now()
    await c.sync_now()
    assert await c.get("w-2") is None
    # At the next session the hub's welcome confirms the new w's key: C's pin vouched
    # for no op it holds, so the hub's word wins, and the quarantined op is stored.
    await c.close()
    c = await open_agent("c", second)
    await c.sync_now()
    doc = await c.get("w-2")
    assert doc is not None and doc.content == "written by the w of the second hub"
    state = c.sync_state()
    assert state is not None and state.quarantined == 0 and state.quarantine_reasons == {}
    assert await c.store.quarantined() == []
    assert await c.state_root() == await w2.state_root()


@dataclasses.dataclass(frozen=True)
class RecordingBackoff(Backoff):
    """Records the failure count each delay is asked for; the delays are short."""

    asked: list[int] = dataclasses.field(default_factory=list)

    def delay(self, failures: int, rand: Callable[[], float] = lambda: 1.0) -> float:
        self.asked.append(failures)
        return 0.01


async def test_a_hub_failing_right_after_its_welcome_is_not_reconnected_to_at_once(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await start_hub()
    pulls = 0

    async def page(after: int, limit: int) -> tuple[list[Op], int, bool]:
        nonlocal pulls
        pulls += 1
        raise StoreError("the hub's store failed")  # fatal internal error, 1011

    hub.page = page  # type: ignore[method-assign]
    a = await open_agent("a", hub)
    sync = a._sync
    assert sync is not None
    # Sessions never stay up long enough to count as working by time alone: only
    # what they did counts, however slow the machine.
    backoff = RecordingBackoff(reset_after_s=math.inf)
    sync.backoff = backoff

    async def sessions() -> bool:
        return len(backoff.asked) >= 6

    await wait_until(sessions, timeout=20, what="six failed sessions")
    assert pulls >= 5  # each was welcomed, then failed on its first pull
    asked = backoff.asked[:6]
    assert asked == list(range(asked[0], asked[0] + 6)) and asked[0] >= 1  # never reset
    state = a.sync_state()
    assert state is not None and "internal" in (state.last_error or "")
