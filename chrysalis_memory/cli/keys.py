"""``chrysalis key``: agents' public signing keys, as a gossip members file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from chrysalis_memory.cli.options import DataDirOption
from chrysalis_memory.errors import ChrysalisError

err_console = Console(stderr=True)


def key(
    agent_ids: Annotated[
        list[str], typer.Argument(metavar="AGENT_ID...", help="The agents whose keys to print.")
    ],
    data_dir: DataDirOption = Path("./data"),
) -> None:
    """Print the public signing keys of AGENT_IDS as one JSON object {agent id: key}.

    That is the format of a gossip members file (GossipConfig.members_file) and of
    CHRYSALIS_GOSSIP_MEMBERS. An agent that has no key yet gets one now, in
    DATA_DIR/AGENT_ID/keys/signing.key (where AgentMemory keeps it), so that the
    members can be listed before the agents first run. Only the public half is
    printed.
    """
    from chrysalis_memory.config import AgentMemoryConfig
    from chrysalis_memory.keys import load_or_create_signer

    keys: dict[str, str] = {}
    try:
        for agent_id in agent_ids:
            config = AgentMemoryConfig(agent_id=agent_id, data_dir=data_dir)
            keys[agent_id] = load_or_create_signer(
                config.agent_dir / "keys" / "signing.key"
            ).public_key
    except ChrysalisError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(code=2) from None
    except OSError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, markup=False)
        raise typer.Exit(code=2) from None
    print(json.dumps(keys, indent=2))
