"""The agent's sync worker over a real websocket, against a hub that misbehaves
(a websocket server on loopback speaking the protocol with the real
ServerProtocol, then breaking it on purpose).

Found by the fault-and-attack suite (tests/faults/test_hub_set.py): when a
session ended on a protocol violation while the hub had more frames on their
way, the worker stopped reading them, websockets paused the socket once 16
frames were queued, and so never saw the hub's answer to its close: it waited
out the close timeout (10 s) before it could reconnect, pushing nothing
meanwhile, and sync_now() waited as long.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chrysalis_memory import AgentMemory
from chrysalis_memory.sync import HelloReceived, ServerProtocol
from tests.waiting import wait_until

QUEUED = 40  # frames sent after the violation: more than websockets queues (16)


async def test_a_session_ended_by_a_violation_reconnects_without_waiting_out_the_close(
    tmp_path: Path,
) -> None:
    sessions: list[float] = []

    async def hub(connection: ServerConnection) -> None:
        sessions.append(time.monotonic())
        protocol = ServerProtocol("hub-test", authenticated_agent="agent-a")
        hello = protocol.receive(await connection.recv())
        assert isinstance(hello[0], HelloReceived)
        await connection.send(protocol.welcome(0, {}), text=True)
        if len(sessions) > 1:
            await connection.wait_closed()  # a quiet hub from now on
            return
        # An ack for a batch never pushed (a violation), then more frames at once.
        violation = {"type": "ack", "v": 1, "batch": 12345, "accepted": [], "rejected": []}
        await connection.send(json.dumps(violation), text=True)
        for _ in range(QUEUED):
            await connection.send(protocol.update([], 0, 0), text=True)
        try:  # read what the agent says (its error, its close), then close
            async for _ in connection:
                pass
        except ConnectionClosed:
            pass

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with AgentMemory(
            agent_id="agent-a",
            data_dir=tmp_path,
            hub_url=f"ws://127.0.0.1:{port}",
            hub_token="chry_" + "x" * 43,
            embedder="hashing",
        ):

            async def reconnected() -> bool:
                return len(sessions) >= 2

            # Backoff after one failed session: at most 0.4 s. The close timeout: 10 s.
            await wait_until(reconnected, timeout=20, what="a second session")
    assert sessions[1] - sessions[0] < 5, f"reconnected after {sessions[1] - sessions[0]:.1f} s"
