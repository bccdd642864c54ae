"""``chrysalis hub``: run the sync hub until interrupted (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from chrysalis_memory.errors import ChrysalisError

if TYPE_CHECKING:
    from chrysalis_memory.config import HubConfig

console = Console(stderr=True)


def hub(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to bind (0.0.0.0: every interface). Default: 127.0.0.1."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Websocket port agents connect to. Default: 4444.")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Port of /health and /metrics. Default: 8082.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="The hub's own store. Default: ./data/hub.")
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="Agent tokens (`chrysalis token create`). Default: DATA_DIR/tokens.json."
        ),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(help="auto | hashing | ollama: embeds remote searches. Default: auto."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every connection.")] = False,
) -> None:
    """Run the sync hub that agents push to, pull from and search.

    Agents push and pull ops over websockets, search the collective index, and
    receive each other's writes live.

    Settings not given as options come from CHRYSALIS_HUB_* environment
    variables (see docs/configuration.md), then the defaults.
    """
    from chrysalis_memory.config import HubConfig

    overrides: dict[str, Any] = {
        "host": host,
        "websocket_port": port,
        "http_port": http_port,
        "data_dir": data_dir,
        "tokens_file": tokens_file,
        "embedder": embedder,
    }
    try:
        config = HubConfig.from_env(**{k: v for k, v in overrides.items() if v is not None})
        asyncio.run(_serve(config, verbose))
    except (ChrysalisError, OSError) as error:
        # The hub says what stopped it (a setting, a port in use, an unusable data
        # directory): an OSError here is none of those, so it is shown as it is.
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


async def _serve(config: HubConfig, verbose: bool) -> None:
    from chrysalis_memory.hub.server import Hub

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.INFO if verbose else logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Hub(config) as running:
        if not running.tokens.agents():
            console.print(
                f"[yellow]no agent tokens in {config.tokens_path} yet:[/yellow] create one "
                f"with `chrysalis token create AGENT_ID --tokens-file {config.tokens_path}`"
            )
        # Scripts and tests wait for this line: print it only once both ports listen.
        print(
            f"chrysalis hub {running.hub_id} listening on {running.url} "
            f"(http://{config.host}:{running.http_port}/health, /metrics), "
            f"{running.head} ops, data in {config.data_dir}",
            flush=True,
        )
        await stop.wait()
    console.print("hub stopped")
