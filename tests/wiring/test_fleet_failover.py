"""The fleet deployer's `set_failover` over stand-in fleets (no worker processes): the live router
changes in place, a generation deployed from an older plan takes the newer setting, and removing
the endpoint forgets it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamAddress, UpstreamPool
from splitserve.control.deployer import DeploymentPlan, VariantPlan
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.registry import EndpointRegistry
from splitserve.wiring.fleet import FleetDeployer
from splitserve.workers.fleet import VariantDeployment
from splitserve.workers.instance import InstanceInfo


class _StandInFleet:
    """A variant's fleet that runs nothing: one instance, healthy, on a socket nobody opens."""

    def __init__(self, deployment: VariantDeployment, run_dir: Path) -> None:
        name = f"{deployment.endpoint_name}/{deployment.variant_name}/g{deployment.generation}/0"
        self._instance = InstanceInfo(
            name=name,
            variant_name=deployment.variant_name,
            address=UpstreamAddress.unix(str(run_dir / f"{deployment.generation}.sock")),
            cpus=(0,),
            pid=None,
            state="healthy",
            restarts=0,
            pipeline_depth=4,
        )

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def detach(self) -> None:
        """Nothing to let go of."""

    def instances(self) -> list[InstanceInfo]:
        """The one instance."""
        return [self._instance]


class _StandInSupervisor:
    """Makes stand-in fleets (what the deployer asks of the real supervisor to deploy)."""

    outlives_controller = False

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir

    def cpu_usage(self) -> dict[int, int]:
        return {}

    def fleet(self, deployment: VariantDeployment) -> _StandInFleet:
        return _StandInFleet(deployment, self._run_dir)


def _plan(generation: int, *, failover: bool) -> DeploymentPlan:
    return DeploymentPlan(
        endpoint_name="fo",
        endpoint_config_name="fo-cfg",
        generation=generation,
        variants=(
            VariantPlan(
                variant_name="A",
                model_name="m",
                image="local/x:1",
                model_data=None,
                environment={},
                instance_type="ml.m5.large",
                instance_count=1,
                weight=1.0,
                routing_strategy="RANDOM",
            ),
        ),
        data_capture=None,
        failover=failover,
    )


def _fails_over(registry: EndpointRegistry) -> bool:
    """Whether the endpoint's live router fails over now."""
    live = registry.get("fo")
    assert live is not None
    return live.router.failover


@pytest.fixture
def deployer(tmp_path: Path) -> Iterator[tuple[FleetDeployer, EndpointRegistry]]:
    registry = EndpointRegistry()
    deployer = FleetDeployer(Settings(), registry)
    deployer.attach(_StandInSupervisor(tmp_path))  # type: ignore[arg-type]
    yield deployer, registry
    remove_variant_series("fo", "A")


async def test_each_instance_pool_pipelines_as_its_image_allows(
    deployer: tuple[FleetDeployer, EndpointRegistry],
) -> None:
    fleet, registry = deployer
    plan = _plan(1, failover=False)
    await fleet.deploy(plan)
    await fleet.activate(plan)
    live = registry.get("fo")
    assert live is not None
    (pool,) = live.pools.values()
    assert isinstance(pool, UpstreamPool)
    assert pool.pipeline_depth == 4


async def test_failover_changes_in_the_live_router_and_in_later_generations(
    deployer: tuple[FleetDeployer, EndpointRegistry],
) -> None:
    fleet, registry = deployer
    first = _plan(1, failover=False)
    await fleet.deploy(first)
    await fleet.activate(first)
    live = registry.get("fo")
    assert not _fails_over(registry)

    await fleet.set_failover("fo", True)
    # The same router object: no new table, no new LiveEndpoint.
    assert registry.get("fo") is live
    assert _fails_over(registry)

    # An update's plan made before the tag changed: its router takes the newer setting.
    second = _plan(2, failover=False)
    await fleet.deploy(second)
    await fleet.activate(second)
    green = registry.get("fo")
    assert green is not None
    assert green.generation == 2
    assert _fails_over(registry)
    await fleet.retire("fo", 1)

    # DeleteEndpoint forgets it: an endpoint created again under the name follows its own plan.
    await fleet.remove("fo")
    again = _plan(1, failover=False)
    await fleet.deploy(again)
    await fleet.activate(again)
    assert not _fails_over(registry)
    await fleet.close()


async def test_failover_set_before_any_generation_applies_to_the_first(
    deployer: tuple[FleetDeployer, EndpointRegistry],
) -> None:
    fleet, registry = deployer
    await fleet.set_failover("fo", True)  # AddTags while the endpoint is Creating
    plan = _plan(1, failover=False)
    await fleet.deploy(plan)
    await fleet.activate(plan)
    assert _fails_over(registry)
    await fleet.close()
