"""Configuration: agents (spec §3.2.1), gossip (§3.2.2) and the hub (§3.2.3).

Every field can come from the environment with :meth:`from_env`:
``CHRYSALIS_<FIELD>`` (``CHRYSALIS_AGENT_ID``, ``CHRYSALIS_DATA_DIR``, ...).
The spec's Fireproof names (``fireproof_db_path``, ``FIREPROOF_DB_PATH``) are
accepted as aliases: in Chrysalis the "Fireproof" store is our own SQLite
Merkle-CRDT op log.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from chrysalis_memory import validation as check
from chrysalis_memory.errors import ConfigError
from chrysalis_memory.model.ops import AGENT_ID_PATTERN

Durability = Literal["normal", "full"]
EmbedderChoice = Literal["auto", "hashing", "ollama"]

C = TypeVar("C", bound="_EnvConfig")


class _EnvConfig(BaseModel):
    """A config model that can also be read from ``CHRYSALIS_*`` variables."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    env_prefix: ClassVar[str] = "CHRYSALIS_"
    env_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    """Extra variable names per field (first one set wins, after the prefixed name)."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(type(self).__name__, exc) from None

    @classmethod
    def env_names(cls, field: str) -> tuple[str, ...]:
        return (cls.env_prefix + field.upper(), *cls.env_aliases.get(field, ()))

    @classmethod
    def from_env(cls: type[C], environ: Mapping[str, str] | None = None, **overrides: Any) -> C:
        """Build from environment variables; keyword arguments take precedence."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, _EnvConfig):
                continue  # nested configs have their own from_env
            for variable in cls.env_names(name):
                if variable in env:
                    values[name] = env[variable]
                    break
        values.update(overrides)
        return cls.build(**values)

    @classmethod
    def build(cls: type[C], **values: Any) -> C:
        """Validate, translating pydantic's errors into a :class:`ConfigError`."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(cls.__name__, exc) from None


def _config_error(model: str, exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
    )
    return ConfigError(f"invalid {model}: {problems}")


_AGENT_ID: Final = re.compile(AGENT_ID_PATTERN)
_PUBLIC_KEY: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")


def is_public_key(key: object) -> bool:
    """Whether ``key`` is an ed25519 public key as ops carry it: 32 bytes in
    unpadded base64url, canonically encoded (so that equal keys are equal strings)."""
    if not isinstance(key, str) or not _PUBLIC_KEY.match(key):
        return False
    raw = base64.urlsafe_b64decode(key + "=")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == key


MAX_CLOCK_SKEW_S: Final = 600.0
"""How far ahead of the receiver's clock an op may be stamped (hub and gossip)."""


class GossipConfig(_EnvConfig):
    """Peer-to-peer dissemination (spec §3.2.2)."""

    env_prefix: ClassVar[str] = "CHRYSALIS_GOSSIP_"

    enabled: bool = Field(
        default=False,
        description="Listen for peers and exchange shared memories with them directly "
        "(docs/gossip.md); peers come from seeds and, with hub_url and hub_token set, from "
        "the hub. Only members take part: set members, members_file, or hub_url and "
        "hub_token, or open() refuses to start gossip.",
    )
    members: dict[str, str] = Field(
        default_factory=dict,
        description="The agents admitted to gossip, {agent id: ed25519 public key} (base64url, "
        "as `chrysalis key AGENT_ID` prints it); in the environment `id=key,id=key` or a JSON "
        "object. A peer must prove it holds its member's key, and every gossiped op must be "
        "signed with its writer's member key. With hub_url and hub_token set, the hub's "
        "registered agents are members too.",
    )
    members_file: Path | None = Field(
        default=None,
        description="A JSON file {agent id: public key} of members (the output of `chrysalis "
        "key`), read at start and again whenever it changes.",
    )
    max_members: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Members admitted at most, all sources together (more are ignored, with "
        "a warning); also the size limit of the table of peers.",
    )
    max_inbound_connections: int = Field(
        default=256,
        ge=1,
        description="Websocket connections from peers held at once; more are refused (HTTP "
        "503) before any message is read. A member holds at most 4.",
    )
    handshake_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="A connection that has not proved its membership within this long is closed.",
    )
    send_queue_bytes: int = Field(
        default=16 << 20,
        ge=64 << 10,
        description="Bytes waiting to be sent to one peer, the frame being sent included; a "
        "peer that lets more pile up (it does not read) is dropped: its connection is closed "
        "and its queue freed.",
    )
    send_queue_total_bytes: int = Field(
        default=128 << 20,
        ge=64 << 10,
        description="Bytes waiting to be sent to all peers together; over it, the peer with "
        "the most waiting is dropped.",
    )
    want_answer_bytes: int = Field(
        default=4 << 20,
        ge=64 << 10,
        description="Bytes of ops read to answer one reconciliation request; what is left "
        "is asked for again at the next reconciliation.",
    )
    fanout: int = Field(default=3, ge=1, le=64, description="Peers pushed to per round.")
    interval_ms: int = Field(default=500, ge=10, description="Time between gossip rounds.")
    max_retries: int = Field(
        default=3,
        ge=0,
        description="Unused (kept for the spec): a lost push is never retried as such; each "
        "op is pushed for several rounds to random peers and anti-entropy repairs the rest.",
    )
    anti_entropy_enabled: bool = Field(
        default=True, description="Periodically reconcile with one random peer."
    )
    anti_entropy_interval_ms: int = Field(
        default=5000, ge=100, description="Time between anti-entropy reconciliations."
    )
    listen_host: str = Field(
        default="127.0.0.1",
        description="Interface to listen on; peers are told ws://LISTEN_HOST:PORT, so it must "
        "be an address they can reach (not 0.0.0.0).",
    )
    listen_port: int = Field(
        default=0, ge=0, le=65535, description="0 picks a free port (AgentMemory.gossip_url)."
    )
    seeds: list[str] = Field(
        default_factory=list,
        description="ws:// URLs of peers to introduce this agent to (comma-separated in env); "
        "one reachable peer is enough.",
    )

    @field_validator("seeds", mode="before")
    @classmethod
    def _split_seeds(cls, value: object) -> object:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("members", mode="before")
    @classmethod
    def _parse_members(cls, value: object) -> object:
        """``id=key,id=key`` or a JSON object, as the environment gives them."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError as error:
                raise ValueError(f"members is not a JSON object: {error}") from None
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            agent, sep, key = item.partition("=")
            if not sep:
                raise ValueError(f"members: expected AGENT_ID=PUBLIC_KEY, got {item[:80]!r}")
            pairs[agent.strip()] = key.strip()
        return pairs

    @field_validator("members")
    @classmethod
    def _check_members(cls, value: dict[str, str]) -> dict[str, str]:
        for agent, key in value.items():
            if not _AGENT_ID.match(agent):
                raise ValueError(f"members: {agent[:80]!r} is not an agent id")
            if not is_public_key(key):
                raise ValueError(
                    f"members: the key of {agent!r} is not an ed25519 public key in base64url "
                    "(43 characters, as `chrysalis key AGENT_ID` prints it)"
                )
        return value

    def rounds_to_reach(self, n_instances: int) -> int:
        """Rounds for push gossip to reach ``n_instances``: ceil(log_fanout N)."""
        if n_instances <= 1:
            return 0
        fanout = max(self.fanout, 2)
        return math.ceil(math.log(n_instances) / math.log(fanout))


class HubConfig(_EnvConfig):
    """The central sync hub (spec §3.2.3). Spec camelCase names are accepted."""

    env_prefix: ClassVar[str] = "CHRYSALIS_HUB_"
    env_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "ollama_host": ("OLLAMA_HOST", "OLLAMA_BASE_URL"),
    }
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )

    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    websocket_port: int = Field(default=4444, ge=0, le=65535, description="Agents connect here.")
    http_port: int = Field(default=8082, ge=0, le=65535, description="/health and /metrics.")
    data_dir: Path = Field(default=Path("./data/hub"), description="The hub's own store.")
    collective_db_path: Path | None = Field(
        default=None, description="Defaults to DATA_DIR/collective.db."
    )
    tokens_file: Path | None = Field(
        default=None, description="Hashed agent tokens; defaults to DATA_DIR/tokens.json."
    )
    vector_index_type: Literal["hnsw", "flat"] = Field(
        default="hnsw", description="Collective vector index."
    )
    vector_dimensions: int = Field(default=768, ge=1, description="768 for nomic-embed-text.")
    max_connections_per_agent: int = Field(
        default=2, ge=1, description="Simultaneous connections one agent may hold."
    )
    max_connections: int = Field(default=1000, ge=1, description="Connections in total.")
    sync_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="Ops per message the hub sends."
    )
    max_message_bytes: int = Field(
        default=4 << 20,
        ge=2 << 20,
        description="Larger messages are refused with an error (at least 2 MiB: one op may "
        "be 1 MiB).",
    )
    rate_limit_ops_per_s: float = Field(
        default=20_000, gt=0, description="Ops one agent may push per second, on average."
    )
    rate_limit_burst_ops: int = Field(
        default=40_000, ge=1, description="Ops one agent may push at once above its rate."
    )
    max_clock_skew_s: float = Field(
        default=MAX_CLOCK_SKEW_S,
        gt=0,
        description="Ops stamped further than this ahead of the hub's clock are refused "
        "(clock_skew): one agent with a clock in the future would win every "
        "last-writer-wins field for as long as its lead lasts.",
    )
    send_queue_frames: int = Field(
        default=1024,
        ge=1,
        description="Frames queued for one agent; a slower consumer is disconnected (it "
        "catches up by pulling when it reconnects). Memory is bounded by send_queue_bytes.",
    )
    send_queue_bytes: int = Field(
        default=16 << 20,
        ge=1 << 20,
        description="Bytes queued for one agent, the frame being written included (an empty "
        "queue always takes one frame); an agent whose queue would pass it reads too slowly "
        "and is disconnected (it catches up by pulling when it reconnects).",
    )
    send_queue_total_bytes: int = Field(
        default=32 << 20,
        ge=4 << 20,
        description="Bytes queued for all agents together (a frame relayed to many counted "
        "once, each copy being written counted); at the limit the agent holding the most is "
        "disconnected. See docs/hub.md, Memory.",
    )
    receive_total_bytes: int = Field(
        default=16 << 20,
        ge=4 << 20,
        description="Bytes of what agents sent that the hub holds, in all; past it, reading "
        "pauses on every connection but one until the hub has handled a quarter of it (the "
        "rest waits in the network). See docs/hub.md, Memory.",
    )
    page_workers: int = Field(
        default=2,
        ge=1,
        description="Pull answers (pages of up to max_message_bytes of ops) the hub reads "
        "from its log at once; other pulls wait their turn.",
    )
    ping_interval_s: float = Field(
        default=20.0, gt=0, description="Keepalive ping every this many seconds."
    )
    ping_timeout_s: float = Field(
        default=20.0, gt=0, description="A connection whose pong is this late is closed."
    )
    max_log_bytes_per_agent: int = Field(
        default=1 << 30,
        ge=0,
        description="Bytes of ops one agent may have in the hub's log (1 GiB); further ops "
        "of that agent are refused with quota_exceeded (its agent keeps them and retries at "
        "later sessions). 0: no quota.",
    )
    max_search_k: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="Most hits a remote search is answered with (the protocol allows k up to "
        "1000; a larger k gets this many). The work and memory of a search grow with k.",
    )
    search_workers: int = Field(
        default=2,
        ge=1,
        description="Remote searches the hub runs at once, in all. Pushes and pulls never wait "
        "for them: sync keeps its priority over search.",
    )
    max_queued_searches: int = Field(
        default=16,
        ge=0,
        description="Remote searches that may wait for a search worker, in all; one more is "
        "refused at once with rate_limited (the hub is busy).",
    )
    max_searches_per_agent: int = Field(
        default=2,
        ge=1,
        description="Remote searches one agent may have running or waiting; one more is "
        "refused at once with rate_limited.",
    )
    max_search_answer_bytes: int = Field(
        default=64 << 10,
        ge=4 << 10,
        description="Largest search_result frame; the lowest-ranked hits that do not fit are "
        "left out.",
    )
    embedder: EmbedderChoice = Field(
        default="auto",
        description="Embeds remote search queries and memories for the collective index; "
        "use the agents' embedder so that their embeddings are reused.",
    )
    embedding_model: str = Field(default="nomic-embed-text", description="Ollama model name.")
    ollama_host: str | None = Field(
        default=None, description="Ollama's address (default: OLLAMA_HOST, else localhost)."
    )
    conflict_resolution: Literal["crdt"] = Field(
        default="crdt", description="Always CRDT merge: there is nothing to configure."
    )
    sharding_enabled: bool = Field(default=False, description="Reserved: one shard today.")
    shard_count: int = Field(default=1, ge=1, description="Reserved: one shard today.")

    @property
    def db_path(self) -> Path:
        return self.collective_db_path or self.data_dir / "collective.db"

    @property
    def tokens_path(self) -> Path:
        return self.tokens_file or self.data_dir / "tokens.json"


class AgentMemoryConfig(_EnvConfig):
    """One agent's memory: its store, its sync and its embeddings (spec §3.2.1)."""

    env_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "store_enabled": ("CHRYSALIS_FIREPROOF_ENABLED", "FIREPROOF_ENABLED"),
        "db_path": ("CHRYSALIS_FIREPROOF_DB_PATH", "FIREPROOF_DB_PATH"),
        "hub_url": ("FIREPROOF_SYNC_GATEWAY",),
        "promotion_enabled": ("FIREPROOF_PROMOTION_ENABLED",),
        "promotion_threshold": ("FIREPROOF_PROMOTION_THRESHOLD",),
        "local_vector_cache": ("FIREPROOF_LOCAL_VECTORS",),
        "ollama_host": ("OLLAMA_HOST", "OLLAMA_BASE_URL"),
        "embedding_model": ("OLLAMA_EMBEDDING_MODEL",),
    }

    # identity
    agent_id: str = Field(
        default="local-agent",
        json_schema_extra={"pattern": AGENT_ID_PATTERN},  # checked by _check_agent_id
        description="This agent's id: letters, digits and . _ : @ -, at most 128 characters.",
    )
    agent_name: str | None = Field(default=None, description="Display name; defaults to agent_id.")

    # storage
    data_dir: Path = Field(default=Path("./data"), description="Root of all local data.")
    store_enabled: bool = Field(
        default=True,
        validation_alias=AliasChoices("store_enabled", "fireproof_enabled"),
        description="Persist to disk; False keeps everything in memory (tests, scratch agents).",
    )
    db_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("db_path", "fireproof_db_path"),
        description="SQLite op log; defaults to DATA_DIR/AGENT_ID/memory.db.",
    )
    durability: Durability = Field(
        default="normal",
        description=(
            "normal: a write survives a crash of the process (kill -9); full: it also "
            "survives power loss, at the cost of an fsync per write."
        ),
    )

    # sync
    sync_enabled: bool = Field(default=True, description="Sync with the hub when hub_url is set.")
    sync_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between safety-net sync rounds (push pending, pull from the "
        "cursor); writes are pushed and updates arrive as they happen anyway.",
    )
    sync_batch_size: int = Field(default=100, ge=1, le=10_000, description="Ops per push message.")
    sync_connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds an explicit sync_now() goes on retrying a hub that refuses the "
        "connection (nothing listens at hub_url, or it is not the hub's websocket port) before "
        "raising HubUnreachableError. Background sync never gives up: it retries with backoff.",
    )
    hub_url: str | None = Field(
        default=None,
        description="ws://host:port of the sync hub; with it set, a background worker pushes "
        "this agent's shared memories and pulls everyone else's.",
    )
    hub_token: SecretStr | None = Field(default=None, description="From `chrysalis token create`.")

    # promotion (short-term -> long-term)
    promotion_enabled: bool = Field(
        default=True,
        description="Keep memories below promotion_threshold on this agent (short-term).",
    )
    promotion_threshold: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="Importance at which a memory becomes long-term and is shared.",
    )

    # vector caching and embeddings
    local_vector_cache: bool = Field(
        default=True, description="Keep a local Chroma vector cache for recall."
    )
    vector_cache_threshold_bytes: int = Field(
        default=10240,
        ge=0,
        description="Reserved: vectors larger than this would stay with the hub only (today "
        "every replica keeps the vectors of the memories it holds).",
    )
    embedder: EmbedderChoice = Field(
        default="auto", description="auto: Ollama when it answers, else the offline embedder."
    )
    embedding_model: str = Field(default="nomic-embed-text", description="Ollama model name.")
    ollama_host: str | None = Field(
        default=None, description="Ollama URL; defaults to http://127.0.0.1:11434."
    )

    gossip: GossipConfig = Field(
        default_factory=GossipConfig, description="Peer-to-peer settings (below)."
    )

    @field_validator("agent_id")
    @classmethod
    def _check_agent_id(cls, value: str) -> str:
        problem = check.agent_id_problem(value)
        if problem is not None:  # said in words, not as the pattern
            raise PydanticCustomError("agent_id", "{problem}", {"problem": problem})
        return value

    @field_validator("hub_url")
    @classmethod
    def _check_hub_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("ws://", "wss://")):
            raise ValueError(f"hub_url must start with ws:// or wss://, got {value!r}")
        return value

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> AgentMemoryConfig:
        if "gossip" not in overrides:
            overrides["gossip"] = GossipConfig.from_env(environ)
        return super().from_env(environ, **overrides)

    @property
    def display_name(self) -> str:
        return self.agent_name or self.agent_id

    @property
    def agent_dir(self) -> Path:
        """This agent's own directory: op log, keys and vector cache."""
        return self.data_dir / self.agent_id

    @property
    def resolved_db_path(self) -> Path | None:
        """Where the op log lives, or None when the store is in memory."""
        if not self.store_enabled:
            return None
        return self.db_path or self.agent_dir / "memory.db"
