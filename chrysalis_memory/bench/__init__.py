"""Benchmarks of the core (``chrysalis bench``): each figure with a same-run baseline."""

from chrysalis_memory.bench.core import (
    Check,
    Figure,
    Report,
    Reporter,
    Settings,
    SilentReporter,
    machine_info,
    run,
    run_benchmarks,
)

__all__ = [
    "Check",
    "Figure",
    "Report",
    "Reporter",
    "Settings",
    "SilentReporter",
    "machine_info",
    "run",
    "run_benchmarks",
]
