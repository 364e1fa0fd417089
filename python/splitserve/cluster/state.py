"""The replicas' tables in the state database: who is live, what to route, who controls.

- `cluster_replicas`: one row per replica process: its host, pid, internal URL, last heartbeat,
  the routing version it routes with, and whether it is the controller.
- `cluster_routing`: one routing document per endpoint (`cluster.routing`), with the version
  that wrote it.
- `cluster_meta`: the routing version, a counter every change of a document increments, which a
  replica that is not the controller polls (one small read) to learn that something changed.

Every method blocks; the async side calls them with `asyncio.to_thread`. One lock serialises the
threads of one process over its connection; processes are serialised by the database itself
(SQLite's write lock, taken at the start of every writing transaction: `BEGIN IMMEDIATE`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from splitserve.cluster.routing import RoutingDocument, RoutingDocumentError, decode, encode

__all__ = ["ClusterState", "ReplicaRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_replicas (
    replica_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    internal_url TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    applied_version INTEGER NOT NULL,
    controller INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_routing (
    endpoint TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO cluster_meta (key, value) VALUES ('routing_version', 0);
"""

#: How long a writer waits for another process's write lock before giving up (seconds).
_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as the table holds it."""

    replica_id: str
    host: str
    pid: int
    internal_url: str
    started: float
    heartbeat: float
    applied_version: int
    controller: bool


class ClusterState:
    """The replicas' tables, through one connection of this process."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        """Wrap an open connection whose tables exist; use `ClusterState.open`."""
        self._connection = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> ClusterState:
        """Open the state file at `path` (the control plane created and checked it) and create
        the replicas' tables in it when missing."""
        connection = sqlite3.connect(
            f"file:{quote(str(path.absolute()))}?mode=rw",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        state = cls(connection)
        with state._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        return state

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    # --- replicas ---------------------------------------------------------------------------------

    def heartbeat(self, replica: ReplicaRecord) -> None:
        """Write (insert or replace) `replica`'s row."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO cluster_replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    replica.replica_id,
                    replica.host,
                    replica.pid,
                    replica.internal_url,
                    replica.started,
                    replica.heartbeat,
                    replica.applied_version,
                    int(replica.controller),
                ),
            )

    def applied(self, replica_id: str, version: int) -> None:
        """Record that replica `replica_id` now routes with routing version `version`."""
        with self._write() as db:
            db.execute(
                "UPDATE cluster_replicas SET applied_version = ? WHERE replica_id = ?",
                (version, replica_id),
            )

    def leave(self, replica_id: str) -> None:
        """Remove replica `replica_id`'s row (it is stopping)."""
        with self._write() as db:
            db.execute("DELETE FROM cluster_replicas WHERE replica_id = ?", (replica_id,))

    def replicas(self, live_since: float) -> list[ReplicaRecord]:
        """The replicas whose last heartbeat is at `live_since` or later; rows older than that
        are deleted on the way (a replica that died without leaving)."""
        with self._write() as db:
            db.execute("DELETE FROM cluster_replicas WHERE heartbeat < ?", (live_since - 60.0,))
            rows = db.execute(
                "SELECT * FROM cluster_replicas WHERE heartbeat >= ? ORDER BY replica_id",
                (live_since,),
            ).fetchall()
        return [
            ReplicaRecord(
                replica_id=row[0],
                host=row[1],
                pid=int(row[2]),
                internal_url=row[3],
                started=float(row[4]),
                heartbeat=float(row[5]),
                applied_version=int(row[6]),
                controller=bool(row[7]),
            )
            for row in rows
        ]

    # --- routing documents ------------------------------------------------------------------------

    def publish(self, documents: list[RoutingDocument], removed: list[str]) -> int:
        """Replace the documents of `documents`' endpoints and delete those of `removed`, in one
        transaction under one new routing version, which is returned."""
        with self._write() as db:
            version = int(
                db.execute(
                    "UPDATE cluster_meta SET value = value + 1 WHERE key = 'routing_version' "
                    "RETURNING value"
                ).fetchone()[0]
            )
            for document in documents:
                db.execute(
                    "INSERT OR REPLACE INTO cluster_routing VALUES (?, ?, ?)",
                    (document.endpoint, encode(document), version),
                )
            for endpoint in removed:
                db.execute("DELETE FROM cluster_routing WHERE endpoint = ?", (endpoint,))
        return version

    def routing_version(self) -> int:
        """The current routing version (one small read: what followers poll)."""
        with self._lock:
            row = self._connection.execute(
                "SELECT value FROM cluster_meta WHERE key = 'routing_version'"
            ).fetchone()
        return int(row[0])

    def routing(self) -> tuple[int, dict[str, RoutingDocument], set[str]]:
        """The routing version, every endpoint's document, and the endpoints whose document is
        damaged (a replica keeps routing those as it did), read in one transaction."""
        with self._lock:
            db = self._connection
            db.execute("BEGIN")
            try:
                version = int(
                    db.execute(
                        "SELECT value FROM cluster_meta WHERE key = 'routing_version'"
                    ).fetchone()[0]
                )
                rows = db.execute("SELECT endpoint, document FROM cluster_routing").fetchall()
            finally:
                db.execute("COMMIT")
        documents: dict[str, RoutingDocument] = {}
        damaged: set[str] = set()
        for endpoint, text in rows:
            try:
                documents[endpoint] = decode(text)
            except RoutingDocumentError:
                damaged.add(endpoint)
        return version, documents, damaged

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
