"""``chrysalis token``: create, revoke and list the hub's agent tokens."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from chrysalis_memory.errors import ChrysalisError

token_app = typer.Typer(help="Manage agent tokens for the hub.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

TokensFileOption = Annotated[
    Path,
    typer.Option(
        "--tokens-file",
        envvar="CHRYSALIS_HUB_TOKENS_FILE",
        help="The hub's token file (holds only hashes of the tokens).",
    ),
]
DEFAULT_TOKENS_FILE = Path("./data/hub/tokens.json")


def _fail(error: ChrysalisError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {error}", highlight=False)
    return typer.Exit(code=2)


@token_app.command()
def create(
    agent_id: Annotated[str, typer.Argument(help="The agent the token is for.")],
    tokens_file: TokensFileOption = DEFAULT_TOKENS_FILE,
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="Bind the agent's ed25519 signing key now (base64url); otherwise it is "
            "bound at the agent's first connection.",
        ),
    ] = None,
) -> None:
    """Create a token for AGENT_ID and print it (once: only its hash is kept).

    A previous token of the agent stops working.
    """
    from chrysalis_memory.hub.tokens import TokenStore

    try:
        token = TokenStore(tokens_file).create(agent_id, public_key=public_key)
    except ChrysalisError as error:
        raise _fail(error) from None
    print(token)
    err_console.print(
        f"token for agent {agent_id!r} (shown only now; {tokens_file} keeps just its hash). "
        "Give it to the agent as CHRYSALIS_HUB_TOKEN.",
        highlight=False,
    )


@token_app.command()
def revoke(
    agent_id: Annotated[str, typer.Argument(help="The agent whose token to revoke.")],
    tokens_file: TokensFileOption = DEFAULT_TOKENS_FILE,
) -> None:
    """Revoke AGENT_ID's token: the hub refuses it from now on (no restart needed)."""
    from chrysalis_memory.hub.tokens import TokenStore

    try:
        TokenStore(tokens_file).revoke(agent_id)
    except ChrysalisError as error:
        raise _fail(error) from None
    err_console.print(f"revoked the token of agent {agent_id!r}", highlight=False)


@token_app.command("list")
def list_tokens(
    tokens_file: TokensFileOption = DEFAULT_TOKENS_FILE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the agents that have a token, with their bound signing keys."""
    from chrysalis_memory.hub.tokens import TokenStore

    try:
        records = TokenStore(tokens_file).agents()
    except ChrysalisError as error:
        raise _fail(error) from None
    if as_json:
        print(
            json.dumps(
                {"tokens_file": str(tokens_file), "agents": [r.to_json() for r in records]},
                indent=2,
            )
        )
        return
    if not records:
        err_console.print(
            f"no agent tokens in {tokens_file} yet: create one with "
            f"`chrysalis token create AGENT_ID --tokens-file {tokens_file}`",
            highlight=False,
        )
        return
    table = Table(title=f"Agent tokens in {tokens_file}")
    table.add_column("agent", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=7)  # at 80 columns it vanished
    table.add_column("public key", overflow="fold")  # on two lines, rather than cut short
    for r in records:
        created = datetime.fromtimestamp(r.created_ms / 1000, tz=timezone.utc)
        table.add_row(
            r.agent_id,
            created.strftime("%Y-%m-%d %H:%M:%S"),
            "[red]revoked[/]" if r.revoked else "[green]active[/]",
            r.public_key or "(bound at first connection)",
        )
    console.print(table)
