"""Runs a guide's Python examples as written, in order, as a reader would run them
(offline, in a temporary directory): the helper behind each adapter's test_docs.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
NEEDS_HUB = "# needs a running hub"
"""First line of an example that is left out: it needs a hub the tests do not run."""


def examples(doc: Path) -> list[str]:
    """The ```python blocks of ``doc``, but those that need a running hub."""
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    return [block for block in blocks if not block.startswith(NEEDS_HUB)]


def run_examples(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the examples of ``doc`` one after the other, in ``tmp_path``, with no
    ``CHRYSALIS_*``/``FIREPROOF_*`` environment and the offline hashing embedder."""
    for name in list(os.environ):
        if name.startswith(("CHRYSALIS_", "FIREPROOF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHRYSALIS_EMBEDDER", "hashing")  # no Ollama on the test machine
    monkeypatch.chdir(tmp_path)
    for number, example in enumerate(examples(doc), 1):
        try:
            exec(compile(example, f"{doc.name}, example {number}", "exec"), {"__name__": "doc"})
        except Exception as error:
            raise AssertionError(f"example {number} failed:\n{example}") from error
