"""``chrysalis``: inspect, verify and benchmark Chrysalis replicas.

Each command has ``--help``; the ones that measure or inspect take ``--json``
for machine-readable output.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from chrysalis_memory import __version__
from chrysalis_memory.cli.bench import bench
from chrysalis_memory.cli.demo import demo
from chrysalis_memory.cli.hub import hub
from chrysalis_memory.cli.options import AgentOption, DataDirOption, JsonOption
from chrysalis_memory.cli.simulate import simulate
from chrysalis_memory.cli.tokens import token_app
from chrysalis_memory.errors import ChrysalisError

# The commands import what they need (the store, pydantic, Chroma, websockets) when
# they run, so that `chrysalis --help` and every `--help` answer at once.


def _flags_show_no_value() -> None:
    """List flags in help as ``--json``, not ``--json <bool>``.

    typer 0.29 labels every option with its type, flags too (even ``--help
    <bool>``), which reads as if they took a value. Older versions show flags
    bare and have no ``display_type_rich``; nothing changes for them.
    """
    from typer.core import TyperOption

    typed = getattr(TyperOption, "display_type_rich", None)
    if typed is None or getattr(typed, "flags_show_no_value", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        if getattr(self, "is_flag", False):
            return None
        result: str | None = typed(self, ctx)
        return result

    display_type_rich.flags_show_no_value = True  # type: ignore[attr-defined]
    setattr(TyperOption, "display_type_rich", display_type_rich)  # noqa: B010


_flags_show_no_value()

app = typer.Typer(
    name="chrysalis",
    help="Collective, conflict-free memory for AI agents.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"chrysalis-memory {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Collective, conflict-free memory for AI agents."""


def find_agents(data_dir: Path, agent_id: str | None) -> list[tuple[str, Path]]:
    """The ``(agent id, op log path)`` of each agent store under ``data_dir``."""
    if agent_id is not None:
        path = data_dir / agent_id / "memory.db"
        if not path.exists():
            raise ChrysalisError(f"no store for agent {agent_id!r} at {path}")
        return [(agent_id, path)]
    found = sorted((p.parent.name, p) for p in data_dir.glob("*/memory.db"))
    if not found:
        raise ChrysalisError(
            f"no agent stores under {data_dir.resolve()}; pass --data-dir, or run "
            "`chrysalis demo` to create some"
        )
    return found


async def _status_of(agent: str, path: Path) -> dict[str, Any]:
    from chrysalis_memory.store import OpStore
    from chrysalis_memory.sync.client import CURSOR_KEY, HUB_ID_KEY

    store = OpStore(path, read_only=True)
    await store.open()
    try:
        counts = await store.counts()
        root = await store.state_root()
        hub_id = await store.meta(HUB_ID_KEY)
        cursor = int(await store.meta(CURSOR_KEY) or 0)
    finally:
        await store.close()
    return {
        "agent_id": agent,
        "db_path": str(path),
        "state_root": root,
        "hub_id": hub_id,
        "hub_cursor": cursor,
        **counts,
    }


async def _verify_of(agent: str, path: Path) -> dict[str, Any]:
    from chrysalis_memory.store import OpStore
    from chrysalis_memory.store.verify import verify_store
    from chrysalis_memory.verifier import SignatureVerifier

    store = OpStore(path, read_only=True)
    verifier = SignatureVerifier()
    await store.open()
    try:
        report = await verify_store(store, verifier)
    finally:
        verifier.close()
        await store.close()
    return {"agent_id": agent, "db_path": str(path), **report.model_dump()}


def _per_agent(
    data_dir: Path,
    agent_id: str | None,
    inspect: Callable[[str, Path], Coroutine[Any, Any, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Run ``inspect`` on each agent store found; exit 2 with the reason on errors."""
    try:
        return [
            asyncio.run(inspect(agent, path)) for agent, path in find_agents(data_dir, agent_id)
        ]
    except ChrysalisError as error:
        err_console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from None


@app.command()
def status(
    data_dir: DataDirOption = Path("./data"),
    agent_id: AgentOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show each agent's store: memories, ops by status, hub cursor, state root.

    The hub column is the hub the agent last synced with and how far into its
    log the agent holds every op.

    Reads the stores without locking them, so it works while agents run.
    """
    results = _per_agent(data_dir, agent_id, _status_of)
    embedder = asyncio.run(_embedder_choice())
    if as_json:
        print(
            json.dumps(
                {"data_dir": str(data_dir), "embedder": embedder, "agents": results}, indent=2
            )
        )
        return
    table = Table(title=f"Chrysalis agents in {data_dir}")
    table.add_column("agent", no_wrap=True)
    for column in ("memories", "forgotten", "ops", "local", "pending", "synced"):
        table.add_column(column, justify="right")
    table.add_column("hub (cursor)", no_wrap=True)
    table.add_column("state root", no_wrap=True)
    for r in results:
        table.add_row(
            r["agent_id"],
            str(r["memories_live"]),
            str(r["memories_forgotten"]),
            str(r["ops"]),
            str(r["ops_local"]),
            str(r["ops_pending"] + r["ops_retry"]),
            str(r["ops_synced"]),
            f"{r['hub_id']} ({r['hub_cursor']})" if r["hub_id"] else "-",
            r["state_root"][:12],
        )
    console.print(table)
    console.print(f"recall embedder: {embedder}")


@app.command()
def verify(
    data_dir: DataDirOption = Path("./data"),
    agent_id: AgentOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every op (CID, signature, pinned key) and that each document
    equals a replay of the op log. Exits 1 if anything is wrong."""
    results = _per_agent(data_dir, agent_id, _verify_of)
    if as_json:
        print(json.dumps({"data_dir": str(data_dir), "agents": results}, indent=2))
    else:
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[bold red]PROBLEMS[/]"
            console.print(
                f"{mark} {r['agent_id']}: {r['ops_checked']} ops, "
                f"{r['documents_checked']} documents checked in {r['seconds']} s"
            )
            for problem in r["problems"]:
                console.print(f"   - {problem}", markup=False)
    if not all(r["ok"] for r in results):
        raise typer.Exit(code=1)


@app.command()
def reindex(
    data_dir: DataDirOption = Path("./data"),
    agent_id: AgentOption = None,
) -> None:
    """Rebuild each agent's keyword index and vector cache from its op log.

    Embeddings already in the log are reused. The agent must not be running
    (one process owns an agent's data directory).
    """
    try:
        agents = find_agents(data_dir, agent_id)
    except ChrysalisError as error:
        err_console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    for agent, _ in agents:
        try:
            indexed, choice = asyncio.run(_reindex(data_dir, agent))
        except ChrysalisError as error:
            err_console.print(f"[bold red]error:[/] {agent}: {error}")
            raise typer.Exit(code=2) from None
        console.print(f"[green]reindexed[/] {agent}: {indexed} ops ({choice})")


async def _reindex(data_dir: Path, agent: str) -> tuple[int, str]:
    from chrysalis_memory.config import AgentMemoryConfig
    from chrysalis_memory.memory import AgentMemory

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"indexing {agent}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        config = AgentMemoryConfig.from_env(agent_id=agent, data_dir=data_dir)
        async with AgentMemory(config) as memory:
            indexed = await memory.reindex(advance)
            return indexed, memory.embedder_choice


async def _embedder_choice() -> str:
    from chrysalis_memory.config import AgentMemoryConfig
    from chrysalis_memory.recall.embedders import select_embedder

    config = AgentMemoryConfig.from_env()
    embedder, reason = await select_embedder(
        config.embedder, model=config.embedding_model, host=config.ollama_host
    )
    await embedder.aclose()
    return reason


app.command()(demo)
app.add_typer(token_app, name="token")
app.command()(hub)
app.command()(simulate)
app.command()(bench)


def main() -> None:
    """Entry point of the ``chrysalis`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
