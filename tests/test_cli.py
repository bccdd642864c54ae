"""The ``chrysalis`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHRYSALIS = [sys.executable, "-m", "chrysalis_memory.cli"]


def run(*args: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRYSALIS_")}
    env["COLUMNS"] = "200"  # keep rich from wrapping the output we search
    env.update(extra)
    return subprocess.run(
        [*CHRYSALIS, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


@pytest.mark.parametrize(
    "command",
    [[], ["status"], ["verify"], ["demo"], ["bench"], ["reindex"], ["token"], ["token", "create"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = run("--help")
    for name in ("status", "verify", "demo", "bench", "reindex", "token"):
        assert name in result.stdout


@pytest.mark.slow
def test_demo_then_status_and_verify(tmp_path: Path) -> None:
    demo = run("demo", "--data-dir", str(tmp_path))
    assert demo.returncode == 0, demo.stderr
    assert "identical" in demo.stdout
    assert "no problems" in demo.stdout

    status = run("status", "--data-dir", str(tmp_path), "--json")
    assert status.returncode == 0, status.stderr
    agents = json.loads(status.stdout)["agents"]
    assert [a["agent_id"] for a in agents] == ["demo-alpha", "demo-beta", "demo-gamma"]
    assert len({a["state_root"] for a in agents}) == 1  # the demo converged
    assert all(a["memories_live"] == 6 for a in agents)

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
    assert "chrysalis-hashing-v1-2048" in reindexed.stdout
    again = json.loads(run("status", "--data-dir", str(tmp_path), "--json", **offline).stdout)
    assert "chrysalis-hashing-v1-2048" in again["embedder"]
    assert run("verify", "--data-dir", str(tmp_path)).returncode == 0


def test_verify_exits_nonzero_on_damage(tmp_path: Path) -> None:
    assert run("demo", "--data-dir", str(tmp_path)).returncode == 0
    with sqlite3.connect(tmp_path / "demo-beta" / "memory.db") as db:
        db.execute("UPDATE docs SET state = replace(state, 'Paris', 'Rome')")
    result = run("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "PROBLEMS" in result.stdout and "differs from a replay" in result.stdout


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = run("status", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "no agent stores under" in result.stderr
    assert "chrysalis demo" in result.stderr
    result = run("verify", "--data-dir", str(tmp_path), "--agent-id", "ghost")
    assert result.returncode == 2
    assert "no store for agent 'ghost'" in result.stderr
