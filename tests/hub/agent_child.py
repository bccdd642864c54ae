"""Agents in a child process, driven by ``tests/hub/test_processes.py``.

Usage: ``python tests/hub/agent_child.py SPEC.json``

SPEC.json names the hub and the agents this process runs::

    {"hub_url": "ws://127.0.0.1:PORT", "data_dir": "...",
     "agents": [{"agent_id": "agent-a", "token": "chry_..."}, ...]}

The child opens every agent (each an ``AgentMemory`` syncing with the hub in
the background, hashing embedder; with ``"warm_recall": true`` the first one
opens its recall index too), prints ``{"ev": "ready"}`` and then runs
the commands it reads on stdin, one JSON object per line, in order. It
answers each on stdout, one JSON object per line (written straight to the
pipe, so the parent sees it at once):

* ``{"cmd": "sync", "timeout": 30}``: ``sync_now`` on every agent, then
  ``{"ev": "synced", "agents": [STATE, ...]}`` (see :func:`state`);
* ``{"cmd": "state"}``: ``{"ev": "state", "agents": [STATE, ...]}`` now;
* ``{"cmd": "learn", "text": "...", "importance": 0.9}``: the first agent
  learns it; ``{"ev": "learned", "id": ID, "t": time.time() once learn returned}``;
* ``{"cmd": "find", "query": "...", "needle": "...", "timeout": 20}``: the first
  agent recalls ``query`` until a hit contains ``needle`` (or the timeout
  passes); ``{"ev": "found", "t": time.time() of the successful recall,
  "found": bool, "recalls": N, "content": ...}``;
* ``{"cmd": "write_many", "n": 400, "prefix": "p", "pace_s": 0.005}``: the
  first agent learns ``n`` memories (importance 0.9) and prints
  ``{"ev": "wrote", "i": i}`` after each one, then ``{"ev": "wrote_all"}``;
* ``{"cmd": "workload", "first_index": 10}``: every agent at once (numbered
  from ``first_index``) writes its own memories and, concurrently with
  everyone else, the shared ones (see :func:`workload`); then
  ``{"ev": "worked", "agents": [STATE, ...]}``;
* ``{"cmd": "exit"}`` (or end of stdin): close every agent, print
  ``{"ev": "closed"}``, exit 0.

Anything that goes wrong is printed as ``{"ev": "error", "error": ...}`` and
exits 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make ``tests.waiting`` importable
    sys.path.insert(0, str(REPO))

from chrysalis_memory import AgentMemory  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

SHARED_IDS = ("shared-0", "shared-1", "shared-2")
"""Memories every agent of the workload writes to, concurrently."""


def emit(event: dict[str, Any]) -> None:
    """One line per event, written straight to the pipe (no buffering)."""
    data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


async def state(mem: AgentMemory) -> dict[str, Any]:
    """What the parent checks of one agent: its root, op counts and sync state."""
    sync = mem.sync_state()
    assert sync is not None
    return {
        "agent_id": mem.agent_id,
        "root": await mem.state_root(),
        "counts": await mem.store.counts(),
        "connection": sync.connection,
        "hub_id": sync.hub_id,
        "cursor": sync.cursor,
        "pushed": sync.pushed,
        "pulled": sync.pulled,
        "last_error": sync.last_error,
    }


async def workload(mem: AgentMemory, index: int) -> None:
    """One agent's share of the 50-agent test: its own memories, and every kind
    of write on the shared ones (each agent creates them too: concurrent
    creations merge)."""
    mine = [
        await mem.learn(f"agent {index} fact {j}", importance=0.9, tags=[f"agent-{index}"])
        for j in range(2)
    ]
    for doc in SHARED_IDS:
        await mem.learn(
            f"{doc} as first told by agent {index}",
            memory_id=doc,
            importance=0.9,
            tags=[f"by-{index}"],
        )
    for doc in SHARED_IDS:
        await mem.update(doc, content=f"{doc} rewritten by agent {index}")
        await mem.tag(doc, f"t{index % 7}")
        await mem.reinforce(doc, confidence=0.5 + index / 200, evidence=[f"seen by {index}"])
        await mem.record_access(doc)
    await mem.link(mine[0], SHARED_IDS[index % len(SHARED_IDS)])


async def find(mem: AgentMemory, query: str, needle: str, timeout: float) -> dict[str, Any]:
    recalls = 0
    hit: dict[str, Any] = {}

    async def recalled() -> bool:
        nonlocal recalls
        recalls += 1
        for h in await mem.recall(query, k=3):
            if needle in h.memory.content:
                hit.update(t=time.time(), content=h.memory.content, id=h.memory.id)
                return True
        return False

    try:
        await wait_until(recalled, timeout=timeout, poll=0.01, what=f"a hit with {needle!r}")
    except AssertionError:
        return {"ev": "found", "found": False, "t": time.time(), "recalls": recalls}
    return {"ev": "found", "found": True, "recalls": recalls, **hit}


async def run(spec: dict[str, Any]) -> None:
    agents = [
        AgentMemory(
            agent_id=a["agent_id"],
            data_dir=Path(spec["data_dir"]),
            hub_url=spec["hub_url"],
            hub_token=a["token"],
            embedder="hashing",
        )
        for a in spec["agents"]
    ]
    try:
        for mem in agents:
            await mem.open()
        if spec.get("warm_recall"):
            await agents[0].recall("warming up the index", record_access=False)
        emit({"ev": "ready", "pid": os.getpid()})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            name = command["cmd"]
            if name == "exit":
                break
            if name == "sync":
                for mem in agents:
                    await mem.sync_now(timeout=command.get("timeout", 30))
                emit({"ev": "synced", "agents": [await state(m) for m in agents]})
            elif name == "state":
                emit({"ev": "state", "agents": [await state(m) for m in agents]})
            elif name == "learn":
                mid = await agents[0].learn(command["text"], importance=command["importance"])
                emit({"ev": "learned", "id": mid, "t": time.time()})
            elif name == "find":
                emit(await find(agents[0], command["query"], command["needle"], command["timeout"]))
            elif name == "write_many":
                pace = command.get("pace_s", 0.0)
                for i in range(command["n"]):
                    await agents[0].learn(f"{command['prefix']} memory {i}", importance=0.9)
                    emit({"ev": "wrote", "i": i})
                    if pace:
                        # Pacing, so that the writes span the parent's kill and restart
                        # of the hub (not a wait for anything).
                        await asyncio.sleep(pace)
                emit({"ev": "wrote_all"})
            elif name == "workload":
                first = command["first_index"]
                await asyncio.gather(*(workload(m, first + i) for i, m in enumerate(agents)))
                emit({"ev": "worked", "agents": [await state(m) for m in agents]})
            else:
                raise ValueError(f"unknown command {name!r}")
    finally:
        for mem in agents:
            await mem.close()
    emit({"ev": "closed"})


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        asyncio.run(run(spec))
    except BaseException as error:
        emit({"ev": "error", "error": f"{type(error).__name__}: {error}"})
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
