"""Two agents edit the same memory while disconnected, then converge.

Every field merges by its own CRDT rule; both replicas end with identical
memories and identical state roots, whichever order they sync in.

    python examples/offline_agents.py [DATA_DIR]

The memory has a chosen id, so a rerun on the same DATA_DIR edits it again
rather than adding a copy (access counts add up across runs, as they should).
"""

from __future__ import annotations

import asyncio
import sys

from chrysalis_memory import AgentMemory


async def main(data_dir: str) -> None:
    async with (
        AgentMemory(agent_id="alice", data_dir=data_dir) as alice,
        AgentMemory(agent_id="bob", data_dir=data_dir) as bob,
    ):
        mid = await alice.learn(
            "Standup is at 9:30.", importance=0.8, tags=["team"], memory_id="standup-time"
        )
        await bob.merge_ops(await alice.export_ops())

        # Both edit while offline.
        await alice.update(mid, content="Standup moved to 10:00.")
        await alice.tag(mid, "schedule")
        await bob.untag(mid, "team")
        await bob.reinforce(mid, importance=0.95, evidence=["calendar invite"])
        await alice.record_access(mid)
        await bob.record_access(mid)

        # They reconnect: exchange ops both ways.
        await alice.merge_ops(await bob.export_ops())
        await bob.merge_ops(await alice.export_ops())

        a, b = await alice.get(mid), await bob.get(mid)
        assert a is not None
        assert b is not None
        print("content:   ", a.content)
        print("tags:      ", a.tags)
        print("importance:", a.importance, "| accesses:", a.access_count)
        same = await alice.state_root() == await bob.state_root()
        print(
            "converged: ",
            same and a.model_dump(exclude={"sync_status"}) == b.model_dump(exclude={"sync_status"}),
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./data"))
