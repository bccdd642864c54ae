"""Is collective memory working? Spec §6.6, done right.

Agent A learns "The capital of France is Paris."; agent B, another agent
connected to the same hub, must recall it within 2 seconds. B does not sleep
for 2 seconds and hope: it asks over and over until it finds it or the
2 seconds are up (``--deadline`` changes that), and says how long it took.
Exit code 0 if it worked, 1 if not.

    python examples/verify_collective.py [--deadline SECONDS]

With no arguments it needs nothing else: it starts a hub of its own on free
loopback ports, with tokens for both agents, everything in a temporary
directory. To check a hub that is already running (``chrysalis hub`` or
``examples/sync_hub.py``), give its address and a token for each agent:

    python examples/verify_collective.py --hub-url ws://127.0.0.1:4444 \\
        --token-a chry_... --token-b chry_... [--data-dir ./data/verify]

(``chrysalis token create agent-a`` makes a token.) The agents keep their
stores and signing keys in ``--data-dir``: the hub remembers each agent's key,
so run them from the same directory every time.

B must find the memory A learned in this run, by its new id: a memory left by
an earlier run (or anything else about Paris) never counts. At the end A
forgets it, so that runs do not pile copies of the fact up in the hub's
collective memory and in the agents' stores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from chrysalis_memory import AgentMemory, ChrysalisError, HubConfig
from chrysalis_memory.hub.server import Hub

FACT = "The capital of France is Paris."
QUESTION = "What is the capital of France?"
DEADLINE_S = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check that two agents share memories.")
    parser.add_argument("--hub-url", help="a running hub (default: start one here)")
    parser.add_argument("--token-a", help="agent-a's token for --hub-url")
    parser.add_argument("--token-b", help="agent-b's token for --hub-url")
    parser.add_argument("--data-dir", type=Path, default=Path("./data/verify"))
    parser.add_argument(
        "--embedder", default="hashing", help="hashing (offline, default), ollama or auto"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEADLINE_S,
        metavar="SECONDS",
        help=f"how long B may take to recall it (default {DEADLINE_S:g}, the spec's target)",
    )
    args = parser.parse_args()
    if args.hub_url and not (args.token_a and args.token_b):
        parser.error("--hub-url needs --token-a and --token-b")
    return args


async def verify(
    hub_url: str, tokens: dict[str, str], data_dir: Path, embedder: str, deadline: float
) -> bool:
    """A learns, B recalls: True if B found it within ``deadline`` seconds."""
    agents = {
        agent_id: AgentMemory(
            agent_id=agent_id,
            data_dir=data_dir,
            hub_url=hub_url,
            hub_token=token,
            embedder=embedder,
        )
        for agent_id, token in tokens.items()
    }
    async with agents["agent-a"] as agent_a, agents["agent-b"] as agent_b:
        for agent in (agent_a, agent_b):
            await agent.sync_now(timeout=10)  # connected, and up to date
        await agent_b.recall(QUESTION, record_access=False)  # B's recall index is open
        print(f"agents {agent_a.agent_id} and {agent_b.agent_id} connected to {hub_url}")

        memory_id = await agent_a.learn(FACT, importance=0.9)
        learned = time.monotonic()
        print(f"{agent_a.agent_id} learned: {FACT!r} (id={memory_id})")

        # B asks until it finds it; no sleeping through the deadline. Only this
        # memory counts (its id and its text), not one from an earlier run.
        found = False
        while not found and time.monotonic() - learned < deadline:
            results = await agent_b.recall(QUESTION, record_access=False)
            found = any(
                hit.memory.id == memory_id and hit.memory.content == FACT for hit in results
            )
            if not found:
                await asyncio.sleep(0.02)
        took = time.monotonic() - learned
        if found:
            print(f"{agent_b.agent_id} recalled it {took * 1000:.0f} ms after it was learned")
        else:
            print(f"{agent_b.agent_id} did not recall it within {deadline:g} s")
        print(f"Collective memory working: {found}")

        # Leave nothing behind for the next run to trip over.
        await agent_a.forget(memory_id)
        for agent in (agent_a, agent_b):
            await agent.sync_now(timeout=10)
    return found


async def main() -> int:
    args = parse_args()
    if args.hub_url:
        tokens = {"agent-a": args.token_a, "agent-b": args.token_b}
        found = await verify(args.hub_url, tokens, args.data_dir, args.embedder, args.deadline)
    else:
        with tempfile.TemporaryDirectory(prefix="chrysalis-verify-") as tmp:
            config = HubConfig(
                websocket_port=0, http_port=0, data_dir=Path(tmp) / "hub", embedder="hashing"
            )
            async with Hub(config) as hub:
                print(f"started a hub on {hub.url}")
                tokens = {a: hub.tokens.create(a) for a in ("agent-a", "agent-b")}
                agents = Path(tmp) / "agents"
                found = await verify(hub.url, tokens, agents, args.embedder, args.deadline)
    if not found:
        print("Memory did not propagate to agent B!", file=sys.stderr)
        return 1
    print("✓ Verification complete!")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except ChrysalisError as error:  # no hub there, a refused token, ...
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
