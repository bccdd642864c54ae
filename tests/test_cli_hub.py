"""``chrysalis hub`` that cannot start says why: a busy port is a port problem, a
--data-dir it cannot use is a data directory problem. Run as a real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

CHRYSALIS = [sys.executable, "-m", "chrysalis_memory.cli"]


def run_hub(*args: str) -> tuple[int, str]:
    """Exit code and stderr, its lines joined (rich wraps long messages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRYSALIS_", "OLLAMA_"))}
    env["CHRYSALIS_HUB_EMBEDDER"] = "hashing"
    env["COLUMNS"] = "1000"  # no path folded across lines
    result = subprocess.run(
        [*CHRYSALIS, "hub", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, " ".join(result.stderr.split())


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port that another program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("option", ["--port", "--http-port"])
def test_a_busy_port_names_it_and_the_options(tmp_path: Path, busy_port: int, option: str) -> None:
    other = "--http-port" if option == "--port" else "--port"
    code, err = run_hub(option, str(busy_port), other, "0", "--data-dir", str(tmp_path / "hub"))
    assert code == 1
    assert f"error: the hub cannot listen on 127.0.0.1:{busy_port}" in err
    assert "Is another hub running?" in err and "--port / --http-port" in err


@pytest.mark.parametrize("under", [False, True], ids=["a file", "under a file"])
def test_a_data_dir_that_is_a_file_says_so_not_ports(tmp_path: Path, under: bool) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    data_dir = a_file / "hub" if under else a_file
    code, err = run_hub("--data-dir", str(data_dir), "--port", "0", "--http-port", "0")
    assert code == 1
    assert f"error: the hub cannot use {data_dir} as its data directory" in err
    assert f"{a_file} is a file, not a directory" in err and "--data-dir" in err
    assert "listen" not in err and "port" not in err
