"""``chrysalis bench``: measure the core on this machine, each figure next to a
baseline taken in the same run."""

from __future__ import annotations

import asyncio
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from chrysalis_memory.cli.options import JsonOption
from chrysalis_memory.cli.progress import PlainProgress
from chrysalis_memory.errors import ChrysalisError

if TYPE_CHECKING:
    from chrysalis_memory.bench import Figure, Report, Settings


class DurabilityChoice(str, Enum):
    normal = "normal"
    full = "full"
    both = "both"


class _ProgressReporter:
    """Draws the benchmark phases as a progress bar (on stderr)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def phase(self, description: str, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total)
        self._task = self._progress.add_task(description, total=max(total, 1))

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, steps)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total)


class _PlainReporter:
    """The benchmark phases as plain lines on stderr, when it is not a terminal."""

    def __init__(self, progress: PlainProgress) -> None:
        self._progress = progress
        self._phase = ""
        self._done = self._total = 0

    def phase(self, description: str, total: int) -> None:
        self._phase, self._done, self._total = description, 0, max(total, 1)
        self._progress.line(f"bench {self._progress.elapsed():4.0f} s  {description}")

    def advance(self, steps: int = 1) -> None:
        self._done += steps
        self._progress.tick(
            lambda: (
                f"bench {self._progress.elapsed():4.0f} s  {self._phase}: "
                f"{self._done:,}/{self._total:,}"
            )
        )


def _run(settings: Settings) -> Report:
    from chrysalis_memory.bench import run_benchmarks

    err = Console(stderr=True)
    if not err.is_terminal:  # a pipe or a log: rich would draw nothing for minutes
        return asyncio.run(run_benchmarks(settings, _PlainReporter(PlainProgress(err, every_s=5))))
    with Progress(
        TextColumn("[progress.description]{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        reporter = _ProgressReporter(progress)
        report = asyncio.run(run_benchmarks(settings, reporter))
        reporter.finish()
    return report


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "score":
        return f"{value:.3f}"
    if unit == "bytes":
        return f"{value:,.0f} B"
    return f"{value:,.0f} ops/s"


def _status(figure: Figure, stats: tuple[str, ...]) -> tuple[str, str]:
    checks = [c for c in figure.checks if c.stat in stats]
    if not checks:
        return "-", "[dim]info[/]"
    target = ", ".join(c.target for c in checks)
    if all(c.met for c in checks):
        return target, "[bold green]PASS[/]"
    return target, "[bold red]MISS[/]"


def _rows(figure: Figure) -> list[tuple[str, ...]]:
    if figure.unit == "ms":
        rows: list[tuple[str, ...]] = []
        for stat, value, base, ratio in (
            ("p50", figure.p50, figure.baseline_p50, figure.ratio),
            ("p99", figure.p99, figure.baseline_p99, figure.ratio_p99),
        ):
            target, status = _status(figure, (stat, "ratio") if stat == "p50" else (stat,))
            rows.append(
                (
                    f"{figure.short} {stat}",
                    _number(value, "ms"),
                    _number(base, "ms"),
                    "-" if ratio is None else f"{ratio:.2f}x",
                    target,
                    status,
                )
            )
        return rows
    target, status = _status(figure, ("value",))
    return [
        (
            figure.short,
            _number(figure.value, figure.unit),
            _number(figure.baseline, figure.unit),
            f"{figure.ratio:.3f}x",
            target,
            status,
        )
    ]


def render(report: Report, console: Console) -> None:
    """The human-readable report: machine, then a table of figures and baselines."""
    m = report.machine
    console.print(
        f"[bold]chrysalis bench[/] {report.date}: {m['cpu_model']} ({m['cpus_usable']} cpus), "
        f"{m['platform']}, Python {m['python']}, SQLite {m['sqlite']}, "
        f"temp dir on {m['workdir_filesystem'] or '?'}; load average {m['loadavg_start']}"
    )
    table = Table(title="Each figure next to a baseline measured in the same run")
    for column in ("figure", "measured", "baseline", "ratio", "target", "status"):
        table.add_column(column, justify="left" if column in ("figure", "target") else "right")
    for figure in report.figures.values():
        for row in _rows(figure):
            table.add_row(*row)
        table.add_section()
    console.print(table)
    console.print("[dim]ratio = measured / baseline. Figures and their baselines:[/]")
    for figure in report.figures.values():
        console.print(f"[dim]  {figure.short}: {figure.label}; vs {figure.baseline_label}[/]")
    ingest = report.figures.get("ingest")
    if ingest is not None:
        parts = ingest.details["components_ops_s"]
        us = ingest.details["per_op_us"]
        console.print(
            f"[dim]ingest per op: {us['total']} us = decode + CID {us['decode_and_cid']} us "
            f"+ signature {us['verify_signatures']} us "
            f"({parts['verify_signatures_pool_workers']:.0f} threads; "
            f"{parts['verify_signatures_one_thread']:,.0f} verifies/s on one) "
            f"+ store and fold {us['rest']} us[/]"
        )
    learn_embed = report.figures.get("learn_embed")
    if learn_embed is not None:
        alone = learn_embed.details["embedder_alone"]
        console.print(
            f"[dim]embedder alone ({learn_embed.details['embedder']}): "
            f"p50 {alone['p50_ms']:.3f} ms, p99 {alone['p99_ms']:.3f} ms[/]"
        )
    for figure in report.figures.values():
        if figure.name.startswith("recall_hybrid_"):
            d = figure.details
            parts = ", ".join(
                f"{k} {v:.3f}" for k, v in d["components_p50_ms"].items() if k != "fetch"
            )
            console.print(
                f"[dim]{d['size']:,} memories built in {d['build_seconds']:.1f} s "
                f"(index {d['index_ms_per_memory']:.3f} ms/memory); hybrid steps alone, "
                f"p50 ms: {parts} (fetch={d['components_p50_ms']['fetch']:.0f})[/]"
            )
    quality = report.figures.get("recall_quality")
    if quality is not None:
        modes = quality.details["modes"]
        console.print(
            "[dim]labelled set: "
            + "; ".join(
                f"{mode} " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                for mode, scores in modes.items()
            )
            + "[/]"
        )
    verdict = "[bold green]all targets met[/]" if report.all_met else "[bold red]targets missed[/]"
    console.print(f"{verdict} in {report.seconds:.1f} s")


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint="--recall-sizes"
        ) from None
    if not sizes or sizes[0] < 100:
        raise typer.BadParameter("each size must be at least 100", param_hint="--recall-sizes")
    return sizes


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            "give whole numbers, e.g. 1,10,50", param_hint="--hub-agents"
        ) from None
    if not counts or min(counts) < 1 or max(counts) > 500:
        raise typer.BadParameter("each count must be in 1..500", param_hint="--hub-agents")
    return counts


def bench(
    as_json: JsonOption = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A small run that checks that it works: about 20 s on 2 CPUs, against "
            "several minutes for the full run.",
        ),
    ] = False,
    n: Annotated[
        int | None,
        typer.Option(
            "--n",
            min=20,
            help="Samples per latency figure (default 2000, 200 with --quick); "
            "fold uses 25 N ops and ingest 10 N ops.",
        ),
    ] = None,
    durability: Annotated[
        DurabilityChoice,
        typer.Option(
            "--durability",
            case_sensitive=False,
            help="Which durability setting(s) the learn latency is measured with; "
            "get and ingest use the first (normal when both).",
        ),
    ] = DurabilityChoice.both,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the JSON report to this file."),
    ] = None,
    recall_sizes: Annotated[
        str | None,
        typer.Option(
            "--recall-sizes",
            help="Store sizes (memories, comma-separated) recall latency is measured at "
            "(default 10000,100000; 1000 with --quick). 100,000 takes a few minutes to build.",
        ),
    ] = None,
    skip_recall: Annotated[
        bool,
        typer.Option("--skip-recall", help="Run only the core figures (no recall benchmarks)."),
    ] = False,
    skip_core: Annotated[
        bool,
        typer.Option("--skip-core", help="Leave out the core figures."),
    ] = False,
    skip_hub: Annotated[
        bool,
        typer.Option("--skip-hub", help="Leave out the hub figures (propagation, hub ingest)."),
    ] = False,
    hub_agents: Annotated[
        str | None,
        typer.Option(
            "--hub-agents",
            help="Numbers of agents pushing to the hub at once (comma-separated; "
            "default 1,10,50), one hub ingest figure each.",
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Where the temporary databases go (default: the system temp dir). "
            "Put it on the disk you care about: tmpfs makes fsync free.",
        ),
    ] = None,
) -> None:
    """Measure the core, recall and the hub on this machine, against baselines.

    Every figure is reported next to a baseline measured in the same run
    (raw aiosqlite inserts and selects, a plain dict-update loop) and as a
    ratio to it, so that a busy machine shows up in both. Targets: learn p50
    <= 1 ms, p99 <= 5 ms and within 3x of a raw insert; get p50 <= 0.2 ms;
    fold >= 100,000 ops/s; ingest >= 10,000 ops/s. Recall: p50 <= 5 ms and
    p99 <= 20 ms at 100,000 memories, within 1.5x of a raw Chroma query on the
    same vectors; fused recall@5 above vector-only and keyword-only on the
    labelled set. Hub (in its own process, on loopback): propagation A → hub
    → B p50 <= 50 ms and p99 <= 200 ms; ingest >= 5,000 ops/s with 50 agents.
    """
    durabilities: list[Any] = (
        ["normal", "full"] if durability is DurabilityChoice.both else [durability.value]
    )
    overrides: dict[str, Any] = {
        "durabilities": durabilities,
        "workdir": workdir,
        "recall": not skip_recall,
        "core": not skip_core,
        "hub": not skip_hub,
    }
    if hub_agents is not None:
        overrides["hub_agents"] = _counts(hub_agents)
    if n is not None:
        overrides["n"] = n
    if recall_sizes is not None:
        overrides["recall_sizes"] = _sizes(recall_sizes)
    from chrysalis_memory.bench import Settings

    settings = Settings.quick(**overrides) if quick else Settings(**overrides)
    try:
        report = _run(settings)
    except ChrysalisError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    data = report.to_json_data()
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(report, Console())
