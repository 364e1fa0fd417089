"""The fleet deployer's shadow variants over stand-in fleets (no worker processes): the router
never holds them, the copier gets each shadow's share, instances and health, the routing document
carries them, and retiring or letting go of a generation closes its copier (scaling a shadow is
in tests/e2e/test_shadow.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.config import Settings
from splitserve.control.deployer import DeploymentPlan
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.registry import EndpointRegistry
from splitserve.runtime.shadow import ShadowCopier
from splitserve.wiring.fleet import FleetDeployer
from tests.wiring.test_fleet_failover import _plan, _StandInSupervisor


def shadowed_plan(generation: int = 1, weight: float = 0.5) -> DeploymentPlan:
    """Endpoint `fo`: production variant A (weight 1) and shadow variant S of `weight`."""
    plan = _plan(generation, failover=False)
    production = plan.variants[0]
    shadow = dataclasses.replace(production, variant_name="S", weight=weight, shadow=True)
    return dataclasses.replace(plan, variants=(production, shadow))


@pytest.fixture
def deployer(tmp_path: Path) -> Iterator[tuple[FleetDeployer, EndpointRegistry, Path]]:
    registry = EndpointRegistry()
    deployer = FleetDeployer(Settings(), registry)
    deployer.attach(_StandInSupervisor(tmp_path))  # type: ignore[arg-type]
    yield deployer, registry, tmp_path
    for variant in ("A", "S"):
        remove_variant_series("fo", variant)


def copier_of(registry: EndpointRegistry) -> ShadowCopier:
    live = registry.get("fo")
    assert live is not None
    assert isinstance(live.shadows, ShadowCopier)
    return live.shadows


async def test_shadows_run_beside_the_router_and_follow_weights_and_health(
    deployer: tuple[FleetDeployer, EndpointRegistry, Path],
) -> None:
    fleet, registry, _ = deployer
    plan = shadowed_plan()
    await fleet.deploy(plan)
    await fleet.activate(plan)
    live = registry.get("fo")
    assert live is not None
    assert live.router.weights() == {"A": 1.0}  # the router never holds the shadow
    copier = copier_of(registry)
    (target,) = copier.targets
    assert (target.variant, target.fraction) == ("S", 0.5)
    assert [i.name for i in target.instances] == ["fo/S/g1/0"]
    assert sorted(live.recorders) == ["A", "S"]
    assert sorted(fleet.instance_details("fo")) == ["A", "S"]

    document = fleet.routing_document("fo")
    assert document is not None
    assert [v.name for v in document.variants] == ["A"]
    assert [(v.name, v.weight) for v in document.shadows] == [("S", 0.5)]

    # A weight change: the shadow's share, and production's weights, in one call.
    await fleet.set_weights("fo", {"A": 2.0, "S": 1.0})
    assert live.router.weights() == {"A": 2.0}
    assert copier.targets[0].fraction == 0.5
    await fleet.set_weights("fo", {"A": 1.0, "S": 1.0})
    assert copier.targets[0].fraction == 1.0

    # Health reaches the copier: an unhealthy shadow instance gets no copies.
    (info,) = fleet.live_instances()["fo", "S"]
    fleet.instance_unhealthy(info)
    assert [i.healthy for i in copier.targets[0].instances] == [False]
    fleet.instance_healthy(info)
    assert [i.healthy for i in copier.targets[0].instances] == [True]

    # A new generation has a copier of its own; retiring the old one closes the old copier.
    second = shadowed_plan(2, weight=0.0)
    await fleet.deploy(second)
    await fleet.activate(second)
    assert copier_of(registry) is not copier
    assert copier_of(registry).targets[0].fraction == 0.0
    await fleet.retire("fo", 1)
    assert copier._closed
    await fleet.close()
    assert copier_of(registry)._closed


async def test_letting_go_of_instances_closes_the_copier(
    deployer: tuple[FleetDeployer, EndpointRegistry, Path],
) -> None:
    fleet, registry, run_dir = deployer
    placement = _StandInSupervisor(run_dir)
    placement.outlives_controller = True  # Ray: close() detaches instead of stopping
    fleet.attach(placement)  # type: ignore[arg-type]
    plan = shadowed_plan()
    await fleet.deploy(plan)
    await fleet.activate(plan)
    copier = copier_of(registry)
    await fleet.close()
    assert copier._closed
