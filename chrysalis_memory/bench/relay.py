"""A bare websocket relay, the baseline of the propagation benchmark.

``python -m chrysalis_memory.bench.relay`` listens on a free loopback port and
prints it. Two clients connect and name themselves ``sender`` and
``receiver``; once both are there the receiver gets ``ready``, and from then
on every frame the sender sends is forwarded to the receiver unchanged.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, serve


async def main() -> None:
    peers: dict[str, ServerConnection] = {}
    both = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        role = str(await connection.recv())
        peers[role] = connection
        if len(peers) == 2:
            both.set()
            await peers["receiver"].send("ready")
        await both.wait()
        if role == "sender":
            async for frame in connection:
                await peers["receiver"].send(frame)
        else:
            await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"relay listening on {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
