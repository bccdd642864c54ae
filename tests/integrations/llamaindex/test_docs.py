"""The examples of docs/llamaindex.md run as written, in order, as a reader would run
them (offline, in a temporary directory)."""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "llamaindex.md"
NEEDS_HUB = "# needs a running hub"


def _examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [block for block in blocks if not block.startswith(NEEDS_HUB)]


def test_the_guide_has_examples() -> None:
    assert len(_examples()) >= 5


# Memory.from_defaults opens an in-memory SQLite chat store that LlamaIndex never closes.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CHRYSALIS_", "FIREPROOF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHRYSALIS_EMBEDDER", "hashing")  # no Ollama on the test machine
    monkeypatch.chdir(tmp_path)
    for number, example in enumerate(_examples(), 1):
        try:
            exec(compile(example, f"{DOC.name}, example {number}", "exec"), {"__name__": "doc"})
        except Exception as error:
            raise AssertionError(f"example {number} failed:\n{example}") from error
    gc.collect()  # the chat stores' connections are reported here, not in a later test
