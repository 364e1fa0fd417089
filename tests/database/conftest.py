"""`database`: a new, empty state database of each backend (the test runs once per backend)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.config import DatabaseSettings
from splitserve.database import Database, open_database

#: Short timeouts: the tests of an unreachable database wait for them.
QUICK = DatabaseSettings(connect_timeout_seconds=1.0, statement_timeout_seconds=2.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty database: an SQLite file, or a database on the private server."""
    if request.param == "sqlite":
        path = tmp_path / "state.sqlite3"
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode = WAL")  # as the store prepares its file
        connection.close()
        return f"sqlite://{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The database at `database_url`, closed at the end."""
    opened = open_database(database_url, QUICK)
    try:
        yield opened
    finally:
        opened.close()
