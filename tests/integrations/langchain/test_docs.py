"""The examples of docs/langchain.md run as written, in order, as a reader would run
them (offline, in a temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integrations.docs_runner import DOCS, examples, run_examples

DOC = DOCS / "langchain.md"


def test_the_guide_has_examples() -> None:
    assert len(examples(DOC)) >= 6


@pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning")
@pytest.mark.filterwarnings("ignore::langgraph.warnings.LangGraphDeprecatedSinceV10")
def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_examples(DOC, tmp_path, monkeypatch)
