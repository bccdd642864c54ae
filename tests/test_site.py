"""The documentation site builds with `mkdocs build --strict` (every page in the nav,
no broken link or anchor), and the README's links lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("quickstart", "concepts", "architecture", "protocol", "configuration"):
        assert (site / page / "index.html").is_file(), page
    for page in ("hub", "gossip", "langchain", "llamaindex", "benchmarks", "troubleshooting"):
        assert (site / page / "index.html").is_file(), page
    # Links to source files become their paths (no repo_url is set): none is broken.
    architecture = (site / "architecture" / "index.html").read_text(encoding="utf-8")
    assert "<code>chrysalis_memory/memory.py</code>" in architecture
    assert 'href="../chrysalis_memory' not in architecture


LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)(?:#[^)\s]*)?\)")


def test_readme_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = LINK.findall(readme)
    assert len(targets) >= 10
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []


def test_readme_keeps_the_quick_start_and_test_command_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && chrysalis demo"
    ) in lines
    assert 'pip install -e ".[dev]" && python -m pytest' in lines  # CI greps for it
