"""What stops a hub from starting is a ChrysalisError that says which: a port it
cannot listen on, or a data directory it cannot use (never one mistaken for the other)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from chrysalis_memory.config import HubConfig
from chrysalis_memory.errors import ConfigError, StoreError
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.recall.embedders import HashingEmbedder


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port that another program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def hub(data_dir: Path, **ports: int) -> Hub:
    fields = {"websocket_port": 0, "http_port": 0, **ports}
    return Hub(HubConfig(data_dir=data_dir, **fields), embedder=HashingEmbedder())


@pytest.mark.parametrize(
    ("field", "purpose"), [("websocket_port", "for agents"), ("http_port", "/health")]
)
async def test_a_busy_port_says_which_and_what_to_do(
    tmp_path: Path, busy_port: int, field: str, purpose: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        await hub(tmp_path / "hub", **{field: busy_port}).start()
    message = str(raised.value)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in message
    assert purpose in message
    assert "another hub running?" in message and "--port / --http-port" in message
    assert "data directory" not in message
    # Nothing is left open: the data directory is free for the next hub.
    async with hub(tmp_path / "hub") as again:
        assert again.port != busy_port


@pytest.mark.parametrize("under", [False, True], ids=["a file", "under a file"])
async def test_a_data_dir_that_is_a_file_is_not_a_port_problem(tmp_path: Path, under: bool) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    data_dir = a_file / "hub" if under else a_file
    with pytest.raises(StoreError) as raised:
        await hub(data_dir).start()
    message = str(raised.value)
    assert f"cannot use {data_dir} as its data directory" in message
    assert f"{a_file} is a file, not a directory" in message
    assert "--data-dir" in message
    assert "listen" not in message and "port" not in message
    assert a_file.read_text() == "not a directory"
