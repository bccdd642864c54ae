"""The package, its adapters, examples and tests stay ruff-clean and formatted, and
the code users import is `mypy --strict` clean (ARCHITECTURE §6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("chrysalis_memory", "integrations", "examples", "tests")
TYPED = (
    "chrysalis_memory",
    "integrations/langchain/langchain_chrysalis",
    "integrations/llamaindex/llama_index/vector_stores/chrysalis",
    "integrations/llamaindex/llama_index/memory/chrysalis",
    "examples",
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint() -> None:
    result = _run("ruff", "check", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run("ruff", "format", "--check", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    result = _run("mypy", *TYPED)
    assert result.returncode == 0, result.stdout + result.stderr
