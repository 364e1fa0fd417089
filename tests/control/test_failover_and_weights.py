"""The `splitserve:failover` tag, tags in the state file, weight-only updates done at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from splitserve.config import Settings
from splitserve.control.models import EndpointRecord, EndpointStatus
from splitserve.control.service import ControlService
from splitserve.control.store import SCHEMA_VERSION, Store
from splitserve.errors import ValidationException
from tests.control.conftest import (
    RecordingDeployer,
    create_config,
    describe,
    open_service,
    two_variant_endpoint,
    variant,
    variants_by_name,
)

_FAILOVER = [{"Key": "splitserve:failover", "Value": "true"}, {"Key": "team", "Value": "ml"}]


async def test_failover_tag_reaches_the_plan_and_survives_a_restart(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)  # untagged: failover off
    await create_config(service, "fo-cfg", [variant("A", "m1"), variant("B", "m2")])
    await service.dispatch(
        "CreateEndpoint", {"EndpointName": "fo", "EndpointConfigName": "fo-cfg", "Tags": _FAILOVER}
    )
    await service.settle()
    assert {plan.endpoint_name: plan.failover for plan in deployer.plans} == {
        "ab": False,
        "fo": True,
    }
    await service.dispatch("UpdateEndpoint", {"EndpointName": "fo", "EndpointConfigName": "ab-cfg"})
    await service.settle()
    assert deployer.plans[-1].failover  # the tag belongs to the endpoint, not its configuration

    await service.close()
    redeployer = RecordingDeployer()
    again = await open_service(settings, redeployer)
    try:
        await again.settle()
        assert {plan.endpoint_name: plan.failover for plan in redeployer.plans} == {
            "ab": False,
            "fo": True,
        }
    finally:
        await again.close()


@pytest.mark.parametrize("value", ["yes", "1", "", "on"])
async def test_failover_tag_value_must_be_true_or_false(
    service: ControlService, settings: Settings, deployer: RecordingDeployer, value: str
) -> None:
    await two_variant_endpoint(service, settings)
    with pytest.raises(ValidationException, match="splitserve:failover must have the value"):
        await service.dispatch(
            "CreateEndpoint",
            {
                "EndpointName": "typo",
                "EndpointConfigName": "ab-cfg",
                "Tags": [{"Key": "splitserve:failover", "Value": value}],
            },
        )
    listed = (await service.dispatch("ListEndpoints", {}))["Endpoints"]
    assert isinstance(listed, list)
    assert [endpoint["EndpointName"] for endpoint in listed] == ["ab"]
    await service.dispatch(
        "CreateEndpoint",
        {
            "EndpointName": "off",
            "EndpointConfigName": "ab-cfg",
            "Tags": [{"Key": "splitserve:failover", "Value": "False"}],
        },
    )
    await service.settle()
    assert (await describe(service, "off"))["EndpointStatus"] == "InService"
    assert deployer.live["off"].failover is False


async def test_weight_only_update_is_done_before_the_call_answers(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    for weights in ((1.0, 3.0), (2.0, 6.0), (5.0, 1.0)):
        # Each is accepted at once: the previous one left the endpoint InService.
        await service.dispatch(
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ab",
                "DesiredWeightsAndCapacities": [
                    {"VariantName": "A", "DesiredWeight": weights[0]},
                    {"VariantName": "B", "DesiredWeight": weights[1]},
                ],
            },
        )
        described = await describe(service, "ab")
        assert described["EndpointStatus"] == "InService"
        summaries = variants_by_name(described)
        assert {n: (v["CurrentWeight"], v["DesiredWeight"]) for n, v in summaries.items()} == {
            "A": (weights[0], weights[0]),
            "B": (weights[1], weights[1]),
        }
        assert not any("VariantStatus" in summary for summary in summaries.values())
        assert deployer.weights["ab"] == {"A": weights[0], "B": weights[1]}
    assert not any(method == "scale" for method, _ in deployer.methods())


def test_tags_round_trip_and_a_version_1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = Store.open(path)
    tagged = EndpointRecord(
        name="fo",
        status=EndpointStatus.IN_SERVICE,
        endpoint_config_name="cfg",
        generation=1,
        creation_time=1.0,
        last_modified_time=2.0,
        variants=(),
        tags=(("splitserve:failover", "true"), ("team", "ml")),
    )
    untagged = EndpointRecord("plain", EndpointStatus.IN_SERVICE, "cfg", 1, 1.0, 2.0, ())
    store.put_endpoint(tagged)
    store.put_endpoint(untagged)
    assert store.get_endpoint("fo") == tagged
    assert tagged.failover
    assert not untagged.failover
    store.close()

    # The same file as version 1 wrote it: no tags column.
    connection = sqlite3.connect(path)
    try:
        connection.execute("ALTER TABLE endpoints DROP COLUMN tags")
        connection.execute("DROP TABLE endpoint_weights")
        connection.execute("ALTER TABLE models DROP COLUMN tags")
        connection.execute("ALTER TABLE endpoint_configs DROP COLUMN tags")
        connection.execute("UPDATE schema_version SET version = 1")
        connection.commit()
    finally:
        connection.close()
    migrated = Store.open(path)
    try:
        assert migrated.get_endpoint("fo") == EndpointRecord(
            "fo", EndpointStatus.IN_SERVICE, "cfg", 1, 1.0, 2.0, ()
        )
        migrated.put_endpoint(tagged)
        assert migrated.get_endpoint("fo") == tagged
        version = migrated.database.query("SELECT version FROM schema_version")
        assert version == [(SCHEMA_VERSION,)]
    finally:
        migrated.close()
