"""Every example runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
