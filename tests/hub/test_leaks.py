"""Small leaks and races of the hub: state kept for handshakes that never became
sessions, and tasks whose failure nobody retrieved. Real hub on loopback."""

from __future__ import annotations

import asyncio
import gc
import http.client
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from chrysalis_memory.config import HubConfig
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.recall.embedders import HashingEmbedder
from chrysalis_memory.sync import Acked, Welcome
from tests.hub.conftest import StartHub, http_get, metric, raw_agent
from tests.sync.helpers import make_ops, signer_for
from tests.waiting import wait_until


def plain_get(port: int, token: str) -> int:
    """An authenticated HTTP GET that is not a websocket upgrade."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status
    finally:
        connection.close()


async def test_authenticated_requests_that_are_not_upgrades_leave_nothing_behind(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    token = hub.tokens.create("agent-a")

    def requests() -> list[int]:
        return [plain_get(hub.port, token) for _ in range(50)]

    statuses = await asyncio.to_thread(requests)
    assert set(statuses) == {426}  # websockets: Upgrade Required

    async def forgotten() -> bool:
        return len(hub._authenticated) == 0

    await wait_until(forgotten, timeout=10, what="the hub forgetting those handshakes")


class GatedEmbedder(HashingEmbedder):
    """Embeds only once the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.entered.set()
        await self.gate.wait()
        return await super().embed(texts)


def search_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("search for ")]


async def test_a_search_that_ends_after_its_session_leaves_no_unretrieved_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = GatedEmbedder()
    config = HubConfig(data_dir=tmp_path / "hub", websocket_port=0, http_port=0)
    async with Hub(config, embedder=embedder) as hub, AsyncExitStack() as stack:
        token = hub.tokens.create("agent-a")
        raw = await raw_agent(stack, hub, "agent-a", token, signer_for("agent-a").public_key)
        await raw.send(raw.protocol.hello(0))
        assert isinstance((await raw.receive())[0], Welcome)
        _, frame = raw.protocol.search("what is the capital of France?", k=3)
        await raw.send(frame)
        await asyncio.wait_for(embedder.entered.wait(), 10)  # the search is under way
        # The agent stops reading, and its token is revoked: the hub ends the session
        # and waits for a close handshake that does not come.
        raw.connection.transport.pause_reading()
        hub.tokens.revoke("agent-a")

        async def ended() -> bool:
            return not hub._sessions

        await wait_until(ended, timeout=10, what="the revoked session ended")
        embedder.gate.set()  # the search finishes after its session ended

        async def finished() -> bool:
            return not search_tasks()

        await wait_until(finished, timeout=10, what="the search task finished")
        gc.collect()
        await asyncio.sleep(0)
        raw.connection.transport.resume_reading()  # the close handshake may complete now
    never_retrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert never_retrieved == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_agent_over_its_log_quota_is_refused_with_a_reason(start_hub: StartHub) -> None:
    ops = make_ops("agent-a", 5)
    quota = sum(len(op.encoded) for op in ops[:3])
    hub = await start_hub(max_log_bytes_per_agent=quota)
    token = hub.tokens.create("agent-a")
    other = hub.tokens.create("agent-b")
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, hub, "agent-a", token, signer_for("agent-a").public_key)
        await raw.send(raw.protocol.hello(0))
        await raw.receive()
        _, frame = raw.protocol.push(ops)
        await raw.send(frame)
        ack = await raw.answer()
        assert isinstance(ack, Acked)
        assert ack.accepted == tuple(op.cid for op in ops[:3])
        assert set(ack.rejected) == {ops[3].cid, ops[4].cid}
        reason = ack.rejected[ops[3].cid]
        assert reason.startswith("quota_exceeded:") and "max_log_bytes_per_agent" in reason
        _, frame = raw.protocol.push(ops[:3])  # ops it holds already cost nothing
        await raw.send(frame)
        again = await raw.answer()
        assert isinstance(again, Acked) and len(again.accepted) == 3
        # Another agent has a quota of its own.
        raw_b = await raw_agent(stack, hub, "agent-b", other, signer_for("agent-b").public_key)
        await raw_b.send(raw_b.protocol.hello(0))
        await raw_b.receive()
        _, frame = raw_b.protocol.push(make_ops("agent-b", 2))
        await raw_b.send(frame)
        ack_b = await raw_b.answer()
        assert isinstance(ack_b, Acked) and len(ack_b.accepted) == 2 and not ack_b.rejected
    assert hub.head == 5
    _, body = await http_get(hub, "/metrics")
    assert metric(body.decode(), 'chrysalis_hub_ops_rejected_total{reason="quota_exceeded"}') == 2
    # The quota counts what the log holds, so a restart does not reset it.
    await hub.close()
    again_hub = await start_hub(max_log_bytes_per_agent=quota)
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, again_hub, "agent-a", token, signer_for("agent-a").public_key)
        await raw.send(raw.protocol.hello(0))
        await raw.receive()
        _, frame = raw.protocol.push(ops[3:4])
        await raw.send(frame)
        refused = await raw.answer()
        assert isinstance(refused, Acked) and list(refused.rejected) == [ops[3].cid]
