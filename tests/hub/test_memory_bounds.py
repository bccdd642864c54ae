"""The hub's memory is bounded in bytes, whatever its agents ask for: a client that
pulls and never reads is dropped at its send queue's byte bound, and frames sent
halfway are held only up to the receive budget. Real hub on loopback, raw
websocket clients; memory is what the hub counts (Hub.usage()), not RSS."""

from __future__ import annotations

import os
import socket
import struct
from contextlib import AsyncExitStack

from chrysalis_memory.hub.server import Hub
from chrysalis_memory.sync import Acked, OpsReceived, Welcome
from tests.hub.conftest import RawAgent, StartHub, http_get, metric, raw_agent
from tests.hub.test_faults import big_ops
from tests.sync.helpers import make_ops, signer_for
from tests.waiting import wait_until

MIB = 1 << 20


async def connect(stack: AsyncExitStack, hub: Hub, agent: str) -> RawAgent:
    token = hub.tokens.create(agent)
    raw = await raw_agent(stack, hub, agent, token, signer_for(agent).public_key)
    await raw.send(raw.protocol.hello(0))
    assert isinstance((await raw.receive())[0], Welcome)
    return raw


def stop_reading(raw: RawAgent) -> None:
    """The client reads nothing more, and its kernel buffers little for it."""
    sock = raw.connection.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connection.transport.pause_reading()


async def dropped(hub: Hub) -> float:
    _, body = await http_get(hub, "/metrics")
    return metric(body.decode(), "chrysalis_hub_slow_consumers_dropped_total")


async def test_a_client_that_pulls_and_never_reads_is_dropped_at_its_byte_bound(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(send_queue_bytes=2 * MIB)
    async with AsyncExitStack() as stack:
        writer = await connect(stack, hub, "agent-w")
        for start in range(0, 40, 10):  # 40 memories of about 40 KB: pages of 1.6 MB
            _, frame = writer.protocol.push(big_ops("agent-w", 40)[start : start + 10])
            await writer.send(frame)
            assert isinstance(await writer.answer(), Acked)
        greedy = await connect(stack, hub, "agent-greedy")
        stop_reading(greedy)
        most = 0
        for _ in range(200):  # the attack: pull, pull, pull, and never read
            await greedy.send(greedy.protocol.pull(0, 100))
            most = max(most, hub.usage()["send_queued_bytes"])
            if await dropped(hub):
                break
        assert await dropped(hub) == 1
        # Bounded by the queue's bound plus the frame being written (and its copy).
        assert most <= 2 * MIB + 2 * 1_700_000
        assert hub.usage()["send_queued_bytes"] == 0  # all of it let go with the reader
        # Everyone else is served as before.
        _, frame = writer.protocol.push(make_ops("agent-w", 1, start=100))
        await writer.send(frame)
        assert isinstance(await writer.answer(), Acked)
        await writer.send(writer.protocol.pull(0, 10))
        page = await writer.answer()
        assert isinstance(page, OpsReceived) and len(page.ops) == 10

        async def cut_off() -> bool:  # the hub let go of its connection
            _, body = await http_get(hub, "/metrics")
            return metric(body.decode(), "chrysalis_hub_connections") == 1

        await wait_until(cut_off, timeout=10, what="the greedy client's connection closed")
        greedy.connection.transport.abort()  # no close handshake to wait for on this side


def partial_frame(length: int, sent: int) -> bytes:
    """The start of a masked text frame announcing ``length`` bytes: ``sent`` of them."""
    header = struct.pack("!BBQ", 0x81, 0x80 | 127, length) + os.urandom(4)
    return header + b"x" * sent


async def test_frames_sent_halfway_are_held_only_up_to_the_receive_budget(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(receive_total_bytes=4 * MIB)
    per_connection = hub.receiving.per_connection
    async with AsyncExitStack() as stack:
        good = await connect(stack, hub, "agent-good")
        slow = [await connect(stack, hub, f"agent-slow{i}") for i in range(3)]
        # Each sends 3 MiB of a 5 MiB frame, then nothing: 9 MiB the hub may not hold.
        for raw in slow:
            raw.connection.transport.write(partial_frame(5 * MIB, 3 * MIB))

        async def held_back() -> bool:
            usage = hub.usage()
            return usage["receive_paused_connections"] >= 1 and (
                usage["receive_buffered_bytes"] > 4 * MIB
            )

        await wait_until(held_back, timeout=20, what="reading paused past the budget")
        usage = hub.usage()
        assert usage["receive_buffered_bytes"] <= 4 * MIB + per_connection + 256 * 1024
        assert usage["receive_buffered_bytes"] < 9 * MIB
        for raw in slow:  # they give up: what they held is let go, and reading resumes
            raw.connection.transport.abort()

        async def released() -> bool:
            usage = hub.usage()
            return usage["receive_buffered_bytes"] == 0 and not usage["receive_paused_connections"]

        await wait_until(released, timeout=20, what="the budget let go")
        _, frame = good.protocol.push(make_ops("agent-good", 3))
        await good.send(frame)
        ack = await good.answer()
        assert isinstance(ack, Acked) and len(ack.accepted) == 3
