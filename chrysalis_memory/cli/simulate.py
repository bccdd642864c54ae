"""``chrysalis simulate``: gossip among N agents in the deterministic simulator."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chrysalis_memory.cli.options import JsonOption
from chrysalis_memory.cli.progress import PlainProgress

if TYPE_CHECKING:
    from chrysalis_memory.gossip.simulator import SimResult


# Wall time of a run on a 2-CPU machine grows about as agents^1.5 (measured with the
# defaults, 2026-12: 1,000 agents 0.8 s, 3,000 5 s, 10,000 36 s; 100,000 took 13 min).
WALL_S_PER_AGENT_POWER: Final = 3.5e-5
SHOW_PROGRESS_FROM_S: Final = 2.0  # runs estimated shorter than this show nothing


def estimated_wall_s(agents: int) -> float:
    """A rough wall time for simulating ``agents`` agents (loss adds to it)."""
    return WALL_S_PER_AGENT_POWER * math.pow(agents, 1.5)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 60:.0f} min"


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 4)


def _rounds(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def report(result: SimResult, wall_s: float) -> dict[str, Any]:
    """The JSON report (``rounds_to_all`` and ``time_to_all_s`` among its keys)."""
    n = result.agents
    theory = result.theory_rounds()
    return {
        "agents": n,
        "fanout": result.settings.fanout,
        "interval_ms": result.settings.interval_ms,
        "loss": result.network.loss,
        "seed": result.seed,
        "converged": result.converged,
        "rounds_to_50": _rounds(result.rounds("50%")),
        "rounds_to_99": _rounds(result.rounds("99%")),
        "rounds_to_all": _rounds(result.rounds("100%")),
        "time_to_50_s": _seconds(result.time_to_fraction_ms["50%"]),
        "time_to_99_s": _seconds(result.time_to_fraction_ms["99%"]),
        "time_to_all_s": _seconds(result.time_to_fraction_ms["100%"]),
        "theory_rounds": round(theory, 2),
        "theory_time_s": round(theory * result.settings.interval_ms / 1000, 3),
        "messages_per_agent": round(result.messages / n, 2),
        "bytes_per_agent": round(result.bytes / n),
        "messages_lost": result.lost,
        "wall_s": round(wall_s, 2),
        "trace": result.trace,
        "curve": [[round(t, 1), round(f, 5)] for t, f in result.curve],
    }


def _plot(data: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise typer.BadParameter(
            "--plot needs matplotlib: pip install 'chrysalis-memory[plot]'", param_hint="--plot"
        ) from None
    interval = data["interval_ms"]
    rounds = [t / interval for t, _ in data["curve"]]
    fractions = [100 * f for _, f in data["curve"]]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.step(rounds, fractions, where="post", label="agents holding the op (simulated)")
    axes.axvline(data["theory_rounds"], color="grey", linestyle="--", label="push gossip theory")
    axes.set_xlabel(f"gossip rounds ({interval:g} ms each)")
    axes.set_ylabel("agents reached (%)")
    axes.set_ylim(0, 101)
    axes.set_title(
        f"{data['agents']:,} agents, fanout {data['fanout']}, loss {data['loss']:.0%}, "
        f"seed {data['seed']}"
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def simulate(
    agents: Annotated[int, typer.Option(min=1, max=200_000, help="Number of agents.")] = 1000,
    fanout: Annotated[int, typer.Option(min=1, max=64, help="Peers pushed to per round.")] = 3,
    interval_ms: Annotated[
        float, typer.Option(min=1.0, help="Time between gossip rounds (simulated).")
    ] = 500.0,
    loss: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of messages the network loses.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Same seed, same run.")] = 1,
    anti_entropy_ms: Annotated[
        float, typer.Option(min=0.0, help="Time between anti-entropy rounds; 0 turns it off.")
    ] = 5000.0,
    as_json: JsonOption = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Draw the infection curve to this PNG file.")
    ] = None,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Also measure one anti-entropy exchange between two replicas of 100,000 "
            "ops that differ by 100.",
        ),
    ] = False,
) -> None:
    """Simulate one op spreading by gossip among AGENTS agents, in virtual time.

    Reports rounds and simulated time until 50%, 99% and 100% of the agents
    hold it, messages and bytes per agent, and what push-gossip theory expects
    (log_{1+f} N + ln(N)/f rounds). The network delays messages 1-50 ms and
    loses --loss of them; membership runs too (SWIM probes). Deterministic:
    the same seed replays the same run (see the trace in --json).
    """
    from chrysalis_memory.gossip.simulator import (
        expected_rounds,
        measure_reconciliation,
        run_dissemination,
    )

    started = time.perf_counter()
    err = Console(stderr=True)
    estimate = estimated_wall_s(agents)
    expected = expected_rounds(agents, fanout)
    # Say what is coming when it takes a while: with --json too (this goes to stderr).
    watched = estimate >= SHOW_PROGRESS_FROM_S
    plain = PlainProgress(err, every_s=max(2.0, estimate / 40))
    if watched:
        plain.line(
            f"simulating {agents:,} agents: about {expected:.0f} rounds expected, roughly "
            f"{_duration(estimate)} of wall time on 2 CPUs"
        )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} agents reached"),
        TextColumn("round {task.fields[round]:.1f} of ~{task.fields[expected]:.0f}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not (watched and err.is_terminal),
    ) as progress:
        task = progress.add_task("simulating", total=agents, round=0.0, expected=expected)

        def advance(at_ms: float, fraction: float) -> None:
            # Virtual time starts one round in: membership settles first.
            rounds = max(0.0, at_ms / interval_ms - 1)
            progress.update(task, completed=round(fraction * agents), round=rounds)
            if watched and not err.is_terminal:  # a pipe, a log: plain lines instead
                plain.tick(
                    lambda: (
                        f"  {plain.elapsed():.0f} s: round {rounds:.1f} of ~{expected:.0f}, "
                        f"{fraction:.1%} of the agents reached"
                    )
                )

        result = run_dissemination(
            agents,
            fanout=fanout,
            interval_ms=interval_ms,
            loss=loss,
            seed=seed,
            anti_entropy_interval_ms=anti_entropy_ms or None,
            progress=advance,
        )
    if watched and not err.is_terminal:
        reached = result.rounds("100%")
        plain.line(
            f"  done in {plain.elapsed():.1f} s: all reached in round {reached:.1f}"
            if reached is not None
            else f"  done in {plain.elapsed():.1f} s: not every agent was reached"
        )
    data = report(result, time.perf_counter() - started)
    if reconcile:
        measured = measure_reconciliation()
        data["reconciliation"] = {
            "ops": measured.ops,
            "differing": measured.differing,
            "writers": measured.writers,
            "messages": measured.messages,
            "bytes": measured.bytes,
            "op_bytes": measured.op_bytes,
            "converged": measured.converged,
        }
    if plot is not None:
        _plot(data, plot)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    _render(data, plot)


def _render(data: dict[str, Any], plot: Path | None) -> None:
    console = Console()
    interval = data["interval_ms"]
    # A line of its own: as the table's title it wrapped to the table's width.
    console.print(
        f"{data['agents']:,} agents, fanout {data['fanout']}, {interval:g} ms rounds, "
        f"loss {data['loss']:.0%}, seed {data['seed']}",
        highlight=False,
    )
    table = Table()
    for column in ("reached", "rounds", "simulated time"):
        table.add_column(column, justify="right")
    for label, key in (("50%", "50"), ("99%", "99"), ("100%", "all")):
        rounds, seconds = data[f"rounds_to_{key}"], data[f"time_to_{key}_s"]
        table.add_row(
            label,
            "-" if rounds is None else f"{rounds:.2f}",
            "-" if seconds is None else f"{seconds:.2f} s",
        )
    table.add_section()
    table.add_row("theory (100%)", f"{data['theory_rounds']:.2f}", f"{data['theory_time_s']:.2f} s")
    console.print(table)
    console.print(
        f"messages per agent {data['messages_per_agent']:,.1f}, bytes per agent "
        f"{data['bytes_per_agent']:,} (pushes, probes and anti-entropy), "
        f"{data['messages_lost']:,} messages lost; {data['wall_s']:.1f} s of wall time"
    )
    if not data["converged"]:
        console.print("[bold red]not every agent was reached within 60 rounds[/]")
    if "reconciliation" in data:
        r = data["reconciliation"]
        console.print(
            f"anti-entropy, {r['ops']:,} ops differing by {r['differing']}: "
            f"{r['bytes']:,} bytes in {r['messages']} messages ({r['op_bytes']:,} of them ops)"
        )
    if plot is not None:
        console.print(f"infection curve written to {plot}")
