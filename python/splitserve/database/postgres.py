"""The PostgreSQL backend: psycopg 3 and its connection pool.

Every connection is opened with `connect_timeout` and `statement_timeout` from
`DatabaseSettings`, and a transaction waits at most `connect_timeout_seconds` for a pooled
connection, so a database that is down or stuck fails a call with DatabaseUnavailable in bounded
time instead of hanging it. The pool checks a connection before handing it out
(`ConnectionPool.check_connection`), so one that a server restart broke is replaced rather than
failing the next call; a connection that fails during a transaction is discarded by the pool.

Write transactions take one transaction-scoped advisory lock (`WRITE_LOCK_KEY`) first: writers
go one at a time, as on SQLite (BEGIN IMMEDIATE), so read-check-write sequences written for one
backend hold on the other; READ COMMITTED then shows each statement what was committed before
it, the lock holder's predecessors included. Read transactions are REPEATABLE READ: every
statement of one sees the same snapshot, as a read transaction does on SQLite under WAL.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
import psycopg_pool

from splitserve.config import DatabaseSettings
from splitserve.database.api import (
    ChangeFeed,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    Params,
    Result,
    Transaction,
)
from splitserve.database.statements import check_channel, split_script, to_pyformat
from splitserve.database.url import DatabaseUrl

__all__ = ["WRITE_LOCK_KEY", "PostgresDatabase"]

#: The advisory lock every write transaction takes (pg_advisory_xact_lock): "splitsrv" in ASCII.
#: Other advisory locks of the gateway (a controller lease) must use other keys.
WRITE_LOCK_KEY = 0x73706C6974737276


class PostgresDatabase(Database):
    """A PostgreSQL database (see the module's docstring)."""

    kind = "postgresql"

    def __init__(self, url: DatabaseUrl, settings: DatabaseSettings) -> None:
        """Open the pool and wait for its first connection.

        Raises:
            DatabaseUnavailable: no connection within `settings.connect_timeout_seconds`.
        """
        self.display = url.display
        self._url = url.url
        self._settings = settings
        self._connect_options: dict[str, object] = {
            # libpq reads whole seconds; at least 1 (0 would mean "wait for ever").
            "connect_timeout": max(1, math.ceil(settings.connect_timeout_seconds)),
            "options": (
                f"-c statement_timeout={max(1, round(settings.statement_timeout_seconds * 1000))}"
            ),
            "application_name": "splitserve",
        }
        self._local = threading.local()
        self._pool = psycopg_pool.ConnectionPool(
            self._url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            kwargs=self._connect_options,
            timeout=settings.connect_timeout_seconds,
            reconnect_timeout=settings.reconnect_timeout_seconds,
            check=psycopg_pool.ConnectionPool.check_connection,
            name="splitserve-state",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=settings.connect_timeout_seconds)
        except psycopg.Error as error:
            self._pool.close(timeout=0)
            # The pool says only that it timed out; one connection of our own says why (refused,
            # no such database, authentication), for the start-up's message.
            self.connect().close()
            raise self.unavailable(error) from error

    def unavailable(self, error: BaseException) -> DatabaseUnavailable:
        """The DatabaseUnavailable for a connection that failed with `error`."""
        return DatabaseUnavailable(
            f"the state database {self.display} is unavailable; try again later",
            detail=" ".join(str(error).split()),  # libpq's text runs over several lines
        )

    def translate(self, error: psycopg.Error) -> Exception:
        """DatabaseUnavailable for a lost, refused or timed-out connection or statement;
        DatabaseError for anything else."""
        if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
            return self.unavailable(error)
        return DatabaseError(f"state database {self.display}: {error}")

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Transaction]:
        """See `Database.transaction`; a transaction opened inside another on the same thread
        joins it (a write one only inside a write one)."""
        current: _PostgresTransaction | None = getattr(self._local, "current", None)
        if current is not None:
            if write and not current.write:
                raise RuntimeError("a write transaction cannot start inside a read transaction")
            yield current
            return
        connection, pooled = self._take()
        try:
            with connection.transaction():
                transaction = _PostgresTransaction(self, connection, write)
                if write:
                    transaction.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
                else:
                    # One snapshot for the whole read, as SQLite's read transaction under WAL.
                    transaction.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                self._local.current = transaction
                try:
                    yield transaction
                finally:
                    self._local.current = None
        except psycopg.Error as error:
            # Raised by BEGIN, COMMIT or ROLLBACK; statements translate their own errors.
            raise self.translate(error) from error
        finally:
            if pooled:
                self._pool.putconn(connection)  # the pool discards a broken one
            else:
                connection.close()

    def _take(self) -> tuple[psycopg.Connection[tuple[object, ...]], bool]:
        """A connection for one transaction, and whether it came from the pool.

        The pool waits between its attempts to reconnect to a server that went away, longer
        after each (up to `reconnect_timeout`): when it has none to give within the connect
        timeout, one connection of our own is tried, so the first call after the server is back
        succeeds rather than waiting for the pool's next attempt.

        Raises:
            DatabaseUnavailable: neither gave a connection in time.
        """
        try:
            return self._pool.getconn(timeout=self._settings.connect_timeout_seconds), True
        except psycopg.Error as error:
            if not isinstance(error, psycopg_pool.PoolTimeout):
                raise self.translate(error) from error
        return self.connect(autocommit=False), False

    def changes(self, channel: str) -> ChangeFeed:
        """See `Database.changes`: LISTEN on `channel` over a connection of its own."""
        return _ListenFeed(self, check_channel(channel))

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
        """A new connection outside the pool (for LISTEN, or when the pool has none).

        Raises:
            DatabaseUnavailable: it cannot be opened.
        """
        try:
            return psycopg.connect(self._url, autocommit=autocommit, **self._connect_options)  # type: ignore[arg-type]
        except psycopg.Error as error:
            raise self.unavailable(error) from error

    def close(self) -> None:
        """See `Database.close`."""
        self._pool.close(timeout=self._settings.connect_timeout_seconds)


class _PostgresTransaction(Transaction):
    kind = "postgresql"

    def __init__(
        self,
        database: PostgresDatabase,
        connection: psycopg.Connection[tuple[object, ...]],
        write: bool,
    ) -> None:
        self._database = database
        self._connection = connection
        self.write = write

    def execute(self, sql: str, params: Params = ()) -> Result:
        try:
            cursor = self._connection.execute(
                to_pyformat(sql) if params else sql, tuple(params) if params else None
            )
            rows = cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as error:
            raise self._database.translate(error) from error
        return Result(rows=list(rows), rowcount=cursor.rowcount)

    def executemany(self, sql: str, params: Sequence[Params]) -> None:
        if not params:
            return
        try:
            with self._connection.cursor() as cursor:
                cursor.executemany(to_pyformat(sql), [tuple(row) for row in params])
        except psycopg.Error as error:
            raise self._database.translate(error) from error

    def script(self, sql: str) -> None:
        for statement in split_script(sql):
            self.execute(statement)

    def notify(self, channel: str) -> None:
        self.execute("SELECT pg_notify(?, '')", (check_channel(channel),))


class _ListenFeed(ChangeFeed):
    """LISTEN on a kept connection; reconnects after a failure and then reports a change, since
    notifications sent meanwhile were lost."""

    def __init__(self, database: PostgresDatabase, channel: str) -> None:
        self._database = database
        self._channel = channel
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None
        self._closed = False
        self._listen()

    def _listen(self) -> None:
        connection = self._database.connect()
        try:
            connection.execute(f"LISTEN {self._channel}")
        except psycopg.Error as error:
            connection.close()
            raise self._database.unavailable(error) from error
        self._connection = connection

    def wait(self, timeout_seconds: float) -> bool:
        if self._closed:
            raise DatabaseError(f"the change feed of {self._database.display} is closed")
        if self._connection is None:
            self._listen()
            return True  # whatever was notified while the connection was down is lost
        try:
            for _ in self._connection.notifies(timeout=timeout_seconds, stop_after=1):
                return True
        except psycopg.Error as error:
            self._connection.close()
            self._connection = None
            raise self._database.unavailable(error) from error
        return False

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
