"""The inference experiments' table on both state databases: records come back as written (the
stop request, the schedule, the step in progress), names are case-insensitive, and a damaged row
stops the start rather than a request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from splitserve.config import DatabaseSettings
from splitserve.control.experiment_store import (
    ExperimentRecord,
    ExperimentStatus,
    ExperimentStore,
    StopRequest,
)
from splitserve.control.store import StateFileError, Store

_QUICK = DatabaseSettings(connect_timeout_seconds=1.0, statement_timeout_seconds=2.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExperimentStore]:
    """The experiments' table in a new state database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/state.sqlite3"
    else:
        url = request.getfixturevalue("postgres_url")
    control = Store.open(url, _QUICK)
    try:
        experiments = ExperimentStore(control.database)
        experiments.prepare()
        experiments.prepare()  # a second start finds the table there
        yield experiments
    finally:
        control.close()


def _record(name: str = "Shadow-Test") -> ExperimentRecord:
    return ExperimentRecord(
        name=name,
        endpoint_name="ep",
        role_arn="arn:aws:iam::123456789012:role/SageMakerRole",
        status=ExperimentStatus.CREATED,
        creation_time=1.5,
        last_modified_time=2.5,
        schedule_start=10.0,
        schedule_end=20.0,
        model_variants=(
            {"VariantName": "A", "ModelName": "m1"},
            {"VariantName": "S", "ModelName": "m2"},
        ),
        shadow_mode_config={
            "SourceModelVariantName": "A",
            "ShadowModelVariants": [{"ShadowModelVariantName": "S", "SamplingPercentage": 30}],
        },
        description="a test",
        data_storage_config={"Destination": "s3://capture/x"},
        tags=(("team", "ml"),),
    )


def test_records_come_back_as_written(store: ExperimentStore) -> None:
    record = _record()
    assert store.insert(record)
    assert not store.insert(replace(record, name="shadow-TEST"))
    assert store.get("shadow-test") == record
    assert (record.source_variant, record.shadow_variant, record.sampling_percentage) == (
        "A",
        "S",
        30,
    )
    stopping = replace(
        record,
        status=ExperimentStatus.STOPPING,
        deploy_config="shadow-test-stop-0a1b2c3d",
        deploy_issued=True,
        stop=StopRequest(
            actions={"A": "Remove", "S": "Promote"},
            desired_variants=({"VariantName": "S", "ModelName": "m2"},),
            final_status=ExperimentStatus.CANCELLED,
            reason=None,
        ),
    )
    store.put(stopping)
    assert store.get("Shadow-Test") == stopping
    assert store.list() == [stopping]
    assert store.delete("SHADOW-test")
    assert not store.delete("shadow-test")
    assert store.get("shadow-test") is None


def test_a_damaged_row_stops_the_start(store: ExperimentStore) -> None:
    store.insert(_record())
    with store._database.transaction(write=True) as db:  # damage it behind the store's back
        db.execute("UPDATE inference_experiments SET document = ?", ('{"name": 1}',))
    with pytest.raises(StateFileError, match="an inference experiment this splitserve cannot read"):
        store.prepare()
