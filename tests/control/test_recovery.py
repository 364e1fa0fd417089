"""A new service over the same state directory brings the endpoints back without any client call."""

from __future__ import annotations

import pytest

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.errors import DeploymentError, ValidationException
from tests.control.conftest import (
    RecordingDeployer,
    create_config,
    create_model,
    describe,
    open_service,
    two_variant_endpoint,
    variant,
    variants_by_name,
)


async def _restart(
    service: ControlService, settings: Settings
) -> tuple[ControlService, RecordingDeployer]:
    await service.close()
    deployer = RecordingDeployer()
    return await open_service(settings, deployer), deployer


async def test_in_service_endpoint_comes_back_with_its_last_weights_and_counts(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings)
    await first.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "A", "DesiredWeight": 1, "DesiredInstanceCount": 3},
                {"VariantName": "B", "DesiredWeight": 3},
            ],
        },
    )
    await first.settle()
    # The configuration and a model may be gone: the endpoint keeps what it runs.
    await first.dispatch("DeleteEndpointConfig", {"EndpointConfigName": "ab-cfg"})
    await first.dispatch("DeleteModel", {"ModelName": "m1"})

    second, redeployer = await _restart(first, settings)
    try:
        await second.settle()
        described = await describe(second, "ab")
        assert described["EndpointStatus"] == "InService"
        summaries = variants_by_name(described)
        assert {
            n: (v["CurrentWeight"], v["CurrentInstanceCount"]) for n, v in summaries.items()
        } == {
            "A": (1.0, 3),
            "B": (3.0, 1),
        }
        (plan,) = redeployer.plans
        assert {v.variant_name: (v.weight, v.instance_count) for v in plan.variants} == {
            "A": (1.0, 3),
            "B": (3.0, 1),
        }
        assert plan.generation == 2
        assert [m for m, _ in redeployer.methods()] == ["deploy", "activate"]
        assert redeployer.live["ab"] is plan
    finally:
        await second.close()


async def test_recovery_shows_system_updating_until_it_serves(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings)
    await first.close()
    redeployer = RecordingDeployer()
    redeployer.hold("deploy")
    second = await open_service(settings, redeployer)
    try:
        await redeployer.entered("deploy")
        assert (await describe(second, "ab"))["EndpointStatus"] == "SystemUpdating"
        with pytest.raises(ValidationException, match="Cannot update in-progress endpoint"):
            await second.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
        redeployer.release("deploy")
        await second.settle()
        assert (await describe(second, "ab"))["EndpointStatus"] == "InService"
    finally:
        await second.close()


async def test_creating_endpoint_is_created_after_a_restart(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    deployer.hold("deploy")
    await two_variant_endpoint_without_waiting(first, settings)
    await deployer.entered("deploy")
    second, redeployer = await _restart(first, settings)
    try:
        assert (await describe(second, "ab"))["EndpointStatus"] == "Creating"
        await second.settle()
        assert (await describe(second, "ab"))["EndpointStatus"] == "InService"
        assert len(redeployer.plans) == 1
    finally:
        await second.close()


async def two_variant_endpoint_without_waiting(service: ControlService, settings: Settings) -> None:
    from tests.control.conftest import write_artifact

    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "ab-cfg", [variant("A", "m1"), variant("B", "m1")])
    await service.dispatch("CreateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"})


async def test_interrupted_blue_green_update_comes_back_on_blue(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings)
    await create_config(first, "green", [variant("G", "m1")])
    deployer.hold("deploy")
    await first.dispatch("UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "green"})
    await deployer.entered("deploy")
    second, redeployer = await _restart(first, settings)
    try:
        await second.settle()
        described = await describe(second, "ab")
        assert described["EndpointStatus"] == "InService"
        assert described["EndpointConfigName"] == "ab-cfg"
        assert set(variants_by_name(described)) == {"A", "B"}
        assert "PendingDeploymentSummary" not in described
        assert described["FailureReason"] == (
            'The update to endpoint configuration "green" was interrupted by a restart of the '
            'gateway; the endpoint was restored on "ab-cfg".'
        )
        assert redeployer.plans[0].generation == 3  # past blue's 1 and green's 2
    finally:
        await second.close()


async def test_failed_stays_failed_and_deleting_finishes(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    deployer.fail_next("deploy", DeploymentError("broken image"))
    await two_variant_endpoint(first, settings, endpoint="broken")
    await two_variant_endpoint(first, settings, endpoint="doomed")
    deployer.hold("remove")
    await first.dispatch("DeleteEndpoint", {"EndpointName": "doomed"})
    await deployer.entered("remove")
    second, redeployer = await _restart(first, settings)
    try:
        await second.settle()
        broken = await describe(second, "broken")
        assert broken["EndpointStatus"] == "Failed"
        assert broken["FailureReason"] == "broken image"
        with pytest.raises(ValidationException, match="Could not find endpoint"):
            await describe(second, "doomed")
        assert redeployer.methods() == [("remove", None)]
    finally:
        await second.close()
