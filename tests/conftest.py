"""Session-wide test settings."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Temporary files of this run, and of the processes it starts, go under
    pytest's own temporary directory (pruned by pytest), never straight into the
    system's: demos, notebooks and benches called by the tests make
    ``chrysalis-*`` directories there for their users to look at afterwards."""
    private = str(tmp_path_factory.mktemp("tmp"))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = private
    tempfile.tempdir = private
    try:
        yield private
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
