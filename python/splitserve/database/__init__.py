"""The gateway's state database: one blocking API over SQLite and PostgreSQL.

    database = open_database("postgresql://splitserve@db:5432/splitserve")  # or sqlite:///path
    with database.transaction(write=True) as transaction:
        row = transaction.execute("SELECT status FROM endpoints WHERE name_key = ?", (key,))
        ...
        transaction.notify("routing")  # PostgreSQL: NOTIFY at commit

SQL is written once with `?` placeholders; the few statements that differ (schemas, JSON
functions) branch on `Transaction.kind`. A database that cannot be reached raises
`DatabaseUnavailable`, which the error table answers 503 ServiceUnavailable. `changes(channel)`
gives a follower a blocking feed of changes (LISTEN/NOTIFY; SQLite's `PRAGMA data_version`).
This part imports only common; control, cloudwatch and cluster store through it.
"""

from splitserve.database.api import (
    ChangeFeed,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    Result,
    Transaction,
)
from splitserve.database.opening import open_database
from splitserve.database.url import DatabaseUrl, DatabaseUrlError, parse_database_url

__all__ = [
    "ChangeFeed",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "DatabaseUrl",
    "DatabaseUrlError",
    "Result",
    "Transaction",
    "open_database",
    "parse_database_url",
]
