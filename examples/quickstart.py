"""Quick start: one agent learns, reinforces and lists memories, fully offline.

python examples/quickstart.py [DATA_DIR]

Each memory has an id of its own choosing (``memory_id=``), so running this
again updates those memories instead of adding copies of them.
"""

from __future__ import annotations

import asyncio
import sys

from chrysalis_memory import AgentMemory


async def main(data_dir: str) -> None:
    async with AgentMemory(agent_id="agent-001", data_dir=data_dir) as mem:
        mid = await mem.learn(
            "The user prefers concise answers.",
            importance=0.9,
            memory_type="semantic",
            tags=["user"],
            memory_id="user-prefers-concise-answers",
        )
        await mem.reinforce(mid, confidence=0.95, evidence=["said so on 2026-11-20"])
        doc = await mem.get(mid)
        assert doc is not None
        print(f"{doc.content!r}: importance {doc.importance}, confidence {doc.confidence}")
        print("memories tagged 'user':", [d.content for d in await mem.list(tags=["user"])])
        print("history:", [f"{op.writer}#{op.seq}" for op in await mem.history(mid)])
        await mem.learn(
            "Deploys happen on Tuesdays after the standup.",
            importance=0.8,
            memory_id="deploys-on-tuesdays",
        )
        for hit in await mem.recall("how should I answer the user?", k=1):
            print(f"recalled: {hit.memory.content!r} (score {hit.score:.2f})")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./data"))
