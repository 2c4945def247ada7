"""Every state test runs against SQLite and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.state import base
from tests.pgserver import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def backend(state_url: str) -> Iterator[base.Backend]:
    state = base.open_state(state_url)
    try:
        yield state
    finally:
        state.close()
