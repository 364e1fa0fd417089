"""A private PostgreSQL server for tests: never the system service.

`PostgresServer.start` runs Debian's `initdb` in a temporary directory and `pg_ctl start` on a
free loopback port (no Unix socket outside that directory); `stop` and `restart` serve the tests of
a database that goes away under load; `remove` stops it and deletes the directory. initdb refuses
root, so as root the server runs as the `postgres` user (or `nobody`) in a directory it owns.

The session fixture `postgres_server` starts one for the whole run (skipped, with the reason, only
when the binaries are absent: `make setup` installs them); `postgres_url` gives each test a new,
empty database on it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.support.http import free_port

#: Where Debian's postgresql package puts the server's binaries (one directory per major version).
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
#: The superuser initdb makes, and the database every test database is created from.
USER = "splitserve"
_SERVER_TIMEOUT_SECONDS = 60


def find_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: Debian's newest, else the PATH's; None if none."""
    if _DEBIAN_ROOT.is_dir():
        versions = sorted(
            (entry for entry in _DEBIAN_ROOT.iterdir() if (entry / "bin" / "initdb").exists()),
            key=lambda entry: int(entry.name) if entry.name.isdigit() else 0,
        )
        if versions:
            return versions[-1] / "bin"
    initdb = shutil.which("initdb")
    return None if initdb is None else Path(initdb).resolve().parent


def _server_user() -> str | None:
    """Whom to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root with neither a postgres nor a nobody user for initdb")


@dataclass
class PostgresServer:
    """One private server: `url(database)` reaches it; `stop`/`start`/`restart` drive it."""

    binaries: Path
    directory: Path
    port: int
    user: str | None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        """A URL for `database` on this server."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        prefix = [] if self.user is None else ["runuser", "-u", self.user, "--"]
        subprocess.run(
            [*prefix, *command],
            check=True,
            capture_output=True,
            timeout=_SERVER_TIMEOUT_SECONDS,
        )

    @classmethod
    def create(cls, binaries: Path) -> PostgresServer:
        """initdb a new cluster in a new temporary directory (not started yet)."""
        user = _server_user()
        directory = Path(tempfile.mkdtemp(prefix="splitserve-postgres-"))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        server = cls(binaries, directory, free_port(), user)
        server._run(
            str(binaries / "initdb"),
            "-D",
            str(server.data),
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return server

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off "
            "-c full_page_writes=off"
        )
        self._run(
            str(self.binaries / "pg_ctl"),
            "start",
            "-w",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
        )

    def stop(self) -> None:
        """Stop the server now (`-m fast`: connections are cut, as at a crash of the service)."""
        self._run(str(self.binaries / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        """Stop the server (if running) and delete its directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A private server, started, removed at the end.

    Raises:
        pytest.skip.Exception: PostgreSQL's binaries are not installed.
    """
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (make setup installs them)")
    server = PostgresServer.create(binaries)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (see the module's docstring)."""
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres_server.create_database()
