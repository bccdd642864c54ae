"""Remote search is bounded: a cap on k, searches per agent, searches waiting in all,
the size of an answer; and sync never waits behind searches. Real hub on loopback,
raw websocket clients; the hub's embedder holds searches at a gate, so what is
running and waiting does not depend on the speed of the machine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from chrysalis_memory.config import HubConfig
from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.model import MemoryPatch, OpAuthor
from chrysalis_memory.model.ops import Creation, Op
from chrysalis_memory.sync import Acked, OpsReceived, SearchResult, ServerError, Welcome
from tests.hub.conftest import RawAgent, http_get, metric, raw_agent
from tests.hub.test_leaks import GatedEmbedder
from tests.sync.helpers import make_ops, signer_for
from tests.waiting import wait_until

GatedHub = Callable[..., Any]


@pytest.fixture
async def gated_hub(tmp_path: Path) -> AsyncIterator[GatedHub]:
    """``await gated_hub(**HubConfig fields)`` -> (hub, its GatedEmbedder)."""
    async with AsyncExitStack() as stack:

        async def factory(**fields: Any) -> tuple[Hub, GatedEmbedder]:
            embedder = GatedEmbedder()
            config = HubConfig(data_dir=tmp_path / "hub", websocket_port=0, http_port=0, **fields)
            hub = await stack.enter_async_context(Hub(config, embedder=embedder))
            stack.callback(embedder.gate.set)  # nothing stays stuck at the end
            return hub, embedder

        yield factory


def searches(hub: Hub) -> tuple[int, int]:
    usage = hub.usage()
    return usage["searches_running"], usage["searches_waiting"]


async def connect(stack: AsyncExitStack, hub: Hub, agent: str) -> RawAgent:
    token = hub.tokens.create(agent)
    raw = await raw_agent(stack, hub, agent, token, signer_for(agent).public_key)
    await raw.send(raw.protocol.hello(0))
    assert isinstance((await raw.receive())[0], Welcome)
    return raw


async def search(raw: RawAgent, k: int = 5) -> int:
    request, frame = raw.protocol.search("what is the capital of France?", k=k)
    await raw.send(frame)
    return request


async def test_one_agent_may_have_only_so_many_searches_and_sync_goes_on_meanwhile(
    gated_hub: GatedHub,
) -> None:
    hub, embedder = await gated_hub(max_searches_per_agent=2, search_workers=1)
    async with AsyncExitStack() as stack:
        raw = await connect(stack, hub, "agent-a")
        first, second = await search(raw), await search(raw)
        third = await search(raw)
        refused = await raw.answer()
        assert isinstance(refused, ServerError)
        assert (refused.code, refused.fatal, refused.request) == ("rate_limited", False, third)
        assert "max_searches_per_agent" in refused.message
        assert searches(hub) == (1, 1)
        # Pushes and pulls are answered while both searches are held.
        batch, frame = raw.protocol.push(make_ops("agent-a", 3))
        await raw.send(frame)
        ack = await raw.answer()
        assert isinstance(ack, Acked) and ack.batch == batch and len(ack.accepted) == 3
        await raw.send(raw.protocol.pull(0, 100))
        page = await raw.answer()
        assert isinstance(page, OpsReceived) and len(page.ops) == 3
        embedder.gate.set()
        answers = {(await raw.answer()), (await raw.answer())}
        assert {a.request for a in answers if isinstance(a, SearchResult)} == {first, second}
    assert searches(hub) == (0, 0)
    _, body = await http_get(hub, "/metrics")
    text = body.decode()
    assert metric(text, 'chrysalis_hub_searches_refused_total{reason="agent_limit"}') == 1
    assert metric(text, "chrysalis_hub_searches_total") == 2


async def test_searches_beyond_the_queue_are_refused_busy(gated_hub: GatedHub) -> None:
    hub, embedder = await gated_hub(search_workers=1, max_queued_searches=1)
    async with AsyncExitStack() as stack:
        a, b, c = [await connect(stack, hub, f"agent-{x}") for x in "abc"]
        await search(a)
        await embedder.entered.wait()  # a's search holds the only worker
        await search(b)

        async def queued() -> bool:
            return searches(hub)[1] == 1

        await wait_until(queued, timeout=10, what="b's search waiting")
        request = await search(c)
        refused = await c.answer()
        assert isinstance(refused, ServerError)
        assert (refused.code, refused.request) == ("rate_limited", request)
        assert "busy" in refused.message and "max_queued_searches" in refused.message
        assert searches(hub) == (1, 1)
        embedder.gate.set()
        assert isinstance(await a.answer(), SearchResult)
        assert isinstance(await b.answer(), SearchResult)
        await search(c)  # room again
        assert isinstance(await c.answer(), SearchResult)
    _, body = await http_get(hub, "/metrics")
    assert metric(body.decode(), 'chrysalis_hub_searches_refused_total{reason="busy"}') == 1


def long_id_ops(writer: str, n: int) -> list[Op]:
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000))
    author = OpAuthor(writer, signer_for(writer), HybridClock(physical=lambda: next(ticks)))
    return [
        author.make(
            f"{i:03d}-" + "m" * 250,
            MemoryPatch(create=Creation(), content=f"Paris is the capital of France ({i})."),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("fields", "most"),
    [({"max_search_k": 4}, 4), ({"max_search_answer_bytes": 4096}, 4096 // 280)],
    ids=["k capped", "answer bytes capped"],
)
async def test_a_search_answer_is_capped_in_hits_and_bytes(
    gated_hub: GatedHub, fields: dict[str, int], most: int
) -> None:
    hub, embedder = await gated_hub(**fields)
    embedder.gate.set()
    async with AsyncExitStack() as stack:
        raw = await connect(stack, hub, "agent-a")
        _, frame = raw.protocol.push(long_id_ops("agent-a", 30))
        await raw.send(frame)
        assert isinstance(await raw.answer(), Acked)
        request, frame = raw.protocol.search("capital of France", k=30)
        await raw.send(frame)
        incoming = await raw.connection.recv()
        (answer,) = raw.protocol.receive(incoming)
    assert isinstance(answer, SearchResult) and answer.request == request
    assert 1 <= len(answer.hits) <= most
    assert len(incoming) <= hub.config.max_search_answer_bytes
    scores = [hit.score for hit in answer.hits]
    assert scores == sorted(scores, reverse=True)  # the best ones were kept
