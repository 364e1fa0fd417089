"""The control store over both backends (SQLite file and PostgreSQL): the same round trips, the
same refusals, and writes that stay atomic when two stores (two replicas) share one database.

The SQLite-only checks (file modes, damaged files, migrations of old files) are test_store.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from splitserve.config import WEIGHT_HISTORY_LIMIT, DatabaseSettings
from splitserve.control import statedb
from splitserve.control.models import (
    DeployedVariant,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    ModelRecord,
    PendingDeployment,
    ResourceKind,
    VariantStatusEntry,
)
from splitserve.control.statefile import MIGRATIONS as SQLITE_MIGRATIONS
from splitserve.control.store import SCHEMA_VERSION, StateFileError, Store, WeightChange
from splitserve.database import DatabaseUnavailable, open_database
from tests.support.postgres import PostgresServer

#: Short timeouts: the tests of a stopped server wait for them.
_QUICK = DatabaseSettings(connect_timeout_seconds=1.0, statement_timeout_seconds=2.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new state database's URL: a file the store creates, or a database on the server."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.sqlite3"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(state_url: str) -> Iterator[Store]:
    """The store over `state_url`, closed at the end."""
    opened = Store.open(state_url, _QUICK)
    try:
        yield opened
    finally:
        opened.close()


def _variant(name: str, **changes: object) -> DeployedVariant:
    values: dict[str, object] = {
        "variant_name": name,
        "model_name": "m1",
        "image": "local/xgboost:1.7-1",
        "model_data_url": "s3://bucket/model.tar.gz",
        "environment": {"A": "1"},
        "instance_type": "ml.m5.large",
        "routing_strategy": None,
        "container_startup_timeout_seconds": 120,
        "current_weight": 0.1,
        "desired_weight": 2.5,
        "current_instance_count": 1,
        "desired_instance_count": 3,
    }
    values.update(changes)
    return DeployedVariant(**values)  # type: ignore[arg-type]


def _endpoint(name: str = "Ep", status: EndpointStatus = EndpointStatus.UPDATING) -> EndpointRecord:
    return EndpointRecord(
        name=name,
        status=status,
        endpoint_config_name="cfg",
        generation=4,
        creation_time=1_700_000_000.123456,
        last_modified_time=1_700_000_001.5,
        variants=(
            _variant("A", deployed_time=3.5),
            _variant("B", status=VariantStatusEntry("Updating", "Scaling", 4.0)),
        ),
        data_capture={"DestinationS3Uri": "s3://c/x"},
        deployment_config={"BlueGreenUpdatePolicy": {}},
        failure_reason="earlier",
        pending=PendingDeployment(
            "cfg2", 5, 4.5, (_variant("C", routing_strategy="RANDOM"),), None
        ),
        tags=(("team", "ml"),),
    )


def test_round_trips_and_reopens(state_url: str, store: Store) -> None:
    model = ModelRecord("Model-1", 1.5, {"PrimaryContainer": {"Image": "x"}}, (("k", "v"),))
    assert store.insert_model(model)
    assert not store.insert_model(ModelRecord("model-1", 2.0, {}))
    assert store.get_model("MODEL-1") == model
    config = EndpointConfigRecord("cfg", 2.0, {"ProductionVariants": [{"VariantName": "A"}]})
    assert store.insert_endpoint_config(config)
    assert not store.insert_endpoint_config(config)
    endpoint = _endpoint()
    assert store.insert_endpoint(endpoint)
    assert not store.insert_endpoint(endpoint)
    store.close()

    again = Store.open(state_url, _QUICK)
    try:
        assert again.list_models() == [model]
        assert again.list_endpoint_configs() == [config]
        assert again.get_endpoint("ep") == endpoint  # floats keep every digit (not 4-byte REAL)
        done = _endpoint(status=EndpointStatus.IN_SERVICE)
        again.put_endpoint(done)
        assert again.list_endpoints() == [done]
        assert again.delete_endpoint("EP")
        assert not again.delete_endpoint("EP")
        assert again.database.query("SELECT COUNT(*) FROM endpoint_variants") == [(0,)]
        assert again.delete_model("model-1")
        assert again.delete_endpoint_config("CFG")
        assert again.get_model("model-1") is None
    finally:
        again.close()


def test_tags_change_in_one_transaction(store: Store) -> None:
    assert store.insert_model(ModelRecord("m", 1.0, {}))
    assert store.change_tags(ResourceKind.MODEL, "m", lambda tags: (*tags, ("a", "1"))) == (
        (),
        (("a", "1"),),
    )

    def refuse(tags: object) -> tuple[tuple[str, str], ...]:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        store.change_tags(ResourceKind.MODEL, "m", refuse)
    assert store.get_tags(ResourceKind.MODEL, "M") == (("a", "1"),)
    assert store.change_tags(ResourceKind.ENDPOINT, "none", lambda tags: tags) is None


def test_weight_history_is_bounded_and_deleted_with_its_endpoint(store: Store) -> None:
    store.put_endpoint(_endpoint("ab"))
    for index in range(WEIGHT_HISTORY_LIMIT + 3):
        store.add_weight_change("ab", WeightChange(float(index), "UpdateEndpoint", (("A", 0.5),)))
    kept = store.weight_history("AB")
    assert len(kept) == WEIGHT_HISTORY_LIMIT
    assert kept[0].time == 3.0
    assert store.delete_endpoint("ab")
    assert store.weight_history("ab") == []


def test_two_stores_on_one_database_insert_an_endpoint_once(state_url: str, store: Store) -> None:
    """Two replicas' stores race to create one endpoint (and one model): exactly one wins each."""
    other = Store.open(state_url, _QUICK)
    barrier = threading.Barrier(2)

    def create(replica: Store, index: int) -> tuple[bool, bool]:
        barrier.wait()
        model = replica.insert_model(ModelRecord("m", float(index), {}))
        return model, replica.insert_endpoint(_endpoint("ep"))

    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(create, (store, other), (0, 1)))
        assert sorted(result[0] for result in results) == [False, True]
        assert sorted(result[1] for result in results) == [False, True]
        assert len(other.list_endpoints()) == 1
    finally:
        other.close()


def test_a_store_given_a_database_leaves_it_open(postgres_url: str) -> None:
    """Replicas share one pool among their stores: closing a store must not close it."""
    database = open_database(postgres_url, _QUICK)
    try:
        Store.open(database).close()
        assert database.query("SELECT COUNT(*) FROM models") == [(0,)]
    finally:
        database.close()


def test_postgres_schema_has_every_version_step() -> None:
    """A new SQLite step must come with its PostgreSQL step (statedb.MIGRATIONS)."""
    assert set(range(statedb.FIRST_VERSION, SCHEMA_VERSION)) <= set(statedb.MIGRATIONS)
    assert set(range(1, SCHEMA_VERSION)) <= set(SQLITE_MIGRATIONS)


def test_a_newer_postgres_schema_is_refused_untouched(postgres_url: str) -> None:
    Store.open(postgres_url, _QUICK).close()
    database = open_database(postgres_url, _QUICK)
    try:
        with database.transaction(write=True) as transaction:
            transaction.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        with pytest.raises(StateFileError, match=r"has schema version \d+, newer than"):
            Store.open(database)
        with database.transaction(write=True) as transaction:
            transaction.execute("DELETE FROM schema_version")
        with pytest.raises(StateFileError, match="schema_version table is empty"):
            Store.open(database)
    finally:
        database.close()


def test_a_postgres_database_with_foreign_tables_of_our_names_is_refused(
    postgres_url: str,
) -> None:
    database = open_database(postgres_url, _QUICK)
    try:
        with database.transaction(write=True) as transaction:
            transaction.execute("CREATE TABLE endpoints (id INTEGER)")
        with pytest.raises(StateFileError, match="cannot be prepared") as refused:
            Store.open(database)
        assert "left untouched" in refused.value.message
        assert database.query("SELECT to_regclass('schema_version') IS NULL") == [(True,)]
    finally:
        database.close()


def test_a_damaged_postgres_row_stops_start_up(postgres_url: str) -> None:
    store = Store.open(postgres_url, _QUICK)
    store.add_weight_change("ab", WeightChange(1.0, "UpdateEndpoint", (("A", 1.0),)))
    with store.database.transaction(write=True) as transaction:
        transaction.execute('UPDATE endpoint_weights SET weights = \'{"A": "heavy"}\'')
    store.close()
    with pytest.raises(StateFileError, match=r"state database postgresql://.* is corrupt"):
        Store.open(postgres_url, _QUICK)


def test_a_stopped_server_is_unavailable_then_the_store_works_again(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = Store.open(postgres_url, _QUICK)
    try:
        assert store.insert_model(ModelRecord("m", 1.0, {}))
        postgres_server.stop()
        try:
            with pytest.raises(DatabaseUnavailable) as refused:
                store.get_model("m")
            assert "try again" in refused.value.message
            with pytest.raises(DatabaseUnavailable):
                store.insert_model(ModelRecord("n", 1.0, {}))
        finally:
            postgres_server.start()
        # The pool replaces the connections the restart broke.
        assert store.get_model("m") == ModelRecord("m", 1.0, {})
        assert store.insert_model(ModelRecord("n", 1.0, {}))
    finally:
        store.close()
