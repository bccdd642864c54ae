"""Every example runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chrysalis_memory import AgentMemory

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, data_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "importance 0.9, confidence 0.95" in out
    assert "agent-001#1" in out
    assert "agent-001#2" in out
    assert "recalled: 'The user prefers concise answers.'" in out


def test_offline_agents_converge(tmp_path: Path) -> None:
    out = run_example("offline_agents.py", tmp_path)
    assert "converged:  True" in out
    assert "tags:       ['schedule']" in out
    assert "accesses: 2" in out


def memories(data_dir: Path, agent_id: str = "agent-001") -> list[str]:
    """The contents of the agent's live memories, sorted."""

    async def read() -> list[str]:
        async with AgentMemory(agent_id=agent_id, data_dir=data_dir) as mem:
            return sorted(doc.content for doc in await mem.list(limit=1000))

    return asyncio.run(read())


def test_quickstart_again_adds_no_memories(tmp_path: Path) -> None:
    run_example("quickstart.py", tmp_path)
    once = memories(tmp_path)
    assert len(once) == 2
    again = run_example("quickstart.py", tmp_path)
    assert memories(tmp_path) == once
    assert "memories tagged 'user': ['The user prefers concise answers.']" in again
    assert "importance 0.9, confidence 0.95" in again


def local_snippets(doc: Path) -> list[str]:
    """The ```python blocks of ``doc`` that run on a local store (no hub, no peers)."""
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    return [block for block in blocks if 'data_dir="./data"' in block]


def test_readme_and_quick_start_snippets_again_add_no_memories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("CHRYSALIS_", "FIREPROOF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHRYSALIS_EMBEDDER", "hashing")  # no Ollama on the test machine
    monkeypatch.chdir(tmp_path)
    snippets = local_snippets(ROOT / "README.md") + local_snippets(ROOT / "docs" / "quickstart.md")
    assert len(snippets) == 3  # README: async and blocking; the guide's agent
    counts = []
    for _ in range(2):  # as a reader who runs them again
        for number, snippet in enumerate(snippets, 1):
            exec(compile(snippet, f"snippet {number}", "exec"), {"__name__": "snippet"})
        counts.append(len(memories(tmp_path / "data")))
    assert counts == [4, 4]
