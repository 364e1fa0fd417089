"""The control plane's persistent state, in the state database (splitserve.database): by
default one SQLite file under the state directory, or PostgreSQL (`--state postgresql://...`).

Every method is blocking. The control service calls them through its own single-thread executor,
never on the event loop; the database is safe to use from several threads and processes. Each write
is one write transaction (the database's write lock is taken first, so the checks inside it hold
against other replicas), committed before the method returns (SQLite: WAL journaling and
synchronous=FULL), so a state the API reported survives a crash of the gateway or of the host. Each
read of an endpoint is one read transaction, so its row and its variants come from one snapshot.

How an SQLite file is created, checked and kept private is `statefile.py`, and PostgreSQL's schema
`statedb.py`, and how a row becomes a record `store_rows.py`; every row is read once when the store
is opened, so a damaged row stops start-up (`StateFileError`) rather than a request. A database
that cannot be reached raises `DatabaseUnavailable` (503 ServiceUnavailable) from any method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import quote

from splitserve.config import WEIGHT_HISTORY_LIMIT, DatabaseSettings
from splitserve.control.models import (
    DeployedVariant,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    ModelRecord,
    PendingDeployment,
    ResourceKind,
    Tags,
    name_key,
)
from splitserve.control.statedb import corrupt_database, prepare_database
from splitserve.control.statefile import (
    SCHEMA_VERSION,
    StateFileError,
    check,
    connect,
    corrupt,
    narrow_mode,
    prepare,
)
from splitserve.control.store_rows import (
    WeightChange,
    decode,
    decode_tags,
    deployed_variant,
    encode,
    encode_optional,
    encode_tags,
    named_record,
    optional_mapping,
    stored_float,
    stored_int,
    weight_change,
)
from splitserve.database import Database, DatabaseError, Result, Transaction, open_database
from splitserve.database.sqlite import SqliteDatabase

__all__ = ["SCHEMA_VERSION", "StateFileError", "Store", "WeightChange"]


class Store:
    """Models, endpoint configurations and endpoints, in the state database."""

    def __init__(self, database: Database, *, owned: bool) -> None:
        """Wrap an open, checked database; use `Store.open`. `owned`: `close` closes it."""
        self._database = database
        self._owned = owned
        self._closed = False

    @classmethod
    def open(cls, state: Path | str | Database, settings: DatabaseSettings | None = None) -> Store:
        """Open the state database, check it, and bring its schema up to date.

        Args:
            state: an SQLite state file's path (created when missing), a database URL
                (`sqlite:///absolute/path`, `postgresql://...`), or an open `Database` (which
                `close` then leaves open).
            settings: timeouts and pool sizes for a database opened here.

        Raises:
            StateFileError: the SQLite file cannot be read, is not an SQLite database, or either
                database is damaged, is not splitserve's or was written by a newer splitserve.
                It is left untouched.
            DatabaseUrlError: `state` is a URL this gateway cannot use.
            DatabaseUnavailable: the database cannot be reached.
        """
        if isinstance(state, Database):
            database, owned = state, False
        else:
            url = (
                f"sqlite://{quote(str(Path(state).absolute()))}"
                if isinstance(state, Path)
                else state
            )
            database, owned = open_database(url, settings), True
        store = cls(database, owned=owned)
        try:
            if isinstance(database, SqliteDatabase):
                store._open_file(database.path)
            else:
                prepare_database(database)
                store._read_every_row()
        except BaseException:
            store.close()
            raise
        return store

    def _open_file(self, path: Path) -> None:
        """Create, check and migrate the SQLite state file at `path` (`statefile.py`)."""
        connection = connect(path)
        try:
            version = check(path, connection)
            if version == SCHEMA_VERSION:
                self._read_every_row()  # before anything is written: a bad row leaves no trace
            prepare(path, connection)
            if version != SCHEMA_VERSION:
                self._read_every_row()  # an older schema is read once it has every column
            narrow_mode(path)
        finally:
            connection.close()

    @property
    def database(self) -> Database:
        """The state database the store keeps its tables in."""
        return self._database

    @property
    def path(self) -> Path | None:
        """The SQLite state file; None for PostgreSQL."""
        return self._database.path if isinstance(self._database, SqliteDatabase) else None

    def close(self) -> None:
        """Close the database if the store opened it (idempotent)."""
        if not self._closed:
            self._closed = True
            if self._owned:
                self._database.close()

    # --- models -----------------------------------------------------------------------------------

    def get_model(self, name: str) -> ModelRecord | None:
        """The model called `name` (any case), or None."""
        row = self._read(
            "SELECT name, creation_time, document, tags FROM models WHERE name_key = ?",
            (name_key(name),),
        ).fetchone()
        return None if row is None else named_record(ModelRecord, "model", row)

    def insert_model(self, record: ModelRecord) -> bool:
        """Add a model; False (and nothing written) if one of that name exists."""
        return self._insert_named(
            "models", record.name, record.creation_time, record.document, record.tags
        )

    def delete_model(self, name: str) -> bool:
        """Remove the model called `name`; False if there was none."""
        return self._delete("models", name)

    def list_models(self) -> list[ModelRecord]:
        """Every model, in no particular order."""
        rows = self._read("SELECT name, creation_time, document, tags FROM models").fetchall()
        return [named_record(ModelRecord, "model", row) for row in rows]

    # --- endpoint configurations ------------------------------------------------------------------

    def get_endpoint_config(self, name: str) -> EndpointConfigRecord | None:
        """The endpoint configuration called `name` (any case), or None."""
        row = self._read(
            "SELECT name, creation_time, document, tags FROM endpoint_configs WHERE name_key = ?",
            (name_key(name),),
        ).fetchone()
        return (
            None
            if row is None
            else named_record(EndpointConfigRecord, "endpoint configuration", row)
        )

    def insert_endpoint_config(self, record: EndpointConfigRecord) -> bool:
        """Add an endpoint configuration; False (and nothing written) if the name exists."""
        return self._insert_named(
            "endpoint_configs", record.name, record.creation_time, record.document, record.tags
        )

    def delete_endpoint_config(self, name: str) -> bool:
        """Remove the endpoint configuration called `name`; False if there was none."""
        return self._delete("endpoint_configs", name)

    def list_endpoint_configs(self) -> list[EndpointConfigRecord]:
        """Every endpoint configuration, in no particular order."""
        rows = self._read("SELECT name, creation_time, document, tags FROM endpoint_configs").rows
        return [named_record(EndpointConfigRecord, "endpoint configuration", row) for row in rows]

    # --- endpoints --------------------------------------------------------------------------------

    def get_endpoint(self, name: str) -> EndpointRecord | None:
        """The endpoint called `name` (any case), or None."""
        with self._database.transaction() as db:
            row = db.execute(
                f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE name_key = ?", (name_key(name),)
            ).fetchone()
            return None if row is None else self._endpoint(db, row)

    def insert_endpoint(self, record: EndpointRecord) -> bool:
        """Add an endpoint; False (and nothing written) if one of that name exists."""
        with self._transaction() as db:
            exists = db.execute(
                "SELECT 1 FROM endpoints WHERE name_key = ?", (name_key(record.name),)
            ).fetchone()
            if exists is not None:
                return False
            self._write_endpoint(db, record)
            return True

    def put_endpoint(self, record: EndpointRecord) -> None:
        """Replace the stored state of an endpoint (or add it) in one transaction."""
        with self._transaction() as db:
            db.execute("DELETE FROM endpoints WHERE name_key = ?", (name_key(record.name),))
            self._write_endpoint(db, record)

    def delete_endpoint(self, name: str) -> bool:
        """Remove the endpoint called `name`, its variants and its weight history; False if
        there was none."""
        with self._transaction() as db:
            db.execute("DELETE FROM endpoint_weights WHERE endpoint_key = ?", (name_key(name),))
            cursor = db.execute("DELETE FROM endpoints WHERE name_key = ?", (name_key(name),))
            return cursor.rowcount == 1

    # --- weight history ---------------------------------------------------------------------------

    def add_weight_change(self, name: str, change: WeightChange) -> None:
        """Append a weight change to the endpoint's history, dropping the oldest ones beyond
        config.WEIGHT_HISTORY_LIMIT, in one transaction."""
        key = name_key(name)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO endpoint_weights (endpoint_key, time, cause, weights) "
                "VALUES (?, ?, ?, ?)",
                (key, change.time, change.cause, encode(dict(change.weights))),
            )
            db.execute(
                "DELETE FROM endpoint_weights WHERE endpoint_key = ? AND sequence <= ("
                "SELECT sequence FROM endpoint_weights WHERE endpoint_key = ? "
                "ORDER BY sequence DESC LIMIT 1 OFFSET ?)",
                (key, key, WEIGHT_HISTORY_LIMIT),
            )

    def weight_history(self, name: str) -> list[WeightChange]:
        """The endpoint's weight changes, oldest first (empty when none was recorded)."""
        rows = self._read(
            "SELECT time, cause, weights FROM endpoint_weights WHERE endpoint_key = ? "
            "ORDER BY sequence",
            (name_key(name),),
        ).fetchall()
        return [weight_change(name, row) for row in rows]

    def list_endpoints(self) -> list[EndpointRecord]:
        """Every endpoint, in no particular order."""
        with self._database.transaction() as db:
            rows = db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints").rows
            return [self._endpoint(db, row) for row in rows]

    # --- tags -------------------------------------------------------------------------------------

    def get_tags(self, kind: ResourceKind, name: str) -> Tags | None:
        """The tags of the resource `name` of `kind` (any case); None if there is no such one."""
        row = self._read(
            f"SELECT tags FROM {_TAGGED_TABLES[kind]} WHERE name_key = ?", (name_key(name),)
        ).fetchone()
        return None if row is None else decode_tags(row[0])

    def change_tags(
        self, kind: ResourceKind, name: str, change: Callable[[Tags], Tags]
    ) -> tuple[Tags, Tags] | None:
        """Replace the resource's tags by `change(its tags)` in one transaction.

        Nothing else of the resource is written. An exception from `change` (a refused change)
        rolls the transaction back and propagates.

        Returns:
            the tags before and after; None (nothing written) if there is no such resource.
        """
        table = _TAGGED_TABLES[kind]
        key = name_key(name)
        with self._transaction() as db:
            row = db.execute(f"SELECT tags FROM {table} WHERE name_key = ?", (key,)).fetchone()
            if row is None:
                return None
            before = decode_tags(row[0])
            after = change(before)
            db.execute(f"UPDATE {table} SET tags = ? WHERE name_key = ?", (encode_tags(after), key))
            return before, after

    # --- helpers ----------------------------------------------------------------------------------

    def _read_every_row(self) -> None:
        """Decode every stored row once, so a damaged one stops start-up with a clean message.

        Raises:
            StateFileError: a row holds a value this code cannot read (the file is untouched).
        """
        try:
            self.list_models()
            self.list_endpoint_configs()
            self.list_endpoints()
            keys = self._read("SELECT DISTINCT endpoint_key FROM endpoint_weights")
            for (key,) in keys.rows:
                self.weight_history(str(key))
        except StateFileError as error:
            raise self._corrupt(error.message) from error
        except DatabaseError as error:
            raise self._corrupt(str(error)) from error

    def _corrupt(self, detail: str) -> StateFileError:
        path = self.path
        if path is not None:
            return corrupt(path, detail)
        return corrupt_database(self._database.display, detail)

    def _read(self, sql: str, params: Sequence[object] = ()) -> Result:
        """One statement in a read transaction (or in the one this thread has open)."""
        self._check_open()
        with self._database.transaction() as db:
            return db.execute(sql, params)

    def _transaction(self) -> AbstractContextManager[Transaction]:
        """A write transaction: the database's write lock first, so checks inside it hold."""
        self._check_open()
        return self._database.transaction(write=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"state database {self._database.display} is closed")

    def _insert_named(
        self,
        table: str,
        name: str,
        creation_time: float,
        document: Mapping[str, object],
        tags: Tags,
    ) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT INTO {table} (name_key, name, creation_time, document, tags) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (name_key(name), name, creation_time, encode(document), encode_tags(tags)),
            )
            return cursor.rowcount == 1

    def _delete(self, table: str, name: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(f"DELETE FROM {table} WHERE name_key = ?", (name_key(name),))
            return cursor.rowcount == 1

    def _write_endpoint(self, db: Transaction, record: EndpointRecord) -> None:
        key = name_key(record.name)
        pending = record.pending
        db.execute(
            f"INSERT INTO endpoints (name_key, {_ENDPOINT_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                record.name,
                record.status.value,
                record.failure_reason,
                record.endpoint_config_name,
                record.generation,
                record.creation_time,
                record.last_modified_time,
                encode_optional(record.data_capture),
                encode_optional(record.deployment_config),
                None
                if pending is None
                else encode(
                    {
                        "EndpointConfigName": pending.endpoint_config_name,
                        "Generation": pending.generation,
                        "StartTime": pending.start_time,
                        "DataCapture": pending.data_capture,
                    }
                ),
                encode_tags(record.tags),
            ),
        )
        rows = [("live", position, v) for position, v in enumerate(record.variants)]
        if pending is not None:
            rows += [("pending", position, v) for position, v in enumerate(pending.variants)]
        db.executemany(
            "INSERT INTO endpoint_variants (endpoint_key, role, position, variant_name, "
            "current_weight, desired_weight, current_instance_count, desired_instance_count, "
            "deployed_time, status, status_message, status_start_time, spec) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    key,
                    role,
                    position,
                    variant.variant_name,
                    variant.current_weight,
                    variant.desired_weight,
                    variant.current_instance_count,
                    variant.desired_instance_count,
                    variant.deployed_time,
                    None if variant.status is None else variant.status.status,
                    None if variant.status is None else variant.status.message,
                    None if variant.status is None else variant.status.start_time,
                    encode(
                        {
                            "ModelName": variant.model_name,
                            "Image": variant.image,
                            "ModelDataUrl": variant.model_data_url,
                            "Environment": dict(variant.environment),
                            "InstanceType": variant.instance_type,
                            "RoutingStrategy": variant.routing_strategy,
                            "ContainerStartupHealthCheckTimeoutInSeconds": (
                                variant.container_startup_timeout_seconds
                            ),
                            # Only on shadows: rows written before shadows existed read as
                            # production variants, which they are.
                            **({"Shadow": True} if variant.shadow else {}),
                        }
                    ),
                )
                for role, position, variant in rows
            ],
        )

    def _endpoint(self, db: Transaction, row: tuple[object, ...]) -> EndpointRecord:
        try:
            return self._decode_endpoint(db, row)
        except (StateFileError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, StateFileError):
                raise StateFileError(f"endpoint {row[0]!r}: {error.message}") from error
            raise StateFileError(
                f"endpoint {row[0]!r} holds an invalid value: {error!r}"
            ) from error

    def _decode_endpoint(self, db: Transaction, row: tuple[object, ...]) -> EndpointRecord:
        (name, status, failure_reason, config_name, generation, created, modified) = row[:7]
        data_capture, deployment_config, pending_text, tags_text = row[7:]
        variants: dict[str, list[DeployedVariant]] = {"live": [], "pending": []}
        for variant_row in db.execute(
            "SELECT role, variant_name, current_weight, desired_weight, current_instance_count, "
            "desired_instance_count, deployed_time, status, status_message, status_start_time, "
            "spec FROM endpoint_variants WHERE endpoint_key = ? ORDER BY role, position",
            (name_key(str(name)),),
        ):
            variants[str(variant_row[0])].append(deployed_variant(variant_row[1:]))
        pending = None
        if isinstance(pending_text, str):
            document = decode(pending_text)
            pending = PendingDeployment(
                endpoint_config_name=str(document["EndpointConfigName"]),
                generation=stored_int(document["Generation"]),
                start_time=stored_float(document["StartTime"]),
                variants=tuple(variants["pending"]),
                data_capture=optional_mapping(document.get("DataCapture")),
            )
        return EndpointRecord(
            name=str(name),
            status=EndpointStatus(str(status)),
            endpoint_config_name=str(config_name),
            generation=stored_int(generation),
            creation_time=stored_float(created),
            last_modified_time=stored_float(modified),
            variants=tuple(variants["live"]),
            data_capture=decode(data_capture) if isinstance(data_capture, str) else None,
            deployment_config=(
                decode(deployment_config) if isinstance(deployment_config, str) else None
            ),
            failure_reason=failure_reason if isinstance(failure_reason, str) else None,
            pending=pending,
            tags=decode_tags(tags_text),
        )


_ENDPOINT_COLUMNS = (
    "name, status, failure_reason, endpoint_config_name, generation, creation_time, "
    "last_modified_time, data_capture, deployment_config, pending, tags"
)


#: The table of each kind of resource (every one keeps its tags in a `tags` column).
_TAGGED_TABLES = {
    ResourceKind.MODEL: "models",
    ResourceKind.ENDPOINT_CONFIG: "endpoint_configs",
    ResourceKind.ENDPOINT: "endpoints",
}
