"""examples/agent_with_memory.py, the agents of docker-compose.yml: offline with no hub,
and (without Docker) the compose stack's own commands sharing memories through a hub."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_deployment import (
    AGENTS,
    HEALTH_URL,
    compose_healthcheck,
    compose_hub_command,
    environment,
    resolve,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "agent_with_memory.py"
CONCISE = "'The user prefers concise explanations with code examples.'"


def run_agent(cwd: Path, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHRYSALIS_", "OLLAMA_"))}
    # Never probe a developer's Ollama: the output must not depend on the machine.
    clean["CHRYSALIS_EMBEDDER"] = "hashing"
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_learns_recalls_and_remembers_across_runs(tmp_path: Path) -> None:
    first = run_agent(tmp_path)  # no argument, no environment: ./data/agent
    assert "agent agent-001: data data/agent/agent-001, hub none (offline)" in first
    assert f"learned: {CONCISE}" in first
    assert "learned: \"Python asyncio requires 'await' for coroutine execution.\"" in first
    recalled = first.split("recall 'How should I explain concepts to the user?':\n", 1)[1]
    assert recalled.splitlines()[0].endswith(f"{CONCISE} (learned by agent-001)")
    assert "memories: 2 (0 from other agents)" in first
    assert not [line for line in first.splitlines() if line.startswith("sync")]
    assert (tmp_path / "data" / "agent" / "agent-001" / "memory.db").is_file()

    data_dir = tmp_path / "data" / "agent"
    second = run_agent(tmp_path / "elsewhere", str(data_dir))  # the same store, by argument
    assert f"agent agent-001: data {data_dir / 'agent-001'}, hub none (offline)" in second
    assert f"already known: {CONCISE}" in second
    assert "learned:" not in second
    assert "memories: 2 (0 from other agents)" in second


def test_configured_by_environment_as_in_compose(tmp_path: Path) -> None:
    out = run_agent(
        tmp_path, CHRYSALIS_AGENT_ID="agent-002", CHRYSALIS_DATA_DIR=str(tmp_path / "env-data")
    )
    assert f"agent agent-002: data {tmp_path / 'env-data' / 'agent-002'}" in out
    assert "learned: 'Deploys happen on Tuesdays after the standup.'" in out
    assert "memories: 2 (0 from other agents)" in out
    assert (tmp_path / "env-data" / "agent-002" / "memory.db").is_file()


LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+) \(http://127\.0\.0\.1:(\d+)/health")


def in_tmp(path: str, tmp_path: Path, volume: str) -> str:
    """A container path under /data, moved to this test's stand-in for the volume."""
    assert path.startswith("/data"), path
    return str(tmp_path / volume / path.removeprefix("/data").lstrip("/"))


@pytest.fixture
def compose_hub(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """The hub run with docker-compose.yml's command (``python -m chrysalis_memory.cli``
    for ``chrysalis``), on loopback and free ports, its volume a temporary directory."""
    argv = compose_hub_command()
    for flag, value in (("--host", "127.0.0.1"), ("--port", "0"), ("--http-port", "0")):
        argv[argv.index(flag) + 1] = value
    for flag in ("--data-dir", "--tokens-file"):
        argv[argv.index(flag) + 1] = in_tmp(argv[argv.index(flag) + 1], tmp_path, "hub-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRYSALIS_", "OLLAMA_"))}
    with subprocess.Popen(
        [sys.executable, "-m", "chrysalis_memory.cli", *argv[1:]],
        env={**env, "CHRYSALIS_HUB_EMBEDDER": "hashing"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as hub:
        try:
            yield (hub, *_listening(hub))
        finally:
            if hub.poll() is None:
                hub.kill()


def _listening(hub: subprocess.Popen[str]) -> tuple[int, int]:
    """The hub's websocket and HTTP ports, from the line it prints once it listens."""
    assert hub.stdout is not None and hub.stderr is not None
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as selector:
        selector.register(hub.stdout, selectors.EVENT_READ)
        line = ""
        while not (found := LISTENING.search(line)):
            ready = selector.select(timeout=max(0.0, deadline - time.monotonic()))
            assert ready, "the hub did not start within 60 s"
            line = hub.stdout.readline()
            assert line, f"the hub exited ({hub.wait()}): {hub.stderr.read()}"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.slow
def test_the_compose_stack_shares_memories_through_the_hub(
    tmp_path: Path, compose_hub: tuple[subprocess.Popen[str], int, int]
) -> None:
    hub, port, http_port = compose_hub
    # The healthcheck of docker-compose.yml, against the real hub.
    healthcheck = HEALTH_URL.sub(f"http://127.0.0.1:{http_port}/health", compose_healthcheck())
    assert subprocess.run([sys.executable, "-c", healthcheck], timeout=30).returncode == 0

    tokens_file = in_tmp("/data/hub/tokens.json", tmp_path, "hub-data")
    tokens = {}  # what docs/deployment.md puts in .env
    for agent in AGENTS:
        agent_id = environment(agent)["CHRYSALIS_AGENT_ID"]
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "chrysalis_memory.cli",
                "token",
                "create",
                agent_id,
                "--tokens-file",
                tokens_file,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        tokens[agent_id.upper().replace("-", "_") + "_TOKEN"] = created.stdout.strip()

    outputs = []
    for agent in AGENTS:
        env = {k: resolve(v, tokens) for k, v in environment(agent).items()}
        env["CHRYSALIS_HUB_URL"] = env["CHRYSALIS_HUB_URL"].replace(
            "sync-hub:4444", f"127.0.0.1:{port}"
        )
        env["CHRYSALIS_DATA_DIR"] = in_tmp(env["CHRYSALIS_DATA_DIR"], tmp_path, f"{agent}-data")
        env.pop("OLLAMA_HOST")  # Ollama is the optional profile: the offline embedder here
        env["CHRYSALIS_EMBEDDER"] = "hashing"
        outputs.append(run_agent(tmp_path, **env))

    for out in outputs:
        assert f"synced with ws://127.0.0.1:{port}: pushed" in out
    recalled = outputs[1].split("recall 'How should I explain concepts to the user?':\n", 1)[1]
    assert recalled.splitlines()[0].endswith(f"{CONCISE} (learned by agent-001)")
    assert "memories: 4 (2 from other agents)" in outputs[1]

    hub.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
    assert hub.wait(timeout=30) == 0
