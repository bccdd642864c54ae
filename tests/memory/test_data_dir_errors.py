"""A data directory that cannot be used is a DataDirError naming the path and
what to do, never a raw OSError; a failed open leaves nothing locked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import ConfigError, DataDirError, StoreError


async def open_and_close(**fields: Any) -> None:
    async with AgentMemory(agent_id="a1", **fields):
        pass


@pytest.mark.parametrize("where", ["under", "itself"])
async def test_a_data_dir_under_a_file_or_a_file_itself(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory")
    data_dir = blocker / "data" if where == "under" else blocker
    with pytest.raises(DataDirError) as raised:
        await open_and_close(data_dir=data_dir)
    message = str(raised.value)
    assert str(blocker) in message  # the file in the way, by name
    assert "data_dir" in message  # and the setting to change
    assert isinstance(raised.value, ConfigError)  # the caller's setting is wrong
    assert blocker.read_text() == "a file, not a directory"  # untouched


async def test_a_file_where_the_agent_directory_goes(tmp_path: Path) -> None:
    (tmp_path / "a1").write_text("in the way")
    with pytest.raises(DataDirError, match="a1"):
        await open_and_close(data_dir=tmp_path)
    (tmp_path / "a1").unlink()
    await open_and_close(data_dir=tmp_path)  # moved away: the same settings work


async def test_a_db_path_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(DataDirError) as raised:
        await open_and_close(data_dir=tmp_path / "data", db_path=blocker / "memory.db")
    assert str(blocker) in str(raised.value)
    assert "db_path" in str(raised.value)
    # Nothing stayed locked: the same agent opens with a usable db_path.
    await open_and_close(data_dir=tmp_path / "data")


async def test_other_os_errors_are_translated_too(tmp_path: Path) -> None:
    too_long = tmp_path / ("n" * 300)  # longer than any file system allows a name
    with pytest.raises(DataDirError) as raised:
        await open_and_close(data_dir=too_long)
    assert str(too_long) in str(raised.value)
    assert raised.value.__cause__ is None or isinstance(raised.value.__cause__, OSError)


async def test_a_data_dir_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip("this process may write anywhere (root with CAP_DAC_OVERRIDE)")
        with pytest.raises(DataDirError, match="permission denied") as raised:
            await open_and_close(data_dir=locked)
        assert str(locked / "a1") in str(raised.value)
    finally:
        locked.chmod(0o700)


async def test_an_unreadable_key_releases_the_data_dir(tmp_path: Path) -> None:
    # The key file's place is taken by a directory: the open fails with a StoreError...
    (tmp_path / "a1" / "keys" / "signing.key").mkdir(parents=True)
    first = AgentMemory(agent_id="a1", data_dir=tmp_path)  # kept: its lock must not be
    with pytest.raises(StoreError, match="signing key"):
        await first.open()
    # ...and again for the next try, not "in use by another AgentMemory".
    with pytest.raises(StoreError, match="signing key"):
        await AgentMemory(agent_id="a1", data_dir=tmp_path).open()
    assert not first.is_open
