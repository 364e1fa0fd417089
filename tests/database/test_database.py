"""The database part over both backends: transactions, placeholders, locks, changes, errors."""

from __future__ import annotations

import gc
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from splitserve.database import (
    Database,
    DatabaseError,
    DatabaseUnavailable,
    DatabaseUrlError,
    open_database,
    parse_database_url,
)
from splitserve.errors import wire_error
from tests.database.conftest import QUICK
from tests.support.http import free_port
from tests.support.postgres import PostgresServer

_TABLE = "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL, note TEXT);"


def _create(database: Database) -> None:
    with database.transaction(write=True) as transaction:
        transaction.script(_TABLE + "\n-- a comment; with a semicolon\n")


def test_commits_on_exit_and_rolls_back_on_error(database: Database) -> None:
    _create(database)
    with database.transaction(write=True) as transaction:
        transaction.execute("INSERT INTO counters VALUES (?, ?, ?)", ("a", 1, "50% '?' kept"))

    def refused_write() -> None:
        with database.transaction(write=True) as transaction:
            transaction.execute("INSERT INTO counters VALUES (?, ?, NULL)", ("b", 2))
            raise KeyError("refused")

    with pytest.raises(KeyError):
        refused_write()
    assert database.query("SELECT name, value, note FROM counters") == [("a", 1, "50% '?' kept")]
    assert database.kind in ("sqlite", "postgresql")


def test_literal_question_marks_and_percents_are_not_placeholders(database: Database) -> None:
    _create(database)
    rows = database.query("SELECT '?', '%', ? || '%'", ("x",))
    assert rows == [("?", "%", "x%")]


def test_rowcount_and_executemany(database: Database) -> None:
    _create(database)
    with database.transaction(write=True) as transaction:
        transaction.executemany(
            "INSERT INTO counters VALUES (?, ?, NULL)", [("a", 1), ("b", 2), ("c", 3)]
        )
        result = transaction.execute("UPDATE counters SET value = value + 1 WHERE value > ?", (1,))
        assert result.rowcount == 2
        assert result.fetchone() is None
        assert transaction.execute("SELECT COUNT(*) FROM counters").fetchone() == (3,)


def test_a_nested_transaction_joins_the_outer_one(database: Database) -> None:
    _create(database)
    with database.transaction(write=True) as outer:
        outer.execute("INSERT INTO counters VALUES ('a', 1, NULL)")
        with database.transaction() as inner:
            assert inner.execute("SELECT value FROM counters").rows == [(1,)]
    with (
        pytest.raises(RuntimeError, match="inside a read transaction"),
        database.transaction(),
        database.transaction(write=True),
    ):
        pass


def test_write_transactions_make_read_check_write_atomic(database: Database) -> None:
    """Threads (each its own connection) add 1 through a read-then-write: no update is lost."""
    _create(database)
    with database.transaction(write=True) as transaction:
        transaction.execute("INSERT INTO counters VALUES ('n', 0, NULL)")

    def increment() -> None:
        for _ in range(10):
            with database.transaction(write=True) as transaction:
                row = transaction.execute("SELECT value FROM counters WHERE name = 'n'").fetchone()
                assert row is not None
                transaction.execute(
                    "UPDATE counters SET value = ? WHERE name = 'n'", (int(str(row[0])) + 1,)
                )

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(increment) for _ in range(4)]:
            future.result()
    assert database.query("SELECT value FROM counters") == [(40,)]


def test_a_failed_statement_is_a_database_error(database: Database) -> None:
    with pytest.raises(DatabaseError, match="state database"):
        database.query("SELECT * FROM no_such_table")
    assert database.query("SELECT 1") == [(1,)]  # the connection is still usable


def test_a_change_feed_sees_commits_of_other_connections(database: Database) -> None:
    _create(database)
    feed = database.changes("routing")
    try:
        assert not feed.wait(0.05)
        done = threading.Event()

        def write() -> None:
            with database.transaction(write=True) as transaction:
                transaction.execute("INSERT INTO counters VALUES ('a', 1, NULL)")
                transaction.notify("routing")
            done.set()

        threading.Thread(target=write).start()
        assert done.wait(10)
        assert feed.wait(10)
    finally:
        feed.close()


def test_a_change_channel_must_be_an_identifier(database: Database) -> None:
    with pytest.raises(ValueError, match="lower-case identifier"):
        database.changes("Routing; DROP TABLE x")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "has scheme 'mysql'"),
        ("state.sqlite3", "is not a URL"),
        ("sqlite://relative/path", "names no absolute file"),
        ("sqlite:///", "names a directory"),
        ("postgresql:///db", "names no host"),
        ("postgresql://host:5432", "names no database"),
        ("postgresql://host:port/db", "cannot be read"),
    ],
)
def test_bad_urls_are_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        open_database(url)


def test_a_password_never_shows() -> None:
    parsed = parse_database_url("postgres://alice:s3cret@db.example:6432/state?password=s3cret")
    assert parsed.kind == "postgresql"
    assert parsed.display == "postgres://alice@db.example:6432/state"
    with pytest.raises(DatabaseUrlError) as refused:
        parse_database_url("postgresql://alice:s3cret@/state")
    assert "s3cret" not in str(refused.value)


def test_an_sqlite_url_names_its_file(tmp_path: Path) -> None:
    parsed = parse_database_url(f"sqlite://{tmp_path}/a%20b.sqlite3")
    assert parsed.kind == "sqlite"
    assert parsed.path == tmp_path / "a b.sqlite3"


def test_an_sqlite_path_spelled_with_a_leading_double_slash_opens(tmp_path: Path) -> None:
    # sqlite:////tmp/x: POSIX reads //tmp/x as /tmp/x; a file: URI must not take "tmp" for a host.
    path = tmp_path / "state.sqlite3"
    sqlite3.connect(path).close()
    database = open_database(f"sqlite:///{path}", QUICK)
    try:
        with database.transaction(write=True) as transaction:
            transaction.execute("CREATE TABLE t (x INTEGER)")
        assert database.query("SELECT COUNT(*) FROM t") == [(0,)]
    finally:
        database.close()


def test_an_unreachable_server_is_unavailable_within_the_timeout() -> None:
    url = f"postgresql://alice:s3cret@127.0.0.1:{free_port()}/state"
    with pytest.raises(DatabaseUnavailable) as refused:
        open_database(url, QUICK)
    assert "s3cret" not in refused.value.message
    assert "127.0.0.1" in refused.value.message
    assert wire_error(refused.value).status == 503
    assert wire_error(refused.value).code == "ServiceUnavailable"


def test_a_missing_sqlite_file_is_a_database_error(tmp_path: Path) -> None:
    database = open_database(f"sqlite://{tmp_path}/missing.sqlite3", QUICK)
    with pytest.raises(DatabaseError, match=r"missing\.sqlite3"):
        database.query("SELECT 1")
    database.close()


def test_an_sqlite_writer_waiting_too_long_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    sqlite3.connect(path).close()
    database = open_database(f"sqlite://{path}", replace(QUICK, sqlite_busy_timeout_seconds=0.1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
    try:
        with pytest.raises(DatabaseUnavailable, match="busy"), database.transaction(write=True):
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        database.close()


#: One process of `test_processes_add_up_through_write_transactions`: 20 read-then-write
#: increments, each in a write transaction; argv: the URL.
_INCREMENTER = """
import sys
from splitserve.config import DatabaseSettings
from splitserve.database import open_database

database = open_database(sys.argv[1], DatabaseSettings(sqlite_busy_timeout_seconds=30.0))
for _ in range(20):
    with database.transaction(write=True) as transaction:
        (value,) = transaction.execute("SELECT value FROM counters WHERE name = 'n'").rows[0]
        transaction.execute("UPDATE counters SET value = ? WHERE name = 'n'", (value + 1,))
database.close()
"""


def test_processes_add_up_through_write_transactions(database: Database, database_url: str) -> None:
    """Three OS processes on one database: no increment is lost, and a change feed opened here
    sees their commits."""
    _create(database)
    with database.transaction(write=True) as transaction:
        transaction.execute("INSERT INTO counters VALUES ('n', 0, NULL)")
    feed = database.changes("counters")
    try:
        processes = [
            subprocess.Popen([sys.executable, "-c", _INCREMENTER, database_url]) for _ in range(3)
        ]
        for process in processes:
            assert process.wait(timeout=120) == 0
        assert database.query("SELECT value FROM counters") == [(60,)]
        if database.kind == "sqlite":  # PostgreSQL's feed reports only notify() calls
            assert feed.wait(5)
    finally:
        feed.close()


def test_a_statement_past_the_timeout_is_unavailable(postgres_url: str) -> None:
    quick = replace(QUICK, statement_timeout_seconds=0.2)
    database = open_database(postgres_url, quick)
    try:
        with pytest.raises(DatabaseUnavailable):
            database.query("SELECT pg_sleep(30)")
        holder = threading.Event()
        release = threading.Event()

        def hold_the_write_lock() -> None:
            with database.transaction(write=True):
                holder.set()
                release.wait(30)

        thread = threading.Thread(target=hold_the_write_lock)
        thread.start()
        try:
            assert holder.wait(30)
            # A second writer waits for the lock only up to the statement timeout.
            with pytest.raises(DatabaseUnavailable), database.transaction(write=True):
                pass
        finally:
            release.set()
            thread.join()
        assert database.query("SELECT 1") == [(1,)]
    finally:
        database.close()


def test_a_listen_feed_reports_a_change_after_a_server_restart(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Notifications sent while the feed's connection was down are lost: the feed says "changed"
    once it has listened again, so the follower rereads."""
    database = open_database(postgres_url, QUICK)
    feed = database.changes("routing")
    try:
        assert not feed.wait(0.05)
        postgres_server.restart()
        outcomes: list[bool | str] = []
        for _ in range(10):
            try:
                outcomes.append(feed.wait(0.05))
            except DatabaseUnavailable:
                outcomes.append("unavailable")
            if outcomes[-1] is True:
                break
        assert outcomes[-1] is True, outcomes
        assert not feed.wait(0.05)
        with database.transaction(write=True) as transaction:
            transaction.notify("routing")
        assert feed.wait(10)
    finally:
        feed.close()
        database.close()


def test_an_sqlite_connection_goes_with_its_thread(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    sqlite3.connect(path).close()
    database = open_database(f"sqlite://{path}", QUICK)
    try:
        for _ in range(5):
            thread = threading.Thread(target=lambda: database.query("SELECT 1"))
            thread.start()
            thread.join()
        gc.collect()
        assert len(database._connections) == 0  # type: ignore[attr-defined]
    finally:
        database.close()


def test_close_lets_a_transaction_another_thread_has_open_finish(
    database: Database, database_url: str
) -> None:
    _create(database)
    inside = threading.Event()
    release = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            with database.transaction(write=True) as transaction:
                inside.set()
                release.wait(5)
                transaction.execute("INSERT INTO counters VALUES ('late', 1, NULL)")
        except BaseException as error:
            failures.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(5)
    closing = threading.Thread(target=database.close)
    closing.start()
    if database.kind == "sqlite":
        closing.join(0.3)
        assert closing.is_alive()  # waiting: closing the writer's connection would crash
    release.set()
    writer.join(5)
    closing.join(5)
    assert not closing.is_alive()
    assert not failures
    with pytest.raises((DatabaseError, DatabaseUnavailable)):  # closed: nothing new starts
        database.query("SELECT 1")
    again = open_database(database_url, QUICK)
    try:
        assert again.query("SELECT name FROM counters") == [("late",)]
    finally:
        again.close()
