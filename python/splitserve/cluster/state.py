"""The replicas' tables in the state database: who is live, what to route, who controls.

- `cluster_replicas`: one row per replica process: its host, pid, internal URL, last heartbeat,
  the routing version it routes with, and whether it is the controller.
- `cluster_routing`: one routing document per endpoint (`cluster.routing`), with the version
  that wrote it.
- `cluster_meta`: the routing version, a counter every change of a document increments, which a
  replica that is not the controller polls (one small read) to learn that something changed.

- `cluster_lease`: the controller lease of a PostgreSQL state (`cluster.lease.RowLease`).

The tables live in the state database (SQLite or PostgreSQL, `splitserve.database`). Every
method blocks; the async side calls them with `asyncio.to_thread`. Writers are serialised by the
database's write lock (`Database.transaction(write=True)`). A routing change also notifies the
`routing` channel, which followers on PostgreSQL wait on (LISTEN) rather than poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from splitserve.cluster.routing import RoutingDocument, RoutingDocumentError, decode, encode
from splitserve.database import Database, Transaction

__all__ = ["ROUTING_CHANNEL", "ClusterState", "ReplicaRecord"]

log = logging.getLogger(__name__)

# Types both databases take: DOUBLE PRECISION (SQLite: REAL affinity; PostgreSQL's REAL is a
# 4-byte float, too coarse for a time in seconds) and BIGINT.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_replicas (
    replica_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    internal_url TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL,
    applied_version BIGINT NOT NULL,
    controller INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_routing (
    endpoint TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO cluster_meta (key, value) VALUES ('routing_version', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS cluster_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    renewals BIGINT NOT NULL
);
"""

#: The channel routing changes are notified on.
ROUTING_CHANNEL = "routing"


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
    """The replicas' tables in the state database."""

    def __init__(self, database: Database) -> None:
        """The tables in `database`; use `ClusterState.open`, which creates them."""
        self.database = database

    @classmethod
    def open(cls, database: Database) -> ClusterState:
        """The replicas' tables in `database`, created when missing."""
        state = cls(database)
        with database.transaction(write=True) as transaction:
            transaction.script(_SCHEMA)
        return state

    # --- replicas ---------------------------------------------------------------------------------

    def heartbeat(self, replica: ReplicaRecord) -> None:
        """Write (insert or replace) `replica`'s row."""
        with self.database.transaction(write=True) as transaction:
            transaction.execute(
                "INSERT INTO cluster_replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (replica_id) DO UPDATE SET host = excluded.host, "
                "pid = excluded.pid, internal_url = excluded.internal_url, "
                "started = excluded.started, heartbeat = excluded.heartbeat, "
                "applied_version = excluded.applied_version, controller = excluded.controller",
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
        with self.database.transaction(write=True) as transaction:
            transaction.execute(
                "UPDATE cluster_replicas SET applied_version = ? WHERE replica_id = ?",
                (version, replica_id),
            )

    def leave(self, replica_id: str) -> None:
        """Remove replica `replica_id`'s row (it is stopping)."""
        with self.database.transaction(write=True) as transaction:
            transaction.execute("DELETE FROM cluster_replicas WHERE replica_id = ?", (replica_id,))

    def replicas(self, live_since: float) -> list[ReplicaRecord]:
        """The replicas whose last heartbeat is at `live_since` or later."""
        rows = self.database.query(
            "SELECT replica_id, host, pid, internal_url, started, heartbeat, applied_version, "
            "controller FROM cluster_replicas WHERE heartbeat >= ? ORDER BY replica_id",
            (live_since,),
        )
        return [
            ReplicaRecord(
                replica_id=str(row[0]),
                host=str(row[1]),
                pid=_int(row[2]),
                internal_url=str(row[3]),
                started=_float(row[4]),
                heartbeat=_float(row[5]),
                applied_version=_int(row[6]),
                controller=bool(row[7]),
            )
            for row in rows
        ]

    def forget_replicas(self, silent_since: float) -> None:
        """Delete the rows of replicas silent since before `silent_since` (died without
        leaving)."""
        with self.database.transaction(write=True) as transaction:
            transaction.execute("DELETE FROM cluster_replicas WHERE heartbeat < ?", (silent_since,))

    # --- routing documents ------------------------------------------------------------------------

    def publish(self, documents: list[RoutingDocument], removed: list[str]) -> int:
        """Replace the documents of `documents`' endpoints and delete those of `removed`, in one
        transaction under one new routing version, which is returned."""
        with self.database.transaction(write=True) as transaction:
            row = transaction.execute(
                "UPDATE cluster_meta SET value = value + 1 WHERE key = 'routing_version' "
                "RETURNING value"
            ).fetchone()
            assert row is not None  # the schema inserts it
            version = _int(row[0])
            for document in documents:
                transaction.execute(
                    "INSERT INTO cluster_routing VALUES (?, ?, ?) ON CONFLICT (endpoint) "
                    "DO UPDATE SET document = excluded.document, version = excluded.version",
                    (document.endpoint, encode(document), version),
                )
            for endpoint in removed:
                transaction.execute("DELETE FROM cluster_routing WHERE endpoint = ?", (endpoint,))
            transaction.notify(ROUTING_CHANNEL)
        return version

    def routing_version(self) -> int:
        """The current routing version (one small read)."""
        rows = self.database.query("SELECT value FROM cluster_meta WHERE key = 'routing_version'")
        return _int(rows[0][0])

    def routing(self) -> tuple[int, dict[str, RoutingDocument], set[str]]:
        """The routing version, every endpoint's document, and the endpoints whose document is
        damaged (a replica keeps routing those as it did), read in one transaction."""
        with self.database.transaction() as transaction:
            row = transaction.execute(
                "SELECT value FROM cluster_meta WHERE key = 'routing_version'"
            ).fetchone()
            assert row is not None
            version = _int(row[0])
            rows = transaction.execute("SELECT endpoint, document FROM cluster_routing").rows
        documents: dict[str, RoutingDocument] = {}
        damaged: set[str] = set()
        for endpoint, text in rows:
            name = str(endpoint)
            try:
                document = decode(str(text))
                if document.endpoint != name:
                    # A replica publishes a document under its `endpoint`: one filed under
                    # another name would route the wrong endpoint's requests.
                    raise RoutingDocumentError(
                        f"not a routing document: it routes endpoint {document.endpoint!r}"
                    )
            except RoutingDocumentError as error:
                log.error("endpoint %s: damaged routing document, routing kept: %s", name, error)
                damaged.add(name)
                continue
            documents[name] = document
        return version, documents, damaged

    # --- the lease row ----------------------------------------------------------------------------

    def lease(
        self, name: str, change: Callable[[Transaction, tuple[str, int] | None], bool]
    ) -> bool:
        """Read lease `name`'s (holder, renewals) under the write lock and let `change` update
        it in the same transaction; return what `change` returns."""
        with self.database.transaction(write=True) as transaction:
            row = transaction.execute(
                "SELECT holder, renewals FROM cluster_lease WHERE name = ?", (name,)
            ).fetchone()
            return change(transaction, None if row is None else (str(row[0]), _int(row[1])))


def _int(value: object) -> int:
    if not isinstance(value, int | float | str):
        raise TypeError(f"expected a number, found {type(value).__name__}")
    return int(value)


def _float(value: object) -> float:
    if not isinstance(value, int | float | str):
        raise TypeError(f"expected a number, found {type(value).__name__}")
    return float(value)
