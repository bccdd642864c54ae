"""The ``chrysalis`` command line, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chrysalis_memory.store import OpStore

CHRYSALIS = [sys.executable, "-m", "chrysalis_memory.cli"]


def run(
    *args: str, cwd: Path | None = None, python: bool = False, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `chrysalis ARGS` (with ``python=True``: `python ARGS`), without CHRYSALIS_*
    settings from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRYSALIS_")}
    env["COLUMNS"] = "200"  # keep rich from wrapping the output we search
    env.update(extra)
    command = [sys.executable, *args] if python else [*CHRYSALIS, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


# What the commands need when they run, never to show their help. (Not pydantic:
# typer 0.29 uses it itself to read option values.)
HEAVY = (
    "aiosqlite",
    "chromadb",
    "cryptography",
    "httpx",
    "langchain",
    "langchain_core",
    "llama_index",
    "matplotlib",
    "msgspec",
    "numpy",
    "ollama",
    "prometheus_client",
    "sqlite3",
    "websockets",
    "chrysalis_memory.memory",
    "chrysalis_memory.store",
    "chrysalis_memory.hub.server",
    "chrysalis_memory.bench",
    "chrysalis_memory.gossip",
)


def run_importing(*args: str, **extra: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `chrysalis ARGS` under ``python -X importtime``: the result, and the modules
    it imported."""
    result = run("-X", "importtime", "-m", "chrysalis_memory.cli", *args, python=True, **extra)
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return result, {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # [0]: the header


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["status"],
        ["verify"],
        ["reindex"],
        ["demo"],
        ["hub"],
        ["simulate"],
        ["bench"],
        ["token"],
        ["token", "create"],
        ["token", "list"],
        ["key"],
    ],
    ids=lambda command: " ".join(command) or "chrysalis",
)
def test_every_command_has_help_that_imports_nothing_heavy(command: list[str]) -> None:
    result, modules = run_importing(*command, "--help", COLUMNS="80")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage" in result.stdout and "--help" in result.stdout
    # Flags are shown as flags (`--json`), not as options taking a value.
    assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout
    # Help needs typer and the commands' signatures, not what the commands use.
    assert {"typer", "chrysalis_memory.cli.app"} <= modules  # the check sees the imports
    heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"`chrysalis {' '.join(command)} --help` imports {heavy}"


def test_the_import_check_sees_what_a_running_command_imports(tmp_path: Path) -> None:
    # Listing tokens reads the token file with the hub's TokenStore, which needs
    # pydantic and msgspec: the same check finds them once a command runs.
    result, modules = run_importing("token", "list", "--tokens-file", str(tmp_path / "t.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"chrysalis_memory.hub.tokens", "pydantic", "msgspec"} <= modules


def test_a_flag_takes_no_value(tmp_path: Path) -> None:
    # `--json true` is not a way to say --json: "true" is left over, a usage error.
    result = run("status", "--json", "true", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "(true)" in result.stderr
    assert run("status", "--json", "--data-dir", str(tmp_path)).returncode == 2  # no stores


def test_top_level_help_lists_the_commands() -> None:
    result = run("--help")
    for name in ("status", "verify", "demo", "bench", "reindex", "token"):
        assert name in result.stdout


def test_token_list_reads_well_at_80_columns(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    empty = run("token", "list", "--tokens-file", str(tokens), COLUMNS="80")
    assert empty.returncode == 0 and empty.stdout == ""
    assert "no agent tokens in" in empty.stderr and "chrysalis token create" in empty.stderr
    for agent in ("agent-one", "agent-two"):
        assert run("token", "create", agent, "--tokens-file", str(tokens)).returncode == 0
    assert run("token", "revoke", "agent-two", "--tokens-file", str(tokens)).returncode == 0
    table = run("token", "list", "--tokens-file", str(tokens), COLUMNS="80").stdout
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "…" not in table  # no column cut short (status vanished at 80 columns)
    assert "agent-one" in table and "active" in table
    assert "agent-two" in table and "revoked" in table


def test_plain_progress_prints_a_line_every_so_often() -> None:
    from io import StringIO

    from rich.console import Console

    from chrysalis_memory.cli.progress import PlainProgress

    now = [100.0]
    out = StringIO()
    progress = PlainProgress(Console(file=out, width=40), every_s=5, clock=lambda: now[0])
    asked: list[float] = []

    def text() -> str:
        asked.append(now[0])
        return f"at {progress.elapsed():.0f} s [not markup]"

    assert progress.tick(text)  # the first is due at once
    for step in range(1, 12):
        now[0] = 100.0 + step
        progress.tick(text)
    progress.line("done, a line longer than the forty columns of this console")
    assert asked == [100.0, 105.0, 110.0]  # text() only when a line is due
    assert out.getvalue().splitlines() == [
        "at 0 s [not markup]",
        "at 5 s [not markup]",
        "at 10 s [not markup]",
        "done, a line longer than the forty columns of this console",
    ]
    now[0] = 114.0
    assert not progress.tick(text)  # the last line counts too


def hub_state_root(hub_dir: Path) -> str:
    """The state root of the demo hub's log, read on its own."""

    async def read() -> str:
        store = OpStore(hub_dir / "collective.db", read_only=True)
        await store.open()
        try:
            return await store.state_root()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.slow
def test_demo_then_status_and_verify(tmp_path: Path) -> None:
    demo = run("demo", "--data-dir", str(tmp_path))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "\x1b[" not in out  # not a terminal: plain lines, no live view
    assert "hub ws://127.0.0.1:" in out
    for agent in ("demo-alpha", "demo-beta", "demo-gamma"):
        assert f"{agent} connected with its own token" in out
    assert "all 6 memories reached all three agents" in out
    # Each recalls what another learned.
    assert (
        "demo-beta asks 'How should I explain things to the user?' -> "
        "'The user prefers concise explanations with code examples.' (learned by demo-alpha"
    ) in out
    assert "(learned by demo-beta" in out and "(learned by demo-gamma" in out
    # One goes offline, writes without a hub, comes back and catches up.
    left = re.search(r"demo-gamma disconnected \(closed\) at cursor (\d+)", out)
    assert left, out
    assert "demo-gamma, with no hub at all, still works: learned:" in out
    back = re.search(
        r"demo-gamma is back: pushed the 1 op\(s\) it wrote offline, pulled (\d+) ops it had "
        r"missed; cursor (\d+) -> (\d+) \(the hub's log has (\d+) ops\)",
        out,
    )
    assert back, out
    assert int(back[1]) >= 2  # at least the two memories learned while it was away
    assert back[2] == left[1] and int(back[3]) > int(left[1])
    assert "demo-gamma asks 'When does the on-call rotation change?'" in out
    # The agents' tables show settled figures: every connected agent holds what the
    # hub holds; only demo-gamma, while offline, differs, and says so.
    rows = re.findall(
        r"^   (demo-\w+) +(connected|offline) .*\( *(\d+) written, +(\d+) received, (\d+) to "
        r"push\) .* root [0-9a-f]{12} \(([a-z: ]+)\)$",
        out,
        flags=re.MULTILINE,
    )
    assert len(rows) == 15, out  # five tables of three agents
    assert {(c, note) for _, c, *_, note in rows} == {
        ("connected", "same as the hub"),
        ("offline", "differs: offline"),
    }
    assert [agent for agent, c, *_ in rows if c == "offline"] == ["demo-gamma"]
    # Concurrent edits converge.
    merged = re.findall(r"^   (demo-\w+) +content=(.*)$", out, flags=re.MULTILINE)
    assert [agent for agent, _ in merged] == ["demo-alpha", "demo-beta", "demo-gamma"]
    assert len({fields for _, fields in merged}) == 1  # the same memory on all three
    assert "tags=['europe'] importance=0.95 accesses=4" in merged[0][1]
    assert "state roots: identical on the hub and all three agents" in out
    assert "no problems" in out
    assert f"chrysalis status --data-dir {tmp_path}" in out
    assert f"chrysalis hub --data-dir {tmp_path / 'hub'}" in out

    status = run("status", "--data-dir", str(tmp_path), "--json")
    assert status.returncode == 0, status.stderr
    agents = json.loads(status.stdout)["agents"]
    assert [a["agent_id"] for a in agents] == ["demo-alpha", "demo-beta", "demo-gamma"]
    roots = {a["state_root"] for a in agents}
    assert roots == {hub_state_root(tmp_path / "hub")}  # the demo converged, hub included
    assert all(a["memories_live"] == 9 for a in agents)
    assert all(a["ops_pending"] == a["ops_retry"] == a["ops_local"] == 0 for a in agents)

    verify = run("verify", "--data-dir", str(tmp_path), "--json")
    assert verify.returncode == 0, verify.stdout
    reports = json.loads(verify.stdout)["agents"]
    assert all(r["ok"] and r["ops_checked"] > 0 for r in reports)

    table = run("status", "--data-dir", str(tmp_path))
    assert "demo-beta" in table.stdout
    assert "recall embedder:" in table.stdout

    offline = {"CHRYSALIS_EMBEDDER": "hashing"}  # whether or not Ollama runs here
    reindexed = run("reindex", "--data-dir", str(tmp_path), "--agent-id", "demo-beta", **offline)
    assert reindexed.returncode == 0, reindexed.stderr
    assert "reindexed demo-beta" in reindexed.stdout
    assert re.search(r"^indexing demo-beta: \d+/\d+ ops$", reindexed.stderr, re.MULTILINE)
    assert "chrysalis-hashing-v1-2048" in reindexed.stdout
    again = json.loads(run("status", "--data-dir", str(tmp_path), "--json", **offline).stdout)
    assert "chrysalis-hashing-v1-2048" in again["embedder"]
    assert run("verify", "--data-dir", str(tmp_path)).returncode == 0

    # A second run would mix with the first: it asks for a new directory instead.
    rerun = run("demo", "--data-dir", str(tmp_path))
    assert rerun.returncode == 2
    assert "already holds a demo" in rerun.stdout


@pytest.mark.slow
def test_demo_in_a_terminal_shows_a_live_view(tmp_path: Path) -> None:
    # FORCE_COLOR makes rich treat the pipe as a terminal: the live table runs.
    demo = run("demo", "--data-dir", str(tmp_path), "--pause", "0", FORCE_COLOR="1", COLUMNS="80")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Chrysalis demo: live" in demo.stdout
    assert "\x1b[" in demo.stdout
    assert "…" not in demo.stdout  # the live table fits 80 columns: no header cut short
    assert "[/]" not in demo.stdout  # and its colours are colours, never markup text
    assert "state roots: identical on the hub and all three agents" in demo.stdout


def two_agents(data_dir: Path) -> None:
    """Two agents that never met a hub: one with a long-term memory (pending, to be
    shared), one with a short-term memory too (local)."""
    from chrysalis_memory import AgentMemory

    async def write() -> None:
        async with AgentMemory(agent_id="ann", data_dir=data_dir, embedder="hashing") as ann:
            await ann.learn("The staging database is restored nightly.", importance=0.9)
        async with AgentMemory(agent_id="bob", data_dir=data_dir, embedder="hashing") as bob:
            await bob.learn("Deploys happen on Tuesdays.", importance=0.9)
            await bob.learn("The user said hello.", importance=0.2)

    asyncio.run(write())


def test_status_reads_well_at_80_columns_and_piped(tmp_path: Path) -> None:
    two_agents(tmp_path)
    offline = {"CHRYSALIS_EMBEDDER": "hashing", "COLUMNS": "80"}
    data = json.loads(run("status", "--data-dir", str(tmp_path), "--json", **offline).stdout)
    assert data["data_dir"] == str(tmp_path)
    assert "chrysalis-hashing-v1-2048" in data["embedder"]
    assert data["same_state_root"] is False
    ann, bob = data["agents"]
    assert (ann["agent_id"], bob["agent_id"]) == ("ann", "bob")
    for agent in (ann, bob):
        assert agent["db_path"] == str(tmp_path / agent["agent_id"] / "memory.db")
        assert re.fullmatch(r"[0-9a-f]{64}", agent["state_root"])
        assert agent["hub_id"] is None and agent["hub_cursor"] == 0
        assert agent["ops"] == agent["ops_written"] > 0  # nothing received from others
        assert agent["ops_synced"] == agent["ops_retry"] == 0
    assert (ann["memories_live"], bob["memories_live"]) == (1, 2)
    assert ann["ops_local"] == 0 and ann["ops_pending"] == ann["ops"]
    assert bob["ops_local"] > 0 and bob["ops_pending"] > 0
    assert bob["ops_local"] + bob["ops_pending"] == bob["ops"]

    result = run("status", "--data-dir", str(tmp_path), **offline)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # piped: plain text
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out  # nothing cut short
    assert out.startswith("2 agent stores in ")
    block = out[out.index("\nbob\n") :]
    assert "  memories    2 live, 0 forgotten\n" in block
    assert (
        f"  ops         {bob['ops']} in the log: {bob['ops']} written here, 0 received\n" in block
    )
    assert (
        f"  sync        {bob['ops_pending']} pending (waiting for the hub), "
        f"{bob['ops_local']} local (short-term: not shared)\n"
    ) in block
    assert "  hub         none yet (never synced)\n" in block
    assert f"  state root  {bob['state_root']}\n" in block
    assert "state roots: 2 different ones among 2 agents" in out
    assert "recall embedder:" in out

    # One agent: no comparison of roots.
    one = run("status", "--data-dir", str(tmp_path), "--agent-id", "ann", **offline).stdout
    assert one.startswith("1 agent store in ") and "state roots:" not in one
    assert f"  sync        {ann['ops']} pending (waiting for the hub)\n" in one


def test_verify_exits_nonzero_on_damage(tmp_path: Path) -> None:
    # No --data-dir: the demo makes a new temporary directory, keeps it and says where.
    demo = run("demo", TMPDIR=str(tmp_path))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    where = re.search(r"^Data: (.+)$", demo.stdout, flags=re.MULTILINE)
    assert where, demo.stdout
    data_dir = Path(where[1])
    assert data_dir.parent == tmp_path and data_dir.name.startswith("chrysalis-demo-")
    with sqlite3.connect(data_dir / "demo-beta" / "memory.db") as db:
        db.execute("UPDATE docs SET state = replace(state, 'Paris', 'Rome')")
    result = run("verify", "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert "PROBLEMS" in result.stdout and "differs from a replay" in result.stdout


def _damaged_hub_database(data_dir: Path) -> dict[int, str]:
    """A hub's collective.db holding 40 ops, 12 bits of them flipped (seeded)."""
    from chrysalis_memory.model.document import SyncStatus
    from tests.storage_damage import flip_op_bytes
    from tests.sync.helpers import make_ops

    async def fill() -> None:
        store = OpStore(data_dir / "collective.db")
        await store.open()
        await store.ingest(make_ops("agent-a", 40), SyncStatus.SYNCED)
        await store.close()

    asyncio.run(fill())
    return flip_op_bytes(data_dir / "collective.db", flips=12, seed=2)


def test_verify_names_every_damaged_op_row_of_a_hub_database(tmp_path: Path) -> None:
    hub_dir = tmp_path / "hub"
    damaged = _damaged_hub_database(hub_dir)
    assert damaged
    # A hub's data directory is found as such, and so is the file given with --db.
    for args in (["--data-dir", str(hub_dir)], ["--db", str(hub_dir / "collective.db")]):
        result = run("verify", *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "PROBLEMS hub: 40 ops" in result.stdout
        for rowid, cid in damaged.items():
            assert f"op row {rowid} (cid {cid[:16]}…): its bytes hash to " in result.stdout
    report = json.loads(run("verify", "--db", str(hub_dir / "collective.db"), "--json").stdout)
    (hub,) = report["agents"]
    assert {(r["rowid"], r["cid"]) for r in hub["damaged_ops"]} == set(damaged.items())


def test_verify_reports_a_file_that_is_not_a_database_at_all(tmp_path: Path) -> None:
    agent_dir = tmp_path / "agent-a"
    agent_dir.mkdir()
    (agent_dir / "memory.db").write_bytes(b"\x00" * 4096)
    result = run("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{agent_dir / 'memory.db'} is damaged" in result.stdout


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = run("status", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "no agent stores under" in result.stderr
    assert "chrysalis demo" in result.stderr
    result = run("verify", "--data-dir", str(tmp_path), "--agent-id", "ghost")
    assert result.returncode == 2
    assert "no store for agent 'ghost'" in result.stderr
