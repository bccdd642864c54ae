"""MkDocs hook (mkdocs.yml ``hooks:``): links from the docs to the repository's files.

The Markdown in docs/ links to source files the way a reader of the repository
follows them, relative to the file: ``[memory.py](../chrysalis_memory/memory.py)``.
Those targets are not part of the site. On the site such a link becomes a link to
the file in the repository when ``repo_url`` is set in mkdocs.yml
(``{repo_url}/blob/main/<path>``), and otherwise the path as code, so that
``mkdocs build --strict`` neither fails on it nor publishes a broken link.

A link to a repository file that does not exist is left alone: strict mode
reports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>\.\./[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
FENCE = re.compile(r"^(```|~~~)")


def _rewrite(match: re.Match[str], page_dir: Path, repo_url: str | None) -> str:
    target = (page_dir / match["target"]).resolve()
    try:
        path = target.relative_to(ROOT).as_posix()
    except ValueError:
        return match[0]  # outside the repository: leave it to mkdocs
    if not target.exists() or path.startswith("docs/"):
        return match[0]
    text = match["text"]
    if repo_url:
        kind = "tree" if target.is_dir() else "blob"
        return f"[{text}]({repo_url.rstrip('/')}/{kind}/main/{path}{match['anchor'] or ''})"
    if text.startswith("`"):
        return f"`{path}`"  # the full path says more than a bare file name
    return f"{text} (`{path}`)"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite links to repository files outside docs/, except inside code blocks."""
    page_dir = (Path(config["docs_dir"]) / page.file.src_path).parent
    repo_url = config.get("repo_url")
    lines, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        if not fenced:
            line = LINK.sub(lambda m: _rewrite(m, page_dir, repo_url), line)
        lines.append(line)
    return "".join(lines)
