"""Configuration: spec §3.2 fields, CHRYSALIS_* environment variables, clear errors."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from chrysalis_memory import AgentMemory, AgentMemoryConfig, GossipConfig, HubConfig
from chrysalis_memory.errors import ConfigError
from chrysalis_memory.model.ops import Signer

A_PEER = {"a-peer": Signer.generate().public_key}
"""Gossip admits only members: one that is not running is enough to start it."""

SPEC_AGENT_FIELDS = {
    "agent_id",
    "agent_name",
    "sync_enabled",
    "sync_interval_s",
    "sync_batch_size",
    "promotion_enabled",
    "promotion_threshold",
    "local_vector_cache",
    "vector_cache_threshold_bytes",
}


def test_agent_config_carries_every_spec_field_with_spec_defaults() -> None:
    cfg = AgentMemoryConfig()
    assert set(AgentMemoryConfig.model_fields) >= SPEC_AGENT_FIELDS
    assert cfg.sync_enabled is True
    assert cfg.sync_interval_s == 60
    assert cfg.sync_batch_size == 100
    assert cfg.promotion_enabled is True
    assert cfg.promotion_threshold == 0.7
    assert cfg.local_vector_cache is True
    assert cfg.vector_cache_threshold_bytes == 10240
    # the spec's Fireproof fields, under their Chrysalis names and their spec aliases
    assert cfg.store_enabled is True
    spec_named = AgentMemoryConfig.model_validate(
        {"fireproof_enabled": False, "fireproof_db_path": "/tmp/x.db"}
    )
    assert spec_named.store_enabled is False
    assert spec_named.db_path == Path("/tmp/x.db")


def test_gossip_and_hub_defaults_match_the_spec() -> None:
    gossip = GossipConfig()
    assert (gossip.fanout, gossip.interval_ms, gossip.max_retries) == (3, 500, 3)
    assert gossip.anti_entropy_enabled and gossip.anti_entropy_interval_ms == 5000
    assert [gossip.rounds_to_reach(n) for n in (10, 100, 1000, 10_000, 100_000)] == [
        3,
        5,
        7,
        9,
        11,
    ]  # spec §3.2.2 table
    hub = HubConfig()
    assert (hub.websocket_port, hub.http_port, hub.vector_dimensions) == (4444, 8082, 768)
    assert (hub.max_connections_per_agent, hub.sync_batch_size) == (2, 100)
    assert hub.vector_index_type == "hnsw" and hub.conflict_resolution == "crdt"
    assert HubConfig.model_validate({"websocketPort": 5000, "shardCount": 4}).shard_count == 4


def test_from_env_reads_prefixed_variables_and_aliases() -> None:
    env = {
        "CHRYSALIS_AGENT_ID": "agent-007",
        "CHRYSALIS_DATA_DIR": "/var/lib/chrysalis",
        "CHRYSALIS_HUB_URL": "ws://127.0.0.1:4444",
        "CHRYSALIS_HUB_TOKEN": "s3cret",
        "CHRYSALIS_PROMOTION_THRESHOLD": "0.5",
        "CHRYSALIS_SYNC_ENABLED": "false",
        "CHRYSALIS_EMBEDDER": "hashing",
        "OLLAMA_HOST": "http://10.0.0.5:11434",
        "FIREPROOF_DB_PATH": "/tmp/spec.db",
        "CHRYSALIS_GOSSIP_FANOUT": "5",
        "CHRYSALIS_GOSSIP_SEEDS": "ws://a:1, ws://b:2",
    }
    cfg = AgentMemoryConfig.from_env(env)
    assert cfg.agent_id == "agent-007"
    assert cfg.data_dir == Path("/var/lib/chrysalis")
    assert cfg.hub_url == "ws://127.0.0.1:4444"
    assert cfg.hub_token is not None and cfg.hub_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert cfg.promotion_threshold == 0.5
    assert cfg.sync_enabled is False
    assert cfg.embedder == "hashing"
    assert cfg.ollama_host == "http://10.0.0.5:11434"
    assert cfg.db_path == Path("/tmp/spec.db")
    assert cfg.gossip.fanout == 5
    assert cfg.gossip.seeds == ["ws://a:1", "ws://b:2"]


def test_keyword_overrides_beat_the_environment() -> None:
    cfg = AgentMemoryConfig.from_env({"CHRYSALIS_AGENT_ID": "from-env"}, agent_id="explicit")
    assert cfg.agent_id == "explicit"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHRYSALIS_AGENT_ID": "has spaces"}, "agent_id"),
        ({"CHRYSALIS_PROMOTION_THRESHOLD": "1.5"}, "promotion_threshold"),
        ({"CHRYSALIS_SYNC_BATCH_SIZE": "zero"}, "sync_batch_size"),
        ({"CHRYSALIS_HUB_URL": "http://wrong-scheme"}, "must start with ws://"),
        ({"CHRYSALIS_EMBEDDER": "magic"}, "embedder"),
        ({"CHRYSALIS_DURABILITY": "maybe"}, "durability"),
    ],
)
def test_bad_configuration_raises_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentMemoryConfig.from_env(env)


@pytest.mark.parametrize(
    ("agent_id", "problem"),
    [
        ("has spaces", "contains ' '"),
        ("", "is empty"),
        ("-leading-dash", "starts with '-'"),
        ("a" * 129, "is 129 characters long"),
        ("agent/001", "contains '/'"),
        ("agent-001\n", "contains '\\n'"),
        ("agént", "contains 'é'"),
    ],
)
def test_a_bad_agent_id_is_explained_in_words(agent_id: str, problem: str) -> None:
    from_env = functools.partial(AgentMemoryConfig.from_env, {"CHRYSALIS_AGENT_ID": agent_id})
    from_keyword = functools.partial(AgentMemoryConfig, agent_id=agent_id)
    for source, build in (("environment", from_env), ("keyword", from_keyword)):
        with pytest.raises(ConfigError) as raised:
            build()
        message = str(raised.value)
        assert problem in message, source  # what is wrong with this one
        assert "letters, digits and . _ : @ -" in message, source  # and what is allowed
        assert "starting with a letter or digit" in message, source
        assert "pattern" not in message and "[A-Za-z" not in message, source  # not a regex


def test_the_constructors_raise_config_error_too() -> None:
    # Not pydantic's ValidationError: every documented way in raises a ChrysalisError.
    with pytest.raises(ConfigError, match="promotion_threshold"):
        AgentMemoryConfig(promotion_threshold=1.5)
    with pytest.raises(ConfigError, match="fanout"):
        GossipConfig(fanout=0)
    with pytest.raises(ConfigError, match="websocket_port"):
        HubConfig(websocket_port=-1)


@pytest.mark.parametrize("agent_id", ["a", "agent-001", "Z" * 128, "ops@host:2.local_1"])
def test_good_agent_ids_are_accepted(agent_id: str) -> None:
    assert AgentMemoryConfig(agent_id=agent_id).agent_id == agent_id


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ConfigError, match="agent_idd"):
        AgentMemoryConfig.build(agent_idd="typo")


def test_paths_derive_from_data_dir_and_agent(tmp_path: Path) -> None:
    cfg = AgentMemoryConfig(agent_id="a1", data_dir=tmp_path)
    assert cfg.agent_dir == tmp_path / "a1"
    assert cfg.resolved_db_path == tmp_path / "a1" / "memory.db"
    assert AgentMemoryConfig(store_enabled=False).resolved_db_path is None
    assert cfg.display_name == "a1"


async def test_agent_memory_accepts_config_or_keywords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHRYSALIS_AGENT_ID", "env-agent")
    monkeypatch.setenv("CHRYSALIS_DATA_DIR", str(tmp_path))
    async with AgentMemory() as from_env:
        assert from_env.agent_id == "env-agent"
    base = AgentMemoryConfig(agent_id="base", data_dir=tmp_path)
    async with AgentMemory(base, agent_id="override") as overridden:
        assert overridden.agent_id == "override"
        assert overridden.config.data_dir == tmp_path
    assert (tmp_path / "env-agent" / "memory.db").exists()
    assert (tmp_path / "override" / "memory.db").exists()


async def test_gossip_enabled_listens_for_peers_and_off_it_does_not(tmp_path: Path) -> None:
    async with AgentMemory(agent_id="a1", data_dir=tmp_path) as quiet:
        assert quiet.gossip_url is None and quiet.gossip_state() is None
    async with AgentMemory(
        agent_id="a2",
        data_dir=tmp_path,
        gossip=GossipConfig(enabled=True, listen_port=0, members=A_PEER),
    ) as mem:
        await mem.learn("still works offline, with no peer at all", importance=0.9)
        url = mem.gossip_url
        assert url is not None and url.startswith("ws://127.0.0.1:")
        assert not url.endswith(":0")
        state = mem.gossip_state()
        assert state is not None and state.url == url
        assert (state.alive, state.suspect, state.dead) == (0, 0, 0)
    assert mem.gossip_url is None


async def test_a_gossip_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    async with AgentMemory(
        agent_id="a1", data_dir=tmp_path, gossip=GossipConfig(enabled=True, members=A_PEER)
    ) as first:
        assert first.gossip_url is not None
        port = int(first.gossip_url.rsplit(":", 1)[1])
        second = AgentMemory(
            agent_id="a2",
            data_dir=tmp_path,
            gossip=GossipConfig(enabled=True, listen_port=port, members=A_PEER),
        )
        with pytest.raises(ConfigError, match="gossip cannot listen"):
            await second.open()
        assert not second.is_open
        async with AgentMemory(agent_id="a2", data_dir=tmp_path) as again:  # lock released
            assert again.is_open
