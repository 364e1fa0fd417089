"""The SQLite backend: one file, used by several threads and processes at once.

Each thread gets a connection of its own (SQLite connections are not for concurrent use), opened
with `mode=rw`: the file must exist (the control store's `Store.open` creates the state file,
with its private mode and its schema, before anything else opens it). WAL journaling, which the
state file is switched to when it is prepared, lets readers run beside the one writer; a writer
waits for another process's write lock up to `DatabaseSettings.sqlite_busy_timeout_seconds`,
then fails with DatabaseUnavailable.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

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
from splitserve.database.statements import check_channel, split_script
from splitserve.database.url import DatabaseUrl

__all__ = ["SqliteDatabase", "existing_file_uri"]

# sqlite3 binds int, float, str and bytearray parameters as they are; anything else, bytes and
# bool included, goes through its adapter registry, and an unregistered type then costs two failed
# attribute lookups, one of which formats an AttributeError: ~1,100 instructions a parameter. The
# feedback index binds a bytes and a bool for every answered invocation. These adapters return
# what sqlite3 would bind anyway (bytes as a BLOB, a bool as the integer 0 or 1), found at the
# registry's first lookup. They are process-wide, like the registry.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(bool, int)


def existing_file_uri(path: Path) -> str:
    """The URI that opens the SQLite file at `path` for reading and writing, never creating it
    (`sqlite3.connect(..., uri=True)`)."""
    # `file://` and an empty authority: a path spelled with a leading `//` (which POSIX reads as
    # `/`) would otherwise be taken for the URI's authority ("invalid uri authority").
    return f"file://{quote(str(path.absolute()))}?mode=rw"


class SqliteDatabase(Database):
    """An SQLite state file (see the module's docstring)."""

    kind = "sqlite"

    def __init__(self, url: DatabaseUrl, settings: DatabaseSettings) -> None:
        """Use the file `url` names; nothing is opened until the first transaction."""
        if url.path is None:
            raise ValueError(f"{url.display} is not an SQLite URL")
        self.path: Path = url.path
        self.display = url.display
        self._settings = settings
        self._local = threading.local()
        # Weak: a thread's connection goes (and is closed) with its thread's locals.
        self._connections: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        # Signalled when the last open transaction ends: close waits for it (see close).
        self._idle = threading.Condition(self._lock)
        self._open_transactions = 0
        self._closed = False

    def connect(self) -> sqlite3.Connection:
        """A new connection to the file, for this backend's own use and the change feed.

        Raises:
            DatabaseError: the file is missing or cannot be opened.
        """
        try:
            connection = sqlite3.connect(
                existing_file_uri(self.path),
                uri=True,
                timeout=self._settings.sqlite_busy_timeout_seconds,
                check_same_thread=False,
                isolation_level=None,
            )
            connection.execute("PRAGMA foreign_keys = ON")
            # Per connection (journal_mode is the file's, set when the store prepares it).
            synchronous = self._settings.sqlite_synchronous
            if synchronous not in ("FULL", "NORMAL"):
                raise ValueError(f"sqlite_synchronous is FULL or NORMAL, not {synchronous!r}")
            connection.execute(f"PRAGMA synchronous = {synchronous}")
        except sqlite3.Error as error:
            raise self.translate(error) from error
        return connection

    def translate(self, error: sqlite3.Error) -> Exception:
        """The error to raise for `error`: DatabaseUnavailable for a lock held too long by
        another writer, DatabaseError for anything else."""
        text = str(error)
        if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return DatabaseUnavailable(
                f"the state database {self.display} is busy (another process holds its write "
                "lock); try again",
                detail=text,
            )
        return DatabaseError(f"state database {self.display}: {text}")

    def _connection(self) -> sqlite3.Connection:
        held: _ThreadConnection | None = getattr(self._local, "connection", None)
        if held is None:
            with self._lock:
                if self._closed:
                    raise DatabaseError(f"state database {self.display} is closed")
            held = _ThreadConnection(self.connect())
            with self._lock:
                self._connections.add(held)
            self._local.connection = held
        return held.connection

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Transaction]:
        """See `Database.transaction`; a transaction opened inside another on the same thread
        joins it (a write one only inside a write one)."""
        current: _SqliteTransaction | None = getattr(self._local, "current", None)
        if current is not None:
            if write and not current.write:
                raise RuntimeError("a write transaction cannot start inside a read transaction")
            yield current
            return
        connection = self._connection()
        with self._lock:
            if self._closed:
                raise DatabaseError(f"state database {self.display} is closed")
            self._open_transactions += 1
        try:
            try:
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as error:
                raise self.translate(error) from error
            transaction = _SqliteTransaction(self, connection, write)
            self._local.current = transaction
            try:
                yield transaction
            except BaseException:
                self._local.current = None
                # Suppressed: SQLite may have ended the transaction itself on the error.
                with suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise
            self._local.current = None
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                with suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise self.translate(error) from error
        finally:
            with self._lock:
                self._open_transactions -= 1
                if not self._open_transactions:
                    self._idle.notify_all()

    def changes(self, channel: str) -> ChangeFeed:
        """See `Database.changes`: `channel` is checked, but any commit is a change."""
        check_channel(channel)
        return _DataVersionFeed(self, self._settings.change_poll_seconds)

    def close(self) -> None:
        """See `Database.close`: new transactions are refused at once, and the ones other
        threads have open are waited for (up to the busy timeout) before the connections close.
        Still open after that, the connections are left to close with their threads.

        Closing a connection another thread is using crashes the interpreter (seen on 3.13:
        a deleted endpoint's feedback cleared on a worker thread while the gateway shut down).
        """
        with self._lock:
            self._closed = True
            idle = self._idle.wait_for(
                lambda: not self._open_transactions,
                timeout=self._settings.sqlite_busy_timeout_seconds,
            )
            held = list(self._connections) if idle else []
            self._connections.clear()
        for each in held:
            each.connection.close()


class _ThreadConnection:
    """One thread's connection (a holder: sqlite3 connections take no weak references)."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __del__(self) -> None:
        # Closed here rather than left to the connection's own finalizer, which newer Pythons
        # report as a ResourceWarning.
        self.connection.close()


class _SqliteTransaction(Transaction):
    kind = "sqlite"

    def __init__(self, database: SqliteDatabase, connection: sqlite3.Connection, write: bool):
        self._database = database
        self._connection = connection
        self.write = write

    def execute(self, sql: str, params: Params = ()) -> Result:
        try:
            cursor = self._connection.execute(sql, tuple(params))
            rows = cursor.fetchall()
        except sqlite3.Error as error:
            raise self._database.translate(error) from error
        return Result(rows=rows, rowcount=cursor.rowcount)

    def executemany(self, sql: str, params: Sequence[Params]) -> None:
        try:
            self._connection.executemany(sql, [tuple(row) for row in params])
        except sqlite3.Error as error:
            raise self._database.translate(error) from error

    def script(self, sql: str) -> None:
        # Not executescript(): it commits first, and this must stay inside the transaction.
        for statement in split_script(sql):
            self.execute(statement)

    def notify(self, channel: str) -> None:
        check_channel(channel)  # the commit itself changes PRAGMA data_version


class _DataVersionFeed(ChangeFeed):
    """Reads `PRAGMA data_version` on a kept connection: it changes when another connection (of
    this process or another) commits."""

    def __init__(self, database: SqliteDatabase, poll_seconds: float) -> None:
        self._database = database
        self._poll_seconds = poll_seconds
        self._connection: sqlite3.Connection | None = database.connect()
        self._version = self._read()

    def _read(self) -> object:
        if self._connection is None:
            raise DatabaseError(f"the change feed of {self._database.display} is closed")
        try:
            row = self._connection.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as error:
            raise self._database.translate(error) from error
        return None if row is None else row[0]

    def wait(self, timeout_seconds: float) -> bool:
        deadline = time.monotonic() + timeout_seconds
        while True:
            version = self._read()
            if version != self._version:
                self._version = version
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self._poll_seconds, remaining))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
