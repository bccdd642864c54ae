"""The writer that ``test_crash_safety.py`` kills with SIGKILL, over and over.

Usage: ``python tests/crash_child.py DATA_DIR SEED``

It opens the agent ``crash-agent`` in DATA_DIR, reads the memories earlier
(killed) runs left behind, prints ``{"ev": "ready", ...}`` and then writes as
fast as it can, forever: a random mix of learn, update, tag, untag,
reinforce, record_access and forget, on new memories and on old ones.

For each write it prints two lines on stdout, each flushed at once with one
``write(2)`` to the pipe:

* ``{"ev": "intent", ...}`` just *before* the call: the write may commit from
  here on, even if the process dies before the call returns;
* ``{"ev": "ack", ...}`` once the awaited call has returned: the write was
  acknowledged, so it must survive any crash from now on.

The intent lines tell the parent what an unacknowledged write might have
changed, so it can accept that (and nothing else) on top of the acknowledged
writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from chrysalis_memory import AgentMemory, AgentMemoryConfig

AGENT_ID = "crash-agent"
TAGS = ("alpha", "beta", "gamma", "delta", "eps")
WORDS = ("user", "prefers", "concise", "answers", "the", "build", "is", "green", "on", "main")
MAX_SECONDS = 120.0  # a safety net only: the parent kills us long before this


def emit(event: dict[str, Any]) -> None:
    """One line per event, written straight to the pipe (no buffering)."""
    data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def config(data_dir: str) -> AgentMemoryConfig:
    # Built directly (not from_env) so that CHRYSALIS_* variables of the
    # environment cannot change what is being tested.
    return AgentMemoryConfig(agent_id=AGENT_ID, data_dir=Path(data_dir))


async def live_memories(mem: AgentMemory) -> dict[str, list[str]]:
    """Every live (not forgotten) memory left by earlier runs, with its tags."""
    found: dict[str, list[str]] = {}
    page = 500
    while True:
        docs = await mem.list(limit=page, offset=len(found))
        found.update((doc.id, list(doc.tags)) for doc in docs)
        if len(docs) < page:
            return found


async def run(data_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    counter = 0

    def text() -> str:
        nonlocal counter
        counter += 1
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        return f"s{seed}-w{counter} {words}"

    async with AgentMemory(config(data_dir)) as mem:
        live = await live_memories(mem)
        ids = list(live)  # a list too, for rng.choice
        emit({"ev": "ready", "pid": os.getpid(), "live": len(ids)})

        def pick() -> str:
            # Half of the time one of a few "hot" memories, so that some
            # memories see many writes across many runs.
            if rng.random() < 0.5:
                return rng.choice(ids[:8])
            return rng.choice(ids)

        while time.monotonic() - started < MAX_SECONDS:
            roll = rng.random()
            if not ids or roll < 0.18:
                content = text()
                importance = round(rng.uniform(0.0, 0.6), 3)
                tags = sorted(rng.sample(TAGS, rng.randint(0, 2)))
                # Sometimes our own id, sometimes one drawn by learn() itself
                # (then the intent cannot name it: the parent matches on content).
                chosen = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                memory_id = chosen if rng.random() < 0.6 else None
                event = {
                    "op": "learn",
                    "id": memory_id,
                    "content": content,
                    "importance": importance,
                    "tags": tags,
                }
                emit({"ev": "intent", **event})
                mid = await mem.learn(
                    content, importance=importance, tags=tags, memory_id=memory_id
                )
                emit({"ev": "ack", **event, "id": mid})
                live[mid] = list(tags)
                ids.append(mid)
                continue

            mid = pick()
            if roll < 0.42:
                content = text()
                event = {"op": "update", "id": mid, "content": content}
                emit({"ev": "intent", **event})
                doc = await mem.update(mid, content=content)
            elif roll < 0.58:
                tag = rng.choice(TAGS)
                event = {"op": "tag", "id": mid, "tag": tag}
                emit({"ev": "intent", **event})
                doc = await mem.tag(mid, tag)
            elif roll < 0.68:
                present = live[mid]
                tag = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(TAGS)
                event = {"op": "untag", "id": mid, "tag": tag}
                emit({"ev": "intent", **event})
                doc = await mem.untag(mid, tag)
            elif roll < 0.80:
                importance = round(rng.uniform(0.0, 1.0), 3)
                evidence = f"e{rng.randint(0, 30)}"
                event = {
                    "op": "reinforce",
                    "id": mid,
                    "importance": importance,
                    "evidence": evidence,
                }
                emit({"ev": "intent", **event})
                doc = await mem.reinforce(mid, importance=importance, evidence=[evidence])
            elif roll < 0.97:
                event = {"op": "access", "id": mid}
                emit({"ev": "intent", **event})
                doc = await mem.record_access(mid)
            else:
                event = {"op": "forget", "id": mid}
                emit({"ev": "intent", **event})
                await mem.forget(mid)
                emit({"ev": "ack", **event})
                del live[mid]
                ids.remove(mid)
                continue
            live[mid] = list(doc.tags)
            emit({"ev": "ack", **event, "version": doc.version})
    sys.exit(3)  # only if the parent never killed us


def main() -> None:
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    asyncio.run(run(data_dir, seed))


if __name__ == "__main__":
    main()
