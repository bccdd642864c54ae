"""Docs that are generated from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from chrysalis_memory import _docgen

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == _docgen.render(), (
        "docs/configuration.md is stale: run `python -m chrysalis_memory._docgen`"
    )


def test_every_config_field_is_described() -> None:
    for model in (_docgen.AgentMemoryConfig, _docgen.GossipConfig, _docgen.HubConfig):
        missing = [name for name, info in model.model_fields.items() if not info.description]
        assert missing == [], f"{model.__name__} fields without a description: {missing}"
