"""``chrysalis simulate``: runs as a user runs it, reports what the issue promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chrysalis_memory.gossip.simulator import expected_rounds, measure_reconciliation


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chrysalis_memory.cli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
        check=False,
    )


def run_json(*args: str) -> dict[str, Any]:
    result = simulate("--json", *args)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_json_report_and_determinism(tmp_path: Path) -> None:
    first = run_json("--agents", "300", "--seed", "7", "--loss", "0.05")
    again = run_json("--agents", "300", "--seed", "7", "--loss", "0.05")
    other = run_json("--agents", "300", "--seed", "8", "--loss", "0.05")
    assert first["trace"] == again["trace"] and first["curve"] == again["curve"]
    assert other["trace"] != first["trace"]
    assert first["converged"] is True
    for key in ("rounds_to_all", "time_to_all_s", "rounds_to_50", "rounds_to_99"):
        assert isinstance(first[key], float)
    assert first["rounds_to_50"] <= first["rounds_to_99"] <= first["rounds_to_all"]
    assert first["time_to_all_s"] == pytest.approx(first["rounds_to_all"] * 0.5, abs=0.01)
    assert first["theory_rounds"] == pytest.approx(expected_rounds(300, 3), abs=0.01)
    assert first["messages_per_agent"] > 0 and first["bytes_per_agent"] > 0
    assert first["messages_lost"] > 0  # 5% loss


def test_a_long_run_says_what_to_expect_and_shows_progress_when_piped() -> None:
    # 2,000 agents are estimated at a few seconds: enough to say so up front.
    result = simulate("--agents", "2000", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # the progress stays off stdout
    lines = result.stderr.splitlines()
    assert "\x1b[" not in result.stderr  # not a terminal: plain lines, no bar
    expected = round(expected_rounds(2000, 3))
    assert re.fullmatch(
        rf"simulating 2,000 agents: about {expected} rounds expected, roughly \d+ s of "
        r"wall time on 2 CPUs",
        lines[0],
    ), lines
    # Lines while it runs depend on the machine's speed; the last one does not.
    assert all(
        re.fullmatch(r"  \d+ s: round [\d.]+ of ~\d+, [\d.]+% of the agents reached", line)
        for line in lines[1:-1]
    ), lines
    assert re.fullmatch(
        rf"  done in [\d.]+ s: all reached in round {data['rounds_to_all']:.1f}", lines[-1]
    ), lines


def test_a_short_run_prints_only_its_report() -> None:
    result = simulate("--agents", "300")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("300 agents, fanout 3, 500 ms rounds, loss 0%, seed 1\n")


def test_the_issue_targets_at_1000_agents() -> None:
    data = run_json("--agents", "1000", "--fanout", "3", "--interval-ms", "500")
    assert data["converged"]
    assert data["rounds_to_all"] <= 10 and data["time_to_all_s"] <= 5.0


def test_plot_and_human_output(tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    result = simulate("--agents", "100", "--plot", str(png), "--reconcile")
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("100%", "theory", "messages per agent", "anti-entropy", str(png)):
        assert text in result.stdout


def test_reconciliation_costs_the_difference_not_the_size() -> None:
    big = measure_reconciliation(ops=100_000, differing=100, writers=100)
    assert big.converged
    assert big.bytes < 100_000
    small = measure_reconciliation(ops=10_000, differing=100, writers=100)
    # Ten times the ops, the same difference: about the same bytes.
    assert big.bytes < 1.2 * small.bytes
    assert big.op_bytes == small.op_bytes


@pytest.mark.parametrize("args", [["--loss", "2"], ["--agents", "0"], ["--fanout", "x"]])
def test_bad_options_are_refused(args: list[str]) -> None:
    result = simulate(*args)
    assert result.returncode == 2
    assert "Invalid value" in result.stderr or "Error" in result.stderr
