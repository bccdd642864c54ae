"""The core is pure: nothing under crdt/ or model/, nor the sync and gossip state
machines, does I/O or reaches upward.

ARCHITECTURE §1: "Nothing in the core imports asyncio, sqlite3, chromadb or
websockets." The core may import only itself (crdt, model, the sans-I/O sync
protocol) and errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chrysalis_memory

PACKAGE_ROOT = Path(chrysalis_memory.__file__).parent
CORE_PACKAGES = ("crdt", "model")
CORE_FILES = (
    "sync/messages.py",
    "sync/protocol.py",
    "gossip/summary.py",
    "gossip/messages.py",
    "gossip/auth.py",
    "gossip/node.py",
    "gossip/simulator.py",
    "gossip/wire.py",
)
FORBIDDEN = {"asyncio", "sqlite3", "aiosqlite", "chromadb", "websockets", "socket"}
ALLOWED_INTERNAL = {
    "chrysalis_memory.crdt",
    "chrysalis_memory.model",
    "chrysalis_memory.errors",
    "chrysalis_memory.sync.messages",
    "chrysalis_memory.sync.protocol",
    "chrysalis_memory.gossip.summary",
    "chrysalis_memory.gossip.messages",
    "chrysalis_memory.gossip.auth",
    "chrysalis_memory.gossip.node",
    "chrysalis_memory.gossip.wire",
}

CORE_MODULES = sorted(
    [p for pkg in CORE_PACKAGES for p in (PACKAGE_ROOT / pkg).rglob("*.py")]
    + [PACKAGE_ROOT / f for f in CORE_FILES]
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    return imports_of(path.read_text(encoding="utf-8"), package)


def imports_of(source: str, package: str) -> set[str]:
    """Imports of module ``source`` living in ``package``."""
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            names.add(module)
            # ``from chrysalis_memory import store`` imports a submodule.
            names.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in {"__import__", "import_module"}
        ):
            names.add("<dynamic import>")
    return names


def test_core_modules_are_found() -> None:
    names = {module_name(p) for p in CORE_MODULES}
    assert {
        "chrysalis_memory.crdt.hlc",
        "chrysalis_memory.model.ops",
        "chrysalis_memory.sync.protocol",
        "chrysalis_memory.sync.messages",
    } <= names
    assert len(CORE_MODULES) >= 10


@pytest.mark.parametrize("path", CORE_MODULES, ids=module_name)
def test_core_module_does_no_io_and_stays_in_the_core(path: Path) -> None:
    imports = imported_modules(path)
    assert "<dynamic import>" not in imports, "the core must not import dynamically"
    io = {name for name in imports if name.split(".")[0] in FORBIDDEN}
    assert not io, f"{module_name(path)} imports I/O modules: {sorted(io)}"
    upward = {
        name
        for name in imports
        if name.split(".")[0] == "chrysalis_memory"
        and name != "chrysalis_memory"
        and not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_INTERNAL)
    }
    assert not upward, f"{module_name(path)} reaches outside the core: {sorted(upward)}"


def test_the_checker_catches_forbidden_imports() -> None:
    source = (
        "import asyncio\n"
        "import socket as s\n"
        "from ..store import sqlite\n"
        "from . import accretion\n"
        "from chrysalis_memory import memory\n"
        "def f():\n"
        "    import websockets\n"
        "    __import__('sqlite3')\n"
    )
    found = imports_of(source, "chrysalis_memory.model")
    assert {"asyncio", "socket", "websockets", "<dynamic import>"} <= found
    assert "chrysalis_memory.store.sqlite" in found
    assert "chrysalis_memory.model.accretion" in found
    assert "chrysalis_memory.memory" in found
