"""An agent with Chrysalis memory: learns two facts, recalls one, and exits.

Configuration comes from ``CHRYSALIS_*`` environment variables
(``AgentMemoryConfig.from_env()``), as in docker-compose.yml:

    CHRYSALIS_AGENT_ID=agent-001 CHRYSALIS_DATA_DIR=/data \\
    CHRYSALIS_HUB_URL=ws://sync-hub:4444 CHRYSALIS_HUB_TOKEN=chry_... \\
    python examples/agent_with_memory.py

With nothing set it runs fully offline as agent-001 under ./data/agent; a data
directory given on the command line wins over ``CHRYSALIS_DATA_DIR``:

    python examples/agent_with_memory.py [DATA_DIR]

Run it again on the same data directory and it remembers: facts it already
knows are not learned twice. With a hub, it syncs after learning, so its
recall also finds what the other agents have shared.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from chrysalis_memory import AgentMemory, AgentMemoryConfig, ChrysalisError

# What each agent of docker-compose.yml contributes; any other agent learns the first set.
FACTS: dict[str, list[tuple[str, float]]] = {
    "agent-001": [
        ("The user prefers concise explanations with code examples.", 0.9),
        ("Python asyncio requires 'await' for coroutine execution.", 0.8),
    ],
    "agent-002": [
        ("Deploys happen on Tuesdays after the standup.", 0.85),
        ("The staging database is restored from backup every night.", 0.75),
    ],
}
QUERY = "How should I explain concepts to the user?"


def load_config(argv: list[str]) -> AgentMemoryConfig:
    """The environment's configuration, with this example's offline defaults."""
    defaults: dict[str, Any] = {}
    if "CHRYSALIS_AGENT_ID" not in os.environ:
        defaults["agent_id"] = "agent-001"
    if len(argv) > 1:
        defaults["data_dir"] = argv[1]
    elif "CHRYSALIS_DATA_DIR" not in os.environ:
        defaults["data_dir"] = "./data/agent"
    return AgentMemoryConfig.from_env(**defaults)


async def main(config: AgentMemoryConfig) -> None:
    hub = config.hub_url or "none (offline)"
    print(f"agent {config.agent_id}: data {config.agent_dir}, hub {hub}")
    async with AgentMemory(config) as mem:
        known = {doc.content for doc in await mem.list(source=mem.agent_id, limit=1000)}
        for text, importance in FACTS.get(mem.agent_id, FACTS["agent-001"]):
            if text in known:
                print(f"already known: {text!r}")
            else:
                memory_id = await mem.learn(text, importance=importance, memory_type="semantic")
                print(f"learned: {text!r} ({memory_id})")

        if config.hub_url is not None:
            try:
                report = await mem.sync_now()
            except ChrysalisError as error:  # offline first: carry on with what is local
                print(f"sync with {config.hub_url} failed, working offline: {error}")
            else:
                print(
                    f"synced with {config.hub_url}: pushed {report.pushed}, pulled {report.pulled}"
                )

        print(f"recall {QUERY!r}:")
        for hit in await mem.recall(QUERY, k=2):
            memory = hit.memory
            print(f"  {hit.score:.2f}  {memory.content!r} (learned by {memory.source_instance})")

        memories = await mem.list(limit=1000)
        others = sum(1 for doc in memories if doc.source_instance != mem.agent_id)
        print(f"memories: {len(memories)} ({others} from other agents)")
        print(f"state root: {await mem.state_root()}")


if __name__ == "__main__":
    asyncio.run(main(load_config(sys.argv)))
