"""``chrysalis``: inspect, verify and benchmark Chrysalis replicas.

Each command has ``--help``; the ones that measure or inspect take ``--json``
for machine-readable output.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from chrysalis_memory import __version__
from chrysalis_memory.cli.bench import bench
from chrysalis_memory.cli.demo import demo
from chrysalis_memory.cli.hub import hub
from chrysalis_memory.cli.keys import key
from chrysalis_memory.cli.options import AgentOption, DataDirOption, JsonOption
from chrysalis_memory.cli.progress import PlainProgress
from chrysalis_memory.cli.simulate import simulate
from chrysalis_memory.cli.tokens import token_app
from chrysalis_memory.errors import ChrysalisError, StoreCorruptError

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
        written = await store.last_seq(agent)  # its own ops are numbered 1, 2, ...
        root = await store.state_root()
        hub_id = await store.meta(HUB_ID_KEY)
        cursor = int(await store.meta(CURSOR_KEY) or 0)
        quarantine = await store.quarantine_summary()
    finally:
        await store.close()
    return {
        "agent_id": agent,
        "db_path": str(path),
        "state_root": root,
        "hub_id": hub_id,
        "hub_cursor": cursor,
        "ops_written": written,
        **counts,
        "quarantine": quarantine,
    }


async def _verify_of(agent: str, path: Path) -> dict[str, Any]:
    from chrysalis_memory.store import OpStore
    from chrysalis_memory.store.verify import verify_store
    from chrysalis_memory.verifier import SignatureVerifier

    store = OpStore(path, read_only=True)
    try:
        await store.open()
    except StoreCorruptError as error:  # not even readable as a database
        unread = {"ops_checked": 0, "documents_checked": 0, "damaged_ops": [], "seconds": 0.0}
        problems = {"ok": False, **unread, "problems": [str(error)]}
        return {"agent_id": agent, "db_path": str(path), **problems}
    verifier = SignatureVerifier()
    try:
        report = await verify_store(store, verifier)
    finally:
        verifier.close()
        await store.close()
    return {"agent_id": agent, "db_path": str(path), **report.model_dump()}


def _verify_targets(
    data_dir: Path, agent_id: str | None, db: Path | None
) -> list[tuple[str, Path]]:
    """What ``chrysalis verify`` checks: the one file ``db``, or the agent stores under
    ``data_dir`` and the hub's ``collective.db`` if it is a hub's data directory."""
    if db is not None:
        if not db.is_file():
            raise ChrysalisError(f"no database file at {db}")
        return [("hub" if db.name == "collective.db" else db.parent.name, db)]
    hub_db = data_dir / "collective.db"
    if agent_id is not None or not hub_db.is_file():
        return find_agents(data_dir, agent_id)
    agents = sorted((p.parent.name, p) for p in data_dir.glob("*/memory.db"))
    return [("hub", hub_db), *agents]


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
    """Show each agent's store: memories, ops and their sync status, hub, state root.

    One block per agent: how many memories it holds, how many ops it wrote and
    received, which are synced with the hub, pending or short-term, the hub it
    last synced with and how far into that hub's log it holds every op, and
    its state root (equal roots: the same ops, hence the same memories).

    Reads the stores without locking them, so it works while agents run.
    """
    results = _per_agent(data_dir, agent_id, _status_of)
    embedder = asyncio.run(_embedder_choice())
    same_root = len({r["state_root"] for r in results}) == 1
    if as_json:
        print(
            json.dumps(
                {
                    "data_dir": str(data_dir),
                    "embedder": embedder,
                    "same_state_root": same_root,
                    "agents": results,
                },
                indent=2,
            )
        )
        return
    _show_status(data_dir, results, embedder)


def _show_status(data_dir: Path, results: list[dict[str, Any]], embedder: str) -> None:
    """One block of short lines per agent: fits 80 columns, reads the same piped."""

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    plural = "s" if len(results) != 1 else ""
    say(f"{len(results)} agent store{plural} in {data_dir.resolve()}")
    for r in results:
        say("")
        console.print(r["agent_id"], style="bold", markup=False, highlight=False)
        for label, value in _status_lines(r):
            say(f"  {label:<11} {value}")
    say("")
    if len(results) > 1:
        roots = len({r["state_root"] for r in results})
        if roots == 1:
            say(f"state roots: the same on all {len(results)} agents (they hold the same ops)")
        else:
            say(
                f"state roots: {roots} different ones among {len(results)} agents "
                "(they do not hold the same ops yet)"
            )
    # Wrapped here, indented, rather than by rich at the edge of the terminal.
    say("recall embedder:")
    say(
        textwrap.fill(
            embedder, max(console.width, 40) - 1, initial_indent="  ", subsequent_indent="  "
        )
    )


def _status_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    memories = f"{r['memories_live']:,} live, {r['memories_forgotten']:,} forgotten"
    if r["memories_incomplete"]:
        memories += f", {r['memories_incomplete']:,} incomplete (ops still to arrive)"
    ops = r["ops"]
    received = ops - r["ops_written"]
    held = f"{ops:,} in the log: {r['ops_written']:,} written here, {received:,} received"
    waiting = {
        "pending (waiting for the hub)": r["ops_pending"],
        "to retry (a push failed)": r["ops_retry"],
        "local (short-term: not shared)": r["ops_local"],
    }
    if not ops:
        sync = "nothing yet"
    elif r["ops_synced"] == ops:
        sync = f"all {ops:,} synced with the hub"
    else:
        parts = [f"{r['ops_synced']:,} synced"] if r["ops_synced"] else []
        parts += [f"{n:,} {what}" for what, n in waiting.items() if n]
        sync = ", ".join(parts)
    quarantined = "none"
    if r["quarantined"]:
        reasons = ", ".join(f"{n:,} {why}" for why, n in r["quarantine"].items())
        refused = f"{r['quarantined']:,} op{'s' if r['quarantined'] != 1 else ''} refused"
        quarantined = f"{refused}, kept aside: {reasons}"
    if r["hub_id"]:
        hub = f"{r['hub_id']} (has the hub's log up to op {r['hub_cursor']:,})"
    else:
        hub = "none yet (never synced)"
    return [
        ("memories", memories),
        ("ops", held),
        ("sync", sync),
        ("quarantine", quarantined),
        ("hub", hub),
        ("state root", r["state_root"]),
        ("store", r["db_path"]),
    ]


@app.command()
def verify(
    data_dir: DataDirOption = Path("./data"),
    agent_id: AgentOption = None,
    as_json: JsonOption = False,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help="Check this one database file instead: an agent's memory.db or a hub's "
            "collective.db.",
        ),
    ] = None,
) -> None:
    """Check each store: SQLite's integrity check of its file, every op (its bytes
    against its CID and its columns, its signature, its writer's pinned key), and
    that each document equals a replay of the op log. Names every damaged op row
    (row number, CID, what is wrong). A hub's collective.db in --data-dir is
    checked too. Exits 1 if anything is wrong."""
    try:
        targets = _verify_targets(data_dir, agent_id, db)
        results = [asyncio.run(_verify_of(agent, path)) for agent, path in targets]
    except ChrysalisError as error:
        err_console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from None
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
        disable=not err_console.is_terminal,
    ) as progress:
        task = progress.add_task(f"indexing {agent}", total=None)
        plain = PlainProgress(err_console, every_s=5)  # rich draws nothing in a pipe

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if not err_console.is_terminal:
                plain.tick(lambda: f"indexing {agent}: {done:,}/{total:,} ops")

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
app.command()(key)
app.command()(bench)


def main() -> None:
    """Entry point of the ``chrysalis`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
