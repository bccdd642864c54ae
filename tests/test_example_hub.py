"""examples/sync_hub.py and examples/verify_collective.py, run as a user would run them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
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


def test_verify_collective_starts_its_own_hub(tmp_path: Path) -> None:
    result = run_example("verify_collective.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "agent-b recalled it" in result.stdout
    assert "Collective memory working: True" in result.stdout
    assert result.stdout.rstrip().endswith("✓ Verification complete!")
    assert list(tmp_path.iterdir()) == []  # everything was in a temporary directory


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
