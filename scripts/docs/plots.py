"""Plots for docs/benchmarks.md and docs/gossip.md, from the commands' own JSON.

    python scripts/docs/plots.py                          # the gossip plots (about a minute)
    chrysalis bench --json -o bench.json
    python scripts/docs/plots.py --bench bench.json       # and the bench plots of that run

Writes PNG files to docs/img/ (``--out`` to change):

* ``gossip-dissemination.png``: ``chrysalis simulate --json`` for 1,000 agents at
  0%, 10% and 30% message loss: the share of agents holding a new op, round by
  round, beside push-gossip theory;
* ``gossip-scaling.png``: rounds until 50%, 99% and 100% of N agents hold it, for N
  from 10 to ``--max-agents``, beside theory;
* ``bench-latency.png`` and ``bench-throughput.png`` (with ``--bench``): every
  figure of a ``chrysalis bench --json`` report next to its same-run baseline.

The simulator is deterministic for a seed, so the gossip plots are the same on
every machine; the bench plots show the run they were made from (its date and
machine are in the title). Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "chrysalis_memory.cli"]
SEED = 1


def simulate(agents: int, loss: float = 0.0) -> dict[str, Any]:
    """``chrysalis simulate --json`` for ``agents`` agents."""
    options = ["--agents", str(agents), "--loss", str(loss), "--seed", str(SEED), "--json"]
    done = subprocess.run(
        [*CLI, "simulate", *options],
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def theory_rounds(n: int, fanout: int) -> float:
    """What ``chrysalis simulate`` reports as ``theory_rounds``."""
    return 0.0 if n <= 1 else math.log(n) / math.log(1 + fanout) + math.log(n) / fanout


def plot_dissemination(out: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    theory = None
    for loss in (0.0, 0.1, 0.3):
        report = simulate(1000, loss)
        interval = report["interval_ms"]
        rounds = [t / interval for t, _ in report["curve"]]
        reached = [100 * f for _, f in report["curve"]]
        axes.step(rounds, reached, where="post", label=f"{loss:.0%} of messages lost")
        theory = report["theory_rounds"]
    if theory is not None:
        axes.axvline(theory, color="grey", linestyle="--", label="push gossip theory")
    axes.set_xlabel("gossip rounds (500 ms each)")
    axes.set_ylabel("agents holding the op (%)")
    axes.set_ylim(0, 101)
    axes.set_title(f"One op among 1,000 agents, fanout 3 (chrysalis simulate, seed {SEED})")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "gossip-dissemination.png")
    plt.close(figure)


def plot_scaling(out: Path, max_agents: int) -> None:
    import matplotlib.pyplot as plt

    sizes = [n for n in (10, 30, 100, 300, 1000, 3000, 10_000, 30_000) if n <= max_agents]
    reports = [simulate(n) for n in sizes]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    for key, label in (("rounds_to_50", "50%"), ("rounds_to_99", "99%"), ("rounds_to_all", "all")):
        axes.plot(sizes, [r[key] for r in reports], marker="o", label=f"{label} of the agents")
    fanout = reports[0]["fanout"]
    dense = [10 * 1.1**i for i in range(1 + int(math.log(sizes[-1] / 10, 1.1)))]
    axes.plot(
        dense,
        [theory_rounds(round(n), fanout) for n in dense],
        color="grey",
        linestyle="--",
        label="theory: log₄ N + ln(N)/3",
    )
    axes.set_xscale("log")
    axes.set_xlabel("agents")
    axes.set_ylabel("gossip rounds until reached")
    axes.set_title(f"Rounds to reach N agents, fanout {fanout}, no loss (seed {SEED})")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(out / "gossip-scaling.png")
    plt.close(figure)


def _figures(report: dict[str, Any], unit: str) -> list[dict[str, Any]]:
    return [
        value
        for value in report.values()
        if isinstance(value, dict)
        and value.get("unit") == unit
        and isinstance(value.get("value"), int | float)
        and isinstance(value.get("baseline"), int | float)
    ]


def _floor_decade(values: list[float]) -> float:
    """The power of ten at or below the smallest value: where log-scale bars start."""
    return float(10 ** math.floor(math.log10(min(v for v in values if v > 0))))


def _title(report: dict[str, Any], what: str) -> str:
    machine = report.get("machine", {})
    cpu = f"{machine.get('cpu_model', '?')}, {machine.get('cpus_usable', '?')} CPUs"
    return f"{what}: chrysalis bench, {report.get('date', '?')[:10]} ({cpu})"


def plot_bench(report: dict[str, Any], out: Path) -> None:
    import matplotlib.pyplot as plt

    latencies = _figures(report, "ms")
    if latencies:
        figure, axes = plt.subplots(figsize=(8, 0.5 + 0.55 * len(latencies)), dpi=120)
        rows = range(len(latencies))
        p50 = [f.get("p50") or f["value"] for f in latencies]
        p99 = [f.get("p99") or f["value"] for f in latencies]
        base50 = [f.get("baseline_p50") or f["baseline"] for f in latencies]
        axes.barh([r + 0.2 for r in rows], p50, height=0.4, label="Chrysalis p50")
        axes.scatter(p99, [r + 0.2 for r in rows], marker="|", s=120, color="black", label="p99")
        axes.barh([r - 0.2 for r in rows], base50, height=0.4, label="same-run baseline p50")
        axes.set_yticks(list(rows), [f["short"] for f in latencies])
        axes.invert_yaxis()
        axes.set_xscale("log")
        axes.set_xlim(left=_floor_decade(p50 + base50))
        axes.set_xlabel("milliseconds (log scale; lower is better)")
        axes.set_title(_title(report, "Latency"), fontsize=10)
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "bench-latency.png")
        plt.close(figure)
    throughputs = _figures(report, "ops/s")
    if throughputs:
        figure, axes = plt.subplots(figsize=(8, 0.5 + 0.55 * len(throughputs)), dpi=120)
        rows = range(len(throughputs))
        axes.barh(
            [r + 0.2 for r in rows],
            [f["value"] for f in throughputs],
            height=0.4,
            label="Chrysalis",
        )
        axes.barh(
            [r - 0.2 for r in rows],
            [f["baseline"] for f in throughputs],
            height=0.4,
            label="same-run baseline",
        )
        axes.set_yticks(list(rows), [f["short"] for f in throughputs])
        axes.invert_yaxis()
        axes.set_xscale("log")
        values = [f["value"] for f in throughputs] + [f["baseline"] for f in throughputs]
        axes.set_xlim(left=_floor_decade(values))
        axes.set_xlabel("ops per second (log scale; higher is better)")
        axes.set_title(_title(report, "Throughput"), fontsize=10)
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "bench-throughput.png")
        plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, help="a `chrysalis bench --json` report")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument(
        "--max-agents", type=int, default=10_000, help="largest N of gossip-scaling.png"
    )
    parser.add_argument("--skip-gossip", action="store_true", help="only the bench plots")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_gossip:
        plot_dissemination(args.out)
        plot_scaling(args.out, args.max_agents)
    if args.bench is not None:
        plot_bench(json.loads(args.bench.read_text()), args.out)
    for path in sorted(args.out.glob("*.png")):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
