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


def test_every_sync_status_is_explained_where_users_look() -> None:
    """get() shows sync_status; concepts.md and SyncStatus say what each value
    means, and what `pending` waits for on an agent with no hub (issue 12)."""
    from chrysalis_memory.model.document import SyncStatus

    page = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    section = page.split("## Sync status", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2]
        for line in section.splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == {status.value for status in SyncStatus}
    assert "no hub configured" in rows["pending"].lower()
    assert "hub_url" in rows["pending"]
    docstring = SyncStatus.__doc__ or ""
    for status in SyncStatus:
        assert f"``{status.value}``" in docstring
    assert "hub_url" in docstring
