"""`open_database`: a URL to its backend."""

from __future__ import annotations

from splitserve.config import DatabaseSettings
from splitserve.database.api import Database
from splitserve.database.url import parse_database_url

__all__ = ["open_database"]


def open_database(url: str, settings: DatabaseSettings | None = None) -> Database:
    """The state database at `url`: `sqlite:///absolute/path` or `postgresql://...` (also
    `postgres://`). Blocks: a PostgreSQL pool is opened and its first connection awaited; an
    SQLite file is opened by each thread's first transaction (it must exist by then).

    Raises:
        DatabaseUrlError: `url` is not one of those (the message names it, not its password).
        DatabaseUnavailable: the PostgreSQL server cannot be reached within the connect timeout.
    """
    settings = DatabaseSettings() if settings is None else settings
    parsed = parse_database_url(url)
    if parsed.kind == "sqlite":
        from splitserve.database.sqlite import SqliteDatabase  # noqa: PLC0415

        return SqliteDatabase(parsed, settings)
    # Imported only here: a gateway on SQLite never loads psycopg.
    from splitserve.database.postgres import PostgresDatabase  # noqa: PLC0415

    return PostgresDatabase(parsed, settings)
