"""``chrysalis demo``: a hub and three agents sharing one memory, on this machine.

It starts a sync hub in this process (loopback, free ports, its own tokens),
then three agents with their own stores under the data directory. They learn,
recall one another's memories, one goes offline and catches up, and all three
edit one memory at once and converge to identical state roots. Nothing else
needs to run and nothing leaves the machine: recall uses the offline hashing
embedder unless ``--embedder`` says otherwise.

In a terminal it shows a live table of the agents above a log of what happens;
otherwise (a pipe, CI) it prints plain lines. It exits 0 once everything was
shown to work, 1 if something did not (recall missed, replicas differ).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal, cast

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from chrysalis_memory.errors import ChrysalisError

if TYPE_CHECKING:  # imported when the demo runs, so that --help answers at once
    from chrysalis_memory.hub.server import Hub
    from chrysalis_memory.memory import AgentMemory
    from chrysalis_memory.model.document import MemoryDocument

console = Console()

AGENTS: Final = ("demo-alpha", "demo-beta", "demo-gamma")
Embedder = Literal["auto", "hashing", "ollama"]

# What each agent knows at the start (importance 0.9: long-term, so shared).
FACTS: Final = {
    "demo-alpha": [
        ("The user prefers concise explanations with code examples.", ["user", "style"]),
        ("The capital of France is Paris.", ["geo"]),
    ],
    "demo-beta": [
        ("The staging database is restored every night at 02:00 UTC.", ["ops"]),
        ("Retry flaky HTTP calls with exponential backoff and jitter.", ["python", "http"]),
    ],
    "demo-gamma": [
        ("Customer ACME's contract renews in March.", ["sales"]),
        ("Deploys happen on Tuesdays after the standup.", ["ops"]),
    ],
}
# Who asks what, and which memory (another agent's) answers it.
QUESTIONS: Final = [
    ("demo-beta", "How should I explain things to the user?", FACTS["demo-alpha"][0][0]),
    ("demo-gamma", "When is the staging database restored?", FACTS["demo-beta"][0][0]),
    ("demo-alpha", "When does ACME's contract renew?", FACTS["demo-gamma"][0][0]),
]
# Learned while demo-gamma is offline: by the others online, and by gamma itself.
WHILE_AWAY: Final = [
    ("demo-alpha", "The on-call rotation changes every Monday at 10:00."),
    ("demo-beta", "Release notes go out on the first of each month."),
]
GAMMA_OFFLINE: Final = "ACME asked for a quote for 40 more seats."
CATCH_UP_QUESTIONS: Final = [
    ("When does the on-call rotation change?", WHILE_AWAY[0][1]),
    ("Which quote did ACME ask for?", GAMMA_OFFLINE),
]
DEADLINE_S: Final = 20.0  # for anything to reach every replica


class DemoFailed(ChrysalisError):
    """Something the demo shows did not happen."""


@dataclasses.dataclass
class Row:
    """One agent, as its store has it (figures that settle, not session counters)."""

    agent: str
    connection: str
    memories: int
    ops: int
    written: int  # ops it wrote itself; the rest it received
    to_push: int  # of those, not yet acknowledged by the hub
    cursor: int | None
    root: str

    def root_note(self, hub_root: str) -> str:
        if self.root == hub_root:
            return "same as the hub"
        if self.connection in ("offline", "no hub"):
            return "differs: offline"
        return "differs: syncing"


class View:
    """What the demo shows: a live table of the agents above a log (in a terminal),
    or plain lines (anywhere else)."""

    def __init__(self, console: Console, pause_s: float) -> None:
        self.console = console
        self.live_mode = console.is_terminal
        self.pause_s = pause_s
        self.rows: dict[str, Row] = {}
        self.hub_head = 0
        self.hub_root = ""
        self._live: Live | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if not self.live_mode:
            yield
            return
        with Live(
            get_renderable=self.render, console=self.console, refresh_per_second=8
        ) as self._live:
            try:
                yield
            finally:
                self._live.refresh()
                self._live = None

    # --- the log ----------------------------------------------------------------------

    def step(self, number: int, title: str) -> None:
        if self.live_mode:
            self.console.rule(f"[bold]{number}. {escape(title)}")
        else:
            self.say(f"== {number}. {title}")

    def say(self, text: str, style: str = "") -> None:
        """One line of the log (``text`` is plain: never read as markup)."""
        if self.live_mode and style:
            self.console.print(f"[{style}]{escape(text)}[/]", highlight=False)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    async def pause(self) -> None:
        if self.pause_s > 0:
            await asyncio.sleep(self.pause_s)

    # --- the agents' table --------------------------------------------------------------

    async def update(self, agents: dict[str, AgentMemory | None], hub: Hub) -> None:
        rows: dict[str, Row] = {}
        for name, agent in agents.items():
            if agent is None or not agent.is_open:
                old = self.rows.get(name) or Row(name, "", 0, 0, 0, 0, None, "")
                rows[name] = dataclasses.replace(old, connection="offline")
                continue
            counts = await agent.store.counts()
            state = agent.sync_state()
            rows[name] = Row(
                name,
                state.connection if state else "no hub",
                counts["memories_live"],
                counts["ops"],
                await agent.store.last_seq(name),  # its own ops are numbered 1, 2, ...
                counts["ops_pending"] + counts["ops_retry"],
                state.cursor if state else None,
                await agent.state_root(),
            )
        hub_root = await hub.store.state_root()
        # One assignment: the live view renders from another thread.
        self.rows, self.hub_head, self.hub_root = rows, hub.head, hub_root

    def render(self) -> RenderableType:
        # Fits 80 columns: a column too narrow for its header would be cut to "con…".
        # Cells are Text, not markup: rich redraws this while say() prints with
        # markup=False, and a markup string would then show as "[red]offline[/]".
        table = Table(
            title=f"hub: {self.hub_head} ops in its log, state root {self.hub_root[:12]}",
            title_justify="left",
            caption=Text.from_markup(
                "state root: [green]green[/] = the hub's, [yellow]yellow[/] = still syncing, "
                "[red]red[/] = offline"
            ),
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
        )
        table.add_column("agent", no_wrap=True)
        table.add_column("connection", no_wrap=True)
        for column in ("memories", "ops", "to push", "cursor"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("state root", no_wrap=True)
        colours = {"connected": "green", "offline": "red"}
        roots = {"same as the hub": "green", "differs: offline": "red"}
        for row in self.rows.values():
            table.add_row(
                row.agent,
                Text(row.connection, style=colours.get(row.connection, "yellow")),
                str(row.memories),
                str(row.ops),
                str(row.to_push),
                "" if row.cursor is None else str(row.cursor),
                Text(row.root[:12], style=roots.get(row.root_note(self.hub_root), "yellow")),
            )
        return Panel(table, title="Chrysalis demo: live", border_style="blue", expand=False)

    def show_table(self) -> None:
        """The agents' table, now (as plain lines when not in a terminal)."""
        if self.live_mode:
            return  # the live view shows it all the time
        self.say(f"   hub: {self.hub_head} ops in its log, state root {self.hub_root[:12]}")
        for r in self.rows.values():
            cursor = "-" if r.cursor is None else str(r.cursor)
            self.say(
                f"   {r.agent:<11} {r.connection:<15} memories {r.memories:>2}  ops {r.ops:>3} "
                f"({r.written:>2} written, {r.ops - r.written:>2} received, {r.to_push} to push)  "
                f"cursor {cursor:>3}  root {r.root[:12]} ({r.root_note(self.hub_root)})"
            )

    def show_memory(self, title: str, docs: dict[str, MemoryDocument]) -> None:
        if self.live_mode:
            table = Table(title=title, title_justify="left")
            for column in ("agent", "content", "tags", "importance", "accesses", "version"):
                table.add_column(column)
            for agent, doc in docs.items():
                table.add_row(
                    agent,
                    escape(doc.content),
                    escape(", ".join(doc.tags)),
                    f"{doc.importance:.2f}",
                    str(doc.access_count),
                    str(doc.version),
                )
            self.console.print(table)
            return
        self.say(f"   {title}:")
        for agent, doc in docs.items():
            self.say(
                f"   {agent:<11} content={doc.content!r} tags={list(doc.tags)} "
                f"importance={doc.importance:.2f} accesses={doc.access_count} "
                f"version={doc.version}"
            )


async def until(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE_S
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise DemoFailed(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class Demo:
    def __init__(self, data_dir: Path, embedder: Embedder, view: View) -> None:
        self.data_dir = data_dir
        self.embedder: Embedder = embedder
        self.view = view
        self.agents: dict[str, AgentMemory | None] = dict.fromkeys(AGENTS)
        self.tokens: dict[str, str] = {}
        self.hub: Hub | None = None

    def agent(self, name: str) -> AgentMemory:
        agent = self.agents[name]
        assert agent is not None
        assert agent.is_open
        return agent

    def online(self) -> list[AgentMemory]:
        return [a for a in self.agents.values() if a is not None and a.is_open]

    async def open_agent(self, name: str, *, with_hub: bool = True) -> AgentMemory:
        hub = self.hub
        assert hub is not None
        from chrysalis_memory.memory import AgentMemory

        fields: dict[str, str] = {}
        if with_hub:
            fields = {"hub_url": hub.url, "hub_token": self.tokens[name]}
        agent = AgentMemory(agent_id=name, data_dir=self.data_dir, embedder=self.embedder, **fields)
        await agent.open()
        self.agents[name] = agent
        return agent

    async def refresh(self) -> None:
        assert self.hub is not None
        await self.view.update(self.agents, self.hub)

    async def _keep_refreshing(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # an agent closing meanwhile
                await self.refresh()
            await asyncio.sleep(0.2)

    async def run(self) -> None:
        from chrysalis_memory.config import HubConfig
        from chrysalis_memory.hub.server import Hub

        view = self.view
        hub_config = HubConfig(
            websocket_port=0,
            http_port=0,
            data_dir=self.data_dir / "hub",
            embedder=self.embedder,
        )
        async with Hub(hub_config) as hub:
            self.hub = hub
            view.say(
                f"A sync hub and three agents, all in this process, on loopback "
                f"(hub {hub.url}, data in {self.data_dir}, embedder {self.embedder})."
            )
            refresher = None
            try:
                with view.running():
                    if view.live_mode:
                        refresher = asyncio.create_task(self._keep_refreshing())
                    await self._story(hub)
            finally:
                if refresher is not None:
                    refresher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await refresher
                for agent in self.online():
                    await agent.close()

    async def _story(self, hub: Hub) -> None:
        view = self.view

        view.step(1, "Three agents connect to the hub")
        for name in AGENTS:
            self.tokens[name] = hub.tokens.create(name)
            agent = await self.open_agent(name)
            await agent.sync_now(timeout=10)
            view.say(f"{name} connected with its own token (its key is pinned by the hub)")
        await self._converge(hub)
        await self.refresh()
        view.show_table()
        await view.pause()

        view.step(2, "Each agent learns what it knows; the others receive it live")
        start = time.monotonic()
        for name, facts in FACTS.items():
            for text, tags in facts:
                await self.agent(name).learn(
                    text, importance=0.9, memory_type="semantic", tags=tags
                )
                view.say(f"{name} learned: {text}", "cyan")
        total = sum(len(facts) for facts in FACTS.values())
        await self._everyone_holds(total)
        view.say(
            f"all {total} memories reached all three agents "
            f"{(time.monotonic() - start) * 1000:.0f} ms after the first was learned",
            "green",
        )
        await self._converge(hub)  # the figures below are settled ones, not mid-sync
        await self.refresh()
        view.show_table()
        await view.pause()

        view.step(3, "They recall one another's memories")
        for asker, question, expected in QUESTIONS:
            await self._recall(asker, question, expected)
        await view.pause()

        view.step(4, "demo-gamma goes offline; the others keep writing")
        gamma = self.agent("demo-gamma")
        await self.refresh()
        state = gamma.sync_state()
        left_at = state.cursor if state else 0
        await gamma.close()
        await self.refresh()
        view.say(f"demo-gamma disconnected (closed) at cursor {left_at}", "red")
        for name, text in WHILE_AWAY:
            await self.agent(name).learn(text, importance=0.9, memory_type="semantic")
            view.say(f"{name} learned: {text}", "cyan")
        offline = await self.open_agent("demo-gamma", with_hub=False)
        await offline.learn(GAMMA_OFFLINE, importance=0.9, memory_type="episodic", tags=["sales"])
        view.say(f"demo-gamma, with no hub at all, still works: learned: {GAMMA_OFFLINE}", "cyan")
        await self.refresh()
        await offline.close()
        await self._converge(hub)  # the two online agents and the hub
        await self.refresh()
        view.show_table()
        await view.pause()

        view.step(5, "demo-gamma comes back and catches up")
        gamma = await self.open_agent("demo-gamma")
        counts = await gamma.store.counts()
        waiting = counts["ops_pending"] + counts["ops_retry"]
        report = await gamma.sync_now(timeout=10)
        counts = await gamma.store.counts()
        if counts["ops_pending"] + counts["ops_retry"]:
            raise DemoFailed("demo-gamma did not push what it wrote offline")
        state = gamma.sync_state()
        assert state is not None
        view.say(
            f"demo-gamma is back: pushed the {waiting} op(s) it wrote offline, pulled "
            f"{state.pulled} ops it had missed; cursor {left_at} -> {report.cursor} "
            f"(the hub's log has {hub.head} ops)",
            "green",
        )
        await self._recall("demo-gamma", *CATCH_UP_QUESTIONS[0])
        await self._recall("demo-beta", *CATCH_UP_QUESTIONS[1])
        await self._converge(hub)  # the others receive what demo-gamma pushed
        await self.refresh()
        view.show_table()
        await view.pause()

        view.step(6, "All three edit the same memory at the same moment")
        alpha, beta = self.agent("demo-alpha"), self.agent("demo-beta")
        paris = next(iter(await alpha.list(tags=["geo"])))
        await asyncio.gather(
            alpha.update(paris.id, content="Paris is the capital and largest city of France."),
            beta.update(paris.id, content="Paris has been the capital of France since 987."),
            beta.untag(paris.id, "geo"),
            gamma.tag(paris.id, "europe"),
            alpha.reinforce(paris.id, importance=0.95, evidence=["atlas, p. 12"]),
            *(agent.record_access(paris.id) for agent in self.online()),
        )
        view.say(
            "demo-alpha and demo-beta rewrote the content, demo-beta removed the tag 'geo', "
            "demo-gamma added 'europe', demo-alpha raised the importance, each read it once"
        )
        took = await self._converge(hub)
        self.view.say(f"synced: converged {took * 1000:.0f} ms after the edits")
        roots = await hub.store.state_root()
        docs: dict[str, MemoryDocument] = {}
        for agent in self.online():
            doc = await agent.get(paris.id)
            assert doc is not None
            docs[agent.agent_id] = doc
        view.show_memory("The memory on each agent, once synced", docs)
        shown = {doc.model_dump_json(exclude={"sync_status"}) for doc in docs.values()}
        if len(shown) != 1:
            raise DemoFailed("the agents hold the same ops but show different memories")
        view.say(
            "content: last writer wins, by hybrid logical clock then writer id · tags: "
            "observed-remove set (a concurrent add survives a remove) · importance: only "
            "grows · accesses: one counter per agent, summed"
        )
        view.say(
            f"state roots: identical on the hub and all three agents ({roots[:16]}...)",
            "bold green",
        )
        reports = [await agent.verify() for agent in self.online()]
        checked = sum(r.ops_checked for r in reports)
        if not all(r.ok for r in reports):
            raise DemoFailed(f"verify() found problems: {[r.problems for r in reports]}")
        view.say(f"verify(): {checked} ops checked on the three agents, no problems", "green")
        await self.refresh()
        view.show_table()

    async def _everyone_holds(self, memories: int) -> None:
        async def check() -> bool:
            for agent in self.online():
                if (await agent.store.counts())["memories_live"] < memories:
                    return False
            return True

        await until(check, f"{memories} memories reaching every agent")

    async def _recall(self, asker: str, question: str, expected: str) -> None:
        hits = await self.agent(asker).recall(question, k=3)
        if not hits or hits[0].memory.content != expected:
            found = [h.memory.content for h in hits]
            raise DemoFailed(f"{asker} asked {question!r} and did not recall {expected!r}: {found}")
        top = hits[0]
        self.view.say(
            f"{asker} asks {question!r} -> {top.memory.content!r} "
            f"(learned by {top.memory.source_instance}, score {top.score:.2f})",
            "magenta",
        )

    async def _converge(self, hub: Hub) -> float:
        """Sync the agents online until they and the hub hold the same ops (so that
        what is shown next is settled, not a moment mid-sync); returns the seconds
        it took."""
        agents = self.online()

        async def same() -> bool:
            for agent in agents:
                await agent.sync_now(timeout=10)
            roots = {await agent.state_root() for agent in agents}
            roots.add(await hub.store.state_root())
            return len(roots) == 1

        return await until(same, "convergence")


def _previous_run(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "hub", *(data_dir / a for a in AGENTS)) if p.exists()]


def _where_things_are(data_dir: Path, view: View) -> None:
    say = view.say
    if view.live_mode:
        view.console.rule("[bold]Where the data lives, and what to try next")
    else:
        say("== Where the data lives, and what to try next")
    say(f"Data: {data_dir}")
    say(f"  {data_dir / 'hub'}: the hub's op log (collective.db), tokens.json, vector index")
    for name in AGENTS:
        say(f"  {data_dir / name}: {name}'s op log (memory.db), signing key, vector cache")
    say("Try next:")
    say(f"  chrysalis status --data-dir {data_dir}")
    say("      memories, ops by sync status and state root of each agent")
    say(f"  chrysalis verify --data-dir {data_dir}")
    say("      check every op's CID and signature, and that state equals a replay of the log")
    say(f"  chrysalis hub --data-dir {data_dir / 'hub'}")
    say("      run the demo's hub again (on ws://127.0.0.1:4444), with its data and tokens")
    say(f"  chrysalis token create my-agent --tokens-file {data_dir / 'hub' / 'tokens.json'}")
    say("      a token for an agent of your own on that hub (then see docs/hub.md)")
    say("  python examples/verify_collective.py")
    say("      two agents through a hub, as a script; notebooks in examples/notebooks/")
    say("  chrysalis simulate --agents 1000")
    say("      gossip among a thousand agents, simulated")
    say("Docs: docs/index.md, or `mkdocs serve` for the site (pip install -e '.[docs]'):")
    say("  docs/concepts.md (how memories merge), docs/hub.md (a hub in production),")
    say("  docs/langchain.md, docs/llamaindex.md, docs/troubleshooting.md")


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            help="Where the hub and the agents keep their stores (a new, empty directory). "
            "Default: a new temporary directory, kept after the demo.",
        ),
    ] = None,
    embedder: Annotated[
        str,
        typer.Option(help="hashing (offline, the default), ollama (needs Ollama running) or auto."),
    ] = "hashing",
    pause: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait between steps. Default: 1.5 in a terminal, 0 otherwise.",
            min=0,
        ),
    ] = None,
) -> None:
    """A hub and three agents sharing memories, offline and back, converging.

    They learn and recall one another's memories, one goes offline and catches
    up, and concurrent edits to one memory merge to identical state.

    Needs no service and no network: everything runs in this process, on
    loopback. Exits 0 when everything worked, 1 otherwise.
    """
    if embedder not in ("auto", "hashing", "ollama"):
        raise typer.BadParameter("choose hashing, ollama or auto", param_hint="--embedder")
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="chrysalis-demo-"))
    data_dir = data_dir.resolve()
    if previous := _previous_run(data_dir):
        console.print(
            f"[red]error:[/red] {data_dir} already holds a demo ({previous[0].name}/): "
            "pass a new --data-dir, or delete that one",
            highlight=False,
        )
        raise typer.Exit(2)
    view = View(console, (1.5 if console.is_terminal else 0.0) if pause is None else pause)
    # The demo reports what matters itself; a closing agent's reconnect noise is not it.
    logging.getLogger("chrysalis_memory").setLevel(logging.ERROR)
    try:
        asyncio.run(Demo(data_dir, cast(Embedder, embedder), view).run())
    except ChrysalisError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    _where_things_are(data_dir, view)
