"""The sync hub as a script (spec §6.4): agents connect here to share memories.

    python examples/sync_hub.py                       # ws://127.0.0.1:4444, data in ./data/hub
    python examples/sync_hub.py --port 0 --http-port 0 --data-dir /tmp/hub \\
        --create-token agent-a --create-token agent-b

Settings come from ``CHRYSALIS_HUB_*`` environment variables
(``HubConfig.from_env()``: ``CHRYSALIS_HUB_HOST``, ``CHRYSALIS_HUB_WEBSOCKET_PORT``,
``CHRYSALIS_HUB_DATA_DIR``, ``CHRYSALIS_HUB_EMBEDDER``, ... see
docs/configuration.md); the options below win over them. Port 0 picks a free
port: the line the hub prints says which.

``--create-token AGENT_ID`` creates a token for that agent and prints it (only
its hash is kept: copy it now). Give it to the agent as ``hub_token``, or as
``CHRYSALIS_HUB_TOKEN``. ``chrysalis token create`` does the same without a
running hub, and ``chrysalis hub`` is this script with more options.

The hub runs until Ctrl-C or SIGTERM, then closes its store and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from chrysalis_memory import ChrysalisError, HubConfig
from chrysalis_memory.hub.server import Hub


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Chrysalis sync hub.")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="websocket port for agents (default 4444)")
    parser.add_argument("--http-port", type=int, help="/health and /metrics (default 8082)")
    parser.add_argument("--data-dir", type=Path, help="the hub's store (default ./data/hub)")
    parser.add_argument(
        "--create-token",
        action="append",
        default=[],
        metavar="AGENT_ID",
        help="create a token for this agent and print it (repeatable)",
    )
    return parser.parse_args()


async def serve(config: HubConfig, new_agents: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with Hub(config) as hub:
        for agent_id in new_agents:
            print(f"token for {agent_id}: {hub.tokens.create(agent_id)}")
        print(
            f"Chrysalis sync hub {hub.hub_id} running on {hub.url} "
            f"(health: http://{config.host}:{hub.http_port}/health), {hub.head} ops",
            flush=True,
        )
        await stop.wait()  # until Ctrl-C or SIGTERM
    print("hub stopped", flush=True)


def main() -> int:
    args = parse_args()
    overrides: dict[str, Any] = {
        "host": args.host,
        "websocket_port": args.port,
        "http_port": args.http_port,
        "data_dir": args.data_dir,
    }
    try:
        config = HubConfig.from_env(**{k: v for k, v in overrides.items() if v is not None})
        asyncio.run(serve(config, args.create_token))
    except (ChrysalisError, OSError) as error:  # a bad setting, a port in use, ...
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
