"""Options shared by several ``chrysalis`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        "-d",
        envvar="CHRYSALIS_DATA_DIR",
        help="Root data directory (one sub-directory per agent).",
    ),
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent-id",
        "-a",
        envvar="CHRYSALIS_AGENT_ID",
        help="Only this agent (default: every agent found under the data directory).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
