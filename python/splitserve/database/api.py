"""What every backend gives: transactions, results, change feeds, and the errors they raise."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from splitserve.errors import DatabaseUnavailable

__all__ = [
    "ChangeFeed",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "Result",
    "Transaction",
]

#: A statement's parameters: positional, matched to its `?` placeholders.
Params = Sequence[object]


class DatabaseError(Exception):
    """A statement failed for a reason other than the database being unreachable (a constraint,
    bad SQL, a damaged SQLite file). The message names the database, never its password."""


@dataclass
class Result:
    """What one statement returned: its rows (empty for a statement without any) and how many
    rows it changed.

    Attributes:
        rows: every row, as tuples, in the order the database gave them.
        rowcount: rows inserted, updated or deleted (-1 when the backend does not say).
    """

    rows: list[tuple[object, ...]] = field(default_factory=list)
    rowcount: int = -1

    def fetchone(self) -> tuple[object, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[object, ...]]:
        """Every row."""
        return self.rows

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        return iter(self.rows)


class Transaction(abc.ABC):
    """One open transaction (see `Database.transaction`). Write SQL once, with `?` placeholders;
    the PostgreSQL backend translates them."""

    #: "sqlite" or "postgresql", for the few statements that differ (the schema, JSON functions).
    kind: str

    @abc.abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement and return its rows.

        Raises:
            DatabaseUnavailable: the database cannot be reached or did not answer in time.
            DatabaseError: the statement failed.
        """

    @abc.abstractmethod
    def executemany(self, sql: str, params: Sequence[Params]) -> None:
        """Run one statement once per parameter tuple (raises as `execute`)."""

    @abc.abstractmethod
    def script(self, sql: str) -> None:
        """Run several `;`-separated statements without parameters (a schema), inside this
        transaction (raises as `execute`)."""

    @abc.abstractmethod
    def notify(self, channel: str) -> None:
        """Tell the `changes(channel)` feeds of every process that something changed, when (and
        only if) this transaction commits. On SQLite any commit already shows as a change, so
        this does nothing there."""


class ChangeFeed(abc.ABC):
    """Tells a follower that the database may have changed (see `Database.changes`).

    `wait` may report a change where there was none (after a reconnection, or on SQLite for a
    commit to any table), never miss one that committed after the feed was opened: the reader
    rereads what it follows on True.
    """

    @abc.abstractmethod
    def wait(self, timeout_seconds: float) -> bool:
        """Block until a change is seen or `timeout_seconds` pass; True for a change (one report
        covers every change since the previous call).

        Raises:
            DatabaseUnavailable: the database cannot be reached (the next call tries again).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop following (idempotent)."""


class Database(abc.ABC):
    """The gateway's state database: one blocking API over SQLite and PostgreSQL.

    Safe to use from several threads at once (each transaction has a connection of its own for
    its duration) and from several processes on one database.
    """

    #: "sqlite" or "postgresql".
    kind: str
    #: The database's URL without its password, for messages and logs.
    display: str

    @abc.abstractmethod
    def transaction(self, *, write: bool = False) -> AbstractContextManager[Transaction]:
        """A transaction: committed when the block ends, rolled back when it raises.

        Args:
            write: take the database's write lock first (SQLite: BEGIN IMMEDIATE; PostgreSQL:
                a transaction-scoped advisory lock), so a read-check-write sequence inside it is
                atomic across threads and processes: writers go one at a time, and each sees
                what the one before it committed. Readers never wait for it. Inside it,
                `SELECT ... FOR UPDATE` (PostgreSQL only) adds nothing. Without it the
                transaction reads one snapshot (SQLite under WAL; PostgreSQL's REPEATABLE READ):
                write nothing in it (PostgreSQL may refuse a write that races another with a
                serialization failure, raised as DatabaseUnavailable).

        Raises:
            DatabaseUnavailable: the database cannot be reached, did not answer within the
                statement timeout, or the write lock was not had within it.
            DatabaseError: a statement, or the commit, failed.
        """

    def query(self, sql: str, params: Params = ()) -> list[tuple[object, ...]]:
        """The rows of one statement, run in a transaction of its own (raises as `execute`)."""
        with self.transaction() as transaction:
            return transaction.execute(sql, params).rows

    @abc.abstractmethod
    def changes(self, channel: str) -> ChangeFeed:
        """A feed of changes for a follower to await (`ChangeFeed.wait`, blocking; run it off the
        event loop). PostgreSQL: LISTEN on `channel` (writers call `Transaction.notify`);
        SQLite: `PRAGMA data_version` on a kept connection, read every
        `DatabaseSettings.change_poll_seconds` (any commit by another connection is a change).

        Raises:
            DatabaseUnavailable: the database cannot be reached.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection (idempotent). Transactions still open fail."""
