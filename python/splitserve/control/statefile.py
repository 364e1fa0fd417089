"""Opening the state file: made private and whole, checked before use, migrated in place.

A state file that is empty, is not SQLite, fails `PRAGMA quick_check`, belongs to something else,
was written by a newer splitserve or (`Store.open` reads every row) holds a row this code cannot
read stops start-up with `StateFileError`; the file is never written to in that case.

The file holds every model's Environment, which may carry secrets: it is created 0600 (SQLite
gives its -wal and -shm files the same mode), an existing one is narrowed to 0600, and a missing
directory is created 0711 (config.STATE_DIRECTORY_MODE: not 0700, because workers running as
another user, when the gateway runs as root, must pass through it to their run directory; nobody
but the gateway's user may list it). A new file is built under a temporary name and linked into
place only once its schema is written, so a crash during the first start leaves no empty or
half-made state file behind: an empty file at the state path is therefore damage, not a new file.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path

from splitserve.config import STATE_DIRECTORY_MODE, STATE_FILE_MODE
from splitserve.database.sqlite import existing_file_uri

log = logging.getLogger(__name__)

#: The schema this code writes. A file with a higher version is refused; one with a lower version
#: is brought up to date (`MIGRATIONS`) when it is opened.
SCHEMA_VERSION = 4


#: Each endpoint's weight changes (schema version 3), in `sequence` order; bounded per endpoint by
#: config.WEIGHT_HISTORY_LIMIT and deleted with the endpoint (`Store`).
_WEIGHT_HISTORY = """
-- No foreign key: put_endpoint replaces the endpoint row, which must not drop its history.
CREATE TABLE endpoint_weights (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_key TEXT NOT NULL,
    time REAL NOT NULL,
    cause TEXT NOT NULL,
    weights TEXT NOT NULL
);
CREATE INDEX endpoint_weights_by_endpoint ON endpoint_weights (endpoint_key, sequence);
"""

SCHEMA = (
    """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE models (
    name_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    creation_time REAL NOT NULL,
    document TEXT NOT NULL,
    tags TEXT
);
CREATE TABLE endpoint_configs (
    name_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    creation_time REAL NOT NULL,
    document TEXT NOT NULL,
    tags TEXT
);
CREATE TABLE endpoints (
    name_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    endpoint_config_name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    creation_time REAL NOT NULL,
    last_modified_time REAL NOT NULL,
    data_capture TEXT,
    deployment_config TEXT,
    pending TEXT,
    tags TEXT
);
CREATE TABLE endpoint_variants (
    endpoint_key TEXT NOT NULL REFERENCES endpoints (name_key) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('live', 'pending')),
    position INTEGER NOT NULL,
    variant_name TEXT NOT NULL,
    current_weight REAL NOT NULL,
    desired_weight REAL NOT NULL,
    current_instance_count INTEGER NOT NULL,
    desired_instance_count INTEGER NOT NULL,
    deployed_time REAL,
    status TEXT,
    status_message TEXT,
    status_start_time REAL,
    spec TEXT NOT NULL,
    PRIMARY KEY (endpoint_key, role, position)
);
"""
    + _WEIGHT_HISTORY
)

#: The statements that bring a file from version N to N + 1, by N.
MIGRATIONS = {
    # Version 2 keeps CreateEndpoint's Tags (JSON [[key, value], ...]; NULL for none).
    1: "ALTER TABLE endpoints ADD COLUMN tags TEXT;",
    # Version 3 keeps each endpoint's weight changes (time, cause, JSON {variant: weight}). A
    # migrated file starts with no history: what weights were in force before is not known.
    2: _WEIGHT_HISTORY,
    # Version 4 keeps the Tags of models and endpoint configurations too (as endpoints' `tags`),
    # so that AddTags, ListTags and DeleteTags serve all three.
    3: """
ALTER TABLE models ADD COLUMN tags TEXT;
ALTER TABLE endpoint_configs ADD COLUMN tags TEXT;
""",
}


class StateFileError(Exception):
    """The state file cannot be used; start-up stops and the file is left as it was."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def connect(path: Path) -> sqlite3.Connection:
    """Open the state file at `path` (creating a missing one, `create`); nothing is checked yet.

    Raises:
        StateFileError: the file cannot be read or opened, is empty or is not an SQLite database.
    """
    # The file is never opened but by SQLite: closing any other descriptor of it would drop every
    # POSIX lock this process's SQLite connections hold on it (other replicas, CloudWatch's),
    # and another process could then write under them: SQLite's "How To Corrupt", 2.2. A file
    # that is not a database is found by `check`'s first read (SQLITE_NOTADB).
    try:
        exists = path.exists()
        if exists:
            status = path.stat()
            if stat.S_ISDIR(status.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            if not os.access(path, os.R_OK | os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            empty = status.st_size == 0
        else:
            path.parent.mkdir(mode=STATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as error:
        raise StateFileError(
            f"state file {path} cannot be read: {error.strerror or error}; it was left untouched"
        ) from error
    if exists and empty:
        # A new file is linked into place only with its schema (`create`), so an empty one
        # was truncated by something else: treating it as new would hide the lost state.
        raise corrupt(path, "it is empty (0 bytes)")
    if not exists:
        create(path)
    try:
        # mode=rw: the file is opened, never replaced (`create` made a missing one).
        connection = sqlite3.connect(
            existing_file_uri(path),
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
    except sqlite3.Error as error:
        raise StateFileError(
            f"state file {path} cannot be opened: {error}; it was left untouched"
        ) from error
    return connection


def check(path: Path, connection: sqlite3.Connection) -> int | None:
    """Refuse a damaged database, or one that is not splitserve's, without writing to it.

    Returns:
        the file's schema version; None for a database without tables.
    """
    try:
        result = connection.execute("PRAGMA quick_check").fetchall()
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        version = None
        if "schema_version" in tables:
            version = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    except sqlite3.DatabaseError as error:
        if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            raise corrupt(path, "it is not an SQLite database") from error
        raise corrupt(path, str(error)) from error
    if result != [("ok",)]:
        raise corrupt(path, "; ".join(str(row[0]) for row in result[:5]))
    if tables and "schema_version" not in tables:
        raise corrupt(path, "it is an SQLite database but not a splitserve state file")
    if tables and not isinstance(version, int):
        raise corrupt(path, "its schema_version table is empty")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise StateFileError(
            f"state file {path} has schema version {version}, newer than this splitserve's "
            f"({SCHEMA_VERSION}); it was left untouched"
        )
    return version


def prepare(path: Path, connection: sqlite3.Connection) -> None:
    """Turn on WAL and full syncs, and create the schema in a new file."""
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        has_schema = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if has_schema is None:
            # One script, one transaction: executescript() commits before it runs, so the BEGIN
            # and COMMIT must be inside it for a crash to leave either no schema or all of it.
            connection.executescript(
                f"BEGIN IMMEDIATE;{SCHEMA}"
                f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION});COMMIT;"
            )
            return
        version = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        while version < SCHEMA_VERSION:
            # Each step in one transaction too, so a crash leaves the file at N or at N + 1.
            connection.executescript(
                f"BEGIN IMMEDIATE;{MIGRATIONS[version]}"
                f"UPDATE schema_version SET version = {version + 1};COMMIT;"
            )
            version += 1
    except sqlite3.Error as error:
        raise StateFileError(
            f"state file {path} cannot be prepared: {error}; it was left untouched"
        ) from error


def create(path: Path) -> None:
    """Make a new state file at `path`, mode 0600, holding the current schema.

    It is built under a temporary name (rollback journal: nothing in a -wal file that a rename
    would leave behind) and linked into place only when complete, so `path` is either missing or
    a whole state file, whatever moment a crash comes at. `prepare` turns on WAL afterwards.

    Raises:
        StateFileError: the file cannot be made (nothing is left at `path`).
    """
    building = path.with_name(path.name + ".new")
    try:
        for leftover in (building, building.with_name(building.name + "-journal")):
            leftover.unlink(missing_ok=True)  # from a crash during an earlier first start
        os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STATE_FILE_MODE))
        connection = sqlite3.connect(building, isolation_level=None)
        try:
            connection.executescript(
                f"BEGIN IMMEDIATE;{SCHEMA}"
                f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION});COMMIT;"
            )
        finally:
            connection.close()
        descriptor = os.open(building, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        _move_into_place(building, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (OSError, sqlite3.Error) as error:
        building.unlink(missing_ok=True)
        detail = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise StateFileError(f"state file {path} cannot be created: {detail}") from error


def _move_into_place(building: Path, path: Path) -> None:
    """Give the finished file its name. A hard link fails rather than replace a file that appeared
    meanwhile; a file system without hard links gets a rename after one more look."""
    try:
        os.link(building, path)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from error
        os.rename(building, path)
        return
    building.unlink()


def narrow_mode(path: Path) -> None:
    """Make an existing state file (and its -wal and -shm files) private to the gateway's user."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & ~STATE_FILE_MODE:
                os.chmod(file, STATE_FILE_MODE)
                log.warning(
                    "state file %s was mode %04o; it holds model Environment values, so it is "
                    "now %04o",
                    file,
                    mode,
                    STATE_FILE_MODE,
                )
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StateFileError(
                f"state file {file} cannot be made private (mode {STATE_FILE_MODE:04o}): "
                f"{error.strerror or error}"
            ) from error


def corrupt(path: Path, detail: str) -> StateFileError:
    """The error for a damaged state file at `path`; `detail` says what is wrong with it."""
    return StateFileError(f"state file {path} is corrupt: {detail}; it was left untouched")
