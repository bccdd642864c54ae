"""``chrysalis demo``: three agents share what they learn, offline and conflict-free.

Each agent has its own store (op log and key) under the data directory. They
exchange ops directly (the hub and gossip carry the very same ops), and it shows
concurrent edits of one memory merging to the same result on every agent.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from chrysalis_memory.memory import AgentMemory
from chrysalis_memory.model.document import MemoryDocument

console = Console()

AGENTS = ("demo-alpha", "demo-beta", "demo-gamma")
FACTS = {
    "demo-alpha": [
        ("The user prefers concise explanations with code examples.", ["user", "style"]),
        ("Python asyncio requires 'await' for coroutine execution.", ["python"]),
    ],
    "demo-beta": [
        ("The capital of France is Paris.", ["geo"]),
        ("The staging database is restored every night at 02:00 UTC.", ["ops"]),
    ],
    "demo-gamma": [
        ("Customer ACME's contract renews in March.", ["sales"]),
        ("Retry flaky HTTP calls with exponential backoff and jitter.", ["python", "http"]),
    ],
}


async def exchange(agents: list[AgentMemory]) -> int:
    """One all-to-all sync round: every agent merges every other's ops."""
    exported = [await agent.export_ops() for agent in agents]
    received = 0
    for (i, agent), (j, ops) in itertools.product(enumerate(agents), enumerate(exported)):
        if i != j:
            received += await agent.merge_ops(ops)
    return received


def _view(title: str, docs: dict[str, MemoryDocument | None]) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("agent", "content", "tags", "importance", "accesses", "version"):
        table.add_column(column)
    for agent, doc in docs.items():
        if doc is None:
            table.add_row(agent, "[dim]— not here yet —[/]", "", "", "", "")
        else:
            table.add_row(
                agent,
                doc.content,
                ", ".join(doc.tags),
                f"{doc.importance:.2f}",
                str(doc.access_count),
                str(doc.version),
            )
    return table


async def run_demo(data_dir: Path) -> None:
    agents = [AgentMemory(agent_id=name, data_dir=data_dir) for name in AGENTS]
    for agent in agents:
        await agent.open()
    try:
        alpha, beta, gamma = agents
        console.print(Panel.fit("[bold]Chrysalis demo[/]: three agents, one collective memory"))

        console.rule("1. Each agent learns on its own, offline")
        for agent in agents:
            for text, tags in FACTS[agent.agent_id]:
                await agent.learn(text, importance=0.9, memory_type="semantic", tags=tags)
                console.print(f"  [cyan]{agent.agent_id}[/] learned: {text}")
        counts = [len(await a.list(limit=1000)) for a in agents]
        console.print(f"  memories per agent before sharing: {counts}")

        console.rule("2. They sync (every op is signed, content-addressed and verified)")
        received = await exchange(agents)
        counts = [len(await a.list(limit=1000)) for a in agents]
        console.print(f"  {received} ops exchanged; memories per agent now: {counts}")
        hits = await gamma.list(tags=["geo"])
        console.print(f"  demo-gamma asks for tag 'geo' and finds: [green]{hits[0].content}[/]")

        console.rule("3. Conflicting edits while disconnected")
        shared = hits[0].id
        await alpha.update(shared, content="Paris is the capital and largest city of France.")
        await beta.update(shared, content="Paris has been France's capital since 987.")
        await beta.untag(shared, "geo")
        await gamma.tag(shared, "europe")
        await alpha.reinforce(shared, importance=0.95, evidence=["atlas, p. 12"])
        for agent in agents:
            await agent.record_access(shared)
        before = {a.agent_id: await a.get(shared) for a in agents}
        console.print(_view("Each agent's view before syncing", before))

        console.rule("4. Sync again: every field merges by its CRDT rule")
        await exchange(agents)
        after = {a.agent_id: await a.get(shared) for a in agents}
        console.print(_view("Every agent's view after syncing", after))
        console.print(
            "  content: last writer wins by hybrid logical clock · tags: observed-remove set "
            "(beta removed 'geo', gamma's 'europe' survives) · importance: only grows · "
            "accesses: a counter per agent, summed"
        )
        roots = {a.agent_id: await a.state_root() for a in agents}
        same = len(set(roots.values())) == 1
        verdict = "[bold green]identical[/]" if same else "[bold red]DIFFERENT[/]"
        console.print(f"  state roots: {verdict} ({next(iter(roots.values()))[:16]}…)")
        reports = [await a.verify() for a in agents]
        console.print(
            f"  verify(): {sum(r.ops_checked for r in reports)} ops checked, "
            f"{'no problems' if all(r.ok for r in reports) else 'PROBLEMS FOUND'}"
        )
    finally:
        for agent in agents:
            await agent.close()


def _where_things_are(data_dir: Path) -> None:
    console.rule("Where things are")
    console.print(f"  Each agent's op log and signing key: {data_dir.resolve()}/<agent>/")
    console.print("  Try next:")
    console.print(f"    chrysalis status --data-dir {data_dir}")
    console.print(f"    chrysalis verify --data-dir {data_dir}")
    console.print("    chrysalis bench")


def demo(
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", "-d", help="Where the demo agents keep their stores."),
    ] = Path("./data"),
) -> None:
    """Run three agents that learn, sync and resolve conflicting edits."""
    asyncio.run(run_demo(data_dir))
    _where_things_are(data_dir)
