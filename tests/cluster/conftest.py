"""`cluster`: the replicas' tables in a new, empty state database of each backend (the test runs
once over SQLite, once over the private PostgreSQL server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.cluster.state import ClusterState
from splitserve.config import DatabaseSettings
from splitserve.database import open_database

#: Short timeouts: a test of an unreachable database waits for them.
QUICK = DatabaseSettings(connect_timeout_seconds=1.0, statement_timeout_seconds=2.0)


def sqlite_url(directory: Path) -> str:
    """The URL of a new SQLite state file in `directory` (open_database needs the file to exist;
    the store creates it so in a gateway)."""
    path = directory / "state.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
    connection.close()
    return f"sqlite://{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty state database of each backend."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def cluster(state_url: str) -> Iterator[ClusterState]:
    """The replicas' tables, created in the database at `state_url`, closed at the end."""
    database = open_database(state_url, QUICK)
    try:
        yield ClusterState.open(database)
    finally:
        database.close()
