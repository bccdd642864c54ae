"""The notebooks in examples/notebooks/ run top to bottom, offline, and show what
they promise. Each runs in a fresh kernel (nbclient) in a temporary directory,
with no CHRYSALIS_* setting of the developer's and Ollama pointed at a closed
port, so the output never depends on the machine. Committed notebooks carry no
outputs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parent.parent / "examples" / "notebooks"
TIMEOUT_S = 120  # per cell; each notebook takes a few seconds
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The kernel inherits this process's environment: strip what could leak in."""
    for name in list(os.environ):
        if name.startswith(("CHRYSALIS_", "OLLAMA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OLLAMA_HOST", CLOSED_PORT)  # Ollama "absent", whatever runs here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # no jupyter_core migration warning
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no developer's profile


def run_notebook(name: str, cwd: Path) -> tuple[Any, str]:
    """Execute a notebook; returns it (with outputs) and the text of its stream outputs."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors == [], errors
    stdout, stderr = [], []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                (stdout if output.name == "stdout" else stderr).append(output.text)
    assert stderr == [], "".join(stderr)  # no warnings, no tracebacks, no log noise
    return notebook, "".join(stdout)


def test_notebooks_are_committed_without_outputs() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert len(names) >= 4, names
    for name in names:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{name}: clear the outputs before committing"
                assert cell.execution_count is None, f"{name}: clear the outputs"


@pytest.mark.usefixtures("clean_environment")
def test_three_agents_share_memory_through_a_hub(tmp_path: Path) -> None:
    _, out = run_notebook("01_three_agents_hub.ipynb", tmp_path)
    assert re.search(r"hub running on ws://127\.0\.0\.1:\d+", out)
    assert out.count(" connected\n") == 3
    assert "all 3 memories reached all 3 agents within" in out
    assert (
        "beta recalled: 'The user prefers concise explanations with code examples.' "
        "(learned by alpha)"
    ) in out
    assert "(learned by beta)" in out and "(learned by gamma)" in out
    caught_up = re.search(r"gamma caught up: pulled (\d+) ops, cursor (\d+) -> (\d+)", out)
    assert caught_up, out
    assert int(caught_up[1]) >= 2 and int(caught_up[3]) > int(caught_up[2])
    assert "gamma now holds 5 memories" in out
    assert "importance=0.95" in out and "'ops'" in out
    assert "identical state roots: True" in out
    assert "identical memories: True" in out
    assert "'status': 'ok'" in out and "'agents': 3" in out


@pytest.mark.usefixtures("clean_environment")
def test_two_langchain_agents(tmp_path: Path) -> None:
    pytest.importorskip("langgraph", reason="the langchain extra")
    _, out = run_notebook("02_langchain_agents.ipynb", tmp_path)
    assert "hub running on ws://127.0.0.1:" in out
    assert "chat model: a fake one (" in out  # Ollama absent: the fake model, said so
    assert "support-bot: Nice to meet you, Ada. Green tea, noted." in out
    profile = "{'text': 'Ada drinks green tea, never coffee.'}"
    assert f"sales-bot received Ada's profile: {profile}" in out
    told = out.split("sales-bot's model was told:\n", 1)[1]
    assert told.startswith("Profiles:\nAda drinks green tea, never coffee.\n")
    # The sales bot recalls the support bot's conversation through ChrysalisMemory.
    assert "Human: Hi, I'm Ada. I only drink green tea, never coffee." in told
    assert "sales-bot: Offer Ada the green tea sampler, not coffee." in out
    assert "hub exited with 0" in out


@pytest.mark.usefixtures("clean_environment")
def test_llamaindex_query_engine_over_collective_memory(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core", reason="the llamaindex extra")
    _, out = run_notebook("03_llamaindex_query_engine.ipynb", tmp_path)
    assert "field-agent-1 learned 2 facts and synced them" in out
    assert "field-agent-2 learned 2 facts and synced them" in out
    assert re.search(r"analyst pulled \d+ ops from the hub", out)
    answers = re.findall(r"^\d\.\d\d  (.+)$", out, flags=re.MULTILINE)
    assert answers[0] == "The staging database is restored every night at 02:00 UTC."
    known = re.findall(r"^field-agent-2 knows: (.+)$", out, flags=re.MULTILINE)
    assert sorted(known) == [
        "Deploys to production happen on Tuesdays after the standup.",
        "The staging cluster runs on three nodes in eu-west-1.",
    ]
    assert "hub exited with 0" in out


@pytest.mark.usefixtures("clean_environment")
def test_partition_and_convergence_with_a_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra")
    notebook, out = run_notebook("04_partition_convergence.ipynb", tmp_path)
    assert "before the partition, distinct state roots: 1" in out
    during = re.search(r"during the partition, distinct state roots: \[(.*)\]", out)
    assert during, out
    assert during[1].split(", ")[-1] == "2"  # one state per side
    assert "after healing, distinct state roots: 1" in out
    assert "identical memories everywhere: True" in out
    assert "'The launch moved to March 21.' tags=['q1'] importance=0.95 accesses=4" in out
    converged = re.search(
        r"10 ops; partition healed at 10 s; every agent held every op by ([\d.]+) s", out
    )
    assert converged, out
    assert 10 < float(converged[1]) <= 25
    images = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "display_data" and "image/png" in output.data
    ]
    assert len(images) == 1  # the convergence plot
