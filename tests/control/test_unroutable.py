"""The control service tells the deployer which endpoints exist without a live generation: pending
ones (being created, or redeployed after a restart) and failed ones with their FailureReason, so
the data plane answers a retryable 503 or the reason instead of "not found"."""

from __future__ import annotations

import asyncio

from splitserve.config import Settings
from splitserve.errors import DeploymentError
from tests.control.conftest import RecordingDeployer, describe, open_service, two_variant_endpoint


async def test_a_new_endpoint_is_pending_before_its_deployment_starts(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    service = await open_service(settings, deployer)
    try:
        deployer.hold("deploy")
        creating = asyncio.ensure_future(two_variant_endpoint(service, settings))
        await deployer.entered("deploy")
        assert deployer.unroutable == {"ab": None}
        deployer.release("deploy")
        await creating
        assert (await describe(service, "ab"))["EndpointStatus"] == "InService"
    finally:
        await service.close()


async def test_a_failed_deployment_hands_its_reason_to_the_deployer(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    service = await open_service(settings, deployer)
    try:
        deployer.fail_next("deploy", DeploymentError("CapacityError: " + "x" * 2000))
        await two_variant_endpoint(service, settings)
        reason = (await describe(service, "ab"))["FailureReason"]
        assert len(reason) == 1024
        assert deployer.unroutable == {"ab": reason}
    finally:
        await service.close()


async def test_after_a_restart_every_endpoint_is_announced_before_it_is_redeployed(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings, "live")
    deployer.fail_next("deploy", DeploymentError("no CPUs left"))
    await two_variant_endpoint(first, settings, "broken")
    await first.close()

    redeployer = RecordingDeployer()
    redeployer.hold("deploy")
    second = await open_service(settings, redeployer)
    try:
        await redeployer.entered("deploy")
        assert redeployer.unroutable == {"live": None, "broken": "no CPUs left"}
        assert redeployer.methods("broken") == []  # a Failed endpoint is not redeployed
        redeployer.release("deploy")
        await second.settle()
        assert (await describe(second, "live"))["EndpointStatus"] == "InService"
    finally:
        await second.close()
