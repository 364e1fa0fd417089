"""The SQLite state file: round trips, and refusal (with no write at all) of files it cannot use."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from splitserve import cli
from splitserve.config import STATE_DIRECTORY_MODE, STATE_FILE_MODE
from splitserve.control.models import (
    DeployedVariant,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    ModelRecord,
    PendingDeployment,
    VariantStatusEntry,
)
from splitserve.control.store import SCHEMA_VERSION, StateFileError, Store
from splitserve.wiring import edge


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
        "current_weight": 1.0,
        "desired_weight": 2.5,
        "current_instance_count": 1,
        "desired_instance_count": 3,
    }
    values.update(changes)
    return DeployedVariant(**values)  # type: ignore[arg-type]


def test_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.sqlite3"
    store = Store.open(path)
    model = ModelRecord("Model-1", 1.5, {"PrimaryContainer": {"Image": "x"}})
    assert store.insert_model(model)
    assert not store.insert_model(ModelRecord("model-1", 2.0, {}))
    assert store.get_model("MODEL-1") == model
    config = EndpointConfigRecord("cfg", 2.0, {"ProductionVariants": [{"VariantName": "A"}]})
    assert store.insert_endpoint_config(config)
    endpoint = EndpointRecord(
        name="Ep",
        status=EndpointStatus.UPDATING,
        endpoint_config_name="cfg",
        generation=4,
        creation_time=3.0,
        last_modified_time=4.0,
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
    )
    assert store.insert_endpoint(endpoint)
    assert not store.insert_endpoint(endpoint)
    store.close()
    store.close()  # idempotent

    again = Store.open(path)
    try:
        assert again.get_endpoint("ep") == endpoint
        assert again.list_endpoint_configs() == [config]
        assert again.list_models() == [model]
        done = EndpointRecord(
            name="Ep",
            status=EndpointStatus.IN_SERVICE,
            endpoint_config_name="cfg2",
            generation=5,
            creation_time=3.0,
            last_modified_time=6.0,
            variants=(_variant("C"),),
        )
        again.put_endpoint(done)
        assert again.list_endpoints() == [done]
        assert again.delete_endpoint("EP")
        assert not again.delete_endpoint("EP")
        variants = again.database.query("SELECT COUNT(*) FROM endpoint_variants")[0]
        assert variants == (0,)  # deleted with their endpoint
        assert again.delete_model("model-1")
        assert again.delete_endpoint_config("cfg")
        assert again.get_model("model-1") is None
    finally:
        again.close()


def test_new_file_uses_wal_full_sync_and_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    Store.open(path).close()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
    finally:
        connection.close()


def test_a_path_spelled_with_a_leading_double_slash_opens(tmp_path: Path) -> None:
    # //tmp/x is /tmp/x to POSIX; the file: URI SQLite opens must not take "tmp" for a host.
    Store.open(Path(f"/{tmp_path}/state.sqlite3")).close()
    Store.open(tmp_path / "state.sqlite3").close()


def _refused(path: Path, expected: str) -> None:
    before = path.read_bytes()
    neighbours = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(StateFileError) as refused:
        Store.open(path)
    assert refused.value.message.startswith(f"state file {path} ")
    assert expected in refused.value.message
    assert refused.value.message.endswith("; it was left untouched")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == neighbours


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"name,weight\nA,1\n" * 100)
    _refused(path, "is corrupt: it is not an SQLite database")


def test_a_damaged_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = Store.open(path)
    for index in range(200):
        store.insert_model(ModelRecord(f"m{index}", 1.0, {"padding": "x" * 500}))
    store.close()
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # wreck a page after the header
    path.write_bytes(bytes(data))
    _refused(path, "is corrupt: ")


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (text TEXT)")
    connection.commit()
    connection.close()
    _refused(path, "is corrupt: it is an SQLite database but not a splitserve state file")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    Store.open(path).close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    connection.commit()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    _refused(path, f"has schema version {SCHEMA_VERSION + 1}, newer than this splitserve's")


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.mkdir()  # a directory where the file should be: it cannot be read
    with pytest.raises(StateFileError) as refused:
        Store.open(path)
    assert refused.value.message.startswith(f"state file {path} cannot be read: ")


def test_a_new_file_is_private_and_so_is_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    store = Store.open(path)
    try:
        store.insert_model(ModelRecord("m1", 1.0, {"PrimaryContainer": {"Image": "x"}}))
        for file in path.parent.iterdir():  # the file and its -wal and -shm files
            assert stat.S_IMODE(file.stat().st_mode) == STATE_FILE_MODE, file
    finally:
        store.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == STATE_DIRECTORY_MODE
    assert sorted(p.name for p in path.parent.iterdir())[0] == "state.sqlite3"
    assert not path.with_name("state.sqlite3.new").exists()


def test_an_existing_file_open_to_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    Store.open(path).close()
    os.chmod(path, 0o644)
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == STATE_FILE_MODE


def test_a_leftover_from_a_crashed_first_start_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.with_name("state.sqlite3.new").write_bytes(b"")  # a crash before the schema was written
    store = Store.open(path)
    try:
        assert store.list_models() == []
    finally:
        store.close()
    assert not path.with_name("state.sqlite3.new").exists()


def test_an_empty_file_is_refused_not_taken_for_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = Store.open(path)
    store.insert_model(ModelRecord("m1", 1.0, {}))
    store.close()
    path.write_bytes(b"")  # truncated by something else: the models are lost
    _refused(path, "is corrupt: it is empty (0 bytes)")


def _edit(path: Path, statement: str) -> None:
    """Change the file behind the store's back, as an operator with sqlite3 would."""
    connection = sqlite3.connect(path)
    connection.execute(statement)
    connection.commit()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def _stored_endpoint(path: Path) -> None:
    store = Store.open(path)
    store.insert_model(ModelRecord("m1", 1.0, {"PrimaryContainer": {"Image": "x"}}))
    store.insert_endpoint(
        EndpointRecord(
            name="ep",
            status=EndpointStatus.IN_SERVICE,
            endpoint_config_name="cfg",
            generation=1,
            creation_time=1.0,
            last_modified_time=1.0,
            variants=(_variant("A"),),
            data_capture=None,
            deployment_config=None,
        )
    )
    store.close()


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE endpoints SET status = 'Sleeping'", "endpoint 'ep' holds an invalid value"),
        ("UPDATE endpoints SET generation = 'two'", "endpoint 'ep': a stored integer"),
        ("UPDATE endpoint_variants SET spec = '{}'", "endpoint 'ep' holds an invalid value"),
        ("UPDATE endpoint_variants SET spec = 'not json'", "endpoint 'ep': a stored document"),
        ("UPDATE endpoints SET tags = '[1]'", "endpoint 'ep': stored tags"),
        ("UPDATE models SET document = '[]'", "model 'm1': a stored document is not"),
        ("UPDATE models SET creation_time = 'noon'", "model 'm1': a stored number"),
        ('UPDATE models SET tags = \'{"a": "b"}\'', "model 'm1': stored tags are not a list"),
        ("UPDATE models SET tags = 'x'", "model 'm1': stored tags are not JSON"),
    ],
)
def test_a_row_with_an_invalid_value_is_refused_cleanly(
    tmp_path: Path, statement: str, expected: str
) -> None:
    path = tmp_path / "state.sqlite3"
    _stored_endpoint(path)
    _edit(path, statement)
    _refused(path, f"is corrupt: {expected}")


def test_serve_creates_the_state_directory_private_before_the_model_store_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[object] = []
    monkeypatch.setattr(edge, "run", lambda app, settings, printer: served.append(settings))
    args = cli.build_parser().parse_args(["serve", "--state-dir", str(tmp_path / "state")])
    assert cli.serve(cli.settings_from_args(args), insecure=False) == 0
    assert len(served) == 1
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == STATE_DIRECTORY_MODE
    assert (tmp_path / "state" / "models").is_dir()


def test_a_file_system_without_hard_links_still_gets_a_whole_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "state.sqlite3"
    store = Store.open(path)
    try:
        assert store.list_models() == []
    finally:
        store.close()
    assert stat.S_IMODE(path.stat().st_mode) == STATE_FILE_MODE
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "state.sqlite3"
    ]


def test_a_file_that_appears_while_the_new_one_is_built_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.sqlite3"
    real_link = os.link

    def someone_was_first(source: str, target: str) -> None:
        Path(target).write_bytes(b"theirs")
        real_link(source, target)

    monkeypatch.setattr(os, "link", someone_was_first)
    with pytest.raises(StateFileError) as refused:
        Store.open(path)
    assert refused.value.message.startswith(f"state file {path} cannot be created: ")
    assert path.read_bytes() == b"theirs"
    assert not path.with_name("state.sqlite3.new").exists()
