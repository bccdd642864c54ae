"""The examples of docs/llamaindex.md run as written, in order, as a reader would run
them (offline, in a temporary directory)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tests.integrations.docs_runner import DOCS, examples, run_examples

DOC = DOCS / "llamaindex.md"


def test_the_guide_has_examples() -> None:
    assert len(examples(DOC)) >= 5


# Memory.from_defaults opens an in-memory SQLite chat store that LlamaIndex never closes.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_examples(DOC, tmp_path, monkeypatch)
    gc.collect()  # the chat stores' connections are reported here, not in a later test
