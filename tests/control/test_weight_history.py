"""Each endpoint's weight history: recorded when the router gets weights, bounded, deleted with
the endpoint, migrated into older state files, served at GET /splitserve/endpoints/<n>/weights."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve import app as gateway_app
from splitserve.config import WEIGHT_HISTORY_LIMIT, Settings
from splitserve.control.models import EndpointRecord, EndpointStatus
from splitserve.control.service import ControlService
from splitserve.control.store import SCHEMA_VERSION, StateFileError, Store, WeightChange
from splitserve.errors import DeploymentError, ValidationException
from splitserve.wiring import keys
from splitserve.wiring.boundary import ErrorBoundary, Plane
from splitserve.wiring.replicas import ControllerSlot
from tests.control.conftest import (
    RecordingDeployer,
    create_config,
    open_service,
    two_variant_endpoint,
    variant,
)


def _history(changes: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    return [
        (change["Cause"], {w["VariantName"]: w["Weight"] for w in change["Weights"]})
        for change in changes["WeightChanges"]
    ]


async def _set_weights(service: ControlService, a: float, b: float, **extra: int) -> None:
    await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "A", "DesiredWeight": a, **extra},
                {"VariantName": "B", "DesiredWeight": b},
            ],
        },
    )
    await service.settle()


async def test_every_change_the_router_gets_is_recorded_with_its_cause(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    service = await open_service(settings, deployer)
    await two_variant_endpoint(service, settings)
    await _set_weights(service, 1, 3)
    await create_config(service, "ab-cfg-2", [variant("A", "m1", 2.0), variant("B", "m2", 1.0)])
    await service.dispatch(
        "UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg-2"}
    )
    await service.settle()
    history: dict[str, Any] = await service.weight_history("AB")  # names are case-insensitive
    assert history["EndpointName"] == "ab"
    assert _history(history) == [
        ("CreateEndpoint", {"A": 1.0, "B": 1.0}),
        ("UpdateEndpointWeightsAndCapacities", {"A": 1.0, "B": 3.0}),
        ("UpdateEndpoint", {"A": 2.0, "B": 1.0}),
    ]
    times = [change["Time"] for change in history["WeightChanges"]]
    assert times == sorted(times)
    assert history["CreationTime"] <= times[0]

    # A restart brings the endpoint back with its weights: recorded, since they were given again.
    await service.close()
    restarted = await open_service(settings, RecordingDeployer())
    try:
        await restarted.settle()
        assert _history(await restarted.weight_history("ab"))[-1] == (
            "GatewayRestart",
            {"A": 2.0, "B": 1.0},
        )
    finally:
        await restarted.close()


async def test_a_failed_scaling_records_the_roll_back(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    deployer.fail_next("scale", DeploymentError("no room"))
    await _set_weights(service, 1, 3, DesiredInstanceCount=2)
    assert _history(await service.weight_history("ab"))[1:] == [
        ("UpdateEndpointWeightsAndCapacities", {"A": 1.0, "B": 3.0}),
        ("RollBack", {"A": 1.0, "B": 1.0}),
    ]


async def test_refused_weights_are_not_recorded(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    deployer.fail_next("set_weights", DeploymentError("router gone"))
    with pytest.raises(ValidationException, match="could not be applied"):
        await _set_weights(service, 1, 3)
    assert _history(await service.weight_history("ab")) == [
        ("CreateEndpoint", {"A": 1.0, "B": 1.0})
    ]


async def test_a_failed_create_has_no_weights(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    deployer.fail_next("deploy", DeploymentError("no image"))
    await two_variant_endpoint(service, settings)
    assert _history(await service.weight_history("ab")) == []


async def test_unknown_endpoint_and_deleted_endpoint_have_no_history(
    service: ControlService, settings: Settings
) -> None:
    with pytest.raises(ValidationException, match='Could not find endpoint "arn:aws:sagemaker:'):
        await service.weight_history("nope")
    await two_variant_endpoint(service, settings)
    await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    await service.settle()
    with pytest.raises(ValidationException, match="Could not find endpoint"):
        await service.weight_history("ab")
    # A new endpoint of the same name starts its own history.
    await service.dispatch("CreateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"})
    await service.settle()
    assert [c for c, _ in _history(await service.weight_history("ab"))] == ["CreateEndpoint"]


def _change(index: int) -> WeightChange:
    return WeightChange(float(index), "UpdateEndpointWeightsAndCapacities", (("A", float(index)),))


def test_history_is_bounded_per_endpoint_and_deleted_with_it(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.sqlite3")
    try:
        store.put_endpoint(EndpointRecord("ab", EndpointStatus.IN_SERVICE, "cfg", 1, 1.0, 1.0, ()))
        store.add_weight_change("other", _change(0))
        for index in range(WEIGHT_HISTORY_LIMIT + 5):
            store.add_weight_change("ab", _change(index))
        kept = store.weight_history("AB")
        assert len(kept) == WEIGHT_HISTORY_LIMIT
        assert kept[0] == _change(5)  # the oldest went first
        assert kept[-1] == _change(WEIGHT_HISTORY_LIMIT + 4)
        # put_endpoint replaces the endpoint's row: its history stays.
        store.put_endpoint(EndpointRecord("ab", EndpointStatus.UPDATING, "cfg", 1, 1.0, 2.0, ()))
        assert len(store.weight_history("ab")) == WEIGHT_HISTORY_LIMIT
        assert store.delete_endpoint("ab")
        assert store.weight_history("ab") == []
        assert store.weight_history("other") == [_change(0)]
    finally:
        store.close()


#: The schema version 2 wrote (frozen: that is what files of that version hold).
_VERSION_2 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE models (name_key TEXT PRIMARY KEY, name TEXT NOT NULL, creation_time REAL NOT NULL,
    document TEXT NOT NULL);
CREATE TABLE endpoint_configs (name_key TEXT PRIMARY KEY, name TEXT NOT NULL,
    creation_time REAL NOT NULL, document TEXT NOT NULL);
CREATE TABLE endpoints (name_key TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    failure_reason TEXT, endpoint_config_name TEXT NOT NULL, generation INTEGER NOT NULL,
    creation_time REAL NOT NULL, last_modified_time REAL NOT NULL, data_capture TEXT,
    deployment_config TEXT, pending TEXT, tags TEXT);
CREATE TABLE endpoint_variants (
    endpoint_key TEXT NOT NULL REFERENCES endpoints (name_key) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('live', 'pending')), position INTEGER NOT NULL,
    variant_name TEXT NOT NULL, current_weight REAL NOT NULL, desired_weight REAL NOT NULL,
    current_instance_count INTEGER NOT NULL, desired_instance_count INTEGER NOT NULL,
    deployed_time REAL, status TEXT, status_message TEXT, status_start_time REAL,
    spec TEXT NOT NULL, PRIMARY KEY (endpoint_key, role, position));
INSERT INTO schema_version (version) VALUES (2);
INSERT INTO endpoints VALUES ('ab', 'ab', 'InService', NULL, 'cfg', 1, 1.0, 2.0, NULL, NULL,
    NULL, NULL);
"""


def test_a_version_2_file_is_migrated_with_an_empty_history(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    connection = sqlite3.connect(path)
    try:
        connection.executescript(_VERSION_2)
        connection.commit()
    finally:
        connection.close()
    migrated = Store.open(path)
    try:
        record = EndpointRecord("ab", EndpointStatus.IN_SERVICE, "cfg", 1, 1.0, 2.0, ())
        assert migrated.get_endpoint("ab") == record
        assert migrated.weight_history("ab") == []
        migrated.add_weight_change("ab", _change(1))
        assert migrated.weight_history("ab") == [_change(1)]
        version = migrated.database.query("SELECT version FROM schema_version")
        assert version == [(SCHEMA_VERSION,)]
    finally:
        migrated.close()


def test_a_damaged_history_row_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = Store.open(path)
    store.add_weight_change("ab", _change(1))
    store.close()
    connection = sqlite3.connect(path)
    try:
        connection.execute('UPDATE endpoint_weights SET weights = \'{"A": "heavy"}\'')
        connection.commit()
    finally:
        connection.close()
    with pytest.raises(StateFileError, match=r"weight history of endpoint 'ab'.*not a number"):
        Store.open(path)


async def test_http_route_serves_the_history_and_refuses_unknown_endpoints(
    service: ControlService, settings: Settings
) -> None:
    await two_variant_endpoint(service, settings)
    app = web.Application()
    app[keys.CONTROLLER] = ControllerSlot(control=service)
    app.router.add_routes(
        ErrorBoundary(Plane.CONTROL, settings.max_payload_bytes).routes(
            [web.get("/splitserve/endpoints/{endpoint}/weights", gateway_app.weights)]
        )
    )
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/splitserve/endpoints/ab/weights")
        assert response.status == 200
        assert _history(await response.json()) == [("CreateEndpoint", {"A": 1.0, "B": 1.0})]
        response = await client.get("/splitserve/endpoints/nope/weights")
        assert response.status == 400
        body = await response.json(content_type=None)
        assert body["__type"] == "ValidationException"
        assert "Could not find endpoint" in body["Message"]
