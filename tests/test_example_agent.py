"""examples/agent_with_memory.py (the agents of docker-compose.yml) runs offline, with no hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "agent_with_memory.py"
CONCISE = "'The user prefers concise explanations with code examples.'"


def run_agent(cwd: Path, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHRYSALIS_", "OLLAMA_"))}
    # Never probe a developer's Ollama: the output must not depend on the machine.
    clean["CHRYSALIS_EMBEDDER"] = "hashing"
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_learns_recalls_and_remembers_across_runs(tmp_path: Path) -> None:
    first = run_agent(tmp_path)  # no argument, no environment: ./data/agent
    assert "agent agent-001: data data/agent/agent-001, hub none (offline)" in first
    assert f"learned: {CONCISE}" in first
    assert "learned: \"Python asyncio requires 'await' for coroutine execution.\"" in first
    recalled = first.split("recall 'How should I explain concepts to the user?':\n", 1)[1]
    assert recalled.splitlines()[0].endswith(f"{CONCISE} (learned by agent-001)")
    assert "memories: 2 (0 from other agents)" in first
    assert not [line for line in first.splitlines() if line.startswith("sync")]
    assert (tmp_path / "data" / "agent" / "agent-001" / "memory.db").is_file()

    data_dir = tmp_path / "data" / "agent"
    second = run_agent(tmp_path / "elsewhere", str(data_dir))  # the same store, by argument
    assert f"agent agent-001: data {data_dir / 'agent-001'}, hub none (offline)" in second
    assert f"already known: {CONCISE}" in second
    assert "learned:" not in second
    assert "memories: 2 (0 from other agents)" in second


def test_configured_by_environment_as_in_compose(tmp_path: Path) -> None:
    out = run_agent(
        tmp_path, CHRYSALIS_AGENT_ID="agent-002", CHRYSALIS_DATA_DIR=str(tmp_path / "env-data")
    )
    assert f"agent agent-002: data {tmp_path / 'env-data' / 'agent-002'}" in out
    assert "learned: 'Deploys happen on Tuesdays after the standup.'" in out
    assert "memories: 2 (0 from other agents)" in out
    assert (tmp_path / "env-data" / "agent-002" / "memory.db").is_file()
