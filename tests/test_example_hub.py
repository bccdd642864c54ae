"""examples/sync_hub.py and examples/verify_collective.py, run as a user would run them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chrysalis_memory import AgentMemory, HubConfig
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.recall.embedders import HashingEmbedder
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FACT = "The capital of France is Paris."
RUNNING = re.compile(r"running on ws://127\.0\.0\.1:(\d+) \(health: (http://\S+/health)\)")


def environment(**extra: str) -> dict[str, str]:
    """No CHRYSALIS_* or Ollama setting of the developer's leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRYSALIS_", "OLLAMA_"))}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env=environment(),
        cwd=cwd,
    )


# Deadlines for a loaded machine: a pass must not depend on its speed (2 s is the default).
PATIENT = ("--deadline", "60")


def test_verify_collective_starts_its_own_hub(tmp_path: Path) -> None:
    result = run_example("verify_collective.py", *PATIENT, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "agent-b recalled it" in result.stdout
    assert "Collective memory working: True" in result.stdout
    assert result.stdout.rstrip().endswith("✓ Verification complete!")
    assert list(tmp_path.iterdir()) == []  # everything was in a temporary directory


async def run_example_async(name: str, *args: str, cwd: Path, **env: str) -> tuple[int, str]:
    """Exit code and stdout + stderr, run while this event loop goes on serving (a hub)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment(**env),
        cwd=cwd,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8")


async def test_verify_collective_counts_only_the_memory_it_just_learned(tmp_path: Path) -> None:
    config = HubConfig(websocket_port=0, http_port=0, data_dir=tmp_path / "hub")
    agents = tmp_path / "agents"
    async with Hub(config, embedder=HashingEmbedder()) as hub:
        tokens = {agent: hub.tokens.create(agent) for agent in ("agent-a", "agent-b")}
        args = ["--hub-url", hub.url, "--token-a", tokens["agent-a"]]
        args += ["--token-b", tokens["agent-b"], "--data-dir", str(agents)]

        code, out = await run_example_async("verify_collective.py", *args, *PATIENT, cwd=tmp_path)
        assert code == 0, out
        assert "Collective memory working: True" in out
        learned = re.search(r"agent-a learned: .* \(id=(\S+)\)", out)
        assert learned, out

        # B already knows the fact (an earlier run, its own data: anything). This
        # time A's memory never reaches B: below the promotion threshold it stays on A.
        async with AgentMemory(agent_id="agent-b", data_dir=agents, embedder="hashing") as b:
            # The first run forgot its memory on both agents: no copies pile up.
            assert await b.get(learned[1]) is None
            assert [d.content for d in await b.list(include_forgotten=True)] == [FACT]
            await b.learn(FACT, importance=0.9)
        code, out = await run_example_async(
            "verify_collective.py",
            *args,
            "--deadline",
            "1",  # it fails however long B waits
            cwd=tmp_path,
            CHRYSALIS_PROMOTION_THRESHOLD="1.0",
        )
        assert code == 1, out
        assert "agent-b did not recall it within 1 s" in out
        assert "Collective memory working: False" in out
        assert "Memory did not propagate to agent B!" in out


def test_sync_hub_on_a_busy_port_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--port", str(port), "--http-port", "0", "--data-dir", str(tmp_path / "hub")]
        result = run_example("sync_hub.py", *args, cwd=tmp_path)
    assert result.returncode == 1
    err = " ".join(result.stderr.split())
    assert f"error: the hub cannot listen on 127.0.0.1:{port} (for agents)" in err
    assert "Is another hub running?" in err and "--port / --http-port" in err
    assert "Traceback" not in err and "Errno" not in err


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body: dict[str, Any] = json.loads(response.read())
    return body


def start_sync_hub(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "sync_hub.py"),
            "--port",
            "0",
            "--http-port",
            "0",
            "--create-token",
            "agent-a",
            "--create-token",
            "agent-b",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        # Settings from the environment, as in a container; the options win over them.
        env=environment(
            CHRYSALIS_HUB_DATA_DIR=str(tmp_path / "hub"),
            CHRYSALIS_HUB_EMBEDDER="hashing",
            CHRYSALIS_HUB_WEBSOCKET_PORT="1",  # overridden by --port 0
        ),
        cwd=tmp_path,
    )


async def test_sync_hub_serves_until_sigterm(tmp_path: Path) -> None:
    hub = start_sync_hub(tmp_path)
    lines: list[str] = []

    def pump() -> None:
        assert hub.stdout is not None
        lines.extend(hub.stdout)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:

        async def listening() -> bool:
            assert hub.poll() is None, hub.stderr.read() if hub.stderr else ""
            return any(RUNNING.search(line) for line in lines)

        await wait_until(listening, timeout=30, what="the hub's 'running on' line")
        match = next(m for line in lines if (m := RUNNING.search(line)))
        port, health_url = int(match[1]), match[2]
        tokens = dict(re.findall(r"token for (\S+): (chry_\S+)", "".join(lines)))
        assert set(tokens) == {"agent-a", "agent-b"}
        assert (tmp_path / "hub" / "collective.db").exists()

        health = get_json(health_url)
        assert health["status"] == "ok" and health["ops"] == 0

        # The other example checks this hub, with the tokens it printed.
        verified = run_example(
            "verify_collective.py",
            "--hub-url",
            f"ws://127.0.0.1:{port}",
            "--token-a",
            tokens["agent-a"],
            "--token-b",
            tokens["agent-b"],
            "--data-dir",
            str(tmp_path / "agents"),
            *PATIENT,
            cwd=tmp_path,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "Collective memory working: True" in verified.stdout
        health = get_json(health_url)
        assert health["ops"] >= 1 and health["agents"] == 2

        hub.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return hub.poll() is not None

        await wait_until(exited, timeout=20, what="the hub exiting after SIGTERM")
        assert hub.returncode == 0, hub.stderr.read() if hub.stderr else ""
        reader.join(timeout=10)
        assert lines[-1].strip() == "hub stopped"
    finally:
        if hub.poll() is None:
            hub.kill()
        hub.wait(timeout=20)
        reader.join(timeout=10)
        for pipe in (hub.stdout, hub.stderr):
            if pipe is not None:
                pipe.close()
