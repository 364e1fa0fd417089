"""Recovery with a deployer whose instances outlive the controller (Ray placement): each endpoint
comes back under its live generation, so the deployer adopts its running instances, and the
deployer is told first which generations are recovered (to stop anything else left running)."""

from __future__ import annotations

from dataclasses import replace

from splitserve.config import PlacementSettings, Settings
from splitserve.control.service import ControlService
from splitserve.control.store import Store
from tests.control.conftest import (
    INSTANCE_VCPUS,
    RecordingDeployer,
    create_config,
    create_model,
    describe,
    open_service,
    state_file,
    two_variant_endpoint,
    variant,
    write_artifact,
)


async def test_an_in_service_endpoint_is_recovered_under_its_live_generation(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings)
    await first.close()
    adopter = RecordingDeployer(adopting=True)
    second = await open_service(settings, adopter)
    try:
        await second.settle()
        assert (await describe(second, "ab"))["EndpointStatus"] == "InService"
        assert [call[0] for call in adopter.calls][:2] == ["recovering", "deploy"]
        assert adopter.calls[0][2] == {"ab": 1}
        (plan,) = adopter.plans
        assert plan.generation == 1
    finally:
        await second.close()


async def test_an_interrupted_update_is_abandoned_and_its_generation_not_kept(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings)
    await create_config(first, "green", [variant("G", "m1")])
    deployer.hold("deploy")
    await first.dispatch("UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "green"})
    await deployer.entered("deploy")
    await first.close()
    adopter = RecordingDeployer(adopting=True)
    second = await open_service(settings, adopter)
    try:
        await second.settle()
        described = await describe(second, "ab")
        assert described["EndpointStatus"] == "InService"
        assert described["EndpointConfigName"] == "ab-cfg"
        # Blue (generation 1) is adopted; green's generation 2 is not among those kept.
        assert adopter.calls[0] == ("recovering", "", {"ab": 1})
        assert adopter.plans[0].generation == 1
    finally:
        await second.close()


async def test_on_a_ray_cluster_the_hosts_cpus_set_no_vcpu_budget(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    # 18 vCPUs is over 4 host CPUs x 4, but on a cluster the nodes' room is Ray's to check.
    on_ray = replace(settings, placement=PlacementSettings(backend="ray"))
    service = await open_service(on_ray, deployer)
    try:
        write_artifact(on_ray)
        await create_model(service, "m1")
        await create_config(
            service,
            "wide",
            [
                variant("A", "m1", count=3, instance_type="ml.m5.xlarge"),
                variant("B", "m1", count=3, instance_type="ml.m5.large"),
            ],
        )
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "wide"}
        )
        await service.settle()
        assert (await describe(service, "e"))["EndpointStatus"] == "InService"
    finally:
        await service.close()


async def test_a_takeover_that_adopts_keeps_routing_the_endpoint_until_it_is_activated(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    await two_variant_endpoint(first, settings)
    await first.close()
    adopter = RecordingDeployer(adopting=True)
    adopter.hold("deploy")
    second = ControlService(
        settings, Store.open(state_file(settings)), adopter, instance_vcpus=INSTANCE_VCPUS
    )
    await second.start(takeover=True)
    try:
        await adopter.entered("deploy")
        # Never marked pending: the replicas keep routing to the running instances.
        assert "ab" not in adopter.unroutable
        assert (await describe(second, "ab"))["EndpointStatus"] == "InService"
        adopter.release("deploy")
        await second.settle()
        assert "ab" not in adopter.unroutable
        assert adopter.live["ab"].generation == 1
    finally:
        await second.close()
