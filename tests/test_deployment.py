"""The Docker deployment (Dockerfile, docker-compose.yml) agrees with the code it runs.

No Docker engine runs in CI, so nothing here builds or starts a container.
``docker compose config`` (or the standalone ``docker-compose config``)
validates the compose file against the Compose schema when either is
installed; every other check needs no Docker at all: the hub's arguments are
real ``chrysalis hub`` settings, the healthcheck asks the port the hub serves
HTTP on (and fails when /health does), the agents are given only variables
that ``AgentMemoryConfig.from_env`` reads, and ports, volumes and paths line up.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from typer.main import get_command

from chrysalis_memory.cli.app import app
from chrysalis_memory.config import AgentMemoryConfig, GossipConfig, HubConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
AGENT_SCRIPT = "examples/agent_with_memory.py"

HUB = "sync-hub"
AGENTS = ("agent-1", "agent-2")
OLLAMA = "ollama"
OLLAMA_PORT = 11434  # Ollama's own default: the ollama/ollama image listens there

# `chrysalis hub` options whose name is not the HubConfig field spelled --like-this.
HUB_FLAG_FIELDS = {"--port": "websocket_port"}


# --- reading the files ---------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


def resolve(value: object, variables: Mapping[str, str] | None = None) -> str:
    """``value`` as compose interpolates it with these ``variables`` (default: none set)."""

    def substitute(match: re.Match[str]) -> str:
        name, rest = match.groups()
        assert rest.startswith(":-"), (
            f"${{{name}{rest}}} has no default (:-): `docker compose config` would fail "
            "without a .env file"
        )
        return (variables or {}).get(name) or rest[2:]

    return INTERPOLATION.sub(substitute, str(value))


@functools.cache
def dockerfile() -> tuple[tuple[str, str], ...]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return tuple(instructions)


def instructions(keyword: str) -> list[str]:
    return [arguments for kw, arguments in dockerfile() if kw == keyword]


def last_instruction(keyword: str) -> str:
    found = instructions(keyword)
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), arguments
    return parsed


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in instructions("ENV"):
        for pair in arguments.split():
            key, sep, value = pair.partition("=")
            assert sep, f"write ENV as KEY=value: {arguments}"
            env[key] = value
    return env


# --- what the files say --------------------------------------------------------------


def hub_config(argv: list[str]) -> HubConfig:
    """The hub settings a ``chrysalis hub ...`` command line asks for.

    Every option must name a :class:`HubConfig` setting and give it a valid value.
    """
    assert argv[:2] == ["chrysalis", "hub"], f"not a `chrysalis hub` command: {argv}"
    values: dict[str, str] = {}
    options = iter(argv[2:])
    for flag in options:
        assert flag.startswith("--"), f"unexpected argument {flag!r} in {argv}"
        field = HUB_FLAG_FIELDS.get(flag, flag[2:].replace("-", "_"))
        assert field in HubConfig.model_fields, f"{flag} is no HubConfig setting"
        assert field not in values, f"{flag} given twice"
        value = next(options, None)
        assert value is not None, f"{flag} has no value"
        values[field] = value
    return HubConfig.build(**values)


def compose_hub_command() -> list[str]:
    command = service(HUB)["command"]
    assert isinstance(command, list), "give the hub's command as a list (exec form)"
    return [str(a) for a in command]


def dockerfile_hub_command() -> list[str]:
    return exec_form(last_instruction("CMD"))


def healthcheck_code(test: list[str]) -> str:
    assert test[:3] == ["CMD", "python", "-c"], f"healthcheck is not a python one-liner: {test}"
    assert len(test) == 4
    return test[3]


def compose_healthcheck() -> str:
    return healthcheck_code(service(HUB)["healthcheck"]["test"])


def dockerfile_healthcheck() -> str:
    _, cmd, command = last_instruction("HEALTHCHECK").partition(" CMD ")
    assert cmd, "the HEALTHCHECK has no CMD"
    return healthcheck_code(["CMD", *exec_form(command)])


HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/health\b")


def health_port(code: str) -> int:
    urls = HEALTH_URL.findall(code)
    assert len(urls) == 1, f"the healthcheck should ask http://127.0.0.1:PORT/health: {code}"
    return int(urls[0])


def mounts(name: str) -> dict[str, str]:
    """A service's volumes: container path -> named volume (short syntax)."""
    found: dict[str, str] = {}
    for entry in service(name).get("volumes", []):
        source, target, *_ = str(entry).split(":")
        found[target] = source
    return found


def volume_of(name: str, path: str | PurePosixPath | Path) -> str:
    """The named volume of service ``name`` that holds ``path``."""
    for target, source in mounts(name).items():
        if PurePosixPath(path).is_relative_to(target):
            return source
    raise AssertionError(f"{path} of {name} is on no volume: it would be lost with the container")


def container_ports(name: str) -> set[int]:
    """The ports a service publishes, each on the same port of the host (as the docs say)."""
    published: set[int] = set()
    for entry in service(name).get("ports", []):
        host, sep, container = str(entry).rpartition(":")
        assert sep and host, f"publish {entry!r} as HOST:CONTAINER"
        assert host.rpartition(":")[2] == container, f"{entry!r}: the docs use the same port"
        published.add(int(container))
    return published


def environment(name: str) -> dict[str, str]:
    found = service(name)["environment"]
    assert isinstance(found, dict), f"give the environment of {name} as a mapping"
    return {str(k): str(v) for k, v in found.items()}


def resolved_environment(name: str) -> dict[str, str]:
    return {k: resolve(v) for k, v in environment(name).items()}


def env_names(*models: type[AgentMemoryConfig | GossipConfig | HubConfig]) -> set[str]:
    """Every variable that ``from_env`` of these models reads."""
    return {
        name for model in models for field in model.model_fields for name in model.env_names(field)
    }


# --- compose with the real tool, when there is one ------------------------------------


@functools.cache
def compose_tool() -> tuple[str, ...] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return (docker, "compose")
    standalone = shutil.which("docker-compose")
    return (standalone,) if standalone is not None else None


def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    tool = compose_tool()
    if tool is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed: the compose file "
            "is checked only by the tests below"
        )
    empty_env_file = tmp_path / "empty.env"  # as on a fresh clone: no .env, no tokens
    empty_env_file.write_text("", encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "COMPOSE_"))}
    result = subprocess.run(
        [
            *tool,
            "--project-directory",
            str(ROOT),
            "--file",
            str(COMPOSE),
            "--env-file",
            str(empty_env_file),
            "--profile",
            OLLAMA,
            "config",
        ],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {HUB, *AGENTS, OLLAMA}
    for agent in AGENTS:
        assert resolved["services"][agent]["environment"]["CHRYSALIS_HUB_TOKEN"] in ("", None)


# --- compose ----------------------------------------------------------------------------


def test_compose_has_the_services_of_the_spec_and_no_version_key() -> None:
    assert "version" not in compose(), "the top-level `version` key is obsolete"
    assert set(compose()["services"]) == {HUB, *AGENTS, OLLAMA}


def test_ollama_is_optional() -> None:
    assert service(OLLAMA)["profiles"] == [OLLAMA]
    for name in (HUB, *AGENTS):
        assert "profiles" not in service(name), f"{name} must start with a plain `up`"
        assert OLLAMA not in service(name).get("depends_on", {}), (
            f"{name} would need the ollama profile to start"
        )
    assert volume_of(OLLAMA, "/root/.ollama/models") in compose()["volumes"]


def test_hub_command_is_the_images_default_and_valid() -> None:
    assert compose_hub_command() == dockerfile_hub_command()
    hub = hub_config(compose_hub_command())
    assert hub.host == "0.0.0.0", "the hub must listen beyond the container's loopback"
    assert hub.websocket_port != hub.http_port


def test_hub_command_parses_with_the_cli() -> None:
    command = get_command(app).commands.get("hub")  # type: ignore[attr-defined]
    if command is None:
        pytest.skip(
            "`chrysalis hub` is not a CLI command yet: its options were checked "
            "against HubConfig only"
        )
    hub = hub_config(compose_hub_command())
    context = command.make_context("hub", compose_hub_command()[2:])  # UsageError if wrong
    by_flag = {flag: param for param in command.params for flag in param.opts}
    for flag in compose_hub_command()[2::2]:
        field = HUB_FLAG_FIELDS.get(flag, flag[2:].replace("-", "_"))
        assert flag in by_flag, f"`chrysalis hub` has no option {flag}"
        assert str(context.params[str(by_flag[flag].name)]) == str(getattr(hub, field)), flag


def test_hub_ports_healthcheck_and_volume_line_up() -> None:
    hub = hub_config(compose_hub_command())
    assert container_ports(HUB) == {hub.websocket_port, hub.http_port}
    assert {int(p) for e in instructions("EXPOSE") for p in e.split()} == {
        hub.websocket_port,
        hub.http_port,
    }
    assert health_port(compose_healthcheck()) == hub.http_port
    assert health_port(dockerfile_healthcheck()) == hub.http_port
    assert compose_healthcheck() == dockerfile_healthcheck()

    store = volume_of(HUB, hub.data_dir)
    assert store in compose()["volumes"]
    assert hub.tokens_file is not None and volume_of(HUB, hub.tokens_file) == store
    # `docker compose run --rm sync-hub chrysalis token create ...` writes the hub's file.
    assert dockerfile_env()["CHRYSALIS_HUB_TOKENS_FILE"] == str(hub.tokens_file)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/health" else b"{}"
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def run_healthcheck(code: str, port: int) -> int:
    local = HEALTH_URL.sub(f"http://127.0.0.1:{port}/health", code)
    result = subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30)
    return result.returncode


def test_healthcheck_passes_only_on_a_healthy_answer(
    health_server: http.server.ThreadingHTTPServer,
) -> None:
    code = compose_healthcheck()
    assert run_healthcheck(code, health_server.server_address[1]) == 0
    _Health.status = 503
    try:
        assert run_healthcheck(code, health_server.server_address[1]) != 0
    finally:
        _Health.status = 200
    with socket.socket() as unused:  # nothing listens: the hub is down
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    assert run_healthcheck(code, closed_port) != 0


def test_agents_wait_for_a_healthy_hub() -> None:
    for agent in AGENTS:
        assert service(agent)["depends_on"] == {HUB: {"condition": "service_healthy"}}
        assert service(agent)["healthcheck"] == {"disable": True}, (
            f"{agent} would inherit the hub's healthcheck from the image"
        )


def test_agents_run_the_example_from_the_image() -> None:
    assert (ROOT / AGENT_SCRIPT).is_file()
    workdir = PurePosixPath(last_instruction("WORKDIR"))
    copied = {PurePosixPath(workdir, c.split()[-1]) for c in instructions("COPY")}
    assert workdir / "examples" in copied
    for agent in AGENTS:
        assert service(agent)["command"] == ["python", AGENT_SCRIPT]
        assert service(agent)["image"] == service(HUB)["image"]


def test_agents_get_only_settings_that_from_env_reads() -> None:
    known = env_names(AgentMemoryConfig, GossipConfig)
    for agent in AGENTS:
        unknown = set(environment(agent)) - known
        assert not unknown, f"{agent}: AgentMemoryConfig.from_env ignores {sorted(unknown)}"


def test_hub_gets_only_settings_that_from_env_reads_and_embeds_like_the_agents() -> None:
    unknown = set(environment(HUB)) - env_names(HubConfig)
    assert not unknown, f"HubConfig.from_env ignores {sorted(unknown)}"
    hub = HubConfig.from_env(resolved_environment(HUB))
    for agent in AGENTS:
        config = AgentMemoryConfig.from_env(resolved_environment(agent))
        assert (hub.embedder, hub.embedding_model, hub.ollama_host) == (
            config.embedder,
            config.embedding_model,
            config.ollama_host,
        ), f"the hub would not reuse the embeddings of {agent}"


def test_agents_reach_the_hub_and_keep_their_own_stores() -> None:
    hub = hub_config(compose_hub_command())
    ids, stores = set(), {volume_of(HUB, hub.data_dir)}
    for agent in AGENTS:
        config = AgentMemoryConfig.from_env(resolved_environment(agent))
        assert config.hub_url == f"ws://{HUB}:{hub.websocket_port}"
        assert config.embedder == "auto"
        assert config.ollama_host == f"http://{OLLAMA}:{OLLAMA_PORT}"
        # The token comes from .env, named after the agent as docs/deployment.md says.
        variable = config.agent_id.upper().replace("-", "_") + "_TOKEN"
        assert environment(agent)["CHRYSALIS_HUB_TOKEN"] == f"${{{variable}:-}}"
        ids.add(config.agent_id)
        store = volume_of(agent, config.agent_dir)
        assert store in compose()["volumes"]
        stores.add(store)
    assert len(ids) == len(AGENTS), "agents need distinct ids"
    assert len(stores) == len(AGENTS) + 1, "one process owns a data directory: one volume each"


# --- Dockerfile ---------------------------------------------------------------------------


def test_image_is_slim_python_and_runs_unprivileged() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    assert last_instruction("USER") not in ("root", "0", "0:0")
    assert any("pip install ." in run for run in instructions("RUN"))
    assert exec_form(last_instruction("VOLUME")) == ["/data"]
    assert dockerfile_env()["CHRYSALIS_DATA_DIR"] == "/data"
    for variable in ("CHRYSALIS_EMBEDDER", "CHRYSALIS_HUB_EMBEDDER"):
        assert dockerfile_env()[variable] == "hashing", "the image must stay offline"


def test_build_context_has_what_the_image_copies_and_no_local_state() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv*", "data", ".env"} <= ignored
    for copy in instructions("COPY"):
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
