"""``chrysalis bench --json --quick`` runs end to end and reports sane figures.

No timing thresholds here: performance targets live in the benchmark itself
(``docs/benchmarks.md``), not in tests that a busy machine would fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LATENCIES = ("learn", "learn_full", "get", "get_cold")
THROUGHPUTS = ("fold", "ingest")
RECALL_LATENCIES = ("recall_hybrid_1000", "recall_vector_1000", "recall_access_1000", "learn_embed")
HUB_INGEST = ("hub_ingest_1", "hub_ingest_10", "hub_ingest_50")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("bench")
    output = workdir / "report.json"
    env = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chrysalis_memory.cli",
            "bench",
            "--json",
            "--quick",
            "--workdir",
            str(workdir / "data"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)  # stdout is exactly one JSON object
    # stderr is a pipe, not a terminal: plain progress lines, one per phase at least.
    assert "\x1b[" not in result.stderr
    phases = re.findall(r"^bench +\d+ s  (.+)$", result.stderr, flags=re.MULTILINE)
    assert phases[0] == "learn (normal)" and "hub propagation" in phases, result.stderr
    assert json.loads(output.read_text(encoding="utf-8")) == data
    # The temporary databases are removed afterwards.
    assert not any((workdir / "data").iterdir())
    return data


def test_machine_and_settings_are_recorded(report: dict[str, Any]) -> None:
    machine = report["machine"]
    for key in ("platform", "python", "cpu_count", "sqlite", "cpu_model", "workdir_filesystem"):
        assert key in machine
    assert machine["cpu_count"] >= 1
    assert machine["sqlite"].count(".") == 2
    assert report["settings"]["n"] == 200  # --quick
    assert report["settings"]["durabilities"] == ["normal", "full"]
    assert isinstance(report["date"], str)
    assert isinstance(report["all_met"], bool)


@pytest.mark.parametrize(
    "name",
    LATENCIES
    + THROUGHPUTS
    + RECALL_LATENCIES
    + ("recall_quality", "propagation", "wire_bytes")
    + HUB_INGEST,
)
def test_every_figure_has_a_baseline_and_a_ratio(report: dict[str, Any], name: str) -> None:
    figure = report[name]
    for key in ("value", "baseline", "ratio", "target", "met", "baseline_label", "unit"):
        assert key in figure, key
    assert math.isfinite(figure["value"])
    assert figure["value"] > 0
    assert figure["baseline"] > 0
    assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"], rel=0.01)
    assert figure["baseline_label"]
    assert figure["n"] > 0
    if figure["checks"]:
        assert figure["met"] == all(check["met"] for check in figure["checks"])
    for check in figure["checks"]:
        if "<=" in check["target"]:
            op_met = check["measured"] <= check["limit"]
        elif ">=" in check["target"]:
            op_met = check["measured"] >= check["limit"]
        else:
            assert ">" in check["target"]
            op_met = check["measured"] > check["limit"]
        assert check["met"] == op_met


@pytest.mark.parametrize("name", [*LATENCIES, *RECALL_LATENCIES, "propagation"])
def test_latencies_have_ordered_percentiles(report: dict[str, Any], name: str) -> None:
    figure = report[name]
    assert figure["unit"] == "ms"
    assert figure["value"] == figure["p50"]
    assert figure["baseline"] == figure["baseline_p50"]
    assert figure["p99"] >= figure["p50"] > 0
    assert figure["baseline_p99"] >= figure["baseline_p50"] > 0
    assert figure["ratio_p99"] == pytest.approx(figure["p99"] / figure["baseline_p99"], rel=0.01)
    value = figure["details"]["value"]
    assert value["min_ms"] <= value["p50_ms"] <= value["p90_ms"] <= value["p99_ms"]
    assert value["p99_ms"] <= value["max_ms"]


def test_learn_targets_depend_on_durability(report: dict[str, Any]) -> None:
    assert report["learn"]["details"]["durability"] == "normal"
    assert report["learn_full"]["details"]["durability"] == "full"
    assert {c["stat"] for c in report["learn"]["checks"]} == {"p50", "p99", "ratio"}
    assert {c["stat"] for c in report["learn_full"]["checks"]} == {"ratio"}
    assert report["learn"]["n"] == report["learn_full"]["n"] == 200


@pytest.mark.parametrize("name", THROUGHPUTS)
def test_throughputs(report: dict[str, Any], name: str) -> None:
    figure = report[name]
    assert figure["unit"] == "ops/s"
    assert figure["p50"] is None
    assert [c["stat"] for c in figure["checks"]] == ["value"]


def test_ingest_took_every_op_and_explains_its_cost(report: dict[str, Any]) -> None:
    ingest = report["ingest"]
    assert ingest["n"] == report["settings"]["ingest_ops"]
    assert ingest["details"]["batches"] == -(-ingest["n"] // ingest["details"]["batch"])
    parts = ingest["details"]["per_op_us"]
    assert parts["total"] > 0
    assert parts["verify_signatures"] > 0
    assert report["fold"]["details"]["documents"] == report["settings"]["fold_ops"] // 10


def test_recall_settings_and_figures(report: dict[str, Any]) -> None:
    assert report["settings"]["recall_sizes"] == [1000]  # --quick
    assert report["settings"]["recall"] is True
    assert report["machine"]["chromadb"]
    recall_keys = sorted(k for k in report if k.startswith("recall_"))
    assert recall_keys == [
        "recall_access_1000",
        "recall_hybrid_1000",
        "recall_quality",
        "recall_vector_1000",
    ]


@pytest.mark.parametrize("mode", ["hybrid", "vector"])
def test_recall_latency_targets_and_build(report: dict[str, Any], mode: str) -> None:
    figure = report[f"recall_{mode}_1000"]
    assert {c["stat"] for c in figure["checks"]} == {"p50", "p99", "ratio"}
    assert "raw chromadb collection.query" in figure["baseline_label"]
    assert figure["n"] == 200
    details = figure["details"]
    assert details["size"] == 1000
    assert details["dimensions"] == 768
    assert details["mode"] == mode
    assert details["record_access"] is False
    assert details["build_seconds"] > 0
    assert details["index_seconds"] > 0
    parts = details["components_p50_ms"]
    for step in ("embed_query", "raw_chroma_query_k5", "cache_query_fetch", "keyword_search"):
        assert parts[step] > 0, step


def test_recall_with_access_is_informational(report: dict[str, Any]) -> None:
    figure = report["recall_access_1000"]
    assert figure["met"] is None
    assert figure["checks"] == []
    assert figure["details"]["record_access"] is True


def test_learn_with_embedding(report: dict[str, Any]) -> None:
    figure = report["learn_embed"]
    assert figure["met"] is None
    alone = figure["details"]["embedder_alone"]
    assert 0 < alone["p50_ms"] <= alone["p99_ms"]
    assert "768" in figure["details"]["embedder"]


def test_recall_quality_per_mode(report: dict[str, Any]) -> None:
    figure = report["recall_quality"]
    assert figure["unit"] == "score"
    modes = figure["details"]["modes"]
    assert set(modes) == {"vector", "keyword", "hybrid"}
    for scores in modes.values():
        assert set(scores) == {"recall@1", "recall@5", "mrr"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
        assert scores["recall@1"] <= scores["recall@5"]
    assert figure["value"] == modes["hybrid"]["recall@5"]
    assert figure["baseline"] == max(modes["vector"]["recall@5"], modes["keyword"]["recall@5"])
    assert figure["met"] == (figure["value"] > figure["baseline"])


def test_hub_figures(report: dict[str, Any]) -> None:
    assert report["settings"]["hub_agents"] == [1, 10, 50]
    propagation = report["propagation"]
    assert {c["stat"] for c in propagation["checks"]} == {"p50", "p99"}
    assert propagation["n"] >= 20
    for name in HUB_INGEST:
        figure = report[name]
        agents = figure["details"]["agents"]
        assert figure["unit"] == "ops/s"
        assert figure["n"] == agents * (report["settings"]["ingest_ops"] // agents)
        # Ops are relayed to the other pushers still connected (none when alone).
        relayed = figure["details"]["relayed_ops"]
        assert relayed <= figure["n"] * (agents - 1)
        assert (relayed > 0) == (agents > 1)
        assert [c["stat"] for c in figure["checks"]] == (["value"] if agents == 50 else [])
    wire = report["wire_bytes"]
    assert wire["unit"] == "bytes"
    # A push frame carries each op verbatim plus a little framing.
    assert wire["baseline"] < wire["value"] < 2 * wire["baseline"]


def test_skip_recall_runs_the_core_alone(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chrysalis_memory.cli",
            "bench",
            "--json",
            "--quick",
            "--skip-recall",
            "--skip-hub",
            "--n",
            "40",
            "--durability",
            "normal",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "learn" in data
    assert not any(key.startswith("recall_") or key == "learn_embed" for key in data)
    assert data["settings"]["recall"] is False
    assert data["settings"]["hub"] is False
    assert "propagation" not in data


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--hub-agents", "ten"),
        ("--hub-agents", "0,10"),
        ("--hub-agents", "1,501"),
        ("--recall-sizes", "10k"),
    ],
)
def test_bad_sizes_are_rejected(option: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chrysalis_memory.cli", "bench", option, value],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert result.returncode == 2
    assert option in result.stderr


def test_human_output_is_a_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chrysalis_memory.cli",
            "bench",
            "--quick",
            "--n",
            "40",
            "--durability",
            "normal",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "160"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for text in (
        "learn (normal) p50",
        "get (cold) p50",
        "fold",
        "ingest",
        "baseline",
        "ratio",
        "recall hybrid 1k p50",
        "quality recall@5",
        "propagation A→hub→B p50",
        "hub ingest, 50 agents",
    ):
        assert text in result.stdout
    assert "learn (full)" not in result.stdout
    assert "PASS" in result.stdout or "MISS" in result.stdout
