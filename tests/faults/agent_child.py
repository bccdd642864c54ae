"""One agent in a child process, for the fault-and-attack suite (tests/faults/).

Usage: ``python tests/faults/agent_child.py SPEC.json``

SPEC.json: ``{"agent_id": ..., "data_dir": ..., "hub_url": ... | null,
"hub_token": ... | null, "gossip": {GossipConfig fields} | null}``. The child
opens the agent (hashing embedder), prints ``{"ev": "ready"}`` and then runs
the commands it reads on stdin, one JSON object per line, while writing in the
background. Every answer is one JSON line on stdout, written straight to the
pipe with one ``write(2)``, so a line the parent reads was printed before any
kill:

* ``{"cmd": "write", "start": 0, "n": 300, "pace_s": 0.01}``: learns memories
  ``AGENT-0000``, ``AGENT-0001``, ... in the background. For each one it prints
  ``{"ev": "intent", "i": i}`` just before ``learn`` and ``{"ev": "ack", "i": i,
  "id": ...}`` once ``learn`` has returned: from then on the write is
  acknowledged. A memory already there (a write that committed just before an
  earlier run of this agent was killed, unacknowledged) is reported as
  ``{"ev": "present", "i": i}`` and not written again. Then ``{"ev": "wrote"}``.
* ``{"cmd": "sync", "timeout": 30}``: ``sync_now``; ``{"ev": "synced", ...}``
  with the report, or ``{"ev": "sync_failed", "error": ...}``.
* ``{"cmd": "state"}``: ``{"ev": "state", ...}``: state root, op counts, sync
  and gossip state (see :func:`state`).
* ``{"cmd": "history", "id": ...}``: ``{"ev": "history", "cids": [...]}``, the
  CIDs of the memory's ops as this replica holds them.
* ``{"cmd": "exit"}`` (or end of stdin): closes the agent, prints
  ``{"ev": "closed"}`` and exits 0.

Anything unexpected is printed as ``{"ev": "error", ...}`` and exits 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from chrysalis_memory import AgentMemory, GossipConfig


def emit(event: dict[str, Any]) -> None:
    data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def memory_id(agent_id: str, i: int) -> str:
    return f"{agent_id}-{i:04d}"


async def state(mem: AgentMemory) -> dict[str, Any]:
    sync = mem.sync_state()
    gossip = mem.gossip_state()
    return {
        "ev": "state",
        "agent_id": mem.agent_id,
        "root": await mem.state_root(),
        "counts": await mem.store.counts(),
        "sync": None if sync is None else dataclasses.asdict(sync),
        "gossip": None if gossip is None else dataclasses.asdict(gossip),
    }


async def write(mem: AgentMemory, start: int, n: int, pace_s: float) -> None:
    try:
        for i in range(start, start + n):
            mid = memory_id(mem.agent_id, i)
            if await mem.get(mid) is not None:
                emit({"ev": "present", "i": i})
                continue
            emit({"ev": "intent", "i": i})
            await mem.learn(f"{mem.agent_id} wrote fact number {i}", memory_id=mid, importance=0.9)
            emit({"ev": "ack", "i": i, "id": mid})
            if pace_s:
                # Pacing spreads the writes over the nemesis's faults; it waits for nothing.
                await asyncio.sleep(pace_s)
    except Exception as error:  # the parent fails the test on this line
        emit({"ev": "error", "error": f"writing: {type(error).__name__}: {error}"})
        traceback.print_exc()
        raise
    emit({"ev": "wrote"})


async def run(spec: dict[str, Any]) -> None:
    gossip = spec.get("gossip")
    mem = AgentMemory(
        agent_id=spec["agent_id"],
        data_dir=Path(spec["data_dir"]),
        hub_url=spec.get("hub_url"),
        hub_token=spec.get("hub_token"),
        embedder="hashing",
        gossip=GossipConfig(enabled=True, **gossip) if gossip else GossipConfig(),
    )
    background: list[asyncio.Task[None]] = []
    await mem.open()
    try:
        emit({"ev": "ready", "pid": os.getpid(), "gossip_url": mem.gossip_url})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            name = command["cmd"]
            if name == "exit":
                break
            if name == "write":
                task = asyncio.create_task(
                    write(mem, command["start"], command["n"], command.get("pace_s", 0.0))
                )
                background.append(task)
            elif name == "sync":
                try:
                    report = await mem.sync_now(timeout=command.get("timeout", 30))
                except Exception as error:
                    emit({"ev": "sync_failed", "error": f"{type(error).__name__}: {error}"})
                else:
                    emit({"ev": "synced", "report": dataclasses.asdict(report)})
            elif name == "state":
                emit(await state(mem))
            elif name == "history":
                ops = await mem.history(command["id"])
                emit({"ev": "history", "cids": [op.cid for op in ops]})
            else:
                raise ValueError(f"unknown command {name!r}")
    finally:
        for task in background:
            task.cancel()
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
